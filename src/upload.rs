//! Upload rules and the temp files an upload streams into.
//!
//! An upload is written to `<data_dir>/tmp/` and only renamed into blob storage once it has been
//! fsynced and probed. [`TempUpload`] removes its file when dropped, so an upload that is
//! rejected, fails, or whose client disconnects leaves nothing behind; files left by a crash are
//! removed at the next start by [`clear_temp_dir`].

use std::path::{Path, PathBuf};

use crate::config::UploadConfig;
use crate::domain::MediaInfo;

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

/// Removes every leftover temp file (uploads cut short by a crash). Returns how many.
pub fn clear_temp_dir(data_dir: &Path) -> std::io::Result<usize> {
    let dir = data_dir.join(TEMP_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
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
