//! The AWS deployment, checked here since it can only run in an AWS account: the CloudFormation
//! template passes `cfn-lint` (from PyPI, installed by `make test-deps`), the configuration its
//! launch script writes is one the node accepts, key by key documented in `config.toml`, the
//! template ties the queue and the load balancer to the node's settings, and the publisher of
//! the worker group's scaling signal reads a real node's `/metrics` and hands the AWS CLI the
//! datapoint it should.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::TestApp;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn template() -> String {
    std::fs::read_to_string(repo("deploy/aws/showcase.yaml")).unwrap()
}

/// What CloudFormation would put for `${name}` in a stack: a value of the right form.
fn value_of(name: &str) -> &'static str {
    match name {
        "AWS::StackName" => "showcase",
        "AWS::Region" => "us-east-1",
        "PublicUrl" => "https://showcase.example.com",
        "VpcCidr" => "10.0.0.0/16",
        "Database.Endpoint.Address" => "showcase.abcdefghijkl.us-east-1.rds.amazonaws.com",
        "Database.Endpoint.Port" => "5432",
        "MediaBucket" => "showcase-mediabucket-abcdefghijkl",
        "JobQueue" => "https://sqs.us-east-1.amazonaws.com/123456789012/showcase-JobQueue-abc",
        "DeadLetterQueue" => {
            "https://sqs.us-east-1.amazonaws.com/123456789012/showcase-DeadLetterQueue-abc"
        }
        "TranscodesPerWorker" => "1",
        "MaxReceives" => "5",
        "VisibilityTimeout" => "120",
        "PackageBucket" => "my-packages-bucket",
        "PackageKey" => "showcase_0.1.0_amd64.deb",
        "AdminToken"
        | "JwtSecret"
        | "JwtSecretAccepted"
        | "Database.MasterUserSecret.SecretArn" => {
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:showcase-abcdef"
        }
        other => panic!("the launch script uses ${{{other}}}: give it a value here"),
    }
}

/// `line` with CloudFormation's `${name}` substitutions made ([`value_of`]).
fn substituted(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let close = rest[at..].find('}').unwrap();
        out.push_str(value_of(&rest[at + 2..at + close]));
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The configuration file the launch script writes, with the template's substitutions
/// (`${Param}`, shell `$VAR`) replaced by values of the right kind.
fn written_config() -> String {
    let template = template();
    let start = template
        .find("cat > /etc/showcase/config.toml <<CONFIG\n")
        .expect("the launch script writes /etc/showcase/config.toml");
    let body = &template[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body
        .find("\n            CONFIG\n")
        .expect("the heredoc ends");
    let mut config = String::new();
    for line in body[..end].lines() {
        let line = line.trim_start();
        // Unquoted substitutions are numbers; quoted ones strings.
        let line = match line.split_once(" = ") {
            Some((key, value)) if value.starts_with('$') => format!("{key} = 1"),
            _ => line.to_string(),
        };
        config.push_str(&substituted(&line).replace("$ROLE", "api"));
        config.push('\n');
    }
    config
}

/// The launch script as a node receives it: the template's `${...}` substituted.
fn launch_script() -> String {
    let template = template();
    let start = template
        .find("#!/bin/bash\n")
        .expect("the user data is a bash script");
    let indent = template[..start].rsplit('\n').next().unwrap().len();
    let mut script = String::new();
    for line in template[start - indent..].lines() {
        if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
            break;
        }
        script.push_str(&substituted(line.get(indent..).unwrap_or("")));
        script.push('\n');
    }
    script
}

#[test]
fn the_launch_script_is_valid_bash_that_starts_the_service_last() {
    let script = launch_script();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data.sh");
    std::fs::write(&file, &script).unwrap();
    let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        script.starts_with("#!/bin/bash\nset -euo pipefail\n"),
        "{script}"
    );
    // The secrets and the configuration are in place before the service may start.
    let at = |needle: &str| {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in the launch script"))
    };
    let start = at("systemctl enable --now showcase\n");
    for needle in [
        "> /etc/showcase/admin_token",
        "> /etc/showcase/jwt_secret",
        "> /etc/showcase/jwt_secret_accepted",
        "> /etc/showcase/postgres_password",
        "cat > /etc/showcase/config.toml",
        "chmod 0640 /etc/showcase/config.toml",
    ] {
        assert!(at(needle) < start, "{needle} after the service starts");
    }
    assert!(script
        .trim_end()
        .ends_with("systemctl enable --now showcase"));
}

