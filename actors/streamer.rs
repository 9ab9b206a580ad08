//! Streamer: admits media streams and knows what each media file is.
//!
//! - **Admission.** Every response that carries media holds a [`StreamPermit`] from
//!   `stream.max_concurrent`; it is released when the body is finished or dropped (the client
//!   went away), not when the headers are sent. No permit: a refusal at once.
//! - **Metadata.** Published media never change (a published video cannot be deleted, and its
//!   outputs are written once), so their length, validators and a read-only mapping of the
//!   file are cached. Originals can be deleted: they are looked up on every request.
//!
//! [`StreamPermit`]: crate::media::StreamPermit

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::call::Reply;
use crate::engine::Engine;
use crate::health::{ActorHealth, ActorState};
use crate::media::{
    describe, MediaGrant, MediaKey, MediaMeta, OpenError, ReadThroughCache, StreamPermits,
};

#[derive(Message)]
#[rtype(result = "()")]
pub struct OpenMedia {
    pub key: MediaKey,
    pub reply: Reply<Result<MediaGrant, OpenError>>,
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

pub struct Streamer {
    engine: Engine,
    /// Shared with earlier incarnations: permits held by bodies outlive a restart.
    permits: Arc<StreamPermits>,
    cache: Arc<Mutex<MetaCache>>,
    cache_capacity: usize,
    /// Local copies of published media kept in a remote store.
    copies: Arc<ReadThroughCache>,
    health: Arc<ActorHealth>,
}

impl Streamer {
    pub fn new(
        engine: Engine,
        permits: Arc<StreamPermits>,
        cache_capacity: usize,
        copies: Arc<ReadThroughCache>,
        health: Arc<ActorHealth>,
    ) -> Self {
        Self {
            engine,
            permits,
            cache: Arc::new(Mutex::new(MetaCache::default())),
            cache_capacity,
            copies,
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
        let permits = self.permits.clone();
        let cache = self.cache.clone();
        let capacity = self.cache_capacity;
        let copies = self.copies.clone();
        Box::pin(async move {
            let result = open(&engine, &permits, &cache, capacity, &copies, msg.key).await;
            msg.reply.send(result);
        })
    }
}

async fn open(
    engine: &Engine,
    permits: &Arc<StreamPermits>,
    cache: &Mutex<MetaCache>,
    capacity: usize,
    copies: &Arc<ReadThroughCache>,
    key: MediaKey,
) -> Result<MediaGrant, OpenError> {
    let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key);
    let meta = match cached {
        Some(meta) => meta,
        None => {
            let meta = Arc::new(describe(engine, key, copies).await?);
            // A remote one is looked up again: its local copy may be ready next time.
            if key.kind.is_published() && meta.is_local() {
                cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, meta.clone(), capacity);
            }
            meta
        }
    };
    let permit = permits
        .try_take()
        .ok_or(OpenError::Busy { retry_after_s: 1 })?;
    Ok(MediaGrant { meta, permit })
}

super::call::accepts_injected_faults!(Streamer);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaKind;

    fn meta(n: u8) -> Arc<MediaMeta> {
        Arc::new(MediaMeta::in_memory(
            MediaKind::Processed,
            &n.to_string(),
            bytes::Bytes::from(vec![n]),
        ))
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
}
