//! The HTTP API (function `api`). One axum router serves it in every mode:
//! `kiln local` serves it directly, `kiln serve` receives it through the
//! Functions host's HTTP forwarding, and a payload-mode invocation
//! (`Data.req`) is replayed through the same router.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{admission, App};
use crate::domain::build::Observation;
use crate::domain::request::BuildRequest;
use crate::domain::schedule::Schedule;
use crate::store::port::{BuildFilter, HistoryEntry};

/// How long `POST /api/builds` waits for the queued request to be admitted.
const ADMISSION_WAIT: Duration = Duration::from_secs(15);

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // Internal detail goes to the log, not to the caller.
        tracing::error!(error = ?e, "API request failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the kiln log".into(),
        )
    }
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

type ApiResult = Result<Response, ApiError>;

pub fn router(app: App) -> Router {
    Router::new()
        .route(
            "/api/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/api/dashboard", get(dashboard))
        .route("/api/pipelines", get(list_pipelines))
        .route("/api/pipelines/{name}", get(show_pipeline))
        .route("/api/pipelines/{name}/schedule", get(pipeline_schedule))
        .route("/api/builds", get(list_builds).post(create_build))
        .route("/api/builds/{id}", get(show_build))
        .route("/api/builds/{id}/cancel", post(cancel_build))
        .route("/api/builds/{id}/log", get(build_log))
        .route("/api/deadletters", get(dead_letters))
        .route(
            "/api/events/base-image",
            post(base_image_event).options(event_options),
        )
        .route("/api/gallery", get(gallery))
        .route("/api/gallery/pin", post(gallery_pin))
        .route("/api/gallery/promote", post(gallery_promote))
        .route("/api/retention/plan", get(retention_plan))
        .route("/api/retention/apply", post(retention_apply))
        .route("/api/retention/audit", get(retention_audit))
        .with_state(app)
}

async fn dashboard(State(app): State<App>) -> ApiResult {
    let page = super::dashboard::render(&app).await?;
    Ok(([("content-type", "text/html; charset=utf-8")], page).into_response())
}

async fn list_pipelines(State(app): State<App>) -> ApiResult {
    let mut out = Vec::new();
    for p in app.pipelines.iter() {
        out.push(pipeline_summary(&app, &p.name).await?);
    }
    Ok(Json(out).into_response())
}

async fn pipeline_summary(app: &App, name: &str) -> Result<Value, ApiError> {
    let p = app
        .pipelines
        .get(name)
        .ok_or_else(|| not_found(format!("no pipeline {name}")))?;
    let rt = app.store.runtime(name).await?;
    Ok(json!({
        "name": p.name,
        "description": p.kiln.description,
        "source": p.template.properties.source,
        "schedule": p.kiln.triggers.schedule,
        "baseImageTrigger": p.kiln.triggers.base_image,
        "versioning": p.kiln.versioning,
        "retention": p.kiln.retention,
        "targets": p.gallery_targets().iter().map(|t| t.definition_id()).collect::<Vec<_>>(),
        "automaticTriggers": if rt.breaker_open_since.is_some() { "paused" } else { "armed" },
        "breakerOpenSince": rt.breaker_open_since,
        "consecutiveFailures": rt.consecutive_failures,
        "warnings": rt.memory.warnings,
        "lastSourceVersion": rt.memory.source_requested,
    }))
}

async fn show_pipeline(State(app): State<App>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(pipeline_summary(&app, &name).await?).into_response())
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

async fn pipeline_schedule(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<CountQuery>,
) -> ApiResult {
    let p = app
        .pipelines
        .get(&name)
        .ok_or_else(|| not_found(format!("no pipeline {name}")))?;
    let Some(spec) = &p.kiln.triggers.schedule else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("pipeline {name} has no schedule"),
        ));
    };
    let s = Schedule::from_spec(spec).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    Ok(Json(s.next(app.clock.now(), q.count.unwrap_or(5).min(100))).into_response())
}

