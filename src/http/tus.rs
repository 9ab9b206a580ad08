//! Resumable uploads: tus 1.0.0 (core, `creation`, `creation-with-upload`, `termination`,
//! `expiration`, `checksum` with sha256) on `/api/uploads` and `/api/uploads/{id}`, with the
//! player's Bearer token. Headers are parsed here; the node decides (`node/resumable.rs`) and
//! keeps the bytes (`crate::resumable`). Every answer carries `Tus-Resumable`, errors a
//! `{"detail"}` body like the rest of the API. The answer that completes an upload (and any
//! later HEAD) names the video it became: `Showcase-Video-Id`, `Showcase-Task-Id`.

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::Digest;

use super::body::content_length;
use super::components::{ErrorBody, Invalid, TimedOut, Unauthorized};
use super::error::ApiError;
use super::form::{too_slow, FormError, FormLimits};
use super::request::{public_url, signed_in, Request};
use super::response::{empty, Response};
use crate::events::{self, Event};
use crate::node::{NewResumable, Node, ResumableState};
use crate::upload::UploadSlot;

pub const TUS_VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";
const MAX_FILENAME_CHARS: usize = 255;
/// Longest `Upload-Metadata` accepted (title and file name, base64).
const MAX_METADATA_BYTES: usize = 4096;

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const VIDEO_ID: HeaderName = HeaderName::from_static("showcase-video-id");
const TASK_ID: HeaderName = HeaderName::from_static("showcase-task-id");

/// Runs a tus handler and gives its answer, error or not, the protocol's header.
pub async fn answer(
    handler: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let mut response = handler.await.unwrap_or_else(ApiError::into_response);
    let failed_precondition = response.status() == StatusCode::PRECONDITION_FAILED;
    let headers = response.headers_mut();
    headers.insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if failed_precondition {
        headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    Ok(response)
}

/// tus discovery: the protocol's version, extensions and limits. No token needed.
#[utoipa::path(
    options,
    path = "/api/uploads",
    operation_id = "uploadOptions",
    tag = "uploads",
    responses(
        (status = 204, description = "What this server speaks.", headers(
            ("Tus-Resumable" = String, description = "`1.0.0`"),
            ("Tus-Version" = String, description = "`1.0.0`"),
            ("Tus-Extension" = String,
                description = "`creation,creation-with-upload,termination,expiration,checksum`"),
            ("Tus-Checksum-Algorithm" = String, description = "`sha256`"),
            ("Tus-Max-Size" = u64, description = "The node's `upload.max_bytes`."),
        )),
    )
)]
pub fn options(node: &Node) -> Result<Response, ApiError> {
    let mut response = empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    headers.insert("tus-checksum-algorithm", HeaderValue::from_static("sha256"));
    headers.insert(
        "tus-max-size",
        HeaderValue::from(node.config().upload.max_bytes),
    );
    Ok(response)
}

/// Requests other than OPTIONS name the protocol version they speak.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(&TUS_RESUMABLE).and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(ApiError::PreconditionFailed(format!(
            "Versión de tus no soportada: {other}; este servidor habla {TUS_VERSION}."
        ))),
        None => Err(ApiError::PreconditionFailed(format!(
            "Falta el encabezado Tus-Resumable (este servidor habla {TUS_VERSION})."
        ))),
    }
}

/// A header that must be a non-negative integer.
fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "El encabezado {name} debe ser un entero no negativo."
                ))
            }),
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs; `title` is required.
fn metadata(headers: &HeaderMap) -> Result<(String, Option<String>), ApiError> {
    let raw = match headers.get("upload-metadata") {
        None => "",
        Some(value) => value
            .to_str()
            .ok()
            .filter(|raw| raw.len() <= MAX_METADATA_BYTES)
            .ok_or_else(|| ApiError::bad_request("Upload-Metadata no es válido."))?,
    };
    let (mut title, mut filename) = (None, None);
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Upload-Metadata: el valor de '{key}' no es base64 de un texto UTF-8."
                ))
            })?;
        let slot = match key {
            "title" => &mut title,
            "filename" => &mut filename,
            _ => continue,
        };
        if slot.replace(decoded).is_some() {
            return Err(ApiError::bad_request(format!(
                "Upload-Metadata: '{key}' aparece más de una vez."
            )));
        }
    }
    let title = super::videos::validate_title(&title.ok_or_else(|| {
        ApiError::bad_request("Upload-Metadata debe llevar 'title' (el título del video).")
    })?)?;
    let filename = filename
        .map(|name| {
            let name = name.trim().to_string();
            if name.chars().count() > MAX_FILENAME_CHARS || !crate::domain::is_displayable(&name)
            {
                Err(ApiError::bad_request(
                    "Upload-Metadata: 'filename' es demasiado largo o tiene caracteres no permitidos.",
                ))
            } else {
                Ok(name)
            }
        })
        .transpose()?;
    Ok((title, filename))
}

