//! The media routes: published videos and posters (public), originals (owner only, through a
//! signed expiring URL). GET and HEAD, with RFC 9110 ranges and conditional requests; the
//! rules are in [`super::range`], the file and its stream permit come from the node, and the
//! body is sent here as slices of the file's mapping.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::components::{ErrorBody, Unavailable, VideoNotFound};
use super::endpoint::media_path;
use super::error::{no_video, ApiError};
use super::range::{
    evaluate, http_date, parse_range, ByteRange, Conditions, Decision, RangeRequest, Validators,
};
use super::request::Request;
use super::response::{empty, stream, Response};
use crate::engine::blobs::BlobStream;
use crate::media::{MediaGrant, MediaKey, MediaKind, MediaMeta, RangeOpening, StreamPermit};
use crate::node::Node;

/// Size of the slices a body is sent in.
const CHUNK_BYTES: u64 = 512 * 1024;

/// Published media never change: caches may keep them for good. Originals stay private.
fn cache_control(kind: MediaKind) -> &'static str {
    if kind.is_published() {
        "public, max-age=31536000, immutable"
    } else {
        "private, no-store"
    }
}

fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// One media route: its operation in the OpenAPI document, and the handler, which serves any
/// kind of media key (the router chose the kind from the path).
macro_rules! media_route {
    ($name:ident, $id:literal, $path:literal, $content_type:literal, $what:literal,
     $tag:literal, $forbidden:literal $(, $param:tt)*) => {
        #[doc = $what]
        #[utoipa::path(
            method(get, head),
            path = $path,
            operation_id = $id,
            tag = $tag,
            params(
                ("video_id" = u64, Path, description = "The video's id."),
                ("Range" = Option<String>, Header,
                    description = "`bytes=a-b`, `bytes=a-`, `bytes=-n`, or several ranges."),
                ("If-Range" = Option<String>, Header,
                    description = "An entity tag or date: the range applies only if it matches."),
                ("If-None-Match" = Option<String>, Header,
                    description = "Entity tags: `304` if the file has one of them."),
                ("If-Modified-Since" = Option<String>, Header,
                    description = "`304` if the file has not changed since."),
                $($param,)*
            ),
            responses(
                (status = 200, description = "The whole file.", content_type = $content_type,
                    body = inline(super::components::FileBytes), headers(
                        ("Accept-Ranges" = String, description = "`bytes`"),
                        ("Content-Length" = u64),
                        ("ETag" = String, description = "Strong, the same whichever storage holds the file."),
                        ("Last-Modified" = String),
                        ("Cache-Control" = String),
                    )),
                (status = 206, description = "The requested range, or `multipart/byteranges` for several.",
                    content((inline(super::components::FileBytes) = $content_type), (inline(super::components::FileBytes) = "multipart/byteranges")),
                    headers(
                        ("Content-Range" = String, description = "`bytes a-b/len` (one range)."),
                        ("ETag" = String),
                    )),
                (status = 304, description = "Not modified: the client's copy is current.",
                    headers(("ETag" = String))),
                (status = 403, description = $forbidden, body = ErrorBody),
                (status = 404, response = VideoNotFound),
                (status = 416, description = "No requested range is within the file.",
                    body = ErrorBody, headers(
                        ("Content-Range" = String, description = "`bytes */len`"),
                    )),
                (status = 503, response = Unavailable),
            )
        )]
        pub async fn $name(
            node: &Node,
            request: Request,
            key: Option<MediaKey>,
            head: bool,
        ) -> Result<Response, ApiError> {
            serve(node, request, key, head).await
        }
    };
}

media_route!(
    processed,
    "getVideo",
    "/media/{video_id}.mp4",
    "video/mp4",
    "A published video (1280x720 H.264, fast start).",
    "media",
    "Never: published videos are public."
);
media_route!(
    poster,
    "getPoster",
    "/media/{video_id}.jpg",
    "image/jpeg",
    "A published video's poster.",
    "media",
    "Never: posters are public."
);
media_route!(
    original,
    "getOriginal",
    "/media/originals/{video_id}.mp4",
    "video/mp4",
    "An uploaded original, for its owner: the signed, expiring `original_url` of the video's \
     detail.",
    "media",
    "The link's signature is invalid or it has expired.",
    (
        "expires" = u64,
        Query,
        description = "Unix time the link expires at."
    ),
    (
        "signature" = String,
        Query,
        description = "HMAC-SHA256 of the path and the expiry, hex."
    )
);

async fn serve(
    node: &Node,
    request: Request,
    key: Option<MediaKey>,
    head: bool,
) -> Result<Response, ApiError> {
    let key = key.ok_or_else(no_video)?;
    let grant = node
        .open_media(key, &media_path(key), &request.query)
        .await?;
    respond(head, &request.headers, grant)
}

