//! The health registry: what every actor reports about itself (state, restarts, last failure,
//! mailbox depth, in-flight work, heartbeat), read by the health routes and the Supervisor.
//!
//! Entries are created by the Supervisor when it registers a child and outlive restarts of that
//! child, so counters such as `restarts` accumulate across incarnations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::domain::{format_ts, now_ms, now_ts, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Starting,
    Running,
    Restarting,
    Stopped,
    /// Restarted too often; the Supervisor gave up on it.
    Failed,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub at: String,
    pub reason: String,
}

/// Live figures of one actor.
#[derive(Debug)]
pub struct ActorHealth {
    pub name: &'static str,
    state: Mutex<ActorState>,
    restarts: AtomicU32,
    last_failure: Mutex<Option<(Timestamp, String)>>,
    mailbox_capacity: usize,
    mailbox_depth: Arc<AtomicUsize>,
    in_flight: AtomicUsize,
    last_heartbeat_ms: AtomicU64,
}

/// Held by a message while it sits in a mailbox: counts mailbox depth without help from actix,
/// which does not expose it.
#[derive(Debug)]
pub struct MailboxTicket(Arc<AtomicUsize>);

impl Drop for MailboxTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one unit of in-flight work for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<ActorHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ActorHealth {
    fn new(name: &'static str, mailbox_capacity: usize) -> Self {
        Self {
            name,
            state: Mutex::new(ActorState::Starting),
            restarts: AtomicU32::new(0),
            last_failure: Mutex::new(None),
            mailbox_capacity,
            mailbox_depth: Arc::new(AtomicUsize::new(0)),
            in_flight: AtomicUsize::new(0),
            last_heartbeat_ms: AtomicU64::new(now_ms()),
        }
    }

    pub fn state(&self) -> ActorState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_state(&self, state: ActorState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn heartbeat(&self) {
        self.last_heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn heartbeat_age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.last_heartbeat_ms.load(Ordering::Relaxed))
    }

    pub fn record_failure(&self, reason: impl Into<String>) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((now_ts(), reason.into()));
    }

    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Called just before a message is put in the mailbox.
    pub fn ticket(&self) -> MailboxTicket {
        self.mailbox_depth.fetch_add(1, Ordering::Relaxed);
        MailboxTicket(self.mailbox_depth.clone())
    }

    pub fn mailbox_depth(&self) -> usize {
        self.mailbox_depth.load(Ordering::Relaxed)
    }

    pub fn mailbox_capacity(&self) -> usize {
        self.mailbox_capacity
    }

    pub fn start_work(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> ActorReport {
        ActorReport {
            name: self.name,
            state: self.state(),
            restarts: self.restarts(),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(at, reason)| Failure {
                    at: format_ts(*at),
                    reason: reason.clone(),
                }),
            mailbox_depth: self.mailbox_depth(),
            mailbox_capacity: self.mailbox_capacity,
            in_flight: self.in_flight(),
            heartbeat_age_ms: self.heartbeat_age_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActorReport {
    pub name: &'static str,
    pub state: ActorState,
    pub restarts: u32,
    pub last_failure: Option<Failure>,
    pub mailbox_depth: usize,
    pub mailbox_capacity: usize,
    pub in_flight: usize,
    pub heartbeat_age_ms: u64,
}

#[derive(Debug, Default)]
pub struct HealthRegistry {
    actors: RwLock<BTreeMap<&'static str, Arc<ActorHealth>>>,
    started_at_ms: u64,
    /// Why the Supervisor gave up, once it has.
    escalated: Mutex<Option<String>>,
}

impl HealthRegistry {
    pub fn new() -> Self {
        Self {
            actors: RwLock::new(BTreeMap::new()),
            started_at_ms: now_ms(),
            escalated: Mutex::new(None),
        }
    }

    /// The entry of `name`, created on first use.
    pub fn register(&self, name: &'static str, mailbox_capacity: usize) -> Arc<ActorHealth> {
        let mut actors = self.actors.write().unwrap_or_else(|p| p.into_inner());
        actors
            .entry(name)
            .or_insert_with(|| Arc::new(ActorHealth::new(name, mailbox_capacity)))
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ActorHealth>> {
        self.actors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn reports(&self) -> Vec<ActorReport> {
        self.actors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|a| a.report())
            .collect()
    }

    pub fn uptime_s(&self) -> u64 {
        now_ms().saturating_sub(self.started_at_ms) / 1000
    }

    pub fn set_escalated(&self, reason: String) {
        *self.escalated.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Why the Supervisor escalated, if it did.
    pub fn escalated(&self) -> Option<String> {
        self.escalated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Names of the actors whose state is not `running`.
    pub fn not_running(&self) -> Vec<&'static str> {
        self.reports()
            .into_iter()
            .filter(|r| r.state != ActorState::Running)
            .map(|r| r.name)
            .collect()
    }

    /// Why the actors are not all healthy, if they are not. A heartbeat older than
    /// `stale_after_ms` counts as unhealthy.
    pub fn problems(&self, stale_after_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(reason) = self.escalated() {
            out.push(format!("the supervisor escalated: {reason}"));
        }
        for report in self.reports() {
            if report.state != ActorState::Running {
                out.push(format!("actor {} is {:?}", report.name, report.state).to_lowercase());
            } else if report.heartbeat_age_ms > stale_after_ms {
                out.push(format!(
                    "actor {} missed its heartbeat ({} ms)",
                    report.name, report.heartbeat_age_ms
                ));
            }
        }
        out
    }
}
