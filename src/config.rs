//! Configuration: one typed struct with embedded defaults, optionally overlaid by a TOML file and
//! then by `SHOWCASE_<SECTION>__<KEY>` environment variables.
//!
//! The defaults live in code so that the binary runs with no file at all; `config.toml` at the
//! repository root documents every key with the same values, and a test keeps the two equal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override file values; `__` separates section and key,
/// e.g. `SHOWCASE_UPLOAD__MAX_BYTES=52428800`.
pub const ENV_PREFIX: &str = "SHOWCASE_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub storage: StorageConfig,
    pub queue: QueueConfig,
    pub upload: UploadConfig,
    pub auth: AuthConfig,
    pub media: MediaConfig,
    pub admin: AdminConfig,
    pub actors: ActorsConfig,
    pub faults: FaultsConfig,
    pub log: LogConfig,
    pub transcode: TranscodeConfig,
    pub stream: StreamConfig,
    pub rate_limit: RateLimitConfig,
}

/// What this node does in a platform of several.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub role: Role,
}

/// Which actors a node runs and which routes it serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: one node is the whole platform.
    #[default]
    All,
    /// HTTP, ingest and streamer: takes uploads and serves the public.
    Api,
    /// Queue consumer and transcoder; serves only the operator routes.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    /// Whether this node takes uploads and serves the public routes.
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    /// Whether this node processes jobs.
    pub fn processes(self) -> bool {
        self != Role::Api
    }
}

