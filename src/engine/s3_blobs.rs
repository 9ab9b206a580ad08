//! Blob storage in an S3 bucket (or an S3-compatible server), under a key prefix.
//!
//! A file is stored with a multipart upload streamed from the file in parts of [`PART_BYTES`],
//! [`PART_CONCURRENCY`] at a time: memory per upload is bounded whatever the file's size. Any
//! failure aborts the multipart upload, so no part outlives it. Reads are ranged GETs whose
//! bodies stream as they arrive.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use futures_util::{StreamExt, TryStreamExt};

use super::aws::{sdk_config, Endpoint, Observed};
pub use super::blobs::BlobStream;
use super::blobs::{check_key, BlobError, BlobStore};

/// Size of the parts of a multipart upload (S3 wants at least 5 MiB but for the last one).
pub const PART_BYTES: u64 = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const PART_CONCURRENCY: usize = 4;

/// Where the blobs are: a bucket, a key prefix, and how to reach the server.
#[derive(Debug, Clone, Default)]
pub struct S3Location {
    pub bucket: String,
    /// Prepended to every key (`showcase/` stores `originals/1.mp4` as
    /// `showcase/originals/1.mp4`).
    pub prefix: String,
    pub endpoint: Endpoint,
    /// Bucket in the path (`host/bucket/key`) rather than the host name, for servers
    /// without virtual hosts.
    pub force_path_style: bool,
}

impl From<&crate::config::S3Config> for S3Location {
    fn from(s3: &crate::config::S3Config) -> Self {
        Self {
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone(),
            endpoint: Endpoint {
                region: s3.region.clone(),
                endpoint_url: s3.endpoint_url.clone(),
            },
            force_path_style: s3.force_path_style,
        }
    }
}

pub struct S3Blobs {
    client: Client,
    bucket: String,
    prefix: String,
    /// Failed multipart uploads whose abort failed too (S3 went away mid-upload): object and
    /// upload id, aborted again once S3 answers a check, so that no part is left behind.
    unaborted: std::sync::Mutex<Vec<(String, String)>>,
}

/// Failed multipart uploads remembered for a later abort; past this, the bucket's lifecycle
/// rule for incomplete uploads is left to remove the oldest.
const MAX_UNABORTED: usize = 1024;

/// What a failed call means for the caller: try later, not found, or refused.
fn classify<E, R>(operation: &str, error: SdkError<E, R>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = |detail: String| format!("{operation}: {detail}");
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BlobError::Unavailable(message(DisplayErrorContext(&error).to_string()))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            let detail = service.err().message().unwrap_or(code).to_string();
            match code {
                "NoSuchKey" | "NotFound" => BlobError::NotFound,
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "ServiceUnavailable"
                | "InternalError" => BlobError::Unavailable(message(format!("{code}: {detail}"))),
                _ => BlobError::Remote(message(format!("{code}: {detail}"))),
            }
        }
        _ => BlobError::Remote(message(DisplayErrorContext(&error).to_string())),
    }
}

