//! The embedded engine: store and job queue in one sled database.
//!
//! Keeping the queue in the same database as the records is what lets an upload commit its video
//! record and its job in one transaction: there is no moment where one exists without the other.
//! Secondary indexes (a player's videos, published videos, rankings) are updated in the same
//! transactions as the records they index, so listings and rankings are exact without a cache.
//!
//! Writers that touch the rankings, and every queue mutation, are serialised by short in-process
//! locks held only around the sled transaction (never across an await): sled's optimistic
//! transactions would otherwise retry in storms when hundreds of votes hit one video. Durability
//! is awaited after the lock is released, through the group commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use crate::domain::{
    fold_name, now_ms, now_ts, NewUser, NewVideo, Page, Publication, RankedPlayer, User, UserId,
    Video, VideoId, VideoStatus,
};
use crate::engine::commit::{CommitError, GroupCommit};
use crate::engine::queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
use crate::engine::store::{Store, StoreError};

const NEXT_USER_ID: &[u8] = b"next_user_id";
const NEXT_VIDEO_ID: &[u8] = b"next_video_id";

struct Trees {
    meta: sled::Tree,
    users: sled::Tree,
    users_by_email: sled::Tree,
    videos: sled::Tree,
    videos_by_owner: sled::Tree,
    published: sled::Tree,
    published_by_city: sled::Tree,
    votes: sled::Tree,
    player_votes: sled::Tree,
    ranking: sled::Tree,
    ranking_by_city: sled::Tree,
    jobs: sled::Tree,
    schedule: sled::Tree,
    dead: sled::Tree,
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
            schedule: db.open_tree("queue_schedule")?,
            dead: db.open_tree("queue_dead")?,
        })
    }
}

/// A job as kept in the queue tree: the job plus its visibility and current lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueuedJob {
    job: Job,
    visible_at_ms: u64,
    lease: Option<String>,
}

/// In-memory queue counters, rebuilt from the trees at open and changed only under this lock.
#[derive(Debug, Default)]
struct QueueState {
    jobs: u64,
    dead: u64,
    /// Leased jobs and when their lease expires.
    leases: HashMap<VideoId, u64>,
}

/// What recovery found and did when the database was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub jobs: u64,
    pub dead: u64,
    /// Leases that were held when the process stopped and are now visible again.
    pub released_leases: u64,
}

pub struct SledEngine {
    db: sled::Db,
    t: Trees,
    commit: GroupCommit,
    max_receives: u32,
    queue: Mutex<QueueState>,
    ranking_lock: Mutex<()>,
    recovery: Recovery,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn qbackend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(e.to_string())
}

fn commit_to_store(e: CommitError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Big-endian of the complement, so that ascending key order is descending `n`.
fn rev(n: u64) -> [u8; 8] {
    (u64::MAX - n).to_be_bytes()
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(a)
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

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
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

fn qtx_result<T>(r: Result<T, TransactionError<QueueError>>) -> Result<T, QueueError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => qbackend(e),
    })
}

fn schedule_key(visible_at_ms: u64, id: VideoId) -> Vec<u8> {
    cat(&[&be(visible_at_ms), &be(id)])
}

impl SledEngine {
    /// Opens (or creates) the database under `dir` and runs queue recovery.
    pub fn open(dir: &Path, max_receives: u32, commit_timeout: Duration) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().map_err(backend)?;
        let t = Trees::open(&db).map_err(backend)?;
        let commit = GroupCommit::start(db.clone(), commit_timeout);
        let mut engine = SledEngine {
            db,
            t,
            commit,
            max_receives,
            queue: Mutex::new(QueueState::default()),
            ranking_lock: Mutex::new(()),
            recovery: Recovery::default(),
        };
        engine.recovery = engine.recover_queue()?;
        engine.commit.flush_now().map_err(commit_to_store)?;
        Ok(Arc::new(engine))
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Number of fsyncs made by the group commit so far.
    pub fn flush_count(&self) -> u64 {
        self.commit.flush_count()
    }

