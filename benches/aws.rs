//! The AWS backends beside the embedded ones, on a local S3 and SQS server (moto) in one run;
//! printed, never asserted. A local server is not AWS: these are the node's own overheads.
//!
//! (a) A 100 MiB upload through a node on S3 against a direct multipart upload of the same file
//!     to the same server with the SDK (goal: at most 1.2x).
//! (b) Random 1 MiB ranges of a published video, served from the read-through cache of a node on
//!     S3, against a node on the local disk (goal: at least 0.8x).
//! (c) Resident memory of a node in a process of its own during the 100 MiB upload to S3, and
//!     with 200 concurrent streams from S3 (goal: at most 64 MiB more).
//!
//! Run with `make bench` (or `cargo bench --bench aws`); needs moto (`make test-deps`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::aws::Aws;
use common::process::{rss_of, ServerProcess};
use common::{test_config, Client, TestApp};
use rand::Rng;
use showcase::engine::s3_blobs::S3Blobs;
use showcase::engine::BlobStore;

const MIB: u64 = 1024 * 1024;
const RUNS: usize = 5;
const RANGES: usize = 300;
const STREAMS: usize = 200;

/// The highest resident memory of process `pid` seen while `work` runs.
async fn peak_rss_during<T>(pid: i32, work: impl std::future::Future<Output = T>) -> (T, u64) {
    let peak = Arc::new(AtomicU64::new(rss_of(pid)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = work.await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (out, peak.load(Ordering::Relaxed))
}

fn node(aws: bool, adjust: impl FnOnce(&mut showcase::config::Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let aws = aws.then(|| Aws::start(&mut config));
    let app = showcase::app::spawn(config).expect("the node starts");
    TestApp {
        client: Client::new(app.url("")),
        app,
        aws,
        postgres: None,
        dir,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Seconds of `RANGES` random 1 MiB range requests of `/media/{id}.mp4`, eight at a time.
async fn ranges(t: &TestApp, id: u64, len: u64) -> f64 {
    let url = t.url(&format!("/media/{id}.mp4"));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (http, url) = (t.http.clone(), url.clone());
        tasks.spawn(async move {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            for _ in (worker..RANGES).step_by(8) {
                let first = rng.gen_range(0..len - MIB);
                let response = http
                    .get(&url)
                    .header("Range", format!("bytes={first}-{}", first + MIB - 1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 206);
                assert_eq!(response.bytes().await.unwrap().len() as u64, MIB);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

async fn published(t: &TestApp, video: &[u8]) -> u64 {
    let (_, token) = t.quick_player("Bench", "Mark", "Cali").await;
    let id = t.uploaded_video(&token, "Bench").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), video).unwrap();
    let poster = common::poster_jpeg();
    t.publish_with_files(id, file.path(), &poster).await;
    id
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // (a) and (c): the upload, to a node in a process of its own.
        let big = common::padded_mp4(100 * MIB);
        let dir = tempfile::tempdir().unwrap();
        let on_s3 = ServerProcess::start_on_aws(dir.path(), &[]);
        let client = on_s3.client();
        let token = client.token_for("ana@example.com").await;
        let store = S3Blobs::connect(&on_s3.stored().remote.unwrap().s3).await;
        let scratch = tempfile::tempdir().unwrap();
        let before = on_s3.rss_bytes();
        let mut through_node = Vec::new();
        let mut direct = Vec::new();
        let mut peak = before;
        // The two kinds of runs alternate, each after a sync, so that neither inherits the
        // other's (or the set-up's) writeback: fsync times on a shared disk drift.
        for run in 0..RUNS {
            unsafe { libc::sync() };
            let started = Instant::now();
            // Streamed from the file: the client holds none of it in memory.
            let file = tokio::fs::File::open(&big).await.unwrap();
            let len = file.metadata().await.unwrap().len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                1024 * 1024,
            ));
            let part = reqwest::multipart::Part::stream_with_length(body, len)
                .file_name("grande.mp4")
                .mime_str("video/mp4")
                .unwrap();
            let form = reqwest::multipart::Form::new()
                .text("title", "Grande")
                .part("video_file", part);
            let ((status, body), high) =
                peak_rss_during(on_s3.pid(), client.upload_form(&token, form)).await;
            assert_eq!(status, 201, "{body}");
            through_node.push(started.elapsed().as_secs_f64());
            peak = peak.max(high);

            let copy = scratch.path().join(format!("direct-{run}.mp4"));
            std::fs::copy(&big, &copy).unwrap();
            unsafe { libc::sync() };
            let started = Instant::now();
            store.put_file(&format!("direct/{run}.mp4"), &copy).await.unwrap();
            direct.push(started.elapsed().as_secs_f64());
        }
        drop(on_s3);
        println!(
            "(a) runs of the 100 MiB upload: through the node {:.2?} s, direct {:.2?} s",
            through_node, direct
        );
        let (node_s, direct_s) = (median(through_node), median(direct));
        println!("(a) 100 MiB upload: through the node to S3 {node_s:.2} s, direct SDK multipart {direct_s:.2} s: {:.2}x (goal <= 1.2x)", node_s / direct_s);
        println!("(c) resident memory of the node during the uploads: {} MiB before, {} MiB at most: +{} MiB (goal <= 64)", before / MIB, peak / MIB, peak.saturating_sub(before) / MIB);

        // (b): ranges from the cache of a node on S3 against a node on its local disk.
        let video: Vec<u8> = (0..20 * MIB).map(|i| (i % 251) as u8).collect();
        let local = node(false, |_| {});
        let local_id = published(&local, &video).await;
        let cached = node(true, |_| {});
        let cached_id = published(&cached, &video).await;
        let copy = cached.dir.path().join(format!("cache/processed/{cached_id}.mp4"));
        let _ = cached.get(&format!("/media/{cached_id}.mp4"), None).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !copy.exists() {
            assert!(Instant::now() < deadline, "the cache was not filled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let len = video.len() as u64;
        let local_s = ranges(&local, local_id, len).await;
        let cached_s = ranges(&cached, cached_id, len).await;
        let mb = (RANGES as u64 * MIB) as f64 / 1e6;
        println!(
            "(b) {RANGES} random 1 MiB ranges: local disk {:.0} MB/s, S3 through the cache {:.0} MB/s: {:.2}x (goal >= 0.8x)",
            mb / local_s,
            mb / cached_s,
            local_s / cached_s
        );

        // (c): streams read from S3 itself (no cache), from a node in a process of its own,
        // published while it is stopped (the store has one owner).
        let dir = tempfile::tempdir().unwrap();
        let no_cache = [("SHOWCASE_STORAGE__S3__CACHE_MAX_MB", "0")];
        let remote = ServerProcess::start_on_aws(dir.path(), &no_cache);
        let token = remote.client().token_for("bench@example.com").await;
        let remote_id = remote.client().uploaded_video(&token, "Bench").await;
        let stored = remote.stored();
        assert!(remote.terminate().success());
        {
            let (store, _) = stored.records().await;
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &video).unwrap();
            stored
                .publish(store.as_ref(), remote_id, file.path(), &common::poster_jpeg())
                .await;
        }
        let remote = ServerProcess::start_on_aws(dir.path(), &no_cache);
        let url = remote.url(&format!("/media/{remote_id}.mp4"));
        let http = reqwest::Client::new();
        let before = remote.rss_bytes();
        let (_, peak) = peak_rss_during(remote.pid(), async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..STREAMS {
                let (http, url) = (http.clone(), url.clone());
                tasks.spawn(async move {
                    let response = http.get(&url).send().await.unwrap();
                    let mut stream = response.bytes_stream();
                    use futures_util::StreamExt;
                    let mut read = 0u64;
                    while let Some(chunk) = stream.next().await {
                        read += chunk.unwrap().len() as u64;
                        // A slow reader: the body waits on it, with bounded buffers.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    read
                });
            }
            let mut total = 0;
            while let Some(read) = tasks.join_next().await {
                total += read.unwrap();
            }
            assert_eq!(total, STREAMS as u64 * len);
        })
        .await;
        println!(
            "(c) {STREAMS} concurrent streams from S3: {} MiB before, {} MiB at most: +{} MiB (goal <= 64)",
            before / MIB,
            peak / MIB,
            peak.saturating_sub(before) / MIB
        );
    });
}