impl S3Blobs {
    pub async fn connect(location: &S3Location) -> Self {
        let shared = sdk_config(&location.endpoint).await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(location.force_path_style)
            .interceptor(Observed)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: location.bucket.clone(),
            prefix: location.prefix.clone(),
            unaborted: std::sync::Mutex::default(),
        }
    }

    fn object(&self, key: &str) -> Result<String, BlobError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Copies a blob into the local file `into` (created or replaced), streamed, fsynced.
    pub async fn download(&self, key: &str, into: &Path) -> Result<(), BlobError> {
        use tokio::io::AsyncWriteExt;
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .send()
            .await
            .map_err(|e| classify("GetObject", e))?;
        let mut body = output.body;
        let mut file = tokio::fs::File::create(into).await?;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| BlobError::Unavailable(format!("reading an object: {e}")))?
        {
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(())
    }

    /// Uploads `file` as `object` with a multipart upload; aborts it on any failure.
    async fn upload(&self, object: &str, file: &Path) -> Result<(), BlobError> {
        let len = tokio::fs::metadata(file).await?.len();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BlobError::Remote("CreateMultipartUpload: no upload id".into()))?
            .to_string();
        match self.upload_parts(object, &upload_id, file, len).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(abort) = self.abort(object, &upload_id).await {
                    tracing::warn!(object, error = %abort,
                        "a failed multipart upload could not be aborted; it will be once S3 answers");
                    let mut unaborted = self.unaborted.lock().unwrap_or_else(|p| p.into_inner());
                    if unaborted.len() >= MAX_UNABORTED {
                        unaborted.remove(0);
                    }
                    unaborted.push((object.to_string(), upload_id));
                }
                Err(e)
            }
        }
    }

    /// Aborts a multipart upload: its parts are removed. One S3 no longer knows is gone.
    async fn abort(&self, object: &str, upload_id: &str) -> Result<(), BlobError> {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .send()
            .await;
        match aborted {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_upload()) => Ok(()),
            Err(e) => Err(classify("AbortMultipartUpload", e)),
        }
    }

    /// Aborts again the uploads whose abort failed; those that fail again stay for later.
    async fn abort_pending(&self) {
        let pending =
            std::mem::take(&mut *self.unaborted.lock().unwrap_or_else(|p| p.into_inner()));
        for (object, upload_id) in pending {
            match self.abort(&object, &upload_id).await {
                Ok(()) => tracing::info!(object, "a failed multipart upload was aborted"),
                Err(_) => self
                    .unaborted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((object, upload_id)),
            }
        }
    }

    async fn upload_parts(
        &self,
        object: &str,
        upload_id: &str,
        file: &Path,
        len: u64,
    ) -> Result<(), BlobError> {
        let count = len.div_ceil(PART_BYTES).max(1);
        let parts: Vec<CompletedPart> = futures_util::stream::iter(0..count)
            .map(|index| self.upload_part(object, upload_id, file, len, index))
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CompleteMultipartUpload", e))?;
        Ok(())
    }

    /// Part `index` (from 0) of `file`, streamed from the file.
    async fn upload_part(
        &self,
        object: &str,
        upload_id: &str,
        file: &Path,
        len: u64,
        index: u64,
    ) -> Result<CompletedPart, BlobError> {
        let offset = index * PART_BYTES;
        let size = PART_BYTES.min(len - offset.min(len));
        let body = ByteStream::read_from()
            .path(file)
            .offset(offset)
            .length(Length::Exact(size))
            .build()
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        let number = index as i32 + 1;
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(|e| classify("UploadPart", e))?;
        Ok(CompletedPart::builder()
            .set_e_tag(part.e_tag().map(str::to_string))
            .part_number(number)
            .build())
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    /// Uploads the file, then removes it: the blob is in the bucket and nowhere else.
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), BlobError> {
        let object = self.object(key)?;
        self.upload(&object, file).await?;
        tokio::fs::remove_file(file).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .send()
            .await
            .map_err(|e| classify("DeleteObject", e))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        Ok(self.len(key).await?.is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListObjectsV2", e))?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    keys.push(key.to_string());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    async fn fetch(&self, key: &str, into: &Path) -> Result<PathBuf, BlobError> {
        self.download(key, into).await?;
        Ok(into.to_path_buf())
    }

    /// The length of a blob, or `None` when there is no such blob.
    async fn len(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .send()
            .await;
        match head {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match classify("HeadObject", e) {
                BlobError::NotFound => Ok(None),
                // HEAD answers have no body, so a missing object is a bare 404.
                BlobError::Remote(m) if m.contains("NotFound") || m.contains("404") => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Bytes `first..=last` of a blob, streamed as they arrive (one ranged GET).
    async fn read_range(&self, key: &str, first: u64, last: u64) -> Result<BlobStream, BlobError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .range(format!("bytes={first}-{last}"))
            .send()
            .await
            .map_err(|e| classify("GetObject", e))?;
        let body = output.body;
        Ok(Box::pin(futures_util::stream::try_unfold(
            body,
            |mut body| async move {
                match body.try_next().await {
                    Ok(Some(chunk)) => Ok(Some((chunk, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(BlobError::Unavailable(format!("reading an object: {e}"))),
                }
            },
        )))
    }

    /// Whether the bucket answers (start-up and readiness checks): a listing of one key under
    /// the prefix, which a policy limited to the prefix allows.
    async fn check(&self) -> Result<(), BlobError> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| classify("ListObjectsV2", e))?;
        self.abort_pending().await;
        Ok(())
    }
}
