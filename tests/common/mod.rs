//! Shared helpers of the integration tests: a real node on 127.0.0.1:0 with a fresh data dir,
//! one HTTP client for any node ([`client::Client`]), players, uploads, and test media
//! generated with FFmpeg's lavfi sources (never committed).
//!
//! `TEST_LOG=1` shows the nodes' logs (in-process nodes log to the test's output, separate
//! processes print theirs when they are dropped); without it the logs are discarded.
#![allow(dead_code)]

pub mod aws;
pub mod client;
pub mod gate;
pub mod moto;
pub mod nginx;
pub mod npm;
pub mod openapi;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod stored;

pub use client::Client;
#[allow(unused_imports)]
pub use openapi::Checked;

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;
use showcase::app::RunningApp;
use showcase::config::Config;
use showcase::domain::{NewUser, Publication};

pub const PASSWORD: &str = "canasta-2026";

/// A node with a fresh temp data dir, removed when dropped. It derefs to the [`Client`] of
/// the node.
pub struct TestApp {
    pub app: RunningApp,
    pub client: Client,
    /// The S3 and SQS server of the node, when the tests run on the AWS backends.
    pub aws: Option<aws::Aws>,
    /// The URL of the node's database, when the tests keep records in PostgreSQL.
    pub postgres: Option<String>,
    // Dropped after `app` (fields drop in order), so the node stops before its dir goes.
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Whether `TEST_LOG` asks for the nodes' logs.
pub fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Sends the in-process nodes' logs to the test output when `TEST_LOG` is set (once per test
/// binary; `RUST_LOG` picks the level, `info` by default).
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if test_log() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.addr = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = dir.to_path_buf();
    config.server.shutdown_grace_s = 5;
    // Test machines may have little free disk; the watermark is tested on its own.
    config.upload.min_free_disk_mb = 0;
    // The test harness is not the server binary: transcodes run the real one.
    config.transcode.program = env!("CARGO_BIN_EXE_showcase").into();
    config.transcode.poll_interval_ms = 100;
    // API tests keep videos where they put them; pipeline tests turn processing on.
    config.transcode.workers = 0;
    // Every test client comes from 127.0.0.1; the buckets are tested on their own.
    config.rate_limit.signup_per_minute = 0;
    config.rate_limit.login_per_minute = 0;
    config.rate_limit.vote_per_minute = 0;
    config
}

