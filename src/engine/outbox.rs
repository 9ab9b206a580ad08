//! The outbox relay: a video's record and its job are committed together in the store's own
//! queue (one transaction, as always); when jobs are consumed from another system (SQS), the
//! relay moves each committed job there and only then removes it from the outbox.
//!
//! A crash between sending and removing sends the job again after the outbox lease expires;
//! jobs are idempotent by video id, so that is harmless. A job is never lost and never exists
//! without its record: deleting a video removes a job still in the outbox in the same
//! transaction, and a job already sent finds no video and is acknowledged without work.

use std::sync::Arc;
use std::time::Duration;

use super::queue::{JobQueue, QueueError};

/// How long the relay holds a job it is sending (extended every retry while the queue is
/// away); a job whose relay died is sent again by another once this runs out.
const LEASE: Duration = Duration::from_secs(10);
/// How often an idle relay looks at the outbox.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Wait between two attempts to send a job while the queue is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A step of the relay where a fault drill may hold it, to crash the node in that window.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RelayStep {
    /// The job is committed in the outbox and not yet sent.
    BeforeSend,
    /// The job is sent and not yet removed from the outbox.
    BeforeRemove,
}

/// Waits while `held` says the relay must not go past `step`.
async fn pass(step: RelayStep, held: &impl Fn(RelayStep) -> bool) {
    while held(step) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves jobs from `outbox` to `queue`, for ever (aborted at shutdown). `held` is the fault
/// drill's say (always false outside drills).
pub async fn relay(
    outbox: Arc<dyn JobQueue>,
    queue: Arc<dyn JobQueue>,
    held: impl Fn(RelayStep) -> bool,
) {
    'jobs: loop {
        let lease = match outbox.receive(LEASE).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "reading the outbox failed");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        let id = lease.job.video_id;
        pass(RelayStep::BeforeSend, &held).await;
        // Sent until it goes, keeping the outbox lease: a job must not be dead-lettered in
        // the outbox because the queue was away for a while.
        let mut attempts = 0u32;
        loop {
            match queue.enqueue(lease.job.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    attempts += 1;
                    if attempts == 1 || attempts % 60 == 0 {
                        tracing::warn!(video_id = id, %error, attempts, "relaying a job failed; retrying");
                    }
                    tokio::time::sleep(RETRY_EVERY).await;
                    match outbox.extend(id, &lease.token, LEASE).await {
                        Ok(_) => {}
                        // Deleted meanwhile: nothing to relay.
                        Err(QueueError::NotFound | QueueError::InvalidToken) => continue 'jobs,
                        // Kept or not, the job is received again once its lease expires.
                        Err(error) => {
                            tracing::debug!(video_id = id, %error, "extending an outbox lease failed")
                        }
                    }
                }
            }
        }
        pass(RelayStep::BeforeRemove, &held).await;
        if let Err(error) = outbox.ack(id, &lease.token).await {
            tracing::debug!(video_id = id, %error, "removing a relayed job from the outbox failed");
        }
    }
}
