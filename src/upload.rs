//! Upload rules and the temp files an upload streams into.
//!
//! An upload is written to `<data_dir>/tmp/` and only renamed into blob storage once it has been
//! fsynced and probed. [`TempUpload`] removes its file when dropped, so an upload that is
//! rejected, fails, or whose client disconnects leaves nothing behind; files left by a crash are
//! removed at the next start by [`clear_temp_dir`].

use std::path::{Path, PathBuf};

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::config::UploadConfig;
use crate::domain::{MediaInfo, UserId};
use crate::engine::StoreError;
use crate::load::Load;
use crate::upload_file::UploadFile;

/// Name of the temp directory under the data dir.
pub const TEMP_DIR: &str = "tmp";

/// A file being uploaded; deleted on drop unless it was handed over to blob storage.
#[derive(Debug)]
pub struct TempUpload {
    path: PathBuf,
    armed: bool,
}

impl TempUpload {
    pub fn new_in(data_dir: &Path) -> Self {
        let name = format!("upload-{}.part", uuid::Uuid::new_v4().simple());
        Self {
            path: data_dir.join(TEMP_DIR).join(name),
            armed: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file now belongs to someone else (it was renamed away); do not delete it.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Permission to stream one upload, granted by the node's admission; the slot is free again
/// when this is dropped.
#[derive(Debug)]
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    load: Arc<Load>,
}

impl UploadSlot {
    pub fn new(permit: OwnedSemaphorePermit, load: Arc<Load>) -> Self {
        Self {
            _permit: permit,
            load,
        }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.load.slots_freed.record();
    }
}

/// A finished, fsynced and probed upload waiting to be committed. It carries its slot, so the
/// slot stays taken until the commit is over even if the client has gone.
#[derive(Debug)]
pub struct PreparedUpload {
    pub owner_id: UserId,
    pub title: String,
    pub file: TempUpload,
    pub media: MediaInfo,
    pub slot: UploadSlot,
    /// The video id and task id to commit under, when chosen beforehand (a resumable upload
    /// records them before its commit); fresh ones otherwise.
    pub identity: Option<(crate::domain::VideoId, String)>,
}

/// Why a prepared upload was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("storing the file failed: {0}")]
    Blob(#[from] crate::engine::BlobError),
    #[error("recording the upload failed: {0}")]
    Store(StoreError),
}

/// Chunks queued between the request and the writer thread (each at most about 1 MiB).
const SINK_QUEUE_CHUNKS: usize = 4;
/// Writeback of a continued file (a resumable upload's PATCH, often of a few MiB, whose answer
/// waits for its sync) is started every this many bytes, so that little is left for that sync.
const RESUMED_WRITEBACK_EVERY_BYTES: u64 = 1024 * 1024;

/// Writes an upload to its temp file on a thread of its own, chunk by chunk as they arrive;
/// [`FileSink::finish`] returns once the file is fsynced.
///
/// The sink owns the file's [`TempUpload`] guard while the writer thread may still create or
/// write the file, and hands it back only from `finish`: an upload abandoned at any moment
/// (the client reset, the body was refused) therefore has its file removed by the thread
/// itself, after its last write, never before the file exists.
///
/// The thread runs at the bulk priority ([`crate::system::BULK_NICE`]): copying megabytes on
/// their way to the disk must not delay the requests the workers answer. It is a thread per upload
/// rather than one from tokio's blocking pool because a pool thread would keep the lowered
/// priority for whatever it runs next, and raising it back needs a privilege the service does
/// not have. Uploads are few at a time (`upload.max_concurrent`) and each lasts far longer than
/// starting a thread.
///
/// The file is written as the upload streams in ([`UploadFile`]): through the page cache with
/// its writeback started every few MiB (`sync_file_range`), or for a new file, if the node is
/// told so (`upload.direct_writes`), straight to the disk. Either way the disk works while the
/// network does, and the final sync finds little left.
pub struct FileSink<T = TempUpload> {
    chunks: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    writer: Option<tokio::sync::oneshot::Receiver<std::io::Result<T>>>,
    aborted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileSink<TempUpload> {
    /// A sink into a new temp file, written straight to the disk if `direct`: it is kept only
    /// if [`FileSink::finish`] is reached.
    pub fn create(file: TempUpload, direct: bool) -> Self {
        Self::spawn(move |chunks, aborted| {
            // On failure or abandonment the guard is dropped here, removing the file.
            write_chunks(file.path(), direct, chunks, aborted).map(|()| file)
        })
    }
}

impl FileSink<u64> {
    /// A sink that continues the file at `path` from `offset` (anything past it is cut off
    /// first). Unlike a new upload, whatever arrives is kept and synced even when the request
    /// is abandoned: `ended` learns the file's durable length on the writer thread, after the
    /// sync, whether or not anyone waits for [`FileSink::finish`].
    pub fn resume(
        path: PathBuf,
        offset: u64,
        ended: impl FnOnce(&std::io::Result<u64>) + Send + 'static,
    ) -> Self {
        Self::spawn(move |chunks, _| {
            let durable = append_chunks(&path, offset, chunks);
            ended(&durable);
            durable
        })
    }
}

impl<T: Send + 'static> FileSink<T> {
    fn spawn(
        work: impl FnOnce(
                tokio::sync::mpsc::Receiver<bytes::Bytes>,
                &std::sync::atomic::AtomicBool,
            ) -> std::io::Result<T>
            + Send
            + 'static,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(SINK_QUEUE_CHUNKS);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let abort_seen = aborted.clone();
        // If the thread cannot start, the closure and the guard it owns are dropped here.
        let started = std::thread::Builder::new()
            .name("upload-writer".into())
            .spawn(move || {
                if let Err(error) = crate::system::lower_own_priority_to_bulk() {
                    tracing::debug!(%error, "could not lower the upload writer's priority");
                }
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(rx, &abort_seen)
                }))
                .unwrap_or_else(|panic| {
                    Err(std::io::Error::other(format!(
                        "the upload writer panicked: {}",
                        crate::panics::payload_message(panic.as_ref())
                    )))
                });
                let _ = done_tx.send(written);
            });
        // A writer that could not start reports why as its result.
        let done = match started {
            Ok(_) => done,
            Err(error) => {
                let (failed_tx, failed) = tokio::sync::oneshot::channel();
                let _ = failed_tx.send(Err(error));
                failed
            }
        };
        Self {
            chunks: Some(tx),
            writer: Some(done),
            aborted,
        }
    }

    pub async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped early: its error says why.
        self.chunks = None;
        match self.join().await {
            Err(error) => Err(error),
            Ok(_) => Err(std::io::Error::other("the upload writer stopped")),
        }
    }

    /// Waits until everything written is on disk; hands the writer's result back (a new
    /// file's guard, or a continued file's durable length).
    pub async fn finish(mut self) -> std::io::Result<T> {
        self.chunks = None;
        self.join().await
    }

    async fn join(&mut self) -> std::io::Result<T> {
        match self.writer.take() {
            Some(writer) => writer.await.unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "the upload writer ended without a result",
                ))
            }),
            None => Err(std::io::Error::other("the upload writer already ended")),
        }
    }
}

