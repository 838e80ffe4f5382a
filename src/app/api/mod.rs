//! The HTTP API (function `api`). One axum router serves it in every mode:
//! `kiln local` serves it directly, `kiln serve` receives it through the
//! Functions host's HTTP forwarding, and a payload-mode invocation
//! (`Data.req`) is replayed through the same router, so keys, limits and
//! error bodies are the same in all three.
//!
//! | module | routes |
//! |---|---|
//! | [`builds`] | `/api/builds…`: list, create, detail, cancel, retry, log |
//! | [`pipelines`] | `/api/pipelines…` |
//! | [`gallery`] | `/api/gallery…` |
//! | [`retention`] | `/api/retention/…` |
//! | [`ops`] | health, dead letters and replay, the events webhook |
//! | [`doc`] | `/api/openapi.json`, generated from the handlers and view types |
//! | [`auth`], [`limits`], [`error`] | API keys; body size and timeouts; error bodies |

pub mod auth;
pub mod builds;
pub mod doc;
pub mod error;
pub mod evidence;
pub mod gallery;
pub mod limits;
pub mod ops;
pub mod pipelines;
pub mod retention;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Router};
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use super::App;
pub use builds::time_in_states;
pub use error::{ApiError, ErrorBody, ErrorCode};

type ApiResult = Result<Response, ApiError>;

pub fn router(app: App) -> Router {
    let read_timeout = app.settings.http_read_timeout;
    Router::new()
        .route("/api/health", get(ops::health))
        .route("/api/openapi.json", get(doc::openapi_json))
        .route("/api/pipelines", get(pipelines::list))
        .route("/api/pipelines/{name}", get(pipelines::show))
        .route("/api/pipelines/{name}/schedule", get(pipelines::schedule))
        .route("/api/builds", get(builds::list).post(builds::create))
        .route("/api/builds/{id}", get(builds::show))
        .route("/api/builds/{id}/cancel", post(builds::cancel))
        .route("/api/builds/{id}/retry", post(builds::retry))
        .route("/api/builds/{id}/log", get(builds::log::log))
        .route("/api/deadletters", get(ops::dead_letters))
        .route("/api/deadletters/{seq}/replay", post(ops::replay))
        .route(
            "/api/events/base-image",
            post(ops::base_image_event).options(ops::event_options),
        )
        .route("/api/gallery", get(gallery::list))
        .route("/api/evidence", get(evidence::show))
        .route("/api/evidence/sbom", get(evidence::sbom))
        .route("/api/evidence/diff", get(evidence::diff))
        .route("/api/evidence/provenance", get(evidence::provenance))
        .route("/api/gallery/pin", post(gallery::pin))
        .route("/api/gallery/promote", post(gallery::promote))
        .route("/api/retention/plan", get(retention::plan))
        .route("/api/retention/apply", post(retention::apply))
        .route("/api/retention/audit", get(retention::audit))
        .route("/api/metrics", get(super::metrics::scrape))
        // The dashboard: its page, assets and its one data route.
        .merge(super::dashboard::router())
        .fallback(|| async {
            ApiError::not_found(
                ErrorCode::NotFound,
                "no such route; GET /api/openapi.json lists them",
            )
        })
        // Innermost first: the body's read timeout, the key, the handler's
        // time, and outermost the JSON shape for what those layers refuse.
        .layer(RequestBodyTimeoutLayer::new(read_timeout))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_key,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits::HANDLER_TIMEOUT,
        ))
        .layer(middleware::from_fn(error::json_errors))
        .with_state(app)
}

/// Serves a payload-mode HTTP invocation (`Data.req`) through the router and
/// returns the `res` output binding value.
pub async fn invoke_payload(app: &App, req: &Value) -> anyhow::Result<Value> {
    let req = super::wire::decode_value(req);
    let method = req.get("Method").and_then(Value::as_str).unwrap_or("GET");
    let url = req.get("Url").and_then(Value::as_str).unwrap_or("/");
    let path_and_query = match url.find("://") {
        Some(i) => url[i + 3..]
            .find('/')
            .map(|j| &url[i + 3 + j..])
            .unwrap_or("/"),
        None => url,
    };
    let mut builder = Request::builder().method(method).uri(path_and_query);
    if let Some(headers) = req.get("Headers").and_then(Value::as_object) {
        for (k, v) in headers {
            let values: Vec<String> = match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                Value::String(s) => vec![s.clone()],
                _ => vec![],
            };
            for val in values {
                builder = builder.header(k.as_str(), val);
            }
        }
    }
    let body = match req.get("Body") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let request = builder.body(Body::from(body))?;
    let response = router(app.clone()).oneshot(request).await?;
    let status = response.status().as_u16();
    let mut headers = serde_json::Map::new();
    for (k, v) in response.headers() {
        headers.insert(
            k.to_string(),
            Value::String(v.to_str().unwrap_or_default().to_string()),
        );
    }
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await?;
    Ok(json!({
        "statusCode": status.to_string(),
        "status": status.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    }))
}
