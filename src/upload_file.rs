//! An upload's file as its writer thread writes it ([`UploadFile`]): through the page cache, or
//! for a new file with `upload.direct_writes`, straight to the disk.
//!
//! Through the page cache, the copy of every byte into fresh pages, their dirty accounting,
//! writeback and reclaim cost about four times the CPU per MB of a direct write; on a disk
//! whose buffered writeback is faster than its direct writes, though, direct writes take fewer
//! uploads per second (docs/benchmarks.md, "Uploads straight to the disk"). A direct write
//! returns only once the disk has the bytes: a thread of its own issues them
//! ([`DirectFile`]), so that the upload's next MiB is gathered from the network meanwhile.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

/// Bytes gathered before each direct write: few, large requests for the disk.
const DIRECT_BLOCK_BYTES: usize = 1024 * 1024;
/// Alignment of a direct write's memory, offset and length: the page size, a multiple of the
/// logical block size of disks (512 or 4096 bytes).
const DIRECT_ALIGN: usize = 4096;

/// Where an upload's bytes go, at explicit offsets.
pub(crate) enum UploadFile {
    Direct(DirectFile),
    Buffered(BufferedFile),
}

impl UploadFile {
    /// A new file at `path`, written direct if asked and its filesystem takes `O_DIRECT`.
    pub(crate) fn create(path: &Path, direct: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        if !direct {
            return Ok(Self::buffered(open(0)?, 0, NEW_WRITEBACK_EVERY_BYTES));
        }
        match open(libc::O_DIRECT) {
            Ok(file) => Ok(Self::Direct(DirectFile::start(file)?)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Ok(Self::buffered(open(0)?, 0, NEW_WRITEBACK_EVERY_BYTES))
            }
            Err(e) => Err(e),
        }
    }

    /// `file` written through the page cache from `offset` on, its writeback started every
    /// `writeback_every` bytes.
    pub(crate) fn buffered(file: std::fs::File, offset: u64, writeback_every: u64) -> Self {
        Self::Buffered(BufferedFile::new(file, offset, writeback_every))
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Direct(file) => file.write(data),
            Self::Buffered(file) => file.write(data),
        }
    }

    /// Writes whatever is left and hands the file back for its sync.
    pub(crate) fn finish(self) -> std::io::Result<std::fs::File> {
        match self {
            Self::Direct(file) => file.finish().map(|(file, _)| file),
            Self::Buffered(file) => Ok(file.file),
        }
    }
}

/// Writeback of a new file written through the page cache is started every this many bytes.
const NEW_WRITEBACK_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// A file written through the page cache.
pub(crate) struct BufferedFile {
    file: std::fs::File,
    written: u64,
    /// Where writeback was last started.
    synced: u64,
    writeback_every: u64,
}

impl BufferedFile {
    fn new(file: std::fs::File, offset: u64, writeback_every: u64) -> Self {
        Self {
            file,
            written: offset,
            synced: offset,
            writeback_every,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, self.written)?;
        self.written += data.len() as u64;
        if self.written - self.synced >= self.writeback_every {
            start_writeback(&self.file, self.synced, self.written - self.synced);
            self.synced = self.written;
        }
        Ok(())
    }
}

/// Starts writeback of a range of `file` in the background (`sync_file_range`), so that the
/// final sync finds little left to write.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a range inside the file.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// A new file written straight to the disk: the writer thread gathers the bytes into an
/// aligned block while the file's disk thread writes the previous one (two blocks in turn).
pub(crate) struct DirectFile {
    file: Arc<std::fs::File>,
    /// The block being gathered, and the file offset of its first byte.
    block: AlignedBlock,
    offset: u64,
    /// The other block, while it is not at the disk thread.
    spare: Option<AlignedBlock>,
    to_disk: Option<mpsc::SyncSender<(AlignedBlock, u64)>>,
    from_disk: mpsc::Receiver<std::io::Result<Written>>,
    disk: Option<std::thread::JoinHandle<()>>,
    /// Bytes the disk thread wrote direct so far (the rest, if any, went buffered).
    direct_bytes: u64,
}

/// What the disk thread did with a block: handed back empty, with how much of it went direct.
struct Written {
    block: AlignedBlock,
    direct_bytes: u64,
}

