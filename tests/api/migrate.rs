//! Growing from one box to many: `showcase migrate --from --to` copies a populated node on
//! sled and its local disk into PostgreSQL, S3 and SQS, and a node on the copy serves it all.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::moto::Moto;
use crate::common::Checked;
use crate::common::{self, aws, postgres, test_config, Client, TestApp, PASSWORD};

const ADMIN: &str = "admin-token-of-the-copy-0123";

/// A configuration file only its owner can read (it holds a secret).
fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `showcase migrate` with `args`: its exit status and what it printed.
fn migrate(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_showcase"))
        .arg("migrate")
        .args(args)
        // The tests' own switch shares the configuration's prefix: not a key of it.
        .env_remove("SHOWCASE_TEST_BACKENDS")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_sled_moves_to_postgresql_s3_and_sqs_and_runs_on_the_copy() {
    // The box: sled and local disk, whatever the suite runs on.
    let source_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(source_dir.path());
    config.upload.min_duration_s = 1.0;
    let app = showcase::app::spawn(config).expect("the node starts");
    let t = TestApp {
        client: Client::new(app.url("")),
        app,
        aws: None,
        postgres: None,
        dir: source_dir,
    };
    assert_eq!(
        t.signup("Ana", "Ruiz", "ana@example.com", "Cali").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        t.signup("Luis", "Díaz", "luis@example.com", "Bogotá")
            .await
            .0,
        StatusCode::CREATED
    );
    let token = |login: serde_json::Value| login["access_token"].as_str().unwrap().to_string();
    let ana = token(t.login("ana@example.com", PASSWORD).await.1);
    let luis = token(t.login("luis@example.com", PASSWORD).await.1);
    let published = t.uploaded_video(&ana, "Publicado").await;
    let queued = t.uploaded_video(&ana, "En cola").await;
    let dead = t.uploaded_video(&ana, "Fallido").await;
    let rendition = common::random_file(300_000);
    let bytes = t
        .publish_with_files(published, &rendition, &common::poster_jpeg())
        .await;
    // The published video's job is done; the third one's is a dead letter.
    let engine = t.app.engine();
    for _ in 0..3 {
        let lease = engine
            .queue
            .receive(Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let id = lease.job.video_id;
        if id == published {
            engine.queue.ack(id, &lease.token).await.unwrap();
        } else if id == dead {
            engine
                .queue
                .dead_letter(id, &lease.token, "no se pudo decodificar")
                .await
                .unwrap();
        } else {
            engine
                .queue
                .nack(id, &lease.token, Duration::ZERO, "reintento")
                .await
                .unwrap();
        }
    }
    assert_eq!(t.vote(&luis, published).await.0, StatusCode::OK);
    // Stopped, and its store let go of: sled has one owner.
    drop(engine);
    let TestApp { app, dir, .. } = t;
    app.stop().unwrap();

    // The platform: PostgreSQL, S3 and SQS.
    let moto = Moto::start();
    let made = aws::provision(&moto.endpoint, 5).await;
    let database = postgres::fresh_database();
    let copy_dir = tempfile::tempdir().unwrap();
    let from = copy_dir.path().join("from.toml");
    let to = copy_dir.path().join("to.toml");
    write_config(
        &from,
        &format!(
            "[storage]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ),
    );
    let data = copy_dir.path().join("data");
    write_config(
        &to,
        &format!(
            "[storage]\ndata_dir = {data:?}\nbackend = \"s3\"\n\
             [storage.s3]\nbucket = {bucket:?}\nprefix = \"copy/\"\nregion = \"us-east-1\"\n\
             endpoint_url = {endpoint:?}\nforce_path_style = true\n\
             [queue]\nbackend = \"sqs\"\n\
             [queue.sqs]\nqueue_url = {queue:?}\ndead_letter_queue_url = {dead_queue:?}\n\
             region = \"us-east-1\"\nendpoint_url = {endpoint:?}\nwait_time_s = 1\n\
             [store]\nbackend = \"postgres\"\n[store.postgres]\nurl = {database:?}\n\
             [auth]\njwt_secret = {secret:?}\n[admin]\ntoken = {ADMIN:?}\n\
             [transcode]\nworkers = 0\n[upload]\nmin_free_disk_mb = 0\n",
            data = data.display().to_string(),
            bucket = aws::BUCKET,
            endpoint = moto.endpoint,
            queue = made.queue_url,
            dead_queue = made.dead_letter_queue_url,
            secret = postgres::JWT_SECRET,
        ),
    );
    let (from, to) = (from.to_str().unwrap(), to.to_str().unwrap());

    // The schema alone, then the copy.
    let (ok, said) = migrate(&["--config", to]);
    assert!(ok, "{said}");
    assert!(said.contains("schema is current"), "{said}");
    let (ok, said) = migrate(&["--from", from, "--to", to]);
    assert!(ok, "{said}");
    for line in [
        "users                 2 in the source,         2 copied",
        "videos                3 in the source,         3 copied",
        "votes                 1 in the source,         1 copied",
        "queued jobs           1 in the source,         1 copied",
        "dead letters          1 in the source,         1 copied",
        "media files           5 in the source,         5 copied",
        "verified",
    ] {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
    // Again: nothing left to copy, and it still verifies.
    let (ok, again) = migrate(&["--from", from, "--to", to]);
    assert!(ok, "{again}");
    assert!(
        again.contains(
            "media files           5 in the source,         0 copied,         5 there already"
        ),
        "{again}"
    );

    // A node on the copy: the same players (their passwords too), videos, votes, media, jobs.
    // The file alone: the tests' environment has a SHOWCASE_ switch of its own.
    // On a free port: the file's address is the default one, which may be taken.
    let mut copied =
        showcase::config::Config::from_toml_str(&std::fs::read_to_string(to).unwrap()).unwrap();
    copied.server.addr = "127.0.0.1:0".parse().unwrap();
    let copy = showcase::app::spawn(copied).expect("a node on the copy starts");
    let client = Client::new(copy.url(""));
    let (status, login) = client.login("luis@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (_, rankings) = client.get("/api/public/rankings", None).await;
    assert_eq!(
        rankings,
        json!([{"position": 1, "username": "Ana Ruiz", "city": "Cali", "votes": 1}])
    );
    let (_, videos) = client.get("/api/public/videos", None).await;
    assert_eq!(videos[0]["video_id"], published);
    assert_eq!(videos[0]["votes"], 1);
    let media = client
        .http
        .get(copy.url(&format!("/media/{published}.mp4")))
        .checked()
        .await
        .unwrap();
    assert_eq!(media.status(), StatusCode::OK);
    assert_eq!(media.bytes().await.unwrap().to_vec(), bytes);
    let letters = client
        .http
        .get(copy.url("/api/admin/dead-letters"))
        .bearer_auth(ADMIN)
        .checked()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(letters[0]["video_id"], dead);
    // The queued job reaches SQS through the copy's outbox.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, report) = client.get("/api/health/actors", None).await;
        if report["queue"]["depth"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ana = token(client.login("ana@example.com", PASSWORD).await.1);
    let (_, mine) = client.get("/api/videos", Some(&ana)).await;
    let mut titles: Vec<_> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["title"].as_str().unwrap().to_string())
        .collect();
    titles.sort();
    assert_eq!(titles, ["En cola", "Fallido", "Publicado"]);
    assert!(mine
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["video_id"] == queued));
    copy.stop().unwrap();
}
