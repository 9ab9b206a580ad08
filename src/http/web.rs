//! The web application, embedded in the binary: the page, and its scripts and styles served
//! under fingerprinted names (`/assets/app.<hash>.js`) that are cached for a year, since a
//! change of content is a change of name. The page names them by their fingerprints, so it is
//! never cached without revalidation. Its Content-Security-Policy allows scripts and styles
//! from the node's own origin only (no inline code), and media from the origin media URLs name.
//! The page also carries the node's upload policy (`data-*` attributes of its body), so that
//! the browser can tell a player what the node would refuse before sending a byte.
//!
//! Text assets are also kept gzipped (each compressed once, when a client that accepts gzip
//! first asks for it) and sent so to clients that accept it: the uploader library alone is
//! 87 KB, 22 KB gzipped.

use std::sync::OnceLock;

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG};
use http::HeaderValue;
use sha2::Digest;

use super::response::{full, Response};
use crate::config::Config;

const INDEX_HTML: &str = include_str!("../../static/index.html");
/// The API reference: Swagger UI over `/api/openapi.json`.
const DOCS_HTML: &str = include_str!("../../static/docs.html");

/// The embedded files the page refers to: (name, content type, content).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../static/icon.svg"),
    ),
    // tus-js-client, vendored from the npm registry (static/vendor/README.md).
    (
        "tus.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/tus-js-client/tus.min.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/docs.js"),
    ),
    // Swagger UI, vendored from the npm registry (static/vendor/README.md).
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/vendor/swagger-ui/swagger-ui.css"),
    ),
];

/// An embedded file under its fingerprinted name.
struct Asset {
    /// `app.3f2a9c1b7d0e.js`: the name's stem, 12 hex digits of the content's SHA-256, the
    /// extension.
    served_as: String,
    /// The name the page uses in its `{{…}}` placeholders.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: String,
    /// The body gzipped, when that makes it smaller: text only, compressed at first need.
    gzipped: OnceLock<Option<Vec<u8>>>,
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    let gzipped = encoder.finish().ok()?;
    (gzipped.len() < body.len()).then_some(gzipped)
}

impl Asset {
    /// Whether a gzipped variant may exist (text compresses; images are compressed already).
    fn compressible(&self) -> bool {
        self.content_type.starts_with("text/")
    }

    fn gzipped(&self) -> Option<&[u8]> {
        self.gzipped
            .get_or_init(|| self.compressible().then(|| gzip(self.body)).flatten())
            .as_deref()
    }
}

/// Whether `Accept-Encoding` takes gzip (named, or `*`, with a non-zero quality).
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        })
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, content_type, body)| {
                let digest = hex::encode(sha2::Sha256::digest(body));
                let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
                Asset {
                    served_as: format!("{stem}.{}.{extension}", &digest[..12]),
                    name,
                    content_type,
                    body,
                    etag: format!("\"{digest}\""),
                    gzipped: OnceLock::new(),
                }
            })
            .collect()
    })
}

/// `html` with its asset placeholders replaced by the assets' fingerprinted paths.
fn with_assets(html: &str) -> String {
    assets().iter().fold(html.to_string(), |page, asset| {
        page.replace(
            &format!("{{{{{}}}}}", asset.name),
            &format!("/assets/{}", asset.served_as),
        )
    })
}

/// The application's page, its assets named.
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| with_assets(INDEX_HTML))
}

/// The origin (`scheme://host[:port]`) of `server.public_url`, when it names one.
fn origin(public_url: &str) -> Option<String> {
    let url = public_url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

/// The page's policy: scripts and styles of its own origin, the API on its own origin, media
/// from its own origin and the one media URLs name (and `blob:` media: the upload form reads a
/// chosen file's duration and size from a local object URL).
pub fn content_security_policy(public_url: &str) -> String {
    let media = match origin(public_url) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_string(),
    };
    policy(&media, Some(&format!("{media} blob:")))
}

/// The policy of the node's pages: code, styles and API calls from its own origin only, no
/// inline code, no framing; images from `img_src`, media from `media_src` (none without one).
fn policy(img_src: &str, media_src: Option<&str>) -> String {
    let media = media_src.map_or(String::new(), |m| format!(" media-src {m};"));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src {img_src};{media} base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// A page of the node: HTML, revalidated on every load, under `policy`.
fn html_page(body: impl Into<bytes::Bytes>, policy: &str) -> Response {
    let mut response = full(http::StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(policy) = HeaderValue::from_str(policy) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// The page of a node: the upload policy of its configuration filled in.
fn page_of(config: &Config) -> String {
    let upload = &config.upload;
    [
        ("upload.max_bytes", upload.max_bytes.to_string()),
        ("upload.min_duration_s", upload.min_duration_s.to_string()),
        ("upload.max_duration_s", upload.max_duration_s.to_string()),
        ("upload.min_short_side", upload.min_short_side.to_string()),
    ]
    .iter()
    .fold(page().to_string(), |page, (key, value)| {
        page.replace(&format!("{{{{{key}}}}}"), value)
    })
}

/// The web application: one page for every view (the views are the fragment's).
#[utoipa::path(
    get,
    path = "/",
    operation_id = "page",
    tag = "web",
    responses((status = 200, description = "The application's page.",
        content_type = "text/html; charset=utf-8", body = String,
        headers(("Content-Security-Policy" = String))))
)]
pub fn index(config: &Config) -> Response {
    html_page(
        page_of(config),
        &content_security_policy(&config.server.public_url),
    )
}

/// The interactive reference of this API (Swagger UI over `/api/openapi.json`).
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "web",
    responses((status = 200, description = "The reference's page.",
        content_type = "text/html; charset=utf-8", body = String,
        headers(("Content-Security-Policy" = String))))
)]
pub fn docs() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    static POLICY: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| with_assets(DOCS_HTML));
    // The application's, except that Swagger UI shows its icons as `data:` images and
    // plays no media.
    let policy = POLICY.get_or_init(|| policy("'self' data:", None));
    html_page(page.as_str(), policy)
}

