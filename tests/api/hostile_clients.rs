//! Hostile clients: what a client can do to the node besides sending bad media. Resets in the
//! middle of an upload, tokens that outlive their player, a full connection cap, requests that
//! hyper refuses on its own, odd spellings of signed URLs, methods the media routes do not have.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::Checked;
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
    let ghost = t.app.node.auth().issue(987_654).token;

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
            .checked()
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

/// Opens `count` connections that never send a byte.
async fn idle_sockets(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    sockets
}

/// Times `count` requests for `path`, each on a new connection; returns their latencies,
/// sorted, after checking each answer with `check`.
async fn timed_gets(
    addr: std::net::SocketAddr,
    path: &str,
    count: usize,
    check: impl Fn(u16, &str, &serde_json::Value),
) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut stream, Duration::from_secs(20)).await;
        took.push(started.elapsed());
        check(status, &head, &body);
    }
    took.sort();
    took
}

fn full_cap_app(ops_listener: bool) -> TestApp {
    TestApp::start_with(|c| {
        c.server.max_connections = 256;
        c.server.ops_reserved_connections = 16;
        if ops_listener {
            c.server.ops_addr = "127.0.0.1:0".into();
        }
    })
}

#[tokio::test]
async fn operations_routes_answer_while_the_cap_is_full_of_idle_sockets() {
    let t = full_cap_app(false);
    // The cap, and 200 more idle sockets waiting in the backlog or the reserve.
    let _idle = idle_sockets(t.app.addr, 256 + 200).await;
    // The reserve closes silent sockets within 200 ms each, 16 at a time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for path in [
        "/api/health",
        "/api/health/ready",
        "/api/health/actors",
        "/metrics",
    ] {
        let took = timed_gets(t.app.addr, path, 10, |status, head, _| {
            assert!(
                status == 200 || (path == "/api/health/ready" && status == 503),
                "{path}: {head}"
            );
        })
        .await;
        println!(
            "{path} with the cap full: median {:?}, max {:?}",
            took[5], took[9]
        );
        assert!(took[5] < Duration::from_millis(100), "{path}: {took:?}");
        assert!(took[9] < Duration::from_secs(2), "{path}: {took:?}");
    }
    // Anything else is refused at once rather than left waiting.
    let took = timed_gets(t.app.addr, "/api/public/videos", 5, |status, head, body| {
        assert_eq!(status, 503, "{head}");
        assert!(header(head, "retry-after").is_some(), "{head}");
        assert!(detail_of(body).contains("conexiones"), "{body}");
    })
    .await;
    println!(
        "a public route with the cap full: refused within {:?}",
        took[4]
    );
    let metrics = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("showcase_http_idle_connections_shed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(shed >= 150.0, "idle sockets shed: {shed}");
}

#[tokio::test]
async fn the_operations_listener_answers_while_the_main_one_is_full() {
    let t = full_cap_app(true);
    let ops = t.app.ops_addr.expect("the operations listener is bound");
    let _idle = idle_sockets(t.app.addr, 256 + 200).await;
    let took = timed_gets(ops, "/api/health", 20, |status, head, _| {
        assert_eq!(status, 200, "{head}");
    })
    .await;
    println!(
        "operations listener with the main cap full: median {:?}, max {:?}",
        took[10], took[19]
    );
    assert!(took[10] < Duration::from_millis(100), "{took:?}");
    assert!(took[19] < Duration::from_secs(2), "{took:?}");
    // Idle sockets cannot crowd it out either: it sheds those that do not speak at once.
    let _idle_ops = idle_sockets(ops, 16 + 48).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = timed_gets(ops, "/api/health", 10, |status, head, _| {
        assert_eq!(status, 200, "{head}");
    })
    .await;
    println!(
        "operations listener full of idle sockets too: median {:?}",
        took[5]
    );
    assert!(took[5] < Duration::from_millis(100), "{took:?}");
    // It serves the operations routes only.
    timed_gets(ops, "/api/public/videos", 1, |status, head, body| {
        assert_eq!(status, 404, "{head}");
        assert!(!detail_of(body).is_empty());
    })
    .await;
}

/// The accept backlog of the listener on `port`, as `ss` reports it (Send-Q of a listener).
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_accept_backlog_is_the_kernels_limit_unless_configured() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = TestApp::start();
    assert_eq!(listen_backlog(t.app.addr.port()), somaxconn);
    let t = TestApp::start_with(|c| c.server.listen_backlog = 77);
    assert_eq!(listen_backlog(t.app.addr.port()), 77);
}

