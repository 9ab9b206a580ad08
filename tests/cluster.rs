//! The platform as a fleet runs it, on this machine: PostgreSQL, S3 and SQS (moto), two api
//! nodes behind nginx (round robin, passive health) and two worker nodes, all of them the real
//! binary (`SHOWCASE_TEST_BIN`: the release build under `make cluster-test`). A few dozen
//! players sign up, upload, read rankings and vote through the balancer while an api node and
//! a worker (busy with a job) are SIGKILLed at random moments and restarted, and an api node
//! once more while the votes come in.
//!
//! At the end: every acknowledged signup logs in; every video is published exactly once (one
//! rendition, one poster, and the publication time its owner first saw); every acknowledged
//! vote is counted once; each ranking, read from either api node, equals the sums over its
//! players' videos; the bucket holds exactly the objects of the videos; no job is left in the
//! queue, the outbox or the dead letters; and every 5xx that reached a client was a request in
//! flight on a node at the moment it was killed.
//!
//! `CLUSTER_SEED` replays a run's random choices.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::aws::{self, ForProcess};
use common::moto::Moto;
use common::nginx::Nginx;
use common::process::ServerProcess;
use common::stored::Stored;
use common::Checked;
use common::{postgres, PASSWORD};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PLAYERS: usize = 30;
const CITIES: [&str; 3] = ["Bogotá", "Medellín", "Cali"];
const FIRST_NAMES: [&str; 6] = ["Ana", "Bruno", "Carla", "Diego", "Elena", "Felipe"];
/// Votes each player gives to others' videos.
const VOTES_EACH: usize = 8;
const MAX_RECEIVES: u32 = 5;
const ADMIN_TOKEN: &str = "cluster-admin-token-0123";
/// The uploaded file's size, and the pace a phone on a mobile network might send it at: each
/// upload takes about a second and a half, so that kills find uploads in flight.
const UPLOAD_BYTES: usize = 4 << 20;
const UPLOAD_CHUNK: usize = 128 << 10;
const UPLOAD_PAUSE: Duration = Duration::from_millis(40);
/// How long a client keeps trying one request through the balancer.
const PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Api,
    Worker,
}

/// One node of the fleet: its data dir and environment outlive its processes.
struct Member {
    name: String,
    role: Role,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    process: Option<ServerProcess>,
}

/// The four nodes and what they share.
struct Fleet {
    backends: ForProcess,
    database: String,
    members: Vec<Mutex<Member>>,
    /// The processes killed, kept for their logs.
    killed: Mutex<Vec<ServerProcess>>,
}

