//! Resumable uploads (tus 1.0.0 on `/api/uploads`): the protocol's answers, offsets that are
//! what the disk holds after a cut connection or a SIGKILL, one writer at a time, checksums,
//! and a finished upload committed once through the same policy as the form.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::raw::{header, read_response};
use crate::common::Checked;
use crate::common::{clip, detail_of, generate_mp4, Client, Clip, TestApp};

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTETS: &str = "application/offset+octet-stream";

fn metadata(title: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!("title {},filename {}", b64(title), b64("jugada.mp4"))
}

/// What an answer said: status, headers and the `{"detail"}` body of an error.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        // Every answer speaks the protocol, errors included.
        assert_eq!(headers["tus-resumable"], "1.0.0", "{status} {headers:?}");
        Self {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name).parse().unwrap()
    }

    /// An error with its status and a detail.
    fn refused(&self, status: StatusCode) -> &str {
        assert_eq!(self.status, status, "{:?} {}", self.headers, self.body);
        detail_of(&self.body)
    }
}

async fn create(client: &Client, token: &str, length: u64, title: &str) -> Answer {
    Answer::of(
        client
            .http
            .post(client.url("/api/uploads"))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("Upload-Length", length)
            .header("Upload-Metadata", metadata(title))
            .checked()
            .await
            .unwrap(),
    )
    .await
}

/// Creates an upload and gives its path.
async fn created(client: &Client, token: &str, length: u64, title: &str) -> String {
    let answer = create(client, token, length, title).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.header("location").to_string()
}

async fn patch(client: &Client, token: &str, at: &str, offset: u64, bytes: &[u8]) -> Answer {
    Answer::of(
        client
            .http
            .patch(client.url(at))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", offset)
            .header("Content-Type", OCTETS)
            .body(bytes.to_vec())
            .checked()
            .await
            .unwrap(),
    )
    .await
}

async fn head(client: &Client, token: &str, at: &str) -> Answer {
    Answer::of(
        client
            .http
            .head(client.url(at))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .checked()
            .await
            .unwrap(),
    )
    .await
}

async fn terminate(client: &Client, token: &str, at: &str) -> Answer {
    Answer::of(
        client
            .http
            .delete(client.url(at))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .checked()
            .await
            .unwrap(),
    )
    .await
}

