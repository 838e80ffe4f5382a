//! The dashboard's static files, embedded in the binary (no Node, no build
//! step, nothing read from disk at run time), each with its content type
//! and a strong ETag made from its bytes.
//!
//! The page links its script and style sheet as `…?v=<etag>`: a URL that
//! names the current bytes may be cached for a year, since a new binary
//! with other bytes links another URL. Any other request for an asset (and
//! the page itself) must revalidate, which the ETag makes a cheap 304.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// The strong ETag, quoted as the header carries it.
    pub etag: String,
}

/// The page shell; `{{app.js}}` and `{{style.css}}` become versioned URLs.
const INDEX_TEMPLATE: &str = include_str!("static/index.html");
const FILES: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("static/style.css"),
    ),
];

/// Where the assets are served; absolute, because the Functions host
/// forwards only `/api/*` and the page is reachable from several paths.
pub const ASSET_PREFIX: &str = "/api/ui/assets/";

fn etag_of(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..12]))
}

struct Embedded {
    files: Vec<Asset>,
    index: Asset,
}

fn embedded() -> &'static Embedded {
    static E: OnceLock<Embedded> = OnceLock::new();
    E.get_or_init(|| {
        let files: Vec<Asset> = FILES
            .iter()
            .map(|(name, content_type, body)| Asset {
                name,
                content_type,
                body,
                etag: etag_of(body),
            })
            .collect();
        let mut page = INDEX_TEMPLATE.to_string();
        for f in &files {
            let url = format!("{ASSET_PREFIX}{}?v={}", f.name, f.etag.trim_matches('"'));
            page = page.replace(&format!("{{{{{}}}}}", f.name), &url);
        }
        // Leaked once per process: the page lives as long as the binary's assets.
        let body: &'static str = Box::leak(page.into_boxed_str());
        let index = Asset {
            name: "index.html",
            content_type: "text/html; charset=utf-8",
            body,
            etag: etag_of(body),
        };
        Embedded { files, index }
    })
}

/// The page shell, with its asset links filled in.
pub fn index() -> &'static Asset {
    &embedded().index
}

/// An asset by file name (`app.js`, `style.css`).
pub fn file(name: &str) -> Option<&'static Asset> {
    embedded().files.iter().find(|a| a.name == name)
}

/// Whether an `If-None-Match` header value names this ETag (a list, or `*`).
pub fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_each_asset_by_its_current_etag() {
        let page = index().body;
        for name in ["app.js", "style.css"] {
            let a = file(name).unwrap();
            let url = format!("{ASSET_PREFIX}{name}?v={}", a.etag.trim_matches('"'));
            assert!(page.contains(&url), "{name} not linked as {url}");
        }
        assert!(!page.contains("{{"), "a placeholder was left in the page");
        assert!(file("index.html").is_none() && file("../mod.rs").is_none());
    }

    #[test]
    fn etags_are_strong_and_differ_with_the_bytes() {
        let (a, b) = (etag_of("x"), etag_of("y"));
        assert!(a.starts_with('"') && a.ends_with('"') && !a.starts_with("W/"));
        assert_ne!(a, b);
        assert!(matches(&format!("\"zzz\", {a}"), &a));
        assert!(matches(&format!("W/{a}"), &a));
        assert!(matches("*", &a));
        assert!(!matches(&b, &a));
    }
}
