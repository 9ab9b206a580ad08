//! The response type every handler returns, and the few ways of building one.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{HeaderValue, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde::Serialize;

/// A response body: bytes in memory or a stream of them.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub type Response = http::Response<Body>;

/// A response with `status` and the whole body in memory.
pub fn full(status: StatusCode, bytes: impl Into<Bytes>) -> Response {
    let body = Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// An empty response with `status`.
pub fn empty(status: StatusCode) -> Response {
    full(status, Bytes::new())
}

/// Serialises `value` as the JSON body of a response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    // Serialising plain records into a vector cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = full(status, bytes);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A response with `status` whose body is `chunks`, sent as they come.
pub fn stream<S>(status: StatusCode, chunks: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let body = StreamBody::new(chunks.map_ok(http_body::Frame::data)).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
