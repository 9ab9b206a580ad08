//! systemd integration (`Type=notify`): READY=1 once the listener is bound and recovery is
//! done, WATCHDOG=1 pings only while the Supervisor is healthy (so systemd restarts a node whose
//! error kernel is stuck or has given up), and a one-line STATUS.
//!
//! Every call is a no-op when the process was not started by systemd (no `NOTIFY_SOCKET`).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::app::{AppState, HEARTBEAT_STALE_MS};

/// How often STATUS is refreshed when systemd asked for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// One line for `systemctl status`.
pub async fn status_line(state: &AppState) -> String {
    let streams = state.streams.active();
    let queue = state.engine.queue.stats().await.unwrap_or_default();
    let actors = state.registry.reports();
    let running = actors
        .iter()
        .filter(|a| a.state == crate::health::ActorState::Running)
        .count();
    match state.registry.escalated() {
        Some(reason) => format!("escalated: {reason}"),
        None => format!(
            "{running}/{} actors running; queue {} waiting, {} processing, {} dead; {streams} streams",
            actors.len(),
            queue.depth,
            queue.in_flight,
            queue.dead
        ),
    }
}

pub async fn ready(state: &AppState) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(state).await),
    ]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Whether the Supervisor is doing its job: not escalated, and its own heartbeat fresh.
pub fn supervisor_healthy(state: &AppState) -> bool {
    state.registry.escalated().is_none()
        && state
            .registry
            .get("supervisor")
            .is_some_and(|s| s.heartbeat_age_ms() <= HEARTBEAT_STALE_MS)
}

/// The watchdog interval systemd asked for, as libsystemd's `sd_watchdog_enabled` reads it:
/// `WATCHDOG_USEC`, addressed to us when `WATCHDOG_PID` is absent or names this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then(|| Duration::from_micros(usec)),
    }
}

/// Pings the watchdog (at half its interval) while the Supervisor is healthy, and refreshes
/// STATUS. Never returns; aborted at shutdown.
pub async fn keep_alive(state: Arc<AppState>) {
    let interval = watchdog_interval();
    let watchdog = interval.is_some();
    let every = interval.map_or(STATUS_EVERY, |i| (i / 2).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let status = status_line(&state).await;
        if watchdog && supervisor_healthy(&state) {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
}
