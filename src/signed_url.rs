//! Signed, expiring URLs for media that a `<video>` element must fetch without an
//! `Authorization` header (the original upload, visible only to its owner).
//!
//! The signature is HMAC-SHA256 over the path and the expiry with the server secret, compared in
//! constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the link has expired")]
    Expired,
    #[error("the link signature is invalid")]
    Invalid,
}

/// A parameter given more than once: which of its values was meant cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the parameter is given more than once")]
pub struct Repeated;

/// The value of `name` among decoded `key=value` pairs: `None` when absent, [`Repeated`] when
/// it is given more than once.
pub fn only_value<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, Repeated> {
    let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => Ok(Some(value.as_str())),
        (Some(_), Some(_)) => Err(Repeated),
    }
}

#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    /// The key of an accepted secret (see [`UrlSigner::accepting`]).
    accepted: Option<Vec<u8>>,
}

impl UrlSigner {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: Self::key_of(secret),
            accepted: None,
        }
    }

    /// Derives a separate key so a signature can never double as a token signature.
    fn key_of(secret: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
        mac.update(b"showcase signed media urls v1");
        mac.finalize().into_bytes().to_vec()
    }

    /// Also accepts links signed with `secret`, never signing with it (rotation, as
    /// `auth::Auth::accepting`).
    pub fn accepting(mut self, secret: &[u8]) -> Self {
        self.accepted = Some(Self::key_of(secret));
        self
    }

    fn mac(&self, path: &str, expires: u64) -> HmacSha256 {
        Self::mac_with(&self.key, path, expires)
    }

    fn mac_with(key: &[u8], path: &str, expires: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// `path?expires=<unix seconds>&signature=<hex>`.
    pub fn sign(&self, path: &str, expires: u64) -> String {
        let signature = hex::encode(self.mac(path, expires).finalize().into_bytes());
        format!("{path}?expires={expires}&signature={signature}")
    }

    /// Verifies the query of a signed URL (decoded pairs). Only the spelling [`UrlSigner::sign`]
    /// produces is accepted: exactly one `expires` in canonical decimal (no sign, no leading
    /// zero) and one `signature` of 64 lowercase hex digits. Other parameters are ignored.
    pub fn verify_query(
        &self,
        path: &str,
        query: &[(String, String)],
        now: u64,
    ) -> Result<(), SignatureError> {
        let only = |name: &str| match only_value(query, name) {
            Ok(Some(value)) => Ok(value),
            _ => Err(SignatureError::Invalid),
        };
        let raw_expires = only("expires")?;
        let signature = only("signature")?;
        let expires: u64 = raw_expires.parse().map_err(|_| SignatureError::Invalid)?;
        if expires.to_string() != raw_expires {
            return Err(SignatureError::Invalid);
        }
        let canonical_hex = signature.len() == 64
            && signature
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical_hex {
            return Err(SignatureError::Invalid);
        }
        self.verify(path, expires, signature, now)
    }

    pub fn verify(
        &self,
        path: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        let given = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        let signed_with = |key: &[u8]| {
            let expected = Self::mac_with(key, path, expires).finalize().into_bytes();
            expected.as_slice().ct_eq(&given).unwrap_u8() == 1
        };
        if !signed_with(&self.key) && !self.accepted.as_deref().is_some_and(signed_with) {
            return Err(SignatureError::Invalid);
        }
        if now > expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, u64, String) {
        let (path, query) = url.split_once('?').unwrap();
        let mut expires = 0;
        let mut sig = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "expires" => expires = v.parse().unwrap(),
                "signature" => sig = v.to_string(),
                _ => panic!("unexpected {k}"),
            }
        }
        (path.to_string(), expires, sig)
    }

    fn pairs(url: &str) -> Vec<(String, String)> {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn only_the_canonical_spelling_of_a_signed_url_is_accepted() {
        let s = UrlSigner::new(b"secret");
        let path = "/media/originals/3.mp4";
        let url = s.sign(path, 1000);
        assert_eq!(s.verify_query(path, &pairs(&url), 999), Ok(()));
        let sig = url.split("signature=").nth(1).unwrap();
        for bad in [
            format!("{path}?expires=%2B1000&signature={sig}"),
            format!("{path}?expires=01000&signature={sig}"),
            format!("{path}?expires=1000&signature={sig}&signature={sig}"),
            format!("{path}?expires=1000&expires=1000&signature={sig}"),
            format!("{path}?expires=1000&signature={}", sig.to_uppercase()),
            format!("{path}?expires=1000&signature={sig}00"),
            format!("{path}?expires=1000"),
            format!("{path}?signature={sig}"),
            format!("{path}?expires=1000.0&signature={sig}"),
        ] {
            assert_eq!(
                s.verify_query(path, &pairs(&bad), 999),
                Err(SignatureError::Invalid),
                "{bad}"
            );
        }
        // Other parameters (a player's cache buster) do not matter.
        let extra = pairs(&format!("{url}&t=17"));
        assert_eq!(s.verify_query(path, &extra, 999), Ok(()));
    }

    #[test]
    fn valid_tampered_and_expired() {
        let s = UrlSigner::new(b"secret");
        let (path, exp, sig) = parts(&s.sign("/media/originals/3.mp4", 1000));
        assert_eq!(s.verify(&path, exp, &sig, 999), Ok(()));
        assert_eq!(
            s.verify(&path, exp, &sig, 1001),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            s.verify("/media/originals/4.mp4", exp, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify(&path, exp + 1, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify(&path, exp, "zz", 999),
            Err(SignatureError::Invalid)
        );
        // A node in the middle of a rotation takes links of the key it accepts, expiry and
        // all, and signs with its own.
        let rotating = UrlSigner::new(b"other").accepting(b"secret");
        assert_eq!(rotating.verify(&path, exp, &sig, 999), Ok(()));
        assert_eq!(
            rotating.verify(&path, exp, &sig, 1001),
            Err(SignatureError::Expired)
        );
        let (_, _, own) = parts(&rotating.sign(&path, exp));
        assert_eq!(
            UrlSigner::new(b"other").verify(&path, exp, &own, 999),
            Ok(())
        );
        assert_eq!(
            UrlSigner::new(b"third")
                .accepting(b"fourth")
                .verify(&path, exp, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            UrlSigner::new(b"other").verify(&path, exp, &sig, 999),
            Err(SignatureError::Invalid)
        );
    }
}