#[derive(Deserialize)]
struct BuildsQuery {
    pipeline: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_builds(State(app): State<App>, Query(q): Query<BuildsQuery>) -> ApiResult {
    let builds = app
        .store
        .list(&BuildFilter {
            pipeline: q.pipeline,
            state: q.state,
            limit: q.limit,
        })
        .await?;
    Ok(Json(builds).into_response())
}

async fn create_build(State(app): State<App>, body: axum::body::Bytes) -> ApiResult {
    let mut req =
        BuildRequest::parse(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if app.pipelines.get(&req.pipeline).is_none() {
        return Err(not_found(format!(
            "pipeline `{}` is not deployed (known: {})",
            req.pipeline,
            app.pipelines.names().join(", ")
        )));
    }
    // The API's callers are people and pipelines: manual by definition.
    req.trigger = None;
    if let Some(k) = &req.idempotency_key {
        let key = format!("manual:{}:{k}", req.pipeline);
        if let Some(id) = app.store.build_for_key(&req.pipeline, &key).await? {
            let b = app.store.get(&id).await?.map(|(b, _)| b);
            return Ok((
                StatusCode::OK,
                Json(json!({ "build": id, "outcome": "existing", "requestKey": key, "detail": b })),
            )
                .into_response());
        }
    }
    let message_id = admission::enqueue(&app, &req).await?;
    let key = req.key(&message_id);
    let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
    loop {
        if let Some(id) = app.store.build_for_key(&req.pipeline, &key).await? {
            let b = app.store.get(&id).await?.map(|(b, _)| b);
            // Created for this key, or joined to a build still queued.
            let created = b.as_ref().is_some_and(|b| b.idempotency_key == key);
            let (status, outcome) = if created {
                (StatusCode::CREATED, "created")
            } else {
                (StatusCode::OK, "coalesced")
            };
            return Ok((
                status,
                Json(json!({ "build": id, "outcome": outcome, "requestKey": key, "detail": b })),
            )
                .into_response());
        }
        let refused = app
            .store
            .dead_letters(20)
            .await?
            .into_iter()
            .find(|d| d.message_id == message_id);
        if let Some(d) = refused {
            return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, d.reason));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "requestKey": key, "messageId": message_id })),
            )
                .into_response());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Time spent in each state, from the history (the current state counts up to now).
pub fn time_in_states(
    history: &[HistoryEntry],
    terminal: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (i, h) in history.iter().enumerate() {
        let end = match history.get(i + 1) {
            Some(next) => next.at,
            None if terminal => h.at,
            None => now,
        };
        *out.entry(h.to.clone()).or_insert(0.0) += (end - h.at).num_milliseconds() as f64 / 1000.0;
    }
    out
}

async fn show_build(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let (b, _) = app
        .store
        .get(&id)
        .await?
        .ok_or_else(|| not_found(format!("no build {id}")))?;
    let history = app.store.history(&id).await?;
    let seconds = time_in_states(&history, b.state.is_terminal(), app.clock.now());
    Ok(Json(json!({
        "build": b,
        "state": b.state.name(),
        "version": b.version.to_string(),
        "timeline": history,
        "secondsInState": seconds,
    }))
    .into_response())
}

async fn cancel_build(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let (b, _) = app
        .store
        .get(&id)
        .await?
        .ok_or_else(|| not_found(format!("no build {id}")))?;
    if b.state.is_terminal() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("build {id} already ended as {}", b.state.name()),
        ));
    }
    let obs = Observation::CancelRequested {
        reason: "canceled through the API".into(),
    };
    let b = super::driver::advance(&app, &id, Some(obs)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "build": id, "state": b.map(|b| b.state.name()) })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
    offset: Option<u64>,
}

