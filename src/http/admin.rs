//! Operator routes under `/api/admin`, behind the admin token (`admin.token`; empty disables
//! them): dead letters and their re-drive, and the fault-injection switches (which exist only
//! when `faults.enabled`).

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;
use warp::reply::Response;

use super::body::{content_length, read_limited, BodyStream};
use super::error::ApiError;
use super::{json, video_id};
use crate::app::AppState;
use crate::domain::{format_ts, ProcessingState};
use crate::faults::FaultSwitches;

fn not_found() -> ApiError {
    ApiError::NotFound("Recurso no encontrado.".into())
}

/// Admits the admin; the routes do not exist at all without a configured token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.config.admin.token.as_bytes();
    if expected.is_empty() {
        return Err(not_found());
    }
    // The scheme is case-insensitive (RFC 9110), as for players' tokens.
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    if given.as_bytes().ct_eq(expected).unwrap_u8() != 1 {
        return Err(ApiError::Unauthorized(
            "Token de administración inválido.".into(),
        ));
    }
    Ok(())
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

pub async fn dead_letters(state: Arc<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let letters = state.engine.queue.dead_letters().await?;
    let views: Vec<DeadLetterView> = letters
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
    state: Arc<AppState>,
    headers: HeaderMap,
    raw_id: String,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = video_id(&raw_id)?;
    state.engine.queue.redrive(id).await.map_err(|e| match e {
        crate::engine::QueueError::NotFound => {
            ApiError::NotFound("Mensaje no encontrado en la cola de fallidos.".into())
        }
        other => other.into(),
    })?;
    state
        .engine
        .store
        .set_processing_state(id, ProcessingState::Queued)
        .await?;
    Ok(json(StatusCode::OK, &Redriven { redriven: 1 }))
}

pub async fn redrive_all(state: Arc<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let ids: Vec<u64> = state
        .engine
        .queue
        .dead_letters()
        .await?
        .iter()
        .map(|d| d.job.video_id)
        .collect();
    let redriven = state.engine.queue.redrive_all().await?;
    for id in ids {
        state
            .engine
            .store
            .set_processing_state(id, ProcessingState::Queued)
            .await?;
    }
    Ok(json(StatusCode::OK, &Redriven { redriven }))
}

pub async fn faults(state: Arc<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    if !state.faults.enabled() {
        return Err(not_found());
    }
    Ok(json(StatusCode::OK, &state.faults.switches()))
}

pub async fn set_faults(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: BodyStream,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    if !state.faults.enabled() {
        return Err(not_found());
    }
    let server = &state.config.server;
    let bytes = read_limited(
        body,
        content_length(&headers),
        server.max_json_bytes,
        std::time::Duration::from_secs(server.body_idle_timeout_s),
    )
    .await?;
    let switches: FaultSwitches = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Interruptores inválidos: {e}.")))?;
    state.faults.set(switches);
    tracing::warn!(switches = ?state.faults.switches(), "fault injection switches changed");
    Ok(json(StatusCode::OK, &state.faults.switches()))
}

/// `POST /api/admin/faults/actors/{actor}/{panic|stall}` (`stall` takes `?seconds=N`):
/// makes one actor panic or block its thread, to drill the Supervisor.
pub async fn actor_fault(
    state: Arc<AppState>,
    headers: HeaderMap,
    actor: String,
    kind: String,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    use crate::actors::{ActorFault, InjectFault};
    authorize(&state, &headers)?;
    if !state.faults.enabled() {
        return Err(not_found());
    }
    let fault = match kind.as_str() {
        "panic" => ActorFault::Panic,
        "stall" => {
            let seconds: u64 = query
                .iter()
                .find(|(k, _)| k == "seconds")
                .and_then(|(_, v)| v.parse().ok())
                .filter(|s| (1..=600).contains(s))
                .ok_or_else(|| {
                    ApiError::bad_request("Parámetro inválido en la consulta: seconds (1..600)")
                })?;
            ActorFault::Stall(std::time::Duration::from_secs(seconds))
        }
        _ => return Err(not_found()),
    };
    let injected = match actor.as_str() {
        "ingest" => {
            state
                .ingest
                .call(|reply| InjectFault { fault, reply })
                .await
        }
        "transcoder" => {
            state
                .transcoder
                .call(|reply| InjectFault { fault, reply })
                .await
        }
        "queue_consumer" => {
            state
                .consumer
                .call(|reply| InjectFault { fault, reply })
                .await
        }
        "streamer" => {
            state
                .streamer
                .call(|reply| InjectFault { fault, reply })
                .await
        }
        _ => return Err(not_found()),
    };
    injected?;
    tracing::warn!(actor, fault = ?fault, "fault injected");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"actor": actor, "fault": kind}),
    ))
}