/// Where the records (users, videos, votes, rankings) are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub postgres: PostgresConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded in this process, under `storage.data_dir`: one node.
    #[default]
    Sled,
    /// A PostgreSQL server shared by every node.
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:5432/db`; the password may come from the credential
    /// `postgres_password` instead (or `PGPASSWORD`).
    pub url: String,
    pub max_connections: u32,
    /// From the credential `postgres_password`, resolved at load; never read from a file.
    #[serde(skip)]
    pub password: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 16,
            password: String::new(),
        }
    }
}

/// Per-client token buckets (see `rate_limit`); a rate of 0 leaves the route unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub signup_per_minute: u32,
    pub signup_burst: u32,
    pub login_per_minute: u32,
    pub login_burst: u32,
    pub vote_per_minute: u32,
    pub vote_burst: u32,
    /// Creations of resumable uploads.
    pub upload_creation_per_minute: u32,
    pub upload_creation_burst: u32,
    /// How often buckets of idle clients are dropped.
    pub evict_every_s: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            signup_per_minute: 10,
            signup_burst: 5,
            login_per_minute: 30,
            login_burst: 10,
            vote_per_minute: 120,
            vote_burst: 30,
            upload_creation_per_minute: 30,
            upload_creation_burst: 10,
            evict_every_s: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP listener binds to; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Absolute URL prefix used when building media URLs; empty = relative URLs (`/media/..`).
    pub public_url: String,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace_s: u64,
    /// Open connections are capped here (a place is taken before `accept`).
    pub max_connections: usize,
    /// Connections accepted past `max_connections` for the operations routes only; also the
    /// connection cap of the operations listener.
    pub ops_reserved_connections: usize,
    /// Address of a listener serving only the operations routes; empty = none.
    pub ops_addr: String,
    /// Accept backlog of the listeners; 0 = the kernel's `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// A client must send its request headers within this time.
    pub header_read_timeout_s: u64,
    /// A request body that sends nothing for this long is aborted.
    pub body_idle_timeout_s: u64,
    /// Largest JSON body accepted on the JSON routes.
    pub max_json_bytes: u64,
    /// Header in which trusted proxies pass the client's address (`X-Forwarded-For` style).
    pub client_ip_header: String,
    /// Comma-separated addresses or networks of the proxies whose `client_ip_header` is
    /// believed (e.g. the load balancer's subnet); empty = the peer address is the client.
    pub trusted_proxies: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".parse().expect("static address"),
            public_url: String::new(),
            shutdown_grace_s: 20,
            max_connections: 2048,
            ops_reserved_connections: 32,
            ops_addr: String::new(),
            listen_backlog: 0,
            header_read_timeout_s: 10,
            body_idle_timeout_s: 30,
            max_json_bytes: 16 * 1024,
            client_ip_header: "x-forwarded-for".into(),
            trusted_proxies: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Holds the database, media files, temp files and the generated secret.
    pub data_dir: PathBuf,
    /// Longest wait for a group commit (fsync of the store) before the write is reported failed.
    pub commit_timeout_s: u64,
    /// Page cache of the database, in MiB.
    pub cache_mb: u64,
    /// Where media files are kept: on this machine's disk, or in S3.
    pub backend: StorageBackend,
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            commit_timeout_s: 10,
            cache_mb: 64,
            backend: StorageBackend::Local,
            s3: S3Config::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key inside the bucket, e.g. `showcase/`.
    pub prefix: String,
    /// Empty: the SDK's default chain.
    pub region: String,
    /// Empty: AWS; set for S3-compatible servers.
    pub endpoint_url: String,
    pub force_path_style: bool,
    /// Local read-through cache of published media; empty: `<data_dir>/cache`.
    pub cache_dir: String,
    pub cache_max_mb: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            region: String::new(),
            endpoint_url: String::new(),
            force_path_style: false,
            cache_dir: String::new(),
            cache_max_mb: 2048,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A received job is invisible to other consumers for this long unless its lease is extended.
    pub visibility_timeout_s: u64,
    /// A job received more than this many times is moved to the dead letters.
    pub max_receives: u32,
    /// Where jobs wait: in the embedded queue, or in SQS.
    pub backend: QueueBackend,
    pub sqs: SqsConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout_s: 120,
            max_receives: 5,
            backend: QueueBackend::Embedded,
            sqs: SqsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Embedded,
    Sqs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    /// Empty: the SDK's default chain.
    pub region: String,
    /// Empty: AWS; set for SQS-compatible servers.
    pub endpoint_url: String,
    /// Long polling: how long a receive waits for a job, in seconds (0..=20).
    pub wait_time_s: u64,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            dead_letter_queue_url: String::new(),
            region: String::new(),
            endpoint_url: String::new(),
            wait_time_s: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Largest accepted video file, in bytes.
    pub max_bytes: u64,
    pub min_duration_s: f64,
    pub max_duration_s: f64,
    /// The shorter side of the video must have at least this many pixels.
    pub min_short_side: u32,
    /// Uploads streaming at the same time; more are refused with 503 before their body is read.
    pub max_concurrent: usize,
    /// Uploads are refused while the data disk has less free space than this.
    pub min_free_disk_mb: u64,
    /// Uploads are refused while this many jobs wait in the queue.
    pub max_queue_depth: u64,
    /// Slowest average upload rate accepted once `rate_grace_s` have passed (bytes/s).
    pub min_bytes_per_s: u64,
    /// Seconds an upload may take before its average rate is judged.
    pub rate_grace_s: u64,
    /// Seconds an incomplete resumable upload is kept (`Upload-Expires`).
    pub resumable_ttl_s: u64,
    /// Incomplete resumable uploads one player may have at a time.
    pub max_resumable_per_player: usize,
    /// Write new uploads straight to the disk (`O_DIRECT`) instead of through the page cache.
    pub direct_writes: bool,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_bytes: 104_857_600,
            min_duration_s: 20.0,
            max_duration_s: 60.0,
            min_short_side: 1080,
            max_concurrent: 12,
            min_free_disk_mb: 1024,
            max_queue_depth: 10_000,
            min_bytes_per_s: 32 * 1024,
            rate_grace_s: 15,
            resumable_ttl_s: 86_400,
            max_resumable_per_player: 5,
            direct_writes: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 key for access tokens and signed URLs; empty = generate once, keep in the data dir.
    /// Resolved at load from this key, `jwt_secret_file` or the credential `jwt_secret`.
    pub jwt_secret: String,
    /// A file holding `jwt_secret`.
    pub jwt_secret_file: String,
    /// A second key whose tokens and signed URLs are accepted, never used to sign: for
    /// rotating `jwt_secret` across a fleet without logging anyone out. Resolved like
    /// `jwt_secret` (this key, `jwt_secret_accepted_file`, the credential
    /// `jwt_secret_accepted`); empty = none.
    pub jwt_secret_accepted: String,
    pub jwt_secret_accepted_file: String,
    pub token_ttl_s: u64,
    /// Password hashes computed at the same time (argon2id is CPU- and memory-heavy).
    pub max_concurrent_hashes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            jwt_secret_file: String::new(),
            jwt_secret_accepted: String::new(),
            jwt_secret_accepted_file: String::new(),
            token_ttl_s: 3600,
            max_concurrent_hashes: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Lifetime of the signed URL of an original upload.
    pub signed_url_ttl_s: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            signed_url_ttl_s: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the `/api/admin` routes; empty disables them. Resolved at load from this
    /// key, `token_file` or the credential `admin_token`.
    pub token: String,
    /// A file holding `token`.
    pub token_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorsConfig {
    /// Mailbox capacity of every actor; a full mailbox answers 503 instead of queueing more.
    pub mailbox_capacity: usize,
    /// Longest wait for an actor's reply before the request is answered 503.
    pub call_timeout_ms: u64,
    /// Restart intensity: more than this many restarts of one actor within `restart_period_s`
    /// makes the Supervisor escalate (the node turns unready, drains and exits non-zero).
    pub max_restarts: u32,
    pub restart_period_s: u64,
    /// Delay before the first restart in a period; doubles with each further one, up to the max.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// An actor whose heartbeat is older than this is stuck and restarted.
    pub heartbeat_timeout_ms: u64,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 256,
            call_timeout_ms: 5000,
            max_restarts: 5,
            restart_period_s: 30,
            restart_backoff_ms: 100,
            restart_backoff_max_ms: 5000,
            heartbeat_timeout_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Media responses sending at the same time; more are refused with 503 + Retry-After.
    pub max_concurrent: usize,
    /// Published media files whose metadata and mapping are kept open.
    pub cache_entries: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 1024,
            cache_entries: 256,
        }
    }
}

