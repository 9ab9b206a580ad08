//! The actors: long-lived components that own a capacity (upload slots, transcoder slots,
//! stream permits) and commit results, started and watched by the [`supervisor::Supervisor`].
//!
//! Requests reach an actor only through [`ActorRef::call`]: a `try_send` into a bounded mailbox
//! (a full mailbox is an immediate, cheap refusal, never a wait) followed by a bounded wait for
//! the reply. Bytes never travel through a mailbox; actors hand out permits and the data flows
//! between the socket and the disk directly.

pub mod call;
pub mod ingest;
pub mod queue_consumer;
pub mod streamer;
pub mod supervisor;
pub mod transcoder;

pub use call::{ActorFault, ActorRef, CallError, InjectFault, Reply};
