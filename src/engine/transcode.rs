//! The transcode pipeline: one pass over the input with ffmpeg-next.
//!
//! Decode once, one filter graph, encode once:
//!
//! ```text
//! [in]   ─ trim to main_max_s ─ fps 30 ─ fit in 1280x720 ─ pad black ─┐
//! [logo] ─ split ─ small copy ─────────────────────────── overlay ─────┴─ [main]
//!               ├─ large copy over black, bumper_s ──────────────────────── [intro]
//!               └─ large copy over black, bumper_s ──────────────────────── [outro]
//! [intro][main][outro] ─ concat ─ [out] ─ libx264 (yuv420p) ─ MP4, moov first
//! ```
//!
//! Audio is never decoded and no audio stream is written. A poster is taken from the middle of
//! the main part. Outputs are written to `*.part` files, fsynced and renamed into place.
//!
//! This code runs inside the disposable `showcase transcode` child process, never inside the
//! server: a crash or a hang in libav costs only that child.

use std::io::Write;
use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::{codec, decoder, encoder, filter, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use sha2::{Digest, Sha256};

use crate::config::Encoding;

/// The watermark and bumper artwork, embedded in the binary.
pub const LOGO_PNG: &[u8] = include_bytes!("../../static/logo.png");

pub const OUTPUT_WIDTH: u32 = 1280;
pub const OUTPUT_HEIGHT: u32 = 720;
pub const OUTPUT_FPS: i32 = 30;
/// Watermark width: about a tenth of the picture.
const WATERMARK_WIDTH: u32 = 128;
/// Distance of the watermark from the bottom-right corner.
const WATERMARK_MARGIN: u32 = 24;
/// Inputs shrunk by more than this factor are decoded without their deblocking filter.
const DEBLOCK_SKIP_BELOW_SCALE: f64 = 0.8;
/// Width of the logo on the bumpers.
const BUMPER_LOGO_WIDTH: u32 = 640;

#[derive(Debug, Clone)]
pub struct TranscodeSpec {
    pub input: PathBuf,
    pub output: PathBuf,
    pub poster: PathBuf,
    pub encoding: Encoding,
}

/// What a finished transcode produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TranscodeReport {
    pub duration_s: f64,
    pub frames: u64,
    /// Hex SHA-256 of the output file.
    pub content_hash: String,
    /// Hex SHA-256 of the poster.
    #[serde(default)]
    pub poster_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The input cannot be read as video: retrying will not help.
    #[error("the input cannot be decoded: {0}")]
    Input(String),
    /// Anything else (output I/O, encoder setup): may succeed on another attempt.
    #[error("{0}")]
    Failed(String),
}

impl TranscodeError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, TranscodeError::Input(_))
    }
}

fn failed(context: &str) -> impl Fn(ffmpeg::Error) -> TranscodeError + '_ {
    move |e| TranscodeError::Failed(format!("{context}: {e}"))
}

fn io_failed(context: &str) -> impl Fn(std::io::Error) -> TranscodeError + '_ {
    move |e| TranscodeError::Failed(format!("{context}: {e}"))
}

/// Progress of a running transcode, in output frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub frames: u64,
    pub expected_frames: u64,
}

impl Progress {
    pub fn percent(&self) -> u8 {
        if self.expected_frames == 0 {
            return 0;
        }
        (self.frames.saturating_mul(100) / self.expected_frames).min(99) as u8
    }
}

