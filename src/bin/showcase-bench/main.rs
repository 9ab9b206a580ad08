//! `showcase-bench`: the replaced system's capacity plan, replayed against a node this tool
//! starts itself (the release `showcase` next to it), inside a 2 GiB memory cgroup when possible.
//!
//! - Scenario 1, web layer (transcoding paused): a smoke run, then ramps to 100, 200, 300 users
//!   (and on by 100 while every goal holds and throughput does not drop), then 80 % of the best
//!   level; a naive-client run at the largest level shows raw refusals; a mixed run with
//!   transcoding on shows both layers sharing the cores.
//! - The crowd, ten times the load and more (transcoding paused): 1,000, 3,000 and 10,000 users
//!   who honour `Retry-After` up to 3 s, with where the CPU went (the node, the load
//!   generator, the kernel) and the node's CPU per refusal and per accepted upload; the best
//!   level runs again before and after each crowd level, as its baseline.
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
use report::{Baseline, MixedRun, PacedRun, PhaseResult, Report, Verdict, Window, WorkerRun};

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
    /// The crowd's levels instead of the plan's (comma-separated user counts; 0 for none).
    #[arg(long, value_delimiter = ',')]
    crowd: Option<Vec<usize>>,
    /// Ramp, refusals-only window and hold of each crowd level, in seconds, instead of the
    /// plan's.
    #[arg(long, value_delimiter = ',')]
    crowd_timing: Option<Vec<f64>>,
    /// The longest `Retry-After` an honouring virtual user waits before it tries again, in
    /// seconds (0: whatever it is told), as a client with its own retry schedule does.
    #[arg(long, default_value_t = 3.0)]
    retry_after_cap_s: f64,
    /// The node's executable (default: `showcase` next to this one), to measure another build
    /// with the same load.
    #[arg(long)]
    server: Option<PathBuf>,
}

struct Plan {
    smoke: (usize, f64),
    ramp_s: f64,
    hold_s: f64,
    levels: Vec<usize>,
    go_beyond: bool,
    crowd: Vec<usize>,
    crowd_ramp_s: f64,
    crowd_hold_s: f64,
    /// The refusals-only window of each crowd level (see `run_phase`).
    crowd_refusals_s: f64,
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
                crowd: vec![1000],
                crowd_ramp_s: 5.0,
                crowd_hold_s: 10.0,
                crowd_refusals_s: 5.0,
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
                crowd: vec![1000, 3000, 10000],
                crowd_ramp_s: 30.0,
                crowd_hold_s: 60.0,
                crowd_refusals_s: 15.0,
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
    /// The node's executable.
    server: PathBuf,
    /// The access tokens of the bench users signed up on the current node, by user number.
    tokens: Vec<String>,
    /// Whether every node so far ran inside the memory cgroup.
    cap_applied: bool,
    /// Highest number of users tried when every figure keeps holding.
    max_users: usize,
    /// The send buffer of the virtual users' upload sockets (None: autotuned).
    client_send_buffer: Option<usize>,
    /// The longest `Retry-After` honouring users wait.
    retry_after_cap: Option<Duration>,
}

impl Bench {
    /// A client of `node` with the bench's upload sockets.
    fn client(&self, node: &Node) -> Client {
        Client::new(node.url(""), self.client_send_buffer, self.retry_after_cap)
    }

