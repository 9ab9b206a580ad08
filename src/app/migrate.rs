//! `showcase migrate`: the store's schema alone, or a whole platform copied from one
//! configuration's stores into another's (one box on sled and local disk to PostgreSQL and S3,
//! say): users with their password hashes, videos, votes (and so the counts and rankings),
//! queued and dead-lettered jobs, and media. Every step skips what the destination holds
//! already, so the copy can be run again; the counts are verified at the end, which expects
//! the destination to be a new platform (or an earlier copy of the same one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::application::StartupError;
use super::builder::{open_blobs, open_postgres, open_sqs, DB_DIR};
use crate::config::{Config, QueueBackend, StoreBackend};
use crate::domain::{Page, VideoId};
use crate::engine::sled_engine::SledEngine;
use crate::engine::sqs_queue::SqsQueue;
use crate::engine::{BlobStore, JobQueue, Store, StoreError};

/// Records read per call while copying.
const PAGE: usize = 500;
/// The media prefixes a platform writes.
const MEDIA_PREFIXES: [&str; 3] = ["originals/", "processed/", "posters/"];

/// One configuration's stores, opened for copying (no node runs on them).
struct Platform {
    /// Where copies wait before they are stored: `<data_dir>/tmp`.
    scratch_dir: std::path::PathBuf,
    store: Arc<dyn Store>,
    /// The store's own queue: the queue itself, or the outbox of SQS.
    own_queue: Arc<dyn JobQueue>,
    sqs: Option<SqsQueue>,
    blobs: Arc<dyn BlobStore>,
}

impl Platform {
    async fn open(config: &Config, which: &str) -> Result<Self, StartupError> {
        let data_dir = &config.storage.data_dir;
        let blobs = open_blobs(config, data_dir).await?;
        let (store, own_queue): (Arc<dyn Store>, Arc<dyn JobQueue>) = match config.store.backend {
            StoreBackend::Sled => {
                let sled = SledEngine::open(
                    &data_dir.join(DB_DIR),
                    config.queue.max_receives,
                    Duration::from_secs(config.storage.commit_timeout_s),
                )
                .map_err(|e| {
                    StartupError::Config(format!(
                        "{which}: the sled store under {} cannot be opened ({e}); a node still \
                         running on it must be stopped first",
                        data_dir.display()
                    ))
                })?;
                (sled.clone(), sled)
            }
            StoreBackend::Postgres => {
                let postgres = Arc::new(open_postgres(config).await?);
                (postgres.clone(), postgres)
            }
        };
        let sqs = match config.queue.backend {
            QueueBackend::Embedded => None,
            QueueBackend::Sqs => Some(open_sqs(config).await?),
        };
        Ok(Self {
            scratch_dir: data_dir.join("tmp"),
            store,
            own_queue,
            sqs,
            blobs,
        })
    }
}

/// Applies the schema of the configured store (PostgreSQL's migrations; sled has none).
pub async fn apply_schema(config: &Config) -> Result<String, StartupError> {
    match config.store.backend {
        StoreBackend::Sled => Ok("sled keeps no schema: nothing to apply".into()),
        StoreBackend::Postgres => {
            open_postgres(config).await?;
            Ok(format!(
                "the PostgreSQL schema is current ({} migrations)",
                crate::engine::pg_engine::MIGRATOR.iter().count()
            ))
        }
    }
}

/// What one kind of record came to in a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub what: &'static str,
    /// In the source.
    pub source: u64,
    /// Written now.
    pub copied: u64,
    /// In the destination already (an earlier run, or the same backend on both sides).
    pub already: u64,
}

impl Copied {
    fn of(what: &'static str) -> Self {
        Self {
            what,
            ..Self::default()
        }
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<13} {:>9} in the source, {:>9} copied, {:>9} there already",
            self.what, self.source, self.copied, self.already
        )
    }
}

