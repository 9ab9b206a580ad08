//! Every answer the tests receive, held to the node's OpenAPI document: the status is one the
//! operation documents, the documented error headers (`Retry-After`, `WWW-Authenticate`) are
//! there, the content type is a documented one, and a JSON body validates against its schema
//! (JSON Schema 2020-12, formats checked). A request to a path or method the document does not
//! have must have been refused (404 or 405) with a `{"detail"}`. Every answer carries the
//! node's security headers, except a gateway error of a load balancer in front of it.
//!
//! Requests go through [`Checked::checked`] (a drop-in for reqwest's `send`) or the
//! [`super::Client`], which uses it for everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The document, from the library the node is built from (a process of the release binary
/// serves the same one).
fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(showcase::http::openapi::document()).unwrap())
}

/// Validators of the document's schemas, compiled once each.
fn validator(pointer: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(pointer) {
        return v.clone();
    }
    // The schema with the document's components beside it, so that its references
    // (`#/components/schemas/...`) resolve within one root.
    let mut root = schema.clone();
    if !root.is_object() {
        root = json!({ "allOf": [root] });
    }
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = document()["components"].clone();
    let compiled = Arc::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}")),
    );
    cache
        .lock()
        .unwrap()
        .insert(pointer.to_string(), compiled.clone());
    compiled
}

/// Whether `path` is an instance of `template` (`/media/{video_id}.mp4`): segment by segment,
/// a `{name}` matches one non-empty piece between the segment's literal prefix and suffix.
fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| match t.split_once('{') {
            None => t == p,
            Some((prefix, rest)) => {
                let suffix = rest.split_once('}').map_or("", |(_, s)| s);
                p.len() > prefix.len() + suffix.len()
                    && p.starts_with(prefix)
                    && p.ends_with(suffix)
            }
        })
}

/// How literal a template is: more literal characters win over a placeholder.
fn literalness(template: &str) -> usize {
    template
        .split('{')
        .map(|s| s.rsplit('}').next().unwrap_or("").len())
        .sum()
}

/// The operation `method` on `path`, if the document has one: (template, operation), the
/// most literal template when several match, as the router picks.
pub fn operation(method: &Method, path: &str) -> Option<(&'static str, &'static Value)> {
    let method = method.as_str().to_ascii_lowercase();
    document()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(template, _)| matches(template, path))
        .filter_map(|(template, item)| Some((template.as_str(), item.get(&method)?)))
        .max_by_key(|(template, _)| literalness(template))
}