    /// Signs up and logs in the bench users the node does not have yet (not measured: a
    /// phase measures uploads).
    async fn ensure_users(&mut self, client: &Client, users: usize) {
        let first = self.tokens.len();
        if users <= first {
            return;
        }
        let started = Instant::now();
        let limit = Arc::new(tokio::sync::Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for user in first..users {
            let (client, limit) = (client.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("open");
                client.sign_up(user).await.expect("bench user signs up");
                let give_up_at = Instant::now() + Duration::from_secs(120);
                let token = client
                    .login_patiently(user, give_up_at)
                    .await
                    .expect("bench user logs in");
                (user, token)
            });
        }
        let mut tokens = vec![String::new(); users - first];
        while let Some(done) = tasks.join_next().await {
            let (user, token) = done.expect("signup task");
            tokens[user - first] = token;
        }
        self.tokens.extend(tokens);
        if users - first >= 100 {
            println!(
                "{} users signed up and logged in in {:.0} s",
                users - first,
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// One phase of virtual users against `node`; with `janitor`, accepted uploads are checked
    /// and deleted as they come (transcoding paused), else they are left for the pipeline.
    ///
    /// With `refusals_only_s`, every upload slot is held by trickling uploads of the bench
    /// through the ramp and that many seconds more, so that the crowd is refused and nothing
    /// else: what the node spends per refusal is measured there, at this crowd, before the
    /// slots are let go and the hold begins.
    #[allow(clippy::too_many_arguments)]
    async fn run_phase(
        &mut self,
        node: &mut Node,
        name: &str,
        users: usize,
        ramp_s: f64,
        hold_s: f64,
        refusals_only_s: f64,
        mode: Mode,
        janitor: bool,
    ) -> (PhaseResult, Arc<Phase>, Vec<QueuePoint>) {
        let client = self.client(node);
        self.ensure_users(&client, users).await;
        let holder = if refusals_only_s > 0.0 {
            let slots = showcase::config::UploadConfig::default().max_concurrent;
            let give_up_at = Instant::now() + Duration::from_secs(60);
            let holder = client
                .hold_slots(slots, SLOT_HOLDER, &self.tokens[0], &self.video, give_up_at)
                .await;
            if holder.held() < slots {
                println!(
                    "only {} of {slots} upload slots could be held: no refusals-only window",
                    holder.held()
                );
            }
            (holder.held() == slots).then_some(holder)
        } else {
            None
        };
        let refusals_only_s = if holder.is_some() {
            refusals_only_s
        } else {
            0.0
        };
        // The node at rest with its slots held (the holders' trickle, timers, background
        // work): what it spends without a single refusal, subtracted from the window's CPU.
        let at_rest = if holder.is_some() {
            let start = node::CpuSample::now(node.pid());
            tokio::time::sleep(Duration::from_secs(3)).await;
            Some(node::CpuSample::now(node.pid()).since(&start))
        } else {
            None
        };
        let phase = Phase::new();
        let t0 = Instant::now();
        let hold_starts = t0 + Duration::from_secs_f64(ramp_s + refusals_only_s);
        let stop_at = hold_starts + Duration::from_secs_f64(hold_s);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cleaner = janitor.then(|| tokio::spawn(load::janitor(client.clone(), rx)));
        // The CPU spent over the refusals-only window and over the hold, sampled at their
        // exact ends; the held slots are let go between the two.
        let pid = node.pid();
        let ramp_ends = t0 + Duration::from_secs_f64(ramp_s);
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(ramp_ends.into()).await;
            let ramp_end = node::CpuSample::now(pid);
            tokio::time::sleep_until(hold_starts.into()).await;
            let hold_start = node::CpuSample::now(pid);
            drop(holder);
            tokio::time::sleep_until(stop_at.into()).await;
            let refusals_only = hold_start.since(&ramp_end);
            (refusals_only, node::CpuSample::now(pid).since(&hold_start))
        });
        let mut tasks = tokio::task::JoinSet::new();
        for user in 0..users {
            let start_at = t0 + Duration::from_secs_f64(ramp_s * user as f64 / users as f64);
            tasks.spawn(load::virtual_user(
                client.clone(),
                user,
                self.tokens[user].clone(),
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
            from_s: ramp_s + refusals_only_s,
            to_s: ramp_s + refusals_only_s + hold_s,
        };
        let summary = report::summarize(&samples, &hold);
        let (refusals_only_cpu, cpu) = cpu.await.expect("CPU sampler");
        let refusals_only = (refusals_only_s > 0.0).then(|| {
            let window = Window {
                from_s: ramp_s,
                to_s: ramp_s + refusals_only_s,
            };
            let seen = report::summarize(&samples, &window);
            report::RefusalsOnly {
                refusals: seen.hold_refused,
                accepted: seen.hold_accepted,
                refusal_p99_s: seen.refusal[1],
                cpu: refusals_only_cpu,
                node_at_rest_cores: at_rest.map_or(0.0, |rest| rest.node_cores()),
            }
        });
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
            accepted_per_s: summary.accepted_per_s,
            goodput_bytes_per_s: summary.goodput_bytes_per_s,
            accepted_p50_s: summary.accepted[0],
            accepted_p95_s: summary.accepted[1],
            accepted_p99_s: summary.accepted[2],
            refusal_p50_s: summary.refusal[0],
            refusal_p99_s: summary.refusal[1],
            retry_after_mean_s: report::mean_retry_after_s(&samples),
            intents_started: intents.started.load(Relaxed),
            intents_succeeded: intents.succeeded.load(Relaxed),
            intents_given_up: intents.given_up.load(Relaxed),
            intents_cut_by_the_end: intents.cut_by_the_end.load(Relaxed),
            verified_stored: verified,
            peak_rss_bytes: peak_rss,
            cgroup_peak_bytes: cgroup_peak,
            alive,
            hold_accepted: summary.hold_accepted,
            hold_refused: summary.hold_refused,
            cpu,
            refusals_only,
            baseline: None,
            verdicts: Vec::new(),
            counts: summary.counts,
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
        // Users log in once per node (see `ensure_users`); their tokens last the whole run.
        let mut env = vec![
            ("SHOWCASE_TRANSCODE__WORKERS", workers.to_string()),
            ("SHOWCASE_AUTH__TOKEN_TTL_S", "86400".to_owned()),
        ];
        env.extend_from_slice(extra);
        let node = Node::start(&self.server, &self.data_dir, &env);
        self.tokens.clear();
        self.cap_applied &= node.in_cgroup;
        node
    }

    /// A fresh node with `workers` for the worker layer, with one bench user logged in.
    async fn start_worker_node(&mut self, workers: usize) -> (Node, Client, String) {
        let node = self.start_node(workers, &[]);
        let client = self.client(&node);
        self.ensure_users(&client, 1).await;
        let token = self.tokens[0].clone();
        (node, client, token)
    }

    /// A phase of honouring users with the janitor on and no refusals-only window: the
    /// plan's levels and the crowd's baseline.
    async fn honouring_phase(
        &mut self,
        node: &mut Node,
        name: &str,
        users: usize,
        ramp_s: f64,
        hold_s: f64,
    ) -> PhaseResult {
        let (result, _, _) = self
            .run_phase(
                node,
                name,
                users,
                ramp_s,
                hold_s,
                0.0,
                Mode::Honouring,
                true,
            )
            .await;
        result
    }

    /// A node that died in `phase` is started again for the phases after it.
    fn revive(&mut self, node: &mut Node, phase: &PhaseResult) {
        if !phase.alive {
            println!("the node died; restarting it for the next phases");
            *node = self.start_node(0, &[]);
        }
    }

    /// The best level run again with the crowd's timing (its `nth` run), as a crowd level's
    /// baseline; its accepted uploads per second.
    async fn best_level_again(
        &mut self,
        node: &mut Node,
        report: &mut Report,
        users: usize,
        nth: usize,
    ) -> f64 {
        let (ramp, hold) = (self.plan.crowd_ramp_s, self.plan.crowd_hold_s);
        let name = format!("best level ({users}) #{nth}");
        let result = self.honouring_phase(node, &name, users, ramp, hold).await;
        print_verdicts(&result);
        self.revive(node, &result);
        let rate = result.accepted_per_s;
        report.crowd_baseline.push(result);
        rate
    }

    async fn web_layer(&mut self, report: &mut Report) {
        let mut node = self.start_node(0, &[]);
        let (users, seconds) = self.plan.smoke;
        let smoke = self
            .honouring_phase(&mut node, "smoke", users, 0.0, seconds)
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
            let result = self
                .honouring_phase(&mut node, &format!("{users} users"), users, ramp, hold)
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
            self.revive(&mut node, &result);
            report.web_layer.push(result);
            let last = index + 1 == levels.len();
            if last && self.plan.go_beyond && all_pass && !degraded && users + 100 <= self.max_users
            {
                levels.push(users + 100);
            }
            index += 1;
        }
        let best_users = best.or(fastest).map_or(self.plan.levels[0], |(u, _)| u);
        let eighty = (best_users * 8 / 10).max(1);
        let (ramp, hold) = (self.plan.ramp_s.min(60.0), self.plan.hold_s);
        let result = self
            .honouring_phase(
                &mut node,
                &format!("80 % of best ({eighty})"),
                eighty,
                ramp,
                hold,
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
                0.0,
                Mode::Naive,
                true,
            )
            .await;
        print_verdicts(&result);
        report.web_layer.push(result);

        // The crowd: ten times the plan's load and more, on the same node. Each crowd level is
        // judged against the best level run again just before and just after it, with the
        // crowd's timing: this machine's disk, which bounds the accepted rate, drifts by a tenth
        // from one minute to the next, so a rate measured minutes earlier is no baseline.
        let crowd = self.plan.crowd.clone();
        if !crowd.is_empty() {
            let mut before = self
                .best_level_again(&mut node, report, best_users, 1)
                .await;
            for (index, &users) in crowd.iter().enumerate() {
                let (mut result, _, _) = self
                    .run_phase(
                        &mut node,
                        &format!("crowd {users}"),
                        users,
                        self.plan.crowd_ramp_s,
                        self.plan.crowd_hold_s,
                        self.plan.crowd_refusals_s,
                        Mode::Honouring,
                        true,
                    )
                    .await;
                self.revive(&mut node, &result);
                let after = self
                    .best_level_again(&mut node, report, best_users, index + 2)
                    .await;
                let baseline = Baseline {
                    users: best_users,
                    before_per_s: before,
                    after_per_s: after,
                };
                result.verdicts.extend(crowd_verdicts(&result, &baseline));
                result.baseline = Some(baseline);
                print_verdicts(&result);
                print_cpu(&result);
                report.crowd.push(result);
                before = after;
            }
        }
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
                0.0,
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

/// The crowd's goals beside the plan's: accepted uploads keep their rate (at least 95 % of the
/// best level's, measured around the crowd) and their latency, refusals stay quick, and the load
/// generator costs less than the node it measures. Past 3,000 users only the plan's own goals
/// are judged (alive, nothing lost): the figures are reported.
fn crowd_verdicts(p: &PhaseResult, baseline: &Baseline) -> Vec<Verdict> {
    let mut v = vec![Verdict::new(
        "the load generator costs less than the node",
        p.cpu.client_s < p.cpu.node_s,
        format!(
            "load generator {:.2} cores, node {:.2} cores",
            p.cpu.client_cores(),
            p.cpu.node_cores()
        ),
    )];
    if p.users <= 3000 {
        let rate = baseline.per_s();
        v.extend([
            Verdict::new(
                "crowd: accepted uploads/s >= 95 % of the best level",
                p.accepted_per_s >= 0.95 * rate,
                format!(
                    "{:.2}/s, {:.0} % of {rate:.2}/s ({} users: {:.2}/s before, {:.2}/s after)",
                    p.accepted_per_s,
                    100.0 * p.accepted_per_s / rate.max(1e-9),
                    baseline.users,
                    baseline.before_per_s,
                    baseline.after_per_s
                ),
            ),
            Verdict::new(
                "crowd: p99 of refusals <= 25 ms",
                p.refusal_p99_s <= 0.025,
                format!("{:.1} ms", p.refusal_p99_s * 1e3),
            ),
            Verdict::new(
                "crowd: p95 of accepted uploads <= 250 ms",
                p.accepted_p95_s <= 0.250,
                format!("{:.0} ms", p.accepted_p95_s * 1e3),
            ),
        ]);
    }
    v
}

/// The user number of the bench's slot holder (see `load::SlotHolder`): an address of its own.
const SLOT_HOLDER: usize = 65_000;

fn print_cpu(p: &PhaseResult) {
    let c = &p.cpu;
    println!(
        "  CPU over the hold: node {:.2} cores, load generator {:.2} cores, softirq {:.2},          machine {:.2} of {} cores; per refusal {}, per accepted upload {}",
        c.node_cores(),
        c.client_cores(),
        c.softirq_s / c.seconds.max(1e-9),
        c.machine_busy_s / c.seconds.max(1e-9),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        p.cpu_per_refusal_s()
            .map_or("-".to_owned(), |s| format!("{:.0} µs", s * 1e6)),
        p.cpu_per_accepted_s()
            .map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1e3)),
    );
    if let Some(w) = &p.refusals_only {
        println!(
            "  refusals only ({:.0} s, every slot held): {} refusals, {} accepted, p99 {:.1} ms, \
             node {:.2} cores ({:.3} at rest), load generator {:.2} cores",
            w.cpu.seconds,
            w.refusals,
            w.accepted,
            w.refusal_p99_s * 1e3,
            w.cpu.node_cores(),
            w.node_at_rest_cores,
            w.cpu.client_cores()
        );
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
    if let Some(crowd) = args.crowd.clone() {
        plan.crowd = crowd.into_iter().filter(|&users| users > 0).collect();
    }
    match args.crowd_timing.as_deref() {
        None => {}
        Some([ramp, refusals, hold]) => {
            (plan.crowd_ramp_s, plan.crowd_refusals_s, plan.crowd_hold_s) =
                (*ramp, *refusals, *hold);
        }
        Some(_) => panic!("--crowd-timing takes three numbers: ramp,refusals,hold"),
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
        retry_after_cap_s: args.retry_after_cap_s,
        web_layer: Vec::new(),
        crowd: Vec::new(),
        crowd_baseline: Vec::new(),
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
        server: args.server.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("showcase")
        }),
        tokens: Vec::new(),
        cap_applied: true,
        max_users: args.max_users,
        client_send_buffer,
        retry_after_cap: (args.retry_after_cap_s > 0.0)
            .then(|| Duration::from_secs_f64(args.retry_after_cap_s)),
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
