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

use std::time::Duration;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::sled_codec::{be, decode, encode, read_u64};
use super::sled_engine::{Inner, Recovery, SledEngine};
use super::sled_jobs::{QueueIndex, QueuedJob};
use crate::domain::{now_ms, VideoId};
use crate::engine::queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
use crate::engine::store::StoreError;

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

    fn import_dead(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let index = self.lock_queue();
        let id = letter.job.video_id;
        let bytes = encode(&letter);
        let inserted = qtx_result((&self.t.jobs, &self.t.dead).transaction(|(jobs, dead)| {
            if jobs.get(be(id))?.is_some() || dead.get(be(id))?.is_some() {
                return Ok(false);
            }
            dead.insert(&be(id), bytes.clone())?;
            Ok(true)
        }))?;
        if inserted {
            index.counts.add_dead(1);
        }
        Ok(())
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

    async fn import_dead(&self, letter: DeadLetter) -> Result<(), QueueError> {
        self.mutate(move |inner| inner.import_dead(letter)).await
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
