//! Resumable uploads through the node: created under the same budgets as a form upload, each
//! PATCH admitted like one (an upload slot, the free-disk watermark, before the body is read),
//! and the finished file committed exactly once through the same probe, policy and Ingest
//! actor. The bytes and offsets are `crate::resumable`'s.

use std::sync::Arc;

use super::admission::Refusal;
use super::base::Node;
use super::error::Error;
use super::uploads::{AcceptedUpload, AdmittedUpload};
use crate::domain::UserId;
use crate::rate_limit::Limited;
use crate::resumable::{Claim, Unavailable, Upload};
use crate::upload::{FileSink, TempUpload, UploadSlot};

/// What a client asks to create.
pub struct NewResumable {
    pub length: u64,
    pub title: String,
    pub filename: Option<String>,
}

/// Where an upload stands, as HEAD and PATCH answers tell it.
#[derive(Debug, Clone)]
pub struct ResumableState {
    pub id: String,
    pub offset: u64,
    pub length: u64,
    pub expires_at_ms: u64,
    /// The video it became, once committed.
    pub accepted: Option<AcceptedUpload>,
}

/// A PATCH the node agreed to receive: the upload's only writer, with an upload slot.
pub struct AdmittedPatch<'a> {
    admitted: AdmittedUpload<'a>,
    claim: Claim,
    start: u64,
}

/// A PATCH whose bytes are being written; [`WritingPatch::finish`] ends it.
pub struct WritingPatch<'a> {
    node: &'a Node,
    admitted: AdmittedUpload<'a>,
    upload: Arc<Upload>,
    start: u64,
}

impl From<Unavailable> for Error {
    fn from(e: Unavailable) -> Self {
        match e {
            Unavailable::NotFound => Error::UploadNotFound,
            Unavailable::Expired => Error::UploadExpired,
            Unavailable::Busy => Error::UploadBusy,
        }
    }
}

fn state_of(upload: &Upload) -> ResumableState {
    let info = upload.info();
    ResumableState {
        offset: upload.offset(),
        length: info.length,
        expires_at_ms: info.expires_at_ms,
        accepted: match (info.committed, info.video_id, info.task_id) {
            (true, Some(video_id), Some(task_id)) => Some(AcceptedUpload { video_id, task_id }),
            _ => None,
        },
        id: info.id,
    }
}

impl Node {
    /// Records a new resumable upload of `owner`: within the client's creation budget, the
    /// size limit, the player's count of incomplete uploads, and the free-disk watermark with
    /// the room every incomplete upload will still need.
    pub fn create_resumable(
        &self,
        owner: UserId,
        new: NewResumable,
        peer: std::net::IpAddr,
        headers: &http::HeaderMap,
    ) -> Result<ResumableState, Error> {
        let upload = &self.config.upload;
        if new.length > upload.max_bytes {
            return Err(Error::UploadTooLarge {
                max_bytes: upload.max_bytes,
            });
        }
        self.within_budget(Limited::UploadCreation, peer, headers)?;
        if self.resumable.open_uploads_of(owner) >= upload.max_resumable_per_player {
            return Err(Error::TooManyResumable {
                max: upload.max_resumable_per_player,
            });
        }
        let free = self
            .faults
            .free_disk_bytes(&self.config.storage.data_dir)
            .map_err(|e| Refusal::DiskUnknown(e.to_string()))?;
        let needed = self.resumable.reserved_bytes() + new.length;
        let min_bytes = self.uploads.min_free_disk_bytes;
        if free.saturating_sub(needed) < min_bytes {
            return Err(Refusal::DiskFull {
                free_bytes: free.saturating_sub(needed),
                min_bytes,
            }
            .into());
        }
        let created = self
            .resumable
            .create(
                owner,
                new.length,
                new.title,
                new.filename,
                upload.resumable_ttl_s.saturating_mul(1000),
            )
            .map_err(|e| Error::Internal(format!("recording a resumable upload: {e}")))?;
        Ok(state_of(&created))
    }

    /// Where the upload stands. A complete upload that is not committed yet (its last PATCH
    /// found the node busy, or the node stopped in between) is committed now.
    pub async fn resumable_state(&self, owner: UserId, id: &str) -> Result<ResumableState, Error> {
        let upload = self.resumable.get(id, owner)?;
        if upload.complete() && !upload.info().committed {
            let claim = self.resumable.claim(&upload)?;
            let admitted = self.admit_upload(owner).await?;
            self.commit_resumable(&upload, admitted, claim).await?;
        }
        Ok(state_of(&upload))
    }

