//! Signup and login.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use warp::reply::Response;

use super::body::{
    content_length, is_form_urlencoded, read_limited, BodyStream, FormFields, JsonObject,
};
use super::error::ApiError;
use super::{json, within_budget};
use crate::app::AppState;
use crate::domain::NewUser;
use crate::rate_limit::Limited;

const MIN_PASSWORD_CHARS: usize = 8;
/// argon2 hashes any length, but a bound keeps hashing cost predictable.
const MAX_PASSWORD_CHARS: usize = 256;

/// The whole (small) body of a signup or login request.
async fn small_body(
    state: &AppState,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<bytes::Bytes, ApiError> {
    let server = &state.config.server;
    read_limited(
        body,
        content_length(headers),
        server.max_json_bytes,
        Duration::from_secs(server.body_idle_timeout_s),
    )
    .await
}

async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<JsonObject, ApiError> {
    JsonObject::parse(&small_body(state, headers, body).await?)
}

/// A trimmed text field of 1..=100 characters.
fn short_text(obj: &JsonObject, field: &str) -> Result<String, ApiError> {
    let value = obj.string(field)?.trim().to_string();
    let chars = value.chars().count();
    if chars == 0 || chars > 100 {
        return Err(ApiError::bad_request(format!(
            "El campo '{field}' debe tener entre 1 y 100 caracteres."
        )));
    }
    if !crate::domain::is_displayable(&value) {
        return Err(super::error::undisplayable(field));
    }
    Ok(value)
}

#[derive(Serialize)]
struct SignupResponse {
    id: u64,
    first_name: String,
    last_name: String,
    email: String,
    city: String,
    country: String,
    message: &'static str,
}

pub async fn signup(
    state: Arc<AppState>,
    peer: IpAddr,
    headers: HeaderMap,
    body: BodyStream,
) -> Result<Response, ApiError> {
    within_budget(&state, Limited::Signup, peer, &headers)?;
    let obj = json_body(&state, &headers, body).await?;
    let first_name = short_text(&obj, "first_name")?;
    let last_name = short_text(&obj, "last_name")?;
    let email = obj.string("email")?.trim().to_lowercase();
    if email.chars().count() > 254 || !email_address::EmailAddress::is_valid(&email) {
        return Err(ApiError::bad_request(
            "El campo 'email' no es un email válido.",
        ));
    }
    let password1 = obj.string("password1")?;
    let password2 = obj.string("password2")?;
    let city = short_text(&obj, "city")?;
    let country = short_text(&obj, "country")?;
    let length = password1.chars().count();
    if length < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "El campo 'password1' debe tener al menos {MIN_PASSWORD_CHARS} caracteres."
        )));
    }
    if length > MAX_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "El campo 'password1' admite como máximo {MAX_PASSWORD_CHARS} caracteres."
        )));
    }
    if password1.trim().is_empty() {
        return Err(ApiError::bad_request(
            "El campo 'password1' no puede estar formado solo por espacios.",
        ));
    }
    if passwords::analyzer::is_common_password(&password1) {
        return Err(ApiError::bad_request(
            "El campo 'password1' es una de las contraseñas más comunes; elija otra más difícil de adivinar.",
        ));
    }
    if password1 != password2 {
        return Err(ApiError::bad_request("Las contraseñas no coinciden."));
    }
    // Cheap check first, so a taken email costs no hashing; the store checks again atomically.
    if state.engine.store.user_by_email(&email).await?.is_some() {
        return Err(crate::engine::StoreError::EmailTaken.into());
    }
    let password_hash = state.auth.hash_password(password1).await?;
    let user = state
        .engine
        .store
        .create_user(NewUser {
            first_name,
            last_name,
            email,
            password_hash,
            city,
            country,
        })
        .await?;
    tracing::info!(user_id = user.id, "user signed up");
    Ok(json(
        StatusCode::CREATED,
        &SignupResponse {
            id: user.id,
            first_name: user.first_name,
            last_name: user.last_name,
            email: user.email,
            city: user.city,
            country: user.country,
            message: "Usuario creado exitosamente.",
        },
    ))
}

#[derive(Serialize)]
struct LoginResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

pub async fn login(
    state: Arc<AppState>,
    peer: IpAddr,
    headers: HeaderMap,
    body: BodyStream,
) -> Result<Response, ApiError> {
    within_budget(&state, Limited::Login, peer, &headers)?;
    let (email, password) = if is_form_urlencoded(&headers) {
        // The OAuth2 password flow: `username` (or `email`) and `password` in a form.
        let form = FormFields::parse(&small_body(&state, &headers, body).await?)?;
        let email = match form.optional("username")? {
            Some(username) => username,
            None => form
                .optional("email")?
                .ok_or_else(|| ApiError::bad_request("El campo 'username' es obligatorio."))?,
        };
        (email, form.string("password")?)
    } else {
        let obj = json_body(&state, &headers, body).await?;
        (obj.string("email")?, obj.string("password")?)
    };
    let user = state.engine.store.user_by_email(&email).await?;
    let (id, hash) = match user {
        Some(user) => (Some(user.id), Some(user.password_hash)),
        None => (None, None),
    };
    // Verified even for an unknown email, so the answer takes as long either way.
    let valid = state.auth.verify_password(password, hash).await?;
    match (valid, id) {
        (true, Some(id)) => {
            let token = state.auth.issue(id);
            Ok(json(
                StatusCode::OK,
                &LoginResponse {
                    access_token: token.token,
                    token_type: "bearer",
                    expires_in: token.expires_in,
                },
            ))
        }
        _ => Err(ApiError::Unauthorized("Credenciales inválidas.".into())),
    }
}