/// `value`, or what its `$ref` names.
fn resolved(value: &'static Value) -> &'static Value {
    match value["$ref"].as_str() {
        Some(pointer) => document()
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling reference {pointer}")),
        None => value,
    }
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `Err(what is wrong)` unless `condition`.
macro_rules! ensure {
    ($condition:expr, $($why:tt)+) => {
        if !$condition {
            return Err(format!($($why)+));
        }
    };
}

/// Holds one answer to the document, panicking with what is wrong.
pub fn check(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) {
    if let Err(wrong) = verdict(method, path, status, headers, body) {
        panic!("{wrong}");
    }
}

/// What is wrong with an answer, if anything. `body` is the whole body when the caller read
/// it (JSON answers), `None` otherwise.
fn verdict(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<(), String> {
    let what = format!("{method} {path} answered {status}");
    // Every answer of the node carries its security headers; one without them was written by
    // something in between (a load balancer's own 502 while a node restarts), which the
    // document does not describe.
    if headers
        .get("referrer-policy")
        .is_none_or(|v| v != "no-referrer")
    {
        ensure!(
            matches!(status.as_u16(), 502..=504),
            "{what} without the node's security headers: {headers:?}"
        );
        return Ok(());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence);
    let Some((template, op)) = operation(method, path) else {
        ensure!(
            matches!(status.as_u16(), 404 | 405),
            "{what}, but the document has no such operation"
        );
        if let Some(body) = body {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            ensure!(
                body["detail"].is_string(),
                "{what} without a detail: {body}"
            );
        }
        return Ok(());
    };
    let responses = &op["responses"];
    if status == StatusCode::NOT_FOUND && responses.get("404").is_none() {
        // A node that does not serve the route (a worker serves only the operations routes)
        // answers as for a path that names nothing.
        let body: Value = body.map_or(Value::Null, |b| {
            serde_json::from_slice(b).unwrap_or_default()
        });
        ensure!(body["detail"] == "Recurso no encontrado.", "{what}");
        return Ok(());
    }
    let documented = responses
        .get(status.as_str())
        .or_else(|| responses.get(format!("{}XX", status.as_u16() / 100)))
        .or_else(|| responses.get("default"))
        .ok_or_else(|| {
            let known: Vec<&String> = responses.as_object().unwrap().keys().collect();
            format!("{what}: not a status of {method} {template} in the document ({known:?})")
        })?;
    let answer = resolved(documented);
    if status.is_client_error() || status.is_server_error() {
        for header in answer["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(h, _)| h)
        {
            ensure!(
                headers.contains_key(header.as_str()),
                "{what} without its documented {header}: {headers:?}"
            );
        }
    }
    let Some(content) = answer["content"].as_object() else {
        if *method != Method::HEAD {
            ensure!(
                body.is_none_or(<[u8]>::is_empty),
                "{what} with a body the document does not describe"
            );
        }
        return Ok(());
    };
    let Some(content_type) = content_type else {
        ensure!(
            *method == Method::HEAD || body.is_some_and(<[u8]>::is_empty),
            "{what} without a Content-Type"
        );
        return Ok(());
    };
    let (media_type, described) = content
        .iter()
        .find(|(media_type, _)| essence(media_type) == content_type)
        .ok_or_else(|| {
            let known: Vec<&String> = content.keys().collect();
            format!("{what} as {content_type}, documented as {known:?}")
        })?;
    if *method == Method::HEAD || content_type != "application/json" {
        return Ok(());
    }
    let Some(body) = body else { return Ok(()) };
    let instance: Value = serde_json::from_slice(body)
        .map_err(|e| format!("{what} with a body that is not JSON ({e})"))?;
    let schema = &described["schema"];
    let pointer = format!("{method} {template} {status} {media_type}");
    let validator = validator(&pointer, schema);
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    ensure!(
        errors.is_empty(),
        "{what}: the body does not match the document ({pointer}):\n{}\n{instance}",
        errors.join("\n")
    );
    Ok(())
}

/// reqwest's `send`, with the answer held to the document. A JSON body is read here (and
/// handed back in a response of the same status and headers); any other is left unread.
pub trait Checked {
    fn checked(self) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>>;
}

impl Checked for reqwest::RequestBuilder {
    async fn checked(self) -> reqwest::Result<reqwest::Response> {
        let (client, request) = self.build_split();
        let request = request?;
        let method = request.method().clone();
        let path = request.url().path().to_string();
        let response = client.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| essence(v) == "application/json");
        if !json || method == Method::HEAD {
            check(&method, &path, status, &headers, None);
            return Ok(response);
        }
        let version = response.version();
        let bytes = response.bytes().await?;
        check(&method, &path, status, &headers, Some(&bytes));
        let mut rebuilt = http::Response::new(bytes);
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        *rebuilt.version_mut() = version;
        Ok(reqwest::Response::from(rebuilt))
    }
}

#[test]
fn templates_match_their_instances_only() {
    assert!(matches("/media/{video_id}.mp4", "/media/42.mp4"));
    assert!(!matches("/media/{video_id}.mp4", "/media/42.jpg"));
    assert!(!matches("/media/{video_id}.mp4", "/media/.mp4"));
    assert!(matches("/api/videos/{video_id}", "/api/videos/upload"));
    assert!(!matches("/api/videos/{video_id}", "/api/videos/1/2"));
    assert!(matches("/", "/"));
    let (template, _) = operation(&Method::POST, "/api/videos/upload").unwrap();
    assert_eq!(template, "/api/videos/upload");
    let (template, _) = operation(&Method::GET, "/api/videos/upload").unwrap();
    assert_eq!(template, "/api/videos/{video_id}");
    assert!(operation(&Method::PUT, "/api/videos").is_none());
}

#[test]
fn answers_that_break_the_document_are_caught() {
    let json = || {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert("referrer-policy", "no-referrer".parse().unwrap());
        h
    };
    let fails = |method: Method, path: &str, status: u16, headers: HeaderMap, body: &str| {
        let status = StatusCode::from_u16(status).unwrap();
        verdict(&method, path, status, &headers, Some(body.as_bytes())).is_err()
    };
    // What the node answers passes.
    assert!(!fails(
        Method::GET,
        "/api/health",
        200,
        json(),
        r#"{"status":"ok"}"#
    ));
    assert!(!fails(
        Method::GET,
        "/api/nothing",
        404,
        json(),
        r#"{"detail":"Recurso no encontrado."}"#
    ));
    // A field of the wrong type, a missing field, a status the operation does not have, a
    // refusal without its Retry-After, a body of an undocumented type.
    assert!(fails(
        Method::GET,
        "/api/videos",
        200,
        json(),
        r#"[{"video_id":"7"}]"#
    ));
    assert!(fails(
        Method::POST,
        "/api/auth/login",
        200,
        json(),
        r#"{"token_type":"bearer"}"#
    ));
    assert!(fails(
        Method::GET,
        "/api/videos",
        418,
        json(),
        r#"{"detail":"x"}"#
    ));
    assert!(fails(
        Method::GET,
        "/api/videos",
        503,
        json(),
        r#"{"detail":"x"}"#
    ));
    let bare = || {
        let mut h = HeaderMap::new();
        h.insert("referrer-policy", "no-referrer".parse().unwrap());
        h
    };
    assert!(fails(Method::GET, "/api/videos", 401, bare(), "oops"));
    assert!(fails(Method::PUT, "/api/videos", 200, json(), "{}"));
    // An answer without the node's security headers: only a gateway's error may be one.
    assert!(fails(
        Method::GET,
        "/api/health",
        200,
        HeaderMap::new(),
        r#"{"status":"ok"}"#
    ));
    assert!(!fails(
        Method::GET,
        "/api/health",
        502,
        HeaderMap::new(),
        "<html>502 Bad Gateway</html>"
    ));
}
