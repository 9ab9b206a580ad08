//! Hostile media: crafted and mutated MP4 files against the upload probe, the upload route and
//! the processing pipeline.
//!
//! The mutation test takes generated clips (moov first and moov last) and damages them the way
//! an attacker or a broken encoder would: box sizes (0, 1 with any 64-bit size, under 8, past
//! the parent, huge), types, counts, timescales and durations, sample tables, truncation,
//! duplication, deletion, reordering, absurd nesting and random bytes. Every mutant must be
//! probed without a panic and within 100 ms of CPU time. `make test` runs
//! `SHOWCASE_MUTATIONS` (default 3,000) mutants; `make fuzz` runs 100,000 or more on a release
//! build. Mutants the probe accepts are then processed by a real node: each must end published
//! or dead-lettered with a reason, never with a transcode left running.

mod common;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::Checked;
use common::{detail_of, TestApp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use showcase::config::UploadConfig;
use showcase::engine::probe::{probe_source, ProbeError};
use showcase::system::thread_cpu_time;
use showcase::upload::check_policy;

const ADMIN: &str = "admin-token-for-hostile-media";

/// A clip the probe must accept, small enough to copy thousands of times: 1080p, 21 s, a
/// solid picture at 5 frames/s with a short keyframe interval, and an audio track.
fn seed_clip(moov_first: bool) -> PathBuf {
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "color=c=0x3060a0:s=1920x1080:r=5",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=22050",
        "-t",
        "21",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "10",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "24k",
    ];
    let name = if moov_first {
        args.extend(["-movflags", "+faststart"]);
        "hostile-seed-moov-first.mp4"
    } else {
        "hostile-seed-moov-last.mp4"
    };
    common::generate_with_ffmpeg(name, &args)
}

/// A box of a seed file, as this test's own walker finds it.
#[derive(Debug, Clone)]
struct Node {
    offset: usize,
    header: usize,
    size: usize,
    kind: [u8; 4],
    /// Indices (into the walk) of the boxes that contain this one, outermost first.
    ancestors: Vec<usize>,
}

impl Node {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }

    fn payload_start(&self) -> usize {
        self.offset + self.header
    }

    fn end(&self) -> usize {
        self.offset + self.size
    }
}

/// Where the child boxes of a container start in its payload, for the containers this test
/// descends into.
fn children_at(kind: &[u8; 4]) -> Option<usize> {
    match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"udta" | b"mvex" => {
            Some(0)
        }
        b"stsd" | b"dref" => Some(8),
        b"avc1" => Some(78),
        b"mp4a" => Some(28),
        _ => None,
    }
}

fn walk(bytes: &[u8], start: usize, end: usize, ancestors: &[usize], out: &mut Vec<Node>) {
    let mut at = start;
    while at + 8 <= end {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let (size, header) = match size32 {
            0 => (end - at, 8),
            1 => (
                u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize,
                16,
            ),
            n => (n, 8),
        };
        let kind: [u8; 4] = bytes[at + 4..at + 8].try_into().unwrap();
        let index = out.len();
        out.push(Node {
            offset: at,
            header,
            size,
            kind,
            ancestors: ancestors.to_vec(),
        });
        if let Some(fields) = children_at(&kind) {
            let mut inner = ancestors.to_vec();
            inner.push(index);
            walk(bytes, at + header + fields, at + size, &inner, out);
        }
        at += size;
    }
}

