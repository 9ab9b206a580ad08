//! Running a built node: serve until a shutdown signal or an escalation, then stop in order
//! (stop accepting, drain in-flight requests up to the grace deadline, stop the actors, flush
//! the store). [`spawn`] runs a node on a thread of its own for tests and benchmarks.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use super::application::{io_error, Application, RunError, StartupError};
use crate::actors::supervisor::StopChildren;
use crate::config::Config;
use crate::engine::{Engine, JobQueue, StoreError};
use crate::http::server::{serve, ServerLimits};
use crate::http::Served;
use crate::node::Node;
use crate::rate_limit::RateLimits;

/// The node's listeners, being served until the stop signal.
struct Serving {
    server: tokio::task::JoinHandle<usize>,
    ops_server: Option<tokio::task::JoinHandle<usize>>,
    stop: watch::Sender<bool>,
}

impl Serving {
    /// Starts serving the main listener (every route) and the operations listener, if any.
    fn start(
        node: &Arc<Node>,
        listener: tokio::net::TcpListener,
        ops_listener: Option<(tokio::net::TcpListener, SocketAddr)>,
    ) -> Self {
        let server_config = &node.config().server;
        let header_read_timeout = Duration::from_secs(server_config.header_read_timeout_s);
        let grace = Duration::from_secs(server_config.shutdown_grace_s);
        let (stop, stop_rx) = watch::channel(false);
        let ops_server = ops_listener.map(|(ops_listener, ops_addr)| {
            tracing::info!("operations routes also listening on {ops_addr}");
            let limits = ServerLimits {
                max_connections: server_config.ops_reserved_connections,
                header_read_timeout,
                reserved_for_operations: 0,
                impatient: true,
            };
            let handler = crate::http::handler(node.clone(), Served::OperationsOnly);
            tokio::spawn(serve(ops_listener, handler, limits, stop_rx.clone(), grace))
        });
        let limits = ServerLimits {
            max_connections: server_config.max_connections,
            header_read_timeout,
            reserved_for_operations: server_config.ops_reserved_connections,
            impatient: false,
        };
        // A worker serves only the operator routes, on every listener.
        let served = match node.config().node.role.serves_api() {
            true => Served::Everything,
            false => Served::OperationsOnly,
        };
        let handler = crate::http::handler(node.clone(), served);
        let server = tokio::spawn(serve(listener, handler, limits, stop_rx, grace));
        Self {
            server,
            ops_server,
            stop,
        }
    }

    /// Stops accepting and waits for the connections in flight, up to the grace deadline.
    async fn stop(self) {
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(0) => {}
            Ok(open) => tracing::warn!(open, "connections cut at the grace deadline"),
            Err(e) => tracing::error!(error = %e, "the server task failed"),
        }
        if let Some(ops_server) = self.ops_server {
            let _ = ops_server.await;
        }
    }
}

