//! The records on PostgreSQL at scale, and against sled; printed, never asserted.
//!
//! (a) City ranking pages with 100,000 players and about 1,000,000 votes (goal: p99 under
//!     20 ms on this machine), read through a node's HTTP route, and the store call alone.
//! (b) Votes per second from 32 concurrent voters, PostgreSQL against sled, in one run.
//!
//! Run with `make bench` (or `cargo bench --bench records`); PostgreSQL comes from
//! `make test-deps`, in a throwaway cluster this bench starts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{postgres, test_config, Client, TestApp};
use rand::Rng;
use showcase::domain::{NewUser, NewVideo, Page, Publication};
use showcase::engine::pg_engine::PgEngine;
use showcase::engine::sled_engine::SledEngine;
use showcase::engine::Store;

const PLAYERS: i64 = 100_000;
const VOTE_DRAWS: i64 = 1_050_000;
const CITIES: i64 = 40;
const PAGES: usize = 2_000;
const VOTERS: usize = 32;
const VOTES: usize = 6_400;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Fills the database at `url` in bulk: the players, one published video each, votes drawn
/// with a skew (a few videos get many), and the counts and rankings that follow from them.
async fn populate(url: &str) -> u64 {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let statements = [
        format!(
            "INSERT INTO users (id, first_name, last_name, email, password_hash, city, country, created_at) \
             SELECT g, 'Jugador', 'N' || g, 'p' || g || '@example.com', 'x', 'Ciudad ' || (g % {CITIES}), 'Colombia', 0 \
             FROM generate_series(1, {PLAYERS}) g"
        ),
        format!(
            "INSERT INTO videos (id, owner_id, title, status, progress, uploaded_at, processed_at, task_id, \
             original_key, original_size_bytes, original_duration_s, original_width, original_height, \
             processed_key, poster_key, content_hash, poster_hash, processed_duration_s, city_folded) \
             SELECT g, g, 'Video ' || g, 'processed', 100, 0, 0, 't' || g, 'originals/' || g || '.mp4', \
             1, 30, 1920, 1080, 'processed/' || g || '.mp4', 'posters/' || g || '.jpg', 'h', 'p', 30, \
             'ciudad ' || (g % {CITIES}) FROM generate_series(1, {PLAYERS}) g"
        ),
        format!(
            "INSERT INTO votes (video_id, voter_id, voted_at) \
             SELECT 1 + floor(power(random(), 3) * {PLAYERS})::bigint, 1 + floor(random() * {PLAYERS})::bigint, 0 \
             FROM generate_series(1, {VOTE_DRAWS}) ON CONFLICT DO NOTHING"
        ),
        "UPDATE videos v SET votes = c.n FROM \
         (SELECT video_id, count(*) AS n FROM votes GROUP BY video_id) c WHERE v.id = c.video_id"
            .to_string(),
        "INSERT INTO player_scores (user_id, city_folded, votes) \
         SELECT owner_id, city_folded, sum(votes) FROM videos GROUP BY owner_id, city_folded"
            .to_string(),
        format!("SELECT setval('user_ids', {PLAYERS}), setval('video_ids', {PLAYERS})"),
        "ANALYZE".to_string(),
    ];
    for statement in statements {
        sqlx::query(&statement).execute(&mut db).await.unwrap();
    }
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM votes")
        .fetch_one(&mut db)
        .await
        .unwrap() as u64
}

/// Players and published videos for the vote race: `n` of each.
async fn voters_and_videos(store: &dyn Store, n: usize) -> (Vec<u64>, Vec<u64>) {
    let mut users = Vec::new();
    let mut videos = Vec::new();
    for i in 0..n {
        let user = store
            .create_user(NewUser {
                first_name: "Fan".into(),
                last_name: format!("{i}"),
                email: format!("fan{i}@example.com"),
                password_hash: "x".into(),
                city: "Cali".into(),
                country: "Colombia".into(),
            })
            .await
            .unwrap();
        let id = store.allocate_video_id().await.unwrap();
        store
            .commit_upload(
                NewVideo {
                    id,
                    owner_id: user.id,
                    title: format!("Video {i}"),
                    original_key: format!("originals/{id}.mp4"),
                    original: showcase::domain::MediaInfo {
                        size_bytes: 1,
                        duration_s: 30.0,
                        width: 1920,
                        height: 1080,
                    },
                },
                format!("task-{id}"),
            )
            .await
            .unwrap();
        store
            .publish_video(
                id,
                Publication {
                    processed_key: format!("processed/{id}.mp4"),
                    poster_key: format!("posters/{id}.jpg"),
                    content_hash: "h".into(),
                    poster_hash: "p".into(),
                    duration_s: 30.0,
                },
            )
            .await
            .unwrap();
        users.push(user.id);
        videos.push(id);
    }
    (users, videos)
}

