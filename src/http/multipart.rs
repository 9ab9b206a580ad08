//! A streaming `multipart/form-data` parser (RFC 7578 over RFC 2046) that hands out a part's
//! data as slices of the chunks it was fed, never copies of them.
//!
//! Written here because the parsers available as crates (multer, mpart-async,
//! multipart_async_stream) all append every chunk of the body to a buffer of their own before
//! handing data out: one more pass over every uploaded byte, measurably the node's CPU at full
//! load (`docs/benchmarks.md`). This one only searches for the delimiter (with
//! `memchr::memmem`) and splits the chunk around it, which for [`Bytes`] moves no data. A chunk
//! is copied only when it has to be joined to bytes held back from the one before: a part's
//! header block cut by a chunk edge (at most [`MAX_PART_HEADER_BYTES`]), or the few bytes at a
//! chunk's end that may begin a delimiter (for data of random bytes, about one chunk in 256
//! ends with a `\r`, so well under 1 % of an upload is copied). Header lines are parsed by
//! `httparse`.
//!
//! The parser does no I/O: [`Parser::feed`] gives it input, [`Parser::next_event`] takes out
//! what that input completes. Memory stays bounded whatever the input: what is held back is at
//! most a header block or a delimiter's length, plus the last chunk fed.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem::Finder;

/// Longest header block of one part.
pub const MAX_PART_HEADER_BYTES: usize = 8 * 1024;
/// Most header lines in one part.
const MAX_PART_HEADERS: usize = 16;
/// Most spaces and tabs accepted between a delimiter and its line break.
const MAX_TRANSPORT_PADDING: usize = 64;
/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY_LEN: usize = 70;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("el límite (boundary) debe tener entre 1 y {MAX_BOUNDARY_LEN} caracteres")]
    BadBoundary,
    #[error("los encabezados de una parte superan {MAX_PART_HEADER_BYTES} bytes o {MAX_PART_HEADERS} líneas")]
    HeadersTooLarge,
    #[error("los encabezados de una parte están mal formados")]
    MalformedHeaders,
    #[error("una parte no tiene un encabezado Content-Disposition form-data con nombre")]
    UnnamedPart,
    #[error("un delimitador va seguido de algo que no es un salto de línea ni su cierre")]
    BadDelimiter,
    #[error("el cuerpo terminó antes del delimitador final")]
    Incomplete,
}

/// What a part declares about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    /// The form field's name (`Content-Disposition: form-data; name="..."`).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins; its data follows as `Data` events up to `PartEnd`.
    Part(PartHead),
    /// The next piece of the current part's data, never empty.
    Data(Bytes),
    /// The current part ended.
    PartEnd,
    /// The closing delimiter: the form is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: the body may open with the first delimiter, without a line break.
    Start,
    /// Skipping a preamble up to the first delimiter.
    Preamble,
    /// Just past a delimiter: `--` closes the form, a line break opens a part.
    AfterDelimiter,
    Headers,
    Data,
    /// A part's last data was handed out; its end comes next.
    DataEnded,
    End,
}

pub struct Parser {
    /// `\r\n--<boundary>`, which ends a part's data.
    delimiter: Vec<u8>,
    finder: Finder<'static>,
    /// Input fed but not yet handed out.
    held: Bytes,
    /// How much of `held` was searched for the end of a header block.
    header_scanned: usize,
    state: State,
}

