//! How requests reach an actor: [`ActorRef::call`], a `try_send` into the bounded mailbox (a
//! full mailbox is an immediate, cheap refusal, never a wait) followed by a bounded wait for
//! the reply; and [`InjectFault`], the fault every actor can be made to suffer when fault
//! injection is enabled.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::SendError;
use actix::{Actor, Addr, Handler, Message};
use tokio::sync::oneshot;

pub use crate::faults::ActorFault;
use crate::health::{ActorHealth, MailboxTicket};

/// Makes the receiving actor suffer a fault, after answering.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct InjectFault {
    pub fault: ActorFault,
    pub reply: Reply<()>,
}

/// Implements [`InjectFault`] for an actor.
macro_rules! accepts_injected_faults {
    ($actor:ty) => {
        impl actix::Handler<$crate::actors::call::InjectFault> for $actor {
            type Result = ();

            fn handle(&mut self, msg: $crate::actors::call::InjectFault, _: &mut Self::Context) {
                let $crate::actors::call::InjectFault { fault, reply } = msg;
                reply.send(());
                match fault {
                    $crate::actors::call::ActorFault::Panic => {
                        panic!("injected fault: {} panicked", stringify!($actor))
                    }
                    $crate::actors::call::ActorFault::Stall(duration) => {
                        std::thread::sleep(duration)
                    }
                }
            }
        }
    };
}
pub(crate) use accepts_injected_faults;

/// Why a call to an actor did not produce a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the {0} actor is busy (mailbox full)")]
    Full(&'static str),
    #[error("the {0} actor is not running")]
    Down(&'static str),
    #[error("the {0} actor did not answer in time")]
    Timeout(&'static str),
}

/// The reply channel carried by a message, plus its mailbox ticket: the ticket is dropped, and
/// the mailbox depth decremented, when the actor consumes the message.
#[derive(Debug)]
pub struct Reply<R> {
    tx: oneshot::Sender<R>,
    _ticket: MailboxTicket,
}

impl<R> Reply<R> {
    pub fn send(self, value: R) {
        // The caller may have given up (timeout or disconnect); nothing to do then.
        let _ = self.tx.send(value);
    }

    /// Resolves when the caller has stopped waiting for the answer.
    pub async fn closed(&mut self) {
        self.tx.closed().await
    }
}

/// A supervised actor's current address. The Supervisor swaps the address on restart; callers
/// always go through this handle and so always reach the live incarnation.
pub struct ActorRef<A: Actor> {
    addr: Arc<RwLock<Option<Addr<A>>>>,
    pub health: Arc<ActorHealth>,
    timeout: Duration,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            health: self.health.clone(),
            timeout: self.timeout,
        }
    }
}

impl<A: Actor> ActorRef<A> {
    pub fn new(health: Arc<ActorHealth>, timeout: Duration) -> Self {
        Self {
            addr: Arc::new(RwLock::new(None)),
            health,
            timeout,
        }
    }

    pub fn set(&self, addr: Option<Addr<A>>) {
        *self.addr.write().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    pub fn addr(&self) -> Option<Addr<A>> {
        self.addr.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_alive(&self) -> bool {
        self.addr().is_some_and(|a| a.connected())
    }

    /// The live address and the message built by `make` around its reply channel and mailbox
    /// ticket.
    fn prepare<M, R>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
    ) -> Result<(Addr<A>, M, oneshot::Receiver<R>), CallError> {
        let addr = self.addr().ok_or(CallError::Down(self.health.name))?;
        let (tx, rx) = oneshot::channel();
        let message = make(Reply {
            tx,
            _ticket: self.health.ticket(),
        });
        Ok((addr, message, rx))
    }

    /// Whether a call would be taken now: the actor runs, its mailbox has room, and it has shown
    /// a sign of life within the time a call may wait. For admitting work the actor will be
    /// handed later (an upload, committed once its body is in): refused now, as a call would be.
    pub fn available(&self) -> Result<(), CallError> {
        let name = self.health.name;
        if !self.is_alive() {
            return Err(CallError::Down(name));
        }
        if self.health.mailbox_depth() >= self.health.mailbox_capacity() {
            return Err(CallError::Full(name));
        }
        if self.health.heartbeat_age_ms() > self.timeout.as_millis() as u64 {
            return Err(CallError::Timeout(name));
        }
        Ok(())
    }

    /// Sends the message built by `make` without waiting for mailbox space and waits (bounded)
    /// for its reply. For requests fed by outside input: a full mailbox is an immediate refusal.
    pub async fn call<M, R>(&self, make: impl FnOnce(Reply<R>) -> M) -> Result<R, CallError>
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        R: Send + 'static,
    {
        let name = self.health.name;
        let (addr, message, rx) = self.prepare(make)?;
        match addr.try_send(message) {
            Ok(()) => {}
            Err(SendError::Full(_)) => return Err(CallError::Full(name)),
            Err(SendError::Closed(_)) => return Err(CallError::Down(name)),
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(value)) => Ok(value),
            // The actor dropped the reply: it died while handling the message.
            Ok(Err(_)) => Err(CallError::Down(name)),
            Err(_) => Err(CallError::Timeout(name)),
        }
    }

    /// Like [`ActorRef::call`], but waits for mailbox space, everything bounded by `timeout`.
    /// Only for work already admitted (its amount is bounded by a permit held by the caller),
    /// which must not be refused merely because the mailbox is momentarily full.
    pub async fn call_admitted<M, R>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        R: Send + 'static,
    {
        let name = self.health.name;
        let (addr, message, rx) = self.prepare(make)?;
        let answered = tokio::time::timeout(timeout, async move {
            addr.send(message)
                .await
                .map_err(|_| CallError::Down(name))?;
            rx.await.map_err(|_| CallError::Down(name))
        });
        answered.await.unwrap_or(Err(CallError::Timeout(name)))
    }
}