impl Fleet {
    fn new(backends: ForProcess, database: String) -> Self {
        let mut members = Vec::new();
        for (name, role) in [
            ("api-1", Role::Api),
            ("api-2", Role::Api),
            ("worker-1", Role::Worker),
            ("worker-2", Role::Worker),
        ] {
            let mut env: Vec<(String, String)> = [
                // Workers log each job's end (`showcase::events`): publications are counted.
                ("RUST_LOG", "warn,showcase::app=info,showcase::events=info"),
                ("SHOWCASE_ADMIN__TOKEN", ADMIN_TOKEN),
                ("SHOWCASE_UPLOAD__MIN_DURATION_S", "1"),
                ("SHOWCASE_SERVER__SHUTDOWN_GRACE_S", "5"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            env.push((
                "SHOWCASE_QUEUE__MAX_RECEIVES".into(),
                MAX_RECEIVES.to_string(),
            ));
            match role {
                Role::Api => {
                    env.push(("SHOWCASE_NODE__ROLE".into(), "api".into()));
                    // Room for every player's upload on one node: with one node down, the
                    // other must not refuse what the fleet accepted.
                    env.push(("SHOWCASE_UPLOAD__MAX_CONCURRENT".into(), "32".into()));
                    env.push((
                        "SHOWCASE_STORE__POSTGRES__MAX_CONNECTIONS".into(),
                        "16".into(),
                    ));
                    // A fixed address: the balancer finds the node there again after a restart.
                    env.push((
                        "SHOWCASE_SERVER__ADDR".into(),
                        format!("127.0.0.1:{}", free_port()),
                    ));
                }
                Role::Worker => {
                    env.extend(
                        [
                            ("SHOWCASE_NODE__ROLE", "worker"),
                            ("SHOWCASE_TRANSCODE__WORKERS", "1"),
                            // The job of a killed worker comes back soon.
                            ("SHOWCASE_QUEUE__VISIBILITY_TIMEOUT_S", "5"),
                        ]
                        .into_iter()
                        // A short rendition keeps the run about the fleet, not the encoder.
                        .chain(common::process::QUICK_TRANSCODE)
                        .map(|(k, v)| (k.to_string(), v.to_string())),
                    );
                }
            }
            members.push(Mutex::new(Member {
                name: name.into(),
                role,
                dir: tempfile::tempdir().unwrap(),
                env,
                process: None,
            }));
        }
        Self {
            backends,
            database,
            members,
            killed: Mutex::new(Vec::new()),
        }
    }

    /// Starts member `i` (blocks until it listens); its address.
    fn start(&self, i: usize) -> SocketAddr {
        let mut member = self.members[i].lock().unwrap();
        assert!(member.process.is_none(), "{} runs already", member.name);
        let env: Vec<(&str, &str)> = member
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let process = ServerProcess::start_in(
            member.dir.path(),
            &env,
            Some(self.backends.clone()),
            Some(self.database.clone()),
        );
        let addr = process.addr;
        member.process = Some(process);
        addr
    }

    /// SIGKILLs member `i`; its address, the moment of the signal and the moment the process
    /// was gone.
    fn kill(&self, i: usize) -> (SocketAddr, Instant, Instant) {
        let mut member = self.members[i].lock().unwrap();
        let mut process = member.process.take().expect("a running member");
        let addr = process.addr;
        let at = Instant::now();
        unsafe { libc::kill(process.pid(), libc::SIGKILL) };
        let _ = process.child.wait();
        let gone = Instant::now();
        self.killed.lock().unwrap().push(process);
        (addr, at, gone)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.members[i]
            .lock()
            .unwrap()
            .process
            .as_ref()
            .unwrap()
            .addr
    }

    fn name(&self, i: usize) -> String {
        self.members[i].lock().unwrap().name.clone()
    }

    /// How many times each video was published, from the job ends the workers logged (the
    /// killed ones included).
    fn publications(&self) -> BTreeMap<u64, usize> {
        let mut logs: Vec<String> = self
            .killed
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.log())
            .collect();
        for member in &self.members {
            logs.extend(member.lock().unwrap().process.as_ref().map(|p| p.log()));
        }
        let mut published = BTreeMap::new();
        for line in logs.iter().flat_map(|log| log.lines()) {
            if !(line.contains("job finished") && line.contains("outcome=\"published\"")) {
                continue;
            }
            let id = line
                .split("video_id=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .unwrap_or_else(|| panic!("a job end without its video: {line}"));
            *published.entry(id).or_default() += 1;
        }
        published
    }

    fn of_role(&self, role: Role) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].lock().unwrap().role == role)
            .collect()
    }
}

/// A free port below the kernel's range for outgoing connections, so that none of those takes
/// it while its node is down.
fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let first_ephemeral: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(10_000..first_ephemeral.max(10_001));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One request through the balancer, as its client saw it.
#[derive(Debug, Clone)]
struct Exchange {
    what: &'static str,
    sent: Instant,
    answered: Instant,
    /// `None`: no answer (the connection failed or was cut).
    status: Option<u16>,
    /// The nodes nginx sent it to (`X-Upstream`), when an answer came.
    upstream: String,
    /// A refusal: 503 with `Retry-After`, decided before any work.
    refusal: bool,
    body: String,
}

/// A kill of a node, as the test made it.
#[derive(Debug, Clone)]
struct Kill {
    name: String,
    role: Role,
    addr: SocketAddr,
    /// SIGKILL sent.
    at: Instant,
    /// The process reaped: until then its sockets may still take connections, and reset them.
    gone: Instant,
    restarted: Option<Instant>,
}

impl Kill {
    /// Whether `exchange` was in flight while the node was dying.
    fn in_flight(&self, exchange: &Exchange) -> bool {
        exchange.sent <= self.gone && self.at <= exchange.answered
    }
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    exchanges: Vec<Exchange>,
    kills: Vec<Kill>,
    /// Emails of the accounts whose signup was acknowledged (201, or "taken" after an attempt
    /// whose answer was lost).
    signups: Vec<String>,
    /// Acknowledged uploads: video → the player's index.
    uploads: BTreeMap<u64, usize>,
    /// The publication time each owner first saw.
    published_at: BTreeMap<u64, String>,
    /// Acknowledged votes: (voter, video).
    votes: BTreeSet<(usize, u64)>,
}

