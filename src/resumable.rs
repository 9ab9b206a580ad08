//! Resumable uploads (tus 1.0): what the node keeps of each while it is incomplete, on its own
//! disk, so that a client can continue after a dropped connection or a restart of the node.
//!
//! Each upload is two files in `<data_dir>/resumable/`: `<id>.json` (owner, declared length,
//! title, expiry, and once committed the video it became) and `<id>.data` (the bytes received).
//! The **durable offset** is the length of the data that is known to be on disk: the data of a
//! PATCH is synced before its answer, a PATCH cut short keeps and syncs what arrived, and at
//! start every data file is synced and its length taken. A PATCH that resumes at the durable
//! offset cuts off whatever lies beyond it, so the bytes past an offset never acknowledged are
//! never part of the video.
//!
//! One writer at a time per upload ([`Resumable::claim`]): a second PATCH, or a HEAD that would
//! commit, while one is at work is told so (409) instead of waiting. The claim travels with
//! the writer thread, so it is released only once the data is synced, even when the request
//! that started it is gone.
//!
//! An incomplete upload lives on the node that created it; a fleet routes a client's requests
//! to one api node (stickiness) or the client starts again elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::domain::{now_ms, UserId, VideoId};
use crate::upload::FileSink;

/// Name of the directory under the data dir.
pub const RESUMABLE_DIR: &str = "resumable";

/// What is recorded of an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub id: String,
    pub owner: UserId,
    /// The declared `Upload-Length`.
    pub length: u64,
    pub title: String,
    pub filename: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// The identity the video takes when committed, chosen (and recorded) before the commit,
    /// so that a commit repeated after a crash is recognised rather than doubled.
    pub video_id: Option<VideoId>,
    pub task_id: Option<String>,
    /// The video and its job are durable; the data is gone.
    pub committed: bool,
}

/// One upload the node knows.
#[derive(Debug)]
pub struct Upload {
    info: Mutex<Info>,
    durable: AtomicU64,
    claimed: AtomicBool,
    data: PathBuf,
    record: PathBuf,
}