impl TestApp {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        init_test_log();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let aws = aws::on_aws().then(|| aws::Aws::start(&mut config));
        let postgres = postgres::on_postgres().then(|| postgres::point_at(&mut config));
        let app = showcase::app::spawn(config).expect("the node starts");
        Self {
            client: Client::new(app.url("")),
            app,
            aws,
            postgres,
            dir,
        }
    }

    /// A user written straight into the store (password [`PASSWORD`]) with a token from the
    /// node's own issuer: for tests that need hundreds of players and are not about signup
    /// (argon2 is slow on purpose).
    pub async fn quick_player(&self, first: &str, last: &str, city: &str) -> (u64, String) {
        static HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        let hash = HASH
            .get_or_init(|| async {
                let auth = showcase::auth::Auth::new(b"any", std::time::Duration::from_secs(60), 1);
                auth.hash_password(PASSWORD.to_string()).await.unwrap()
            })
            .await;
        let email = format!("{}.{}.{}@test.example", first, last, uuid_like());
        let user = self
            .app
            .engine()
            .store
            .create_user(NewUser {
                first_name: first.into(),
                last_name: last.into(),
                email,
                password_hash: hash.clone(),
                city: city.into(),
                country: "Colombia".into(),
            })
            .await
            .unwrap();
        (user.id, self.app.node.auth().issue(user.id).token)
    }

    /// Publishes a video the way the processing pipeline does when a job succeeds.
    pub async fn publish(&self, video_id: u64) {
        publish_in(self.app.engine().store.as_ref(), video_id).await;
    }

    /// Publishes a video with `video` and `poster` as its rendition, placed where the pipeline
    /// puts its outputs, with their real content hashes. Returns the video's bytes.
    pub async fn publish_with_files(&self, video_id: u64, video: &Path, poster: &Path) -> Vec<u8> {
        self.stored()
            .publish(self.app.engine().store.as_ref(), video_id, video, poster)
            .await
    }

    /// Where the node keeps its media and jobs.
    pub fn stored(&self) -> stored::Stored {
        stored::Stored {
            data_dir: self.dir.path().to_path_buf(),
            remote: self.aws.as_ref().map(aws::Aws::remote),
            postgres: self.postgres.clone(),
        }
    }

    /// Files under `sub` of the data dir; under `media`, the node's blobs wherever they are
    /// kept (as `media/<key>`).
    pub fn files_under(&self, sub: &str) -> Vec<PathBuf> {
        match sub.strip_prefix("media") {
            Some(rest) if self.aws.is_some() && (rest.is_empty() || rest.starts_with('/')) => {
                let prefix = rest.trim_start_matches('/');
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", prefix.trim_end_matches('/'))
                };
                self.stored()
                    .keys(&prefix)
                    .into_iter()
                    .map(|key| PathBuf::from("media").join(key))
                    .collect()
            }
            _ => files_under(&self.dir.path().join(sub)),
        }
    }

    /// The bytes of the node's blob `key` (`originals/3.mp4`), if there is one.
    pub fn blob(&self, key: &str) -> Option<Vec<u8>> {
        self.stored().blob(key)
    }

    /// Stores `bytes` as the node's blob `key`, where the node keeps its media.
    pub async fn put_blob(&self, key: &str, bytes: &[u8]) {
        self.stored().put_blob(key, bytes).await
    }
}

/// A JPEG picture (a frame of the valid clip).
pub fn poster_jpeg() -> PathBuf {
    let path = media_dir().join("poster.jpg");
    let source = clip(Clip::Valid);
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        let tmp = media_dir().join(format!("poster.{}.tmp.jpg", std::process::id()));
        let status = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-ss", "3", "-i"])
            .arg(&source)
            .args(["-frames:v", "1", "-s", "1280x720"])
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A file of `len` pseudo-random bytes (generated once).
pub fn random_file(len: u64) -> PathBuf {
    let path = media_dir().join(format!("random-{len}.bin"));
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        write_atomically(&path, &bytes);
    }
    path
}

pub async fn publish_in(store: &dyn showcase::engine::Store, video_id: u64) {
    store
        .publish_video(
            video_id,
            Publication {
                processed_key: format!("processed/{video_id}.mp4"),
                poster_key: format!("posters/{video_id}.jpg"),
                content_hash: format!("{video_id:064x}"),
                poster_hash: format!("{:064x}", video_id + 1),
                duration_s: 35.0,
            },
        )
        .await
        .unwrap();
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Status and JSON body of a response a test sent itself (see [`Client`]).
pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    client::answer(Ok(response))
        .await
        .expect("the body is read")
}

pub fn detail_of(body: &Value) -> &str {
    body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail in {body}"))
}

/// Test clips, generated once per build directory.
#[derive(Debug, Clone, Copy)]
pub enum Clip {
    /// 1920x1080, 25 s: accepted.
    Valid,
    /// 1080x1920 portrait, 25 s: accepted.
    Portrait,
    /// 1920x1080, 12 s: too short.
    Short,
    /// 640x360, 25 s: too small.
    LowRes,
    /// The valid clip cut in half.
    Truncated,
    /// A text file named .mp4.
    Text,
    /// The valid clip with its movie and media timescales set to 0 (crafted: division by zero).
    ZeroTimescale,
}

pub fn media_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-media");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Generates (once) an H.264 MP4 of the given size and duration from a lavfi test source.
pub fn generate_mp4(name: &str, width: u32, height: u32, seconds: u32) -> PathBuf {
    generate_media(name, width, height, seconds, false)
}

