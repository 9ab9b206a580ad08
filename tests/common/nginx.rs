//! nginx (Debian's `nginx-light`; `make test-deps` installs it) as the load balancer in front of
//! api nodes: round robin, passive health (a node that fails a connection is left out for a
//! few seconds), and a request that could not be sent to one node passed to the next. Every
//! answer names the nodes it was sent to (`X-Upstream`, nginx's `$upstream_addr`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// How long nginx leaves out a node after a failed connection to it.
pub const FAIL_TIMEOUT_S: u64 = 3;

impl Nginx {
    /// Starts nginx on 127.0.0.1 and a free port, balancing over `upstreams`.
    pub fn start(upstreams: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The worker runs as `nobody` when we are root: its temp paths must be open to it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .unwrap();
        }
        let port = free_port();
        std::fs::write(
            dir.path().join("nginx.conf"),
            config(dir.path(), port, upstreams),
        )
        .unwrap();
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its workers in a group of their own, so that they can be stopped together.
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // If the tests die, the master stops at once and takes its workers along.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("nginx must be installed (make test-deps installs nginx-light)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// nginx's error log so far (why it gave a client 502, for instance).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Stops an nginx started as the leader of its own process group (`process_group(0)`): a
/// graceful stop (SIGQUIT) of the master, then SIGKILL to whatever of its group is left, so
/// that no worker outlives it still listening on its port.
pub fn stop(master: &mut std::process::Child) {
    let group = master.id() as i32;
    unsafe { libc::kill(group, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while master.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = master.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration: one connection per request to the nodes (no idle connection that a node
/// may close as nginx reuses it), bodies streamed as they come (no copy on nginx's disk), and
/// `proxy_next_upstream` at its default (`error timeout`): a request is passed to the next node
/// only when nothing of it was sent, or when it is idempotent.
fn config(dir: &Path, port: u16, upstreams: &[SocketAddr]) -> String {
    let dir = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|addr| format!("    server {addr} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;\n"))
        .collect();
    format!(
        "daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_max_body_size 128m;
  upstream api {{
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection close;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_connect_timeout 2s;
      proxy_read_timeout 60s;
      proxy_send_timeout 60s;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
"
    )
}
