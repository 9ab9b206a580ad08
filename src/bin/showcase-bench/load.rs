//! Virtual users and what they saw.
//!
//! Each user is signed up and logged in once per node (as a client of its own address, passed
//! through the trusted-proxy header), then uploads the same file in a loop with a think time,
//! until its phase ends. An *honouring* user that is refused (503 or 429) waits the
//! `Retry-After` it was given (at most the client's cap, as clients that retry on their own
//! schedule do), with up to 50 % jitter, and tries the same upload again; a *naive* user never
//! retries: it thinks for the usual second and starts a new upload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

pub const PASSWORD: &str = "canasta-2026";
const THINK: Duration = Duration::from_secs(1);
/// How much of the file a client reads and sends at a time.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Honouring,
    Naive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    /// 503 with Retry-After: the intended refusal.
    Refused,
    /// 429 with Retry-After.
    Limited,
    /// Another 4xx.
    Rejected,
    /// A 5xx other than 503.
    ServerError,
    /// No answer: a timeout, a reset, a refused connection.
    Unanswered,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the phase started, when the request was sent.
    pub at_s: f64,
    pub latency_s: f64,
    pub outcome: Outcome,
    pub status: u16,
    /// Body bytes of an accepted upload.
    pub bytes: u64,
    /// The `Retry-After` of a refusal, in seconds.
    pub retry_after_s: Option<u64>,
}

/// An upload a user set out to make, and how it ended.
#[derive(Debug, Default)]
pub struct Intents {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    /// Ended by a refusal a naive client does not retry, or by an error.
    pub given_up: AtomicU64,
    /// Still waiting to retry when the phase ended.
    pub cut_by_the_end: AtomicU64,
}

pub struct Phase {
    pub started: Instant,
    pub samples: Mutex<Vec<Sample>>,
    pub intents: Intents,
    /// Accepted uploads, for verification: (video id, owner's token).
    pub accepted: Mutex<Vec<(u64, String)>>,
}

impl Phase {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            samples: Mutex::new(Vec::new()),
            intents: Intents::default(),
            accepted: Mutex::new(Vec::new()),
        })
    }
}

