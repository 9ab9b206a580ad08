//! The web page, embedded in the binary.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::HeaderValue;
use warp::reply::Response;
use warp::Reply;

const INDEX_HTML: &str = include_str!("../../static/index.html");

pub fn index() -> Response {
    let mut response = warp::reply::html(INDEX_HTML).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
