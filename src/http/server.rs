//! The HTTP/1.1 server loop on hyper, under the node's handlers.
//!
//! The accept loop is ours (in the shape of mini-redis), because a server for hostile clients
//! needs what ready-made loops do not offer together:
//! - a semaphore permit is taken *before* `accept`, so open connections never exceed
//!   `server.max_connections` however fast clients connect;
//! - hyper's header-read timeout closes a client that does not finish its request head in time;
//! - every request is routed once ([`super::endpoint::route`]): its endpoint's label names it
//!   in the metrics, and the operations reserve serves only the operations endpoints;
//! - shutdown is a broadcast: the loop stops accepting, every connection finishes the request
//!   in flight and closes, and the caller waits for the last connection up to a grace deadline;
//! - a connection that answered before reading the whole request body (an upload refused
//!   mid-stream) is closed with a *lingering close*. Closing outright with unread bytes in the
//!   socket makes the kernel send a reset, which can destroy the response before the client
//!   reads it; draining everything the client still sends costs as much as accepting it (a
//!   refused client on a fast link pushes megabytes before it notices). So we shut our write
//!   side and drain a little: a client that stops within `LINGER_DRAIN_BUDGET` gets a clean
//!   end of stream. Past it we stop reading and, once our answer is acknowledged and
//!   `LINGER_HOLD` has passed, close; the reset makes the client's kernel drop what it still had
//!   queued. A Linux client keeps an answer it has received even after a reset; the cost is
//!   borne by clients whose stack discards it, described in ARCHITECTURE.md.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::endpoint::{route, Route};
use super::response::Response;

/// How long, at most, a lingering close lasts.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// While draining, a lingering close ends once the client has sent nothing for this long.
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// What a lingering close drains, at most, waiting for the client to stop sending. A leftover
/// this small costs nothing to take; beyond it, the client is streaming a body it will not stop,
/// and reading more would only let the kernel widen the window and invite more.
const LINGER_DRAIN_BUDGET: usize = 64 * 1024;
/// How long after the start of a lingering close a client that keeps sending is cut off (if
/// its answer is acknowledged by then). A client that reads while it sends has its answer
/// within a round trip; a client that reads only when a write fails is not helped by waiting.
/// The hold also bounds how long the unread socket keeps its receive window in kernel memory.
const LINGER_HOLD: Duration = Duration::from_millis(250);

/// How long a connection taken from the operations reserve may stay silent before it is
/// closed unserved. A load balancer's health check sends its request with the handshake; an
/// idle socket (a slow-loris) holds a reserved place no longer than this.
const RESERVE_FIRST_BYTE: Duration = Duration::from_millis(200);
/// Header-read timeout of a connection from the operations reserve. A health check's head is
/// one small packet.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Connections accepted past `max_connections` to serve the operations routes only
    /// (anything else on them is answered 503 at once); 0 for none.
    pub reserved_for_operations: usize,
    /// Every connection is treated as the reserve's are: served only if it speaks within
    /// [`RESERVE_FIRST_BYTE`], with [`RESERVE_HEADER_TIMEOUT`] and no keep-alive (the
    /// operations listener, which idle sockets must not crowd out either).
    pub impatient: bool,
}

/// What answers a routed request: the router of `http/mod.rs`, given the route, the request
/// and the connection's peer.
pub type Handler = Arc<
    dyn Fn(
            Route,
            http::Request<TrackedBody>,
            std::net::IpAddr,
        ) -> Pin<Box<dyn Future<Output = Response> + Send>>
        + Send
        + Sync,
>;

/// One connection's request handler: routes the request, then runs its handler.
#[derive(Clone)]
struct RouteService {
    handler: Handler,
    /// The connection's peer, handed to handlers as a request extension.
    peer: std::net::IpAddr,
    /// A connection over the cap: only the operations routes are served, the rest refused.
    operations_only: bool,
    /// Set once this connection has carried a request to the routes (see `shaped_io`).
    served: Arc<AtomicBool>,
}

impl hyper::service::Service<http::Request<Incoming>> for RouteService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.served.store(true, Ordering::Release);
        let started = std::time::Instant::now();
        let routed = route(request.method(), request.uri().path());
        let label = routed.label;
        let method = method_label(request.method());
        let refused = self.operations_only && !routed.operations;
        let body_done = Arc::new(AtomicBool::new(request.body().is_end_stream() && !refused));
        let answered: Pin<Box<dyn Future<Output = Response> + Send>> = if refused {
            // Over the cap: only the operations routes are served; the connection closes after.
            let refusal = crate::http::error::over_connection_cap().into_response();
            Box::pin(std::future::ready(refusal))
        } else {
            let request = request.map(|inner| TrackedBody {
                inner,
                done: body_done.clone(),
            });
            (self.handler)(routed, request, self.peer)
        };
        Box::pin(async move {
            let mut response = answered.await;
            secure(response.headers_mut());
            if !body_done.load(Ordering::Acquire) {
                // Answered before the body was read (a refused upload, a request over the cap):
                // the rest of the body may still be on the wire, so the connection cannot carry
                // another request. Say so, or a client would reuse it and find it closed.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            crate::events::emit(crate::events::Event::HttpRequest {
                route: label,
                method,
                status: response.status().as_u16(),
                seconds: started.elapsed().as_secs_f64(),
            });
            Ok(response)
        })
    }
}

