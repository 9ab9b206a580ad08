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

pub const BUCKET: &str = "showcase-test";

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
        let made = block_on(provision(&moto.endpoint, config.queue.max_receives));
        let prefix = "media/";
        point_at(config, &moto.endpoint, prefix, &made);
        Self {
            s3: S3Location::from(&config.storage.s3),
            moto,
        }
    }

    pub async fn blobs(&self) -> S3Blobs {
        S3Blobs::connect(&self.s3).await
    }
}

/// The bucket and the queues made on a server for a test node.
pub struct Provisioned {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

/// The region every test server answers for.
const REGION: &str = "us-east-1";

/// A client of the S3 server at `endpoint_url`, buckets in the path.
pub async fn s3_client(endpoint_url: &str) -> aws_sdk_s3::Client {
    let endpoint = Endpoint {
        region: REGION.into(),
        endpoint_url: endpoint_url.into(),
    };
    let shared = showcase::engine::aws::sdk_config(&endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

/// Creates [`BUCKET`], and a queue dead-lettering after `max_receives`, on the server at
/// `endpoint_url`.
pub async fn provision(endpoint_url: &str, max_receives: u32) -> Provisioned {
    s3_client(endpoint_url)
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let endpoint = Endpoint {
        region: REGION.into(),
        endpoint_url: endpoint_url.into(),
    };
    let shared = showcase::engine::aws::sdk_config(&endpoint).await;
    let (queue_url, dead_letter_queue_url) =
        queues(&aws_sdk_sqs::Client::new(&shared), max_receives).await;
    Provisioned {
        queue_url,
        dead_letter_queue_url,
    }
}

/// Points `config` at what `made` holds, reached through `endpoint_url`, keys under `prefix`.
pub fn point_at(config: &mut Config, endpoint_url: &str, prefix: &str, made: &Provisioned) {
    config.storage.backend = StorageBackend::S3;
    let s3 = &mut config.storage.s3;
    s3.bucket = BUCKET.into();
    s3.prefix = prefix.into();
    s3.region = REGION.into();
    s3.endpoint_url = endpoint_url.into();
    s3.force_path_style = true;
    config.queue.backend = QueueBackend::Sqs;
    let sqs = &mut config.queue.sqs;
    sqs.queue_url = made.queue_url.clone();
    sqs.dead_letter_queue_url = made.dead_letter_queue_url.clone();
    sqs.region = REGION.into();
    sqs.endpoint_url = endpoint_url.into();
    sqs.wait_time_s = 1;
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
