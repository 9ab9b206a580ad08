//! What a built node is ([`Application`]) and how building or running one fails.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actors::supervisor::Supervisor;
use crate::actors::transcoder::TranscoderChildren;
use crate::engine::{Engine, StoreError};
use crate::node::Node;

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

pub(super) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartupError {
    let what = what.into();
    move |source| StartupError::Io { what, source }
}

pub struct Application {
    pub(super) node: Arc<Node>,
    pub(super) listener: TcpListener,
    pub(super) addr: SocketAddr,
    /// The operations listener (`server.ops_addr`), when configured.
    pub(super) ops_listener: Option<(TcpListener, SocketAddr)>,
    pub(super) supervisor: Addr<Supervisor>,
    /// Flushed last, at shutdown.
    pub(super) store: Arc<dyn crate::engine::Store>,
    pub(super) transcoder_children: Arc<TranscoderChildren>,
    pub(super) escalation: watch::Receiver<Option<String>>,
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
