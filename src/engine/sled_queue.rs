//! The embedded job queue of [`SledEngine`], with the semantics of [`JobQueue`].
//!
//! Durable state is one record per live job (`queue_jobs`, keyed by video id: the job, when it
//! becomes visible, its current lease token) and one per dead letter (`queue_dead`). Every hot
//! operation (enqueue, receive, extend, ack, nack) is a single-key write, which sled flushes
//! cheaply; only moves between the two trees (dead-lettering, re-drive, cancel) are
//! transactions.
//!
//! Which job is visible next is answered by an in-memory index ([`QueueIndex`]) rebuilt from the
//! job records at open, and changed only under its lock together with the record it mirrors.
//! Rebuilding it is also the recovery step: leases held by a process that stopped are released.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::sled_engine::{be, decode, encode, read_u64, EngineError, Inner, Recovery, SledEngine};
use crate::domain::{now_ms, VideoId};
use crate::engine::queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
use crate::engine::store::StoreError;

/// A job as kept in the queue tree: the job plus its visibility and current lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct QueuedJob {
    pub job: Job,
    pub visible_at_ms: u64,
    pub lease: Option<String>,
}

impl QueuedJob {
    pub fn fresh(job: Job, now: u64) -> Self {
        Self {
            job,
            visible_at_ms: now,
            lease: None,
        }
    }
}

/// In-memory mirror of the live jobs: when each becomes visible. Changed only under the queue
/// lock, together with the records it mirrors.
#[derive(Debug, Default)]
pub(super) struct QueueIndex {
    visible_at: HashMap<VideoId, u64>,
    /// `(visible_at, id)` of every live job, earliest first.
    schedule: BTreeSet<(u64, VideoId)>,
    pub counts: Arc<QueueCounts>,
}

/// The figures behind [`QueueStats`], readable without the queue lock (admission and health
/// ask for them on every upload, and must not wait behind a queue write).
#[derive(Debug, Default)]
pub(super) struct QueueCounts {
    live: AtomicU64,
    dead: AtomicU64,
    /// Leased jobs and when their lease ends.
    leases: Mutex<HashMap<VideoId, u64>>,
}

impl QueueCounts {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<VideoId, u64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_dead(&self, n: u64) {
        self.dead.fetch_add(n, Ordering::Relaxed);
    }

