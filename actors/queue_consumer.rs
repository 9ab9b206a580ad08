//! Queue-consumer: pulls processing jobs from the queue, runs them through the Transcoder and
//! records the outcome.
//!
//! - **Pull, never push.** A job is received only once a transcoder slot (a credit) is held; the
//!   credit travels with the job to the Transcoder and comes back when its child is gone. The
//!   queue therefore never hands out more work than the node can run.
//! - **Leases.** While a job runs its lease is extended every third of the visibility timeout;
//!   if the job vanished (the video was deleted) the transcode is cancelled.
//! - **Outcomes.** Success: the outputs are stored, the video is published (one transition),
//!   the job acknowledged. A permanent failure (undecodable input) is dead-lettered at once and
//!   the video marked `failed`. A transient one (crash, timeout, stall, I/O) is given back with
//!   an exponential delay, until `queue.max_receives`, then dead-lettered and marked `failed`.
//! - **At least once.** A job delivered again after its video was published is acknowledged
//!   without work; outputs are keyed by video id, so a repeat overwrites rather than duplicates.
//!
//! Videos whose jobs the queue dead-lettered by itself (too many receives) are marked `failed`
//! by a periodic reconciliation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::call::ActorRef;
use super::transcoder::{CancelTranscode, RunTranscode, TranscodeFailure, Transcoder};
use crate::domain::{ProcessingState, Publication, VideoStatus};
use crate::engine::blobs::{poster_key, processed_key, BlobError};
use crate::engine::transcode::TranscodeReport;
use crate::engine::{Engine, Lease, QueueError, StoreError};
use crate::events::{self, Event, JobOutcome};
use crate::health::{ActorHealth, ActorState};

/// How often dead letters are reconciled with the videos' status.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// Progress is written to the store at most this often per job.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Time allowed beyond the transcode timeout for the Transcoder's answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub visibility: Duration,
    pub max_receives: u32,
    pub poll_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub transcode_timeout: Duration,
    /// Where job work directories are made (under the data dir's temp directory).
    pub work_root: PathBuf,
    /// Where finished jobs are counted, for the queue's drain rate.
    pub load: Arc<crate::load::Load>,
}

/// The delay before attempt `receive_count + 1` of a job that failed transiently.
pub fn retry_delay(settings: &ConsumerSettings, receive_count: u32) -> Duration {
    let doublings = receive_count.saturating_sub(1).min(16);
    settings
        .retry_base
        .saturating_mul(1 << doublings)
        .min(settings.retry_max)
}

/// What every job run needs; shared by the pull loop and its jobs.
struct Deps {
    engine: Engine,
    transcoder: ActorRef<Transcoder>,
    credits: Arc<Semaphore>,
    settings: ConsumerSettings,
    health: Arc<ActorHealth>,
}

pub struct QueueConsumer {
    deps: Arc<Deps>,
}

impl QueueConsumer {
    pub fn new(
        engine: Engine,
        transcoder: ActorRef<Transcoder>,
        credits: Arc<Semaphore>,
        settings: ConsumerSettings,
        health: Arc<ActorHealth>,
    ) -> Self {
        Self {
            deps: Arc::new(Deps {
                engine,
                transcoder,
                credits,
                settings,
                health,
            }),
        }
    }
}

impl Actor for QueueConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.health.set_state(ActorState::Running);
        self.deps.health.heartbeat();
        ctx.run_interval(Duration::from_millis(500), |act, _| {
            act.deps.health.heartbeat()
        });
        // The loop lives and dies with this incarnation: stopping the actor drops it, which
        // aborts its jobs, whose transcodes the Transcoder then kills. Their leases expire
        // and the jobs are delivered again: state is rebuilt from the queue, never memory.
        ctx.spawn(actix::fut::wrap_future(pull_loop(self.deps.clone())));
    }
}

