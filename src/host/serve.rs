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

/// Where the start-up checks that run once kiln listens stand
/// (`NetworkChecks`, in the wiring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checks {
    Pending,
    Passed,
    /// Refused: kiln is stopping, for this reason.
    Failed(String),
}

/// Why a waiting invocation was let go at shutdown.
const STOPPING: &str = "kiln is stopping";

/// What invocations wait on: a build must not start under a setting the
/// checks then refuse (before they ran at start, such a kiln never
/// answered the host at all).
#[derive(Clone)]
pub struct Readiness(tokio::sync::watch::Receiver<Checks>);

impl Readiness {
    /// A gate, open once its sender says [`Checks::Passed`].
    pub fn new() -> (tokio::sync::watch::Sender<Checks>, Readiness) {
        let (tx, rx) = tokio::sync::watch::channel(Checks::Pending);
        (tx, Readiness(rx))
    }

    /// Nothing to wait for.
    pub fn passed() -> Readiness {
        Readiness(tokio::sync::watch::channel(Checks::Passed).1)
    }

    /// `Ok` once the checks pass; the refusal when they fail (or their
    /// sender is gone without a verdict).
    async fn wait(&self) -> Result<(), String> {
        let mut rx = self.0.clone();
        let verdict = rx
            .wait_for(|c| !matches!(c, Checks::Pending))
            .await
            .map(|c| c.clone());
        match verdict {
            Ok(Checks::Passed) => Ok(()),
            Ok(Checks::Failed(why)) => Err(why),
            Ok(Checks::Pending) | Err(_) => Err(STOPPING.into()),
        }
    }
}

#[derive(Clone)]
struct Functions {
    app: App,
    ready: Readiness,
}

pub fn router(app: App, ready: Readiness) -> Router {
    let functions = Router::new()
        .route("/", get(|| async { "kiln custom handler ready" }))
        .route("/{function}", post(invoke_function))
        .with_state(Functions {
            app: app.clone(),
            ready,
        });
    functions.merge(api::router(app))
}

/// `kiln local`'s router: the API only, with `/` leading people to the
/// dashboard. The custom handler's `POST /{function}` routes are for a
/// Functions host on loopback; `kiln local` is its own host, and left in
/// they would invoke functions past the API keys.
pub fn local_router(app: App) -> Router {
    Router::new()
        .route("/", get(crate::app::dashboard::redirect_to_entry))
        .with_state(app.clone())
        .merge(api::router(app))
}

async fn invoke_function(
    State(Functions { app, ready }): State<Functions>,
    Path(function): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let name: FunctionName = match function.parse() {
        Ok(n) => n,
        Err(e) => return (StatusCode::NOT_FOUND, Json(json!({ "Logs": [e] }))).into_response(),
    };
    if let Err(why) = ready.wait().await {
        let msg = format!("{name} not run: {why}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "Logs": [msg] })),
        )
            .into_response();
    }
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

/// How long the custom handler waits for a request's headers. hyper's
/// timer also runs on an idle keep-alive connection, so it is the idle
/// timeout too: well above the Functions host's own (1-2 minutes), the host
/// always drops an idle connection first and never sends on one kiln is
/// closing. The host is the only client (on loopback); it buffers what
/// callers send before it forwards, so a slow caller never reaches kiln,
/// and the API's body timeout still holds.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Serves until `shutdown` resolves; invocations wait for `ready`.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: App,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    super::http::serve(listener, router(app, ready), HEADER_TIMEOUT, shutdown).await
}

/// Serves until `shutdown` resolves, running `checks` meanwhile:
/// invocations wait for them, and a refusal stops the server (after its
/// drain) and is returned. A shutdown before they end leaves them
/// unfinished: a read that hangs must not hold a SIGTERM up.
pub async fn run_checked(
    listener: tokio::net::TcpListener,
    app: App,
    checks: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (verdict, ready) = Readiness::new();
    let verdict = std::sync::Arc::new(verdict);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = {
        let verdict = verdict.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = stopped => {}
            }
            // Invocations still waiting for the checks are let go now,
            // not held until the drain ends.
            verdict.send_if_modified(|c| match c {
                Checks::Pending => {
                    *c = Checks::Failed(STOPPING.into());
                    true
                }
                Checks::Passed | Checks::Failed(_) => false,
            });
        }
    };
    let mut server = tokio::spawn(run(listener, app, ready, shutdown));
    tokio::select! {
        checked = checks => match checked {
            Ok(()) => {
                verdict.send_replace(Checks::Passed);
            }
            Err(e) => {
                verdict.send_replace(Checks::Failed(format!("{e:#}")));
                let _ = stop.send(());
                // The refusal is what to report; the drain is best effort.
                if let Ok(Err(drain)) = server.await {
                    tracing::warn!(error = %drain, "stopping the handler");
                }
                return Err(e);
            }
        },
        ended = &mut server => return ended?,
    }
    server.await??;
    drop(stop);
    Ok(())
}
