//! `/api/builds`: list (filters and paging), create, detail, cancel,
//! retry, and the customization log.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::limits::{Body, BODY_LIMIT};
use super::ApiResult;
use crate::app::{admission, App};
use crate::domain::build::{Build, BuildState, Observation};
use crate::domain::request::BuildRequest;
use crate::store::port::{BuildFilter, HistoryEntry};

/// How long `POST /api/builds` waits for the queued request to be admitted.
const ADMISSION_WAIT: Duration = Duration::from_secs(15);
/// Largest page of `GET /api/builds`.
const MAX_LIMIT: usize = 1000;
/// Lines of the customization log in a build's detail.
const LOG_TAIL_LINES: usize = 20;
/// Every state a build can be in, as `state` filters name them.
pub const STATES: [&str; 9] = [
    "queued",
    "submitting",
    "running",
    "validating",
    "publishing",
    "succeeded",
    "failed",
    "canceling",
    "canceled",
];

/// A build, as the store keeps it (the same fields, the same names).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildView {
    pub id: String,
    pub pipeline: String,
    /// `{kind: schedule, cycle} | {kind: baseImage, version} | {kind: manual}`
    #[schema(value_type = Object)]
    pub trigger: Value,
    pub reason: String,
    pub requested_by: String,
    pub idempotency_key: String,
    /// `Major.Minor.Patch`
    pub version: String,
    pub source_version: Option<String>,
    pub template_hash: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_minutes: u32,
    /// `{state: <name>, …}`: the state and what it carries (a failure's
    /// `category` and `message`, a success's `artifacts`).
    #[schema(value_type = Object)]
    pub state: Value,
    pub created_at: DateTime<Utc>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    pub quiet_polls: u32,
    pub last_seen: Option<String>,
}

impl From<&Build> for BuildView {
    fn from(b: &Build) -> Self {
        Self {
            id: b.id.clone(),
            pipeline: b.pipeline.clone(),
            trigger: serde_json::to_value(&b.trigger).unwrap_or(Value::Null),
            reason: b.reason.clone(),
            requested_by: b.requested_by.clone(),
            idempotency_key: b.idempotency_key.clone(),
            version: b.version.to_string(),
            source_version: b.source_version.clone(),
            template_hash: b.template_hash.clone(),
            attempt: b.attempt,
            max_attempts: b.max_attempts,
            timeout_minutes: b.timeout_minutes,
            state: serde_json::to_value(&b.state).unwrap_or(Value::Null),
            created_at: b.created_at,
            attempt_started_at: b.attempt_started_at,
            quiet_polls: b.quiet_polls,
            last_seen: b.last_seen.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
}

impl From<&HistoryEntry> for TimelineEntry {
    fn from(h: &HistoryEntry) -> Self {
        Self {
            at: h.at,
            from: h.from.clone(),
            to: h.to.clone(),
            cause: h.cause.clone(),
        }
    }
}

/// Why a failed build failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The failure category (`customizer`, `timeout`, `quota`, …).
    pub category: String,
    pub message: String,
    /// The state the build was in when it failed (from the timeline).
    pub failed_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildDetail {
    pub build: BuildView,
    pub state: String,
    pub version: String,
    pub timeline: Vec<TimelineEntry>,
    /// Seconds spent in each state (the current one counts up to now).
    pub seconds_in_state: BTreeMap<String, f64>,
    pub failure: Option<Failure>,
    /// The last lines of the current attempt's customization log, when there is one.
    pub log_tail: Option<String>,
}

/// The body of `POST /api/builds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; `BuildRequest::parse` reads it.
pub struct CreateBuild {
    /// A deployed pipeline's name.
    #[schema(min_length = 1)]
    pub pipeline: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    /// The same key returns the same build.
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
}

/// What became of a build request.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequested {
    /// The build's id; absent while the request still waits in the queue (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// `created | existing | coalesced | queued`
    pub outcome: String,
    pub request_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<BuildView>,
    /// The queue message, while the request waits (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The build this one retries (`POST /api/builds/{id}/retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelAccepted {
    pub build: String,
    /// The state after the cancel was asked for.
    pub state: Option<String>,
}

/// Query of `GET /api/builds`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; `parse_filter` reads it.
pub struct BuildsQuery {
    /// Only this pipeline's builds.
    pipeline: Option<String>,
    /// Only builds in this state.
    #[param(
        pattern = "^(queued|submitting|running|validating|publishing|succeeded|failed|canceling|canceled)$"
    )]
    state: Option<String>,
    /// Created at or after (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Created before (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// At most this many (1-1000, default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Skip this many (the `x-kiln-next-offset` of the previous page).
    #[param(minimum = 0)]
    offset: Option<u64>,
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::parameter(name, "an RFC 3339 time such as 2026-12-08T18:00:00Z", v))
}

