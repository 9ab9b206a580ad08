//! An upload through the node: admitted before its body is read, then committed once its file
//! is fsynced: probed within a deadline, checked against the policy, and handed to the Ingest
//! actor, which stores the file and writes the record and its job in one durable step.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::admission::Refusal;
use super::base::{present, Node};
use super::error::Error;
use crate::actors::ingest::CommitUpload;
use crate::domain::{MediaInfo, UserId};
use crate::engine::probe::{probe_mp4, ProbeError};
use crate::events::{self, Event};
use crate::upload::{check_policy, PreparedUpload, ProbeRun, TempUpload, UploadSlot};

/// Longest wait for the probe of an upload. The probe's own budgets end any parser loop that
/// reads within a fraction of this; the deadline answers even for one that does not (its
/// thread is then abandoned, see `engine::probe`).
const PROBE_DEADLINE: Duration = Duration::from_millis(750);
/// Longest wait for a blocking thread to start on a probe.
const PROBE_START_WAIT: Duration = Duration::from_secs(2);
/// Time a commit may take beyond the store's confirmation timeout (the file's rename and
/// fsyncs).
const COMMIT_MARGIN: Duration = Duration::from_secs(20);

/// An upload the node agreed to receive: it holds an upload slot until it is committed or
/// dropped.
pub struct AdmittedUpload<'a> {
    node: &'a Node,
    owner: UserId,
    slot: UploadSlot,
}

/// A committed upload: its record and its job are durable.
#[derive(Debug, Clone)]
pub struct AcceptedUpload {
    pub video_id: u64,
    pub task_id: String,
}

impl Node {
    /// A slot for one upload by `owner`, or the reason there is none; decided before a byte of
    /// the body is read.
    pub async fn admit_upload(&self, owner: UserId) -> Result<AdmittedUpload<'_>, Error> {
        let slot = self.upload_slot()?;
        self.admit_upload_in(slot, owner).await
    }

    /// A free upload slot, or the refusal: the first question of an upload and the cheapest,
    /// asked before anything else about the request (its token included), so that a crowd
    /// the node cannot take in costs it as little as possible.
    pub fn upload_slot(&self) -> Result<UploadSlot, Error> {
        // The actor that will commit it must be there to take it, before the body is read.
        present(&self.actors.ingest)?.available()?;
        Ok(self.uploads.slot()?)
    }

    /// Admits an upload by `owner` in `slot`: the rest of admission (free disk, room in the
    /// queue, backends, stuck probes), asked with the slot in hand.
    pub async fn admit_upload_in(
        &self,
        slot: UploadSlot,
        owner: UserId,
    ) -> Result<AdmittedUpload<'_>, Error> {
        let slot = self.uploads.admit(&self.engine, slot).await?;
        Ok(AdmittedUpload {
            node: self,
            owner,
            slot,
        })
    }

    /// Probes an upload on a blocking thread, within [`PROBE_DEADLINE`] from the moment the
    /// thread starts on it; a probe that no thread takes up within [`PROBE_START_WAIT`] means
    /// the node is too busy, not that the file is bad.
    async fn probe(&self, path: &Path) -> Result<MediaInfo, Error> {
        let path = path.to_path_buf();
        let wedged = self.faults.wedged_probe();
        let run = Arc::new(ProbeRun::new(self.uploads.stuck_probes.clone()));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let probing = tokio::task::spawn_blocking({
            let run = run.clone();
            move || {
                let _ = started_tx.send(());
                if wedged {
                    crate::faults::wedge_this_thread();
                }
                let probed = probe_mp4(&path);
                run.finished();
                probed
            }
        });
        if !matches!(
            tokio::time::timeout(PROBE_START_WAIT, started).await,
            Ok(Ok(()))
        ) {
            return Err(Error::ProbeBusy);
        }
        match tokio::time::timeout(PROBE_DEADLINE, probing).await {
            Ok(joined) => Ok(joined.map_err(|e| Error::Internal(format!("probe task: {e}")))??),
            Err(_) => {
                run.abandon();
                events::emit(Event::ProbeAbandoned {
                    deadline_ms: PROBE_DEADLINE.as_millis() as u64,
                });
                Err(ProbeError::TooComplex.into())
            }
        }
    }
}

impl AdmittedUpload<'_> {
    /// A fresh temp file for the upload's bytes (removed when dropped unless committed).
    pub fn temp_file(&self) -> TempUpload {
        TempUpload::new_in(&self.node.uploads.data_dir)
    }

    /// Probes the fsynced `file`, checks the policy and commits the upload. Returns once the
    /// record and its job are durable; on any error the file is removed.
    pub async fn commit(self, title: String, file: TempUpload) -> Result<AcceptedUpload, Error> {
        self.commit_with(title, file, None).await
    }

    /// Like [`AdmittedUpload::commit`], under a video id and task id chosen beforehand.
    pub async fn commit_as(
        self,
        title: String,
        file: TempUpload,
        video_id: crate::domain::VideoId,
        task_id: String,
    ) -> Result<AcceptedUpload, Error> {
        self.commit_with(title, file, Some((video_id, task_id)))
            .await
    }

    async fn commit_with(
        self,
        title: String,
        file: TempUpload,
        identity: Option<(crate::domain::VideoId, String)>,
    ) -> Result<AcceptedUpload, Error> {
        let node = self.node;
        let media = node.probe(file.path()).await?;
        check_policy(&media, &node.config.upload)?;
        // A backend that stopped answering while the body came in: refused as a new upload
        // would be, before anything is stored (its job would wait in the outbox otherwise).
        if let Some(problem) = node.uploads.backends.problems().into_iter().next() {
            return Err(Refusal::BackendDown(problem).into());
        }
        let upload = PreparedUpload {
            owner_id: self.owner,
            title,
            file,
            media,
            slot: self.slot,
            identity,
        };
        // Admitted work: it waits for mailbox room, and for as long as a commit may take, so
        // that a commit is never reported failed while it is still going on.
        let timeout = Duration::from_secs(node.config.storage.commit_timeout_s) + COMMIT_MARGIN;
        let ingest = present(&node.actors.ingest)?;
        let (video, job) = ingest
            .call_admitted(|reply| CommitUpload { upload, reply }, timeout)
            .await??;
        Ok(AcceptedUpload {
            video_id: video.id,
            task_id: job.task_id,
        })
    }
}
