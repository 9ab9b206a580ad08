//! The SQS job queue against an SQS-compatible server (moto): leases, extension, give-backs,
//! dead letters by the redrive policy and at once, re-drive, counts, and the start-up check of
//! the redrive policy.

use std::time::Duration;

use showcase::engine::aws::Endpoint;
use showcase::engine::sqs_queue::{SqsLocation, SqsQueue};
use showcase::engine::{Job, JobQueue, QueueError};

use crate::common::moto::Moto;

const MAX_RECEIVES: u32 = 3;

/// A queue whose redrive policy sends to a dead-letter queue after `max_receives`.
async fn queues(moto: &Moto, max_receives: u32) -> SqsLocation {
    let endpoint = Endpoint {
        region: "us-east-1".into(),
        endpoint_url: moto.endpoint.clone(),
    };
    let raw = aws_sdk_sqs::Client::new(&showcase::engine::aws::sdk_config(&endpoint).await);
    let (queue_url, dead_letter_queue_url) =
        crate::common::aws::queues(&raw, "showcase-jobs", max_receives).await;
    SqsLocation {
        queue_url,
        dead_letter_queue_url,
        endpoint,
        wait_time_s: 0,
    }
}

fn job(video_id: u64) -> Job {
    Job {
        video_id,
        task_id: format!("task-{video_id}"),
        original_key: format!("originals/{video_id}.mp4"),
        enqueued_at_ms: 1_700_000_000_000,
        receive_count: 0,
        last_error: None,
    }
}

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_start_up_check_names_a_redrive_policy_that_disagrees() {
    let moto = Moto::start();
    let location = queues(&moto, MAX_RECEIVES).await;
    SqsQueue::connect(&location, MAX_RECEIVES)
        .await
        .check()
        .await
        .unwrap();
    let mismatch = SqsQueue::connect(&location, 5).await.check().await;
    match mismatch {
        Err(QueueError::Backend(why)) => assert!(why.contains("after 3 receives"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut wrong = location.clone();
    wrong.dead_letter_queue_url = location.queue_url.clone();
    let wrong = SqsQueue::connect(&wrong, MAX_RECEIVES).await.check().await;
    assert!(
        matches!(wrong, Err(QueueError::Backend(ref why)) if why.contains("sends to")),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_job_is_leased_extended_given_back_and_acknowledged() {
    let moto = Moto::start();
    let queue = SqsQueue::connect(&queues(&moto, MAX_RECEIVES).await, MAX_RECEIVES).await;
    queue.enqueue(job(1)).await.unwrap();
    assert_eq!(queue.stats().await.unwrap().depth, 1);

    assert_eq!(queue.job(1).await.unwrap(), None);
    let lease = queue.receive(LEASE).await.unwrap().expect("the job");
    assert_eq!(lease.job.video_id, 1);
    assert_eq!(
        queue.job(1).await.unwrap().map(|j| j.task_id),
        Some("task-1".into())
    );
    assert_eq!(lease.job.task_id, "task-1");
    assert_eq!(lease.job.enqueued_at_ms, 1_700_000_000_000);
    assert_eq!(lease.job.receive_count, 1);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 1));
    assert!(
        queue.receive(LEASE).await.unwrap().is_none(),
        "leased jobs are invisible"
    );
    queue.extend(1, &lease.token, LEASE).await.unwrap();

    queue
        .nack(1, &lease.token, Duration::ZERO, "transient")
        .await
        .unwrap();
    let again = queue.receive(LEASE).await.unwrap().expect("given back");
    assert_eq!(again.job.receive_count, 2, "every receive counts");
    queue.ack(1, &again.token).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.dead), (0, 0, 0));
    // What SQS cannot do is answered safely: a job is known only while this node holds it.
    assert_eq!(queue.job(1).await.unwrap(), None);
    assert!(!queue.cancel(1).await.unwrap());
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_and_can_be_redriven() {
    let moto = Moto::start();
    let queue = SqsQueue::connect(&queues(&moto, MAX_RECEIVES).await, MAX_RECEIVES).await;
    queue.enqueue(job(2)).await.unwrap();
    let lease = queue.receive(LEASE).await.unwrap().unwrap();
    queue
        .dead_letter(2, &lease.token, "undecodable input")
        .await
        .unwrap();
    assert!(queue.receive(LEASE).await.unwrap().is_none());
    assert_eq!(queue.stats().await.unwrap().dead, 1);
    let letters = queue.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].job.task_id, "task-2", "the job travels whole");
    assert_eq!(letters[0].reason, "undecodable input");
    // Listing leaves them where they are.
    assert_eq!(queue.dead_letters().await.unwrap().len(), 1);

    assert!(matches!(queue.redrive(99).await, Err(QueueError::NotFound)));
    queue.redrive(2).await.unwrap();
    let back = queue.receive(LEASE).await.unwrap().expect("re-driven");
    assert_eq!((back.job.video_id, back.job.receive_count), (2, 1));
    queue.ack(2, &back.token).await.unwrap();
    assert!(queue.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn past_max_receives_the_redrive_policy_dead_letters_the_job() {
    let moto = Moto::start();
    let queue = SqsQueue::connect(&queues(&moto, MAX_RECEIVES).await, MAX_RECEIVES).await;
    queue.enqueue(job(3)).await.unwrap();
    for attempt in 1..=MAX_RECEIVES {
        let lease = queue
            .receive(LEASE)
            .await
            .unwrap()
            .expect("still in the queue");
        assert_eq!(lease.job.receive_count, attempt);
        queue
            .nack(3, &lease.token, Duration::ZERO, "transient")
            .await
            .unwrap();
    }
    assert!(
        queue.receive(LEASE).await.unwrap().is_none(),
        "moved to the dead letters"
    );
    let letters = queue.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("received 3 times"),
        "{}",
        letters[0].reason
    );
    assert_eq!(queue.redrive_all().await.unwrap(), 1);
    let back = queue.receive(LEASE).await.unwrap().expect("re-driven");
    assert_eq!(back.job.video_id, 3);
}