/// The filter a query asks for; each bad value is named.
pub fn parse_filter(query: &[(String, String)]) -> Result<BuildFilter, ApiError> {
    let mut f = BuildFilter::default();
    for (k, v) in query {
        match k.as_str() {
            "pipeline" => f.pipeline = Some(v.clone()),
            "state" => {
                if !STATES.contains(&v.as_str()) {
                    return Err(ApiError::parameter(
                        "state",
                        &format!("one of {}", STATES.join(", ")),
                        v,
                    ));
                }
                f.state = Some(v.clone());
            }
            "since" => f.since = Some(parse_time("since", v)?),
            "until" => f.until = Some(parse_time("until", v)?),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => f.limit = Some(n),
                _ => {
                    return Err(ApiError::parameter(
                        "limit",
                        "a whole number from 1 to 1000",
                        v,
                    ))
                }
            },
            "offset" => match v.parse::<usize>() {
                Ok(n) => f.offset = n,
                Err(_) => {
                    return Err(ApiError::parameter(
                        "offset",
                        "a whole number of at least 0",
                        v,
                    ))
                }
            },
            // Unknown parameters are ignored, as HTTP APIs usually do.
            _ => {}
        }
    }
    if let (Some(s), Some(u)) = (f.since, f.until) {
        if u < s {
            return Err(ApiError::parameter(
                "until",
                "a time after `since`",
                &u.to_rfc3339(),
            ));
        }
    }
    Ok(f)
}

/// Builds, newest first. When more match than were returned, the
/// `x-kiln-next-offset` header gives the next page's `offset`.
#[utoipa::path(get, path = "/api/builds", tag = "builds", params(BuildsQuery),
    responses(
        (status = 200, description = "Builds, newest first", body = Vec<BuildView>,
            headers(("x-kiln-next-offset" = String, description = "The `offset` of the next page, when there is one"))),
        (status = 400, description = "A parameter is malformed (`invalid_parameter`)", body = ErrorBody),
    ))]
pub async fn list(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> ApiResult {
    let mut f = parse_filter(&q)?;
    let limit = f.limit.unwrap_or(200);
    // One more than asked: whether there is a next page.
    f.limit = Some(limit + 1);
    let mut builds = app.store.list(&f).await?;
    let more = builds.len() > limit;
    builds.truncate(limit);
    let views: Vec<BuildView> = builds.iter().map(BuildView::from).collect();
    let mut response = Json(views).into_response();
    if more {
        let next = (f.offset + limit).to_string();
        if let Ok(v) = next.parse() {
            response.headers_mut().insert("x-kiln-next-offset", v);
        }
    }
    Ok(response)
}

/// Requests a build of a deployed pipeline, as a person or a CI pipeline
/// does (the trigger is manual). Waits up to 15 s for admission.
#[utoipa::path(post, path = "/api/builds", tag = "builds", request_body = CreateBuild,
    responses(
        (status = 201, description = "A new build", body = BuildRequested),
        (status = 200, description = "The build of the same idempotency key, or the queued build this request joined", body = BuildRequested),
        (status = 202, description = "Queued; not admitted within 15 s", body = BuildRequested),
        (status = 400, description = "Not a build request (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such pipeline (`pipeline_not_found`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "Admission refused it (`refused`)", body = ErrorBody),
    ))]
