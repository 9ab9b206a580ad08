//! The records the platform keeps and the small pure rules about them (name folding, time
//! formatting). No I/O here: the engine stores these types and the HTTP layer renders them.

use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

pub type UserId = u64;
pub type VideoId = u64;

/// Seconds since the Unix epoch, UTC.
pub type Timestamp = i64;

pub fn now_ts() -> Timestamp {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with a `Z` and whole seconds, e.g. `2026-11-22T14:10:43Z`.
pub fn format_ts(ts: Timestamp) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(ts).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

/// Folds a city name so that `Bogotá`, `bogota` and ` BOGOTÁ ` compare equal: Unicode
/// decomposition with combining marks removed, lower case, whitespace collapsed.
pub fn fold_name(name: &str) -> String {
    let stripped: String = name.nfd().filter(|c| !is_combining_mark(*c)).collect();
    stripped
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub first_name: String,
    pub last_name: String,
    /// Stored lower-cased; unique.
    pub email: String,
    pub password_hash: String,
    pub city: String,
    pub country: String,
    pub created_at: Timestamp,
}

impl User {
    pub fn display_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewUser {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub password_hash: String,
    pub city: String,
    pub country: String,
}

/// `uploaded` (stored, queued), `processing`, `processed` (published for voting) or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VideoStatus {
    /// Stored and its job queued.
    Uploaded,
    Processing,
    /// Published for voting.
    Processed,
    Failed,
}

impl VideoStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoStatus::Uploaded => "uploaded",
            VideoStatus::Processing => "processing",
            VideoStatus::Processed => "processed",
            VideoStatus::Failed => "failed",
        }
    }
}

/// What the probe learnt about an uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaInfo {
    pub size_bytes: u64,
    pub duration_s: f64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Video {
    pub id: VideoId,
    pub owner_id: UserId,
    pub title: String,
    pub status: VideoStatus,
    /// 0..=100 while processing.
    pub progress: u8,
    pub uploaded_at: Timestamp,
    pub processed_at: Option<Timestamp>,
    /// Identifier of the processing job, returned to the client as `task_id`.
    pub task_id: String,
    /// Blob key of the file as uploaded.
    pub original_key: String,
    pub original: MediaInfo,
    pub processed_key: Option<String>,
    pub poster_key: Option<String>,
    /// Hex content hash of the processed file (the strong ETag).
    pub content_hash: Option<String>,
    /// Hex content hash of the poster.
    #[serde(default)]
    pub poster_hash: Option<String>,
    /// Duration of the processed file, in seconds.
    #[serde(default)]
    pub processed_duration_s: Option<f64>,
    pub votes: u64,
    /// Why processing failed, when `status` is `failed`.
    pub error: Option<String>,
}

/// A finished upload, ready to be committed with its job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVideo {
    pub id: VideoId,
    pub owner_id: UserId,
    pub title: String,
    pub original_key: String,
    pub original: MediaInfo,
}

/// The outputs of a successful processing job.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub processed_key: String,
    pub poster_key: String,
    pub content_hash: String,
    pub poster_hash: String,
    pub duration_s: f64,
}

/// Where processing of a video stands, short of publication.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessingState {
    /// Waiting in the queue (first time or for a retry).
    Queued,
    Processing {
        progress: u8,
    },
    Failed {
        reason: String,
    },
}

/// One row of the rankings.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedPlayer {
    pub position: u64,
    pub user: User,
    pub votes: u64,
}

/// A slice of an ordered listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

/// Whether a name, place or title can be shown to others as typed: no control characters
/// or line and paragraph separators (line breaks, NUL, escapes) and no bidirectional
/// overrides or isolates, which can make a
/// listing display text in an order other than the one stored (a player appearing to be
/// another, a title hiding what follows it).
pub fn is_displayable(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displayable_text_has_no_controls_or_direction_overrides() {
        assert!(is_displayable("José Pérez · Bogotá D.C."));
        assert!(is_displayable("مرحبا 123 שלום"));
        for bad in [
            "a\u{2028}b",
            "a\nb",
            "a\0b",
            "\u{1b}[31mrojo",
            "admin\u{202E}nimda",
            "x\u{2067}y",
        ] {
            assert!(!is_displayable(bad), "{bad:?}");
        }
    }

    #[test]
    fn fold_name_ignores_accents_case_and_spacing() {
        assert_eq!(fold_name("Bogotá"), "bogota");
        assert_eq!(fold_name("  BOGOTÁ  "), "bogota");
        assert_eq!(fold_name("San   José"), "san jose");
        assert_ne!(fold_name("Cali"), fold_name("Cúcuta"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_z() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(1_795_356_643), "2026-11-22T14:10:43Z");
    }
}
