//! Reading a multipart upload form from the request body, with the bounds an upload needs.
//!
//! The parsing is [`super::multipart`]'s, which hands out the file's bytes as slices of the
//! body's chunks, and whose memory is bounded by construction. Added here:
//!
//! - **Pace.** Besides the idle timeout between chunks, the body must keep coming at an average
//!   rate of `upload.min_bytes_per_s` once `upload.rate_grace_s` have passed, whatever part of
//!   the form it carries (preamble, headers, a skipped field, the file), so a trickling client
//!   cannot hold an upload slot for long.
//! - **Size.** The whole body, framing included, is counted as it arrives.
//! - **Shape.** At most [`MAX_FIELDS`] fields.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::body::BodyStream;
use super::multipart::{Event, MultipartError, Parser, PartHead};

/// The upload form's file field.
pub const FILE_FIELD: &str = "video_file";
/// The name many form-upload clients give the file (FastAPI's `UploadFile` examples).
pub const FILE_FIELD_ALIAS: &str = "file";
pub const TITLE_FIELD: &str = "title";

/// Fields accepted in one form (the contract has two).
pub const MAX_FIELDS: usize = 8;

#[derive(Debug, Clone)]
pub struct FormLimits {
    /// Whole body, framing included.
    pub max_body_bytes: u64,
    /// Longest silence between two chunks.
    pub idle: Duration,
    /// Slowest average rate accepted once `rate_grace` has passed.
    pub min_bytes_per_s: u64,
    pub rate_grace: Duration,
}

/// Why a form could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormError {
    #[error("Cuerpo multipart inválido: {0}.")]
    Malformed(#[from] MultipartError),
    #[error("El formulario tiene más de {MAX_FIELDS} campos.")]
    TooManyFields,
    #[error("El cuerpo de la solicitud supera el máximo de {0} bytes.")]
    TooLarge(u64),
    #[error("La subida se interrumpió antes de terminar.")]
    Interrupted,
    #[error("El cliente dejó de enviar el archivo.")]
    Idle,
    #[error("La subida es demasiado lenta: se requieren al menos {} KiB/s.", .0 / 1024)]
    TooSlow(u64),
}

pub struct FormReader {
    body: BodyStream,
    body_ended: bool,
    parser: Parser,
    limits: FormLimits,
    started: Instant,
    received: u64,
    fields: usize,
    in_field: bool,
    /// The closing delimiter was read: nothing more is read from the body.
    ended: bool,
}

impl FormReader {
    pub fn new(body: BodyStream, boundary: &str, limits: FormLimits) -> Result<Self, FormError> {
        Ok(Self {
            body,
            body_ended: false,
            parser: Parser::new(boundary)?,
            limits,
            started: Instant::now(),
            received: 0,
            fields: 0,
            in_field: false,
            ended: false,
        })
    }

    /// The next field's head, skipping what is left of the current one; `None` once the form
    /// is closed.
    pub async fn next_field(&mut self) -> Result<Option<PartHead>, FormError> {
        self.in_field = false;
        loop {
            if self.ended {
                return Ok(None);
            }
            match self.next_event().await? {
                Event::Part(head) => {
                    self.fields += 1;
                    if self.fields > MAX_FIELDS {
                        return Err(FormError::TooManyFields);
                    }
                    self.in_field = true;
                    return Ok(Some(head));
                }
                Event::Data(_) | Event::PartEnd => {}
                Event::End => self.ended = true,
            }
        }
    }

    /// The next chunk of the current field, or `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FormError> {
        if !self.in_field {
            return Ok(None);
        }
        match self.next_event().await? {
            Event::Data(chunk) => Ok(Some(chunk)),
            Event::PartEnd => {
                self.in_field = false;
                Ok(None)
            }
            Event::End => {
                self.in_field = false;
                self.ended = true;
                Ok(None)
            }
            // The parser ends every part before the next begins, and `in_field` is only set
            // between a part's head and its end.
            Event::Part(_) => unreachable!("a part begins only after the previous one ended"),
        }
    }

    async fn next_event(&mut self) -> Result<Event, FormError> {
        loop {
            if let Some(event) = self.parser.next_event()? {
                return Ok(event);
            }
            if self.body_ended {
                self.parser.finish()?;
                return Ok(Event::End);
            }
            let next = tokio::time::timeout(self.limits.idle, self.body.next())
                .await
                .map_err(|_| FormError::Idle)?;
            match next {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    if self.received > self.limits.max_body_bytes {
                        return Err(FormError::TooLarge(self.limits.max_body_bytes));
                    }
                    if let Some(too_slow) =
                        too_slow(self.received, self.started.elapsed(), &self.limits)
                    {
                        return Err(too_slow);
                    }
                    self.parser.feed(chunk);
                }
                Some(Err(_)) => return Err(FormError::Interrupted),
                None => self.body_ended = true,
            }
        }
    }
}

