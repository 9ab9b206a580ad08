//! A media file as the node serves it: which file a request names ([`MediaKey`]), what it is
//! ([`MediaMeta`]: length, validators, and where its bytes are: a read-only mapping of a local
//! file, or a remote blob read by ranges), the local read-through cache of published media
//! kept in a remote store ([`ReadThroughCache`]), and the permit a response holds while it
//! sends one ([`StreamPermits`]).
//!
//! No HTTP here and no actor: the Streamer actor caches the metadata and grants the permits,
//! the media route turns them into a response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::{Video, VideoId, VideoStatus};
use crate::engine::blobs::{poster_key, processed_key, BlobStream};
use crate::engine::{BlobError, BlobStore, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// The published rendition.
    Processed,
    Poster,
    /// The file as uploaded (owner only, through a signed URL).
    Original,
}

impl MediaKind {
    /// Published media never change once public; originals are private to their owner.
    pub fn is_published(self) -> bool {
        self != MediaKind::Original
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaKey {
    pub kind: MediaKind,
    pub video_id: VideoId,
}

/// A media file, ready to be served.
#[derive(Debug)]
pub struct MediaMeta {
    pub kind: MediaKind,
    pub len: u64,
    /// Opaque part of the strong entity tag: derived from the content, so the same whichever
    /// storage holds the bytes.
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: &'static str,
    source: Source,
}

/// A ranged read of a remote file, until its bytes start to arrive.
pub type RangeOpening =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<BlobStream, BlobError>> + Send>>;

/// Where a media file's bytes are.
enum Source {
    /// A local file, mapped: the whole file as one shareable buffer over the mapping (empty
    /// for an empty file).
    Mapped {
        mapping: Option<Arc<memmap2::Mmap>>,
        bytes: Bytes,
    },
    /// A blob of a remote store, read by ranges.
    Remote {
        blobs: Arc<dyn BlobStore>,
        key: String,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mapped { .. } => f.write_str("Mapped"),
            Source::Remote { key, .. } => write!(f, "Remote({key})"),
        }
    }
}

impl MediaMeta {
    /// Whether the bytes are on this machine (then [`MediaMeta::slice`] gives them).
    pub fn is_local(&self) -> bool {
        matches!(self.source, Source::Mapped { .. })
    }

    /// Bytes `first..=last` of a local file, without a copy; `None` for a remote one.
    pub fn slice(&self, first: u64, last: u64) -> Option<Bytes> {
        match &self.source {
            Source::Mapped { bytes, .. } => Some(bytes.slice(first as usize..=last as usize)),
            Source::Remote { .. } => None,
        }
    }

    /// Bytes `first..=last` of a remote file, streamed as they arrive; `None` for a local one
    /// (its bytes are [`MediaMeta::slice`]s).
    pub fn remote_range(&self, first: u64, last: u64) -> Option<RangeOpening> {
        match &self.source {
            Source::Mapped { .. } => None,
            Source::Remote { blobs, key } => {
                let (blobs, key) = (blobs.clone(), key.clone());
                Some(Box::pin(async move {
                    blobs.read_range(&key, first, last).await
                }))
            }
        }
    }

    /// Asks the kernel to start reading `len` bytes from `from`, without waiting for them.
    pub fn read_ahead(&self, from: u64, len: u64) {
        if let Source::Mapped {
            mapping: Some(mapping),
            ..
        } = &self.source
        {
            let len = len.min(self.len.saturating_sub(from));
            if len > 0 {
                let _ =
                    mapping.advise_range(memmap2::Advice::WillNeed, from as usize, len as usize);
            }
        }
    }

