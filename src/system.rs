//! Facts about the machine the node runs on.

use std::path::Path;

/// Niceness of the node's bulk work: the threads that copy uploads to disk and the transcode
/// children. Request handling stays at the default 0, so when the cores are saturated a refusal,
/// a login or a page is not queued behind byte copying and encoding; when they are not, niceness
/// changes nothing. Bulk work cannot starve: an upload's writer that falls behind stops its
/// request from reading (bounded queue), which frees the cores it waited for. The figures behind
/// the value are in `docs/benchmarks.md`.
pub const BULK_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`BULK_NICE`], never raises it: a node started
/// nicer than that (say `nice -n 15`) keeps its niceness. On Linux niceness is per thread, so
/// the rest of the process keeps its own. Lowering needs no privilege; should it fail anyway,
/// the thread keeps its priority. Only syscalls and `errno`, no allocation: safe between `fork`
/// and `exec`.
pub fn lower_own_priority_to_bulk() -> std::io::Result<()> {
    if thread_niceness(0) >= BULK_NICE {
        return Ok(());
    }
    // SAFETY: a plain syscall; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BULK_NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The niceness of thread `tid` of this process; 0 is the calling thread. (An unknown thread
/// reads as -1, which is also a valid niceness: callers only compare values.)
pub fn thread_niceness(tid: libc::pid_t) -> libc::c_int {
    // SAFETY: a plain syscall.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Resident set size of this process, in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowering_priority_affects_only_the_calling_thread_and_never_raises_it() {
        let before = super::thread_niceness(0);
        let lowered = std::thread::spawn(|| {
            super::lower_own_priority_to_bulk().unwrap();
            super::thread_niceness(0)
        })
        .join()
        .unwrap();
        // Started nicer than the bulk priority (`nice cargo test`), the thread stays as nice.
        assert_eq!(lowered, before.max(super::BULK_NICE));
        assert_eq!(super::thread_niceness(0), before);
    }

    #[test]
    fn free_disk_of_tmp_is_positive() {
        assert!(super::free_disk_bytes(std::path::Path::new("/tmp")).unwrap() > 0);
        assert!(super::free_disk_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}