fn store_failed(what: &str) -> impl Fn(StoreError) -> StartupError + '_ {
    move |e| StartupError::Config(format!("copying {what}: {e}"))
}

/// Copies everything of the platform of `from` into that of `to`, then verifies it.
pub async fn copy_platform(from: &Config, to: &Config) -> Result<Vec<Copied>, StartupError> {
    let source = Platform::open(from, "--from").await?;
    let destination = Platform::open(to, "--to").await?;
    let mut report = Vec::new();

    // Users, with their ids and password hashes.
    let mut users = Copied::of("users");
    let mut after = 0;
    loop {
        let page = source
            .store
            .export_users(after, PAGE)
            .await
            .map_err(store_failed("users"))?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for user in &page {
            users.source += 1;
            match destination.store.import_user(user).await {
                Ok(true) => users.copied += 1,
                Ok(false) => users.already += 1,
                Err(StoreError::EmailTaken) => {
                    return Err(StartupError::Config(format!(
                        "user {} ({}): the destination has another account with this email",
                        user.id, user.email
                    )))
                }
                Err(e) => return Err(store_failed("users")(e)),
            }
        }
    }
    report.push(users);

    // Videos, then their votes (which make the counts and the rankings).
    let mut videos = Copied::of("videos");
    let mut ids: Vec<VideoId> = Vec::new();
    let mut after = 0;
    loop {
        let page = source
            .store
            .export_videos(after, PAGE)
            .await
            .map_err(store_failed("videos"))?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for video in &page {
            videos.source += 1;
            ids.push(video.id);
            match destination
                .store
                .import_video(video)
                .await
                .map_err(store_failed("videos"))?
            {
                true => videos.copied += 1,
                false => videos.already += 1,
            }
        }
    }
    report.push(videos);
    let mut votes = Copied::of("votes");
    let mut after = (0, 0);
    loop {
        let page = source
            .store
            .export_votes(after, PAGE)
            .await
            .map_err(store_failed("votes"))?;
        let Some(last) = page.last() else { break };
        after = *last;
        for (video, voter) in page {
            votes.source += 1;
            match destination.store.vote(video, voter).await {
                Ok(_) => votes.copied += 1,
                Err(StoreError::AlreadyVoted) => votes.already += 1,
                Err(e) => return Err(store_failed("votes")(e)),
            }
        }
    }
    report.push(votes);

    report.extend(copy_jobs(&source, &destination, &ids).await?);
    report.push(copy_media(&source, &destination).await?);
    verify(&source, &destination, &ids).await?;
    Ok(report)
}

/// Jobs of the source's own queue: live ones wait again in the destination's own queue (its
/// queue, or the outbox that relays them to SQS); dead letters stay dead. Jobs already in the
/// source's SQS stay there: point the destination at the same queues.
async fn copy_jobs(
    source: &Platform,
    destination: &Platform,
    ids: &[VideoId],
) -> Result<Vec<Copied>, StartupError> {
    let failed = |e: crate::engine::QueueError| StartupError::Config(format!("copying jobs: {e}"));
    let mut dead = Copied::of("dead letters");
    let letters = source.own_queue.dead_letters().await.map_err(failed)?;
    let dead_ids: HashSet<VideoId> = letters.iter().map(|l| l.job.video_id).collect();
    let already_dead: HashSet<VideoId> = match &destination.sqs {
        Some(sqs) => sqs.dead_letters().await.map_err(failed)?,
        None => destination.own_queue.dead_letters().await.map_err(failed)?,
    }
    .iter()
    .map(|l| l.job.video_id)
    .collect();
    for letter in letters {
        dead.source += 1;
        if already_dead.contains(&letter.job.video_id) {
            dead.already += 1;
            continue;
        }
        match &destination.sqs {
            Some(sqs) => sqs.import_dead(letter).await,
            None => destination.own_queue.import_dead(letter).await,
        }
        .map_err(failed)?;
        dead.copied += 1;
    }
    let mut live = Copied::of("queued jobs");
    for id in ids.iter().filter(|id| !dead_ids.contains(id)) {
        let Some(job) = source.own_queue.job(*id).await.map_err(failed)? else {
            continue;
        };
        live.source += 1;
        if destination
            .own_queue
            .job(*id)
            .await
            .map_err(failed)?
            .is_some()
        {
            live.already += 1;
            continue;
        }
        destination.own_queue.enqueue(job).await.map_err(failed)?;
        live.copied += 1;
    }
    Ok(vec![live, dead])
}

