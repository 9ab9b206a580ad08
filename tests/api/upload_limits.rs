//! Upload limits on the wire: oversized bodies are refused without being read, aborted uploads
//! leave nothing behind, and a 100 MiB upload streams through in bounded memory.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Checked;
use common::process::ServerProcess;
use common::{clip, padded_mp4, Clip, TestApp};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUNDARY: &str = "showcase-test-boundary-7d1f";
const MIB: u64 = 1024 * 1024;

fn multipart_head(title: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n{title}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"big.mp4\"\r\n\
         Content-Type: video/mp4\r\n\r\n"
    )
}

fn multipart_tail() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

/// What a raw client saw: the status line, and how many body bytes it had sent by then.
struct EarlyAnswer {
    status_line: String,
    body_sent_when_answered: u64,
}

/// Sends an upload of `file_bytes` zero bytes by hand, reading the socket while writing.
async fn raw_upload(
    addr: std::net::SocketAddr,
    token: &str,
    file_bytes: u64,
    chunked: bool,
) -> EarlyAnswer {
    let head = multipart_head("Demasiado grande");
    let tail = multipart_tail();
    let body_len = head.len() as u64 + file_bytes + tail.len() as u64;
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {body_len}\r\n")
    };
    let request_head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n"
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicBool::new(false));
    let read_task = {
        let sent = sent.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = reader.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let at = sent.load(Ordering::SeqCst);
            answered.store(true, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&buf).to_string();
            (text.lines().next().unwrap_or("").to_string(), at)
        })
    };

    writer.write_all(request_head.as_bytes()).await.unwrap();
    let zeros = vec![0u8; 64 * 1024];
    let mut pieces: Vec<&[u8]> = vec![head.as_bytes()];
    let mut left = file_bytes;
    let deadline = Instant::now() + Duration::from_secs(60);
    'send: {
        for piece in pieces.drain(..) {
            if write_piece(&mut writer, piece, chunked).await.is_err() {
                break 'send;
            }
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        while left > 0 && !answered.load(Ordering::SeqCst) && Instant::now() < deadline {
            let n = left.min(zeros.len() as u64) as usize;
            if write_piece(&mut writer, &zeros[..n], chunked)
                .await
                .is_err()
            {
                break 'send;
            }
            sent.fetch_add(n as u64, Ordering::SeqCst);
            left -= n as u64;
        }
    }
    let (status_line, body_sent_when_answered) =
        tokio::time::timeout(Duration::from_secs(30), read_task)
            .await
            .expect("an answer")
            .unwrap();
    EarlyAnswer {
        status_line,
        body_sent_when_answered,
    }
}

async fn write_piece(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if chunked {
        writer
            .write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
            .await?;
        writer.write_all(bytes).await?;
        writer.write_all(b"\r\n").await
    } else {
        writer.write_all(bytes).await
    }
}

#[tokio::test]
async fn a_declared_101_mib_upload_is_refused_before_half_of_it_is_sent() {
    let t = TestApp::start();
    let (_, token) = t.player("Luis", "Díaz", "luis@example.com", "Cali").await;
    let total = 101 * MIB;
    let answer = raw_upload(t.app.addr, &token, total, false).await;
    assert!(
        answer.status_line.contains(" 400 "),
        "{}",
        answer.status_line
    );
    assert!(
        answer.body_sent_when_answered < total / 2,
        "the refusal came after {} of {} bytes",
        answer.body_sent_when_answered,
        total
    );
    assert!(t.files_under("tmp").is_empty());
    assert!(t.files_under("media").is_empty());
}

#[tokio::test]
async fn an_undeclared_oversized_upload_is_refused_as_soon_as_it_crosses_the_limit() {
    let t = TestApp::start_with(|c| c.upload.max_bytes = 8 * MIB);
    let (_, token) = t.player("Luis", "Díaz", "luis@example.com", "Cali").await;
    let total = 64 * MIB;
    let answer = raw_upload(t.app.addr, &token, total, true).await;
    assert!(
        answer.status_line.contains(" 400 "),
        "{}",
        answer.status_line
    );
    // Counted while streaming: the answer comes near the 8 MiB limit, far from the 64 MiB end.
    assert!(
        answer.body_sent_when_answered < total / 2,
        "{}",
        answer.body_sent_when_answered
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.files_under("tmp").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t.files_under("tmp").is_empty());
    assert!(t.files_under("media").is_empty());
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_file_and_no_record() {
    let t = TestApp::start();
    let (owner, token) = t.player("Luis", "Díaz", "luis@example.com", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let head = multipart_head("Cortado");
    let length = head.len() + file.len() + multipart_tail().len();
    let request_head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(t.app.addr).await.unwrap();
    stream.write_all(request_head.as_bytes()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&file[..file.len() / 2]).await.unwrap();
    // Wait until the server is writing the temp file, then vanish.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.files_under("tmp").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.files_under("tmp").is_empty() {
        assert!(Instant::now() < deadline, "the temp file was left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let engine = t.app.engine();
    assert!(engine.store.videos_of(owner).await.unwrap().is_empty());
    assert_eq!(engine.queue.stats().await.unwrap().depth, 0);
    assert!(t.files_under("media").is_empty());
    // The slot came back: a full upload goes through afterwards.
    assert_eq!(
        t.upload(&token, &clip(Clip::Valid), "Completo").await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_100_mib_upload_streams_through_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let token = server.client().token_for("luis@example.com").await;

    let big = padded_mp4(100 * MIB);
    let upload = |path: std::path::PathBuf| {
        let http = http.clone();
        let url = server.url("/api/videos/upload");
        let token = token.clone();
        async move {
            let file = tokio::fs::File::open(&path).await.unwrap();
            let len = file.metadata().await.unwrap().len();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                len,
            )
            .file_name("clip.mp4");
            let form = reqwest::multipart::Form::new()
                .text("title", "Grande")
                .part("video_file", part);
            http.post(url)
                .bearer_auth(token)
                .multipart(form)
                .checked()
                .await
                .unwrap()
                .status()
        }
    };
    // Warm up every path once, then measure the resident memory around the big upload.
    assert_eq!(upload(clip(Clip::Valid)).await, StatusCode::CREATED);
    let baseline = server.rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.pid());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kb) = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kb * 1024, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = upload(big).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    println!(
        "resident memory: baseline {} MiB, growth during a 100 MiB upload {:.1} MiB",
        baseline / MIB,
        growth as f64 / MIB as f64
    );
    assert!(
        growth < 20 * 1000 * 1000,
        "resident memory grew by {growth} bytes"
    );
}