/// The writer thread's work for a new file: every chunk into it, then fsync unless the upload
/// was abandoned (which is then an error, so that the file goes with its guard).
fn write_chunks(
    path: &Path,
    direct: bool,
    mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    aborted: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let mut file = UploadFile::create(path, direct)?;
    while let Some(chunk) = chunks.blocking_recv() {
        file.write(&chunk)?;
    }
    if aborted.load(std::sync::atomic::Ordering::Acquire) {
        return Err(std::io::Error::other("the upload was abandoned"));
    }
    file.finish()?.sync_all()
}

/// The writer thread's work for a continued file: cut it at `offset`, append every chunk,
/// and sync what was written even when a write failed. Returns the durable length.
fn append_chunks(
    path: &Path,
    offset: u64,
    mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> std::io::Result<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(offset)?;
    let mut file = UploadFile::buffered(file, offset, RESUMED_WRITEBACK_EVERY_BYTES);
    let mut copied = Ok(());
    while let Some(chunk) = chunks.blocking_recv() {
        copied = file.write(&chunk);
        if copied.is_err() {
            break;
        }
    }
    // The request learns at once that its writer stopped, not after the sync.
    drop(chunks);
    let file = file.finish()?;
    file.sync_data()?;
    copied?;
    file.metadata().map(|m| m.len())
}

