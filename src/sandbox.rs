//! Confinement of the code that decodes untrusted media: the `showcase transcode` child.
//!
//! The child runs libav on files uploaded by anyone, with the server's identity. Landlock lets
//! an unprivileged process give up its own rights, so the child, before it opens its input,
//! keeps only what a transcode needs: reading its input, and reading and writing its job
//! directory (outputs, and the logo it writes there). Everything else the service user could
//! reach (the database, `secret.key`, other uploads) becomes unreachable, as do TCP `bind` and
//! `connect`, abstract UNIX sockets and signals to processes outside the sandbox, as far as the
//! kernel supports them (best effort: a kernel without Landlock leaves the child unconfined and
//! says so, and the server logs a warning).
//!
//! The resource limits (address space, CPU time, file size, open files) and
//! `PR_SET_NO_NEW_PRIVS` are set by the parent between fork and exec
//! (`actors::transcoder`).

use std::path::Path;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

/// The newest Landlock ABI whose rights are asked for; older kernels enforce what they can.
const ABI_WANTED: ABI = ABI::V6;

/// How far the confinement went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confinement {
    /// Every right asked for is enforced.
    Full,
    /// The kernel enforces only some of them (an older Landlock ABI).
    Partial,
    /// Not confined: the kernel has no Landlock, or it could not be set up.
    None,
}

/// Restricts the calling process (and what it later starts) to reading `read_only` and
/// reading and writing beneath `read_write`, with no TCP bind or connect, no abstract UNIX
/// sockets and no signals outside. Irreversible.
pub fn confine(read_only: &[&Path], read_write: &[&Path]) -> (Confinement, String) {
    match try_confine(read_only, read_write) {
        Ok(RulesetStatus::FullyEnforced) => (Confinement::Full, "landlock fully enforced".into()),
        Ok(RulesetStatus::PartiallyEnforced) => (
            Confinement::Partial,
            "landlock partially enforced (older kernel ABI)".into(),
        ),
        Ok(RulesetStatus::NotEnforced) => (
            Confinement::None,
            "landlock is not supported by this kernel".into(),
        ),
        Err(e) => (
            Confinement::None,
            format!("landlock could not be set up: {e}"),
        ),
    }
}

fn try_confine(
    read_only: &[&Path],
    read_write: &[&Path],
) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = ABI_WANTED;
    let status = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(read_write, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(status.ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Confines a forked child (a thread would confine the whole test process) and reports
    /// what it could still do.
    #[test]
    fn a_confined_process_reads_only_its_input_and_writes_only_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.mp4");
        let secret = dir.path().join("secret.key");
        let work = dir.path().join("job");
        std::fs::write(&input, b"input").unwrap();
        std::fs::write(&secret, b"secret").unwrap();
        std::fs::create_dir(&work).unwrap();

        // SAFETY: fork in a test: the child confines itself, tries a few file and socket
        // operations and leaves with _exit, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let (confinement, _) = confine(&[&input], &[&work]);
            let refused = |e: std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
            // Files are confined from the first Landlock ABI on, TCP from the fourth: older
            // kernels pass with what they enforce.
            let ok = confinement != Confinement::None
                && std::fs::read(&input).is_ok()
                && std::fs::write(work.join("out.mp4"), b"out").is_ok()
                && std::fs::read(&secret).is_err_and(refused)
                && std::fs::write(dir.path().join("elsewhere"), b"x").is_err_and(refused)
                && (confinement != Confinement::Full
                    || std::net::TcpStream::connect("127.0.0.1:9").is_err_and(refused));
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "the child died: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the confinement leaked");
        assert!(work.join("out.mp4").exists());
    }
}
