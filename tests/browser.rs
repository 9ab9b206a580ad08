//! A real browser: headless Chromium loads the page under its Content-Security-Policy, plays a
//! served video in a `<video>` element, seeks to 10 s (which it does with Range requests) and
//! gets there.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{clip, poster_jpeg, Clip, TestApp};

/// The browser driver, installed once per build directory from the npm registry.
fn driver() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for file in ["package.json", "play.mjs"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed (make test installs it)");
        assert!(status.success(), "npm install failed");
    }
    dir.join("play.mjs")
}

#[tokio::test]
async fn chromium_plays_a_served_video_and_seeks_to_ten_seconds() {
    let script = driver();
    let t = TestApp::start();
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let id = t.uploaded_video(&token, "En el navegador").await;
    t.publish_with_files(id, &clip(Clip::Valid), &poster_jpeg())
        .await;

    let base = t.url("");
    let media = format!("/media/{id}.mp4");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .arg(&base)
            .arg(&media)
            .output()
    })
    .await
    .unwrap()
    .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let duration = seen["duration"].as_f64().unwrap();
    assert!((duration - 25.0).abs() < 0.5, "{seen}");
    assert!(seen["currentTime"].as_f64().unwrap() >= 10.0, "{seen}");
    assert!(seen["readyState"].as_u64().unwrap() >= 2, "{seen}");
    // The page ran under its Content-Security-Policy: its script listed the video, and the
    // browser refused nothing.
    assert!(
        seen["shown"].as_str().unwrap().contains("En el navegador"),
        "{seen}"
    );
    assert_eq!(seen["refused"], serde_json::json!([]), "{seen}");
}