impl Upload {
    pub fn info(&self) -> Info {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The offset the disk holds.
    pub fn offset(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn data_path(&self) -> &Path {
        &self.data
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.info().expires_at_ms <= now_ms
    }

    /// Every byte is on disk.
    pub fn complete(&self) -> bool {
        self.offset() == self.info().length
    }

    /// Changes the record and writes it durably (temp file, fsync, rename, directory fsync).
    pub fn update(&self, change: impl FnOnce(&mut Info)) -> std::io::Result<()> {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = info.clone();
        change(&mut changed);
        write_record(&self.record, &changed)?;
        *info = changed;
        Ok(())
    }
}

/// The only writer of an upload while it lives.
#[derive(Debug)]
pub struct Claim(Arc<Upload>);

impl Claim {
    pub fn upload(&self) -> &Arc<Upload> {
        &self.0
    }

    /// A sink that continues the data at the durable offset. The claim goes with it and is
    /// released once what it wrote is synced and the durable offset moved.
    pub fn sink(self) -> FileSink<u64> {
        let upload = self.0.clone();
        let offset = upload.offset();
        let path = upload.data.clone();
        FileSink::resume(path, offset, move |durable| {
            match durable {
                Ok(length) => upload.durable.store(*length, Ordering::Release),
                // What the disk holds after a failed write or sync is not known: the length is
                // whatever is there, synced again; the offset only ever moves when it is.
                Err(_) => {
                    if let Ok(length) = sync_and_measure(&upload.data) {
                        upload.durable.store(length, Ordering::Release);
                    }
                }
            }
            drop(self);
        })
    }
}

impl Claim {
    /// Cuts the data back to `offset` (below the durable one) and syncs it.
    pub fn truncate(&self, offset: u64) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(&self.0.data)?;
        file.set_len(offset)?;
        file.sync_data()?;
        self.0.durable.store(offset, Ordering::Release);
        Ok(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.claimed.store(false, Ordering::Release);
    }
}

/// Why an upload cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no such upload")]
    NotFound,
    #[error("the upload has expired")]
    Expired,
    #[error("another request is writing the upload")]
    Busy,
}

/// The resumable uploads of this node.
#[derive(Debug)]
pub struct Resumable {
    dir: PathBuf,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
}

impl Resumable {
    /// Opens the directory, taking every upload's durable offset from its synced data; files
    /// without a readable record are removed.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join(RESUMABLE_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut uploads = HashMap::new();
        let mut stray = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(id) = name.strip_suffix(".json").filter(|id| valid_id(id)) else {
                if !(name.ends_with(".data") && valid_id(name.trim_end_matches(".data"))) {
                    stray.push(path);
                }
                continue;
            };
            let info: Option<Info> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .filter(|info: &Info| info.id == id);
            let Some(info) = info else {
                stray.push(path);
                continue;
            };
            let data = dir.join(format!("{id}.data"));
            let durable = if info.committed {
                info.length
            } else {
                match sync_and_measure(&data) {
                    Ok(length) => length.min(info.length),
                    Err(_) => {
                        // The data is gone (removed by hand): nothing can be resumed.
                        stray.push(path);
                        continue;
                    }
                }
            };
            uploads.insert(
                id.to_string(),
                Arc::new(Upload {
                    durable: AtomicU64::new(durable),
                    claimed: AtomicBool::new(false),
                    record: path.clone(),
                    data,
                    info: Mutex::new(info),
                }),
            );
        }
        for path in stray {
            let _ = std::fs::remove_file(&path);
        }
        // Data files whose record is gone.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(id) = name.strip_suffix(".data") {
                if !uploads.contains_key(id) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir,
            uploads: Mutex::new(uploads),
        })
    }

    fn all(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new, empty upload durably.
    pub fn create(
        &self,
        owner: UserId,
        length: u64,
        title: String,
        filename: Option<String>,
        ttl_ms: u64,
    ) -> std::io::Result<Arc<Upload>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = now_ms();
        let info = Info {
            id: id.clone(),
            owner,
            length,
            title,
            filename,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            video_id: None,
            task_id: None,
            committed: false,
        };
        let data = self.dir.join(format!("{id}.data"));
        let record = self.dir.join(format!("{id}.json"));
        std::fs::File::create(&data)?.sync_all()?;
        if let Err(e) = write_record(&record, &info) {
            let _ = std::fs::remove_file(&data);
            return Err(e);
        }
        let upload = Arc::new(Upload {
            info: Mutex::new(info),
            durable: AtomicU64::new(0),
            claimed: AtomicBool::new(false),
            data,
            record,
        });
        self.all().insert(id, upload.clone());
        Ok(upload)
    }

    /// The upload `id` of `owner`. Another player's upload is as unknown as a missing one.
    pub fn get(&self, id: &str, owner: UserId) -> Result<Arc<Upload>, Unavailable> {
        let upload = self
            .all()
            .get(id)
            .cloned()
            .filter(|u| u.info().owner == owner)
            .ok_or(Unavailable::NotFound)?;
        if upload.expired(now_ms()) {
            return Err(Unavailable::Expired);
        }
        Ok(upload)
    }

    /// Makes the caller the upload's only writer, or says another one is at work.
    pub fn claim(&self, upload: &Arc<Upload>) -> Result<Claim, Unavailable> {
        upload
            .claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Claim(upload.clone()))
            .map_err(|_| Unavailable::Busy)
    }

    /// Forgets the upload and removes its files.
    pub fn remove(&self, upload: &Upload) {
        let id = upload.info().id;
        self.all().remove(&id);
        let _ = std::fs::remove_file(&upload.data);
        let _ = std::fs::remove_file(&upload.record);
        let _ = sync_dir(&self.dir);
    }

    /// Bytes that incomplete uploads have yet to write: the disk they will need.
    pub fn reserved_bytes(&self) -> u64 {
        let now = now_ms();
        self.all()
            .values()
            .filter(|u| !u.expired(now))
            .map(|u| u.info().length.saturating_sub(u.offset()))
            .sum()
    }

    /// Incomplete uploads of one player.
    pub fn open_uploads_of(&self, owner: UserId) -> usize {
        let now = now_ms();
        self.all()
            .values()
            .filter(|u| {
                let info = u.info();
                info.owner == owner && !info.committed && info.expires_at_ms > now
            })
            .count()
    }

    /// Removes the uploads past their expiry that no request is writing; returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = now_ms();
        let expired: Vec<Arc<Upload>> = self
            .all()
            .values()
            .filter(|u| u.expired(now))
            .cloned()
            .collect();
        let mut removed = 0;
        for upload in expired {
            if let Ok(claim) = self.claim(&upload) {
                self.remove(claim.upload());
                removed += 1;
            }
        }
        removed
    }
}

