//! Admission control: every refusal is decided before the body is read and says when to come
//! back; slow clients cannot hold the node; per-client budgets answer 429 and forget idle
//! clients; readiness reports shedding.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::Checked;
use common::raw::{header, read_response};
use common::{detail_of, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The declared size of the uploads below; only [`SENT`] bytes of it are ever sent.
const DECLARED: usize = 50 * 1024 * 1024;
const SENT: usize = 64 * 1024;

/// Opens a connection and sends the head of a 50 MiB upload, up to where the file's bytes go.
async fn start_upload(t: &TestApp, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(t.app.addr).await.unwrap();
    let head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {DECLARED}\r\n\r\n--b\r\n\
         Content-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Starts a 50 MiB upload, sends its first 64 KiB and waits for the answer without sending more.
async fn upload_refused_before_the_body(t: &TestApp, token: &str) -> (u16, String, Value) {
    let mut stream = start_upload(t, token).await;
    // The first bytes may already be on their way; the rest stays with the client.
    let _ = stream.write_all(&vec![0u8; SENT]).await;
    read_response(&mut stream, Duration::from_secs(5)).await
}

fn assert_refusal(status: u16, head: &str, body: &Value, expected_detail: &str) {
    assert_eq!(status, 503, "{head}");
    let retry_after: u64 = header(head, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert!(detail_of(body).contains(expected_detail), "{body}");
    assert_eq!(header(head, "connection"), Some("close"), "{head}");
}

#[tokio::test]
async fn every_upload_refusal_comes_before_the_body_with_retry_after() {
    // A full disk.
    let t = TestApp::start_with(|c| c.upload.min_free_disk_mb = u64::MAX / (2 * 1024 * 1024));
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let (status, head, body) = upload_refused_before_the_body(&t, &token).await;
    assert_refusal(status, &head, &body, "almacenamiento");
    assert!(t.files_under("tmp").is_empty() && t.files_under("media").is_empty());

    // A full queue, which does not drain (no worker): the longest wait.
    let t = TestApp::start_with(|c| c.upload.max_queue_depth = 1);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    t.uploaded_video(&token, "Llena la cola").await;
    let (status, head, body) = upload_refused_before_the_body(&t, &token).await;
    assert_refusal(status, &head, &body, "cola");
    assert_eq!(header(&head, "retry-after"), Some("60"));

    // No slot: one upload holds the only one.
    let t = TestApp::start_with(|c| c.upload.max_concurrent = 1);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let mut holder = start_upload(&t, &token).await;
    holder.write_all(&[0u8; 4096]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.files_under("tmp").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the holding upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (status, head, body) = upload_refused_before_the_body(&t, &token).await;
    assert_refusal(status, &head, &body, "Capacidad");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    // The slot is the first question, so that a crowd costs the node as little as possible:
    // while none is free, even a forged token is answered 503, before it is checked.
    let (status, head, body) = upload_refused_before_the_body(&t, "no-es-un-token").await;
    assert_refusal(status, &head, &body, "Capacidad");

    // While it sheds, readiness says so; once the slot is free and a moment has passed, it
    // is ready again.
    let (status, body) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail_of(&body).contains("shedding"), "{body}");
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = t.get("/api/health/ready", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still unready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With a slot free, the forged token is what refuses the upload.
    let (status, head, _) = upload_refused_before_the_body(&t, "no-es-un-token").await;
    assert_eq!(status, 401, "{head}");
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_after_the_header_timeout() {
    let t = TestApp::start_with(|c| c.server.header_read_timeout_s = 1);
    let mut stream = TcpStream::connect(t.app.addr).await.unwrap();
    let started = Instant::now();
    // One header byte every 200 ms: the head would never end.
    let mut closed = false;
    for byte in
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut probe)).await
        {
            // Either a 408 then the close, or the close itself.
            match read {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
    }
    assert!(closed, "the connection outlived the header timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // The node still serves everyone else.
    let (status, _) = t.get("/api/health", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_upload_body_is_aborted_and_frees_its_slot() {
    let t = TestApp::start_with(|c| {
        c.upload.max_concurrent = 1;
        c.server.body_idle_timeout_s = 1;
    });
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let mut stream = start_upload(&t, &token).await;
    stream.write_all(&[0u8; 4096]).await.unwrap();
    // Then nothing: the body goes idle.
    let (status, _, body) = read_response(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status, 408, "{body}");
    detail_of(&body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.files_under("tmp").is_empty() {
        assert!(Instant::now() < deadline, "the temp file stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = t
        .upload(&token, &common::clip(common::Clip::Valid), "Después")
        .await;
    assert_eq!(status, StatusCode::CREATED, "the slot came back: {body}");
}

async fn login_from(t: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&json!({"email": "nadie@example.com", "password": "incorrecta"}));
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    request.checked().await.unwrap()
}

#[tokio::test]
async fn over_its_budget_a_client_gets_429_and_others_do_not() {
    let t = TestApp::start_with(|c| {
        c.rate_limit.login_per_minute = 6;
        c.rate_limit.login_burst = 2;
        c.server.trusted_proxies = "127.0.0.1".into();
    });
    for _ in 0..2 {
        assert_eq!(login_from(&t, Some("203.0.113.1")).await.status(), 401);
    }
    let refused = login_from(&t, Some("203.0.113.1")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let (_, body) = common::read(refused).await;
    assert!(detail_of(&body).contains("Demasiadas"), "{body}");
    // Another client behind the same proxy has its own budget.
    assert_eq!(login_from(&t, Some("203.0.113.2")).await.status(), 401);

    // Without a trusted proxy, the header is the client's own word: ignored.
    let t = TestApp::start_with(|c| {
        c.rate_limit.vote_per_minute = 6;
        c.rate_limit.vote_burst = 2;
    });
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = t
            .http
            .post(t.url("/api/public/videos/1/vote"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .checked()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 429]);
}

#[tokio::test]
async fn ten_thousand_clients_are_told_apart_and_their_idle_buckets_evicted() {
    let t = TestApp::start_with(|c| {
        // A bucket refills in 10 ms, so it is idle (full) right after its one use.
        c.rate_limit.vote_per_minute = 6000;
        c.rate_limit.vote_burst = 1;
        // The periodic eviction stays out of the way; this test evicts by hand to count exactly.
        c.rate_limit.evict_every_s = 3600;
        c.server.trusted_proxies = "127.0.0.1".into();
    });
    let limits = t.app.node.rate_limits().clone();
    for batch in 0..40u32 {
        let requests = (0..250u32).map(|i| {
            let n = batch * 250 + i;
            let addr = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
            t.http
                .post(t.url("/api/public/videos/1/vote"))
                .header("x-forwarded-for", addr)
                .checked()
        });
        for response in futures_util::future::join_all(requests).await {
            assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
    }
    let peak = limits.tracked_clients();
    assert_eq!(peak, 10_000, "one bucket per client address");
    tokio::time::sleep(Duration::from_millis(50)).await;
    limits.evict_idle();
    let after = limits.tracked_clients();
    eprintln!("rate limiter: {peak} client buckets at the peak, {after} after eviction");
    assert_eq!(after, 0, "every idle bucket is dropped");
}

#[tokio::test]
async fn the_server_evicts_idle_buckets_by_itself() {
    let t = TestApp::start_with(|c| {
        // One vote a second, no burst: a second vote at once is refused, and the bucket is idle
        // (full again) one second later.
        c.rate_limit.vote_per_minute = 60;
        c.rate_limit.vote_burst = 1;
        c.rate_limit.evict_every_s = 1;
    });
    let limits = t.app.node.rate_limits().clone();
    let vote = || t.http.post(t.url("/api/public/videos/1/vote")).checked();
    assert_eq!(vote().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The refusal proves the client's bucket exists right now.
    assert_eq!(
        vote().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while limits.tracked_clients() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle bucket is still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Evicted, not merely reset: the client starts again from a full bucket.
    assert_eq!(vote().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oversized_json_bodies_are_refused() {
    let t = TestApp::start();
    let huge = "x".repeat(64 * 1024);
    let response = t
        .http
        .post(t.url("/api/auth/signup"))
        .json(&json!({ "first_name": huge }))
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, body) = common::read(response).await;
    detail_of(&body);
}
