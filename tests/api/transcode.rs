//! The transcode pipeline, run as the real `showcase transcode` child on generated inputs and
//! checked with ffprobe and by looking at pixels.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BUMPERS_S: f64 = 5.0;

struct Transcoded {
    _dir: tempfile::TempDir,
    output: PathBuf,
    poster: PathBuf,
    last_line: Value,
    progress_lines: usize,
}

fn transcode(input: &Path) -> Transcoded {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.mp4");
    let poster = dir.path().join("poster.jpg");
    let run = Command::new(env!("CARGO_BIN_EXE_showcase"))
        .arg("transcode")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&output)
        .arg("--poster")
        .arg(&poster)
        .output()
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let progress_lines = lines.iter().filter(|l| l["event"] == "progress").count();
    let last_line = lines.last().unwrap().clone();
    // Nothing but the finished outputs is left beside them.
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec!["out.mp4", "poster.jpg"]);
    Transcoded {
        _dir: dir,
        output,
        poster,
        last_line,
        progress_lines,
    }
}

fn probe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The luma plane (1280x720 bytes) of the frame at `seconds`, decoded by the ffmpeg CLI, after
/// the optional filter.
fn luma_at(path: &Path, seconds: f64, filter: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("ffmpeg");
    command
        .args(["-v", "error", "-ss", &format!("{seconds:.3}"), "-i"])
        .arg(path);
    if let Some(filter) = filter {
        command.args(["-vf", filter]);
    }
    let out = command
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 1280 * 720);
    out.stdout
}

fn region(luma: &[u8], x: std::ops::Range<usize>, y: std::ops::Range<usize>) -> Vec<u8> {
    y.flat_map(|row| x.clone().map(move |col| luma[row * 1280 + col]))
        .collect()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Every property the platform requires of a published video.
fn assert_published_rendition(t: &Transcoded, main_s: f64) {
    let info = probe(&t.output);
    let streams = info["streams"].as_array().unwrap();
    assert_eq!(
        streams.len(),
        1,
        "exactly one stream, no audio: {streams:?}"
    );
    let video = &streams[0];
    assert_eq!(video["codec_type"], "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(video["r_frame_rate"], "30/1");
    assert_eq!(video["avg_frame_rate"], "30/1");
    let duration: f64 = info["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = main_s + BUMPERS_S;
    assert!(
        (duration - expected).abs() <= 0.1,
        "duration {duration}, expected {expected}"
    );
    assert_eq!(t.last_line["event"], "done");
    let report = &t.last_line["report"];
    assert!((report["duration_s"].as_f64().unwrap() - expected).abs() <= 0.1);
    assert_eq!(report["content_hash"].as_str().unwrap().len(), 64);
    assert!(
        t.progress_lines >= 10,
        "{} progress lines",
        t.progress_lines
    );

    // moov before mdat: the index comes first, so a browser can start playing at once.
    let bytes = std::fs::read(&t.output).unwrap();
    let moov = bytes.windows(4).position(|w| w == b"moov").unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
    assert!(moov < mdat, "moov at {moov}, mdat at {mdat}");

    let poster = probe(&t.poster);
    let picture = &poster["streams"][0];
    assert_eq!(picture["codec_name"], "mjpeg");
    assert_eq!(
        (picture["width"].as_u64(), picture["height"].as_u64()),
        (Some(1280), Some(720))
    );
}

#[test]
fn landscape_with_audio_is_cut_to_30_s_silenced_and_watermarked() {
    let input = common::generate_media("pipeline-1920x1080-45s-audio.mp4", 1920, 1080, 45, true);
    let t = transcode(&input);
    assert_published_rendition(&t, 30.0);

    // The watermark: bottom right, where a plain rendition of the same moment differs.
    let ours = luma_at(&t.output, 2.5 + 10.0, None);
    let plain = luma_at(&input, 10.0, Some("scale=1280:720"));
    let mark = (1280 - 24 - 128)..(1280 - 24);
    let under_mark = mean_abs_diff(
        &region(&ours, mark.clone(), 650..690),
        &region(&plain, mark.clone(), 650..690),
    );
    let elsewhere = mean_abs_diff(
        &region(&ours, mark.clone(), 300..340),
        &region(&plain, mark, 300..340),
    );
    assert!(
        under_mark > 20.0 && under_mark > 3.0 * elsewhere,
        "under {under_mark}, elsewhere {elsewhere}"
    );

    // The intro is the logo on black.
    let intro = luma_at(&t.output, 1.0, None);
    assert!(region(&intro, 0..200, 0..720).iter().all(|&y| y <= 20));
    assert!(
        intro.iter().filter(|&&y| y > 100).count() > 10_000,
        "the logo is visible"
    );
}

#[test]
fn portrait_is_letterboxed_not_cropped() {
    let input = common::generate_mp4("pipeline-1080x1920-25s.mp4", 1080, 1920, 25);
    let t = transcode(&input);
    assert_published_rendition(&t, 25.0);
    // 1080x1920 fits as 405x720, centred: the sides are black padding.
    let frame = luma_at(&t.output, 2.5 + 5.0, None);
    for side in [0..420, 860..1280] {
        let pad = region(&frame, side.clone(), 0..600);
        assert!(
            pad.iter().all(|&y| y <= 20),
            "padding {side:?} is not black"
        );
    }
    assert!(
        region(&frame, 440..840, 0..720).iter().any(|&y| y > 60),
        "the picture is there"
    );
}

#[test]
fn four_by_three_is_pillarboxed() {
    let input = common::generate_mp4("pipeline-1440x1080-30s.mp4", 1440, 1080, 30);
    let t = transcode(&input);
    assert_published_rendition(&t, 30.0);
    // 1440x1080 fits as 960x720: 160 px of black on each side.
    let frame = luma_at(&t.output, 2.5 + 5.0, None);
    for side in [0..150, 1130..1280] {
        assert!(
            region(&frame, side.clone(), 0..600)
                .iter()
                .all(|&y| y <= 20),
            "{side:?}"
        );
    }
}

#[test]
fn an_input_that_cannot_be_decoded_is_a_permanent_failure() {
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_showcase"))
        .arg("transcode")
        .arg("--input")
        .arg(common::clip(common::Clip::Text))
        .arg("--output")
        .arg(dir.path().join("out.mp4"))
        .arg("--poster")
        .arg(dir.path().join("poster.jpg"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(65));
    let last: Value = serde_json::from_str(
        String::from_utf8(run.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["permanent"], true);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output is left"
    );
}

#[test]
fn a_child_cannot_read_outside_its_input_and_job_directory() {
    let node = tempfile::tempdir().unwrap();
    let secret = node.path().join("secret.key");
    std::fs::write(&secret, "0123456789abcdef").unwrap();
    // The test itself can read it: a refusal is the sandbox's doing.
    assert!(std::fs::read(&secret).is_ok());
    let job = node.path().join("job");
    std::fs::create_dir(&job).unwrap();
    let input = common::clip(common::Clip::Short);
    let run = Command::new(env!("CARGO_BIN_EXE_showcase"))
        .arg("transcode")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(job.join("out.mp4"))
        .arg("--poster")
        .arg(job.join("poster.jpg"))
        .args(["--fault", "escape", "--escape-target"])
        .arg(&secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "confined", "{stdout}");
    // Full on kernels with Landlock's sixth ABI (6.12), partial on older ones; never none.
    assert_ne!(lines[0]["confinement"], "none", "{stdout}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "error", "{stdout}");
    assert!(
        last["message"].as_str().unwrap().contains("refused"),
        "{stdout}"
    );
    assert_eq!(run.status.code(), Some(65), "{stdout}");
}
