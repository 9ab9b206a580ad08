//! The signed-in player's videos: upload, list, detail, delete.
//!
//! The upload handler decides admission before it reads a byte of the body (token, content
//! type, declared length, then a slot from the node), streams the file part straight to a temp
//! file in bounded chunks while counting bytes, fsyncs it, and asks the node to commit it (probe,
//! policy, record and job). A refusal at any point drops the temp file.

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::content_length;
use super::components::{ErrorBody, Forbidden, TimedOut, Unauthorized, Unavailable, VideoNotFound};
use super::endpoint::media_path;
use super::error::ApiError;
use super::form::{FormLimits, FormReader, FILE_FIELD, FILE_FIELD_ALIAS, TITLE_FIELD};
use super::multipart::form_data_boundary;
use super::request::{known, public_url, signed_in, Request};
use super::response::{json, Response};
use crate::domain::{format_ts, Video, VideoId, VideoStatus};
use crate::events::{self, Event};
use crate::media::{MediaKey, MediaKind};
use crate::node::{AcceptedUpload, Node};
use crate::upload::{FileSink, TempUpload};

/// Room for the multipart framing and the other fields around the file.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Longest accepted form field other than the file.
const MAX_TEXT_FIELD_BYTES: usize = 4 * 1024;
const MAX_TITLE_CHARS: usize = 255;

fn too_big(max_bytes: u64) -> ApiError {
    ApiError::bad_request(format!(
        "El campo '{FILE_FIELD}' supera el tamaño máximo permitido de {} MiB.",
        max_bytes / (1024 * 1024)
    ))
}

pub(super) fn validate_title(raw: &str) -> Result<String, ApiError> {
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

/// The upload form. It is read as a stream, field by field (`FormReader`), never as a whole:
/// this type only describes it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// 1..255 characters.
    #[schema(min_length = 1, max_length = 255)]
    title: String,
    /// An MP4 (judged by its content) within the node's policy: by default at most 100 MiB,
    /// 20..60 s, shorter side at least 1080 px. `file` is accepted as the field's name too.
    #[schema(value_type = String, format = Binary, content_media_type = "video/mp4")]
    video_file: Vec<u8>,
}

/// The upload is stored and its job queued.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "message": "Video subido exitosamente. Procesamiento en curso.",
    "task_id": "7f9c2ba4-e88f-4b12-8a3c-1d5e6f708192",
    "video_id": 42
}))]
struct UploadAccepted {
    #[schema(example = "Video subido exitosamente. Procesamiento en curso.")]
    message: &'static str,
    /// The processing job's id.
    task_id: String,
    video_id: u64,
}

