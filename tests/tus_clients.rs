//! Two independent tus clients against the node: `tus-js-client` under Node (the npm registry,
//! pinned by `tests/browser/package-lock.json`) and `tuspy` (PyPI, in the test virtualenv).
//! Each uploads a 24 MiB video through a gate that cuts the connection at about half; each
//! resumes from the node's offset and completes, the stored original is the file byte for
//! byte, one video exists, and the bytes sent in all stay within 1.1 times the file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::gate::Gate;
use common::npm::{driver, node};
use common::{padded_mp4, TestApp};
use serde_json::Value;

const SIZE: u64 = 24 * 1024 * 1024;

/// Reopens the gate shortly after each cut, as a network comes back; counts the cuts.
fn reopen_after_cuts(
    gate: Arc<Gate>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicU32>,
) {
    let cuts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = cuts.clone();
    let task = tokio::spawn(async move {
        loop {
            if !gate.is_open() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                gate.open();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, cuts)
}

/// Uploads `file` with `upload` (a client run against the gate's URL) while the gate cuts at
/// half, then checks what the node holds.
async fn cut_at_half_and_resume<F, Fut>(client: &str, upload: F)
where
    F: FnOnce(String, String, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let file = padded_mp4(SIZE);
    let bytes = std::fs::read(&file).unwrap();
    let gate = Arc::new(Gate::to(t.app.addr).await);
    gate.close_after((SIZE / 2) as i64);
    let (reopener, cuts) = reopen_after_cuts(gate.clone());
    let answer = upload(gate.url(), token.clone(), file).await;
    reopener.abort();
    eprintln!("{client}: {answer}");
    assert_eq!(
        cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{client}: the connection was cut once"
    );

    let (_, videos) = t.get("/api/videos", Some(&token)).await;
    let videos = videos.as_array().unwrap();
    assert_eq!(videos.len(), 1, "{client}: one video: {videos:?}");
    let id = videos[0]["video_id"].as_u64().unwrap();
    assert!(
        t.blob(&format!("originals/{id}.mp4")).as_deref() == Some(&bytes[..]),
        "{client}: the stored original is the file"
    );
    let sent = gate.received();
    let ratio = sent as f64 / SIZE as f64;
    eprintln!("{client}: {sent} bytes sent for a file of {SIZE} ({ratio:.3}x)");
    assert!(ratio <= 1.1, "{client}: {ratio:.3}x the file sent");
}

#[tokio::test]
async fn tus_js_client_resumes_after_a_cut_connection() {
    let dir = driver();
    cut_at_half_and_resume("tus-js-client", |base, token, file| async move {
        node(
            &dir,
            "tus-upload.mjs",
            vec![
                base,
                token,
                file.display().to_string(),
                "Con tus-js-client".into(),
            ],
        )
        .await
    })
    .await;
}

/// The Python of the test virtualenv (`make test` installs tuspy there).
fn python() -> PathBuf {
    std::env::var_os("TEST_VENV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/showcase/venv/bin/python")
        })
}

#[tokio::test]
async fn tuspy_resumes_after_a_cut_connection() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tus_clients/tuspy_upload.py");
    cut_at_half_and_resume("tuspy", |base, token, file| async move {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python())
                .arg(&script)
                .args([base, token, file.display().to_string(), "Con tuspy".into()])
                .output()
        })
        .await
        .unwrap()
        .expect("the test virtualenv's python (make test creates it, with tuspy)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tuspy failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
    })
    .await;
}
