//! Signup, login and the access token, through HTTP against a real node.

use crate::common;

use crate::common::Checked;
use common::{detail_of, TestApp, PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

fn signup_body() -> serde_json::Value {
    json!({
        "first_name": "Camila", "last_name": "Rojas", "email": "camila@example.com",
        "password1": "canasta-2026", "password2": "canasta-2026", "city": "Medellín", "country": "Colombia"
    })
}

#[tokio::test]
async fn signup_returns_the_user_and_the_message() {
    let t = TestApp::start();
    let (status, body) = t.post_json("/api/auth/signup", &signup_body()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["id"].as_u64().is_some());
    assert_eq!(body["first_name"], "Camila");
    assert_eq!(body["last_name"], "Rojas");
    assert_eq!(body["email"], "camila@example.com");
    assert_eq!(body["city"], "Medellín");
    assert_eq!(body["country"], "Colombia");
    assert_eq!(body["message"], "Usuario creado exitosamente.");
    assert!(body.get("password1").is_none() && body.get("password_hash").is_none());
}

#[tokio::test]
async fn duplicate_email_is_refused_whatever_its_case() {
    let t = TestApp::start();
    assert_eq!(
        t.post_json("/api/auth/signup", &signup_body()).await.0,
        StatusCode::CREATED
    );
    let mut again = signup_body();
    again["email"] = json!("CAMILA@Example.com");
    let (status, body) = t.post_json("/api/auth/signup", &again).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(detail_of(&body), "El email ya está registrado.");
}

#[tokio::test]
async fn passwords_that_differ_are_refused() {
    let t = TestApp::start();
    let mut body = signup_body();
    body["password2"] = json!("otra-clave-123");
    let (status, body) = t.post_json("/api/auth/signup", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(detail_of(&body), "Las contraseñas no coinciden.");
}

#[tokio::test]
async fn invalid_fields_are_named_in_the_error() {
    let t = TestApp::start();
    let cases = [
        ("email", json!("not-an-email")),
        ("password1", json!("short")),
        ("first_name", json!("")),
        ("last_name", json!("x".repeat(101))),
        ("city", json!("   ")),
        ("country", json!(7)),
    ];
    for (field, value) in cases {
        let mut body = signup_body();
        body[field] = value.clone();
        if field == "password1" {
            body["password2"] = value;
        }
        let (status, response) = t.post_json("/api/auth/signup", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {response}");
        assert!(detail_of(&response).contains(field), "{field}: {response}");
    }
    for missing in ["first_name", "email", "password2", "country"] {
        let mut body = signup_body();
        body.as_object_mut().unwrap().remove(missing);
        let (status, response) = t.post_json("/api/auth/signup", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{missing}");
        assert!(
            detail_of(&response).contains(missing),
            "{missing}: {response}"
        );
    }
    // Nothing was created by the refused requests.
    assert_eq!(
        t.post_json("/api/auth/signup", &signup_body()).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_a_4xx_with_detail() {
    let t = TestApp::start();
    let response = t
        .http
        .post(t.url("/api/auth/signup"))
        .body("{not json")
        .checked()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("JSON"));
    let huge = json!({"first_name": "x".repeat(64 * 1024)});
    let (status, body) = t.post_json("/api/auth/signup", &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    detail_of(&body);
}

#[tokio::test]
async fn login_issues_a_bearer_token_that_opens_private_routes() {
    let t = TestApp::start();
    t.signup("Camila", "Rojas", "camila@example.com", "Cali")
        .await;
    let (status, body) = t.login("Camila@Example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let (status, videos) = t.get("/api/videos", Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(videos, json!([]));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_both_invalid_credentials() {
    let t = TestApp::start();
    t.signup("Camila", "Rojas", "camila@example.com", "Cali")
        .await;
    for (email, password) in [
        ("camila@example.com", "wrong-password"),
        ("nadie@example.com", PASSWORD),
    ] {
        let (status, body) = t.login(email, password).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(detail_of(&body), "Credenciales inválidas.");
    }
}

#[tokio::test]
async fn missing_malformed_tampered_and_expired_tokens_are_401() {
    let t = TestApp::start();
    let (id, token) = t
        .player("Camila", "Rojas", "camila@example.com", "Cali")
        .await;
    let mut tampered = token.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let expired = t.app.node.auth().issue_expiring_at(id, 1_000_000);
    let foreign =
        showcase::auth::Auth::new(b"another-secret", std::time::Duration::from_secs(60), 1)
            .issue(id)
            .token;

    let no_token = t.http.get(t.url("/api/videos")).checked().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    let headers = [
        format!("Bearer {tampered}"),
        format!("Bearer {expired}"),
        format!("Bearer {foreign}"),
        "Bearer".to_string(),
        "Bearer not.a.jwt".to_string(),
        format!("Basic {token}"),
        token.clone(),
    ];
    for header in headers {
        for (method, path) in [
            ("GET", "/api/videos"),
            ("GET", "/api/videos/1"),
            ("DELETE", "/api/videos/1"),
            ("POST", "/api/public/videos/1/vote"),
            ("POST", "/api/videos/upload"),
        ] {
            let request = t
                .http
                .request(method.parse().unwrap(), t.url(path))
                .header("authorization", &header);
            let (status, body) = common::read(request.checked().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {header:.30}"
            );
            detail_of(&body);
        }
    }
    assert_eq!(t.get("/api/videos", Some(&token)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn blank_and_common_passwords_are_refused_and_the_examples_of_clients_are_not() {
    let t = TestApp::start();
    for (password, expected) in [
        ("        ", "espacios"),
        ("\t \t \t \t ", "espacios"),
        ("password123", "comunes"),
        ("12345678", "comunes"),
        ("qwerty123", "comunes"),
    ] {
        let mut body = signup_body();
        body["password1"] = json!(password);
        body["password2"] = json!(password);
        let (status, answer) = t.post_json("/api/auth/signup", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{password:?}: {answer}");
        let detail = detail_of(&answer);
        assert!(
            detail.contains("password1") && detail.contains(expected),
            "{detail}"
        );
    }
    // The passwords of the platform's own client examples stay valid.
    for (i, password) in ["testpass123", "StrongPass123"].into_iter().enumerate() {
        let mut body = signup_body();
        body["email"] = json!(format!("cliente{i}@example.com"));
        body["password1"] = json!(password);
        body["password2"] = json!(password);
        let (status, answer) = t.post_json("/api/auth/signup", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{password}: {answer}");
    }
}

/// The middle of a rotation of the JWT secret: the node signs with its new secret and still
/// takes the tokens and the links to originals that the previous one signed.
#[tokio::test]
async fn tokens_and_links_of_the_accepted_secret_stay_valid_during_a_rotation() {
    let old = "o".repeat(40);
    let t = TestApp::start_with(|c| {
        c.auth.jwt_secret = "n".repeat(40);
        c.auth.jwt_secret_accepted = old.clone();
    });
    // The node's current secret (a platform on PostgreSQL has the one its nodes share).
    let new = t.app.node.config().auth.jwt_secret.clone();
    assert_ne!(new, old);
    assert_eq!(t.app.node.config().auth.jwt_secret_accepted, old);
    let (id, token) = t.quick_player("Rosa", "Mena", "Pasto").await;
    let video = t.uploaded_video(&token, "Tiro libre").await;
    let ttl = std::time::Duration::from_secs(60);
    let signed_with = |secret: &str| {
        showcase::auth::Auth::new(secret.as_bytes(), ttl, 1)
            .issue(id)
            .token
    };
    for (secret, accepted) in [(&old, true), (&new, true), (&"x".repeat(40), false)] {
        let (status, body) = t.get("/api/videos", Some(&signed_with(secret))).await;
        let expected = if accepted {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "{body}");
    }
    // The node's own tokens are signed with the new secret only.
    assert!(showcase::auth::Auth::new(new.as_bytes(), ttl, 1)
        .verify_header(Some(&format!("Bearer {token}")))
        .is_ok());
    assert!(showcase::auth::Auth::new(old.as_bytes(), ttl, 1)
        .verify_header(Some(&format!("Bearer {token}")))
        .is_err());
    // A link to the original that a node on the old secret handed out.
    let path = format!("/media/originals/{video}.mp4");
    let expires = showcase::domain::now_ts() as u64 + 600;
    for (secret, expected) in [
        (&old, StatusCode::OK),
        (&"x".repeat(40), StatusCode::FORBIDDEN),
    ] {
        let link = showcase::signed_url::UrlSigner::new(secret.as_bytes()).sign(&path, expires);
        let response = t.http.get(t.url(&link)).checked().await.unwrap();
        assert_eq!(response.status(), expected, "{link}");
    }
}
