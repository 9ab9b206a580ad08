//! Self-healing: the Supervisor restarts actors that panic or stall, escalates past its
//! restart intensity (readiness 503, then a non-zero exit), and systemd sees it all through
//! the notify socket.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::Checked;
use common::process::ServerProcess;
use common::{clip, poster_jpeg, random_file, Clip, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-secret-for-tests";

fn fault_app(adjust: impl FnOnce(&mut showcase::config::Config)) -> TestApp {
    TestApp::start_with(|c| {
        c.faults.enabled = true;
        c.admin.token = ADMIN.into();
        c.actors.heartbeat_timeout_ms = 1000;
        adjust(c);
    })
}

async fn actor(t: &TestApp, name: &str) -> Value {
    let (_, body) = t.get("/api/health/actors", None).await;
    body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
        .clone()
}

async fn wait_running_with_restarts(
    t: &TestApp,
    name: &str,
    restarts: u64,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let a = actor(t, name).await;
        if a["state"] == "running" && a["restarts"].as_u64() == Some(restarts) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not restarted in {within:?}: {a}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A download of a 32 MB video, kept open while reading slowly: work in flight at the Streamer.
async fn open_download(t: &TestApp, path: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(t.app.addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream
}

async fn read_to_end(mut stream: tokio::net::TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

#[tokio::test]
async fn a_panic_in_each_actor_is_restarted_within_a_second_without_hurting_the_others() {
    let t = fault_app(|_| {});
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    let id = t.uploaded_video(&token, "En curso").await;
    t.publish_with_files(id, &random_file(32 * 1024 * 1024), &poster_jpeg())
        .await;

    for name in ["ingest", "streamer", "queue_consumer", "transcoder"] {
        let before = actor(&t, name).await["restarts"].as_u64().unwrap();
        // Work in flight at another actor while this one crashes.
        let media = format!("/media/{id}.mp4");
        let download = if name == "streamer" {
            None
        } else {
            Some(open_download(&t, &media).await)
        };
        let panicked_at = Instant::now();
        assert_eq!(t.inject(ADMIN, name, "panic").await, StatusCode::OK);
        let report = wait_running_with_restarts(&t, name, before + 1, Duration::from_secs(1)).await;
        assert!(panicked_at.elapsed() < Duration::from_secs(1));
        let failure = report["last_failure"]["reason"].as_str().unwrap();
        assert!(
            failure.contains("panicked") && failure.contains("injected fault"),
            "{failure}"
        );
        assert!(report["last_failure"]["at"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
        if let Some(download) = download {
            assert!(
                read_to_end(download).await >= 32 * 1024 * 1024 - 64 * 1024,
                "the download was cut"
            );
        }
    }
    // Rest-for-one: the consumer, which holds a handle to the transcoder, restarted with it.
    let consumer = actor(&t, "queue_consumer").await;
    assert_eq!(consumer["restarts"], 2);
    assert_eq!(consumer["state"], "running");
    // Every actor works again.
    let (status, body) = t.upload(&token, &clip(Clip::Valid), "Después").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        t.http
            .get(t.url(&format!("/media/{id}.jpg")))
            .checked()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, _) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_actor_is_restarted_after_its_heartbeat_timeout() {
    let t = fault_app(|_| {});
    let stalled_at = Instant::now();
    let status = t.inject(ADMIN, "ingest", "stall?seconds=30").await;
    assert_eq!(status, StatusCode::OK);
    let report = wait_running_with_restarts(&t, "ingest", 1, Duration::from_secs(5)).await;
    let took = stalled_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "restarted before the heartbeat timeout ({took:?})"
    );
    assert!(report["last_failure"]["reason"]
        .as_str()
        .unwrap()
        .contains("stalled"));
    // The new incarnation serves uploads while the old thread is still blocked.
    let (_, token) = t.quick_player("Luis", "Díaz", "Cali").await;
    assert_eq!(
        t.upload(&token, &clip(Clip::Valid), "Tras el bloqueo")
            .await
            .0,
        StatusCode::CREATED
    );
}

fn notify_socket(dir: &std::path::Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (socket, path)
}

fn messages_for(socket: &UnixDatagram, duration: Duration) -> Vec<String> {
    let deadline = Instant::now() + duration;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    out
}

/// Guards escalation end to end: past the restart intensity the node says why on readiness,
/// systemd's watchdog pings stop, and the process exits non-zero.
#[tokio::test]
async fn past_the_restart_intensity_the_node_escalates_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, socket_path) = notify_socket(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let socket_env = socket_path.to_string_lossy().to_string();
    let server = ServerProcess::start(
        &data,
        &[
            ("NOTIFY_SOCKET", &socket_env),
            ("WATCHDOG_USEC", "400000"),
            ("SHOWCASE_FAULTS__ENABLED", "true"),
            ("SHOWCASE_ADMIN__TOKEN", ADMIN),
            ("SHOWCASE_ACTORS__MAX_RESTARTS", "1"),
            ("SHOWCASE_SERVER__SHUTDOWN_GRACE_S", "2"),
        ],
    );
    let healthy = messages_for(&socket, Duration::from_secs(1));
    assert!(healthy.iter().any(|m| m.contains("READY=1")), "{healthy:?}");
    assert!(
        healthy.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{healthy:?}"
    );
    assert!(
        healthy
            .iter()
            .any(|m| m.contains("STATUS=") && m.contains("actors running")),
        "{healthy:?}"
    );

    assert_eq!(
        server.client().inject(ADMIN, "ingest", "panic").await,
        StatusCode::OK
    );
    // Wait for the first restart, then crash it again: one restart is all it may have.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, health) = server.client().get("/api/health/actors", None).await;
        let ingest = health["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "ingest")
            .unwrap()
            .clone();
        if ingest["state"] == "running" && ingest["restarts"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{ingest}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.client().inject(ADMIN, "ingest", "panic").await,
        StatusCode::OK
    );

    let deadline = Instant::now() + Duration::from_secs(2);
    let ready = loop {
        let (status, body) = server.client().get("/api/health/ready", None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(Instant::now() < deadline, "readiness never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detail = ready["detail"].as_str().unwrap();
    assert!(
        detail.contains("escalated") && detail.contains("ingest"),
        "{detail}"
    );

    // No watchdog ping once escalated.
    let _ = messages_for(&socket, Duration::from_millis(300));
    let after = messages_for(&socket, Duration::from_millis(1200));
    assert!(!after.iter().any(|m| m.contains("WATCHDOG=1")), "{after:?}");

    let status = server.terminate_after_exit(Duration::from_secs(15));
    assert!(
        !status.success(),
        "an escalated node exits non-zero: {status:?}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/showcase.service"
    ))
    .unwrap();
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=showcase",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "MemoryMax=",
        "MemoryHigh=",
        "LimitNOFILE=",
        "TasksMax=",
    ] {
        assert!(unit.contains(required), "{required} missing");
    }
    // systemd-analyze wants the ExecStart binary to exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("showcase.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/showcase", env!("CARGO_BIN_EXE_showcase")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
