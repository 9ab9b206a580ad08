//! Health routes for load balancers and operators.

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::response::{full, json, Response};
use crate::node::{ActorsReport, Node};

/// The process answers.
#[derive(Serialize, ToSchema)]
struct Alive {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process can serve (the load balancer's check).
#[utoipa::path(
    get,
    path = "/api/health",
    operation_id = "health",
    tag = "operations",
    responses((status = 200, description = "The process answers.", body = Alive))
)]
pub fn health() -> Response {
    json(StatusCode::OK, &Alive { status: "ok" })
}

/// Whether the node should get traffic.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Every reason, joined (only when unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    detail: Option<String>,
    /// Why the node is unavailable, one reason each (only when unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reasons: Option<Vec<String>>,
}

/// Readiness: every actor healthy, every backend reachable and the node accepting uploads.
#[utoipa::path(
    get,
    path = "/api/health/ready",
    operation_id = "ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic.", body = Readiness),
        (status = 503, description = "Not ready, with the reasons: take the node out of rotation.",
            body = Readiness, example = json!({
                "status": "unavailable",
                "detail": "free disk below the watermark",
                "reasons": ["free disk below the watermark"]
            })),
    )
)]
pub async fn ready(node: &Node) -> Response {
    let problems = node.readiness_problems().await;
    if problems.is_empty() {
        json(
            StatusCode::OK,
            &Readiness {
                status: "ready",
                detail: None,
                reasons: None,
            },
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Readiness {
                status: "unavailable",
                detail: Some(problems.join("; ")),
                reasons: Some(problems),
            },
        )
    }
}

/// The node's actors and capacities.
///
/// Every actor's state, restarts, last failure, mailbox and heartbeat; the queue, streams,
/// free disk, backends and the platform's nodes.
#[utoipa::path(
    get,
    path = "/api/health/actors",
    operation_id = "actors",
    tag = "operations",
    responses((status = 200, description = "The node's report.", body = ActorsReport))
)]
pub async fn actors(node: &Node) -> Response {
    json(StatusCode::OK, &node.actors_report().await)
}

/// Prometheus text exposition of every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4.",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub async fn metrics(node: &Node) -> Response {
    let mut response = full(StatusCode::OK, node.metrics_text().await);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