/// Votes per second: `VOTERS` concurrent voters casting `VOTES` distinct votes.
async fn vote_rate(store: Arc<dyn Store>) -> f64 {
    let (users, videos) = voters_and_videos(store.as_ref(), 200).await;
    let mut pairs: Vec<(u64, u64)> = users
        .iter()
        .flat_map(|u| videos.iter().map(move |v| (*v, *u)))
        .collect();
    rand::seq::SliceRandom::shuffle(pairs.as_mut_slice(), &mut rand::thread_rng());
    pairs.truncate(VOTES);
    let pairs = Arc::new(pairs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for voter in 0..VOTERS {
        let (store, pairs) = (store.clone(), pairs.clone());
        tasks.spawn(async move {
            for (video, user) in pairs.iter().skip(voter).step_by(VOTERS) {
                store.vote(*video, *user).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    VOTES as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // (a) Rankings at scale.
        let url = postgres::fresh_database();
        let engine = PgEngine::connect(&url, None, 16, 5).await.unwrap();
        let started = Instant::now();
        let votes = populate(&url).await;
        println!(
            "(a) {PLAYERS} players in {CITIES} cities, {votes} votes, loaded in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let mut rng = rand::thread_rng();
        let mut store_ms = Vec::with_capacity(PAGES);
        for _ in 0..PAGES {
            let city = format!("CIUDAD {}", rng.gen_range(0..CITIES));
            let page = Page {
                offset: rng.gen_range(0..5) * 20,
                limit: 20,
            };
            let at = Instant::now();
            let rows = engine.rankings(Some(&city), page).await.unwrap();
            store_ms.push(at.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(rows.len(), 20);
        }
        store_ms.sort_by(f64::total_cmp);

        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        postgres::use_database(&mut config, &url);
        let app = showcase::app::spawn(config).expect("the node starts");
        let t = TestApp {
            client: Client::new(app.url("")),
            app,
            aws: None,
            postgres: Some(url.clone()),
            dir,
        };
        let mut http_ms = Vec::with_capacity(PAGES);
        for _ in 0..PAGES {
            let path = format!(
                "/api/public/rankings?city=Ciudad%20{}&page={}&limit=20",
                rng.gen_range(0..CITIES),
                rng.gen_range(1..=5)
            );
            let at = Instant::now();
            let response = t.http.get(t.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let rows: Vec<serde_json::Value> = response.json().await.unwrap();
            http_ms.push(at.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(rows.len(), 20);
        }
        http_ms.sort_by(f64::total_cmp);
        println!(
            "(a) city ranking pages of 20, {PAGES} each: through HTTP p50 {:.2} ms, p99 {:.2} ms; \
             the store call alone p50 {:.2} ms, p99 {:.2} ms (goal: p99 < 20 ms)",
            percentile(&http_ms, 0.5),
            percentile(&http_ms, 0.99),
            percentile(&store_ms, 0.5),
            percentile(&store_ms, 0.99)
        );
        drop(t);

        // (b) Votes per second, PostgreSQL against sled.
        let pg: Arc<dyn Store> = Arc::new(
            PgEngine::connect(&postgres::fresh_database(), None, 16, 5)
                .await
                .unwrap(),
        );
        let pg_rate = vote_rate(pg).await;
        let sled_dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> =
            SledEngine::open(&sled_dir.path().join("db"), 5, Duration::from_secs(10)).unwrap();
        let sled_rate = vote_rate(sled).await;
        println!(
            "(b) {VOTES} votes from {VOTERS} concurrent voters: PostgreSQL {pg_rate:.0}/s, \
             sled {sled_rate:.0}/s ({:.2}x)",
            pg_rate / sled_rate
        );
    });
}
