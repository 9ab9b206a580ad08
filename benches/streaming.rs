//! Streaming benchmarks against nginx, printed (never asserted). wrk drives both servers in the
//! same run, on loopback, serving the same 20 MB file:
//! (a) random 1 MiB ranges, 64 connections, 20 s; (b) whole-file downloads, 16 connections, 20 s.
//! Printed: requests/s, MB/s, p99 latency, and ours/nginx (goal: throughput ≥ 0.8, p99 ≤ 2x).
//! Then resident memory of our server process with 500 concurrent slow readers (goal ≤ 200 MB).
//!
//! Run with `make bench` (or `cargo bench --bench streaming`); needs wrk and nginx.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILE_BYTES: u64 = 20 * 1000 * 1000;
const SECONDS: u64 = 20;
const SLOW_READERS: usize = 500;

struct WrkResult {
    requests_per_s: f64,
    mb_per_s: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(url: &str, connections: usize, script: &Path) -> WrkResult {
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{SECONDS}s"),
            "--timeout",
            "10s",
        ])
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk must be installed (make bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no result from wrk: {text}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let seconds = f[3] / 1e6;
    WrkResult {
        requests_per_s: f[0] / seconds,
        mb_per_s: f[1] / seconds / 1e6,
        p99_ms: f[2] / 1000.0,
        errors: f[4] as u64,
    }
}

fn write_script(dir: &Path, name: &str, path: &str, ranged: bool) -> std::path::PathBuf {
    let request = if ranged {
        format!(
            "local first = math.random(0, {} - 1048576)\n  return wrk.format('GET', '{path}', {{['Range'] = 'bytes=' .. first .. '-' .. (first + 1048575)}})",
            FILE_BYTES
        )
    } else {
        format!("return wrk.format('GET', '{path}')")
    };
    let script = format!(
        "math.randomseed(42)\nrequest = function()\n  {request}\nend\n\
         done = function(summary, latency, requests)\n  local e = summary.errors\n  \
         io.write(string.format('RESULT %d %d %d %d %d\\n', summary.requests, summary.bytes, latency:percentile(99), summary.duration, e.connect + e.read + e.write + e.status + e.timeout))\nend\n"
    );
    let file = dir.join(name);
    std::fs::write(&file, script).unwrap();
    file
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx serving the file, stopped with its workers when dropped (a panic included): a
/// benchmark leaves nothing running.
struct FileServer(Child);

impl Drop for FileServer {
    fn drop(&mut self) {
        common::nginx::stop(&mut self.0);
    }
}

fn start_nginx(dir: &Path, file: &Path) -> (FileServer, u16) {
    let port = free_port();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(file, www.join("video.mp4")).unwrap();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
           client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
           server {{ listen 127.0.0.1:{port}; root {www}; location / {{ }} }} }}\n",
        dir = dir.display(),
        www = www.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // Its own process group, so that stopping it reaches its workers too.
    let child = Command::new("nginx")
        .process_group(0)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx must be installed (make bench installs it)");
    let child = FileServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// Prepares a data dir with one published video whose rendition is `file`; returns its id.
fn prepare_data_dir(data_dir: &Path, file: &Path, runtime: &tokio::runtime::Runtime) -> u64 {
    let mut config = common::test_config(data_dir);
    config.transcode.workers = 0;
    let app = showcase::app::spawn(config).unwrap();
    let t = common::TestApp {
        client: common::Client::new(app.url("")),
        app,
        aws: None,
        postgres: None,
        dir: tempfile::tempdir().unwrap(),
    };
    let id = runtime.block_on(async {
        let (_, token) = t.quick_player("Bench", "Mark", "Cali").await;
        let id = t.uploaded_video(&token, "Bench").await;
        // TestApp.dir is not the node's data dir here: place the files where the node looks.
        let media = data_dir.join("media");
        std::fs::create_dir_all(media.join("processed")).unwrap();
        std::fs::create_dir_all(media.join("posters")).unwrap();
        std::fs::copy(file, media.join(format!("processed/{id}.mp4"))).unwrap();
        std::fs::copy(
            common::poster_jpeg(),
            media.join(format!("posters/{id}.jpg")),
        )
        .unwrap();
        common::publish_in(t.app.engine().store.as_ref(), id).await;
        id
    });
    t.app.stop().unwrap();
    id
}

fn rss_mb(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

async fn slow_reader(addr: std::net::SocketAddr, path: String, until: Instant) -> u64 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    if stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return 0;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    while Instant::now() < until {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let file = common::random_file(FILE_BYTES);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let id = prepare_data_dir(&data_dir, &file, &runtime);
    let ours = ServerProcess::start(&data_dir, &[]);
    let (nginx, nginx_port) = start_nginx(work.path(), &file);
    let ours_path = format!("/media/{id}.mp4");
    let ours_url = ours.url("");
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");

    for (label, ranged, connections) in [
        ("random 1 MiB ranges", true, 64),
        ("whole-file downloads", false, 16),
    ] {
        let ours_script = write_script(work.path(), "ours.lua", &ours_path, ranged);
        let nginx_script = write_script(work.path(), "nginx.lua", "/video.mp4", ranged);
        let o = wrk(&ours_url, connections, &ours_script);
        let n = wrk(&nginx_url, connections, &nginx_script);
        println!("{label}, {connections} connections, {SECONDS} s, 20 MB file:");
        for (name, r) in [("ours ", &o), ("nginx", &n)] {
            println!(
                "  {name}: {:9.1} req/s {:9.1} MB/s  p99 {:7.1} ms  errors {}",
                r.requests_per_s, r.mb_per_s, r.p99_ms, r.errors
            );
        }
        let throughput = o.mb_per_s / n.mb_per_s;
        let p99 = o.p99_ms / n.p99_ms.max(0.001);
        println!(
            "  ours/nginx: throughput {throughput:.2} (goal >= 0.8) -> {}, p99 {p99:.2}x (goal <= 2) -> {}",
            if throughput >= 0.8 { "MET" } else { "NOT MET" },
            if p99 <= 2.0 { "MET" } else { "NOT MET" }
        );
    }
    drop(nginx);

    // Memory with many slow readers.
    let before = rss_mb(ours.pid());
    let until = Instant::now() + Duration::from_secs(10);
    let pid = ours.pid();
    let addr = ours.addr;
    let peak = runtime.block_on(async move {
        let readers: Vec<_> = (0..SLOW_READERS)
            .map(|_| tokio::spawn(slow_reader(addr, ours_path.clone(), until)))
            .collect();
        let mut peak: f64 = 0.0;
        while Instant::now() < until {
            peak = peak.max(rss_mb(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut total = 0;
        for reader in readers {
            total += reader.await.unwrap();
        }
        assert!(total > 0);
        peak
    });
    println!(
        "resident memory with {SLOW_READERS} concurrent slow readers: {peak:.0} MB (idle {before:.0} MB; goal <= 200) -> {}",
        if peak <= 200.0 { "MET" } else { "NOT MET" }
    );
}