/// Sends the head of a PATCH of `total` bytes at `offset` and the first `bytes` of its body on
/// a raw socket, then leaves it open.
async fn partial_patch(
    client: &Client,
    token: &str,
    at: &str,
    offset: u64,
    total: usize,
    bytes: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(client.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "PATCH {at} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\n\
         Content-Length: {total}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Waits until no request writes the upload any more and gives its offset.
async fn settled_offset(client: &Client, token: &str, at: &str) -> u64 {
    let mut last = None;
    for _ in 0..100 {
        let offset = head(client, token, at).await.number("upload-offset");
        if last == Some(offset) && offset > 0 {
            return offset;
        }
        last = Some(offset);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.unwrap()
}

#[tokio::test]
async fn discovery_and_creation_follow_tus_1_0() {
    let t = TestApp::start();
    let options = Answer::of(
        t.http
            .request(reqwest::Method::OPTIONS, t.url("/api/uploads"))
            .checked()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(options.header("tus-version"), "1.0.0");
    for extension in [
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    ] {
        assert!(
            options
                .header("tus-extension")
                .split(',')
                .any(|e| e == extension),
            "{extension}"
        );
    }
    assert_eq!(options.header("tus-checksum-algorithm"), "sha256");
    assert_eq!(options.number("tus-max-size"), 104_857_600);

    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let answer = create(&t, &token, 1000, "Mi jugada").await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let location = answer.header("location");
    let id = location.strip_prefix("/api/uploads/").unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(answer.number("upload-offset"), 0);
    let expires = httpdate::parse_http_date(answer.header("upload-expires")).unwrap();
    let ttl = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((86_300..=86_400).contains(&ttl), "{ttl}");

    let status = head(&t, &token, location).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.number("upload-offset"), 0);
    assert_eq!(status.number("upload-length"), 1000);
    assert_eq!(status.header("cache-control"), "no-store");
    assert!(status.headers.get("showcase-video-id").is_none());
}

#[tokio::test]
async fn an_upload_in_chunks_becomes_one_video_with_the_same_bytes() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let at = created(&t, &token, file.len() as u64, "Por partes").await;
    let cuts = [0, file.len() / 3, 2 * file.len() / 3, file.len()];
    let mut last = None;
    for pair in cuts.windows(2) {
        let answer = patch(&t, &token, &at, pair[0] as u64, &file[pair[0]..pair[1]]).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
        assert_eq!(answer.number("upload-offset"), pair[1] as u64);
        last = Some(answer);
    }
    // The answer to the last byte names the video; HEAD does too, and so does a repeated
    // empty PATCH at the end: one video, whatever the client retries.
    let last = last.unwrap();
    let video_id = last.number("showcase-video-id");
    let task_id = last.header("showcase-task-id").to_string();
    for again in [
        head(&t, &token, &at).await,
        patch(&t, &token, &at, file.len() as u64, b"").await,
    ] {
        assert_eq!(again.number("showcase-video-id"), video_id);
        assert_eq!(again.header("showcase-task-id"), task_id);
        assert_eq!(again.number("upload-offset"), file.len() as u64);
    }
    let (_, videos) = t.get("/api/videos", Some(&token)).await;
    let videos = videos.as_array().unwrap();
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0]["video_id"], video_id);
    assert_eq!(videos[0]["title"], "Por partes");
    assert_eq!(videos[0]["status"], "uploaded");
    assert_eq!(
        t.blob(&format!("originals/{video_id}.mp4")).as_deref(),
        Some(&file[..]),
        "the stored original is the file, byte for byte"
    );
    let (_, report) = t.get("/api/health/actors", None).await;
    // (With SQS, a job can be counted twice for a moment: in the outbox and in SQS.)
    assert!(
        report["queue"]["depth"].as_u64().unwrap() >= 1,
        "its job is queued: {report}"
    );
    // Nothing of the upload's bytes is left beside the original.
    assert!(t
        .files_under("resumable")
        .iter()
        .all(|p| p.extension().unwrap() == "json"));
    assert!(t.files_under("tmp").is_empty());
}

#[tokio::test]
async fn creation_with_upload_takes_the_first_chunk() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let answer = Answer::of(
        t.http
            .post(t.url("/api/uploads"))
            .bearer_auth(&token)
            .header(TUS.0, TUS.1)
            .header("Upload-Length", file.len())
            .header("Upload-Metadata", metadata("De una vez"))
            .header("Content-Type", OCTETS)
            .body(file[..1_000_000].to_vec())
            .checked()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.number("upload-offset"), 1_000_000);
    let at = answer.header("location").to_string();
    let done = patch(&t, &token, &at, 1_000_000, &file[1_000_000..]).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
    assert!(done.number("showcase-video-id") > 0);
}