/// A directory of this process's own for copies on their way, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    /// Under `parent`: the destination's data directory, so that storing a copy on its local
    /// disk is a rename within one file system.
    fn new(parent: &std::path::Path) -> Result<Self, StartupError> {
        let dir = parent.join(format!("migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| StartupError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        Ok(Self(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every media blob, unless the destination has one of the same length.
async fn copy_media(source: &Platform, destination: &Platform) -> Result<Copied, StartupError> {
    let failed = |e: crate::engine::BlobError| StartupError::Config(format!("copying media: {e}"));
    let mut media = Copied::of("media files");
    let scratch = Scratch::new(&destination.scratch_dir)?;
    for prefix in MEDIA_PREFIXES {
        for key in source.blobs.list(prefix).await.map_err(failed)? {
            media.source += 1;
            let length = source.blobs.len(&key).await.map_err(failed)?;
            if length.is_some() && destination.blobs.len(&key).await.map_err(failed)? == length {
                media.already += 1;
                continue;
            }
            // A copy of its own: a local store hands out the blob itself, and storing a file
            // moves it.
            let fetched = source
                .blobs
                .fetch(&key, &scratch.path().join("fetched"))
                .await
                .map_err(failed)?;
            let copy = scratch.path().join("copy");
            // On disk before it is stored: a local store renames it into place.
            std::fs::copy(&fetched, &copy)
                .and_then(|_| std::fs::File::open(&copy)?.sync_all())
                .map_err(|e| StartupError::Io {
                    what: format!("copying {key}"),
                    source: e,
                })?;
            destination
                .blobs
                .put_file(&key, &copy)
                .await
                .map_err(failed)?;
            let _ = std::fs::remove_file(scratch.path().join("fetched"));
            media.copied += 1;
        }
    }
    Ok(media)
}

/// Every source record is in the destination, with the same vote counts and rankings.
async fn verify(
    source: &Platform,
    destination: &Platform,
    ids: &[VideoId],
) -> Result<(), StartupError> {
    let failed = store_failed("the verification");
    let mismatch = |what: String| Err(StartupError::Config(format!("verification: {what}")));
    let mut after = 0;
    loop {
        let page = source
            .store
            .export_users(after, PAGE)
            .await
            .map_err(&failed)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for user in page {
            match destination.store.user(user.id).await.map_err(&failed)? {
                Some(copied) if copied.password_hash == user.password_hash => {}
                _ => return mismatch(format!("user {} differs or is missing", user.id)),
            }
        }
    }
    for id in ids {
        let original = source.store.video(*id).await.map_err(&failed)?;
        let copied = destination.store.video(*id).await.map_err(&failed)?;
        match (original, copied) {
            (Some(a), Some(b)) if a.votes == b.votes && a.status == b.status => {}
            _ => return mismatch(format!("video {id} differs or is missing")),
        }
    }
    let page = Page {
        offset: 0,
        limit: 100,
    };
    let ranked = |r: Vec<crate::domain::RankedPlayer>| -> Vec<(u64, u64)> {
        r.into_iter().map(|p| (p.user.id, p.votes)).collect()
    };
    let before = ranked(source.store.rankings(None, page).await.map_err(&failed)?);
    let after_copy = ranked(
        destination
            .store
            .rankings(None, page)
            .await
            .map_err(&failed)?,
    );
    if before != after_copy {
        return mismatch("the rankings differ".into());
    }
    Ok(())
}
