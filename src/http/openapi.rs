//! The OpenAPI 3.1 document of every route, generated from the code: each handler carries its
//! operation (`#[utoipa::path]`: path, parameters, request body, one response per status), the
//! types it answers with derive their schemas (`ToSchema`), and the answers every handler
//! shares (the `{"detail"}` errors, `Retry-After`) are components (`components.rs`). Served at
//! `/api/openapi.json`; `/docs` shows it (`web::docs`).
//!
//! The tests hold it to the code from both sides: every endpoint of `endpoint.rs` is in it and
//! every path in it is routed (`tests` below), and every answer the integration tests receive
//! validates against it (`tests/common/openapi.rs`).

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::components::{
    Forbidden, Invalid, NotAdmin, NotFound, RateLimited, TimedOut, TooLarge, Unauthorized,
    Unavailable, VideoNotFound, ADMIN, PLAYER,
};
use super::response::{full, Response};

/// Adds what the derive cannot say: the security schemes, and the refusal every operation
/// can get (the node is at its connection cap, or a backend does not answer).
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            PLAYER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access_token` that `POST /api/auth/login` returns.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's `admin.token`; the administration routes do not exist \
                         while it is empty.",
                    ))
                    .build(),
            ),
        );
        let unavailable = utoipa::openapi::Ref::from_response_name("Unavailable");
        for item in doc.paths.paths.values_mut() {
            // One handler answers GET and HEAD (media): each operation gets an id of its own.
            if let (Some(get), Some(head)) = (&item.get, &mut item.head) {
                if head.operation_id == get.operation_id {
                    head.operation_id = get.operation_id.as_ref().map(|id| format!("{id}Head"));
                }
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("503".to_string())
                    .or_insert_with(|| unavailable.clone().into());
                // An operation that names no scheme is open to anyone.
                operation
                    .security
                    .get_or_insert_with(|| vec![SecurityRequirement::default()]);
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "showcase",
        description = "The ANB Rising Stars Showcase: players upload skill videos, the \
            platform normalises them, the public watches, votes and follows per-city rankings. \
            Errors are always `{\"detail\": \"...\"}`; overload is `503` with `Retry-After`, \
            decided before the request's body is read.",
        license(name = "MIT", identifier = "MIT")
    ),
    paths(
        super::accounts::signup,
        super::accounts::login,
        super::videos::upload,
        super::videos::list,
        super::videos::detail,
        super::videos::delete,
        super::public::videos,
        super::public::vote,
        super::public::rankings,
        super::media::processed,
        super::media::poster,
        super::media::original,
        super::tus::options,
        super::tus::create,
        super::tus::status,
        super::tus::patch,
        super::tus::terminate,
        super::ops::health,
        super::ops::ready,
        super::ops::actors,
        super::ops::metrics,
        super::admin::dead_letters,
        super::admin::redrive_all,
        super::admin::redrive_one,
        super::admin::faults,
        super::admin::set_faults,
        super::admin::actor_fault,
        super::web::index,
        super::web::asset,
        super::web::docs,
        openapi_json,
    ),
    components(responses(
        Invalid,
        Unauthorized,
        NotAdmin,
        Forbidden,
        VideoNotFound,
        NotFound,
        TimedOut,
        TooLarge,
        RateLimited,
        Unavailable
    )),
    servers((url = "/", description = "The node that serves this document.")),
    modifiers(&Shared),
    tags(
        (name = "accounts", description = "Sign-up and log-in."),
        (name = "videos", description = "The signed-in player's videos."),
        (name = "uploads", description = "Resumable uploads: tus 1.0.0 with the `creation`, \
            `creation-with-upload`, `termination`, `expiration` and `checksum` (sha256) \
            extensions."),
        (name = "public", description = "Published videos, votes and rankings."),
        (name = "media", description = "Videos and posters, with HTTP Range requests."),
        (name = "operations", description = "Health, readiness and metrics."),
        (name = "admin", description = "Dead letters and fault injection, behind the admin token."),
        (name = "web", description = "The web application and this reference."),
    )
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as JSON, serialised once.
fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(document()).unwrap_or_default())
}

