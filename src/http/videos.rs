//! The signed-in player's videos: upload, list, detail, delete.
//!
//! The upload handler decides admission before it reads a byte of the body (token, content
//! type, declared length, then a slot from the Ingest actor), then streams the file part
//! straight to a temp file in bounded chunks while counting bytes, fsyncs it, probes it and
//! hands it to Ingest to be committed. A refusal at any point drops the temp file.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use warp::reply::Response;

use super::body::{content_length, BodyStream};
use super::error::ApiError;
use super::form::{FormLimits, FormReader};
use super::multipart::form_data_boundary;
use super::{json, signed_in, video_id};
use crate::actors::ingest::{CommitError, CommitUpload, PreparedUpload, Refusal, RequestSlot};
use crate::actors::transcoder::CancelTranscode;
use crate::app::AppState;
use crate::domain::{format_ts, MediaInfo, UserId, Video, VideoStatus};
use crate::engine::probe::{probe_mp4, ProbeError};
use crate::events::{self, Event};
use crate::upload::{check_policy, FileSink, ProbeRun, TempUpload};

/// Room for the multipart framing and the other fields around the file.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Longest accepted form field other than the file.
const MAX_TEXT_FIELD_BYTES: usize = 4 * 1024;
const MAX_TITLE_CHARS: usize = 255;
/// Time a commit may take beyond the store's confirmation timeout.
const COMMIT_MARGIN: Duration = Duration::from_secs(20);

pub const FILE_FIELD: &str = "video_file";
/// The name many form-upload clients give the file (FastAPI's `UploadFile` examples).
pub const FILE_FIELD_ALIAS: &str = "file";
pub const TITLE_FIELD: &str = "title";
/// Longest wait for the probe of an upload. The probe's own budgets end any parser loop that
/// reads within a fraction of this; the deadline answers even for one that does not (its
/// thread is then abandoned, see `engine::probe`).
const PROBE_DEADLINE: Duration = Duration::from_millis(750);
/// Longest wait for a blocking thread to start on a probe.
const PROBE_START_WAIT: Duration = Duration::from_secs(2);

fn too_big(max_bytes: u64) -> ApiError {
    ApiError::bad_request(format!(
        "El campo '{FILE_FIELD}' supera el tamaño máximo permitido de {} MiB.",
        max_bytes / (1024 * 1024)
    ))
}

fn probe_error(e: ProbeError) -> ApiError {
    match e {
        ProbeError::Empty => ApiError::bad_request(format!("El campo '{FILE_FIELD}' está vacío.")),
        ProbeError::Io(cause) => ApiError::Internal(format!("probing the upload: {cause}")),
        other => ApiError::bad_request(format!(
            "El campo '{FILE_FIELD}' no es un video MP4 válido: {other}."
        )),
    }
}

fn validate_title(raw: &str) -> Result<String, ApiError> {
    let title = raw.trim();
    let chars = title.chars().count();
    if chars == 0 || chars > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(format!(
            "El campo '{TITLE_FIELD}' debe tener entre 1 y {MAX_TITLE_CHARS} caracteres."
        )));
    }
    if !crate::domain::is_displayable(title) {
        return Err(super::error::undisplayable(TITLE_FIELD));
    }
    Ok(title.to_string())
}

#[derive(Serialize)]
struct UploadAccepted {
    message: &'static str,
    task_id: String,
    video_id: u64,
}

pub async fn upload(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let result = receive_upload(state, headers, body).await;
    match &result {
        Ok((_, accepted)) => events::emit(Event::UploadAccepted {
            video_id: accepted.video_id,
            owner_id: accepted.owner_id,
            bytes: accepted.bytes,
        }),
        Err(e) => events::emit(Event::UploadRefused { reason: e.cause() }),
    }
    result.map(|(response, _)| response)
}

/// What an accepted upload was.
struct Accepted {
    video_id: u64,
    owner_id: u64,
    bytes: u64,
}

