//! systemd integration (`Type=notify`): READY=1 once the listener is bound and recovery is
//! done, WATCHDOG=1 pings only while the Supervisor is healthy (so systemd restarts a node whose
//! error kernel is stuck or has given up), and a one-line STATUS.
//!
//! Every call is a no-op when the process was not started by systemd (no `NOTIFY_SOCKET`).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::node::Node;

/// How often STATUS is refreshed when systemd asked for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

pub async fn ready(node: &Node) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&node.status_line().await),
    ]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
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
pub async fn keep_alive(node: Arc<Node>) {
    let interval = watchdog_interval();
    let watchdog = interval.is_some();
    let every = interval.map_or(STATUS_EVERY, |i| (i / 2).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let status = node.status_line().await;
        if watchdog && node.supervisor_healthy() {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
}
