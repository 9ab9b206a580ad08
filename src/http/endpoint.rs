//! The node's URL table: every request becomes an [`Endpoint`] here, once, with its ids
//! parsed. The server loop labels its metrics with the endpoint's name and keeps the
//! operations reserve for the operations endpoints, the router dispatches on it, and the
//! links the node hands out (media URLs) are written by [`media_path`] from the same table.

use http::Method;

use crate::domain::VideoId;
use crate::media::{MediaKey, MediaKind};

/// What a request asks for. An id that is not plain decimal digits names nothing (`None`);
/// handlers answer 404 for it after checking who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The web application's page.
    Page,
    /// One of the page's scripts or styles, by its fingerprinted name.
    Asset {
        name: String,
    },
    /// The OpenAPI document of every route.
    OpenApi,
    /// The interactive reference of the document.
    Docs,
    Signup,
    Login,
    Upload,
    MyVideos,
    Video {
        id: Option<VideoId>,
    },
    DeleteVideo {
        id: Option<VideoId>,
    },
    PublicVideos,
    Vote {
        id: Option<VideoId>,
    },
    Rankings,
    Health,
    Ready,
    Actors,
    Metrics,
    DeadLetters,
    RedriveAll,
    Redrive {
        id: Option<VideoId>,
    },
    Faults,
    SetFaults,
    ActorFault {
        actor: String,
        kind: String,
    },
    /// tus discovery: the protocol's version, extensions and limits.
    UploadsOptions,
    /// tus creation (with an optional first chunk).
    CreateUpload,
    /// A resumable upload: `id` is `None` when it cannot name one (not 32 hex digits).
    UploadStatus {
        id: Option<String>,
    },
    UploadPatch {
        id: Option<String>,
    },
    UploadDelete {
        id: Option<String>,
    },
    /// A media file, GET or HEAD.
    Media {
        key: Option<MediaKey>,
        head: bool,
    },
}

/// A request that matches no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    NotFound,
    /// The path exists, the method does not; `allow` lists the methods it has.
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Where a request goes, and its label for metrics (ids replaced, so labels stay few; written
/// `:id`, not `{id}`: braces inside label values trip many line-based scrapers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub label: &'static str,
    pub endpoint: Result<Endpoint, Unrouted>,
    /// The path is one of the operations routes (whatever the method): served on the
    /// operations listener and from the operations reserve, where anything else is not.
    pub operations: bool,
}

/// A path id: anything but plain decimal digits (no sign, no spaces) names nothing.
pub fn parse_id(raw: &str) -> Option<VideoId> {
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| raw.parse().ok()).flatten()
}

/// The path of a media file.
pub fn media_path(key: MediaKey) -> String {
    let id = key.video_id;
    match key.kind {
        MediaKind::Processed => format!("/media/{id}.mp4"),
        MediaKind::Poster => format!("/media/{id}.jpg"),
        MediaKind::Original => format!("/media/originals/{id}.mp4"),
    }
}

/// Which media a path under `/media/` names.
fn media_key(tail: &[&str]) -> Option<MediaKey> {
    let (kind, file) = match tail {
        ["originals", file] => (MediaKind::Original, file.strip_suffix(".mp4")?),
        [file] => match (file.strip_suffix(".mp4"), file.strip_suffix(".jpg")) {
            (Some(id), _) => (MediaKind::Processed, id),
            (_, Some(id)) => (MediaKind::Poster, id),
            _ => return None,
        },
        _ => return None,
    };
    Some(MediaKey {
        kind,
        video_id: parse_id(file)?,
    })
}

fn media_label(key: &MediaKey) -> &'static str {
    match key.kind {
        MediaKind::Processed => "/media/:id.mp4",
        MediaKind::Poster => "/media/:id.jpg",
        MediaKind::Original => "/media/originals/:id.mp4",
    }
}

