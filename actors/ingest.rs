//! Ingest: commits finished uploads.
//!
//! Admission (slots, free disk, queue depth) is decided by the node before a single body byte
//! is read, and the bytes stream from the socket to a temp file in the HTTP handler, never
//! through the mailbox. Once the file is fsynced and probed it is sent here to be committed:
//! renamed into blob storage, then the video record and its job are written in one durable
//! step. Only then does the client get its 201.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::call::Reply;
use crate::domain::{NewVideo, Video};
use crate::engine::blobs::original_key;
use crate::engine::{Engine, Job, StoreError};
use crate::health::{ActorHealth, ActorState};
use crate::upload::{CommitError, PreparedUpload};

#[derive(Message)]
#[rtype(result = "()")]
pub struct CommitUpload {
    pub upload: PreparedUpload,
    pub reply: Reply<Result<(Video, Job), CommitError>>,
}

pub struct Ingest {
    engine: Engine,
    health: Arc<ActorHealth>,
    /// This node's name among the platform's: the owner of its uploads in progress.
    node_id: Arc<str>,
}

impl Ingest {
    pub fn new(engine: Engine, health: Arc<ActorHealth>, node_id: Arc<str>) -> Self {
        Self {
            engine,
            health,
            node_id,
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

impl Handler<CommitUpload> for Ingest {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: CommitUpload, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let node_id = self.node_id.clone();
        let in_flight = self.health.start_work();
        Box::pin(async move {
            let _in_flight = in_flight;
            let result = commit(&engine, &node_id, msg.upload).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "upload commit failed");
            }
            msg.reply.send(result);
        })
    }
}

async fn commit(
    engine: &Engine,
    node_id: &str,
    upload: PreparedUpload,
) -> Result<(Video, Job), CommitError> {
    let PreparedUpload {
        owner_id,
        title,
        mut file,
        media,
        slot,
        identity,
    } = upload;
    let (id, task_id) = match identity {
        Some(chosen) => chosen,
        None => (
            engine
                .store
                .allocate_video_id()
                .await
                .map_err(CommitError::Store)?,
            uuid::Uuid::new_v4().to_string(),
        ),
    };
    let key = original_key(id);
    // On a shared store, noted first: should this node die before the commit, another deletes
    // the file no record will refer to.
    engine
        .store
        .intend_blob(&key, node_id)
        .await
        .map_err(CommitError::Store)?;
    if let Err(e) = engine.blobs.put_file(&key, file.path()).await {
        let _ = engine.store.settle_blob(&key).await;
        return Err(CommitError::Blob(e));
    }
    file.disarm();
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
            if engine.blobs.delete(&key).await.is_ok() {
                let _ = engine.store.settle_blob(&key).await;
            }
            Err(CommitError::Store(e))
        }
    }
}

super::call::accepts_injected_faults!(Ingest);
