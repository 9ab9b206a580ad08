//! The crash-recovery drill: rounds of concurrent uploads, signups and votes against the real
//! binary, a SIGKILL at a random moment of each round, and a restart on the same data dir.
//!
//! After every restart: the store opened, every signup, upload and vote acknowledged before the
//! kill is there, vote totals and rankings agree with what was acknowledged and attempted, and the
//! temp directory holds nothing but the running job. After the last round the node runs
//! undisturbed until the queue is empty: every video is then published or failed (its job dead-
//! lettered), the media directory holds exactly the files those states call for, and SIGTERM
//! leaves no temp file.
//!
//! `CHAOS_CYCLES` sets the number of rounds (3 by default; `make chaos` runs 50 on a release
//! build) and `CHAOS_SEED` replays a run's random choices.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::{clip, Client, Clip, PASSWORD};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

const ADMIN_TOKEN: &str = "chaos-admin-token-0123";
const OWNERS: [(&str, &str, &str); 2] = [("Ana", "Gómez", "Cali"), ("Bruno", "Díaz", "Bogotá")];
/// Uploads per uploader and round: bounds the processing left for the end.
const UPLOADS_PER_ROUND: usize = 3;
const VOTERS: usize = 3;

/// A short rendition keeps the drill about recovery, not about transcoding speed.
fn server_env() -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("RUST_LOG", "warn,showcase::app=info"),
        ("SHOWCASE_ADMIN__TOKEN", ADMIN_TOKEN),
        ("SHOWCASE_TRANSCODE__WORKERS", "1"),
        // Jobs in flight at the kill come back soon.
        ("SHOWCASE_QUEUE__VISIBILITY_TIMEOUT_S", "3"),
        ("SHOWCASE_SERVER__SHUTDOWN_GRACE_S", "5"),
    ];
    env.extend(common::process::QUICK_TRANSCODE);
    env
}

/// What the clients sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// Per owner: uploads answered 201.
    uploads_acked: Vec<BTreeSet<u64>>,
    /// Per owner: uploads sent (some may have been stored although their answer was lost).
    uploads_sent: Vec<u64>,
    /// Emails whose signup was answered 201.
    fans: Vec<String>,
    /// (fan email, video) pairs answered 200.
    votes_acked: Vec<(String, u64)>,
    /// Per video: votes sent.
    votes_sent: HashMap<u64, u64>,
}

struct Drill {
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    owner_tokens: Vec<String>,
    /// Videos published before the rounds: the ones the fans vote for.
    ballot: Vec<u64>,
    fan_counter: Arc<AtomicU64>,
    /// Tokens of the fans whose signup has been verified.
    fan_tokens: HashMap<String, String>,
    /// How much of the ledger has been verified after a restart.
    fans_verified: usize,
    votes_verified: usize,
}

/// Uploads the ballot clip; the new video's id when it was acknowledged.
async fn upload(node: &Client, token: &str, video: &[u8]) -> reqwest::Result<Option<u64>> {
    let (status, body) = node.try_upload(token, video.to_vec(), "Jugada").await?;
    Ok((status == StatusCode::CREATED)
        .then(|| body["video_id"].as_u64())
        .flatten())
}