impl Parser {
    pub fn new(boundary: &str) -> Result<Self, MultipartError> {
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
            return Err(MultipartError::BadBoundary);
        }
        let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
        Ok(Self {
            finder: Finder::new(&delimiter).into_owned(),
            delimiter,
            held: Bytes::new(),
            header_scanned: 0,
            state: State::Start,
        })
    }

    /// Gives the parser the next chunk of the body.
    pub fn feed(&mut self, chunk: Bytes) {
        if self.state == State::End {
            // The epilogue after the closing delimiter means nothing.
            return;
        }
        if self.held.is_empty() {
            self.held = chunk;
            return;
        }
        // Held bytes of our own (from an earlier join) grow in place, so a header block that
        // trickles in byte by byte is not copied again at each byte.
        self.held = match std::mem::take(&mut self.held).try_into_mut() {
            Ok(mut own) => {
                own.extend_from_slice(&chunk);
                own.freeze()
            }
            Err(shared) => {
                let mut joined = BytesMut::with_capacity(shared.len() + chunk.len());
                joined.extend_from_slice(&shared);
                joined.extend_from_slice(&chunk);
                joined.freeze()
            }
        };
    }

    /// Bytes fed and not yet handed out.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// The body ended: an error unless the form was closed.
    pub fn finish(&self) -> Result<(), MultipartError> {
        match self.state {
            State::End => Ok(()),
            _ => Err(MultipartError::Incomplete),
        }
    }

    /// The next event the input fed so far completes, or `None` when it needs more input.
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        loop {
            match self.state {
                State::Start => {
                    let opening = &self.delimiter[2..];
                    let seen = opening.len().min(self.held.len());
                    if self.held[..seen] != opening[..seen] {
                        self.state = State::Preamble;
                    } else if seen < opening.len() {
                        return Ok(None);
                    } else {
                        self.held.advance(opening.len());
                        self.state = State::AfterDelimiter;
                    }
                }
                State::Preamble => match self.take_data() {
                    (_, true) => self.state = State::AfterDelimiter,
                    (_, false) => return Ok(None),
                },
                State::AfterDelimiter => {
                    if self.held.len() < 2 {
                        return Ok(None);
                    }
                    if self.held.starts_with(b"--") {
                        self.state = State::End;
                        self.held = Bytes::new();
                        return Ok(Some(Event::End));
                    }
                    let padding = self
                        .held
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    if padding > MAX_TRANSPORT_PADDING {
                        return Err(MultipartError::BadDelimiter);
                    }
                    if self.held.len() < padding + 2 {
                        return Ok(None);
                    }
                    if &self.held[padding..padding + 2] != b"\r\n" {
                        return Err(MultipartError::BadDelimiter);
                    }
                    self.held.advance(padding + 2);
                    self.state = State::Headers;
                }
                State::Headers => {
                    // The block ends at its first blank line. Only bytes not searched yet are
                    // searched, and `httparse` runs once, on the whole block, so a block that
                    // trickles in costs time in proportion to its length.
                    let Some(end) = self.header_block_end() else {
                        if self.held.len() > MAX_PART_HEADER_BYTES {
                            return Err(MultipartError::HeadersTooLarge);
                        }
                        self.header_scanned = self.held.len();
                        return Ok(None);
                    };
                    if end > MAX_PART_HEADER_BYTES {
                        return Err(MultipartError::HeadersTooLarge);
                    }
                    let mut lines = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
                    let head = match httparse::parse_headers(&self.held[..end], &mut lines) {
                        Ok(httparse::Status::Complete((_, parsed))) => part_head(parsed)?,
                        Ok(httparse::Status::Partial) => {
                            return Err(MultipartError::MalformedHeaders)
                        }
                        Err(httparse::Error::TooManyHeaders) => {
                            return Err(MultipartError::HeadersTooLarge)
                        }
                        Err(_) => return Err(MultipartError::MalformedHeaders),
                    };
                    self.held.advance(end);
                    self.header_scanned = 0;
                    self.state = State::Data;
                    return Ok(Some(Event::Part(head)));
                }
                State::Data => {
                    let (data, ended) = self.take_data();
                    if ended {
                        self.state = State::DataEnded;
                    }
                    if !data.is_empty() {
                        return Ok(Some(Event::Data(data)));
                    }
                    if !ended {
                        return Ok(None);
                    }
                }
                State::DataEnded => {
                    self.state = State::AfterDelimiter;
                    return Ok(Some(Event::PartEnd));
                }
                State::End => return Ok(None),
            }
        }
    }

    /// Where the header block held ends (past its blank line), if it is all there.
    fn header_block_end(&self) -> Option<usize> {
        if self.held.starts_with(b"\r\n") {
            return Some(2);
        }
        let from = self.header_scanned.saturating_sub(3);
        memchr::memmem::find(&self.held[from..], b"\r\n\r\n").map(|at| from + at + 4)
    }

    /// Takes the data held before the next delimiter, consuming the delimiter if it is there
    /// (`true`). Without one, holds back only what may be the start of a delimiter cut by the
    /// chunk's end.
    fn take_data(&mut self) -> (Bytes, bool) {
        if let Some(at) = self.finder.find(&self.held) {
            let data = self.held.split_to(at);
            self.held.advance(self.delimiter.len());
            return (data, true);
        }
        let keep = partial_delimiter_at_end(&self.held, &self.delimiter);
        (self.held.split_to(self.held.len() - keep), false)
    }
}