impl Application {
    /// Serves until `shutdown` resolves, then stops in order. Returns once the store is flushed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let Self {
            node,
            listener,
            addr,
            ops_listener,
            supervisor,
            store,
            transcoder_children,
            mut escalation,
        } = self;
        tracing::info!("listening on {addr}");
        let serving = Serving::start(&node, listener, ops_listener);
        crate::notify::ready(&node).await;
        let watchdog = tokio::spawn(crate::notify::keep_alive(node.clone()));
        let eviction = tokio::spawn(evict_idle_clients(
            node.rate_limits().clone(),
            Duration::from_secs(node.config().rate_limit.evict_every_s.max(1)),
        ));
        let sweeper = tokio::spawn(sweep_expired_uploads(node.resumable().clone()));
        let prober = tokio::spawn(probe_backends(node.clone()));
        let platform = tokio::spawn(take_part(node.clone()));
        let relay = node.engine().outbox.clone().map(|outbox| {
            let queue = node.engine().queue.clone();
            tokio::spawn(keep_relaying(outbox, queue, node.faults().clone()))
        });

        let escalated = tokio::select! {
            _ = shutdown => None,
            reason = escalation.wait_for(|r| r.is_some()) => reason.ok().and_then(|r| r.clone()),
        };
        if let Some(reason) = &escalated {
            // Readiness already says 503: give load balancers the grace period to drain us.
            let grace = Duration::from_secs(node.config().server.shutdown_grace_s);
            tracing::error!(%reason, grace_s = grace.as_secs(), "escalated: draining, then exiting");
            tokio::time::sleep(grace).await;
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        crate::notify::stopping();
        node.begin_shutdown();
        serving.stop().await;
        watchdog.abort();
        eviction.abort();
        sweeper.abort();
        prober.abort();
        platform.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        // Short: the process must be gone `shutdown_grace_s` + 5 s after SIGTERM, flush included.
        let _ = tokio::time::timeout(Duration::from_secs(2), supervisor.send(StopChildren)).await;
        // Transcodes in progress are abandoned: their leases expire and they run again later.
        transcoder_children.kill_all();
        let flushed = tokio::task::spawn_blocking(move || {
            let result = store.flush_blocking();
            drop(store);
            result
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(e.to_string())));
        drop(node);
        tracing::info!("stopped");
        flushed?;
        match escalated {
            Some(reason) => Err(RunError::Escalated(reason)),
            None => Ok(()),
        }
    }
}

/// Says the node is alive every `PROBE_EVERY`, and every fifth time deletes the originals of
/// dead nodes' uploads, for ever (aborted at shutdown).
async fn take_part(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(crate::node::PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 0u64.. {
        ticks.tick().await;
        node.beat().await;
        if tick % 5 == 4 {
            let sweeper = node.clone();
            // Off the beat: deleting files must not delay the next one.
            tokio::spawn(async move { sweeper.sweep_abandoned_blobs().await });
        }
    }
}

/// Checks the media store and the queue every `PROBE_EVERY`, for ever (aborted at shutdown).
async fn probe_backends(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(crate::node::PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        node.probe_backends().await;
    }
}

/// Runs the outbox relay, started again should it ever panic (aborted at shutdown).
async fn keep_relaying(
    outbox: Arc<dyn JobQueue>,
    queue: Arc<dyn JobQueue>,
    faults: Arc<crate::faults::Faults>,
) {
    use futures_util::FutureExt;
    loop {
        let faults = faults.clone();
        let run = crate::engine::outbox::relay(outbox.clone(), queue.clone(), move |step| {
            faults.relay_held(step)
        });
        if let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await {
            tracing::error!(
                panic = crate::panics::payload_message(panic.as_ref()),
                "the outbox relay panicked; starting it again"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Drops the rate-limit buckets of idle clients every `every`, the first time `every` after the
/// start (nothing is idle before), forever (aborted at shutdown).
async fn evict_idle_clients(limits: Arc<RateLimits>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        limits.evict_idle();
    }
}

/// Removes resumable uploads past their expiry, every minute.
async fn sweep_expired_uploads(uploads: Arc<crate::resumable::Resumable>) {
    let every = Duration::from_secs(60);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let removed = uploads.sweep_expired();
        if removed > 0 {
            tracing::info!(removed, "expired resumable uploads removed");
        }
    }
}

/// A node running on a thread of its own; stopped (gracefully) on [`RunningApp::stop`] or drop.
pub struct RunningApp {
    pub addr: SocketAddr,
    /// The operations listener's address, when `server.ops_addr` is set.
    pub ops_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
}

impl RunningApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn engine(&self) -> Engine {
        self.node.engine().clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.node.config().storage.data_dir
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
                let _ = ready_tx.send(Ok((app.local_addr(), app.ops_addr(), app.node())));
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
        Ok(Ok((addr, ops_addr, node))) => Ok(RunningApp {
            addr,
            ops_addr,
            node,
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