/// The filter graph description (see the module docs).
pub fn filter_spec(main_max_s: f64, bumper_s: f64) -> String {
    let (w, h, fps) = (OUTPUT_WIDTH, OUTPUT_HEIGHT, OUTPUT_FPS);
    let bumper = |label: &str, logo: &str| {
        format!(
            "color=c=black:s={w}x{h}:r={fps}:d={bumper_s}[{label}_bg];\
             [{logo}]scale={BUMPER_LOGO_WIDTH}:-2[{label}_logo];\
             [{label}_bg][{label}_logo]overlay=(W-w)/2:(H-h)/2:format=auto,setsar=1,format=yuv420p[{label}]"
        )
    };
    format!(
        "[in]setpts=PTS-STARTPTS,trim=duration={main_max_s},fps={fps},\
         scale={w}:{h}:force_original_aspect_ratio=decrease:flags=bilinear,\
         pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1[main_fit];\
         [logo]format=rgba,split=3[wm_src][intro_src][outro_src];\
         [wm_src]scale={WATERMARK_WIDTH}:-2[wm];\
         [main_fit][wm]overlay=W-w-{WATERMARK_MARGIN}:H-h-{WATERMARK_MARGIN}:format=auto,format=yuv420p[main];\
         {intro};{outro};\
         [intro][main][outro]concat=n=3:v=1:a=0[out]",
        intro = bumper("intro", "intro_src"),
        outro = bumper("outro", "outro_src"),
    )
}

/// Decodes the embedded logo into an RGBA frame (through a temp file: libavformat reads files).
fn decode_logo(work_dir: &Path) -> Result<frame::Video, TranscodeError> {
    let path = work_dir.join(format!(".logo-{}.png", std::process::id()));
    std::fs::write(&path, LOGO_PNG).map_err(io_failed("writing the logo"))?;
    let decoded = (|| {
        let mut ictx = format::input(&path).map_err(failed("opening the logo"))?;
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| TranscodeError::Failed("the logo has no picture".into()))?;
        let index = stream.index();
        let mut decoder = codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(failed("logo decoder"))?;
        let mut logo = frame::Video::empty();
        for (stream, packet) in ictx.packets() {
            if stream.index() == index {
                decoder
                    .send_packet(&packet)
                    .map_err(failed("decoding the logo"))?;
            }
        }
        decoder.send_eof().map_err(failed("decoding the logo"))?;
        decoder
            .receive_frame(&mut logo)
            .map_err(failed("decoding the logo"))?;
        Ok(logo)
    })();
    let _ = std::fs::remove_file(&path);
    decoded
}

/// Output path while it is being written.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

fn fsync_and_rename(part: &Path, target: &Path) -> Result<(), TranscodeError> {
    std::fs::File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(io_failed("syncing an output"))?;
    std::fs::rename(part, target).map_err(io_failed("renaming an output"))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_failed("syncing the output directory"))?;
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> Result<String, TranscodeError> {
    let mut file = std::fs::File::open(path).map_err(io_failed("hashing the output"))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_failed("hashing the output"))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Encodes one picture as a JPEG file.
fn write_poster(picture: &frame::Video, path: &Path) -> Result<(), TranscodeError> {
    let mut scaler = ffmpeg::software::scaling::Context::get(
        picture.format(),
        picture.width(),
        picture.height(),
        Pixel::YUVJ420P,
        picture.width(),
        picture.height(),
        ffmpeg::software::scaling::Flags::BICUBIC,
    )
    .map_err(failed("poster scaler"))?;
    let mut full_range = frame::Video::empty();
    scaler
        .run(picture, &mut full_range)
        .map_err(failed("poster scaling"))?;
    full_range.set_pts(Some(0));

    let codec = encoder::find(codec::Id::MJPEG)
        .ok_or_else(|| TranscodeError::Failed("no JPEG encoder".into()))?;
    let mut jpeg = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(failed("poster encoder"))?;
    jpeg.set_width(picture.width());
    jpeg.set_height(picture.height());
    jpeg.set_format(Pixel::YUVJ420P);
    jpeg.set_time_base(Rational(1, OUTPUT_FPS));
    let mut options = Dictionary::new();
    options.set("qscale", "3");
    let mut jpeg = jpeg.open_with(options).map_err(failed("poster encoder"))?;
    jpeg.send_frame(&full_range)
        .map_err(failed("poster encoding"))?;
    jpeg.send_eof().map_err(failed("poster encoding"))?;
    let mut packet = Packet::empty();
    jpeg.receive_packet(&mut packet)
        .map_err(failed("poster encoding"))?;
    let part = part_path(path);
    let mut file = std::fs::File::create(&part).map_err(io_failed("writing the poster"))?;
    file.write_all(packet.data().unwrap_or_default())
        .map_err(io_failed("writing the poster"))?;
    drop(file);
    fsync_and_rename(&part, path)
}

