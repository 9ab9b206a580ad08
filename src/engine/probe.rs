//! Probing an uploaded file: is it an MP4 with a video track, how long, how large a picture.
//!
//! The `mp4` crate parses the boxes. It accepts a file whose last box is cut short (it skips
//! `mdat` by seeking), so before handing the file over we walk the top-level boxes ourselves and
//! require that they tile the file exactly and that the movie's sample data lies inside it:
//! that is what catches an upload truncated in transit.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::domain::MediaInfo;

/// Largest `moov` box we parse; real 60 s clips have a few hundred KiB of it.
const MAX_MOOV_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not an MP4 video: {0}")]
    NotMp4(String),
    #[error("the file is incomplete (truncated MP4)")]
    Truncated,
    #[error("the MP4 file has no video track")]
    NoVideoTrack,
    #[error("the file could not be read: {0}")]
    Io(String),
}

#[derive(Debug)]
struct TopBox {
    kind: [u8; 4],
    size: u64,
}

/// Walks the top-level boxes; errors unless they cover the file exactly.
fn top_level_boxes(file: &mut File, len: u64) -> Result<Vec<TopBox>, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io(e.to_string());
    let mut boxes = Vec::new();
    let mut at = 0u64;
    while at < len {
        if len - at < 8 {
            return Err(ProbeError::Truncated);
        }
        file.seek(SeekFrom::Start(at)).map_err(io)?;
        let mut header = [0u8; 8];
        file.read_exact(&mut header).map_err(io)?;
        let mut size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let kind = [header[4], header[5], header[6], header[7]];
        if !kind.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(ProbeError::NotMp4("no MP4 box structure".into()));
        }
        if size == 1 {
            if len - at < 16 {
                return Err(ProbeError::Truncated);
            }
            let mut large = [0u8; 8];
            file.read_exact(&mut large).map_err(io)?;
            size = u64::from_be_bytes(large);
            if size < 16 {
                return Err(ProbeError::NotMp4("invalid box size".into()));
            }
        } else if size == 0 {
            // The last box extends to the end of the file.
            size = len - at;
        } else if size < 8 {
            return Err(ProbeError::NotMp4("invalid box size".into()));
        }
        if at.checked_add(size).is_none_or(|end| end > len) {
            return Err(if boxes.is_empty() && &kind != b"ftyp" {
                ProbeError::NotMp4("no MP4 box structure".into())
            } else {
                ProbeError::Truncated
            });
        }
        boxes.push(TopBox { kind, size });
        at += size;
    }
    Ok(boxes)
}

/// Probes `path`. Runs blocking file I/O; call it from a blocking thread.
///
/// The file is untrusted and the `mp4` crate is not hardened against every crafted box (it has
/// unchecked arithmetic and `expect`s), so a panic while parsing is caught here and reported as
/// what it is: a file that is not a valid MP4.
pub fn probe_mp4(path: &Path) -> Result<MediaInfo, ProbeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe_unguarded(path)))
        .unwrap_or_else(|_| Err(ProbeError::NotMp4("the box structure is invalid".into())))
}

/// Seconds of a `duration` counted in `timescale` units, when both make sense.
fn seconds(duration: u64, timescale: u32) -> Option<f64> {
    (timescale > 0 && duration > 0).then(|| duration as f64 / timescale as f64)
}

fn probe_unguarded(path: &Path) -> Result<MediaInfo, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io(e.to_string());
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(ProbeError::Empty);
    }
    let boxes = top_level_boxes(&mut file, len)?;
    match boxes.first() {
        Some(b) if &b.kind == b"ftyp" => {}
        _ => return Err(ProbeError::NotMp4("no ftyp box at the start".into())),
    }
    let Some(moov) = boxes.iter().find(|b| &b.kind == b"moov") else {
        return Err(ProbeError::Truncated);
    };
    if moov.size > MAX_MOOV_BYTES {
        return Err(ProbeError::NotMp4(
            "the moov box is implausibly large".into(),
        ));
    }
    if !boxes.iter().any(|b| &b.kind == b"mdat") {
        return Err(ProbeError::Truncated);
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let reader = mp4::Mp4Reader::read_header(BufReader::new(file), len)
        .map_err(|e| ProbeError::NotMp4(e.to_string()))?;

    let mut best: Option<(u32, u32, &mp4::Mp4Track)> = None;
    for track in reader.tracks().values() {
        if !matches!(track.track_type(), Ok(mp4::TrackType::Video)) {
            continue;
        }
        let (w, h) = (track.width() as u32, track.height() as u32);
        if w == 0 || h == 0 || track.sample_count() == 0 {
            continue;
        }
        if best.is_none_or(|(bw, bh, _)| w * h > bw * bh) {
            best = Some((w, h, track));
        }
    }
    let Some((width, height, track)) = best else {
        return Err(ProbeError::NoVideoTrack);
    };

    // Every chunk of the video track must start inside the file.
    let stbl = &track.trak.mdia.minf.stbl;
    let last_chunk = match (&stbl.co64, &stbl.stco) {
        (Some(co64), _) => co64.entries.iter().copied().max(),
        (None, Some(stco)) => stco.entries.iter().map(|&o| o as u64).max(),
        _ => None,
    };
    if last_chunk.is_none_or(|offset| offset >= len) {
        return Err(ProbeError::Truncated);
    }

    // Computed here rather than with the crate's helpers, which divide by an unchecked timescale.
    let mvhd = &reader.moov.mvhd;
    let mdhd = &track.trak.mdia.mdhd;
    let duration_s = seconds(mvhd.duration, mvhd.timescale)
        .or_else(|| seconds(mdhd.duration, mdhd.timescale))
        .ok_or_else(|| ProbeError::NotMp4("the movie has no valid duration".into()))?;
    Ok(MediaInfo {
        size_bytes: len,
        duration_s,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn empty_file_is_rejected() {
        assert_eq!(probe_mp4(file_with(b"").path()), Err(ProbeError::Empty));
    }

    #[test]
    fn text_is_not_mp4() {
        let f = file_with(b"hello, this is a text file pretending to be a video\n");
        assert!(matches!(probe_mp4(f.path()), Err(ProbeError::NotMp4(_))));
    }

    #[test]
    fn box_running_past_the_end_is_truncation() {
        let mut bytes = vec![0, 0, 0, 16];
        bytes.extend_from_slice(b"ftypisom");
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 0, 1, 0]);
        bytes.extend_from_slice(b"mdat");
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(
            probe_mp4(file_with(&bytes).path()),
            Err(ProbeError::Truncated)
        );
    }

    #[test]
    fn durations_need_a_timescale() {
        assert_eq!(seconds(90_000, 3_000), Some(30.0));
        assert_eq!(seconds(90_000, 0), None);
        assert_eq!(seconds(0, 1_000), None);
        assert!(seconds(u64::MAX, 1).is_some_and(|s| s.is_finite()));
    }

    #[test]
    fn ftyp_without_moov_is_truncation() {
        let mut bytes = vec![0, 0, 0, 16];
        bytes.extend_from_slice(b"ftypisom");
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 0, 0, 12]);
        bytes.extend_from_slice(b"mdat");
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            probe_mp4(file_with(&bytes).path()),
            Err(ProbeError::Truncated)
        );
    }
}
