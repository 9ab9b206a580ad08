//! Group commit for sled.
//!
//! sled makes writes durable only when its log is flushed, by default every 500 ms. A write that
//! is acknowledged to a client must be on disk first, but one fsync per write would cap the
//! server at a few hundred writes per second. Writers therefore register with `GroupCommit` and
//! wait; one flusher thread fsyncs once for everyone who registered before the flush began.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommitError {
    #[error("the store could not be flushed: {0}")]
    Flush(String),
    #[error("the store did not confirm the write within {0:?}")]
    Timeout(Duration),
    #[error("the store is shutting down")]
    Closed,
}

/// What the flusher has done so far, published to the waiters.
#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Every request up to this generation is on disk.
    generation: u64,
    /// The last failed flush: the requests up to this generation it was meant to cover, and why.
    failed: Option<(u64, String)>,
}

impl Flushed {
    /// The answer for the request of `generation`, once there is one.
    fn outcome(&self, generation: u64) -> Option<Result<(), CommitError>> {
        if self.generation >= generation {
            return Some(Ok(()));
        }
        match &self.failed {
            // A flush that started after this request registered has failed.
            Some((covered, error)) if *covered >= generation => {
                Some(Err(CommitError::Flush(error.clone())))
            }
            _ => None,
        }
    }
}

struct Shared {
    db: sled::Db,
    requested: AtomicU64,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    stop: AtomicBool,
    flushed_tx: watch::Sender<Flushed>,
    flushes: AtomicU64,
    flush_nanos: AtomicU64,
}

/// Batches concurrent durability requests into single `sled::Db::flush` calls.
pub struct GroupCommit {
    shared: Arc<Shared>,
    flushed_rx: watch::Receiver<Flushed>,
    timeout: Duration,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupCommit {
    pub fn start(db: sled::Db, timeout: Duration) -> Self {
        let (flushed_tx, flushed_rx) = watch::channel(Flushed::default());
        let shared = Arc::new(Shared {
            db,
            requested: AtomicU64::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            flushed_tx,
            flushes: AtomicU64::new(0),
            flush_nanos: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || flusher(worker))
            .expect("spawn the store commit thread");
        Self {
            shared,
            flushed_rx,
            timeout,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Returns once every write made before this call is on disk.
    pub async fn durable(&self) -> Result<(), CommitError> {
        let generation = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut pending = self.shared.wake.lock().unwrap_or_else(|p| p.into_inner());
            *pending = true;
            self.shared.wake_cv.notify_one();
        }
        let mut rx = self.flushed_rx.clone();
        let waited = tokio::time::timeout(self.timeout, async {
            match rx.wait_for(|f| f.outcome(generation).is_some()).await {
                Ok(f) => f.outcome(generation).unwrap_or(Err(CommitError::Closed)),
                Err(_) => Err(CommitError::Closed),
            }
        })
        .await;
        waited.unwrap_or(Err(CommitError::Timeout(self.timeout)))
    }

    /// How many fsyncs have been made (each covering one or more writes).
    pub fn flush_count(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// Time spent in fsyncs so far.
    pub fn flush_time(&self) -> Duration {
        Duration::from_nanos(self.shared.flush_nanos.load(Ordering::Relaxed))
    }

    /// Flushes synchronously, for shutdown.
    pub fn flush_now(&self) -> Result<(), CommitError> {
        self.shared
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| CommitError::Flush(e.to_string()))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let mut pending = self.shared.wake.lock().unwrap_or_else(|p| p.into_inner());
            *pending = true;
            self.shared.wake_cv.notify_one();
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn flusher(shared: Arc<Shared>) {
    loop {
        {
            let mut pending = shared.wake.lock().unwrap_or_else(|p| p.into_inner());
            while !*pending {
                pending = shared
                    .wake_cv
                    .wait(pending)
                    .unwrap_or_else(|p| p.into_inner());
            }
            *pending = false;
        }
        // Every writer counted here finished its write before registering.
        let target = shared.requested.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = shared.db.flush();
        shared
            .flush_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        shared.flushed_tx.send_modify(|f| match &result {
            Ok(_) => f.generation = f.generation.max(target),
            Err(e) => {
                tracing::error!(error = %e, "the store could not be flushed");
                f.failed = Some((target, e.to_string()));
            }
        });
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_flush_fails_only_the_requests_it_covered() {
        let mut f = Flushed::default();
        assert_eq!(f.outcome(1), None);
        f.generation = 3;
        assert_eq!(f.outcome(3), Some(Ok(())));
        assert_eq!(f.outcome(4), None);
        f.failed = Some((5, "disk gone".into()));
        assert!(matches!(f.outcome(4), Some(Err(CommitError::Flush(_)))));
        assert!(matches!(f.outcome(5), Some(Err(CommitError::Flush(_)))));
        // A request made after the failed flush started waits for the next flush.
        assert_eq!(f.outcome(6), None);
        f.generation = 6;
        assert_eq!(f.outcome(6), Some(Ok(())));
    }

    #[tokio::test]
    async fn concurrent_waiters_share_flushes_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let commit = Arc::new(GroupCommit::start(db.clone(), Duration::from_secs(10)));
        let tree = db.open_tree("t").unwrap();
        let waiters: Vec<_> = (0..100u64)
            .map(|i| {
                let (commit, tree) = (commit.clone(), tree.clone());
                tokio::spawn(async move {
                    tree.insert(i.to_be_bytes(), &[1]).unwrap();
                    commit.durable().await
                })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        assert_eq!(tree.len(), 100);
    }
}
