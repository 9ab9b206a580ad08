//! The store's own durable queue (embedded, or on PostgreSQL with `SHOWCASE_TEST_BACKENDS=
//! postgres`): every SQS-like semantic, including recovery after reopening.

use std::sync::Arc;
use std::time::Duration;

use showcase::domain::now_ms;
use showcase::engine::sled_engine::SledEngine;
use showcase::engine::{Job, JobQueue, QueueError};

const MAX_RECEIVES: u32 = 3;
const LONG: Duration = Duration::from_secs(60);

/// The store's own queue over `dir`: on PostgreSQL when the tests keep records there (the
/// database of `dir`, found again by a reopening), else the embedded one.
async fn open(dir: &std::path::Path) -> Arc<dyn JobQueue> {
    if crate::common::postgres::on_postgres() {
        let url = crate::common::postgres::database_for(dir);
        let engine = showcase::engine::pg_engine::PgEngine::connect(&url, None, 8, MAX_RECEIVES)
            .await
            .unwrap();
        videos_for_jobs(&engine).await;
        return Arc::new(engine);
    }
    open_sled(dir)
}

/// On PostgreSQL a job goes with its video: the videos of the tests' jobs (ids 1 to 16).
async fn videos_for_jobs(store: &dyn showcase::engine::Store) {
    use showcase::domain::{MediaInfo, NewUser, Video, VideoStatus};
    let owner = store
        .create_user(NewUser {
            first_name: "Ana".into(),
            last_name: "Ruiz".into(),
            email: "ana@example.com".into(),
            password_hash: "not-a-hash".into(),
            city: "Cali".into(),
            country: "Colombia".into(),
        })
        .await
        .unwrap();
    for id in 1..=16 {
        let video = Video {
            id,
            owner_id: owner.id,
            title: format!("Video {id}"),
            status: VideoStatus::Uploaded,
            progress: 0,
            uploaded_at: showcase::domain::now_ts(),
            processed_at: None,
            task_id: format!("task-{id}"),
            original_key: format!("originals/{id}.mp4"),
            original: MediaInfo {
                size_bytes: 1,
                duration_s: 25.0,
                width: 1920,
                height: 1080,
            },
            processed_key: None,
            poster_key: None,
            content_hash: None,
            poster_hash: None,
            processed_duration_s: None,
            votes: 0,
            error: None,
        };
        assert!(store.import_video(&video).await.unwrap());
    }
}

/// The embedded queue over `dir`: for what only it has (recovery counts, shared fsyncs).
fn open_sled(dir: &std::path::Path) -> Arc<SledEngine> {
    SledEngine::open(dir, MAX_RECEIVES, Duration::from_secs(10)).unwrap()
}

fn job(id: u64) -> Job {
    Job {
        video_id: id,
        task_id: format!("task-{id}"),
        original_key: format!("originals/{id}.mp4"),
        enqueued_at_ms: now_ms(),
        receive_count: 0,
        last_error: None,
    }
}

#[tokio::test]
async fn enqueued_jobs_are_received_in_order_with_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    for id in 1..=3 {
        q.enqueue(job(id)).await.unwrap();
    }
    // Enqueueing the same video again does not duplicate its job.
    q.enqueue(job(2)).await.unwrap();
    assert_eq!(q.stats().await.unwrap().depth, 3);

    let first = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(first.job.video_id, 1);
    assert_eq!(first.job.receive_count, 1);
    assert!(!first.token.is_empty());
    assert!(first.visible_again_at_ms >= now_ms() + 59_000);
    let second = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(second.job.video_id, 2);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.dead), (1, 2, 0));
    assert_eq!(q.receive(LONG).await.unwrap().unwrap().job.video_id, 3);
    // Everything is leased: nothing more to receive.
    assert!(q.receive(LONG).await.unwrap().is_none());
}

#[tokio::test]
async fn ack_needs_the_current_token() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    q.enqueue(job(7)).await.unwrap();
    let lease = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(
        q.ack(7, "not-the-token").await,
        Err(QueueError::InvalidToken)
    );
    assert_eq!(q.ack(8, &lease.token).await, Err(QueueError::NotFound));
    q.ack(7, &lease.token).await.unwrap();
    assert_eq!(q.ack(7, &lease.token).await, Err(QueueError::NotFound));
    assert!(q.job(7).await.unwrap().is_none());
    assert_eq!(q.stats().await.unwrap(), Default::default());
}

#[tokio::test]
async fn an_expired_lease_makes_the_job_visible_again_and_voids_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    q.enqueue(job(1)).await.unwrap();
    let short = Duration::from_millis(150);
    let first = q.receive(short).await.unwrap().unwrap();
    assert!(
        q.receive(short).await.unwrap().is_none(),
        "invisible while leased"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(second.job.video_id, 1);
    assert_eq!(second.job.receive_count, 2);
    assert_ne!(first.token, second.token);
    assert_eq!(q.ack(1, &first.token).await, Err(QueueError::InvalidToken));
    assert_eq!(
        q.extend(1, &first.token, LONG).await,
        Err(QueueError::InvalidToken)
    );
    q.ack(1, &second.token).await.unwrap();
}