/// The refusal for an upload that fell below the minimum average rate, if it did.
pub(super) fn too_slow(received: u64, elapsed: Duration, limits: &FormLimits) -> Option<FormError> {
    if elapsed <= limits.rate_grace {
        return None;
    }
    let required = limits.min_bytes_per_s as f64 * elapsed.as_secs_f64();
    (required > received as f64).then_some(FormError::TooSlow(limits.min_bytes_per_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FormLimits {
        FormLimits {
            max_body_bytes: 1 << 30,
            idle: Duration::from_secs(1),
            min_bytes_per_s: 1000,
            rate_grace: Duration::from_secs(10),
        }
    }

    fn reader(chunks: Vec<Result<Bytes, std::io::Error>>, limits: FormLimits) -> FormReader {
        let body: BodyStream = Box::pin(futures_util::stream::iter(chunks));
        FormReader::new(body, "b", limits).unwrap()
    }

    const FORM: &[u8] = b"--b\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nMate\r\n--b\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"v.mp4\"\r\n\r\n0123456789\r\n--b--\r\n";

    #[test]
    fn pace_is_judged_only_after_the_grace_period() {
        let l = limits();
        assert!(too_slow(0, Duration::from_secs(10), &l).is_none());
        assert!(too_slow(20_000, Duration::from_secs(20), &l).is_none());
        assert_eq!(
            too_slow(19_000, Duration::from_secs(20), &l),
            Some(FormError::TooSlow(1000))
        );
    }

    #[tokio::test]
    async fn fields_are_read_in_order_and_unread_ones_skipped() {
        let chunks = FORM
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut form = reader(chunks, limits());
        assert_eq!(form.next_field().await.unwrap().unwrap().name, "title");
        // The title is not read: asking for the next field skips it.
        assert_eq!(form.next_field().await.unwrap().unwrap().name, "video_file");
        let mut file = Vec::new();
        while let Some(chunk) = form.next_chunk().await.unwrap() {
            file.extend_from_slice(&chunk);
        }
        assert_eq!(file, b"0123456789");
        assert_eq!(form.next_chunk().await.unwrap(), None);
        assert_eq!(form.next_field().await.unwrap(), None);
        assert_eq!(form.next_field().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_while_it_streams() {
        let chunks = FORM
            .chunks(16)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut form = reader(
            chunks,
            FormLimits {
                max_body_bytes: 100,
                ..limits()
            },
        );
        assert_eq!(read_all(&mut form).await, Err(FormError::TooLarge(100)));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_or_ends_early_is_an_error() {
        let cut = &FORM[..FORM.len() - 12];
        let mut ended = reader(vec![Ok(Bytes::copy_from_slice(cut))], limits());
        assert_eq!(
            read_all(&mut ended).await,
            Err(FormError::Malformed(MultipartError::Incomplete))
        );
        let broken = vec![
            Ok(Bytes::copy_from_slice(cut)),
            Err(std::io::Error::other("reset")),
        ];
        assert_eq!(
            read_all(&mut reader(broken, limits())).await,
            Err(FormError::Interrupted)
        );
    }

    /// Reads every field head to the end of the form, skipping their data.
    async fn read_all(form: &mut FormReader) -> Result<(), FormError> {
        while form.next_field().await?.is_some() {}
        Ok(())
    }

    /// A whole form with one field more than allowed.
    fn too_many_fields() -> Bytes {
        let mut body = Vec::new();
        for i in 0..=MAX_FIELDS {
            body.extend_from_slice(
                format!("--b\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--b--\r\n");
        Bytes::from(body)
    }

    #[tokio::test]
    async fn more_fields_than_allowed_are_refused() {
        let mut form = reader(vec![Ok(too_many_fields())], limits());
        assert_eq!(read_all(&mut form).await, Err(FormError::TooManyFields));
    }

    /// A body that sends `head` at once, then `trickle` one byte every two seconds.
    fn trickling(head: &'static [u8], trickle: &'static [u8]) -> BodyStream {
        let first = futures_util::stream::iter([Ok(Bytes::from_static(head))]);
        let rest = futures_util::stream::unfold(0, move |i| async move {
            (i < trickle.len()).then_some(())?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some((Ok(Bytes::copy_from_slice(&trickle[i..i + 1])), i + 1))
        });
        Box::pin(first.chain(rest))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_refused_whatever_part_of_the_form_it_is_in() {
        // Within the idle timeout every time, but far below the minimum pace.
        let in_headers = trickling(
            b"--b\r\n",
            b"Content-Disposition: form-data; name=\"video_file\"\r\n\r\n",
        );
        let patient = FormLimits {
            idle: Duration::from_secs(30),
            ..limits()
        };
        let mut form = FormReader::new(in_headers, "b", patient.clone()).unwrap();
        assert_eq!(form.next_field().await, Err(FormError::TooSlow(1000)));

        let in_a_skipped_field = trickling(
            b"--b\r\nContent-Disposition: form-data; name=\"extra\"\r\n\r\n",
            b"ignored, but slowly..............................",
        );
        let mut form = FormReader::new(in_a_skipped_field, "b", patient).unwrap();
        assert_eq!(form.next_field().await.unwrap().unwrap().name, "extra");
        assert_eq!(form.next_field().await, Err(FormError::TooSlow(1000)));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_read_after_the_closing_delimiter() {
        // After the form, the body never ends: reading on would wait for the idle timeout.
        let body: BodyStream = Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(FORM))])
                .chain(futures_util::stream::pending()),
        );
        let mut form = FormReader::new(body, "b", limits()).unwrap();
        let started = tokio::time::Instant::now();
        while form.next_field().await.unwrap().is_some() {}
        assert_eq!(form.next_field().await, Ok(None));
        assert_eq!(form.next_chunk().await, Ok(None));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_refused_field_gives_no_data() {
        let mut form = reader(vec![Ok(too_many_fields())], limits());
        while let Ok(Some(_)) = form.next_field().await {}
        assert_eq!(form.next_chunk().await, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_times_out() {
        let first: Result<Bytes, std::io::Error> = Ok(Bytes::copy_from_slice(&FORM[..60]));
        let body: BodyStream = Box::pin(
            futures_util::stream::iter(vec![first]).chain(futures_util::stream::pending()),
        );
        let mut form = FormReader::new(body, "b", limits()).unwrap();
        form.next_field().await.unwrap();
        assert_eq!(
            form.next_chunk().await.unwrap().as_deref(),
            Some(&b"Mate"[..])
        );
        assert_eq!(form.next_chunk().await, Err(FormError::Idle));
    }
}
