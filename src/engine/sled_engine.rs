//! The embedded engine: store and job queue in one sled database.
//!
//! Keeping the queue in the same database as the records is what lets an upload commit its video
//! record and its job in one transaction: there is no moment where one exists without the other.
//! Secondary indexes (a player's videos, published videos, rankings) are updated in the same
//! transactions as the records they index, so listings and rankings are exact without a cache.
//!
//! Three facts about sled 0.34 shape this module (measured on the target disk):
//! - a write is durable only after `Db::flush`; flushes go through the [`GroupCommit`], so
//!   concurrent writers share one fsync;
//! - the cost of a flush grows with the number of *atomic batches* (transactions) it covers,
//!   while plain single-key writes are nearly free to flush (`docs/benchmarks.md`). The hot queue
//!   operations are therefore single-key writes (see `sled_queue.rs`), and transactions are kept
//!   for the multi-record steps that need them (upload commit, vote, publish, delete);
//! - transactions take a process-wide lock that waits for a flush in progress. Every mutation
//!   therefore runs on a blocking thread ([`SledEngine::mutate`]), never on a runtime worker.
//!
//! Writers that touch the rankings, and every queue mutation, are serialised by short in-process
//! locks held only around the sled work: sled's optimistic transactions would otherwise retry in
//! storms when hundreds of votes hit one video.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
};
use sled::Transactional;

use super::sled_codec::{backend, be, decode, encode, read_u64, rev, EngineError};
use super::sled_jobs::{QueueCounts, QueueIndex, QueuedJob};
use crate::domain::{
    fold_name, now_ms, now_ts, NewUser, NewVideo, Page, ProcessingState, Publication, RankedPlayer,
    User, UserId, Video, VideoId, VideoStatus,
};
use crate::engine::commit::GroupCommit;
use crate::engine::queue::Job;
use crate::engine::store::{Store, StoreError};

const NEXT_USER_ID: &[u8] = b"next_user_id";
const NEXT_VIDEO_ID: &[u8] = b"next_video_id";

pub(super) struct Trees {
    pub meta: sled::Tree,
    pub users: sled::Tree,
    pub users_by_email: sled::Tree,
    pub videos: sled::Tree,
    pub videos_by_owner: sled::Tree,
    pub published: sled::Tree,
    pub published_by_city: sled::Tree,
    pub votes: sled::Tree,
    pub player_votes: sled::Tree,
    pub ranking: sled::Tree,
    pub ranking_by_city: sled::Tree,
    /// Live jobs (queued or leased), by video id.
    pub jobs: sled::Tree,
    /// Dead letters, by video id.
    pub dead: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            meta: db.open_tree("meta")?,
            users: db.open_tree("users")?,
            users_by_email: db.open_tree("users_by_email")?,
            videos: db.open_tree("videos")?,
            videos_by_owner: db.open_tree("videos_by_owner")?,
            published: db.open_tree("published")?,
            published_by_city: db.open_tree("published_by_city")?,
            votes: db.open_tree("votes")?,
            player_votes: db.open_tree("player_votes")?,
            ranking: db.open_tree("ranking")?,
            ranking_by_city: db.open_tree("ranking_by_city")?,
            jobs: db.open_tree("queue_jobs")?,
            dead: db.open_tree("queue_dead")?,
        })
    }
}

/// What recovery found and did when the database was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub jobs: u64,
    pub dead: u64,
    /// Leases that were held when the process stopped and are now visible again.
    pub released_leases: u64,
}

/// Everything the engine owns; shared with the blocking threads that run mutations.
pub(super) struct Inner {
    pub db: sled::Db,
    pub t: Trees,
    pub commit: GroupCommit,
    pub max_receives: u32,
    pub queue: Mutex<QueueIndex>,
    /// The queue's figures, shared with the index, read without the queue lock.
    pub queue_counts: Arc<QueueCounts>,
    /// Serialises every read-modify-write of a video record (votes, publication, processing
    /// state, deletion) and the rankings that change with them.
    pub video_lock: Mutex<()>,
}

pub struct SledEngine {
    pub(super) inner: Arc<Inner>,
    recovery: Recovery,
}

