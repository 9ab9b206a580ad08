//! Building a node: open its durable state and recover, start the Supervisor and this node's
//! actors, assemble the [`Node`] the HTTP layer holds, and bind the listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::application::{io_error, Application, StartupError};
use crate::actors::ingest::Ingest;
use crate::actors::queue_consumer::{ConsumerSettings, QueueConsumer};
use crate::actors::streamer::Streamer;
use crate::actors::supervisor::{ChildSpec, Intensity, Supervisor, SupervisorSettings};
use crate::actors::transcoder::{Transcoder, TranscoderChildren, TranscoderSettings};
use crate::actors::ActorRef;
use crate::auth::Auth;
use crate::config::{Config, QueueBackend, StorageBackend, StoreBackend};
use crate::domain::VideoStatus;
use crate::engine::blobs::video_id_in;
use crate::engine::pg_engine::PgEngine;
use crate::engine::s3_blobs::{S3Blobs, S3Location};
use crate::engine::sled_engine::SledEngine;
use crate::engine::sqs_queue::{SqsLocation, SqsQueue};
use crate::engine::{BlobStore, Engine, JobQueue, LocalBlobs, Store};
use crate::faults::Faults;
use crate::health::HealthRegistry;
use crate::load::Load;
use crate::media::{ReadThroughCache, StreamPermits};
use crate::node::{BackendHealth, Node, NodeActors, NodeParts, UploadAdmission};
use crate::rate_limit::{ClientAddressing, RateLimits};
use crate::signed_url::UrlSigner;

/// Longest wait for every actor to run at startup.
const ACTOR_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Sub-directories of the data dir.
pub const DB_DIR: &str = "db";
pub const MEDIA_DIR: &str = "media";
/// Work directories of running transcodes, under the temp directory.
pub const JOBS_DIR: &str = "jobs";

/// What every actor of a node shares.
struct Shared {
    engine: Engine,
    /// This node's name among the platform's.
    node_id: Arc<str>,
    registry: Arc<HealthRegistry>,
    load: Arc<Load>,
    faults: Arc<Faults>,
    streams: Arc<StreamPermits>,
    transcoder_children: Arc<TranscoderChildren>,
}

/// The running actors of a node and their Supervisor.
struct Started {
    actors: NodeActors,
    supervisor: Addr<Supervisor>,
    escalation: watch::Receiver<Option<String>>,
}

impl Application {
    /// Opens the state, recovers, starts the actors and binds. Must run inside an actix System
    /// whose runtime is multi-threaded (see `main.rs` and `app::spawn`).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        crate::panics::install();
        let data_dir = config.storage.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(io_error(format!("creating {}", data_dir.display())))?;
        close_to_others(&data_dir)?;
        let secret = crate::auth::load_or_create_secret(&config.auth.jwt_secret, &data_dir)
            .map_err(io_error("loading the server secret"))?;
        let engine = open_engine(&config, &data_dir).await?;

        let shared = Shared {
            engine: engine.clone(),
            node_id: crate::node::Platform::new_id().into(),
            registry: Arc::new(HealthRegistry::new()),
            load: Arc::new(Load::default()),
            faults: Arc::new(Faults::new(config.faults.enabled)),
            streams: Arc::new(StreamPermits::new(config.stream.max_concurrent)),
            transcoder_children: Arc::new(TranscoderChildren::default()),
        };
        let started = start_actors(&config, &shared)?;
        wait_until_running(&shared.registry).await?;

        let backlog = config.server.listen_backlog;
        let (listener, addr) = bind(config.server.addr, backlog)?;
        let ops_listener = config
            .server
            .ops_listen_addr()
            .map(|ops| bind(ops, backlog))
            .transpose()?;
        let node = assemble_node(config, shared.clone_parts(), started.actors, &secret)?;
        Ok(Self {
            node: Arc::new(node),
            listener,
            addr,
            ops_listener,
            supervisor: started.supervisor,
            store: engine.store.clone(),
            transcoder_children: shared.transcoder_children,
            escalation: started.escalation,
        })
    }
}

/// What the node itself keeps of the shared parts.
struct NodeShared {
    engine: Engine,
    node_id: Arc<str>,
    registry: Arc<HealthRegistry>,
    load: Arc<Load>,
    faults: Arc<Faults>,
    streams: Arc<StreamPermits>,
}

impl Shared {
    fn clone_parts(&self) -> NodeShared {
        NodeShared {
            engine: self.engine.clone(),
            node_id: self.node_id.clone(),
            registry: self.registry.clone(),
            load: self.load.clone(),
            faults: self.faults.clone(),
            streams: self.streams.clone(),
        }
    }
}

