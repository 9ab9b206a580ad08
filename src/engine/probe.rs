//! Probing an uploaded file: is it an MP4 with a video track, how long, how large a picture.
//!
//! The file is hostile until proven otherwise, so the probe never hands a byte to a parser it
//! has not bounded first:
//! 1. the top-level boxes are walked here and must tile the file exactly (which also catches an
//!    upload truncated in transit); only a bounded `moov` is read, into memory;
//! 2. every box header inside `moov` is validated here, recursively through the containers
//!    ([`validate_tree`]): no size 0 (only the file's last top-level box may run to the end),
//!    a 64-bit size only where it fits, nothing under 8 bytes, nothing past its parent's end, at
//!    most [`MAX_DEPTH`] levels and [`MAX_BOXES`] boxes;
//! 3. only then does a parser see the `moov`: Mozilla's `mp4parse` (the parser of Firefox,
//!    fuzzed continuously, fallible allocations), reading through [`Budgeted`], which fails
//!    every read once the thread has used [`CPU_BUDGET`] of CPU time or once it has read four
//!    times the box. A parser bug that loops while reading therefore still ends in an error,
//!    and the caller adds a wall-clock deadline of its own for one that loops without reading.
//!
//! What the parser reports is checked again here: the picture size, a duration computed from
//! checked timescales, and that every chunk of the video track starts inside an `mdat`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use crate::domain::MediaInfo;

/// Largest `moov` box read; real 60 s clips have a few hundred KiB of it.
pub const MAX_MOOV_BYTES: u64 = 16 * 1024 * 1024;
/// Deepest box nesting accepted inside `moov` (real files use about 8 levels).
pub const MAX_DEPTH: usize = 16;
/// Most boxes accepted inside `moov` (real files have a few dozen).
pub const MAX_BOXES: usize = 10_000;
/// Most top-level boxes accepted (fragmented files have a pair per fragment).
pub const MAX_TOP_LEVEL_BOXES: usize = 10_000;
/// CPU time the parser may use on one file. A 60 s clip takes well under a millisecond.
pub const CPU_BUDGET: Duration = Duration::from_millis(250);

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
    #[error("the MP4 structure is too complex to analyse")]
    TooComplex,
    #[error("the file could not be read: {0}")]
    Io(String),
}

fn not_mp4(why: &str) -> ProbeError {
    ProbeError::NotMp4(why.to_string())
}

fn io(e: std::io::Error) -> ProbeError {
    ProbeError::Io(e.to_string())
}

/// A top-level box: where it starts, its header length and its whole size.
#[derive(Debug, Clone, Copy)]
struct TopBox {
    kind: [u8; 4],
    offset: u64,
    header: u64,
    size: u64,
}

impl TopBox {
    fn payload(&self) -> std::ops::Range<u64> {
        self.offset + self.header..self.offset + self.size
    }
}

/// A four-character code as a box type: printable Latin-1, as ISO/IEC 14496-12 requires
/// (QuickTime's `©nam` and friends use 0xA9).
fn is_box_type(kind: &[u8; 4]) -> bool {
    kind.iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b >= 0xA0)
}

/// Walks the top-level boxes; errors unless they cover the file exactly.
fn top_level_boxes<R: Read + Seek>(src: &mut R, len: u64) -> Result<Vec<TopBox>, ProbeError> {
    let mut boxes = Vec::new();
    let mut at = 0u64;
    while at < len {
        if boxes.len() >= MAX_TOP_LEVEL_BOXES {
            return Err(not_mp4("too many top-level boxes"));
        }
        if len - at < 8 {
            return Err(ProbeError::Truncated);
        }
        src.seek(SeekFrom::Start(at)).map_err(io)?;
        let mut header = [0u8; 8];
        src.read_exact(&mut header).map_err(io)?;
        let mut size = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let kind = [header[4], header[5], header[6], header[7]];
        if !kind.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(not_mp4("no MP4 box structure"));
        }
        let mut header_len = 8;
        if size == 1 {
            if len - at < 16 {
                return Err(ProbeError::Truncated);
            }
            let mut large = [0u8; 8];
            src.read_exact(&mut large).map_err(io)?;
            size = u64::from_be_bytes(large);
            header_len = 16;
            if size < 16 {
                return Err(not_mp4("invalid box size"));
            }
        } else if size == 0 {
            // The last box extends to the end of the file.
            size = len - at;
        } else if size < 8 {
            return Err(not_mp4("invalid box size"));
        }
        if at.checked_add(size).is_none_or(|end| end > len) {
            return Err(if boxes.is_empty() && &kind != b"ftyp" {
                not_mp4("no MP4 box structure")
            } else {
                ProbeError::Truncated
            });
        }
        boxes.push(TopBox {
            kind,
            offset: at,
            header: header_len,
            size,
        });
        at += size;
    }
    Ok(boxes)
}

