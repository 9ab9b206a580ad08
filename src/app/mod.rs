//! Building and running the whole node: [`Application::build`] (in `builder.rs`) opens the
//! durable state, runs startup recovery, starts the Supervisor and its actors, assembles the
//! [`Node`] and binds the listeners; [`Application::run_until_stopped`] (in `running.rs`)
//! serves until a shutdown signal and then stops in order.
//!
//! The binary and the tests run exactly this code; [`spawn`] runs it on a thread of its own
//! (with its own actix System) for tests and benchmarks in the same process.

mod builder;
mod running;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actors::supervisor::Supervisor;
use crate::actors::transcoder::TranscoderChildren;
use crate::engine::sled_engine::SledEngine;
use crate::engine::{Engine, StoreError};
use crate::node::Node;

pub use builder::{DB_DIR, JOBS_DIR, MEDIA_DIR};
pub use running::{runtime, spawn, RunningApp, EVENT_INTERVAL_TICKS};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("opening the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("actors did not start in time: {0}")]
    ActorsNotRunning(String),
    #[error("the server thread failed: {0}")]
    Thread(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartupError {
    let what = what.into();
    move |source| StartupError::Io { what, source }
}

pub struct Application {
    node: Arc<Node>,
    listener: TcpListener,
    addr: SocketAddr,
    /// The operations listener (`server.ops_addr`), when configured.
    ops_listener: Option<(TcpListener, SocketAddr)>,
    supervisor: Addr<Supervisor>,
    sled: Arc<SledEngine>,
    transcoder_children: Arc<TranscoderChildren>,
    escalation: watch::Receiver<Option<String>>,
}

/// How a node's run ended, when not cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("flushing the store failed: {0}")]
    Store(#[from] StoreError),
    /// The Supervisor gave up on an actor; the process must be restarted.
    #[error("the supervisor escalated: {0}")]
    Escalated(String),
}

impl Application {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the operations listener listens, when there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().map(|(_, addr)| *addr)
    }

    pub fn engine(&self) -> Engine {
        self.node.engine().clone()
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }
}