    /// Admits a PATCH at `offset` carrying `declared` bytes (when the client said) in `slot`
    /// (taken first, see [`Node::upload_slot`]): the offset must be the durable one and no
    /// other request may be writing. Decided before the body is read.
    pub async fn admit_patch(
        &self,
        slot: UploadSlot,
        owner: UserId,
        id: &str,
        offset: u64,
        declared: Option<u64>,
    ) -> Result<AdmittedPatch<'_>, Error> {
        let upload = self.resumable.get(id, owner)?;
        let claim = self.resumable.claim(&upload)?;
        let durable = upload.offset();
        if offset != durable {
            return Err(Error::OffsetMismatch { offset: durable });
        }
        let remaining = upload.info().length - durable;
        if declared.is_some_and(|len| len > remaining) {
            return Err(Error::PastUploadLength { remaining });
        }
        let admitted = self.admit_upload_in(slot, owner).await?;
        Ok(AdmittedPatch {
            admitted,
            claim,
            start: durable,
        })
    }

    /// Ends an upload: its bytes are removed. A committed upload's video stays.
    pub fn terminate_resumable(&self, owner: UserId, id: &str) -> Result<(), Error> {
        let upload = self.resumable.get(id, owner)?;
        let claim = self.resumable.claim(&upload)?;
        self.resumable.remove(claim.upload());
        Ok(())
    }

    /// Commits a complete upload once: its video's identity is chosen and recorded first, so
    /// that a commit repeated after a crash finds the video it made instead of making another.
    /// A file the probe or the policy refuses is removed with its upload.
    async fn commit_resumable(
        &self,
        upload: &Arc<Upload>,
        admitted: AdmittedUpload<'_>,
        claim: Claim,
    ) -> Result<AcceptedUpload, Error> {
        let info = upload.info();
        if let (true, Some(video_id), Some(task_id)) =
            (info.committed, info.video_id, &info.task_id)
        {
            return Ok(AcceptedUpload {
                video_id,
                task_id: task_id.clone(),
            });
        }
        let record = |e: std::io::Error| Error::Internal(format!("recording an upload: {e}"));
        let (video_id, task_id) = match (info.video_id, info.task_id.clone()) {
            (Some(video_id), Some(task_id)) => {
                if self.engine.store.video(video_id).await?.is_some() {
                    upload.update(|i| i.committed = true).map_err(record)?;
                    let _ = std::fs::remove_file(upload.data_path());
                    return Ok(AcceptedUpload { video_id, task_id });
                }
                (video_id, task_id)
            }
            _ => {
                let video_id = self.engine.store.allocate_video_id().await?;
                let task_id = uuid::Uuid::new_v4().to_string();
                upload
                    .update(|i| {
                        i.video_id = Some(video_id);
                        i.task_id = Some(task_id.clone());
                    })
                    .map_err(record)?;
                (video_id, task_id)
            }
        };
        // The commit takes a file of its own (a second name for the data), so that the data
        // stays for a retry until the commit is known to be done.
        let file = TempUpload::new_in(&self.config.storage.data_dir);
        std::fs::hard_link(upload.data_path(), file.path())
            .map_err(|e| Error::Internal(format!("linking the upload for its commit: {e}")))?;
        match admitted
            .commit_as(info.title.clone(), file, video_id, task_id)
            .await
        {
            Ok(accepted) => {
                upload.update(|i| i.committed = true).map_err(record)?;
                let _ = std::fs::remove_file(upload.data_path());
                drop(claim);
                Ok(accepted)
            }
            Err(e @ (Error::InvalidMedia(_) | Error::Policy(_))) => {
                self.resumable.remove(claim.upload());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

impl<'a> AdmittedPatch<'a> {
    /// Bytes the upload can still take.
    pub fn remaining(&self) -> u64 {
        let upload = self.claim.upload();
        upload.info().length - upload.offset()
    }

    /// Starts writing at the durable offset: the sink keeps and syncs whatever it is given,
    /// even if the request goes away.
    pub fn start(self, node: &'a Node) -> (FileSink<u64>, WritingPatch<'a>) {
        let upload = self.claim.upload().clone();
        let sink = self.claim.sink();
        (
            sink,
            WritingPatch {
                node,
                admitted: self.admitted,
                upload,
                start: self.start,
            },
        )
    }
}

impl WritingPatch<'_> {
    /// The offset the PATCH started at.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Cuts off what this PATCH wrote (its checksum did not match), once its writer is done.
    pub async fn discard(self) -> Result<ResumableState, Error> {
        let claim = self.claim_when_written().await?;
        claim
            .truncate(self.start)
            .map_err(|e| Error::Internal(format!("discarding a PATCH: {e}")))?;
        Ok(state_of(&self.upload))
    }

    /// After the sink finished: commits the upload if it is complete. The flag says whether
    /// this PATCH committed it.
    pub async fn finish(self) -> Result<(ResumableState, bool), Error> {
        if self.upload.complete() && !self.upload.info().committed {
            let claim = self.claim_when_written().await?;
            let upload = self.upload.clone();
            self.node
                .commit_resumable(&upload, self.admitted, claim)
                .await?;
            return Ok((state_of(&upload), true));
        }
        Ok((state_of(&self.upload), false))
    }

    /// The claim again, once the writer thread has let it go (it does right after its sync).
    async fn claim_when_written(&self) -> Result<Claim, Error> {
        for _ in 0..100 {
            if let Ok(claim) = self.node.resumable.claim(&self.upload) {
                return Ok(claim);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(Error::UploadBusy)
    }
}
