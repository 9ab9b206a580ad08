//! Operator routes under `/api/admin`, behind the admin token (`admin.token`; empty disables
//! them): dead letters and their re-drive, and the fault-injection switches (which exist only
//! when `faults.enabled`).

use http::StatusCode;
use serde::Serialize;

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

#[derive(Serialize)]
struct DeadLetterView {
    video_id: u64,
    task_id: String,
    reason: String,
    receive_count: u32,
    enqueued_at: String,
    dead_at: String,
}

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

#[derive(Serialize)]
struct Redriven {
    redriven: u64,
}

pub async fn redrive_one(
    node: &Node,
    request: Request,
    id: Option<VideoId>,
) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    node.redrive(known(id)?).await?;
    Ok(json(StatusCode::OK, &Redriven { redriven: 1 }))
}

pub async fn redrive_all(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    let redriven = node.redrive_all().await?;
    Ok(json(StatusCode::OK, &Redriven { redriven }))
}

pub async fn faults(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    Ok(json(StatusCode::OK, &node.fault_switches()?))
}

pub async fn set_faults(node: &Node, request: Request) -> Result<Response, ApiError> {
    authorize(node, &request)?;
    node.fault_switches()?;
    let bytes = small_body(node, request).await?;
    let switches: FaultSwitches = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Interruptores inválidos: {e}.")))?;
    Ok(json(StatusCode::OK, &node.set_fault_switches(switches)?))
}

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
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"actor": actor, "fault": kind}),
    ))
}