/// Upload ids are 32 lower-case hex digits; anything else names nothing.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sync_and_measure(path: &Path) -> std::io::Result<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.sync_data()?;
    Ok(file.metadata()?.len())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_record(path: &Path, info: &Info) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(info).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> Vec<bytes::Bytes> {
        parts
            .iter()
            .map(|p| bytes::Bytes::copy_from_slice(p))
            .collect()
    }

    async fn write(claim: Claim, parts: &[&[u8]]) -> u64 {
        let mut sink = claim.sink();
        for chunk in chunks(parts) {
            sink.write(chunk).await.unwrap();
        }
        sink.finish().await.unwrap()
    }

    #[tokio::test]
    async fn offsets_move_only_with_synced_data_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Resumable::open(dir.path()).unwrap();
        let upload = uploads
            .create(7, 10, "Mi jugada".into(), None, 60_000)
            .unwrap();
        let id = upload.info().id;
        assert!(valid_id(&id));
        assert_eq!(upload.offset(), 0);

        let claim = uploads.claim(&upload).unwrap();
        // One writer at a time.
        assert_eq!(uploads.claim(&upload).unwrap_err(), Unavailable::Busy);
        assert_eq!(write(claim, &[b"abc", b"de"]).await, 5);
        assert_eq!(upload.offset(), 5);
        assert!(!upload.complete());

        // Bytes past the durable offset (a write whose answer never came) are cut off.
        std::fs::OpenOptions::new()
            .append(true)
            .open(upload.data_path())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"zz"))
            .unwrap();
        let claim = uploads.claim(&upload).unwrap();
        assert_eq!(write(claim, &[b"fghij"]).await, 10);
        assert!(upload.complete());
        assert_eq!(std::fs::read(upload.data_path()).unwrap(), b"abcdefghij");

        // Another player sees nothing; a reopen finds the same offset.
        assert_eq!(uploads.get(&id, 8).unwrap_err(), Unavailable::NotFound);
        drop(uploads);
        let reopened = Resumable::open(dir.path()).unwrap();
        let again = reopened.get(&id, 7).unwrap();
        assert_eq!(again.offset(), 10);
        assert_eq!(again.info().title, "Mi jugada");
        assert_eq!(reopened.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_write_keeps_what_arrived_and_releases_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Resumable::open(dir.path()).unwrap();
        let upload = uploads.create(1, 100, "t".into(), None, 60_000).unwrap();
        let mut sink = uploads.claim(&upload).unwrap().sink();
        sink.write(bytes::Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        drop(sink);
        for _ in 0..200 {
            if uploads.claim(&upload).is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(upload.offset(), 10);
        assert_eq!(uploads.reserved_bytes(), 90);
        assert_eq!(uploads.open_uploads_of(1), 1);
    }

    #[test]
    fn expired_uploads_are_refused_then_swept_and_strays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let resumable = dir.path().join(RESUMABLE_DIR);
        std::fs::create_dir_all(&resumable).unwrap();
        std::fs::write(resumable.join("junk.json"), b"{").unwrap();
        std::fs::write(
            resumable.join("0123456789abcdef0123456789abcdef.data"),
            b"orphan",
        )
        .unwrap();
        let uploads = Resumable::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(&resumable).unwrap().count(), 0);
        let upload = uploads.create(1, 100, "t".into(), None, 0).unwrap();
        let id = upload.info().id;
        assert_eq!(uploads.get(&id, 1).unwrap_err(), Unavailable::Expired);
        assert_eq!(uploads.sweep_expired(), 1);
        assert_eq!(uploads.get(&id, 1).unwrap_err(), Unavailable::NotFound);
        assert!(!upload.data_path().exists());
        assert!(!valid_id("../etc/passwd"));
    }
}