/// The checksum a PATCH must have: `Upload-Checksum: sha256 <base64>`.
fn checksum(headers: &HeaderMap) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(value) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Upload-Checksum no es válido."))?;
    let (algorithm, digest) = value.split_once(' ').unwrap_or((value, ""));
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Err(ApiError::bad_request(format!(
            "Algoritmo de suma de verificación no soportado: {algorithm} (solo sha256)."
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()
        .filter(|d| d.len() == 32)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Upload-Checksum: el resumen sha256 no es válido."))
}

fn expires(ms: u64) -> HeaderValue {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static(""))
}

/// The headers that say where an upload stands.
fn describe(response: &mut Response, state: &ResumableState) {
    let headers = response.headers_mut();
    headers.insert(UPLOAD_OFFSET, HeaderValue::from(state.offset));
    headers.insert(UPLOAD_EXPIRES, expires(state.expires_at_ms));
    if let Some(accepted) = &state.accepted {
        headers.insert(VIDEO_ID, HeaderValue::from(accepted.video_id));
        if let Ok(task) = HeaderValue::from_str(&accepted.task_id) {
            headers.insert(TASK_ID, task);
        }
    }
}

/// Creates a resumable upload.
///
/// With a body of `application/offset+octet-stream`, that body is its first chunk. The
/// finished upload becomes a video exactly like a form upload.
#[utoipa::path(
    post,
    path = "/api/uploads",
    operation_id = "createUpload",
    tag = "uploads",
    security(("player" = [])),
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes."),
        ("Upload-Metadata" = String, Header, description = "`title <base64>` (required, \
            1..255 characters) and optionally `filename <base64>`, comma separated."),
        ("Upload-Checksum" = Option<String>, Header,
            description = "`sha256 <base64>` of this request's body, if it has one."),
    ),
    request_body(content = inline(super::components::FileBytes), content_type = "application/offset+octet-stream",
        description = "Optional: the first chunk."),
    responses(
        (status = 201, description = "The upload exists; `Location` is its URL.", headers(
            ("Location" = String),
            ("Upload-Offset" = u64, description = "Bytes stored so far."),
            ("Upload-Expires" = String, description = "When an unfinished upload is removed."),
            ("Showcase-Video-Id" = u64, description = "When the first chunk finished it."),
            ("Showcase-Task-Id" = String, description = "When the first chunk finished it."),
        )),
        (status = 400, response = Invalid),
        (status = 401, response = Unauthorized),
        (status = 408, response = TimedOut),
        (status = 412, description = "`Tus-Resumable` is missing or names another version.",
            body = ErrorBody, headers(("Tus-Version" = String))),
        (status = 413, description = "`Upload-Length` is over the node's limit.", body = ErrorBody,
            example = json!({"detail": "Upload-Length supera el tamaño máximo permitido de 100 MiB."})),
        (status = 429, description = "Too many uploads created from this client, or too many \
            unfinished ones for this player.", body = ErrorBody,
            headers(("Retry-After" = u64))),
        (status = 460, description = "The first chunk does not match `Upload-Checksum`; it was \
            discarded.", body = ErrorBody),
    )
)]
pub async fn create(node: &Node, request: Request) -> Result<Response, ApiError> {
    check_version(&request.headers)?;
    let owner = signed_in(node, &request.headers).await?;
    if request.headers.contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "Upload-Defer-Length no está soportado: indique Upload-Length.",
        ));
    }
    let length = number(&request.headers, &UPLOAD_LENGTH)?
        .ok_or_else(|| ApiError::bad_request("Falta el encabezado Upload-Length."))?;
    if length == 0 {
        return Err(ApiError::bad_request("Upload-Length debe ser mayor que 0."));
    }
    let (title, filename) = metadata(&request.headers)?;
    let with_data = content_type(&request.headers) == Some(OFFSET_CONTENT_TYPE)
        && content_length(&request.headers) != Some(0);
    let created = node
        .create_resumable(
            owner,
            NewResumable {
                length,
                title,
                filename,
            },
            request.peer,
            &request.headers,
        )
        .map_err(|e| refused(e.into()))?;
    let location = public_url(node, &format!("/api/uploads/{}", created.id));
    let mut state = created.clone();
    if with_data {
        // The upload exists whatever happens to its first chunk: a refused or failed chunk is
        // reported by its offset, and the client continues with PATCH.
        let written = match node.upload_slot() {
            Ok(slot) => patch_body(node, slot, owner, &created.id, 0, request).await,
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(written) => state = written,
            Err(e @ ApiError::BadRequest(_)) if created_is_gone(node, owner, &created.id) => {
                return Err(e)
            }
            Err(_) => {
                if let Ok(now) = node.resumable_state(owner, &created.id).await {
                    state = now;
                }
            }
        }
    }
    let mut response = empty(StatusCode::CREATED);
    describe(&mut response, &state);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    Ok(response)
}

