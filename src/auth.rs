//! Identity: argon2id password hashes, HS256 access tokens, and the server secret they share
//! with signed media URLs.
//!
//! Hashing is deliberately expensive, so it runs on blocking threads behind a semaphore sized to
//! the machine: a burst of logins queues here instead of starving the request threads.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::domain::UserId;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("the password hashing queue is full")]
    Busy,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// Issued access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_in: u64,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    hashing: Arc<Semaphore>,
    hashing_waiters: Arc<AtomicUsize>,
    max_hashing_waiters: usize,
}

/// The server secret: the configured one, or one generated on first start and kept in the data
/// directory (mode 0600) so that tokens and signed URLs survive restarts.
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> std::io::Result<Vec<u8>> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return hex::decode(text.trim())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("secret.key.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(hex::encode(&secret).as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(secret)
}

impl Auth {
    pub fn new(secret: &[u8], ttl: Duration, max_concurrent_hashes: usize) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            hashing: Arc::new(Semaphore::new(max_concurrent_hashes)),
            hashing_waiters: Arc::new(AtomicUsize::new(0)),
            max_hashing_waiters: max_concurrent_hashes * WAITERS_PER_PERMIT,
        }
    }

    pub fn issue(&self, user: UserId) -> AccessToken {
        let now = now_secs();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail");
        AccessToken {
            token,
            expires_in: self.ttl.as_secs(),
        }
    }

    /// Issues a token with an explicit expiry (seconds since the epoch); used to test expiry.
    pub fn issue_expiring_at(&self, user: UserId, exp: u64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            iat: now_secs(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }

    /// Verifies an `Authorization` header value and returns the user id it names.
    pub fn verify_header(&self, header: Option<&str>) -> Result<UserId, AuthError> {
        let value = header.ok_or(AuthError::MissingToken)?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::InvalidToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::InvalidToken);
        }
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map_err(|_| AuthError::InvalidToken)?;
        data.claims.sub.parse().map_err(|_| AuthError::InvalidToken)
    }

    pub async fn hash_password(&self, password: String) -> Result<String, AuthError> {
        self.on_hashing_thread(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Hashing(e.to_string()))
        })
        .await
    }

    /// Constant work whether or not the user exists: callers pass `None` for an unknown email
    /// and a dummy hash is verified instead, so timing does not reveal registered emails.
    pub async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, AuthError> {
        self.on_hashing_thread(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
            let parsed = PasswordHash::new(&hash).map_err(|e| AuthError::Hashing(e.to_string()))?;
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(known && ok)
        })
        .await
    }

    /// Runs argon2 work on a blocking thread once a hashing permit is free. A request that
    /// would wait behind too many others, or too long, is refused ([`AuthError::Busy`]: 503)
    /// instead of queueing without bound.
    async fn on_hashing_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _waiting = WaitingTicket::take(&self.hashing_waiters, self.max_hashing_waiters)
            .ok_or(AuthError::Busy)?;
        let permit = tokio::time::timeout(MAX_HASHING_WAIT, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        drop(_waiting);
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
        result
    }
}

/// Longest wait for a hashing permit before the request is refused.
const MAX_HASHING_WAIT: Duration = Duration::from_secs(5);
/// Requests allowed to wait per hashing permit.
const WAITERS_PER_PERMIT: usize = 32;

/// One request waiting for a hashing permit; counted for as long as it lives.
struct WaitingTicket(Arc<AtomicUsize>);

impl WaitingTicket {
    fn take(waiters: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let before = waiters.fetch_add(1, Ordering::AcqRel);
        let ticket = WaitingTicket(waiters.clone());
        (before < max).then_some(ticket)
    }
}

impl Drop for WaitingTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// argon2id hash (default parameters) of a random password nobody knows.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hvd2Nhc2VkdW1teQ$Qy2f0p7WbnnJkZ0xwzQm6v0oq3W6bT0r4m7mB8Ue0bU";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"test-secret", Duration::from_secs(60), 1)
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let a = auth();
        let t = a.issue(7).token;
        assert_eq!(a.verify_header(Some(&format!("Bearer {t}"))).unwrap(), 7);
        assert_eq!(a.verify_header(Some(&format!("bearer {t}"))).unwrap(), 7);
        let mut tampered = t.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(a
            .verify_header(Some(&format!("Bearer {tampered}")))
            .is_err());
        assert!(a.verify_header(Some(&t)).is_err());
        assert!(matches!(
            a.verify_header(None),
            Err(AuthError::MissingToken)
        ));
        let other = Auth::new(b"other", Duration::from_secs(60), 1);
        assert!(other.verify_header(Some(&format!("Bearer {t}"))).is_err());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let a = auth();
        let t = a.issue_expiring_at(7, now_secs() - 1);
        assert!(a.verify_header(Some(&format!("Bearer {t}"))).is_err());
    }

    #[tokio::test]
    async fn passwords_verify_only_with_the_right_password() {
        let a = auth();
        let h = a.hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(a
            .verify_password("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!a
            .verify_password("wrong horse".into(), Some(h))
            .await
            .unwrap());
        assert!(!a
            .verify_password("correct horse".into(), None)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn hashing_beyond_the_waiting_room_is_refused_not_queued() {
        let a = Arc::new(Auth::new(b"s", Duration::from_secs(60), 1));
        // 1 running + 32 waiting fit; everything beyond is refused at once.
        let attempts: Vec<_> = (0..60)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.hash_password("long enough".into()).await })
            })
            .collect();
        let mut busy = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(hash) => assert!(hash.starts_with("$argon2id$")),
                Err(AuthError::Busy) => busy += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert!(busy > 0, "no request was refused");
        assert!(busy <= 60 - 1 - WAITERS_PER_PERMIT, "{busy} refused");
    }

    #[test]
    fn generated_secret_is_persisted_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s1 = load_or_create_secret("", dir.path()).unwrap();
        let s2 = load_or_create_secret("", dir.path()).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 32);
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_secret("abc", dir.path()).unwrap(), b"abc");
    }
}
