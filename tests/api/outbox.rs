//! A video and its job across two systems: the record and its job are committed in PostgreSQL,
//! and the outbox relay sends the job to SQS. The node is SIGKILLed in each window of the relay
//! (held there by a fault drill), and after a restart the job is neither lost nor repeated:
//! the video is published exactly once and nothing is left in the queues or the outbox.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::process::ServerProcess;
use crate::common::Checked;
use crate::common::{clip, Clip};

const ADMIN: &str = "admin-token-of-the-drill-01";

/// The node as it runs in each test: a platform node with the fault drill on.
fn start(dir: &std::path::Path, transcode_workers: &str) -> ServerProcess {
    ServerProcess::start_on_platform(
        dir,
        &[
            ("SHOWCASE_FAULTS__ENABLED", "true"),
            ("SHOWCASE_ADMIN__TOKEN", ADMIN),
            ("SHOWCASE_TRANSCODE__WORKERS", transcode_workers),
            ("SHOWCASE_UPLOAD__MIN_DURATION_S", "1"),
        ],
    )
}

async fn hold_relay(server: &ServerProcess, step: &str) {
    let response = reqwest::Client::new()
        .post(server.url("/api/admin/faults"))
        .bearer_auth(ADMIN)
        .json(&json!({"relay_hold": step}))
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills the node in the relay's window `step`, restarts it with a transcoder, and checks the
/// video is published exactly once with nothing left behind.
async fn crash_in(step: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "0");
    let stored = server.stored();
    hold_relay(&server, step).await;
    let token = server.client().token_for("ana@example.com").await;
    let (status, body) = server
        .client()
        .upload(&token, &clip(Clip::Valid), "En la ventana")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();
    let (_, outbox) = stored.records().await;
    match step {
        // Committed with its record, not sent.
        "before_send" => {
            assert!(outbox.job(id).await.unwrap().is_some());
            assert!(!stored.has_job(id).await, "sent while held");
        }
        // Sent, and still in the outbox.
        _ => {
            wait_for("the job in SQS", Duration::from_secs(10), async || {
                stored.has_job(id).await
            })
            .await;
            assert!(outbox.job(id).await.unwrap().is_some());
        }
    }
    server.kill9();

    let server = start(dir.path(), "1");
    let client = server.client();
    let detail = async || -> Value {
        client
            .get(&format!("/api/videos/{id}"), Some(&token))
            .await
            .1
    };
    // The outbox lease of the killed relay runs out (10 s), then its job goes (again).
    let mut published = Value::Null;
    wait_for(
        "publication after restart",
        Duration::from_secs(90),
        async || {
            published = detail().await;
            published["status"] == "processed"
        },
    )
    .await;
    // Whatever arrives later (the second copy of a job sent twice) changes nothing.
    wait_for(
        "an empty queue and outbox",
        Duration::from_secs(30),
        async || {
            let (_, report) = client.get("/api/health/actors", None).await;
            report["queue"] == json!({"depth": 0, "in_flight": 0, "dead": 0})
                && outbox.job(id).await.unwrap().is_none()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(detail().await["processed_at"], published["processed_at"]);
    assert_eq!(stored.keys("processed/"), [format!("processed/{id}.mp4")]);
    assert_eq!(stored.keys("posters/"), [format!("posters/{id}.jpg")]);
    assert!(!stored.has_job(id).await, "a message left in SQS");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_and_before_the_send_loses_no_job() {
    crash_in("before_send").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_send_and_before_the_removal_publishes_once() {
    crash_in("before_remove").await;
}
