//! HTTP Range and conditional requests (RFC 9110 §13 and §14), as pure functions.
//!
//! warp's file serving knows neither multiple ranges nor `If-Range` with entity tags, so the
//! rules live here, apart from any I/O, where they are unit- and property-tested:
//! - [`parse_range`] reads a `Range` header against a representation length;
//! - [`evaluate`] decides, from the conditional headers, whether to answer 304, honour the
//!   Range, or send the whole representation.

use std::time::SystemTime;

/// A `Range` header asking for more specs than this is ignored (the whole body is sent).
pub const MAX_RANGES: usize = 64;

/// Inclusive byte range `first..=last` within a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a `Range` header asks of a representation of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header (absent, malformed, another unit, too many ranges): send it all.
    Full,
    /// One or more satisfiable ranges, in ascending order, overlapping ones coalesced.
    Partial(Vec<ByteRange>),
    /// Well-formed, but no range overlaps the representation: 416.
    Unsatisfiable,
}

/// One `byte-range-spec` or `suffix-byte-range-spec`, before it meets a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-` or `first-last`. `None` first means "beyond any length" (it overflowed).
    From {
        first: Option<u64>,
        last: Option<u64>,
    },
    /// `-suffix`
    Suffix(u64),
}

/// Digits only (no sign, no spaces); `None` for anything else. Values too large for u64
/// saturate, which keeps their meaning ("beyond the end") without overflow.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(digits(last)?)
    };
    if let Some(last) = last {
        // `last < first` makes the spec invalid, hence the whole header (RFC 9110 §14.1.1).
        if last < first {
            return None;
        }
    }
    let first = (first != u64::MAX).then_some(first);
    Some(Spec::From { first, last })
}

/// Reads a `Range` header for a representation of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Full;
    };
    let Some((unit, set)) = header.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let mut specs = Vec::new();
    for part in set.split(',') {
        let part = part.trim();
        if part.is_empty() {
            // Empty list elements are allowed by the list syntax.
            continue;
        }
        match parse_spec(part) {
            Some(spec) => specs.push(spec),
            None => return RangeRequest::Full,
        }
        if specs.len() > MAX_RANGES {
            return RangeRequest::Full;
        }
    }
    if specs.is_empty() {
        return RangeRequest::Full;
    }
    let mut ranges: Vec<ByteRange> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            Spec::From {
                first: Some(first),
                last,
            } if first < len => Some(ByteRange {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            }),
            Spec::From { .. } => None,
            Spec::Suffix(0) => None,
            Spec::Suffix(n) if len > 0 => Some(ByteRange {
                first: len.saturating_sub(n),
                last: len - 1,
            }),
            Spec::Suffix(_) => None,
        })
        .collect();
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    ranges.sort_by_key(|r| (r.first, r.last));
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            // Overlapping or touching: one part instead of two.
            Some(previous) if range.first <= previous.last.saturating_add(1) => {
                previous.last = previous.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    RangeRequest::Partial(merged)
}

/// An entity tag as it appears in headers: `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    pub opaque: &'a str,
}

fn parse_etag(text: &str) -> Option<EntityTag<'_>> {
    let text = text.trim();
    let (weak, rest) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
    (!opaque.contains('"')).then_some(EntityTag { weak, opaque })
}

/// Entity tags of an `If-None-Match`-style list; `None` for `*`.
fn etag_list(header: &str) -> Option<Vec<EntityTag<'_>>> {
    if header.trim() == "*" {
        return None;
    }
    Some(header.split(',').filter_map(parse_etag).collect())
}

/// The validators of the representation being served.
#[derive(Debug, Clone)]
pub struct Validators<'a> {
    /// The opaque part of our strong entity tag.
    pub etag: &'a str,
    pub last_modified: SystemTime,
}

/// The request headers that make a request conditional.
#[derive(Debug, Clone, Default)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

/// What to answer a GET or HEAD with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    NotModified,
    /// Honour the Range header (if any).
    Ranges,
    /// Ignore the Range header: send the whole, current representation.
    Whole,
}

