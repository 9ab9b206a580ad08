//! Ingest benchmarks, printed (never asserted):
//! 1. a 100 MiB upload over loopback against copying the same file and fdatasyncing it, in the
//!    same run on the same disk (goal: ratio ≤ 1.5);
//! 2. durable enqueue throughput of the embedded queue, with group commit (goal ≥ 5,000 jobs/s);
//! 3. the same 100 MiB sent as a resumable upload (tus, 8 MiB chunks) against the form upload,
//!    to a node of the release binary, with its resident memory sampled during both (goal:
//!    ratio ≤ 1.3, memory flat).
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

/// Samples the resident memory of `pid` every 20 ms until `stop`; gives the peak.
fn sample_rss(pid: i32, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(common::process::rss_of(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// Runs `work` while sampling the node's memory: its duration and the peak resident set.
async fn measured<F: std::future::Future<Output = ()>>(pid: i32, work: F) -> (Duration, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_rss(pid, stop.clone());
    let started = Instant::now();
    work.await;
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (elapsed, sampler.join().unwrap())
}

/// A tus upload of `path` in chunks of `chunk` bytes: creation, then one PATCH per chunk.
async fn tus_upload(client: &common::Client, token: &str, path: &Path, chunk: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    let created = client
        .http
        .post(client.url("/api/uploads"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len)
        .header("Upload-Metadata", "title QmVuY2htYXJr")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let at = created.headers()["location"].to_str().unwrap().to_string();
    let mut offset = 0;
    while offset < len {
        let size = chunk.min(len - offset);
        let mut file = tokio::fs::File::open(path).await.unwrap();
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
            .await
            .unwrap();
        let body = tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(file, size),
            256 * 1024,
        );
        let answer = client
            .http
            .patch(client.url(&at))
            .bearer_auth(token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Content-Length", size)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 204, "{}", answer.text().await.unwrap());
        offset = answer.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
}

async fn resumable_benchmark() {
    const ROUNDS: usize = 3;
    let big = common::padded_mp4(100 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::ServerProcess::start(
        dir.path(),
        &[
            ("SHOWCASE_TRANSCODE__WORKERS", "0"),
            ("SHOWCASE_UPLOAD__MIN_FREE_DISK_MB", "0"),
            ("SHOWCASE_RATE_LIMIT__UPLOAD_CREATION_PER_MINUTE", "0"),
        ],
    );
    let client = server.client();
    let (_, token) = client
        .player("Bench", "Mark", "bench@example.com", "Cali")
        .await;
    let url = client.url("/api/videos/upload");
    let pid = server.pid();
    // Warm both paths once.
    timed_upload(&client.http, &url, &token, &big).await;
    tus_upload(&client, &token, &big, 8 * MIB).await;
    let idle = common::process::rss_of(pid);
    let (mut forms, mut tuses, mut form_peak, mut tus_peak) = (vec![], vec![], 0, 0);
    for _ in 0..ROUNDS {
        let (took, peak) = measured(pid, async {
            timed_upload(&client.http, &url, &token, &big).await;
        })
        .await;
        forms.push(took);
        form_peak = form_peak.max(peak);
        let (took, peak) = measured(pid, tus_upload(&client, &token, &big, 8 * MIB)).await;
        tuses.push(took);
        tus_peak = tus_peak.max(peak);
    }
    let (form, tus) = (median(forms), median(tuses));
    let ratio = tus.as_secs_f64() / form.as_secs_f64();
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    println!(
        "100 MiB form upload to the release binary (median of {ROUNDS}): {:.3} s",
        form.as_secs_f64()
    );
    println!(
        "100 MiB tus upload in 8 MiB chunks (13 PATCHes, median of {ROUNDS}): {:.3} s",
        tus.as_secs_f64()
    );
    println!(
        "ratio tus / form: {ratio:.2} (goal <= 1.3) -> {}",
        if ratio <= 1.3 { "MET" } else { "NOT MET" }
    );
    println!(
        "node resident memory: {:.1} MiB idle, peak {:.1} MiB during form uploads, {:.1} MiB \
         during tus uploads",
        mib(idle),
        mib(form_peak),
        mib(tus_peak)
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
            resumable_benchmark().await;
        }
        enqueue_benchmark().await;
    });
}