async fn pull_loop(deps: Arc<Deps>) {
    let mut jobs = JoinSet::new();
    let mut idle_until: Option<Instant> = None;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            joined = jobs.join_next(), if !jobs.is_empty() => {
                if let Some(Err(e)) = joined {
                    if e.is_panic() {
                        tracing::error!("a processing job panicked; its lease will expire and it will run again");
                        deps.health.record_failure("a processing job panicked");
                    }
                }
            }
            credit = deps.credits.clone().acquire_owned(), if idle_until.is_none() => {
                let Ok(credit) = credit else { return };
                match deps.engine.queue.receive(deps.settings.visibility).await {
                    Ok(Some(lease)) => {
                        jobs.spawn(run_job(deps.clone(), lease, credit));
                    }
                    Ok(None) => idle_until = Some(Instant::now() + deps.settings.poll_interval),
                    Err(e) => {
                        tracing::warn!(error = %e, "receiving from the queue failed");
                        idle_until = Some(Instant::now() + deps.settings.poll_interval * 4);
                    }
                }
            }
            _ = tokio::time::sleep_until(idle_until.unwrap_or_else(Instant::now)), if idle_until.is_some() => {
                idle_until = None;
            }
            _ = reconcile.tick() => reconcile_dead_letters(&deps.engine).await,
        }
    }
}

/// Marks `failed` every video whose job is a dead letter but whose record does not say so yet.
async fn reconcile_dead_letters(engine: &Engine) {
    let letters = match engine.queue.dead_letters().await {
        Ok(letters) => letters,
        Err(e) => {
            tracing::warn!(error = %e, "listing dead letters failed");
            return;
        }
    };
    for letter in letters {
        let id = letter.job.video_id;
        match engine.store.video(id).await {
            Ok(Some(video))
                if !matches!(video.status, VideoStatus::Failed | VideoStatus::Processed) =>
            {
                let reason = letter.reason.clone();
                if let Err(e) = engine
                    .store
                    .set_processing_state(id, ProcessingState::Failed { reason })
                    .await
                {
                    tracing::warn!(video_id = id, error = %e, "marking a dead-lettered video failed");
                }
            }
            _ => {}
        }
    }
}

/// The work directory of one attempt.
fn work_dir(settings: &ConsumerSettings, lease: &Lease) -> PathBuf {
    settings.work_root.join(format!(
        "{}-{}",
        lease.job.video_id,
        &lease.token[..8.min(lease.token.len())]
    ))
}

async fn run_job(deps: Arc<Deps>, lease: Lease, credit: OwnedSemaphorePermit) {
    let _in_flight = deps.health.start_work();
    let started = std::time::Instant::now();
    let id = lease.job.video_id;
    let (outcome, detail) = process(&deps, &lease, credit).await;
    if matches!(outcome, JobOutcome::Published | JobOutcome::DeadLettered) {
        deps.settings.load.jobs_done.record();
    }
    events::emit(Event::JobFinished {
        video_id: id,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    });
}