pub async fn create(State(app): State<App>, Body(body): Body<BODY_LIMIT>) -> ApiResult {
    let req = BuildRequest::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    request(&app, req, None).await
}

/// Queues `req` (manual) and waits for its admission.
async fn request(app: &App, mut req: BuildRequest, retry_of: Option<String>) -> ApiResult {
    if app.pipelines.get(&req.pipeline).is_none() {
        return Err(ApiError::not_found(
            ErrorCode::PipelineNotFound,
            format!(
                "pipeline `{}` is not deployed (known: {})",
                req.pipeline,
                app.pipelines.names().join(", ")
            ),
        ));
    }
    // The API's callers are people and pipelines: manual by definition.
    req.trigger = None;
    let answer = |status, id: String, outcome: &str, key: String, b: Option<Build>| {
        let reply = BuildRequested {
            build: Some(id),
            outcome: outcome.into(),
            request_key: key,
            detail: b.as_ref().map(BuildView::from),
            message_id: None,
            retry_of: retry_of.clone(),
        };
        Ok((status, Json(reply)).into_response())
    };
    if let Some(k) = &req.idempotency_key {
        let key = format!("manual:{}:{k}", req.pipeline);
        if let Some(id) = app.store.build_for_key(&req.pipeline, &key).await? {
            let b = app.store.get(&id).await?.map(|(b, _)| b);
            return answer(StatusCode::OK, id, "existing", key, b);
        }
    }
    let message_id = admission::enqueue(app, &req).await?;
    let key = req.key(&message_id);
    let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
    loop {
        if let Some(id) = app.store.build_for_key(&req.pipeline, &key).await? {
            let b = app.store.get(&id).await?.map(|(b, _)| b);
            // Created for this key, or joined to a build still queued.
            let created = b.as_ref().is_some_and(|b| b.idempotency_key == key);
            return if created {
                answer(StatusCode::CREATED, id, "created", key, b)
            } else {
                answer(StatusCode::OK, id, "coalesced", key, b)
            };
        }
        let refused = app
            .store
            .dead_letters(20)
            .await?
            .into_iter()
            .find(|d| d.message_id == message_id);
        if let Some(d) = refused {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::Refused,
                d.reason,
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            let reply = BuildRequested {
                build: None,
                outcome: "queued".into(),
                request_key: key,
                detail: None,
                message_id: Some(message_id),
                retry_of,
            };
            return Ok((StatusCode::ACCEPTED, Json(reply)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Time spent in each state, from the history (the current state counts up to now).
pub fn time_in_states(
    history: &[HistoryEntry],
    terminal: bool,
    now: DateTime<Utc>,
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

async fn find(app: &App, id: &str) -> Result<Build, ApiError> {
    Ok(app
        .store
        .get(id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::BuildNotFound,
                format!("no build {id} (GET /api/builds lists them)"),
            )
        })?
        .0)
}

/// The end of `text`: its last `lines` lines.
fn tail(text: &str, lines: usize) -> String {
    let start = text
        .trim_end_matches('\n')
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    text[start..].to_string()
}

/// A build with its timeline, time per state, failure and log tail.
#[utoipa::path(get, path = "/api/builds/{id}", tag = "builds",
    params(("id" = String, Path, description = "Build id")),
    responses(
        (status = 200, description = "The build", body = BuildDetail),
        (status = 404, description = "No such build (`build_not_found`)", body = ErrorBody),
    ))]
pub async fn show(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let b = find(&app, &id).await?;
    let history = app.store.history(&id).await?;
    let seconds = time_in_states(&history, b.state.is_terminal(), app.clock.now());
    let failure = match &b.state {
        BuildState::Failed { category, message } => Some(Failure {
            category: category.to_string(),
            message: message.clone(),
            failed_in: history.iter().rev().find_map(|h| h.from.clone()),
        }),
        BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Publishing { .. }
        | BuildState::Succeeded { .. }
        | BuildState::Canceling { .. }
        | BuildState::Canceled { .. } => None,
    };
    let log_tail = match read_log(&app, &b, b.attempt, 0).await {
        Ok(bytes) => Some(tail(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES)),
        Err(_) => None,
    };
    Ok(Json(BuildDetail {
        build: BuildView::from(&b),
        state: b.state.name().into(),
        version: b.version.to_string(),
        timeline: history.iter().map(TimelineEntry::from).collect(),
        seconds_in_state: seconds,
        failure,
        log_tail,
    })
    .into_response())
}

/// Asks the provider to cancel a build that has not ended.
#[utoipa::path(post, path = "/api/builds/{id}/cancel", tag = "builds",
    params(("id" = String, Path, description = "Build id")),
    responses(
        (status = 202, description = "Cancel asked for", body = CancelAccepted),
        (status = 404, description = "No such build (`build_not_found`)", body = ErrorBody),
        (status = 409, description = "The build already ended (`conflict_terminal`)", body = ErrorBody),
    ))]