/// A script, style or icon of the pages.
///
/// Named by its fingerprint: cached for a year, never changing; gzipped when the client
/// takes it.
#[utoipa::path(
    get,
    path = "/assets/{name}",
    operation_id = "asset",
    tag = "web",
    params(("name" = String, Path, description = "`<stem>.<12 hex digits of its SHA-256>.<ext>`, \
        as the pages name it.")),
    responses(
        (status = 200, description = "The file.", content(
            (inline(super::components::FileBytes) = "text/javascript; charset=utf-8"),
            (inline(super::components::FileBytes) = "text/css; charset=utf-8"),
            (inline(super::components::FileBytes) = "image/svg+xml"),
        ), headers(("ETag" = String), ("Cache-Control" = String), ("Vary" = String),
            ("Content-Encoding" = String, description = "`gzip`, when the client takes it."))),
        (status = 404, response = super::components::NotFound),
    )
)]
pub fn asset(name: &str, request: &http::HeaderMap) -> Option<Response> {
    let asset = assets().iter().find(|a| a.served_as == name)?;
    let gzipped = accepts_gzip(request).then(|| asset.gzipped()).flatten();
    let mut response = match gzipped {
        Some(bytes) => full(http::StatusCode::OK, bytes),
        None => full(http::StatusCode::OK, asset.body),
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    if asset.compressible() {
        headers.insert(
            http::header::VARY,
            HeaderValue::from_static("accept-encoding"),
        );
    }
    if gzipped.is_some() {
        headers.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
    }
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // Each encoding is a representation of its own, with a tag of its own.
    let etag = match gzipped {
        Some(_) => format!("{}-gzip\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.clone(),
    };
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_fingerprint_and_has_no_inline_code() {
        let mut config = Config::default();
        config.upload.min_duration_s = 12.5;
        let page = page_of(&config);
        assert!(!page.contains("{{"), "a placeholder left: {page}");
        assert!(page.contains(r#"data-min-duration-s="12.5""#), "{page}");
        assert!(page.contains(r#"data-max-bytes="104857600""#), "{page}");
        let docs = with_assets(DOCS_HTML);
        assert!(!docs.contains("{{"), "a placeholder left: {docs}");
        for asset in assets() {
            let named = format!("/assets/{}", asset.served_as);
            assert!(page.contains(&named) || docs.contains(&named), "{named}");
            assert!(
                asset.served_as.len() == asset.name.len() + 13,
                "{}",
                asset.served_as
            );
            assert!(super::asset(&asset.served_as, &http::HeaderMap::new()).is_some());
        }
        for page in [&page, &docs] {
            assert!(!page.contains("<script>") && !page.contains("<style>"));
            assert!(!page.contains(" style="), "no inline style attributes");
        }
        assert!(
            super::asset("app.js", &http::HeaderMap::new()).is_none(),
            "only fingerprinted names"
        );
    }

    #[test]
    fn text_assets_go_gzipped_to_clients_that_take_it() {
        let asset = assets().iter().find(|a| a.name == "tus.min.js").unwrap();
        let mut headers = http::HeaderMap::new();
        for (accept, gzipped) in [
            ("gzip, deflate, br", true),
            ("br;q=1.0, gzip;q=0.5", true),
            ("*", true),
            ("identity", false),
            ("gzip;q=0", false),
            ("deflate", false),
        ] {
            headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static(accept),
            );
            let response = super::asset(&asset.served_as, &headers).unwrap();
            assert_eq!(
                response.headers().get("content-encoding").is_some(),
                gzipped,
                "{accept}"
            );
            assert_eq!(response.headers()["vary"], "accept-encoding");
            let etag = response.headers()["etag"].to_str().unwrap();
            assert_eq!(etag.ends_with("-gzip\""), gzipped, "{etag}");
        }
        let small = asset.gzipped().unwrap().len();
        assert!(
            small * 3 < asset.body.len(),
            "{small} of {}",
            asset.body.len()
        );
        // The icon is an image: as it is.
        let icon = assets().iter().find(|a| a.name == "icon.svg").unwrap();
        assert!(icon.gzipped().is_none() && !icon.compressible());
    }

    #[test]
    fn the_policy_allows_only_the_nodes_own_code_and_the_media_origin() {
        let policy = content_security_policy("https://media.example.com/");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(policy.contains("style-src 'self';"), "{policy}");
        assert!(
            policy.contains("media-src 'self' https://media.example.com blob:;"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(!content_security_policy("").contains("example"));
    }
}