/// A first chunk that completed the upload and was refused by the policy removes the upload:
/// then the refusal is the answer.
fn created_is_gone(node: &Node, owner: u64, id: &str) -> bool {
    node.resumable().get(id, owner).is_err()
}

/// Where an upload stands: resume from `Upload-Offset`.
#[utoipa::path(
    head,
    path = "/api/uploads/{upload_id}",
    operation_id = "uploadStatus",
    tag = "uploads",
    security(("player" = [])),
    params(
        ("upload_id" = String, Path, description = "32 hex digits, from `Location`."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
    ),
    responses(
        (status = 200, description = "The upload's state.", headers(
            ("Upload-Offset" = u64, description = "Bytes durably stored."),
            ("Upload-Length" = u64),
            ("Upload-Expires" = String),
            ("Showcase-Video-Id" = u64, description = "Once the upload became a video."),
            ("Showcase-Task-Id" = String, description = "Once the upload became a video."),
        )),
        (status = 401, description = "No valid token."),
        (status = 404, description = "No such upload of this player."),
        (status = 410, description = "The upload expired; its bytes are gone."),
        (status = 412, description = "`Tus-Resumable` is missing or names another version."),
    )
)]
pub async fn status(
    node: &Node,
    request: Request,
    id: Option<String>,
) -> Result<Response, ApiError> {
    let (owner, id) = addressed(node, &request.headers, id).await?;
    let state = node.resumable_state(owner, &id).await?;
    let mut response = empty(StatusCode::OK);
    describe(&mut response, &state);
    response
        .headers_mut()
        .insert(UPLOAD_LENGTH, HeaderValue::from(state.length));
    Ok(response)
}

/// Appends a chunk to a resumable upload.
///
/// The chunk goes at `Upload-Offset`; the answer comes once it is on disk. The chunk that
/// completes the upload also commits it as a video (probe, policy, record, job).
#[utoipa::path(
    patch,
    path = "/api/uploads/{upload_id}",
    operation_id = "appendToUpload",
    tag = "uploads",
    security(("player" = [])),
    params(
        ("upload_id" = String, Path, description = "32 hex digits, from `Location`."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "The upload's offset, as HEAD gives it."),
        ("Upload-Checksum" = Option<String>, Header,
            description = "`sha256 <base64>` of this chunk."),
    ),
    request_body(content = inline(super::components::FileBytes), content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "The chunk is stored.", headers(
            ("Upload-Offset" = u64, description = "The new offset."),
            ("Upload-Expires" = String),
            ("Showcase-Video-Id" = u64, description = "When this chunk finished the upload."),
            ("Showcase-Task-Id" = String, description = "When this chunk finished the upload."),
        )),
        (status = 400, description = "A header is invalid, the chunk goes past `Upload-Length`, \
            or the finished file is refused by the upload policy (the upload is removed).",
            body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such upload of this player.", body = ErrorBody),
        (status = 408, response = TimedOut),
        (status = 409, description = "`Upload-Offset` is not the upload's, or another request \
            is writing it.", body = ErrorBody),
        (status = 410, description = "The upload expired; its bytes are gone.", body = ErrorBody),
        (status = 412, description = "`Tus-Resumable` is missing or names another version.",
            body = ErrorBody, headers(("Tus-Version" = String))),
        (status = 415, description = "The body is not `application/offset+octet-stream`.",
            body = ErrorBody),
        (status = 460, description = "The chunk does not match `Upload-Checksum`; it was \
            discarded.", body = ErrorBody),
    )
)]
pub async fn patch(
    node: &Node,
    request: Request,
    id: Option<String>,
) -> Result<Response, ApiError> {
    // The slot first, as for the form: while none is free the answer is 503 whoever asks,
    // before the token is checked or the upload looked up.
    let slot = node.upload_slot().map_err(|e| refused(e.into()))?;
    let (owner, id) = addressed(node, &request.headers, id).await?;
    if content_type(&request.headers) != Some(OFFSET_CONTENT_TYPE) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "El cuerpo de un PATCH debe ser {OFFSET_CONTENT_TYPE}."
        )));
    }
    let offset = number(&request.headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| ApiError::bad_request("Falta el encabezado Upload-Offset."))?;
    let state = patch_body(node, slot, owner, &id, offset, request)
        .await
        .map_err(refused)?;
    let mut response = empty(StatusCode::NO_CONTENT);
    describe(&mut response, &state);
    Ok(response)
}