pub async fn cancel(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let b = find(&app, &id).await?;
    if b.state.is_terminal() {
        return Err(ApiError::conflict(
            ErrorCode::ConflictTerminal,
            format!(
                "build {id} already ended as {}; nothing to cancel",
                b.state.name()
            ),
        ));
    }
    let obs = Observation::CancelRequested {
        reason: "canceled through the API".into(),
    };
    let b = crate::app::driver::advance(&app, &id, Some(obs)).await?;
    let reply = CancelAccepted {
        build: id,
        state: b.map(|b| b.state.name().to_string()),
    };
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// Requests a new build of a failed or canceled build's pipeline. The
/// request's idempotency key is `retry-<id>`: retrying the same build
/// again answers with the build the first retry made. (A build request
/// carries no source version, so the new build resolves its source anew,
/// as any manual build does.)
#[utoipa::path(post, path = "/api/builds/{id}/retry", tag = "builds",
    params(("id" = String, Path, description = "Id of a failed or canceled build")),
    responses(
        (status = 201, description = "The retry's build", body = BuildRequested),
        (status = 200, description = "This build was retried before: that build", body = BuildRequested),
        (status = 202, description = "Queued; not admitted within 15 s", body = BuildRequested),
        (status = 404, description = "No such build, or its pipeline is no longer deployed", body = ErrorBody),
        (status = 409, description = "The build has not failed or been canceled (`conflict_not_retryable`)", body = ErrorBody),
        (status = 422, description = "Admission refused it (`refused`)", body = ErrorBody),
    ))]
pub async fn retry(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    let b = find(&app, &id).await?;
    match &b.state {
        BuildState::Failed { .. } | BuildState::Canceled { .. } => {}
        BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Publishing { .. }
        | BuildState::Canceling { .. }
        | BuildState::Succeeded { .. } => {
            return Err(ApiError::conflict(
                ErrorCode::ConflictNotRetryable,
                format!(
                    "build {id} is {}: only a failed or canceled build can be retried (POST /api/builds builds again)",
                    b.state.name()
                ),
            ))
        }
    }
    let req = BuildRequest {
        pipeline: b.pipeline.clone(),
        reason: Some(format!("retry of {id} ({})", b.reason)),
        requested_by: Some(b.requested_by.clone()),
        idempotency_key: Some(format!("retry-{id}")),
        trigger: None,
    };
    request(&app, req, Some(id)).await
}

