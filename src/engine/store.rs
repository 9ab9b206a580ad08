//! The store of users, videos, votes and rankings.
//!
//! Every method that changes state returns only once the change is durable: callers acknowledge
//! a client right after, so the contract "acknowledged means on disk" lives here and cannot be
//! forgotten by a handler.

use async_trait::async_trait;

use crate::config::Role;
use crate::domain::{
    NewUser, NewVideo, Page, ProcessingState, Publication, RankedPlayer, User, UserId, Video,
    VideoId,
};
use crate::engine::queue::Job;

/// How many nodes of each kind the platform has now (a node of role `all` counts as both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub api: u64,
    pub worker: u64,
}

impl Membership {
    /// A platform of one node in `role`.
    pub fn alone(role: Role) -> Self {
        Self {
            api: role.serves_api() as u64,
            worker: role.processes() as u64,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("the email is already registered")]
    EmailTaken,
    #[error("no such video")]
    VideoNotFound,
    #[error("the video belongs to another player")]
    NotOwner,
    #[error("the video is published and cannot be deleted")]
    AlreadyPublished,
    #[error("the video is not published")]
    NotPublished,
    #[error("the user already voted for this video")]
    AlreadyVoted,
    #[error("no such user")]
    UserNotFound,
    #[error("store failure: {0}")]
    Backend(String),
    /// The database cannot be reached now: another try later may succeed.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The change was applied but could not be confirmed on disk (the flush failed or timed
    /// out): it may yet become durable. Callers must not undo what it refers to.
    #[error("the write could not be confirmed on disk: {0}")]
    Unconfirmed(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// A fresh, never reused video id.
    async fn allocate_video_id(&self) -> Result<VideoId, StoreError>;
    /// Writes the video record and its processing job in one durable step.
    async fn commit_upload(
        &self,
        video: NewVideo,
        task_id: String,
    ) -> Result<(Video, Job), StoreError>;
    async fn video(&self, id: VideoId) -> Result<Option<Video>, StoreError>;
    /// The player's videos, newest first.
    async fn videos_of(&self, owner: UserId) -> Result<Vec<Video>, StoreError>;
    /// Deletes the record and its job, unless published; returns the deleted record so the
    /// caller can remove its files.
    async fn delete_video(&self, id: VideoId, owner: UserId) -> Result<Video, StoreError>;
    /// Whether a video record exists with this original blob key's id (startup clean-up).
    async fn video_exists(&self, id: VideoId) -> Result<bool, StoreError>;

    /// Marks the video published with its outputs; the owner enters the rankings.
    async fn publish_video(
        &self,
        id: VideoId,
        publication: Publication,
    ) -> Result<Video, StoreError>;

    /// Records where processing of the video stands. Returns false, changing nothing, when the
    /// video is gone or already published.
    async fn set_processing_state(
        &self,
        id: VideoId,
        state: ProcessingState,
    ) -> Result<bool, StoreError>;

    /// Records one vote; returns the video's new vote count.
    async fn vote(&self, video: VideoId, voter: UserId) -> Result<u64, StoreError>;
    /// Published videos, newest first, with their owners; optionally of one city (folded).
    async fn public_videos(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<(Video, User)>, StoreError>;
    /// Players by votes descending, ties by user id; optionally of one city (folded).
    async fn rankings(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<RankedPlayer>, StoreError>;

    /// Flushes everything to disk (shutdown).
    fn flush_blocking(&self) -> Result<(), StoreError>;

    /// Copying a store (`showcase migrate --from --to`): the users with ids after `after`, in
    /// id order, at most `limit`.
    async fn export_users(&self, after: UserId, limit: usize) -> Result<Vec<User>, StoreError>;
    /// The videos with ids after `after`, in id order, at most `limit`.
    async fn export_videos(&self, after: VideoId, limit: usize) -> Result<Vec<Video>, StoreError>;
    /// The votes (video, voter) after `after`, in that order, at most `limit`.
    async fn export_votes(
        &self,
        after: (VideoId, UserId),
        limit: usize,
    ) -> Result<Vec<(VideoId, UserId)>, StoreError>;
    /// Writes a user copied from another store as it is (id, password hash, dates); returns
    /// false when one with its id is there already. Fresh ids stay above it.
    async fn import_user(&self, user: &User) -> Result<bool, StoreError>;
    /// Writes a video copied from another store as it is, but for its vote count, which the
    /// imported votes make; false when one with its id is there already. A published one
    /// enters the rankings.
    async fn import_video(&self, video: &Video) -> Result<bool, StoreError>;

    /// Whether the store can be reached now (readiness); an embedded one always can.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Notes that node `node` is storing blob `key` for an upload not yet committed; the
    /// upload's commit (or [`Store::settle_blob`]) removes the note. A store of one node's own
    /// keeps no notes: its start-up sweep finds such files.
    async fn intend_blob(&self, _key: &str, _node: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes the note of `key`.
    async fn settle_blob(&self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Claims the blobs noted by nodes not seen alive within `fresh` (or noted an hour ago):
    /// stored for uploads whose commit will never come. A commit that finds its note claimed
    /// fails, so the caller may delete the files.
    async fn abandoned_blobs(
        &self,
        _fresh: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Records that node `id`, of `role`, is alive now; the nodes of the platform seen alive
    /// within `fresh`. A store of one node's own has that node alone.
    async fn node_alive(
        &self,
        _id: &str,
        role: Role,
        _fresh: std::time::Duration,
    ) -> Result<Membership, StoreError> {
        Ok(Membership::alone(role))
    }
}
