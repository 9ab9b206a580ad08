//! The node's core: the one handle the HTTP layer holds.
//!
//! A [`Node`] owns the addresses of this node's actors, its capacities (upload slots, stream
//! permits, rate-limit budgets) and its records (through the engine), and offers verbs in the
//! platform's words: sign up, admit an upload and commit it, open media, vote, readiness, re-drive
//! a dead letter, inject a fault. Handlers parse a request, call one verb and translate the
//! answer; they never see an actor or a mailbox.
//!
//! Which actors a node runs depends on its role; a verb whose actor is not on this node answers
//! [`Error::Absent`].

mod admission;
mod backends;
mod base;
mod error;
mod operations;
mod resumable;
mod uploads;

pub use admission::{Refusal, UploadAdmission};
pub use backends::{
    BackendHealth, BackendReport, Platform, Service, ABANDONED_AFTER, NODE_FRESH, PROBE_EVERY,
};
pub use base::{Node, NodeActors, NodeParts, SignUp, HEARTBEAT_STALE_MS};
pub use error::Error;
pub use operations::{ActorsReport, DiskReport, StreamsReport};
pub use resumable::{AdmittedPatch, NewResumable, ResumableState, WritingPatch};
pub use uploads::{AcceptedUpload, AdmittedUpload};
