//! S3 and SQS for the tests: moto in server mode (`make test-deps` installs it, `MOTO_SERVER`
//! names its executable), started on 127.0.0.1 and a free port, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

fn executable() -> PathBuf {
    let path = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/showcase/venv/bin/moto_server")
        });
    assert!(
        path.is_file(),
        "moto_server not found at {} (make test-deps installs it)",
        path.display()
    );
    path
}

/// What the SDK's standard chain reads from the environment for the tests.
pub const CREDENTIALS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_EC2_METADATA_DISABLED",
];

/// The SDK's standard chain reads these: any values do for moto.
pub fn test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (key, value) in CREDENTIALS
            .into_iter()
            .zip(["testing", "testing", "us-east-1", "true"])
        {
            if std::env::var_os(key).is_none() {
                std::env::set_var(key, value);
            }
        }
    });
}

impl Moto {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A server that is killed when the thread that starts it ends.
    pub fn start_tied_to_this_thread() -> Self {
        use std::os::unix::process::CommandExt;
        Self::start_with(|command| {
            // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        })
    }

    fn start_with(adjust: impl FnOnce(&mut Command)) -> Self {
        test_credentials();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = Command::new(executable());
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        adjust(&mut command);
        let child = command.spawn().expect("moto_server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