/// Sends `request` as raw bytes and reads the answer.
async fn raw_exchange(t: &TestApp, request: &[u8]) -> (u16, String, serde_json::Value) {
    let mut stream = TcpStream::connect(t.app.addr).await.unwrap();
    // The server may answer and close before all of a huge request is written.
    let _ = stream.write_all(request).await;
    read_response(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test]
async fn requests_hyper_refuses_by_itself_get_a_detail_too() {
    let t = TestApp::start();
    let huge_header = format!(
        "GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let many_headers = format!(
        "GET /api/health HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a 512 KiB header", huge_header.into_bytes(), 431),
        ("200 headers", many_headers.into_bytes(), 431),
        ("a 70,000-byte URI", long_uri.into_bytes(), 414),
        (
            "a Content-Length that is not a number",
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two different Content-Lengths",
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "a broken request line",
            b"GET\x01/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, expected) in cases {
        let (status, head, body) = raw_exchange(&t, &request).await;
        assert_eq!(status, expected, "{what}: {head}");
        assert!(!detail_of(&body).is_empty(), "{what}: {head}");
        assert_eq!(
            header(&head, "content-type"),
            Some("application/json"),
            "{what}"
        );
    }
    // The node is unharmed.
    let (status, _) = t.get("/api/health", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn media_routes_answer_other_methods_405_with_allow() {
    let t = TestApp::start();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/media/1.mp4", "/media/1.jpg", "/media/originals/1.mp4"] {
            let response = t
                .http
                .request(method.parse().unwrap(), t.url(path))
                .checked()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(response.headers()["allow"], "GET, HEAD", "{method} {path}");
            let (_, body) = common::read(response).await;
            assert!(!detail_of(&body).is_empty());
        }
    }
}

#[tokio::test]
async fn signed_urls_accept_only_their_canonical_spelling() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let id = t.uploaded_video(&token, "Original").await;
    let (_, detail) = t.get(&format!("/api/videos/{id}"), Some(&token)).await;
    let url = detail["original_url"].as_str().unwrap().to_string();
    let (path, query) = url.split_once('?').unwrap();
    let expires = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap();
    let signature = query
        .split('&')
        .find_map(|p| p.strip_prefix("signature="))
        .unwrap();
    let status = |query: String| {
        let url = t.url(&format!("{path}?{query}"));
        let http = t.http.clone();
        async move { http.get(url).checked().await.unwrap().status() }
    };
    assert_eq!(status(query.to_string()).await, StatusCode::OK);
    for bad in [
        format!("expires=%2B{expires}&signature={signature}"),
        format!("expires=0{expires}&signature={signature}"),
        format!("expires={expires}&signature={signature}&signature={signature}"),
        format!("expires={expires}&expires={expires}&signature={signature}"),
        format!("expires={expires}&signature={}", signature.to_uppercase()),
    ] {
        assert_eq!(status(bad.clone()).await, StatusCode::FORBIDDEN, "{bad}");
    }
}

#[tokio::test]
async fn every_answer_forbids_sniffing_and_referrers_and_the_page_has_a_policy() {
    let t = TestApp::start();
    for path in [
        "/",
        "/api/health",
        "/api/public/videos",
        "/no/such/route",
        "/media/1.mp4",
    ] {
        let response = t.http.get(t.url(path)).checked().await.unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    let page = t.http.get(t.url("/")).checked().await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
}

#[tokio::test]
async fn names_and_titles_cannot_carry_controls_or_direction_overrides() {
    let t = TestApp::start();
    for (field, value) in [
        ("first_name", "Ana\u{202E}ziuR"),
        ("last_name", "Ruiz\n<b>"),
        ("city", "Cali\u{1b}[2J"),
        ("country", "Colombia\u{2066}"),
    ] {
        let mut body = serde_json::json!({
            "first_name": "Ana", "last_name": "Ruiz", "email": "ana@example.com",
            "password1": common::PASSWORD, "password2": common::PASSWORD,
            "city": "Cali", "country": "Colombia"
        });
        body[field] = serde_json::json!(value);
        let (status, answer) = t.post_json("/api/auth/signup", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert!(detail_of(&answer).contains(field), "{answer}");
    }
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    for title in ["Mi clavada\r\nX-Evil: 1", "gol\u{202E}4pm.exe"] {
        let (status, body) = t
            .upload(&token, &common::clip(common::Clip::Valid), title)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{title:?}: {body}");
        assert!(detail_of(&body).contains("title"), "{body}");
    }
    assert!(t.files_under("tmp").is_empty());
}

#[tokio::test]
async fn the_pages_scripts_and_styles_are_its_own_fingerprinted_files_cached_for_a_year() {
    let t = TestApp::start();
    let page = t.http.get(t.url("/")).checked().await.unwrap();
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("<style"),
        "{html}"
    );
    let paths: std::collections::BTreeSet<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    // The script, the style, the icon and the uploader.
    assert_eq!(paths.len(), 4, "{html}");
    for path in paths {
        let response = t.http.get(t.url(path)).checked().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let kind = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => "image/svg+xml",
        };
        assert_eq!(headers["content-type"], kind, "{path}");
        // The name carries the first 12 hex digits of the content's SHA-256, the ETag all.
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(response.bytes().await.unwrap()));
        assert!(path.contains(&format!(".{}.", &digest[..12])), "{path}");
        assert_eq!(headers["etag"], format!("\"{digest}\""));
    }
    // Only the fingerprinted names are served.
    for path in ["/assets/app.js", "/assets/../Cargo.toml", "/assets/"] {
        let (status, body) = t.get(path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        detail_of(&body);
    }
}
