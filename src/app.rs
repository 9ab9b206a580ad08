//! Building and running the whole node: [`Application::build`] opens the durable state, runs
//! startup recovery, starts the Supervisor and its actors and binds the listener;
//! [`Application::run_until_stopped`] serves until a shutdown signal and then stops in order
//! (stop accepting, drain in-flight requests up to the grace deadline, stop the actors, flush
//! the store).
//!
//! The binary and the tests run exactly this code; [`spawn`] runs it on a thread of its own
//! (with its own actix System) for tests and benchmarks in the same process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actors::ingest::{Admission, Ingest};
use crate::actors::queue_consumer::{ConsumerSettings, QueueConsumer};
use crate::actors::streamer::{StreamCounters, Streamer, StreamerShared};
use crate::actors::supervisor::{
    ChildSpec, Intensity, StopChildren, Supervisor, SupervisorSettings,
};
use crate::actors::transcoder::{Transcoder, TranscoderChildren, TranscoderSettings};
use crate::actors::ActorRef;
use crate::auth::Auth;
use crate::config::Config;
use crate::domain::VideoStatus;
use crate::engine::blobs::video_id_in;
use crate::engine::sled_engine::SledEngine;
use crate::engine::{BlobStore, Engine, LocalBlobs, StoreError};
use crate::faults::Faults;
use crate::health::HealthRegistry;
use crate::load::Load;
use crate::rate_limit::{ClientAddressing, RateLimits};
use crate::signed_url::UrlSigner;

/// A heartbeat older than this makes an actor count as unhealthy.
pub const HEARTBEAT_STALE_MS: u64 = 5_000;

