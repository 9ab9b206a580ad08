//! The HTTP layer: the routes of the public contract (`shared/contract.md`), their handlers,
//! and the server loop under them.
//!
//! A request is routed once ([`endpoint::route`]); [`dispatch`] hands it to its handler, which
//! parses it, calls one verb on the [`Node`] and translates the answer. Handlers return
//! `Result<Response, ApiError>`; errors become `{"detail": ...}` responses in one place
//! ([`error`]).

pub mod body;
pub mod endpoint;
pub mod error;
pub mod pagination;
pub mod range;
pub mod response;
pub mod server;
pub mod shaped_io;

mod accounts;
mod admin;
mod form;
mod media;
mod multipart;
mod ops;
mod public;
mod videos;
mod web;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::domain::{UserId, VideoId};
use crate::node::Node;
use body::BodyStream;
use endpoint::{Endpoint, Route};
use error::ApiError;
use response::Response;

/// A routed request, as handlers see it.
pub struct Request {
    pub method: Method,
    pub headers: HeaderMap,
    /// The query's pairs, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The connection's peer.
    pub peer: IpAddr,
    pub body: BodyStream,
}

/// The `Authorization` header's value ("" when it is not text).
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""))
}

/// The player the bearer token names (401 before any of the body is read otherwise).
async fn signed_in(node: &Node, headers: &HeaderMap) -> Result<UserId, ApiError> {
    Ok(node.player(authorization(headers)).await?)
}

/// A path id that named no video is a 404, answered after the caller was identified.
fn known(id: Option<VideoId>) -> Result<VideoId, ApiError> {
    id.ok_or_else(error::no_video)
}

/// Absolute when `server.public_url` is set, otherwise a path (`/media/3.mp4`).
fn public_url(node: &Node, path: &str) -> String {
    format!(
        "{}{}",
        node.config().server.public_url.trim_end_matches('/'),
        path
    )
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Everything,
    /// The operations listener (`server.ops_addr`): health, readiness, actors, metrics.
    OperationsOnly,
}

/// The request handler of a listener: routes and dispatches to the node's handlers.
pub fn handler(node: Arc<Node>, served: Served) -> server::Handler {
    Arc::new(move |route: Route, request, peer| {
        let node = node.clone();
        Box::pin(async move {
            let answer = match route.endpoint {
                Ok(endpoint) if served == Served::OperationsOnly && !endpoint.is_operations() => {
                    Err(error::not_found())
                }
                Ok(endpoint) => {
                    let (parts, body) = request.into_parts();
                    let query = parts
                        .uri
                        .query()
                        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                        .unwrap_or_default();
                    let request = Request {
                        method: parts.method,
                        headers: parts.headers,
                        query,
                        peer,
                        body: body::stream_of(body),
                    };
                    dispatch(&node, endpoint, request).await
                }
                Err(unrouted) => Err(unrouted.into()),
            };
            answer.unwrap_or_else(ApiError::into_response)
        })
    })
}

/// Runs the handler of `endpoint`.
async fn dispatch(node: &Node, endpoint: Endpoint, request: Request) -> Result<Response, ApiError> {
    use Endpoint as E;
    match endpoint {
        E::Page => Ok(web::index(&node.config().server.public_url)),
        E::Signup => accounts::signup(node, request).await,
        E::Login => accounts::login(node, request).await,
        E::Upload => videos::upload(node, request).await,
        E::MyVideos => videos::list(node, request).await,
        E::Video { id } => videos::detail(node, request, id).await,
        E::DeleteVideo { id } => videos::delete(node, request, id).await,
        E::PublicVideos => public::videos(node, request).await,
        E::Vote { id } => public::vote(node, request, id).await,
        E::Rankings => public::rankings(node, request).await,
        E::Health => Ok(ops::health()),
        E::Ready => Ok(ops::ready(node).await),
        E::Actors => Ok(ops::actors(node).await),
        E::Metrics => Ok(ops::metrics(node).await),
        E::DeadLetters => admin::dead_letters(node, request).await,
        E::RedriveAll => admin::redrive_all(node, request).await,
        E::Redrive { id } => admin::redrive_one(node, request, id).await,
        E::Faults => admin::faults(node, request).await,
        E::SetFaults => admin::set_faults(node, request).await,
        E::ActorFault { actor, kind } => admin::actor_fault(node, request, &actor, &kind).await,
        E::Media { key, head } => media::serve(node, request, key, head).await,
    }
}
