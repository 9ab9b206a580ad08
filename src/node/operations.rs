//! The operators' verbs: readiness, the actors' report, the gauges of `/metrics`, dead letters
//! and their re-drive, fault injection.

use serde::Serialize;
use subtle::ConstantTimeEq;

use super::base::{present, Node, HEARTBEAT_STALE_MS};
use super::error::Error;
use crate::actors::{ActorRef, InjectFault};
use crate::domain::ProcessingState;
use crate::engine::{DeadLetter, Membership, QueueError, QueueStats};
use crate::faults::{ActorFault, FaultSwitches};
use crate::health::ActorReport;

use super::backends::{BackendReport, Service, ABANDONED_AFTER, NODE_FRESH};

#[derive(Serialize, utoipa::ToSchema)]
pub struct DiskReport {
    pub free_bytes: Option<u64>,
    pub min_free_bytes: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StreamsReport {
    pub active: usize,
    pub max_concurrent: usize,
    pub bytes_served: u64,
    pub refused: u64,
}

/// What `/api/health/actors` shows.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActorsReport {
    pub version: &'static str,
    /// `all`, `api` or `worker` (`node.role`).
    pub role: &'static str,
    /// The platform's nodes seen alive within the last seconds, by what they do.
    pub nodes: Membership,
    pub uptime_s: u64,
    pub actors: Vec<ActorReport>,
    pub queue: Option<QueueStats>,
    pub streams: StreamsReport,
    pub disk: DiskReport,
    /// The media store and the queue: which, and whether they answered their last check.
    pub backends: Vec<BackendReport>,
}