/// Longest wait for every actor to run at startup.
const ACTOR_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Sub-directories of the data dir.
pub const DB_DIR: &str = "db";
pub const MEDIA_DIR: &str = "media";
/// Work directories of running transcodes, under the temp directory.
pub const JOBS_DIR: &str = "jobs";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("opening the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("actors did not start in time: {0}")]
    ActorsNotRunning(String),
    #[error("the server thread failed: {0}")]
    Thread(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartupError {
    let what = what.into();
    move |source| StartupError::Io { what, source }
}

/// Everything a request handler may use. Shared, immutable apart from atomics.
pub struct AppState {
    pub config: Config,
    pub data_dir: PathBuf,
    pub engine: Engine,
    pub auth: Auth,
    pub signer: UrlSigner,
    pub ingest: ActorRef<Ingest>,
    pub transcoder: ActorRef<Transcoder>,
    pub streamer: ActorRef<Streamer>,
    pub consumer: ActorRef<QueueConsumer>,
    pub streams: Arc<StreamerShared>,
    pub stream_counters: Arc<StreamCounters>,
    pub registry: Arc<HealthRegistry>,
    pub faults: Arc<Faults>,
    /// Drain rates and shedding, shared with the actors that see the events.
    pub load: Arc<Load>,
    pub rate_limits: Arc<RateLimits>,
    pub addressing: ClientAddressing,
    /// Upload probes abandoned past their deadline and still running.
    pub stuck_probes: Arc<crate::upload::StuckProbes>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Absolute when `server.public_url` is set, otherwise a path (`/media/3.mp4`).
    pub fn public_url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.config.server.public_url.trim_end_matches('/'),
            path
        )
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Why this node should not get traffic now; empty when it is ready.
    pub async fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.is_shutting_down() {
            problems.push("the node is shutting down".to_string());
        }
        problems.extend(self.registry.problems(HEARTBEAT_STALE_MS));
        if self.stuck_probes.too_many() {
            problems.push(format!(
                "{} upload probes are stuck; uploads are refused",
                self.stuck_probes.count()
            ));
        }
        if self.load.is_shedding() {
            problems.push(format!(
                "shedding load: uploads refused for want of a slot within the last {} s",
                crate::load::SHEDDING_FOR.as_secs()
            ));
        }
        let min_free = self.config.upload.min_free_disk_mb * 1024 * 1024;
        match self.faults.free_disk_bytes(&self.data_dir) {
            Ok(free) if free < min_free => problems.push(format!(
                "free disk {} MiB is below the {} MiB watermark",
                free / (1024 * 1024),
                self.config.upload.min_free_disk_mb
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("free disk unknown: {e}")),
        }
        match self.engine.queue.stats().await {
            Ok(stats) if stats.depth >= self.config.upload.max_queue_depth => {
                problems.push(format!(
                    "queue depth {} reached the {} watermark",
                    stats.depth, self.config.upload.max_queue_depth
                ))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("queue unavailable: {e}")),
        }
        problems
    }
}

pub struct Application {
    state: Arc<AppState>,
    listener: TcpListener,
    addr: SocketAddr,
    /// The operations listener (`server.ops_addr`), when configured.
    ops_listener: Option<(TcpListener, SocketAddr)>,
    supervisor: Addr<Supervisor>,
    sled: Arc<SledEngine>,
    transcoder_children: Arc<TranscoderChildren>,
    escalation: watch::Receiver<Option<String>>,
}

/// How a node's run ended, when not cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("flushing the store failed: {0}")]
    Store(#[from] StoreError),
    /// The Supervisor gave up on an actor; the process must be restarted.
    #[error("the supervisor escalated: {0}")]
    Escalated(String),
}

impl Application {
    /// Opens the state, recovers, starts the actors and binds. Must run inside an actix System
    /// whose runtime is multi-threaded (see `main.rs` and [`spawn`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        crate::panics::install();
        let data_dir = config.storage.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(io_error(format!("creating {}", data_dir.display())))?;
        close_to_others(&data_dir)?;
        let secret = crate::auth::load_or_create_secret(&config.auth.jwt_secret, &data_dir)
            .map_err(io_error("loading the server secret"))?;

        let removed =
            crate::upload::clear_temp_dir(&data_dir).map_err(io_error("clearing temp files"))?;
        let sled = SledEngine::open_with_cache(
            &data_dir.join(DB_DIR),
            config.queue.max_receives,
            Duration::from_secs(config.storage.commit_timeout_s),
            config.storage.cache_mb * 1024 * 1024,
        )?;
        let blobs: Arc<dyn BlobStore> = Arc::new(
            LocalBlobs::open(data_dir.join(MEDIA_DIR))
                .map_err(io_error("opening the media directory"))?,
        );
        let engine = Engine {
            store: sled.clone(),
            queue: sled.clone(),
            blobs,
        };
        let orphans = remove_orphan_files(&engine).await?;
        let recovery = sled.recovery();
        tracing::info!(
            temp_files_removed = removed,
            orphan_files_removed = orphans,
            jobs = recovery.jobs,
            dead_letters = recovery.dead,
            released_leases = recovery.released_leases,
            "recovery done"
        );

        let registry = Arc::new(HealthRegistry::new());
        let load = Arc::new(Load::default());
        let addressing = ClientAddressing::parse(
            &config.server.client_ip_header,
            &config.server.trusted_proxies,
        )
        .map_err(|e| StartupError::Config(format!("server.trusted_proxies: {e}")))?;
        let call_timeout = Duration::from_millis(config.actors.call_timeout_ms);
        let mailbox = config.actors.mailbox_capacity;
        let faults = Arc::new(Faults::new(config.faults.enabled));

        let ingest = ActorRef::<Ingest>::new(registry.register("ingest", mailbox), call_timeout);
        let ingest_spec = {
            let engine = engine.clone();
            let admission = Admission {
                data_dir: data_dir.clone(),
                min_free_disk_bytes: config.upload.min_free_disk_mb * 1024 * 1024,
                max_queue_depth: config.upload.max_queue_depth,
                max_slots: config.upload.max_concurrent,
                load: load.clone(),
            };
            // Created once: slots held by live requests survive a restart of the actor.
            let slots = Arc::new(tokio::sync::Semaphore::new(config.upload.max_concurrent));
            let (health, faults) = (ingest.health.clone(), faults.clone());
            ChildSpec::for_actor(&ingest, mailbox, move || {
                Ingest::new(
                    engine.clone(),
                    admission.clone(),
                    slots.clone(),
                    health.clone(),
                    faults.clone(),
                )
            })
        };

        let transcoder =
            ActorRef::<Transcoder>::new(registry.register("transcoder", mailbox), call_timeout);
        let transcoder_children = Arc::new(TranscoderChildren::default());
        let transcoder_spec = {
            let settings = transcoder_settings(&config)?;
            let (faults, children, health) = (
                faults.clone(),
                transcoder_children.clone(),
                transcoder.health.clone(),
            );
            ChildSpec::for_actor(&transcoder, mailbox, move || {
                Transcoder::new(
                    settings.clone(),
                    faults.clone(),
                    health.clone(),
                    children.clone(),
                )
            })
        };

        let consumer = ActorRef::<QueueConsumer>::new(
            registry.register("queue_consumer", mailbox),
            call_timeout,
        );
        let consumer_spec = {
            let settings = ConsumerSettings {
                visibility: Duration::from_secs(config.queue.visibility_timeout_s),
                max_receives: config.queue.max_receives,
                poll_interval: Duration::from_millis(config.transcode.poll_interval_ms),
                retry_base: Duration::from_secs(config.transcode.retry_base_s),
                retry_max: Duration::from_secs(config.transcode.retry_max_s),
                transcode_timeout: Duration::from_secs(config.transcode.timeout_s),
                work_root: data_dir.join(crate::upload::TEMP_DIR).join(JOBS_DIR),
                load: load.clone(),
            };
            // Credits: one per transcoder slot, shared by every incarnation of the consumer.
            let credits = Arc::new(tokio::sync::Semaphore::new(config.transcode.workers));
            let (engine, transcoder, health) =
                (engine.clone(), transcoder.clone(), consumer.health.clone());
            ChildSpec::for_actor(&consumer, mailbox, move || {
                QueueConsumer::new(
                    engine.clone(),
                    transcoder.clone(),
                    credits.clone(),
                    settings.clone(),
                    health.clone(),
                )
            })
        };
        let streamer =
            ActorRef::<Streamer>::new(registry.register("streamer", mailbox), call_timeout);
        let streamer_shared = Arc::new(StreamerShared::new(config.stream.max_concurrent));
        let streamer_spec = {
            let (engine, shared, health) = (
                engine.clone(),
                streamer_shared.clone(),
                streamer.health.clone(),
            );
            let capacity = config.stream.cache_entries;
            ChildSpec::for_actor(&streamer, mailbox, move || {
                Streamer::new(engine.clone(), shared.clone(), capacity, health.clone())
            })
        };

        let (escalation_tx, escalation) = watch::channel(None);
        let supervisor_settings = SupervisorSettings {
            intensity: Intensity {
                max_restarts: config.actors.max_restarts,
                period: Duration::from_secs(config.actors.restart_period_s),
                backoff_base: Duration::from_millis(config.actors.restart_backoff_ms),
                backoff_max: Duration::from_millis(config.actors.restart_backoff_max_ms),
            },
            heartbeat_timeout: Duration::from_millis(config.actors.heartbeat_timeout_ms),
        };
        // Order matters: the consumer, last, holds a handle to the transcoder, whose restart
        // takes the consumer along (rest-for-one).
        let supervisor = Supervisor::new(
            registry.clone(),
            supervisor_settings,
            vec![
                ingest_spec,
                streamer_spec,
                transcoder_spec.restarting_later_children(),
                consumer_spec,
            ],
            escalation_tx,
        )
        .start();
        // Serve nothing until every actor runs: a request must never find an actor missing
        // merely because the node is still starting.
        let deadline = tokio::time::Instant::now() + ACTOR_START_TIMEOUT;
        loop {
            let starting = registry.not_running();
            if starting.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartupError::ActorsNotRunning(starting.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let backlog = config.server.listen_backlog;
        let (listener, addr) = bind(config.server.addr, backlog)?;
        let ops_listener = config
            .server
            .ops_listen_addr()
            .map(|ops| bind(ops, backlog))
            .transpose()?;

        let rate_limits = Arc::new(RateLimits::new(&config.rate_limit));
        let state = Arc::new(AppState {
            auth: Auth::new(
                &secret,
                Duration::from_secs(config.auth.token_ttl_s),
                config.auth.max_concurrent_hashes,
            ),
            signer: UrlSigner::new(&secret),
            config,
            data_dir,
            engine,
            ingest,
            transcoder,
            streamer,
            consumer,
            stream_counters: streamer_shared.counters.clone(),
            streams: streamer_shared,
            registry,
            faults,
            load,
            rate_limits,
            addressing,
            stuck_probes: Arc::default(),
            shutting_down: AtomicBool::new(false),
        });
        Ok(Self {
            state,
            listener,
            addr,
            ops_listener,
            supervisor,
            sled,
            transcoder_children,
            escalation,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the operations listener listens, when there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().map(|(_, addr)| *addr)
    }

    pub fn engine(&self) -> Engine {
        self.state.engine.clone()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then stops in order. Returns once the store is flushed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let Self {
            state,
            listener,
            addr,
            ops_listener,
            supervisor,
            sled,
            transcoder_children,
            mut escalation,
        } = self;
        let server_config = &state.config.server;
        let header_read_timeout = Duration::from_secs(server_config.header_read_timeout_s);
        let limits = crate::http::server::ServerLimits {
            max_connections: server_config.max_connections,
            header_read_timeout,
            reserved_for_operations: server_config.ops_reserved_connections,
            impatient: false,
        };
        let grace = Duration::from_secs(server_config.shutdown_grace_s);
        let (stop_tx, stop_rx) = watch::channel(false);
        let routes = crate::http::routes(state.clone());
        tracing::info!("listening on {addr}");
        let ops_server = ops_listener.map(|(ops_listener, ops_addr)| {
            tracing::info!("operations routes also listening on {ops_addr}");
            let limits = crate::http::server::ServerLimits {
                max_connections: server_config.ops_reserved_connections,
                header_read_timeout,
                reserved_for_operations: 0,
                impatient: true,
            };
            tokio::spawn(crate::http::server::serve(
                ops_listener,
                crate::http::operations_routes(state.clone()),
                limits,
                stop_rx.clone(),
                grace,
            ))
        });
        let server = tokio::spawn(crate::http::server::serve(
            listener, routes, limits, stop_rx, grace,
        ));
        crate::notify::ready(&state).await;
        let watchdog = tokio::spawn(crate::notify::keep_alive(state.clone()));
        let eviction = tokio::spawn(evict_idle_clients(
            state.rate_limits.clone(),
            Duration::from_secs(state.config.rate_limit.evict_every_s.max(1)),
        ));

        let escalated = tokio::select! {
            _ = shutdown => None,
            reason = escalation.wait_for(|r| r.is_some()) => reason.ok().and_then(|r| r.clone()),
        };
        if let Some(reason) = &escalated {
            // Readiness already says 503: give load balancers the grace period to drain us.
            tracing::error!(%reason, grace_s = grace.as_secs(), "escalated: draining, then exiting");
            tokio::time::sleep(grace).await;
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        crate::notify::stopping();
        state.shutting_down.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        match server.await {
            Ok(0) => {}
            Ok(open) => tracing::warn!(open, "connections cut at the grace deadline"),
            Err(e) => tracing::error!(error = %e, "the server task failed"),
        }
        if let Some(ops_server) = ops_server {
            let _ = ops_server.await;
        }
        watchdog.abort();
        eviction.abort();
        // Short: the process must be gone `shutdown_grace_s` + 5 s after SIGTERM, flush included.
        let _ = tokio::time::timeout(Duration::from_secs(2), supervisor.send(StopChildren)).await;
        // Transcodes in progress are abandoned: their leases expire and they run again later.
        transcoder_children.kill_all();
        let flushed = tokio::task::spawn_blocking(move || {
            let result = crate::engine::Store::flush_blocking(sled.as_ref());
            drop(sled);
            result
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(e.to_string())));
        drop(state);
        tracing::info!("stopped");
        flushed?;
        match escalated {
            Some(reason) => Err(RunError::Escalated(reason)),
            None => Ok(()),
        }
    }
}

/// Makes the data directory its owner's alone (0700): it holds password hashes and the secret,
/// and a directory created by an older version or by hand may be open to every local user.
fn close_to_others(data_dir: &Path) -> Result<(), StartupError> {
    use std::os::unix::fs::PermissionsExt;
    let what = || format!("restricting {}", data_dir.display());
    let mode = std::fs::metadata(data_dir)
        .map_err(io_error(what()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(what()))?;
        tracing::info!(
            data_dir = %data_dir.display(),
            was = format!("{:o}", mode & 0o777),
            "data directory closed to other users (0700)"
        );
    }
    Ok(())
}

/// Binds a listener on `addr` with an accept backlog of `backlog` (0: as deep as the kernel
/// allows, `net.core.somaxconn`, to which the kernel clamps any larger request).
fn bind(addr: SocketAddr, backlog: u32) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bind_error = |source| StartupError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    let backlog = if backlog == 0 {
        i32::MAX as u32
    } else {
        backlog
    };
    let listener = socket.listen(backlog).map_err(bind_error)?;
    let bound = listener
        .local_addr()
        .map_err(io_error("reading the bound address"))?;
    Ok((listener, bound))
}

/// What the Transcoder needs from the configuration.
fn transcoder_settings(config: &Config) -> Result<TranscoderSettings, StartupError> {
    let t = &config.transcode;
    let program = if t.program.is_empty() {
        std::env::current_exe().map_err(io_error("locating this executable"))?
    } else {
        PathBuf::from(&t.program)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Ok(TranscoderSettings {
        program,
        main_max_s: t.main_max_s,
        bumper_s: t.bumper_s,
        preset: t.preset.clone(),
        crf: t.crf,
        threads: t.threads,
        memory_limit_bytes: t.memory_limit_mb * 1024 * 1024,
        // Every core busy for the whole timeout: only a runaway child reaches it first.
        cpu_limit: Duration::from_secs(t.timeout_s) * cores,
        timeout: Duration::from_secs(t.timeout_s),
        stall: Duration::from_secs(t.stall_s),
        escape_target: config.storage.data_dir.join(crate::auth::SECRET_FILE),
    })
}

/// Drops the rate-limit buckets of idle clients, forever (aborted at shutdown).
async fn evict_idle_clients(limits: Arc<RateLimits>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        limits.evict_idle();
    }
}

/// Removes media files that nothing durable refers to: an original whose record was never
/// committed (a crash between storing the file and its record), and the outputs of a transcode
/// whose video was never published (a crash between storing them and publishing) or is gone.
async fn remove_orphan_files(engine: &Engine) -> Result<usize, StartupError> {
    let mut removed = 0;
    for (prefix, suffix, needs_publication) in [
        ("originals/", ".mp4", false),
        ("processed/", ".mp4", true),
        ("posters/", ".jpg", true),
    ] {
        let keys = engine
            .blobs
            .list(prefix)
            .await
            .map_err(|e| StartupError::Io {
                what: format!("listing {prefix}"),
                source: std::io::Error::other(e),
            })?;
        for key in keys {
            let referenced = match video_id_in(&key, prefix, suffix) {
                Some(id) => match engine.store.video(id).await? {
                    Some(video) => !needs_publication || video.status == VideoStatus::Processed,
                    None => false,
                },
                None => false,
            };
            if !referenced {
                let _ = engine.blobs.delete(&key).await;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// A node running on a thread of its own; stopped (gracefully) on [`RunningApp::stop`] or drop.
pub struct RunningApp {
    pub addr: SocketAddr,
    /// The operations listener's address, when `server.ops_addr` is set.
    pub ops_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
}

impl RunningApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn engine(&self) -> Engine {
        self.state.engine.clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.state.data_dir
    }

    /// Stops the node as SIGTERM would and waits for it.
    pub fn stop(mut self) -> Result<(), RunError> {
        self.stop_inner()
    }

    /// Waits until the node stops by itself (it escalated) and returns how it ended.
    pub fn wait(mut self) -> Result<(), RunError> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(RunError::Store(StoreError::Backend("panicked".into())))),
            None => Ok(()),
        }
    }

    fn stop_inner(&mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(RunError::Store(StoreError::Backend("panicked".into())))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Tasks a worker runs between two looks at the network for new events (tokio's default is 61).
/// Under upload load every worker always has upload tasks ready to run, each moving up to a few
/// MiB per turn; with the default a new connection (or the request it carries) could wait behind
/// 61 of those turns before it is even seen, and refusing it is supposed to take milliseconds.
pub const EVENT_INTERVAL_TICKS: u32 = 8;

/// The multi-threaded runtime the actix System runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL_TICKS)
        .thread_name("showcase-worker")
        .build()
        .expect("building the tokio runtime")
}

/// Builds and runs a node on a new thread; returns once it listens.
pub fn spawn(config: Config) -> Result<RunningApp, StartupError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("showcase-node".into())
        .spawn(move || {
            let system = System::with_tokio_rt(runtime);
            let result = system.block_on(async move {
                let app = match Application::build(config).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok((app.local_addr(), app.ops_addr(), app.state())));
                app.run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await
            });
            System::current().stop();
            result
        })
        .map_err(io_error("spawning the node thread"))?;
    match ready_rx.recv() {
        Ok(Ok((addr, ops_addr, state))) => Ok(RunningApp {
            addr,
            ops_addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let reason = match thread.join() {
                Err(panic) => format!("{panic:?}"),
                Ok(_) => "exited before listening".into(),
            };
            Err(StartupError::Thread(reason))
        }
    }
}