/// The encoder side: libx264 into an MP4 with its index at the front.
struct Output {
    octx: format::context::Output,
    encoder: encoder::Video,
    encoder_time_base: Rational,
    stream_time_base: Rational,
}

impl Output {
    fn open(
        path: &Path,
        spec: &TranscodeSpec,
        time_base: Rational,
    ) -> Result<Self, TranscodeError> {
        let mut octx = format::output_as(path, "mp4").map_err(failed("creating the output"))?;
        let codec = encoder::find_by_name("libx264")
            .ok_or_else(|| TranscodeError::Failed("libx264 is not available".into()))?;
        let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let mut stream = octx
            .add_stream(codec)
            .map_err(failed("adding the video stream"))?;
        let mut video = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(failed("encoder"))?;
        video.set_width(OUTPUT_WIDTH);
        video.set_height(OUTPUT_HEIGHT);
        video.set_format(Pixel::YUV420P);
        video.set_aspect_ratio(Rational(1, 1));
        video.set_time_base(time_base);
        video.set_frame_rate(Some(Rational(OUTPUT_FPS, 1)));
        if global_header {
            video.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        options.set("preset", &spec.encoding.preset);
        options.set("crf", &spec.encoding.crf.to_string());
        options.set("threads", &spec.encoding.threads.to_string());
        let encoder = video
            .open_with(options)
            .map_err(failed("opening libx264"))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        let mut muxer_options = Dictionary::new();
        muxer_options.set("movflags", "+faststart");
        octx.write_header_with(muxer_options)
            .map_err(failed("writing the MP4 header"))?;
        let stream_time_base = octx.stream(0).map(|s| s.time_base()).unwrap_or(time_base);
        Ok(Self {
            octx,
            encoder,
            encoder_time_base: time_base,
            stream_time_base,
        })
    }

    fn encode(&mut self, picture: Option<&frame::Video>) -> Result<(), TranscodeError> {
        match picture {
            Some(picture) => self
                .encoder
                .send_frame(picture)
                .map_err(failed("encoding"))?,
            None => self.encoder.send_eof().map_err(failed("encoding"))?,
        }
        let mut packet = Packet::empty();
        // One output frame, in the encoder's time base.
        let frame_duration =
            (1.0 / (OUTPUT_FPS as f64 * f64::from(self.encoder_time_base))).round() as i64;
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            if packet.duration() <= 0 {
                packet.set_duration(frame_duration.max(1));
            }
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(failed("writing the MP4"))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), TranscodeError> {
        self.encode(None)?;
        self.octx
            .write_trailer()
            .map_err(failed("finishing the MP4"))?;
        Ok(())
    }
}

/// Receives filtered frames: encodes them, keeps the poster, counts progress.
struct Sink<'a> {
    output: Output,
    frames: u64,
    expected_frames: u64,
    poster_index: u64,
    poster: Option<frame::Video>,
    on_progress: &'a mut dyn FnMut(Progress),
}

impl Sink<'_> {
    fn drain(&mut self, graph: &mut filter::Graph) -> Result<bool, TranscodeError> {
        let mut picture = frame::Video::empty();
        let mut context = graph
            .get("out")
            .ok_or_else(|| TranscodeError::Failed("the filter graph has no output".into()))?;
        loop {
            match context.sink().frame(&mut picture) {
                Ok(()) => {
                    if self.frames == self.poster_index {
                        self.poster = Some(picture.clone());
                    }
                    self.output.encode(Some(&picture))?;
                    self.frames += 1;
                    (self.on_progress)(Progress {
                        frames: self.frames,
                        expected_frames: self.expected_frames,
                    });
                }
                Err(ffmpeg::Error::Eof) => return Ok(true),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(false)
                }
                Err(e) => return Err(TranscodeError::Failed(format!("filtering: {e}"))),
            }
        }
    }
}

