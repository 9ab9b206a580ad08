//! The Supervisor: starts the children in order, each on its own arbiter (thread), watches
//! them, and restarts one that died (one-for-one). actix's own supervision restarts only an actor
//! that stopped itself and catches no panics, so liveness is judged here from the outside: a
//! child whose mailbox receiver is gone (it panicked or stopped) is restarted on the same
//! arbiter, counted in the health registry with the reason.
//!
//! Restarted children rebuild their state from the store and the shared capacities handed to
//! their factory, never from the dead incarnation's memory.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::health::{ActorHealth, ActorState, HealthRegistry};

/// How often the children are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How to start one child and tell whether it is alive.
pub struct ChildSpec {
    pub name: &'static str,
    pub health: Arc<ActorHealth>,
    /// Starts a fresh incarnation on the given arbiter and publishes its address.
    pub start: Box<dyn Fn(&ArbiterHandle) + Send>,
    pub is_alive: Box<dyn Fn() -> bool + Send>,
}

impl ChildSpec {
    /// The spec of an actor reached through `actor`: each (re)start builds a fresh value with
    /// `make` on the child's arbiter, with the given mailbox capacity, and publishes its address.
    pub fn for_actor<A>(
        actor: &super::ActorRef<A>,
        mailbox_capacity: usize,
        make: impl Fn() -> A + Send + 'static,
    ) -> Self
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let handle = actor.clone();
        let alive = actor.clone();
        ChildSpec {
            name: actor.health.name,
            health: actor.health.clone(),
            start: Box::new(move |arbiter| {
                let fresh = make();
                let addr = A::start_in_arbiter(arbiter, move |ctx| {
                    ctx.set_mailbox_capacity(mailbox_capacity);
                    fresh
                });
                handle.set(Some(addr));
            }),
            is_alive: Box::new(move || alive.is_alive()),
        }
    }
}

struct Child {
    spec: ChildSpec,
    arbiter: Arbiter,
}

pub struct Supervisor {
    registry: Arc<HealthRegistry>,
    pending: Vec<ChildSpec>,
    children: Vec<Child>,
    me: Option<Arc<ActorHealth>>,
}

impl Supervisor {
    pub fn new(registry: Arc<HealthRegistry>, children: Vec<ChildSpec>) -> Self {
        Self {
            registry,
            pending: children,
            children: Vec::new(),
            me: None,
        }
    }

    fn watch(&mut self) {
        if let Some(me) = &self.me {
            me.heartbeat();
        }
        for child in &self.children {
            let health = &child.spec.health;
            if (child.spec.is_alive)() {
                continue;
            }
            tracing::warn!(actor = child.spec.name, "actor died; restarting");
            health.record_failure("the actor stopped unexpectedly");
            health.set_state(ActorState::Restarting);
            health.record_restart();
            (child.spec.start)(&child.arbiter.handle());
        }
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
            let arbiter = Arbiter::new();
            spec.health.set_state(ActorState::Starting);
            (spec.start)(&arbiter.handle());
            tracing::info!(actor = spec.name, "actor started");
            self.children.push(Child { spec, arbiter });
        }
        ctx.run_interval(WATCH_INTERVAL, |act, _| act.watch());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for child in self.children.drain(..) {
            child.spec.health.set_state(ActorState::Stopped);
            child.arbiter.stop();
        }
    }
}
