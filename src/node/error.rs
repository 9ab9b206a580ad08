//! What a verb of the node can fail with. Typed in the platform's words; the HTTP layer maps
//! each to a status in one place (`http/error.rs`).

use crate::actors::CallError;
use crate::auth::AuthError;
use crate::engine::probe::ProbeError;
use crate::engine::{BlobError, QueueError, StoreError};
use crate::media::OpenError;
use crate::rate_limit::OverBudget;
use crate::upload::{CommitError, PolicyViolation};

use super::admission::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    /// An upload refused before its body was read.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The uploaded file is not an MP4 the node can read.
    #[error(transparent)]
    InvalidMedia(ProbeError),
    /// A readable MP4 outside the upload policy.
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// No thread took the probe up in time: the node is busy, the file may be fine.
    #[error("no thread was free to probe the upload")]
    ProbeBusy,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("invalid administration token")]
    NotAdmin,
    /// What was asked for does not exist on this node (administration or fault injection not
    /// enabled, an actor it does not run).
    #[error("not available on this node")]
    Absent,
    #[error("no such media")]
    NoMedia,
    #[error("every stream permit is taken")]
    StreamsBusy { retry_after_s: u64 },
    #[error("the link has expired")]
    LinkExpired,
    #[error("the link is not valid")]
    LinkInvalid,
    #[error("no such dead letter")]
    NoDeadLetter,
    /// An actor could not take the request (mailbox full, restarting, too slow).
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_s: u64 },
    /// No resumable upload by that id for this player.
    #[error("no such upload")]
    UploadNotFound,
    #[error("the upload has expired")]
    UploadExpired,
    /// Another request is writing the upload.
    #[error("the upload is being written by another request")]
    UploadBusy,
    /// A PATCH that does not start where the upload stands.
    #[error("the upload is at offset {offset}")]
    OffsetMismatch { offset: u64 },
    /// More bytes than the upload has left.
    #[error("the upload has {remaining} bytes left")]
    PastUploadLength { remaining: u64 },
    /// A declared length over `upload.max_bytes`.
    #[error("the upload is larger than {max_bytes} bytes")]
    UploadTooLarge { max_bytes: u64 },
    /// The player has as many incomplete uploads as allowed.
    #[error("too many incomplete uploads (at most {max})")]
    TooManyResumable { max: usize },
    /// The bytes of a PATCH do not have the checksum the client gave.
    #[error("the checksum does not match")]
    ChecksumMismatch,
    #[error("{0}")]
    Internal(String),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        let retry_after_s = match e {
            CallError::Full(_) => 1,
            CallError::Down(_) | CallError::Timeout(_) => 2,
        };
        Error::Unavailable {
            reason: e.to_string(),
            retry_after_s,
        }
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NotFound => Error::NoMedia,
            OpenError::Busy { retry_after_s } => Error::StreamsBusy { retry_after_s },
            OpenError::Failed(cause) => Error::Internal(cause),
            OpenError::Unavailable(reason) => Error::Unavailable {
                reason,
                retry_after_s: 5,
            },
        }
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => Error::Store(e),
            CommitError::Blob(BlobError::Unavailable(reason)) => Error::Unavailable {
                reason: format!("the media store is unavailable: {reason}"),
                retry_after_s: 5,
            },
            CommitError::Blob(e) => Error::Internal(e.to_string()),
        }
    }
}

impl From<ProbeError> for Error {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Io(cause) => Error::Internal(format!("probing the upload: {cause}")),
            other => Error::InvalidMedia(other),
        }
    }
}
