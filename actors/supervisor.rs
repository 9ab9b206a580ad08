//! The Supervisor: starts the children in order and keeps them alive, OTP-style.
//!
//! actix's own supervision restarts only an actor that stopped itself, catches no panics and
//! has no limit, so liveness is judged here, from the outside, every 100 ms:
//! - a child whose mailbox is gone died (a panic unwinding through its arbiter, or a stop);
//!   a panic anywhere on a child's thread, even in a task that left the actor alive, counts as
//!   a crash too (the panic hook in [`panics`] tells which thread panicked and why);
//! - a child whose heartbeat is older than the heartbeat timeout is stuck.
//!
//! What follows depends on the child's [`Restart`] type. A restart happens on a *fresh*
//! arbiter (a stuck thread cannot be reclaimed; the old arbiter is told to stop and ends when
//! it unblocks), after an exponential backoff, and may take the later children with it
//! (rest-for-one, for children that hold handles to this one). Restarted children rebuild their
//! state from the store and the shared capacities handed to their factory, never from the dead
//! incarnation's memory.
//!
//! Restarts are limited by an intensity (at most N in T seconds). Beyond it the Supervisor
//! **escalates**: it stops restarting, marks the node unready with the reason, and tells the
//! application, which drains for `server.shutdown_grace_s` and exits non-zero so that systemd
//! restarts the whole service.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::{self, Event};
use crate::health::{ActorHealth, ActorState, HealthRegistry};

/// How often the children are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// When a child that ended is started again (Erlang/OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only if it ended abnormally (a panic or a stall), not if it stopped by itself.
    Transient,
    /// Never.
    Temporary,
}

/// How many restarts are tolerated, and how they are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub period: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// What the Supervisor does about a child that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RestartAfter(Duration),
    Escalate,
}

/// The recent restarts of one child (pure bookkeeping, tested on its own).
#[derive(Debug, Default)]
pub struct RestartHistory {
    recent: VecDeque<Instant>,
}

impl RestartHistory {
    /// Records a failure at `now` and decides: restart after a backoff that doubles with each
    /// restart still inside the period, or escalate once the period holds too many.
    pub fn on_failure(&mut self, now: Instant, intensity: &Intensity) -> Verdict {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) > intensity.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= intensity.max_restarts {
            return Verdict::Escalate;
        }
        let doublings = (self.recent.len() as u32).min(16);
        self.recent.push_back(now);
        Verdict::RestartAfter(
            intensity
                .backoff_base
                .saturating_mul(1 << doublings)
                .min(intensity.backoff_max),
        )
    }
}

/// Why a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Panicked(String),
    Stalled { heartbeat_age_ms: u64 },
    Stopped,
}

impl Exit {
    fn abnormal(&self) -> bool {
        !matches!(self, Exit::Stopped)
    }

    fn reason(&self) -> String {
        match self {
            Exit::Panicked(message) => format!("panicked: {message}"),
            Exit::Stalled { heartbeat_age_ms } => {
                format!("stalled: no heartbeat for {heartbeat_age_ms} ms")
            }
            Exit::Stopped => "stopped".into(),
        }
    }
}

/// How to start one child and tell whether it is alive.
pub struct ChildSpec {
    pub name: &'static str,
    pub health: Arc<ActorHealth>,
    pub restart: Restart,
    /// Rest-for-one: restarting this child restarts every child started after it (they hold
    /// handles to it, or depend on work it owned).
    pub restart_later_children: bool,
    /// Starts a fresh incarnation on the given arbiter and publishes its address.
    pub start: Box<dyn Fn(&ArbiterHandle) + Send>,
    /// Stops publishing the incarnation's address (it is being replaced).
    pub forget: Box<dyn Fn() + Send>,
    pub is_alive: Box<dyn Fn() -> bool + Send>,
}

