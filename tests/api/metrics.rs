//! `/metrics` is valid Prometheus text and its figures follow what the node does. The real
//! binary is used so that the process-wide registry starts from zero.

use crate::common;

use crate::common::Checked;
use common::process::ServerProcess;
use common::{clip, Clip};
use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;

async fn scrape(http: &reqwest::Client, server: &ServerProcess) -> Scrape {
    let response = http.get(server.url("/metrics")).checked().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The samples of metric `name` that carry all of `labels`.
fn series<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .filter(move |s| s.metric == name)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// The value of one sample (counter, gauge or untyped), 0 when the series does not exist yet.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name, labels)
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a plain value: {other:?}"),
        })
        .sum()
}

/// How many observations a histogram series holds (its +Inf bucket).
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name, labels)
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .map(|b| b.count)
                .expect("a +Inf bucket"),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

async fn upload(server: &ServerProcess, token: &str) -> StatusCode {
    server
        .client()
        .upload(token, &clip(Clip::Valid), "Triple")
        .await
        .0
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // No transcode worker and room for one job: the second upload is refused for the queue.
    let server = ServerProcess::start(dir.path(), &[("SHOWCASE_UPLOAD__MAX_QUEUE_DEPTH", "1")]);

    let before = scrape(&http, &server).await;
    assert_eq!(value(&before, "showcase_uploads_accepted_total", &[]), 0.0);
    assert_eq!(value(&before, "showcase_queue_depth", &[]), 0.0);

    let token = server.client().token_for("metrics@example.com").await;
    assert_eq!(upload(&server, &token).await, StatusCode::CREATED);
    assert_eq!(
        upload(&server, &token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (missing, _) = server.client().get("/api/videos/999", Some(&token)).await;
    assert_eq!(missing, StatusCode::NOT_FOUND);

    let after = scrape(&http, &server).await;
    for name in [
        "showcase_http_requests_total",
        "showcase_http_request_duration_seconds",
        "showcase_uploads_accepted_total",
        "showcase_uploads_refused_total",
        "showcase_http_lingering_closes_total",
        "showcase_http_lingering_cut_offs_total",
        "showcase_http_discarded_request_bytes_total",
        "showcase_jobs_total",
        "showcase_actor_restarts_total",
        "showcase_queue_depth",
        "showcase_queue_in_flight",
        "showcase_queue_dead_letters",
        "showcase_streams_active",
        "showcase_stream_bytes_served",
        "showcase_process_resident_memory_bytes",
        "showcase_disk_free_bytes",
    ] {
        assert!(after.docs.contains_key(name), "{name} has no HELP line");
    }
    // Closed label sets are there at 0 before anything happened.
    assert_eq!(
        value(
            &before,
            "showcase_actor_restarts_total",
            &[("actor", "ingest")]
        ),
        0.0
    );
    assert!(
        before
            .samples
            .iter()
            .any(|s| s.metric == "showcase_jobs_total"
                && s.labels.get("outcome") == Some("published"))
    );
    let requests = |route: &str, method: &str, status: &str| {
        value(
            &after,
            "showcase_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/api/auth/signup", "POST", "201"), 1.0);
    assert_eq!(requests("/api/auth/login", "POST", "200"), 1.0);
    assert_eq!(requests("/api/videos/upload", "POST", "201"), 1.0);
    assert_eq!(requests("/api/videos/upload", "POST", "503"), 1.0);
    assert_eq!(requests("/metrics", "GET", "200"), 1.0);
    assert_eq!(requests("/api/videos/:id", "GET", "404"), 1.0);
    assert_eq!(
        observations(
            &after,
            "showcase_http_request_duration_seconds",
            &[("route", "/api/videos/upload")]
        ),
        2.0
    );
    assert_eq!(value(&after, "showcase_uploads_accepted_total", &[]), 1.0);
    assert_eq!(
        value(&after, "showcase_upload_bytes_total", &[]),
        std::fs::metadata(clip(Clip::Valid)).unwrap().len() as f64
    );
    assert_eq!(
        value(
            &after,
            "showcase_uploads_refused_total",
            &[("reason", "queue_full")]
        ),
        1.0
    );
    // With SQS, a job the relay moves from the outbox while the two are read is counted twice
    // for a moment (never missed): the count settles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut settled = after;
    while value(&settled, "showcase_queue_depth", &[]) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "queue depth {}",
            value(&settled, "showcase_queue_depth", &[])
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        settled = scrape(&http, &server).await;
    }
    let after = settled;
    assert_eq!(value(&after, "showcase_queue_in_flight", &[]), 0.0);
    assert!(value(&after, "showcase_process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&after, "showcase_disk_free_bytes", &[]) > 0.0);
    if server.aws.is_some() {
        // Every call to S3 and SQS is counted and timed: here the accepted upload's one
        // multipart upload (the refused one never reached S3), and the start-up checks.
        let calls = |service: &str, operation: &str| {
            value(
                &after,
                "showcase_backend_requests_total",
                &[
                    ("service", service),
                    ("operation", operation),
                    ("outcome", "ok"),
                ],
            )
        };
        assert_eq!(calls("s3", "CreateMultipartUpload"), 1.0);
        assert!(calls("s3", "UploadPart") >= 1.0);
        assert_eq!(calls("s3", "CompleteMultipartUpload"), 1.0);
        assert!(calls("s3", "ListObjectsV2") >= 1.0);
        assert!(calls("sqs", "GetQueueAttributes") >= 1.0);
        assert_eq!(
            observations(
                &after,
                "showcase_backend_request_duration_seconds",
                &[("service", "s3"), ("operation", "CompleteMultipartUpload")]
            ),
            1.0
        );
    }

    // The refused upload's connection ends with a lingering close that throws away at most
    // what was left of its body.
    let body_bytes = std::fs::metadata(clip(Clip::Valid)).unwrap().len() as f64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = scrape(&http, &server).await;
        if value(&now, "showcase_http_lingering_closes_total", &[]) >= 1.0 {
            let discarded = value(&now, "showcase_http_discarded_request_bytes_total", &[]);
            assert!(
                discarded <= body_bytes + 1024.0,
                "{discarded} bytes discarded"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lingering close recorded after the refusal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(server.terminate().success());
}