/// Uploads a video.
///
/// Admission (capacity, token, content type, declared length) is decided before the body is
/// read; the answer comes once the file is durably stored and its processing durably queued.
/// Capacity is asked first: while every upload slot is taken the answer is `503` with
/// `Retry-After`, whatever the token.
#[utoipa::path(
    post,
    path = "/api/videos/upload",
    operation_id = "uploadVideo",
    tag = "videos",
    security(("player" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored and queued for processing.", body = UploadAccepted),
        (status = 400, description = "A field is missing or empty, the file is not an MP4, is \
            larger than the limit (answered before the rest is read), or its duration or \
            resolution is outside the policy.", body = ErrorBody, examples(
            ("missing" = (value = json!({"detail": "El campo 'video_file' es obligatorio."}))),
            ("not mp4" = (value = json!({"detail": "El campo 'video_file' no es un video MP4 válido: no es un archivo MP4."}))),
            ("too big" = (value = json!({"detail": "El campo 'video_file' supera el tamaño máximo permitido de 100 MiB."}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 408, response = TimedOut),
        (status = 503, response = Unavailable),
    )
)]
pub async fn upload(node: &Node, request: Request) -> Result<Response, ApiError> {
    let result = receive_upload(node, request).await;
    match &result {
        Ok((accepted, owner_id, bytes)) => events::emit(Event::UploadAccepted {
            video_id: accepted.video_id,
            owner_id: *owner_id,
            bytes: *bytes,
        }),
        Err(e) => events::emit(Event::UploadRefused { reason: e.cause() }),
    }
    let (accepted, _, _) = result?;
    Ok(json(
        StatusCode::CREATED,
        &UploadAccepted {
            message: "Video subido exitosamente. Procesamiento en curso.",
            task_id: accepted.task_id,
            video_id: accepted.video_id,
        },
    ))
}

/// The accepted upload, its owner and its size in bytes.
async fn receive_upload(
    node: &Node,
    request: Request,
) -> Result<(AcceptedUpload, u64, u64), ApiError> {
    // Everything up to the admission is decided without reading the body, and the slot
    // first: when none is free the answer is 503 whoever asks, so a crowd is refused before
    // its tokens are checked.
    let slot = node.upload_slot()?;
    let owner_id = signed_in(node, &request.headers).await?;
    let max_bytes = node.config().upload.max_bytes;
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = form_data_boundary(content_type).ok_or_else(|| {
        ApiError::bad_request(
            "La solicitud debe ser multipart/form-data con los campos 'video_file' y 'title'.",
        )
    })?;
    if content_length(&request.headers)
        .is_some_and(|len| len > max_bytes + MULTIPART_OVERHEAD_BYTES)
    {
        return Err(too_big(max_bytes));
    }
    let admitted = node.admit_upload_in(slot, owner_id).await?;

    let config = node.config();
    let mut form = FormReader::new(
        request.body,
        &boundary,
        FormLimits {
            max_body_bytes: max_bytes + MULTIPART_OVERHEAD_BYTES,
            idle: Duration::from_secs(config.server.body_idle_timeout_s),
            min_bytes_per_s: config.upload.min_bytes_per_s,
            rate_grace: Duration::from_secs(config.upload.rate_grace_s),
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
                let temp = admitted.temp_file();
                let direct = config.upload.direct_writes;
                file = Some(stream_to_file(&mut form, temp, max_bytes, direct).await?);
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
    let accepted = admitted.commit(title, temp).await?;
    Ok((accepted, owner_id, written))
}

/// Streams one multipart field into `temp`, fsynced; refuses as soon as it exceeds `max_bytes`.
/// Returns the file's guard and its length.
async fn stream_to_file(
    form: &mut FormReader,
    temp: TempUpload,
    max_bytes: u64,
    direct: bool,
) -> Result<(TempUpload, u64), ApiError> {
    let io = |e: std::io::Error| ApiError::Internal(format!("writing the upload: {e}"));
    let mut sink = FileSink::create(temp, direct);
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

/// One of the player's videos.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "video_id": 42, "title": "Crossover y triple", "status": "processing",
    "uploaded_at": "2026-11-22T14:10:43Z", "processed_at": null, "processed_url": null
}))]
struct VideoSummary {
    video_id: u64,
    title: String,
    #[schema(value_type = VideoStatus)]
    status: &'static str,
    #[schema(format = DateTime)]
    uploaded_at: String,
    #[schema(required = true, format = DateTime)]
    processed_at: Option<String>,
    #[schema(required = true)]
    processed_url: Option<String>,
}

/// The public URL of a published video's `kind` of media, `None` while it is not published.
fn published_url(node: &Node, video: &Video, kind: MediaKind) -> Option<String> {
    (video.status == VideoStatus::Processed).then(|| {
        public_url(
            node,
            &media_path(MediaKey {
                kind,
                video_id: video.id,
            }),
        )
    })
}

/// The signed-in player's videos, newest first.
#[utoipa::path(
    get,
    path = "/api/videos",
    operation_id = "listMyVideos",
    tag = "videos",
    security(("player" = [])),
    responses(
        (status = 200, description = "The player's videos.", body = Vec<VideoSummary>),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn list(node: &Node, request: Request) -> Result<Response, ApiError> {
    let owner = signed_in(node, &request.headers).await?;
    let videos = node.videos_of(owner).await?;
    let items: Vec<VideoSummary> = videos
        .iter()
        .map(|v| VideoSummary {
            video_id: v.id,
            title: v.title.clone(),
            status: v.status.as_str(),
            uploaded_at: format_ts(v.uploaded_at),
            processed_at: v.processed_at.map(format_ts),
            processed_url: published_url(node, v, MediaKind::Processed),
        })
        .collect();
    Ok(json(StatusCode::OK, &items))
}

/// One video of the player, in full.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "video_id": 42, "title": "Crossover y triple", "status": "processed", "progress": 100,
    "uploaded_at": "2026-11-22T14:10:43Z", "processed_at": "2026-11-22T14:11:20Z",
    "original_url": "/media/originals/42.mp4?expires=1795443043&signature=9f2c4e0a5b7d8c1e3f6a9b2d4c7e0f1a3b5d7e9f1c3a5b7d9e1f3a5c7e9b1d3f",
    "processed_url": "/media/42.mp4", "poster_url": "/media/42.jpg", "votes": 12
}))]
struct VideoDetail {
    video_id: u64,
    title: String,
    #[schema(value_type = VideoStatus)]
    status: &'static str,
    /// Processing progress, 0..100.
    #[schema(maximum = 100)]
    progress: u8,
    #[schema(format = DateTime)]
    uploaded_at: String,
    #[schema(required = true, format = DateTime)]
    processed_at: Option<String>,
    /// A signed, expiring link to the uploaded file.
    original_url: String,
    #[schema(required = true)]
    processed_url: Option<String>,
    #[schema(required = true)]
    poster_url: Option<String>,
    votes: u64,
    /// Why processing failed (only when `status` is `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<String>,
}

