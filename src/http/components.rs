//! The parts of the OpenAPI document that many handlers share: the refusals every route can
//! answer (`{"detail"}` bodies, `Retry-After`), the security schemes' names, and the schema of
//! raw file bytes. Handlers name them in their `#[utoipa::path]`; `openapi.rs` gathers the
//! handlers into the document.

use utoipa::ToResponse;

pub use super::error::ErrorBody;

/// The bytes of a file (a video, a poster, a chunk of an upload), as they are.
pub struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for FileBytes {}

/// Security scheme of the routes of a signed-in player: the `access_token` of the login.
pub const PLAYER: &str = "player";
/// Security scheme of `/api/admin`: the node's `admin.token`.
pub const ADMIN: &str = "admin";

// The answers many operations share, as components of the document. They describe what
// `ApiError::into_response` writes; nothing builds them.

/// The request is invalid: `detail` names the field or parameter at fault.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "El campo 'title' es obligatorio."}))]
pub struct Invalid(ErrorBody);

/// No token, or a malformed, expired or tampered one, or its player no longer exists.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(
    headers(("WWW-Authenticate" = String, description = "`Bearer`")),
    example = json!({"detail": "No autenticado: falta el token de acceso."})
)]
pub struct Unauthorized(ErrorBody);

/// The admin token is missing or wrong.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(
    headers(("WWW-Authenticate" = String, description = "`Bearer`")),
    example = json!({"detail": "Token de administración inválido."})
)]
pub struct NotAdmin(ErrorBody);

/// The video belongs to another player.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "No tiene permiso sobre este video."}))]
pub struct Forbidden(ErrorBody);

/// No video has this id (or the id is not a number).
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "Video no encontrado."}))]
pub struct VideoNotFound(ErrorBody);

/// Nothing is there.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "Recurso no encontrado."}))]
pub struct NotFound(ErrorBody);

/// The body did not arrive in time (it stalled, or trickled slower than the node's minimum).
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "El cuerpo de la solicitud dejó de llegar."}))]
pub struct TimedOut(ErrorBody);

/// The JSON body is larger than the node accepts (`server.max_json_bytes`).
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(example = json!({"detail": "El cuerpo de la solicitud supera el tamaño máximo."}))]
pub struct TooLarge(ErrorBody);

/// Too many requests from this client: wait `Retry-After` seconds.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again.")),
    example = json!({"detail": "Demasiadas solicitudes desde esta dirección; intente de nuevo en 3 s."})
)]
pub struct RateLimited(ErrorBody);

/// The node cannot take this now (a capacity is exhausted or a backend does not answer): try
/// again after `Retry-After` seconds. Decided before any work is done.
#[derive(ToResponse)]
#[allow(dead_code)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again.")),
    example = json!({"detail": "Capacidad de subida agotada; intente de nuevo en unos segundos."})
)]
pub struct Unavailable(ErrorBody);