/// How a video is encoded: the settings the node's configuration gives (`[transcode]`) and a
/// transcode child receives on its command line. Defined once: the configuration reads it,
/// [`Encoding::to_args`] writes the child's arguments from it, and the child's command line
/// parses them back into it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Encoding {
    /// The main part of a video is cut to this many seconds; shorter inputs are kept whole.
    #[arg(long, default_value_t = Encoding::default().main_max_s)]
    pub main_max_s: f64,
    /// Length of the intro and of the outro bumper (together at most 5 s).
    #[arg(long, default_value_t = Encoding::default().bumper_s)]
    pub bumper_s: f64,
    /// libx264 preset.
    #[arg(long, default_value_t = Encoding::default().preset)]
    pub preset: String,
    /// libx264 constant rate factor (0-51, lower is better).
    #[arg(long, default_value_t = Encoding::default().crf)]
    pub crf: u32,
    /// Threads of one transcode; 0 = chosen by the decoder and encoder (all cores).
    #[arg(long, default_value_t = Encoding::default().threads)]
    pub threads: usize,
}

impl Default for Encoding {
    fn default() -> Self {
        Self {
            main_max_s: 30.0,
            bumper_s: 2.5,
            preset: "veryfast".into(),
            crf: 23,
            threads: 0,
        }
    }
}

