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
mod components;
mod form;
mod media;
mod multipart;
pub mod openapi;
mod ops;
mod public;
mod request;
mod tus;
mod videos;
mod web;

use std::sync::Arc;

use crate::media::MediaKind;
use crate::node::Node;
use endpoint::{Endpoint, Route};
use error::ApiError;
use request::Request;
use response::Response;

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
                _ if served == Served::OperationsOnly && !route.operations => {
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
        E::Page => Ok(web::index(node.config())),
        E::Asset { name } => web::asset(&name, &request.headers).ok_or_else(error::not_found),
        E::OpenApi => Ok(openapi::openapi_json()),
        E::Docs => Ok(web::docs()),
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
        E::UploadsOptions => tus::answer(async { tus::options(node) }).await,
        E::CreateUpload => tus::answer(tus::create(node, request)).await,
        E::UploadStatus { id } => tus::answer(tus::status(node, request, id)).await,
        E::UploadPatch { id } => tus::answer(tus::patch(node, request, id)).await,
        E::UploadDelete { id } => tus::answer(tus::terminate(node, request, id)).await,
        E::Media { key, head } => match key.map(|k| k.kind) {
            Some(MediaKind::Poster) => media::poster(node, request, key, head).await,
            Some(MediaKind::Original) => media::original(node, request, key, head).await,
            _ => media::processed(node, request, key, head).await,
        },
    }
}
