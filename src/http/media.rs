//! The media routes: published videos and posters (public), originals (owner only, through a
//! signed expiring URL). GET and HEAD, with RFC 9110 ranges and conditional requests; the
//! rules are in [`super::range`], the bytes come from the Streamer's mapping of the file.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::{ApiError, VIDEO_NOT_FOUND};
use super::range::{
    evaluate, http_date, parse_range, ByteRange, Conditions, Decision, RangeRequest, Validators,
};
use crate::actors::streamer::{
    MediaBody, MediaKey, MediaKind, OpenError, OpenMedia, Piece, StreamGrant,
};
use crate::app::AppState;
use crate::signed_url::SignatureError;

/// Which media a path under `/media/` names.
pub fn media_key(tail: &str) -> Option<MediaKey> {
    let id = |digits: &str| -> Option<u64> {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    if let Some(rest) = tail.strip_prefix("originals/") {
        let video_id = id(rest.strip_suffix(".mp4")?)?;
        return Some(MediaKey {
            kind: MediaKind::Original,
            video_id,
        });
    }
    if let Some(digits) = tail.strip_suffix(".mp4") {
        return Some(MediaKey {
            kind: MediaKind::Processed,
            video_id: id(digits)?,
        });
    }
    if let Some(digits) = tail.strip_suffix(".jpg") {
        return Some(MediaKey {
            kind: MediaKind::Poster,
            video_id: id(digits)?,
        });
    }
    None
}

fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the signature of an original's URL.
fn check_signature(
    state: &AppState,
    path: &str,
    query: &[(String, String)],
) -> Result<(), ApiError> {
    let forbidden = || ApiError::Forbidden("El enlace no es válido o ha expirado.".into());
    let now = crate::domain::now_ts() as u64;
    state
        .signer
        .verify_query(path, query, now)
        .map_err(|e| match e {
            SignatureError::Expired => ApiError::Forbidden("El enlace ha expirado.".into()),
            SignatureError::Invalid => forbidden(),
        })
}

pub async fn serve(
    state: Arc<AppState>,
    method: Method,
    tail: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(VIDEO_NOT_FOUND.into());
    let key = media_key(&tail).ok_or_else(not_found)?;
    if key.kind == MediaKind::Original {
        check_signature(&state, &format!("/media/{tail}"), &query)?;
    }
    let grant = state
        .streamer
        .call(|reply| OpenMedia { key, reply })
        .await?
        .map_err(|e| match e {
            OpenError::NotFound => not_found(),
            OpenError::Busy { retry_after_s } => ApiError::unavailable(
                "Demasiadas reproducciones simultáneas; intente de nuevo.",
                retry_after_s,
            ),
            OpenError::Failed(cause) => ApiError::Internal(cause),
        })?;
    respond(&state, method == Method::HEAD, &headers, grant)
}

fn respond(
    state: &AppState,
    head: bool,
    headers: &HeaderMap,
    grant: StreamGrant,
) -> Result<Response, ApiError> {
    let meta = grant.meta.clone();
    let mut out = HeaderMap::new();
    let value =
        |text: String| HeaderValue::from_str(&text).map_err(|e| ApiError::Internal(e.to_string()));
    out.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(ETAG, value(format!("\"{}\"", meta.etag))?);
    out.insert(LAST_MODIFIED, value(http_date(meta.last_modified))?);
    out.insert(CACHE_CONTROL, HeaderValue::from_static(meta.cache_control));

    let conditions = Conditions {
        if_none_match: header(headers, IF_NONE_MATCH),
        if_modified_since: header(headers, IF_MODIFIED_SINCE),
        if_range: header(headers, IF_RANGE),
    };
    let validators = Validators {
        etag: &meta.etag,
        last_modified: meta.last_modified,
    };
    let decision = evaluate(&conditions, &validators);
    if decision == Decision::NotModified {
        return Ok(with(StatusCode::NOT_MODIFIED, out, None));
    }
    let request = match decision {
        Decision::Ranges => parse_range(header(headers, RANGE), meta.len),
        _ => RangeRequest::Full,
    };
    let (status, pieces, length) = match request {
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::RangeNotSatisfiable { len: meta.len });
        }
        RangeRequest::Full => {
            out.insert(CONTENT_TYPE, HeaderValue::from_static(meta.content_type));
            let pieces = if meta.len > 0 {
                vec![Piece::Range {
                    first: 0,
                    last: meta.len - 1,
                }]
            } else {
                vec![]
            };
            (StatusCode::OK, pieces, meta.len)
        }
        RangeRequest::Partial(ranges) if ranges.len() == 1 => {
            let ByteRange { first, last } = ranges[0];
            out.insert(CONTENT_TYPE, HeaderValue::from_static(meta.content_type));
            out.insert(
                CONTENT_RANGE,
                value(format!("bytes {first}-{last}/{}", meta.len))?,
            );
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Piece::Range { first, last }],
                last - first + 1,
            )
        }
        RangeRequest::Partial(ranges) => {
            let boundary = uuid::Uuid::new_v4().simple().to_string();
            out.insert(
                CONTENT_TYPE,
                value(format!("multipart/byteranges; boundary={boundary}"))?,
            );
            let (pieces, length) =
                multipart_pieces(&ranges, meta.len, meta.content_type, &boundary);
            (StatusCode::PARTIAL_CONTENT, pieces, length)
        }
    };
    out.insert(CONTENT_LENGTH, HeaderValue::from(length));
    if head || pieces.is_empty() {
        // Same headers as GET; the permit is released with the grant.
        return Ok(with(status, out, None));
    }
    let body = MediaBody::new(grant, pieces, state.stream_counters.clone());
    Ok(with(status, out, Some(body)))
}

/// The parts of a `multipart/byteranges` body and its exact length.
pub fn multipart_pieces(
    ranges: &[ByteRange],
    len: u64,
    content_type: &str,
    boundary: &str,
) -> (Vec<Piece>, u64) {
    let mut pieces = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut length = 0u64;
    for (i, range) in ranges.iter().enumerate() {
        let head = format!(
            "{}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" },
            range.first,
            range.last
        );
        length += head.len() as u64 + range.len();
        pieces.push(Piece::Text(Bytes::from(head)));
        pieces.push(Piece::Range {
            first: range.first,
            last: range.last,
        });
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    length += tail.len() as u64;
    pieces.push(Piece::Text(Bytes::from(tail)));
    (pieces, length)
}

fn with(status: StatusCode, headers: HeaderMap, body: Option<MediaBody>) -> Response {
    let mut response = match body {
        Some(body) => warp::reply::stream(body).into_response(),
        None => Response::new(Bytes::new().into()),
    };
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_paths() {
        let k = |kind, video_id| Some(MediaKey { kind, video_id });
        assert_eq!(media_key("42.mp4"), k(MediaKind::Processed, 42));
        assert_eq!(media_key("42.jpg"), k(MediaKind::Poster, 42));
        assert_eq!(media_key("originals/42.mp4"), k(MediaKind::Original, 42));
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
            assert_eq!(media_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn multipart_length_is_exact() {
        let ranges = [
            ByteRange { first: 0, last: 9 },
            ByteRange {
                first: 20,
                last: 29,
            },
        ];
        let (pieces, length) = multipart_pieces(&ranges, 100, "video/mp4", "b");
        let text: u64 = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len() as u64,
                Piece::Range { first, last } => last - first + 1,
            })
            .sum();
        assert_eq!(text, length);
        match &pieces[0] {
            Piece::Text(t) => assert!(t.starts_with(b"--b\r\n")),
            _ => panic!(),
        }
    }
}
