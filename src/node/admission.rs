//! Upload admission, decided before a byte of the body is read: a free upload slot first (the
//! cheapest question, and the one a crowd is refused on), then no stuck probes, enough free
//! disk and room in the job queue. Readiness asks the same questions
//! through [`UploadAdmission::obstacles`], so the two never disagree.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::faults::Faults;
use crate::load::{Load, MAX_RETRY_S};
use crate::upload::{StuckProbes, UploadSlot};

use super::backends::BackendHealth;

/// Why an upload is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{count} upload probes are stuck; uploads are refused")]
    ProbesStuck { count: usize },
    #[error("free disk {} MiB is below the {} MiB watermark", free_bytes / MIB, min_bytes / MIB)]
    DiskFull { free_bytes: u64, min_bytes: u64 },
    #[error("free disk unknown: {0}")]
    DiskUnknown(String),
    #[error("queue depth {depth} reached the {max} watermark")]
    QueueFull {
        depth: u64,
        max: u64,
        retry_after_s: u64,
    },
    #[error("queue unavailable: {0}")]
    QueueUnavailable(String),
    #[error("every upload slot is taken")]
    NoSlot { retry_after_s: u64 },
    /// The media store or the queue did not answer its last check.
    #[error("{0}")]
    BackendDown(String),
}

const MIB: u64 = 1024 * 1024;

impl Refusal {
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Refusal::NoSlot { retry_after_s } | Refusal::QueueFull { retry_after_s, .. } => {
                *retry_after_s
            }
            Refusal::ProbesStuck { .. } => 60,
            Refusal::QueueUnavailable(_) | Refusal::BackendDown(_) => 5,
            // Nothing on this node frees disk by itself: an operator must act.
            Refusal::DiskFull { .. } | Refusal::DiskUnknown(_) => MAX_RETRY_S,
        }
    }

    /// What ran out, as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSlot { .. } => "upload_slots",
            Refusal::DiskFull { .. } | Refusal::DiskUnknown(_) => "disk_full",
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::QueueUnavailable(_) => "queue_unavailable",
            Refusal::ProbesStuck { .. } => "probes_stuck",
            Refusal::BackendDown(_) => "backend_unavailable",
        }
    }
}

/// The node's upload capacity and the limits that decide admission.
pub struct UploadAdmission {
    pub data_dir: PathBuf,
    pub min_free_disk_bytes: u64,
    pub max_queue_depth: u64,
    pub max_slots: usize,
    /// Created once: slots held by live requests survive anything that restarts.
    pub slots: Arc<Semaphore>,
    /// Drain rates, for the `Retry-After` of refusals.
    pub load: Arc<Load>,
    pub faults: Arc<Faults>,
    /// Upload probes abandoned past their deadline and still running.
    pub stuck_probes: Arc<StuckProbes>,
    /// Whether the media store and the queue answer.
    pub backends: Arc<BackendHealth>,
}

impl UploadAdmission {
    /// Everything that stands in the way of an upload now, apart from a free slot.
    pub async fn obstacles(&self, engine: &Engine) -> Vec<Refusal> {
        let mut found: Vec<Refusal> = self
            .backends
            .problems()
            .into_iter()
            .map(Refusal::BackendDown)
            .collect();
        if self.stuck_probes.too_many() {
            found.push(Refusal::ProbesStuck {
                count: self.stuck_probes.count(),
            });
        }
        match self.faults.free_disk_bytes(&self.data_dir) {
            Ok(free_bytes) if free_bytes < self.min_free_disk_bytes => {
                found.push(Refusal::DiskFull {
                    free_bytes,
                    min_bytes: self.min_free_disk_bytes,
                })
            }
            Ok(_) => {}
            Err(e) => found.push(Refusal::DiskUnknown(e.to_string())),
        }
        match engine.queue_stats().await {
            Ok(stats) if stats.depth >= self.max_queue_depth => found.push(Refusal::QueueFull {
                depth: stats.depth,
                max: self.max_queue_depth,
                retry_after_s: self
                    .load
                    .queue_retry_after_s(stats.depth, self.max_queue_depth),
            }),
            Ok(_) => {}
            Err(e) => found.push(Refusal::QueueUnavailable(e.to_string())),
        }
        found
    }

    /// Whether `obstacle` refuses an upload, not only readiness: a queue whose depth cannot be
    /// read does not (the commit finds out), nor does an unknown free disk without a watermark.
    fn refuses_uploads(&self, obstacle: &Refusal) -> bool {
        match obstacle {
            Refusal::QueueUnavailable(_) => false,
            Refusal::DiskUnknown(_) => self.min_free_disk_bytes > 0,
            _ => true,
        }
    }

    /// A free slot, or `NoSlot` with the wait that the demand and the drain rate suggest. No
    /// system call, no allocation: the crowd's refusal.
    pub fn slot(&self) -> Result<UploadSlot, Refusal> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(UploadSlot::new(permit, self.load.clone())),
            Err(_) => Err(Refusal::NoSlot {
                retry_after_s: self.load.refuse_for_slots(self.max_slots),
            }),
        }
    }

    /// Admits an upload in `slot` unless something else stands in its way; the slot is freed
    /// with the refusal.
    pub async fn admit(&self, engine: &Engine, slot: UploadSlot) -> Result<UploadSlot, Refusal> {
        let obstacles = self.obstacles(engine).await;
        match obstacles.into_iter().find(|o| self.refuses_uploads(o)) {
            Some(first) => Err(first),
            None => Ok(slot),
        }
    }
}