/// One uploader: a few uploads spread over the round, so that kills land before, during and
/// after them.
async fn uploader(
    node: Client,
    owner: usize,
    token: String,
    video: Arc<Vec<u8>>,
    ledger: Arc<Mutex<Ledger>>,
) {
    for _ in 0..UPLOADS_PER_ROUND {
        ledger.lock().unwrap().uploads_sent[owner] += 1;
        match upload(&node, &token, &video).await {
            Ok(Some(id)) => {
                ledger.lock().unwrap().uploads_acked[owner].insert(id);
            }
            Ok(None) => {}
            Err(_) => return,
        }
        let pause = rand::thread_rng().gen_range(100..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One voter: new fans sign up, log in and vote for every video of the ballot.
async fn voter(
    node: Client,
    ballot: Vec<u64>,
    seed: u64,
    counter: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let email = format!("fan{}@example.com", counter.fetch_add(1, Ordering::Relaxed));
        match node.try_signup("Fan", "Hincha", &email, "Medellín").await {
            Ok((StatusCode::CREATED, _)) => ledger.lock().unwrap().fans.push(email.clone()),
            Ok((other, body)) => panic!("signup of {email} answered {other}: {body}"),
            Err(_) => return,
        }
        let token = match node.try_login(&email, PASSWORD).await {
            Ok((StatusCode::OK, body)) => body["access_token"].as_str().unwrap().to_owned(),
            Ok((other, body)) => panic!("login of {email} answered {other}: {body}"),
            Err(_) => return,
        };
        let mut order = ballot.clone();
        order.shuffle(&mut rng);
        for video in order {
            *ledger.lock().unwrap().votes_sent.entry(video).or_default() += 1;
            match node.try_vote(&token, video).await {
                Ok((StatusCode::OK, _)) => ledger
                    .lock()
                    .unwrap()
                    .votes_acked
                    .push((email.clone(), video)),
                Ok((other, body)) => panic!("a first vote answered {other}: {body}"),
                Err(_) => return,
            }
        }
    }
}

impl Drill {
    /// Owners sign up, and the ballot's videos are uploaded and published.
    async fn prepare(server: &ServerProcess, video: &[u8]) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let node = Client {
            http: http.clone(),
            base: server.url(""),
        };
        let mut owner_tokens = Vec::new();
        for (i, (first, last, city)) in OWNERS.iter().enumerate() {
            let email = format!("owner{i}@example.com");
            let (status, body) = node.signup(first, last, &email, city).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let (status, body) = node.login(&email, PASSWORD).await;
            assert_eq!(status, StatusCode::OK);
            owner_tokens.push(body["access_token"].as_str().unwrap().to_owned());
        }
        let mut ledger = Ledger {
            uploads_acked: vec![BTreeSet::new(); OWNERS.len()],
            uploads_sent: vec![0; OWNERS.len()],
            ..Ledger::default()
        };
        let mut ballot = Vec::new();
        for owner in [0, 0, 1] {
            let id = upload(&node, &owner_tokens[owner], video)
                .await
                .unwrap()
                .expect("201");
            ledger.uploads_sent[owner] += 1;
            ledger.uploads_acked[owner].insert(id);
            ballot.push((owner, id));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (owner, id) in &ballot {
            loop {
                let (_, detail) = node
                    .get(&format!("/api/videos/{id}"), Some(&owner_tokens[*owner]))
                    .await;
                match detail["status"].as_str() {
                    Some("processed") => break,
                    Some("failed") => panic!("a ballot video failed: {detail}"),
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "the ballot was not published: {detail}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Self {
            http,
            ledger: Arc::new(Mutex::new(ledger)),
            owner_tokens,
            ballot: ballot.into_iter().map(|(_, id)| id).collect(),
            fan_counter: Arc::new(AtomicU64::new(0)),
            fan_tokens: HashMap::new(),
            fans_verified: 0,
            votes_verified: 0,
        }
    }

    /// Load until `kill_after`, then SIGKILL.
    async fn round(
        &self,
        server: ServerProcess,
        video: &Arc<Vec<u8>>,
        kill_after: Duration,
        seed: u64,
    ) {
        let node = Client {
            http: self.http.clone(),
            base: server.url(""),
        };
        let mut tasks = Vec::new();
        for (owner, token) in self.owner_tokens.iter().enumerate() {
            tasks.push(tokio::spawn(uploader(
                node.clone(),
                owner,
                token.clone(),
                video.clone(),
                self.ledger.clone(),
            )));
        }
        for v in 0..VOTERS {
            tasks.push(tokio::spawn(voter(
                node.clone(),
                self.ballot.clone(),
                seed ^ v as u64,
                self.fan_counter.clone(),
                self.ledger.clone(),
            )));
        }
        tokio::time::sleep(kill_after).await;
        server.kill9();
        for task in tasks {
            task.abort();
            if let Err(e) = task.await {
                assert!(e.is_cancelled(), "a client task failed: {e}");
            }
        }
    }

    /// Everything acknowledged so far is there; what was only attempted may or may not be.
    async fn verify(&mut self, server: &ServerProcess, everything: bool) {
        let node = Client {
            http: self.http.clone(),
            base: server.url(""),
        };
        let (fans, votes, uploads_acked, uploads_sent, votes_sent) = {
            let ledger = self.ledger.lock().unwrap();
            (
                ledger.fans.clone(),
                ledger.votes_acked.clone(),
                ledger.uploads_acked.clone(),
                ledger.uploads_sent.clone(),
                ledger.votes_sent.clone(),
            )
        };
        let fans_from = if everything { 0 } else { self.fans_verified };
        for email in &fans[fans_from..] {
            let (status, body) = node.login(email, PASSWORD).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "acknowledged signup of {email} lost: {body}"
            );
            self.fan_tokens.insert(
                email.clone(),
                body["access_token"].as_str().unwrap().to_owned(),
            );
        }
        self.fans_verified = fans.len();

        let votes_from = if everything { 0 } else { self.votes_verified };
        for (email, video) in &votes[votes_from..] {
            let token = &self.fan_tokens[email];
            let (status, body) = node.vote(token, *video).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "acknowledged vote of {email} for {video} lost: {body}"
            );
            assert_eq!(body["detail"], "Ya has votado por este video.", "{body}");
        }
        self.votes_verified = votes.len();

        let mut acked_per_video: HashMap<u64, u64> = HashMap::new();
        for (_, video) in &votes {
            *acked_per_video.entry(*video).or_default() += 1;
        }
        let mut votes_per_owner = vec![0u64; OWNERS.len()];
        for (owner, token) in self.owner_tokens.iter().enumerate() {
            let (status, list) = node.get("/api/videos", Some(token)).await;
            assert_eq!(status, StatusCode::OK);
            let listed: BTreeSet<u64> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["video_id"].as_u64().unwrap())
                .collect();
            let missing: Vec<_> = uploads_acked[owner].difference(&listed).collect();
            assert!(missing.is_empty(), "acknowledged uploads lost: {missing:?}");
            assert!(
                listed.len() as u64 <= uploads_sent[owner],
                "more videos than uploads sent"
            );
            for video in &listed {
                let (status, detail) = node.get(&format!("/api/videos/{video}"), Some(token)).await;
                assert_eq!(status, StatusCode::OK, "{detail}");
                let count = detail["votes"].as_u64().unwrap();
                let acked = acked_per_video.get(video).copied().unwrap_or(0);
                let sent = votes_sent.get(video).copied().unwrap_or(0);
                assert!(
                    acked <= count && count <= sent,
                    "video {video}: {count} votes, {acked} acknowledged, {sent} sent"
                );
                votes_per_owner[owner] += count;
            }
        }
        let (status, rankings) = node.get("/api/public/rankings?limit=100", None).await;
        assert_eq!(status, StatusCode::OK);
        for (owner, (first, last, _)) in OWNERS.iter().enumerate() {
            let name = format!("{first} {last}");
            let row = rankings
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["username"] == name.as_str())
                .unwrap_or_else(|| panic!("{name} missing from {rankings}"));
            assert_eq!(
                row["votes"].as_u64().unwrap(),
                votes_per_owner[owner],
                "the ranking of {name} disagrees with its videos: {rankings}"
            );
        }
    }
}