async fn receive_upload(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: BodyStream,
) -> Result<(Response, Accepted), ApiError> {
    // Everything up to the slot is decided without reading the body.
    let owner_id = signed_in(&state, &headers).await?;
    let policy = &state.config.upload;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = form_data_boundary(content_type).ok_or_else(|| {
        ApiError::bad_request(
            "La solicitud debe ser multipart/form-data con los campos 'video_file' y 'title'.",
        )
    })?;
    if content_length(&headers).is_some_and(|len| len > policy.max_bytes + MULTIPART_OVERHEAD_BYTES)
    {
        return Err(too_big(policy.max_bytes));
    }
    if state.stuck_probes.too_many() {
        return Err(ApiError::unavailable_because(
            "El análisis de videos está detenido; intente más tarde.",
            60,
            "probes_stuck",
        ));
    }
    let slot = state
        .ingest
        .call(|reply| RequestSlot { reply })
        .await?
        .map_err(|refusal| refused(&refusal))?;

    let mut form = FormReader::new(
        body,
        &boundary,
        FormLimits {
            max_body_bytes: policy.max_bytes + MULTIPART_OVERHEAD_BYTES,
            idle: Duration::from_secs(state.config.server.body_idle_timeout_s),
            min_bytes_per_s: policy.min_bytes_per_s,
            rate_grace: Duration::from_secs(policy.rate_grace_s),
        },
    )?;
    let mut title = None;
    let mut file: Option<(TempUpload, u64)> = None;
    while let Some(field) = form.next_field().await? {
        match field.name.as_str() {
            FILE_FIELD | FILE_FIELD_ALIAS => {
                if file.is_some() {
                    return Err(ApiError::bad_request(format!(
                        "El campo '{FILE_FIELD}' aparece dos veces."
                    )));
                }
                let temp = TempUpload::new_in(&state.data_dir);
                file = Some(stream_to_file(&mut form, temp, policy.max_bytes).await?);
            }
            TITLE_FIELD => {
                let raw = read_text_field(&mut form).await?;
                title = Some(validate_title(&raw)?);
            }
            // Unknown fields are skipped by the next `next_field`; the whole-body limit
            // bounds them.
            _ => {}
        }
    }
    let title = title.ok_or_else(|| {
        ApiError::bad_request(format!("El campo '{TITLE_FIELD}' es obligatorio."))
    })?;
    let (temp, written) = file
        .ok_or_else(|| ApiError::bad_request(format!("El campo '{FILE_FIELD}' es obligatorio.")))?;
    if written == 0 {
        return Err(ApiError::bad_request(format!(
            "El campo '{FILE_FIELD}' está vacío."
        )));
    }

    let media = probe(&state, temp.path()).await?;
    check_policy(&media, policy).map_err(|v| ApiError::bad_request(v.to_string()))?;

    let prepared = PreparedUpload {
        owner_id,
        title,
        file: temp,
        media,
        slot,
    };
    // Admitted work: it waits for mailbox room, and for as long as a commit may take (the
    // store's own confirmation timeout plus the file's rename and fsyncs), so that a commit is
    // never reported failed while it is still going on.
    let commit_timeout = Duration::from_secs(state.config.storage.commit_timeout_s) + COMMIT_MARGIN;
    let (video, job) = state
        .ingest
        .call_admitted(
            |reply| CommitUpload {
                upload: prepared,
                reply,
            },
            commit_timeout,
        )
        .await?
        .map_err(|e| match e {
            CommitError::Store(e) => ApiError::from(e),
            CommitError::Blob(cause) => ApiError::Internal(cause),
        })?;
    let accepted = Accepted {
        video_id: video.id,
        owner_id,
        bytes: written,
    };
    let response = json(
        StatusCode::CREATED,
        &UploadAccepted {
            message: "Video subido exitosamente. Procesamiento en curso.",
            task_id: job.task_id,
            video_id: video.id,
        },
    );
    Ok((response, accepted))
}

/// Probes the upload on a blocking thread, within [`PROBE_DEADLINE`] from the moment the
/// thread starts on it; a probe that no thread takes up within [`PROBE_START_WAIT`] means the
/// node is too busy (503), not that the file is bad.
async fn probe(state: &AppState, path: &std::path::Path) -> Result<MediaInfo, ApiError> {
    let path = path.to_path_buf();
    let wedged = state.faults.wedged_probe();
    let run = Arc::new(ProbeRun::new(state.stuck_probes.clone()));
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let probing = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            let _ = started_tx.send(());
            if wedged {
                crate::faults::wedge_this_thread();
            }
            let probed = probe_mp4(&path);
            run.finished();
            probed
        }
    });
    if !matches!(
        tokio::time::timeout(PROBE_START_WAIT, started).await,
        Ok(Ok(()))
    ) {
        return Err(ApiError::unavailable_because(
            "Servidor ocupado analizando videos; intente de nuevo en unos segundos.",
            1,
            "probe_busy",
        ));
    }
    match tokio::time::timeout(PROBE_DEADLINE, probing).await {
        Ok(joined) => joined
            .map_err(|e| ApiError::Internal(format!("probe task: {e}")))?
            .map_err(probe_error),
        Err(_) => {
            run.abandon();
            events::emit(Event::ProbeAbandoned {
                deadline_ms: PROBE_DEADLINE.as_millis() as u64,
            });
            Err(probe_error(ProbeError::TooComplex))
        }
    }
}

fn refused(refusal: &Refusal) -> ApiError {
    let detail = match refusal {
        Refusal::NoSlot { .. } => "Capacidad de subida agotada; intente de nuevo en unos segundos.",
        Refusal::DiskFull { .. } => "Espacio de almacenamiento insuficiente; intente más tarde.",
        Refusal::QueueFull { .. } => "La cola de procesamiento está llena; intente más tarde.",
    };
    ApiError::unavailable_because(detail, refusal.retry_after_s(), refusal.reason())
}