impl<T> Drop for FileSink<T> {
    fn drop(&mut self) {
        // Dropped before `finish`: the upload was abandoned, skip the fsync.
        if self.writer.is_some() {
            self.aborted
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Removes everything left in the temp directory: uploads cut short and the work directories
/// of transcodes that never finished. Returns how many entries went.
pub fn clear_temp_dir(data_dir: &Path) -> std::io::Result<usize> {
    let dir = data_dir.join(TEMP_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// Probes abandoned past their deadline whose threads have not ended (a parser stuck without
/// reading: it holds a blocking thread and its upload's open file). Bounded: past
/// [`MAX_STUCK_PROBES`] the node refuses uploads and says so in its readiness, rather than
/// abandon threads without end.
#[derive(Debug, Default)]
pub struct StuckProbes(std::sync::atomic::AtomicUsize);

/// Stuck probes a node tolerates before it refuses uploads.
pub const MAX_STUCK_PROBES: usize = 4;

impl StuckProbes {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn too_many(&self) -> bool {
        self.count() >= MAX_STUCK_PROBES
    }
}

/// One probe's fate, shared by the request that waits for it and the thread that runs it:
/// whichever of "finished" and "abandoned" comes first decides whether it counts as stuck.
#[derive(Debug)]
pub struct ProbeRun {
    state: std::sync::atomic::AtomicU8,
    stuck: std::sync::Arc<StuckProbes>,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

impl ProbeRun {
    pub fn new(stuck: std::sync::Arc<StuckProbes>) -> Self {
        Self {
            state: std::sync::atomic::AtomicU8::new(RUNNING),
            stuck,
        }
    }

    /// Called by the probe's thread when it ends.
    pub fn finished(&self) {
        use std::sync::atomic::Ordering;
        if self.state.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
            self.stuck.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Called by the request when the deadline passed; the probe counts as stuck until its
    /// thread ends.
    pub fn abandon(&self) {
        use std::sync::atomic::Ordering;
        // Counted first, so that a thread ending at this very moment never takes away more
        // than was added.
        self.stuck.0.fetch_add(1, Ordering::AcqRel);
        if self
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.stuck.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why a well-formed MP4 is still refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("El video dura {actual:.1} s; la duración debe estar entre {min} y {max} segundos.")]
    Duration { actual: f64, min: f64, max: f64 },
    #[error("La resolución {width}x{height} es insuficiente; el lado menor debe medir al menos {min} px.")]
    Resolution { width: u32, height: u32, min: u32 },
}

pub fn check_policy(media: &MediaInfo, policy: &UploadConfig) -> Result<(), PolicyViolation> {
    if media.duration_s < policy.min_duration_s || media.duration_s > policy.max_duration_s {
        return Err(PolicyViolation::Duration {
            actual: media.duration_s,
            min: policy.min_duration_s,
            max: policy.max_duration_s,
        });
    }
    if media.width.min(media.height) < policy.min_short_side {
        return Err(PolicyViolation::Resolution {
            width: media.width,
            height: media.height,
            min: policy.min_short_side,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(duration_s: f64, width: u32, height: u32) -> MediaInfo {
        MediaInfo {
            size_bytes: 1,
            duration_s,
            width,
            height,
        }
    }

    #[test]
    fn policy_bounds_are_inclusive_and_orientation_free() {
        let p = UploadConfig::default();
        assert!(check_policy(&media(20.0, 1920, 1080), &p).is_ok());
        assert!(check_policy(&media(60.0, 1080, 1920), &p).is_ok());
        assert!(matches!(
            check_policy(&media(19.9, 1920, 1080), &p),
            Err(PolicyViolation::Duration { .. })
        ));
        assert!(matches!(
            check_policy(&media(60.5, 1920, 1080), &p),
            Err(PolicyViolation::Duration { .. })
        ));
        assert!(matches!(
            check_policy(&media(30.0, 1280, 720), &p),
            Err(PolicyViolation::Resolution { .. })
        ));
    }

    #[tokio::test]
    async fn the_sink_writes_every_chunk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        for direct in [false, true] {
            let temp = TempUpload::new_in(dir.path());
            let path = temp.path().to_path_buf();
            let mut sink = FileSink::create(temp, direct);
            let mut expected = Vec::new();
            for i in 0..40u8 {
                let chunk = vec![i; 300 * 1024];
                expected.extend_from_slice(&chunk);
                sink.write(bytes::Bytes::from(chunk)).await.unwrap();
            }
            let temp = sink.finish().await.unwrap();
            assert!(
                std::fs::read(&path).unwrap() == expected,
                "direct: {direct}"
            );
            drop(temp);
            assert!(!path.exists(), "the guard came back and removes the file");
        }
    }

    #[tokio::test]
    async fn the_sink_writes_on_a_thread_at_the_bulk_priority() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        let mut sink = FileSink::create(TempUpload::new_in(dir.path()), false);
        // More chunks than the queue holds: the thread has taken some, so it is past setting
        // its priority.
        for _ in 0..SINK_QUEUE_CHUNKS + 2 {
            sink.write(bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        // Other tests' writers may run at the same time, some not yet past lowering their
        // priority; this one is, so at least one writer has the bulk priority (or stayed as
        // nice as the tests were started, if that is nicer).
        let writers: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let task = task.ok()?;
                let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let tid: libc::pid_t = task.file_name().to_str()?.parse().ok()?;
                (name.trim_end() == "upload-writer").then(|| crate::system::thread_niceness(tid))
            })
            .collect();
        let expected = crate::system::thread_niceness(0).max(crate::system::BULK_NICE);
        assert!(
            writers.contains(&expected),
            "upload-writer threads at {writers:?}, none at {expected}"
        );
        sink.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_sink_that_cannot_write_reports_the_error() {
        let mut sink = FileSink::create(TempUpload::new_in(Path::new("/nonexistent-dir")), true);
        let mut failed = None;
        for _ in 0..10 {
            if let Err(e) = sink.write(bytes::Bytes::from_static(b"x")).await {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => sink.finish().await.unwrap_err(),
        };
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn an_abandoned_sink_removes_its_file_once_the_writer_is_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        for chunks in 0..8 {
            let direct = chunks % 2 == 1;
            let mut sink = FileSink::create(TempUpload::new_in(dir.path()), direct);
            for _ in 0..chunks * 8 {
                sink.write(bytes::Bytes::from(vec![1u8; 64 * 1024]))
                    .await
                    .unwrap();
            }
            drop(sink);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_dir(dir.path().join(TEMP_DIR))
            .unwrap()
            .count()
            > 0
        {
            assert!(std::time::Instant::now() < deadline, "files left behind");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn a_probe_counts_as_stuck_only_while_abandoned_and_running() {
        let stuck = std::sync::Arc::new(StuckProbes::default());
        let done_first = ProbeRun::new(stuck.clone());
        done_first.finished();
        done_first.abandon();
        assert_eq!(stuck.count(), 0);
        let runs: Vec<ProbeRun> = (0..MAX_STUCK_PROBES)
            .map(|_| ProbeRun::new(stuck.clone()))
            .collect();
        for run in &runs {
            run.abandon();
        }
        assert!(stuck.too_many());
        runs[0].finished();
        assert_eq!(stuck.count(), MAX_STUCK_PROBES - 1);
        assert!(!stuck.too_many());
    }

    #[test]
    fn temp_upload_removes_its_file_unless_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        let t = TempUpload::new_in(dir.path());
        std::fs::write(t.path(), b"x").unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        let mut t = TempUpload::new_in(dir.path());
        std::fs::write(t.path(), b"x").unwrap();
        t.disarm();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(p.exists());
        assert_eq!(clear_temp_dir(dir.path()).unwrap(), 1);
        assert!(!p.exists());
    }
}
