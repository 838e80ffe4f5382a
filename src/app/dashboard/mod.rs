//! The web dashboard: one static page (HTML, CSS and vanilla JavaScript,
//! embedded in the binary) that reads the JSON API with `fetch`.
//!
//! It lives under `/api/ui/` because the Functions host forwards only
//! `/api/*` to the custom handler; `/api/dashboard` serves the same page,
//! and `kiln local` redirects `/` to it. The page is live by polling (every
//! 2 s while the tab is visible): behind the Functions host responses are
//! buffered, so a stream would not arrive before it ended. The page holds
//! no data, so it needs no key; its `fetch` calls send one from the tab's
//! session storage when the API asks for it (401).
//!
//! Besides the page and its assets, the dashboard has one JSON route of
//! its own, `/api/ui/in-use`: the consumers (VMs and scale sets) of gallery
//! versions, which no other route exposes.

mod assets;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::App;

/// Where the page is served.
pub const ENTRY: &str = "/api/ui/";

/// Scripts and styles only from the page's own origin (no inline code, no
/// `eval`), data only from its own API, and no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes (the page, its assets, the in-use set).
pub fn router() -> Router<App> {
    Router::new()
        .route("/api/ui", get(|| async { Redirect::permanent(ENTRY) }))
        .route(ENTRY, get(page))
        .route("/api/dashboard", get(page))
        .route("/api/ui/assets/{file}", get(asset))
        .route("/api/ui/in-use", get(in_use))
}

/// `kiln local`'s `/`: people type the host and port, not the path.
pub async fn redirect_to_entry() -> Redirect {
    Redirect::temporary(ENTRY)
}

async fn page(headers: HeaderMap) -> Response {
    let mut r = serve(assets::index(), &headers, false);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[derive(Deserialize)]
struct VersionQuery {
    v: Option<String>,
}

async fn asset(
    Path(file): Path<String>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(a) = assets::file(&file) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no dashboard asset {file} (there are app.js and style.css)") })),
        )
            .into_response();
    };
    // Only the URL that names these bytes may be kept without asking again.
    let immutable = q.v.as_deref() == Some(a.etag.trim_matches('"'));
    serve(a, &headers, immutable)
}

fn serve(a: &assets::Asset, headers: &HeaderMap, immutable: bool) -> Response {
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| assets::matches(v, &a.etag));
    let common = [
        (header::ETAG, a.etag.clone()),
        (header::CACHE_CONTROL, cache.to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
}

/// The in-use set as the inventory reports it: version ids and definition
/// ids (lowercase) that VMs and scale sets reference.
async fn in_use(State(app): State<App>) -> Response {
    match app.inventory.in_use().await {
        Ok(set) => Json(set).into_response(),
        Err(e) => {
            // The inventory's error may carry provider detail: it goes to the log.
            tracing::error!(error = ?e, "dashboard: the inventory did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the inventory of VMs and scale sets did not answer; see the kiln log" })),
            )
                .into_response()
        }
    }
}
