//! The AWS backends for a test node: S3 and SQS on a moto server, with a bucket and a queue
//! whose redrive policy matches the node's `queue.max_receives`.
//! `SHOWCASE_TEST_BACKENDS=aws` runs every node of the tests on them: an in-process node on a
//! moto server of its own, a node run as a process ([`ForProcess`]) on one shared by the whole
//! test binary, so that it outlives the restarts a test makes.

use std::path::Path;
use std::sync::OnceLock;

use showcase::config::{Config, QueueBackend, StorageBackend};
use showcase::engine::aws::Endpoint;
use showcase::engine::s3_blobs::{S3Blobs, S3Location};

use super::moto::Moto;
use super::stored::Remote;

/// The backends the tests' nodes run on besides the embedded ones: `SHOWCASE_TEST_BACKENDS`,
/// a comma-separated list of `aws` (media in S3, jobs in SQS) and `postgres` (records).
pub fn test_backends() -> Vec<&'static str> {
    let given = std::env::var("SHOWCASE_TEST_BACKENDS").unwrap_or_default();
    ["aws", "postgres"]
        .into_iter()
        .filter(|known| given.split(',').any(|b| b.trim() == *known))
        .collect()
}

/// Whether the tests' nodes keep media in S3 and jobs in SQS.
pub fn on_aws() -> bool {
    test_backends().contains(&"aws")
}

pub struct Aws {
    pub moto: Moto,
    pub s3: S3Location,
    pub made: Provisioned,
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
            made,
        }
    }

    pub async fn blobs(&self) -> S3Blobs {
        S3Blobs::connect(&self.s3).await
    }

    pub fn remote(&self) -> Remote {
        Remote {
            endpoint: self.moto.endpoint.clone(),
            s3: self.s3.clone(),
            queue_url: self.made.queue_url.clone(),
        }
    }
}

/// The bucket and the queues made on a server for a test node.
#[derive(Debug, Clone)]
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
    bucket(endpoint_url).await;
    provision_queues(endpoint_url, "showcase-jobs", max_receives).await
}

async fn bucket(endpoint_url: &str) {
    s3_client(endpoint_url)
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
}

/// A client of the SQS server at `endpoint_url`.
pub async fn sqs_client(endpoint_url: &str) -> aws_sdk_sqs::Client {
    let endpoint = Endpoint {
        region: REGION.into(),
        endpoint_url: endpoint_url.into(),
    };
    aws_sdk_sqs::Client::new(&showcase::engine::aws::sdk_config(&endpoint).await)
}

async fn provision_queues(endpoint_url: &str, name: &str, max_receives: u32) -> Provisioned {
    let (queue_url, dead_letter_queue_url) =
        queues(&sqs_client(endpoint_url).await, name, max_receives).await;
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

/// Queue `name` and its dead-letter queue `<name>-dead`, dead-lettering after `max_receives`;
/// their URLs. Asking again for the same ones finds them.
pub async fn queues(sqs: &aws_sdk_sqs::Client, name: &str, max_receives: u32) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dead = sqs
        .create_queue()
        .queue_name(format!("{name}-dead"))
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
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .unwrap();
    (main.queue_url().unwrap().to_string(), dead_url)
}

/// The moto server of the nodes run as processes by this test binary. It is started from a
/// thread that lives as long as the binary, and dies with that thread (a parent-death signal),
/// so it ends with the binary however the binary ends.
fn shared_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let moto = Moto::start_tied_to_this_thread();
            block_on(bucket(&moto.endpoint));
            tx.send(moto.endpoint.clone()).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared moto server starts")
    })
}

/// Where a node run as a process keeps its media and jobs: on the shared moto server, under a
/// prefix and in two queues named after its data dir, so that a restart over the same data
/// dir finds them again.
#[derive(Debug, Clone)]
pub struct ForProcess {
    pub endpoint: String,
    pub prefix: String,
    pub made: Provisioned,
}

impl ForProcess {
    pub fn for_data_dir(data_dir: &Path, max_receives: u32) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut hasher);
        let name = format!("node-{:016x}", hasher.finish());
        let endpoint = shared_endpoint().to_string();
        let made = block_on(provision_queues(&endpoint, &name, max_receives));
        Self {
            prefix: format!("{name}/"),
            endpoint,
            made,
        }
    }

    /// The node's configuration for these backends, as the environment it reads, and the
    /// credentials the SDK's chain finds there.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut config = Config::default();
        point_at(&mut config, &self.endpoint, &self.prefix, &self.made);
        let (s3, sqs) = (&config.storage.s3, &config.queue.sqs);
        let mut env: Vec<(String, String)> = [
            ("SHOWCASE_STORAGE__BACKEND", "s3".to_string()),
            ("SHOWCASE_STORAGE__S3__BUCKET", s3.bucket.clone()),
            ("SHOWCASE_STORAGE__S3__PREFIX", s3.prefix.clone()),
            ("SHOWCASE_STORAGE__S3__REGION", s3.region.clone()),
            (
                "SHOWCASE_STORAGE__S3__ENDPOINT_URL",
                s3.endpoint_url.clone(),
            ),
            (
                "SHOWCASE_STORAGE__S3__FORCE_PATH_STYLE",
                s3.force_path_style.to_string(),
            ),
            ("SHOWCASE_QUEUE__BACKEND", "sqs".to_string()),
            ("SHOWCASE_QUEUE__SQS__QUEUE_URL", sqs.queue_url.clone()),
            (
                "SHOWCASE_QUEUE__SQS__DEAD_LETTER_QUEUE_URL",
                sqs.dead_letter_queue_url.clone(),
            ),
            ("SHOWCASE_QUEUE__SQS__REGION", sqs.region.clone()),
            (
                "SHOWCASE_QUEUE__SQS__ENDPOINT_URL",
                sqs.endpoint_url.clone(),
            ),
            (
                "SHOWCASE_QUEUE__SQS__WAIT_TIME_S",
                sqs.wait_time_s.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for key in super::moto::CREDENTIALS {
            if let Ok(value) = std::env::var(key) {
                env.push((key.to_string(), value));
            }
        }
        env
    }

    pub fn remote(&self) -> Remote {
        let mut config = Config::default();
        point_at(&mut config, &self.endpoint, &self.prefix, &self.made);
        Remote {
            endpoint: self.endpoint.clone(),
            s3: S3Location::from(&config.storage.s3),
            queue_url: self.made.queue_url.clone(),
        }
    }
}