/// Length of the longest end of `data` that is a beginning of `delimiter` (shorter than it).
/// Such an end starts with the delimiter's `\r`, so only those are tried, longest first.
fn partial_delimiter_at_end(data: &[u8], delimiter: &[u8]) -> usize {
    let tail = &data[data.len() - data.len().min(delimiter.len() - 1)..];
    memchr::memchr_iter(b'\r', tail)
        .map(|at| &tail[at..])
        .find(|end| delimiter.starts_with(end))
        .map_or(0, <[u8]>::len)
}

fn part_head(headers: &[httparse::Header<'_>]) -> Result<PartHead, MultipartError> {
    let disposition = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))
        .ok_or(MultipartError::UnnamedPart)?;
    // Only the field's name is used; a file name in another encoding than UTF-8 (some
    // clients send Latin-1) must not make the part unreadable.
    let value = String::from_utf8_lossy(disposition.value);
    let value = value.as_ref();
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::UnnamedPart);
    }
    let name = disposition_params(params)?
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("name"))
        .map(|(_, value)| value)
        .ok_or(MultipartError::UnnamedPart)?;
    Ok(PartHead { name })
}

/// The `key=value` parameters of a `Content-Disposition`, values unquoted.
fn disposition_params(mut rest: &str) -> Result<Vec<(&str, String)>, MultipartError> {
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(params);
        }
        let Some((key, after)) = rest.split_once('=') else {
            return Err(MultipartError::MalformedHeaders);
        };
        let key = key.trim();
        let after = after.trim_start();
        if let Some(quoted) = after.strip_prefix('"') {
            let (value, remainder) = quoted_string(quoted)?;
            params.push((key, value));
            rest = remainder;
        } else {
            let end = after.find(';').unwrap_or(after.len());
            params.push((key, after[..end].trim_end().to_string()));
            rest = &after[end..];
        }
    }
}

/// The value of a quoted string whose opening quote was just read, and what follows it.
/// A backslash escapes a quote or a backslash; before anything else it is kept, as browsers
/// send Windows paths in file names unescaped.
fn quoted_string(input: &str) -> Result<(String, &str), MultipartError> {
    let mut value = String::new();
    let mut chars = input.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &input[at + 1..])),
            '\\' if matches!(input[at + 1..].chars().next(), Some('"' | '\\')) => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            other => value.push(other),
        }
    }
    Err(MultipartError::MalformedHeaders)
}