impl DirectFile {
    fn start(file: std::fs::File) -> std::io::Result<Self> {
        let file = Arc::new(file);
        let (to_disk, blocks) = mpsc::sync_channel(1);
        let (written, from_disk) = mpsc::channel();
        let disk = {
            let file = file.clone();
            std::thread::Builder::new()
                .name("upload-disk".into())
                .spawn(move || {
                    if let Err(error) = crate::system::lower_own_priority_to_bulk() {
                        tracing::debug!(%error, "could not lower the upload disk thread's priority");
                    }
                    write_blocks(&file, blocks, written)
                })?
        };
        Ok(Self {
            file,
            block: AlignedBlock::new(),
            offset: 0,
            spare: Some(AlignedBlock::new()),
            to_disk: Some(to_disk),
            from_disk,
            disk: Some(disk),
            direct_bytes: 0,
        })
    }

    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            data = &data[self.block.fill(data)..];
            if self.block.is_full() {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Sends the gathered block to the disk thread and takes the other one, once the disk
    /// thread is done with it.
    fn hand_over(&mut self) -> std::io::Result<()> {
        let next = match self.spare.take() {
            Some(block) => block,
            None => self.written_back()?,
        };
        let full = std::mem::replace(&mut self.block, next);
        let len = full.len() as u64;
        let sent = match &self.to_disk {
            Some(to_disk) => to_disk.send((full, self.offset)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(disk_stopped());
        }
        self.offset += len;
        Ok(())
    }

    /// The next block the disk thread hands back, or the error of its write.
    fn written_back(&mut self) -> std::io::Result<AlignedBlock> {
        match self.from_disk.recv() {
            Ok(Ok(written)) => {
                self.direct_bytes += written.direct_bytes;
                Ok(written.block)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(disk_stopped()),
        }
    }

    /// Sends the last block, waits for every write, and hands the file back with the number
    /// of bytes that went direct.
    fn finish(mut self) -> std::io::Result<(std::fs::File, u64)> {
        if self.block.len() > 0 {
            self.hand_over()?;
        }
        // The other block is either spare or at the disk thread.
        if self.spare.is_none() {
            self.written_back()?;
        }
        self.stop_disk();
        tracing::trace!(
            bytes = self.offset,
            direct_bytes = self.direct_bytes,
            "upload file written"
        );
        let (file, direct_bytes) = (self.file.clone(), self.direct_bytes);
        drop(self);
        let file = Arc::try_unwrap(file)
            .map_err(|_| std::io::Error::other("the upload's disk thread kept its file"))?;
        Ok((file, direct_bytes))
    }

    /// Lets the disk thread end, after the write it may be doing.
    fn stop_disk(&mut self) {
        self.to_disk = None;
        if let Some(disk) = self.disk.take() {
            let _ = disk.join();
        }
    }
}

impl Drop for DirectFile {
    /// An abandoned file is written no more once dropped: its owner may remove it next.
    fn drop(&mut self) {
        self.stop_disk();
    }
}

/// The disk thread ended (it panicked) without an answer.
fn disk_stopped() -> std::io::Error {
    std::io::Error::other("the upload's disk thread stopped")
}

/// The disk thread: writes each block at its offset and hands it back.
fn write_blocks(
    file: &std::fs::File,
    blocks: mpsc::Receiver<(AlignedBlock, u64)>,
    written: mpsc::Sender<std::io::Result<Written>>,
) {
    let mut direct = true;
    while let Ok((mut block, offset)) = blocks.recv() {
        let result = write_block_at(file, block.filled(), offset, &mut direct);
        block.clear();
        let answer = result.map(|direct_bytes| Written {
            block,
            direct_bytes,
        });
        let failed = answer.is_err();
        if written.send(answer).is_err() || failed {
            return;
        }
    }
}

/// Writes `bytes` at `offset`: their whole pages direct while `direct` holds, the rest (the
/// file's last partial page; a direct write would need padding) through the page cache. A
/// refused direct write (EINVAL: the filesystem's alignment differs) turns the file to
/// buffered writes for good, starting with the same bytes. Returns the bytes written direct.
fn write_block_at(
    file: &std::fs::File,
    bytes: &[u8],
    offset: u64,
    direct: &mut bool,
) -> std::io::Result<u64> {
    let whole = if *direct {
        bytes.len() - bytes.len() % DIRECT_ALIGN
    } else {
        0
    };
    if whole > 0 {
        match file.write_all_at(&bytes[..whole], offset) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct writes refused, the upload goes through the page cache");
                write_buffered_at(file, bytes, offset, direct)?;
                return Ok(0);
            }
            Err(e) => return Err(e),
        }
    }
    if whole < bytes.len() {
        write_buffered_at(file, &bytes[whole..], offset + whole as u64, direct)?;
    }
    Ok(whole as u64)
}

/// Writes `bytes` at `offset` through the page cache (turning `O_DIRECT` off first, for good)
/// and starts their writeback.
fn write_buffered_at(
    file: &std::fs::File,
    bytes: &[u8],
    offset: u64,
    direct: &mut bool,
) -> std::io::Result<()> {
    stop_direct_writes(file, direct)?;
    file.write_all_at(bytes, offset)?;
    start_writeback(file, offset, bytes.len() as u64);
    Ok(())
}

/// Turns `O_DIRECT` off for an open file (once).
fn stop_direct_writes(file: &std::fs::File, direct: &mut bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if !*direct {
        return Ok(());
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid open descriptor, reading then setting its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    *direct = false;
    Ok(())
}

/// [`DIRECT_BLOCK_BYTES`] of memory starting at a multiple of [`DIRECT_ALIGN`], as direct
/// writes require: a slightly larger vector and an offset into it, rather than an allocation
/// of its own.
struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBlock {
    fn new() -> Self {
        let storage = vec![0u8; DIRECT_BLOCK_BYTES + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        Self {
            storage,
            start,
            len: 0,
        }
    }

    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_BLOCK_BYTES - self.len);
        let at = self.start + self.len;
        self.storage[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_full(&self) -> bool {
        self.len == DIRECT_BLOCK_BYTES
    }

    fn filled(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// A block whose memory starts one byte past the alignment, which disks refuse.
    #[cfg(test)]
    fn misaligned() -> Self {
        let mut block = Self::new();
        block.start += 1;
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `dir` checks direct writes as a disk's filesystem does (ext4, xfs): it takes
    /// `O_DIRECT` and refuses a write from misaligned memory. Elsewhere (tmpfs, btrfs) the
    /// tests below can only check the bytes.
    fn checks_direct_writes(dir: &Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
        else {
            eprintln!("{} takes no direct writes", dir.display());
            return false;
        };
        let mut block = AlignedBlock::misaligned();
        block.fill(&[0; DIRECT_ALIGN]);
        let refused = file
            .write_all_at(block.filled(), 0)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL));
        if !refused {
            eprintln!("{} takes misaligned direct writes", dir.display());
        }
        refused
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i % 251) as u8).collect()
    }

    /// Finishes `file`, checks that it holds exactly `expected`; returns the bytes that went
    /// direct.
    fn finish_and_check(file: DirectFile, path: &Path, expected: &[u8]) -> u64 {
        let (file, direct_bytes) = file.finish().unwrap();
        file.sync_all().unwrap();
        let got = std::fs::read(path).unwrap();
        assert_eq!(got.len(), expected.len(), "the file has its exact length");
        assert!(got == expected, "the file holds the bytes in order");
        direct_bytes
    }

    fn direct(path: &Path) -> DirectFile {
        match UploadFile::create(path, true).unwrap() {
            UploadFile::Direct(file) => file,
            UploadFile::Buffered(_) => panic!("the test filesystem takes O_DIRECT"),
        }
    }

    #[test]
    fn a_new_file_goes_straight_to_the_disk_and_keeps_its_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let checked = checks_direct_writes(dir.path());
        let block = DIRECT_BLOCK_BYTES;
        for (n, sizes) in [
            vec![],
            vec![1],
            vec![DIRECT_ALIGN],
            vec![block],
            vec![block - 1, 1, 1],
            vec![7, block * 2 + 4099, 300 * 1024, block],
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("direct-{n}"));
            let mut file = direct(&path);
            let mut expected = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let data = pattern(*size, i);
                file.write(&data).unwrap();
                expected.extend_from_slice(&data);
            }
            let direct_bytes = finish_and_check(file, &path, &expected);
            if checked {
                let whole_pages = expected.len() - expected.len() % DIRECT_ALIGN;
                assert_eq!(direct_bytes, whole_pages as u64, "every whole page direct");
            }
        }
    }

    #[test]
    fn a_refused_direct_write_goes_through_the_page_cache_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let checked = checks_direct_writes(dir.path());
        // Refused at a full block, and at the last partial one, each after two blocks went
        // direct.
        for then in [DIRECT_BLOCK_BYTES + 10, DIRECT_ALIGN + 904] {
            let path = dir.path().join(format!("fallback-{then}"));
            let mut file = direct(&path);
            let mut expected = pattern(2 * DIRECT_BLOCK_BYTES, 1);
            file.write(&expected).unwrap();
            // Memory one byte off the alignment: the disk refuses the next direct write.
            file.block = AlignedBlock::misaligned();
            let more = pattern(then, 2);
            file.write(&more).unwrap();
            expected.extend_from_slice(&more);
            let direct_bytes = finish_and_check(file, &path, &expected);
            if checked {
                assert_eq!(
                    direct_bytes,
                    2 * DIRECT_BLOCK_BYTES as u64,
                    "after the refusal, every byte went through the page cache"
                );
            }
        }
    }

    #[test]
    fn a_continued_file_is_written_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("continued");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(4).unwrap();
        let mut file = UploadFile::buffered(file, 4, 1024);
        file.write(&pattern(5000, 3)).unwrap();
        file.finish().unwrap().sync_all().unwrap();
        let mut expected = b"0123".to_vec();
        expected.extend_from_slice(&pattern(5000, 3));
        assert!(std::fs::read(&path).unwrap() == expected);
    }
}
