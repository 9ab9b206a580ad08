//! Streamer: admits and counts media streams, and knows what each media file is.
//!
//! - **Admission.** Every response that carries media holds a [`StreamPermit`] from
//!   `stream.max_concurrent`; it is released when the body is finished or dropped (the client
//!   went away), not when the headers are sent. No permit: 503 + `Retry-After` at once.
//! - **Metadata.** Published media never change (a published video cannot be deleted, and its
//!   outputs are written once), so their length, validators and a read-only mapping of the
//!   file are cached. Originals can be deleted: they are looked up on every request.
//! - **Bytes.** Bodies are slices of a memory mapping of the file, handed to the socket without
//!   being copied into buffers of ours; memory per stream is a few small structs, whatever the
//!   file size. Readahead is requested for the part about to be sent.
//! - **Figures.** Active streams and bytes served go to the health registry.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Reply;
use crate::domain::{Video, VideoId, VideoStatus};
use crate::engine::blobs::{poster_key, processed_key};
use crate::engine::Engine;
use crate::health::{ActorHealth, ActorState};

/// Size of the slices a body is sent in.
const CHUNK_BYTES: u64 = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// The published rendition.
    Processed,
    Poster,
    /// The file as uploaded (owner only, through a signed URL).
    Original,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaKey {
    pub kind: MediaKind,
    pub video_id: VideoId,
}

/// A media file, ready to be served.
#[derive(Debug)]
pub struct MediaMeta {
    pub len: u64,
    /// Opaque part of the strong entity tag: derived from the content, so the same whichever
    /// storage holds the bytes.
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: &'static str,
    pub cache_control: &'static str,
    mapping: Option<Arc<memmap2::Mmap>>,
    /// The whole file as one shareable buffer over the mapping (empty for an empty file).
    bytes: Bytes,
}

/// Counters shared by the actor, the permits and the bodies.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub bytes_served: AtomicU64,
    pub refused: AtomicU64,
}

/// Held by a response while it sends media.
#[derive(Debug)]
pub struct StreamPermit {
    _permit: OwnedSemaphorePermit,
}

pub struct StreamGrant {
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

#[derive(Message)]
#[rtype(result = "()")]
pub struct OpenMedia {
    pub key: MediaKey,
    pub reply: Reply<Result<StreamGrant, OpenError>>,
}

/// Published media metadata, bounded; evicts the oldest entry when full.
#[derive(Default)]
struct MetaCache {
    entries: HashMap<MediaKey, Arc<MediaMeta>>,
    order: VecDeque<MediaKey>,
}

impl MetaCache {
    fn get(&self, key: &MediaKey) -> Option<Arc<MediaMeta>> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: MediaKey, meta: Arc<MediaMeta>, capacity: usize) {
        if self.entries.insert(key, meta).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

/// Shared by every incarnation of the actor: permits held by bodies outlive a restart.
pub struct StreamerShared {
    pub streams: Arc<Semaphore>,
    pub max_concurrent: usize,
    pub counters: Arc<StreamCounters>,
}

impl StreamerShared {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            counters: Arc::new(StreamCounters::default()),
        }
    }

    pub fn active(&self) -> usize {
        self.max_concurrent - self.streams.available_permits()
    }
}

pub struct Streamer {
    engine: Engine,
    shared: Arc<StreamerShared>,
    cache: Arc<Mutex<MetaCache>>,
    cache_capacity: usize,
    health: Arc<ActorHealth>,
}

impl Streamer {
    pub fn new(
        engine: Engine,
        shared: Arc<StreamerShared>,
        cache_capacity: usize,
        health: Arc<ActorHealth>,
    ) -> Self {
        Self {
            engine,
            shared,
            cache: Arc::new(Mutex::new(MetaCache::default())),
            cache_capacity,
            health,
        }
    }
}

impl Actor for Streamer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        self.health.heartbeat();
        ctx.run_interval(Duration::from_millis(500), |act, _| act.health.heartbeat());
    }
}

impl Handler<OpenMedia> for Streamer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: OpenMedia, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let shared = self.shared.clone();
        let cache = self.cache.clone();
        let capacity = self.cache_capacity;
        Box::pin(async move {
            let result = open(&engine, &shared, &cache, capacity, msg.key).await;
            msg.reply.send(result);
        })
    }
}

async fn open(
    engine: &Engine,
    shared: &StreamerShared,
    cache: &Mutex<MetaCache>,
    capacity: usize,
    key: MediaKey,
) -> Result<StreamGrant, OpenError> {
    let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
    let meta = match cached {
        Some(meta) => meta,
        None => {
            let meta = Arc::new(describe(engine, key).await?);
            if key.kind != MediaKind::Original {
                cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, meta.clone(), capacity);
            }
            meta
        }
    };
    let permit = shared.streams.clone().try_acquire_owned().map_err(|_| {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        OpenError::Busy { retry_after_s: 1 }
    })?;
    Ok(StreamGrant {
        meta,
        permit: StreamPermit { _permit: permit },
    })
}

fn system_time(ts: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64)
}