/// The `Retry-After` of a response, in seconds.
fn retry_after(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The file every virtual user uploads, read from the page cache by `sendfile(2)`.
///
/// A client on another machine reads and copies its file on its own cores. Here the load
/// generator shares the node's two cores, so its uploads hand the kernel pages of the page
/// cache instead of copying the file into every socket from a buffer of its own: at full load
/// that copy alone was about 7 % of the machine, taken from the node being measured.
#[derive(Clone)]
pub struct Video {
    file: Arc<std::fs::File>,
    len: u64,
}

impl Video {
    pub fn open(path: &std::path::Path) -> Self {
        let file = std::fs::File::open(path).expect("input video");
        let len = file.metadata().expect("input video").len();
        Self {
            file: Arc::new(file),
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Far beyond any answer the node should give: a request this slow counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BOUNDARY: &str = "showcase-bench-boundary-7f3a9c";

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    /// Where uploads connect: each goes over a connection of its own, whose socket is given
    /// the send buffer (reqwest does not expose one) and sends the file with `sendfile(2)`.
    upload_address: std::net::SocketAddr,
    /// The send buffer of the upload sockets, in bytes as the kernel counts them.
    upload_send_buffer: Option<usize>,
    /// The longest `Retry-After` an honouring user waits; `None`: whatever it is told.
    pub retry_after_cap: Option<Duration>,
}

impl Client {
    /// `upload_send_buffer`: the send buffer of the upload sockets in bytes, as the kernel
    /// counts it; `None` leaves it to the kernel's autotuning (see `--client-send-buffer-kib`).
    pub fn new(
        base: String,
        upload_send_buffer: Option<usize>,
        retry_after_cap: Option<Duration>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build()
            .expect("client");
        let upload_address = base
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .expect("the node's base URL is http://<ip>:<port>");
        Self {
            http,
            base,
            upload_address,
            upload_send_buffer,
            retry_after_cap,
        }
    }

    pub fn address_of(user: usize) -> String {
        format!(
            "10.{}.{}.{}",
            (user >> 16) & 255,
            (user >> 8) & 255,
            (user & 255).max(1)
        )
    }

    /// Signs up one of the bench's users (not measured), waiting out refusals.
    pub async fn sign_up(&self, user: usize) -> Result<(), String> {
        for _ in 0..120 {
            let response = self
                .http
                .post(format!("{}/api/auth/signup", self.base))
                .header("x-forwarded-for", Self::address_of(user))
                .json(&json!({
                    "first_name": "Jugador", "last_name": format!("N{user}"),
                    "email": format!("user{user}@bench.example"),
                    "password1": PASSWORD, "password2": PASSWORD,
                    "city": "Bogotá", "country": "Colombia"
                }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match response.status().as_u16() {
                201 => return Ok(()),
                429 | 503 => tokio::time::sleep(Duration::from_millis(500)).await,
                status => return Err(format!("signup answered {status}")),
            }
        }
        Err("signup refused for a minute".into())
    }

    /// Logs in, waiting out refusals (`Retry-After` with jitter) until `give_up_at`.
    pub async fn login_patiently(
        &self,
        user: usize,
        give_up_at: Instant,
    ) -> Result<String, String> {
        loop {
            match self.login(user).await {
                Ok(token) => return Ok(token),
                Err((Some(retry_after), e)) => {
                    let wait = Duration::from_secs_f64(
                        retry_after as f64 * (1.0 + rand::thread_rng().gen_range(0.0..0.5)),
                    );
                    if Instant::now() + wait >= give_up_at {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
                Err((None, e)) => return Err(e),
            }
        }
    }

    /// One login; a refusal carries its `Retry-After`.
    pub async fn login(&self, user: usize) -> Result<String, (Option<u64>, String)> {
        let response = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .header("x-forwarded-for", Self::address_of(user))
            .json(&json!({"email": format!("user{user}@bench.example"), "password": PASSWORD}))
            .send()
            .await
            .map_err(|e| (None, e.to_string()))?;
        let status = response.status().as_u16();
        let retry_after =
            retry_after(response.headers()).filter(|_| status == 503 || status == 429);
        let body: Value = response.json().await.map_err(|e| (None, e.to_string()))?;
        match (status, body["access_token"].as_str()) {
            (200, Some(token)) => Ok(token.to_owned()),
            _ => Err((retry_after, format!("login answered {status}: {body}"))),
        }
    }

    /// One upload attempt: its sample (with the Retry-After when refused), and the video id
    /// when accepted.
    pub async fn upload(
        &self,
        user: usize,
        token: &str,
        video: &Video,
        phase: &Phase,
    ) -> (Sample, Option<u64>) {
        let sent = Instant::now();
        let at_s = sent.duration_since(phase.started).as_secs_f64();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.send_upload(user, token, video))
            .await
            .ok()
            .and_then(Result::ok);
        let (status, retry_after, id) = match answer {
            None => (0, None, None),
            Some((status, retry_after, body)) => (status, retry_after, body["video_id"].as_u64()),
        };
        let outcome = match status {
            0 => Outcome::Unanswered,
            201 => Outcome::Accepted,
            503 if retry_after.is_some() => Outcome::Refused,
            429 if retry_after.is_some() => Outcome::Limited,
            400..=499 => Outcome::Rejected,
            _ => Outcome::ServerError,
        };
        let sample = Sample {
            at_s,
            latency_s: sent.elapsed().as_secs_f64(),
            outcome,
            status,
            bytes: if outcome == Outcome::Accepted {
                video.len()
            } else {
                0
            },
            retry_after_s: retry_after
                .filter(|_| matches!(outcome, Outcome::Refused | Outcome::Limited)),
        };
        (sample, id.filter(|_| outcome == Outcome::Accepted))
    }

    /// The upload of `video` titled `title` by `user`, as a browser posts the form (the title,
    /// then the file): the request's head with the form up to the file's bytes, and the form's
    /// end, which follows them.
    fn upload_form(
        &self,
        user: usize,
        token: &str,
        title: &str,
        video: &Video,
    ) -> (String, String) {
        let form_head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n\
             {title}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; \
             name=\"video_file\"; filename=\"jugada.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
        );
        let form_tail = format!("\r\n--{BOUNDARY}--\r\n");
        let length = form_head.len() as u64 + video.len() + form_tail.len() as u64;
        let request_head = format!(
            "POST /api/videos/upload HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: {}\r\n\
             Authorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n{form_head}",
            self.upload_address,
            Self::address_of(user)
        );
        (request_head, form_tail)
    }

    /// Posts the upload form as a browser does (the title, then the file), and reads the whole
    /// answer: (status, Retry-After, JSON body). The answer is read while the form is sent, as
    /// the node may answer (a refusal) before it has read the body.
    async fn send_upload(
        &self,
        user: usize,
        token: &str,
        video: &Video,
    ) -> std::io::Result<(u16, Option<u64>, Value)> {
        let socket = if self.upload_address.is_ipv6() {
            tokio::net::TcpSocket::new_v6()?
        } else {
            tokio::net::TcpSocket::new_v4()?
        };
        if let Some(bytes) = self.upload_send_buffer {
            // Linux doubles what SO_SNDBUF is given, for its own bookkeeping.
            socket.set_send_buffer_size((bytes / 2) as u32)?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(self.upload_address).await?;
        let (request_head, form_tail) = self.upload_form(user, token, "Mi mejor jugada", video);
        let send = async {
            write_all(&stream, request_head.as_bytes()).await?;
            send_file(&stream, video).await?;
            write_all(&stream, form_tail.as_bytes()).await
        };
        let answer = read_response(&stream);
        tokio::pin!(send, answer);
        let mut sending = true;
        loop {
            tokio::select! {
                answer = &mut answer => return answer,
                // A node that answered early may stop reading; the answer is still read.
                _ = &mut send, if sending => sending = false,
            }
        }
    }
}

/// Uploads that hold every upload slot of the node while they last, so that everything else is
/// refused: the way to measure what refusals alone cost. Each sends its head, then trickles its
/// file fast enough for the node's minimum pace; dropped, they are cut off and the node
/// discards them.
pub struct SlotHolder {
    held: usize,
    trickles: tokio::task::JoinSet<()>,
}

impl SlotHolder {
    /// How many slots are held.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// What a slot holder sends per second: twice the node's default minimum pace.
const HOLDER_BYTES_PER_S: usize = 64 * 1024;

impl Client {
    /// Takes `slots` upload slots with uploads that trickle (as user `user`, from an address no
    /// virtual user has), trying until `give_up_at`.
    pub async fn hold_slots(
        &self,
        slots: usize,
        user: usize,
        token: &str,
        video: &Video,
        give_up_at: Instant,
    ) -> SlotHolder {
        let mut holder = SlotHolder {
            held: 0,
            trickles: tokio::task::JoinSet::new(),
        };
        while holder.held < slots && Instant::now() < give_up_at {
            match self.take_slot(user, token, video).await {
                Some(stream) => {
                    holder.held += 1;
                    holder.trickles.spawn(trickle(stream));
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        holder
    }

    /// One upload that is not answered at once (a slot was given): its connection.
    async fn take_slot(
        &self,
        user: usize,
        token: &str,
        video: &Video,
    ) -> Option<tokio::net::TcpStream> {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(self.upload_address)
            .await
            .ok()?;
        // The form's end never follows: the upload is cut off when it is let go.
        let (head, _) = self.upload_form(user, token, "Lenta", video);
        stream.write_all(head.as_bytes()).await.ok()?;
        // A refusal comes at once; a slot is silence.
        let mut first = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), stream.peek(&mut first)).await {
            Err(_) => Some(stream),
            Ok(_) => None,
        }
    }
}

/// Sends a held upload's body at [`HOLDER_BYTES_PER_S`], until it is dropped.
async fn trickle(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let piece = vec![0u8; HOLDER_BYTES_PER_S / 4];
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        if stream.write_all(&piece).await.is_err() {
            return;
        }
    }
}

async fn write_all(stream: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends the whole file with `sendfile(2)`, at most [`FILE_CHUNK_BYTES`] a call, as a client
/// streaming a file sends it in pieces.
async fn send_file(stream: &tokio::net::TcpStream, video: &Video) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut offset: libc::off_t = 0;
    let len = video.len() as libc::off_t;
    while offset < len {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let count = ((len - offset) as usize).min(FILE_CHUNK_BYTES);
            // SAFETY: both descriptors are open for the duration of the call and `offset` is a
            // valid pointer; sendfile with an offset leaves the shared file's position alone.
            let n = unsafe {
                libc::sendfile(
                    stream.as_raw_fd(),
                    video.file.as_raw_fd(),
                    &mut offset,
                    count,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body: (status, Retry-After, JSON body).
async fn read_response(
    stream: &tokio::net::TcpStream,
) -> std::io::Result<(u16, Option<u64>, Value)> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut received = Vec::with_capacity(1024);
    let mut piece = [0u8; 4096];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut piece) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => received.extend_from_slice(&piece[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = response
            .parse(&received)
            .map_err(|_| invalid("malformed response head"))?
        else {
            continue;
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let body_len = header("content-length").ok_or_else(|| invalid("no content-length"))?;
        if ((received.len() - head_len) as u64) < body_len {
            continue;
        }
        let status = response.code.ok_or_else(|| invalid("no status"))?;
        let body = &received[head_len..head_len + body_len as usize];
        // An answer whose body is not JSON is still an answer: its status is what counts.
        let json = serde_json::from_slice(body).unwrap_or(Value::Null);
        return Ok((status, header("retry-after"), json));
    }
}

/// One virtual user, signed in with `token`, from `start_at` to `stop_at`. Accepted uploads go
/// to `accepted`.
#[allow(clippy::too_many_arguments)]
pub async fn virtual_user(
    client: Client,
    user: usize,
    token: String,
    video: Video,
    mode: Mode,
    phase: Arc<Phase>,
    start_at: Instant,
    stop_at: Instant,
    accepted: Option<tokio::sync::mpsc::UnboundedSender<(u64, String)>>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let mut retrying = false;
    while Instant::now() < stop_at {
        if !retrying {
            phase.intents.started.fetch_add(1, Ordering::Relaxed);
        }
        let (sample, id) = client.upload(user, &token, &video, &phase).await;
        let (outcome, retry_after) = (sample.outcome, sample.retry_after_s);
        phase.samples.lock().unwrap().push(sample);
        let pause = match (outcome, mode) {
            (Outcome::Accepted, _) => {
                phase.intents.succeeded.fetch_add(1, Ordering::Relaxed);
                let id = id.expect("an accepted upload has an id");
                phase.accepted.lock().unwrap().push((id, token.clone()));
                if let Some(tx) = &accepted {
                    let _ = tx.send((id, token.clone()));
                }
                retrying = false;
                THINK
            }
            (Outcome::Refused | Outcome::Limited, Mode::Honouring) => {
                retrying = true;
                let told = Duration::from_secs(retry_after.unwrap_or(1));
                let base = client.retry_after_cap.map_or(told, |cap| told.min(cap));
                base.mul_f64(1.0 + rand::thread_rng().gen_range(0.0..0.5))
            }
            _ => {
                phase.intents.given_up.fetch_add(1, Ordering::Relaxed);
                retrying = false;
                THINK
            }
        };
        if Instant::now() + pause >= stop_at {
            if retrying {
                phase.intents.cut_by_the_end.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Checks each accepted upload (stored, its job queued) and deletes it, so the disk holds only
/// what is still being checked; returns (checked, deleted, problems).
pub async fn janitor(
    client: Client,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
) -> (u64, u64, Vec<String>) {
    let checked = Arc::new(AtomicU64::new(0));
    let deleted = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(Mutex::new(Vec::new()));
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((id, token)) = accepted.recv().await {
        let permit = limit.clone().acquire_owned().await.expect("open");
        let (client, checked, deleted, problems) = (
            client.clone(),
            checked.clone(),
            deleted.clone(),
            problems.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let detail = client
                .http
                .get(format!("{}/api/videos/{id}", client.base))
                .bearer_auth(&token)
                .send()
                .await;
            match detail {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if body["status"] == "uploaded" {
                        checked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("video {id}: unexpected state {body}"));
                    }
                }
                Ok(r) => problems.lock().unwrap().push(format!(
                    "video {id} acknowledged but answered {}",
                    r.status()
                )),
                Err(e) => problems.lock().unwrap().push(format!("video {id}: {e}")),
            }
            let deletion = client
                .http
                .delete(format!("{}/api/videos/{id}", client.base))
                .bearer_auth(&token)
                .send()
                .await;
            if matches!(deletion, Ok(r) if r.status() == 200) {
                deleted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let problems = problems.lock().unwrap().clone();
    (
        checked.load(Ordering::Relaxed),
        deleted.load(Ordering::Relaxed),
        problems,
    )
}

/// The queue as `/api/health/actors` reports it now, as a point of a trace started at `t0`.
pub async fn queue_point(client: &Client, t0: Instant) -> Option<QueuePoint> {
    let body: Value = client
        .http
        .get(format!("{}/api/health/actors", client.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let q = &body["queue"];
    Some(QueuePoint {
        t_s: t0.elapsed().as_secs_f64(),
        depth: q["depth"].as_u64()?,
        in_flight: q["in_flight"].as_u64()?,
    })
}

/// The queue as the node reported it at one moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct QueuePoint {
    pub t_s: f64,
    pub depth: u64,
    pub in_flight: u64,
}

impl QueuePoint {
    /// Jobs waiting or running.
    pub fn backlog(&self) -> u64 {
        self.depth + self.in_flight
    }
}
