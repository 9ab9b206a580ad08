//! The media routes over real HTTP: ranges, conditional requests, signed originals, the
//! concurrent-stream cap, and real clients (curl, ffprobe).

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Checked;
use common::{clip, detail_of, poster_jpeg, random_file, Clip, TestApp};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node with one published video whose rendition is `file`. Returns (app, id, bytes, token).
async fn published(file: &std::path::Path) -> (TestApp, u64, Vec<u8>, String) {
    published_with(file, |_| {}).await
}

async fn published_with(
    file: &std::path::Path,
    adjust: impl FnOnce(&mut showcase::config::Config),
) -> (TestApp, u64, Vec<u8>, String) {
    let t = TestApp::start_with(adjust);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let id = t.uploaded_video(&token, "Para ver").await;
    let bytes = t.publish_with_files(id, file, &poster_jpeg()).await;
    (t, id, bytes, token)
}

async fn get(
    t: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = t.http.get(t.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.checked().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn whole_file_with_validators_and_caching_headers() {
    let (t, id, bytes, _) = published(&clip(Clip::Valid)).await;
    let (status, headers, body) = get(&t, &format!("/media/{id}.mp4"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(h(&headers, "accept-ranges"), "bytes");
    assert_eq!(h(&headers, "content-type"), "video/mp4");
    assert_eq!(h(&headers, "content-length"), bytes.len().to_string());
    assert_eq!(
        h(&headers, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let stored = t.app.engine().store.video(id).await.unwrap().unwrap();
    assert_eq!(
        h(&headers, "etag"),
        format!("\"{}\"", stored.content_hash.unwrap())
    );
    assert!(httpdate::parse_http_date(h(&headers, "last-modified")).is_ok());

    let (status, headers, body) = get(&t, &format!("/media/{id}.jpg"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "content-type"), "image/jpeg");
    assert_eq!(body, std::fs::read(poster_jpeg()).unwrap());
    assert_eq!(
        h(&headers, "etag"),
        format!("\"{}\"", stored.poster_hash.unwrap())
    );
}

#[tokio::test]
async fn each_range_form_and_the_unsatisfiable_and_malformed_ones() {
    let (t, id, bytes, _) = published(&clip(Clip::Valid)).await;
    let len = bytes.len();
    let path = format!("/media/{id}.mp4");
    for (range, first, last) in [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-", len - 1000), len - 1000, len - 1),
        ("bytes=-500".to_string(), len - 500, len - 1),
        (format!("bytes=100-{}", len + 5000), 100, len - 1),
    ] {
        let (status, headers, body) = get(&t, &path, &[("range", &range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            h(&headers, "content-range"),
            format!("bytes {first}-{last}/{len}")
        );
        assert_eq!(
            h(&headers, "content-length"),
            (last - first + 1).to_string()
        );
        assert_eq!(body, &bytes[first..=last], "{range}");
    }
    let (status, headers, body) = get(&t, &path, &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h(&headers, "content-range"), format!("bytes */{len}"));
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    detail_of(&error);
    for malformed in ["bytes=9-3", "bytes=abc", "pages=0-5", "bytes"] {
        let (status, _, body) = get(&t, &path, &[("range", malformed)]).await;
        assert_eq!(status, StatusCode::OK, "{malformed}");
        assert_eq!(body.len(), len);
    }
}

#[tokio::test]
async fn several_ranges_come_back_as_multipart_byteranges() {
    let (t, id, bytes, _) = published(&clip(Clip::Valid)).await;
    let len = bytes.len();
    let (status, headers, body) = get(
        &t,
        &format!("/media/{id}.mp4"),
        &[("range", "bytes=-100, 0-9, 5-19, 1000-1999")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let content_type = h(&headers, "content-type");
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(content_type);
    assert_eq!(h(&headers, "content-length"), body.len().to_string());
    // Parse the parts back: overlapping 0-9 and 5-19 came back as one part, in order.
    let delimiter = format!("--{boundary}");
    let text = body.clone();
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(start) = find(&text[at..], delimiter.as_bytes()).map(|p| p + at) {
        let after = start + delimiter.len();
        if text[after..].starts_with(b"--") {
            break;
        }
        let head_end = find(&text[after..], b"\r\n\r\n").unwrap() + after;
        let head = String::from_utf8(text[after..head_end].to_vec()).unwrap();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: bytes "))
            .unwrap()
            .to_string();
        assert!(head.contains("Content-Type: video/mp4"));
        let (span, total) = range.split_once('/').unwrap();
        assert_eq!(total, len.to_string());
        let (first, last) = span.split_once('-').unwrap();
        let (first, last): (usize, usize) = (first.parse().unwrap(), last.parse().unwrap());
        let data_start = head_end + 4;
        assert_eq!(
            &text[data_start..=data_start + last - first],
            &bytes[first..=last]
        );
        parts.push((first, last));
        at = data_start + last - first + 1;
    }
    assert_eq!(parts, vec![(0, 19), (1000, 1999), (len - 100, len - 1)]);
}

#[tokio::test]
async fn if_range_if_none_match_and_if_modified_since() {
    let (t, id, bytes, _) = published(&clip(Clip::Valid)).await;
    let path = format!("/media/{id}.mp4");
    let (_, headers, _) = get(&t, &path, &[]).await;
    let etag = h(&headers, "etag").to_string();
    let modified = h(&headers, "last-modified").to_string();
    let older = httpdate::fmt_http_date(
        httpdate::parse_http_date(&modified).unwrap() - Duration::from_secs(3600),
    );

    let (status, _, body) = get(&t, &path, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    let (status, _, body) = get(
        &t,
        &path,
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::OK, bytes.len()));
    let (status, _, body) = get(
        &t,
        &path,
        &[("range", "bytes=0-9"), ("if-range", &modified)],
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    let (status, _, body) = get(&t, &path, &[("range", "bytes=0-9"), ("if-range", &older)]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, bytes.len()));

    let (status, headers, body) = get(&t, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h(&headers, "etag"), etag);
    let (status, _, _) = get(&t, &path, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&t, &path, &[("if-modified-since", &modified)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, _, _) = get(&t, &path, &[("if-modified-since", &older)]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let (t, id, _, _) = published(&clip(Clip::Valid)).await;
    let path = format!("/media/{id}.mp4");
    for range in [None, Some("bytes=10-20"), Some("bytes=0-1,5-6")] {
        let mut get_request = t.http.get(t.url(&path));
        let mut head_request = t.http.head(t.url(&path));
        if let Some(range) = range {
            get_request = get_request.header("range", range);
            head_request = head_request.header("range", range);
        }
        let got = get_request.checked().await.unwrap();
        let head = head_request.checked().await.unwrap();
        assert_eq!(got.status(), head.status());
        for name in [
            "content-length",
            "content-range",
            "accept-ranges",
            "etag",
            "last-modified",
            "cache-control",
        ] {
            assert_eq!(
                got.headers().get(name),
                head.headers().get(name),
                "{name} for {range:?}"
            );
        }
        if range.is_none_or(|r| !r.contains(',')) {
            assert_eq!(
                got.headers().get("content-type"),
                head.headers().get("content-type")
            );
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn unpublished_unknown_and_malformed_media_are_404() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let id = t.uploaded_video(&token, "Pendiente").await;
    for path in [
        format!("/media/{id}.mp4"),
        format!("/media/{id}.jpg"),
        "/media/999.mp4".into(),
        "/media/x.mp4".into(),
        "/media/1.gif".into(),
    ] {
        let (status, _, body) = get(&t, &path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        detail_of(&serde_json::from_slice(&body).unwrap());
    }
}

#[tokio::test]
async fn originals_need_a_valid_unexpired_signature() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let id = t.uploaded_video(&token, "Original").await;
    let (_, detail) = t.get(&format!("/api/videos/{id}"), Some(&token)).await;
    let url = detail["original_url"].as_str().unwrap();
    let (status, headers, body) = get(&t, url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, std::fs::read(clip(Clip::Valid)).unwrap());
    assert_eq!(h(&headers, "cache-control"), "private, no-store");
    let (status, _, part) = get(&t, url, &[("range", "bytes=0-3")]).await;
    assert_eq!(
        (status, &part[..]),
        (StatusCode::PARTIAL_CONTENT, &body[..4])
    );

    let tampered = url.replace(
        &format!("/media/originals/{id}.mp4"),
        &format!("/media/originals/{}.mp4", id + 1),
    );
    let path = format!("/media/originals/{id}.mp4");
    let expired = t.app.node.signer().sign(&path, 1_000);
    let mut bad_signature = url.to_string();
    bad_signature.pop();
    bad_signature.push(if url.ends_with('0') { '1' } else { '0' });
    for bad in [
        tampered.as_str(),
        expired.as_str(),
        bad_signature.as_str(),
        path.as_str(),
    ] {
        let (status, _, body) = get(&t, bad, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}");
        detail_of(&serde_json::from_slice(&body).unwrap());
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn active_streams(t: &TestApp) -> u64 {
    t.get("/api/health/actors", None).await.1["streams"]["active"]
        .as_u64()
        .unwrap()
}

/// Opens a download and reads `read` bytes of it, then stops reading (keeping it open).
async fn stalled_download(t: &TestApp, path: &str, read: usize) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(t.app.addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < read {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the download ended early");
        got += n;
    }
    stream
}

#[tokio::test]
async fn the_stream_cap_refuses_at_once_and_a_reader_that_leaves_frees_its_permit() {
    let big = random_file(64 * 1024 * 1024);
    let (t, id, _, _) = published_with(&big, |c| c.stream.max_concurrent = 2).await;
    let path = format!("/media/{id}.mp4");
    let first = stalled_download(&t, &path, 1024 * 1024).await;
    let second = stalled_download(&t, &path, 1024 * 1024).await;
    assert_eq!(active_streams(&t).await, 2);
    let started = Instant::now();
    let (status, headers, body) = get(&t, &path, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(headers.get("retry-after").is_some());
    detail_of(&serde_json::from_slice(&body).unwrap());

    // The clients go away after reading 1 MB: their permits come back.
    drop(first);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while active_streams(&t).await != 0 {
        assert!(Instant::now() < deadline, "permits were not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = get(&t, &path, &[("range", "bytes=0-0")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn curl_ranges_are_byte_exact_and_ffprobe_reads_the_duration_through_http() {
    let (t, id, bytes, _) = published(&clip(Clip::Valid)).await;
    let url = t.url(&format!("/media/{id}.mp4"));
    let out_dir = tempfile::tempdir().unwrap();
    let curl = |range: &str| {
        // A 503 (a slow media store: the streamer's answer is bounded) is retried after its
        // Retry-After, as curl does with --retry, into a file it starts afresh each time;
        // what is checked is the bytes of the answer that came.
        let file = out_dir.path().join("range.bin");
        let out = Command::new("curl")
            .args([
                "-sS",
                "--retry",
                "3",
                "-r",
                range,
                "-w",
                "%{http_code}",
                "-o",
            ])
            .arg(&file)
            .arg(&url)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "curl -r {range}: {said}");
        let body = std::fs::read(&file).unwrap();
        assert_eq!(
            out.stdout,
            b"206",
            "curl -r {range}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    };
    assert_eq!(curl("1000-2999"), &bytes[1000..=2999]);
    assert_eq!(curl("-4096"), &bytes[bytes.len() - 4096..]);

    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let duration: f64 = String::from_utf8(probe.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((duration - 25.0).abs() < 0.2, "{duration}");
    let served = t.get("/api/health/actors", None).await.1["streams"]["bytes_served"]
        .as_u64()
        .unwrap();
    assert!(served >= 2000 + 4096);
}