fn assemble_node(
    config: Config,
    shared: NodeShared,
    actors: NodeActors,
    secret: &[u8],
) -> Result<Node, StartupError> {
    let addressing = ClientAddressing::parse(
        &config.server.client_ip_header,
        &config.server.trusted_proxies,
    )
    .map_err(|e| StartupError::Config(format!("server.trusted_proxies: {e}")))?;
    let upload = &config.upload;
    let uploads = UploadAdmission {
        data_dir: config.storage.data_dir.clone(),
        min_free_disk_bytes: upload.min_free_disk_mb * 1024 * 1024,
        max_queue_depth: upload.max_queue_depth,
        max_slots: upload.max_concurrent,
        slots: Arc::new(tokio::sync::Semaphore::new(upload.max_concurrent)),
        load: shared.load,
        faults: shared.faults.clone(),
        stuck_probes: Arc::default(),
        backends: Arc::new(BackendHealth::new([
            match config.store.backend {
                StoreBackend::Sled => "sled",
                StoreBackend::Postgres => "postgres",
            },
            match config.storage.backend {
                StorageBackend::Local => "local",
                StorageBackend::S3 => "s3",
            },
            match config.queue.backend {
                QueueBackend::Embedded => "embedded",
                QueueBackend::Sqs => "sqs",
            },
        ])),
    };
    let auth = Auth::new(
        secret,
        Duration::from_secs(config.auth.token_ttl_s),
        config.auth.max_concurrent_hashes,
    );
    // A second secret whose tokens and links stay valid (rotation across a fleet).
    let accepted = Some(config.auth.jwt_secret_accepted.as_bytes()).filter(|s| !s.is_empty());
    Ok(Node::new(NodeParts {
        auth: match accepted {
            Some(accepted) => auth.accepting(accepted),
            None => auth,
        },
        signer: match accepted {
            Some(accepted) => UrlSigner::new(secret).accepting(accepted),
            None => UrlSigner::new(secret),
        },
        rate_limits: Arc::new(RateLimits::new(&config.rate_limit)),
        engine: shared.engine,
        node_id: shared.node_id,
        actors,
        uploads,
        streams: shared.streams,
        registry: shared.registry,
        faults: shared.faults,
        addressing,
        resumable: Arc::new(
            crate::resumable::Resumable::open(&config.storage.data_dir)
                .map_err(io_error("opening the resumable uploads"))?,
        ),
        config,
    }))
}

/// Opens the store, the queue and the media directory, and runs startup recovery: temp files
/// of unfinished uploads, media files nothing refers to, leases of the previous process.
async fn open_engine(config: &Config, data_dir: &Path) -> Result<Engine, StartupError> {
    let removed =
        crate::upload::clear_temp_dir(data_dir).map_err(io_error("clearing temp files"))?;
    let blobs = open_blobs(config, data_dir).await?;
    // The store's own queue: the queue itself, or the outbox when jobs go to SQS.
    let (store, own_queue, recovery): (Arc<dyn Store>, Arc<dyn JobQueue>, _) =
        match config.store.backend {
            StoreBackend::Sled => {
                let sled = SledEngine::open_with_cache(
                    &data_dir.join(DB_DIR),
                    config.queue.max_receives,
                    Duration::from_secs(config.storage.commit_timeout_s),
                    config.storage.cache_mb * 1024 * 1024,
                )?;
                let recovery = sled.recovery().clone();
                (sled.clone(), sled, Some(recovery))
            }
            StoreBackend::Postgres => {
                let postgres = Arc::new(open_postgres(config).await?);
                (postgres.clone(), postgres, None)
            }
        };
    let (queue, outbox): (Arc<dyn JobQueue>, Option<Arc<dyn JobQueue>>) = match config.queue.backend
    {
        QueueBackend::Embedded => (own_queue, None),
        QueueBackend::Sqs => (Arc::new(open_sqs(config).await?), Some(own_queue)),
    };
    tracing::info!(
        records = %match config.store.backend {
            StoreBackend::Sled => format!("sled {}", data_dir.join(DB_DIR).display()),
            StoreBackend::Postgres => "postgresql".to_string(),
        },
        media = %match config.storage.backend {
            StorageBackend::Local => format!("local disk {}", data_dir.join(MEDIA_DIR).display()),
            StorageBackend::S3 => format!(
                "s3://{}/{}",
                config.storage.s3.bucket, config.storage.s3.prefix
            ),
        },
        jobs = %match (config.queue.backend, config.store.backend) {
            (QueueBackend::Embedded, StoreBackend::Sled) => "embedded queue".to_string(),
            (QueueBackend::Embedded, StoreBackend::Postgres) => "postgresql jobs table".to_string(),
            (QueueBackend::Sqs, _) => format!("sqs {}", config.queue.sqs.queue_url),
        },
        role = config.node.role.as_str(),
        "where records, media and jobs are kept"
    );
    let engine = Engine {
        store,
        queue,
        blobs,
        outbox,
    };
    // With a store of its own, nothing else writes while the node starts. A shared store has
    // other nodes uploading now: their files are not orphans, so none are swept here.
    let orphans = match config.store.backend {
        StoreBackend::Sled => remove_orphan_files(&engine).await?,
        StoreBackend::Postgres => 0,
    };
    let recovery = recovery.unwrap_or_default();
    tracing::info!(
        temp_files_removed = removed,
        orphan_files_removed = orphans,
        jobs = recovery.jobs,
        dead_letters = recovery.dead,
        released_leases = recovery.released_leases,
        "recovery done"
    );
    Ok(engine)
}

