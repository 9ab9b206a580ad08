//! The engine: durable state and media, with no HTTP and no actors. Each part sits behind a small
//! trait with an embedded default and one implementation per backend: records in sled or
//! PostgreSQL, media in a local directory or S3, jobs in the store's own queue or SQS.

pub mod aws;
pub mod blobs;
pub mod commit;
pub mod outbox;
pub mod pg_engine;
pub mod probe;
pub mod queue;
pub mod s3_blobs;
mod sled_codec;
pub mod sled_engine;
mod sled_jobs;
mod sled_queue;
pub mod sqs_queue;
pub mod store;
pub mod transcode;

use std::sync::Arc;

pub use blobs::{BlobError, BlobStore, LocalBlobs};
pub use queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
pub use store::{Membership, Store, StoreError};

/// Handles to every engine part, cloned into the actors and the HTTP layer.
#[derive(Clone)]
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn JobQueue>,
    pub blobs: Arc<dyn BlobStore>,
    /// Where the store commits jobs with their records when the queue is another system: the
    /// outbox the relay empties into `queue` (see [`outbox`]). `None` when they are one.
    pub outbox: Option<Arc<dyn JobQueue>>,
}

impl Engine {
    /// The counts of the jobs, the ones still in the outbox waiting with the rest.
    /// The outbox is read first: a job the relay moves between the two reads is then counted
    /// twice for a moment, never missed (a full queue refuses uploads on this count).
    pub async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        let relaying = match &self.outbox {
            Some(outbox) => {
                let waiting = outbox.stats().await?;
                waiting.depth + waiting.in_flight
            }
            None => 0,
        };
        let mut stats = self.queue.stats().await?;
        stats.depth += relaying;
        Ok(stats)
    }
}
