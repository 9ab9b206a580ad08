//! Transcoder: runs each transcode in a child process of the same binary
//! (`showcase transcode ...`) and watches it.
//!
//! Each child:
//! - runs in a process group of its own, so a kill takes everything it started;
//! - dies with the server: a parent-death signal (SIGKILL) is armed before `exec`, and the
//!   child is started from a thread that lives exactly as long as the child (the signal follows
//!   the thread that forked, not the process);
//! - has an address-space limit (`transcode.memory_limit_mb`), a CPU-time limit (the timeout
//!   on every core), a file-size limit ([`OUTPUT_LIMIT_BYTES`]) and few open files, a
//!   wall-clock timeout and a stall watchdog on its progress lines; breaking any of them ends
//!   it;
//! - can gain no privilege (`PR_SET_NO_NEW_PRIVS`) and confines itself with Landlock before it
//!   opens its input (`crate::sandbox`): it reads its input and writes its job directory, and
//!   nothing else of the node.
//!
//! A crash, an out-of-memory or a hang inside libav therefore costs one child, never the server.
//! The number of children is bounded by the slots the queue consumer holds (one permit travels
//! with each request); this actor never queues work of its own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::call::Reply;
use crate::config::Encoding;
use crate::domain::VideoId;
use crate::engine::transcode::{ChildEvent, TranscodeReport, TranscodeSpec, EXIT_PERMANENT};
use crate::faults::Faults;
use crate::health::{ActorHealth, ActorState};

/// How much of a child's stderr is kept to explain its failure.
const STDERR_TAIL_BYTES: usize = 2048;
/// Largest file a child may write. A 35 s 720p rendition is a few MiB to a few tens; only an
/// input built to blow it up comes near this.
pub const OUTPUT_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// Files a child may have open: its pipes, input, outputs and the logo, with room to spare.
const CHILD_OPEN_FILES: u64 = 64;

#[derive(Debug, Clone)]
pub struct TranscoderSettings {
    /// The executable run as `<program> transcode ...`.
    pub program: PathBuf,
    pub encoding: Encoding,
    pub memory_limit_bytes: u64,
    /// CPU time a child may use, all its threads together.
    pub cpu_limit: Duration,
    pub timeout: Duration,
    pub stall: Duration,
    /// The file the `escape` fault makes a child try to read (the node's secret).
    pub escape_target: PathBuf,
}

/// Why a transcode produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeFailure {
    /// The input cannot be decoded: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// A crash, a kill by a watchdog, an I/O error: another attempt may succeed.
    #[error("{0}")]
    Transient(String),
    /// Stopped on request (the video was deleted) or because the caller went away.
    #[error("cancelled")]
    Cancelled,
}

/// Transcodes one video. The slot is released when the child is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunTranscode {
    pub video_id: VideoId,
    pub input: PathBuf,
    pub output: PathBuf,
    pub poster: PathBuf,
    pub slot: OwnedSemaphorePermit,
    /// Progress percentages, sent best-effort.
    pub progress: mpsc::Sender<u8>,
    pub reply: Reply<Result<TranscodeReport, TranscodeFailure>>,
}

/// Stops the transcode of a video, if one runs. Answers whether one did.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTranscode {
    pub video_id: VideoId,
    pub reply: Reply<bool>,
}

/// A running child, as the actor and its watchers see it.
#[derive(Debug)]
struct RunningChild {
    pid: i32,
    cancelled: Arc<AtomicBool>,
}

type Children = Arc<Mutex<HashMap<VideoId, RunningChild>>>;

pub struct Transcoder {
    settings: TranscoderSettings,
    faults: Arc<Faults>,
    health: Arc<ActorHealth>,
    /// Shared with the watchers; outlives a restart of the actor.
    children: Children,
}

impl Transcoder {
    pub fn new(
        settings: TranscoderSettings,
        faults: Arc<Faults>,
        health: Arc<ActorHealth>,
        children: Arc<TranscoderChildren>,
    ) -> Self {
        Self {
            settings,
            faults,
            health,
            children: children.0.clone(),
        }
    }
}

/// The table of running children, created once and handed to every incarnation.
#[derive(Debug, Default)]
pub struct TranscoderChildren(Children);