/// Like [`generate_mp4`], with an AAC audio track when `audio`.
pub fn generate_media(name: &str, width: u32, height: u32, seconds: u32, audio: bool) -> PathBuf {
    let source = format!("testsrc2=size={width}x{height}:rate=10");
    let seconds = seconds.to_string();
    let mut args = vec!["-f", "lavfi", "-i", &source];
    if audio {
        args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
        args.extend(["-c:a", "aac"]);
    }
    args.extend([
        "-t",
        &seconds,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "45",
    ]);
    args.extend(["-pix_fmt", "yuv420p", "-movflags", "+faststart"]);
    generate_with_ffmpeg(name, &args)
}

/// Generates (once) the media file `name` with `ffmpeg <args> <output>`.
pub fn generate_with_ffmpeg(name: &str, args: &[&str]) -> PathBuf {
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    let path = media_dir().join(name);
    if path.exists() {
        return path;
    }
    let tmp = media_dir().join(format!("{name}.{}.tmp.mp4", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .arg(&tmp)
        .status()
        .expect("ffmpeg must be installed (make test installs it)");
    assert!(status.success(), "ffmpeg failed for {name}");
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Tests of one binary run on threads of one process: they generate media one at a time (and
/// other test binaries are kept apart by the pid in the temp names).
static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn clip(kind: Clip) -> PathBuf {
    match kind {
        Clip::Valid => generate_mp4("valid-1920x1080-25s.mp4", 1920, 1080, 25),
        Clip::Portrait => generate_mp4("portrait-1080x1920-25s.mp4", 1080, 1920, 25),
        Clip::Short => generate_mp4("short-1920x1080-12s.mp4", 1920, 1080, 12),
        Clip::LowRes => generate_mp4("lowres-640x360-25s.mp4", 640, 360, 25),
        Clip::Truncated => {
            let full = std::fs::read(clip(Clip::Valid)).unwrap();
            let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
            let path = media_dir().join("truncated.mp4");
            if !path.exists() {
                write_atomically(&path, &full[..full.len() / 2]);
            }
            path
        }
        Clip::ZeroTimescale => {
            let mut bytes = std::fs::read(clip(Clip::Valid)).unwrap();
            let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
            let path = media_dir().join("zero-timescale.mp4");
            if !path.exists() {
                for tag in [&b"mvhd"[..], b"mdhd"] {
                    let at = bytes
                        .windows(4)
                        .position(|w| w == tag)
                        .expect("box present");
                    assert_eq!(bytes[at + 4], 0, "version 0 header");
                    // tag, version+flags, creation time, modification time, then the timescale.
                    let timescale = at + 4 + 4 + 4 + 4;
                    bytes[timescale..timescale + 4].copy_from_slice(&[0, 0, 0, 0]);
                }
                write_atomically(&path, &bytes);
            }
            path
        }
        Clip::Text => {
            let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
            let path = media_dir().join("text.mp4");
            if !path.exists() {
                write_atomically(
                    &path,
                    "Esto no es un video, es un texto.\n".repeat(200).as_bytes(),
                );
            }
            path
        }
    }
}

/// A valid MP4 of exactly `total` bytes: the valid clip followed by a top-level `free` box.
pub fn padded_mp4(total: u64) -> PathBuf {
    let path = media_dir().join(format!("padded-{total}.mp4"));
    if path.exists() {
        return path;
    }
    let base = std::fs::read(clip(Clip::Valid)).unwrap();
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    if path.exists() {
        return path;
    }
    let pad = total - base.len() as u64;
    assert!(pad >= 8 && pad <= u32::MAX as u64);
    let tmp = media_dir().join(format!("padded-{total}.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        f.write_all(&base).unwrap();
        f.write_all(&(pad as u32).to_be_bytes()).unwrap();
        f.write_all(b"free").unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = pad - 8;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n]).unwrap();
            left -= n as u64;
        }
    }
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
