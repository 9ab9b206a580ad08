//! Figures of a run: per-phase statistics, goal verdicts, and the report (JSON, markdown, PNG).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::load::{Mode, Outcome, QueuePoint, Sample};
use crate::node::CpuWindow;

/// The replaced system's figures from its capacity test, per number of users.
pub const REPLACED: [(usize, &str, &str, &str); 4] = [
    (5, "38.5 %", "0.12", "79 s"),
    (100, "73.7 %", "0.30", "332 s"),
    (200, "crash", "-", "-"),
    (300, "crash", "-", "-"),
];

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub goal: String,
    pub pass: bool,
    pub detail: String,
}

impl Verdict {
    pub fn new(goal: &str, pass: bool, detail: String) -> Self {
        Self {
            goal: goal.to_owned(),
            pass,
            detail,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub accepted: u64,
    pub refused: u64,
    pub limited: u64,
    pub rejected: u64,
    pub server_errors: u64,
    pub unanswered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub users: usize,
    pub mode: Mode,
    pub transcoding: bool,
    pub ramp_s: f64,
    pub hold_s: f64,
    pub counts: Counts,
    /// Accepted uploads per second and goodput (bytes/s) over the hold.
    pub accepted_per_s: f64,
    pub goodput_bytes_per_s: f64,
    pub accepted_p50_s: f64,
    pub accepted_p95_s: f64,
    pub accepted_p99_s: f64,
    pub refusal_p50_s: f64,
    pub refusal_p99_s: f64,
    pub retry_after_mean_s: f64,
    pub intents_started: u64,
    pub intents_succeeded: u64,
    pub intents_given_up: u64,
    pub intents_cut_by_the_end: u64,
    pub verified_stored: u64,
    pub peak_rss_bytes: u64,
    pub cgroup_peak_bytes: Option<u64>,
    pub alive: bool,
    /// Uploads sent within the hold that were accepted, and that were refused (503 or 429).
    pub hold_accepted: u64,
    pub hold_refused: u64,
    /// Where the CPU went during the hold.
    pub cpu: CpuWindow,
    /// The window before the hold where every slot was held and the crowd only refused.
    pub refusals_only: Option<RefusalsOnly>,
    /// For a crowd level: the best level's rate, run just before and just after it.
    pub baseline: Option<Baseline>,
    pub verdicts: Vec<Verdict>,
}

/// The best level run again around a crowd level, with the crowd's timing.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub users: usize,
    pub before_per_s: f64,
    pub after_per_s: f64,
}

impl Baseline {
    /// The best level's accepted uploads per second around the crowd: the mean of the two runs.
    pub fn per_s(&self) -> f64 {
        (self.before_per_s + self.after_per_s) / 2.0
    }
}

/// A window where the crowd was refused and nothing else (every upload slot held).
#[derive(Debug, Clone, Serialize)]
pub struct RefusalsOnly {
    pub refusals: u64,
    /// Uploads accepted meanwhile: 0 unless a slot escaped the holder.
    pub accepted: u64,
    pub refusal_p99_s: f64,
    pub cpu: CpuWindow,
    /// The node's CPU just before, its slots held and nobody refused, in cores.
    pub node_at_rest_cores: f64,
}

impl PhaseResult {
    /// The node's CPU per refusal, in seconds, measured where it refused and did nothing else
    /// (beyond what it spends at rest). An upload or two sent in the window may be accepted
    /// after it, once the slots are let go; their CPU is outside the window.
    pub fn cpu_per_refusal_s(&self) -> Option<f64> {
        self.refusals_only
            .as_ref()
            .filter(|w| w.refusals > 0)
            .map(|w| {
                let at_rest = w.node_at_rest_cores * w.cpu.seconds;
                (w.cpu.node_s - at_rest).max(0.0) / w.refusals as f64
            })
    }

