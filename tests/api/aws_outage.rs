//! S3 and SQS going away and coming back (a gate in front of moto): uploads are refused with
//! 503 and `Retry-After` before their body is read, readiness says why, nothing half-stored is
//! left, and the node heals without a restart.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::gate::Gate;
use crate::common::moto::Moto;
use crate::common::{aws, clip, test_config, Client, Clip, TestApp};

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
    let backends = actors["backends"].as_array().unwrap();
    assert!(
        backends.iter().all(|b| b["reachable"] == false),
        "{backends:?}"
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