impl TranscoderChildren {
    /// Kills every running child (orderly shutdown).
    pub fn kill_all(&self) {
        for child in lock(&self.0).values() {
            kill_group(child.pid);
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.0).len()
    }
}

fn lock(children: &Children) -> std::sync::MutexGuard<'_, HashMap<VideoId, RunningChild>> {
    children.lock().unwrap_or_else(|p| p.into_inner())
}

fn kill_group(pid: i32) {
    // SAFETY: signalling a process group we created; a stale id at worst signals nothing.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

impl Actor for Transcoder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        self.health.heartbeat();
        ctx.run_interval(Duration::from_millis(500), |act, _| act.health.heartbeat());
    }
}

impl Handler<CancelTranscode> for Transcoder {
    type Result = ();

    fn handle(&mut self, msg: CancelTranscode, _: &mut Self::Context) {
        let found = match lock(&self.children).get(&msg.video_id) {
            Some(child) => {
                child.cancelled.store(true, Ordering::Release);
                kill_group(child.pid);
                true
            }
            None => false,
        };
        msg.reply.send(found);
    }
}

impl Handler<RunTranscode> for Transcoder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: RunTranscode, _: &mut Self::Context) -> Self::Result {
        let settings = self.settings.clone();
        let fault = self.faults.transcode_child();
        let children = self.children.clone();
        let in_flight = self.health.start_work();
        Box::pin(async move {
            let _in_flight = in_flight;
            let RunTranscode {
                video_id,
                input,
                output,
                poster,
                slot,
                progress,
                mut reply,
            } = msg;
            let spec = TranscodeSpec {
                input,
                output,
                poster,
                encoding: settings.encoding.clone(),
            };
            let result = match start_child(&settings, &spec, fault).await {
                Ok((pid, events)) => {
                    let cancelled = Arc::new(AtomicBool::new(false));
                    lock(&children).insert(
                        video_id,
                        RunningChild {
                            pid,
                            cancelled: cancelled.clone(),
                        },
                    );
                    let result =
                        watch(pid, events, &settings, &progress, &mut reply, &cancelled).await;
                    lock(&children).remove(&video_id);
                    result
                }
                Err(e) => Err(TranscodeFailure::Transient(format!(
                    "the transcoder could not start: {e}"
                ))),
            };
            drop(slot);
            reply.send(result);
        })
    }
}

/// What the thread that owns a child reports.
enum ChildMessage {
    Event(ChildEvent),
    Exited {
        status: ExitStatus,
        stderr_tail: String,
    },
}

/// Starts a transcode child for `spec`; returns its pid and the channel of what it reports.
/// The child is owned by a thread of its own, which reads its progress lines and its exit.
async fn start_child(
    settings: &TranscoderSettings,
    spec: &TranscodeSpec,
    fault: Option<crate::engine::transcode::ChildFault>,
) -> std::io::Result<(i32, mpsc::UnboundedReceiver<ChildMessage>)> {
    let mut command = child_command(settings, spec, fault);
    confine_before_exec(&mut command, settings);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (spawned_tx, spawned) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("transcode-child".into())
        .spawn(move || own_child(command, spawned_tx, events_tx))?;
    let pid = spawned
        .await
        .map_err(|_| std::io::Error::other("the child thread ended before spawning"))??;
    Ok((pid, events))
}

/// `showcase transcode ...` for `spec`, with nothing of the server's environment.
fn child_command(
    settings: &TranscoderSettings,
    spec: &TranscodeSpec,
    fault: Option<crate::engine::transcode::ChildFault>,
) -> Command {
    let mut command = Command::new(&settings.program);
    command
        .arg("transcode")
        .arg("--input")
        .arg(&spec.input)
        .arg("--output")
        .arg(&spec.output)
        .arg("--poster")
        .arg(&spec.poster)
        .args(spec.encoding.to_args())
        // Nothing of the server's environment (it may hold secrets given as variables):
        // only few malloc arenas, since each reserves address space, which the limit counts.
        .env_clear()
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fault) = fault {
        use crate::engine::transcode::ChildFault;
        let name = match fault {
            ChildFault::Crash => "crash",
            ChildFault::Hang => "hang",
            ChildFault::Escape => "escape",
        };
        command.arg("--fault").arg(name);
        if fault == ChildFault::Escape {
            command.arg("--escape-target").arg(&settings.escape_target);
        }
    }
    command
}

