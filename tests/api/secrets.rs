//! Secrets and file permissions of a running node: where the admin token and the JWT secret
//! may come from, what the node refuses to start with, and that what it writes is its own.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::Checked;
use common::process::ServerProcess;
use reqwest::StatusCode;

/// Runs `showcase serve` expecting it to refuse to start; returns what it printed.
fn refused_start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_showcase"));
    command
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("SHOWCASE_SERVER__ADDR", "127.0.0.1:0")
        .env("SHOWCASE_STORAGE__DATA_DIR", dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "it must refuse to start: {out:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn short_secrets_and_secrets_in_an_open_file_refuse_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let said = refused_start(dir.path(), &[], &[("SHOWCASE_ADMIN__TOKEN", "short-token")]);
    assert!(
        said.contains("admin.token") && said.contains("16"),
        "{said}"
    );
    let said = refused_start(
        dir.path(),
        &[],
        &[(
            "SHOWCASE_AUTH__JWT_SECRET",
            "only-31-bytes-long-0123456789ab",
        )],
    );
    assert!(
        said.contains("auth.jwt_secret") && said.contains("32"),
        "{said}"
    );

    let config = dir.path().join("showcase.toml");
    std::fs::write(&config, "[admin]\ntoken = \"an-admin-token-of-24-ch\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = refused_start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert!(
        said.contains("admin.token") && said.contains("every local user"),
        "{said}"
    );

    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, "an-admin-token-of-24-ch\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = token_file.to_str().unwrap();
    let said = refused_start(dir.path(), &[], &[("SHOWCASE_ADMIN__TOKEN_FILE", path)]);
    assert!(said.contains("admin.token_file"), "{said}");
    // Two sources of one secret.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let said = refused_start(
        dir.path(),
        &[],
        &[
            ("SHOWCASE_ADMIN__TOKEN_FILE", path),
            ("SHOWCASE_ADMIN__TOKEN", "another-token-0123456789"),
        ],
    );
    assert!(said.contains("more than once"), "{said}");
}

#[tokio::test]
async fn systemd_credentials_give_the_admin_token_and_the_jwt_secret() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let token = "credential-admin-token-0123";
    std::fs::write(creds.join("admin_token"), format!("{token}\n")).unwrap();
    std::fs::write(creds.join("jwt_secret"), "s".repeat(48)).unwrap();
    for name in ["admin_token", "jwt_secret"] {
        std::fs::set_permissions(creds.join(name), std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = ServerProcess::start(&data, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    let http = reqwest::Client::new();
    let admin = http
        .get(server.url("/api/admin/dead-letters"))
        .bearer_auth(token)
        .checked()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    let wrong = http
        .get(server.url("/api/admin/dead-letters"))
        .bearer_auth("credential-admin-token-0124")
        .checked()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // The configured secret is used: none is generated.
    assert!(!data.join("secret.key").exists());
    server.terminate();
}

#[tokio::test]
async fn everything_the_node_writes_is_its_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A data directory left open by hand or by an older version is closed at start.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProcess::start(&data, &[]);
    let client = server.client();
    let token = client.token_for("ana@example.com").await;
    let (uploaded, body) = client
        .upload(&token, &common::clip(common::Clip::Valid), "Permisos")
        .await;
    assert_eq!(uploaded, StatusCode::CREATED, "{body}");
    assert_eq!(mode(&data), 0o700);
    let written = common::files_under(&data);
    for path in &written {
        assert_eq!(
            mode(path) & 0o077,
            0,
            "{} is {:o}",
            path.display(),
            mode(path)
        );
    }
    // What this node keeps on its own disk depends on where it keeps the rest.
    let mut expected = Vec::new();
    if server.postgres.is_none() {
        expected.extend(["db/", "secret.key"]);
    }
    if server.aws.is_none() {
        expected.push("media/originals/");
    }
    for prefix in expected {
        assert!(
            written.iter().any(|p| p
                .strip_prefix(&data)
                .unwrap()
                .to_string_lossy()
                .starts_with(prefix)),
            "nothing under {prefix}: {written:?}"
        );
    }
    if server.postgres.is_none() {
        assert_eq!(mode(&data.join("secret.key")), 0o600);
    }
    server.terminate();
}
