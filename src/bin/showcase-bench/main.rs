//! `showcase-bench`: the replaced system's capacity plan, replayed against a node this tool
//! starts itself (the release `showcase` next to it), inside a 2 GiB memory cgroup when possible.
//!
//! - Scenario 1, web layer (transcoding paused): a smoke run, then ramps to 100, 200, 300 users
//!   (and on by 100 while every goal holds and throughput does not drop), then 80 % of the best
//!   level; a naive-client run at the largest level shows raw refusals; a mixed run with
//!   transcoding on shows both layers sharing the cores.
//! - Scenario 2, worker layer: bursts of jobs with 50 MB and 100 MB inputs at 1, 2 and 4
//!   workers give the capacity in videos/min; a steady injection below capacity shows whether
//!   the backlog stays flat.
//!
//! Figures, verdicts (PASS/FAIL per goal, printed, never asserted), plots and a markdown report
//! go to `bench-results/`. `--quick` scales every duration down for a smoke run.

mod load;
mod node;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use load::{Client, Mode, Phase, QueuePoint};
use node::Node;
use report::{MixedRun, PacedRun, PhaseResult, Report, Verdict, Window, WorkerRun};

#[derive(Parser, Debug)]
#[command(about = "Capacity benchmark of the showcase server")]
struct Args {
    /// Scale every duration down (whole run of a few minutes) for smoke runs.
    #[arg(long)]
    quick: bool,
    /// Where results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Highest number of users tried when every figure keeps holding.
    #[arg(long, default_value_t = 600)]
    max_users: usize,
    /// Send buffer of the virtual users' upload sockets, in KiB as the kernel counts it; 0
    /// leaves it to the kernel's autotuning. The kernel sizes it from the congestion window,
    /// which over loopback grows without bound: autotuned, the buffer reaches tcp_wmem's
    /// maximum (4 MiB here), far beyond what a client on a real path gets, and a refused client
    /// that does not wait then copies megabytes it never sends, on the node's own cores.
    #[arg(long, default_value_t = 256)]
    client_send_buffer_kib: usize,
    /// Web-layer levels to run instead of the plan's (comma-separated user counts); the run
    /// then does not go beyond the last of them.
    #[arg(long, value_delimiter = ',')]
    levels: Option<Vec<usize>>,
    /// Ramp of each web-layer level, in seconds, instead of the plan's.
    #[arg(long)]
    ramp_s: Option<f64>,
    /// Hold of each web-layer level, in seconds, instead of the plan's.
    #[arg(long)]
    hold_s: Option<f64>,
    /// Run the web layer only: no mixed run, no worker layer.
    #[arg(long)]
    web_layer_only: bool,
}

struct Plan {
    smoke: (usize, f64),
    ramp_s: f64,
    hold_s: f64,
    levels: Vec<usize>,
    go_beyond: bool,
    mixed_users: usize,
    mixed_queue_depth: u64,
    input_sizes: Vec<u64>,
    worker_counts: Vec<usize>,
    jobs_per_run: u64,
    paced_s: f64,
    dd_mebibytes: u64,
    /// How long the disk is written the way uploads are.
    disk_pattern_s: f64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                smoke: (5, 8.0),
                ramp_s: 5.0,
                hold_s: 10.0,
                levels: vec![100, 200, 300],
                go_beyond: false,
                mixed_users: 10,
                mixed_queue_depth: 2,
                input_sizes: vec![18_000_000],
                worker_counts: vec![1, 2],
                jobs_per_run: 2,
                paced_s: 0.0,
                dd_mebibytes: 256,
                disk_pattern_s: 3.0,
            }
        } else {
            Plan {
                smoke: (5, 60.0),
                ramp_s: 180.0,
                hold_s: 300.0,
                levels: vec![100, 200, 300],
                go_beyond: true,
                mixed_users: 50,
                mixed_queue_depth: 8,
                input_sizes: vec![50_000_000, 95_000_000],
                worker_counts: vec![1, 2, 4],
                jobs_per_run: 6,
                paced_s: 300.0,
                dd_mebibytes: 2048,
                disk_pattern_s: 10.0,
            }
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} s {msg}",
        )
        .expect("template"),
    );
    bar.set_prefix(what.to_owned());
    bar
}

