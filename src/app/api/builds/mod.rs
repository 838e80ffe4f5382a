//! `/api/builds`: list (filters and paging), create, detail, cancel,
//! retry, and the customization log.

pub mod log;
pub mod query;
pub mod views;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::limits::{Body, BODY_LIMIT};
use super::ApiResult;
use crate::app::{admission, App};
use crate::domain::build::{Build, BuildState, Observation};
use crate::domain::request::BuildRequest;
use crate::store::port::HistoryEntry;
use log::{read_log, tail, LOG_TAIL_LINES};
use query::{parse_filter, BuildsQuery};
use views::{
    BuildDetail, BuildRequested, BuildView, CancelAccepted, CreateBuild, Failure, TimelineEntry,
};

/// How long `POST /api/builds` waits for the queued request to be admitted.
const ADMISSION_WAIT: Duration = Duration::from_secs(15);

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

/// The build `id`, or 404 `build_not_found`.
pub(super) async fn find(app: &App, id: &str) -> Result<Build, ApiError> {
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
