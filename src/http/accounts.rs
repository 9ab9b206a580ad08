//! Signup and login.

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::{is_form_urlencoded, FormFields, JsonObject};
use super::components::{ErrorBody, Invalid, RateLimited, TimedOut, TooLarge};
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

/// A new player's account.
#[derive(ToSchema)]
#[schema(example = json!({
    "first_name": "Camila", "last_name": "Ríos", "email": "camila@example.com",
    "password1": "canasta-de-tres", "password2": "canasta-de-tres",
    "city": "Bogotá", "country": "Colombia"
}))]
struct SignupRequest {
    #[schema(min_length = 1, max_length = 100)]
    first_name: String,
    #[schema(min_length = 1, max_length = 100)]
    last_name: String,
    /// Unique, compared without case.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// At least 8 characters, and not one of the most common passwords.
    #[schema(min_length = 8, max_length = 256)]
    password1: String,
    /// The same password again.
    password2: String,
    #[schema(min_length = 1, max_length = 100)]
    city: String,
    #[schema(min_length = 1, max_length = 100)]
    country: String,
}

impl SignupRequest {
    /// Reads and checks every field, in the order a form shows them.
    fn read(obj: &JsonObject) -> Result<Self, ApiError> {
        let first_name = short_text(obj, "first_name")?;
        let last_name = short_text(obj, "last_name")?;
        let email = obj.string("email")?.trim().to_lowercase();
        if email.chars().count() > 254 || !email_address::EmailAddress::is_valid(&email) {
            return Err(ApiError::bad_request(
                "El campo 'email' no es un email válido.",
            ));
        }
        let password1 = obj.string("password1")?;
        let password2 = obj.string("password2")?;
        let city = short_text(obj, "city")?;
        let country = short_text(obj, "country")?;
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
        Ok(Self {
            first_name,
            last_name,
            email,
            password1,
            password2,
            city,
            country,
        })
    }
}

/// The account as created.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": 7, "first_name": "Camila", "last_name": "Ríos", "email": "camila@example.com",
    "city": "Bogotá", "country": "Colombia", "message": "Usuario creado exitosamente."
}))]
struct SignupResponse {
    id: u64,
    first_name: String,
    last_name: String,
    email: String,
    city: String,
    country: String,
    #[schema(example = "Usuario creado exitosamente.")]
    message: &'static str,
}

/// Creates a player's account.
#[utoipa::path(
    post,
    path = "/api/auth/signup",
    operation_id = "signUp",
    tag = "accounts",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "The account was created.", body = SignupResponse),
        (status = 400, description = "A field is invalid (`detail` names it), the passwords \
            differ, or the email is taken.", body = ErrorBody, examples(
            ("passwords" = (value = json!({"detail": "Las contraseñas no coinciden."}))),
            ("email taken" = (value = json!({"detail": "El email ya está registrado."}))),
            ("field" = (value = json!({"detail": "El campo 'email' no es un email válido."}))),
        )),
        (status = 408, response = TimedOut),
        (status = 413, response = TooLarge),
        (status = 429, response = RateLimited),
    )
)]
pub async fn signup(node: &Node, request: Request) -> Result<Response, ApiError> {
    node.within_budget(Limited::Signup, request.peer, &request.headers)?;
    let obj = json_body(node, request).await?;
    let form = SignupRequest::read(&obj)?;
    drop(form.password2);
    let user = node
        .sign_up(SignUp {
            first_name: form.first_name,
            last_name: form.last_name,
            email: form.email,
            password: form.password1,
            city: form.city,
            country: form.country,
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

/// A player's credentials.
#[derive(ToSchema)]
#[schema(example = json!({"email": "camila@example.com", "password": "canasta-de-tres"}))]
struct LoginRequest {
    #[schema(format = Email)]
    email: String,
    password: String,
}

/// The same credentials as an OAuth2 password-flow form (`username` is the email).
#[derive(ToSchema)]
struct LoginForm {
    /// The email (`email` is accepted too).
    username: String,
    password: String,
}

impl From<LoginForm> for LoginRequest {
    fn from(form: LoginForm) -> Self {
        Self {
            email: form.username,
            password: form.password,
        }
    }
}

/// A session.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl",
    "token_type": "bearer",
    "expires_in": 3600
}))]
struct LoginResponse {
    /// The bearer token of the player's requests.
    access_token: String,
    #[schema(example = "bearer")]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

/// Logs a player in: a bearer token for the routes that need one.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    operation_id = "logIn",
    tag = "accounts",
    request_body(content(
        (LoginRequest = "application/json"),
        (LoginForm = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "The player is logged in.", body = LoginResponse),
        (status = 400, response = Invalid),
        (status = 401, description = "The email or the password is wrong.", body = ErrorBody,
            headers(("WWW-Authenticate" = String)),
            example = json!({"detail": "Credenciales inválidas."})),
        (status = 408, response = TimedOut),
        (status = 413, response = TooLarge),
        (status = 429, response = RateLimited),
    )
)]
pub async fn login(node: &Node, request: Request) -> Result<Response, ApiError> {
    node.within_budget(Limited::Login, request.peer, &request.headers)?;
    let credentials = if is_form_urlencoded(&request.headers) {
        // The OAuth2 password flow: `username` (or `email`) and `password` in a form.
        let form = FormFields::parse(&small_body(node, request).await?)?;
        let username = match form.optional("username")? {
            Some(username) => username,
            None => form
                .optional("email")?
                .ok_or_else(|| ApiError::bad_request("El campo 'username' es obligatorio."))?,
        };
        LoginRequest::from(LoginForm {
            username,
            password: form.string("password")?,
        })
    } else {
        let obj = json_body(node, request).await?;
        LoginRequest {
            email: obj.string("email")?,
            password: obj.string("password")?,
        }
    };
    let token = node
        .log_in(&credentials.email, credentials.password)
        .await?;
    Ok(json(
        StatusCode::OK,
        &LoginResponse {
            access_token: token.token,
            token_type: "bearer",
            expires_in: token.expires_in,
        },
    ))
}
