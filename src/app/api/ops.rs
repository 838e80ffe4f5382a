//! Health, dead letters (with replay) and the base-image events webhook.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::limits::{Body, EVENTS_BODY_LIMIT};
use super::ApiResult;
use crate::app::App;
use crate::ports::OutgoingMessage;
use crate::store::port::{DeadLetter, ReplayMark};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
}

/// Whether kiln answers. Needs no key.
#[utoipa::path(get, path = "/api/health", tag = "operations", security(()),
    responses((status = 200, description = "kiln is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// A message a queue or handler gave up on.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// Its id (newest highest): `POST /api/deadletters/{seq}/replay`.
    pub seq: i64,
    pub queue: String,
    pub message_id: String,
    pub body: String,
    pub reason: String,
    pub delivery_count: u32,
    pub dead_at: DateTime<Utc>,
    /// When it was put back on its queue.
    pub replayed_at: Option<DateTime<Utc>>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        Self {
            seq: d.seq,
            queue: d.queue.clone(),
            message_id: d.message_id.clone(),
            body: d.body.clone(),
            reason: d.reason.clone(),
            delivery_count: d.delivery_count,
            dead_at: d.dead_at,
            replayed_at: d.replayed_at,
        }
    }
}

/// The newest 500 dead letters, newest first.
#[utoipa::path(get, path = "/api/deadletters", tag = "operations",
    responses((status = 200, description = "Dead letters", body = Vec<DeadLetterView>)))]
pub async fn dead_letters(State(app): State<App>) -> ApiResult {
    let rows = app.store.dead_letters(500).await?;
    let views: Vec<DeadLetterView> = rows.iter().map(DeadLetterView::from).collect();
    Ok(Json(views).into_response())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub seq: i64,
    pub queue: String,
    /// The id of the message sent again.
    pub message_id: String,
    pub replayed_at: DateTime<Utc>,
}

/// Puts a dead letter's message back on the queue it came from, once.
/// The row is marked first, so a second replay (or a racing one on
/// another instance) is refused with 409 instead of sending it twice. The
/// message goes out under a new id (`<original>-replay-<seq>`): Service
/// Bus's duplicate detection would drop the original's.
#[utoipa::path(post, path = "/api/deadletters/{seq}/replay", tag = "operations",
    params(("seq" = i64, Path, description = "The dead letter's `seq`")),
    responses(
        (status = 202, description = "Sent again", body = Replayed),
        (status = 400, description = "`seq` is not a number (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "No such dead letter (`dead_letter_not_found`)", body = ErrorBody),
        (status = 409, description = "Replayed before (`conflict_replayed`)", body = ErrorBody),
        (status = 503, description = "The queue did not take it; the mark is cleared, try again (`unavailable`)", body = ErrorBody),
    ))]
pub async fn replay(State(app): State<App>, Path(seq): Path<String>) -> ApiResult {
    let seq: i64 = seq
        .parse()
        .map_err(|_| ApiError::parameter("seq", "a dead letter's seq (a whole number)", &seq))?;
    let now = app.clock.now();
    let d = match app.store.mark_replayed(seq, now).await? {
        ReplayMark::Marked(d) => d,
        ReplayMark::Already(at) => {
            return Err(ApiError::conflict(
                ErrorCode::ConflictReplayed,
                format!(
                    "dead letter {seq} was replayed at {}; it is not sent twice",
                    at.to_rfc3339()
                ),
            ))
        }
        ReplayMark::Missing => {
            return Err(ApiError::not_found(
                ErrorCode::DeadLetterNotFound,
                format!("no dead letter {seq} (GET /api/deadletters lists them)"),
            ))
        }
    };
    let message_id = format!("{}-replay-{seq}", d.message_id);
    let sent = app
        .queue
        .send(
            &d.queue,
            OutgoingMessage {
                message_id: message_id.clone(),
                body: d.body.clone(),
                delay: std::time::Duration::ZERO,
            },
        )
        .await;
    if let Err(e) = sent {
        tracing::warn!(seq, queue = %d.queue, error = %e, "dead letter replay not sent; mark cleared");
        app.store.unmark_replayed(seq).await?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("the queue {} did not take the message; try again", d.queue),
        ));
    }
    tracing::info!(seq, queue = %d.queue, message = %message_id, "dead letter replayed");
    let reply = Replayed {
        seq,
        queue: d.queue,
        message_id,
        replayed_at: now,
    };
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

#[derive(Deserialize)]
pub struct CodeQuery {
    code: Option<String>,
}

fn events_authorized(app: &App, headers: &HeaderMap, code: Option<&str>) -> bool {
    let Some(key) = &app.settings.events_key else {
        return true;
    };
    let given = headers
        .get(super::auth::KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(code);
    given.is_some_and(|g| super::auth::matches(std::slice::from_ref(key), g))
}

/// Base-image events from Event Grid (CloudEvents or Event Grid schema),
/// with the events key (`x-kiln-key` header or `code` query), not an API key.
#[utoipa::path(post, path = "/api/events/base-image", tag = "events", security(()),
    params(("code" = Option<String>, Query, description = "The events key, when not in `x-kiln-key`")),
    request_body(content = Object, description = "An Event Grid or CloudEvents batch"),
    responses(
        (status = 200, description = "What the events became", body = Object),
        (status = 400, description = "Not an event batch (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong events key (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`payload_too_large`)", body = ErrorBody),
    ))]
pub async fn base_image_event(
    State(app): State<App>,
    Query(q): Query<CodeQuery>,
    headers: HeaderMap,
    Body(body): Body<EVENTS_BODY_LIMIT>,
) -> ApiResult {
    if !events_authorized(&app, &headers, q.code.as_deref()) {
        tracing::warn!("base-image event refused: missing or wrong events key");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong events key (x-kiln-key header or code query)",
        ));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match crate::app::triggers::base_image_events(
        &app,
        &body,
        header("aeg-event-type").as_deref(),
        header("content-type").as_deref(),
    )
    .await?
    {
        Ok(outcome) => {
            let reply: Value = outcome.reply();
            Ok(Json(reply).into_response())
        }
        Err(reason) => Err(ApiError::bad_request(reason)),
    }
}

/// CloudEvents webhook abuse protection (the handshake Event Grid uses for CloudEvents).
pub async fn event_options(headers: HeaderMap) -> Response {
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