/// The customization log of a build's attempt (default: the current one),
/// as text from `offset`; `x-kiln-log-offset` says where to continue, so a
/// client can follow a running build.
async fn build_log(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let (b, _) = app
        .store
        .get(&id)
        .await?
        .ok_or_else(|| not_found(format!("no build {id}")))?;
    let attempt = q.attempt.unwrap_or(b.attempt);
    if attempt == 0 || attempt > b.attempt {
        return Err(not_found(format!(
            "build {id} has attempts 1 to {}",
            b.attempt
        )));
    }
    let template = crate::domain::build::template_name(&b.id, attempt);
    let offset = q.offset.unwrap_or(0);
    // The copy kept when the attempt's template was retired outlives the
    // provider's (in Azure it goes with the staging resource group).
    let kept = app.store.log(&template).await?.map(|all| {
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        all[from..].to_vec()
    });
    let text = match kept {
        Some(bytes) => bytes,
        None => app
            .builder
            .customization_log(&template, offset)
            .await
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| not_found(format!("no customization log for attempt {attempt} of build {id} (not started yet, or the provider keeps it elsewhere)")))?,
    };
    // Offsets count bytes: a client continues exactly where this read ended.
    let next = offset + text.len() as u64;
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8".to_string()),
            ("x-kiln-log-offset", next.to_string()),
            ("x-kiln-build-state", b.state.name().to_string()),
        ],
        text,
    )
        .into_response())
}

async fn dead_letters(State(app): State<App>) -> ApiResult {
    Ok(Json(app.store.dead_letters(500).await?).into_response())
}

#[derive(Deserialize)]
struct CodeQuery {
    code: Option<String>,
}

fn authorized(app: &App, headers: &HeaderMap, code: Option<&str>) -> bool {
    let Some(key) = &app.settings.events_key else {
        return true;
    };
    let given = headers
        .get("x-kiln-key")
        .and_then(|v| v.to_str().ok())
        .or(code);
    // Constant-time compare: the key is a secret.
    given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), key.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

async fn base_image_event(
    State(app): State<App>,
    Query(q): Query<CodeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    if !authorized(&app, &headers, q.code.as_deref()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong events key (x-kiln-key header or code query)".into(),
        ));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match super::triggers::base_image_events(
        &app,
        &body,
        header("aeg-event-type").as_deref(),
        header("content-type").as_deref(),
    )
    .await?
    {
        Ok(outcome) => Ok(Json(outcome.reply()).into_response()),
        Err(reason) => Err(ApiError(StatusCode::BAD_REQUEST, reason)),
    }
}

/// CloudEvents webhook abuse protection (the handshake Event Grid uses for CloudEvents).
async fn event_options(headers: HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*")
        .to_string();
    (
        StatusCode::OK,
        [
            ("webhook-allowed-origin", origin),
            ("webhook-allowed-rate", "120".to_string()),
        ],
    )
        .into_response()
}

async fn gallery(State(app): State<App>) -> ApiResult {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in app.pipelines.iter() {
        for t in p.gallery_targets() {
            if seen.insert(t.definition_id().to_ascii_lowercase()) {
                let mut versions = app.gallery.list_versions(&t.definition_id()).await?;
                versions.sort_by_key(|v| v.version);
                out.push(json!({ "definition": t.definition_id(), "pipeline": p.name, "versions": versions }));
            }
        }
    }
    Ok(Json(out).into_response())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

fn refusal(e: super::gallery_ops::Refusal) -> ApiError {
    match e {
        super::gallery_ops::Refusal::BadId(m) => ApiError(StatusCode::BAD_REQUEST, m),
        super::gallery_ops::Refusal::Missing(m) => not_found(m),
    }
}

async fn gallery_pin(State(app): State<App>, body: axum::body::Bytes) -> ApiResult {
    let req: super::gallery_ops::PinRequest = parse_json(&body)?;
    match super::gallery_ops::pin(&app, &req).await? {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(refusal(e)),
    }
}

async fn gallery_promote(State(app): State<App>, body: axum::body::Bytes) -> ApiResult {
    let req: super::gallery_ops::PromoteRequest = parse_json(&body)?;
    match super::gallery_ops::promote(&app, &req).await? {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(refusal(e)),
    }
}

async fn retention_plan(State(app): State<App>) -> ApiResult {
    let plans = super::retention_function::plan(&app).await?;
    Ok(Json(plans).into_response())
}

async fn retention_apply(State(app): State<App>) -> ApiResult {
    let run = super::retention_function::run(&app, false).await?;
    Ok(Json(run).into_response())
}

async fn retention_audit(State(app): State<App>) -> ApiResult {
    Ok(Json(app.store.audit(1000).await?).into_response())
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
