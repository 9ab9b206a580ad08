//! What was acknowledged survives SIGKILL: the real binary is killed right after a 201 and
//! right after a vote's 200, then restarted on the same data dir.

use crate::common;

use crate::common::Checked;
use common::process::ServerProcess;
use common::{clip, Clip};
use reqwest::StatusCode;

async fn upload(server: &ServerProcess, token: &str) -> u64 {
    let (status, body) = server
        .client()
        .upload(token, &clip(Clip::Valid), "Antes del corte")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["video_id"].as_u64().unwrap()
}

#[tokio::test]
async fn an_upload_acknowledged_just_before_sigkill_is_there_after_restart() {
    acknowledged_upload_survives_sigkill(&[]).await;
}

#[tokio::test]
async fn an_upload_written_straight_to_the_disk_survives_sigkill_byte_for_byte() {
    acknowledged_upload_survives_sigkill(&[("SHOWCASE_UPLOAD__DIRECT_WRITES", "true")]).await;
}

/// Uploads on a node started with `env`, kills it with SIGKILL right after the 201, and finds
/// the video, its original byte for byte and its job after a restart.
async fn acknowledged_upload_survives_sigkill(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), env);
    let token = server.client().token_for("luis@example.com").await;
    let id = upload(&server, &token).await;
    let stored = server.stored();
    server.kill9();

    let server = ServerProcess::start(dir.path(), env);
    // The token still verifies: the generated secret was persisted before it was used.
    let (status, video) = server
        .client()
        .get(&format!("/api/videos/{id}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{video}");
    assert_eq!(video["status"], "uploaded");
    assert_eq!(video["title"], "Antes del corte");
    assert_eq!(
        stored
            .blob(&format!("originals/{id}.mp4"))
            .expect("the original survived"),
        std::fs::read(clip(Clip::Valid)).unwrap()
    );
    // With SQS the relay may be moving it from the outbox as it is counted (twice, for a
    // moment): the count settles at one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, health) = server.client().get("/api/health/actors", None).await;
        if health["queue"]["depth"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM ends with exit 0, got {status:?}");
    assert!(stored.has_job(id).await, "the job survived");
}

#[tokio::test]
async fn a_vote_acknowledged_just_before_sigkill_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let owner = server.client().token_for("owner@example.com").await;
    let fan = server.client().token_for("fan@example.com").await;
    let id = upload(&server, &owner).await;
    let stored = server.stored();
    assert!(server.terminate().success());

    // Publish it as the pipeline would, with the node stopped (sled has one owner).
    {
        let (store, _) = stored.records().await;
        common::publish_in(store.as_ref(), id).await;
    }

    let server = ServerProcess::start(dir.path(), &[]);
    assert_eq!(server.client().vote(&fan, id).await.0, StatusCode::OK);
    server.kill9();

    let server = ServerProcess::start(dir.path(), &[]);
    let (_, video) = server
        .client()
        .get(&format!("/api/videos/{id}"), Some(&owner))
        .await;
    assert_eq!(video["votes"], 1, "{video}");
    let (_, rankings) = server.client().get("/api/public/rankings", None).await;
    assert_eq!(rankings[0]["votes"], 1, "{rankings}");
    assert_eq!(
        server.client().vote(&fan, id).await.0,
        StatusCode::BAD_REQUEST
    );
}

/// Guards graceful shutdown: SIGTERM stops new connections but lets an upload in flight end
/// with its 201, and the process exits 0.
#[tokio::test]
async fn sigterm_lets_the_upload_in_flight_finish_and_exits_zero() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let server = ServerProcess::start(dir.path(), &[]);
    let token = server.client().token_for("luis@example.com").await;

    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let head = "--b\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nEn vuelo\r\n--b\r\n\
                Content-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\n\r\n";
    let tail = "\r\n--b--\r\n";
    let length = head.len() + file.len() + tail.len();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n{head}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&file[..file.len() / 2]).await.unwrap();
    while common::files_under(&dir.path().join("tmp")).is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    // New connections are no longer accepted...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match http.get(server.url("/api/health")).checked().await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still accepting after SIGTERM"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    // ...but the upload in flight completes.
    stream.write_all(&file[file.len() / 2..]).await.unwrap();
    stream.write_all(tail.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let stored = server.stored();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");

    let (store, _) = stored.records().await;
    let id = response
        .split("\"video_id\":")
        .nth(1)
        .unwrap()
        .trim_end_matches('}')
        .trim()
        .parse()
        .unwrap();
    assert!(store.video(id).await.unwrap().is_some());
}
