//! Observability: one typed [`Event`] per observable thing, emitted once, which feeds both its
//! log line and its metric, so the two never disagree.
//!
//! Metrics live in one process-wide Prometheus registry and are rendered by `GET /metrics` in
//! the Prometheus text format (`showcase_` prefix, `_total` counters, seconds and bytes as
//! units). Figures that are states rather than events (queue depth, active streams, resident
//! memory, free disk) are read at scrape time.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Everything worth a log line and a metric.
#[derive(Debug, Clone)]
pub enum Event {
    HttpRequest {
        route: &'static str,
        method: &'static str,
        status: u16,
        seconds: f64,
    },
    UploadAccepted {
        video_id: u64,
        owner_id: u64,
        bytes: u64,
    },
    UploadRefused {
        reason: &'static str,
    },
    /// A connection answered before its request body was read ended with a lingering close.
    LingeringClose {
        /// Body bytes thrown away: drained, plus those left unread when the client was cut off.
        discarded_bytes: u64,
        /// The client was still sending past the drain budget, so we stopped reading and closed.
        cut_off: bool,
    },
    /// A connection taken over the connection cap, from the operations reserve, that sent
    /// nothing in time and was closed unserved (a slow-loris, most likely).
    IdleConnectionShed,
    /// An upload's probe did not finish within its deadline; the upload was refused and the
    /// probe's thread abandoned (a parser stuck without reading: worth a bug report).
    ProbeAbandoned {
        deadline_ms: u64,
    },
    JobFinished {
        video_id: u64,
        outcome: JobOutcome,
        seconds: f64,
        detail: String,
    },
    ActorStarted {
        actor: &'static str,
        restarts: u32,
    },
    ActorEnded {
        actor: &'static str,
        reason: String,
        restarting: bool,
    },
    SupervisorEscalated {
        reason: String,
    },
    /// One call to a storage or queue service (S3, SQS), its retries included.
    BackendCall {
        /// `s3` or `sqs`.
        service: String,
        /// The service's name for it: `PutObject`, `ReceiveMessage`...
        operation: String,
        outcome: CallOutcome,
        seconds: f64,
    },
}

/// How a call to a backend service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// Answered with a 4xx (a missing key, a refused request).
    ClientError,
    /// Answered with a 5xx (throttling, an outage).
    ServerError,
    /// No answer in time.
    Timeout,
    /// No connection.
    Unreachable,
    Other,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ClientError => "client_error",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Unreachable => "unreachable",
            CallOutcome::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Published,
    /// Given back for another attempt.
    Retried,
    DeadLettered,
    Cancelled,
    /// Delivered again after its video was published or deleted: nothing to do.
    Skipped,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 5] = [
        JobOutcome::Published,
        JobOutcome::Retried,
        JobOutcome::DeadLettered,
        JobOutcome::Cancelled,
        JobOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Published => "published",
            JobOutcome::Retried => "retried",
            JobOutcome::DeadLettered => "dead_lettered",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Skipped => "skipped",
        }
    }
}

