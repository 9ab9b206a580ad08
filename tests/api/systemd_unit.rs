//! The systemd unit as a security auditor and systemd itself read it, and the node running
//! under the unit's restrictions.
//!
//! systemd is not the init of the test machines, so the unit cannot be started for real here.
//! What can be checked is: the auditor's score (`systemd-analyze security`), that systemd
//! accepts the unit (`systemd-analyze verify`), and that the node works end to end (signup,
//! upload, a confined transcode, streaming, shutdown) under the two restrictions most likely
//! to break a program: the unit's own system-call filter, rebuilt from the unit file with
//! systemd's group definitions and installed with seccomp exactly as systemd installs it
//! (errors returned as EPERM), and MemoryDenyWriteExecute (the kernel's PR_SET_MDWE, which
//! systemd uses where the kernel has it). The other directives (UMask, the Protect* family,
//! DynamicUser, credentials) need a real systemd and are documented in the README.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Checked;
use common::process::ServerProcess;
use reqwest::StatusCode;

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/showcase.service")
}

#[test]
fn the_auditor_rates_the_unit_2_or_lower() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("systemd-analyze is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for showcase.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in {text}"));
    println!("systemd-analyze security: {score}");
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

#[test]
fn systemd_accepts_the_unit() {
    // The unit names the installed binary; point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(unit_path())
        .unwrap()
        .replace("/usr/bin/showcase", env!("CARGO_BIN_EXE_showcase"));
    let copy = dir.path().join("showcase.service");
    std::fs::write(&copy, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_the_unit: Vec<&str> = said.lines().filter(|l| l.contains("showcase")).collect();
    assert!(out.status.success() && about_the_unit.is_empty(), "{said}");
}

/// systemd's system-call groups (`systemd-analyze syscall-filter`), members as listed (they
/// may name other groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .output()
        .unwrap();
    let mut groups = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && trimmed.starts_with('@') {
            current = Some(trimmed.to_string());
            groups.insert(trimmed.to_string(), Vec::new());
        } else if let Some(group) = &current {
            groups.get_mut(group).unwrap().push(trimmed.to_string());
        }
    }
    groups
}

fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, into: &mut BTreeSet<String>) {
    match groups.get(name) {
        Some(members) => {
            for member in members {
                expand(member, groups, into);
            }
        }
        None if name.starts_with('@') => panic!("unknown group {name}"),
        None => {
            into.insert(name.to_string());
        }
    }
}

/// The system calls the unit allows, by name, following systemd's rules: the first
/// `SystemCallFilter=` line sets the allow list, later `~` lines remove from it, later plain
/// lines add to it.
fn allowed_by_the_unit() -> BTreeSet<String> {
    let groups = syscall_groups();
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let mut allowed = BTreeSet::new();
    for (i, value) in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .enumerate()
    {
        let (remove, names) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        assert!(
            i > 0 || !remove,
            "the unit's filter starts with an allow list"
        );
        let mut set = BTreeSet::new();
        for name in names.split_whitespace() {
            expand(name, &groups, &mut set);
        }
        if remove {
            allowed.retain(|n| !set.contains(n));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// System call numbers of this architecture, by name, from the kernel's headers.
fn syscall_numbers() -> BTreeMap<String, i64> {
    let header = [
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        "/usr/include/asm/unistd_64.h",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .expect("the kernel's headers (linux-libc-dev) are installed");
    header
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define __NR_")?;
            let (name, number) = rest.split_once(' ')?;
            Some((name.to_string(), number.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn the_node_works_under_the_units_system_call_filter_and_w_xor_x() {
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "the numbers below are x86_64's"
    );
    let allowed = allowed_by_the_unit();
    let numbers = syscall_numbers();
    assert!(allowed.contains("landlock_restrict_self") && !allowed.contains("mount"));
    assert!(allowed.contains("setpriority") && !allowed.contains("sched_setattr"));
    let rules = allowed
        .iter()
        .filter_map(|name| numbers.get(name))
        .map(|&n| (n, vec![]))
        .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        seccompiler::SeccompAction::Allow,
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let program: seccompiler::BpfProgram = filter.try_into().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            ("SHOWCASE_TRANSCODE__WORKERS", "1"),
            ("SHOWCASE_UPLOAD__MIN_DURATION_S", "1"),
        ],
        |command| {
            // SAFETY: two system calls between fork and exec, on memory prepared before.
            unsafe {
                command.pre_exec(move || {
                    let mdwe = libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong;
                    if libc::prctl(libc::PR_SET_MDWE, mdwe, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    seccompiler::apply_filter(&program).map_err(std::io::Error::other)
                });
            }
        },
    );
    // The filter is in force (mode 2: a filter).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let http = reqwest::Client::new();
    let token = server.client().token_for("ana@example.com").await;
    let clip = common::generate_mp4("unit-1920x1080-4s.mp4", 1920, 1080, 4);
    let (status, body) = server.client().upload(&token, &clip, "Unidad").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["video_id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let video = loop {
        let response = http
            .get(server.url(&format!("/api/videos/{id}")))
            .bearer_auth(&token)
            .checked()
            .await
            .unwrap();
        let (_, video) = common::read(response).await;
        if matches!(video["status"].as_str(), Some("processed" | "failed")) {
            break video;
        }
        assert!(Instant::now() < deadline, "never processed: {video}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(video["status"], "processed", "{video}");
    let media = http
        .get(server.url(&format!("/media/{id}.mp4")))
        .header("range", "bytes=0-1023")
        .checked()
        .await
        .unwrap();
    assert_eq!(media.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(media.bytes().await.unwrap().len(), 1024);
    // The transcode child could confine itself under the filter.
    let log = server.log();
    assert!(!log.contains("not fully confined"), "{log}");
    let status = server.terminate_within(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