impl Encoding {
    /// The child's command-line arguments for these settings: `--<field-name> <value>` for
    /// every field, the names clap derives from the same fields.
    pub fn to_args(&self) -> Vec<String> {
        let serde_json::Value::Object(fields) =
            serde_json::to_value(self).expect("plain settings serialise")
        else {
            unreachable!("a struct serialises as an object")
        };
        fields
            .into_iter()
            .flat_map(|(name, value)| {
                let value = match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                [format!("--{}", name.replace('_', "-")), value]
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Transcodes running at once on this node; 0 = this node processes nothing (API only).
    pub workers: usize,
    /// How videos are encoded (`main_max_s`, `bumper_s`, `preset`, `crf`, `threads`).
    #[serde(flatten)]
    pub encoding: Encoding,
    /// Address-space limit of a transcode child, in MiB.
    pub memory_limit_mb: u64,
    /// A transcode running longer than this is killed (and retried).
    pub timeout_s: u64,
    /// A transcode that reports no progress for this long is killed (and retried).
    pub stall_s: u64,
    /// First retry delay after a transient failure; doubles with each attempt.
    pub retry_base_s: u64,
    /// Longest retry delay.
    pub retry_max_s: u64,
    /// How often an idle consumer asks the queue for work, in milliseconds.
    pub poll_interval_ms: u64,
    /// The executable run as `<program> transcode ...`; empty = this executable.
    pub program: String,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            encoding: Encoding::default(),
            memory_limit_mb: 1024,
            timeout_s: 600,
            stall_s: 60,
            retry_base_s: 2,
            retry_max_s: 60,
            poll_interval_ms: 500,
            program: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Compiles in nothing extra; when false the fault switches do not exist.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `showcase=debug,warn`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Shortest accepted admin token, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// Shortest accepted JWT secret, in bytes (HS256 wants a key as long as its hash).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The secrets a node reads at load, with the key, the `*_file` key and the systemd credential
/// each can come from.
struct SecretSource {
    key: &'static str,
    file_key: &'static str,
    credential: &'static str,
}

const ADMIN_TOKEN: SecretSource = SecretSource {
    key: "admin.token",
    file_key: "admin.token_file",
    credential: "admin_token",
};
const JWT_SECRET: SecretSource = SecretSource {
    key: "auth.jwt_secret",
    file_key: "auth.jwt_secret_file",
    credential: "jwt_secret",
};
const JWT_SECRET_ACCEPTED: SecretSource = SecretSource {
    key: "auth.jwt_secret_accepted",
    file_key: "auth.jwt_secret_accepted_file",
    credential: "jwt_secret_accepted",
};

/// The systemd credential that may hold the PostgreSQL password.
const POSTGRES_PASSWORD: &str = "postgres_password";

/// Whether a `postgres://user:password@host/db` URL carries a password.
fn url_has_password(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user_info, _)| user_info.contains(':'))
}

/// Whether every local user may read the file at `path`.
fn readable_by_everyone(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// Reads a secret file, refusing one that every local user can read.
fn read_secret_file(path: &Path, what: &str) -> Result<String, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    std::fs::metadata(path)
        .map_err(|e| invalid(format!("{what}: cannot read {}: {e}", path.display())))?;
    if readable_by_everyone(path) {
        return Err(invalid(format!(
            "{what}: {} is readable by every local user; chmod 0600 (or 0640) it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("{what}: cannot read {}: {e}", path.display())))?;
    Ok(text.trim().to_string())
}

impl SecretSource {
    /// The secret from whichever single source gives it: the inline key, the file named by
    /// the `*_file` key, or the credential in `credentials` (systemd's
    /// `$CREDENTIALS_DIRECTORY`). `in_open_file` says whether the inline value was written in a
    /// configuration file that every local user can read.
    fn resolve(
        &self,
        inline: &str,
        file: &str,
        credentials: Option<&Path>,
        in_open_file: bool,
    ) -> Result<String, ConfigError> {
        // An empty credential counts as not given: an installation whose secret lives
        // elsewhere still satisfies the unit's LoadCredential= with an empty file.
        let credential = credentials
            .map(|dir| dir.join(self.credential))
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 0));
        let mut given = Vec::new();
        if !inline.is_empty() {
            given.push(self.key.to_string());
        }
        if !file.trim().is_empty() {
            given.push(self.file_key.to_string());
        }
        if credential.is_some() {
            given.push(format!("the credential {}", self.credential));
        }
        if given.len() > 1 {
            return Err(ConfigError::Invalid(format!(
                "{} is given more than once ({}); keep one",
                self.key,
                given.join(", ")
            )));
        }
        if !file.trim().is_empty() {
            let secret = read_secret_file(Path::new(file.trim()), self.file_key)?;
            if secret.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{}: {} is empty",
                    self.file_key,
                    file.trim()
                )));
            }
            return Ok(secret);
        }
        if let Some(path) = credential {
            return read_secret_file(&path, &format!("the credential {}", self.credential));
        }
        if !inline.is_empty() && in_open_file {
            return Err(ConfigError::Invalid(format!(
                "{} is written in a configuration file that every local user can read; \
                 chmod 0640 the file or use {} or the credential {}",
                self.key, self.file_key, self.credential
            )));
        }
        Ok(inline.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// The operations listener's address, when one is configured.
    pub fn ops_listen_addr(&self) -> Option<SocketAddr> {
        self.ops_addr.trim().parse().ok()
    }
}

impl Config {
    /// Defaults, then the file (when it exists, or always when `required`), then the environment.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError::Missing(path.to_path_buf()));
        }
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if path.exists() {
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_secrets(path.exists().then_some(path), credentials.as_deref())?;
        config.validate()?;
        Ok(config)
    }

    /// Fills `admin.token`, `auth.jwt_secret` and `auth.jwt_secret_accepted` from their single
    /// source (see [`SecretSource::resolve`]); `file` is the configuration file that was read,
    /// if any.
    pub fn resolve_secrets(
        &mut self,
        file: Option<&Path>,
        credentials: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let open_file = file.filter(|f| readable_by_everyone(f));
        // Whether the open file itself holds a secret (rather than the environment).
        let written_in_open_file = |key: &str| {
            open_file.is_some_and(|f| {
                Figment::from(Toml::file(f))
                    .extract_inner::<String>(key)
                    .is_ok_and(|v| !v.is_empty())
            })
        };
        self.admin.token = ADMIN_TOKEN.resolve(
            &self.admin.token,
            &self.admin.token_file,
            credentials,
            written_in_open_file(ADMIN_TOKEN.key),
        )?;
        self.auth.jwt_secret = JWT_SECRET.resolve(
            &self.auth.jwt_secret,
            &self.auth.jwt_secret_file,
            credentials,
            written_in_open_file(JWT_SECRET.key),
        )?;
        self.auth.jwt_secret_accepted = JWT_SECRET_ACCEPTED.resolve(
            &self.auth.jwt_secret_accepted,
            &self.auth.jwt_secret_accepted_file,
            credentials,
            written_in_open_file(JWT_SECRET_ACCEPTED.key),
        )?;
        if let Some(path) = credentials
            .map(|dir| dir.join(POSTGRES_PASSWORD))
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 0))
        {
            self.store.postgres.password =
                read_secret_file(&path, &format!("the credential {POSTGRES_PASSWORD}"))?;
        }
        if open_file.is_some() && url_has_password(&self.store.postgres.url) {
            let in_file = open_file.is_some_and(|f| {
                Figment::from(Toml::file(f))
                    .extract_inner::<String>("store.postgres.url")
                    .is_ok_and(|url| url_has_password(&url))
            });
            if in_file {
                return Err(ConfigError::Invalid(format!(
                    "store.postgres.url holds a password in a configuration file that every \
                     local user can read; chmod 0640 the file or use the credential \
                     {POSTGRES_PASSWORD}"
                )));
            }
        }
        Ok(())
    }

    /// Parses a TOML document on top of the defaults (no environment), for tests and tools.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Combinations of role and backends that cannot work, refused with what to change.
    fn validate_topology(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let postgres = self.store.backend == StoreBackend::Postgres;
        if postgres && self.store.postgres.url.trim().is_empty() {
            return bad("store.postgres.url must be set when store.backend is \"postgres\"".into());
        }
        if postgres && self.store.postgres.max_connections == 0 {
            return bad("store.postgres.max_connections must be > 0".into());
        }
        if postgres && self.auth.jwt_secret.is_empty() {
            return bad(
                "store.backend = \"postgres\" lets several nodes share the platform, and each must \
                 verify the tokens the others issue: give auth.jwt_secret (the credential \
                 jwt_secret, or auth.jwt_secret_file) rather than a secret generated per node"
                    .into(),
            );
        }
        let role = self.node.role;
        if role == Role::All {
            return Ok(());
        }
        let name = role.as_str();
        if !postgres {
            return bad(format!(
                "node.role = \"{name}\" shares the platform with other nodes, whose records \
                 cannot live in this node's embedded sled store: set store.backend = \"postgres\" \
                 (or node.role = \"all\" for one node)"
            ));
        }
        if self.storage.backend == StorageBackend::Local {
            return bad(format!(
                "node.role = \"{name}\": the other nodes cannot read media kept on this \
                 node's disk; set storage.backend = \"s3\" (or node.role = \"all\")"
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.upload.max_bytes == 0 {
            return bad("upload.max_bytes must be > 0");
        }
        if self.upload.min_duration_s > self.upload.max_duration_s {
            return bad("upload.min_duration_s must not exceed upload.max_duration_s");
        }
        if self.upload.max_concurrent == 0 {
            return bad("upload.max_concurrent must be > 0");
        }
        if self.storage.backend == StorageBackend::S3 && self.storage.s3.bucket.is_empty() {
            return bad("storage.s3.bucket must be set when storage.backend is \"s3\"");
        }
        if self.queue.backend == QueueBackend::Sqs
            && (self.queue.sqs.queue_url.is_empty()
                || self.queue.sqs.dead_letter_queue_url.is_empty())
        {
            return bad(
                "queue.sqs.queue_url and queue.sqs.dead_letter_queue_url must be set when queue.backend is \"sqs\"",
            );
        }
        self.validate_topology()?;
        if self.queue.sqs.wait_time_s > 20 {
            return bad("queue.sqs.wait_time_s must be within 0..=20 (the longest SQS long poll)");
        }
        if self.queue.max_receives == 0 {
            return bad("queue.max_receives must be > 0");
        }
        if self.queue.visibility_timeout_s == 0 {
            return bad("queue.visibility_timeout_s must be > 0");
        }
        if self.actors.heartbeat_timeout_ms < 1000 || self.actors.restart_period_s == 0 {
            return bad(
                "actors.heartbeat_timeout_ms must be >= 1000 and actors.restart_period_s > 0",
            );
        }
        if self.actors.mailbox_capacity == 0 {
            return bad("actors.mailbox_capacity must be > 0");
        }
        if self.auth.max_concurrent_hashes == 0 {
            return bad("auth.max_concurrent_hashes must be > 0");
        }
        let admin_chars = self.admin.token.chars().count();
        if admin_chars > 0 && admin_chars < MIN_ADMIN_TOKEN_CHARS {
            return Err(ConfigError::Invalid(format!(
                "admin.token must be at least {MIN_ADMIN_TOKEN_CHARS} characters (it has {admin_chars})"
            )));
        }
        for (key, secret) in [
            ("auth.jwt_secret", &self.auth.jwt_secret),
            ("auth.jwt_secret_accepted", &self.auth.jwt_secret_accepted),
        ] {
            let bytes = secret.len();
            if bytes > 0 && bytes < MIN_JWT_SECRET_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be at least {MIN_JWT_SECRET_BYTES} bytes (it has {bytes})"
                )));
            }
        }
        if !self.auth.jwt_secret_accepted.is_empty() && self.auth.jwt_secret.is_empty() {
            return bad(
                "auth.jwt_secret_accepted is for rotating auth.jwt_secret: give auth.jwt_secret too",
            );
        }
        if self.auth.token_ttl_s == 0 {
            return bad("auth.token_ttl_s must be > 0");
        }
        let t = &self.transcode;
        if t.encoding.main_max_s.is_nan() || t.encoding.main_max_s <= 0.0 {
            return bad("transcode.main_max_s must be > 0");
        }
        let bumper_s = t.encoding.bumper_s;
        if bumper_s.is_nan() || bumper_s < 0.0 || bumper_s * 2.0 > 5.0 {
            return bad("transcode.bumper_s must be between 0 and 2.5 (both bumpers at most 5 s)");
        }
        if t.encoding.crf > 51 {
            return bad("transcode.crf must be within 0..=51");
        }
        if t.stall_s == 0 || t.timeout_s == 0 || t.memory_limit_mb == 0 {
            return bad("transcode.stall_s, timeout_s and memory_limit_mb must be > 0");
        }
        if self.stream.max_concurrent == 0 || self.stream.cache_entries == 0 {
            return bad("stream.max_concurrent and stream.cache_entries must be > 0");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be > 0");
        }
        if !self.server.ops_addr.trim().is_empty() {
            if self.server.ops_addr.trim().parse::<SocketAddr>().is_err() {
                return bad("server.ops_addr must be empty or an address such as 0.0.0.0:9090");
            }
            if self.server.ops_reserved_connections == 0 {
                return bad("server.ops_reserved_connections must be > 0 with server.ops_addr");
            }
        }
        let public_url = self.server.public_url.trim();
        let plain = public_url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b';' | b','));
        if !public_url.is_empty()
            && !(plain && (public_url.starts_with("https://") || public_url.starts_with("http://")))
        {
            return bad(
                "server.public_url must be empty or an http(s):// URL such as https://videos.example.com",
            );
        }
        if t.poll_interval_ms == 0 {
            return bad("transcode.poll_interval_ms must be > 0");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format must be `text` or `json`");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented file and the embedded defaults must never drift apart.
    #[test]
    fn documented_config_file_equals_the_embedded_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let documented: toml::Table = text.parse().unwrap();
        let from_file = Config::from_toml_str(&text).unwrap();
        assert_eq!(from_file, Config::default());
        // Every key of the defaults is written out in the file.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            let keys = keys.as_table().unwrap();
            let written = documented.get(section).and_then(|s| s.as_table());
            let written = written.unwrap_or_else(|| panic!("section [{section}] missing"));
            for key in keys.keys() {
                assert!(
                    written.contains_key(key),
                    "{section}.{key} is not documented"
                );
            }
        }
    }

    #[test]
    fn required_keys_have_the_specified_defaults() {
        let c = Config::default();
        assert_eq!(c.upload.max_bytes, 104_857_600);
        assert_eq!(c.upload.min_duration_s, 20.0);
        assert_eq!(c.upload.max_duration_s, 60.0);
        assert_eq!(c.upload.min_short_side, 1080);
        assert_eq!(c.auth.token_ttl_s, 3600);
        assert!(c.auth.jwt_secret.is_empty());
        assert!(!c.faults.enabled);
    }

    #[test]
    fn short_secrets_are_refused_naming_the_key() {
        let short = Config::from_toml_str("[admin]\ntoken = \"fifteen-chars-x\"\n").unwrap_err();
        assert!(short.to_string().contains("admin.token"), "{short}");
        assert!(Config::from_toml_str("[admin]\ntoken = \"sixteen-chars-xx\"\n").is_ok());
        let secret =
            Config::from_toml_str("[auth]\njwt_secret = \"0123456789abcdef0123456789abcde\"\n")
                .unwrap_err();
        assert!(secret.to_string().contains("auth.jwt_secret"), "{secret}");
        assert!(Config::from_toml_str(
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n"
        )
        .is_ok());
        let good = "0123456789abcdef0123456789abcdef";
        let accepted = Config::from_toml_str(&format!(
            "[auth]\njwt_secret = \"{good}\"\njwt_secret_accepted = \"short\"\n"
        ))
        .unwrap_err();
        assert!(
            accepted.to_string().contains("auth.jwt_secret_accepted"),
            "{accepted}"
        );
        // Accepting another key is a step of a rotation: there is a current one.
        let alone = Config::from_toml_str(&format!("[auth]\njwt_secret_accepted = \"{good}\"\n"))
            .unwrap_err();
        assert!(
            alone.to_string().contains("give auth.jwt_secret"),
            "{alone}"
        );
    }

    #[test]
    fn secrets_come_from_one_source_never_a_world_readable_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("admin_token");
        std::fs::write(&token_file, "from-a-file-0123456789\n").unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();

        let mut c = Config::default();
        c.admin.token_file = token_file.display().to_string();
        c.resolve_secrets(None, Some(&creds)).unwrap();
        assert_eq!(c.admin.token, "from-a-file-0123456789");

        // A credential, when nothing else gives the secret.
        std::fs::write(creds.join("jwt_secret_accepted"), "a".repeat(40)).unwrap();
        std::fs::set_permissions(
            creds.join("jwt_secret_accepted"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        std::fs::write(creds.join("jwt_secret"), "c".repeat(40)).unwrap();
        std::fs::set_permissions(
            creds.join("jwt_secret"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let mut c = Config::default();
        c.resolve_secrets(None, Some(&creds)).unwrap();
        assert_eq!(c.auth.jwt_secret, "c".repeat(40));
        assert_eq!(c.auth.jwt_secret_accepted, "a".repeat(40));

        // An empty credential is no credential.
        std::fs::write(creds.join("admin_token"), "").unwrap();
        let mut c = Config::default();
        c.admin.token = "inline-and-not-in-a-file".into();
        c.resolve_secrets(None, Some(&creds)).unwrap();
        assert_eq!(c.admin.token, "inline-and-not-in-a-file");

        // Two sources at once, and a file every user can read, are refused.
        let mut c = Config::default();
        c.auth.jwt_secret = "d".repeat(40);
        let twice = c
            .resolve_secrets(None, Some(&creds))
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("auth.jwt_secret") && twice.contains("more than once"),
            "{twice}"
        );
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Config::default();
        c.admin.token_file = token_file.display().to_string();
        let open = c.resolve_secrets(None, None).unwrap_err().to_string();
        assert!(
            open.contains("admin.token_file") && open.contains("every local user"),
            "{open}"
        );

        // A secret written in a configuration file every user can read is refused; the same
        // file closed to others is fine, and so is an open file without secrets.
        let config_file = dir.path().join("showcase.toml");
        std::fs::write(
            &config_file,
            "[admin]\ntoken = \"inline-token-0123456789\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Config::default();
        c.admin.token = "inline-token-0123456789".into();
        let inline = c
            .resolve_secrets(Some(&config_file), None)
            .unwrap_err()
            .to_string();
        assert!(inline.contains("admin.token"), "{inline}");
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        c.resolve_secrets(Some(&config_file), None).unwrap();
        let mut from_env = Config::default();
        from_env.admin.token = "from-the-environment-01".into();
        std::fs::write(&config_file, "[server]\nshutdown_grace_s = 3\n").unwrap();
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        from_env.resolve_secrets(Some(&config_file), None).unwrap();
    }

    #[test]
    fn the_database_password_comes_from_its_credential_never_an_open_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let password = creds.join(POSTGRES_PASSWORD);
        std::fs::write(&password, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mut c = Config::default();
        c.resolve_secrets(None, Some(&creds)).unwrap();
        assert_eq!(c.store.postgres.password, "s3cr3t");
        // The password never travels in the configuration's serialised form.
        assert!(!toml::to_string(&c).unwrap().contains("s3cr3t"));
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let said = Config::default()
            .resolve_secrets(None, Some(&creds))
            .unwrap_err()
            .to_string();
        assert!(said.contains("every local user"), "{said}");

        // A URL with a password, in a file every user can read, is refused; closed, it is not.
        let file = dir.path().join("showcase.toml");
        let url = "postgres://app:hunter2@db/showcase";
        std::fs::write(&file, format!("[store.postgres]\nurl = {url:?}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Config::default();
        c.store.postgres.url = url.into();
        let said = c
            .resolve_secrets(Some(&file), None)
            .unwrap_err()
            .to_string();
        assert!(said.contains("postgres_password"), "{said}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        c.resolve_secrets(Some(&file), None).unwrap();
    }

    #[test]
    fn the_operations_listener_needs_an_address_and_connections() {
        assert!(Config::from_toml_str("[server]\nops_addr = \"127.0.0.1:9090\"\n").is_ok());
        assert!(Config::from_toml_str("[server]\nops_addr = \"localhost:9090\"\n").is_err());
        assert!(Config::from_toml_str(
            "[server]\nops_addr = \"127.0.0.1:9090\"\nops_reserved_connections = 0\n"
        )
        .is_err());
        assert!(Config::from_toml_str("[server]\nmax_connections = 0\n").is_err());
    }

    #[test]
    fn a_public_url_is_an_http_url_that_fits_in_a_header() {
        for good in [
            "",
            "https://videos.example.com",
            "http://10.0.0.5:8080/base/",
        ] {
            let toml = format!("[server]\npublic_url = \"{good}\"\n");
            assert!(Config::from_toml_str(&toml).is_ok(), "{good}");
        }
        for bad in [
            "videos.example.com",
            "https://a b",
            "https://x;script-src *",
            "ftp://x",
        ] {
            let toml = format!("[server]\npublic_url = \"{bad}\"\n");
            assert!(Config::from_toml_str(&toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml_str("[upload]\nmax_byte = 3\n").is_err());
        assert!(Config::from_toml_str("[upload]\nmax_bytes = 0\n").is_err());
        assert!(Config::from_toml_str("[log]\nformat = \"xml\"\n").is_err());
        let c = Config::from_toml_str("[upload]\nmax_concurrent = 3\n").unwrap();
        assert_eq!(c.upload.max_concurrent, 3);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("showcase.toml", "[upload]\nmax_concurrent = 3\n")?;
            jail.set_env("SHOWCASE_UPLOAD__MAX_CONCURRENT", "7");
            jail.set_env("SHOWCASE_SERVER__ADDR", "0.0.0.0:9000");
            let c = Config::load(Path::new("showcase.toml"), true).unwrap();
            assert_eq!(c.upload.max_concurrent, 7);
            assert_eq!(c.server.addr.to_string(), "0.0.0.0:9000");
            Ok(())
        });
    }

    /// The message of the refusal of `toml`.
    fn refusal(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn combinations_that_cannot_work_are_refused_with_what_to_change() {
        let secret = format!("[auth]\njwt_secret = \"{}\"\n", "s".repeat(40));
        let postgres =
            "[store]\nbackend = \"postgres\"\n[store.postgres]\nurl = \"postgres://u@db/p\"\n";
        let s3 = "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n";
        // Several nodes cannot share an embedded store.
        for role in ["api", "worker"] {
            let said = refusal(&format!("[node]\nrole = \"{role}\"\n"));
            assert!(said.contains("store.backend = \"postgres\""), "{said}");
        }
        // Nor media on one node's disk.
        let said = refusal(&format!("[node]\nrole = \"worker\"\n{postgres}{secret}"));
        assert!(said.contains("storage.backend = \"s3\""), "{said}");
        // Nodes sharing a store must share the secret of their tokens.
        let said = refusal(postgres);
        assert!(said.contains("auth.jwt_secret"), "{said}");
        let said = refusal("[store]\nbackend = \"postgres\"\n");
        assert!(said.contains("store.postgres.url"), "{said}");
        // What works.
        let c = Config::from_toml_str(&format!("[node]\nrole = \"api\"\n{postgres}{secret}{s3}"))
            .unwrap();
        assert_eq!(
            (c.node.role, c.store.backend),
            (Role::Api, StoreBackend::Postgres)
        );
        assert!(Config::from_toml_str(&format!("{postgres}{secret}")).is_ok());
        assert!(refusal("[node]\nrole = \"boss\"\n").contains("boss"));
    }

    #[test]
    fn a_password_in_a_database_url_is_seen() {
        assert!(url_has_password("postgres://app:hunter2@db:5432/showcase"));
        assert!(!url_has_password("postgres://app@db:5432/showcase"));
        assert!(!url_has_password("postgres://db/showcase?user=a:b"));
        assert!(!url_has_password("not a url"));
    }
}