/// The decoder side: the input's video stream and what the pipeline needs to know of it.
struct Input {
    ictx: format::context::Input,
    decoder: decoder::Video,
    video_index: usize,
    time_base: Rational,
    /// Used when a frame does not say how long it lasts.
    default_frame_duration: i64,
    /// The container's duration, when it has one.
    duration_s: Option<f64>,
}

impl Input {
    fn open(spec: &TranscodeSpec) -> Result<Self, TranscodeError> {
        let ictx = format::input(&spec.input).map_err(|e| TranscodeError::Input(e.to_string()))?;
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| TranscodeError::Input("no video stream".into()))?;
        let video_index = stream.index();
        let time_base = stream.time_base();
        let rate = stream.avg_frame_rate();
        let default_frame_duration = if rate.numerator() > 0 && time_base.numerator() > 0 {
            (f64::from(rate.invert()) / f64::from(time_base))
                .round()
                .max(1.0) as i64
        } else {
            1
        };
        let (width, height) = {
            let parameters = stream.parameters();
            // SAFETY: reading two plain fields of the stream's codec parameters.
            unsafe { ((*parameters.as_ptr()).width, (*parameters.as_ptr()).height) }
        };
        let mut context = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| TranscodeError::Input(e.to_string()))?;
        context.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: spec.encoding.threads,
            ..Default::default()
        });
        let mut opening = context.decoder();
        let (width, height) = (width.max(1) as f64, height.max(1) as f64);
        if (OUTPUT_WIDTH as f64 / width).min(OUTPUT_HEIGHT as f64 / height)
            < DEBLOCK_SKIP_BELOW_SCALE
        {
            // Shrunk this much, the in-loop deblocking of the input is invisible in the
            // output: skipping it saves about a sixth of the decoding time.
            opening.skip_loop_filter(codec::discard::Discard::All);
        }
        let decoder: decoder::Video = opening
            .video()
            .map_err(|e| TranscodeError::Input(e.to_string()))?;
        if decoder.width() == 0 || decoder.height() == 0 || decoder.format() == Pixel::None {
            return Err(TranscodeError::Input(
                "the video stream has no picture size".into(),
            ));
        }
        let duration_s = (ictx.duration() > 0)
            .then(|| ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE));
        Ok(Self {
            ictx,
            decoder,
            video_index,
            time_base,
            default_frame_duration,
            duration_s,
        })
    }

    /// The `buffer` source arguments that describe the decoded pictures.
    fn buffer_args(&self) -> String {
        let aspect = self.decoder.aspect_ratio();
        let aspect = if aspect.numerator() > 0 && aspect.denominator() > 0 {
            aspect
        } else {
            Rational(1, 1)
        };
        format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            self.decoder.width(),
            self.decoder.height(),
            ffmpeg::ffi::AVPixelFormat::from(self.decoder.format()) as i32,
            self.time_base.numerator(),
            self.time_base.denominator().max(1),
            aspect.numerator(),
            aspect.denominator(),
        )
    }
}

/// The filter graph of [`filter_spec`] between the input's pictures (`in`), the logo (`logo`,
/// fed here, once) and the encoder (`out`).
fn build_graph(
    input: &Input,
    mut logo: frame::Video,
    encoding: &Encoding,
) -> Result<filter::Graph, TranscodeError> {
    let mut graph = filter::Graph::new();
    let logo_args = format!(
        "video_size={}x{}:pix_fmt={}:time_base=1/{OUTPUT_FPS}:pixel_aspect=1/1",
        logo.width(),
        logo.height(),
        ffmpeg::ffi::AVPixelFormat::from(logo.format()) as i32,
    );
    let buffer =
        filter::find("buffer").ok_or_else(|| TranscodeError::Failed("no buffer filter".into()))?;
    let buffersink = filter::find("buffersink")
        .ok_or_else(|| TranscodeError::Failed("no buffersink filter".into()))?;
    graph
        .add(&buffer, "in", &input.buffer_args())
        .map_err(failed("graph input"))?;
    graph
        .add(&buffer, "logo", &logo_args)
        .map_err(failed("graph logo input"))?;
    graph
        .add(&buffersink, "out", "")
        .map_err(failed("graph output"))?;
    graph
        .output("in", 0)
        .and_then(|p| p.output("logo", 0))
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(&filter_spec(encoding.main_max_s, encoding.bumper_s)))
        .map_err(failed("building the filter graph"))?;
    graph
        .validate()
        .map_err(failed("validating the filter graph"))?;
    logo.set_pts(Some(0));
    let mut source = graph
        .get("logo")
        .ok_or_else(|| TranscodeError::Failed("no logo input".into()))?;
    source
        .source()
        .add(&logo)
        .map_err(failed("feeding the logo"))?;
    source
        .source()
        .flush()
        .map_err(failed("feeding the logo"))?;
    Ok(graph)
}