/// Length-prefixed folded city, so that no city's key is a prefix of another's.
fn city_prefix(city: &str) -> Vec<u8> {
    let folded = fold_name(city);
    let mut key = Vec::with_capacity(folded.len() + 2);
    key.extend_from_slice(&(folded.len() as u16).to_be_bytes());
    key.extend_from_slice(folded.as_bytes());
    key
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn tx_decode<T: DeserializeOwned>(bytes: &[u8]) -> ConflictableTransactionResult<T, StoreError> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

fn abort<T>(e: StoreError) -> ConflictableTransactionResult<T, StoreError> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_result<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

fn ranking_keys(city: &[u8], votes: u64, user: UserId) -> (Vec<u8>, Vec<u8>) {
    (
        cat(&[&rev(votes), &be(user)]),
        cat(&[city, &rev(votes), &be(user)]),
    )
}

/// The page cache of [`SledEngine::open`] (the configured default).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledEngine {
    /// Opens (or creates) the database under `dir` with the default page cache.
    pub fn open(
        dir: &Path,
        max_receives: u32,
        commit_timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with_cache(dir, max_receives, commit_timeout, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database under `dir` and runs queue recovery. sled's own
    /// default cache is 1 GiB, half of a small instance; the cache is bounded here instead.
    pub fn open_with_cache(
        dir: &Path,
        max_receives: u32,
        commit_timeout: Duration,
        cache_bytes: u64,
    ) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(backend)?;
        let t = Trees::open(&db).map_err(backend)?;
        let commit = GroupCommit::start(db.clone(), commit_timeout);
        let index = QueueIndex::default();
        let inner = Inner {
            db,
            t,
            commit,
            max_receives,
            queue_counts: index.counts.clone(),
            queue: Mutex::new(index),
            video_lock: Mutex::new(()),
        };
        let recovery = inner.recover_queue()?;
        inner
            .commit
            .flush_now()
            .map_err(|e| backend(e.to_string()))?;
        Ok(Arc::new(SledEngine {
            inner: Arc::new(inner),
            recovery,
        }))
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Number of fsyncs made by the group commit so far.
    pub fn flush_count(&self) -> u64 {
        self.inner.commit.flush_count()
    }

    /// Time spent in group-commit fsyncs so far.
    pub fn flush_time(&self) -> Duration {
        self.inner.commit.flush_time()
    }

    /// Runs `change` on a blocking thread, then waits until it is durable. A change that fails
    /// must not have written anything; a change that was applied but whose flush failed is
    /// reported as `Unconfirmed`, never as a plain failure.
    pub(super) async fn mutate<T, E>(
        &self,
        change: impl FnOnce(&Inner) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: EngineError + Send + 'static,
    {
        let value = self.on_blocking_thread(change).await?;
        self.inner
            .commit
            .durable()
            .await
            .map_err(|e| E::unconfirmed(e.to_string()))?;
        Ok(value)
    }

    /// Runs sled work that needs no durability wait on a blocking thread.
    pub(super) async fn on_blocking_thread<T, E>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: EngineError + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| E::backend(format!("store task failed: {e}")))?
    }
}

impl Inner {
    pub fn lock_queue(&self) -> std::sync::MutexGuard<'_, QueueIndex> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_videos(&self) -> std::sync::MutexGuard<'_, ()> {
        self.video_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self, key: &[u8]) -> Result<u64, StoreError> {
        let value = self
            .t
            .meta
            .update_and_fetch(key, |old| {
                let next = old.map(read_u64).unwrap_or(0) + 1;
                Some(be(next).to_vec())
            })
            .map_err(backend)?
            .ok_or_else(|| backend("id counter vanished"))?;
        Ok(read_u64(&value))
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn load_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Self::get(&self.t.users, &be(id))
    }

    fn load_video(&self, id: VideoId) -> Result<Option<Video>, StoreError> {
        Self::get(&self.t.videos, &be(id))
    }

    /// Moves the id counter at `key` up to `id` at least, so fresh ids stay above it.
    fn raise_id(&self, key: &[u8], id: u64) -> Result<(), StoreError> {
        self.t
            .meta
            .update_and_fetch(key, |old| {
                Some(be(old.map(read_u64).unwrap_or(0).max(id)).to_vec())
            })
            .map_err(backend)?;
        Ok(())
    }

    fn import_user(&self, user: &User) -> Result<bool, StoreError> {
        let email = user.email.trim().to_lowercase();
        let id = user.id;
        let bytes = encode(user);
        let inserted = tx_result((&self.t.users, &self.t.users_by_email).transaction(
            |(users, by_email)| {
                if users.get(be(id))?.is_some() {
                    return Ok(false);
                }
                if by_email.get(email.as_bytes())?.is_some() {
                    return abort(StoreError::EmailTaken);
                }
                by_email.insert(email.as_bytes(), &be(id))?;
                users.insert(&be(id), bytes.clone())?;
                Ok(true)
            },
        ))?;
        self.raise_id(NEXT_USER_ID, id)?;
        Ok(inserted)
    }

    fn import_video(&self, video: &Video) -> Result<bool, StoreError> {
        let mut video = video.clone();
        video.votes = 0;
        let published = video.status == VideoStatus::Processed;
        let city = match published {
            true => city_prefix(
                &self
                    .load_user(video.owner_id)?
                    .ok_or(StoreError::UserNotFound)?
                    .city,
            ),
            false => Vec::new(),
        };
        let bytes = encode(&video);
        let _guard = self.lock_videos();
        let trees = (
            &self.t.videos,
            &self.t.videos_by_owner,
            &self.t.published,
            &self.t.published_by_city,
            &self.t.player_votes,
            &self.t.ranking,
            &self.t.ranking_by_city,
        );
        let inserted = tx_result(trees.transaction(
            |(
                videos,
                by_owner,
                published_tree,
                by_city,
                player_votes,
                ranking,
                ranking_by_city,
            )| {
                if videos.get(be(video.id))?.is_some() {
                    return Ok(false);
                }
                videos.insert(&be(video.id), bytes.clone())?;
                by_owner.insert(cat(&[&be(video.owner_id), &rev(video.id)]), &[])?;
                if published {
                    published_tree.insert(&rev(video.id), &be(video.owner_id))?;
                    by_city.insert(cat(&[&city, &rev(video.id)]), &[])?;
                    if player_votes.get(be(video.owner_id))?.is_none() {
                        player_votes.insert(&be(video.owner_id), &be(0))?;
                        let (all, in_city) = ranking_keys(&city, 0, video.owner_id);
                        ranking.insert(all, &[])?;
                        ranking_by_city.insert(in_city, &[])?;
                    }
                }
                Ok(true)
            },
        ))?;
        self.raise_id(NEXT_VIDEO_ID, video.id)?;
        Ok(inserted)
    }

    /// Up to `limit` records of `tree` whose keys come after `after`, decoded.
    fn page_after<T: DeserializeOwned>(
        tree: &sled::Tree,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        use std::ops::Bound;
        tree.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|entry| {
                let (_, value) = entry.map_err(backend)?;
                decode(&value)
            })
            .collect()
    }

    fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let email = user.email.trim().to_lowercase();
        if self
            .t
            .users_by_email
            .contains_key(email.as_bytes())
            .map_err(backend)?
        {
            return Err(StoreError::EmailTaken);
        }
        let id = self.next_id(NEXT_USER_ID)?;
        let record = User {
            id,
            first_name: user.first_name,
            last_name: user.last_name,
            email: email.clone(),
            password_hash: user.password_hash,
            city: user.city,
            country: user.country,
            created_at: now_ts(),
        };
        let bytes = encode(&record);
        tx_result(
            (&self.t.users, &self.t.users_by_email).transaction(|(users, by_email)| {
                if by_email.get(email.as_bytes())?.is_some() {
                    return abort(StoreError::EmailTaken);
                }
                by_email.insert(email.as_bytes(), &be(id))?;
                users.insert(&be(id), bytes.clone())?;
                Ok(())
            }),
        )?;
        Ok(record)
    }

    fn commit_upload(&self, new: NewVideo, task_id: String) -> Result<(Video, Job), StoreError> {
        let now = now_ms();
        let video = Video {
            id: new.id,
            owner_id: new.owner_id,
            title: new.title,
            status: VideoStatus::Uploaded,
            progress: 0,
            uploaded_at: (now / 1000) as i64,
            processed_at: None,
            task_id: task_id.clone(),
            original_key: new.original_key.clone(),
            original: new.original,
            processed_key: None,
            poster_key: None,
            content_hash: None,
            processed_duration_s: None,
            poster_hash: None,
            votes: 0,
            error: None,
        };
        let job = Job {
            video_id: new.id,
            task_id,
            original_key: new.original_key,
            enqueued_at_ms: now,
            receive_count: 0,
            last_error: None,
        };
        let video_bytes = encode(&video);
        let job_bytes = encode(&QueuedJob::fresh(job.clone(), now));
        let mut index = self.lock_queue();
        tx_result(
            (&self.t.videos, &self.t.videos_by_owner, &self.t.jobs).transaction(
                |(videos, by_owner, jobs)| {
                    if videos.get(be(video.id))?.is_some() {
                        return abort(backend("video id reused"));
                    }
                    videos.insert(&be(video.id), video_bytes.clone())?;
                    by_owner.insert(cat(&[&be(video.owner_id), &rev(video.id)]), &[])?;
                    jobs.insert(&be(video.id), job_bytes.clone())?;
                    Ok(())
                },
            ),
        )?;
        index.put(video.id, now, false);
        Ok((video, job))
    }

    fn delete_video(&self, id: VideoId, owner: UserId) -> Result<Video, StoreError> {
        // Lock order: videos, then queue.
        let _videos = self.lock_videos();
        let mut index = self.lock_queue();
        let trees = (
            &self.t.videos,
            &self.t.videos_by_owner,
            &self.t.jobs,
            &self.t.dead,
        );
        let (video, had_dead) = tx_result(trees.transaction(|(videos, by_owner, jobs, dead)| {
            let Some(bytes) = videos.get(be(id))? else {
                return abort(StoreError::VideoNotFound);
            };
            let video: Video = tx_decode(&bytes)?;
            if video.owner_id != owner {
                return abort(StoreError::NotOwner);
            }
            if video.status == VideoStatus::Processed {
                return abort(StoreError::AlreadyPublished);
            }
            videos.remove(&be(id))?;
            by_owner.remove(cat(&[&be(owner), &rev(id)]))?;
            jobs.remove(&be(id))?;
            let had_dead = dead.remove(&be(id))?.is_some();
            Ok((video, had_dead))
        }))?;
        index.remove(id);
        if had_dead {
            index.counts.remove_dead();
        }
        Ok(video)
    }

    fn publish_video(&self, id: VideoId, publication: Publication) -> Result<Video, StoreError> {
        let video = self.load_video(id)?.ok_or(StoreError::VideoNotFound)?;
        let owner = self
            .load_user(video.owner_id)?
            .ok_or(StoreError::UserNotFound)?;
        let city = city_prefix(&owner.city);
        let _guard = self.lock_videos();
        let trees = (
            &self.t.videos,
            &self.t.published,
            &self.t.published_by_city,
            &self.t.player_votes,
            &self.t.ranking,
            &self.t.ranking_by_city,
        );
        tx_result(trees.transaction(
            |(videos, published, published_by_city, player_votes, ranking, ranking_by_city)| {
                let Some(bytes) = videos.get(be(id))? else {
                    return abort(StoreError::VideoNotFound);
                };
                let mut video: Video = tx_decode(&bytes)?;
                if video.status == VideoStatus::Processed {
                    return Ok(video);
                }
                video.status = VideoStatus::Processed;
                video.progress = 100;
                video.processed_at = Some(now_ts());
                video.processed_key = Some(publication.processed_key.clone());
                video.poster_key = Some(publication.poster_key.clone());
                video.content_hash = Some(publication.content_hash.clone());
                video.processed_duration_s = Some(publication.duration_s);
                video.poster_hash = Some(publication.poster_hash.clone());
                video.error = None;
                videos.insert(&be(id), encode(&video))?;
                published.insert(&rev(id), &be(video.owner_id))?;
                published_by_city.insert(cat(&[&city, &rev(id)]), &[])?;
                if player_votes.get(be(video.owner_id))?.is_none() {
                    player_votes.insert(&be(video.owner_id), &be(0))?;
                    let (all, by_city) = ranking_keys(&city, 0, video.owner_id);
                    ranking.insert(all, &[])?;
                    ranking_by_city.insert(by_city, &[])?;
                }
                Ok(video)
            },
        ))
    }

    fn set_processing_state(
        &self,
        id: VideoId,
        state: ProcessingState,
    ) -> Result<bool, StoreError> {
        let _guard = self.lock_videos();
        let Some(mut video) = self.load_video(id)? else {
            return Ok(false);
        };
        if video.status == VideoStatus::Processed {
            return Ok(false);
        }
        match state {
            ProcessingState::Queued => {
                video.status = VideoStatus::Uploaded;
                video.progress = 0;
                video.error = None;
            }
            ProcessingState::Processing { progress } => {
                video.status = VideoStatus::Processing;
                video.progress = progress.min(99);
                video.error = None;
            }
            ProcessingState::Failed { reason } => {
                video.status = VideoStatus::Failed;
                video.progress = 0;
                video.error = Some(reason);
            }
        }
        // One record, one key: no transaction needed (and none of its flush cost).
        self.t
            .videos
            .insert(be(id), encode(&video))
            .map_err(backend)?;
        Ok(true)
    }

    fn vote(&self, video_id: VideoId, voter: UserId) -> Result<u64, StoreError> {
        let video = self
            .load_video(video_id)?
            .ok_or(StoreError::VideoNotFound)?;
        let owner = self
            .load_user(video.owner_id)?
            .ok_or(StoreError::UserNotFound)?;
        let city = city_prefix(&owner.city);
        let owner_id = owner.id;
        let _guard = self.lock_videos();
        let trees = (
            &self.t.votes,
            &self.t.videos,
            &self.t.player_votes,
            &self.t.ranking,
            &self.t.ranking_by_city,
        );
        tx_result(
            trees.transaction(|(votes, videos, player_votes, ranking, ranking_by_city)| {
                let Some(bytes) = videos.get(be(video_id))? else {
                    return abort(StoreError::VideoNotFound);
                };
                let mut video: Video = tx_decode(&bytes)?;
                if video.status != VideoStatus::Processed {
                    return abort(StoreError::NotPublished);
                }
                let vote_key = cat(&[&be(video_id), &be(voter)]);
                if votes.get(&vote_key)?.is_some() {
                    return abort(StoreError::AlreadyVoted);
                }
                votes.insert(vote_key, &be(now_ts() as u64))?;
                video.votes += 1;
                videos.insert(&be(video_id), encode(&video))?;
                let before = player_votes
                    .get(be(owner_id))?
                    .map(|v| read_u64(&v))
                    .unwrap_or(0);
                let (old_all, old_city) = ranking_keys(&city, before, owner_id);
                ranking.remove(old_all)?;
                ranking_by_city.remove(old_city)?;
                let (new_all, new_city) = ranking_keys(&city, before + 1, owner_id);
                ranking.insert(new_all, &[])?;
                ranking_by_city.insert(new_city, &[])?;
                player_votes.insert(&be(owner_id), &be(before + 1))?;
                Ok(video.votes)
            }),
        )
    }
}