/// Abandons an upload: it and its bytes are removed.
#[utoipa::path(
    delete,
    path = "/api/uploads/{upload_id}",
    operation_id = "terminateUpload",
    tag = "uploads",
    security(("player" = [])),
    params(
        ("upload_id" = String, Path, description = "32 hex digits, from `Location`."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
    ),
    responses(
        (status = 204, description = "The upload is gone."),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such upload of this player.", body = ErrorBody),
        (status = 410, description = "The upload expired.", body = ErrorBody),
        (status = 412, description = "`Tus-Resumable` is missing or names another version.",
            body = ErrorBody, headers(("Tus-Version" = String))),
    )
)]
pub async fn terminate(
    node: &Node,
    request: Request,
    id: Option<String>,
) -> Result<Response, ApiError> {
    let (owner, id) = addressed(node, &request.headers, id).await?;
    node.terminate_resumable(owner, &id)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Counts a refused creation or chunk among the uploads refused, by cause, as the form's are.
fn refused(e: ApiError) -> ApiError {
    events::emit(Event::UploadRefused { reason: e.cause() });
    e
}

/// The player asking and the upload that `/api/uploads/{id}` names (a malformed id names
/// none: 404 once the player is known).
async fn addressed(
    node: &Node,
    headers: &HeaderMap,
    id: Option<String>,
) -> Result<(u64, String), ApiError> {
    check_version(headers)?;
    let owner = signed_in(node, headers).await?;
    Ok((owner, id.ok_or_else(not_found)?))
}

fn not_found() -> ApiError {
    ApiError::NotFound("Subida no encontrada.".into())
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
}

/// Admits a chunk at `offset`, writes the request's body into the upload as it arrives (kept
/// and synced even when the client goes away), checks its checksum, and commits the upload
/// when it is complete.
async fn patch_body(
    node: &Node,
    slot: UploadSlot,
    owner: u64,
    id: &str,
    offset: u64,
    request: Request,
) -> Result<ResumableState, ApiError> {
    let expected = checksum(&request.headers)?;
    let declared = content_length(&request.headers);
    // A committed upload takes no more bytes: a client repeating its last request at the end
    // learns the video it became.
    let now = node.resumable_state(owner, id).await?;
    if now.accepted.is_some() {
        if offset != now.offset {
            return Err(crate::node::Error::OffsetMismatch { offset: now.offset }.into());
        }
        return Ok(now);
    }
    let admitted = node.admit_patch(slot, owner, id, offset, declared).await?;
    let remaining = admitted.remaining();
    let (mut sink, writing) = admitted.start(node);
    let config = node.config();
    let limits = FormLimits {
        max_body_bytes: remaining,
        idle: Duration::from_secs(config.server.body_idle_timeout_s),
        min_bytes_per_s: config.upload.min_bytes_per_s,
        rate_grace: Duration::from_secs(config.upload.rate_grace_s),
    };
    let mut hasher = expected.as_ref().map(|_| sha2::Sha256::new());
    let mut body = request.body;
    let started = tokio::time::Instant::now();
    let mut received = 0u64;
    let mut failure: Option<ApiError> = None;
    loop {
        let next = match tokio::time::timeout(limits.idle, body.next()).await {
            Ok(next) => next,
            Err(_) => {
                failure = Some(FormError::Idle.into());
                break;
            }
        };
        let chunk = match next {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => {
                failure = Some(FormError::Interrupted.into());
                break;
            }
        };
        received += chunk.len() as u64;
        if received > remaining {
            failure = Some(crate::node::Error::PastUploadLength { remaining }.into());
            break;
        }
        if let Some(slow) = too_slow(received, started.elapsed(), &limits) {
            failure = Some(slow.into());
            break;
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&chunk);
        }
        if let Err(e) = sink.write(chunk).await {
            failure = Some(ApiError::Internal(format!("writing an upload: {e}")));
            break;
        }
    }
    // Whatever arrived is synced before anything is answered.
    let synced = sink.finish().await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    synced.map_err(|e| ApiError::Internal(format!("syncing an upload: {e}")))?;
    if let (Some(expected), Some(hasher)) = (expected, hasher) {
        if hasher.finalize().as_slice() != expected.as_slice() {
            writing.discard().await?;
            return Err(crate::node::Error::ChecksumMismatch.into());
        }
    }
    let (state, committed) = writing.finish().await?;
    if let (true, Some(accepted)) = (committed, &state.accepted) {
        events::emit(Event::UploadAccepted {
            video_id: accepted.video_id,
            owner_id: owner,
            bytes: state.length,
        });
    }
    Ok(state)
}