/// Bytes of a box's own fields before its child boxes, for the boxes whose payload holds
/// boxes; `None` for the others (leaves), whose payload only the parser reads.
fn children_offset(kind: &[u8; 4], payload: &[u8]) -> Option<usize> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"udta" | b"mvex"
        | b"tref" | b"sinf" | b"schi" | b"rinf" | b"moof" | b"traf" | b"mfra" | b"ilst"
        | b"wave" => Some(0),
        // Full box: version and flags, an entry count, then the entries, which are boxes.
        b"stsd" | b"dref" => Some(8),
        // ISO's `meta` is a full box; QuickTime's is a plain container.
        b"meta" => Some(if payload.starts_with(&[0, 0, 0, 0]) {
            4
        } else {
            0
        }),
        // Visual sample entries: 78 bytes of fields, then their configuration boxes.
        b"avc1" | b"avc3" | b"hvc1" | b"hev1" | b"av01" | b"vp08" | b"vp09" | b"mp4v" | b"encv"
        | b"dvh1" | b"dvhe" => Some(78),
        // Sound sample entries: 28 bytes of fields, more in QuickTime's versions 1 and 2.
        b"mp4a" | b"enca" | b"Opus" | b"fLaC" | b"ac-3" | b"ec-3" => {
            match payload.get(8..10).map(|v| u16::from_be_bytes([v[0], v[1]])) {
                Some(0) => Some(28),
                Some(1) => Some(44),
                Some(2) => Some(64),
                _ => None,
            }
        }
        _ => None,
    }
}

/// How a box tree failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// A header or a box that does not fit where it is.
    Malformed(&'static str),
    /// Deeper or larger than any real file.
    TooComplex,
}

/// Validates the boxes tiling `bytes` (a box's payload) and, recursively, the children of
/// every container among them. `depth` is the nesting level of these boxes.
pub fn validate_tree(bytes: &[u8], depth: usize, boxes: &mut usize) -> Result<(), TreeError> {
    if depth > MAX_DEPTH {
        return Err(TreeError::TooComplex);
    }
    let mut at = 0usize;
    while at < bytes.len() {
        let left = bytes.len() - at;
        if left < 8 {
            // QuickTime ends some containers (`udta`) with a 32-bit zero terminator.
            return if bytes[at..].iter().all(|&b| b == 0) {
                Ok(())
            } else {
                Err(TreeError::Malformed("a box header is cut short"))
            };
        }
        *boxes += 1;
        if *boxes > MAX_BOXES {
            return Err(TreeError::TooComplex);
        }
        let size32 = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let kind = [bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]];
        if !is_box_type(&kind) {
            return Err(TreeError::Malformed(
                "a box type is not a four-character code",
            ));
        }
        let (size, mut header) = match size32 {
            0 => return Err(TreeError::Malformed("a box inside the movie has size 0")),
            1 => {
                if left < 16 {
                    return Err(TreeError::Malformed("a 64-bit box size is cut short"));
                }
                let large = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
                if large < 16 {
                    return Err(TreeError::Malformed("a 64-bit box size is under 16 bytes"));
                }
                (large, 16usize)
            }
            2..=7 => return Err(TreeError::Malformed("a box is smaller than its header")),
            n => (u64::from(n), 8usize),
        };
        if size > left as u64 {
            return Err(TreeError::Malformed(
                "a box runs past the end of its parent",
            ));
        }
        let size = size as usize;
        if &kind == b"uuid" {
            header += 16;
            if size < header {
                return Err(TreeError::Malformed(
                    "a uuid box is smaller than its header",
                ));
            }
        }
        let payload = &bytes[at + header..at + size];
        if let Some(fields) = children_offset(&kind, payload) {
            if payload.len() < fields {
                return Err(TreeError::Malformed(
                    "a container is smaller than its fields",
                ));
            }
            validate_tree(&payload[fields..], depth + 1, boxes)?;
        }
        at += size;
    }
    Ok(())
}

