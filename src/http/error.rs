//! Every error the HTTP layer can answer, and the one place where errors become responses.
//!
//! Handlers return `Result<_, ApiError>`; the node's errors (and the store, queue, auth, body
//! and form errors inside them) convert into `ApiError` here, and so do requests that match no
//! endpoint. Every error body is `{"detail": "..."}`.

use std::borrow::Cow;

use http::StatusCode;
use serde::Serialize;

use super::body::BodyError;
use super::endpoint::Unrouted;
use super::form::{FormError, FILE_FIELD};
use super::response::{json, Response};
use crate::auth::AuthError;
use crate::engine::probe::ProbeError;
use crate::engine::{QueueError, StoreError};
use crate::node::{Error as NodeError, Refusal};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not; `allow` lists the methods it has.
    #[error("Método no permitido.")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// tus's 460: the data of a request does not have the checksum the client gave.
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("El rango solicitado no es satisfacible.")]
    RangeNotSatisfiable { len: u64 },
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_s: u64 },
    #[error("{detail}")]
    Unavailable {
        /// Static for the refusals a crowd gets, whose body is then serialised once.
        detail: Cow<'static, str>,
        retry_after_s: u64,
        /// What ran out, as a metric label (`upload_slots`, `disk_full`, ...).
        cause: &'static str,
    },
    #[error("{0}")]
    Internal(String),
}

pub const VIDEO_NOT_FOUND: &str = "Video no encontrado.";
pub const NOT_OWNER: &str = "No tiene permiso sobre este video.";

