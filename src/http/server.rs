//! The HTTP/1.1 server loop under the warp routes.
//!
//! warp's own server offers no connection cap, no header-read timeout and no control over how
//! a connection ends, so the accept loop is ours (in the shape of mini-redis):
//! - a semaphore permit is taken *before* `accept`, so open connections never exceed
//!   `server.max_connections` however fast clients connect;
//! - hyper's header-read timeout closes a client that does not finish its request head in time;
//! - request paths are normalised before routing (a trailing slash is accepted on every route);
//! - shutdown is a broadcast: the loop stops accepting, every connection finishes the request
//!   in flight and closes, and the caller waits for the last connection up to a grace deadline;
//! - a connection that answered before reading the whole request body (an upload refused
//!   mid-stream) is closed with a *lingering close*: we shut our write side and discard what the
//!   client is still sending for a short while. Closing outright with unread bytes in the socket
//!   makes the kernel send a reset, which can destroy the response before the client reads it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// How long, at most, a lingering close keeps discarding what a client still sends.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// A lingering close ends early once the client has sent nothing for this long.
const LINGER_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

type Routes = BoxedFilter<(Response,)>;

/// One connection's request handler: normalises the path, then runs the warp routes.
#[derive(Clone)]
struct RouteService {
    routes: Routes,
    /// The connection's peer, handed to handlers as a request extension.
    peer: std::net::IpAddr,
}

impl hyper::service::Service<http::Request<Incoming>> for RouteService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        normalize_path(&mut request);
        request
            .extensions_mut()
            .insert(crate::rate_limit::PeerAddr(self.peer));
        let started = std::time::Instant::now();
        let route = route_label(request.uri().path());
        let method = method_label(request.method());
        let body_done = Arc::new(AtomicBool::new(request.body().is_end_stream()));
        let request = request.map(|inner| TrackedBody {
            inner,
            done: body_done.clone(),
        });
        // Wrapping the boxed filter is a pointer copy; its future owns everything it needs.
        let mut routes = warp::service(self.routes.clone());
        let answered = routes.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            if !body_done.load(Ordering::Acquire) {
                // Answered before the body was read (a refused upload): the rest of the body
                // is still on the wire, so the connection cannot carry another request. Say so,
                // or a client would reuse it and find it closed.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            crate::events::emit(crate::events::Event::HttpRequest {
                route,
                method,
                status: response.status().as_u16(),
                seconds: started.elapsed().as_secs_f64(),
            });
            Ok(response)
        })
    }
}

/// A request body that records when it has been read to its end.
struct TrackedBody {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The route a path belongs to, as a metric label (ids replaced, so labels stay few). Ids are
/// written `:id`, not `{id}`: braces inside label values trip many line-based scrapers.
pub fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match segments.as_slice() {
        [""] => "/",
        ["metrics"] => "/metrics",
        ["api", "auth", "signup"] => "/api/auth/signup",
        ["api", "auth", "login"] => "/api/auth/login",
        ["api", "videos"] => "/api/videos",
        ["api", "videos", "upload"] => "/api/videos/upload",
        ["api", "videos", _] => "/api/videos/:id",
        ["api", "public", "videos"] => "/api/public/videos",
        ["api", "public", "videos", _, "vote"] => "/api/public/videos/:id/vote",
        ["api", "public", "rankings"] => "/api/public/rankings",
        ["api", "health"] => "/api/health",
        ["api", "health", "ready"] => "/api/health/ready",
        ["api", "health", "actors"] => "/api/health/actors",
        ["api", "admin", ..] => "/api/admin",
        ["media", "originals", _] => "/media/originals/:id.mp4",
        ["media", file] if file.ends_with(".mp4") && is_id(&file[..file.len() - 4]) => {
            "/media/:id.mp4"
        }
        ["media", file] if file.ends_with(".jpg") && is_id(&file[..file.len() - 4]) => {
            "/media/:id.jpg"
        }
        _ => "other",
    }
}

fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Drops one trailing slash (`/api/videos/` → `/api/videos`), keeping the query.
fn normalize_path<B>(request: &mut http::Request<B>) {
    let uri = request.uri();
    let path = uri.path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = &path[..path.len() - 1];
    let rebuilt = match uri.query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_string(),
    };
    if let Ok(path_and_query) = rebuilt.parse::<http::uri::PathAndQuery>() {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` turns true, then waits for open connections
/// to finish, at most `grace`. Returns how many connections were still open at the deadline.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let service = RouteService {
        routes,
        peer: std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopping(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = RouteService {
            peer: peer.ip(),
            ..service.clone()
        };
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, service, &builder, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        let open = connections.len();
        tracing::warn!(open, "grace period over with connections still open");
        return open;
    }
    0
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: RouteService,
    builder: &hyper::server::conn::http1::Builder,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut shutting_down = false;
    let result = loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break result,
            _ = stopping(&mut shutdown), if !shutting_down => {
                shutting_down = true;
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
    };
    if let Err(error) = &result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
    let stream = connection.into_parts().io.into_inner();
    linger(stream).await;
}

/// Resolves once shutdown has been requested (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Half-closes the connection and discards what the client still sends, for a bounded time.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0u64;
    let _ = tokio::time::timeout(LINGER_TOTAL, async {
        loop {
            match tokio::time::timeout(LINGER_IDLE, discard(&stream)).await {
                Ok(Ok(n)) if n > 0 => discarded += n as u64,
                _ => break,
            }
        }
    })
    .await;
    // A client that had already closed is not a lingering close.
    if discarded > 0 {
        crate::events::emit(crate::events::Event::LingeringClose {
            discarded_bytes: discarded,
        });
    }
}

/// Throws away what the socket has received (0 at end of stream), without copying it:
/// `MSG_TRUNC` on a TCP socket makes the kernel drop the bytes instead of handing them over.
/// A refused upload's client may push megabytes before it notices the answer, and copying
/// them out only to drop them was a measurable share of the CPU under overload.
async fn discard(stream: &TcpStream) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    const AT_MOST: usize = 1 << 30;
    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        let discarded = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: `fd` is the open socket `stream` owns for the whole call, and with
            // MSG_TRUNC a TCP receive writes nothing to the (null) buffer.
            let n = unsafe { libc::recv(fd, std::ptr::null_mut(), AT_MOST, libc::MSG_TRUNC) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match discarded {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[tokio::test]
    async fn discarding_counts_every_byte_the_peer_sent_then_sees_the_end() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let sent = 3 * 1024 * 1024 + 17;
        let writer = tokio::spawn(async move {
            client.write_all(&vec![7u8; sent]).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut discarded = 0;
        loop {
            match super::discard(&server).await.unwrap() {
                0 => break,
                n => discarded += n,
            }
        }
        writer.await.unwrap();
        assert_eq!(discarded, sent);
    }

    fn normalized(uri: &str) -> String {
        let mut request = http::Request::builder().uri(uri).body(()).unwrap();
        normalize_path(&mut request);
        request.uri().to_string()
    }

    #[test]
    fn routes_are_labelled_without_ids() {
        use super::route_label;
        assert_eq!(route_label("/api/videos/42"), "/api/videos/:id");
        assert_eq!(
            route_label("/api/public/videos/7/vote"),
            "/api/public/videos/:id/vote"
        );
        assert_eq!(route_label("/media/3.mp4"), "/media/:id.mp4");
        assert_eq!(route_label("/media/3.jpg"), "/media/:id.jpg");
        assert_eq!(
            route_label("/media/originals/3.mp4"),
            "/media/originals/:id.mp4"
        );
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/anything/else"), "other");
        assert_eq!(route_label("/media/../etc"), "other");
    }

    #[test]
    fn one_trailing_slash_is_dropped_and_the_query_kept() {
        assert_eq!(normalized("/api/public/videos/"), "/api/public/videos");
        assert_eq!(
            normalized("/api/public/rankings/?page=2"),
            "/api/public/rankings?page=2"
        );
        assert_eq!(normalized("/api/videos"), "/api/videos");
        assert_eq!(normalized("/"), "/");
    }
}