/// A reader that fails once the thread has spent its CPU budget or read its byte budget, so
/// that a parser which loops while reading stops with an error.
pub struct Budgeted<R> {
    inner: R,
    bytes_left: u64,
    cpu_until: Duration,
    exhausted: bool,
}

impl<R: Read> Budgeted<R> {
    pub fn new(inner: R, max_bytes: u64, cpu: Duration) -> Self {
        Self {
            inner,
            bytes_left: max_bytes,
            cpu_until: crate::system::thread_cpu_time() + cpu,
            exhausted: false,
        }
    }

    /// Whether a read failed for want of budget.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes_left == 0 || crate::system::thread_cpu_time() > self.cpu_until {
            self.exhausted = true;
            return Err(std::io::Error::other("the probe's budget is spent"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.bytes_left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.bytes_left -= n as u64;
        Ok(n)
    }
}

/// Probes the file at `path`. Runs blocking file I/O; call it from a blocking thread.
pub fn probe_mp4(path: &Path) -> Result<MediaInfo, ProbeError> {
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    probe_source(&mut file, len)
}

/// Probes `len` bytes of `src`. The parser is not trusted to be free of panics on crafted
/// input; a panic is caught here and reported as what it is, a file that is not a valid MP4.
pub fn probe_source<R: Read + Seek>(src: &mut R, len: u64) -> Result<MediaInfo, ProbeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe_unguarded(src, len)))
        .unwrap_or_else(|_| Err(not_mp4("the box structure is invalid")))
}

/// Seconds of a `duration` counted in `timescale` units, when both make sense.
fn seconds(duration: u64, timescale: u64) -> Option<f64> {
    (timescale > 0 && duration > 0 && duration != u64::MAX)
        .then(|| duration as f64 / timescale as f64)
        .filter(|s| s.is_finite())
}

fn probe_unguarded<R: Read + Seek>(src: &mut R, len: u64) -> Result<MediaInfo, ProbeError> {
    if len == 0 {
        return Err(ProbeError::Empty);
    }
    let boxes = top_level_boxes(src, len)?;
    let (moov, media_data) = locate_movie(&boxes)?;
    let movie = read_movie(src, moov)?;
    let context = parse_movie(&movie)?;
    let movie_timescale = context
        .timescale
        .map(|t| t.0)
        .ok_or_else(|| not_mp4("the movie has no timescale"))?;
    let (width, height, track) = best_video_track(&context).ok_or(ProbeError::NoVideoTrack)?;

    // Every chunk of the video track must start inside the media data.
    let offsets = track.stco.as_ref().map(|c| &c.offsets[..]).unwrap_or(&[]);
    let inside = |offset: &u64| media_data.iter().any(|range| range.contains(offset));
    if !offsets.iter().all(inside) {
        return Err(ProbeError::Truncated);
    }
    let duration_s = duration_s(&context, track, movie_timescale)
        .ok_or_else(|| not_mp4("the movie has no valid duration"))?;
    Ok(MediaInfo {
        size_bytes: len,
        duration_s,
        width,
        height,
    })
}

/// The one `moov` box after a leading `ftyp`, and where the media data (`mdat`) lies.
fn locate_movie(boxes: &[TopBox]) -> Result<(&TopBox, Vec<std::ops::Range<u64>>), ProbeError> {
    match boxes.first() {
        Some(b) if &b.kind == b"ftyp" => {}
        _ => return Err(not_mp4("no ftyp box at the start")),
    }
    let mut movies = boxes.iter().filter(|b| &b.kind == b"moov");
    let Some(moov) = movies.next() else {
        return Err(ProbeError::Truncated);
    };
    if movies.next().is_some() {
        return Err(not_mp4("more than one moov box"));
    }
    if moov.size > MAX_MOOV_BYTES {
        return Err(not_mp4("the moov box is implausibly large"));
    }
    let media_data: Vec<std::ops::Range<u64>> = boxes
        .iter()
        .filter(|b| &b.kind == b"mdat")
        .map(TopBox::payload)
        .collect();
    if media_data.is_empty() {
        return Err(ProbeError::Truncated);
    }
    Ok((moov, media_data))
}

