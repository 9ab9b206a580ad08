//! One HTTP client for any node: an in-process [`super::TestApp`] (which derefs to it) or a
//! separate [`super::process::ServerProcess`] (`server.client()`).
//!
//! The `try_` calls return the transport error, for tests whose node may vanish mid-request
//! (SIGKILL drills); the others treat one as a failed test.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::openapi::Checked;
use super::{Clip, PASSWORD};

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// `http://host:port` of the node.
    pub base: String,
}

/// The upload form of the contract around `video`.
pub fn upload_form_of(video: Vec<u8>, title: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(video)
        .file_name("clip.mp4")
        .mime_str("video/mp4")
        .expect("valid mime type");
    reqwest::multipart::Form::new()
        .text("title", title.to_string())
        .part("video_file", part)
}

/// Status and JSON body (a body that is not JSON comes back as a string), or the transport
/// error.
pub(super) async fn answer(
    sent: reqwest::Result<reqwest::Response>,
) -> reqwest::Result<(StatusCode, Value)> {
    let response = sent?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn with_token(
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn try_get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        answer(
            Self::with_token(self.http.get(self.url(path)), token)
                .checked()
                .await,
        )
        .await
    }

    pub async fn try_post(
        &self,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let mut request = Self::with_token(self.http.post(self.url(path)), token);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request.checked().await).await
    }

    pub async fn try_signup(
        &self,
        first: &str,
        last: &str,
        email: &str,
        city: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let body = json!({
            "first_name": first, "last_name": last, "email": email,
            "password1": PASSWORD, "password2": PASSWORD, "city": city, "country": "Colombia"
        });
        self.try_post("/api/auth/signup", Some(&body), None).await
    }

    pub async fn try_login(
        &self,
        email: &str,
        password: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let body = json!({"email": email, "password": password});
        self.try_post("/api/auth/login", Some(&body), None).await
    }

    pub async fn try_upload_form(
        &self,
        token: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let request = self.http.post(self.url("/api/videos/upload"));
        answer(request.bearer_auth(token).multipart(form).checked().await).await
    }

    /// Uploads `video` with the contract's form.
    pub async fn try_upload(
        &self,
        token: &str,
        video: Vec<u8>,
        title: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        self.try_upload_form(token, upload_form_of(video, title))
            .await
    }

    pub async fn try_vote(&self, token: &str, video: u64) -> reqwest::Result<(StatusCode, Value)> {
        let path = format!("/api/public/videos/{video}/vote");
        self.try_post(&path, None, Some(token)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.try_get(path, token).await.expect("the node answers")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.try_post(path, Some(body), None)
            .await
            .expect("the node answers")
    }

    /// POSTs without a body as `token` (votes, administration).
    pub async fn post_as(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.try_post(path, None, Some(token))
            .await
            .expect("the node answers")
    }

    pub async fn signup(
        &self,
        first: &str,
        last: &str,
        email: &str,
        city: &str,
    ) -> (StatusCode, Value) {
        self.try_signup(first, last, email, city)
            .await
            .expect("the node answers")
    }

    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.try_login(email, password)
            .await
            .expect("the node answers")
    }

    /// Signs up and logs in through HTTP; returns (user id, token).
    pub async fn player(&self, first: &str, last: &str, email: &str, city: &str) -> (u64, String) {
        let (status, body) = self.signup(first, last, email, city).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, login) = self.login(email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{login}");
        (
            body["id"].as_u64().unwrap(),
            login["access_token"].as_str().unwrap().to_string(),
        )
    }

    /// Signs a player up (Luis Díaz, Cali) and returns their token.
    pub async fn token_for(&self, email: &str) -> String {
        self.player("Luis", "Díaz", email, "Cali").await.1
    }

    /// Posts `form` to the upload route as `token`'s player.
    pub async fn upload_form(
        &self,
        token: &str,
        form: reqwest::multipart::Form,
    ) -> (StatusCode, Value) {
        self.try_upload_form(token, form)
            .await
            .expect("the node answers")
    }

    pub async fn upload(&self, token: &str, file: &Path, title: &str) -> (StatusCode, Value) {
        let video = std::fs::read(file).unwrap();
        self.try_upload(token, video, title)
            .await
            .expect("the node answers")
    }

    /// Uploads a valid clip; returns the video id.
    pub async fn uploaded_video(&self, token: &str, title: &str) -> u64 {
        let (status, body) = self.upload(token, &super::clip(Clip::Valid), title).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["video_id"].as_u64().unwrap()
    }

    pub async fn vote(&self, token: &str, video: u64) -> (StatusCode, Value) {
        self.try_vote(token, video).await.expect("the node answers")
    }

    /// The value of the unlabelled sample `name` in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .checked()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse()
            .unwrap()
    }

    /// Makes `actor` suffer `fault` (`panic`, or `stall?seconds=N`) through the admin routes.
    pub async fn inject(&self, admin: &str, actor: &str, fault: &str) -> StatusCode {
        let path = format!("/api/admin/faults/actors/{actor}/{fault}");
        self.post_as(&path, admin).await.0
    }
}
