//! Hostile clients: what a client can do to the node besides sending bad media. Resets in the
//! middle of an upload, tokens that outlive their player, a full connection cap, requests that
//! hyper refuses on its own, odd spellings of signed URLs, methods the media routes do not have.

mod common;

use std::time::{Duration, Instant};

use common::raw::{header, read_response};
use common::{detail_of, TestApp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BOUNDARY: &str = "hostile-boundary-31c7";

/// The part header of the file field, as a client sends it before the file's bytes.
fn file_part_header() -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nReset\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\n\
         Content-Type: video/mp4\r\n\r\n"
    )
}

/// Starts an upload of a 2 MiB body, sends its first `cut` bytes and resets the connection.
async fn reset_upload_after(addr: std::net::SocketAddr, token: &str, cut: usize) {
    let mut body = file_part_header().into_bytes();
    body.extend(std::iter::repeat_n(0x5a, 2 * 1024 * 1024));
    let head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..cut]).await.unwrap();
    // Give the node a moment to start on the part, sometimes none at all.
    if cut % 3 != 0 {
        tokio::time::sleep(Duration::from_millis((cut % 7) as u64)).await;
    }
    stream.set_zero_linger().unwrap();
    drop(stream);
}

#[tokio::test]
async fn aborted_uploads_leave_no_temp_file_behind() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let header_len = file_part_header().len();
    let mut rng = StdRng::seed_from_u64(0xab0f7ed);
    // 200 resets at random points of the part header and the first KiB of the file, ten at
    // a time (within the upload slots).
    for _ in 0..20 {
        let uploads: Vec<_> = (0..10)
            .map(|_| {
                let cut = rng.gen_range(0..header_len + 1024);
                let (addr, token) = (t.app.addr, token.clone());
                tokio::spawn(async move { reset_upload_after(addr, &token, cut).await })
            })
            .collect();
        for upload in uploads {
            upload.await.unwrap();
        }
    }
    let reset_at = Instant::now();
    loop {
        let left = t.files_under("tmp");
        if left.is_empty() {
            break;
        }
        assert!(
            reset_at.elapsed() < Duration::from_secs(1),
            "{} temp files left a second after the last reset: {left:?}",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "temp dir empty {:?} after the last reset",
        reset_at.elapsed()
    );
    // The node still takes uploads: no slot leaked.
    let id = t.uploaded_video(&token, "Después").await;
    assert!(id > 0);
}

#[tokio::test]
async fn a_valid_token_for_a_player_who_does_not_exist_is_401_before_any_body() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let video = t.uploaded_video(&token, "Mío").await;
    // Signed with the node's own key, for an id no player has (a deleted account, a restored
    // backup).
    let ghost = t.app.state.auth.issue(987_654).token;

    // The upload is refused before a byte of its 50 MiB body is sent.
    let mut stream = TcpStream::connect(t.app.addr).await.unwrap();
    let head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ghost}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 52428800\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, head, body) = read_response(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status, 401, "{head}");
    assert!(!detail_of(&body).is_empty());
    assert_eq!(header(&head, "www-authenticate"), Some("Bearer"));

    // Every other authenticated route answers 401 as well.
    for (method, path) in [
        ("GET", "/api/videos".to_string()),
        ("GET", format!("/api/videos/{video}")),
        ("DELETE", format!("/api/videos/{video}")),
        ("POST", format!("/api/public/videos/{video}/vote")),
    ] {
        let response = t
            .http
            .request(method.parse().unwrap(), t.url(&path))
            .bearer_auth(&ghost)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    // Nothing was stored for the ghost, and the real owner's video is untouched.
    assert!(t.files_under("tmp").is_empty());
    let (status, _) = t.get(&format!("/api/videos/{video}"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
}
