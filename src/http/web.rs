//! The web page, embedded in the binary, with a Content-Security-Policy that allows exactly its
//! own inline script and style (by hash, computed from the embedded page so they never drift)
//! and nothing from elsewhere but the media origin.

use std::sync::OnceLock;

use base64::Engine as _;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::HeaderValue;
use sha2::Digest;

use super::response::{full, Response};

const INDEX_HTML: &str = include_str!("../../static/index.html");

/// `'sha256-…'` sources for the bodies of every `<tag>…</tag>` block of `html`.
fn inline_hashes(html: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else {
            break;
        };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    hashes
}

/// The origin (`scheme://host[:port]`) of `server.public_url`, when it names one.
fn origin(public_url: &str) -> Option<String> {
    let url = public_url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

/// The page's policy: its own script and style, the API on its own origin, media from its own
/// origin and the one media URLs name.
pub fn content_security_policy(public_url: &str) -> String {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (scripts, styles) = HASHES.get_or_init(|| {
        (
            inline_hashes(INDEX_HTML, "script").join(" "),
            inline_hashes(INDEX_HTML, "style").join(" "),
        )
    });
    let media = match origin(public_url) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; \
         img-src {media}; media-src {media}; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

pub fn index(public_url: &str) -> Response {
    let mut response = full(http::StatusCode::OK, INDEX_HTML);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(policy) = HeaderValue::from_str(&content_security_policy(public_url)) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_own_blocks_and_the_media_origin() {
        let policy = content_security_policy("https://media.example.com/");
        assert_eq!(inline_hashes(INDEX_HTML, "script").len(), 1);
        assert_eq!(inline_hashes(INDEX_HTML, "style").len(), 1);
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(
            policy.contains("media-src 'self' https://media.example.com;"),
            "{policy}"
        );
        assert!(!content_security_policy("").contains("example"));
        assert_eq!(
            inline_hashes("<script>a</script><p><script>b</script>", "script").len(),
            2
        );
    }
}