/// Moves decoded pictures into the graph, remembering how many there were and where the last
/// one ends.
struct Feed {
    picture: frame::Video,
    decoded: u64,
    /// Where the last frame ends: the end of the stream for the filters, so that the last
    /// frame keeps its whole duration at 30 fps.
    end_pts: Option<i64>,
    /// Decoding stops once a picture starts after this many seconds.
    stop_after_s: f64,
}

impl Feed {
    /// Pushes every picture the decoder has ready; true once the main part is complete.
    fn push(
        &mut self,
        input: &mut Input,
        graph: &mut filter::Graph,
        sink: &mut Sink,
    ) -> Result<bool, TranscodeError> {
        let mut past_end = false;
        while input.decoder.receive_frame(&mut self.picture).is_ok() {
            self.decoded += 1;
            let pts = self.picture.timestamp();
            self.picture.set_pts(pts);
            if let Some(pts) = pts {
                past_end |= pts as f64 * f64::from(input.time_base) > self.stop_after_s;
                let duration = match self.picture.packet().duration {
                    d if d > 0 => d,
                    _ => input.default_frame_duration,
                };
                self.end_pts = Some(self.end_pts.unwrap_or(i64::MIN).max(pts + duration));
            }
            graph_input(graph)?
                .source()
                .add(&self.picture)
                .map_err(failed("filtering"))?;
            sink.drain(graph)?;
        }
        Ok(past_end)
    }
}

fn graph_input(graph: &mut filter::Graph) -> Result<filter::Context, TranscodeError> {
    graph
        .get("in")
        .ok_or_else(|| TranscodeError::Failed("no graph input".into()))
}

/// Decodes the input until the main part is complete (the rest is never decoded), pushing
/// every picture through the graph into the sink, then ends the graph's input and drains it.
fn run_frames(
    input: &mut Input,
    graph: &mut filter::Graph,
    sink: &mut Sink,
    stop_after_s: f64,
) -> Result<(), TranscodeError> {
    let mut feed = Feed {
        picture: frame::Video::empty(),
        decoded: 0,
        end_pts: None,
        stop_after_s,
    };
    let mut decode_errors = 0u64;
    loop {
        let Some((stream, packet)) = input.ictx.packets().next() else {
            break;
        };
        if stream.index() != input.video_index {
            continue;
        }
        if input.decoder.send_packet(&packet).is_err() {
            decode_errors += 1;
        }
        if feed.push(input, graph, sink)? {
            break;
        }
    }
    let _ = input.decoder.send_eof();
    feed.push(input, graph, sink)?;
    if feed.decoded == 0 {
        return Err(TranscodeError::Input(format!(
            "no picture could be decoded ({decode_errors} bad packets)"
        )));
    }
    match feed.end_pts {
        Some(pts) => graph_input(graph)?.source().close(pts),
        None => graph_input(graph)?.source().flush(),
    }
    .map_err(failed("filtering"))?;
    while !sink.drain(graph)? {}
    Ok(())
}

