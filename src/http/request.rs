//! A routed request as handlers see it, and what every handler asks of one: who is asking,
//! the ids it names, a small body.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;

use super::body::{content_length, read_limited, BodyStream};
use super::error::{self, ApiError};
use crate::domain::{UserId, VideoId};
use crate::node::Node;

/// A routed request, as handlers see it.
pub struct Request {
    pub headers: HeaderMap,
    /// The query's pairs, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The connection's peer.
    pub peer: IpAddr,
    pub body: BodyStream,
}

/// The `Authorization` header's value ("" when it is not text).
pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""))
}

/// The player the bearer token names (401 before any of the body is read otherwise).
pub async fn signed_in(node: &Node, headers: &HeaderMap) -> Result<UserId, ApiError> {
    Ok(node.player(authorization(headers)).await?)
}

/// A path id that named no video is a 404, answered after the caller was identified.
pub fn known(id: Option<VideoId>) -> Result<VideoId, ApiError> {
    id.ok_or_else(error::no_video)
}

/// Absolute when `server.public_url` is set, otherwise a path (`/media/3.mp4`).
pub fn public_url(node: &Node, path: &str) -> String {
    format!(
        "{}{}",
        node.config().server.public_url.trim_end_matches('/'),
        path
    )
}

/// The whole (small) body of a request: a JSON object or a short form.
pub async fn small_body(node: &Node, request: Request) -> Result<bytes::Bytes, ApiError> {
    let server = &node.config().server;
    Ok(read_limited(
        request.body,
        content_length(&request.headers),
        server.max_json_bytes,
        Duration::from_secs(server.body_idle_timeout_s),
    )
    .await?)
}
