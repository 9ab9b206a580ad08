//! Reading a multipart upload form with bounds that multer alone does not give.
//!
//! - **Buffering.** multer buffers without limit while it looks for the end of a part's headers
//!   (or of the preamble). The body is therefore fed to it through [`Metered`], which stops
//!   feeding (backpressure) while more than [`MAX_BUFFERED_BYTES`] have gone in without coming
//!   out as field data; a form that never ends its headers then stalls and hits the idle timeout
//!   instead of growing in memory.
//! - **Pace.** Besides the idle timeout between chunks, an upload must keep an average rate of
//!   `upload.min_bytes_per_s` once `upload.rate_grace_s` have passed, so a trickling client
//!   cannot hold an upload slot for long.
//! - **Shape.** At most [`MAX_FIELDS`] fields.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

use super::body::BodyStream;
use super::error::ApiError;

/// Bytes that may sit inside multer (fed, not yet handed out as field data).
pub const MAX_BUFFERED_BYTES: u64 = 1024 * 1024;
/// Fields accepted in one form (the contract has two).
pub const MAX_FIELDS: usize = 8;

/// The request body as fed to multer, stopping while too much is buffered inside it.
struct Metered {
    inner: BodyStream,
    fed: u64,
    delivered: Arc<AtomicU64>,
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let buffered = self
            .fed
            .saturating_sub(self.delivered.load(Ordering::Relaxed));
        if buffered > MAX_BUFFERED_BYTES {
            // No waker is registered: multer is polled again when its consumer asks for data,
            // and that consumer's idle timeout ends a form that makes no progress.
            return Poll::Pending;
        }
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.fed += chunk.len() as u64;
        }
        polled
    }
}

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

pub struct FormReader {
    multipart: multer::Multipart<'static>,
    delivered: Arc<AtomicU64>,
    limits: FormLimits,
    started: Instant,
    fields: usize,
}

fn idle_timeout() -> ApiError {
    ApiError::RequestTimeout("El cliente dejó de enviar el archivo.".into())
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(_) => {
            ApiError::bad_request("La subida se interrumpió antes de terminar.")
        }
        other => ApiError::bad_request(format!("Cuerpo multipart inválido: {other}.")),
    }
}

impl FormReader {
    pub fn new(body: BodyStream, boundary: String, limits: FormLimits) -> Self {
        let delivered = Arc::new(AtomicU64::new(0));
        let metered = Metered {
            inner: body,
            fed: 0,
            delivered: delivered.clone(),
        };
        let constraints = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(limits.max_body_bytes));
        Self {
            multipart: multer::Multipart::with_constraints(metered, boundary, constraints),
            delivered,
            limits,
            started: Instant::now(),
            fields: 0,
        }
    }

    pub async fn next_field(&mut self) -> Result<Option<multer::Field<'static>>, ApiError> {
        let next = tokio::time::timeout(self.limits.idle, self.multipart.next_field())
            .await
            .map_err(|_| idle_timeout())?
            .map_err(multipart_error)?;
        if next.is_some() {
            self.fields += 1;
            if self.fields > MAX_FIELDS {
                return Err(ApiError::bad_request(format!(
                    "El formulario tiene más de {MAX_FIELDS} campos."
                )));
            }
        }
        Ok(next)
    }

    /// The next chunk of `field`, or `None` at its end.
    pub async fn next_chunk(
        &mut self,
        field: &mut multer::Field<'static>,
    ) -> Result<Option<Bytes>, ApiError> {
        let chunk = tokio::time::timeout(self.limits.idle, field.chunk())
            .await
            .map_err(|_| idle_timeout())?
            .map_err(multipart_error)?;
        if let Some(chunk) = &chunk {
            let delivered = self
                .delivered
                .fetch_add(chunk.len() as u64, Ordering::Relaxed)
                + chunk.len() as u64;
            self.check_pace(delivered, self.started.elapsed())?;
        }
        Ok(chunk)
    }

    fn check_pace(&self, delivered: u64, elapsed: Duration) -> Result<(), ApiError> {
        too_slow(delivered, elapsed, &self.limits).map_or(Ok(()), Err)
    }
}

/// The refusal for an upload that fell below the minimum average rate, if it did.
fn too_slow(delivered: u64, elapsed: Duration, limits: &FormLimits) -> Option<ApiError> {
    if elapsed <= limits.rate_grace {
        return None;
    }
    let required = limits.min_bytes_per_s as f64 * elapsed.as_secs_f64();
    (required > delivered as f64).then(|| {
        ApiError::RequestTimeout(format!(
            "La subida es demasiado lenta: se requieren al menos {} KiB/s.",
            limits.min_bytes_per_s / 1024
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn limits() -> FormLimits {
        FormLimits {
            max_body_bytes: 1 << 30,
            idle: Duration::from_secs(1),
            min_bytes_per_s: 1000,
            rate_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn pace_is_judged_only_after_the_grace_period() {
        let l = limits();
        assert!(too_slow(0, Duration::from_secs(10), &l).is_none());
        assert!(too_slow(20_000, Duration::from_secs(20), &l).is_none());
        assert!(too_slow(19_000, Duration::from_secs(20), &l).is_some());
    }

    #[tokio::test]
    async fn the_meter_stops_feeding_while_too_much_is_undelivered() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..4)
            .map(|_| Ok(Bytes::from(vec![0u8; 600 * 1024])))
            .collect();
        let delivered = Arc::new(AtomicU64::new(0));
        let mut metered = Metered {
            inner: Box::pin(futures_util::stream::iter(chunks)),
            fed: 0,
            delivered: delivered.clone(),
        };
        assert!(metered.next().await.is_some());
        assert!(metered.next().await.is_some());
        // 1.2 MiB fed, nothing delivered: no more is read.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut metered).poll_next(&mut cx).is_pending());
        delivered.store(600 * 1024, Ordering::Relaxed);
        assert!(metered.next().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn headers_that_never_end_stall_and_time_out_in_bounded_memory() {
        // A part header that never ends: without the meter multer would buffer all of it.
        let mut chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\nX: ",
        ))];
        chunks.extend((0..64).map(|_| Ok(Bytes::from(vec![b'a'; 256 * 1024]))));
        let body: BodyStream = Box::pin(futures_util::stream::iter(chunks));
        let mut reader = FormReader::new(body, "b".into(), limits());
        let result = reader.next_field().await;
        assert!(
            matches!(result, Err(ApiError::RequestTimeout(_))),
            "{result:?}"
        );
    }
}