/// One way of damaging a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Writes `value` as the box's 32-bit size; with `large`, size 1 and that 64-bit size.
    Size {
        node: usize,
        value: u32,
        large: Option<u64>,
    },
    Type {
        node: usize,
        kind: [u8; 4],
    },
    /// Overwrites `width` bytes at `at` bytes into the payload (counts, timescales, durations,
    /// sample table entries) with `value`.
    Field {
        node: usize,
        at: usize,
        width: usize,
        value: u64,
    },
    /// Random bytes at random places inside the box (header included).
    Scribble {
        node: usize,
        count: usize,
    },
    /// Random bytes anywhere in the file.
    Anywhere {
        count: usize,
    },
    Truncate {
        len: usize,
    },
    /// A copy of the box right after it; `fix` grows the containers to match.
    Duplicate {
        node: usize,
        fix: bool,
    },
    Delete {
        node: usize,
        fix: bool,
    },
    /// The box swapped with the next box at the same level.
    Swap {
        node: usize,
    },
    /// `child` appended at the end of the container's payload, containers grown to match.
    Append {
        node: usize,
        child: Vec<u8>,
    },
    /// The container's payload replaced by `levels` nested copies of its own type.
    Nest {
        node: usize,
        levels: usize,
    },
}

const KNOWN_TYPES: &[&[u8; 4]] = &[
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"stts", b"stsc", b"stsz", b"stco",
    b"co64", b"ctts", b"stss", b"mvhd", b"tkhd", b"mdhd", b"hdlr", b"avc1", b"avcC", b"mp4a",
    b"esds", b"mdat", b"free", b"uuid", b"meta", b"udta", b"edts", b"elst", b"dinf", b"dref",
    b"ftyp", b"zzzz",
];

fn pick_size(rng: &mut StdRng, node: &Node, file_len: usize) -> (u32, Option<u64>) {
    let size = node.size as u64;
    match rng.gen_range(0..12) {
        0 => (0, None),
        1 => (rng.gen_range(2..8), None),
        2 => (size.saturating_sub(1) as u32, None),
        3 => ((size + 1) as u32, None),
        4 => ((size + rng.gen_range(1..4096)) as u32, None),
        5 => (u32::MAX, None),
        6 => (rng.gen(), None),
        7 => ((file_len as u64 - node.offset as u64 + 1) as u32, None),
        8 => (1, Some(rng.gen_range(0..16))),
        9 => (1, Some(u64::MAX - rng.gen_range(0..16))),
        10 => (1, Some(size)),
        _ => (1, Some(rng.gen())),
    }
}

fn pick_value(rng: &mut StdRng, width: usize) -> u64 {
    let max = if width == 8 {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    match rng.gen_range(0..7) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max / 2,
        4 => rng.gen_range(2..64),
        5 => rng.gen_range(0..=max) & 0xFFFF,
        _ => rng.gen_range(0..=max),
    }
}

/// A random mutation of a file whose boxes are `nodes`.
fn pick(rng: &mut StdRng, nodes: &[Node], file_len: usize) -> Mutation {
    let node = rng.gen_range(0..nodes.len());
    let n = &nodes[node];
    let containers: Vec<usize> = (0..nodes.len())
        .filter(|&i| children_at(&nodes[i].kind) == Some(0))
        .collect();
    match rng.gen_range(0..14) {
        0 | 1 => {
            let (value, large) = pick_size(rng, n, file_len);
            Mutation::Size { node, value, large }
        }
        2 => {
            let kind = if rng.gen_bool(0.7) {
                *KNOWN_TYPES[rng.gen_range(0..KNOWN_TYPES.len())]
            } else {
                rng.gen()
            };
            Mutation::Type { node, kind }
        }
        3..=5 => {
            // Fields of full boxes: version/flags at 0, then counts, timescales, durations
            // and table entries, 4-byte aligned.
            let payload = n.size - n.header;
            let width = if rng.gen_bool(0.8) { 4 } else { 8 };
            if payload < width {
                return Mutation::Anywhere { count: 1 };
            }
            let slots = (payload - width) / 4 + 1;
            let at = rng.gen_range(0..slots.min(32)) * 4;
            Mutation::Field {
                node,
                at,
                width,
                value: pick_value(rng, width),
            }
        }
        6 => Mutation::Scribble {
            node,
            count: rng.gen_range(1..16),
        },
        7 => Mutation::Anywhere {
            count: rng.gen_range(1..32),
        },
        8 => Mutation::Truncate {
            len: if rng.gen_bool(0.5) {
                n.offset + rng.gen_range(0..n.header.min(n.size) + 1)
            } else {
                rng.gen_range(0..file_len)
            },
        },
        9 => Mutation::Duplicate {
            node,
            fix: rng.gen_bool(0.7),
        },
        10 => Mutation::Delete {
            node,
            fix: rng.gen_bool(0.7),
        },
        11 => Mutation::Swap { node },
        12 => {
            let node = containers[rng.gen_range(0..containers.len())];
            let child = match rng.gen_range(0..4) {
                // The box reported by the review: size 0, type `zzzz`.
                0 => vec![0, 0, 0, 0, b'z', b'z', b'z', b'z'],
                1 => [&[0, 0, 0, 1][..], b"zzzz", &rng.gen::<u64>().to_be_bytes()].concat(),
                2 => [&[0, 0, 0, rng.gen_range(2..8)][..], b"free"].concat(),
                _ => {
                    let mut b = vec![0, 0, 0, 0];
                    b.extend_from_slice(KNOWN_TYPES[rng.gen_range(0..KNOWN_TYPES.len())]);
                    let body: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
                    b.extend_from_slice(&body);
                    let len = b.len() as u32;
                    b[..4].copy_from_slice(&len.to_be_bytes());
                    b
                }
            };
            Mutation::Append { node, child }
        }
        _ => Mutation::Nest {
            node: containers[rng.gen_range(0..containers.len())],
            levels: *[2, 17, 100, 5000].get(rng.gen_range(0..4)).unwrap(),
        },
    }
}