/// The metrics fed by events, plus the gauges filled at scrape time.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    uploads_accepted: IntCounter,
    upload_bytes: IntCounter,
    uploads_refused: IntCounterVec,
    lingering_closes: IntCounter,
    lingering_cut_offs: IntCounter,
    discarded_bytes: IntCounter,
    probes_abandoned: IntCounter,
    idle_connections_shed: IntCounter,
    jobs: IntCounterVec,
    job_duration: HistogramVec,
    actor_restarts: IntCounterVec,
    escalations: IntCounter,
    backend_calls: IntCounterVec,
    backend_duration: HistogramVec,
    pub queue_depth: IntGauge,
    pub queue_in_flight: IntGauge,
    pub queue_dead_letters: IntGauge,
    pub backlog_per_worker: Gauge,
    pub platform_nodes: IntGaugeVec,
    pub streams_active: IntGauge,
    pub stream_bytes: IntGauge,
    pub streams_refused: IntGauge,
    pub resident_memory: IntGauge,
    pub disk_free: IntGauge,
    pub uptime: Gauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let latency = exponential_buckets(0.001, 2.5, 12).expect("valid buckets");
        let jobs = exponential_buckets(1.0, 2.0, 11).expect("valid buckets");
        let uptime = Gauge::new(
            "showcase_uptime_seconds",
            "Seconds since the process started.",
        )
        .expect("valid");
        r.register(Box::new(uptime.clone())).expect("unique metric");
        Self {
            http_requests: counter_vec(
                &r,
                "showcase_http_requests_total",
                "HTTP requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                &r,
                "showcase_http_request_duration_seconds",
                "Time to answer an HTTP request (until the response head), by route.",
                &["route"],
                latency.clone(),
            ),
            uploads_accepted: counter(
                &r,
                "showcase_uploads_accepted_total",
                "Uploads stored and queued (answered 201).",
            ),
            upload_bytes: counter(
                &r,
                "showcase_upload_bytes_total",
                "Bytes of accepted uploads.",
            ),
            uploads_refused: counter_vec(
                &r,
                "showcase_uploads_refused_total",
                "Uploads refused before or while being read, by reason.",
                &["reason"],
            ),
            idle_connections_shed: counter(
                &r,
                "showcase_http_idle_connections_shed_total",
                "Connections over the cap, from the operations reserve, closed because they sent nothing.",
            ),
            probes_abandoned: counter(
                &r,
                "showcase_probes_abandoned_total",
                "Upload probes that missed their deadline (the upload was refused, the thread abandoned).",
            ),
            lingering_closes: counter(
                &r,
                "showcase_http_lingering_closes_total",
                "Connections answered before their request body was read, closed by a lingering close.",
            ),
            lingering_cut_offs: counter(
                &r,
                "showcase_http_lingering_cut_offs_total",
                "Lingering closes that stopped reading a client still sending and closed without the rest.",
            ),
            discarded_bytes: counter(
                &r,
                "showcase_http_discarded_request_bytes_total",
                "Request body bytes received and thrown away by lingering closes.",
            ),
            jobs: counter_vec(
                &r,
                "showcase_jobs_total",
                "Processing jobs ended, by outcome.",
                &["outcome"],
            ),
            job_duration: histogram(
                &r,
                "showcase_job_duration_seconds",
                "Time a processing job ran, by outcome.",
                &["outcome"],
                jobs,
            ),
            actor_restarts: counter_vec(
                &r,
                "showcase_actor_restarts_total",
                "Actor restarts by the Supervisor, by actor.",
                &["actor"],
            ),
            escalations: counter(
                &r,
                "showcase_supervisor_escalations_total",
                "Times the Supervisor gave up and escalated.",
            ),
            backend_calls: counter_vec(
                &r,
                "showcase_backend_requests_total",
                "Calls to S3 and SQS (retries included), by service, operation and outcome.",
                &["service", "operation", "outcome"],
            ),
            backend_duration: histogram(
                &r,
                "showcase_backend_request_duration_seconds",
                "Time a call to S3 or SQS took (to the response head for downloads), by service and operation.",
                &["service", "operation"],
                latency,
            ),
            queue_depth: gauge(
                &r,
                "showcase_queue_depth",
                "Jobs waiting in the processing queue.",
            ),
            queue_in_flight: gauge(
                &r,
                "showcase_queue_in_flight",
                "Jobs received and not yet finished.",
            ),
            queue_dead_letters: gauge(
                &r,
                "showcase_queue_dead_letters",
                "Jobs in the dead letters.",
            ),
            backlog_per_worker: {
                let g = Gauge::new(
                    "showcase_queue_backlog_per_worker",
                    "Jobs waiting per worker node of the platform (the worker group's scaling signal).",
                )
                .expect("valid");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            platform_nodes: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "showcase_platform_nodes",
                        "Nodes of the platform seen alive in the last 10 s, by what they do (a node of role all counts as both).",
                    ),
                    &["role"],
                )
                .expect("valid");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            streams_active: gauge(
                &r,
                "showcase_streams_active",
                "Media responses sending now.",
            ),
            stream_bytes: gauge(
                &r,
                "showcase_stream_bytes_served",
                "Media bytes handed to sockets since start.",
            ),
            streams_refused: gauge(
                &r,
                "showcase_streams_refused",
                "Media requests refused for lack of a stream permit since start.",
            ),
            resident_memory: gauge(
                &r,
                "showcase_process_resident_memory_bytes",
                "Resident memory of the server process.",
            ),
            disk_free: gauge(
                &r,
                "showcase_disk_free_bytes",
                "Free bytes on the data disk.",
            ),
            uptime,
            registry: r,
        }
    }

    /// Outcomes are a closed set: their series are created at 0 so that rates are defined.
    fn with_known_series(self) -> Self {
        for outcome in JobOutcome::ALL {
            self.jobs.with_label_values(&[outcome.as_str()]);
        }
        self
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().with_known_series())
}