/// The whole `moov` box, header included (what the parser reads), once its tree is valid.
fn read_movie<R: Read + Seek>(src: &mut R, moov: &TopBox) -> Result<Vec<u8>, ProbeError> {
    let mut movie = Vec::new();
    movie
        .try_reserve_exact(moov.size as usize)
        .map_err(|_| ProbeError::TooComplex)?;
    src.seek(SeekFrom::Start(moov.offset)).map_err(io)?;
    src.take(moov.size).read_to_end(&mut movie).map_err(io)?;
    if movie.len() as u64 != moov.size {
        return Err(ProbeError::Truncated);
    }
    let mut count = 0;
    validate_tree(&movie[moov.header as usize..], 1, &mut count).map_err(|e| match e {
        TreeError::Malformed(why) => not_mp4(why),
        TreeError::TooComplex => ProbeError::TooComplex,
    })?;
    Ok(movie)
}

/// `mp4parse` over the movie, within its read and CPU budgets.
fn parse_movie(movie: &[u8]) -> Result<mp4parse::MediaContext, ProbeError> {
    let size = movie.len() as u64;
    let mut reader = Budgeted::new(
        std::io::Cursor::new(movie),
        4 * size + 64 * 1024,
        CPU_BUDGET,
    );
    match mp4parse::read_mp4(&mut reader) {
        Ok(context) => Ok(context),
        Err(_) if reader.exhausted() => Err(ProbeError::TooComplex),
        Err(e) => Err(ProbeError::NotMp4(format!("{e:?}"))),
    }
}

/// The largest video track that has a picture size and samples.
fn best_video_track(context: &mp4parse::MediaContext) -> Option<(u32, u32, &mp4parse::Track)> {
    let mut best: Option<(u32, u32, &mp4parse::Track)> = None;
    for track in context.tracks.iter() {
        if track.track_type != mp4parse::TrackType::Video {
            continue;
        }
        let Some((w, h)) = picture_size(track) else {
            continue;
        };
        let has_samples = track.stco.as_ref().is_some_and(|c| !c.offsets.is_empty())
            && track
                .stsz
                .as_ref()
                .is_some_and(|s| s.sample_size > 0 || !s.sample_sizes.is_empty());
        if !has_samples {
            continue;
        }
        if best
            .is_none_or(|(bw, bh, _)| u64::from(w) * u64::from(h) > u64::from(bw) * u64::from(bh))
        {
            best = Some((w, h, track));
        }
    }
    best
}

/// The movie lasts as long as its longest track, in the movie's timescale; a track header
/// without a duration leaves the video track's own (media) duration.
fn duration_s(
    context: &mp4parse::MediaContext,
    track: &mp4parse::Track,
    movie_timescale: u64,
) -> Option<f64> {
    let movie_duration = context
        .tracks
        .iter()
        .filter_map(|t| t.tkhd.as_ref())
        .map(|tkhd| tkhd.duration)
        .filter(|&d| d != u64::from(u32::MAX))
        .max()
        .and_then(|d| seconds(d, movie_timescale));
    let media_duration = match (track.duration, track.timescale) {
        (Some(d), Some(t)) => seconds(d.0, t.0),
        _ => None,
    };
    movie_duration.or(media_duration)
}