/// Streams one multipart field into `temp`, fsynced; refuses as soon as it exceeds `max_bytes`.
/// Returns the file's guard and its length.
async fn stream_to_file(
    form: &mut FormReader,
    temp: TempUpload,
    max_bytes: u64,
) -> Result<(TempUpload, u64), ApiError> {
    let io = |e: std::io::Error| ApiError::Internal(format!("writing the upload: {e}"));
    let mut sink = FileSink::create(temp);
    let mut written = 0u64;
    let started = std::time::Instant::now();
    while let Some(chunk) = form.next_chunk().await? {
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(too_big(max_bytes));
        }
        sink.write(chunk).await.map_err(io)?;
    }
    let received = started.elapsed();
    let temp = sink.finish().await.map_err(io)?;
    tracing::debug!(
        bytes = written,
        receive_ms = received.as_millis() as u64,
        fsync_ms = (started.elapsed() - received).as_millis() as u64,
        "upload file stored"
    );
    Ok((temp, written))
}

async fn read_text_field(form: &mut FormReader) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = form.next_chunk().await? {
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "El campo '{TITLE_FIELD}' es demasiado largo."
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("El campo '{TITLE_FIELD}' no es texto UTF-8.")))
}

#[derive(Serialize)]
struct VideoSummary {
    video_id: u64,
    title: String,
    status: &'static str,
    uploaded_at: String,
    processed_at: Option<String>,
    processed_url: Option<String>,
}

pub fn processed_path(id: u64) -> String {
    format!("/media/{id}.mp4")
}

pub fn poster_path(id: u64) -> String {
    format!("/media/{id}.jpg")
}

pub fn original_path(id: u64) -> String {
    format!("/media/originals/{id}.mp4")
}

fn published_url(state: &AppState, video: &Video, path: fn(u64) -> String) -> Option<String> {
    (video.status == VideoStatus::Processed).then(|| state.public_url(&path(video.id)))
}

pub async fn list(state: Arc<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let owner = signed_in(&state, &headers).await?;
    let videos = state.engine.store.videos_of(owner).await?;
    let items: Vec<VideoSummary> = videos
        .iter()
        .map(|v| VideoSummary {
            video_id: v.id,
            title: v.title.clone(),
            status: v.status.as_str(),
            uploaded_at: format_ts(v.uploaded_at),
            processed_at: v.processed_at.map(format_ts),
            processed_url: published_url(&state, v, processed_path),
        })
        .collect();
    Ok(json(StatusCode::OK, &items))
}

#[derive(Serialize)]
struct VideoDetail {
    video_id: u64,
    title: String,
    status: &'static str,
    progress: u8,
    uploaded_at: String,
    processed_at: Option<String>,
    original_url: String,
    processed_url: Option<String>,
    poster_url: Option<String>,
    votes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The video, if it exists and belongs to `user`.
async fn owned_video(state: &AppState, user: UserId, raw_id: &str) -> Result<Video, ApiError> {
    let id = video_id(raw_id)?;
    let video = state
        .engine
        .store
        .video(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(super::error::VIDEO_NOT_FOUND.into()))?;
    if video.owner_id != user {
        return Err(ApiError::Forbidden(super::error::NOT_OWNER.into()));
    }
    Ok(video)
}

pub async fn detail(
    state: Arc<AppState>,
    headers: HeaderMap,
    raw_id: String,
) -> Result<Response, ApiError> {
    let user = signed_in(&state, &headers).await?;
    let video = owned_video(&state, user, &raw_id).await?;
    let expires = crate::domain::now_ts() as u64 + state.config.media.signed_url_ttl_s;
    let original_url = state.public_url(&state.signer.sign(&original_path(video.id), expires));
    let body = VideoDetail {
        video_id: video.id,
        title: video.title.clone(),
        status: video.status.as_str(),
        progress: video.progress,
        uploaded_at: format_ts(video.uploaded_at),
        processed_at: video.processed_at.map(format_ts),
        original_url,
        processed_url: published_url(&state, &video, processed_path),
        poster_url: published_url(&state, &video, poster_path),
        votes: video.votes,
        error: video
            .error
            .clone()
            .filter(|_| video.status == VideoStatus::Failed),
    };
    Ok(json(StatusCode::OK, &body))
}

#[derive(Serialize)]
struct Deleted {
    message: &'static str,
    video_id: u64,
}

pub async fn delete(
    state: Arc<AppState>,
    headers: HeaderMap,
    raw_id: String,
) -> Result<Response, ApiError> {
    let user = signed_in(&state, &headers).await?;
    let id = video_id(&raw_id)?;
    // The record and its job go in one durable step; the files follow. A crash in between
    // leaves only files without a record, which startup removes.
    let video = state.engine.store.delete_video(id, user).await?;
    // Its job is gone with the record; a transcode already running is stopped now rather
    // than at its next lease heartbeat.
    let _ = state
        .transcoder
        .call(|reply| CancelTranscode {
            video_id: id,
            reply,
        })
        .await;
    let keys = [
        Some(video.original_key.clone()),
        video.processed_key.clone(),
        video.poster_key.clone(),
    ];
    for key in keys.into_iter().flatten() {
        if let Err(error) = state.engine.blobs.delete(&key).await {
            tracing::warn!(video_id = id, key, %error, "could not remove a deleted video's file");
        }
    }
    tracing::info!(video_id = id, "video deleted");
    Ok(json(
        StatusCode::OK,
        &Deleted {
            message: "El video ha sido eliminado exitosamente.",
            video_id: id,
        },
    ))
}