    /// Metadata over bytes in memory (tests of what serves media).
    pub fn in_memory(kind: MediaKind, etag: &str, bytes: Bytes) -> Self {
        Self {
            kind,
            len: bytes.len() as u64,
            etag: etag.to_string(),
            last_modified: SystemTime::UNIX_EPOCH,
            content_type: "video/mp4",
            source: Source::Mapped {
                mapping: None,
                bytes,
            },
        }
    }
}

/// The stream permits of a node: every response that carries media holds one until its body
/// is finished or dropped. Shared by every incarnation of the Streamer.
#[derive(Debug)]
pub struct StreamPermits {
    semaphore: Arc<Semaphore>,
    max_concurrent: usize,
    bytes_served: AtomicU64,
    refused: AtomicU64,
}

impl StreamPermits {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            bytes_served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A permit now, or `None` (counted as a refusal) when every one is taken.
    pub fn try_take(self: &Arc<Self>) -> Option<StreamPermit> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(StreamPermit {
                _permit: permit,
                permits: self.clone(),
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn active(&self) -> usize {
        self.max_concurrent - self.semaphore.available_permits()
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Held by a response while it sends media.
#[derive(Debug)]
pub struct StreamPermit {
    _permit: OwnedSemaphorePermit,
    permits: Arc<StreamPermits>,
}

impl StreamPermit {
    /// Counts bytes handed to the socket under this permit.
    pub fn served(&self, bytes: u64) {
        self.permits
            .bytes_served
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A media file and the permit to send it.
pub struct MediaGrant {
    pub meta: Arc<MediaMeta>,
    pub permit: StreamPermit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no such media")]
    NotFound,
    #[error("too many streams")]
    Busy { retry_after_s: u64 },
    #[error("the media could not be opened: {0}")]
    Failed(String),
    /// The store that holds it cannot be reached now.
    #[error("the media store is unavailable: {0}")]
    Unavailable(String),
}

fn system_time(ts: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

/// What the store says the media is, and where its bytes are: a mapping of its local file
/// (the store's own, or a copy in `cache`), else the remote blob, whose copy `cache` then
/// starts to make when the media is published.
pub async fn describe(
    engine: &Engine,
    key: MediaKey,
    cache: &Arc<ReadThroughCache>,
) -> Result<MediaMeta, OpenError> {
    let video: Video = engine
        .store
        .video(key.video_id)
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))?
        .ok_or(OpenError::NotFound)?;
    let published = video.status == VideoStatus::Processed;
    let (blob, etag, modified, content_type) = match key.kind {
        MediaKind::Processed | MediaKind::Poster if !published => return Err(OpenError::NotFound),
        MediaKind::Processed => (
            video
                .processed_key
                .clone()
                .unwrap_or_else(|| processed_key(video.id)),
            video.content_hash.clone().unwrap_or_default(),
            video.processed_at.unwrap_or(video.uploaded_at),
            "video/mp4",
        ),
        MediaKind::Poster => (
            video
                .poster_key
                .clone()
                .unwrap_or_else(|| poster_key(video.id)),
            video.poster_hash.clone().unwrap_or_else(|| {
                format!("poster-{}", video.content_hash.clone().unwrap_or_default())
            }),
            video.processed_at.unwrap_or(video.uploaded_at),
            "image/jpeg",
        ),
        MediaKind::Original => (
            video.original_key.clone(),
            // Originals are written once per video: id, size and task identify the bytes.
            format!(
                "original-{}-{}-{}",
                video.id, video.original.size_bytes, video.task_id
            ),
            video.uploaded_at,
            "video/mp4",
        ),
    };
    let local = engine.blobs.local_path(&blob).or_else(|| {
        key.kind
            .is_published()
            .then(|| cache.copy_of(&blob))
            .flatten()
    });
    let (len, source) = match local {
        Some(path) => {
            let (len, mapping) = tokio::task::spawn_blocking(move || map_file(&path))
                .await
                .map_err(|e| OpenError::Failed(e.to_string()))??;
            let bytes = match &mapping {
                Some(mapping) => Bytes::from_owner(MappedFile(mapping.clone())),
                None => Bytes::new(),
            };
            (len, Source::Mapped { mapping, bytes })
        }
        None => {
            let len = match engine.blobs.len(&blob).await {
                Ok(Some(len)) => len,
                Ok(None) | Err(BlobError::NotFound) => return Err(OpenError::NotFound),
                Err(BlobError::Unavailable(why)) => return Err(OpenError::Unavailable(why)),
                Err(e) => return Err(OpenError::Failed(e.to_string())),
            };
            if key.kind.is_published() {
                cache.fill(engine.blobs.clone(), &blob);
            }
            let blobs = engine.blobs.clone();
            (len, Source::Remote { blobs, key: blob })
        }
    };
    Ok(MediaMeta {
        kind: key.kind,
        len,
        etag,
        last_modified: system_time(modified),
        content_type,
        source,
    })
}

/// Local copies of published media kept in a remote store, least recently used out past
/// `max_bytes`. Published media never change, so a copy is never stale.
pub struct ReadThroughCache {
    dir: std::path::PathBuf,
    max_bytes: u64,
    /// Copies being made, so that a hot video is downloaded once.
    filling: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ReadThroughCache {
    pub fn new(dir: std::path::PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            filling: std::sync::Mutex::default(),
        }
    }

    fn path_of(&self, key: &str) -> std::path::PathBuf {
        self.dir.join(key)
    }

    /// The local copy of `key`, if there is one; marked as used now.
    pub fn copy_of(&self, key: &str) -> Option<std::path::PathBuf> {
        let path = self.path_of(key);
        let file = std::fs::File::options().append(true).open(&path).ok()?;
        let _ = file.set_modified(SystemTime::now());
        Some(path)
    }

    /// Starts copying `key` from `blobs` in the background, unless a copy is being made.
    pub fn fill(self: &Arc<Self>, blobs: Arc<dyn BlobStore>, key: &str) {
        if self.max_bytes == 0 {
            return;
        }
        let mut filling = self.filling.lock().unwrap_or_else(|p| p.into_inner());
        if !filling.insert(key.to_string()) {
            return;
        }
        drop(filling);
        let (cache, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            if let Err(error) = cache.copy(blobs.as_ref(), &key).await {
                tracing::warn!(key, %error, "copying a published media file into the cache failed");
            }
            cache
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    async fn copy(&self, blobs: &dyn BlobStore, key: &str) -> Result<(), BlobError> {
        let target = self.path_of(key);
        let parent = target.parent().unwrap_or(&self.dir).to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        let part = parent.join(format!(".{}.part", uuid::Uuid::new_v4().simple()));
        let copied = blobs.fetch(key, &part).await;
        if copied.is_ok() {
            tokio::fs::rename(&part, &target).await?;
        } else {
            let _ = tokio::fs::remove_file(&part).await;
        }
        copied?;
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        tokio::task::spawn_blocking(move || evict(&dir, max))
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

/// Removes the least recently used copies under `dir` until they take at most `max_bytes`.
fn evict(dir: &std::path::Path, max_bytes: u64) -> std::io::Result<()> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(SystemTime, u64, std::path::PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                walk(&entry.path(), out);
            } else if !entry.file_name().to_string_lossy().starts_with('.') {
                let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((used, metadata.len(), entry.path()));
            }
        }
    }
    let mut copies = Vec::new();
    walk(dir, &mut copies);
    let mut total: u64 = copies.iter().map(|c| c.1).sum();
    copies.sort();
    for (_, len, path) in copies {
        if total <= max_bytes {
            break;
        }
        std::fs::remove_file(&path)?;
        total -= len;
    }
    Ok(())
}

/// A mapping as the owner of a [`Bytes`].
struct MappedFile(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn map_file(path: &std::path::Path) -> Result<(u64, Option<Arc<memmap2::Mmap>>), OpenError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(OpenError::NotFound),
        Err(e) => return Err(OpenError::Failed(e.to_string())),
    };
    let len = file
        .metadata()
        .map_err(|e| OpenError::Failed(e.to_string()))?
        .len();
    if len == 0 {
        return Ok((0, None));
    }
    // SAFETY: media files are written once (renamed into place) and never modified or
    // truncated afterwards; deleting one only unlinks it, which leaves the mapping valid.
    let mapping =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| OpenError::Failed(e.to_string()))?;
    Ok((len, Some(Arc::new(mapping))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_and_refusals_too() {
        let permits = Arc::new(StreamPermits::new(1));
        let held = permits.try_take().expect("one permit");
        assert_eq!(permits.active(), 1);
        assert!(permits.try_take().is_none());
        assert_eq!(permits.refused(), 1);
        held.served(10);
        assert_eq!(permits.bytes_served(), 10);
        drop(held);
        assert_eq!(permits.active(), 0);
    }
}