/// Every error: a human-readable `detail` (in Spanish, the platform's language), which names
/// the field at fault when one is.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"detail": "Video no encontrado."}))]
pub struct ErrorBody {
    pub detail: String,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest(detail.into())
    }

    pub fn unavailable(detail: impl Into<Cow<'static, str>>, retry_after_s: u64) -> Self {
        Self::unavailable_because(detail, retry_after_s, "unavailable")
    }

    pub fn unavailable_because(
        detail: impl Into<Cow<'static, str>>,
        retry_after_s: u64,
        cause: &'static str,
    ) -> Self {
        ApiError::Unavailable {
            detail: detail.into(),
            retry_after_s,
            cause,
        }
    }

    /// A short label for metrics: why a request was refused.
    pub fn cause(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::RequestTimeout(_) => "timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::ChecksumMismatch(_) => "checksum_mismatch",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::RangeNotSatisfiable { .. } => "unsatisfiable",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable { cause, .. } => cause,
            ApiError::Internal(_) => "error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ChecksumMismatch(_) => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                error_body(status, "Error interno del servidor.".to_owned())
            }
            // The refusals a crowd gets: the body serialised once, nothing formatted.
            ApiError::Unavailable {
                detail: Cow::Borrowed(detail),
                ..
            } => static_error_body(status, detail),
            other => error_body(status, other.to_string()),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s, .. }
            | ApiError::Unavailable { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after_value(seconds));
        }
        if let ApiError::RangeNotSatisfiable { len } = &self {
            if let Ok(value) = http::HeaderValue::from_str(&format!("bytes */{len}")) {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_RANGE, value);
            }
        }
        if let ApiError::MethodNotAllowed { allow } = &self {
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A write that was applied but not confirmed on disk: the storage is in trouble. The client is
/// told to retry later; the write itself is kept (it may still become durable).
fn unconfirmed(cause: &str) -> ApiError {
    tracing::error!(cause, "a write could not be confirmed on disk");
    ApiError::unavailable(
        "No se pudo confirmar el guardado en disco; intente de nuevo en unos segundos.",
        UNCONFIRMED_RETRY_AFTER_S,
    )
}

const UNCONFIRMED_RETRY_AFTER_S: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => ApiError::bad_request("El email ya está registrado."),
            StoreError::VideoNotFound => ApiError::NotFound(VIDEO_NOT_FOUND.into()),
            StoreError::NotOwner => ApiError::Forbidden(NOT_OWNER.into()),
            StoreError::AlreadyPublished => ApiError::bad_request(
                "El video ya fue publicado para votación y no puede eliminarse.",
            ),
            StoreError::NotPublished => {
                ApiError::bad_request("El video aún no está publicado para votación.")
            }
            StoreError::AlreadyVoted => ApiError::bad_request("Ya has votado por este video."),
            StoreError::UserNotFound => ApiError::Unauthorized("Usuario no encontrado.".into()),
            StoreError::Backend(cause) => ApiError::Internal(cause),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "the store is unavailable");
                ApiError::unavailable(
                    "El almacén de datos no responde; intente de nuevo en unos segundos.",
                    UNCONFIRMED_RETRY_AFTER_S,
                )
            }
            StoreError::Unconfirmed(cause) => unconfirmed(&cause),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound => ApiError::NotFound("Trabajo no encontrado.".into()),
            QueueError::InvalidToken => ApiError::bad_request("Token de arrendamiento inválido."),
            QueueError::Backend(cause) => ApiError::Internal(cause),
            QueueError::Unconfirmed(cause) => unconfirmed(&cause),
            QueueError::Unavailable(cause) => {
                tracing::warn!(cause, "the queue service is unavailable");
                ApiError::unavailable_because(
                    "La cola de procesamiento no está disponible; intente más tarde.",
                    5,
                    "queue_unavailable",
                )
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken => {
                ApiError::Unauthorized("No autenticado: falta el token de acceso.".into())
            }
            AuthError::InvalidToken => {
                ApiError::Unauthorized("Token de acceso inválido o expirado.".into())
            }
            AuthError::Busy => ApiError::unavailable("Servidor ocupado, intente de nuevo.", 1),
            AuthError::Hashing(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<crate::rate_limit::OverBudget> for ApiError {
    fn from(e: crate::rate_limit::OverBudget) -> Self {
        let retry_after_s = e.wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError::TooManyRequests {
            detail: format!(
                "Demasiadas solicitudes desde esta dirección; intente de nuevo en {retry_after_s} s."
            ),
            retry_after_s,
        }
    }
}

impl From<FormError> for ApiError {
    fn from(e: FormError) -> Self {
        match e {
            FormError::Idle | FormError::TooSlow(_) => ApiError::RequestTimeout(e.to_string()),
            FormError::Malformed(_)
            | FormError::TooManyFields
            | FormError::TooLarge(_)
            | FormError::Interrupted => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            BodyError::Idle => ApiError::RequestTimeout(e.to_string()),
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<Unrouted> for ApiError {
    fn from(e: Unrouted) -> Self {
        match e {
            Unrouted::NotFound => not_found(),
            Unrouted::MethodNotAllowed { allow } => ApiError::MethodNotAllowed { allow },
        }
    }
}

/// A path that names nothing this node serves.
pub fn not_found() -> ApiError {
    ApiError::NotFound("Recurso no encontrado.".into())
}

fn error_body(status: StatusCode, detail: String) -> Response {
    json(status, &ErrorBody { detail })
}

/// The response of an error whose detail is static: its JSON is serialised on first use and
/// shared after that.
fn static_error_body(status: StatusCode, detail: &'static str) -> Response {
    type Bodies = std::sync::RwLock<std::collections::HashMap<&'static str, bytes::Bytes>>;
    static BODIES: std::sync::OnceLock<Bodies> = std::sync::OnceLock::new();
    let bodies = BODIES.get_or_init(Default::default);
    let known = bodies
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(detail)
        .cloned();
    let body = known.unwrap_or_else(|| {
        let body = bytes::Bytes::from(
            serde_json::to_vec(&ErrorBody {
                detail: detail.to_owned(),
            })
            .unwrap_or_default(),
        );
        bodies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(detail, body.clone());
        body
    });
    let mut response = super::response::full(status, body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `Retry-After: <seconds>`; the values refusals use (up to `load::MAX_RETRY_S`) are made once.
fn retry_after_value(seconds: u64) -> http::HeaderValue {
    static VALUES: std::sync::OnceLock<Vec<http::HeaderValue>> = std::sync::OnceLock::new();
    let values = VALUES.get_or_init(|| {
        (0..=crate::load::MAX_RETRY_S)
            .map(http::HeaderValue::from)
            .collect()
    });
    values
        .get(seconds as usize)
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from(seconds))
}

/// A path id that names no video.
pub fn no_video() -> ApiError {
    ApiError::NotFound(VIDEO_NOT_FOUND.into())
}

fn refused(refusal: &Refusal) -> ApiError {
    let detail = match refusal {
        Refusal::NoSlot { .. } => "Capacidad de subida agotada; intente de nuevo en unos segundos.",
        Refusal::DiskFull { .. } | Refusal::DiskUnknown(_) => {
            "Espacio de almacenamiento insuficiente; intente más tarde."
        }
        Refusal::QueueFull { .. } => "La cola de procesamiento está llena; intente más tarde.",
        Refusal::QueueUnavailable(_) => {
            "La cola de procesamiento no está disponible; intente más tarde."
        }
        Refusal::ProbesStuck { .. } => "El análisis de videos está detenido; intente más tarde.",
        Refusal::BackendDown(_) => {
            "El almacenamiento de videos o la cola de procesamiento no responden; intente más tarde."
        }
    };
    ApiError::unavailable_because(detail, refusal.retry_after_s(), refusal.reason())
}

fn invalid_media(e: ProbeError) -> ApiError {
    match e {
        ProbeError::Empty => ApiError::bad_request(format!("El campo '{FILE_FIELD}' está vacío.")),
        other => ApiError::bad_request(format!(
            "El campo '{FILE_FIELD}' no es un video MP4 válido: {other}."
        )),
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(e) => e.into(),
            NodeError::Queue(e) => e.into(),
            NodeError::Auth(e) => e.into(),
            NodeError::OverBudget(e) => e.into(),
            NodeError::Refused(refusal) => refused(&refusal),
            NodeError::InvalidMedia(e) => invalid_media(e),
            NodeError::Policy(violation) => ApiError::bad_request(violation.to_string()),
            NodeError::ProbeBusy => ApiError::unavailable_because(
                "Servidor ocupado analizando videos; intente de nuevo en unos segundos.",
                1,
                "probe_busy",
            ),
            NodeError::BadCredentials => ApiError::Unauthorized("Credenciales inválidas.".into()),
            NodeError::NotAdmin => {
                ApiError::Unauthorized("Token de administración inválido.".into())
            }
            NodeError::Absent => not_found(),
            NodeError::NoMedia => no_video(),
            NodeError::StreamsBusy { retry_after_s } => ApiError::unavailable(
                "Demasiadas reproducciones simultáneas; intente de nuevo.",
                retry_after_s,
            ),
            NodeError::LinkExpired => ApiError::Forbidden("El enlace ha expirado.".into()),
            NodeError::LinkInvalid => {
                ApiError::Forbidden("El enlace no es válido o ha expirado.".into())
            }
            NodeError::NoDeadLetter => {
                ApiError::NotFound("Mensaje no encontrado en la cola de fallidos.".into())
            }
            NodeError::Unavailable {
                reason,
                retry_after_s,
            } => ApiError::unavailable(
                format!("Servicio temporalmente no disponible: {reason}."),
                retry_after_s,
            ),
            NodeError::UploadNotFound => ApiError::NotFound("Subida no encontrada.".into()),
            NodeError::UploadExpired => {
                ApiError::Gone("La subida expiró y sus datos fueron eliminados.".into())
            }
            NodeError::UploadBusy => ApiError::Conflict(
                "Otra solicitud está escribiendo esta subida; consulte su desplazamiento con \
                 HEAD y reanude desde allí."
                    .into(),
            ),
            NodeError::OffsetMismatch { offset } => ApiError::Conflict(format!(
                "Upload-Offset no coincide con el de la subida, que tiene {offset} bytes."
            )),
            NodeError::PastUploadLength { remaining } => ApiError::bad_request(format!(
                "La solicitud trae más bytes de los {remaining} que le faltan a la subida."
            )),
            NodeError::UploadTooLarge { max_bytes } => ApiError::PayloadTooLarge(format!(
                "Upload-Length supera el tamaño máximo permitido de {} MiB.",
                max_bytes / (1024 * 1024)
            )),
            NodeError::TooManyResumable { max } => ApiError::TooManyRequests {
                detail: format!(
                    "Ya tiene {max} subidas sin terminar; termine o elimine alguna antes de \
                     crear otra."
                ),
                retry_after_s: 60,
            },
            NodeError::ChecksumMismatch => ApiError::ChecksumMismatch(
                "La suma de verificación no coincide; los datos de esta solicitud se \
                 descartaron."
                    .into(),
            ),
            NodeError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// A text field holding characters that cannot be shown as typed (see
/// `domain::is_displayable`).
pub fn undisplayable(field: &str) -> ApiError {
    ApiError::bad_request(format!(
        "El campo '{field}' contiene caracteres de control o de dirección del texto no permitidos."
    ))
}

/// The detail of an answer hyper gives by itself to a request it cannot parse (see
/// `shaped_io`), by status; `None` for the statuses hyper never answers on its own.
pub fn protocol_error_detail(status: u16) -> Option<&'static str> {
    match status {
        400 => Some("Solicitud HTTP mal formada: la línea de petición, un encabezado o Content-Length no son válidos."),
        414 => Some("La URI de la solicitud es demasiado larga."),
        431 => Some("Los encabezados de la solicitud son demasiado grandes o demasiados."),
        _ => None,
    }
}

/// The refusal of a request that came in over the connection cap on a connection kept for
/// the operations routes.
pub fn over_connection_cap() -> ApiError {
    ApiError::unavailable_because(
        "El servidor atiende el máximo de conexiones; intente de nuevo en unos segundos.",
        1,
        "connections",
    )
}
