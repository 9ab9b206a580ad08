//! Ingest benchmarks, printed (never asserted):
//! 1. a 100 MiB upload over loopback against copying the same file and fdatasyncing it, in the
//!    same run on the same disk (goal: ratio ≤ 1.5);
//! 2. durable enqueue throughput of the embedded queue, with group commit (goal ≥ 5,000 jobs/s).
//!
//! Run with `make bench` (or `cargo bench --bench ingest`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use showcase::domain::now_ms;
use showcase::engine::sled_engine::SledEngine;
use showcase::engine::{Job, JobQueue};

const MIB: u64 = 1024 * 1024;
const ROUNDS: usize = 5;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The baseline: what the disk needs to take the same bytes durably.
fn copy_and_fdatasync(source: &Path, target: &Path) -> Duration {
    let started = Instant::now();
    let mut input = std::fs::File::open(source).unwrap();
    let mut output = std::fs::File::create(target).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n]).unwrap();
    }
    output.sync_data().unwrap();
    let elapsed = started.elapsed();
    std::fs::remove_file(target).unwrap();
    elapsed
}

async fn timed_upload(http: &reqwest::Client, url: &str, token: &str, path: &Path) -> Duration {
    let started = Instant::now();
    let file = tokio::fs::File::open(path).await.unwrap();
    let len = file.metadata().await.unwrap().len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name("big.mp4");
    let form = reqwest::multipart::Form::new()
        .text("title", "Benchmark")
        .part("video_file", part);
    let response = http
        .post(url)
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    started.elapsed()
}

async fn upload_benchmark() {
    let big = common::padded_mp4(100 * MIB);
    let t = common::TestApp::start();
    let (_, token) = t.quick_player("Bench", "Mark", "Cali").await;
    let url = t.url("/api/videos/upload");

    // Warm the page cache and every code path once.
    timed_upload(&t.http, &url, &token, &big).await;
    copy_and_fdatasync(&big, &t.dir.path().join("copy.bin"));

    let mut uploads = Vec::new();
    let mut copies = Vec::new();
    for _ in 0..ROUNDS {
        copies.push(copy_and_fdatasync(&big, &t.dir.path().join("copy.bin")));
        uploads.push(timed_upload(&t.http, &url, &token, &big).await);
    }
    let (upload, copy) = (median(uploads), median(copies));
    let ratio = upload.as_secs_f64() / copy.as_secs_f64();
    println!(
        "100 MiB upload over loopback (median of {ROUNDS}): {:.3} s",
        upload.as_secs_f64()
    );
    println!(
        "copy + fdatasync of the same file (median of {ROUNDS}): {:.3} s",
        copy.as_secs_f64()
    );
    println!(
        "ratio upload / copy: {ratio:.2} (goal <= 1.5; the replaced system needed 7.8 s) -> {}",
        if ratio <= 1.5 { "MET" } else { "NOT MET" }
    );
}

async fn enqueue_benchmark() {
    const JOBS: u64 = 50_000;
    const WRITERS: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let queue = SledEngine::open(dir.path(), 5, Duration::from_secs(30)).unwrap();
    let flushes_before = queue.flush_count();
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let queue: Arc<SledEngine> = queue.clone();
            tokio::spawn(async move {
                let mut id = w + 1;
                while id <= JOBS {
                    let job = Job {
                        video_id: id,
                        task_id: format!("task-{id}"),
                        original_key: format!("originals/{id}.mp4"),
                        enqueued_at_ms: now_ms(),
                        receive_count: 0,
                        last_error: None,
                    };
                    // Returns only once the job is on disk.
                    queue.enqueue(job).await.unwrap();
                    id += WRITERS;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let elapsed = started.elapsed();
    let fsyncs = queue.flush_count() - flushes_before;
    println!("time in fsyncs: {:.2} s", queue.flush_time().as_secs_f64());
    assert_eq!(queue.stats().await.unwrap().depth, JOBS);
    let rate = JOBS as f64 / elapsed.as_secs_f64();
    println!(
        "durable enqueue: {JOBS} jobs from {WRITERS} writers in {:.2} s = {rate:.0} jobs/s, {fsyncs} fsyncs \
         ({:.0} jobs per fsync) (goal >= 5000; the replaced system managed 5.35/s) -> {}",
        elapsed.as_secs_f64(),
        JOBS as f64 / fsyncs.max(1) as f64,
        if rate >= 5000.0 { "MET" } else { "NOT MET" }
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if std::env::args().all(|a| a != "--enqueue-only") {
            upload_benchmark().await;
        }
        enqueue_benchmark().await;
    });
}