/// Right after a start: the temp dir holds nothing but the work directory of a job.
fn assert_temp_dir_clean(data_dir: &Path) {
    let tmp = data_dir.join("tmp");
    for entry in std::fs::read_dir(&tmp).unwrap() {
        let entry = entry.unwrap();
        assert!(
            entry.file_name() == "jobs" && entry.file_type().unwrap().is_dir(),
            "left in tmp/: {:?}",
            entry.path()
        );
        let jobs = std::fs::read_dir(entry.path()).unwrap().count();
        assert!(jobs <= 1, "{jobs} job work dirs with one worker");
    }
}

fn transcode_children() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.len() > 1 && args[0].ends_with(b"showcase") && args[1] == b"transcode"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill_at_random_moments() {
    let cycles: usize = std::env::var("CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: {cycles} cycles, CHAOS_SEED={seed}");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let video = Arc::new(std::fs::read(clip(Clip::Valid)).unwrap());
    let env = server_env();

    let server = ServerProcess::start(dir.path(), &env);
    let mut drill = Drill::prepare(&server, &video).await;
    let mut starts = Vec::new();
    let mut round_server = server;
    for cycle in 0..cycles {
        let kill_after = Duration::from_millis(rng.gen_range(200..2500));
        drill
            .round(round_server, &video, kill_after, rng.gen())
            .await;
        let start = Instant::now();
        round_server = ServerProcess::start(dir.path(), &env);
        starts.push(start.elapsed());
        assert_temp_dir_clean(dir.path());
        drill.verify(&round_server, false).await;
        let ledger = drill.ledger.lock().unwrap();
        eprintln!(
            "chaos: cycle {}/{cycles}: killed after {} ms; so far {} uploads, {} signups, {} votes acknowledged",
            cycle + 1,
            kill_after.as_millis(),
            ledger.uploads_acked.iter().map(|s| s.len()).sum::<usize>(),
            ledger.fans.len(),
            ledger.votes_acked.len()
        );
    }

    // The last node runs undisturbed: everything queued ends published or dead-lettered.
    let server = round_server;
    let node = server.client();
    drill.verify(&server, true).await;
    let total_uploads: usize = drill
        .ledger
        .lock()
        .unwrap()
        .uploads_sent
        .iter()
        .sum::<u64>() as usize;
    let deadline = Instant::now() + Duration::from_secs(120 + 3 * total_uploads as u64);
    let queue = loop {
        let (_, health) = node.get("/api/health/actors", None).await;
        let queue = health["queue"].clone();
        if queue["depth"] == 0 && queue["in_flight"] == 0 {
            break queue;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut statuses: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for token in &drill.owner_tokens {
        let (_, list) = node.get("/api/videos", Some(token)).await;
        for video in list.as_array().unwrap() {
            statuses
                .entry(video["status"].as_str().unwrap().to_owned())
                .or_default()
                .push(video["video_id"].as_u64().unwrap());
        }
    }
    let processed: BTreeSet<u64> = statuses
        .get("processed")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let failed: BTreeSet<u64> = statuses
        .get("failed")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let all: usize = statuses.values().map(Vec::len).sum();
    assert_eq!(
        processed.len() + failed.len(),
        all,
        "every job ended: {statuses:?}"
    );
    let (_, dead) = node.get("/api/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    let dead: BTreeSet<u64> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["video_id"].as_u64().unwrap())
        .collect();
    assert_eq!(dead, failed, "the failed videos are the dead letters");
    assert_eq!(queue["dead"].as_u64().unwrap() as usize, failed.len());

    // Quiescent now: the media directory holds exactly what the states call for.
    let media = dir.path().join("media");
    let ids_in = |sub: &str, suffix: &str| -> BTreeSet<u64> {
        std::fs::read_dir(media.join(sub))
            .map(|entries| {
                entries
                    .map(|e| {
                        let name = e.unwrap().file_name().into_string().unwrap();
                        name.strip_suffix(suffix)
                            .and_then(|id| id.parse().ok())
                            .unwrap_or_else(|| panic!("stray file {sub}/{name}"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let every: BTreeSet<u64> = statuses.values().flatten().copied().collect();
    assert_eq!(ids_in("originals", ".mp4"), every, "one original per video");
    assert_eq!(
        ids_in("processed", ".mp4"),
        processed,
        "one rendition per published video"
    );
    assert_eq!(
        ids_in("posters", ".jpg"),
        processed,
        "one poster per published video"
    );

    assert!(server.terminate().success(), "SIGTERM ends with exit 0");
    let left: Vec<_> = common::files_under(&dir.path().join("tmp"));
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert_eq!(
        transcode_children(),
        0,
        "a transcode child outlived its server"
    );

    let ledger = drill.ledger.lock().unwrap();
    let slowest_start = starts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "chaos: PASS {cycles} SIGKILL cycles in {:.0} s (seed {seed}): {} uploads acknowledged of {} sent, {} signups, {} votes acknowledged of {} sent; \
         all present after every restart; end state {} published, {} dead-lettered; slowest restart {} ms",
        started.elapsed().as_secs_f64(),
        ledger.uploads_acked.iter().map(|s| s.len()).sum::<usize>(),
        total_uploads,
        ledger.fans.len(),
        ledger.votes_acked.len(),
        ledger.votes_sent.values().sum::<u64>(),
        processed.len(),
        failed.len(),
        slowest_start.as_millis()
    );
}
