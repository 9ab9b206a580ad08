//! Reading request bodies with bounds: a size limit (checked against `Content-Length` before a
//! byte is read, then counted while reading) and an idle timeout between chunks, so a client
//! can neither make us buffer without limit nor hold a handler by sending nothing.
//!
//! Errors are [`BodyError`]s; `error.rs` gives each its status.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

/// A request body as a stream of the chunks the connection received.
pub type BodyStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>>;

/// Turns a request body into a [`BodyStream`] without copying.
pub fn stream_of<B>(body: B) -> BodyStream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

/// Why a body or one of its fields was refused. The text is the answer's `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("El cuerpo de la solicitud supera el máximo de {0} bytes.")]
    TooLarge(u64),
    #[error("El cliente dejó de enviar el cuerpo.")]
    Idle,
    #[error("El cuerpo de la solicitud llegó incompleto.")]
    Incomplete,
    #[error("El cuerpo debe ser un objeto JSON.")]
    NotAnObject,
    #[error("El cuerpo no es JSON válido: {0}.")]
    NotJson(String),
    #[error("El formulario no es texto UTF-8.")]
    FormNotUtf8,
    #[error("El campo '{0}' es obligatorio.")]
    Missing(String),
    #[error("El campo '{0}' debe ser un texto.")]
    NotText(String),
    #[error("El campo '{0}' aparece más de una vez.")]
    Repeated(String),
}

/// Reads a whole (small) body.
pub async fn read_limited(
    mut body: BodyStream,
    content_length: Option<u64>,
    limit: u64,
    idle: Duration,
) -> Result<Bytes, BodyError> {
    if content_length.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut out = BytesMut::new();
    loop {
        let next = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| BodyError::Idle)?;
        match next {
            None => return Ok(out.freeze()),
            Some(Ok(chunk)) => {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(_)) => return Err(BodyError::Incomplete),
        }
    }
}

/// A JSON object body; fields are read by name with messages that name the field.
#[derive(Debug)]
pub struct JsonObject(Map<String, Value>);

impl JsonObject {
    pub fn parse(bytes: &[u8]) -> Result<Self, BodyError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(BodyError::NotAnObject),
            Err(e) => Err(BodyError::NotJson(e.to_string())),
        }
    }

    /// A required string field.
    pub fn string(&self, field: &str) -> Result<String, BodyError> {
        match self.0.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(BodyError::Missing(field.into())),
            Some(_) => Err(BodyError::NotText(field.into())),
        }
    }
}

/// An `application/x-www-form-urlencoded` body; fields are read by name, and a field sent
/// twice is refused rather than guessed at.
#[derive(Debug)]
pub struct FormFields(Vec<(String, String)>);

impl FormFields {
    pub fn parse(bytes: &[u8]) -> Result<Self, BodyError> {
        if std::str::from_utf8(bytes).is_err() {
            return Err(BodyError::FormNotUtf8);
        }
        Ok(Self(form_urlencoded::parse(bytes).into_owned().collect()))
    }

    /// A field that may be absent.
    pub fn optional(&self, field: &str) -> Result<Option<String>, BodyError> {
        crate::signed_url::only_value(&self.0, field)
            .map(|value| value.map(str::to_string))
            .map_err(|_| BodyError::Repeated(field.into()))
    }

    /// A required field.
    pub fn string(&self, field: &str) -> Result<String, BodyError> {
        self.optional(field)?
            .ok_or_else(|| BodyError::Missing(field.into()))
    }
}

/// Whether the request declares a form-urlencoded body.
pub fn is_form_urlencoded(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The `Content-Length` of a request, when it sent a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(chunks: Vec<&'static [u8]>) -> BodyStream {
        Box::pin(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn limits_apply_to_declared_and_counted_lengths() {
        let idle = Duration::from_secs(1);
        let ok = read_limited(chunks_of(vec![b"ab", b"cd"]), None, 4, idle)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"abcd");
        let counted = read_limited(chunks_of(vec![b"ab", b"cde"]), None, 4, idle).await;
        assert!(matches!(counted, Err(BodyError::TooLarge(4))));
        let declared = read_limited(chunks_of(vec![]), Some(5), 4, idle).await;
        assert!(matches!(declared, Err(BodyError::TooLarge(4))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let silent: BodyStream = Box::pin(futures_util::stream::pending());
        let result = read_limited(silent, None, 10, Duration::from_secs(5)).await;
        assert!(matches!(result, Err(BodyError::Idle)));
    }

    #[test]
    fn json_fields_are_named_in_errors() {
        let obj = JsonObject::parse(br#"{"a":"x","b":3}"#).unwrap();
        assert_eq!(obj.string("a").unwrap(), "x");
        assert!(obj.string("b").unwrap_err().to_string().contains("'b'"));
        assert!(obj.string("c").unwrap_err().to_string().contains("'c'"));
        assert!(JsonObject::parse(b"[1]").is_err());
        assert!(JsonObject::parse(b"{").is_err());
    }

    #[test]
    fn form_fields_are_decoded_and_never_guessed() {
        let form = FormFields::parse(b"username=ana%40example.com&password=a+b%26c").unwrap();
        assert_eq!(form.string("username").unwrap(), "ana@example.com");
        assert_eq!(form.string("password").unwrap(), "a b&c");
        assert_eq!(form.optional("email").unwrap(), None);
        assert!(form
            .string("email")
            .unwrap_err()
            .to_string()
            .contains("'email'"));
        let twice = FormFields::parse(b"password=a&password=b").unwrap();
        assert!(twice.string("password").is_err());
        // Raw bytes must be UTF-8; percent-escapes decode lossily (a wrong password, not a 500).
        assert!(FormFields::parse(b"password=%FF").is_ok());
        assert!(FormFields::parse(&[b'a', b'=', 0xff]).is_err());
    }
}
