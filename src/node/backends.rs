//! What the node last heard from its media store and its queue: reachable, or the error of the
//! last check. The running node checks them every [`PROBE_EVERY`]; admission and readiness read
//! the answer without calling anyone, and it heals by itself when the service comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the backends are checked.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    last_error: Option<String>,
    checked_at: Option<Instant>,
}

/// The reachability of the media store and the queue.
#[derive(Debug)]
pub struct BackendHealth {
    storage: (&'static str, Mutex<State>),
    queue: (&'static str, Mutex<State>),
}

/// One backend, as `/api/health/actors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    pub role: &'static str,
    pub backend: &'static str,
    pub reachable: bool,
    pub last_error: Option<String>,
    pub checked_ms_ago: Option<u64>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl BackendHealth {
    /// `storage` and `queue` name the backends (`local`, `s3`, `embedded`, `sqs`).
    pub fn new(storage: &'static str, queue: &'static str) -> Self {
        Self {
            storage: (storage, Mutex::default()),
            queue: (queue, Mutex::default()),
        }
    }

    fn record(state: &Mutex<State>, outcome: Result<(), String>) {
        let mut state = lock(state);
        state.last_error = outcome.err();
        state.checked_at = Some(Instant::now());
    }

    pub fn record_storage(&self, outcome: Result<(), String>) {
        Self::record(&self.storage.1, outcome);
    }

    pub fn record_queue(&self, outcome: Result<(), String>) {
        Self::record(&self.queue.1, outcome);
    }

    /// What is unreachable now, in words; empty when both answered their last check.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (role, (backend, state)) in [("media store", &self.storage), ("job queue", &self.queue)]
        {
            if let Some(error) = &lock(state).last_error {
                problems.push(format!("the {role} ({backend}) is unreachable: {error}"));
            }
        }
        problems
    }

    pub fn reports(&self) -> Vec<BackendReport> {
        [("storage", &self.storage), ("queue", &self.queue)]
            .into_iter()
            .map(|(role, (backend, state))| {
                let state = lock(state);
                BackendReport {
                    role,
                    backend,
                    reachable: state.last_error.is_none(),
                    last_error: state.last_error.clone(),
                    checked_ms_ago: state.checked_at.map(|t| t.elapsed().as_millis() as u64),
                }
            })
            .collect()
    }
}
