//! The job queue, with the semantics of Amazon SQS so that the embedded queue and SQS are
//! interchangeable: a received job is leased (invisible) for a visibility timeout and identified
//! by a lease token; the holder extends the lease while it works, acknowledges with the token
//! when done, or gives the job back with a delay. Every receive counts; a job received more than
//! `max_receives` times goes to the dead letters with its last failure and its original enqueue
//! time, from where an operator can re-drive it.
//!
//! Delivery is at least once: a consumer may see the same job twice and must be idempotent.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::VideoId;

/// Work to do for one video. The job id is the video id: one video has at most one job, and
/// every side effect of the job is keyed by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub video_id: VideoId,
    pub task_id: String,
    /// Blob key of the input.
    pub original_key: String,
    /// Milliseconds since the epoch when the job was first enqueued; kept through retries,
    /// dead-lettering and re-drive.
    pub enqueued_at_ms: u64,
    /// How many times the job has been received.
    pub receive_count: u32,
    /// The reason given by the last `nack` or dead-lettering.
    pub last_error: Option<String>,
}

/// A received job and the proof of holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub job: Job,
    pub token: String,
    pub visible_again_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: Job,
    pub reason: String,
    pub dead_at_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Jobs waiting to be received (including those delayed by a nack).
    pub depth: u64,
    /// Jobs received whose lease has not expired.
    pub in_flight: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum QueueError {
    #[error("no such job")]
    NotFound,
    /// The token is not the job's current lease (the lease expired and the job was received
    /// again, or the job was acknowledged already).
    #[error("the lease token is not valid for this job")]
    InvalidToken,
    #[error("queue storage failed: {0}")]
    Backend(String),
    /// The queue service cannot be reached or is throttling: another try later may succeed.
    #[error("the queue service is unavailable: {0}")]
    Unavailable(String),
    /// Applied but not confirmed on disk; see [`crate::engine::StoreError::Unconfirmed`].
    #[error("the queue change could not be confirmed on disk: {0}")]
    Unconfirmed(String),
}

#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Durably enqueues a job; returns once it is on disk.
    async fn enqueue(&self, job: Job) -> Result<(), QueueError>;
    /// Leases the next visible job, if any. Jobs over `max_receives` are dead-lettered instead.
    async fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError>;
    /// Extends the lease to `visibility` from now.
    async fn extend(
        &self,
        video_id: VideoId,
        token: &str,
        visibility: Duration,
    ) -> Result<u64, QueueError>;
    /// Deletes the job: it is done.
    async fn ack(&self, video_id: VideoId, token: &str) -> Result<(), QueueError>;
    /// Gives the job back, visible again after `delay`, recording why.
    async fn nack(
        &self,
        video_id: VideoId,
        token: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<(), QueueError>;
    /// Moves a leased job to the dead letters at once (a permanent failure).
    async fn dead_letter(
        &self,
        video_id: VideoId,
        token: &str,
        reason: &str,
    ) -> Result<(), QueueError>;
    /// Removes the job wherever it is (queued, leased or dead). Returns whether it existed.
    async fn cancel(&self, video_id: VideoId) -> Result<bool, QueueError>;
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError>;
    /// Moves a dead letter back to the queue with a fresh receive count.
    async fn redrive(&self, video_id: VideoId) -> Result<(), QueueError>;
    /// Re-drives every dead letter; returns how many.
    async fn redrive_all(&self) -> Result<u64, QueueError>;
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// A queued, leased or dead job of this video, if any.
    async fn job(&self, video_id: VideoId) -> Result<Option<Job>, QueueError>;
    /// Writes a dead letter copied from another queue (`showcase migrate`); a video that has a
    /// job, live or dead, keeps it.
    async fn import_dead(&self, letter: DeadLetter) -> Result<(), QueueError>;
}