struct Bench {
    plan: Plan,
    video: load::Video,
    disk_bytes_per_s: f64,
    /// The disk written as uploads are (see `node::disk_upload_pattern_bandwidth`).
    disk_pattern_bytes_per_s: f64,
    data_dir: PathBuf,
    /// Bench users signed up on the current node.
    signed_up: usize,
    /// Whether every node so far ran inside the memory cgroup.
    cap_applied: bool,
    /// Highest number of users tried when every figure keeps holding.
    max_users: usize,
    /// The send buffer of the virtual users' upload sockets (None: autotuned).
    client_send_buffer: Option<usize>,
}

impl Bench {
    /// A client of `node` with the bench's upload sockets.
    fn client(&self, node: &Node) -> Client {
        Client::new(node.url(""), self.client_send_buffer)
    }

    async fn ensure_users(&mut self, client: &Client, users: usize) {
        let limit = Arc::new(tokio::sync::Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for user in self.signed_up..users {
            let (client, limit) = (client.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("open");
                client.sign_up(user).await.expect("bench user signs up");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("signup task");
        }
        self.signed_up = self.signed_up.max(users);
    }

    /// One phase of virtual users against `node`; with `janitor`, accepted uploads are checked
    /// and deleted as they come (transcoding paused), else they are left for the pipeline.
    #[allow(clippy::too_many_arguments)]
    async fn run_phase(
        &mut self,
        node: &mut Node,
        name: &str,
        users: usize,
        ramp_s: f64,
        hold_s: f64,
        mode: Mode,
        janitor: bool,
    ) -> (PhaseResult, Arc<Phase>, Vec<QueuePoint>) {
        let client = self.client(node);
        self.ensure_users(&client, users).await;
        let phase = Phase::new();
        let t0 = Instant::now();
        let stop_at = t0 + Duration::from_secs_f64(ramp_s + hold_s);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cleaner = janitor.then(|| tokio::spawn(load::janitor(client.clone(), rx)));
        let mut tasks = tokio::task::JoinSet::new();
        for user in 0..users {
            let start_at = t0 + Duration::from_secs_f64(ramp_s * user as f64 / users as f64);
            tasks.spawn(load::virtual_user(
                client.clone(),
                user,
                self.video.clone(),
                mode,
                phase.clone(),
                start_at,
                stop_at,
                janitor.then(|| tx.clone()),
            ));
        }
        drop(tx);
        let progress = bar((ramp_s + hold_s) as u64, name);
        let mut peak_rss = 0;
        let mut queue = Vec::new();
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    peak_rss = peak_rss.max(node.anon_bytes());
                    queue.extend(load::queue_point(&client, t0).await);
                    let samples = phase.samples.lock().unwrap();
                    let accepted = samples.iter().filter(|s| s.outcome == load::Outcome::Accepted).count();
                    progress.set_position((t0.elapsed().as_secs() ).min(progress.length().unwrap_or(0)));
                    progress.set_message(format!("{} requests, {accepted} accepted", samples.len()));
                }
            }
        }
        progress.finish_and_clear();
        let (verified, problems) = match cleaner {
            Some(cleaner) => {
                let (checked, _deleted, problems) = cleaner.await.expect("janitor");
                (checked, problems)
            }
            None => (phase.accepted.lock().unwrap().len() as u64, Vec::new()),
        };
        let samples = phase.samples.lock().unwrap().clone();
        let hold = Window {
            from_s: ramp_s,
            to_s: ramp_s + hold_s,
        };
        let (counts, accepted_per_s, goodput, acc, refusal) = report::summarize(&samples, &hold);
        let alive = node.is_alive();
        let cgroup_peak = node.cgroup_peak_bytes();
        let intents = &phase.intents;
        use std::sync::atomic::Ordering::Relaxed;
        let mut result = PhaseResult {
            name: name.to_owned(),
            users,
            mode,
            transcoding: !janitor,
            ramp_s,
            hold_s,
            accepted_per_s,
            goodput_bytes_per_s: goodput,
            accepted_p50_s: acc[0],
            accepted_p95_s: acc[1],
            accepted_p99_s: acc[2],
            refusal_p50_s: refusal[0],
            refusal_p99_s: refusal[1],
            retry_after_mean_s: report::mean_retry_after_s(&samples),
            intents_started: intents.started.load(Relaxed),
            intents_succeeded: intents.succeeded.load(Relaxed),
            intents_given_up: intents.given_up.load(Relaxed),
            intents_cut_by_the_end: intents.cut_by_the_end.load(Relaxed),
            verified_stored: verified,
            peak_rss_bytes: peak_rss,
            cgroup_peak_bytes: cgroup_peak,
            alive,
            verdicts: Vec::new(),
            counts,
        };
        result.verdicts = self.verdicts(&result, node, &problems);
        (result, phase, queue)
    }

    fn verdicts(&self, p: &PhaseResult, node: &Node, problems: &[String]) -> Vec<Verdict> {
        let c = &p.counts;
        let peak = p.peak_rss_bytes;
        let oom = node.cgroup_oom_kills().unwrap_or(0);
        let mut v = vec![
            Verdict::new(
                "process alive, under the memory cap",
                p.alive && peak < node::MEMORY_CAP_BYTES && oom == 0,
                format!(
                    "alive {}, peak {} MB resident (with page cache {} MB), OOM kills {oom}",
                    p.alive,
                    peak / 1_000_000,
                    p.cgroup_peak_bytes.unwrap_or(0) / 1_000_000
                ),
            ),
            Verdict::new(
                "every request answered, no 5xx but 503",
                c.unanswered == 0 && c.server_errors == 0,
                format!("{} unanswered, {} 5xx", c.unanswered, c.server_errors),
            ),
            Verdict::new(
                "p95 of accepted uploads <= 1 s",
                p.accepted_p95_s <= 1.0,
                format!("{:.3} s", p.accepted_p95_s),
            ),
            Verdict::new(
                "p99 of refusals <= 50 ms",
                p.refusal_p99_s <= 0.050,
                format!(
                    "{:.1} ms over {} refusals",
                    p.refusal_p99_s * 1000.0,
                    c.refused + c.limited
                ),
            ),
        ];
        if !p.transcoding && p.users >= 100 {
            let share = p.goodput_bytes_per_s / self.disk_bytes_per_s;
            v.push(Verdict::new(
                "goodput >= 70 % of disk fsync bandwidth",
                share >= 0.70,
                format!(
                    "{:.0} MB/s of {:.0} MB/s ({:.0} %; {:.0} % of the {:.0} MB/s the disk takes \
                     written as uploads are)",
                    p.goodput_bytes_per_s / 1e6,
                    self.disk_bytes_per_s / 1e6,
                    share * 100.0,
                    100.0 * p.goodput_bytes_per_s / self.disk_pattern_bytes_per_s,
                    self.disk_pattern_bytes_per_s / 1e6
                ),
            ));
        }
        if p.mode == Mode::Honouring {
            v.push(Verdict::new(
                "with Retry-After, every upload eventually succeeds",
                p.intents_given_up == 0,
                format!(
                    "{} started, {} succeeded, {} given up, {} still waiting at the end",
                    p.intents_started,
                    p.intents_succeeded,
                    p.intents_given_up,
                    p.intents_cut_by_the_end
                ),
            ));
        }
        v.push(Verdict::new(
            "nothing lost: every 201 stored with its job queued",
            p.verified_stored == c.accepted && problems.is_empty(),
            format!(
                "{} of {} verified{}",
                p.verified_stored,
                c.accepted,
                problems
                    .first()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        ));
        v
    }

    /// A fresh node (its data dir wiped, so no bench user exists on it yet) with `workers`
    /// transcode workers and `extra` settings.
    fn start_node(&mut self, workers: usize, extra: &[(&str, String)]) -> Node {
        let mut env = vec![("SHOWCASE_TRANSCODE__WORKERS", workers.to_string())];
        env.extend_from_slice(extra);
        let node = Node::start(&self.data_dir, &env);
        self.signed_up = 0;
        self.cap_applied &= node.in_cgroup;
        node
    }

    /// A fresh node with `workers` for the worker layer, with one bench user logged in.
    async fn start_worker_node(&mut self, workers: usize) -> (Node, Client, String) {
        let node = self.start_node(workers, &[]);
        let client = self.client(&node);
        self.ensure_users(&client, 1).await;
        let token = client
            .login_patiently(0, Instant::now() + Duration::from_secs(60))
            .await
            .expect("login");
        (node, client, token)
    }

    async fn web_layer(&mut self, report: &mut Report) {
        let mut node = self.start_node(0, &[]);
        let (users, seconds) = self.plan.smoke;
        let (smoke, _, _) = self
            .run_phase(
                &mut node,
                "smoke",
                users,
                0.0,
                seconds,
                Mode::Honouring,
                true,
            )
            .await;
        print_verdicts(&smoke);
        report.web_layer.push(smoke);

        let mut levels = self.plan.levels.clone();
        let mut index = 0;
        // The level with the most accepted uploads per second where every goal held, and the
        // one with the most regardless, for when no level held every goal.
        let mut best: Option<(usize, f64)> = None;
        let mut fastest: Option<(usize, f64)> = None;
        while index < levels.len() {
            let users = levels[index];
            let (ramp, hold) = (self.plan.ramp_s, self.plan.hold_s);
            let (result, _, _) = self
                .run_phase(
                    &mut node,
                    &format!("{users} users"),
                    users,
                    ramp,
                    hold,
                    Mode::Honouring,
                    true,
                )
                .await;
            print_verdicts(&result);
            let all_pass = result.verdicts.iter().all(|v| v.pass);
            let degraded = best.is_some_and(|(_, rate)| result.accepted_per_s < rate * 0.9);
            if all_pass && !degraded && best.is_none_or(|(_, rate)| result.accepted_per_s >= rate) {
                best = Some((users, result.accepted_per_s));
            }
            if fastest.is_none_or(|(_, rate)| result.accepted_per_s > rate) {
                fastest = Some((users, result.accepted_per_s));
            }
            let alive = result.alive;
            report.web_layer.push(result);
            if !alive {
                println!("the node died; restarting it for the next phases");
                node = self.start_node(0, &[]);
            }
            let last = index + 1 == levels.len();
            if last && self.plan.go_beyond && all_pass && !degraded && users + 100 <= self.max_users
            {
                levels.push(users + 100);
            }
            index += 1;
        }
        let best_users = best.or(fastest).map_or(self.plan.levels[0], |(u, _)| u);
        let eighty = (best_users * 8 / 10).max(1);
        let (result, _, _) = self
            .run_phase(
                &mut node,
                &format!("80 % of best ({eighty})"),
                eighty,
                self.plan.ramp_s.min(60.0),
                self.plan.hold_s,
                Mode::Honouring,
                true,
            )
            .await;
        print_verdicts(&result);
        report.web_layer.push(result);

        let largest = *levels.last().expect("levels");
        let (result, _, _) = self
            .run_phase(
                &mut node,
                &format!("naive {largest}"),
                largest,
                self.plan.ramp_s,
                self.plan.hold_s,
                Mode::Naive,
                true,
            )
            .await;
        print_verdicts(&result);
        report.web_layer.push(result);
        let _ = node.stop();
    }

    async fn mixed(&mut self, report: &mut Report) {
        let queue_depth = self.plan.mixed_queue_depth.to_string();
        let mut node = self.start_node(1, &[("SHOWCASE_UPLOAD__MAX_QUEUE_DEPTH", queue_depth)]);
        let users = self.plan.mixed_users;
        let (mut phase_result, phase, mut queue) = self
            .run_phase(
                &mut node,
                "mixed",
                users,
                self.plan.ramp_s.min(60.0),
                self.plan.hold_s.min(180.0),
                Mode::Honouring,
                false,
            )
            .await;
        let client = self.client(&node);
        let load_ended = Instant::now();
        let t0 = phase.started;
        let deadline = Instant::now() + Duration::from_secs(60 + 120 * self.plan.mixed_queue_depth);
        let progress = bar(0, "mixed drain");
        drain(
            &mut node,
            &client,
            t0,
            &mut queue,
            &progress,
            Duration::from_secs(1),
            deadline,
        )
        .await;
        progress.finish_and_clear();
        let drained_after_s = load_ended.elapsed().as_secs_f64();
        let accepted = phase.accepted.lock().unwrap().clone();
        let mut processed = 0;
        let mut not_processed = Vec::new();
        for (id, token) in &accepted {
            let body: serde_json::Value = match client
                .http
                .get(format!("{}/api/videos/{id}", client.base))
                .bearer_auth(token)
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            if body["status"] == "processed" {
                processed += 1;
            } else {
                not_processed.push(format!("{id}: {}", body["status"]));
            }
        }
        phase_result.alive = node.is_alive();
        let verdict = Verdict::new(
            "mixed: every 201 processed once the backlog drains",
            not_processed.is_empty() && !accepted.is_empty(),
            format!(
                "{processed} of {} processed, drained {drained_after_s:.0} s after the load",
                accepted.len()
            ),
        );
        println!(
            "{} mixed: {}",
            if verdict.pass { "PASS" } else { "FAIL" },
            verdict.detail
        );
        print_verdicts(&phase_result);
        report.mixed = Some(MixedRun {
            phase: phase_result,
            drained_after_s,
            processed,
            not_processed,
            queue,
            verdict,
        });
        let _ = node.stop();
    }

    async fn worker_layer(&mut self, report: &mut Report, media_dir: &std::path::Path) {
        let mut best: Option<(usize, f64, load::Video)> = None;
        for &size in &self.plan.input_sizes.clone() {
            let input = node::generate_input(media_dir, size, 30);
            let video = load::Video::open(&input);
            for &workers in &self.plan.worker_counts.clone() {
                let run = self.burst(workers, &video).await;
                println!(
                    "scenario 2: {} MB input, {workers} workers: {:.2} videos/min ({} published, {} failed)",
                    video.len() / 1_000_000,
                    run.videos_per_min,
                    run.published,
                    run.failed
                );
                if best
                    .as_ref()
                    .is_none_or(|(_, rate, _)| run.videos_per_min > *rate)
                {
                    best = Some((workers, run.videos_per_min, video.clone()));
                }
                report.worker_layer.push(run);
            }
        }
        if self.plan.paced_s > 0.0 {
            if let Some((workers, capacity, video)) = best {
                report.paced = Some(self.paced(workers, capacity, &video).await);
            }
        }
    }

    /// `jobs` uploads at once, then the time until the queue is empty.
    async fn burst(&mut self, workers: usize, video: &load::Video) -> WorkerRun {
        let (mut node, client, token) = self.start_worker_node(workers).await;
        let phase = Phase::new();
        let t0 = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..self.plan.jobs_per_run {
            let (sample, id) = client.upload(0, &token, video, &phase).await;
            match id {
                Some(id) => ids.push(id),
                None => eprintln!("an injected upload was refused: {}", sample.status),
            }
        }
        let name = format!("{} MB x{}", video.len() / 1_000_000, workers);
        let progress = bar(0, &name);
        let mut queue = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(600 * self.plan.jobs_per_run);
        let every = Duration::from_millis(500);
        let peak_rss = drain(
            &mut node, &client, t0, &mut queue, &progress, every, deadline,
        )
        .await;
        progress.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let (mut published, mut failed) = (0, 0);
        for id in &ids {
            let body: serde_json::Value = client
                .http
                .get(format!("{}/api/videos/{id}", client.base))
                .bearer_auth(&token)
                .send()
                .await
                .expect("detail")
                .json()
                .await
                .unwrap_or_default();
            match body["status"].as_str() {
                Some("processed") => published += 1,
                _ => failed += 1,
            }
        }
        let run = WorkerRun {
            name,
            input_bytes: video.len(),
            workers,
            jobs: ids.len() as u64,
            seconds,
            videos_per_min: published as f64 * 60.0 / seconds,
            published,
            failed,
            queue,
            cgroup_peak_bytes: node.cgroup_peak_bytes(),
            peak_rss_bytes: peak_rss,
            alive: node.is_alive(),
        };
        let _ = node.stop();
        run
    }

    /// Steady injection at 80 % of `capacity` (videos/min): the backlog must stay flat.
    async fn paced(&mut self, workers: usize, capacity: f64, video: &load::Video) -> PacedRun {
        let (mut node, client, token) = self.start_worker_node(workers).await;
        let rate = capacity * 0.8;
        let every = Duration::from_secs_f64(60.0 / rate.max(0.01));
        let phase = Phase::new();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(self.plan.paced_s);
        let mut next = t0;
        let mut queue = Vec::new();
        let progress = bar(self.plan.paced_s as u64, "steady inject");
        while Instant::now() < end {
            if Instant::now() >= next {
                let _ = client.upload(0, &token, video, &phase).await;
                next += every;
            }
            if let Some(point) = load::queue_point(&client, t0).await {
                progress.set_message(queue_status(&point));
                queue.push(point);
            }
            progress.set_position(t0.elapsed().as_secs());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        progress.finish_and_clear();
        let points: Vec<(f64, f64)> = queue.iter().map(|p| (p.t_s, p.backlog() as f64)).collect();
        let slope_per_min = report::slope(&points) * 60.0;
        let max_backlog = queue.iter().map(QueuePoint::backlog).max().unwrap_or(0);
        let verdict = Verdict::new(
            "backlog flat below capacity",
            slope_per_min.abs() < 0.5 && max_backlog <= (workers as u64) * 2 + 2 && node.is_alive(),
            format!("slope {slope_per_min:+.2} jobs/min, at most {max_backlog} in the system at {rate:.2}/min injected"),
        );
        println!(
            "{} paced: {}",
            if verdict.pass { "PASS" } else { "FAIL" },
            verdict.detail
        );
        let _ = node.stop();
        PacedRun {
            name: format!("steady x{workers}"),
            workers,
            capacity_per_min: capacity,
            injected_per_min: rate,
            seconds: self.plan.paced_s,
            backlog_slope_per_min: slope_per_min,
            max_backlog,
            queue,
            verdict,
        }
    }
}

/// Samples the queue every `every` until it is empty, `deadline` passes or the node dies;
/// returns the peak resident memory seen meanwhile.
async fn drain(
    node: &mut Node,
    client: &Client,
    t0: Instant,
    queue: &mut Vec<QueuePoint>,
    progress: &ProgressBar,
    every: Duration,
    deadline: Instant,
) -> u64 {
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(node.anon_bytes());
        if let Some(point) = load::queue_point(client, t0).await {
            progress.set_message(queue_status(&point));
            let empty = point.backlog() == 0;
            queue.push(point);
            if empty {
                break;
            }
        }
        if Instant::now() > deadline || !node.is_alive() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    peak_rss
}

fn queue_status(point: &QueuePoint) -> String {
    format!("{} waiting, {} running", point.depth, point.in_flight)
}

fn print_verdicts(p: &PhaseResult) {
    println!(
        "{}: {} requests, {} accepted ({:.2}/s, {:.0} MB/s), {} refused, {} limited; p95 accepted {:.3} s, p99 refusal {:.1} ms, mean Retry-After {:.1} s",
        p.name,
        p.counts.requests,
        p.counts.accepted,
        p.accepted_per_s,
        p.goodput_bytes_per_s / 1e6,
        p.counts.refused,
        p.counts.limited,
        p.accepted_p95_s,
        p.refusal_p99_s * 1000.0,
        p.retry_after_mean_s
    );
    for v in &p.verdicts {
        println!(
            "  {} {}: {}",
            if v.pass { "PASS" } else { "FAIL" },
            v.goal,
            v.detail
        );
    }
}

/// Writes report.json, report.md and the plots under `out`.
fn write_report(report: &Report, out: &std::path::Path) {
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report).expect("json"),
    )
    .expect("report.json");
    std::fs::write(out.join("report.md"), report::markdown(report)).expect("report.md");
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    match FONT.get_or_init(report::load_font) {
        Ok(()) => {
            for (name, plot) in [
                (
                    "latency.png",
                    report::plot_latency as fn(&Report, &std::path::Path) -> _,
                ),
                ("throughput.png", report::plot_throughput),
                ("queue.png", report::plot_queue),
            ] {
                if let Err(e) = plot(report, &out.join(name)) {
                    eprintln!("plot {name}: {e}");
                }
            }
        }
        Err(e) => eprintln!("no plots: {e}"),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

// The load generator looks for network events as often as the server does (see
// `showcase::app::EVENT_INTERVAL_TICKS`): with tokio's default it would add its own scheduling
// delay, on top of the server's, to every latency it measures.
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(showcase::app::EVENT_INTERVAL_TICKS)
        .build()
        .expect("tokio runtime")
        .block_on(run());
}