/// The log of `attempt` from `offset`: the copy kept when the attempt's
/// template was retired, else the provider's.
async fn read_log(app: &App, b: &Build, attempt: u32, offset: u64) -> Result<Vec<u8>, ApiError> {
    let template = crate::domain::build::template_name(&b.id, attempt);
    // The kept copy outlives the provider's (in Azure it goes with the
    // staging resource group).
    let kept = app.store.log(&template).await?.map(|all| {
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        all[from..].to_vec()
    });
    match kept {
        Some(bytes) => Ok(bytes),
        None => app
            .builder
            .customization_log(&template, offset)
            .await
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| {
                ApiError::not_found(
                    ErrorCode::LogNotFound,
                    format!("no customization log for attempt {attempt} of build {} (not started yet, or the provider keeps it elsewhere)", b.id),
                )
            }),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; `log` reads it by hand to name a bad value.
pub struct LogQuery {
    /// Attempt (default: the current one).
    #[param(minimum = 1)]
    attempt: Option<u32>,
    /// Byte offset to read from (`x-kiln-log-offset` of the previous read).
    offset: Option<u64>,
}

/// The customization log of a build's attempt, as text from `offset`;
/// `x-kiln-log-offset` says where to continue, so a client can follow a
/// running build.
#[utoipa::path(get, path = "/api/builds/{id}/log", tag = "builds",
    params(("id" = String, Path, description = "Build id"), LogQuery),
    responses(
        (status = 200, description = "Log text", content_type = "text/plain", body = String,
            headers(
                ("x-kiln-log-offset" = String, description = "The offset to continue from"),
                ("x-kiln-build-state" = String, description = "The build's state now"))),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 404, description = "No such build, attempt or log", body = ErrorBody),
    ))]
pub async fn log(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let b = find(&app, &id).await?;
    let mut attempt = b.attempt;
    let mut offset = 0u64;
    for (k, v) in &q {
        match k.as_str() {
            "attempt" => {
                attempt = v.parse().map_err(|_| {
                    ApiError::parameter("attempt", "a whole number of at least 1", v)
                })?
            }
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::parameter("offset", "a whole number of bytes", v))?
            }
            _ => {}
        }
    }
    if attempt == 0 || attempt > b.attempt {
        return Err(ApiError::not_found(
            ErrorCode::LogNotFound,
            format!("build {id} has attempts 1 to {}", b.attempt),
        ));
    }
    let text = read_log(&app, &b, attempt, offset).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_bad_filter_is_named_with_the_form_expected() {
        let f = parse_filter(&q(&[
            ("pipeline", "tiny"),
            ("state", "failed"),
            ("since", "2026-12-08T18:00:00+01:00"),
            ("limit", "5"),
            ("offset", "10"),
        ]))
        .unwrap();
        assert_eq!(f.pipeline.as_deref(), Some("tiny"));
        assert_eq!(f.state.as_deref(), Some("failed"));
        assert_eq!(f.since.unwrap().to_rfc3339(), "2026-12-08T17:00:00+00:00");
        assert_eq!((f.limit, f.offset), (Some(5), 10));
        for (pairs, parameter) in [
            (vec![("state", "done")], "state"),
            (vec![("since", "yesterday")], "since"),
            (vec![("until", "2026-13-01T00:00:00Z")], "until"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "1001")], "limit"),
            (vec![("offset", "-1")], "offset"),
            (
                vec![
                    ("since", "2026-12-08T00:00:00Z"),
                    ("until", "2026-12-07T00:00:00Z"),
                ],
                "until",
            ),
        ] {
            let e = parse_filter(&q(&pairs)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.code, ErrorCode::InvalidParameter);
            assert_eq!(e.body.parameter.as_deref(), Some(parameter), "{pairs:?}");
            assert!(
                e.body.error.starts_with(&format!("{parameter}: expected ")),
                "{}",
                e.body.error
            );
        }
    }

    #[test]
    fn a_log_tail_is_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }
}
