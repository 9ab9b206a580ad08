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
//!   mid-stream) is closed with a *lingering close*. Closing outright with unread bytes in the
//!   socket makes the kernel send a reset, which can destroy the response before the client
//!   reads it; draining everything the client still sends costs as much as accepting it (a
//!   refused client on a fast link pushes megabytes before it notices). So we shut our write
//!   side, drain a little (a client that stops sending gets a clean end of stream), and if the
//!   client keeps sending we stop reading: its writes block, which is when a client that reads
//!   while it sends sees the answer and closes. Once the answer is acknowledged and the client
//!   has had [`LINGER_HOLD`] to read it, we close, and the reset drops what it still had queued.

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

/// How long, at most, a lingering close lasts.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// A lingering close ends once the client has sent nothing for this long.
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// What a lingering close drains, at most, waiting for the client to stop sending. A leftover
/// this small costs nothing to take; beyond it, the client is streaming a body it will not stop,
/// and reading more would only let the kernel widen the window and invite more.
const LINGER_DRAIN_BUDGET: usize = 64 * 1024;
/// How long a client that keeps sending has to read its answer before it is reset. Its writes
/// block as soon as we stop reading, so a client that reads while it sends needs a moment; the
/// hold also bounds what the unread socket keeps in kernel memory (about one receive window).
const LINGER_HOLD: Duration = Duration::from_millis(250);

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

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lingered {
    /// The client closed, went quiet, or the socket failed, after `drained` bytes.
    Ended { drained: usize },
    /// The client kept sending: it was reset after its answer was acknowledged and the hold
    /// passed. `drained` bytes were taken, `unread` were still in our socket.
    CutOff { drained: usize, unread: usize },
}

/// Ends a connection whose response is written: half-closes it, then ends it as gently as the
/// client's behaviour allows (see the module docs).
async fn linger(stream: TcpStream) {
    let lingered = linger_for(stream, LINGER_HOLD).await;
    let (discarded, cut_off) = match lingered {
        Lingered::Ended { drained } => (drained, false),
        Lingered::CutOff { drained, unread } => (drained + unread, true),
    };
    // A client that had already closed is not a lingering close.
    if discarded > 0 || cut_off {
        crate::events::emit(crate::events::Event::LingeringClose {
            discarded_bytes: discarded as u64,
            cut_off,
        });
    }
}