async fn run() {
    let args = Args::parse();
    let mut plan = Plan::new(args.quick);
    if let Some(levels) = args.levels.clone().filter(|l| !l.is_empty()) {
        plan.levels = levels;
        plan.go_beyond = false;
    }
    plan.ramp_s = args.ramp_s.unwrap_or(plan.ramp_s);
    plan.hold_s = args.hold_s.unwrap_or(plan.hold_s);
    std::fs::create_dir_all(&args.out).expect("output dir");
    let out = std::fs::canonicalize(&args.out).expect("output dir");
    let media_dir = out.join("media");
    let data_dir = out.join("node-data");

    println!(
        "measuring the disk ({} x {} MiB with dd conv=fdatasync)...",
        node::DD_RUNS,
        plan.dd_mebibytes
    );
    let disk_runs = node::disk_fsync_bandwidth(&out, plan.dd_mebibytes);
    let disk = median(&disk_runs);
    let pattern_writers = showcase::config::UploadConfig::default().max_concurrent;
    println!(
        "measuring the disk written as uploads are ({pattern_writers} files of 18 MB at a time, \
         each fsynced, for {} s)...",
        plan.disk_pattern_s
    );
    let disk_pattern =
        node::disk_upload_pattern_bandwidth(&out, pattern_writers, 18_000_000, plan.disk_pattern_s);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{cores} cores, disk {:.0} MB/s (runs: {:.0?} MB/s), {:.0} MB/s written as uploads are",
        disk / 1e6,
        disk_runs.iter().map(|b| b / 1e6).collect::<Vec<_>>(),
        disk_pattern / 1e6
    );
    println!("generating the 18 MB 1920x1080 30 s input...");
    let input = node::generate_input(&media_dir, 18_000_000, 30);
    let video = load::Video::open(&input);

    let client_send_buffer =
        (args.client_send_buffer_kib > 0).then_some(args.client_send_buffer_kib << 10);
    let mut report = Report {
        quick: args.quick,
        client_send_buffer_bytes: client_send_buffer,
        started_at: showcase::domain::format_ts(showcase::domain::now_ts()),
        machine: report::Machine {
            cores,
            disk_fsync_bytes_per_s: disk,
            disk_fsync_runs_bytes_per_s: disk_runs,
            disk_upload_pattern_bytes_per_s: disk_pattern,
            disk_upload_pattern_writers: pattern_writers,
            memory_cap_bytes: node::MEMORY_CAP_BYTES,
            memory_cap_applied: false,
        },
        web_layer: Vec::new(),
        mixed: None,
        worker_layer: Vec::new(),
        paced: None,
    };
    let mut bench = Bench {
        plan,
        video,
        disk_bytes_per_s: disk,
        disk_pattern_bytes_per_s: disk_pattern,
        data_dir,
        signed_up: 0,
        cap_applied: true,
        max_users: args.max_users,
        client_send_buffer,
    };
    // The report is written after each part, so a long run that is cut short keeps its figures.
    let save = |report: &mut Report, bench: &Bench| {
        report.machine.memory_cap_applied = bench.cap_applied;
        write_report(report, &out);
    };
    bench.web_layer(&mut report).await;
    save(&mut report, &bench);
    if !args.web_layer_only {
        bench.mixed(&mut report).await;
        save(&mut report, &bench);
        bench.worker_layer(&mut report, &media_dir).await;
        save(&mut report, &bench);
    }
    let verdicts = report.all_verdicts();
    let failed = verdicts.iter().filter(|(_, v)| !v.pass).count();
    println!(
        "\n{} of {} goals PASS; report in {}",
        verdicts.len() - failed,
        verdicts.len(),
        out.join("report.md").display()
    );
}
