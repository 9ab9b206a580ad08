//! Health routes for load balancers and operators.

use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use serde_json::json as json_value;
use warp::reply::Response;

use super::json;
use crate::app::AppState;
use crate::engine::QueueStats;
use crate::health::ActorReport;

/// Liveness: the process answers.
pub fn health() -> Response {
    json(StatusCode::OK, &json_value!({"status": "ok"}))
}

/// Readiness: every actor healthy and the node accepting uploads.
pub async fn ready(state: Arc<AppState>) -> Response {
    let problems = state.readiness_problems().await;
    if problems.is_empty() {
        json(StatusCode::OK, &json_value!({"status": "ready"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json_value!({"status": "unavailable", "detail": problems.join("; "), "reasons": problems}),
        )
    }
}

#[derive(Serialize)]
struct DiskReport {
    free_bytes: Option<u64>,
    min_free_bytes: u64,
}

#[derive(Serialize)]
struct StreamsReport {
    active: usize,
    max_concurrent: usize,
    bytes_served: u64,
    refused: u64,
}

#[derive(Serialize)]
struct ActorsReport {
    version: &'static str,
    uptime_s: u64,
    actors: Vec<ActorReport>,
    queue: Option<QueueStats>,
    streams: StreamsReport,
    disk: DiskReport,
}

pub async fn actors(state: Arc<AppState>) -> Response {
    let report = ActorsReport {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.registry.uptime_s(),
        actors: state.registry.reports(),
        queue: state.engine.queue.stats().await.ok(),
        streams: StreamsReport {
            active: state.streams.active(),
            max_concurrent: state.streams.max_concurrent,
            bytes_served: state
                .stream_counters
                .bytes_served
                .load(std::sync::atomic::Ordering::Relaxed),
            refused: state
                .stream_counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
        },
        disk: DiskReport {
            free_bytes: crate::system::free_disk_bytes(&state.data_dir).ok(),
            min_free_bytes: state.config.upload.min_free_disk_mb * 1024 * 1024,
        },
    };
    json(StatusCode::OK, &report)
}

/// Prometheus text exposition: event metrics, plus the states read now.
pub async fn metrics(state: Arc<AppState>) -> Response {
    use std::sync::atomic::Ordering;
    let m = crate::events::metrics();
    if let Ok(stats) = state.engine.queue.stats().await {
        m.queue_depth.set(stats.depth as i64);
        m.queue_in_flight.set(stats.in_flight as i64);
        m.queue_dead_letters.set(stats.dead as i64);
    }
    m.streams_active.set(state.streams.active() as i64);
    m.stream_bytes
        .set(state.stream_counters.bytes_served.load(Ordering::Relaxed) as i64);
    m.streams_refused
        .set(state.stream_counters.refused.load(Ordering::Relaxed) as i64);
    if let Some(rss) = crate::system::resident_memory_bytes() {
        m.resident_memory.set(rss as i64);
    }
    if let Ok(free) = crate::system::free_disk_bytes(&state.data_dir) {
        m.disk_free.set(free as i64);
    }
    m.uptime.set(state.registry.uptime_s() as f64);
    let mut response = warp::reply::Response::new(m.render().into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