/// What the store says the media is, and a mapping of its file.
async fn describe(engine: &Engine, key: MediaKey) -> Result<MediaMeta, OpenError> {
    let video: Video = engine
        .store
        .video(key.video_id)
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))?
        .ok_or(OpenError::NotFound)?;
    let published = video.status == VideoStatus::Processed;
    let (blob, etag, modified, content_type, cache_control) = match key.kind {
        MediaKind::Processed | MediaKind::Poster if !published => return Err(OpenError::NotFound),
        MediaKind::Processed => (
            video
                .processed_key
                .clone()
                .unwrap_or_else(|| processed_key(video.id)),
            video.content_hash.clone().unwrap_or_default(),
            video.processed_at.unwrap_or(video.uploaded_at),
            "video/mp4",
            "public, max-age=31536000, immutable",
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
            "public, max-age=31536000, immutable",
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
            "private, no-store",
        ),
    };
    let path: PathBuf = engine.blobs.local_path(&blob).ok_or(OpenError::NotFound)?;
    let (len, mapping) = tokio::task::spawn_blocking(move || map_file(&path))
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))??;
    let bytes = match &mapping {
        Some(mapping) => Bytes::from_owner(MappedFile(mapping.clone())),
        None => Bytes::new(),
    };
    Ok(MediaMeta {
        len,
        etag,
        last_modified: system_time(modified),
        content_type,
        cache_control,
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

/// One piece of a response body: framing text, or a byte range of the file.
#[derive(Debug, Clone)]
pub enum Piece {
    Text(Bytes),
    Range { first: u64, last: u64 },
}

/// A response body made of pieces, sent from the mapping; holds its stream permit until it is
/// finished or dropped.
pub struct MediaBody {
    meta: Arc<MediaMeta>,
    pieces: VecDeque<Piece>,
    counters: Arc<StreamCounters>,
    _permit: StreamPermit,
}

impl MediaBody {
    pub fn new(grant: StreamGrant, pieces: Vec<Piece>, counters: Arc<StreamCounters>) -> Self {
        Self {
            meta: grant.meta,
            pieces: pieces.into(),
            counters,
            _permit: grant.permit,
        }
    }

    /// Asks the kernel to start reading what comes after `from`, without waiting for it.
    fn read_ahead(&self, from: u64, len: u64) {
        if let Some(mapping) = &self.meta.mapping {
            let len = len.min(self.meta.len.saturating_sub(from));
            if len > 0 {
                let _ =
                    mapping.advise_range(memmap2::Advice::WillNeed, from as usize, len as usize);
            }
        }
    }
}

impl futures_util::Stream for MediaBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let Some(piece) = self.pieces.pop_front() else {
            return Poll::Ready(None);
        };
        let chunk = match piece {
            Piece::Text(text) => text,
            Piece::Range { first, last } => {
                let end = last.min(first + CHUNK_BYTES - 1);
                if end < last {
                    self.pieces.push_front(Piece::Range {
                        first: end + 1,
                        last,
                    });
                    self.read_ahead(end + 1, CHUNK_BYTES * 2);
                }
                let chunk = self.meta.bytes.slice(first as usize..=end as usize);
                self.counters
                    .bytes_served
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                chunk
            }
        };
        Poll::Ready(Some(Ok(chunk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u8) -> Arc<MediaMeta> {
        Arc::new(MediaMeta {
            len: 1,
            etag: n.to_string(),
            last_modified: SystemTime::UNIX_EPOCH,
            content_type: "video/mp4",
            cache_control: "",
            mapping: None,
            bytes: Bytes::from(vec![n]),
        })
    }

    fn key(id: u64) -> MediaKey {
        MediaKey {
            kind: MediaKind::Processed,
            video_id: id,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let mut cache = MetaCache::default();
        for id in 0..5 {
            cache.insert(key(id), meta(id as u8), 3);
        }
        assert!(cache.get(&key(0)).is_none() && cache.get(&key(1)).is_none());
        assert!((2..5).all(|id| cache.get(&key(id)).is_some()));
        assert_eq!(cache.entries.len(), 3);
    }

    #[tokio::test]
    async fn a_body_sends_its_pieces_in_order_and_frees_its_permit_when_dropped() {
        use futures_util::StreamExt;
        let shared = StreamerShared::new(1);
        let data: Vec<u8> = (0..=255u8)
            .cycle()
            .take(2 * CHUNK_BYTES as usize + 10)
            .collect();
        let meta = Arc::new(MediaMeta {
            len: data.len() as u64,
            etag: "e".into(),
            last_modified: SystemTime::UNIX_EPOCH,
            content_type: "video/mp4",
            cache_control: "",
            mapping: None,
            bytes: Bytes::from(data.clone()),
        });
        let permit = StreamPermit {
            _permit: shared.streams.clone().try_acquire_owned().unwrap(),
        };
        assert_eq!(shared.active(), 1);
        let last = data.len() as u64 - 1;
        let pieces = vec![
            Piece::Text(Bytes::from_static(b"<")),
            Piece::Range { first: 5, last },
            Piece::Text(Bytes::from_static(b">")),
        ];
        let mut body = MediaBody::new(
            StreamGrant { meta, permit },
            pieces,
            shared.counters.clone(),
        );
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() as u64 <= CHUNK_BYTES);
            out.extend_from_slice(&chunk);
        }
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&data[5..]);
        expected.push(b'>');
        assert_eq!(out, expected);
        assert_eq!(
            shared.counters.bytes_served.load(Ordering::Relaxed),
            last - 4
        );
        assert_eq!(shared.active(), 1, "held until the body is dropped");
        drop(body);
        assert_eq!(shared.active(), 0);
    }
}