    /// Rebuilds the schedule index and counters from the job records, releasing every lease:
    /// no consumer of this process holds one after a restart.
    fn recover_queue(&self) -> Result<Recovery, StoreError> {
        let now = now_ms();
        self.t.schedule.clear().map_err(backend)?;
        let mut recovery = Recovery::default();
        for entry in self.t.jobs.iter() {
            let (key, value) = entry.map_err(backend)?;
            let mut queued: QueuedJob = decode(&value)?;
            if queued.lease.take().is_some() {
                queued.visible_at_ms = queued.visible_at_ms.min(now);
                recovery.released_leases += 1;
                self.t.jobs.insert(&key, encode(&queued)).map_err(backend)?;
            }
            self.t
                .schedule
                .insert(schedule_key(queued.visible_at_ms, queued.job.video_id), &[])
                .map_err(backend)?;
            recovery.jobs += 1;
        }
        recovery.dead = self.t.dead.len() as u64;
        let mut state = self.lock_queue();
        state.jobs = recovery.jobs;
        state.dead = recovery.dead;
        state.leases.clear();
        Ok(recovery)
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_ranking(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ranking_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(commit_to_store)
    }

    async fn qdurable(&self) -> Result<(), QueueError> {
        self.commit.durable().await.map_err(qbackend)
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

    /// Moves a job record to the dead letters inside a transaction.
    fn tx_kill(
        jobs: &TransactionalTree,
        schedule: &TransactionalTree,
        dead: &TransactionalTree,
        queued: &QueuedJob,
        reason: &str,
    ) -> ConflictableTransactionResult<(), QueueError> {
        let id = queued.job.video_id;
        jobs.remove(&be(id))?;
        schedule.remove(schedule_key(queued.visible_at_ms, id))?;
        let mut job = queued.job.clone();
        job.last_error = Some(reason.to_string());
        let letter = DeadLetter { job, reason: reason.to_string(), dead_at_ms: now_ms() };
        dead.insert(&be(id), encode(&letter))?;
        Ok(())
    }

    /// Loads a job and checks the lease token, inside a queue transaction.
    fn tx_leased(
        jobs: &TransactionalTree,
        id: VideoId,
        token: &str,
    ) -> ConflictableTransactionResult<QueuedJob, QueueError> {
        let Some(bytes) = jobs.get(be(id))? else {
            return Err(ConflictableTransactionError::Abort(QueueError::NotFound));
        };
        let queued: QueuedJob = serde_json::from_slice(&bytes)
            .map_err(|e| ConflictableTransactionError::Abort(qbackend(e)))?;
        if queued.lease.as_deref() != Some(token) {
            return Err(ConflictableTransactionError::Abort(QueueError::InvalidToken));
        }
        Ok(queued)
    }

    /// Inserts a fresh job record in a transaction (upload commit, enqueue, re-drive).
    fn tx_enqueue<E>(
        jobs: &TransactionalTree,
        schedule: &TransactionalTree,
        job: &Job,
        now: u64,
    ) -> ConflictableTransactionResult<(), E> {
        let queued = QueuedJob { job: job.clone(), visible_at_ms: now, lease: None };
        jobs.insert(&be(job.video_id), encode(&queued))?;
        schedule.insert(schedule_key(now, job.video_id), &[])?;
        Ok(())
    }

    fn ranking_keys(city: &[u8], votes: u64, user: UserId) -> (Vec<u8>, Vec<u8>) {
        (cat(&[&rev(votes), &be(user)]), cat(&[city, &rev(votes), &be(user)]))
    }
}

#[async_trait]
impl Store for SledEngine {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let email = user.email.trim().to_lowercase();
        if self.t.users_by_email.contains_key(email.as_bytes()).map_err(backend)? {
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
        tx_result((&self.t.users, &self.t.users_by_email).transaction(|(users, by_email)| {
            if by_email.get(email.as_bytes())?.is_some() {
                return abort(StoreError::EmailTaken);
            }
            by_email.insert(email.as_bytes(), &be(id))?;
            users.insert(&be(id), bytes.clone())?;
            Ok(())
        }))?;
        self.durable().await?;
        Ok(record)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.load_user(id)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.trim().to_lowercase();
        match self.t.users_by_email.get(email.as_bytes()).map_err(backend)? {
            Some(id) => self.load_user(read_u64(&id)),
            None => Ok(None),
        }
    }

    async fn allocate_video_id(&self) -> Result<VideoId, StoreError> {
        self.next_id(NEXT_VIDEO_ID)
    }

    async fn commit_upload(&self, new: NewVideo, task_id: String) -> Result<(Video, Job), StoreError> {
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
        {
            let mut state = self.lock_queue();
            tx_result(
                (&self.t.videos, &self.t.videos_by_owner, &self.t.jobs, &self.t.schedule).transaction(
                    |(videos, by_owner, jobs, schedule)| {
                        if videos.get(be(video.id))?.is_some() {
                            return abort(backend("video id reused"));
                        }
                        videos.insert(&be(video.id), video_bytes.clone())?;
                        by_owner.insert(cat(&[&be(video.owner_id), &rev(video.id)]), &[])?;
                        Self::tx_enqueue(jobs, schedule, &job, now)
                    },
                ),
            )?;
            state.jobs += 1;
        }
        self.durable().await?;
        Ok((video, job))
    }

    async fn video(&self, id: VideoId) -> Result<Option<Video>, StoreError> {
        self.load_video(id)
    }

    async fn videos_of(&self, owner: UserId) -> Result<Vec<Video>, StoreError> {
        let mut out = Vec::new();
        for entry in self.t.videos_by_owner.scan_prefix(be(owner)) {
            let (key, _) = entry.map_err(backend)?;
            let id = u64::MAX - read_u64(&key[8..16]);
            if let Some(video) = self.load_video(id)? {
                out.push(video);
            }
        }
        Ok(out)
    }

    async fn delete_video(&self, id: VideoId, owner: UserId) -> Result<Video, StoreError> {
        let deleted = {
            let mut state = self.lock_queue();
            let trees = (
                &self.t.videos,
                &self.t.videos_by_owner,
                &self.t.jobs,
                &self.t.schedule,
                &self.t.dead,
            );
            let (video, had_job, had_dead) =
                tx_result(trees.transaction(|(videos, by_owner, jobs, schedule, dead)| {
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
                    let had_job = match jobs.remove(&be(id))? {
                        Some(bytes) => {
                            let queued: QueuedJob = tx_decode(&bytes)?;
                            schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                            true
                        }
                        None => false,
                    };
                    let had_dead = dead.remove(&be(id))?.is_some();
                    Ok((video, had_job, had_dead))
                }))?;
            if had_job {
                state.jobs = state.jobs.saturating_sub(1);
                state.leases.remove(&id);
            }
            if had_dead {
                state.dead = state.dead.saturating_sub(1);
            }
            video
        };
        self.durable().await?;
        Ok(deleted)
    }

    async fn video_exists(&self, id: VideoId) -> Result<bool, StoreError> {
        self.t.videos.contains_key(be(id)).map_err(backend)
    }

    async fn publish_video(&self, id: VideoId, publication: Publication) -> Result<Video, StoreError> {
        let video = self.load_video(id)?.ok_or(StoreError::VideoNotFound)?;
        let owner = self.load_user(video.owner_id)?.ok_or(StoreError::UserNotFound)?;
        let city = city_prefix(&owner.city);
        let published = {
            let _guard = self.lock_ranking();
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
                    video.error = None;
                    videos.insert(&be(id), encode(&video))?;
                    published.insert(&rev(id), &be(video.owner_id))?;
                    published_by_city.insert(cat(&[&city, &rev(id)]), &[])?;
                    if player_votes.get(be(video.owner_id))?.is_none() {
                        player_votes.insert(&be(video.owner_id), &be(0))?;
                        let (all, by_city) = Self::ranking_keys(&city, 0, video.owner_id);
                        ranking.insert(all, &[])?;
                        ranking_by_city.insert(by_city, &[])?;
                    }
                    Ok(video)
                },
            ))?
        };
        self.durable().await?;
        Ok(published)
    }

    async fn vote(&self, video_id: VideoId, voter: UserId) -> Result<u64, StoreError> {
        let video = self.load_video(video_id)?.ok_or(StoreError::VideoNotFound)?;
        let owner = self.load_user(video.owner_id)?.ok_or(StoreError::UserNotFound)?;
        let city = city_prefix(&owner.city);
        let owner_id = owner.id;
        let votes = {
            let _guard = self.lock_ranking();
            let trees = (
                &self.t.votes,
                &self.t.videos,
                &self.t.player_votes,
                &self.t.ranking,
                &self.t.ranking_by_city,
            );
            tx_result(trees.transaction(|(votes, videos, player_votes, ranking, ranking_by_city)| {
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
                let before = player_votes.get(be(owner_id))?.map(|v| read_u64(&v)).unwrap_or(0);
                let (old_all, old_city) = Self::ranking_keys(&city, before, owner_id);
                ranking.remove(old_all)?;
                ranking_by_city.remove(old_city)?;
                let (new_all, new_city) = Self::ranking_keys(&city, before + 1, owner_id);
                ranking.insert(new_all, &[])?;
                ranking_by_city.insert(new_city, &[])?;
                player_votes.insert(&be(owner_id), &be(before + 1))?;
                Ok(video.votes)
            }))?
        };
        self.durable().await?;
        Ok(votes)
    }

    async fn public_videos(&self, city: Option<&str>, page: Page) -> Result<Vec<(Video, User)>, StoreError> {
        let ids: Vec<VideoId> = match city {
            None => self
                .t
                .published
                .iter()
                .skip(page.offset as usize)
                .take(page.limit as usize)
                .map(|e| e.map(|(k, _)| u64::MAX - read_u64(&k)))
                .collect::<Result<_, _>>()
                .map_err(backend)?,
            Some(city) => {
                let prefix = city_prefix(city);
                self.t
                    .published_by_city
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
            if let Some(video) = self.load_video(id)? {
                if let Some(owner) = self.load_user(video.owner_id)? {
                    out.push((video, owner));
                }
            }
        }
        Ok(out)
    }

    async fn rankings(&self, city: Option<&str>, page: Page) -> Result<Vec<RankedPlayer>, StoreError> {
        let keys: Vec<(u64, UserId)> = match city {
            None => self
                .t
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
                self.t
                    .ranking_by_city
                    .scan_prefix(&prefix)
                    .skip(page.offset as usize)
                    .take(page.limit as usize)
                    .map(|e| {
                        e.map(|(k, _)| (u64::MAX - read_u64(&k[n..n + 8]), read_u64(&k[n + 8..n + 16])))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(backend)?
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for (index, (votes, user_id)) in keys.into_iter().enumerate() {
            let user = self.load_user(user_id)?.ok_or(StoreError::UserNotFound)?;
            out.push(RankedPlayer { position: page.offset + index as u64 + 1, user, votes });
        }
        Ok(out)
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

#[async_trait]
impl JobQueue for SledEngine {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        {
            let mut state = self.lock_queue();
            let now = now_ms();
            let fresh = qtx_result((&self.t.jobs, &self.t.schedule).transaction(|(jobs, schedule)| {
                if jobs.get(be(job.video_id))?.is_some() {
                    return Ok(false);
                }
                Self::tx_enqueue(jobs, schedule, &job, now)?;
                Ok(true)
            }))?;
            if fresh {
                state.jobs += 1;
            }
        }
        self.qdurable().await
    }

    async fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        let lease = {
            let mut state = self.lock_queue();
            let now = now_ms();
            let mut found = None;
            for entry in self.t.schedule.iter() {
                let (key, _) = entry.map_err(qbackend)?;
                let visible_at = read_u64(&key[..8]);
                if visible_at > now {
                    break;
                }
                let id = read_u64(&key[8..16]);
                let max_receives = self.max_receives;
                let outcome = qtx_result(
                    (&self.t.jobs, &self.t.schedule, &self.t.dead).transaction(|(jobs, schedule, dead)| {
                        let Some(bytes) = jobs.get(be(id))? else {
                            schedule.remove(&*key)?;
                            return Ok(None);
                        };
                        let mut queued: QueuedJob = serde_json::from_slice(&bytes)
                            .map_err(|e| ConflictableTransactionError::Abort(qbackend(e)))?;
                        if queued.job.receive_count >= max_receives {
                            let reason = format!(
                                "received {} times without success; last error: {}",
                                queued.job.receive_count,
                                queued.job.last_error.as_deref().unwrap_or("none recorded")
                            );
                            Self::tx_kill(jobs, schedule, dead, &queued, &reason)?;
                            return Ok(Some(None));
                        }
                        schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                        queued.job.receive_count += 1;
                        queued.visible_at_ms = now + visibility.as_millis() as u64;
                        let token = uuid::Uuid::new_v4().simple().to_string();
                        queued.lease = Some(token.clone());
                        jobs.insert(&be(id), encode(&queued))?;
                        schedule.insert(schedule_key(queued.visible_at_ms, id), &[])?;
                        Ok(Some(Some(Lease {
                            job: queued.job.clone(),
                            token,
                            visible_again_at_ms: queued.visible_at_ms,
                        })))
                    }),
                )?;
                match outcome {
                    None => {}
                    Some(None) => {
                        state.jobs = state.jobs.saturating_sub(1);
                        state.leases.remove(&id);
                        state.dead += 1;
                    }
                    Some(Some(lease)) => {
                        state.leases.insert(id, lease.visible_again_at_ms);
                        found = Some(lease);
                        break;
                    }
                }
            }
            found
        };
        self.qdurable().await?;
        Ok(lease)
    }

    async fn extend(&self, id: VideoId, token: &str, visibility: Duration) -> Result<u64, QueueError> {
        let until = {
            let mut state = self.lock_queue();
            let until = now_ms() + visibility.as_millis() as u64;
            qtx_result((&self.t.jobs, &self.t.schedule).transaction(|(jobs, schedule)| {
                let mut queued = Self::tx_leased(jobs, id, token)?;
                schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                queued.visible_at_ms = until;
                jobs.insert(&be(id), encode(&queued))?;
                schedule.insert(schedule_key(until, id), &[])?;
                Ok(())
            }))?;
            state.leases.insert(id, until);
            until
        };
        self.qdurable().await?;
        Ok(until)
    }

    async fn ack(&self, id: VideoId, token: &str) -> Result<(), QueueError> {
        {
            let mut state = self.lock_queue();
            qtx_result((&self.t.jobs, &self.t.schedule).transaction(|(jobs, schedule)| {
                let queued = Self::tx_leased(jobs, id, token)?;
                jobs.remove(&be(id))?;
                schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                Ok(())
            }))?;
            state.jobs = state.jobs.saturating_sub(1);
            state.leases.remove(&id);
        }
        self.qdurable().await
    }

    async fn nack(&self, id: VideoId, token: &str, delay: Duration, reason: &str) -> Result<(), QueueError> {
        {
            let mut state = self.lock_queue();
            let visible_at = now_ms() + delay.as_millis() as u64;
            qtx_result((&self.t.jobs, &self.t.schedule).transaction(|(jobs, schedule)| {
                let mut queued = Self::tx_leased(jobs, id, token)?;
                schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                queued.visible_at_ms = visible_at;
                queued.lease = None;
                queued.job.last_error = Some(reason.to_string());
                jobs.insert(&be(id), encode(&queued))?;
                schedule.insert(schedule_key(visible_at, id), &[])?;
                Ok(())
            }))?;
            state.leases.remove(&id);
        }
        self.qdurable().await
    }

    async fn dead_letter(&self, id: VideoId, token: &str, reason: &str) -> Result<(), QueueError> {
        {
            let mut state = self.lock_queue();
            qtx_result((&self.t.jobs, &self.t.schedule, &self.t.dead).transaction(|(jobs, schedule, dead)| {
                let queued = Self::tx_leased(jobs, id, token)?;
                Self::tx_kill(jobs, schedule, dead, &queued, reason)
            }))?;
            state.jobs = state.jobs.saturating_sub(1);
            state.leases.remove(&id);
            state.dead += 1;
        }
        self.qdurable().await
    }

    async fn cancel(&self, id: VideoId) -> Result<bool, QueueError> {
        let existed = {
            let mut state = self.lock_queue();
            let (had_job, had_dead) = qtx_result(
                (&self.t.jobs, &self.t.schedule, &self.t.dead).transaction(|(jobs, schedule, dead)| {
                    let had_job = match jobs.remove(&be(id))? {
                        Some(bytes) => {
                            let queued: QueuedJob = serde_json::from_slice(&bytes)
                                .map_err(|e| ConflictableTransactionError::Abort(qbackend(e)))?;
                            schedule.remove(schedule_key(queued.visible_at_ms, id))?;
                            true
                        }
                        None => false,
                    };
                    Ok((had_job, dead.remove(&be(id))?.is_some()))
                }),
            )?;
            if had_job {
                state.jobs = state.jobs.saturating_sub(1);
                state.leases.remove(&id);
            }
            if had_dead {
                state.dead = state.dead.saturating_sub(1);
            }
            had_job || had_dead
        };
        self.qdurable().await?;
        Ok(existed)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.t
            .dead
            .iter()
            .map(|e| {
                let (_, v) = e.map_err(qbackend)?;
                serde_json::from_slice(&v).map_err(qbackend)
            })
            .collect()
    }

    async fn redrive(&self, id: VideoId) -> Result<(), QueueError> {
        {
            let mut state = self.lock_queue();
            let now = now_ms();
            qtx_result((&self.t.jobs, &self.t.schedule, &self.t.dead).transaction(|(jobs, schedule, dead)| {
                let Some(bytes) = dead.remove(&be(id))? else {
                    return Err(ConflictableTransactionError::Abort(QueueError::NotFound));
                };
                let letter: DeadLetter = serde_json::from_slice(&bytes)
                    .map_err(|e| ConflictableTransactionError::Abort(qbackend(e)))?;
                let mut job = letter.job;
                job.receive_count = 0;
                Self::tx_enqueue(jobs, schedule, &job, now)
            }))?;
            state.dead = state.dead.saturating_sub(1);
            state.jobs += 1;
        }
        self.qdurable().await
    }

    async fn redrive_all(&self) -> Result<u64, QueueError> {
        let ids: Vec<VideoId> = self
            .t
            .dead
            .iter()
            .keys()
            .map(|k| k.map(|k| read_u64(&k)))
            .collect::<Result<_, _>>()
            .map_err(qbackend)?;
        let mut moved = 0;
        for id in ids {
            match self.redrive(id).await {
                Ok(()) => moved += 1,
                Err(QueueError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let state = self.lock_queue();
        let now = now_ms();
        let in_flight = state.leases.values().filter(|&&until| until > now).count() as u64;
        Ok(QueueStats { depth: state.jobs.saturating_sub(in_flight), in_flight, dead: state.dead })
    }

    async fn job(&self, id: VideoId) -> Result<Option<Job>, QueueError> {
        if let Some(bytes) = self.t.jobs.get(be(id)).map_err(qbackend)? {
            let queued: QueuedJob = serde_json::from_slice(&bytes).map_err(qbackend)?;
            return Ok(Some(queued.job));
        }
        if let Some(bytes) = self.t.dead.get(be(id)).map_err(qbackend)? {
            let letter: DeadLetter = serde_json::from_slice(&bytes).map_err(qbackend)?;
            return Ok(Some(letter.job));
        }
        Ok(None)
    }
}
