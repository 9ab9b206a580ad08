//! Signup and login.

use http::StatusCode;
use serde::Serialize;

use super::body::{is_form_urlencoded, FormFields, JsonObject};
use super::error::ApiError;
use super::request::{small_body, Request};
use super::response::{json, Response};
use crate::node::{Node, SignUp};
use crate::rate_limit::Limited;

const MIN_PASSWORD_CHARS: usize = 8;
/// argon2 hashes any length, but a bound keeps hashing cost predictable.
const MAX_PASSWORD_CHARS: usize = 256;

async fn json_body(node: &Node, request: Request) -> Result<JsonObject, ApiError> {
    Ok(JsonObject::parse(&small_body(node, request).await?)?)
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

pub async fn signup(node: &Node, request: Request) -> Result<Response, ApiError> {
    node.within_budget(Limited::Signup, request.peer, &request.headers)?;
    let obj = json_body(node, request).await?;
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
    let user = node
        .sign_up(SignUp {
            first_name,
            last_name,
            email,
            password: password1,
            city,
            country,
        })
        .await?;
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

pub async fn login(node: &Node, request: Request) -> Result<Response, ApiError> {
    node.within_budget(Limited::Login, request.peer, &request.headers)?;
    let (email, password) = if is_form_urlencoded(&request.headers) {
        // The OAuth2 password flow: `username` (or `email`) and `password` in a form.
        let form = FormFields::parse(&small_body(node, request).await?)?;
        let email = match form.optional("username")? {
            Some(username) => username,
            None => form
                .optional("email")?
                .ok_or_else(|| ApiError::bad_request("El campo 'username' es obligatorio."))?,
        };
        (email, form.string("password")?)
    } else {
        let obj = json_body(node, request).await?;
        (obj.string("email")?, obj.string("password")?)
    };
    let token = node.log_in(&email, password).await?;
    Ok(json(
        StatusCode::OK,
        &LoginResponse {
            access_token: token.token,
            token_type: "bearer",
            expires_in: token.expires_in,
        },
    ))
}
