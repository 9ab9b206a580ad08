//! Health routes, the web page, and the refusals that readiness reflects.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::Checked;
use common::{clip, detail_of, Clip, TestApp};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn liveness_readiness_and_actor_health() {
    let t = TestApp::start();
    let (status, body) = t.get("/api/health", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let (status, body) = t.get("/api/health/ready/", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = t.get("/api/health/actors", None).await;
    assert_eq!(status, StatusCode::OK);
    let actors = body["actors"].as_array().unwrap();
    let ingest = actors
        .iter()
        .find(|a| a["name"] == "ingest")
        .expect("ingest reports");
    assert_eq!(ingest["state"], "running");
    assert_eq!(ingest["restarts"], 0);
    assert_eq!(ingest["mailbox_capacity"], 256);
    assert!(ingest["heartbeat_age_ms"].as_u64().unwrap() < 5_000);
    assert!(actors.iter().any(|a| a["name"] == "supervisor"));
    assert_eq!(body["queue"]["depth"], 0);
    assert!(body["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert!(body["version"].as_str().is_some());
}

#[tokio::test]
async fn low_disk_makes_the_node_unready_and_refuses_uploads_before_reading_them() {
    let t = TestApp::start_with(|c| c.upload.min_free_disk_mb = u64::MAX / (2 * 1024 * 1024));
    let (status, body) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail_of(&body).contains("free disk"), "{body}");
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let response = t
        .http
        .post(t.url("/api/videos/upload"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().text("title", "x").part(
            "video_file",
            reqwest::multipart::Part::bytes(std::fs::read(clip(Clip::Valid)).unwrap()),
        ))
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(
        response.headers()["connection"],
        "close",
        "the unread body ends the connection"
    );
    let (_, body) = common::read(response).await;
    detail_of(&body);
}

#[tokio::test]
async fn a_full_queue_refuses_uploads_and_readiness_says_why() {
    let t = TestApp::start_with(|c| c.upload.max_queue_depth = 1);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    t.uploaded_video(&token, "Llena la cola").await;
    let (status, body) = t.upload(&token, &clip(Clip::Valid), "Sobra").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail_of(&body).contains("queue depth"), "{body}");
}

#[tokio::test]
async fn uploads_beyond_the_slots_are_refused_at_once_with_retry_after() {
    let t = TestApp::start_with(|c| c.upload.max_concurrent = 1);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    // Hold the only slot with an upload that starts its file and then waits.
    let mut slow = tokio::net::TcpStream::connect(t.app.addr).await.unwrap();
    let head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n\
         Content-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0u8; 4096]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.files_under("tmp").is_empty() {
        assert!(Instant::now() < deadline, "the slow upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (status, body) = t.upload(&token, &clip(Clip::Valid), "Segundo").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting for the slot"
    );
    assert!(detail_of(&body).contains("Capacidad"), "{body}");
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = t.upload(&token, &clip(Clip::Valid), "Tercero").await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_web_page_is_served_at_the_root() {
    let t = TestApp::start();
    let response = t.http.get(t.url("/")).checked().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = response.text().await.unwrap();
    // Its script, which it names, reads the public routes.
    let script = html
        .split('"')
        .find(|s| s.starts_with("/assets/app.") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("no script in {html}"));
    let (status, code) = t.get(script, None).await;
    assert_eq!(status, StatusCode::OK);
    let code = code.as_str().unwrap();
    assert!(code.contains("/api/public/rankings") && code.contains("/api/public/videos"));
}
