//! A platform of several nodes: an api node and a worker node of one PostgreSQL, one bucket
//! and one queue, each with the actors and routes of its role.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use showcase::config::{Config, Role};

use crate::common::moto::Moto;
use crate::common::Checked;
use crate::common::{self, aws, postgres, test_config, Client, TestApp};

/// What the nodes of one platform share.
struct Platform {
    moto: Moto,
    made: aws::Provisioned,
    database: String,
}

impl Platform {
    fn start() -> Self {
        let moto = Moto::start();
        let made = aws::block_on(aws::provision(&moto.endpoint, 3));
        Self {
            made,
            moto,
            database: postgres::fresh_database(),
        }
    }

    /// A node of this platform in `role`.
    fn node(&self, role: Role, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.node.role = role;
        config.queue.max_receives = 3;
        config.upload.min_duration_s = 1.0;
        aws::point_at(&mut config, &self.moto.endpoint, "platform/", &self.made);
        postgres::use_database(&mut config, &self.database);
        adjust(&mut config);
        let app = showcase::app::spawn(config).expect("the node starts");
        TestApp {
            client: Client::new(app.url("")),
            app,
            aws: None,
            postgres: Some(self.database.clone()),
            dir,
        }
    }
}

async fn actors(t: &TestApp) -> (String, BTreeSet<String>) {
    let (status, report) = t.get("/api/health/actors", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let names = report["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    (report["role"].as_str().unwrap().to_string(), names)
}

/// Waits until `t` counts `expected` (api, worker) nodes in the platform: each node says it
/// is alive every 2 s, and one not heard of for 10 s is no longer counted.
async fn nodes_become(t: &TestApp, expected: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, report) = t.get("/api/health/actors", None).await;
        let counted = (
            report["nodes"]["api"].as_u64().unwrap(),
            report["nodes"]["worker"].as_u64().unwrap(),
        );
        if counted == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counted {counted:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_and_a_worker_node_make_one_platform() {
    let platform = Platform::start();
    let api = platform.node(Role::Api, |_| {});
    let worker = platform.node(Role::Worker, |c| c.transcode.workers = 1);

    assert_eq!(
        actors(&api).await,
        ("api".into(), set(&["ingest", "streamer", "supervisor"]))
    );
    assert_eq!(
        actors(&worker).await,
        (
            "worker".into(),
            set(&["queue_consumer", "supervisor", "transcoder"])
        )
    );
    // Each counts the platform's nodes.
    for node in [&api, &worker] {
        nodes_become(node, (1, 1)).await;
    }
    // A worker serves the operator routes only.
    for path in ["/api/health", "/api/health/ready", "/metrics"] {
        let response = worker.http.get(worker.url(path)).checked().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    for path in ["/api/public/videos", "/api/public/rankings", "/"] {
        let (status, _) = worker.get(path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, body) = worker
        .post_json(
            "/api/auth/login",
            &serde_json::json!({"email": "a@b.co", "password": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A player signs up and uploads on the api node; the worker publishes the video.
    let (status, _) = api.signup("Ana", "Ruiz", "ana@example.com", "Cali").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, login) = api.login("ana@example.com", common::PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["access_token"].as_str().unwrap().to_string();
    let clip = common::generate_mp4("roles-1920x1080-6s.mp4", 1920, 1080, 6);
    let (status, body) = api.upload(&token, &clip, "En equipo").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let published: Value = loop {
        let (_, video) = api.get(&format!("/api/videos/{id}"), Some(&token)).await;
        if video["status"] == "processed" {
            break video;
        }
        assert!(Instant::now() < deadline, "not published: {video}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let media = api
        .http
        .get(api.url(published["processed_url"].as_str().unwrap()))
        .checked()
        .await
        .unwrap();
    assert_eq!(media.status(), StatusCode::OK);
    assert!(media.bytes().await.unwrap().len() > 10_000);

    // A vote on the api node is in the rankings; both nodes count an empty queue.
    let (_, fan) = api.quick_player("Luis", "Díaz", "Bogotá").await;
    assert_eq!(api.vote(&fan, id).await.0, StatusCode::OK);
    let (_, rankings) = api.get("/api/public/rankings?city=cali", None).await;
    assert_eq!(rankings[0]["votes"], 1, "{rankings}");
    // SQS's counts are approximate and read at most once a second: they settle.
    for node in [&api, &worker] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, report) = node.get("/api/health/actors", None).await;
            if report["queue"] == serde_json::json!({"depth": 0, "in_flight": 0, "dead": 0}) {
                break;
            }
            assert!(Instant::now() < deadline, "{report}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_per_worker_divides_the_waiting_jobs_by_the_worker_nodes() {
    let platform = Platform::start();
    let api = platform.node(Role::Api, |_| {});
    // Two worker nodes that take no job: the backlog stays where it is.
    let workers = [
        platform.node(Role::Worker, |c| c.transcode.workers = 0),
        platform.node(Role::Worker, |c| c.transcode.workers = 0),
    ];
    for node in workers.iter().chain([&api]) {
        nodes_become(node, (1, 2)).await;
    }
    let (_, token) = api.quick_player("Ana", "Ruiz", "Cali").await;
    let clip = common::generate_mp4("roles-1920x1080-6s.mp4", 1920, 1080, 6);
    for n in 0..4 {
        let (status, body) = api.upload(&token, &clip, &format!("Video {n}")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for node in workers.iter().chain([&api]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.metric("showcase_queue_backlog_per_worker").await != 2.0 {
            assert!(
                Instant::now() < deadline,
                "backlog per worker {}",
                node.metric("showcase_queue_backlog_per_worker").await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // A worker that stops is no longer counted.
    let [first, second] = workers;
    drop(first);
    nodes_become(&second, (1, 1)).await;
    assert_eq!(
        second.metric("showcase_queue_backlog_per_worker").await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_of_an_upload_whose_node_died_is_removed_by_another() {
    use showcase::engine::{BlobStore, Store};
    let platform = Platform::start();
    let api = platform.node(Role::Api, |_| {});
    let store = showcase::engine::pg_engine::PgEngine::connect(&platform.database, None, 2, 3)
        .await
        .unwrap();
    let mut config = test_config(api.dir.path());
    aws::point_at(
        &mut config,
        &platform.moto.endpoint,
        "platform/",
        &platform.made,
    );
    let blobs = showcase::engine::s3_blobs::S3Blobs::connect(
        &showcase::engine::s3_blobs::S3Location::from(&config.storage.s3),
    )
    .await;
    let pending = async || -> Vec<String> {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&platform.database)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT key FROM pending_blobs ORDER BY key")
            .fetch_all(&mut db)
            .await
            .unwrap()
    };

    // An upload that commits leaves no note behind.
    let (_, token) = api.quick_player("Ana", "Ruiz", "Cali").await;
    let clip = common::generate_mp4("roles-1920x1080-6s.mp4", 1920, 1080, 6);
    let (status, body) = api.upload(&token, &clip, "Completo").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let committed = format!("originals/{}.mp4", body["video_id"]);
    assert_eq!(pending().await, Vec::<String>::new());

    // A node that died between storing an original and committing its record; and one whose
    // record did commit though its answer was lost (its note outlived it).
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("orphan.mp4");
    std::fs::copy(&clip, &file).unwrap();
    blobs.put_file("originals/900.mp4", &file).await.unwrap();
    store
        .intend_blob("originals/900.mp4", "a-node-that-died")
        .await
        .unwrap();
    store
        .intend_blob(&committed, "a-node-that-died")
        .await
        .unwrap();
    // A node is dead after 30 s unseen; the sweep runs every 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "notes left: {:?}",
            pending().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !blobs.exists("originals/900.mp4").await.unwrap(),
        "the orphan stayed"
    );
    assert!(
        blobs.exists(&committed).await.unwrap(),
        "a committed original went"
    );
}

#[tokio::test]
async fn a_commit_whose_original_was_claimed_as_abandoned_fails() {
    use showcase::engine::Store;
    let store =
        showcase::engine::pg_engine::PgEngine::connect(&postgres::fresh_database(), None, 2, 3)
            .await
            .unwrap();
    let owner = store
        .create_user(showcase::domain::NewUser {
            first_name: "Ana".into(),
            last_name: "Ruiz".into(),
            email: "ana@example.com".into(),
            password_hash: "x".into(),
            city: "Cali".into(),
            country: "Colombia".into(),
        })
        .await
        .unwrap();
    let new_video = |id: u64| showcase::domain::NewVideo {
        id,
        owner_id: owner.id,
        title: "Tarde".into(),
        original_key: format!("originals/{id}.mp4"),
        original: showcase::domain::MediaInfo {
            size_bytes: 1,
            duration_s: 30.0,
            width: 1920,
            height: 1080,
        },
    };
    // Noted by a node no one has seen, and claimed (with no grace) by a sweeping node.
    let id = store.allocate_video_id().await.unwrap();
    store
        .intend_blob(&format!("originals/{id}.mp4"), "a-node-taken-for-dead")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.abandoned_blobs(Duration::ZERO).await.unwrap(),
        [format!("originals/{id}.mp4")]
    );
    // Its commit comes too late: refused, and no record.
    let late = store.commit_upload(new_video(id), "t".into()).await;
    assert!(
        matches!(late, Err(showcase::engine::StoreError::Unavailable(_))),
        "{late:?}"
    );
    assert!(!store.video_exists(id).await.unwrap());
    // The sweeping node deletes the file, then the note.
    store
        .settle_blob(&format!("originals/{id}.mp4"))
        .await
        .unwrap();
    // One whose note is not claimed commits, and its note goes.
    let id = store.allocate_video_id().await.unwrap();
    store
        .intend_blob(&format!("originals/{id}.mp4"), "a-live-node")
        .await
        .unwrap();
    store
        .commit_upload(new_video(id), "t".into())
        .await
        .unwrap();
    assert_eq!(
        store.abandoned_blobs(Duration::ZERO).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_sent_at_once_through_two_api_nodes_count_once_each() {
    let platform = Platform::start();
    let nodes = [
        platform.node(Role::Api, |_| {}),
        platform.node(Role::Api, |_| {}),
    ];
    let mut videos = Vec::new();
    for (first, last) in [("Ana", "Ruiz"), ("Sara", "Mejía")] {
        let (_, owner) = nodes[0].quick_player(first, last, "Cali").await;
        let id = nodes[0].uploaded_video(&owner, "Triple").await;
        nodes[0].publish(id).await;
        videos.push(id);
    }
    // Every fan votes for each video through both nodes at the same moment: the database, not
    // a node, lets one vote in. Fans vote for the first video, and every other one for the
    // second too.
    const FANS: usize = 40;
    let mut fans = Vec::new();
    for n in 0..FANS {
        fans.push(
            nodes[n % 2]
                .quick_player("Hincha", &format!("Nº {n}"), "Medellín")
                .await
                .1,
        );
    }
    let ballots = fans.iter().enumerate().flat_map(|(n, fan)| {
        let chosen = if n % 2 == 0 {
            &videos[..]
        } else {
            &videos[..1]
        };
        chosen.iter().map(move |video| (fan.clone(), *video))
    });
    let answers = futures_util::future::join_all(ballots.map(|(fan, video)| {
        let nodes = &nodes;
        async move {
            let (first, second) =
                tokio::join!(nodes[0].vote(&fan, video), nodes[1].vote(&fan, video));
            (first, second)
        }
    }))
    .await;
    assert_eq!(answers.len(), FANS + FANS / 2);
    for (first, second) in &answers {
        let mut statuses = [first.0, second.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::BAD_REQUEST],
            "{first:?} {second:?}"
        );
        let refused = if first.0 == StatusCode::OK {
            second
        } else {
            first
        };
        assert_eq!(
            common::detail_of(&refused.1),
            "Ya has votado por este video."
        );
    }
    // Both nodes count the same: the videos' votes and the ranking.
    for node in &nodes {
        let (_, listed) = node.get("/api/public/videos", None).await;
        let votes: Vec<(u64, u64)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["video_id"].as_u64().unwrap(),
                    v["votes"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(votes.contains(&(videos[0], FANS as u64)), "{listed}");
        assert!(votes.contains(&(videos[1], FANS as u64 / 2)), "{listed}");
        let (_, ranking) = node.get("/api/public/rankings?city=cali", None).await;
        assert_eq!(
            ranking,
            serde_json::json!([
                {"position": 1, "username": "Ana Ruiz", "city": "Cali", "votes": FANS},
                {"position": 2, "username": "Sara Mejía", "city": "Cali", "votes": FANS / 2},
            ])
        );
    }
}