fn whole_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 9110 §13.2.2, for GET and HEAD: If-None-Match (weak comparison) wins over
/// If-Modified-Since; then If-Range (strong comparison, or an exact date) decides whether a
/// Range is honoured.
pub fn evaluate(conditions: &Conditions<'_>, ours: &Validators<'_>) -> Decision {
    if let Some(header) = conditions.if_none_match {
        let matched = match etag_list(header) {
            None => true,
            Some(tags) => tags.iter().any(|t| t.opaque == ours.etag),
        };
        if matched {
            return Decision::NotModified;
        }
    } else if let Some(since) = conditions
        .if_modified_since
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
    {
        if whole_seconds(ours.last_modified) <= whole_seconds(since) {
            return Decision::NotModified;
        }
    }
    match conditions.if_range {
        None => Decision::Ranges,
        Some(value) => {
            let value = value.trim();
            let current = if value.starts_with('"') || value.starts_with("W/") {
                // Strong comparison: a weak tag never matches.
                parse_etag(value).is_some_and(|t| !t.weak && t.opaque == ours.etag)
            } else {
                httpdate::parse_http_date(value)
                    .is_ok_and(|date| whole_seconds(date) == whole_seconds(ours.last_modified))
            };
            if current {
                Decision::Ranges
            } else {
                Decision::Whole
            }
        }
    }
}