async fn linger_for(mut stream: TcpStream, hold: Duration) -> Lingered {
    let started = tokio::time::Instant::now();
    if stream.shutdown().await.is_err() {
        return Lingered::Ended { drained: 0 };
    }
    let mut drained = 0;
    while drained < LINGER_DRAIN_BUDGET {
        let waited = tokio::time::timeout_at(
            (started + LINGER_TOTAL).min(tokio::time::Instant::now() + LINGER_IDLE),
            discard(&stream, LINGER_DRAIN_BUDGET - drained),
        )
        .await;
        match waited {
            Ok(Ok(n)) if n > 0 => drained += n,
            // End of stream, a failed socket, or a client gone quiet.
            _ => return Lingered::Ended { drained },
        }
    }
    // Still sending past the budget: stop reading, give the client the hold to read its
    // answer, and do not reset before the answer has been acknowledged (a reset would discard
    // a retransmission still owed).
    tokio::time::sleep_until(started + hold).await;
    while unacknowledged_bytes(&stream) > 0 && started.elapsed() < LINGER_TOTAL {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unread = unread_bytes(&stream);
    // Dropping a socket with unread bytes resets the connection: what the client still had
    // queued is thrown away by its kernel, not carried here.
    drop(stream);
    Lingered::CutOff { drained, unread }
}

/// Throws away up to `at_most` bytes the socket has received (0 at end of stream), without
/// copying them: `MSG_TRUNC` on a TCP socket makes the kernel drop the bytes instead of handing
/// them over.
async fn discard(stream: &TcpStream, at_most: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        let discarded = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: `fd` is the open socket `stream` owns for the whole call, and with
            // MSG_TRUNC a TCP receive writes nothing to the (null) buffer.
            let n = unsafe { libc::recv(fd, std::ptr::null_mut(), at_most, libc::MSG_TRUNC) };
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

/// Bytes received and not yet read (`FIONREAD`); 0 if the socket cannot say.
fn unread_bytes(stream: &TcpStream) -> usize {
    socket_queue_bytes(stream, libc::FIONREAD)
}

/// Bytes sent and not yet acknowledged by the peer, our FIN included (`SIOCOUTQ`, which Linux
/// numbers `TIOCOUTQ`); 0 if the socket cannot say.
fn unacknowledged_bytes(stream: &TcpStream) -> usize {
    socket_queue_bytes(stream, libc::TIOCOUTQ)
}

/// One of the socket queue sizes the kernel reports through `ioctl`. Neither tokio nor socket2
/// exposes them.
fn socket_queue_bytes(stream: &TcpStream, request: libc::Ioctl) -> usize {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: `stream` owns the open socket for the whole call, and both requests write one
    // `int` to the pointer they are given.
    let status = unsafe { libc::ioctl(stream.as_raw_fd(), request, &mut bytes) };
    if status < 0 {
        0
    } else {
        bytes.max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    use super::{discard, linger_for, Lingered, LINGER_DRAIN_BUDGET};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn discarding_counts_every_byte_the_peer_sent_then_sees_the_end() {
        let (mut client, server) = connected_pair().await;
        let sent = 3 * 1024 * 1024 + 17;
        let writer = tokio::spawn(async move {
            client.write_all(&vec![7u8; sent]).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut discarded = 0;
        loop {
            match discard(&server, 1 << 30).await.unwrap() {
                0 => break,
                n => discarded += n,
            }
        }
        writer.await.unwrap();
        assert_eq!(discarded, sent);
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_reads_its_answer_and_a_clean_end() {
        let (mut client, mut server) = connected_pair().await;
        let leftover = LINGER_DRAIN_BUDGET / 2;
        client.write_all(&vec![7u8; leftover]).await.unwrap();
        server.write_all(ANSWER).await.unwrap();
        let lingering = tokio::spawn(linger_for(server, Duration::from_secs(60)));
        // The client reads its answer, then our end of stream, then closes its side.
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, ANSWER);
        client.shutdown().await.unwrap();
        // Ended by the client's end of stream, long before the hold: not cut off.
        let lingered = tokio::time::timeout(Duration::from_secs(10), lingering)
            .await
            .expect("the lingering close ends with the client")
            .unwrap();
        assert_eq!(lingered, Lingered::Ended { drained: leftover });
        // No reset followed: the client's end of the connection closes cleanly.
        let mut after = [0u8; 16];
        assert_eq!(client.read(&mut after).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_that_keeps_sending_is_cut_off_after_its_answer_is_acknowledged() {
        let (client, mut server) = connected_pair().await;
        let (mut client_reader, mut client_writer) = client.into_split();
        server.write_all(ANSWER).await.unwrap();
        // A client streaming a body it never stops, without reading.
        let streaming = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0usize;
            loop {
                match client_writer.write(&chunk).await {
                    Ok(n) => sent += n,
                    Err(error) => return (sent, error.kind()),
                }
            }
        });
        let lingered = tokio::time::timeout(
            Duration::from_secs(10),
            linger_for(server, Duration::from_millis(100)),
        )
        .await
        .expect("a lingering close is bounded");
        let Lingered::CutOff { drained, unread } = lingered else {
            panic!("a client that keeps sending is cut off, not {lingered:?}");
        };
        // We drained no more than the budget, then stopped reading.
        assert_eq!(drained, LINGER_DRAIN_BUDGET);
        assert!(
            unread > 0,
            "the client was still sending when it was cut off"
        );
        // The reset stops the client: its next write fails instead of going on.
        let (sent, error) = tokio::time::timeout(Duration::from_secs(10), streaming)
            .await
            .expect("the client stops once reset")
            .unwrap();
        assert!(
            matches!(
                error,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{error:?}"
        );
        assert!(sent >= drained + unread);
        // The answer reached the client before the reset, and it can still read it.
        let mut answer = vec![0u8; ANSWER.len()];
        client_reader.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, ANSWER);
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