    /// The node's CPU per accepted upload over the hold, in seconds: what it spent beyond the
    /// hold's refusals (at their measured cost), per accepted upload. The checks and deletions
    /// of the bench's janitor are part of it.
    pub fn cpu_per_accepted_s(&self) -> Option<f64> {
        let per_refusal = self.cpu_per_refusal_s()?;
        (self.hold_accepted > 0).then(|| {
            (self.cpu.node_s - per_refusal * self.hold_refused as f64).max(0.0)
                / self.hold_accepted as f64
        })
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub struct Window {
    pub from_s: f64,
    pub to_s: f64,
}

/// The mean `Retry-After` told to refused uploads (503 and 429), in seconds; 0 without any.
pub fn mean_retry_after_s(samples: &[Sample]) -> f64 {
    let told: Vec<u64> = samples.iter().filter_map(|s| s.retry_after_s).collect();
    told.iter().sum::<u64>() as f64 / told.len().max(1) as f64
}

/// What a phase's samples add up to.
pub struct Summary {
    /// Every request of the phase, ramp included.
    pub counts: Counts,
    /// Accepted uploads per second and goodput (bytes/s), over the hold.
    pub accepted_per_s: f64,
    pub goodput_bytes_per_s: f64,
    /// p50, p95, p99 of accepted uploads sent within the hold (of all of them when none was:
    /// a run whose uploads are all accepted early, under a queue watermark).
    pub accepted: [f64; 3],
    /// p50, p99 of refusals sent within the hold (of all of them when none was).
    pub refusal: [f64; 2],
    pub hold_accepted: u64,
    pub hold_refused: u64,
}

/// Counts of `samples`; rates and latencies of the samples sent within `hold`.
pub fn summarize(samples: &[Sample], hold: &Window) -> Summary {
    let mut counts = Counts::default();
    // Latencies within the hold, and of the whole phase.
    let (mut accepted, mut all_accepted) = (Vec::new(), Vec::new());
    let (mut refusals, mut all_refusals) = (Vec::new(), Vec::new());
    let (mut hold_accepted, mut hold_bytes) = (0u64, 0u64);
    for s in samples {
        counts.requests += 1;
        let in_hold = s.at_s >= hold.from_s && s.at_s < hold.to_s;
        match s.outcome {
            Outcome::Accepted => {
                counts.accepted += 1;
                all_accepted.push(s.latency_s);
                if in_hold {
                    accepted.push(s.latency_s);
                    hold_accepted += 1;
                    hold_bytes += s.bytes;
                }
            }
            Outcome::Refused | Outcome::Limited => {
                if s.outcome == Outcome::Refused {
                    counts.refused += 1;
                } else {
                    counts.limited += 1;
                }
                all_refusals.push(s.latency_s);
                if in_hold {
                    refusals.push(s.latency_s);
                }
            }
            Outcome::Rejected => counts.rejected += 1,
            Outcome::ServerError => counts.server_errors += 1,
            Outcome::Unanswered => counts.unanswered += 1,
        }
    }
    let hold_refused = refusals.len() as u64;
    if accepted.is_empty() {
        accepted = all_accepted;
    }
    if refusals.is_empty() {
        refusals = all_refusals;
    }
    accepted.sort_by(f64::total_cmp);
    refusals.sort_by(f64::total_cmp);
    let span = (hold.to_s - hold.from_s).max(1e-9);
    Summary {
        counts,
        accepted_per_s: hold_accepted as f64 / span,
        goodput_bytes_per_s: hold_bytes as f64 / span,
        accepted: [
            percentile(&accepted, 50.0),
            percentile(&accepted, 95.0),
            percentile(&accepted, 99.0),
        ],
        refusal: [percentile(&refusals, 50.0), percentile(&refusals, 99.0)],
        hold_accepted,
        hold_refused,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerRun {
    pub name: String,
    pub input_bytes: u64,
    pub workers: usize,
    pub jobs: u64,
    pub seconds: f64,
    pub videos_per_min: f64,
    pub published: u64,
    pub failed: u64,
    pub queue: Vec<QueuePoint>,
    pub cgroup_peak_bytes: Option<u64>,
    pub peak_rss_bytes: u64,
    pub alive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacedRun {
    pub name: String,
    pub workers: usize,
    pub capacity_per_min: f64,
    pub injected_per_min: f64,
    pub seconds: f64,
    /// Least-squares slope of the backlog (depth + in flight), jobs per minute.
    pub backlog_slope_per_min: f64,
    pub max_backlog: u64,
    pub queue: Vec<QueuePoint>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixedRun {
    pub phase: PhaseResult,
    pub drained_after_s: f64,
    pub processed: u64,
    pub not_processed: Vec<String>,
    pub queue: Vec<QueuePoint>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// The median of the dd runs.
    pub disk_fsync_bytes_per_s: f64,
    pub disk_fsync_runs_bytes_per_s: Vec<f64>,
    /// The disk written as the node writes uploads: this many 18 MB files at a time, each
    /// fsynced then removed, with no network or HTTP.
    pub disk_upload_pattern_bytes_per_s: f64,
    pub disk_upload_pattern_writers: usize,
    pub memory_cap_bytes: u64,
    pub memory_cap_applied: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quick: bool,
    /// The send buffer of the virtual users' upload sockets; `None`: autotuned by the kernel.
    pub client_send_buffer_bytes: Option<usize>,
    pub started_at: String,
    pub machine: Machine,
    /// The longest `Retry-After` honouring users waited (0: whatever they were told).
    pub retry_after_cap_s: f64,
    pub web_layer: Vec<PhaseResult>,
    /// Ten times the plan's load and more.
    pub crowd: Vec<PhaseResult>,
    /// The best level, run again before the first crowd level and after each.
    pub crowd_baseline: Vec<PhaseResult>,
    pub mixed: Option<MixedRun>,
    pub worker_layer: Vec<WorkerRun>,
    pub paced: Option<PacedRun>,
}

impl Report {
    pub fn all_verdicts(&self) -> Vec<(String, Verdict)> {
        let mut out = Vec::new();
        for phase in self
            .web_layer
            .iter()
            .chain(&self.crowd)
            .chain(&self.crowd_baseline)
        {
            for v in &phase.verdicts {
                out.push((phase.name.clone(), v.clone()));
            }
        }
        if let Some(mixed) = &self.mixed {
            for v in &mixed.phase.verdicts {
                out.push(("mixed".to_owned(), v.clone()));
            }
            out.push(("mixed".to_owned(), mixed.verdict.clone()));
        }
        if let Some(paced) = &self.paced {
            out.push((paced.name.clone(), paced.verdict.clone()));
        }
        out
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.0}", bytes / 1e6)
}

fn ms(seconds: f64) -> String {
    if seconds >= 10.0 {
        format!("{seconds:.0} s")
    } else if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{:.1} ms", seconds * 1000.0)
    }
}

pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    for section in [
        header,
        against_replaced,
        web_layer,
        crowd,
        worker_layer,
        goals,
    ] {
        section(&mut md, report);
    }
    md
}

/// The title and the machine the run measured.
fn header(md: &mut String, report: &Report) {
    let m = &report.machine;
    let _ = writeln!(
        md,
        "# Capacity benchmark{}\n",
        if report.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Run at {}. Machine: {} cores; disk write bandwidth with `dd conv=fdatasync`: {} MB/s \
         (median of {} MB/s); the same disk written as the node writes uploads ({} files of \
         18 MB at a time, each fsynced then removed, no network): {} MB/s. Memory cap of {} GiB on the node (server and transcode children): **{}**. The load \
         generator runs on the same cores as the node; it sends the file from the page cache \
         with `sendfile`, and its upload sockets have {}.\n",
        report.started_at,
        m.cores,
        mb(m.disk_fsync_bytes_per_s),
        m.disk_fsync_runs_bytes_per_s
            .iter()
            .map(|b| mb(*b))
            .collect::<Vec<_>>()
            .join(", "),
        m.disk_upload_pattern_writers,
        mb(m.disk_upload_pattern_bytes_per_s),
        m.memory_cap_bytes >> 30,
        if m.memory_cap_applied {
            "applied (cgroup v1)"
        } else {
            "not applied (no cgroup could be created)"
        },
        match report.client_send_buffer_bytes {
            Some(bytes) => format!(
                "a send buffer of {} KiB (`--client-send-buffer-kib`), of the order a client's \
                 kernel gives it on a real network path; autotuned over loopback it would grow \
                 to megabytes, pushed by every refused client that does not wait, on these \
                 same cores",
                bytes >> 10
            ),
            None => "the send buffer the kernel autotunes (`--client-send-buffer-kib 0`)".to_owned(),
        }
    );
}

/// The replaced system's figures beside ours, level by level.
fn against_replaced(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "## Against the replaced system (web layer, uploads of 18 MB)\n"
    );
    let _ = writeln!(
        md,
        "| users | replaced: errors | replaced: req/s | replaced: p95 | ours: failed | ours: refused (503/429) | ours: accepted/s | ours: p95 accepted | ours: p99 refusal |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (users, errors, rps, p95) in REPLACED {
        let ours = report
            .web_layer
            .iter()
            .find(|p| p.users == users && p.mode == Mode::Honouring);
        match ours {
            Some(p) => {
                let c = &p.counts;
                let failed = c.server_errors + c.unanswered + c.rejected;
                let _ = writeln!(
                    md,
                    "| {users} | {errors} | {rps} | {p95} | {:.1} % ({failed}) | {:.1} % | {:.2} | {} | {} |",
                    100.0 * failed as f64 / c.requests.max(1) as f64,
                    100.0 * (c.refused + c.limited) as f64 / c.requests.max(1) as f64,
                    p.accepted_per_s,
                    ms(p.accepted_p95_s),
                    ms(p.refusal_p99_s),
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {users} | {errors} | {rps} | {p95} | not run | | | | |"
                );
            }
        }
    }
}

/// Every phase of the web-layer scenario.
fn web_layer(md: &mut String, report: &Report) {
    let _ = writeln!(md, "\n## Scenario 1: web layer, every phase\n");
    let _ = writeln!(
        md,
        "| phase | users | clients | ramp + hold | requests | 201 | 503 | 429 | other 4xx | 5xx | unanswered | accepted/s | goodput MB/s | p50 / p95 / p99 accepted | p99 refusal | mean Retry-After | stored and queued = 201s | peak resident memory |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let phases = report
        .web_layer
        .iter()
        .chain(report.mixed.as_ref().map(|m| &m.phase));
    for p in phases {
        let c = &p.counts;
        let _ = writeln!(
            md,
            "| {} | {} | {:?} | {:.0} + {:.0} s | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} / {} / {} | {} | {:.1} s | {} of {} | {} MB |",
            p.name,
            p.users,
            p.mode,
            p.ramp_s,
            p.hold_s,
            c.requests,
            c.accepted,
            c.refused,
            c.limited,
            c.rejected,
            c.server_errors,
            c.unanswered,
            p.accepted_per_s,
            mb(p.goodput_bytes_per_s),
            ms(p.accepted_p50_s),
            ms(p.accepted_p95_s),
            ms(p.accepted_p99_s),
            ms(p.refusal_p99_s),
            p.retry_after_mean_s,
            p.verified_stored,
            c.accepted,
            mb(p.peak_rss_bytes as f64),
        );
    }
    if let Some(mixed) = &report.mixed {
        let _ = writeln!(
            md,
            "\nMixed run (transcoding on): {} uploads accepted, {} processed once the backlog drained ({:.0} s after the load stopped).",
            mixed.phase.counts.accepted, mixed.processed, mixed.drained_after_s
        );
    }
}

/// Ten times the load and more: the table, and where the CPU went.
fn crowd(md: &mut String, report: &Report) {
    if report.crowd.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## The crowd: ten times the load and more\n");
    let cap = if report.retry_after_cap_s > 0.0 {
        format!("at most {:.0} s", report.retry_after_cap_s)
    } else {
        "whatever they are told".to_owned()
    };
    let _ = writeln!(
        md,
        "Honouring users (they wait the `Retry-After` they are told, {cap}, with up to 50 % \
         jitter), transcoding paused, on the node of scenario 1. Latencies and rates are over \
         the hold; *lost* is 201s not found stored with their job queued. CPU is over the hold, \
         in cores: the node (the server process), the load generator (this benchmark, the \
         kernel's sending of its bytes included), and softirq, the kernel's network work that \
         no process is charged with. *Per refusal* is measured before the hold, at the same \
         crowd, while uploads of the bench held every slot and the node did nothing but \
         refuse (the refusals-only window, its p99 beside it), less what the node spends at \
         rest with its slots held (measured for 3 s before the crowd comes); *per accepted* is what the node \
         spent over the hold beyond its refusals at that cost, per accepted upload (the \
         bench's check and deletion of each upload included). *Of the best level* compares \
         the accepted rate with the best level's, run again with the crowd's timing just \
         before and just after that crowd level (the mean of the two).\n"
    );
    let _ = writeln!(
        md,
        "| users | accepted/s | of the best level (before, after) | refused | errors | lost | p95 accepted | p99 refusal | peak RSS | node CPU | load generator CPU | softirq | CPU per refusal (refusals only: p99) | CPU per accepted upload |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &report.crowd {
        let c = &p.counts;
        let cores = report.machine.cores as f64;
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} MiB | {:.2} | {:.2} ({:.0} % of the machine) | {:.2} | {} | {} |",
            p.users,
            p.accepted_per_s,
            p.baseline.as_ref().map_or("-".to_owned(), |b| format!(
                "{:.0} % ({:.1}, {:.1})",
                100.0 * p.accepted_per_s / b.per_s().max(1e-9),
                b.before_per_s,
                b.after_per_s
            )),
            c.refused + c.limited,
            c.rejected + c.server_errors + c.unanswered,
            c.accepted.saturating_sub(p.verified_stored),
            ms(p.accepted_p95_s),
            ms(p.refusal_p99_s),
            p.peak_rss_bytes >> 20,
            p.cpu.node_cores(),
            p.cpu.client_cores(),
            100.0 * p.cpu.client_cores() / cores,
            p.cpu.softirq_s / p.cpu.seconds.max(1e-9),
            match (p.cpu_per_refusal_s(), &p.refusals_only) {
                (Some(s), Some(w)) => format!("{:.0} µs ({})", s * 1e6, ms(w.refusal_p99_s)),
                _ => "-".to_owned(),
            },
            p.cpu_per_accepted_s()
                .map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1e3)),
        );
    }
}

/// The transcoding runs and the paced backlog.
fn worker_layer(md: &mut String, report: &Report) {
    let _ = writeln!(md, "\n## Scenario 2: worker layer\n");
    let _ = writeln!(md, "| run | input | workers | jobs | seconds | videos/min | published | failed | peak resident memory |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for w in &report.worker_layer {
        let _ = writeln!(
            md,
            "| {} | {} MB | {} | {} | {:.0} | **{:.2}** | {} | {} | {} MB |",
            w.name,
            mb(w.input_bytes as f64),
            w.workers,
            w.jobs,
            w.seconds,
            w.videos_per_min,
            w.published,
            w.failed,
            mb(w.peak_rss_bytes as f64),
        );
    }
    if let Some(p) = &report.paced {
        let _ = writeln!(
            md,
            "\nBacklog under a steady injection of {:.2} videos/min (capacity {:.2} with {} workers) for {:.0} s: slope {:+.2} jobs/min, at most {} waiting or running.",
            p.injected_per_min, p.capacity_per_min, p.workers, p.seconds, p.backlog_slope_per_min, p.max_backlog
        );
    }
}

/// Every goal and its verdict.
fn goals(md: &mut String, report: &Report) {
    let _ = writeln!(md, "\n## Goals\n");
    let _ = writeln!(md, "| phase | goal | verdict | measured |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (phase, v) in report.all_verdicts() {
        let _ = writeln!(
            md,
            "| {phase} | {} | {} | {} |",
            v.goal,
            if v.pass { "PASS" } else { "**FAIL**" },
            v.detail
        );
    }
    let _ = writeln!(
        md,
        "\nPlots: `latency.png` (percentiles against users), `throughput.png` (accepted uploads and goodput against users), `queue.png` (queue over time)."
    );
}

/// Registers a TrueType font for the plots' text (plotters has no font of its own).
pub fn load_font() -> Result<(), String> {
    const CANDIDATES: [&str; 2] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable font"));
        }
    }
    Err("no TrueType font found (install fonts-dejavu-core)".into())
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn levels(report: &Report) -> Vec<&PhaseResult> {
    let mut levels: Vec<&PhaseResult> = report
        .web_layer
        .iter()
        .filter(|p| p.mode == Mode::Honouring)
        .collect();
    levels.sort_by_key(|p| p.users);
    levels
}