/// A definitive answer to a request: its status and body, and whether an earlier attempt got
/// no definitive answer (so that it may have taken effect).
struct Answer {
    status: StatusCode,
    body: Value,
    after_lost_attempt: bool,
}

impl Answer {
    /// Whether the request took effect: answered `done`, or refused with `already` (the
    /// detail of "this exists") after an attempt whose answer was lost, which must have been
    /// the one that did it.
    fn took_effect(&self, done: StatusCode, already: &str) -> bool {
        self.status == done
            || (self.status == StatusCode::BAD_REQUEST
                && self.after_lost_attempt
                && detail(&self.body) == already)
    }
}

/// A client of the balancer that keeps trying a request until it has a definitive answer,
/// honouring `Retry-After`, and writes every exchange in the ledger.
#[derive(Clone)]
struct Lb {
    http: reqwest::Client,
    base: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl Lb {
    fn note(&self, exchange: Exchange) {
        self.ledger.lock().unwrap().exchanges.push(exchange);
    }

    /// Logs in as `email` with the players' password.
    async fn login(&self, email: &str) -> Answer {
        self.call("login", |http, base| {
            http.post(format!("{base}/api/auth/login"))
                .json(&json!({"email": email, "password": PASSWORD}))
        })
        .await
    }

    async fn call(
        &self,
        what: &'static str,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Answer {
        let deadline = Instant::now() + PATIENCE;
        let mut after_lost_attempt = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "{what}: no answer in {PATIENCE:?}"
            );
            let sent = Instant::now();
            let answer = match make(&self.http, &self.base).checked().await {
                Ok(response) => {
                    let status = response.status();
                    let header = |name: &str| {
                        response
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let upstream = header("x-upstream").unwrap_or_default();
                    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok());
                    response
                        .text()
                        .await
                        .map(|text| (status, upstream, retry_after, text))
                }
                Err(e) => Err(e),
            };
            let answered = Instant::now();
            let exchange = |status: Option<u16>, upstream: &str, body: &str| Exchange {
                what,
                sent,
                answered,
                status,
                upstream: upstream.to_owned(),
                refusal: false,
                body: body.chars().take(300).collect(),
            };
            let Ok((status, upstream, retry_after, text)) = answer else {
                self.note(exchange(None, "", ""));
                after_lost_attempt = true;
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            self.note(Exchange {
                refusal: status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some(),
                ..exchange(Some(status.as_u16()), &upstream, &text)
            });
            if status.is_server_error() {
                // A refusal with `Retry-After` is decided before any work; anything else may
                // have been done, or not.
                if retry_after.is_none() {
                    after_lost_attempt = true;
                }
                let pause = retry_after.map_or(Duration::from_millis(300), |s| {
                    Duration::from_secs(s.clamp(1, 2))
                });
                tokio::time::sleep(pause).await;
                continue;
            }
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Answer {
                status,
                body,
                after_lost_attempt,
            };
        }
    }
}

/// A player of the run.
#[derive(Debug, Clone)]
struct Player {
    index: usize,
    username: String,
    token: String,
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

/// The upload form of the contract around `video`, its bytes sent at [`UPLOAD_CHUNK`] per
/// [`UPLOAD_PAUSE`].
fn paced_upload_form(video: Arc<Vec<u8>>, title: &str) -> reqwest::multipart::Form {
    let len = video.len();
    let chunks = futures_util::stream::unfold(0, move |at| {
        let video = video.clone();
        async move {
            if at >= len {
                return None;
            }
            tokio::time::sleep(UPLOAD_PAUSE).await;
            let end = (at + UPLOAD_CHUNK).min(len);
            Some((Ok::<_, std::io::Error>(video[at..end].to_vec()), end))
        }
    });
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(chunks),
        len as u64,
    )
    .file_name("jugada.mp4")
    .mime_str("video/mp4")
    .unwrap();
    reqwest::multipart::Form::new()
        .text("title", title.to_owned())
        .part("video_file", part)
}

