//! The npm packages the tests drive (playwright-core, axe-core, Lighthouse, tus-js-client,
//! newman, Redocly CLI, and the vendored files' originals), installed into the build tree from
//! `tests/browser/package-lock.json`, and the scripts of `tests/browser/` that use them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The scripts' directory in the build tree, its packages installed from the lockfile (again
/// whenever the lockfile changes).
pub fn driver() -> PathBuf {
    // Tests of one binary run on threads: one installs, the others wait for it.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for file in [
        "package.json",
        "package-lock.json",
        "app.mjs",
        "lighthouse.mjs",
        "tus-upload.mjs",
        "docs.mjs",
        "redocly.yaml",
    ] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules/.installed-from-lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed (make test installs it)");
        assert!(status.success(), "npm ci failed");
        std::fs::write(&stamp, &lock).unwrap();
    }
    dir
}

/// Where a test writes what it saw.
pub fn output(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("web-app")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `node <script> <args>` in the driver's directory; its last stdout line is JSON.
pub async fn node(dir: &Path, script: &str, args: Vec<String>) -> Value {
    let dir = dir.to_path_buf();
    let program = script.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&program)
            .args(&args)
            .current_dir(&dir)
            .output()
    })
    .await
    .unwrap()
    .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let last = stdout.trim().lines().last().unwrap_or("");
    let report: Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: {e}\n{stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stderr}",
        report["error"].as_str().unwrap_or(&stdout)
    );
    report
}
