//! Blob storage for media files, addressed by keys such as `originals/42.mp4`.
//!
//! The local implementation keeps every blob under one directory on the same filesystem as the
//! upload temp directory, so storing a finished upload is an atomic rename followed by an fsync
//! of the directory: a blob is either wholly there or not there at all.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// A blob's bytes as they arrive.
pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    #[error("blob I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The store cannot be reached or is throttling: another try later may succeed.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    #[error("no such blob")]
    NotFound,
    /// The store refused the request.
    #[error("blob store error: {0}")]
    Remote(String),
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Moves a complete, fsynced local file into the store under `key` (replacing any blob).
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), BlobError>;
    /// Removes the blob; removing a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    async fn exists(&self, key: &str) -> Result<bool, BlobError>;
    /// Keys under a prefix such as `originals/`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    /// Where the blob can be read on this machine, when it is stored locally.
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// A local file with the blob's bytes: the blob itself when it is stored locally, else a
    /// copy downloaded to `into`. `NotFound` when there is no such blob.
    async fn fetch(&self, key: &str, into: &Path) -> Result<PathBuf, BlobError>;
    /// The blob's length, or `None` when there is no such blob.
    async fn len(&self, key: &str) -> Result<Option<u64>, BlobError>;
    /// Bytes `first..=last` of the blob, streamed as they are read.
    async fn read_range(&self, key: &str, first: u64, last: u64) -> Result<BlobStream, BlobError>;
    /// Whether the store can be reached now (readiness); a local store always can.
    async fn check(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

pub struct LocalBlobs {
    root: PathBuf,
}

/// Keys are relative paths of plain segments: no `..`, no absolute paths, no empty segments.
pub(crate) fn check_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_string()))
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl LocalBlobs {
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), BlobError> {
        let target = self.path_of(key)?;
        let source = file.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = target.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&source, &target)?;
            fsync_dir(dir)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        Ok(tokio::fs::try_exists(self.path_of(key)?).await?)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            if !entry.file_type().await?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if dir_part.is_empty() {
                name
            } else {
                format!("{dir_part}/{name}")
            };
            if key.starts_with(prefix) {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path_of(key).ok()
    }

    async fn fetch(&self, key: &str, _into: &Path) -> Result<PathBuf, BlobError> {
        let path = self.path_of(key)?;
        match tokio::fs::try_exists(&path).await? {
            true => Ok(path),
            false => Err(BlobError::NotFound),
        }
    }

    async fn len(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.path_of(key)?).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_range(&self, key: &str, first: u64, last: u64) -> Result<BlobStream, BlobError> {
        use futures_util::TryStreamExt;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = match tokio::fs::File::open(self.path_of(key)?).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound),
            Err(e) => return Err(e.into()),
        };
        file.seek(std::io::SeekFrom::Start(first)).await?;
        let limited = file.take(last.saturating_sub(first) + 1);
        Ok(Box::pin(
            tokio_util::io::ReaderStream::with_capacity(limited, 256 * 1024).map_err(BlobError::Io),
        ))
    }
}

/// Key of the original upload of a video.
pub fn original_key(video_id: u64) -> String {
    format!("originals/{video_id}.mp4")
}

/// Key of the published rendition of a video.
pub fn processed_key(video_id: u64) -> String {
    format!("processed/{video_id}.mp4")
}

/// Key of the poster of a video.
pub fn poster_key(video_id: u64) -> String {
    format!("posters/{video_id}.jpg")
}

/// The video id in an original's key, if it is one.
pub fn video_id_of_original(key: &str) -> Option<u64> {
    video_id_in(key, "originals/", ".mp4")
}

/// The video id in a key `<prefix><id><suffix>`, if it is one.
pub fn video_id_in(key: &str, prefix: &str, suffix: &str) -> Option<u64> {
    key.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_key("originals/1.mp4").is_ok());
    }

    #[test]
    fn original_keys_round_trip() {
        assert_eq!(video_id_of_original(&original_key(42)), Some(42));
        assert_eq!(video_id_of_original("originals/x.mp4"), None);
        assert_eq!(video_id_of_original("processed/4.mp4"), None);
        assert_eq!(
            video_id_in(&processed_key(4), "processed/", ".mp4"),
            Some(4)
        );
        assert_eq!(video_id_in(&poster_key(4), "posters/", ".jpg"), Some(4));
    }
}