/// A valid clip of [`UPLOAD_BYTES`]: a short 1080p MP4 followed by a top-level `free` box.
fn upload_clip() -> Vec<u8> {
    let mut bytes = std::fs::read(common::generate_mp4(
        "cluster-1920x1080-2s.mp4",
        1920,
        1080,
        2,
    ))
    .unwrap();
    let pad = UPLOAD_BYTES - bytes.len();
    bytes.extend_from_slice(&(pad as u32).to_be_bytes());
    bytes.extend_from_slice(b"free");
    bytes.resize(UPLOAD_BYTES, 0);
    bytes
}

/// Signs up, logs in, uploads one or two videos and reads its city's ranking.
async fn join_and_upload(lb: Lb, index: usize, clip: Arc<Vec<u8>>, seed: u64) -> Player {
    let mut rng = StdRng::seed_from_u64(seed);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = format!("Cancha {index}");
    let city = CITIES[index % CITIES.len()];
    let email = format!("jugador{index}@example.com");
    let form = json!({
        "first_name": first, "last_name": last, "email": email,
        "password1": PASSWORD, "password2": PASSWORD, "city": city, "country": "Colombia",
    });
    let signup = lb
        .call("signup", |http, base| {
            http.post(format!("{base}/api/auth/signup")).json(&form)
        })
        .await;
    assert!(
        signup.took_effect(StatusCode::CREATED, "El email ya está registrado."),
        "signup of {email}: {} {}",
        signup.status,
        signup.body
    );
    lb.ledger.lock().unwrap().signups.push(email.clone());
    let login = lb.login(&email).await;
    assert_eq!(
        login.status,
        StatusCode::OK,
        "login of {email}: {}",
        login.body
    );
    let token = login.body["access_token"].as_str().unwrap().to_owned();
    let uploads = if index % 3 == 0 { 2 } else { 1 };
    for n in 0..uploads {
        let title = format!("Jugada {n} de {first}");
        let upload = lb
            .call("upload", |http, base| {
                http.post(format!("{base}/api/videos/upload"))
                    .bearer_auth(&token)
                    .multipart(paced_upload_form(clip.clone(), &title))
            })
            .await;
        assert_eq!(
            upload.status,
            StatusCode::CREATED,
            "upload of {email}: {}",
            upload.body
        );
        let id = upload.body["video_id"].as_u64().unwrap();
        lb.ledger.lock().unwrap().uploads.insert(id, index);
        let ranking = lb
            .call("ranking", |http, base| {
                http.get(format!("{base}/api/public/rankings"))
                    .query(&[("city", city)])
            })
            .await;
        assert_eq!(ranking.status, StatusCode::OK, "{}", ranking.body);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..700))).await;
    }
    Player {
        index,
        username: format!("{first} {last}"),
        token,
    }
}