/// Runs the whole pipeline. `on_progress` is called for every output frame.
pub fn transcode(
    spec: &TranscodeSpec,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<TranscodeReport, TranscodeError> {
    ffmpeg::init().map_err(failed("initialising libav"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    let encoding = &spec.encoding;
    let mut input = Input::open(spec)?;
    let main_s = input
        .duration_s
        .unwrap_or(encoding.main_max_s)
        .min(encoding.main_max_s);
    let bumper_frames = (encoding.bumper_s * OUTPUT_FPS as f64).round() as u64;
    let main_frames = (main_s * OUTPUT_FPS as f64).round() as u64;

    let work_dir = spec
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut graph = build_graph(&input, decode_logo(work_dir)?, encoding)?;
    let sink_time_base = graph
        .get("out")
        .map(|mut c| c.sink().time_base())
        .filter(|tb| tb.numerator() > 0)
        .unwrap_or(Rational(1, OUTPUT_FPS));
    let output_part = part_path(&spec.output);
    let mut sink = Sink {
        output: Output::open(&output_part, spec, sink_time_base)?,
        frames: 0,
        expected_frames: 2 * bumper_frames + main_frames,
        poster_index: bumper_frames + main_frames / 2,
        poster: None,
        on_progress,
    };
    run_frames(&mut input, &mut graph, &mut sink, main_s + 1.0)?;

    let Sink {
        output,
        frames,
        poster,
        ..
    } = sink;
    output.finish()?;
    fsync_and_rename(&output_part, &spec.output)?;
    let poster = poster.ok_or_else(|| TranscodeError::Input("the main part is empty".into()))?;
    write_poster(&poster, &spec.poster)?;
    Ok(TranscodeReport {
        duration_s: frames as f64 / OUTPUT_FPS as f64,
        frames,
        content_hash: sha256_hex(&spec.output)?,
        poster_hash: sha256_hex(&spec.poster)?,
    })
}

/// One line of the child's stdout (JSON lines).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    Progress {
        percent: u8,
        frames: u64,
        expected_frames: u64,
    },
    Done {
        report: TranscodeReport,
    },
    Error {
        permanent: bool,
        message: String,
    },
    /// How far the child could confine itself, reported before it opens its input.
    Confined {
        confinement: crate::sandbox::Confinement,
        detail: String,
    },
}

/// Exit status of a child whose input cannot be decoded (sysexits' EX_DATAERR).
pub const EXIT_PERMANENT: i32 = 65;
/// Exit status of any other failure.
pub const EXIT_FAILED: i32 = 1;

/// Failures a child can be told to simulate (fault injection, for tests and drills).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ChildFault {
    /// Die of SIGSEGV part-way through.
    Crash,
    /// Stop making progress part-way through, forever.
    Hang,
    /// Try to read a file outside the sandbox (the node's secret) before transcoding.
    Escape,
}

impl std::str::FromStr for ChildFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crash" => Ok(ChildFault::Crash),
            "hang" => Ok(ChildFault::Hang),
            "escape" => Ok(ChildFault::Escape),
            other => Err(format!("unknown fault {other:?} (crash, hang, escape)")),
        }
    }
}

/// Frames a faulty child produces before its fault strikes.
const FAULT_AFTER_FRAMES: u64 = 15;
/// Progress lines are written at most this often (and whenever the percentage changes).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn emit(event: &ChildEvent) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(event).expect("events serialise");
    // The parent reads lines; if it is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The body of `showcase transcode`: confines itself (see `sandbox`), runs one job and reports