fn respond(head: bool, headers: &HeaderMap, grant: MediaGrant) -> Result<Response, ApiError> {
    let meta = grant.meta.clone();
    let mut out = HeaderMap::new();
    let value =
        |text: String| HeaderValue::from_str(&text).map_err(|e| ApiError::Internal(e.to_string()));
    out.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(ETAG, value(format!("\"{}\"", meta.etag))?);
    out.insert(LAST_MODIFIED, value(http_date(meta.last_modified))?);
    out.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(cache_control(meta.kind)),
    );
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
    Ok(with(status, out, Some(MediaBody::new(grant, pieces))))
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
        Some(body) => stream(status, body),
        None => empty(status),
    };
    response.headers_mut().extend(headers);
    response
}

/// One piece of a response body: framing text, or a byte range of the file.
#[derive(Debug, Clone)]
pub enum Piece {
    Text(Bytes),
    Range { first: u64, last: u64 },
}

/// A response body made of pieces, sent from the file's mapping, or read by ranges from the
/// store that holds it; holds its stream permit until it is finished or dropped (a client that
/// went away frees its permit).
pub struct MediaBody {
    meta: Arc<MediaMeta>,
    pieces: VecDeque<Piece>,
    permit: StreamPermit,
    /// A range of a remote file being read.
    remote: Remote,
}

enum Remote {
    Idle,
    Opening(RangeOpening),
    Streaming(BlobStream),
}

impl MediaBody {
    pub fn new(grant: MediaGrant, pieces: Vec<Piece>) -> Self {
        Self {
            meta: grant.meta,
            pieces: pieces.into(),
            permit: grant.permit,
            remote: Remote::Idle,
        }
    }

    /// The next chunk of a local range piece: a slice of the mapping, the rest put back.
    fn local_chunk(&mut self, first: u64, last: u64) -> Bytes {
        let end = last.min(first + CHUNK_BYTES - 1);
        if end < last {
            self.pieces.push_front(Piece::Range {
                first: end + 1,
                last,
            });
            // Readahead for the slice after this one, so it rarely faults in on a runtime
            // thread.
            self.meta.read_ahead(end + 1, CHUNK_BYTES * 2);
        }
        self.meta.slice(first, end).unwrap_or_default()
    }
}

impl futures_util::Stream for MediaBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.remote {
                Remote::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => this.remote = Remote::Streaming(stream),
                    Poll::Ready(Err(e)) => {
                        this.remote = Remote::Idle;
                        return Poll::Ready(Some(Err(std::io::Error::other(e))));
                    }
                },
                Remote::Streaming(stream) => match stream.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => {
                        this.permit.served(chunk.len() as u64);
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.remote = Remote::Idle;
                        return Poll::Ready(Some(Err(std::io::Error::other(e))));
                    }
                    Poll::Ready(None) => this.remote = Remote::Idle,
                },
                Remote::Idle => {
                    let Some(piece) = this.pieces.pop_front() else {
                        return Poll::Ready(None);
                    };
                    match piece {
                        Piece::Text(text) => return Poll::Ready(Some(Ok(text))),
                        Piece::Range { first, last } => match this.meta.remote_range(first, last) {
                            Some(opening) => this.remote = Remote::Opening(opening),
                            None => {
                                let chunk = this.local_chunk(first, last);
                                this.permit.served(chunk.len() as u64);
                                return Poll::Ready(Some(Ok(chunk)));
                            }
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn a_body_sends_its_pieces_in_order_and_frees_its_permit_when_dropped() {
        use crate::media::StreamPermits;
        use futures_util::StreamExt;
        let permits = Arc::new(StreamPermits::new(1));
        let data: Vec<u8> = (0..=255u8)
            .cycle()
            .take(2 * CHUNK_BYTES as usize + 10)
            .collect();
        let meta = Arc::new(MediaMeta::in_memory(
            MediaKind::Processed,
            "e",
            Bytes::from(data.clone()),
        ));
        let permit = permits.try_take().unwrap();
        assert_eq!(permits.active(), 1);
        let last = data.len() as u64 - 1;
        let pieces = vec![
            Piece::Text(Bytes::from_static(b"<")),
            Piece::Range { first: 5, last },
            Piece::Text(Bytes::from_static(b">")),
        ];
        let mut body = MediaBody::new(MediaGrant { meta, permit }, pieces);
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() as u64 <= CHUNK_BYTES);
            out.extend_from_slice(&chunk);
        }
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&data[5..]);
        expected.push(b'>');
        assert_eq!(out, expected);
        assert_eq!(permits.bytes_served(), last - 4);
        assert_eq!(permits.active(), 1, "held until the body is dropped");
        drop(body);
        assert_eq!(permits.active(), 0);
    }
}