/// Runs one delivery of a job to its end; says how it ended.
async fn process(deps: &Deps, lease: &Lease, credit: OwnedSemaphorePermit) -> (JobOutcome, String) {
    let id = lease.job.video_id;
    let engine = &deps.engine;
    match engine.store.video(id).await {
        Ok(None) => {
            let _ = engine.queue.ack(id, &lease.token).await;
            return (JobOutcome::Skipped, "the video was deleted".into());
        }
        Ok(Some(video)) if video.status == VideoStatus::Processed => {
            // Delivered again after it was published: one output, one transition.
            let _ = engine.queue.ack(id, &lease.token).await;
            return (JobOutcome::Skipped, "already published".into());
        }
        Ok(Some(video)) => match engine.store.user(video.owner_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return owner_gone(deps, lease, &video.original_key).await,
            Err(e) => {
                return give_back(deps, lease, &format!("reading the owner failed: {e}")).await
            }
        },
        Err(e) => return give_back(deps, lease, &format!("reading the video failed: {e}")).await,
    }
    let _ = engine
        .store
        .set_processing_state(id, ProcessingState::Processing { progress: 0 })
        .await;

    let dir = work_dir(&deps.settings, lease);
    let ended = match transcode(deps, lease, &dir, credit).await {
        Ok(report) => publish(deps, lease, &dir, report).await,
        Err(TranscodeFailure::Cancelled) => {
            // Cancelled because its video was deleted: a queue that cannot remove a job by id
            // (SQS) still holds it, and it is done with.
            if let Ok(None) = engine.store.video(id).await {
                let _ = engine.queue.ack(id, &lease.token).await;
            }
            (JobOutcome::Cancelled, "cancelled".into())
        }
        Err(TranscodeFailure::Permanent(reason)) => fail(deps, lease, &reason).await,
        Err(TranscodeFailure::Transient(reason))
            if lease.job.receive_count >= deps.settings.max_receives =>
        {
            let reason = format!(
                "failed {} times; last error: {reason}",
                lease.job.receive_count
            );
            fail(deps, lease, &reason).await
        }
        Err(TranscodeFailure::Transient(reason)) => give_back(deps, lease, &reason).await,
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    ended
}

/// Runs the transcode while keeping the lease alive and the progress current.
async fn transcode(
    deps: &Deps,
    lease: &Lease,
    dir: &std::path::Path,
    credit: OwnedSemaphorePermit,
) -> Result<TranscodeReport, TranscodeFailure> {
    let id = lease.job.video_id;
    let engine = &deps.engine;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| TranscodeFailure::Transient(format!("creating the work directory: {e}")))?;
    // Stored remotely, the original is downloaded into the job's directory first.
    let input = match engine
        .blobs
        .fetch(&lease.job.original_key, &dir.join("input.mp4"))
        .await
    {
        Ok(input) => input,
        Err(BlobError::NotFound) => {
            return Err(TranscodeFailure::Permanent(
                "the original file is missing".into(),
            ))
        }
        Err(e) => {
            return Err(TranscodeFailure::Transient(format!(
                "fetching the original failed: {e}"
            )))
        }
    };
    let (progress_tx, mut progress_rx) = mpsc::channel(16);
    let request = |reply| RunTranscode {
        video_id: id,
        input,
        output: dir.join("out.mp4"),
        poster: dir.join("poster.jpg"),
        slot: credit,
        progress: progress_tx,
        reply,
    };
    let answer = deps
        .transcoder
        .call_admitted(request, deps.settings.transcode_timeout + ANSWER_MARGIN);
    tokio::pin!(answer);
    let mut heartbeat = tokio::time::interval(deps.settings.visibility / 3);
    heartbeat.tick().await;
    let mut last_written = Instant::now();
    loop {
        tokio::select! {
            answer = &mut answer => {
                return answer.map_err(|e| TranscodeFailure::Transient(e.to_string()))?;
            }
            Some(percent) = progress_rx.recv() => {
                if last_written.elapsed() >= PROGRESS_EVERY {
                    last_written = Instant::now();
                    let state = ProcessingState::Processing { progress: percent };
                    let _ = engine.store.set_processing_state(id, state).await;
                }
            }
            _ = heartbeat.tick() => {
                match engine.queue.extend(id, &lease.token, deps.settings.visibility).await {
                    Ok(_) => {}
                    Err(QueueError::NotFound | QueueError::InvalidToken) => {
                        // The job is gone (video deleted) or no longer ours: stop the work.
                        let _ = deps.transcoder.call(|reply| CancelTranscode { video_id: id, reply }).await;
                    }
                    Err(e) => tracing::warn!(video_id = id, error = %e, "extending a lease failed"),
                }
            }
        }
    }
}