impl Node {
    /// Why this node should not get traffic now; empty when it is ready.
    pub async fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.is_shutting_down() {
            problems.push("the node is shutting down".to_string());
        }
        problems.extend(self.registry.problems(HEARTBEAT_STALE_MS));
        if self.actors.ingest.is_some() {
            let obstacles = self.uploads.obstacles(&self.engine).await;
            let (stuck, others): (Vec<_>, Vec<_>) = obstacles
                .iter()
                .partition(|o| matches!(o, super::admission::Refusal::ProbesStuck { .. }));
            problems.extend(stuck.iter().map(ToString::to_string));
            if self.uploads.load.is_shedding() {
                problems.push(format!(
                    "shedding load: uploads refused for want of a slot within the last {} s",
                    crate::load::SHEDDING_FOR.as_secs()
                ));
            }
            problems.extend(others.iter().map(ToString::to_string));
        } else {
            // A worker's readiness: its actors, and the backends its jobs need.
            problems.extend(self.uploads.backends.problems());
        }
        problems
    }

    /// Checks the record store, the media store and the queue, and records what they
    /// answered.
    pub async fn probe_backends(&self) {
        let backends = &self.uploads.backends;
        let store = self.engine.store.check().await.map_err(|e| e.to_string());
        backends.record(Service::Store, store);

        let storage = self.engine.blobs.check().await.map_err(|e| e.to_string());
        backends.record(Service::Storage, storage);
        let queue = self
            .engine
            .queue
            .stats()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        backends.record(Service::Queue, queue);
    }

    /// Says this node is alive, and counts the platform's nodes (on a task of its own, so that
    /// a slow backend check never makes the node look dead).
    pub async fn beat(&self) {
        let role = self.config.node.role;
        match self
            .engine
            .store
            .node_alive(&self.platform.id, role, NODE_FRESH)
            .await
        {
            Ok(membership) => self.platform.record(membership),
            Err(error) => tracing::debug!(%error, "counting the platform's nodes failed"),
        }
    }

    /// Deletes the originals of uploads whose node died before their commit: no record will
    /// ever refer to them. One that a record does refer to (a commit whose answer was lost) is
    /// kept, and only its note goes.
    pub async fn sweep_abandoned_blobs(&self) {
        let store = &self.engine.store;
        let Ok(keys) = store.abandoned_blobs(ABANDONED_AFTER).await else {
            return;
        };
        for key in keys {
            let referenced = match crate::engine::blobs::video_id_in(&key, "originals/", ".mp4") {
                Some(id) => store.video_exists(id).await.unwrap_or(true),
                None => false,
            };
            if !referenced && self.engine.blobs.delete(&key).await.is_err() {
                continue;
            }
            if store.settle_blob(&key).await.is_ok() && !referenced {
                tracing::info!(key, "removed the original of an upload whose node died");
            }
        }
    }

    /// Whether the Supervisor is doing its job: not escalated, and its own heartbeat fresh.
    pub fn supervisor_healthy(&self) -> bool {
        self.registry.escalated().is_none()
            && self
                .registry
                .get("supervisor")
                .is_some_and(|s| s.heartbeat_age_ms() <= HEARTBEAT_STALE_MS)
    }

    pub async fn actors_report(&self) -> ActorsReport {
        ActorsReport {
            version: env!("CARGO_PKG_VERSION"),
            role: self.config.node.role.as_str(),
            nodes: self.platform.counted(),
            uptime_s: self.registry.uptime_s(),
            actors: self.registry.reports(),
            queue: self.engine.queue_stats().await.ok(),
            streams: StreamsReport {
                active: self.streams.active(),
                max_concurrent: self.streams.max_concurrent(),
                bytes_served: self.streams.bytes_served(),
                refused: self.streams.refused(),
            },
            disk: DiskReport {
                free_bytes: crate::system::free_disk_bytes(&self.config.storage.data_dir).ok(),
                min_free_bytes: self.uploads.min_free_disk_bytes,
            },
            backends: self.uploads.backends.reports(),
        }
    }

    /// Sets the gauges that are read rather than counted (queue, streams, memory, disk), and
    /// renders every metric in the Prometheus text format.
    pub async fn metrics_text(&self) -> String {
        let m = crate::events::metrics();
        let nodes = self.platform.counted();
        m.platform_nodes
            .with_label_values(&["api"])
            .set(nodes.api as i64);
        m.platform_nodes
            .with_label_values(&["worker"])
            .set(nodes.worker as i64);
        if let Ok(stats) = self.engine.queue_stats().await {
            // The scaling signal of the worker group: AWS's backlog per instance for SQS.
            m.backlog_per_worker
                .set(stats.depth as f64 / nodes.worker.max(1) as f64);
            m.queue_depth.set(stats.depth as i64);
            m.queue_in_flight.set(stats.in_flight as i64);
            m.queue_dead_letters.set(stats.dead as i64);
        }
        m.streams_active.set(self.streams.active() as i64);
        m.stream_bytes.set(self.streams.bytes_served() as i64);
        m.streams_refused.set(self.streams.refused() as i64);
        if let Some(rss) = crate::system::resident_memory_bytes() {
            m.resident_memory.set(rss as i64);
        }
        if let Ok(free) = crate::system::free_disk_bytes(&self.config.storage.data_dir) {
            m.disk_free.set(free as i64);
        }
        m.uptime.set(self.registry.uptime_s() as f64);
        m.render()
    }

    /// One line for `systemctl status`.
    pub async fn status_line(&self) -> String {
        let streams = self.streams.active();
        let queue = self.engine.queue_stats().await.unwrap_or_default();
        let actors = self.registry.reports();
        let running = actors
            .iter()
            .filter(|a| a.state == crate::health::ActorState::Running)
            .count();
        match self.registry.escalated() {
            Some(reason) => format!("escalated: {reason}"),
            None => format!(
                "{running}/{} actors running; queue {} waiting, {} processing, {} dead; {streams} streams",
                actors.len(),
                queue.depth,
                queue.in_flight,
                queue.dead
            ),
        }
    }

    /// Checks the administration token; without one configured, administration does not exist.
    pub fn authorize_admin(&self, token: &str) -> Result<(), Error> {
        let expected = self.config.admin.token.as_bytes();
        if expected.is_empty() {
            return Err(Error::Absent);
        }
        if token.as_bytes().ct_eq(expected).unwrap_u8() != 1 {
            return Err(Error::NotAdmin);
        }
        Ok(())
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        Ok(self.engine.queue.dead_letters().await?)
    }

    /// Sends a dead-lettered job back to the queue; its video is queued again.
    pub async fn redrive(&self, id: crate::domain::VideoId) -> Result<(), Error> {
        self.engine.queue.redrive(id).await.map_err(|e| match e {
            QueueError::NotFound => Error::NoDeadLetter,
            other => other.into(),
        })?;
        self.engine
            .store
            .set_processing_state(id, ProcessingState::Queued)
            .await?;
        Ok(())
    }

    /// Sends every dead-lettered job back to the queue; returns how many went.
    pub async fn redrive_all(&self) -> Result<u64, Error> {
        let ids: Vec<u64> = self
            .engine
            .queue
            .dead_letters()
            .await?
            .iter()
            .map(|d| d.job.video_id)
            .collect();
        let redriven = self.engine.queue.redrive_all().await?;
        for id in ids {
            self.engine
                .store
                .set_processing_state(id, ProcessingState::Queued)
                .await?;
        }
        Ok(redriven)
    }

    /// The fault switches, when fault injection is enabled.
    pub fn fault_switches(&self) -> Result<FaultSwitches, Error> {
        if !self.faults.enabled() {
            return Err(Error::Absent);
        }
        Ok(self.faults.switches())
    }

    pub fn set_fault_switches(&self, switches: FaultSwitches) -> Result<FaultSwitches, Error> {
        self.fault_switches()?;
        self.faults.set(switches);
        let now = self.faults.switches();
        tracing::warn!(switches = ?now, "fault injection switches changed");
        Ok(now)
    }

    /// Makes the actor named `actor` suffer `fault` (fault injection only).
    pub async fn inject_fault(&self, actor: &str, fault: ActorFault) -> Result<(), Error> {
        self.fault_switches()?;
        let a = &self.actors;
        match actor {
            "ingest" => inject(&a.ingest, fault).await,
            "transcoder" => inject(&a.transcoder, fault).await,
            "queue_consumer" => inject(&a.consumer, fault).await,
            "streamer" => inject(&a.streamer, fault).await,
            _ => Err(Error::Absent),
        }?;
        tracing::warn!(actor, fault = ?fault, "fault injected");
        Ok(())
    }
}

async fn inject<A>(actor: &Option<ActorRef<A>>, fault: ActorFault) -> Result<(), Error>
where
    A: actix::Actor + actix::Handler<InjectFault>,
    A::Context: actix::dev::ToEnvelope<A, InjectFault>,
{
    Ok(present(actor)?
        .call(|reply| InjectFault { fault, reply })
        .await?)
}
