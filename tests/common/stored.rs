//! What a test node keeps, looked at where it keeps it: its blobs on the local disk or in S3,
//! its waiting jobs in the embedded queue or in SQS.

use std::path::{Path, PathBuf};

use showcase::engine::s3_blobs::{S3Blobs, S3Location};
use showcase::engine::BlobStore;

use super::aws::block_on;

/// The media and jobs of a node, also once it is stopped.
#[derive(Debug, Clone)]
pub struct Stored {
    pub data_dir: PathBuf,
    /// Set when the node keeps them in S3 and SQS.
    pub remote: Option<Remote>,
    /// The URL of the node's database, when its records are in PostgreSQL.
    pub postgres: Option<String>,
}

/// S3 and SQS as a node is configured for them.
#[derive(Debug, Clone)]
pub struct Remote {
    pub endpoint: String,
    pub s3: S3Location,
    pub queue_url: String,
}

impl Stored {
    pub fn local(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            remote: None,
            postgres: None,
        }
    }

    /// The node's records and its own queue (the outbox with SQS), opened beside it: sled's
    /// only once the node is stopped.
    pub async fn records(
        &self,
    ) -> (
        std::sync::Arc<dyn showcase::engine::Store>,
        std::sync::Arc<dyn showcase::engine::JobQueue>,
    ) {
        match &self.postgres {
            Some(url) => {
                let engine = std::sync::Arc::new(
                    showcase::engine::pg_engine::PgEngine::connect(url, None, 2, 5)
                        .await
                        .unwrap(),
                );
                (engine.clone(), engine)
            }
            None => {
                let engine = showcase::engine::sled_engine::SledEngine::open(
                    &self.data_dir.join("db"),
                    5,
                    std::time::Duration::from_secs(5),
                )
                .unwrap();
                (engine.clone(), engine)
            }
        }
    }

    async fn blobs(&self) -> Box<dyn BlobStore> {
        match &self.remote {
            Some(remote) => Box::new(S3Blobs::connect(&remote.s3).await),
            None => Box::new(showcase::engine::LocalBlobs::open(self.media_dir()).unwrap()),
        }
    }

    fn media_dir(&self) -> PathBuf {
        self.data_dir.join("media")
    }

    /// The bytes of blob `key` (`originals/3.mp4`), if there is one.
    pub fn blob(&self, key: &str) -> Option<Vec<u8>> {
        let Some(remote) = &self.remote else {
            return std::fs::read(self.media_dir().join(key)).ok();
        };
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join("blob");
            S3Blobs::connect(&remote.s3)
                .await
                .download(key, &copy)
                .await
                .ok()?;
            std::fs::read(copy).ok()
        })
    }

    /// The keys of the blobs under `prefix` (`processed/`; empty: all of them), sorted. On
    /// disk, every file under the media directory counts, a stray one included.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let Some(remote) = &self.remote else {
            let media = self.media_dir();
            return super::files_under(&media)
                .iter()
                .map(|path| {
                    path.strip_prefix(&media)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|key| key.starts_with(prefix))
                .collect();
        };
        let mut keys = block_on(async {
            S3Blobs::connect(&remote.s3)
                .await
                .list(prefix)
                .await
                .unwrap()
        });
        keys.sort();
        keys
    }

    /// Stores `bytes` as blob `key`.
    pub async fn put_blob(&self, key: &str, bytes: &[u8]) {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("blob");
        std::fs::write(&file, bytes).unwrap();
        self.blobs().await.put_file(key, &file).await.unwrap();
    }

    /// Publishes `video_id` as the pipeline would, with `video` and `poster` as its files
    /// (stored here, recorded in `store`); the video's bytes.
    pub async fn publish(
        &self,
        store: &dyn showcase::engine::Store,
        video_id: u64,
        video: &Path,
        poster: &Path,
    ) -> Vec<u8> {
        use sha2::Digest;
        let bytes = std::fs::read(video).unwrap();
        let poster_bytes = std::fs::read(poster).unwrap();
        self.put_blob(&format!("processed/{video_id}.mp4"), &bytes)
            .await;
        self.put_blob(&format!("posters/{video_id}.jpg"), &poster_bytes)
            .await;
        store
            .publish_video(
                video_id,
                showcase::domain::Publication {
                    processed_key: format!("processed/{video_id}.mp4"),
                    poster_key: format!("posters/{video_id}.jpg"),
                    content_hash: hex::encode(sha2::Sha256::digest(&bytes)),
                    poster_hash: hex::encode(sha2::Sha256::digest(&poster_bytes)),
                    duration_s: 25.0,
                },
            )
            .await
            .unwrap();
        bytes
    }

    /// Whether a job for `video_id` waits in the queue. The embedded queue on sled is read
    /// from its files, so only once the node is stopped; SQS is read without hiding its
    /// messages.
    pub async fn has_job(&self, video_id: u64) -> bool {
        let Some(remote) = &self.remote else {
            let (_, queue) = self.records().await;
            let job = queue.job(video_id).await.unwrap();
            return job.is_some_and(|job| job.video_id == video_id);
        };
        let sqs = super::aws::sqs_client(&remote.endpoint).await;
        // A read brings back at most 10, a sample of them: read until two reads bring nothing
        // new.
        let mut seen = std::collections::BTreeSet::new();
        let mut quiet = 0;
        while quiet < 2 {
            let read = sqs
                .receive_message()
                .queue_url(&remote.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
            let before = seen.len();
            for message in read.messages() {
                let job: showcase::engine::Job =
                    serde_json::from_str(message.body().unwrap()).unwrap();
                seen.insert(job.video_id);
            }
            quiet = if seen.len() == before { quiet + 1 } else { 0 };
        }
        seen.contains(&video_id)
    }
}
