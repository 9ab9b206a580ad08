//! A media file as the node serves it: which file a request names ([`MediaKey`]), what it is
//! ([`MediaMeta`]: length, validators, a read-only mapping of its bytes), and the permit a
//! response holds while it sends one ([`StreamPermits`]).
//!
//! No HTTP here and no actor: the Streamer actor caches the metadata and grants the permits,
//! the media route turns them into a response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::{Video, VideoId, VideoStatus};
use crate::engine::blobs::{poster_key, processed_key};
use crate::engine::Engine;

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
    mapping: Option<Arc<memmap2::Mmap>>,
    /// The whole file as one shareable buffer over the mapping (empty for an empty file).
    bytes: Bytes,
}

impl MediaMeta {
    /// Bytes `first..=last` of the file, without a copy.
    pub fn slice(&self, first: u64, last: u64) -> Bytes {
        self.bytes.slice(first as usize..=last as usize)
    }

    /// Asks the kernel to start reading `len` bytes from `from`, without waiting for them.
    pub fn read_ahead(&self, from: u64, len: u64) {
        if let Some(mapping) = &self.mapping {
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
            mapping: None,
            bytes,
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
}

fn system_time(ts: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

/// What the store says the media is, and a mapping of its file.
pub async fn describe(engine: &Engine, key: MediaKey) -> Result<MediaMeta, OpenError> {
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
    let path = engine.blobs.local_path(&blob).ok_or(OpenError::NotFound)?;
    let (len, mapping) = tokio::task::spawn_blocking(move || map_file(&path))
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))??;
    let bytes = match &mapping {
        Some(mapping) => Bytes::from_owner(MappedFile(mapping.clone())),
        None => Bytes::new(),
    };
    Ok(MediaMeta {
        kind: key.kind,
        len,
        etag,
        last_modified: system_time(modified),
        content_type,
        mapping,
        bytes,
    })
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
