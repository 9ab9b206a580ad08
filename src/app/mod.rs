//! Building and running the whole node: [`Application::build`] (in `builder.rs`) opens the
//! durable state, runs startup recovery, starts the Supervisor and its actors, assembles the
//! [`Node`] and binds the listeners; [`Application::run_until_stopped`] (in `running.rs`)
//! serves until a shutdown signal and then stops in order.
//!
//! The binary and the tests run exactly this code; [`spawn`] runs it on a thread of its own
//! (with its own actix System) for tests and benchmarks in the same process.

mod application;
mod builder;
mod migrate;
mod running;

pub use application::{Application, RunError, StartupError};
pub use builder::{DB_DIR, JOBS_DIR, MEDIA_DIR};
pub use migrate::{apply_schema, copy_platform, Copied};
pub use running::{runtime, spawn, RunningApp, EVENT_INTERVAL_TICKS};
