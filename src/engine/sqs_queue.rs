//! The job queue on Amazon SQS (or an SQS-compatible server), with a dead-letter queue.
//!
//! The [`JobQueue`] semantics map onto SQS as follows: enqueue is SendMessage; receive is
//! ReceiveMessage with long polling and the visibility timeout, the receipt handle being the
//! lease token; extend and nack are ChangeMessageVisibility; ack is DeleteMessage; automatic
//! dead-lettering after `queue.max_receives` is the queue's redrive policy (checked at start);
//! dead-lettering a permanent failure at once is a SendMessage to the dead-letter queue, then a
//! DeleteMessage; re-drive moves messages back the same way; the counts come from the queues'
//! approximate attributes.
//!
//! Where SQS cannot do what the embedded queue does:
//! - a message cannot be found or removed by video id: `job` knows only the jobs this node
//!   holds leases on, and `cancel` answers `false`. Cancellation goes through the video record instead (the worker acknowledges a
//!   job whose video is gone without working on it);
//! - a message cannot be changed: the reason a job was given back is not kept with it (the
//!   video record keeps the last failure), and a job dead-lettered by the redrive policy
//!   carries the receive count as its reason;
//! - listing the dead letters reads them with a zero visibility timeout until a read brings
//!   nothing new, up to [`MAX_LISTED`]: with many dead letters a listing may miss some (SQS
//!   samples its servers); the counts are SQS's approximations;
//! - moving a message between queues is a send then a delete: a crash in between leaves it in
//!   both, which at-least-once delivery and idempotent jobs already allow.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;

use super::aws::{sdk_config, Endpoint, Observed};
use super::queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
use crate::domain::{now_ms, VideoId};

/// Dead letters listed at most.
pub const MAX_LISTED: usize = 1000;
/// SQS returns at most this many messages per receive.
const BATCH: i32 = 10;
/// How long a pass over the dead letters holds the ones it has seen.
const PASS_HOLD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct SqsLocation {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub endpoint: Endpoint,
    /// Long polling: how long a receive waits for a message, in seconds (0..=20).
    pub wait_time_s: u64,
}

impl From<&crate::config::SqsConfig> for SqsLocation {
    fn from(sqs: &crate::config::SqsConfig) -> Self {
        Self {
            queue_url: sqs.queue_url.clone(),
            dead_letter_queue_url: sqs.dead_letter_queue_url.clone(),
            endpoint: Endpoint {
                region: sqs.region.clone(),
                endpoint_url: sqs.endpoint_url.clone(),
            },
            wait_time_s: sqs.wait_time_s,
        }
    }
}

pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_url: String,
    wait_time_s: i32,
    max_receives: u32,
    /// The jobs this node holds leases on, by receipt handle: what a dead letter carries.
    leased: std::sync::Mutex<HashMap<String, Job>>,
    /// Why this node last gave a job back, by video: SQS keeps no reason with a message.
    reasons: std::sync::Mutex<HashMap<VideoId, String>>,
    /// The last counts and when they were read: admission asks on every upload, and the counts
    /// are approximations anyway.
    counted: std::sync::Mutex<Option<(std::time::Instant, QueueStats)>>,
    /// Changes made here so far: counts read across a change are not kept.
    changes: std::sync::atomic::AtomicU64,
}

/// How long counts read from SQS are reused.
const COUNTS_FOR: Duration = Duration::from_secs(1);

/// Give-back reasons remembered at most (they are forgotten all at once past it).
const MAX_REASONS: usize = 10_000;

fn classify<E, R>(operation: &str, error: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            QueueError::Unavailable(format!("{operation}: {}", DisplayErrorContext(&error)))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            let detail = service.err().message().unwrap_or(code);
            match code {
                "ReceiptHandleIsInvalid"
                | "InvalidParameterValue"
                | "AWS.SimpleQueueService.MessageNotInflight" => QueueError::InvalidToken,
                "ThrottlingException"
                | "RequestThrottled"
                | "ServiceUnavailable"
                | "InternalFailure"
                | "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist" => {
                    QueueError::Unavailable(format!("{operation}: {code}: {detail}"))
                }
                _ => QueueError::Backend(format!("{operation}: {code}: {detail}")),
            }
        }
        _ => QueueError::Backend(format!("{operation}: {}", DisplayErrorContext(&error))),
    }
}

