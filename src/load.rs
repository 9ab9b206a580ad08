//! What the node observes of its own load, to tell refused clients when to come back.
//!
//! A refusal's `Retry-After` is the time the node needs to drain what is in the way: the
//! demand it has just refused divided by the rate at which upload slots free up, or the excess
//! of the queue divided by the rate at which jobs finish. Rates are exponentially decaying
//! averages (time constant [`WINDOW`]), so they follow the load within seconds and cost one
//! short lock per event. Answers are bounded to [`MIN_RETRY_S`]..=[`MAX_RETRY_S`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The time constant of the rate averages.
pub const WINDOW: Duration = Duration::from_secs(10);
pub const MIN_RETRY_S: u64 = 1;
pub const MAX_RETRY_S: u64 = 60;
/// A refused client is told to come back once the node could have served the clients refused
/// within this span before it: they are the ones it will compete with. A longer span keeps
/// refused clients away while slots fall idle (`docs/benchmarks.md`).
pub const REFUSED_DEMAND_SPAN: Duration = Duration::from_secs(1);
/// A node that refused an upload for want of a slot this recently is shedding load.
pub const SHEDDING_FOR: Duration = Duration::from_secs(2);

/// Events per second, averaged with an exponential decay.
#[derive(Debug)]
pub struct RateMeter {
    state: Mutex<(Instant, f64)>,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self {
            state: Mutex::new((Instant::now(), 0.0)),
        }
    }
}

impl RateMeter {
    fn decayed(rate: f64, since: Instant, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(since).as_secs_f64();
        rate * (-dt / WINDOW.as_secs_f64()).exp()
    }

    pub fn record_at(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rate = Self::decayed(state.1, state.0, now) + 1.0 / WINDOW.as_secs_f64();
        *state = (now, rate);
    }

    pub fn record(&self) {
        self.record_at(Instant::now());
    }

    pub fn per_second_at(&self, now: Instant) -> f64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Self::decayed(state.1, state.0, now)
    }

    pub fn per_second(&self) -> f64 {
        self.per_second_at(Instant::now())
    }
}

/// `work / rate` seconds, rounded up and bounded; the maximum when nothing drains.
pub fn retry_after_s(work: f64, rate_per_s: f64) -> u64 {
    if rate_per_s <= f64::EPSILON {
        return MAX_RETRY_S;
    }
    let seconds = (work / rate_per_s).ceil();
    (seconds as u64).clamp(MIN_RETRY_S, MAX_RETRY_S)
}

/// The node's drain rates, shared by the actors that see the events.
#[derive(Debug)]
pub struct Load {
    /// Upload slots given back (an upload finished, was refused midway or vanished).
    pub slots_freed: RateMeter,
    /// Uploads refused for want of a slot.
    pub refused_for_slots: RateMeter,
    /// Jobs that left the queue for good (published or dead-lettered).
    pub jobs_done: RateMeter,
    started: Instant,
    /// Milliseconds after `started` of the last refusal for want of a slot (0 = never).
    last_shed_ms: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            slots_freed: RateMeter::default(),
            refused_for_slots: RateMeter::default(),
            jobs_done: RateMeter::default(),
            started: Instant::now(),
            last_shed_ms: AtomicU64::new(0),
        }
    }
}

impl Load {
    /// Records a refusal for want of a slot and says when to come back: the demand refused
    /// within [`REFUSED_DEMAND_SPAN`] (this client included) over the rate at which slots free
    /// up. With no slot freed lately (uploads are long, or the node just started) the slots
    /// themselves are the estimate: each will be free within the time an upload takes, unknown
    /// here, so a short wait.
    pub fn refuse_for_slots(&self, max_slots: usize) -> u64 {
        let now = Instant::now();
        self.refused_for_slots.record_at(now);
        let since_start = now.duration_since(self.started).as_millis() as u64;
        self.last_shed_ms
            .store(since_start.max(1), Ordering::Relaxed);
        let freed = self.slots_freed.per_second_at(now);
        if freed <= f64::EPSILON {
            return retry_after_s(1.0, max_slots.max(1) as f64 / 2.0);
        }
        let demand = self.refused_for_slots.per_second_at(now) * REFUSED_DEMAND_SPAN.as_secs_f64();
        retry_after_s(demand.max(1.0), freed)
    }

    /// When a queue holding `depth` jobs (watermark `max_depth`) will have room again.
    pub fn queue_retry_after_s(&self, depth: u64, max_depth: u64) -> u64 {
        let excess = depth.saturating_sub(max_depth) + 1;
        retry_after_s(excess as f64, self.jobs_done.per_second())
    }

    /// Whether an upload was refused for want of a slot within [`SHEDDING_FOR`].
    pub fn is_shedding(&self) -> bool {
        let last = self.last_shed_ms.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(last) < SHEDDING_FOR.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_measured_and_decays_when_events_stop() {
        let meter = RateMeter::default();
        let start = Instant::now();
        // 5 events per second for a minute: six time constants, so the average has converged.
        for i in 0..300 {
            meter.record_at(start + Duration::from_millis(200 * i));
        }
        let at_end = start + Duration::from_secs(60);
        let rate = meter.per_second_at(at_end);
        assert!((rate - 5.0).abs() < 0.6, "{rate}");
        let later = meter.per_second_at(at_end + WINDOW);
        assert!((later - rate / std::f64::consts::E).abs() < 0.01, "{later}");
    }

    #[test]
    fn retry_after_is_work_over_rate_within_bounds() {
        assert_eq!(retry_after_s(10.0, 2.0), 5);
        assert_eq!(retry_after_s(0.1, 100.0), MIN_RETRY_S);
        assert_eq!(retry_after_s(1e9, 1.0), MAX_RETRY_S);
        assert_eq!(retry_after_s(1.0, 0.0), MAX_RETRY_S);
    }

    #[test]
    fn refusals_grow_the_wait_and_mark_the_node_shedding() {
        let load = Load::default();
        assert!(!load.is_shedding());
        for _ in 0..20 {
            load.slots_freed.record();
        }
        let first = load.refuse_for_slots(16);
        assert!(load.is_shedding());
        for _ in 0..200 {
            load.refuse_for_slots(16);
        }
        let crowded = load.refuse_for_slots(16);
        assert!(crowded > first, "{first} then {crowded}");
        assert!((MIN_RETRY_S..=MAX_RETRY_S).contains(&crowded));
    }

    #[test]
    fn a_queue_that_does_not_drain_says_the_longest_wait() {
        let load = Load::default();
        assert_eq!(load.queue_retry_after_s(100, 100), MAX_RETRY_S);
        for _ in 0..50 {
            load.jobs_done.record();
        }
        // 5 jobs/s drained: one place free in a second.
        assert_eq!(load.queue_retry_after_s(100, 100), 1);
        assert!(load.queue_retry_after_s(400, 100) > 1);
    }
}
