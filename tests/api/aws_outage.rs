//! S3 and SQS going away and coming back (a gate in front of moto): uploads are refused with
//! 503 and `Retry-After` before their body is read, readiness says why, nothing half-stored is
//! left, and the node heals without a restart.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::gate::Gate;
use crate::common::moto::Moto;
use crate::common::{self, aws, clip, test_config, Client, Clip, TestApp};

use crate::common::Checked;
use aws::BUCKET;

async fn readiness(t: &TestApp) -> (StatusCode, serde_json::Value) {
    t.get("/api/health/ready", None).await
}

/// Calls to S3 and SQS that got no answer, counted by `/metrics` (in-process nodes share it).
async fn backend_failures(t: &TestApp) -> f64 {
    let text = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with("showcase_backend_requests_total{"))
        .filter(|line| {
            ["timeout", "unreachable", "other"]
                .iter()
                .any(|o| line.contains(&format!("outcome=\"{o}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Readiness once it answers `want` with a body that contains `saying`.
async fn wait_readiness(t: &TestApp, want: StatusCode, saying: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readiness(t).await;
        if status == want && body.to_string().contains(saying) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_uploads_and_the_node_heals_without_a_restart() {
    let moto = Moto::start();
    let gate = Gate::to(moto.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let made = aws::provision(&moto.endpoint, 5).await;
    let s3 = aws::s3_client(&moto.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    aws::point_at(&mut config, &gate.url(), "", &made);
    let app = showcase::app::spawn(config).expect("the node starts");
    let t = TestApp {
        client: Client::new(app.url("")),
        app,
        aws: None,
        postgres: None,
        dir,
    };
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let first = t.uploaded_video(&token, "Antes").await;
    wait_readiness(&t, StatusCode::OK, "ready").await;

    let failed_before = backend_failures(&t).await;
    gate.close();
    let unready = wait_readiness(
        &t,
        StatusCode::SERVICE_UNAVAILABLE,
        "media store (s3) is unreachable",
    )
    .await;
    assert!(unready.to_string().contains("queue"), "{unready}");
    let (status, body) = t.upload(&token, &clip(Clip::Valid), "Durante").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, actors) = t.get("/api/health/actors", None).await;
    let reachable: Vec<_> = actors["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["role"].as_str().unwrap(),
                b["reachable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reachable,
        [("store", true), ("storage", false), ("queue", false)]
    );
    let (_, mine) = t.get("/api/videos", Some(&token)).await;
    assert_eq!(
        mine.as_array().unwrap().len(),
        1,
        "no record of the refused upload"
    );

    // The failed calls are in /metrics, by outcome.
    assert!(
        backend_failures(&t).await > failed_before,
        "no failed call counted"
    );

    gate.open();
    wait_readiness(&t, StatusCode::OK, "ready").await;
    let second = t.uploaded_video(&token, "Después").await;
    assert!(second > first);
    // Everything in the bucket is what the records say, and no part was left behind.
    let objects = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    let mut keys: Vec<_> = objects
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("originals/{first}.mp4"),
            format!("originals/{second}.mp4")
        ]
    );
    let parts = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(parts.uploads().is_empty());
    // Both jobs reach the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.app.engine().queue.stats().await.unwrap().depth < 2 {
        assert!(Instant::now() < deadline, "the jobs did not reach SQS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node whose S3 and SQS, one moto server, are each reached through a gate of its own.
struct Gated {
    t: TestApp,
    s3_gate: Gate,
    sqs_gate: Gate,
    s3: aws_sdk_s3::Client,
    _moto: Moto,
}

async fn gated() -> Gated {
    let moto = Moto::start();
    let target = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let (s3_gate, sqs_gate) = (Gate::to(target).await, Gate::to(target).await);
    let made = aws::provision(&moto.endpoint, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    aws::point_at(&mut config, &s3_gate.url(), "", &made);
    config.queue.sqs.endpoint_url = sqs_gate.url();
    let app = showcase::app::spawn(config).expect("the node starts");
    Gated {
        t: TestApp {
            client: Client::new(app.url("")),
            app,
            aws: None,
            postgres: None,
            dir,
        },
        s3_gate,
        sqs_gate,
        s3: aws::s3_client(&moto.endpoint).await,
        _moto: moto,
    }
}

impl Gated {
    /// The keys in the bucket and the multipart uploads in progress.
    async fn bucket(&self) -> (Vec<String>, usize) {
        let objects = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let mut keys: Vec<_> = objects
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        let uploads = self
            .s3
            .list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        (keys, uploads.uploads().len())
    }
}

/// Posts an upload whose file part comes from `chunks` as they are sent; the status and the
/// `Retry-After` header of the answer.
async fn upload_streamed(
    t: &Client,
    token: &str,
    len: u64,
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> (StatusCode, Option<String>) {
    let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), chunks))
    });
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name("clip.mp4")
            .mime_str("video/mp4")
            .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("title", "En vuelo")
        .part("video_file", part);
    let response = t
        .http
        .post(t.url("/api/videos/upload"))
        .bearer_auth(token)
        .multipart(form)
        .checked()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_cut_in_the_middle_of_a_multipart_upload_leaves_no_part_once_back() {
    let g = gated().await;
    let t = &g.t;
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    let big = common::padded_mp4(40 * 1024 * 1024);
    // S3 goes away once 12 MiB of the five 8 MiB parts have gone through to it.
    g.s3_gate.close_after(12 * 1024 * 1024);
    let (status, body) = t.upload(&token, &big, "Cortado").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, mine) = t.get("/api/videos", Some(&token)).await;
    assert_eq!(mine, serde_json::json!([]), "no record");
    assert_eq!(
        g.bucket().await,
        (vec![], 1),
        "the multipart upload could not be aborted while S3 was away"
    );

    g.s3_gate.open();
    wait_readiness(t, StatusCode::OK, "ready").await;
    // The first check that S3 answers aborts what could not be aborted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.bucket().await != (vec![], 0) {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            g.bucket().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = t.uploaded_video(&token, "Después").await;
    assert_eq!(g.bucket().await, (vec![format!("originals/{id}.mp4")], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_gone_while_an_upload_comes_in_refuses_it_and_stores_nothing() {
    let g = gated().await;
    let t = &g.t;
    let (_, token) = t.quick_player("Ana", "Ruiz", "Cali").await;
    wait_readiness(t, StatusCode::OK, "ready").await;
    let file = std::fs::read(clip(Clip::Valid)).unwrap();
    let (send, chunks) = tokio::sync::mpsc::channel(4);
    let half = file.len() / 2;
    send.send(file[..half].to_vec()).await.unwrap();
    let answer = {
        let (client, token) = (Client::new(t.url("")), token.clone());
        let len = file.len() as u64;
        tokio::spawn(async move { upload_streamed(&client, &token, len, chunks).await })
    };
    // Half the body is in; then SQS goes away, and the node notices.
    while common::files_under(&t.dir.path().join("tmp")).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    g.sqs_gate.close();
    wait_readiness(
        t,
        StatusCode::SERVICE_UNAVAILABLE,
        "job queue (sqs) is unreachable",
    )
    .await;
    send.send(file[half..].to_vec()).await.unwrap();
    drop(send);
    let (status, retry_after) = answer.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some(), "503 without Retry-After");
    let (_, mine) = t.get("/api/videos", Some(&token)).await;
    assert_eq!(mine, serde_json::json!([]), "no record");
    assert_eq!(g.bucket().await, (vec![], 0), "nothing stored in S3");
    assert!(common::files_under(&t.dir.path().join("tmp")).is_empty());

    g.sqs_gate.open();
    wait_readiness(t, StatusCode::OK, "ready").await;
    let id = t.uploaded_video(&token, "Después").await;
    assert_eq!(g.bucket().await, (vec![format!("originals/{id}.mp4")], 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.app.engine().queue.stats().await.unwrap().depth < 1 {
        assert!(Instant::now() < deadline, "the job did not reach SQS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