/// The boundary of a `multipart/form-data` content type, if that is what it is.
pub fn form_data_boundary(content_type: &str) -> Option<String> {
    let mime: mime::Mime = content_type.parse().ok()?;
    if mime.type_() != mime::MULTIPART || mime.subtype() != mime::FORM_DATA {
        return None;
    }
    let boundary = mime.get_param(mime::BOUNDARY)?.as_str();
    (!boundary.is_empty() && boundary.len() <= MAX_BOUNDARY_LEN).then(|| boundary.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every event `body` gives when fed in `chunk_sizes` pieces (cycled), with data events
    /// joined per part, then whether the form was complete.
    fn parse(
        boundary: &str,
        body: &[u8],
        chunk_sizes: &[usize],
    ) -> Result<Vec<(String, Vec<u8>)>, MultipartError> {
        let mut parser = Parser::new(boundary)?;
        let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
        let mut sizes = chunk_sizes.iter().cycle();
        let mut rest = body;
        loop {
            while let Some(event) = parser.next_event()? {
                match event {
                    Event::Part(head) => parts.push((head.name, Vec::new())),
                    Event::Data(data) => {
                        assert!(!data.is_empty());
                        parts
                            .last_mut()
                            .expect("data inside a part")
                            .1
                            .extend_from_slice(&data)
                    }
                    Event::PartEnd | Event::End => {}
                }
            }
            if rest.is_empty() {
                parser.finish()?;
                return Ok(parts);
            }
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            parser.feed(Bytes::copy_from_slice(&rest[..size]));
            rest = &rest[size..];
        }
    }

    fn form(boundary: &str, preamble: &str, parts: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut body = preamble.as_bytes().to_vec();
        for (name, data) in parts {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    /// A client picks a boundary that none of its data holds.
    fn no_data_holds_the_delimiter(boundary: &str, parts: &[(String, Vec<u8>)]) -> bool {
        let delimiter = format!("\r\n--{boundary}");
        parts
            .iter()
            .all(|(_, data)| memchr::memmem::find(data, delimiter.as_bytes()).is_none())
    }

    /// Field data that often comes close to the delimiter, and may hold it (such cases are
    /// discarded: no client would choose that boundary).
    fn tricky_data(boundary: String) -> impl Strategy<Value = Vec<u8>> {
        let near_misses = vec![
            b"\r".to_vec(),
            b"\r\n".to_vec(),
            b"\r\n-".to_vec(),
            b"\r\n--".to_vec(),
            format!("\r\n--{}", &boundary[..boundary.len() - 1]).into_bytes(),
            format!("--{boundary}").into_bytes(),
        ];
        proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::sample::select(near_misses),
            ],
            0..12,
        )
        .prop_map(|pieces| pieces.concat())
    }

    /// A boundary, a preamble, the fields, and the sizes of the chunks the body arrives in.
    type Case = (String, String, Vec<(String, Vec<u8>)>, Vec<usize>);

    fn case() -> impl Strategy<Value = Case> {
        "[A-Za-z0-9'()+_,.-]{1,70}".prop_flat_map(|boundary| {
            (
                Just(boundary.clone()),
                prop_oneof![Just(String::new()), "[a-z \r\n]{1,40}\r\n"],
                proptest::collection::vec(("[a-z_]{1,12}", tricky_data(boundary)), 0..5),
                proptest::collection::vec(1usize..300, 1..8),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever the chunking, every part comes out whole, with its name, in order.
        #[test]
        fn parts_come_out_whole_whatever_the_chunking((boundary, preamble, parts, sizes) in case()) {
            prop_assume!(no_data_holds_the_delimiter(&boundary, &parts));
            let body = form(&boundary, &preamble, &parts);
            prop_assert_eq!(parse(&boundary, &body, &sizes)?, parts.clone());
            prop_assert_eq!(parse(&boundary, &body, &[body.len()])?, parts);
        }

        /// A form cut anywhere before its closing delimiter is incomplete, never accepted.
        #[test]
        fn a_form_cut_short_is_incomplete((boundary, preamble, parts, sizes) in case(), cut in any::<prop::sample::Index>()) {
            prop_assume!(no_data_holds_the_delimiter(&boundary, &parts));
            let body = form(&boundary, &preamble, &parts);
            // The body ends with `--<boundary>--\r\n`: cut anywhere before its last `-`.
            let closing_starts = body.len() - format!("--{boundary}--\r\n").len();
            let cut = cut.index(closing_starts + boundary.len() + 4);
            let parsed = parse(&boundary, &body[..cut], &sizes);
            prop_assert_eq!(parsed, Err(MultipartError::Incomplete));
        }
    }

    #[test]
    fn preamble_padding_and_epilogue_are_passed_over() {
        // The preamble opens like the delimiter without being it; the delimiters carry
        // transport padding; an epilogue follows the close.
        let body = b"--b\r\n-bb\r\n--bb \t\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--bb\t\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n\r\n--bb--\r\nepilogue\r\n--bb\r\n";
        let expected = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), Vec::new()),
        ];
        for size in [1, 2, 3, 7, body.len()] {
            assert_eq!(
                parse("bb", body, &[size]),
                Ok(expected.clone()),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_header_block_fed_byte_by_byte_gives_its_part_at_its_last_byte() {
        let head = b"--b\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"v.mp4\"\r\nContent-Type: video/mp4\r\n\r\n";
        let mut parser = Parser::new("b").unwrap();
        for (i, byte) in head.iter().enumerate() {
            parser.feed(Bytes::copy_from_slice(&[*byte]));
            let expected = (i + 1 == head.len()).then(|| {
                Event::Part(PartHead {
                    name: "video_file".into(),
                })
            });
            assert_eq!(parser.next_event(), Ok(expected), "after byte {i}");
        }
        assert_eq!(parser.held_bytes(), 0);
    }

    #[test]
    fn data_is_handed_out_as_slices_of_the_chunks_fed() {
        let file = vec![7u8; 1 << 20];
        let body = form("b0undary", "", &[("video_file".into(), file.clone())]);
        let chunk = Bytes::from(body);
        let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
        let mut parser = Parser::new("b0undary").unwrap();
        parser.feed(chunk.clone());
        assert!(matches!(parser.next_event(), Ok(Some(Event::Part(_)))));
        let Ok(Some(Event::Data(data))) = parser.next_event() else {
            panic!("data expected");
        };
        assert_eq!(data, file);
        assert!(
            range.contains(&(data.as_ptr() as usize)),
            "the data was copied"
        );
        assert_eq!(parser.next_event(), Ok(Some(Event::PartEnd)));
        assert_eq!(parser.next_event(), Ok(Some(Event::End)));
        parser.finish().unwrap();
    }

    #[test]
    fn held_back_bytes_stay_within_a_delimiter_while_data_streams() {
        let mut parser = Parser::new("xyz").unwrap();
        parser.feed(Bytes::from_static(
            b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n",
        ));
        assert!(matches!(parser.next_event(), Ok(Some(Event::Part(_)))));
        for _ in 0..100 {
            let mut chunk = vec![1u8; 64 * 1024];
            chunk.extend_from_slice(b"\r\n--x");
            parser.feed(Bytes::from(chunk));
            assert!(matches!(parser.next_event(), Ok(Some(Event::Data(_)))));
            assert_eq!(parser.next_event(), Ok(None));
            assert_eq!(parser.held_bytes(), 5);
        }
    }

    #[test]
    fn headers_that_never_end_are_refused_once_past_the_limit() {
        let mut parser = Parser::new("b").unwrap();
        parser.feed(Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\nX: ",
        ));
        let mut fed = 0;
        let error = loop {
            match parser.next_event() {
                Ok(None) => {}
                Ok(Some(event)) => panic!("{event:?}"),
                Err(e) => break e,
            }
            assert!(parser.held_bytes() <= MAX_PART_HEADER_BYTES + 1024);
            parser.feed(Bytes::from(vec![b'a'; 1024]));
            fed += 1024;
            assert!(fed < 4 * MAX_PART_HEADER_BYTES, "never refused");
        };
        assert_eq!(error, MultipartError::HeadersTooLarge);
    }

    #[test]
    fn malformed_forms_get_their_own_errors() {
        let cases: [(&[u8], MultipartError); 5] = [
            (
                b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--",
                MultipartError::UnnamedPart,
            ),
            (
                b"--b\r\nContent-Disposition: attachment; name=\"x\"\r\n\r\nx\r\n--b--",
                MultipartError::UnnamedPart,
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"x\r\n\r\nx\r\n--b--",
                MultipartError::MalformedHeaders,
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nx\r\n--bogus",
                MultipartError::BadDelimiter,
            ),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nx",
                MultipartError::Incomplete,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse("b", body, &[3]),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn disposition_parameters_are_unquoted_in_any_order() {
        let head = |value: &str| {
            let headers = [httparse::Header {
                name: "content-disposition",
                value: value.as_bytes(),
            }];
            part_head(&headers).map(|h| h.name)
        };
        assert_eq!(head("form-data; name=\"title\""), Ok("title".into()));
        assert_eq!(
            head("Form-Data; filename=\"a;b.mp4\"; NAME=video_file"),
            Ok("video_file".into())
        );
        assert_eq!(head("form-data; name=\"a\\\"b\""), Ok("a\"b".into()));
        assert_eq!(
            head("form-data; filename=\"C:\\x.mp4\"; name=\"f\""),
            Ok("f".into())
        );
        assert_eq!(
            head("form-data; filename=\"x.mp4\""),
            Err(MultipartError::UnnamedPart)
        );
        assert_eq!(
            head("form-data; name"),
            Err(MultipartError::MalformedHeaders)
        );
    }

    #[test]
    fn a_file_name_that_is_not_utf8_does_not_hide_the_field_name() {
        // "jugada\xf1.mp4": an n with tilde in Latin-1, as some clients send it.
        let body = b"--b\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"jugada\xf1.mp4\"\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(
            parse("b", body, &[5]),
            Ok(vec![("video_file".to_string(), b"x".to_vec())])
        );
    }

    #[test]
    fn only_form_data_content_types_give_a_boundary() {
        assert_eq!(
            form_data_boundary("multipart/form-data; boundary=abc"),
            Some("abc".into())
        );
        assert_eq!(
            form_data_boundary("multipart/form-data; boundary=\"a b:c\""),
            Some("a b:c".into())
        );
        assert_eq!(
            form_data_boundary("Multipart/Form-Data;boundary=X"),
            Some("X".into())
        );
        assert_eq!(form_data_boundary("multipart/mixed; boundary=abc"), None);
        assert_eq!(form_data_boundary("multipart/form-data"), None);
        assert_eq!(form_data_boundary("application/json"), None);
        assert_eq!(
            form_data_boundary(&format!("multipart/form-data; boundary={}", "a".repeat(71))),
            None
        );
    }
}