/// Records an event: its metric, then its log line.
/// How often, at most, an event that can come in floods writes its log line.
pub const SPARSE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A log line that is written at most once per period, however often its event comes; the
/// events it leaves out are counted into the next line.
pub struct Sparse {
    every_ms: u64,
    /// Milliseconds after the process's first sparse event when the last line was written,
    /// plus one (0: never).
    last_ms: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

impl Sparse {
    pub const fn new(every: std::time::Duration) -> Self {
        Self {
            every_ms: every.as_millis() as u64,
            last_ms: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(events left out since the last line)` when a line is due now, else `None` (and
    /// this event is counted for the next line).
    pub fn take(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.last_ms.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Relaxed))
        } else {
            self.unlogged.fetch_add(1, Relaxed);
            None
        }
    }
}

pub fn emit(event: Event) {
    let m = metrics();
    match event {
        Event::HttpRequest {
            route,
            method,
            status,
            seconds,
        } => {
            // The status's digits without formatting them: `StatusCode` keeps them as text.
            let code = http::StatusCode::from_u16(status);
            let label = code.as_ref().map_or("other", |code| code.as_str());
            m.http_requests
                .with_label_values(&[route, method, label])
                .inc();
            m.http_duration.with_label_values(&[route]).observe(seconds);
            tracing::debug!(
                route,
                method,
                status,
                ms = (seconds * 1000.0) as u64,
                "request"
            );
        }
        Event::UploadAccepted {
            video_id,
            owner_id,
            bytes,
        } => {
            m.uploads_accepted.inc();
            m.upload_bytes.inc_by(bytes);
            tracing::info!(video_id, owner_id, bytes, "upload accepted");
        }
        Event::UploadRefused { reason } => {
            m.uploads_refused.with_label_values(&[reason]).inc();
            // A crowd is refused by the thousand a second: one line per refusal would cost more
            // than the refusal. The metric counts each; the log says so once in a while.
            static LINES: Sparse = Sparse::new(SPARSE_LOG_EVERY);
            match LINES.take() {
                Some(unlogged) => tracing::info!(
                    reason,
                    unlogged_before = unlogged,
                    "upload refused (one line per {} s at most; the metric counts each)",
                    SPARSE_LOG_EVERY.as_secs()
                ),
                None => tracing::debug!(reason, "upload refused"),
            }
        }
        Event::LingeringClose {
            discarded_bytes,
            cut_off,
        } => {
            m.lingering_closes.inc();
            if cut_off {
                m.lingering_cut_offs.inc();
            }
            m.discarded_bytes.inc_by(discarded_bytes);
            tracing::debug!(discarded_bytes, cut_off, "lingering close");
        }
        Event::IdleConnectionShed => {
            m.idle_connections_shed.inc();
            tracing::debug!("an idle connection over the cap was closed");
        }
        Event::ProbeAbandoned { deadline_ms } => {
            m.probes_abandoned.inc();
            tracing::error!(
                deadline_ms,
                "an upload's probe missed its deadline; its thread is abandoned"
            );
        }
        Event::JobFinished {
            video_id,
            outcome,
            seconds,
            detail,
        } => {
            m.jobs.with_label_values(&[outcome.as_str()]).inc();
            m.job_duration
                .with_label_values(&[outcome.as_str()])
                .observe(seconds);
            match outcome {
                JobOutcome::Published | JobOutcome::Skipped | JobOutcome::Cancelled => {
                    tracing::info!(video_id, outcome = outcome.as_str(), seconds, %detail, "job finished")
                }
                JobOutcome::Retried | JobOutcome::DeadLettered => {
                    tracing::warn!(video_id, outcome = outcome.as_str(), seconds, %detail, "job finished")
                }
            }
        }
        Event::ActorStarted { actor, restarts } => {
            // The series exists from the first start, so a dashboard sees 0 rather than nothing.
            m.actor_restarts.with_label_values(&[actor]);
            tracing::info!(actor, restarts, "actor started");
        }
        Event::ActorEnded {
            actor,
            reason,
            restarting,
        } => {
            if restarting {
                m.actor_restarts.with_label_values(&[actor]).inc();
            }
            tracing::warn!(actor, %reason, restarting, "actor ended");
        }
        Event::SupervisorEscalated { reason } => {
            m.escalations.inc();
            tracing::error!(%reason, "the supervisor escalated: the node will restart");
        }
        Event::BackendCall {
            service,
            operation,
            outcome,
            seconds,
        } => {
            m.backend_calls
                .with_label_values(&[&service, &operation, outcome.as_str()])
                .inc();
            m.backend_duration
                .with_label_values(&[&service, &operation])
                .observe(seconds);
            if outcome == CallOutcome::Ok {
                tracing::trace!(%service, %operation, seconds, "backend call");
            } else {
                tracing::debug!(%service, %operation, outcome = outcome.as_str(), seconds, "backend call failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sparse_line_is_written_once_per_period_and_counts_what_it_left_out() {
        let every = std::time::Duration::from_millis(300);
        let sparse = Sparse::new(every);
        assert_eq!(sparse.take(), Some(0), "the first event is logged");
        for _ in 0..5 {
            assert_eq!(sparse.take(), None, "events within the period are not");
        }
        std::thread::sleep(every + std::time::Duration::from_millis(50));
        assert_eq!(
            sparse.take(),
            Some(5),
            "the next line counts those left out"
        );
        assert_eq!(sparse.take(), None);
    }

    use super::*;

    #[test]
    fn events_move_their_metrics() {
        let before = metrics()
            .uploads_refused
            .with_label_values(&["test_reason"])
            .get();
        emit(Event::UploadRefused {
            reason: "test_reason",
        });
        assert_eq!(
            metrics()
                .uploads_refused
                .with_label_values(&["test_reason"])
                .get(),
            before + 1
        );
        emit(Event::HttpRequest {
            route: "/test",
            method: "GET",
            status: 200,
            seconds: 0.01,
        });
        let text = metrics().render();
        assert!(text.contains("showcase_uploads_refused_total{reason=\"test_reason\"}"));
        assert!(text.contains("showcase_http_request_duration_seconds_bucket{route=\"/test\""));
    }
}