#[async_trait]
impl Store for SledEngine {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.mutate(move |inner| inner.create_user(user)).await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.inner.load_user(id)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.trim().to_lowercase();
        match self
            .inner
            .t
            .users_by_email
            .get(email.as_bytes())
            .map_err(backend)?
        {
            Some(id) => self.inner.load_user(read_u64(&id)),
            None => Ok(None),
        }
    }

    async fn allocate_video_id(&self) -> Result<VideoId, StoreError> {
        // A single-key update, made durable by the commit of the record that uses the id. If the
        // process dies first, the id may be handed out again, but nothing durable refers to it
        // (an original stored under it is an orphan removed at startup).
        self.on_blocking_thread(|inner| inner.next_id(NEXT_VIDEO_ID))
            .await
    }

    async fn commit_upload(
        &self,
        new: NewVideo,
        task_id: String,
    ) -> Result<(Video, Job), StoreError> {
        self.mutate(move |inner| inner.commit_upload(new, task_id))
            .await
    }

    async fn video(&self, id: VideoId) -> Result<Option<Video>, StoreError> {
        self.inner.load_video(id)
    }

    async fn videos_of(&self, owner: UserId) -> Result<Vec<Video>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.t.videos_by_owner.scan_prefix(be(owner)) {
            let (key, _) = entry.map_err(backend)?;
            let id = u64::MAX - read_u64(&key[8..16]);
            if let Some(video) = self.inner.load_video(id)? {
                out.push(video);
            }
        }
        Ok(out)
    }

    async fn delete_video(&self, id: VideoId, owner: UserId) -> Result<Video, StoreError> {
        self.mutate(move |inner| inner.delete_video(id, owner))
            .await
    }

    async fn video_exists(&self, id: VideoId) -> Result<bool, StoreError> {
        self.inner.t.videos.contains_key(be(id)).map_err(backend)
    }

    async fn publish_video(
        &self,
        id: VideoId,
        publication: Publication,
    ) -> Result<Video, StoreError> {
        self.mutate(move |inner| inner.publish_video(id, publication))
            .await
    }

    async fn set_processing_state(
        &self,
        id: VideoId,
        state: ProcessingState,
    ) -> Result<bool, StoreError> {
        self.mutate(move |inner| inner.set_processing_state(id, state))
            .await
    }

    async fn vote(&self, video_id: VideoId, voter: UserId) -> Result<u64, StoreError> {
        self.mutate(move |inner| inner.vote(video_id, voter)).await
    }

    async fn public_videos(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<(Video, User)>, StoreError> {
        let t = &self.inner.t;
        let ids: Vec<VideoId> = match city {
            None => t
                .published
                .iter()
                .skip(page.offset as usize)
                .take(page.limit as usize)
                .map(|e| e.map(|(k, _)| u64::MAX - read_u64(&k)))
                .collect::<Result<_, _>>()
                .map_err(backend)?,
            Some(city) => {
                let prefix = city_prefix(city);
                t.published_by_city
                    .scan_prefix(&prefix)
                    .skip(page.offset as usize)
                    .take(page.limit as usize)
                    .map(|e| e.map(|(k, _)| u64::MAX - read_u64(&k[prefix.len()..])))
                    .collect::<Result<_, _>>()
                    .map_err(backend)?
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(video) = self.inner.load_video(id)? {
                if let Some(owner) = self.inner.load_user(video.owner_id)? {
                    out.push((video, owner));
                }
            }
        }
        Ok(out)
    }

    async fn rankings(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<RankedPlayer>, StoreError> {
        let t = &self.inner.t;
        let keys: Vec<(u64, UserId)> = match city {
            None => t
                .ranking
                .iter()
                .skip(page.offset as usize)
                .take(page.limit as usize)
                .map(|e| e.map(|(k, _)| (u64::MAX - read_u64(&k[..8]), read_u64(&k[8..16]))))
                .collect::<Result<_, _>>()
                .map_err(backend)?,
            Some(city) => {
                let prefix = city_prefix(city);
                let n = prefix.len();
                t.ranking_by_city
                    .scan_prefix(&prefix)
                    .skip(page.offset as usize)
                    .take(page.limit as usize)
                    .map(|e| {
                        e.map(|(k, _)| {
                            (
                                u64::MAX - read_u64(&k[n..n + 8]),
                                read_u64(&k[n + 8..n + 16]),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(backend)?
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for (index, (votes, user_id)) in keys.into_iter().enumerate() {
            // Users are never deleted; should one vanish, its row is left out, not an error.
            let Some(user) = self.inner.load_user(user_id)? else {
                continue;
            };
            out.push(RankedPlayer {
                position: page.offset + index as u64 + 1,
                user,
                votes,
            });
        }
        Ok(out)
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.db.flush().map(|_| ()).map_err(backend)
    }

    async fn export_users(&self, after: UserId, limit: usize) -> Result<Vec<User>, StoreError> {
        Inner::page_after(&self.inner.t.users, &be(after), limit)
    }

    async fn export_videos(&self, after: VideoId, limit: usize) -> Result<Vec<Video>, StoreError> {
        Inner::page_after(&self.inner.t.videos, &be(after), limit)
    }

    async fn export_votes(
        &self,
        after: (VideoId, UserId),
        limit: usize,
    ) -> Result<Vec<(VideoId, UserId)>, StoreError> {
        use std::ops::Bound;
        let after = cat(&[&be(after.0), &be(after.1)]);
        self.inner
            .t
            .votes
            .range::<&[u8], _>((Bound::Excluded(after.as_slice()), Bound::Unbounded))
            .take(limit)
            .map(|entry| {
                let (key, _) = entry.map_err(backend)?;
                Ok((read_u64(&key[..8]), read_u64(&key[8..16])))
            })
            .collect()
    }

    async fn import_user(&self, user: &User) -> Result<bool, StoreError> {
        let user = user.clone();
        self.mutate(move |inner| inner.import_user(&user)).await
    }

    async fn import_video(&self, video: &Video) -> Result<bool, StoreError> {
        let video = video.clone();
        self.mutate(move |inner| inner.import_video(&video)).await
    }
}