/// What the child does between fork and exec: its own process group, death with the parent,
/// resource limits, no new privileges, the bulk CPU priority.
fn confine_before_exec(command: &mut Command, settings: &TranscoderSettings) {
    let parent = std::process::id() as libc::pid_t;
    let cpu_s = settings.cpu_limit.as_secs().max(1);
    let limits = [
        (
            libc::RLIMIT_AS,
            settings.memory_limit_bytes,
            settings.memory_limit_bytes,
        ),
        // SIGXCPU at the soft limit, SIGKILL at the hard one.
        (libc::RLIMIT_CPU, cpu_s, cpu_s + 5),
        (libc::RLIMIT_FSIZE, OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES),
        (libc::RLIMIT_NOFILE, CHILD_OPEN_FILES, CHILD_OPEN_FILES),
    ];
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            for (resource, soft, hard) in limits {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing it executes may gain privileges (and Landlock needs this unprivileged).
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Encoding is bulk work: requests come first when the cores are saturated. A
            // failure would only leave the priority as it was.
            let _ = crate::system::lower_own_priority_to_bulk();
            Ok(())
        });
    }
}

/// The body of a child's thread: spawns it, reports its pid, forwards its progress lines,
/// and reports how it exited with the tail of its stderr.
fn own_child(
    mut command: Command,
    spawned_tx: tokio::sync::oneshot::Sender<std::io::Result<i32>>,
    events_tx: mpsc::UnboundedSender<ChildMessage>,
) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = spawned_tx.send(Err(e));
            return;
        }
    };
    let _ = spawned_tx.send(Ok(child.id() as i32));
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || stderr.map(tail_of).unwrap_or_default());
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<ChildEvent>(&line) {
                let _ = events_tx.send(ChildMessage::Event(event));
            }
        }
    }
    // Stdout closed: the child is exiting (or was killed). This thread outlives it.
    let status = child.wait();
    let stderr_tail = stderr_reader.join().unwrap_or_default();
    if let Ok(status) = status {
        let _ = events_tx.send(ChildMessage::Exited {
            status,
            stderr_tail,
        });
    }
}

/// The last [`STDERR_TAIL_BYTES`] of what `stream` says, as text.
fn tail_of(mut stream: impl Read) -> String {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    String::from_utf8_lossy(&tail).trim().to_string()
}

/// Logs how far a child could confine itself: a warning the first time it falls short (the
/// kernel will not change while the process runs), a debug line otherwise.
fn report_confinement(confinement: &crate::sandbox::Confinement, detail: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if *confinement != crate::sandbox::Confinement::Full && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(%detail, "transcode children are not fully confined on this kernel");
    } else {
        tracing::debug!(%detail, "transcode child confinement");
    }
}

/// Follows a child to its end, enforcing the timeout, the stall watchdog and cancellation.
async fn watch(
    pid: i32,
    mut events: mpsc::UnboundedReceiver<ChildMessage>,
    settings: &TranscoderSettings,
    progress: &mpsc::Sender<u8>,
    reply: &mut Reply<Result<TranscodeReport, TranscodeFailure>>,
    cancelled: &AtomicBool,
) -> Result<TranscodeReport, TranscodeFailure> {
    let deadline = Instant::now() + settings.timeout;
    let mut last_progress = Instant::now();
    let mut outcome: Option<ChildEvent> = None;
    let mut killed_because: Option<String> = None;
    let (status, stderr_tail) = loop {
        let stalled_at = last_progress + settings.stall;
        tokio::select! {
            message = events.recv() => match message {
                Some(ChildMessage::Event(ChildEvent::Progress { percent, .. })) => {
                    last_progress = Instant::now();
                    let _ = progress.try_send(percent);
                }
                Some(ChildMessage::Event(ChildEvent::Confined { confinement, detail })) => {
                    report_confinement(&confinement, &detail);
                }
                Some(ChildMessage::Event(event)) => outcome = Some(event),
                Some(ChildMessage::Exited { status, stderr_tail }) => break (Some(status), stderr_tail),
                None => break (None, String::new()),
            },
            _ = tokio::time::sleep_until(deadline), if killed_because.is_none() => {
                kill_group(pid);
                killed_because = Some(format!("timed out after {} s", settings.timeout.as_secs()));
            }
            _ = tokio::time::sleep_until(stalled_at), if killed_because.is_none() => {
                kill_group(pid);
                killed_because = Some(format!("stalled: no progress for {} s", settings.stall.as_secs()));
            }
            _ = reply.closed(), if killed_because.is_none() => {
                kill_group(pid);
                cancelled.store(true, Ordering::Release);
                killed_because = Some("the caller went away".into());
            }
        }
    };
    if cancelled.load(Ordering::Acquire) {
        return Err(TranscodeFailure::Cancelled);
    }
    if let Some(reason) = killed_because {
        return Err(TranscodeFailure::Transient(reason));
    }
    classify(status, outcome, &stderr_tail)
}