/// One of the signed-in player's videos.
#[utoipa::path(
    get,
    path = "/api/videos/{video_id}",
    operation_id = "getMyVideo",
    tag = "videos",
    security(("player" = [])),
    params(("video_id" = u64, Path, description = "The video's id.")),
    responses(
        (status = 200, description = "The video.", body = VideoDetail),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = VideoNotFound),
    )
)]
pub async fn detail(
    node: &Node,
    request: Request,
    id: Option<VideoId>,
) -> Result<Response, ApiError> {
    let user = signed_in(node, &request.headers).await?;
    let video = node.video_of(user, known(id)?).await?;
    let original = media_path(MediaKey {
        kind: MediaKind::Original,
        video_id: video.id,
    });
    let body = VideoDetail {
        video_id: video.id,
        title: video.title.clone(),
        status: video.status.as_str(),
        progress: video.progress,
        uploaded_at: format_ts(video.uploaded_at),
        processed_at: video.processed_at.map(format_ts),
        original_url: public_url(node, &node.signed_path(&original)),
        processed_url: published_url(node, &video, MediaKind::Processed),
        poster_url: published_url(node, &video, MediaKind::Poster),
        votes: video.votes,
        error: video
            .error
            .clone()
            .filter(|_| video.status == VideoStatus::Failed),
    };
    Ok(json(StatusCode::OK, &body))
}

/// The video is gone.
#[derive(Serialize, ToSchema)]
struct Deleted {
    #[schema(example = "El video ha sido eliminado exitosamente.")]
    message: &'static str,
    video_id: u64,
}

/// Deletes one of the signed-in player's unpublished videos.
///
/// The original, the processed file and the poster are removed, and a queued or running job
/// is cancelled.
#[utoipa::path(
    delete,
    path = "/api/videos/{video_id}",
    operation_id = "deleteMyVideo",
    tag = "videos",
    security(("player" = [])),
    params(("video_id" = u64, Path, description = "The video's id.")),
    responses(
        (status = 200, description = "The video was deleted.", body = Deleted),
        (status = 400, description = "The video is published for voting.", body = ErrorBody,
            example = json!({"detail": "El video ya fue publicado para votación y no puede eliminarse."})),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = VideoNotFound),
    )
)]
pub async fn delete(
    node: &Node,
    request: Request,
    id: Option<VideoId>,
) -> Result<Response, ApiError> {
    let user = signed_in(node, &request.headers).await?;
    let video = node.delete_video(user, known(id)?).await?;
    Ok(json(
        StatusCode::OK,
        &Deleted {
            message: "El video ha sido eliminado exitosamente.",
            video_id: video.id,
        },
    ))
}
