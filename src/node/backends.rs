//! What the node last heard from its media store and its queue: reachable, or the error of the
//! last check. The running node checks them every [`PROBE_EVERY`]; admission and readiness read
//! the answer without calling anyone, and it heals by itself when the service comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Role;
use crate::engine::Membership;

/// How often the backends are checked.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A node not seen alive for this long is no longer counted among the platform's.
pub const NODE_FRESH: Duration = Duration::from_secs(10);

/// A node not seen alive for this long is dead: the originals of its uploads in progress are
/// deleted. Longer than [`NODE_FRESH`], so that a node slow to say it is alive (a busy pool,
/// a pause) is not taken for dead while it stores an upload.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    last_error: Option<String>,
    checked_at: Option<Instant>,
}

/// One of the services a node depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The records (sled or PostgreSQL).
    Store,
    /// The media (local disk or S3).
    Storage,
    /// The jobs (the store's queue or SQS).
    Queue,
}

impl Service {
    const ALL: [Service; 3] = [Service::Store, Service::Storage, Service::Queue];

    /// Its name in `/api/health/actors`.
    fn role(self) -> &'static str {
        match self {
            Service::Store => "store",
            Service::Storage => "storage",
            Service::Queue => "queue",
        }
    }

    /// Its name in words, for readiness and refusals.
    fn words(self) -> &'static str {
        match self {
            Service::Store => "record store",
            Service::Storage => "media store",
            Service::Queue => "job queue",
        }
    }
}

/// The reachability of the record store, the media store and the queue.
#[derive(Debug)]
pub struct BackendHealth {
    /// Each service, the backend that provides it, and what it last answered.
    services: [(Service, &'static str, Mutex<State>); 3],
}

/// One backend, as `/api/health/actors` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// `backends` name what provides each service, in [`Service`] order (store, storage,
    /// queue): `sled`, `postgres`, `local`, `s3`, `embedded`, `sqs`.
    pub fn new(backends: [&'static str; 3]) -> Self {
        Self {
            services: std::array::from_fn(|i| (Service::ALL[i], backends[i], Mutex::default())),
        }
    }

    /// Records what `service` answered its check.
    pub fn record(&self, service: Service, outcome: Result<(), String>) {
        if let Some((_, _, state)) = self.services.iter().find(|(s, _, _)| *s == service) {
            let mut state = lock(state);
            state.last_error = outcome.err();
            state.checked_at = Some(Instant::now());
        }
    }

    /// What is unreachable now, in words; empty when every service answered its last check.
    pub fn problems(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(|(service, backend, state)| {
                let error = lock(state).last_error.clone()?;
                Some(format!(
                    "the {} ({backend}) is unreachable: {error}",
                    service.words()
                ))
            })
            .collect()
    }

    pub fn reports(&self) -> Vec<BackendReport> {
        self.services
            .iter()
            .map(|(service, backend, state)| {
                let state = lock(state);
                BackendReport {
                    role: service.role(),
                    backend,
                    reachable: state.last_error.is_none(),
                    last_error: state.last_error.clone(),
                    checked_ms_ago: state.checked_at.map(|t| t.elapsed().as_millis() as u64),
                }
            })
            .collect()
    }
}

/// This node's name among the platform's nodes, and those nodes as last counted.
#[derive(Debug)]
pub struct Platform {
    pub id: std::sync::Arc<str>,
    counted: Mutex<Membership>,
}

impl Platform {
    /// A name no other node has: host, process and a random part.
    pub fn new_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}-{}", host.trim(), std::process::id(), &unique[..8])
    }

    pub fn new(id: std::sync::Arc<str>, role: Role) -> Self {
        Self {
            id,
            counted: Mutex::new(Membership::alone(role)),
        }
    }

    pub fn record(&self, membership: Membership) {
        *self.counted.lock().unwrap_or_else(|p| p.into_inner()) = membership;
    }

    pub fn counted(&self) -> Membership {
        *self.counted.lock().unwrap_or_else(|p| p.into_inner())
    }
}
