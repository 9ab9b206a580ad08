//! Operator routes under `/api/admin`, behind the admin token (`admin.token`; empty disables
//! them): dead letters and their re-drive, and the fault-injection switches (which exist only
//! when `faults.enabled`).

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::components::{ErrorBody, Invalid, NotAdmin, NotFound, TimedOut, TooLarge};
use super::error::ApiError;
use super::request::small_body;
use super::request::{known, Request};
use super::response::{json, Response};
use crate::domain::{format_ts, VideoId};
use crate::faults::{ActorFault, FaultSwitches};
use crate::node::Node;

/// Checks the administration token of the request's bearer `Authorization` header.
fn authorize(node: &Node, request: &Request) -> Result<(), ApiError> {
    let given = super::request::authorization(&request.headers)
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    Ok(node.authorize_admin(given)?)
}

/// A job that failed for good.
#[derive(Serialize, ToSchema)]
struct DeadLetterView {
    video_id: u64,
    task_id: String,
    /// Why it failed the last time.
    reason: String,
    /// How many times it was received.
    receive_count: u32,
    enqueued_at: String,
    dead_at: String,
}

/// The dead letters: jobs that failed `queue.max_receives` times, or once for good.
#[utoipa::path(
    get,
    path = "/api/admin/dead-letters",
    operation_id = "listDeadLetters",
    tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The dead letters.", body = Vec<DeadLetterView>),
        (status = 401, response = NotAdmin),
        (status = 404, description = "Administration is disabled (`admin.token` is empty).",
            body = ErrorBody),
    )
)]
pub async fn dead_letters(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    let views: Vec<DeadLetterView> = node
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| DeadLetterView {
            video_id: d.job.video_id,
            task_id: d.job.task_id,
            reason: d.reason,
            receive_count: d.job.receive_count,
            enqueued_at: format_ts((d.job.enqueued_at_ms / 1000) as i64),
            dead_at: format_ts((d.dead_at_ms / 1000) as i64),
        })
        .collect();
    Ok(json(StatusCode::OK, &views))
}

/// How many jobs went back to the queue.
#[derive(Serialize, ToSchema)]
struct Redriven {
    redriven: u64,
}

/// Sends one dead letter back to the queue; its video is queued again.
#[utoipa::path(
    post,
    path = "/api/admin/dead-letters/{video_id}/redrive",
    operation_id = "redrive",
    tag = "admin",
    security(("admin" = [])),
    params(("video_id" = u64, Path, description = "The dead letter's video id.")),
    responses(
        (status = 200, description = "The job is queued again.", body = Redriven),
        (status = 401, response = NotAdmin),
        (status = 404, description = "No dead letter for this video, or administration is \
            disabled.", body = ErrorBody,
            example = json!({"detail": "Mensaje no encontrado en la cola de fallidos."})),
    )
)]
pub async fn redrive_one(
    node: &Node,
    request: Request,
    id: Option<VideoId>,
) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    node.redrive(known(id)?).await?;
    Ok(json(StatusCode::OK, &Redriven { redriven: 1 }))
}

/// Sends every dead letter back to the queue.
#[utoipa::path(
    post,
    path = "/api/admin/dead-letters/redrive",
    operation_id = "redriveAll",
    tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The jobs are queued again.", body = Redriven),
        (status = 401, response = NotAdmin),
        (status = 404, description = "Administration is disabled.", body = ErrorBody),
    )
)]
pub async fn redrive_all(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    let redriven = node.redrive_all().await?;
    Ok(json(StatusCode::OK, &Redriven { redriven }))
}

/// The fault-injection switches (they exist only when `faults.enabled`).
#[utoipa::path(
    get,
    path = "/api/admin/faults",
    operation_id = "getFaults",
    tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The switches.", body = FaultSwitches),
        (status = 401, response = NotAdmin),
        (status = 404, response = NotFound),
    )
)]
pub async fn faults(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    Ok(json(StatusCode::OK, &node.fault_switches()?))
}

/// Sets the fault-injection switches; absent switches are off.
#[utoipa::path(
    post,
    path = "/api/admin/faults",
    operation_id = "setFaults",
    tag = "admin",
    security(("admin" = [])),
    request_body = FaultSwitches,
    responses(
        (status = 200, description = "The switches now.", body = FaultSwitches),
        (status = 400, response = Invalid),
        (status = 401, response = NotAdmin),
        (status = 404, response = NotFound),
        (status = 408, response = TimedOut),
        (status = 413, response = TooLarge),
    )
)]
pub async fn set_faults(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    node.fault_switches()?;
    let bytes = small_body(node, request).await?;
    let switches: FaultSwitches = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Interruptores inválidos: {e}.")))?;
    Ok(json(StatusCode::OK, &node.set_fault_switches(switches)?))
}

/// The fault that was injected.
#[derive(Serialize, ToSchema)]
struct InjectedFault<'a> {
    actor: &'a str,
    fault: &'a str,
}

/// Makes an actor fail once.
///
/// `panic`, or `stall` for `seconds` (its heartbeat stops); the Supervisor restarts it.
#[utoipa::path(
    post,
    path = "/api/admin/faults/actors/{actor}/{kind}",
    operation_id = "injectActorFault",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("actor" = String, Path, description = "`ingest`, `streamer`, `transcoder` or `queue_consumer`."),
        ("kind" = String, Path, description = "`panic` or `stall`."),
        ("seconds" = Option<u64>, Query, description = "How long a stall lasts, 1..600.",
            minimum = 1, maximum = 600),
    ),
    responses(
        (status = 200, description = "The fault is injected.", body = InjectedFault),
        (status = 400, response = Invalid),
        (status = 401, response = NotAdmin),
        (status = 404, description = "No such actor or fault, or fault injection is disabled.",
            body = ErrorBody),
    )
)]
pub async fn actor_fault(
    node: &Node,
    request: Request,
    actor: &str,
    kind: &str,
) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    node.fault_switches()?;
    let fault = match kind {
        "panic" => ActorFault::Panic,
        "stall" => {
            let seconds: u64 = request
                .query
                .iter()
                .find(|(k, _)| k == "seconds")
                .and_then(|(_, v)| v.parse().ok())
                .filter(|s| (1..=600).contains(s))
                .ok_or_else(|| {
                    ApiError::bad_request("Parámetro inválido en la consulta: seconds (1..600)")
                })?;
            ActorFault::Stall(std::time::Duration::from_secs(seconds))
        }
        _ => return Err(super::error::not_found()),
    };
    node.inject_fault(actor, fault).await?;
    Ok(json(StatusCode::OK, &InjectedFault { actor, fault: kind }))
}
