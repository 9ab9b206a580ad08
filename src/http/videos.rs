//! The signed-in player's videos: upload, list, detail, delete.
//!
//! The upload handler decides admission before it reads a byte of the body (token, content
//! type, declared length, then a slot from the node), streams the file part straight to a temp
//! file in bounded chunks while counting bytes, fsyncs it, and asks the node to commit it (probe,
//! policy, record and job). A refusal at any point drops the temp file.

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use super::body::content_length;
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

#[derive(Serialize)]
struct UploadAccepted {
    message: &'static str,
    task_id: String,
    video_id: u64,
}

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
    // Everything up to the slot is decided without reading the body.
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
    let admitted = node.admit_upload(owner_id).await?;

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
                file = Some(stream_to_file(&mut form, admitted.temp_file(), max_bytes).await?);
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

#[derive(Serialize)]
struct Deleted {
    message: &'static str,
    video_id: u64,
}

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