impl ChildSpec {
    /// The spec of an actor reached through `actor`: each (re)start builds a fresh value with
    /// `make` on the child's arbiter, with the given mailbox capacity, and publishes its address.
    pub fn for_actor<A>(
        actor: &super::call::ActorRef<A>,
        mailbox_capacity: usize,
        make: impl Fn() -> A + Send + 'static,
    ) -> Self
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let handle = actor.clone();
        let forget = actor.clone();
        let alive = actor.clone();
        ChildSpec {
            name: actor.health.name,
            health: actor.health.clone(),
            restart: Restart::Permanent,
            restart_later_children: false,
            start: Box::new(move |arbiter| {
                let fresh = make();
                let addr = A::start_in_arbiter(arbiter, move |ctx| {
                    ctx.set_mailbox_capacity(mailbox_capacity);
                    fresh
                });
                handle.set(Some(addr));
            }),
            forget: Box::new(move || forget.set(None)),
            is_alive: Box::new(move || alive.is_alive()),
        }
    }

    pub fn restarting_later_children(mut self) -> Self {
        self.restart_later_children = true;
        self
    }
}

/// The settings of one Supervisor.
#[derive(Debug, Clone, Copy)]
pub struct SupervisorSettings {
    pub intensity: Intensity,
    /// A child whose heartbeat is older than this is stuck and restarted.
    pub heartbeat_timeout: Duration,
}

struct Child {
    spec: ChildSpec,
    arbiter: Option<Arbiter>,
    thread: Arc<Mutex<Option<ThreadId>>>,
    history: RestartHistory,
    /// Waiting out a backoff before starting again.
    restart_at: Option<Instant>,
    /// Will not be started again (temporary, or transient that stopped normally).
    retired: bool,
}

impl Child {
    fn thread(&self) -> Option<ThreadId> {
        *self.thread.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fresh incarnation on a new arbiter; the previous arbiter ends when it can.
    fn start(&mut self) {
        if let Some(old) = self.arbiter.take() {
            old.stop();
        }
        let arbiter = Arbiter::new();
        let slot = self.thread.clone();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        arbiter.spawn(async move {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
        });
        self.spec.health.set_state(ActorState::Starting);
        self.spec.health.heartbeat();
        (self.spec.start)(&arbiter.handle());
        self.arbiter = Some(arbiter);
        self.restart_at = None;
    }

    /// Takes the incarnation out of service until its restart.
    fn take_down(&mut self) {
        (self.spec.forget)();
        if let Some(old) = self.arbiter.take() {
            old.stop();
        }
    }
}

pub struct Supervisor {
    registry: Arc<HealthRegistry>,
    settings: SupervisorSettings,
    pending: Vec<ChildSpec>,
    children: Vec<Child>,
    me: Option<Arc<ActorHealth>>,
    escalation: watch::Sender<Option<String>>,
    escalated: bool,
}

impl Supervisor {
    pub fn new(
        registry: Arc<HealthRegistry>,
        settings: SupervisorSettings,
        children: Vec<ChildSpec>,
        escalation: watch::Sender<Option<String>>,
    ) -> Self {
        Self {
            registry,
            settings,
            pending: children,
            children: Vec::new(),
            me: None,
            escalation,
            escalated: false,
        }
    }

    fn watch(&mut self) {
        if let Some(me) = &self.me {
            me.heartbeat();
        }
        if self.escalated {
            return;
        }
        let now = Instant::now();
        for index in 0..self.children.len() {
            let child = &mut self.children[index];
            if child.retired {
                continue;
            }
            if let Some(at) = child.restart_at {
                if now >= at {
                    child.start();
                    events::emit(Event::ActorStarted {
                        actor: child.spec.name,
                        restarts: child.spec.health.restarts(),
                    });
                }
                continue;
            }
            let panicked = child.thread().and_then(crate::panics::take);
            let exit = if let Some(message) = panicked {
                Some(Exit::Panicked(message))
            } else if !(child.spec.is_alive)() {
                Some(Exit::Stopped)
            } else {
                let age = child.spec.health.heartbeat_age_ms();
                (age > self.settings.heartbeat_timeout.as_millis() as u64).then_some(
                    Exit::Stalled {
                        heartbeat_age_ms: age,
                    },
                )
            };
            if let Some(exit) = exit {
                self.child_ended(index, exit, now);
                if self.escalated {
                    return;
                }
            }
        }
    }

