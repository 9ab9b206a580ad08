//! Ingest: owns upload capacity and commits finished uploads.
//!
//! Admission happens before a single body byte is read: a slot is granted only while there is a
//! free upload slot, enough free disk and room in the job queue; otherwise the refusal carries a
//! `Retry-After`. The streaming itself happens in the HTTP handler (bytes never pass through the
//! mailbox); once the file is fsynced and probed, the handler sends it here to be committed:
//! renamed into blob storage, then the video record and its job are written in one durable step.
//! Only then does the client get its 201.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Reply;
use crate::domain::{MediaInfo, NewVideo, UserId, Video};
use crate::engine::blobs::original_key;
use crate::engine::{Engine, Job, StoreError};
use crate::health::{ActorHealth, ActorState};
use crate::load::{Load, MAX_RETRY_S};
use crate::upload::TempUpload;

/// Limits that decide admission.
#[derive(Debug, Clone)]
pub struct Admission {
    pub data_dir: PathBuf,
    pub min_free_disk_bytes: u64,
    pub max_queue_depth: u64,
    pub max_slots: usize,
    /// Drain rates, for the `Retry-After` of refusals.
    pub load: Arc<Load>,
}

/// Why an upload was refused before its body was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSlot { retry_after_s: u64 },
    DiskFull { retry_after_s: u64 },
    QueueFull { retry_after_s: u64 },
}

impl Refusal {
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Refusal::NoSlot { retry_after_s }
            | Refusal::DiskFull { retry_after_s }
            | Refusal::QueueFull { retry_after_s } => *retry_after_s,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSlot { .. } => "upload_slots",
            Refusal::DiskFull { .. } => "disk_full",
            Refusal::QueueFull { .. } => "queue_full",
        }
    }
}

/// Permission to stream one upload; the slot is free again when this is dropped.
#[derive(Debug)]
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    load: Arc<Load>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.load.slots_freed.record();
    }
}

/// A finished, fsynced and probed upload waiting to be committed. It carries its slot, so the
/// slot stays taken until the commit is over even if the client has gone.
#[derive(Debug)]
pub struct PreparedUpload {
    pub owner_id: UserId,
    pub title: String,
    pub file: TempUpload,
    pub media: MediaInfo,
    pub slot: UploadSlot,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("storing the file failed: {0}")]
    Blob(String),
    #[error("recording the upload failed: {0}")]
    Store(StoreError),
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RequestSlot {
    pub reply: Reply<Result<UploadSlot, Refusal>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CommitUpload {
    pub upload: PreparedUpload,
    pub reply: Reply<Result<(Video, Job), CommitError>>,
}

pub struct Ingest {
    engine: Engine,
    admission: Admission,
    /// Shared with earlier incarnations: permits held by live requests survive a restart.
    slots: Arc<Semaphore>,
    health: Arc<ActorHealth>,
    faults: Arc<crate::faults::Faults>,
}

impl Ingest {
    pub fn new(
        engine: Engine,
        admission: Admission,
        slots: Arc<Semaphore>,
        health: Arc<ActorHealth>,
        faults: Arc<crate::faults::Faults>,
    ) -> Self {
        Self {
            engine,
            admission,
            slots,
            health,
            faults,
        }
    }
}

impl Actor for Ingest {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        self.health.heartbeat();
        ctx.run_interval(Duration::from_millis(500), |act, _| act.health.heartbeat());
    }
}

impl Handler<RequestSlot> for Ingest {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: RequestSlot, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let admission = self.admission.clone();
        let slots = self.slots.clone();
        let faults = self.faults.clone();
        Box::pin(async move {
            let free = faults.free_disk_bytes(&admission.data_dir).unwrap_or(0);
            if free < admission.min_free_disk_bytes {
                // Nothing on this node frees disk by itself: an operator must act.
                return msg.reply.send(Err(Refusal::DiskFull {
                    retry_after_s: MAX_RETRY_S,
                }));
            }
            match engine.queue.stats().await {
                Ok(stats) if stats.depth >= admission.max_queue_depth => {
                    let retry_after_s = admission
                        .load
                        .queue_retry_after_s(stats.depth, admission.max_queue_depth);
                    return msg.reply.send(Err(Refusal::QueueFull { retry_after_s }));
                }
                _ => {}
            }
            match slots.try_acquire_owned() {
                Ok(permit) => msg.reply.send(Ok(UploadSlot {
                    _permit: permit,
                    load: admission.load.clone(),
                })),
                Err(_) => msg.reply.send(Err(Refusal::NoSlot {
                    retry_after_s: admission.load.refuse_for_slots(admission.max_slots),
                })),
            }
        })
    }
}

impl Handler<CommitUpload> for Ingest {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: CommitUpload, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let in_flight = self.health.start_work();
        Box::pin(async move {
            let _in_flight = in_flight;
            let result = commit(&engine, msg.upload).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "upload commit failed");
            }
            msg.reply.send(result);
        })
    }
}

async fn commit(engine: &Engine, upload: PreparedUpload) -> Result<(Video, Job), CommitError> {
    let PreparedUpload {
        owner_id,
        title,
        mut file,
        media,
        slot,
    } = upload;
    let id = engine
        .store
        .allocate_video_id()
        .await
        .map_err(CommitError::Store)?;
    let key = original_key(id);
    engine
        .blobs
        .put_file(&key, file.path())
        .await
        .map_err(|e| CommitError::Blob(e.to_string()))?;
    file.disarm();
    let task_id = uuid::Uuid::new_v4().to_string();
    let new = NewVideo {
        id,
        owner_id,
        title,
        original_key: key.clone(),
        original: media,
    };
    let committed = engine.store.commit_upload(new, task_id).await;
    drop(slot);
    match committed {
        Ok(done) => Ok(done),
        // The record may still reach the disk: its file must stay.
        Err(e @ StoreError::Unconfirmed(_)) => Err(CommitError::Store(e)),
        Err(e) => {
            // The record was not written: remove the stored file so no orphan remains.
            let _ = engine.blobs.delete(&key).await;
            Err(CommitError::Store(e))
        }
    }
}