/// Writes the size of `node` (as it sits in `bytes`) grown by `delta`.
fn grow(bytes: &mut [u8], node: &Node, delta: i64) {
    let size = (node.size as i64 + delta) as u64;
    if node.header == 16 {
        bytes[node.offset + 8..node.offset + 16].copy_from_slice(&size.to_be_bytes());
    } else {
        bytes[node.offset..node.offset + 4].copy_from_slice(&(size as u32).to_be_bytes());
    }
}

/// Replaces `range` of the file with `with`, growing the ancestors of `node` (and `node`
/// itself when `inside`) to keep the structure consistent when `fix`.
fn splice(
    seed: &[u8],
    nodes: &[Node],
    node: usize,
    range: std::ops::Range<usize>,
    with: &[u8],
    fix: bool,
    inside: bool,
) -> Vec<u8> {
    let delta = with.len() as i64 - range.len() as i64;
    let mut bytes = seed.to_vec();
    if fix {
        let n = &nodes[node];
        for &a in n.ancestors.iter() {
            grow(&mut bytes, &nodes[a], delta);
        }
        if inside {
            grow(&mut bytes, n, delta);
        }
    }
    bytes.splice(range, with.iter().copied());
    bytes
}

fn apply(seed: &[u8], nodes: &[Node], mutation: &Mutation, rng: &mut StdRng) -> Vec<u8> {
    match *mutation {
        Mutation::Size { node, value, large } => {
            let n = &nodes[node];
            let mut header = value.to_be_bytes().to_vec();
            header.extend_from_slice(&n.kind);
            if let Some(large) = large {
                header.extend_from_slice(&large.to_be_bytes());
            }
            let mut bytes = seed.to_vec();
            bytes.splice(n.offset..n.offset + n.header, header);
            bytes
        }
        Mutation::Type { node, kind } => {
            let mut bytes = seed.to_vec();
            let at = nodes[node].offset + 4;
            bytes[at..at + 4].copy_from_slice(&kind);
            bytes
        }
        Mutation::Field {
            node,
            at,
            width,
            value,
        } => {
            let mut bytes = seed.to_vec();
            let start = nodes[node].payload_start() + at;
            let field = &value.to_be_bytes()[8 - width..];
            let end = (start + width).min(bytes.len());
            bytes[start..end].copy_from_slice(&field[..end - start]);
            bytes
        }
        Mutation::Scribble { node, count } => {
            let mut bytes = seed.to_vec();
            let n = &nodes[node];
            for _ in 0..count {
                let at = rng.gen_range(n.offset..n.end().min(bytes.len()));
                bytes[at] = rng.gen();
            }
            bytes
        }
        Mutation::Anywhere { count } => {
            let mut bytes = seed.to_vec();
            for _ in 0..count {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            bytes
        }
        Mutation::Truncate { len } => seed[..len.min(seed.len())].to_vec(),
        Mutation::Duplicate { node, fix } => {
            let n = &nodes[node];
            let copy = seed[n.offset..n.end()].to_vec();
            splice(seed, nodes, node, n.end()..n.end(), &copy, fix, false)
        }
        Mutation::Delete { node, fix } => {
            let n = &nodes[node];
            splice(seed, nodes, node, n.offset..n.end(), &[], fix, false)
        }
        Mutation::Swap { node } => {
            let n = &nodes[node];
            let next = nodes
                .iter()
                .find(|m| m.offset == n.end() && m.ancestors == n.ancestors);
            let Some(next) = next else {
                return seed.to_vec();
            };
            let mut bytes = seed[..n.offset].to_vec();
            bytes.extend_from_slice(&seed[next.offset..next.end()]);
            bytes.extend_from_slice(&seed[n.offset..n.end()]);
            bytes.extend_from_slice(&seed[next.end()..]);
            bytes
        }
        Mutation::Append { node, ref child } => {
            let n = &nodes[node];
            splice(seed, nodes, node, n.end()..n.end(), child, true, true)
        }
        Mutation::Nest { node, levels } => {
            let n = &nodes[node];
            let mut inner = Vec::new();
            for _ in 0..levels {
                let mut b = ((inner.len() + 8) as u32).to_be_bytes().to_vec();
                b.extend_from_slice(&n.kind);
                b.extend_from_slice(&inner);
                inner = b;
            }
            splice(
                seed,
                nodes,
                node,
                n.payload_start()..n.end(),
                &inner,
                true,
                true,
            )
        }
    }
}

/// What one probe of a mutant gave.
struct Probed {
    accepted: bool,
    outcome: &'static str,
    cpu: Duration,
    wall: Duration,
}

/// Probes mutants on a thread of its own, so that a probe that never returns fails the test
/// (with the mutant saved) instead of hanging it.
struct Prober {
    jobs: mpsc::Sender<Arc<Vec<u8>>>,
    results: mpsc::Receiver<Probed>,
}

impl Prober {
    fn start() -> Self {
        let (jobs, job_rx) = mpsc::channel::<Arc<Vec<u8>>>();
        let (result_tx, results) = mpsc::channel();
        std::thread::spawn(move || {
            let policy = UploadConfig::default();
            for bytes in job_rx {
                let (cpu, wall) = (thread_cpu_time(), Instant::now());
                let result = probe_source(&mut Cursor::new(&bytes[..]), bytes.len() as u64);
                let (cpu, wall) = (thread_cpu_time() - cpu, wall.elapsed());
                let outcome = match &result {
                    Ok(media) if check_policy(media, &policy).is_ok() => "accepted",
                    Ok(_) => "outside the policy",
                    Err(ProbeError::Empty) => "empty",
                    Err(ProbeError::NotMp4(_)) => "not an MP4",
                    Err(ProbeError::Truncated) => "truncated",
                    Err(ProbeError::NoVideoTrack) => "no video track",
                    Err(ProbeError::TooComplex) => "too complex",
                    Err(ProbeError::Io(_)) => "read error",
                };
                let probed = Probed {
                    accepted: outcome == "accepted",
                    outcome,
                    cpu,
                    wall,
                };
                if result_tx.send(probed).is_err() {
                    return;
                }
            }
        });
        Self { jobs, results }
    }

    fn probe(&self, bytes: Arc<Vec<u8>>, what: &str) -> Probed {
        self.jobs.send(bytes.clone()).unwrap();
        match self.results.recv_timeout(Duration::from_secs(10)) {
            Ok(probed) => probed,
            Err(_) => {
                let path = common::media_dir().join("probe-never-returned.mp4");
                std::fs::write(&path, &bytes[..]).unwrap();
                panic!(
                    "the probe did not return within 10 s for {what} (saved as {})",
                    path.display()
                );
            }
        }
    }
}

/// Mutants of both seeds, deterministic for a given seed number.
fn mutants(count: usize, seed: u64) -> impl Iterator<Item = (String, Vec<u8>)> {
    let seeds: Vec<(&'static str, Vec<u8>, Vec<Node>)> = [true, false]
        .into_iter()
        .map(|moov_first| {
            let bytes = std::fs::read(seed_clip(moov_first)).unwrap();
            let mut nodes = Vec::new();
            walk(&bytes, 0, bytes.len(), &[], &mut nodes);
            let name = if moov_first {
                "moov first"
            } else {
                "moov last"
            };
            (name, bytes, nodes)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count).map(move |i| {
        let (name, bytes, nodes) = &seeds[i % seeds.len()];
        let mutation = pick(&mut rng, nodes, bytes.len());
        let target = match &mutation {
            Mutation::Size { node, .. }
            | Mutation::Type { node, .. }
            | Mutation::Field { node, .. }
            | Mutation::Scribble { node, .. }
            | Mutation::Duplicate { node, .. }
            | Mutation::Delete { node, .. }
            | Mutation::Swap { node }
            | Mutation::Append { node, .. }
            | Mutation::Nest { node, .. } => format!(" of {}", nodes[*node].name()),
            _ => String::new(),
        };
        let mutant = apply(bytes, nodes, &mutation, &mut rng);
        (format!("#{i} ({name}){target}: {mutation:?}"), mutant)
    })
}

fn mutation_count() -> usize {
    std::env::var("SHOWCASE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

#[test]
fn the_seeds_are_valid_uploads() {
    let policy = UploadConfig::default();
    for moov_first in [true, false] {
        let path = seed_clip(moov_first);
        let media = showcase::engine::probe::probe_mp4(&path).unwrap();
        assert_eq!((media.width, media.height), (1920, 1080));
        assert!((media.duration_s - 21.0).abs() < 0.2, "{media:?}");
        assert!(check_policy(&media, &policy).is_ok());
        let bytes = std::fs::read(&path).unwrap();
        let mut nodes = Vec::new();
        walk(&bytes, 0, bytes.len(), &[], &mut nodes);
        let top = |kind: &[u8; 4]| {
            nodes
                .iter()
                .position(|n| n.ancestors.is_empty() && &n.kind == kind)
                .unwrap()
        };
        let first = top(b"moov") < top(b"mdat");
        assert_eq!(first, moov_first, "{}", path.display());
    }
}

#[test]
fn every_mutant_is_probed_quickly_without_a_panic() {
    let count = mutation_count();
    let prober = Prober::start();
    let started = Instant::now();
    let mut outcomes: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut cpu_max, mut wall_max, mut cpu_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut slowest = String::new();
    for (what, mutant) in mutants(count, 0x5eed_0bad_f11e) {
        let probed = prober.probe(Arc::new(mutant), &what);
        *outcomes.entry(probed.outcome).or_default() += 1;
        cpu_total += probed.cpu;
        wall_max = wall_max.max(probed.wall);
        if probed.cpu > cpu_max {
            cpu_max = probed.cpu;
            slowest = what.clone();
        }
        assert!(
            probed.cpu < Duration::from_millis(100),
            "{what}: the probe used {:?} of CPU",
            probed.cpu
        );
    }
    println!(
        "{count} mutants probed in {:.1} s: mean {:.0} µs of CPU, max {:.1} ms of CPU ({slowest}), \
         max {:.1} ms wall; outcomes {outcomes:?}",
        started.elapsed().as_secs_f64(),
        cpu_total.as_secs_f64() * 1e6 / count as f64,
        cpu_max.as_secs_f64() * 1e3,
        wall_max.as_secs_f64() * 1e3,
    );
    // The mutations reach every kind of refusal, and some mutants still pass.
    for outcome in ["accepted", "not an MP4", "truncated"] {
        assert!(outcomes.contains_key(outcome), "{outcomes:?}");
    }
}

/// The file of the review: a clip whose `moov` is last, with an 8-byte child of size 0 and
/// type `zzzz` appended to `moov`, whose size grows by 8.
fn crafted_zero_size_child() -> Vec<u8> {
    let mut bytes = std::fs::read(seed_clip(false)).unwrap();
    let mut nodes = Vec::new();
    walk(&bytes, 0, bytes.len(), &[], &mut nodes);
    let moov = nodes.iter().find(|n| &n.kind == b"moov").unwrap().clone();
    assert_eq!(moov.end(), bytes.len(), "moov is the last box");
    grow(&mut bytes, &moov, 8);
    bytes.extend_from_slice(&[0, 0, 0, 0, b'z', b'z', b'z', b'z']);
    bytes
}

async fn upload_bytes(
    t: &TestApp,
    token: &str,
    bytes: Vec<u8>,
) -> (StatusCode, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        t.try_upload(token, bytes, "Hostil"),
    )
    .await
    .expect("the upload is answered");
    let (status, body) = response.expect("the node answers");
    (status, body, started.elapsed())
}

#[tokio::test]
async fn the_crafted_zero_size_box_is_refused_at_once() {
    let t = TestApp::start();
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let (status, body, took) = upload_bytes(&t, &token, crafted_zero_size_child()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail_of(&body).contains("video_file"), "{body}");
    println!("crafted moov answered in {took:?}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    // Nothing was kept, and the node is well.
    assert!(t.files_under("tmp").is_empty());
    assert!(t.files_under("media").is_empty());
    let (status, _) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Turns on the `wedged_probe` fault of the node at `base`.
async fn wedge_probes(node: &common::Client) {
    let switched = node
        .try_post(
            "/api/admin/faults",
            Some(&json!({"wedged_probe": true})),
            Some(ADMIN),
        )
        .await
        .expect("the node answers");
    assert_eq!(switched.0, StatusCode::OK, "{}", switched.1);
}

#[tokio::test]
async fn a_probe_stuck_without_reading_still_gets_a_400() {
    let t = TestApp::start_with(|c| {
        c.faults.enabled = true;
        c.admin.token = ADMIN.into();
    });
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    wedge_probes(&t).await;
    let bytes = std::fs::read(seed_clip(true)).unwrap();
    let (status, body, took) = upload_bytes(&t, &token, bytes).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail_of(&body).contains("video_file"), "{body}");
    println!("wedged probe answered in {took:?}");
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    // Stuck probes are bounded: after a few, uploads are refused and readiness says why.
    for _ in 1..showcase::upload::MAX_STUCK_PROBES {
        let bytes = std::fs::read(seed_clip(true)).unwrap();
        let (status, body, _) = upload_bytes(&t, &token, bytes).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let bytes = std::fs::read(seed_clip(true)).unwrap();
    let (status, body, _) = upload_bytes(&t, &token, bytes).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, ready) = t.get("/api/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.to_string().contains("probes"), "{ready}");
    let metrics = t.http.get(t.url("/metrics")).checked().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let abandoned = format!(
        "showcase_probes_abandoned_total {}",
        showcase::upload::MAX_STUCK_PROBES
    );
    assert!(metrics.contains(&abandoned), "{metrics}");
    // An in-process node cannot stop past a wedged thread (its runtime waits for it); the
    // process test below shows that the binary exits anyway.
    let TestApp { app, dir, .. } = t;
    std::mem::forget(app);
    drop(dir);
}

#[tokio::test]
async fn sigterm_exits_in_time_even_with_a_wedged_blocking_thread() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            ("SHOWCASE_FAULTS__ENABLED", "true"),
            ("SHOWCASE_ADMIN__TOKEN", ADMIN),
            ("SHOWCASE_SERVER__SHUTDOWN_GRACE_S", "2"),
        ],
    );
    let token = server.client().token_for("ana@example.com").await;
    wedge_probes(&server.client()).await;
    let (status, body) = server
        .client()
        .upload(&token, &seed_clip(true), "Atascado")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let started = Instant::now();
    let status = server.terminate_within(Duration::from_secs(2 + 5 + 3));
    println!("exited {status:?} {:?} after SIGTERM", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2 + 5 + 1));
}

/// Kinds of damage that the probe cannot see and decoding does: scribbled sample data, and
/// sample sizes, chunk offsets, sample-to-chunk runs, sample durations and media timescales
/// that lie. Each is a pair of words the mutation's description must contain.
const DECODER_DAMAGE: &[(&str, &str)] = &[
    ("Scribble", "of mdat"),
    ("Field", "of stsz"),
    ("Field", "of stco"),
    ("Field", "of stsc"),
    ("Field", "of stts"),
    ("Field", "of mdhd"),
];

/// `want` mutants the probe accepts, taking the kinds of [`DECODER_DAMAGE`] in turn.
/// Deterministic for `seed`.
fn accepted_mutants(want: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let prober = Prober::start();
    let seeds = [
        std::fs::read(seed_clip(true)).unwrap(),
        std::fs::read(seed_clip(false)).unwrap(),
    ];
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, mutant) in mutants(200_000, seed) {
        let (kind, target) = DECODER_DAMAGE[found.len() % DECODER_DAMAGE.len()];
        if !(what.contains(kind) && what.contains(target)) || seeds.contains(&mutant) {
            continue;
        }
        let mutant = Arc::new(mutant);
        if prober.probe(mutant.clone(), &what).accepted {
            found.push((what, mutant.to_vec()));
            if found.len() == want {
                break;
            }
        }
    }
    found
}

#[tokio::test]
async fn accepted_mutants_end_published_or_dead_lettered_with_a_reason() {
    let want = std::env::var("SHOWCASE_PIPELINE_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DECODER_DAMAGE.len());
    let chosen = accepted_mutants(want, 0xacce_97ed);
    assert_eq!(chosen.len(), want, "not enough accepted mutants");
    let t = TestApp::start_with(|c| {
        c.transcode.workers = 1;
        c.transcode.stall_s = 10;
        c.transcode.timeout_s = 120;
        c.transcode.retry_base_s = 1;
        c.transcode.retry_max_s = 1;
        c.queue.max_receives = 2;
    });
    let (_, token) = t.quick_player("Ana", "Ruiz", "Bogotá").await;
    let mut ids = Vec::new();
    for (what, bytes) in &chosen {
        let (status, body, _) = upload_bytes(&t, &token, bytes.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{what}: {body}");
        ids.push((what.clone(), body["video_id"].as_u64().unwrap()));
    }
    let deadline = Instant::now() + Duration::from_secs(90 * want as u64);
    for (what, id) in ids {
        let ended = loop {
            let (_, video) = t.get(&format!("/api/videos/{id}"), Some(&token)).await;
            if matches!(video["status"].as_str(), Some("processed" | "failed")) {
                break video;
            }
            assert!(Instant::now() < deadline, "{what} never ended: {video}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("{what}: {} {}", ended["status"], ended["error"]);
        if ended["status"] == "failed" {
            let reason = ended["error"].as_str().unwrap_or("");
            assert!(
                !reason.is_empty(),
                "{what}: failed without a reason: {ended}"
            );
            let letters = t.app.engine().queue.dead_letters().await.unwrap();
            assert!(
                letters
                    .iter()
                    .any(|l| l.job.video_id == id && !l.reason.is_empty()),
                "{what}: not dead-lettered with a reason"
            );
        }
    }
}