/// The PostgreSQL store of the configuration, its schema migrated.
pub(super) async fn open_postgres(config: &Config) -> Result<PgEngine, StartupError> {
    let pg = &config.store.postgres;
    let password = (!pg.password.is_empty()).then_some(pg.password.as_str());
    PgEngine::connect(
        &pg.url,
        password,
        pg.max_connections,
        config.queue.max_receives,
    )
    .await
    .map_err(|e| StartupError::Config(format!("store.postgres: {e}")))
}

/// The media store of the configuration; a remote one must answer before the node starts.
pub(super) async fn open_blobs(
    config: &Config,
    data_dir: &Path,
) -> Result<Arc<dyn BlobStore>, StartupError> {
    match config.storage.backend {
        StorageBackend::Local => Ok(Arc::new(
            LocalBlobs::open(data_dir.join(MEDIA_DIR))
                .map_err(io_error("opening the media directory"))?,
        )),
        StorageBackend::S3 => {
            let s3 = &config.storage.s3;
            let store = S3Blobs::connect(&S3Location::from(s3)).await;
            store.check().await.map_err(|e| {
                StartupError::Config(format!(
                    "storage.s3: the bucket {:?} does not answer: {e}",
                    s3.bucket
                ))
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// The SQS queues of the configuration, once both answer and their redrive policy agrees
/// with `queue.max_receives`.
pub(super) async fn open_sqs(config: &Config) -> Result<SqsQueue, StartupError> {
    let location = SqsLocation::from(&config.queue.sqs);
    let queue = SqsQueue::connect(&location, config.queue.max_receives).await;
    queue
        .check()
        .await
        .map_err(|e| StartupError::Config(format!("queue.sqs: {e}")))?;
    Ok(queue)
}

/// How a child is reached and how it is started.
struct Child<A: actix::Actor> {
    actor: ActorRef<A>,
    spec: ChildSpec,
}

/// Registers an actor's health and mailbox under `name` and makes its handle.
fn actor_ref<A: actix::Actor>(config: &Config, shared: &Shared, name: &'static str) -> ActorRef<A> {
    let mailbox = config.actors.mailbox_capacity;
    ActorRef::new(
        shared.registry.register(name, mailbox),
        Duration::from_millis(config.actors.call_timeout_ms),
    )
}

fn ingest(config: &Config, shared: &Shared) -> Child<Ingest> {
    let actor = actor_ref::<Ingest>(config, shared, "ingest");
    let (engine, health, node_id) = (
        shared.engine.clone(),
        actor.health.clone(),
        shared.node_id.clone(),
    );
    let spec = ChildSpec::for_actor(&actor, config.actors.mailbox_capacity, move || {
        Ingest::new(engine.clone(), health.clone(), node_id.clone())
    });
    Child { actor, spec }
}

fn streamer(config: &Config, shared: &Shared) -> Child<Streamer> {
    let actor = actor_ref::<Streamer>(config, shared, "streamer");
    let (engine, permits, health) = (
        shared.engine.clone(),
        shared.streams.clone(),
        actor.health.clone(),
    );
    let capacity = config.stream.cache_entries;
    let copies = Arc::new(ReadThroughCache::new(
        match config.storage.s3.cache_dir.as_str() {
            "" => config.storage.data_dir.join("cache"),
            dir => std::path::PathBuf::from(dir),
        },
        config.storage.s3.cache_max_mb * 1024 * 1024,
    ));
    let spec = ChildSpec::for_actor(&actor, config.actors.mailbox_capacity, move || {
        Streamer::new(
            engine.clone(),
            permits.clone(),
            capacity,
            copies.clone(),
            health.clone(),
        )
    });
    Child { actor, spec }
}

fn transcoder(config: &Config, shared: &Shared) -> Result<Child<Transcoder>, StartupError> {
    let actor = actor_ref::<Transcoder>(config, shared, "transcoder");
    let settings = transcoder_settings(config)?;
    let (faults, children, health) = (
        shared.faults.clone(),
        shared.transcoder_children.clone(),
        actor.health.clone(),
    );
    let spec = ChildSpec::for_actor(&actor, config.actors.mailbox_capacity, move || {
        Transcoder::new(
            settings.clone(),
            faults.clone(),
            health.clone(),
            children.clone(),
        )
    });
    Ok(Child { actor, spec })
}

fn consumer(
    config: &Config,
    shared: &Shared,
    transcoder: &ActorRef<Transcoder>,
) -> Child<QueueConsumer> {
    let actor = actor_ref::<QueueConsumer>(config, shared, "queue_consumer");
    let t = &config.transcode;
    let settings = ConsumerSettings {
        visibility: Duration::from_secs(config.queue.visibility_timeout_s),
        max_receives: config.queue.max_receives,
        poll_interval: Duration::from_millis(t.poll_interval_ms),
        retry_base: Duration::from_secs(t.retry_base_s),
        retry_max: Duration::from_secs(t.retry_max_s),
        transcode_timeout: Duration::from_secs(t.timeout_s),
        work_root: config
            .storage
            .data_dir
            .join(crate::upload::TEMP_DIR)
            .join(JOBS_DIR),
        load: shared.load.clone(),
    };
    // Credits: one per transcoder slot, shared by every incarnation of the consumer.
    let credits = Arc::new(tokio::sync::Semaphore::new(t.workers));
    let (engine, transcoder, health) = (
        shared.engine.clone(),
        transcoder.clone(),
        actor.health.clone(),
    );
    let spec = ChildSpec::for_actor(&actor, config.actors.mailbox_capacity, move || {
        QueueConsumer::new(
            engine.clone(),
            transcoder.clone(),
            credits.clone(),
            settings.clone(),
            health.clone(),
        )
    });
    Child { actor, spec }
}

/// Starts the Supervisor with the actors of this node's role as its children: ingest and
/// streamer for the public, transcoder and queue consumer for the jobs.
fn start_actors(config: &Config, shared: &Shared) -> Result<Started, StartupError> {
    let role = config.node.role;
    let ingest = role.serves_api().then(|| ingest(config, shared));
    let streamer = role.serves_api().then(|| streamer(config, shared));
    let transcoder = role
        .processes()
        .then(|| transcoder(config, shared))
        .transpose()?;
    let consumer = transcoder
        .as_ref()
        .map(|transcoder| consumer(config, shared, &transcoder.actor));
    let (escalation_tx, escalation) = watch::channel(None);
    let a = &config.actors;
    let supervisor_settings = SupervisorSettings {
        intensity: Intensity {
            max_restarts: a.max_restarts,
            period: Duration::from_secs(a.restart_period_s),
            backoff_base: Duration::from_millis(a.restart_backoff_ms),
            backoff_max: Duration::from_millis(a.restart_backoff_max_ms),
        },
        heartbeat_timeout: Duration::from_millis(a.heartbeat_timeout_ms),
    };
    // Order matters: the consumer, last, holds a handle to the transcoder, whose restart
    // takes the consumer along (rest-for-one).
    let mut children = Vec::new();
    let ingest = ingest.map(|c| {
        children.push(c.spec);
        c.actor
    });
    let streamer = streamer.map(|c| {
        children.push(c.spec);
        c.actor
    });
    let transcoder = transcoder.map(|c| {
        children.push(c.spec.restarting_later_children());
        c.actor
    });
    let consumer = consumer.map(|c| {
        children.push(c.spec);
        c.actor
    });
    let supervisor = Supervisor::new(
        shared.registry.clone(),
        supervisor_settings,
        children,
        escalation_tx,
    )
    .start();
    Ok(Started {
        actors: NodeActors {
            ingest,
            streamer,
            transcoder,
            consumer,
        },
        supervisor,
        escalation,
    })
}

/// Serves nothing until every actor runs: a request must never find an actor missing merely
/// because the node is still starting.
async fn wait_until_running(registry: &HealthRegistry) -> Result<(), StartupError> {
    let deadline = tokio::time::Instant::now() + ACTOR_START_TIMEOUT;
    loop {
        let starting = registry.not_running();
        if starting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartupError::ActorsNotRunning(starting.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
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
        encoding: t.encoding.clone(),
        memory_limit_bytes: t.memory_limit_mb * 1024 * 1024,
        // Every core busy for the whole timeout: only a runaway child reaches it first.
        cpu_limit: Duration::from_secs(t.timeout_s) * cores,
        timeout: Duration::from_secs(t.timeout_s),
        stall: Duration::from_secs(t.stall_s),
        escape_target: config.storage.data_dir.join(crate::auth::SECRET_FILE),
    })
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
