//! The job records of the embedded queue and their in-memory index: what the store writes
//! when it commits an upload's job, and what the queue schedules from.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::queue::{Job, QueueStats};
use crate::domain::VideoId;

/// A job as kept in the queue tree: the job plus its visibility and current lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedJob {
    pub job: Job,
    pub visible_at_ms: u64,
    pub lease: Option<String>,
}

impl QueuedJob {
    pub fn fresh(job: Job, now: u64) -> Self {
        Self {
            job,
            visible_at_ms: now,
            lease: None,
        }
    }
}

/// In-memory mirror of the live jobs: when each becomes visible. Changed only under the queue
/// lock, together with the records it mirrors.
#[derive(Debug, Default)]
pub struct QueueIndex {
    visible_at: HashMap<VideoId, u64>,
    /// `(visible_at, id)` of every live job, earliest first.
    schedule: BTreeSet<(u64, VideoId)>,
    pub counts: Arc<QueueCounts>,
}

/// The figures behind [`QueueStats`], readable without the queue lock (admission and health
/// ask for them on every upload, and must not wait behind a queue write).
#[derive(Debug, Default)]
pub struct QueueCounts {
    live: AtomicU64,
    dead: AtomicU64,
    /// Leased jobs and when their lease ends.
    leases: Mutex<HashMap<VideoId, u64>>,
}

impl QueueCounts {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<VideoId, u64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_dead(&self, n: u64) {
        self.dead.fetch_add(n, Ordering::Relaxed);
    }

    pub fn remove_dead(&self) {
        let _ = self
            .dead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(1))
            });
    }

    pub fn stats(&self, now: u64) -> QueueStats {
        let in_flight = self.leases().values().filter(|&&until| until > now).count() as u64;
        QueueStats {
            depth: self.live.load(Ordering::Relaxed).saturating_sub(in_flight),
            in_flight,
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

impl QueueIndex {
    /// Records (or moves) a live job.
    pub fn put(&mut self, id: VideoId, visible_at: u64, leased: bool) {
        match self.visible_at.insert(id, visible_at) {
            Some(old) => {
                self.schedule.remove(&(old, id));
            }
            None => {
                self.counts.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.schedule.insert((visible_at, id));
        let mut leases = self.counts.leases();
        if leased {
            leases.insert(id, visible_at);
        } else {
            leases.remove(&id);
        }
    }

    /// Forgets a live job; returns whether it was there.
    pub fn remove(&mut self, id: VideoId) -> bool {
        self.counts.leases().remove(&id);
        match self.visible_at.remove(&id) {
            Some(at) => {
                self.schedule.remove(&(at, id));
                self.counts.live.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Forgets everything, keeping the shared counters (others hold them).
    pub fn clear(&mut self) {
        self.visible_at.clear();
        self.schedule.clear();
        self.counts.live.store(0, Ordering::Relaxed);
        self.counts.dead.store(0, Ordering::Relaxed);
        self.counts.leases().clear();
    }

    pub fn next_visible(&self, now: u64) -> Option<VideoId> {
        self.schedule
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_tracks_visibility_and_leases() {
        let mut index = QueueIndex::default();
        index.put(1, 100, false);
        index.put(2, 50, false);
        assert_eq!(index.next_visible(49), None);
        assert_eq!(index.next_visible(60), Some(2));
        index.put(2, 1_000, true);
        assert_eq!(index.next_visible(60), None);
        assert_eq!(index.next_visible(100), Some(1));
        let stats = index.counts.stats(500);
        assert_eq!((stats.depth, stats.in_flight), (1, 1));
        // An expired lease counts as waiting again.
        assert_eq!(index.counts.stats(2_000).in_flight, 0);
        assert!(index.remove(2));
        assert!(!index.remove(2));
        assert_eq!(index.counts.stats(0).depth, 1);
    }
}