/// This document: the OpenAPI 3.1 description of every route.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "web",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json",
            body = Object),
    )
)]
pub fn openapi_json() -> Response {
    let mut response = full(http::StatusCode::OK, document_json());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::super::endpoint::{route, Endpoint};
    use super::*;

    /// The operation that documents `endpoint`, as (method, path template).
    fn documented_as(endpoint: &Endpoint) -> Vec<(Method, &'static str)> {
        use Endpoint as E;
        let one = |m: Method, p: &'static str| vec![(m, p)];
        // Exhaustive on purpose: a new endpoint does not compile until it is documented here,
        // and the test below then requires the document to have it.
        match endpoint {
            E::Page => one(Method::GET, "/"),
            E::Asset { .. } => one(Method::GET, "/assets/{name}"),
            E::OpenApi => one(Method::GET, "/api/openapi.json"),
            E::Docs => one(Method::GET, "/docs"),
            E::Signup => one(Method::POST, "/api/auth/signup"),
            E::Login => one(Method::POST, "/api/auth/login"),
            E::Upload => one(Method::POST, "/api/videos/upload"),
            E::MyVideos => one(Method::GET, "/api/videos"),
            E::Video { .. } => one(Method::GET, "/api/videos/{video_id}"),
            E::DeleteVideo { .. } => one(Method::DELETE, "/api/videos/{video_id}"),
            E::PublicVideos => one(Method::GET, "/api/public/videos"),
            E::Vote { .. } => one(Method::POST, "/api/public/videos/{video_id}/vote"),
            E::Rankings => one(Method::GET, "/api/public/rankings"),
            E::Health => one(Method::GET, "/api/health"),
            E::Ready => one(Method::GET, "/api/health/ready"),
            E::Actors => one(Method::GET, "/api/health/actors"),
            E::Metrics => one(Method::GET, "/metrics"),
            E::DeadLetters => one(Method::GET, "/api/admin/dead-letters"),
            E::RedriveAll => one(Method::POST, "/api/admin/dead-letters/redrive"),
            E::Redrive { .. } => one(Method::POST, "/api/admin/dead-letters/{video_id}/redrive"),
            E::Faults => one(Method::GET, "/api/admin/faults"),
            E::SetFaults => one(Method::POST, "/api/admin/faults"),
            E::ActorFault { .. } => one(Method::POST, "/api/admin/faults/actors/{actor}/{kind}"),
            E::UploadsOptions => one(Method::OPTIONS, "/api/uploads"),
            E::CreateUpload => one(Method::POST, "/api/uploads"),
            E::UploadStatus { .. } => one(Method::HEAD, "/api/uploads/{upload_id}"),
            E::UploadPatch { .. } => one(Method::PATCH, "/api/uploads/{upload_id}"),
            E::UploadDelete { .. } => one(Method::DELETE, "/api/uploads/{upload_id}"),
            E::Media { key, head } => {
                let method = if *head { Method::HEAD } else { Method::GET };
                let path = match key.map(|k| k.kind) {
                    Some(crate::media::MediaKind::Poster) => "/media/{video_id}.jpg",
                    Some(crate::media::MediaKind::Original) => "/media/originals/{video_id}.mp4",
                    _ => "/media/{video_id}.mp4",
                };
                one(method, path)
            }
        }
    }

    /// A number per kind of endpoint, 0, 1, 2, ...: a new kind gets the next number (the match
    /// does not compile without it), and the test below then needs a sample of it.
    fn ordinal(endpoint: &Endpoint) -> usize {
        use Endpoint as E;
        match endpoint {
            E::Page => 0,
            E::Asset { .. } => 1,
            E::OpenApi => 2,
            E::Docs => 3,
            E::Signup => 4,
            E::Login => 5,
            E::Upload => 6,
            E::MyVideos => 7,
            E::Video { .. } => 8,
            E::DeleteVideo { .. } => 9,
            E::PublicVideos => 10,
            E::Vote { .. } => 11,
            E::Rankings => 12,
            E::Health => 13,
            E::Ready => 14,
            E::Actors => 15,
            E::Metrics => 16,
            E::DeadLetters => 17,
            E::RedriveAll => 18,
            E::Redrive { .. } => 19,
            E::Faults => 20,
            E::SetFaults => 21,
            E::ActorFault { .. } => 22,
            E::UploadsOptions => 23,
            E::CreateUpload => 24,
            E::UploadStatus { .. } => 25,
            E::UploadPatch { .. } => 26,
            E::UploadDelete { .. } => 27,
            E::Media { .. } => 28,
        }
    }

    /// A concrete path for a template: ids become 42, names something the router accepts.
    fn example(template: &str) -> String {
        template
            .replace("{video_id}", "42")
            .replace("{upload_id}", "0123456789abcdef0123456789abcdef")
            .replace("{name}", "app.0123456789ab.js")
            .replace("{actor}", "streamer")
            .replace("{kind}", "panic")
    }

    fn operations() -> Vec<(Method, String)> {
        let doc = serde_json::to_value(document()).unwrap();
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let method: Method = method.to_uppercase().parse().unwrap();
                found.push((method, path.clone()));
            }
        }
        found
    }

    #[test]
    fn every_documented_operation_is_routed_to_the_endpoint_that_documents_it() {
        let operations = operations();
        assert!(operations.len() >= 30, "{operations:?}");
        for (method, template) in operations {
            let routed = route(&method, &example(&template));
            let endpoint = routed
                .endpoint
                .unwrap_or_else(|e| panic!("{method} {template} is not routed: {e:?}"));
            assert!(
                documented_as(&endpoint).contains(&(method.clone(), template.as_str())),
                "{method} {template} is routed to {endpoint:?}, documented elsewhere"
            );
        }
    }

    #[test]
    fn every_endpoint_is_documented() {
        let documented: Vec<(Method, String)> = operations();
        let endpoints = [
            (Method::GET, "/"),
            (Method::GET, "/assets/app.0123456789ab.js"),
            (Method::GET, "/api/openapi.json"),
            (Method::GET, "/docs"),
            (Method::POST, "/api/auth/signup"),
            (Method::POST, "/api/auth/login"),
            (Method::POST, "/api/videos/upload"),
            (Method::GET, "/api/videos"),
            (Method::GET, "/api/videos/7"),
            (Method::DELETE, "/api/videos/7"),
            (Method::GET, "/api/public/videos"),
            (Method::POST, "/api/public/videos/7/vote"),
            (Method::GET, "/api/public/rankings"),
            (Method::GET, "/api/health"),
            (Method::GET, "/api/health/ready"),
            (Method::GET, "/api/health/actors"),
            (Method::GET, "/metrics"),
            (Method::GET, "/api/admin/dead-letters"),
            (Method::POST, "/api/admin/dead-letters/redrive"),
            (Method::POST, "/api/admin/dead-letters/7/redrive"),
            (Method::GET, "/api/admin/faults"),
            (Method::POST, "/api/admin/faults"),
            (Method::POST, "/api/admin/faults/actors/ingest/stall"),
            (Method::OPTIONS, "/api/uploads"),
            (Method::POST, "/api/uploads"),
            (
                Method::HEAD,
                "/api/uploads/0123456789abcdef0123456789abcdef",
            ),
            (
                Method::PATCH,
                "/api/uploads/0123456789abcdef0123456789abcdef",
            ),
            (
                Method::DELETE,
                "/api/uploads/0123456789abcdef0123456789abcdef",
            ),
            (Method::GET, "/media/7.mp4"),
            (Method::HEAD, "/media/7.mp4"),
            (Method::GET, "/media/7.jpg"),
            (Method::HEAD, "/media/7.jpg"),
            (Method::GET, "/media/originals/7.mp4"),
            (Method::HEAD, "/media/originals/7.mp4"),
        ];
        // The samples reach every kind of endpoint (`ordinal` has an arm for each).
        let reached: std::collections::BTreeSet<usize> = endpoints
            .iter()
            .map(|(method, path)| ordinal(&route(method, path).endpoint.unwrap()))
            .collect();
        let kinds = reached.iter().max().unwrap() + 1;
        assert_eq!(
            reached.len(),
            kinds,
            "an endpoint has no sample request above"
        );
        for (method, path) in endpoints {
            let endpoint = route(&method, path).endpoint.unwrap();
            for (method, template) in documented_as(&endpoint) {
                assert!(
                    documented.contains(&(method.clone(), template.to_string())),
                    "{method} {template} ({endpoint:?}) is not in the document"
                );
            }
        }
        // Every method a routed path allows is one of the document's operations on it.
        for (_, template) in &documented {
            let path = example(template);
            for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
                let method: Method = method.parse().unwrap();
                if route(&method, &path).endpoint.is_ok() {
                    let endpoint = route(&method, &path).endpoint.unwrap();
                    for (m, t) in documented_as(&endpoint) {
                        assert!(
                            documented.contains(&(m.clone(), t.to_string())),
                            "{m} {t} is served but not documented"
                        );
                    }
                }
            }
        }
    }

    /// Every `example` in the document, with the schema it illustrates: (where, example,
    /// schema).
    fn examples(doc: &serde_json::Value) -> Vec<(String, serde_json::Value, serde_json::Value)> {
        let mut found = Vec::new();
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            if let Some(example) = schema.get("example") {
                found.push((format!("schema {name}"), example.clone(), schema.clone()));
            }
        }
        let mut media = Vec::new();
        for (name, response) in doc["components"]["responses"].as_object().unwrap() {
            media.push((format!("response {name}"), response["content"].clone()));
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    media.push((
                        format!("{method} {path} {status}"),
                        response["content"].clone(),
                    ));
                }
                media.push((
                    format!("{method} {path} body"),
                    op["requestBody"]["content"].clone(),
                ));
            }
        }
        for (place, content) in media {
            for (media_type, content) in content.as_object().into_iter().flatten() {
                let schema = content["schema"].clone();
                if let Some(example) = content.get("example") {
                    found.push((
                        format!("{place} {media_type}"),
                        example.clone(),
                        schema.clone(),
                    ));
                }
                for (name, example) in content["examples"].as_object().into_iter().flatten() {
                    found.push((
                        format!("{place} {media_type} {name}"),
                        example["value"].clone(),
                        schema.clone(),
                    ));
                }
            }
        }
        found
    }

    #[test]
    fn every_example_is_valid_for_its_schema() {
        let doc = serde_json::to_value(document()).unwrap();
        let examples = examples(&doc);
        assert!(examples.len() >= 20, "{}", examples.len());
        for (place, example, schema) in examples {
            let mut root = schema;
            root["components"] = doc["components"].clone();
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{place}: {example} {errors:?}");
        }
    }

    #[test]
    fn every_operation_answers_errors_as_detail_and_refusals_with_retry_after() {
        let doc = serde_json::to_value(document()).unwrap();
        let responses = &doc["components"]["responses"];
        for name in ["RateLimited", "Unavailable"] {
            assert!(
                responses[name]["headers"]["Retry-After"].is_object(),
                "{name}"
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let answers = operation["responses"].as_object().unwrap();
                assert!(answers.contains_key("503"), "{method} {path}");
                for (status, answer) in answers {
                    if status.starts_with('4') || status.starts_with('5') {
                        // A named response, or a JSON body whose schema has a `detail`.
                        let named = answer.get("$ref").is_some();
                        let schema = &answer["content"]["application/json"]["schema"];
                        let schema = match schema["$ref"].as_str() {
                            Some(r) => {
                                &doc["components"]["schemas"]
                                    [r.trim_start_matches("#/components/schemas/")]
                            }
                            None => schema,
                        };
                        let detail = schema["properties"]["detail"]["type"] == "string";
                        assert!(
                            named || detail || method == "head",
                            "{method} {path} {status}: {answer}"
                        );
                    }
                }
            }
        }
    }
}