    fn child_ended(&mut self, index: usize, exit: Exit, now: Instant) {
        let intensity = self.settings.intensity;
        let child = &mut self.children[index];
        let name = child.spec.name;
        let reason = exit.reason();
        child.spec.health.record_failure(reason.clone());
        child.take_down();
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => exit.abnormal(),
            Restart::Temporary => false,
        };
        if !restart {
            child.retired = true;
            child.spec.health.set_state(ActorState::Stopped);
            events::emit(Event::ActorEnded {
                actor: name,
                reason,
                restarting: false,
            });
            return;
        }
        match child.history.on_failure(now, &intensity) {
            Verdict::Escalate => {
                child.spec.health.set_state(ActorState::Failed);
                self.escalate(format!(
                    "actor {name} failed {} times within {} s ({reason}); giving up",
                    intensity.max_restarts + 1,
                    intensity.period.as_secs()
                ));
            }
            Verdict::RestartAfter(delay) => {
                child.spec.health.set_state(ActorState::Restarting);
                child.spec.health.record_restart();
                child.restart_at = Some(now + delay);
                events::emit(Event::ActorEnded {
                    actor: name,
                    reason: reason.clone(),
                    restarting: true,
                });
                if child.spec.restart_later_children {
                    for later in &mut self.children[index + 1..] {
                        if later.retired || later.restart_at.is_some() {
                            continue;
                        }
                        later
                            .spec
                            .health
                            .record_failure(format!("restarted with {name}"));
                        later.spec.health.set_state(ActorState::Restarting);
                        later.spec.health.record_restart();
                        later.take_down();
                        later.restart_at = Some(now + delay);
                    }
                }
            }
        }
    }

    fn escalate(&mut self, reason: String) {
        self.escalated = true;
        self.registry.set_escalated(reason.clone());
        events::emit(Event::SupervisorEscalated {
            reason: reason.clone(),
        });
        let _ = self.escalation.send(Some(reason));
    }
}

/// Stops every child and then the Supervisor itself (orderly shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopChildren;

impl Handler<StopChildren> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopChildren, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        let me = self.registry.register("supervisor", 16);
        me.set_state(ActorState::Running);
        me.heartbeat();
        self.me = Some(me);
        for spec in std::mem::take(&mut self.pending) {
            let mut child = Child {
                spec,
                arbiter: None,
                thread: Arc::new(Mutex::new(None)),
                history: RestartHistory::default(),
                restart_at: None,
                retired: false,
            };
            child.start();
            events::emit(Event::ActorStarted {
                actor: child.spec.name,
                restarts: 0,
            });
            self.children.push(child);
        }
        ctx.run_interval(WATCH_INTERVAL, |act, _| act.watch());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for mut child in self.children.drain(..) {
            child.spec.health.set_state(ActorState::Stopped);
            child.take_down();
        }
        if let Some(me) = &self.me {
            me.set_state(ActorState::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intensity() -> Intensity {
        Intensity {
            max_restarts: 3,
            period: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_then_escalate_past_the_intensity() {
        let mut history = RestartHistory::default();
        let limit = intensity();
        let now = Instant::now();
        assert_eq!(
            history.on_failure(now, &limit),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            history.on_failure(now, &limit),
            Verdict::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            history.on_failure(now, &limit),
            Verdict::RestartAfter(Duration::from_millis(350))
        );
        assert_eq!(history.on_failure(now, &limit), Verdict::Escalate);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_period_are_forgotten() {
        let mut history = RestartHistory::default();
        let limit = intensity();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                history.on_failure(start, &limit),
                Verdict::RestartAfter(_)
            ));
        }
        let later = start + Duration::from_secs(31);
        assert_eq!(
            history.on_failure(later, &limit),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn only_abnormal_exits_restart_transient_children() {
        assert!(Exit::Panicked("x".into()).abnormal());
        assert!(Exit::Stalled {
            heartbeat_age_ms: 5
        }
        .abnormal());
        assert!(!Exit::Stopped.abnormal());
    }
}
