//! The processing pipeline end to end, through HTTP: uploads become published videos, and
//! crashes, hangs, corrupt inputs and a killed server all end where they should, with no
//! transcode process left behind.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::Checked;
use common::process::ServerProcess;
use common::{detail_of, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-tests";

/// A short valid clip: processing it takes seconds, not tens of seconds.
fn short_clip() -> PathBuf {
    common::generate_mp4("pipeline-1920x1080-6s.mp4", 1920, 1080, 6)
}

/// The short clip with its picture data replaced by garbage: the boxes are intact, so it
/// passes the upload probe, but no frame can be decoded.
fn undecodable_clip() -> PathBuf {
    let path = common::media_dir().join("undecodable-1920x1080-6s.mp4");
    if !path.exists() {
        let mut bytes = std::fs::read(short_clip()).unwrap();
        let at = bytes.windows(4).position(|w| w == b"mdat").unwrap();
        let size = u32::from_be_bytes(bytes[at - 4..at].try_into().unwrap()) as usize;
        for (i, byte) in bytes[at + 4..at - 4 + size].iter_mut().enumerate() {
            *byte = (i * 7 % 251) as u8;
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

fn pipeline_app(adjust: impl FnOnce(&mut showcase::config::Config)) -> TestApp {
    TestApp::start_with(|c| {
        c.transcode.workers = 1;
        c.transcode.stall_s = 3;
        c.transcode.retry_base_s = 1;
        c.transcode.retry_max_s = 1;
        c.queue.max_receives = 3;
        c.upload.min_duration_s = 1.0;
        c.faults.enabled = true;
        c.admin.token = ADMIN.into();
        adjust(c);
    })
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn admin(t: &TestApp, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = t
        .http
        .request(method.parse().unwrap(), t.url(path))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::read(request.checked().await.unwrap()).await
}

async fn set_child_fault(t: &TestApp, fault: Value) {
    let (status, body) = admin(
        t,
        "POST",
        "/api/admin/faults",
        Some(json!({"transcode_child": fault})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `showcase transcode` processes working under `data_dir`.
fn transcode_children(data_dir: &Path) -> Vec<String> {
    let needle = data_dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" transcode ") && cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

async fn assert_no_children_left(data_dir: &Path) {
    // A killed child takes a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = transcode_children(data_dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "transcode processes left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn video(t: &TestApp, token: &str, id: u64) -> Value {
    let (status, body) = t.get(&format!("/api/videos/{id}"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn an_upload_is_processed_with_visible_progress_and_published() {
    let t = pipeline_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let (status, body) = t.upload(&token, &short_clip(), "Procesado").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();

    let mut seen_progress = Vec::new();
    let published = wait_for("publication", Duration::from_secs(120), async || {
        let v = video(&t, &token, id).await;
        if v["status"] == "processing" {
            seen_progress.push(v["progress"].as_u64().unwrap());
        }
        (v["status"] == "processed").then_some(v)
    })
    .await;
    assert!(!seen_progress.is_empty(), "never seen processing");
    assert!(
        seen_progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen_progress:?}"
    );
    assert!(
        seen_progress.iter().any(|&p| p > 0),
        "progress never rose: {seen_progress:?}"
    );
    assert_eq!(published["progress"], 100);
    assert_eq!(published["processed_url"], format!("/media/{id}.mp4"));
    assert_eq!(published["poster_url"], format!("/media/{id}.jpg"));
    assert!(published["processed_at"].as_str().unwrap().ends_with('Z'));

    let stored = t.app.engine().store.video(id).await.unwrap().unwrap();
    assert_eq!(stored.content_hash.as_ref().unwrap().len(), 64);
    assert!((stored.processed_duration_s.unwrap() - 11.0).abs() < 0.2);
    assert!(t.blob(&format!("processed/{id}.mp4")).is_some());
    assert!(t.blob(&format!("posters/{id}.jpg")).is_some());
    let stats = t.app.engine().queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.dead), (0, 0, 0));
    let (_, public) = t.get("/api/public/videos", None).await;
    assert_eq!(public[0]["video_id"], id);
    assert!(
        t.files_under("tmp").is_empty(),
        "{:?}",
        t.files_under("tmp")
    );
    assert_no_children_left(t.dir.path()).await;
}

#[tokio::test]
async fn a_crashing_child_is_retried_while_the_server_keeps_answering() {
    let t = pipeline_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    set_child_fault(&t, json!("crash")).await;
    let id = {
        let (status, body) = t.upload(&token, &short_clip(), "Choque").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["video_id"].as_u64().unwrap()
    };
    // It crashes and is retried; the server answers all along.
    wait_for("a second attempt", Duration::from_secs(60), async || {
        let (status, _) = t.get("/api/health", None).await;
        assert_eq!(status, StatusCode::OK);
        let job = t.app.engine().queue.job(id).await.unwrap()?;
        (job.receive_count >= 2).then_some(())
    })
    .await;
    let job = t.app.engine().queue.job(id).await.unwrap().unwrap();
    assert!(
        job.last_error.as_deref().unwrap_or("").contains("SIGSEGV"),
        "{:?}",
        job.last_error
    );
    set_child_fault(&t, Value::Null).await;
    wait_for("publication", Duration::from_secs(120), async || {
        (video(&t, &token, id).await["status"] == "processed").then_some(())
    })
    .await;
    assert_no_children_left(t.dir.path()).await;
}

#[tokio::test]
async fn a_hanging_child_is_killed_by_the_stall_watchdog_then_dead_lettered_and_redriven() {
    let t = pipeline_app(|c| c.queue.max_receives = 2);
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    set_child_fault(&t, json!("hang")).await;
    let (status, body) = t.upload(&token, &short_clip(), "Colgado").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();

    // Two stalls (3 s each) later, the job is a dead letter and the video failed with why.
    let failed = wait_for("the video to fail", Duration::from_secs(60), async || {
        let v = video(&t, &token, id).await;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    let reason = failed["error"].as_str().unwrap();
    assert!(reason.contains("stalled"), "{reason}");
    let (status, letters) = admin(&t, "GET", "/api/admin/dead-letters", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(letters[0]["video_id"], id);
    assert_eq!(letters[0]["receive_count"], 2);
    assert!(letters[0]["reason"].as_str().unwrap().contains("stalled"));
    assert_no_children_left(t.dir.path()).await;

    // With the fault off, a re-drive makes it succeed.
    set_child_fault(&t, Value::Null).await;
    let (status, body) = admin(
        &t,
        "POST",
        &format!("/api/admin/dead-letters/{id}/redrive"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for(
        "publication after re-drive",
        Duration::from_secs(120),
        async || (video(&t, &token, id).await["status"] == "processed").then_some(()),
    )
    .await;
    let (_, letters) = admin(&t, "GET", "/api/admin/dead-letters", None).await;
    assert_eq!(letters, json!([]));
    assert_no_children_left(t.dir.path()).await;
}

#[tokio::test]
async fn a_corrupt_file_that_passed_the_probe_fails_without_retries() {
    let t = pipeline_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let (status, body) = t.upload(&token, &undecodable_clip(), "Corrupto").await;
    assert_eq!(status, StatusCode::CREATED, "the probe accepts it: {body}");
    let id = body["video_id"].as_u64().unwrap();
    let failed = wait_for("the video to fail", Duration::from_secs(60), async || {
        let v = video(&t, &token, id).await;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    assert!(
        failed["error"].as_str().unwrap().contains("decoded"),
        "{failed}"
    );
    let letters = t.app.engine().queue.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].job.receive_count, 1,
        "a permanent failure is not retried"
    );
    assert_no_children_left(t.dir.path()).await;
}

#[tokio::test]
async fn deleting_a_video_cancels_its_running_transcode() {
    let t = pipeline_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    set_child_fault(&t, json!("hang")).await;
    let (_, body) = t.upload(&token, &short_clip(), "Borrado").await;
    let id = body["video_id"].as_u64().unwrap();
    wait_for("a running transcode", Duration::from_secs(30), async || {
        (!transcode_children(t.dir.path()).is_empty()).then_some(())
    })
    .await;
    let response = t
        .http
        .delete(t.url(&format!("/api/videos/{id}")))
        .bearer_auth(&token)
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_children_left(t.dir.path()).await;
    // The job goes with its video (a queue that cannot remove it by id has it acknowledged
    // by the worker that was cancelled).
    wait_for("the job to be gone", Duration::from_secs(5), async || {
        let stats = t.app.engine().queue.stats().await.unwrap();
        ((stats.depth, stats.in_flight, stats.dead) == (0, 0, 0)).then_some(())
    })
    .await;
    assert!(
        t.files_under("media").is_empty(),
        "{:?}",
        t.files_under("media")
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let t = pipeline_app(|_| {});
    for (method, path) in [
        ("GET", "/api/admin/dead-letters"),
        ("POST", "/api/admin/dead-letters/redrive"),
        ("POST", "/api/admin/dead-letters/1/redrive"),
        ("GET", "/api/admin/faults"),
    ] {
        let response = t
            .http
            .request(method.parse().unwrap(), t.url(path))
            .checked()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    let (status, body) = admin(&t, "POST", "/api/admin/dead-letters/77/redrive", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    detail_of(&body);
    let (status, body) = admin(
        &t,
        "POST",
        "/api/admin/faults",
        Some(json!({"transcode_child": "melt"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    detail_of(&body);

    // The scheme is case-insensitive, as for players.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = t
            .http
            .get(t.url("/api/admin/dead-letters"))
            .header("authorization", format!("{scheme} {ADMIN}"))
            .checked()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }

    // Without faults enabled, the switches do not exist.
    let plain = TestApp::start_with(|c| c.admin.token = ADMIN.into());
    let response = plain
        .http
        .get(plain.url("/api/admin/faults"))
        .bearer_auth(ADMIN)
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // Without an admin token, there are no admin routes at all.
    let (status, _) = TestApp::start().get("/api/admin/dead-letters", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_server_killed_mid_transcode_finishes_the_video_exactly_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SHOWCASE_TRANSCODE__WORKERS", "1"),
        ("SHOWCASE_UPLOAD__MIN_DURATION_S", "1"),
        ("SHOWCASE_QUEUE__VISIBILITY_TIMEOUT_S", "30"),
    ];
    let http = reqwest::Client::new();
    let server = ServerProcess::start(dir.path(), &env);
    let token = server.client().token_for("luis@example.com").await;
    let (status, body) = server
        .client()
        .upload(&token, &common::clip(common::Clip::Valid), "Interrumpido")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();
    let detail = |server: &ServerProcess| {
        let request = http
            .get(server.url(&format!("/api/videos/{id}")))
            .bearer_auth(&token);
        async move {
            request
                .checked()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    wait_for(
        "processing with progress",
        Duration::from_secs(60),
        async || {
            let v = detail(&server).await;
            (v["status"] == "processing" && v["progress"].as_u64().unwrap_or(0) > 5).then_some(())
        },
    )
    .await;
    assert!(!transcode_children(dir.path()).is_empty());
    server.kill9();
    // The child dies with its parent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !transcode_children(dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "orphans: {:?}",
            transcode_children(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let server = ServerProcess::start(dir.path(), &env);
    let done = wait_for(
        "publication after restart",
        Duration::from_secs(120),
        async || {
            let v = detail(&server).await;
            (v["status"] == "processed").then_some(v)
        },
    )
    .await;
    // Exactly once: one publication, which later deliveries could not repeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(detail(&server).await["processed_at"], done["processed_at"]);
    let (_, health) = server.client().get("/api/health/actors", None).await;
    assert_eq!(
        health["queue"],
        json!({"depth": 0, "in_flight": 0, "dead": 0}),
        "{health}"
    );
    let processed = server.stored().keys("processed/");
    assert_eq!(processed, [format!("processed/{id}.mp4")]);
    assert!(common::files_under(&dir.path().join("tmp")).is_empty());
    assert!(server.terminate().success());
    assert!(transcode_children(dir.path()).is_empty());
}

#[tokio::test]
async fn a_job_whose_owner_is_gone_is_dead_lettered_at_once_and_its_files_removed() {
    let t = pipeline_app(|_| {});
    let engine = t.app.engine();
    // A video whose owner is not in the store (a deleted account, a restored backup).
    let id = engine.store.allocate_video_id().await.unwrap();
    let original = format!("originals/{id}.mp4");
    t.put_blob(&original, &std::fs::read(short_clip()).unwrap())
        .await;
    let media = showcase::engine::probe::probe_mp4(&short_clip()).unwrap();
    engine
        .store
        .commit_upload(
            showcase::domain::NewVideo {
                id,
                owner_id: 987_654,
                title: "Huérfano".into(),
                original_key: original.clone(),
                original: media,
            },
            "task-ghost".into(),
        )
        .await
        .unwrap();
    let failed = wait_for("the video to fail", Duration::from_secs(30), async || {
        let v = engine.store.video(id).await.unwrap().unwrap();
        (v.status == showcase::domain::VideoStatus::Failed).then_some(v)
    })
    .await;
    assert!(failed.error.unwrap().contains("owner"));
    let letters = engine.queue.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].job.receive_count, 1, "not retried");
    assert!(t.blob(&original).is_none(), "the original is removed");
    assert!(
        t.files_under("media").is_empty(),
        "{:?}",
        t.files_under("media")
    );
    assert_no_children_left(t.dir.path()).await;
}

#[tokio::test]
async fn a_child_that_tries_to_read_the_secret_is_refused_and_its_job_dead_lettered() {
    let t = pipeline_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let secret = t.dir.path().join("secret.key");
    if t.postgres.is_some() {
        // A configured secret is not written there; a file in its place is just as private.
        std::fs::write(&secret, "not for the child").unwrap();
    }
    assert!(secret.exists());
    set_child_fault(&t, json!("escape")).await;
    let (status, body) = t.upload(&token, &short_clip(), "Fuga").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();
    let failed = wait_for("the video to fail", Duration::from_secs(60), async || {
        let v = video(&t, &token, id).await;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("secret.key"),
        "{error}"
    );
    let letters = t.app.engine().queue.dead_letters().await.unwrap();
    assert_eq!(letters[0].job.receive_count, 1, "a refusal is not retried");
}

/// The value of `name` in `/proc/<pid>/limits` (soft limit).
fn soft_limit(pid: &str, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn transcode_children_run_with_their_limits_and_no_new_privileges() {
    let t = pipeline_app(|c| {
        c.transcode.timeout_s = 300;
        c.transcode.memory_limit_mb = 900;
    });
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    set_child_fault(&t, json!("hang")).await;
    let (_, body) = t.upload(&token, &short_clip(), "Límites").await;
    let id = body["video_id"].as_u64().unwrap();
    let child = wait_for("a running transcode", Duration::from_secs(30), async || {
        transcode_children(t.dir.path()).first().cloned()
    })
    .await;
    let pid = child.split(':').next().unwrap().to_string();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(soft_limit(&pid, "Max cpu time"), (300 * cores).to_string());
    assert_eq!(soft_limit(&pid, "Max file size"), (1u64 << 30).to_string());
    assert_eq!(soft_limit(&pid, "Max open files"), "64");
    assert_eq!(
        soft_limit(&pid, "Max address space"),
        (900u64 << 20).to_string()
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Nothing of the server's environment (where secrets may be) reaches the child.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(String::from_utf8_lossy(&environ), "MALLOC_ARENA_MAX=2\0");
    // Stop it: deleting the video cancels the transcode.
    let (status, _) = common::read(
        t.http
            .delete(t.url(&format!("/api/videos/{id}")))
            .bearer_auth(&token)
            .checked()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_no_children_left(t.dir.path()).await;
}
