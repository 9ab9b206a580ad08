//! The node under test: the real `showcase` executable started on loopback with a fresh data
//! dir, inside a 2 GiB memory cgroup (v1) when one can be made, plus the machine's own figures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The replaced system ran on t2/t3.small instances.
pub const MEMORY_CAP_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const CGROUP: &str = "/sys/fs/cgroup/memory/showcase-bench";

pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub in_cgroup: bool,
    /// The cgroup's OOM-kill count when this node started (the cgroup outlives runs).
    oom_kills_before: u64,
}

/// Creates (or reuses) the bench's memory cgroup with the cap; false when that is not possible.
fn prepare_cgroup() -> bool {
    let dir = Path::new(CGROUP);
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let limit = std::fs::write(
        dir.join("memory.limit_in_bytes"),
        MEMORY_CAP_BYTES.to_string(),
    );
    // The peak is measured per run.
    let _ = std::fs::write(dir.join("memory.max_usage_in_bytes"), "0");
    limit.is_ok()
}

/// The cgroup's OOM-kill count since it was created.
fn cgroup_oom_kill_count() -> Option<u64> {
    let text = std::fs::read_to_string(Path::new(CGROUP).join("memory.oom_control")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn cgroup_read(file: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new(CGROUP).join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Node {
    /// Starts `showcase serve` next to this executable with `env` on top of the bench defaults.
    pub fn start(data_dir: &Path, env: &[(&str, String)]) -> Self {
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir).expect("data dir");
        let exe = std::env::current_exe().expect("own path");
        let server = exe.with_file_name("showcase");
        assert!(
            server.exists(),
            "{} not found: build it with `cargo build --release`",
            server.display()
        );
        let in_cgroup = prepare_cgroup();
        let mut command = Command::new(&server);
        command
            .arg("serve")
            .current_dir(data_dir)
            .env("RUST_LOG", "warn,showcase::app=info")
            .env("SHOWCASE_SERVER__ADDR", "127.0.0.1:0")
            .env("SHOWCASE_STORAGE__DATA_DIR", data_dir)
            // Every virtual user is a client of its own behind a local "load balancer".
            .env("SHOWCASE_SERVER__TRUSTED_PROXIES", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the server starts");
        let in_cgroup = in_cgroup
            && std::fs::write(
                Path::new(CGROUP).join("cgroup.procs"),
                child.id().to_string(),
            )
            .is_ok();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let _ = tx.send(addr.trim().parse::<SocketAddr>().expect("address"));
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server reports its address");
        Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            in_cgroup,
            oom_kills_before: cgroup_oom_kill_count().unwrap_or(0),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the server process.
    pub fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// The cgroup's peak memory (server and transcode children) since the start, if capped.
    pub fn cgroup_peak_bytes(&self) -> Option<u64> {
        self.in_cgroup
            .then(|| cgroup_read("memory.max_usage_in_bytes"))
            .flatten()
    }

    /// Anonymous memory of the cgroup now (server and children; the page cache of written files
    /// is charged to the cgroup too, but the kernel reclaims it at the cap), else the server's RSS.
    pub fn anon_bytes(&self) -> u64 {
        if self.in_cgroup {
            if let Ok(stat) = std::fs::read_to_string(Path::new(CGROUP).join("memory.stat")) {
                if let Some(rss) = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("total_rss "))
                    .and_then(|v| v.trim().parse().ok())
                {
                    return rss;
                }
            }
        }
        self.rss_bytes()
    }

    /// Processes the kernel killed at the cap since this node started.
    pub fn cgroup_oom_kills(&self) -> Option<u64> {
        self.in_cgroup.then(|| {
            cgroup_oom_kill_count()
                .unwrap_or(0)
                .saturating_sub(self.oom_kills_before)
        })
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.data_dir);
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sequential write bandwidth with the data made durable, as `dd conv=fdatasync` measures it,
/// on the disk of `dir`: bytes per second.
pub fn disk_fsync_bandwidth(dir: &Path, mebibytes: u64) -> Vec<f64> {
    std::fs::create_dir_all(dir).expect("bench dir");
    let target = dir.join("dd-bandwidth.bin");
    (0..DD_RUNS)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", target.display()))
                .args(["bs=1M", &format!("count={mebibytes}"), "conv=fdatasync"])
                .stderr(Stdio::null())
                .status()
                .expect("dd runs");
            let seconds = started.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(&target);
            assert!(status.success(), "dd failed");
            (mebibytes * 1024 * 1024) as f64 / seconds
        })
        .collect()
}

/// Write bandwidth of the disk of `dir` when it is written the way the node writes uploads:
/// `writers` files at a time, each of `file_bytes` written in 256 KiB pieces, fsynced, then
/// removed (as the bench's janitor removes stored uploads), for `seconds`: bytes per second.
///
/// No network, HTTP or parsing: what the disk alone gives for this pattern, beside the one
/// long sequential stream `dd` measures. The bytes are not zeros, as an upload's are not.
pub fn disk_upload_pattern_bandwidth(
    dir: &Path,
    writers: usize,
    file_bytes: usize,
    seconds: f64,
) -> f64 {
    use std::io::Write;
    let dir = dir.join("disk-pattern");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let piece: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let written: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..writers)
            .map(|writer| {
                let (dir, piece) = (&dir, &piece);
                scope.spawn(move || {
                    let mut written = 0u64;
                    let mut file_number = 0u64;
                    while Instant::now() < deadline {
                        let path = dir.join(format!("{writer}-{file_number}.bin"));
                        let mut file = std::fs::File::create(&path).expect("pattern file");
                        let mut left = file_bytes;
                        while left > 0 {
                            let n = left.min(piece.len());
                            file.write_all(&piece[..n]).expect("pattern write");
                            left -= n;
                        }
                        file.sync_all().expect("pattern fsync");
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        written += file_bytes as u64;
                        file_number += 1;
                    }
                    written
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("writer")).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    written as f64 / elapsed
}

/// The disk is measured this many times; the median is the baseline (a virtual disk's figure
/// varies several-fold from one run to the next).
pub const DD_RUNS: usize = 3;

/// An H.264 MP4 of about `bytes`, 1920x1080, 30 fps, `seconds` long (cached under `dir`).
pub fn generate_input(dir: &Path, bytes: u64, seconds: u32) -> PathBuf {
    std::fs::create_dir_all(dir).expect("media dir");
    let path = dir.join(format!(
        "input-1080p-{seconds}s-{}mb.mp4",
        bytes / 1_000_000
    ));
    if path.exists() {
        return path;
    }
    let kbit = bytes * 8 / 1000 / u64::from(seconds);
    let tmp = path.with_extension("tmp.mp4");
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1920x1080:rate=30")
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-b:v", &format!("{kbit}k"), "-minrate", &format!("{kbit}k")])
        .args([
            "-maxrate",
            &format!("{kbit}k"),
            "-bufsize",
            &format!("{}k", kbit / 2),
        ])
        .args([
            "-x264-params",
            "nal-hrd=cbr",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ])
        .arg(&tmp)
        .status()
        .expect("ffmpeg must be installed (make bench installs it)");
    assert!(status.success(), "ffmpeg failed");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}