#[test]
fn the_template_passes_cfn_lint() {
    let cfn_lint = std::env::var("CFN_LINT").unwrap_or_else(|_| {
        format!(
            "{}/.cache/showcase/cfn-lint/bin/cfn-lint",
            std::env::var("HOME").unwrap()
        )
    });
    let out = Command::new(&cfn_lint)
        .arg(repo("deploy/aws/showcase.yaml"))
        .output()
        .unwrap_or_else(|e| panic!("{cfn_lint}: {e} (make test-deps installs it)"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new(&cfn_lint).arg("--version").output().unwrap();
    eprintln!(
        "{}: {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        if said.trim().is_empty() {
            "no finding"
        } else {
            &said
        }
    );
    assert!(out.status.success(), "cfn-lint found problems:\n{said}");
}

#[test]
fn every_key_the_template_writes_is_a_documented_key_the_node_accepts() {
    let written = written_config();
    let documented: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("config.toml")).unwrap()).unwrap();
    let ours: toml::Table = toml::from_str(&written).unwrap_or_else(|e| panic!("{e}\n{written}"));
    fn walk(ours: &toml::Table, documented: &toml::Table, at: &str, count: &mut usize) {
        for (key, value) in ours {
            let name = format!("{at}{key}");
            let known = documented
                .get(key)
                .unwrap_or_else(|| panic!("{name} is not in config.toml"));
            match (value, known) {
                (toml::Value::Table(ours), toml::Value::Table(documented)) => {
                    walk(ours, documented, &format!("{name}."), count)
                }
                (toml::Value::Table(_), _) | (_, toml::Value::Table(_)) => {
                    panic!("{name}: a table on one side only")
                }
                _ => *count += 1,
            }
        }
    }
    let mut count = 0;
    walk(&ours, &documented, "", &mut count);
    assert!(count >= 15, "{count} keys");
    // And the node itself takes it (it refuses unknown keys, wrong types and unworkable
    // combinations), with the JWT secret that reaches it as the credential `jwt_secret`.
    let with_secret = format!("{written}[auth]\njwt_secret = \"{}\"\n", "s".repeat(48));
    showcase::config::Config::from_toml_str(&with_secret)
        .unwrap_or_else(|e| panic!("{e}\n{written}"));
    eprintln!("{count} keys written by the launch script, each documented and accepted");
}

#[test]
fn the_template_ties_the_queue_and_the_balancer_to_the_nodes_settings() {
    let t = template();
    for (what, needle) in [
        (
            "redrive after queue.max_receives",
            "maxReceiveCount: !Ref MaxReceives",
        ),
        (
            "the queue's visibility",
            "VisibilityTimeout: !Ref VisibilityTimeout",
        ),
        ("max_receives written", "max_receives = ${MaxReceives}"),
        (
            "visibility written",
            "visibility_timeout_s = ${VisibilityTimeout}",
        ),
        (
            "readiness as the health check",
            "HealthCheckPath: /api/health/ready",
        ),
        ("IMDSv2 only", "HttpTokens: required"),
        ("sticky uploads", "stickiness.enabled, Value: \"true\""),
        (
            "multipart uploads aborted",
            "AbortIncompleteMultipartUpload",
        ),
        ("the scaling signal", "MetricName: QueueBacklogPerWorker"),
        (
            "requests per target",
            "PredefinedMetricType: ALBRequestCountPerTarget",
        ),
    ] {
        assert!(t.contains(needle), "{what}: no `{needle}` in the template");
    }
    // Deregistration outlasts the node's own drain after SIGTERM.
    let grace: u64 = written_config()
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_s = "))
        .unwrap()
        .parse()
        .unwrap();
    for line in t
        .lines()
        .filter(|l| l.contains("deregistration_delay.timeout_seconds"))
    {
        let delay: u64 = line.rsplit('"').nth(1).unwrap().parse().unwrap();
        assert!(
            delay > grace,
            "deregistration {delay} s <= shutdown grace {grace} s"
        );
    }
    // No secret value in the template: they come from Secrets Manager at boot.
    for secret in ["jwt_secret =", "token =", "password="] {
        assert!(!t.contains(secret), "{secret} in the template");
    }
}

/// Runs the publisher as the timer would, with `bin` (holding `aws`) first on the PATH.
fn publish(bin: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(repo("deploy/aws/publish-backlog"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("METRICS_URL", url)
        .env("NAMESPACE", "Showcase")
        .env("STACK", "prueba")
        .env("REGION", "us-east-1")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_backlog_publisher_puts_the_nodes_gauge_into_cloudwatch() {
    let t = TestApp::start();
    let dir = tempfile::tempdir().unwrap();
    // The AWS CLI, as far as the publisher can tell: it records what it was asked.
    let calls = dir.path().join("calls");
    let aws = dir.path().join("aws");
    std::fs::write(
        &aws,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&aws, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let base = t.base.clone();
    let bin = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || publish(&bin, &format!("{base}/metrics")))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args: Vec<String> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let expected = [
        "cloudwatch",
        "put-metric-data",
        "--region",
        "us-east-1",
        "--namespace",
        "Showcase",
        "--metric-name",
        "QueueBacklogPerWorker",
        "--dimensions",
        "Stack=prueba",
        "--unit",
        "Count",
        "--value",
    ];
    assert_eq!(args[..expected.len()], expected, "{args:?}");
    // An idle node of role all: no job waits.
    assert_eq!(args[expected.len()], "0", "{args:?}");
    // A node that does not answer: no datapoint, and a failed run for the timer to show.
    std::fs::remove_file(&calls).unwrap();
    let bin = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || publish(&bin, "http://127.0.0.1:9/metrics"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(!calls.exists());
}