    pub fn remove_dead(&self) {
        let _ = self
            .dead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(1))
            });
    }

    pub fn stats(&self, now: u64) -> QueueStats {
        let in_flight = self.leases().values().filter(|&&until| until > now).count() as u64;
        QueueStats {
            depth: self.live.load(Ordering::Relaxed).saturating_sub(in_flight),
            in_flight,
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

impl QueueIndex {
    /// Records (or moves) a live job.
    pub fn put(&mut self, id: VideoId, visible_at: u64, leased: bool) {
        match self.visible_at.insert(id, visible_at) {
            Some(old) => {
                self.schedule.remove(&(old, id));
            }
            None => {
                self.counts.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.schedule.insert((visible_at, id));
        let mut leases = self.counts.leases();
        if leased {
            leases.insert(id, visible_at);
        } else {
            leases.remove(&id);
        }
    }

    /// Forgets a live job; returns whether it was there.
    pub fn remove(&mut self, id: VideoId) -> bool {
        self.counts.leases().remove(&id);
        match self.visible_at.remove(&id) {
            Some(at) => {
                self.schedule.remove(&(at, id));
                self.counts.live.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Forgets everything, keeping the shared counters (others hold them).
    fn clear(&mut self) {
        self.visible_at.clear();
        self.schedule.clear();
        self.counts.live.store(0, Ordering::Relaxed);
        self.counts.dead.store(0, Ordering::Relaxed);
        self.counts.leases().clear();
    }

    fn next_visible(&self, now: u64) -> Option<VideoId> {
        self.schedule
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
    }
}

fn qbackend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(e.to_string())
}

fn qtx_result<T>(r: Result<T, TransactionError<QueueError>>) -> Result<T, QueueError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => qbackend(e),
    })
}

fn qdecode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, QueueError> {
    decode(bytes).map_err(|e: StoreError| qbackend(e))
}

impl Inner {
    /// Rebuilds the index from the job records, releasing every lease: no consumer of this
    /// process holds one after a restart.
    pub(super) fn recover_queue(&self) -> Result<Recovery, StoreError> {
        let now = now_ms();
        let mut index = self.lock_queue();
        index.clear();
        let mut recovery = Recovery::default();
        for entry in self.t.jobs.iter() {
            let (key, value) = entry.map_err(|e| StoreError::Backend(e.to_string()))?;
            let mut queued: QueuedJob = decode(&value)?;
            if queued.lease.take().is_some() {
                queued.visible_at_ms = queued.visible_at_ms.min(now);
                recovery.released_leases += 1;
                self.t
                    .jobs
                    .insert(&key, encode(&queued))
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
            }
            index.put(queued.job.video_id, queued.visible_at_ms, false);
            recovery.jobs += 1;
        }
        recovery.dead = self.t.dead.len() as u64;
        index.counts.add_dead(recovery.dead);
        Ok(recovery)
    }

    fn load_job(&self, id: VideoId) -> Result<Option<QueuedJob>, QueueError> {
        match self.t.jobs.get(be(id)).map_err(qbackend)? {
            Some(bytes) => Ok(Some(qdecode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The job if `token` is its current lease.
    fn leased_job(&self, id: VideoId, token: &str) -> Result<QueuedJob, QueueError> {
        let queued = self.load_job(id)?.ok_or(QueueError::NotFound)?;
        if queued.lease.as_deref() != Some(token) {
            return Err(QueueError::InvalidToken);
        }
        Ok(queued)
    }

    fn store_job(&self, queued: &QueuedJob) -> Result<(), QueueError> {
        self.t
            .jobs
            .insert(be(queued.job.video_id), encode(queued))
            .map_err(qbackend)?;
        Ok(())
    }

    /// Moves a live job to the dead letters in one transaction.
    fn kill(
        &self,
        index: &mut QueueIndex,
        queued: &QueuedJob,
        reason: &str,
    ) -> Result<(), QueueError> {
        let id = queued.job.video_id;
        let mut job = queued.job.clone();
        job.last_error = Some(reason.to_string());
        let letter = encode(&DeadLetter {
            job,
            reason: reason.to_string(),
            dead_at_ms: now_ms(),
        });
        let replaced = qtx_result((&self.t.jobs, &self.t.dead).transaction(|(jobs, dead)| {
            jobs.remove(&be(id))?;
            Ok(dead.insert(&be(id), letter.clone())?.is_some())
        }))?;
        index.remove(id);
        if !replaced {
            index.counts.add_dead(1);
        }
        Ok(())
    }

    fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        let mut index = self.lock_queue();
        let now = now_ms();
        let id = job.video_id;
        // One job per video: enqueueing a video that has one already (live or dead) changes
        // nothing.
        if self.t.dead.contains_key(be(id)).map_err(qbackend)? {
            return Ok(());
        }
        let swapped = self
            .t
            .jobs
            .compare_and_swap(
                be(id),
                None as Option<&[u8]>,
                Some(encode(&QueuedJob::fresh(job, now))),
            )
            .map_err(qbackend)?;
        if swapped.is_ok() {
            index.put(id, now, false);
        }
        Ok(())
    }

    fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        let mut index = self.lock_queue();
        let now = now_ms();
        while let Some(id) = index.next_visible(now) {
            let Some(mut queued) = self.load_job(id)? else {
                // The index and the records are changed together; heal rather than loop.
                index.remove(id);
                continue;
            };
            if queued.job.receive_count >= self.max_receives {
                let reason = format!(
                    "received {} times without success; last error: {}",
                    queued.job.receive_count,
                    queued.job.last_error.as_deref().unwrap_or("none recorded")
                );
                self.kill(&mut index, &queued, &reason)?;
                continue;
            }
            queued.job.receive_count += 1;
            queued.visible_at_ms = now + visibility.as_millis() as u64;
            let token = uuid::Uuid::new_v4().simple().to_string();
            queued.lease = Some(token.clone());
            self.store_job(&queued)?;
            index.put(id, queued.visible_at_ms, true);
            return Ok(Some(Lease {
                visible_again_at_ms: queued.visible_at_ms,
                job: queued.job,
                token,
            }));
        }
        Ok(None)
    }

    fn extend(&self, id: VideoId, token: &str, visibility: Duration) -> Result<u64, QueueError> {
        let mut index = self.lock_queue();
        let mut queued = self.leased_job(id, token)?;
        queued.visible_at_ms = now_ms() + visibility.as_millis() as u64;
        self.store_job(&queued)?;
        index.put(id, queued.visible_at_ms, true);
        Ok(queued.visible_at_ms)
    }

    fn ack(&self, id: VideoId, token: &str) -> Result<(), QueueError> {
        let mut index = self.lock_queue();
        self.leased_job(id, token)?;
        self.t.jobs.remove(be(id)).map_err(qbackend)?;
        index.remove(id);
        Ok(())
    }

    fn nack(
        &self,
        id: VideoId,
        token: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut index = self.lock_queue();
        let mut queued = self.leased_job(id, token)?;
        queued.visible_at_ms = now_ms() + delay.as_millis() as u64;
        queued.lease = None;
        queued.job.last_error = Some(reason.to_string());
        self.store_job(&queued)?;
        index.put(id, queued.visible_at_ms, false);
        Ok(())
    }

    fn dead_letter(&self, id: VideoId, token: &str, reason: &str) -> Result<(), QueueError> {
        let mut index = self.lock_queue();
        let queued = self.leased_job(id, token)?;
        self.kill(&mut index, &queued, reason)
    }

    fn cancel(&self, id: VideoId) -> Result<bool, QueueError> {
        let mut index = self.lock_queue();
        let (had_job, had_dead) =
            qtx_result((&self.t.jobs, &self.t.dead).transaction(|(jobs, dead)| {
                Ok((
                    jobs.remove(&be(id))?.is_some(),
                    dead.remove(&be(id))?.is_some(),
                ))
            }))?;
        index.remove(id);
        if had_dead {
            index.counts.remove_dead();
        }
        Ok(had_job || had_dead)
    }

    fn redrive(&self, id: VideoId) -> Result<(), QueueError> {
        let mut index = self.lock_queue();
        let now = now_ms();
        qtx_result((&self.t.jobs, &self.t.dead).transaction(|(jobs, dead)| {
            let Some(bytes) = dead.remove(&be(id))? else {
                return Err(ConflictableTransactionError::Abort(QueueError::NotFound));
            };
            let letter: DeadLetter =
                qdecode(&bytes).map_err(ConflictableTransactionError::Abort)?;
            let mut job = letter.job;
            job.receive_count = 0;
            jobs.insert(&be(id), encode(&QueuedJob::fresh(job, now)))?;
            Ok(())
        }))?;
        index.counts.remove_dead();
        index.put(id, now, false);
        Ok(())
    }
}

impl EngineError for QueueError {
    fn backend(message: String) -> Self {
        QueueError::Backend(message)
    }
    fn unconfirmed(message: String) -> Self {
        QueueError::Unconfirmed(message)
    }
}

#[async_trait]
impl JobQueue for SledEngine {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        self.mutate(move |inner| inner.enqueue(job)).await
    }

    async fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        self.mutate(move |inner| inner.receive(visibility)).await
    }

    async fn extend(
        &self,
        id: VideoId,
        token: &str,
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        let token = token.to_string();
        self.mutate(move |inner| inner.extend(id, &token, visibility))
            .await
    }

    async fn ack(&self, id: VideoId, token: &str) -> Result<(), QueueError> {
        let token = token.to_string();
        self.mutate(move |inner| inner.ack(id, &token)).await
    }

    async fn nack(
        &self,
        id: VideoId,
        token: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<(), QueueError> {
        let (token, reason) = (token.to_string(), reason.to_string());
        self.mutate(move |inner| inner.nack(id, &token, delay, &reason))
            .await
    }

    async fn dead_letter(&self, id: VideoId, token: &str, reason: &str) -> Result<(), QueueError> {
        let (token, reason) = (token.to_string(), reason.to_string());
        self.mutate(move |inner| inner.dead_letter(id, &token, &reason))
            .await
    }

    async fn cancel(&self, id: VideoId) -> Result<bool, QueueError> {
        self.mutate(move |inner| inner.cancel(id)).await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner
            .t
            .dead
            .iter()
            .map(|e| {
                let (_, v) = e.map_err(qbackend)?;
                qdecode(&v)
            })
            .collect()
    }

    async fn redrive(&self, id: VideoId) -> Result<(), QueueError> {
        self.mutate(move |inner| inner.redrive(id)).await
    }

    async fn redrive_all(&self) -> Result<u64, QueueError> {
        let ids: Vec<VideoId> = self
            .inner
            .t
            .dead
            .iter()
            .keys()
            .map(|k| k.map(|k| read_u64(&k)))
            .collect::<Result<_, _>>()
            .map_err(qbackend)?;
        self.mutate(move |inner| {
            let mut moved = 0;
            for id in ids {
                match inner.redrive(id) {
                    Ok(()) => moved += 1,
                    Err(QueueError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(moved)
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(self.inner.queue_counts.stats(now_ms()))
    }

    async fn job(&self, id: VideoId) -> Result<Option<Job>, QueueError> {
        if let Some(queued) = self.inner.load_job(id)? {
            return Ok(Some(queued.job));
        }
        if let Some(bytes) = self.inner.t.dead.get(be(id)).map_err(qbackend)? {
            let letter: DeadLetter = qdecode(&bytes)?;
            return Ok(Some(letter.job));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_tracks_visibility_and_leases() {
        let mut index = QueueIndex::default();
        index.put(1, 100, false);
        index.put(2, 50, false);
        assert_eq!(index.next_visible(49), None);
        assert_eq!(index.next_visible(60), Some(2));
        index.put(2, 1_000, true);
        assert_eq!(index.next_visible(60), None);
        assert_eq!(index.next_visible(100), Some(1));
        let stats = index.counts.stats(500);
        assert_eq!((stats.depth, stats.in_flight), (1, 1));
        // An expired lease counts as waiting again.
        assert_eq!(index.counts.stats(2_000).in_flight, 0);
        assert!(index.remove(2));
        assert!(!index.remove(2));
        assert_eq!(index.counts.stats(0).depth, 1);
    }
}
