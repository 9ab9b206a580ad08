//! The answers hyper gives on its own, shaped like ours.
//!
//! A request whose head hyper cannot parse (too large: 431, a URI too long: 414, a malformed
//! request line, header or `Content-Length`: 400) is answered by hyper itself, with an empty
//! body, before any of our code runs, and hyper offers no hook to change that answer. So the
//! connection's socket is wrapped: [`ShapedIo`] recognises that answer as hyper writes it (a
//! 400, 414 or 431 head with `content-length: 0` and no `content-type`, which none of our own
//! responses is: every error of ours has a JSON body) and writes in its place the same status
//! with a `{"detail"}` body. Everything else passes through untouched.
//!
//! Only on a connection that has not yet carried a request to our routes: after one, writes
//! may be response bodies (an uploaded original, chosen by its uploader and sliced by a
//! `Range` of the client's choosing) that could be crafted to look like that answer, and a
//! rewritten body would no longer match its `Content-Length`. A malformed request after a
//! good one on the same connection gets hyper's own, bodiless answer.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket whose writes are watched for hyper's own error answers.
pub struct ShapedIo<S> {
    inner: S,
    /// Set once the connection has carried a request to our routes; from then on nothing is
    /// shaped (see the module docs).
    served: Arc<AtomicBool>,
    /// A replacement being written: its bytes, how many are written, and the length of the
    /// answer it replaces (what hyper is told was written once it is all out).
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ShapedIo<S> {
    /// `served` is the connection's flag, set by the request handler.
    pub fn new(inner: S, served: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            served,
            replacing: None,
        }
    }

    /// The replacement for `buf`, when it is hyper's own answer on an unserved connection.
    fn replacement(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if self.served.load(Ordering::Acquire) || !buf.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        shaped_answer(buf)
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// If `head` is an answer hyper wrote by itself, the same answer with a `{"detail"}` body.
pub fn shaped_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let detail = super::error::protocol_error_detail(status)?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let mut lines = text[..text.len() - 4].split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-type") {
            // Ours: every error of ours is JSON.
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
            continue;
        }
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        kept.push(line);
    }
    if !empty_body {
        return None;
    }
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut shaped = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\
         x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n",
        body.len()
    );
    for line in kept {
        shaped.push_str(line);
        shaped.push_str("\r\n");
    }
    shaped.push_str("\r\n");
    shaped.push_str(&body);
    Some(shaped.into_bytes())
}

impl<S: AsyncWrite + Unpin> ShapedIo<S> {
    /// Writes the rest of the replacement; ready with the replaced length once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, replaced)) = &mut self.replacing {
            if *written == bytes.len() {
                let replaced = *replaced;
                self.replacing = None;
                return Poll::Ready(Ok(replaced));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ShapedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ShapedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            match this.replacement(buf) {
                Some(shaped) => this.replacing = Some((shaped, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.poll_replacement(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            // hyper's own answer has no body: it is one slice, alone.
            let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
            let shaped = match (nonempty.next(), nonempty.next()) {
                (Some(only), None) => this.replacement(only).map(|s| (s, only.len())),
                _ => None,
            };
            match shaped {
                Some((shaped, len)) => this.replacing = Some((shaped, 0, len)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_replacement(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            match this.poll_replacement(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_get_a_detail_and_ours_pass_through() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 10:00:00 GMT\r\n\r\n";
        let shaped = String::from_utf8(shaped_answer(hyper).unwrap()).unwrap();
        let (head, body) = shaped.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Wed, 02 Dec 2026"));
        let detail: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(detail["detail"].as_str().unwrap().len() > 5);
        for status in ["400 Bad Request", "414 URI Too Long"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(shaped_answer(head.as_bytes()).is_some(), "{status}");
        }
        // Our own answers: a JSON body, another status, or not a head at all.
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 17\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nxyz",
            b"\x00\x01 binary",
        ] {
            assert_eq!(shaped_answer(ours), None, "{:?}", String::from_utf8_lossy(ours));
        }
    }

    #[tokio::test]
    async fn the_replacement_is_written_whole_and_reported_as_the_original() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(16);
        let mut shaped = ShapedIo::new(server, Arc::default());
        let hyper = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        // A small pipe: the replacement needs several writes, and one call reports it all.
        let n = std::future::poll_fn(|cx| Pin::new(&mut shaped).poll_write(cx, hyper))
            .await
            .unwrap();
        assert_eq!(n, hyper.len());
        shaped.write_all(b"after").await.unwrap();
        shaped.shutdown().await.unwrap();
        drop(shaped);
        let all = String::from_utf8(reader.await.unwrap()).unwrap();
        assert!(all.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{all}");
        assert!(all.ends_with("}after"), "{all}");
    }

    #[tokio::test]
    async fn nothing_is_shaped_once_the_connection_has_served_a_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let served = Arc::new(AtomicBool::new(true));
        let mut shaped = ShapedIo::new(server, served);
        // A body slice crafted to look like hyper's answer passes through as it is.
        let lookalike = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        shaped.write_all(lookalike).await.unwrap();
        shaped.shutdown().await.unwrap();
        drop(shaped);
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, lookalike);
    }
}