pub fn plot_latency(report: &Report, path: &Path) -> PlotResult {
    let levels = levels(report);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_users = levels.iter().map(|p| p.users).max().unwrap_or(1) as f64 * 1.05;
    let all_ms = levels.iter().flat_map(|p| {
        [
            p.accepted_p50_s,
            p.accepted_p95_s,
            p.accepted_p99_s,
            p.refusal_p99_s,
        ]
        .map(|s| s * 1000.0)
    });
    let max_ms = all_ms.fold(10.0f64, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Upload latency against users (18 MB uploads)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_users, (0.1f64..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrent users")
        .y_desc("milliseconds (log)")
        .draw()?;
    type Figure = fn(&PhaseResult) -> f64;
    let series: [(&str, RGBColor, Figure); 4] = [
        ("p50 accepted", BLUE, |p| p.accepted_p50_s),
        ("p95 accepted", GREEN, |p| p.accepted_p95_s),
        ("p99 accepted", RED, |p| p.accepted_p99_s),
        ("p99 refusal", MAGENTA, |p| p.refusal_p99_s),
    ];
    for (label, color, value) in series {
        // A phase with no refusal has no refusal latency to draw.
        let points: Vec<(f64, f64)> = levels
            .iter()
            .filter(|p| value(p) > 0.0)
            .map(|p| (p.users as f64, (value(p) * 1000.0).max(0.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    // The goals.
    for (limit_ms, color) in [(1000.0, GREEN), (50.0, MAGENTA)] {
        chart.draw_series(LineSeries::new(
            [(0.0, limit_ms), (max_users, limit_ms)],
            color.mix(0.4),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn plot_throughput(report: &Report, path: &Path) -> PlotResult {
    let levels = levels(report);
    let root = BitMapBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let max_users = levels.iter().map(|p| p.users).max().unwrap_or(1) as f64 * 1.05;
    let max_rate = levels.iter().map(|p| p.accepted_per_s).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Accepted uploads per second against users",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_users, 0f64..max_rate)?;
    chart
        .configure_mesh()
        .x_desc("concurrent users")
        .y_desc("uploads/s")
        .draw()?;
    let points: Vec<(f64, f64)> = levels
        .iter()
        .map(|p| (p.users as f64, p.accepted_per_s))
        .collect();
    chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?;
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, BLUE.filled())))?;

    let disk = report.machine.disk_fsync_bytes_per_s / 1e6;
    let max_mb = levels
        .iter()
        .map(|p| p.goodput_bytes_per_s / 1e6)
        .fold(disk, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "Upload goodput against users (line: disk fsync bandwidth, dashed: 70 %)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_users, 0f64..max_mb)?;
    chart
        .configure_mesh()
        .x_desc("concurrent users")
        .y_desc("MB/s")
        .draw()?;
    let points: Vec<(f64, f64)> = levels
        .iter()
        .map(|p| (p.users as f64, p.goodput_bytes_per_s / 1e6))
        .collect();
    chart.draw_series(LineSeries::new(points.clone(), GREEN.stroke_width(2)))?;
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, GREEN.filled())),
    )?;
    chart.draw_series(LineSeries::new(
        [(0.0, disk), (max_users, disk)],
        BLACK.mix(0.5),
    ))?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, disk * 0.7), (max_users, disk * 0.7)],
        6,
        4,
        RED.mix(0.6).into(),
    ))?;
    root.present()?;
    Ok(())
}

pub fn plot_queue(report: &Report, path: &Path) -> PlotResult {
    let mut runs: Vec<(String, &[QueuePoint])> = report
        .worker_layer
        .iter()
        .map(|w| {
            (
                format!("{} MB, {} workers", mb(w.input_bytes as f64), w.workers),
                w.queue.as_slice(),
            )
        })
        .collect();
    if let Some(p) = &report.paced {
        runs.push((
            format!(
                "steady {:.1}/min, {} workers",
                p.injected_per_min, p.workers
            ),
            p.queue.as_slice(),
        ));
    }
    if let Some(m) = &report.mixed {
        runs.push(("mixed run".to_owned(), m.queue.as_slice()));
    }
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_t = runs
        .iter()
        .flat_map(|(_, q)| q.iter().map(|p| p.t_s))
        .fold(10.0, f64::max);
    let max_depth = runs
        .iter()
        .flat_map(|(_, q)| q.iter().map(|p| p.backlog() as f64))
        .fold(2.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Processing backlog over time (waiting + running)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_t, 0f64..max_depth)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("jobs")
        .draw()?;
    for (i, (label, queue)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                queue.iter().map(|p| (p.t_s, p.backlog() as f64)),
                color.stroke_width(2),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Least-squares slope of y over t (per second).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 95.0), 95.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(percentile(&[7.0], 1.0), 7.0);
    }

    fn sample(at_s: f64, latency_s: f64, outcome: Outcome) -> Sample {
        Sample {
            at_s,
            latency_s,
            outcome,
            status: if outcome == Outcome::Accepted {
                201
            } else {
                503
            },
            bytes: 10,
            retry_after_s: None,
        }
    }

    #[test]
    fn latencies_and_rates_are_the_holds_unless_it_saw_none() {
        let hold = Window {
            from_s: 10.0,
            to_s: 20.0,
        };
        let samples = [
            // The ramp: slow, left out of the hold's figures.
            sample(1.0, 9.0, Outcome::Accepted),
            sample(2.0, 8.0, Outcome::Refused),
            sample(12.0, 0.2, Outcome::Accepted),
            sample(13.0, 0.01, Outcome::Refused),
            sample(14.0, 0.02, Outcome::Limited),
        ];
        let summary = summarize(&samples, &hold);
        assert_eq!(summary.counts.requests, 5);
        assert_eq!((summary.counts.accepted, summary.counts.refused), (2, 2));
        assert_eq!((summary.hold_accepted, summary.hold_refused), (1, 2));
        assert_eq!(summary.accepted[2], 0.2);
        assert_eq!(summary.refusal[1], 0.02);
        assert!((summary.accepted_per_s - 0.1).abs() < 1e-9);
        // A run whose uploads were all accepted early still reports their latencies.
        let early = [
            sample(1.0, 0.3, Outcome::Accepted),
            sample(12.0, 0.01, Outcome::Refused),
        ];
        let summary = summarize(&early, &hold);
        assert_eq!(summary.hold_accepted, 0);
        assert_eq!(summary.accepted[1], 0.3);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 3.0 + 0.5 * t as f64)).collect();
        assert!((slope(&points) - 0.5).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
