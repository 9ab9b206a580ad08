//! Health routes for load balancers and operators.

use http::StatusCode;
use serde_json::json as json_value;

use super::response::{full, json, Response};
use crate::node::Node;

/// Liveness: the process answers.
pub fn health() -> Response {
    json(StatusCode::OK, &json_value!({"status": "ok"}))
}

/// Readiness: every actor healthy and the node accepting uploads.
pub async fn ready(node: &Node) -> Response {
    let problems = node.readiness_problems().await;
    if problems.is_empty() {
        json(StatusCode::OK, &json_value!({"status": "ready"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json_value!({"status": "unavailable", "detail": problems.join("; "), "reasons": problems}),
        )
    }
}

pub async fn actors(node: &Node) -> Response {
    json(StatusCode::OK, &node.actors_report().await)
}

/// Prometheus text exposition.
pub async fn metrics(node: &Node) -> Response {
    let mut response = full(StatusCode::OK, node.metrics_text().await);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
