//! The S3 blob store against an S3-compatible server (moto): multipart uploads streamed from
//! a file, ranged reads, downloads, listings, deletion, and the failures that must leave no
//! part behind.

use std::path::Path;
use std::time::{Duration, Instant};

use showcase::engine::aws::Endpoint;
use showcase::engine::blobs::{BlobError, BlobStore};
use showcase::engine::s3_blobs::{S3Blobs, S3Location, PART_BYTES};

use crate::common::moto::Moto;
use crate::common::random_file;

const BUCKET: &str = "showcase-media";

fn location(endpoint: &str) -> S3Location {
    S3Location {
        bucket: BUCKET.into(),
        prefix: "nodo/".into(),
        endpoint: Endpoint {
            region: "us-east-1".into(),
            endpoint_url: endpoint.into(),
        },
        force_path_style: true,
    }
}

/// A client of the server itself, to look behind the store's back.
async fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let shared = showcase::engine::aws::sdk_config(&location(endpoint).endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

async fn with_bucket(moto: &Moto) -> (S3Blobs, aws_sdk_s3::Client) {
    let raw = raw_client(&moto.endpoint).await;
    raw.create_bucket().bucket(BUCKET).send().await.unwrap();
    (S3Blobs::connect(&location(&moto.endpoint)).await, raw)
}

async fn collect(mut stream: showcase::engine::s3_blobs::BlobStream) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn pending_uploads(raw: &aws_sdk_s3::Client) -> usize {
    raw.list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

#[tokio::test]
async fn a_file_goes_up_in_parts_and_comes_back_whole_or_by_ranges() {
    let moto = Moto::start();
    let (store, raw) = with_bucket(&moto).await;
    store.check().await.unwrap();
    // Three parts: two whole, one short.
    let len = 2 * PART_BYTES + 12_345;
    let source = random_file(len);
    let bytes = std::fs::read(&source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.part");
    std::fs::copy(&source, &upload).unwrap();

    store.put_file("originals/7.mp4", &upload).await.unwrap();
    assert!(
        !upload.exists(),
        "the local file is gone once the object is stored"
    );
    assert_eq!(pending_uploads(&raw).await, 0);
    let stored = raw
        .head_object()
        .bucket(BUCKET)
        .key("nodo/originals/7.mp4")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.content_length(), Some(len as i64));
    assert_eq!(store.len("originals/7.mp4").await.unwrap(), Some(len));
    assert!(store.exists("originals/7.mp4").await.unwrap());

    for (first, last) in [
        (0, 0),
        (PART_BYTES - 3, PART_BYTES + 2),
        (len - 10, len - 1),
    ] {
        let got = collect(
            store
                .read_range("originals/7.mp4", first, last)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            got,
            &bytes[first as usize..=last as usize],
            "{first}-{last}"
        );
    }
    let copy = dir.path().join("copy.mp4");
    store.download("originals/7.mp4", &copy).await.unwrap();
    assert!(
        std::fs::read(&copy).unwrap() == bytes,
        "the download is the file"
    );

    store
        .put_file("posters/7.jpg", &write(dir.path(), "p.jpg", b"jpeg"))
        .await
        .unwrap();
    assert_eq!(
        store.list("originals/").await.unwrap(),
        vec!["originals/7.mp4".to_string()]
    );
    assert_eq!(store.list("").await.unwrap().len(), 2);

    store.delete("originals/7.mp4").await.unwrap();
    assert_eq!(store.len("originals/7.mp4").await.unwrap(), None);
    // Deleting what is not there is not an error, as on disk.
    store.delete("originals/7.mp4").await.unwrap();
    assert!(matches!(
        store.read_range("originals/7.mp4", 0, 1).await,
        Err(BlobError::NotFound)
    ));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn an_upload_that_fails_midway_leaves_no_part_and_no_object() {
    let moto = Moto::start();
    let (store, raw) = with_bucket(&moto).await;
    // A directory has a length but cannot be read: the parts fail after the upload began.
    let dir = tempfile::tempdir().unwrap();
    let failed = store.put_file("originals/8.mp4", dir.path()).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        pending_uploads(&raw).await,
        0,
        "the multipart upload was aborted"
    );
    assert_eq!(store.len("originals/8.mp4").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_soon_not_a_hang() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    crate::common::moto::test_credentials();
    let store = S3Blobs::connect(&location(&format!("http://127.0.0.1:{closed}"))).await;
    let started = Instant::now();
    let checked = store.check().await;
    assert!(
        matches!(checked, Err(BlobError::Unavailable(_))),
        "{checked:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.mp4", b"bytes");
    assert!(matches!(
        store.put_file("originals/9.mp4", &file).await,
        Err(BlobError::Unavailable(_))
    ));
    assert!(
        file.exists(),
        "a file that was not stored stays where it was"
    );
}
