//! The AWS backends for a test node: S3 and SQS on a moto server of its own, with a bucket and
//! a queue whose redrive policy matches the node's `queue.max_receives`.
//! `SHOWCASE_TEST_BACKENDS=aws` runs every in-process node of the tests on them.

use showcase::config::{Config, QueueBackend, StorageBackend};
use showcase::engine::aws::Endpoint;
use showcase::engine::s3_blobs::{S3Blobs, S3Location};

use super::moto::Moto;

/// Whether the tests' nodes keep media in S3 and jobs in SQS.
pub fn on_aws() -> bool {
    std::env::var("SHOWCASE_TEST_BACKENDS").is_ok_and(|v| v == "aws")
}

pub struct Aws {
    pub moto: Moto,
    pub s3: S3Location,
}

const BUCKET: &str = "showcase-test";

/// Runs `work` to its end on a runtime of its own (helpers called from sync code or from
/// another runtime).
pub fn block_on<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work)
            })
            .join()
            .unwrap()
    })
}

impl Aws {
    /// Starts moto, creates the bucket and the queues, and points `config` at them.
    pub fn start(config: &mut Config) -> Self {
        let moto = Moto::start();
        let endpoint = Endpoint {
            region: "us-east-1".into(),
            endpoint_url: moto.endpoint.clone(),
        };
        let max_receives = config.queue.max_receives;
        let (queue_url, dead_url) = block_on(async {
            let shared = showcase::engine::aws::sdk_config(&endpoint).await;
            let s3 = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(true)
                    .build(),
            );
            s3.create_bucket().bucket(BUCKET).send().await.unwrap();
            queues(&aws_sdk_sqs::Client::new(&shared), max_receives).await
        });
        config.storage.backend = StorageBackend::S3;
        let s3 = &mut config.storage.s3;
        s3.bucket = BUCKET.into();
        s3.prefix = "media/".into();
        s3.region = endpoint.region.clone();
        s3.endpoint_url = endpoint.endpoint_url.clone();
        s3.force_path_style = true;
        config.queue.backend = QueueBackend::Sqs;
        let sqs = &mut config.queue.sqs;
        sqs.queue_url = queue_url;
        sqs.dead_letter_queue_url = dead_url;
        sqs.region = endpoint.region.clone();
        sqs.endpoint_url = endpoint.endpoint_url.clone();
        sqs.wait_time_s = 1;
        Self {
            moto,
            s3: S3Location {
                bucket: BUCKET.into(),
                prefix: "media/".into(),
                endpoint,
                force_path_style: true,
            },
        }
    }

    pub async fn blobs(&self) -> S3Blobs {
        S3Blobs::connect(&self.s3).await
    }
}

/// A queue and its dead-letter queue, dead-lettering after `max_receives`; their URLs.
pub async fn queues(sqs: &aws_sdk_sqs::Client, max_receives: u32) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dead = sqs
        .create_queue()
        .queue_name("showcase-jobs-dead")
        .send()
        .await
        .unwrap();
    let dead_url = dead.queue_url().unwrap().to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let policy = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receives}"}}"#);
    let main = sqs
        .create_queue()
        .queue_name("showcase-jobs")
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .unwrap();
    (main.queue_url().unwrap().to_string(), dead_url)
}