fn seconds(duration: Duration) -> i32 {
    duration.as_secs().min(12 * 3600) as i32
}

/// The job a message carries, with its receive count.
fn job_of(message: &Message) -> Result<Job, QueueError> {
    let body = message.body().unwrap_or("");
    let mut job: Job = serde_json::from_str(body)
        .map_err(|e| QueueError::Backend(format!("a message that is not a job: {e}")))?;
    job.receive_count = attribute(message, MessageSystemAttributeName::ApproximateReceiveCount)
        .unwrap_or(job.receive_count as u64) as u32;
    Ok(job)
}

fn attribute(message: &Message, name: MessageSystemAttributeName) -> Option<u64> {
    message.attributes()?.get(&name)?.parse().ok()
}

fn body_of(job: &Job) -> String {
    serde_json::to_string(job).expect("jobs serialise")
}

impl SqsQueue {
    pub async fn connect(location: &SqsLocation, max_receives: u32) -> Self {
        let shared = sdk_config(&location.endpoint).await;
        let config = aws_sdk_sqs::config::Builder::from(&shared)
            .interceptor(Observed)
            .build();
        Self {
            client: Client::from_conf(config),
            queue_url: location.queue_url.clone(),
            dead_url: location.dead_letter_queue_url.clone(),
            wait_time_s: location.wait_time_s.min(20) as i32,
            max_receives,
            leased: std::sync::Mutex::default(),
            reasons: std::sync::Mutex::default(),
            counted: std::sync::Mutex::default(),
            changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn attributes(
        &self,
        url: &str,
    ) -> Result<HashMap<QueueAttributeName, String>, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        Ok(output.attributes().cloned().unwrap_or_default())
    }

    /// Both queues answer, and the queue's redrive policy sends a job to the dead-letter queue
    /// after exactly `queue.max_receives` receives. The error names what is wrong.
    pub async fn check(&self) -> Result<(), QueueError> {
        let dead = self.attributes(&self.dead_url).await?;
        let dead_arn = dead
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .unwrap_or_default();
        let main = self.attributes(&self.queue_url).await?;
        let policy: serde_json::Value = main
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| {
                QueueError::Backend(format!(
                    "the queue {} has no redrive policy",
                    self.queue_url
                ))
            })?;
        let target = policy["deadLetterTargetArn"].as_str().unwrap_or("");
        if target != dead_arn {
            return Err(QueueError::Backend(format!(
                "the queue's redrive policy sends to {target}, not to the dead-letter queue {dead_arn}"
            )));
        }
        let max = match &policy["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        };
        if max != Some(u64::from(self.max_receives)) {
            return Err(QueueError::Backend(format!(
                "the queue's redrive policy dead-letters after {} receives; queue.max_receives is {}",
                max.map_or("?".into(), |m| m.to_string()),
                self.max_receives
            )));
        }
        Ok(())
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.leased.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reasons(&self) -> std::sync::MutexGuard<'_, HashMap<VideoId, String>> {
        self.reasons.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts read before a change made here are not reused after it. Called before a change
    /// and once it is done, so that a read overlapping it is not kept either.
    fn forget_counts(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.counted.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn remember(&self, video_id: VideoId, reason: &str) {
        let mut reasons = self.reasons();
        if reasons.len() >= MAX_REASONS {
            reasons.clear();
        }
        reasons.insert(video_id, reason.to_string());
    }

    async fn send(&self, url: &str, job: &Job) -> Result<(), QueueError> {
        self.forget_counts();
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body_of(job))
            .send()
            .await
            .map_err(|e| classify("SendMessage", e))?;
        self.forget_counts();
        Ok(())
    }

    async fn delete(&self, url: &str, handle: &str) -> Result<(), QueueError> {
        self.forget_counts();
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| classify("DeleteMessage", e))?;
        self.forget_counts();
        Ok(())
    }

    /// Up to [`BATCH`] messages of `url`, invisible for `visibility` (0: a look, they stay).
    async fn receive_batch(
        &self,
        url: &str,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(BATCH)
            .visibility_timeout(seconds(visibility))
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        Ok(output.messages().to_vec())
    }

    /// The counts, read from both queues' attributes now.
    async fn read_stats(&self) -> Result<QueueStats, QueueError> {
        let count = |attributes: &HashMap<QueueAttributeName, String>, name| {
            attributes
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let main = self.attributes(&self.queue_url).await?;
        let dead = self.attributes(&self.dead_url).await?;
        Ok(QueueStats {
            depth: count(&main, QueueAttributeName::ApproximateNumberOfMessages)
                + count(
                    &main,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ),
            in_flight: count(
                &main,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            dead: count(&dead, QueueAttributeName::ApproximateNumberOfMessages)
                + count(
                    &dead,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ),
        })
    }

    /// Moves the dead letters for which `pick` says so back to the queue, with a fresh receive
    /// count; returns how many moved. The others are held while the pass lasts, so that each
    /// is seen once, then released.
    async fn move_back(&self, pick: impl Fn(&Job) -> bool) -> Result<u64, QueueError> {
        let mut moved = 0;
        let mut held = Vec::new();
        let passed = async {
            while held.len() < MAX_LISTED {
                let batch = self.receive_batch(&self.dead_url, PASS_HOLD).await?;
                if batch.is_empty() {
                    break;
                }
                for message in batch {
                    let handle = message.receipt_handle().unwrap_or_default().to_string();
                    match job_of(&message).ok().filter(|job| pick(job)) {
                        Some(mut job) => {
                            job.receive_count = 0;
                            self.send(&self.queue_url, &job).await?;
                            self.delete(&self.dead_url, &handle).await?;
                            moved += 1;
                        }
                        None => held.push(handle),
                    }
                }
            }
            Ok::<_, QueueError>(())
        }
        .await;
        self.release(&held).await;
        passed.map(|()| moved)
    }

    /// Makes held dead letters visible again at once.
    async fn release(&self, handles: &[String]) {
        for handle in handles {
            let _ = self
                .client
                .change_message_visibility()
                .queue_url(&self.dead_url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        self.send(&self.queue_url, &job).await
    }

    async fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(1)
            .visibility_timeout(seconds(visibility))
            .wait_time_seconds(self.wait_time_s)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let Some(message) = output.messages().first() else {
            return Ok(None);
        };
        self.forget_counts();
        let token = message.receipt_handle().unwrap_or_default().to_string();
        let job = match job_of(message) {
            Ok(mut job) => {
                job.last_error = self.reasons().get(&job.video_id).cloned();
                job
            }
            Err(e) => {
                // A message that is no job would come back for ever: it goes to the dead letters.
                tracing::warn!(error = %e, "a message that is not a job was removed from the queue");
                let _ = self.delete(&self.queue_url, &token).await;
                return Err(e);
            }
        };
        self.leases().insert(token.clone(), job.clone());
        Ok(Some(Lease {
            job,
            token,
            visible_again_at_ms: now_ms() + visibility.as_millis() as u64,
        }))
    }

    async fn extend(
        &self,
        _: VideoId,
        token: &str,
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(token)
            .visibility_timeout(seconds(visibility))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibility", e))?;
        Ok(now_ms() + visibility.as_millis() as u64)
    }

    async fn ack(&self, video_id: VideoId, token: &str) -> Result<(), QueueError> {
        self.leases().remove(token);
        self.reasons().remove(&video_id);
        self.delete(&self.queue_url, token).await
    }

    async fn nack(
        &self,
        video_id: VideoId,
        token: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.leases().remove(token);
        self.remember(video_id, reason);
        self.forget_counts();
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(token)
            .visibility_timeout(seconds(delay))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibility", e))?;
        self.forget_counts();
        Ok(())
    }

    async fn dead_letter(
        &self,
        video_id: VideoId,
        token: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        // The job as it was received here; a lease from another process is known only by id.
        let mut job = self.leases().remove(token).unwrap_or_else(|| Job {
            video_id,
            task_id: String::new(),
            original_key: crate::engine::blobs::original_key(video_id),
            enqueued_at_ms: now_ms(),
            receive_count: 0,
            last_error: None,
        });
        job.last_error = Some(reason.to_string());
        self.send(&self.dead_url, &job).await?;
        self.delete(&self.queue_url, token).await
    }

    async fn cancel(&self, _: VideoId) -> Result<bool, QueueError> {
        Ok(false)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        // Read with a zero visibility timeout, so that a listing hides nothing from anyone
        // else (another listing, a re-drive): batches are taken until one brings nothing new.
        let mut letters: HashMap<String, DeadLetter> = HashMap::new();
        for _ in 0..MAX_LISTED / BATCH as usize {
            let batch = self.receive_batch(&self.dead_url, Duration::ZERO).await?;
            let before = letters.len();
            for message in batch {
                let Some(id) = message.message_id().map(str::to_string) else {
                    continue;
                };
                let Ok(mut job) = job_of(&message) else {
                    continue;
                };
                // A job dead-lettered here carries its receive count in its body; one moved
                // by the redrive policy carries it in the message (and reads add to it).
                if let Ok(sent) = serde_json::from_str::<Job>(message.body().unwrap_or("")) {
                    if sent.receive_count > 0 {
                        job.receive_count = sent.receive_count;
                    }
                }
                let reason = job.last_error.clone().unwrap_or_else(|| {
                    format!("received {} times without success", self.max_receives)
                });
                let dead_at_ms = attribute(&message, MessageSystemAttributeName::SentTimestamp)
                    .unwrap_or_else(now_ms);
                letters.insert(
                    id,
                    DeadLetter {
                        job,
                        reason,
                        dead_at_ms,
                    },
                );
            }
            if letters.len() == before {
                break;
            }
        }
        let mut letters: Vec<DeadLetter> = letters.into_values().collect();
        letters.sort_by_key(|d| d.job.video_id);
        letters.dedup_by_key(|d| d.job.video_id);
        Ok(letters)
    }

    async fn redrive(&self, video_id: VideoId) -> Result<(), QueueError> {
        match self.move_back(|job| job.video_id == video_id).await? {
            0 => Err(QueueError::NotFound),
            _ => Ok(()),
        }
    }

    async fn redrive_all(&self) -> Result<u64, QueueError> {
        self.move_back(|_| true).await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let fresh = *self.counted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, stats)) = fresh.filter(|(at, _)| at.elapsed() < COUNTS_FOR) {
            return Ok(stats);
        }
        let changes = || self.changes.load(std::sync::atomic::Ordering::SeqCst);
        let before = changes();
        let stats = self.read_stats().await?;
        if changes() == before {
            *self.counted.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), stats));
        }
        Ok(stats)
    }

    /// Sent to the dead-letter queue with its reason as its last error. SQS cannot tell whether
    /// the video has a message already: the caller checks the dead letters first.
    async fn import_dead(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let mut job = letter.job;
        job.last_error = Some(letter.reason);
        let dead_url = self.dead_url.clone();
        self.send(&dead_url, &job).await
    }

    /// Only a job this node holds a lease on can be found.
    async fn job(&self, video_id: VideoId) -> Result<Option<Job>, QueueError> {
        Ok(self
            .leases()
            .values()
            .find(|job| job.video_id == video_id)
            .cloned())
    }
}