/// `Last-Modified` / `Date` formatting.
pub fn http_date(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(first: u64, last: u64) -> ByteRange {
        ByteRange { first, last }
    }

    fn parts(header: &str, len: u64) -> RangeRequest {
        parse_range(Some(header), len)
    }

    #[test]
    fn every_single_range_form() {
        assert_eq!(
            parts("bytes=0-99", 1000),
            RangeRequest::Partial(vec![r(0, 99)])
        );
        assert_eq!(
            parts("bytes=500-", 1000),
            RangeRequest::Partial(vec![r(500, 999)])
        );
        assert_eq!(
            parts("bytes=-100", 1000),
            RangeRequest::Partial(vec![r(900, 999)])
        );
        assert_eq!(
            parts("bytes=-5000", 1000),
            RangeRequest::Partial(vec![r(0, 999)])
        );
        assert_eq!(
            parts("bytes=990-5000", 1000),
            RangeRequest::Partial(vec![r(990, 999)])
        );
        assert_eq!(
            parts("bytes=999-999", 1000),
            RangeRequest::Partial(vec![r(999, 999)])
        );
        assert_eq!(
            parts("BYTES=0-0", 1000),
            RangeRequest::Partial(vec![r(0, 0)])
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parts("bytes=1000-", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parts("bytes=1000-2000", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parts("bytes=-0", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parts("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parts("bytes=-10", 0), RangeRequest::Unsatisfiable);
        // One satisfiable spec among unsatisfiable ones is enough.
        assert_eq!(
            parts("bytes=2000-,-0,5-6", 1000),
            RangeRequest::Partial(vec![r(5, 6)])
        );
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for header in [
            "bytes=5-3",
            "bytes=abc",
            "bytes=1-2-3",
            "bytes=--5",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes= - ",
            "bytes=",
            "bytes=,",
            "bytes",
            "items=0-5",
            "0-5",
            "bytes=0x10-20",
            "bytes=1.5-2",
        ] {
            assert_eq!(parts(header, 1000), RangeRequest::Full, "{header:?}");
        }
        assert_eq!(parse_range(None, 1000), RangeRequest::Full);
    }

    #[test]
    fn whitespace_around_specs_is_allowed() {
        assert_eq!(
            parts("bytes= 0-1 , 5-6 ", 1000),
            RangeRequest::Partial(vec![r(0, 1), r(5, 6)])
        );
        assert_eq!(
            parts(" bytes = 0 - 1", 1000),
            RangeRequest::Partial(vec![r(0, 1)])
        );
    }

    #[test]
    fn overflowing_numbers_keep_their_meaning() {
        let huge = "99999999999999999999999999";
        assert_eq!(
            parts(&format!("bytes={huge}-"), 1000),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parts(&format!("bytes=0-{huge}"), 1000),
            RangeRequest::Partial(vec![r(0, 999)])
        );
        assert_eq!(
            parts(&format!("bytes=-{huge}"), 1000),
            RangeRequest::Partial(vec![r(0, 999)])
        );
        assert_eq!(
            parts("bytes=18446744073709551615-", u64::MAX),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn overlapping_and_touching_ranges_are_coalesced_in_order() {
        assert_eq!(
            parts("bytes=500-600,0-10,5-20,601-700", 1000),
            RangeRequest::Partial(vec![r(0, 20), r(500, 700)])
        );
        assert_eq!(
            parts("bytes=0-10,-5,990-", 1000),
            RangeRequest::Partial(vec![r(0, 10), r(990, 999)])
        );
    }

    #[test]
    fn hundreds_of_ranges_are_refused_by_ignoring_the_header() {
        let many: Vec<String> = (0..MAX_RANGES + 1)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert_eq!(
            parts(&format!("bytes={}", many.join(",")), 100_000),
            RangeRequest::Full
        );
        let allowed: Vec<String> = (0..MAX_RANGES)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        match parts(&format!("bytes={}", allowed.join(",")), 100_000) {
            RangeRequest::Partial(ranges) => assert_eq!(ranges.len(), MAX_RANGES),
            other => panic!("{other:?}"),
        }
    }

    fn validators(last_modified: SystemTime) -> Validators<'static> {
        Validators {
            etag: "abc",
            last_modified,
        }
    }

    #[test]
    fn conditional_requests() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_356_643);
        let ours = validators(t);
        let date = http_date(t);
        let later = http_date(t + std::time::Duration::from_secs(60));
        let earlier = http_date(t - std::time::Duration::from_secs(60));
        let c = |inm, ims, ir| Conditions {
            if_none_match: inm,
            if_modified_since: ims,
            if_range: ir,
        };
        assert_eq!(evaluate(&c(None, None, None), &ours), Decision::Ranges);
        assert_eq!(
            evaluate(&c(Some("\"abc\""), None, None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(Some("W/\"abc\""), None, None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(Some("\"x\", \"abc\""), None, None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(Some("*"), None, None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(Some("\"other\""), None, None), &ours),
            Decision::Ranges
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            evaluate(&c(Some("\"other\""), Some(&later), None), &ours),
            Decision::Ranges
        );
        assert_eq!(
            evaluate(&c(None, Some(&date), None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(None, Some(&later), None), &ours),
            Decision::NotModified
        );
        assert_eq!(
            evaluate(&c(None, Some(&earlier), None), &ours),
            Decision::Ranges
        );
        assert_eq!(
            evaluate(&c(None, Some("not a date"), None), &ours),
            Decision::Ranges
        );
        // If-Range: strong tag or exact date to keep the range; anything else sends it all.
        assert_eq!(
            evaluate(&c(None, None, Some("\"abc\"")), &ours),
            Decision::Ranges
        );
        assert_eq!(
            evaluate(&c(None, None, Some("W/\"abc\"")), &ours),
            Decision::Whole
        );
        assert_eq!(
            evaluate(&c(None, None, Some("\"stale\"")), &ours),
            Decision::Whole
        );
        assert_eq!(
            evaluate(&c(None, None, Some(&date)), &ours),
            Decision::Ranges
        );
        assert_eq!(
            evaluate(&c(None, None, Some(&earlier)), &ours),
            Decision::Whole
        );
        assert_eq!(
            evaluate(&c(None, None, Some("garbage")), &ours),
            Decision::Whole
        );
    }

    proptest! {
        /// Whatever the header, the answer is well-formed: ranges inside the body, ascending,
        /// disjoint and not touching, never more than asked for.
        #[test]
        fn any_header_gives_sane_ranges(header in "\\PC{0,80}", len in 0u64..10_000) {
            if let RangeRequest::Partial(ranges) = parse_range(Some(&header), len) {
                prop_assert!(!ranges.is_empty());
                for pair in ranges.windows(2) {
                    prop_assert!(pair[0].last + 1 < pair[1].first);
                }
                for range in &ranges {
                    prop_assert!(range.first <= range.last && range.last < len);
                }
            }
        }

        /// Well-formed specs: the union of the answer is exactly the union of what was asked,
        /// clipped to the body.
        #[test]
        fn ranges_cover_exactly_what_was_asked(
            specs in proptest::collection::vec((0u64..2_000, 0u64..2_000, 0u8..3), 1..20),
            len in 1u64..1_500,
        ) {
            let mut wanted = vec![false; len as usize];
            let text: Vec<String> = specs.iter().map(|&(a, b, kind)| {
                let (lo, hi) = (a.min(b), a.max(b));
                match kind {
                    0 => { for i in lo..=hi.min(len - 1) { if i < len { wanted[i as usize] = true; } } format!("{lo}-{hi}") }
                    1 => { for i in lo..len { wanted[i as usize] = true; } format!("{lo}-") }
                    _ => { for i in len.saturating_sub(lo)..len { if lo > 0 { wanted[i as usize] = true; } } format!("-{lo}") }
                }
            }).collect();
            let header = format!("bytes={}", text.join(","));
            let mut got = vec![false; len as usize];
            match parse_range(Some(&header), len) {
                RangeRequest::Partial(ranges) => for r in ranges { for i in r.first..=r.last { got[i as usize] = true; } },
                RangeRequest::Unsatisfiable => {}
                RangeRequest::Full => prop_assert!(false, "a well-formed header was ignored: {}", header),
            }
            prop_assert_eq!(got, wanted);
        }
    }
}