/// on stdout. Returns the exit code. `escape_target` is the file the `escape` fault tries to
/// read.
pub fn run_child(
    spec: &TranscodeSpec,
    fault: Option<ChildFault>,
    escape_target: Option<&Path>,
) -> i32 {
    let writable: Vec<&Path> = [spec.output.parent(), spec.poster.parent()]
        .into_iter()
        .flatten()
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .collect();
    let (confinement, detail) = crate::sandbox::confine(&[&spec.input], &writable);
    emit(&ChildEvent::Confined {
        confinement,
        detail,
    });
    if let (Some(ChildFault::Escape), Some(target)) = (fault, escape_target) {
        return try_to_escape(target);
    }
    let mut last_percent = None;
    let mut last_line = std::time::Instant::now();
    let mut on_progress = |p: Progress| {
        if let Some(fault) = fault.filter(|_| p.frames == FAULT_AFTER_FRAMES) {
            suffer(fault);
        }
        let percent = p.percent();
        if last_percent != Some(percent) || last_line.elapsed() >= PROGRESS_EVERY {
            last_percent = Some(percent);
            last_line = std::time::Instant::now();
            emit(&ChildEvent::Progress {
                percent,
                frames: p.frames,
                expected_frames: p.expected_frames,
            });
        }
    };
    let (permanent, message) = match transcode(spec, &mut on_progress) {
        Ok(report) => {
            emit(&ChildEvent::Done { report });
            return 0;
        }
        Err(e) => (e.is_permanent(), e.to_string()),
    };
    emit(&ChildEvent::Error { permanent, message });
    if permanent {
        EXIT_PERMANENT
    } else {
        EXIT_FAILED
    }
}

/// The `escape` fault: reads `target` from inside the sandbox. Only a refusal proves the
/// sandbox (a permanent failure, as the actor expects); a missing file proves nothing.
fn try_to_escape(target: &Path) -> i32 {
    let (permanent, message) = match std::fs::read(target) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (
            true,
            format!("the sandbox refused to read {}: {e}", target.display()),
        ),
        Ok(_) => (
            false,
            format!("the sandbox let the transcoder read {}", target.display()),
        ),
        Err(e) => (
            false,
            format!(
                "the escape target {} could not be tried: {e}",
                target.display()
            ),
        ),
    };
    emit(&ChildEvent::Error { permanent, message });
    if permanent {
        EXIT_PERMANENT
    } else {
        EXIT_FAILED
    }
}

/// The `crash` and `hang` faults, part-way through a transcode.
fn suffer(fault: ChildFault) {
    match fault {
        // SAFETY: restoring the default action (the runtime handles SIGSEGV for stack
        // overflows and would otherwise return) and raising it in our own process.
        ChildFault::Crash => unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        },
        ChildFault::Hang => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        ChildFault::Escape => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_settings_survive_the_child_command_line() {
        use clap::{Args, FromArgMatches};
        let sent = Encoding {
            main_max_s: 12.5,
            bumper_s: 1.0,
            preset: "ultrafast".into(),
            crf: 31,
            threads: 3,
        };
        let command = Encoding::augment_args(clap::Command::new("transcode"));
        let matches = command
            .try_get_matches_from(std::iter::once("transcode".to_string()).chain(sent.to_args()))
            .unwrap();
        assert_eq!(Encoding::from_arg_matches(&matches).unwrap(), sent);
        let defaults = Encoding::augment_args(clap::Command::new("transcode"))
            .try_get_matches_from(["transcode"])
            .unwrap();
        assert_eq!(
            Encoding::from_arg_matches(&defaults).unwrap(),
            Encoding::default()
        );
    }

    #[test]
    fn the_graph_cuts_fits_pads_marks_and_frames_the_main_part() {
        let spec = filter_spec(30.0, 2.5);
        assert!(spec.contains("trim=duration=30"));
        assert!(spec.contains("force_original_aspect_ratio=decrease"));
        assert!(spec.contains("pad=1280:720"));
        assert!(spec.contains("overlay=W-w-24:H-h-24"));
        assert!(spec.contains("d=2.5"));
        assert!(spec.contains("concat=n=3:v=1:a=0[out]"));
    }

    #[test]
    fn progress_never_claims_done_before_the_end() {
        let p = |frames, expected_frames| {
            Progress {
                frames,
                expected_frames,
            }
            .percent()
        };
        assert_eq!(p(0, 100), 0);
        assert_eq!(p(50, 100), 50);
        assert_eq!(p(100, 100), 99);
        assert_eq!(p(5, 0), 0);
    }

    #[test]
    fn outputs_are_written_beside_their_final_name() {
        assert_eq!(
            part_path(Path::new("/a/b/out.mp4")),
            PathBuf::from("/a/b/out.mp4.part")
        );
    }
}