/// The picture size of a video track: its header's (16.16 fixed point), else its first
/// sample description's.
fn picture_size(track: &mp4parse::Track) -> Option<(u32, u32)> {
    let from_header = track
        .tkhd
        .as_ref()
        .map(|t| (t.width >> 16, t.height >> 16))
        .filter(|&(w, h)| w > 0 && h > 0);
    from_header.or_else(|| {
        let stsd = track.stsd.as_ref()?;
        stsd.descriptions.iter().find_map(|d| match d {
            mp4parse::SampleEntry::Video(v) if v.width > 0 && v.height > 0 => {
                Some((u32::from(v.width), u32::from(v.height)))
            }
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn probe_bytes(bytes: &[u8]) -> Result<MediaInfo, ProbeError> {
        probe_source(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn empty_file_is_rejected() {
        assert_eq!(probe_bytes(b""), Err(ProbeError::Empty));
    }

    #[test]
    fn text_is_not_mp4() {
        let r = probe_bytes(b"hello, this is a text file pretending to be a video\n");
        assert!(matches!(r, Err(ProbeError::NotMp4(_))), "{r:?}");
    }

    #[test]
    fn box_running_past_the_end_is_truncation() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend_from_slice(&[0, 0, 1, 0]);
        bytes.extend_from_slice(b"mdat");
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(probe_bytes(&bytes), Err(ProbeError::Truncated));
    }

    #[test]
    fn ftyp_without_moov_is_truncation() {
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(boxed(b"mdat", &[1, 2, 3, 4]));
        assert_eq!(probe_bytes(&bytes), Err(ProbeError::Truncated));
    }

    #[test]
    fn durations_need_a_timescale() {
        assert_eq!(seconds(90_000, 3_000), Some(30.0));
        assert_eq!(seconds(90_000, 0), None);
        assert_eq!(seconds(0, 1_000), None);
        assert_eq!(seconds(u64::MAX, 1), None);
        assert!(seconds(u64::MAX - 1, 1).is_some_and(|s| s.is_finite()));
    }

    #[test]
    fn a_size_zero_box_inside_the_movie_is_refused() {
        // The box that made the previous parser skip nothing, forever.
        let mut moov = boxed(b"mvhd", &[0; 100]);
        moov.extend_from_slice(&[0, 0, 0, 0]);
        moov.extend_from_slice(b"zzzz");
        let mut bytes = boxed(b"ftyp", b"isom\0\0\0\0");
        bytes.extend(boxed(b"moov", &moov));
        bytes.extend(boxed(b"mdat", &[0; 16]));
        let r = probe_bytes(&bytes);
        assert!(
            matches!(&r, Err(ProbeError::NotMp4(why)) if why.contains("size 0")),
            "{r:?}"
        );
    }

    #[test]
    fn tree_validation_refuses_every_kind_of_bad_header() {
        let check = |bytes: &[u8]| validate_tree(bytes, 1, &mut 0);
        assert_eq!(check(&boxed(b"free", b"abc")), Ok(()));
        // Under 8, a 64-bit size under 16, a 64-bit size cut short, past the parent's end.
        for bad in [
            vec![0, 0, 0, 7, b'f', b'r', b'e', b'e'],
            [&[0, 0, 0, 1][..], b"free", &15u64.to_be_bytes()].concat(),
            [&[0, 0, 0, 1][..], b"free", &[0, 0]].concat(),
            [&[0, 0, 0, 9][..], b"free"].concat(),
            [&[0, 0, 0, 1][..], b"free", &u64::MAX.to_be_bytes()].concat(),
            [&[0, 0, 0, 8][..], &[0, 1, 2, 3]].concat(),
        ] {
            assert!(
                matches!(check(&bad), Err(TreeError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A 64-bit size that fits is fine, and so is QuickTime's zero terminator.
        let large = [&[0, 0, 0, 1][..], b"free", &20u64.to_be_bytes(), &[9; 4]].concat();
        assert_eq!(check(&large), Ok(()));
        assert_eq!(check(&[boxed(b"udta", &[]), vec![0; 4]].concat()), Ok(()));
        // Children are checked too.
        let bad_child = boxed(b"trak", &[0, 0, 0, 0, b'z', b'z', b'z', b'z']);
        assert!(check(&bad_child).is_err());
    }

    #[test]
    fn absurd_nesting_and_box_counts_are_too_complex() {
        let mut nested = boxed(b"free", &[]);
        for _ in 0..MAX_DEPTH + 2 {
            nested = boxed(b"trak", &nested);
        }
        assert_eq!(
            validate_tree(&nested, 1, &mut 0),
            Err(TreeError::TooComplex)
        );
        let many = boxed(b"free", &[]).repeat(MAX_BOXES + 1);
        assert_eq!(validate_tree(&many, 1, &mut 0), Err(TreeError::TooComplex));
    }

    #[test]
    fn the_budgeted_reader_stops_a_reading_loop() {
        let mut reader = Budgeted::new(std::io::repeat(7), 1 << 20, Duration::from_secs(60));
        let mut sink = [0u8; 4096];
        let mut reads = 0u64;
        while reader.read(&mut sink).is_ok() {
            reads += 1;
            assert!(reads < 1_000_000, "the budget never ran out");
        }
        assert!(reader.exhausted());
        let mut slow = Budgeted::new(std::io::repeat(7), u64::MAX, Duration::from_millis(20));
        let started = std::time::Instant::now();
        while slow.read(&mut sink[..1]).is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the CPU budget never ran out"
            );
        }
        assert!(slow.exhausted());
    }
}