/// Stores the outputs, publishes the video and acknowledges the job.
async fn publish(
    deps: &Deps,
    lease: &Lease,
    dir: &std::path::Path,
    report: TranscodeReport,
) -> (JobOutcome, String) {
    let id = lease.job.video_id;
    let engine = &deps.engine;
    let (video_key, poster) = (processed_key(id), poster_key(id));
    let stored = async {
        engine
            .blobs
            .put_file(&video_key, &dir.join("out.mp4"))
            .await?;
        engine
            .blobs
            .put_file(&poster, &dir.join("poster.jpg"))
            .await
    }
    .await;
    if let Err(e) = stored {
        return give_back(deps, lease, &format!("storing the outputs failed: {e}")).await;
    }
    let publication = Publication {
        processed_key: video_key.clone(),
        poster_key: poster.clone(),
        content_hash: report.content_hash.clone(),
        poster_hash: report.poster_hash.clone(),
        duration_s: report.duration_s,
    };
    match engine.store.publish_video(id, publication).await {
        Ok(_) => {
            if let Err(e) = engine.queue.ack(id, &lease.token).await {
                tracing::warn!(video_id = id, error = %e, "acknowledging a finished job failed");
            }
            (
                JobOutcome::Published,
                format!("{:.1} s rendition", report.duration_s),
            )
        }
        Err(StoreError::VideoNotFound) => {
            // Deleted while it was processed: its outputs must not outlive it.
            let _ = engine.blobs.delete(&video_key).await;
            let _ = engine.blobs.delete(&poster).await;
            let _ = engine.queue.ack(id, &lease.token).await;
            (JobOutcome::Skipped, "deleted while processed".into())
        }
        Err(StoreError::UserNotFound) => {
            let _ = engine.blobs.delete(&video_key).await;
            let _ = engine.blobs.delete(&poster).await;
            owner_gone(deps, lease, &lease.job.original_key).await
        }
        Err(e) => give_back(deps, lease, &format!("publishing failed: {e}")).await,
    }
}

/// Gives a job back for a later attempt, after an exponential delay.
async fn give_back(deps: &Deps, lease: &Lease, reason: &str) -> (JobOutcome, String) {
    let id = lease.job.video_id;
    let delay = retry_delay(&deps.settings, lease.job.receive_count);
    match deps
        .engine
        .queue
        .nack(id, &lease.token, delay, reason)
        .await
    {
        Ok(()) => {
            let _ = deps
                .engine
                .store
                .set_processing_state(id, ProcessingState::Queued)
                .await;
        }
        Err(e) => {
            tracing::warn!(video_id = id, error = %e, "giving a job back failed; its lease will expire")
        }
    }
    (
        JobOutcome::Retried,
        format!(
            "attempt {} failed: {reason}; next in {} s",
            lease.job.receive_count,
            delay.as_secs()
        ),
    )
}

/// A job whose video's owner no longer exists: nobody can see or publish the result, so no
/// retry can help. Dead-lettered at once, the original removed.
async fn owner_gone(deps: &Deps, lease: &Lease, original_key: &str) -> (JobOutcome, String) {
    let ended = fail(deps, lease, "the owner's account no longer exists").await;
    if let Err(e) = deps.engine.blobs.delete(original_key).await {
        tracing::warn!(video_id = lease.job.video_id, error = %e, "removing an ownerless original failed");
    }
    ended
}

/// Dead-letters a job for good and marks its video failed with the reason.
async fn fail(deps: &Deps, lease: &Lease, reason: &str) -> (JobOutcome, String) {
    let id = lease.job.video_id;
    if let Err(e) = deps
        .engine
        .queue
        .dead_letter(id, &lease.token, reason)
        .await
    {
        tracing::warn!(video_id = id, error = %e, "dead-lettering failed");
    }
    let state = ProcessingState::Failed {
        reason: reason.to_string(),
    };
    if let Err(e) = deps.engine.store.set_processing_state(id, state).await {
        tracing::warn!(video_id = id, error = %e, "marking the video failed");
    }
    (JobOutcome::DeadLettered, reason.to_string())
}

super::call::accepts_injected_faults!(QueueConsumer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let settings = ConsumerSettings {
            visibility: Duration::from_secs(60),
            max_receives: 5,
            poll_interval: Duration::from_millis(100),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            transcode_timeout: Duration::from_secs(600),
            work_root: PathBuf::from("/tmp"),
            load: Arc::default(),
        };
        let delays: Vec<u64> = (1..=7)
            .map(|n| retry_delay(&settings, n).as_secs())
            .collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(&settings, u32::MAX).as_secs(), 60);
    }
}