#[tokio::test]
async fn heartbeats_extend_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    q.enqueue(job(1)).await.unwrap();
    let lease = q
        .receive(Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let until = q
        .extend(1, &lease.token, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(until >= now_ms() + 29_000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        q.receive(LONG).await.unwrap().is_none(),
        "the extended lease still holds"
    );
    assert_eq!(q.stats().await.unwrap().in_flight, 1);
    q.ack(1, &lease.token).await.unwrap();
}

#[tokio::test]
async fn nack_returns_the_job_after_its_delay_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    q.enqueue(job(1)).await.unwrap();
    let lease = q.receive(LONG).await.unwrap().unwrap();
    q.nack(
        1,
        &lease.token,
        Duration::from_millis(300),
        "transcoder crashed",
    )
    .await
    .unwrap();
    assert!(q.receive(LONG).await.unwrap().is_none(), "delayed");
    assert_eq!(q.stats().await.unwrap().depth, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(again.job.receive_count, 2);
    assert_eq!(again.job.last_error.as_deref(), Some("transcoder crashed"));
    assert_eq!(
        q.nack(1, &lease.token, LONG, "stale").await,
        Err(QueueError::InvalidToken)
    );
}

#[tokio::test]
async fn a_job_received_too_often_is_dead_lettered_with_reason_and_enqueue_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    let original = job(5);
    let enqueued_at = original.enqueued_at_ms;
    q.enqueue(original).await.unwrap();
    for attempt in 1..=MAX_RECEIVES {
        let lease = q.receive(LONG).await.unwrap().unwrap();
        assert_eq!(lease.job.receive_count, attempt);
        q.nack(
            5,
            &lease.token,
            Duration::ZERO,
            &format!("failure {attempt}"),
        )
        .await
        .unwrap();
    }
    assert!(
        q.receive(LONG).await.unwrap().is_none(),
        "over max_receives: dead, not delivered"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.dead), (0, 0, 1));
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job.video_id, 5);
    assert_eq!(dead[0].job.enqueued_at_ms, enqueued_at);
    assert!(dead[0].reason.contains("failure 3"), "{}", dead[0].reason);
    assert!(dead[0].dead_at_ms >= enqueued_at);

    // Re-drive: back in the queue with a fresh receive count and the original enqueue time.
    q.redrive(5).await.unwrap();
    assert_eq!(q.redrive(5).await, Err(QueueError::NotFound));
    let lease = q.receive(LONG).await.unwrap().unwrap();
    assert_eq!(lease.job.receive_count, 1);
    assert_eq!(lease.job.enqueued_at_ms, enqueued_at);
    assert_eq!(q.stats().await.unwrap().dead, 0);
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_and_all_can_be_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    for id in [1, 2] {
        q.enqueue(job(id)).await.unwrap();
        let lease = q.receive(LONG).await.unwrap().unwrap();
        assert_eq!(
            q.dead_letter(id, "wrong-token", "x").await,
            Err(QueueError::InvalidToken)
        );
        q.dead_letter(id, &lease.token, "the input cannot be decoded")
            .await
            .unwrap();
    }
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.job.video_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(dead
        .iter()
        .all(|d| d.reason == "the input cannot be decoded" && d.job.receive_count == 1));
    assert_eq!(q.redrive_all().await.unwrap(), 2);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead), (2, 0));
}

#[tokio::test]
async fn cancel_removes_a_job_wherever_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path()).await;
    for id in [1, 2, 3] {
        q.enqueue(job(id)).await.unwrap();
    }
    let leased = q.receive(LONG).await.unwrap().unwrap();
    let dead = q.receive(LONG).await.unwrap().unwrap();
    q.dead_letter(2, &dead.token, "bad").await.unwrap();
    assert!(q.cancel(1).await.unwrap(), "leased");
    assert!(q.cancel(2).await.unwrap(), "dead");
    assert!(q.cancel(3).await.unwrap(), "queued");
    assert!(!q.cancel(3).await.unwrap());
    assert_eq!(q.ack(1, &leased.token).await, Err(QueueError::NotFound));
    assert_eq!(q.stats().await.unwrap(), Default::default());
}

#[tokio::test]
async fn reopening_recovers_every_job_and_releases_held_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (enqueued_at, old_token) = {
        let q = open_sled(dir.path());
        for id in 1..=4 {
            q.enqueue(job(id)).await.unwrap();
        }
        let held = q.receive(LONG).await.unwrap().unwrap();
        let done = q.receive(LONG).await.unwrap().unwrap();
        q.ack(done.job.video_id, &done.token).await.unwrap();
        let dead = q.receive(LONG).await.unwrap().unwrap();
        q.dead_letter(dead.job.video_id, &dead.token, "bad input")
            .await
            .unwrap();
        (held.job.enqueued_at_ms, held.token)
        // Dropped without any shutdown step: only what was acknowledged as durable counts.
    };
    let q = open_sled(dir.path());
    let recovery = q.recovery().clone();
    assert_eq!(
        (recovery.jobs, recovery.dead, recovery.released_leases),
        (2, 1, 1)
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.dead), (2, 0, 1));
    // The lease held before the restart is void; the job is visible at once.
    assert_eq!(q.ack(1, &old_token).await, Err(QueueError::InvalidToken));
    let mut visible = [
        q.receive(LONG).await.unwrap().unwrap(),
        q.receive(LONG).await.unwrap().unwrap(),
    ];
    visible.sort_by_key(|lease| lease.job.video_id);
    assert_eq!(
        visible.iter().map(|l| l.job.video_id).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert_eq!(visible[0].job.receive_count, 2);
    assert_eq!(visible[0].job.enqueued_at_ms, enqueued_at);
    assert!(q.receive(LONG).await.unwrap().is_none());
    assert_eq!(q.dead_letters().await.unwrap()[0].job.video_id, 3);
}

#[tokio::test]
async fn durable_enqueues_share_fsyncs_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_sled(dir.path());
    let before = q.flush_count();
    let tasks: Vec<_> = (1..=500u64)
        .map(|id| {
            let q = q.clone();
            tokio::spawn(async move { q.enqueue(job(id)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let flushes = q.flush_count() - before;
    assert_eq!(q.stats().await.unwrap().depth, 500);
    assert!(
        flushes < 500,
        "every enqueue paid its own fsync ({flushes})"
    );
}