fn classify(
    status: Option<ExitStatus>,
    outcome: Option<ChildEvent>,
    stderr_tail: &str,
) -> Result<TranscodeReport, TranscodeFailure> {
    let explain = |fallback: String| match &outcome {
        Some(ChildEvent::Error { message, .. }) => message.clone(),
        _ if !stderr_tail.is_empty() => format!("{fallback}: {stderr_tail}"),
        _ => fallback,
    };
    let Some(status) = status else {
        return Err(TranscodeFailure::Transient(
            "the transcoder vanished".into(),
        ));
    };
    if let Some(signal) = status.signal() {
        if signal == libc::SIGXFSZ {
            return Err(TranscodeFailure::Permanent(format!(
                "the rendition grew past its size limit of {} MiB",
                OUTPUT_LIMIT_BYTES / (1024 * 1024)
            )));
        }
        if signal == libc::SIGXCPU {
            return Err(TranscodeFailure::Transient(
                "the transcoder used up its CPU-time limit".into(),
            ));
        }
        let name = match signal {
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGKILL => "SIGKILL",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            _ => "a signal",
        };
        return Err(TranscodeFailure::Transient(explain(format!(
            "the transcoder crashed ({name}, signal {signal})"
        ))));
    }
    match (status.code(), outcome.clone()) {
        (Some(0), Some(ChildEvent::Done { report })) => Ok(report),
        (Some(EXIT_PERMANENT), _)
        | (
            _,
            Some(ChildEvent::Error {
                permanent: true, ..
            }),
        ) => Err(TranscodeFailure::Permanent(explain(
            "the input cannot be decoded".into(),
        ))),
        (code, _) => Err(TranscodeFailure::Transient(explain(format!(
            "the transcoder failed (exit status {})",
            code.map_or("unknown".to_string(), |c| c.to_string())
        )))),
    }
}

super::call::accepts_injected_faults!(Transcoder);

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn exits_are_classified_by_what_a_retry_could_change() {
        let report = TranscodeReport {
            duration_s: 35.0,
            frames: 1050,
            content_hash: "h".into(),
            poster_hash: "p".into(),
        };
        assert_eq!(
            classify(
                exit(0),
                Some(ChildEvent::Done {
                    report: report.clone()
                }),
                ""
            ),
            Ok(report)
        );
        assert!(matches!(
            classify(exit(EXIT_PERMANENT), None, ""),
            Err(TranscodeFailure::Permanent(_))
        ));
        let error = ChildEvent::Error {
            permanent: false,
            message: "disk full".into(),
        };
        assert_eq!(
            classify(exit(1), Some(error), ""),
            Err(TranscodeFailure::Transient("disk full".into()))
        );
        assert!(matches!(
            classify(Some(ExitStatus::from_raw(libc::SIGXFSZ)), None, ""),
            Err(TranscodeFailure::Permanent(m)) if m.contains("size limit")
        ));
        assert!(matches!(
            classify(Some(ExitStatus::from_raw(libc::SIGXCPU)), None, ""),
            Err(TranscodeFailure::Transient(m)) if m.contains("CPU")
        ));
        let crashed = classify(Some(ExitStatus::from_raw(libc::SIGSEGV)), None, "");
        assert!(
            matches!(&crashed, Err(TranscodeFailure::Transient(m)) if m.contains("SIGSEGV")),
            "{crashed:?}"
        );
        // Exit 0 without a report is not a success.
        assert!(matches!(
            classify(exit(0), None, ""),
            Err(TranscodeFailure::Transient(_))
        ));
    }
}
