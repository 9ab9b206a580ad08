//! What the platform's clients in the wild send, beyond the course contract: FastAPI's OAuth2
//! password form on login, the file in a field named `file`, and `id` on public items. Each is
//! a compatible addition (the contract's last section); the contract's own forms keep working.

use crate::common;

use crate::common::Checked;
use common::{clip, detail_of, Clip, TestApp, PASSWORD};
use reqwest::StatusCode;

async fn login_form(t: &TestApp, fields: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
    common::read(
        t.http
            .post(t.url("/api/auth/login"))
            .form(fields)
            .checked()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn login_takes_the_oauth2_password_form_with_the_same_answers() {
    let t = TestApp::start();
    let (id, _) = t.player("Ana", "Ruiz", "ana@example.com", "Bogotá").await;
    for user_field in ["username", "email"] {
        let (status, body) = login_form(
            &t,
            &[(user_field, "ana@example.com"), ("password", PASSWORD)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{user_field}: {body}");
        assert_eq!(body["token_type"], "bearer");
        assert!(body["expires_in"].as_u64().unwrap() > 0);
        // The token is the player's.
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(
            t.app
                .node
                .auth()
                .verify_header(Some(&format!("Bearer {token}")))
                .unwrap(),
            id
        );
    }
    // Wrong password, unknown user: the JSON form's 401.
    for (user, password) in [
        ("ana@example.com", "otra-cosa-1"),
        ("nadie@example.com", PASSWORD),
    ] {
        let (status, body) = login_form(&t, &[("username", user), ("password", password)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(detail_of(&body), "Credenciales inválidas.");
    }
    // Missing or repeated fields name the field.
    let (status, body) = login_form(&t, &[("password", PASSWORD)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("username"), "{body}");
    let (status, body) = login_form(&t, &[("username", "ana@example.com")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("password"), "{body}");
    let (status, body) = login_form(
        &t,
        &[
            ("username", "ana@example.com"),
            ("password", "x"),
            ("password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("password"), "{body}");
    // The JSON form is unchanged.
    let (status, _) = t.login("ana@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_upload_takes_its_file_in_a_field_named_file() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let part = |name: &'static str| {
        reqwest::multipart::Part::bytes(std::fs::read(clip(Clip::Valid)).unwrap())
            .file_name("clip.mp4")
            .mime_str("video/mp4")
            .map(|p| (name, p))
            .unwrap()
    };
    let (name, file) = part("file");
    let form = reqwest::multipart::Form::new()
        .text("title", "Campo file")
        .part(name, file);
    let (status, body) = t.upload_form(&token, form).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["video_id"].as_u64().is_some());
    // Both names at once is one file too many.
    let (a, first) = part("file");
    let (b, second) = part("video_file");
    let form = reqwest::multipart::Form::new()
        .text("title", "Dos archivos")
        .part(a, first)
        .part(b, second);
    let (status, body) = t.upload_form(&token, form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(t.files_under("tmp").is_empty());
}

#[tokio::test]
async fn public_items_carry_id_as_well_as_video_id() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let id = t.uploaded_video(&token, "Publicado").await;
    t.publish(id).await;
    let (status, body) = t.get("/api/public/videos", None).await;
    assert_eq!(status, StatusCode::OK);
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id);
    assert_eq!(items[0]["video_id"], id);
}