/// Waits until the player's acknowledged videos are published; notes when each was.
async fn await_publication(lb: Lb, player: Player) {
    let videos: Vec<u64> = {
        let ledger = lb.ledger.lock().unwrap();
        let mine = ledger
            .uploads
            .iter()
            .filter(|(_, owner)| **owner == player.index)
            .map(|(id, _)| *id)
            .collect();
        mine
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    for id in videos {
        loop {
            let detail = lb
                .call("video", |http, base| {
                    http.get(format!("{base}/api/videos/{id}"))
                        .bearer_auth(&player.token)
                })
                .await;
            assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
            match detail.body["status"].as_str() {
                Some("processed") => {
                    let at = detail.body["processed_at"].as_str().unwrap().to_owned();
                    lb.ledger.lock().unwrap().published_at.insert(id, at);
                    break;
                }
                Some("failed") => panic!("video {id} failed: {}", detail.body),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "video {id} was not published: {}",
                detail.body
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Votes for a few of the other players' published videos.
async fn vote(lb: Lb, player: Player, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let listed = lb
        .call("public videos", |http, base| {
            http.get(format!("{base}/api/public/videos"))
                .query(&[("limit", "100")])
        })
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let mut ballot: Vec<u64> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["owner_name"].as_str() != Some(player.username.as_str()))
        .map(|v| v["video_id"].as_u64().unwrap())
        .collect();
    ballot.shuffle(&mut rng);
    for id in ballot.into_iter().take(VOTES_EACH) {
        let answer = lb
            .call("vote", |http, base| {
                http.post(format!("{base}/api/public/videos/{id}/vote"))
                    .bearer_auth(&player.token)
            })
            .await;
        assert!(
            answer.took_effect(StatusCode::OK, "Ya has votado por este video."),
            "a first vote for {id}: {} {}",
            answer.status,
            answer.body
        );
        lb.ledger.lock().unwrap().votes.insert((player.index, id));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        if rng.gen_bool(0.5) {
            let ranking = lb
                .call("ranking", |http, base| {
                    http.get(format!("{base}/api/public/rankings"))
                })
                .await;
            assert_eq!(ranking.status, StatusCode::OK, "{}", ranking.body);
        }
    }
}

/// Kills api node or worker `i` and restarts it `down` later.
async fn kill_and_restart(
    fleet: &Arc<Fleet>,
    ledger: &Arc<Mutex<Ledger>>,
    i: usize,
    down: Duration,
) {
    let (addr, at, gone) = {
        let fleet = fleet.clone();
        tokio::task::spawn_blocking(move || fleet.kill(i))
            .await
            .unwrap()
    };
    let (name, role) = {
        let member = fleet.members[i].lock().unwrap();
        (member.name.clone(), member.role)
    };
    eprintln!("killed {name} ({addr}) at {:?}", at.elapsed());
    let kill = ledger.lock().unwrap().kills.len();
    ledger.lock().unwrap().kills.push(Kill {
        name: name.clone(),
        role,
        addr,
        at,
        gone,
        restarted: None,
    });
    tokio::time::sleep(down).await;
    let fleet = fleet.clone();
    let again = tokio::task::spawn_blocking(move || fleet.start(i))
        .await
        .unwrap();
    if role == Role::Api {
        assert_eq!(again, addr, "{name} listens where the balancer finds it");
    }
    ledger.lock().unwrap().kills[kill].restarted = Some(Instant::now());
    eprintln!("restarted {name}");
}

/// Waits (bounded) until worker `i` reports a job in its transcoder.
async fn busy(http: &reqwest::Client, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(response) = http
            .get(format!("http://{addr}/api/health/actors"))
            .checked()
            .await
        {
            let report: Value = response.json().await.unwrap_or_default();
            let working = report["actors"].as_array().is_some_and(|actors| {
                actors
                    .iter()
                    .any(|a| a["name"] == "transcoder" && a["in_flight"].as_u64() > Some(0))
            });
            if working {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker at {addr} never had a job");
}

/// The counts of SQS queue `url`: visible, in flight and delayed messages.
async fn sqs_counts(endpoint: &str, url: &str) -> [u64; 3] {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let sqs = aws::sqs_client(endpoint).await;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
        A::ApproximateNumberOfMessagesDelayed,
    ]
    .map(|name| attributes.get(&name).map_or(0, |v| v.parse().unwrap()))
}

/// A ranking as (username, city, votes), read from the node at `addr`; checked to be in
/// order with continuous positions.
async fn ranking_at(
    http: &reqwest::Client,
    addr: SocketAddr,
    city: Option<&str>,
) -> Vec<(String, String, u64)> {
    let mut query = vec![("limit", "100")];
    if let Some(city) = city {
        query.push(("city", city));
    }
    let response = http
        .get(format!("http://{addr}/api/public/rankings"))
        .query(&query)
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rows: Vec<Value> = response.json().await.unwrap();
    let mut last = u64::MAX;
    rows.iter()
        .enumerate()
        .map(|(n, row)| {
            assert_eq!(row["position"].as_u64(), Some(n as u64 + 1), "{row}");
            let votes = row["votes"].as_u64().unwrap();
            assert!(votes <= last, "ranking out of order at {row}");
            last = votes;
            (
                row["username"].as_str().unwrap().to_owned(),
                row["city"].as_str().unwrap().to_owned(),
                votes,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the cluster run of `make cluster-test`: four nodes of the release binary and nginx"]
async fn a_fleet_behind_a_balancer_survives_losing_nodes() {
    let seed = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!(
        "cluster seed {seed} (CLUSTER_SEED replays it), binary {}",
        common::process::executable().display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // The platform's shared parts, then its four nodes and the balancer.
    common::moto::test_credentials();
    let moto = Moto::start_tied_to_this_thread();
    let made = aws::provision(&moto.endpoint, MAX_RECEIVES).await;
    let backends = ForProcess {
        endpoint: moto.endpoint.clone(),
        prefix: "cluster/".into(),
        made,
    };
    let database = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap();
    let fleet = Arc::new(Fleet::new(backends.clone(), database.clone()));
    let addrs = {
        let fleet = fleet.clone();
        tokio::task::spawn_blocking(move || (0..4).map(|i| fleet.start(i)).collect::<Vec<_>>())
            .await
            .unwrap()
    };
    let apis = fleet.of_role(Role::Api);
    let workers = fleet.of_role(Role::Worker);
    let api_addrs: Vec<SocketAddr> = apis.iter().map(|i| addrs[*i]).collect();
    let nginx = Nginx::start(&api_addrs);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let lb = Lb {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base: nginx.url(""),
        ledger: ledger.clone(),
    };
    let clip = Arc::new(upload_clip());
    eprintln!("fleet up in {:?}", started.elapsed());

    // Signups and uploads, while an api node dies and comes back, and a worker dies in the
    // middle of a job and comes back.
    let api_victim = *apis.choose(&mut rng).unwrap();
    let worker_victim = *workers.choose(&mut rng).unwrap();
    let api_chaos = {
        let (fleet, ledger) = (fleet.clone(), ledger.clone());
        let (after, down) = (rng.gen_range(0..1000), rng.gen_range(1000..3000));
        tokio::spawn(async move {
            // Once uploads flow.
            while ledger.lock().unwrap().uploads.len() < 5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(after)).await;
            kill_and_restart(&fleet, &ledger, api_victim, Duration::from_millis(down)).await;
        })
    };
    let worker_chaos = {
        let (fleet, ledger, http) = (fleet.clone(), ledger.clone(), lb.http.clone());
        let addr = fleet.addr(worker_victim);
        // Soon enough after it reports a job that the job is still running.
        let (after, down) = (rng.gen_range(0..150), rng.gen_range(1000..3000));
        tokio::spawn(async move {
            busy(&http, addr).await;
            tokio::time::sleep(Duration::from_millis(after)).await;
            kill_and_restart(&fleet, &ledger, worker_victim, Duration::from_millis(down)).await;
        })
    };
    let joining: Vec<_> = (0..PLAYERS)
        .map(|i| tokio::spawn(join_and_upload(lb.clone(), i, clip.clone(), rng.gen())))
        .collect();
    let mut players = Vec::new();
    for task in joining {
        players.push(task.await.unwrap());
    }
    eprintln!(
        "{} players joined and uploaded at {:?}",
        players.len(),
        started.elapsed()
    );
    let publishing: Vec<_> = players
        .iter()
        .map(|p| tokio::spawn(await_publication(lb.clone(), p.clone())))
        .collect();
    for task in publishing {
        task.await.unwrap();
    }
    api_chaos.await.unwrap();
    worker_chaos.await.unwrap();
    eprintln!("published at {:?}", started.elapsed());

    // Votes, while an api node dies once more.
    let vote_chaos = {
        let (fleet, ledger) = (fleet.clone(), ledger.clone());
        let victim = *apis.choose(&mut rng).unwrap();
        let (after, down) = (rng.gen_range(0..300), rng.gen_range(1000..3000));
        tokio::spawn(async move {
            // Once votes flow.
            while ledger.lock().unwrap().votes.len() < 60 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(after)).await;
            kill_and_restart(&fleet, &ledger, victim, Duration::from_millis(down)).await;
        })
    };
    let voting: Vec<_> = players
        .iter()
        .map(|p| tokio::spawn(vote(lb.clone(), p.clone(), rng.gen())))
        .collect();
    for task in voting {
        task.await.unwrap();
    }
    vote_chaos.await.unwrap();
    eprintln!("voted at {:?}", started.elapsed());

    // Players keep reading their videos for a while: the balancer takes the restarted node
    // back once its failure is older than `fail_timeout`.
    let reading: Vec<_> = players
        .iter()
        .map(|p| {
            let (lb, player) = (lb.clone(), p.clone());
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(common::nginx::FAIL_TIMEOUT_S + 2);
                while Instant::now() < until {
                    let mine = lb
                        .call("own videos", |http, base| {
                            http.get(format!("{base}/api/videos"))
                                .bearer_auth(&player.token)
                        })
                        .await;
                    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        })
        .collect();
    for task in reading {
        task.await.unwrap();
    }

    // Every acknowledged signup logs in.
    let signups = ledger.lock().unwrap().signups.clone();
    for email in &signups {
        let login = lb.login(email).await;
        assert_eq!(login.status, StatusCode::OK, "{email}: {}", login.body);
    }

    // Every video in the records is published, the acknowledged ones among them, each once.
    let stored = Stored {
        data_dir: fleet.members[0].lock().unwrap().dir.path().to_path_buf(),
        remote: Some(backends.remote()),
        postgres: Some(database.clone()),
    };
    let (store, outbox) = stored.records().await;
    let videos = store.export_videos(0, 10_000).await.unwrap();
    let users = store.export_users(0, 10_000).await.unwrap();
    let (uploads, published_at, votes) = {
        let ledger = ledger.lock().unwrap();
        (
            ledger.uploads.clone(),
            ledger.published_at.clone(),
            ledger.votes.clone(),
        )
    };
    let ids: BTreeSet<u64> = videos.iter().map(|v| v.id).collect();
    for id in uploads.keys() {
        assert!(ids.contains(id), "acknowledged video {id} has no record");
    }
    for video in &videos {
        assert_eq!(
            video.status,
            showcase::domain::VideoStatus::Processed,
            "video {} ({:?})",
            video.id,
            video.error
        );
        if let Some(first_seen) = published_at.get(&video.id) {
            let at = showcase::domain::format_ts(video.processed_at.unwrap());
            assert_eq!(&at, first_seen, "video {} was published again", video.id);
        }
    }
    let unacknowledged = videos.len() - uploads.len();

    // Every acknowledged vote is counted once.
    let mut expected_votes: BTreeMap<u64, u64> = ids.iter().map(|id| (*id, 0)).collect();
    for (_, video) in &votes {
        *expected_votes
            .get_mut(video)
            .expect("a vote for a recorded video") += 1;
    }
    for video in &videos {
        assert_eq!(
            video.votes, expected_votes[&video.id],
            "votes of video {}",
            video.id
        );
    }

    // Each ranking, read from either api node, is the sums over the players' videos.
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for video in &videos {
        let owner = users.iter().find(|u| u.id == video.owner_id).unwrap();
        *expected
            .entry((
                format!("{} {}", owner.first_name, owner.last_name),
                owner.city.clone(),
            ))
            .or_default() += expected_votes[&video.id];
    }
    let http = lb.http.clone();
    for i in &apis {
        let addr = fleet.addr(*i);
        for city in [None, Some("bogota"), Some("MEDELLÍN"), Some("Cali")] {
            let read = ranking_at(&http, addr, city).await;
            let want: BTreeMap<(String, String), u64> = expected
                .iter()
                .filter(|((_, c), _)| city.is_none_or(|wanted| fold(c) == fold(wanted)))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let got: BTreeMap<(String, String), u64> =
                read.into_iter().map(|(u, c, v)| ((u, c), v)).collect();
            assert_eq!(got, want, "ranking {city:?} on {}", fleet.name(*i));
        }
    }

    // No job is left: not in the outbox, the queue or the dead letters.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outboxed = outbox.stats().await.unwrap();
        let queued = sqs_counts(&backends.endpoint, &backends.made.queue_url).await;
        let dead = sqs_counts(&backends.endpoint, &backends.made.dead_letter_queue_url).await;
        let left = (
            outboxed.depth + outboxed.in_flight + outboxed.dead,
            queued,
            dead,
        );
        if left == (0, [0; 3], [0; 3]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs left (outbox, queue, dead letters): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The bucket holds exactly the videos' objects: orphans of killed uploads are swept.
    let want_keys: BTreeSet<String> = ids
        .iter()
        .flat_map(|id| {
            [
                format!("originals/{id}.mp4"),
                format!("processed/{id}.mp4"),
                format!("posters/{id}.jpg"),
            ]
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut orphans_seen = BTreeSet::new();
    loop {
        let keys: BTreeSet<String> = {
            let stored = stored.clone();
            tokio::task::spawn_blocking(move || stored.keys(""))
                .await
                .unwrap()
        }
        .into_iter()
        .collect();
        let missing: Vec<_> = want_keys.difference(&keys).collect();
        assert!(missing.is_empty(), "missing objects: {missing:?}");
        let orphans: Vec<String> = keys.difference(&want_keys).cloned().collect();
        if orphans.is_empty() {
            break;
        }
        orphans_seen.extend(orphans.iter().cloned());
        assert!(Instant::now() < deadline, "orphan objects: {orphans:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Multipart uploads that a killed node had begun are not objects; nothing of the node can
    // abort them once it is dead (the bucket's lifecycle rule does, on AWS). Counted.
    let unfinished = aws::s3_client(&backends.endpoint)
        .await
        .list_multipart_uploads()
        .bucket(aws::BUCKET)
        .prefix(&backends.prefix)
        .send()
        .await
        .unwrap()
        .uploads()
        .len();

    // Every 5xx, or answer lost, was a request in flight on a node as it was killed, or a
    // refusal (503 with `Retry-After`, before any work) of the node left alone; in all, no more
    // than the requests the kills cut. And each restarted api node served again.
    let (exchanges, kills) = {
        let ledger = ledger.lock().unwrap();
        (ledger.exchanges.clone(), ledger.kills.clone())
    };
    let api_kills: Vec<&Kill> = kills.iter().filter(|k| k.role == Role::Api).collect();
    let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut refused = 0;
    for e in &exchanges {
        let in_flight_at = |k: &&&Kill| k.in_flight(e);
        let server_error = e.status.is_none_or(|s| s >= 500);
        if !server_error {
            continue;
        }
        *failed.entry(e.what).or_default() += 1;
        if e.refusal {
            assert!(
                e.body.contains("\"detail\""),
                "a refusal without detail: {e:?}"
            );
            refused += 1;
            continue;
        }
        let explained = api_kills
            .iter()
            .filter(in_flight_at)
            .any(|k| e.status.is_none() || e.upstream.contains(&k.addr.to_string()));
        assert!(
            explained,
            "a {:?} that no kill explains, for {} sent to {}: {}\nkills: {kills:?}\nnginx: {}",
            e.status,
            e.what,
            e.upstream,
            e.body,
            nginx.error_log()
        );
    }
    // The requests each api kill cut: in flight on the node as it died.
    let cut: Vec<usize> = api_kills
        .iter()
        .map(|k| {
            exchanges
                .iter()
                .filter(|e| k.in_flight(e))
                .filter(|e| e.status.is_none() || e.upstream.contains(&k.addr.to_string()))
                .count()
        })
        .collect();
    assert!(
        cut[0] > 0,
        "the kill during the uploads cut no request: the run proves nothing"
    );
    let failures: usize = failed.values().sum();
    assert!(
        failures <= cut.iter().sum(),
        "{failures} 5xx or lost answers ({refused} refusals) for {cut:?} requests cut"
    );

    // Each video was published by one worker, once: a job delivered again (the killed worker's)
    // finds its video published and skips it. A publication by the killed worker may have
    // gone unlogged.
    let publications = fleet.publications();
    for (video, times) in &publications {
        assert_eq!(*times, 1, "video {video} was published {times} times");
        assert!(
            ids.contains(video),
            "a publication of an unknown video {video}"
        );
    }
    assert!(
        publications.len() + 1 >= ids.len(),
        "{} publications logged for {} videos",
        publications.len(),
        ids.len()
    );
    for k in &api_kills {
        let back = k.restarted.unwrap();
        let served = exchanges
            .iter()
            .filter(|e| {
                e.sent > back
                    && e.upstream.ends_with(&k.addr.to_string())
                    && e.status.is_some_and(|s| s < 500)
            })
            .count();
        assert!(served > 0, "{} served nothing after its restart", k.name);
    }

    eprintln!(
        "cluster run ({:?}): {} players, {} signups, {} acknowledged uploads (+{} whose answer \
         was lost), {} votes, {} requests through the balancer; kills: {}; requests in flight \
         on a killed api node: {:?}, 5xx or lost answers: {:?} ({} of them refusals), \
         publications logged: {}, orphan objects swept: {}, multipart uploads left unfinished: \
         {}",
        started.elapsed(),
        players.len(),
        signups.len(),
        uploads.len(),
        unacknowledged,
        votes.len(),
        exchanges.len(),
        kills
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cut,
        failed,
        refused,
        publications.len(),
        orphans_seen.len(),
        unfinished,
    );
}

/// Case and accents folded, as the rankings' city filter compares.
fn fold(city: &str) -> String {
    city.to_lowercase()
        .chars()
        .map(|c| match c {
            'á' => 'a',
            'é' => 'e',
            'í' => 'i',
            'ó' => 'o',
            'ú' => 'u',
            other => other,
        })
        .collect()
}
