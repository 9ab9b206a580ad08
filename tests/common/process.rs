//! The real `showcase` executable as a child process: for what only a separate process can
//! show (SIGKILL, exit codes, its own resident memory). With `SHOWCASE_TEST_BACKENDS=aws` it
//! keeps its media in S3 and its jobs in SQS, found again by a restart over the same data dir.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// S3 and SQS, when the tests run on the AWS backends.
    pub aws: Option<super::aws::ForProcess>,
    /// The URL of its database, when the tests keep records in PostgreSQL.
    pub postgres: Option<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `showcase serve` on 127.0.0.1:0 over `data_dir` and waits for `listening on`.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(data_dir, env, |_| {})
    }

    /// Like [`ServerProcess::start`], with a last say over the command (e.g. a `pre_exec`).
    pub fn start_with(
        data_dir: &Path,
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        Self::start_on(
            data_dir,
            env,
            super::aws::on_aws(),
            super::postgres::on_postgres(),
            adjust,
        )
    }

    /// Like [`ServerProcess::start`], on S3 and SQS whatever the tests run on.
    pub fn start_on_aws(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, env, true, super::postgres::on_postgres(), |_| {})
    }

    /// Like [`ServerProcess::start`], as a node of a platform of several: records in
    /// PostgreSQL, media in S3, jobs in SQS, whatever the tests run on.
    pub fn start_on_platform(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, env, true, true, |_| {})
    }

    /// Starts a node on the given S3 and SQS and the database at `postgres`: one node of a
    /// platform whose backends the test made itself.
    pub fn start_in(
        data_dir: &Path,
        env: &[(&str, &str)],
        aws: Option<super::aws::ForProcess>,
        postgres: Option<String>,
    ) -> Self {
        Self::spawn(data_dir, env, aws, postgres, |_| {})
    }

    /// Starts the node on S3 and SQS when `aws`, on PostgreSQL when `postgres`: the ones of
    /// `data_dir`, found again by a restart over it.
    fn start_on(
        data_dir: &Path,
        env: &[(&str, &str)],
        aws: bool,
        postgres: bool,
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let aws = aws.then(|| {
            let max_receives = env
                .iter()
                .find(|(key, _)| *key == "SHOWCASE_QUEUE__MAX_RECEIVES")
                .map_or(
                    showcase::config::Config::default().queue.max_receives,
                    |(_, v)| v.parse().unwrap(),
                );
            super::aws::ForProcess::for_data_dir(data_dir, max_receives)
        });
        let postgres = postgres.then(|| super::postgres::database_for(data_dir));
        Self::spawn(data_dir, env, aws, postgres, adjust)
    }

    fn spawn(
        data_dir: &Path,
        env: &[(&str, &str)],
        aws: Option<super::aws::ForProcess>,
        postgres: Option<String>,
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = Command::new(executable());
        command
            .arg("serve")
            // No config.toml there: embedded defaults plus the environment below.
            .current_dir(data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SHOWCASE_SERVER__ADDR", "127.0.0.1:0")
            .env("SHOWCASE_STORAGE__DATA_DIR", data_dir)
            .env("SHOWCASE_UPLOAD__MIN_FREE_DISK_MB", "0")
            .env("SHOWCASE_TRANSCODE__WORKERS", "0")
            // Every test client comes from 127.0.0.1; the buckets are tested on their own.
            .env("SHOWCASE_RATE_LIMIT__SIGNUP_PER_MINUTE", "0")
            .env("SHOWCASE_RATE_LIMIT__LOGIN_PER_MINUTE", "0")
            .env("SHOWCASE_RATE_LIMIT__VOTE_PER_MINUTE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in aws.iter().flat_map(super::aws::ForProcess::env) {
            command.env(key, value);
        }
        // A test that gives the JWT secret its own way keeps it.
        let own_secret = env.iter().any(|(key, _)| {
            *key == "CREDENTIALS_DIRECTORY" || key.starts_with("SHOWCASE_AUTH__JWT")
        });
        for (key, value) in postgres.iter().flat_map(|url| super::postgres::env(url)) {
            if !(own_secret && key == "SHOWCASE_AUTH__JWT_SECRET") {
                command.env(key, value);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        adjust(&mut command);
        let mut child = command.spawn().expect("the showcase binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let written = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                {
                    let mut log = written.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if !sent {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                        sent = true;
                    }
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            // Not left running behind a failed test.
            let _ = child.kill();
            let status = child.wait();
            panic!("the server did not report its address ({status:?})");
        };
        Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            aws,
            postgres,
            log,
        }
    }

    /// Where the node keeps its media and jobs (still there once it is stopped).
    pub fn stored(&self) -> super::stored::Stored {
        super::stored::Stored {
            data_dir: self.data_dir.clone(),
            remote: self.aws.as_ref().map(super::aws::ForProcess::remote),
            postgres: self.postgres.clone(),
        }
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client of this node.
    pub fn client(&self) -> super::Client {
        super::Client::new(self.url(""))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no shutdown step of any kind runs.
    pub fn kill9(mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status if the process is gone within `within` (else SIGKILL and
    /// a failed test).
    pub fn terminate_within(self, within: Duration) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.exit_status_within(within, "of SIGTERM")
    }

    /// Waits for the process to exit by itself (at most `within`, then SIGKILL).
    pub fn terminate_after_exit(self, within: Duration) -> ExitStatus {
        self.exit_status_within(within, "by itself")
    }

    /// The exit status, if the process is gone within `within`; else SIGKILL and a failed
    /// test that says what it was waiting for.
    fn exit_status_within(mut self, within: Duration, waiting_for: &str) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within {within:?} {waiting_for}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }
}

/// A short rendition (one second between half-second bumpers, the fastest preset) with quick
/// polls and retries: for the tests about recovery and fleets, not about transcoding.
pub const QUICK_TRANSCODE: [(&str, &str); 6] = [
    ("SHOWCASE_TRANSCODE__MAIN_MAX_S", "1"),
    ("SHOWCASE_TRANSCODE__BUMPER_S", "0.5"),
    ("SHOWCASE_TRANSCODE__PRESET", "ultrafast"),
    ("SHOWCASE_TRANSCODE__POLL_INTERVAL_MS", "100"),
    ("SHOWCASE_TRANSCODE__RETRY_BASE_S", "1"),
    ("SHOWCASE_TRANSCODE__RETRY_MAX_S", "2"),
];

/// The `showcase` executable the tests run: `SHOWCASE_TEST_BIN` (the cluster test runs the
/// release build), else the one cargo built with the tests.
pub fn executable() -> PathBuf {
    std::env::var_os("SHOWCASE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_showcase")))
}

/// The resident set size of process `pid`, in bytes.
pub fn rss_of(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if super::test_log() {
            // Printed from the test's thread: shown with the test's output when it fails.
            eprintln!("--- log of the node at {} ---\n{}", self.addr, self.log());
        }
    }
}
