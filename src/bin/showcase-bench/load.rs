//! Virtual users and what they saw.
//!
//! Each user logs in once (as a client of its own address, passed through the trusted-proxy
//! header), then uploads the same file in a loop with a think time, until its phase ends. An
//! *honouring* user that is refused (503 or 429) waits the `Retry-After` it was given, with up to
//! 50 % jitter, and tries the same upload again; a *naive* user never retries: it thinks for the
//! usual second and starts a new upload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::report::QueuePoint;

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

/// Far beyond any answer the node should give: a request this slow counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const BOUNDARY: &str = "showcase-bench-boundary-7f3a9c";

type UploadBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// Uploads go through a connector of their own, whose sockets can be given a send buffer
    /// (reqwest does not expose one).
    uploads: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        UploadBody,
    >,
    pub base: String,
}

impl Client {
    /// `upload_send_buffer`: the send buffer of the upload sockets in bytes, as the kernel
    /// counts it; `None` leaves it to the kernel's autotuning (see `--client-send-buffer-kib`).
    pub fn new(base: String, upload_send_buffer: Option<usize>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build()
            .expect("client");
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        // Linux doubles what SO_SNDBUF is given, for its own bookkeeping.
        connector.set_send_buffer_size(upload_send_buffer.map(|bytes| bytes / 2));
        let uploads =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(connector);
        Self {
            http,
            uploads,
            base,
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
        video: &Bytes,
        phase: &Phase,
    ) -> (Sample, Option<u64>) {
        let sent = Instant::now();
        let at_s = sent.duration_since(phase.started).as_secs_f64();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.send_upload(user, token, video))
            .await
            .ok()
            .flatten();
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
                video.len() as u64
            } else {
                0
            },
            retry_after_s: retry_after
                .filter(|_| matches!(outcome, Outcome::Refused | Outcome::Limited)),
        };
        (sample, id.filter(|_| outcome == Outcome::Accepted))
    }

    /// Posts the upload form as a browser does (the title, then the file), and reads the whole
    /// answer: (status, Retry-After, JSON body), or `None` when no answer came.
    async fn send_upload(
        &self,
        user: usize,
        token: &str,
        video: &Bytes,
    ) -> Option<(u16, Option<u64>, Value)> {
        use http_body_util::BodyExt;
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n\
             Mi mejor jugada\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; \
             name=\"video_file\"; filename=\"jugada.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let length = head.len() + video.len() + tail.len();
        let request = http::Request::post(format!("{}/api/videos/upload", self.base))
            .header("x-forwarded-for", Self::address_of(user))
            .header("authorization", format!("Bearer {token}"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header("content-length", length)
            .body(form_body(head, video.clone(), tail))
            .expect("request");
        let response = self.uploads.request(request).await.ok()?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, retry_after, serde_json::from_slice(&body).ok()?))
    }
}

/// The form's opening, the file in chunks, and its closing, as one streamed body.
fn form_body(head: String, video: Bytes, tail: String) -> UploadBody {
    use http_body_util::BodyExt;
    let frames = std::iter::once(Bytes::from(head))
        .chain(file_chunks(video))
        .chain(std::iter::once(Bytes::from(tail)))
        .map(|chunk| Ok(http_body::Frame::data(chunk)));
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// The video as a client streaming a file sends it: in chunks, here slices of one buffer so
/// the generator spends no time on a disk of its own. Handed over whole, each write of the
/// 18 MB buffer is megabytes long, which no browser or file-streaming client does.
fn file_chunks(video: Bytes) -> impl Iterator<Item = Bytes> + Send {
    (0..video.len())
        .step_by(FILE_CHUNK_BYTES)
        .map(move |at| video.slice(at..(at + FILE_CHUNK_BYTES).min(video.len())))
}

/// One virtual user from `start_at` to `stop_at`. Accepted uploads go to `accepted`.
#[allow(clippy::too_many_arguments)]
pub async fn virtual_user(
    client: Client,
    user: usize,
    video: Bytes,
    mode: Mode,
    phase: Arc<Phase>,
    start_at: Instant,
    stop_at: Instant,
    accepted: Option<tokio::sync::mpsc::UnboundedSender<(u64, String)>>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let token = match client.login_patiently(user, stop_at).await {
        Ok(token) => token,
        Err(e) => {
            eprintln!("user {user}: {e}");
            return;
        }
    };
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
                let base = retry_after.unwrap_or(1) as f64;
                Duration::from_secs_f64(base * (1.0 + rand::thread_rng().gen_range(0.0..0.5)))
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
