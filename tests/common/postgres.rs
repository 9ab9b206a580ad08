//! PostgreSQL for the tests: one throwaway cluster per test binary (Debian's `postgresql`;
//! `make test-deps` installs it), in a temporary directory, on 127.0.0.1 and a free port, and a
//! database of its own for every test node. `initdb` refuses root, so as root the server runs
//! as the `postgres` user. The server dies with the thread that started it, which lives as long
//! as the test binary.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether the tests' nodes keep their records in PostgreSQL.
pub fn on_postgres() -> bool {
    super::aws::test_backends().contains(&"postgres")
}

/// The directory of PostgreSQL's programs: `PG_BIN_DIR`, or the newest under
/// `/usr/lib/postgresql`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (make test-deps)")
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").1
}

/// The uid and gid to run the server as: `postgres` when we are root, else ourselves.
fn server_user() -> Option<(libc::uid_t, libc::gid_t)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "no postgres user (make test-deps)");
    Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

/// `program` of PostgreSQL, run as the server's user; tied to this thread when `tied`.
fn command(program: &str, tied: bool) -> Command {
    let mut command = Command::new(bin_dir().join(program));
    let user = server_user();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After the change of user, which clears it.
            if tied {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            }
            Ok(())
        });
    }
    command
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

const CLUSTER_PREFIX: &str = "showcase-pg-";

/// Removes the clusters that earlier test binaries left in the temp directory (a binary
/// ends without dropping its statics): those whose server is gone, or that never got one and
/// are older than ten minutes.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(CLUSTER_PREFIX)
        {
            continue;
        }
        let pid_file = entry.path().join("data/postmaster.pid");
        let alive = match std::fs::read_to_string(&pid_file) {
            Ok(text) => text
                .lines()
                .next()
                .and_then(|pid| pid.trim().parse::<i32>().ok())
                .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().unwrap_or_default() < Duration::from_secs(600)),
        };
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The cluster of this test binary: its port.
fn shared_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            remove_stale_clusters();
            let dir = tempfile::Builder::new()
                .prefix(CLUSTER_PREFIX)
                .tempdir()
                .unwrap();
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            chown(dir.path());
            chown(&data);
            let status = command("initdb", false)
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                ])
                .args(["-E", "UTF8", "--locale", "C.UTF-8", "--no-sync"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("initdb runs");
            assert!(status.success(), "initdb failed");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let mut server = command("postgres", true)
                .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args([
                    "-c",
                    &format!("unix_socket_directories={}", dir.path().display()),
                ])
                .args(["-c", "max_connections=1000", "-c", "shared_buffers=64MB"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("postgres starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    server.try_wait().unwrap().is_none(),
                    "postgres exited at start"
                );
                assert!(Instant::now() < deadline, "postgres did not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
            // Listening is not yet accepting: a loaded machine can still be starting it up.
            loop {
                let ready = Command::new(bin_dir().join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .expect("pg_isready runs");
                if ready.success() {
                    break;
                }
                assert!(
                    server.try_wait().unwrap().is_none(),
                    "postgres exited at start"
                );
                assert!(
                    Instant::now() < deadline,
                    "postgres did not accept connections"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            tx.send(port).unwrap();
            // The server and its directory live as long as this thread: the whole binary.
            let _keep = (dir, server);
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the test cluster starts")
    })
}

/// The URL of a fresh, empty database on the binary's cluster.
pub fn fresh_database() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let port = shared_port();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    super::aws::block_on(async {
        use sqlx::Connection;
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .unwrap();
    });
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// The JWT secret of test nodes on PostgreSQL (nodes sharing a store share their secret).
pub const JWT_SECRET: &str = "a-test-secret-shared-by-every-node-of-a-platform";

/// Points `config` at a fresh database; its URL.
pub fn point_at(config: &mut showcase::config::Config) -> String {
    let url = fresh_database();
    use_database(config, &url);
    url
}

/// Points `config` at the database at `url`, with the secret every node of it shares.
pub fn use_database(config: &mut showcase::config::Config, url: &str) {
    config.store.backend = showcase::config::StoreBackend::Postgres;
    config.store.postgres.url = url.into();
    config.store.postgres.max_connections = 4;
    config.auth.jwt_secret = JWT_SECRET.into();
}

/// The database of the node run as a process over `data_dir`, made at its first start and
/// found again by its restarts.
pub fn database_for(data_dir: &Path) -> String {
    static MADE: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if let Some((_, url)) = made.iter().find(|(dir, _)| dir == data_dir) {
        return url.clone();
    }
    let url = fresh_database();
    made.push((data_dir.to_path_buf(), url.clone()));
    url
}

/// The environment that puts a node run as a process on the database at `url`.
pub fn env(url: &str) -> Vec<(String, String)> {
    [
        ("SHOWCASE_STORE__BACKEND", "postgres"),
        ("SHOWCASE_STORE__POSTGRES__URL", url),
        ("SHOWCASE_STORE__POSTGRES__MAX_CONNECTIONS", "4"),
        ("SHOWCASE_AUTH__JWT_SECRET", JWT_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
