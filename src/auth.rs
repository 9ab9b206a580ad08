//! Identity: argon2id password hashes, HS256 access tokens, and the server secret they share
//! with signed media URLs.
//!
//! Hashing is deliberately expensive, so it runs on blocking threads behind a semaphore sized to
//! the machine: a burst of logins queues here instead of starving the request threads.
//!
//! argon2 needs 19 MiB of working memory per hash. The crate's `PasswordHasher` allocates it
//! afresh every time; freeing a block that large makes the allocator hand its pages back to the
//! kernel at once (with a TLB flush on every core), and the next hash faults them in again:
//! profiled during a login burst, that cost two-thirds as much CPU as argon2 itself. So hashes
//! are computed here through `hash_password_into_with_memory` on buffers kept in a small pool
//! ([`HashMemory`], one buffer per hashing permit at most), and written and checked as the
//! same PHC strings the crate produces.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Argon2, Block, Params, Version};
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
    /// The key of `encoding`, then the accepted one, if any (see [`Auth::accepting`]).
    decoding: Vec<DecodingKey>,
    validation: Validation,
    ttl: Duration,
    hashing: Arc<Semaphore>,
    hashing_waiters: Arc<AtomicUsize>,
    max_hashing_waiters: usize,
    hash_memory: Arc<HashMemory>,
}

/// Name of the generated secret in the data directory.
pub const SECRET_FILE: &str = "secret.key";

/// The server secret: the configured one, or one generated on first start and kept in the data
/// directory (mode 0600) so that tokens and signed URLs survive restarts.
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> std::io::Result<Vec<u8>> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
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
            decoding: vec![DecodingKey::from_secret(secret)],
            validation,
            ttl,
            hashing: Arc::new(Semaphore::new(max_concurrent_hashes)),
            hashing_waiters: Arc::new(AtomicUsize::new(0)),
            max_hashing_waiters: max_concurrent_hashes * WAITERS_PER_PERMIT,
            hash_memory: Arc::default(),
        }
    }

    /// Also accepts tokens signed with `secret`, and never signs with it: for rotating the
    /// secret across a fleet without logging anyone out (`auth.jwt_secret_accepted`).
    pub fn accepting(mut self, secret: &[u8]) -> Self {
        self.decoding.push(DecodingKey::from_secret(secret));
        self
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
        let data = self
            .decoding
            .iter()
            .find_map(|key| {
                jsonwebtoken::decode::<Claims>(token.trim(), key, &self.validation).ok()
            })
            .ok_or(AuthError::InvalidToken)?;
        data.claims.sub.parse().map_err(|_| AuthError::InvalidToken)
    }

    pub async fn hash_password(&self, password: String) -> Result<String, AuthError> {
        let memory = self.hash_memory.clone();
        self.on_hashing_thread(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let argon2 = Argon2::default();
            let params = argon2.params();
            let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
            let output =
                memory.compute(&argon2, password.as_bytes(), salt.as_salt(), output_len)?;
            let hash = PasswordHash {
                algorithm: argon2::Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(params).map_err(hashing_error)?,
                salt: Some(salt.as_salt()),
                hash: Some(output),
            };
            Ok(hash.to_string())
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
        let memory = self.hash_memory.clone();
        self.on_hashing_thread(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
            let parsed = PasswordHash::new(&hash).map_err(hashing_error)?;
            let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
                return Err(AuthError::Hashing(
                    "stored hash without salt or output".into(),
                ));
            };
            let algorithm = argon2::Algorithm::try_from(parsed.algorithm).map_err(hashing_error)?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()
                .map_err(hashing_error)?
                .unwrap_or_default();
            let params = Params::try_from(&parsed).map_err(hashing_error)?;
            let argon2 = Argon2::new(algorithm, version, params);
            let computed = memory.compute(&argon2, password.as_bytes(), salt, expected.len())?;
            // `Output` compares in constant time.
            Ok(known && computed == expected)
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

fn hashing_error(error: impl std::fmt::Display) -> AuthError {
    AuthError::Hashing(error.to_string())
}

/// argon2 working memory kept between hashes (see the module docs). Hashes run behind the
/// hashing semaphore, so the pool never holds more buffers than there are permits.
#[derive(Default)]
struct HashMemory(std::sync::Mutex<Vec<Vec<Block>>>);

impl HashMemory {
    /// The argon2 output of `password` with `salt`, computed in a pooled buffer.
    fn compute(
        &self,
        argon2: &Argon2,
        password: &[u8],
        salt: Salt,
        output_len: usize,
    ) -> Result<Output, AuthError> {
        let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(hashing_error)?;
        let blocks = argon2.params().block_count();
        let mut memory = self.take();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let output = Output::init_with(output_len, |out| {
            argon2
                .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..blocks])
                .map_err(Into::into)
        });
        self.give_back(memory);
        output.map_err(hashing_error)
    }

    fn take(&self) -> Vec<Block> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, memory: Vec<Block>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(memory);
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
        // A node that also accepts this key takes the token, and signs with its own.
        let rotating = Auth::new(b"other", Duration::from_secs(60), 1).accepting(b"test-secret");
        assert_eq!(
            rotating
                .verify_header(Some(&format!("Bearer {t}")))
                .unwrap(),
            7
        );
        let signed_by_rotating = rotating.issue(8).token;
        assert!(a
            .verify_header(Some(&format!("Bearer {signed_by_rotating}")))
            .is_err());
        assert_eq!(
            other
                .verify_header(Some(&format!("Bearer {signed_by_rotating}")))
                .unwrap(),
            8
        );
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
    async fn hashes_are_the_argon2_crates_own_phc_strings() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let a = auth();
        // Ours verify with the crate's verifier...
        let ours = a.hash_password("correct horse".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong horse", &parsed)
            .is_err());
        // ...and hashes written by the crate (other parameters too) verify with ours.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let cheap = Argon2::new(
            argon2::Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 3, 1, None).unwrap(),
        );
        for hasher in [Argon2::default(), cheap] {
            let theirs = hasher
                .hash_password(b"battery staple", &salt)
                .unwrap()
                .to_string();
            assert!(a
                .verify_password("battery staple".into(), Some(theirs.clone()))
                .await
                .unwrap());
            assert!(!a
                .verify_password("battery stable".into(), Some(theirs))
                .await
                .unwrap());
        }
        // The pool keeps one buffer per permit (this auth has one).
        assert_eq!(a.hash_memory.0.lock().unwrap().len(), 1);
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