/// Headers every response carries: no content sniffing (a body is what its type says), and
/// no `Referer` from the page (signed URLs of originals carry their signature in the query).
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
}

/// A request body that records when it has been read to its end.
pub struct TrackedBody {
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

/// A connection's place under the cap.
enum Place {
    /// Within `max_connections`: served in full.
    Full(tokio::sync::OwnedSemaphorePermit),
    /// From the operations reserve: operations routes only.
    Reserve(tokio::sync::OwnedSemaphorePermit),
}

/// The places of a listener: `max_connections` in full, and the operations reserve past them.
struct Places {
    full: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    has_reserve: bool,
}

impl Places {
    fn new(limits: &ServerLimits) -> Self {
        Self {
            full: Arc::new(Semaphore::new(limits.max_connections)),
            reserve: Arc::new(Semaphore::new(limits.reserved_for_operations)),
            has_reserve: limits.reserved_for_operations > 0,
        }
    }

    /// A place for the next connection, taken before `accept`; `None` once stopping.
    async fn take(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Place> {
        tokio::select! {
            biased;
            _ = stopping(shutdown) => None,
            permit = self.full.clone().acquire_owned() => permit.ok().map(Place::Full),
            permit = self.reserve.clone().acquire_owned(), if self.has_reserve => {
                permit.ok().map(Place::Reserve)
            }
        }
    }

    /// A full place may have freed while a reserved one waited in `accept`.
    fn upgrade(&self, place: Place) -> Place {
        match place {
            Place::Reserve(reserved) => match self.full.clone().try_acquire_owned() {
                Ok(permit) => {
                    drop(reserved);
                    Place::Full(permit)
                }
                Err(_) => Place::Reserve(reserved),
            },
            full => full,
        }
    }
}

/// How hyper serves a connection in full, and one that must speak at once (the reserve's).
fn connection_builders(limits: &ServerLimits) -> [Arc<http1::Builder>; 2] {
    let mut full = http1::Builder::new();
    full.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut impatient = full.clone();
    impatient
        .header_read_timeout(RESERVE_HEADER_TIMEOUT)
        .keep_alive(false);
    [Arc::new(full), Arc::new(impatient)]
}

/// Serves `handler` on `listener` until `shutdown` turns true, then waits for open connections
/// to finish, at most `grace`. Returns how many connections were still open at the deadline.
///
/// At most `max_connections` connections are served in full; a place is taken before
/// `accept`, so the cap holds however fast clients connect. Past the cap, up to
/// `reserved_for_operations` more are accepted from a reserve: a connection that sends its
/// request at once gets the operations routes (health checks keep answering while the cap is
/// full of idle sockets) or a 503 at once for anything else, instead of waiting in the
/// kernel's backlog; a silent one is closed after [`RESERVE_FIRST_BYTE`].
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let places = Places::new(&limits);
    let [full_builder, impatient_builder] = connection_builders(&limits);
    let connections = TaskTracker::new();
    while let Some(place) = places.take(&mut shutdown).await {
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
        // Reserve places, and every place of an impatient listener, go to clients that speak
        // at once, for a request or two.
        let (permit, operations_only, impatient) = match places.upgrade(place) {
            Place::Full(permit) => (permit, false, limits.impatient),
            Place::Reserve(permit) => (permit, true, true),
        };
        let service = RouteService {
            handler: handler.clone(),
            peer: peer.ip(),
            operations_only,
            served: Arc::default(),
        };
        let builder = if impatient {
            impatient_builder.clone()
        } else {
            full_builder.clone()
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            if !impatient || speaks_at_once(&stream).await {
                serve_connection(stream, peer, service, &builder, shutdown).await;
            } else {
                crate::events::emit(crate::events::Event::IdleConnectionShed);
            }
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

/// Whether the client sends its first byte within [`RESERVE_FIRST_BYTE`]. `peek` waits for a
/// byte, not merely for readiness (which can be spurious on a fresh socket).
async fn speaks_at_once(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(RESERVE_FIRST_BYTE, stream.peek(&mut first)).await;
    matches!(peeked, Ok(Ok(n)) if n > 0)
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: RouteService,
    builder: &http1::Builder,
    mut shutdown: watch::Receiver<bool>,
) {
    let served = service.served.clone();
    let io = TokioIo::new(super::shaped_io::ShapedIo::new(stream, served));
    let mut connection = builder.serve_connection(io, service);
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
    let stream = connection.into_parts().io.into_inner().into_inner();
    linger(stream).await;
}

/// Resolves once shutdown has been requested (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lingered {
    /// The client ended its side after we drained `drained` bytes: a clean close.
    ClientClosed { drained: usize },
    /// The client sent nothing for `LINGER_IDLE`, or the socket failed, after `drained` bytes.
    Abandoned { drained: usize },
    /// The client was still sending past the drain budget (or the time limit): we took
    /// `drained` bytes, stopped reading, and closed with `unread` bytes left in our socket,
    /// which resets the connection unless the client had closed its side meanwhile.
    CutOff { drained: usize, unread: usize },
}

/// Ends a connection whose response is written: half-closes it, then ends it as gently as the
/// client's behaviour allows (see the module docs).
async fn linger(stream: TcpStream) {
    let (discarded, cut_off) = match linger_for(stream, LINGER_HOLD).await {
        Lingered::ClientClosed { drained } | Lingered::Abandoned { drained } => (drained, false),
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

/// The lingering close, with the hold as a parameter so tests can shorten it. Takes at most
/// `LINGER_TOTAL` (plus one poll of the acknowledgement).
async fn linger_for(mut stream: TcpStream, hold: Duration) -> Lingered {
    let started = tokio::time::Instant::now();
    let give_up_at = started + LINGER_TOTAL;
    if stream.shutdown().await.is_err() {
        return Lingered::Abandoned { drained: 0 };
    }
    // A client that has sent more than the budget already is streaming a body it will not
    // stop (a refused upload, typically): reading would only reopen the window and invite
    // more. It is cut off after the hold without a read, which is also the cheapest end.
    if unread_bytes(&stream).is_some_and(|unread| unread >= LINGER_DRAIN_BUDGET) {
        return cut_off(stream, started, hold, 0).await;
    }
    let mut drained = 0;
    while drained < LINGER_DRAIN_BUDGET {
        let quiet_at = tokio::time::Instant::now() + LINGER_IDLE;
        let waited = tokio::time::timeout_at(
            give_up_at.min(quiet_at),
            discard(&stream, LINGER_DRAIN_BUDGET - drained),
        )
        .await;
        match waited {
            Ok(Ok(0)) => return Lingered::ClientClosed { drained },
            Ok(Ok(n)) => drained += n,
            Ok(Err(_)) => return Lingered::Abandoned { drained },
            // Still trickling when time is up: cut off below.
            Err(_) if quiet_at >= give_up_at => break,
            Err(_) => return Lingered::Abandoned { drained },
        }
    }
    cut_off(stream, started, hold, drained).await
}

/// The end of a lingering close started at `started` for a client that is still sending:
/// stop reading, and give the client the hold to read its answer. Do not close before the
/// answer and our FIN are acknowledged (a reset would cancel a retransmission still owed),
/// unless the time limit is reached or the client is gone.
async fn cut_off(
    stream: TcpStream,
    started: tokio::time::Instant,
    hold: Duration,
    drained: usize,
) -> Lingered {
    let give_up_at = started + LINGER_TOTAL;
    tokio::time::sleep_until(started + hold.min(LINGER_TOTAL)).await;
    while unacknowledged_bytes(&stream).is_some_and(|n| n > 0)
        && tokio::time::Instant::now() < give_up_at
        && matches!(stream.take_error(), Ok(None))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unread = unread_bytes(&stream).unwrap_or(0);
    drop(stream);
    Lingered::CutOff { drained, unread }
}

/// Throws away up to `at_most` bytes the socket has received (0 at end of stream), without
/// copying them: `MSG_TRUNC` on a TCP socket makes the kernel drop the bytes instead of handing
/// them over.
async fn discard(stream: &TcpStream, at_most: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // Asking for nothing would read as an end of stream.
    debug_assert!(at_most > 0);
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

/// Bytes received and not yet read (`FIONREAD`), if the socket can say.
fn unread_bytes(stream: &TcpStream) -> Option<usize> {
    socket_queue_bytes(stream, libc::FIONREAD)
}

/// Bytes written and not yet acknowledged by the peer, sent or not, our FIN included
/// (`SIOCOUTQ`, which Linux numbers `TIOCOUTQ`), if the socket can say.
fn unacknowledged_bytes(stream: &TcpStream) -> Option<usize> {
    socket_queue_bytes(stream, libc::TIOCOUTQ)
}

/// One of the socket queue sizes the kernel reports through `ioctl`. Neither tokio nor socket2
/// exposes them.
fn socket_queue_bytes(stream: &TcpStream, request: libc::Ioctl) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: `stream` owns the open socket for the whole call, and both requests write one
    // `int` to the pointer they are given.
    let status = unsafe { libc::ioctl(stream.as_raw_fd(), request, &mut bytes) };
    (status >= 0).then(|| bytes.max(0) as usize)
}

#[cfg(test)]
mod tests {

    use super::{
        discard, linger_for, unacknowledged_bytes, unread_bytes, Lingered, LINGER_DRAIN_BUDGET,
        LINGER_TOTAL,
    };
    use std::time::{Duration, Instant};
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

    /// Waits (boundedly) until `stream` has at least `bytes` received and unread.
    async fn until_unread_at_least(stream: &TcpStream, bytes: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while unread_bytes(stream).unwrap() < bytes {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes to `stream` until the kernel takes no more; returns how much it took.
    fn fill(stream: &TcpStream) -> usize {
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0;
        loop {
            match stream.try_write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return written,
                Err(e) => panic!("{e}"),
            }
        }
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
    async fn the_socket_queues_are_read_from_the_kernel() {
        let (mut client, server) = connected_pair().await;
        client.write_all(&[1u8; 1000]).await.unwrap();
        until_unread_at_least(&server, 1000).await;
        assert_eq!(unread_bytes(&server), Some(1000));
        // What the client does not read stays ours to account for, until it reads it all.
        let written = fill(&server);
        assert!(unacknowledged_bytes(&server).unwrap() > 0);
        let mut taken = vec![0u8; written];
        client.read_exact(&mut taken).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while unacknowledged_bytes(&server) != Some(0) {
            assert!(Instant::now() < deadline, "never acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
        let lingered = tokio::time::timeout(Duration::from_secs(10), lingering)
            .await
            .expect("the lingering close ends with the client")
            .unwrap();
        assert_eq!(lingered, Lingered::ClientClosed { drained: leftover });
        // No reset followed.
        assert!(client.take_error().unwrap().is_none());
    }

    /// A lingering close with a hold of 100 ms, which it must not end before (nor last past
    /// 10 s).
    async fn linger_held(server: TcpStream) -> Lingered {
        let hold = Duration::from_millis(100);
        let started = Instant::now();
        let lingered = tokio::time::timeout(Duration::from_secs(10), linger_for(server, hold))
            .await
            .expect("a lingering close is bounded");
        assert!(started.elapsed() >= hold, "cut off before the hold");
        lingered
    }

    #[tokio::test]
    async fn a_client_that_keeps_sending_is_cut_off_after_the_hold() {
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
        let lingered = linger_held(server).await;
        let Lingered::CutOff { drained, unread } = lingered else {
            panic!("a client that keeps sending is cut off, not {lingered:?}");
        };
        // We drained the budget, then stopped reading; or, when the client had sent more than
        // the budget before the close began, we read nothing.
        assert!(drained == LINGER_DRAIN_BUDGET || drained == 0, "{drained}");
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

    #[tokio::test]
    async fn a_client_past_the_budget_already_is_cut_off_without_a_read() {
        let (client, mut server) = connected_pair().await;
        let (mut client_reader, mut client_writer) = client.into_split();
        // A refused upload: the client sent far more than the budget before its answer came.
        let sent = 2 * LINGER_DRAIN_BUDGET;
        client_writer.write_all(&vec![7u8; sent]).await.unwrap();
        until_unread_at_least(&server, LINGER_DRAIN_BUDGET).await;
        server.write_all(ANSWER).await.unwrap();
        let lingered = linger_held(server).await;
        assert!(
            matches!(lingered, Lingered::CutOff { drained: 0, unread } if unread >= LINGER_DRAIN_BUDGET),
            "nothing read, reading would only have invited more: {lingered:?}"
        );
        // The answer reached the client before the reset.
        let mut answer = vec![0u8; ANSWER.len()];
        client_reader.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, ANSWER);
    }

    #[tokio::test]
    async fn a_client_gone_before_acknowledging_its_answer_is_not_waited_for() {
        let (mut client, server) = connected_pair().await;
        // The client sent more than the budget and never reads what we send: our answer
        // cannot be acknowledged.
        client
            .write_all(&vec![7u8; 2 * LINGER_DRAIN_BUDGET])
            .await
            .unwrap();
        fill(&server);
        let started = Instant::now();
        let lingering = tokio::spawn(linger_for(server, Duration::from_secs(1)));
        // Well into the hold (nothing is drained: the client sent more than the budget), the
        // client resets the connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.set_zero_linger().unwrap();
        drop(client);
        let lingered = lingering.await.unwrap();
        assert!(
            matches!(lingered, Lingered::CutOff { drained: 0, .. }),
            "{lingered:?}"
        );
        // Not held until the time limit for an acknowledgement that cannot come.
        assert!(started.elapsed() < LINGER_TOTAL, "{:?}", started.elapsed());
    }
}