/// The endpoint of `method` on `path` (a path without its query; trailing slashes are
/// ignored, an empty segment elsewhere names nothing).
pub fn route(method: &Method, path: &str) -> Route {
    use Endpoint as E;
    let trimmed = path.strip_prefix('/').unwrap_or(path).trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    let not_found = |label| Route {
        label,
        endpoint: Err(Unrouted::NotFound),
        operations: false,
    };
    if !trimmed.is_empty() && segments.iter().any(|s| s.is_empty()) {
        return not_found("other");
    }
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let only = |yes: bool, endpoint: Endpoint| yes.then_some(endpoint);
    let (label, allow, endpoint): (&'static str, &'static str, Option<Endpoint>) = match segments
        .as_slice()
    {
        [""] => ("/", "GET", only(get, E::Page)),
        ["assets", name] => (
            "/assets/:name",
            "GET",
            only(
                get,
                E::Asset {
                    name: name.to_string(),
                },
            ),
        ),
        ["metrics"] => ("/metrics", "GET", only(get, E::Metrics)),
        ["docs"] => ("/docs", "GET", only(get, E::Docs)),
        ["api", "openapi.json"] => ("/api/openapi.json", "GET", only(get, E::OpenApi)),
        ["api", "auth", "signup"] => ("/api/auth/signup", "POST", only(post, E::Signup)),
        ["api", "auth", "login"] => ("/api/auth/login", "POST", only(post, E::Login)),
        ["api", "videos"] => ("/api/videos", "GET", only(get, E::MyVideos)),
        // Read or deleted, "upload" is an id that names no video.
        ["api", "videos", "upload"] => {
            let endpoint = match *method {
                Method::POST => Some(E::Upload),
                Method::GET => Some(E::Video { id: None }),
                Method::DELETE => Some(E::DeleteVideo { id: None }),
                _ => None,
            };
            ("/api/videos/upload", "POST", endpoint)
        }
        ["api", "videos", id] => {
            let id = parse_id(id);
            let endpoint = match *method {
                Method::GET => Some(E::Video { id }),
                Method::DELETE => Some(E::DeleteVideo { id }),
                _ => None,
            };
            ("/api/videos/:id", "GET, DELETE", endpoint)
        }
        ["api", "uploads"] => {
            let endpoint = match *method {
                Method::POST => Some(E::CreateUpload),
                Method::OPTIONS => Some(E::UploadsOptions),
                _ => None,
            };
            ("/api/uploads", "POST, OPTIONS", endpoint)
        }
        ["api", "uploads", id] => {
            let id = crate::resumable::valid_id(id).then(|| id.to_string());
            let endpoint = match *method {
                Method::HEAD => Some(E::UploadStatus { id }),
                Method::PATCH => Some(E::UploadPatch { id }),
                Method::DELETE => Some(E::UploadDelete { id }),
                _ => None,
            };
            ("/api/uploads/:id", "HEAD, PATCH, DELETE", endpoint)
        }
        ["api", "public", "videos"] => ("/api/public/videos", "GET", only(get, E::PublicVideos)),
        ["api", "public", "videos", id, "vote"] => (
            "/api/public/videos/:id/vote",
            "POST",
            only(post, E::Vote { id: parse_id(id) }),
        ),
        ["api", "public", "rankings"] => ("/api/public/rankings", "GET", only(get, E::Rankings)),
        ["api", "health"] => ("/api/health", "GET", only(get, E::Health)),
        ["api", "health", "ready"] => ("/api/health/ready", "GET", only(get, E::Ready)),
        ["api", "health", "actors"] => ("/api/health/actors", "GET", only(get, E::Actors)),
        // Administration is one label: its routes are few and rarely called.
        ["api", "admin", "dead-letters"] => ("/api/admin", "GET", only(get, E::DeadLetters)),
        ["api", "admin", "dead-letters", "redrive"] => {
            ("/api/admin", "POST", only(post, E::RedriveAll))
        }
        ["api", "admin", "dead-letters", id, "redrive"] => (
            "/api/admin",
            "POST",
            only(post, E::Redrive { id: parse_id(id) }),
        ),
        ["api", "admin", "faults"] => {
            let endpoint = match *method {
                Method::GET => Some(E::Faults),
                Method::POST => Some(E::SetFaults),
                _ => None,
            };
            ("/api/admin", "GET, POST", endpoint)
        }
        ["api", "admin", "faults", "actors", actor, kind] => (
            "/api/admin",
            "POST",
            only(
                post,
                E::ActorFault {
                    actor: actor.to_string(),
                    kind: kind.to_string(),
                },
            ),
        ),
        ["media", tail @ ..] => {
            let key = media_key(tail);
            let head = *method == Method::HEAD;
            let label = match tail {
                ["originals", _] => "/media/originals/:id.mp4",
                _ => key.as_ref().map_or("other", media_label),
            };
            (
                label,
                "GET, HEAD",
                only(get || head, E::Media { key, head }),
            )
        }
        ["api", "admin", ..] => return not_found("/api/admin"),
        _ => return not_found("other"),
    };
    Route {
        label,
        operations: matches!(
            label,
            "/api/health" | "/api/health/ready" | "/api/health/actors" | "/metrics"
        ),
        endpoint: endpoint.ok_or(Unrouted::MethodNotAllowed { allow }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(method: Method, path: &str) -> Result<Endpoint, Unrouted> {
        route(&method, path).endpoint
    }

    #[test]
    fn ids_are_plain_digits_or_nothing() {
        assert_eq!(
            endpoint(Method::GET, "/api/videos/42"),
            Ok(Endpoint::Video { id: Some(42) })
        );
        for bad in ["+4", "4x", "%34", "99999999999999999999999"] {
            assert_eq!(
                endpoint(Method::DELETE, &format!("/api/videos/{bad}")),
                Ok(Endpoint::DeleteVideo { id: None }),
                "{bad}"
            );
        }
        assert_eq!(
            endpoint(Method::GET, "/api/videos/upload"),
            Ok(Endpoint::Video { id: None })
        );
        assert_eq!(
            endpoint(Method::PUT, "/api/videos/upload"),
            Err(Unrouted::MethodNotAllowed { allow: "POST" })
        );
    }

    #[test]
    fn routes_are_labelled_without_ids() {
        let label = |m: Method, p: &str| route(&m, p).label;
        assert_eq!(label(Method::GET, "/api/videos/42"), "/api/videos/:id");
        assert_eq!(
            label(Method::POST, "/api/public/videos/7/vote"),
            "/api/public/videos/:id/vote"
        );
        assert_eq!(label(Method::GET, "/media/3.mp4"), "/media/:id.mp4");
        assert_eq!(label(Method::HEAD, "/media/3.jpg"), "/media/:id.jpg");
        assert_eq!(
            label(Method::GET, "/media/originals/3.mp4"),
            "/media/originals/:id.mp4"
        );
        assert_eq!(label(Method::GET, "/nothing"), "other");
        assert_eq!(label(Method::GET, "/media/../etc"), "other");
        assert_eq!(
            label(Method::GET, "/api/videos/upload"),
            "/api/videos/upload"
        );
        assert_eq!(
            label(Method::POST, "/api/admin/dead-letters/3/redrive"),
            "/api/admin"
        );
        assert_eq!(label(Method::GET, "/api/admin/nothing"), "/api/admin");
    }

    #[test]
    fn a_known_path_with_another_method_says_which_it_has() {
        assert_eq!(
            endpoint(Method::PUT, "/api/videos"),
            Err(Unrouted::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(
            endpoint(Method::POST, "/media/1.mp4"),
            Err(Unrouted::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(
            endpoint(Method::GET, "/api/nothing"),
            Err(Unrouted::NotFound)
        );
    }

    #[test]
    fn one_trailing_slash_is_the_same_route() {
        assert_eq!(
            endpoint(Method::GET, "/api/public/rankings/"),
            Ok(Endpoint::Rankings)
        );
        assert_eq!(endpoint(Method::GET, "/api/health"), Ok(Endpoint::Health));
    }

    #[test]
    fn media_paths_round_trip_through_the_table() {
        for kind in [MediaKind::Processed, MediaKind::Poster, MediaKind::Original] {
            let key = MediaKey { kind, video_id: 42 };
            assert_eq!(
                endpoint(Method::GET, &media_path(key)),
                Ok(Endpoint::Media {
                    key: Some(key),
                    head: false
                })
            );
        }
        for bad in [
            "42",
            "x.mp4",
            "+4.mp4",
            "42.mp4.mp4",
            "originals/42.jpg",
            "a/42.mp4",
            ".mp4",
            "originals/",
        ] {
            assert_eq!(
                endpoint(Method::GET, &format!("/media/{bad}")),
                Ok(Endpoint::Media {
                    key: None,
                    head: false
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_health_readiness_actors_and_metrics_are_operations() {
        let ops = |m: Method, p: &str| route(&m, p).operations;
        for path in [
            "/api/health",
            "/api/health/ready",
            "/api/health/actors",
            "/metrics",
        ] {
            assert!(ops(Method::GET, path) && ops(Method::POST, path), "{path}");
        }
        for path in ["/api/videos", "/", "/media/1.mp4", "/api/admin/faults"] {
            assert!(
                !ops(Method::GET, path) && !ops(Method::POST, path),
                "{path}"
            );
        }
    }
}
