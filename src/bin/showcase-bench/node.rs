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
    /// Starts `server serve` with `env` on top of the bench defaults.
    pub fn start(server: &Path, data_dir: &Path, env: &[(&str, String)]) -> Self {
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir).expect("data dir");
        assert!(
            server.exists(),
            "{} not found: build it with `cargo build --release`",
            server.display()
        );
        let in_cgroup = prepare_cgroup();
        let mut command = Command::new(server);
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// CPU time process `pid` has used so far, its threads' and its reaped children's
/// (transcodes), user and system, in seconds.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: utime,
    // stime, cutime and cstime are the 14th to 17th fields of the line.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_s()
}

/// Where the machine's CPU time had gone at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    node: f64,
    client: f64,
    busy: f64,
    softirq: f64,
}

impl CpuSample {
    pub fn now(node_pid: u32) -> Self {
        let (busy, softirq) = machine_cpu_seconds();
        Self {
            at: Instant::now(),
            node: process_cpu_seconds(node_pid),
            client: own_cpu_seconds(),
            busy,
            softirq,
        }
    }

    /// The CPU time spent between `earlier` and this sample.
    pub fn since(&self, earlier: &CpuSample) -> CpuWindow {
        CpuWindow {
            seconds: self.at.duration_since(earlier.at).as_secs_f64(),
            node_s: self.node - earlier.node,
            client_s: self.client - earlier.client,
            machine_busy_s: self.busy - earlier.busy,
            softirq_s: self.softirq - earlier.softirq,
        }
    }
}

/// CPU seconds spent over a window of `seconds`, by the node, by the load generator, by the
/// whole machine (busy), and by the kernel's softirq work that no process is charged with.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuWindow {
    pub seconds: f64,
    pub node_s: f64,
    pub client_s: f64,
    pub machine_busy_s: f64,
    pub softirq_s: f64,
}

impl CpuWindow {
    /// Cores the node kept busy on average.
    pub fn node_cores(&self) -> f64 {
        self.node_s / self.seconds.max(1e-9)
    }

    /// Cores the load generator kept busy on average.
    pub fn client_cores(&self) -> f64 {
        self.client_s / self.seconds.max(1e-9)
    }
}

/// The kernel's clock ticks per second, the unit of `/proc`'s CPU times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time this process (the load generator, all its threads) has used so far, in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The machine's CPU time so far from `/proc/stat`: (busy, softirq) in seconds, all cores.
/// Busy is everything but idle and I/O wait; softirq is the kernel's network receive work,
/// which no process is charged with.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let ticks = clock_ticks_per_s();
    (busy as f64 / ticks, field(6) as f64 / ticks)
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
