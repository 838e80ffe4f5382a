//! `kiln serve`: the Azure Functions custom handler.
//!
//! The Functions host starts kiln with `FUNCTIONS_CUSTOMHANDLER_PORT`, polls
//! `GET /` until it answers, then POSTs `{Data, Metadata}` to
//! `/{FunctionName}` for every invocation. A non-2xx reply fails the
//! invocation (queue messages are then retried by the host). HTTP API calls
//! arrive forwarded on their original `/api/...` path.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::app::{api, invoke, App, FunctionName, Invocation, InvokeError};

pub fn router(app: App) -> Router {
    let functions = Router::new()
        .route("/", get(|| async { "kiln custom handler ready" }))
        .route("/{function}", post(invoke_function))
        .with_state(app.clone());
    functions.merge(api::router(app))
}

async fn invoke_function(
    State(app): State<App>,
    Path(function): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let name: FunctionName = match function.parse() {
        Ok(n) => n,
        Err(e) => return (StatusCode::NOT_FOUND, Json(json!({ "Logs": [e] }))).into_response(),
    };
    let inv: Invocation = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            let msg =
                format!("{name}: the request is not an invocation payload {{Data, Metadata}}: {e}");
            tracing::warn!("{msg}");
            return (StatusCode::BAD_REQUEST, Json(json!({ "Logs": [msg] }))).into_response();
        }
    };
    match invoke(&app, name, inv).await {
        Ok(result) => Json(result).into_response(),
        Err(InvokeError::BadPayload(msg)) => {
            tracing::warn!(function = %name, "{msg}");
            (StatusCode::BAD_REQUEST, Json(json!({ "Logs": [msg] }))).into_response()
        }
        Err(InvokeError::Failed(e)) => {
            tracing::error!(function = %name, error = ?e, "invocation failed; the host will retry");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "Logs": [format!("{name} failed: {e}")] })),
            )
                .into_response()
        }
    }
}

/// Serves until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let header_timeout = app.settings.http_read_timeout;
    super::http::serve(listener, router(app), header_timeout, shutdown).await
}