#[tokio::test]
async fn protocol_errors_answer_with_their_status_and_a_detail() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let (_, other) = t.quick_player("Eva", "Mora", "Lima").await;
    let post = |headers: Vec<(&'static str, String)>, bearer: Option<&str>| {
        let mut request = t.http.post(t.url("/api/uploads"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { Answer::of(request.checked().await.unwrap()).await }
    };
    let tus = || ("Tus-Resumable", "1.0.0".to_string());
    let length = |n: u64| ("Upload-Length", n.to_string());
    let meta = || ("Upload-Metadata", metadata("Jugada"));

    let no_version = post(vec![length(10), meta()], Some(&token)).await;
    no_version.refused(StatusCode::PRECONDITION_FAILED);
    assert_eq!(no_version.header("tus-version"), "1.0.0");
    post(vec![tus(), length(10), meta()], None)
        .await
        .refused(StatusCode::UNAUTHORIZED);
    assert!(post(vec![tus(), meta()], Some(&token))
        .await
        .refused(StatusCode::BAD_REQUEST)
        .contains("Upload-Length"));
    for bad in ["0", "-1", "diez", "1e3"] {
        post(
            vec![tus(), ("Upload-Length", bad.to_string()), meta()],
            Some(&token),
        )
        .await
        .refused(StatusCode::BAD_REQUEST);
    }
    post(
        vec![tus(), ("Upload-Defer-Length", "1".into()), meta()],
        Some(&token),
    )
    .await
    .refused(StatusCode::BAD_REQUEST);
    assert!(post(vec![tus(), length(10)], Some(&token))
        .await
        .refused(StatusCode::BAD_REQUEST)
        .contains("title"));
    post(
        vec![
            tus(),
            length(10),
            ("Upload-Metadata", "title no-es-base64!".into()),
        ],
        Some(&token),
    )
    .await
    .refused(StatusCode::BAD_REQUEST);
    // Too large for the policy: refused at creation, before any byte.
    let too_large = post(vec![tus(), length(104_857_601), meta()], Some(&token)).await;
    assert!(too_large
        .refused(StatusCode::PAYLOAD_TOO_LARGE)
        .contains("100 MiB"));

    let at = created(&t, &token, 10, "Jugada").await;
    let wrong_type = Answer::of(
        t.http
            .patch(t.url(&at))
            .bearer_auth(&token)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/octet-stream")
            .body(vec![0u8; 10])
            .checked()
            .await
            .unwrap(),
    )
    .await;
    wrong_type.refused(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_offset = Answer::of(
        t.http
            .patch(t.url(&at))
            .bearer_auth(&token)
            .header(TUS.0, TUS.1)
            .header("Content-Type", OCTETS)
            .body(vec![0u8; 10])
            .checked()
            .await
            .unwrap(),
    )
    .await;
    no_offset.refused(StatusCode::BAD_REQUEST);
    assert!(patch(&t, &token, &at, 3, b"abc")
        .await
        .refused(StatusCode::CONFLICT)
        .contains("0 bytes"));
    // More than the upload has left.
    patch(&t, &token, &at, 0, &[1u8; 11])
        .await
        .refused(StatusCode::BAD_REQUEST);
    assert_eq!(head(&t, &token, &at).await.number("upload-offset"), 0);

    // Unknown, malformed, and another player's: all the same 404.
    for (path, who) in [
        ("/api/uploads/0123456789abcdef0123456789abcdef", &token),
        ("/api/uploads/ZZ", &token),
        (at.as_str(), &other),
    ] {
        patch(&t, who, path, 0, b"abc")
            .await
            .refused(StatusCode::NOT_FOUND);
        terminate(&t, who, path)
            .await
            .refused(StatusCode::NOT_FOUND);
        assert_eq!(head(&t, who, path).await.status, StatusCode::NOT_FOUND);
    }

    // Termination removes the bytes.
    assert_eq!(
        patch(&t, &token, &at, 0, b"abcde").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.files_under("resumable").len(), 2);
    assert_eq!(
        terminate(&t, &token, &at).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(head(&t, &token, &at).await.status, StatusCode::NOT_FOUND);
    assert!(t.files_under("resumable").is_empty());
    let (_, videos) = t.get("/api/videos", Some(&token)).await;
    assert_eq!(videos, serde_json::json!([]));
}

#[tokio::test]
async fn an_expired_upload_is_gone() {
    let t = TestApp::start_with(|c| c.upload.resumable_ttl_s = 0);
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let at = created(&t, &token, 10, "Tarde").await;
    assert_eq!(head(&t, &token, &at).await.status, StatusCode::GONE);
    assert!(patch(&t, &token, &at, 0, b"abc")
        .await
        .refused(StatusCode::GONE)
        .contains("expiró"));
}

#[tokio::test]
async fn a_file_outside_the_policy_is_refused_at_its_last_byte_and_removed() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let short = std::fs::read(generate_mp4("short-1920x1080-10s.mp4", 1920, 1080, 10)).unwrap();
    let at = created(&t, &token, short.len() as u64, "Corto").await;
    let half = short.len() / 2;
    assert_eq!(
        patch(&t, &token, &at, 0, &short[..half]).await.status,
        StatusCode::NO_CONTENT
    );
    let refused = patch(&t, &token, &at, half as u64, &short[half..]).await;
    assert!(refused
        .refused(StatusCode::BAD_REQUEST)
        .contains("la duración debe estar entre 20 y 60 segundos"));
    assert_eq!(head(&t, &token, &at).await.status, StatusCode::NOT_FOUND);
    let (_, videos) = t.get("/api/videos", Some(&token)).await;
    assert_eq!(videos, serde_json::json!([]));
    assert!(t.files_under("resumable").is_empty());
    assert!(t.files_under("tmp").is_empty());
}

#[tokio::test]
async fn two_patches_racing_at_one_offset_one_wins_the_other_gets_409() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let at = created(&t, &token, file.len() as u64, "Carrera").await;
    let half = file.len() / 2;
    // The first writer is at work (its body half sent) when the second arrives.
    let mut first = partial_patch(&t, &token, &at, 0, half, &file[..half / 2]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = patch(&t, &token, &at, 0, &vec![0xAB; half]).await;
    assert!(second
        .refused(StatusCode::CONFLICT)
        .contains("Otra solicitud"));
    first.write_all(&file[half / 2..half]).await.unwrap();
    let (status, head_text, _) = read_response(&mut first, Duration::from_secs(10)).await;
    assert_eq!(status, 204, "{head_text}");
    assert_eq!(
        header(&head_text, "upload-offset"),
        Some(&*half.to_string())
    );
    // The loser retrying at its offset is now out of date.
    patch(&t, &token, &at, 0, &vec![0xAB; half])
        .await
        .refused(StatusCode::CONFLICT);
    let done = patch(&t, &token, &at, half as u64, &file[half..]).await;
    let video_id = done.number("showcase-video-id");
    assert_eq!(
        t.blob(&format!("originals/{video_id}.mp4")).as_deref(),
        Some(&file[..]),
        "no byte of the loser in the file"
    );
}

#[tokio::test]
async fn checksums_are_verified_and_a_bad_chunk_is_discarded() {
    use sha2::Digest;
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let at = created(&t, &token, 100, "Suma").await;
    let chunk = [7u8; 40];
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let send = |checksum: String| {
        let request = t
            .http
            .patch(t.url(&at))
            .bearer_auth(&token)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", 0)
            .header("Content-Type", OCTETS)
            .header("Upload-Checksum", checksum)
            .body(chunk.to_vec());
        async move { Answer::of(request.checked().await.unwrap()).await }
    };
    let wrong = send(format!("sha256 {}", b64(&sha2::Sha256::digest(b"otro")))).await;
    assert_eq!(wrong.status.as_u16(), 460, "{}", wrong.body);
    detail_of(&wrong.body);
    assert_eq!(head(&t, &token, &at).await.number("upload-offset"), 0);
    send(format!("md5 {}", b64(&[0; 16])))
        .await
        .refused(StatusCode::BAD_REQUEST);
    let right = send(format!("sha256 {}", b64(&sha2::Sha256::digest(chunk)))).await;
    assert_eq!(right.status, StatusCode::NO_CONTENT, "{}", right.body);
    assert_eq!(right.number("upload-offset"), 40);
}

#[tokio::test]
async fn a_cut_connection_keeps_what_arrived_and_the_upload_resumes() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let at = created(&t, &token, file.len() as u64, "Cortada").await;
    let sent = file.len() * 55 / 100;
    let stream = partial_patch(&t, &token, &at, 0, file.len(), &file[..sent]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let offset = settled_offset(&t, &token, &at).await;
    assert!(offset > 0 && offset <= sent as u64, "{offset} of {sent}");
    let done = patch(&t, &token, &at, offset, &file[offset as usize..]).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
    let video_id = done.number("showcase-video-id");
    assert_eq!(
        t.blob(&format!("originals/{video_id}.mp4")).as_deref(),
        Some(&file[..])
    );
    let total = sent as u64 + (file.len() as u64 - offset);
    assert!(
        total as f64 <= 1.1 * file.len() as f64,
        "{total} bytes sent for {}",
        file.len()
    );
}

#[tokio::test]
async fn without_a_free_upload_slot_a_patch_is_refused_before_its_body() {
    let t = TestApp::start_with(|c| c.upload.max_concurrent = 1);
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let first = created(&t, &token, file.len() as u64, "Primera").await;
    let second = created(&t, &token, file.len() as u64, "Segunda").await;
    // The only slot is taken by a PATCH that is still sending.
    let holder = partial_patch(&t, &token, &first, 0, file.len(), &file[..1000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = partial_patch(&t, &token, &second, 0, file.len(), b"").await;
    let (status, head_text, body) = read_response(&mut refused, Duration::from_secs(5)).await;
    assert_eq!(status, 503, "{head_text}");
    assert!(header(&head_text, "retry-after").is_some(), "{head_text}");
    assert_eq!(header(&head_text, "tus-resumable"), Some("1.0.0"));
    assert!(detail_of(&body).contains("Capacidad"), "{body}");
    // The slot is the first question, as for the form: while none is free even a forged
    // token is answered 503, before it is checked.
    let mut forged = partial_patch(&t, "no-es-un-token", &second, 0, file.len(), b"").await;
    let (status, head_text, _) = read_response(&mut forged, Duration::from_secs(5)).await;
    assert_eq!(status, 503, "{head_text}");
    // Once the slot is free, the forged token is what refuses the chunk, and the upload
    // itself takes its bytes.
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut forged = partial_patch(&t, "no-es-un-token", &second, 0, file.len(), b"").await;
        let (status, head_text, _) = read_response(&mut forged, Duration::from_secs(5)).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 503, "{head_text}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot stayed taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = patch(&t, &token, &second, 0, &file).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
}

#[tokio::test]
async fn creation_budgets_count_players_and_the_room_uploads_will_need() {
    let dir = tempfile::tempdir().unwrap();
    let free_mb = fs_free_mb(dir.path());
    // Room for one upload of 600 MiB above the watermark, not for two.
    let t = TestApp::start_with(|c| {
        c.upload.max_bytes = 1 << 40;
        c.upload.min_free_disk_mb = free_mb.saturating_sub(1000);
        c.upload.max_resumable_per_player = 2;
    });
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let (_, other) = t.quick_player("Eva", "Mora", "Lima").await;
    created(&t, &token, 600 << 20, "Grande").await;
    let full = create(&t, &other, 600 << 20, "Otra grande").await;
    assert!(
        full.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.body
    );
    assert!(full.headers.contains_key("retry-after"));
    // Small ones fit; a player's third incomplete upload does not.
    created(&t, &token, 1000, "Pequeña").await;
    let third = create(&t, &token, 1000, "Tercera").await;
    assert!(third
        .refused(StatusCode::TOO_MANY_REQUESTS)
        .contains("sin terminar"));
}

fn fs_free_mb(path: &std::path::Path) -> u64 {
    showcase::system::free_disk_bytes(path).unwrap() / (1024 * 1024)
}

#[tokio::test]
async fn after_a_sigkill_at_half_the_upload_resumes_from_the_durable_offset() {
    use crate::common::process::ServerProcess;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client();
    let (_, token) = client
        .player("Ana", "Ruiz", "ana@example.com", "Cali")
        .await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let at = created(&client, &token, file.len() as u64, "Tras el corte").await;
    let half = file.len() / 2;
    let _open = partial_patch(&client, &token, &at, 0, file.len(), &file[..half]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();

    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client();
    let offset = head(&client, &token, &at).await.number("upload-offset");
    assert!(offset > 0 && offset <= half as u64, "{offset} of {half}");
    let done = patch(&client, &token, &at, offset, &file[offset as usize..]).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
    let video_id = done.number("showcase-video-id");
    let (_, videos) = client.get("/api/videos", Some(&token)).await;
    assert_eq!(videos.as_array().unwrap().len(), 1, "{videos}");
    // Counted among the accepted uploads, as a form upload is.
    assert_eq!(
        client.metric("showcase_upload_bytes_total").await,
        file.len() as f64
    );
    assert_eq!(client.metric("showcase_uploads_accepted_total").await, 1.0);
    assert_eq!(
        server
            .stored()
            .blob(&format!("originals/{video_id}.mp4"))
            .as_deref(),
        Some(&file[..])
    );
}
