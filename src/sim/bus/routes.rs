//! The Service Bus REST surface over [`super::Bus`]:
//!
//! | request | answer |
//! |---|---|
//! | `POST /{queue}/messages` (`BrokerProperties`: `MessageId`, `ScheduledEnqueueTimeUtc`, `Label`) | 201; 400 for unreadable properties; 410 for an unknown queue |
//! | `POST /{queue}/messages/head?timeout=N` | 201 with the body, `BrokerProperties` and a `Location` lock URI; 204 when nothing came within N s |
//! | `DELETE {lock URI}` (complete) · `PUT {lock URI}` (unlock) · `POST {lock URI}` (renew) | 200; 404 when the lock is not held |
//!
//! The same under `/{queue}/$DeadLetterQueue/…`. A lock URI is
//! `{base}/{queue}/messages/{MessageId}/{LockToken}`; the sequence number
//! works in place of the id, as in Service Bus.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Bus, BusError, Locked, NewMessage, DEAD_LETTER_SUFFIX};

/// Longest receive wait a request may ask for, in wall seconds.
const MAX_RECEIVE_TIMEOUT_SECS: u64 = 60;

#[derive(Clone)]
struct BusState {
    bus: Arc<Bus>,
    /// The namespace's base URL as clients reach it, for `Location`.
    base_url: String,
}

/// The routes, relative to the namespace's base URL `base_url`.
pub fn router(bus: Arc<Bus>, base_url: &str) -> Router {
    let dlq = DEAD_LETTER_SUFFIX;
    Router::new()
        .route("/{queue}/messages", post(send))
        .route("/{queue}/messages/head", post(receive_main))
        .route(
            &format!("/{{queue}}/{dlq}/messages/head"),
            post(receive_dead),
        )
        .route(
            "/{queue}/messages/{id}/{token}",
            post(renew_main).put(unlock_main).delete(complete_main),
        )
        .route(
            &format!("/{{queue}}/{dlq}/messages/{{id}}/{{token}}"),
            post(renew_dead).put(unlock_dead).delete(complete_dead),
        )
        .with_state(BusState {
            bus,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the form Service Bus uses for times.
pub fn rfc1123(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A path segment: everything but RFC 3986's unreserved characters encoded,
/// so a MessageId with `/` or `?` still names one segment of the lock URI.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn error(status: StatusCode, detail: &str) -> Response {
    // Service Bus answers errors with a small XML document.
    (
        status,
        [("content-type", "application/xml; charset=utf-8")],
        format!(
            "<Error><Code>{}</Code><Detail>{}</Detail></Error>",
            status.as_u16(),
            detail.replace('<', "&lt;")
        ),
    )
        .into_response()
}

fn bus_error(e: BusError) -> Response {
    match e {
        BusError::NoEntity(_) => error(StatusCode::GONE, &e.to_string()),
        BusError::LockLost => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SendProperties {
    message_id: Option<String>,
    label: Option<String>,
    scheduled_enqueue_time_utc: Option<String>,
}

/// Reads `BrokerProperties`; unknown keys are ignored, as Service Bus does.
fn send_properties(headers: &HeaderMap) -> Result<SendProperties, String> {
    let Some(raw) = headers.get("brokerproperties") else {
        return Ok(SendProperties::default());
    };
    let text = raw
        .to_str()
        .map_err(|_| "BrokerProperties: not ASCII text".to_string())?;
    serde_json::from_str(text).map_err(|e| format!("BrokerProperties: not a JSON object: {e}"))
}

async fn send(
    State(s): State<BusState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let props = match send_properties(&headers) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let scheduled = match props.scheduled_enqueue_time_utc.as_deref() {
        None => None,
        Some(t) => match DateTime::parse_from_rfc2822(t) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("BrokerProperties.ScheduledEnqueueTimeUtc: expected an RFC 1123 time such as `Sun, 06 Nov 1994 08:49:37 GMT`, got `{t}`: {e}"),
                )
            }
        },
    };
    let message = NewMessage {
        message_id: props.message_id,
        body: body.to_vec(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        label: props.label,
        scheduled_enqueue: scheduled,
    };
    match s.bus.with(|ns, now| ns.send(&queue, message, now)) {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e) => bus_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct ReceiveQuery {
    timeout: Option<u64>,
}

fn path_of(queue: &str, dead: bool) -> String {
    if dead {
        format!("{queue}/{DEAD_LETTER_SUFFIX}")
    } else {
        queue.to_string()
    }
}

async fn receive(s: BusState, path: String, q: ReceiveQuery) -> Response {
    let timeout = Duration::from_secs(q.timeout.unwrap_or(60).min(MAX_RECEIVE_TIMEOUT_SECS));
    match s.bus.receive(&path, timeout).await {
        Ok(Some(locked)) => delivered(&s.base_url, &path, locked),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bus_error(e),
    }
}

fn delivered(base_url: &str, path: &str, l: Locked) -> Response {
    let m = &l.message;
    let mut props = json!({
        "DeliveryCount": m.delivery_count,
        "EnqueuedSequenceNumber": 0,
        "EnqueuedTimeUtc": rfc1123(m.enqueued_time),
        "LockToken": l.lock_token.to_string(),
        "LockedUntilUtc": rfc1123(l.locked_until),
        "MessageId": m.message_id,
        "SequenceNumber": m.sequence_number,
        "State": "Active",
    });
    if let Some(label) = &m.label {
        props["Label"] = json!(label);
    }
    let location = format!(
        "{base_url}/{path}/messages/{}/{}",
        percent_encode(&m.message_id),
        l.lock_token
    );
    let mut response = (
        StatusCode::CREATED,
        [
            ("brokerproperties", props.to_string()),
            ("location", location),
            (
                "content-type",
                m.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            ),
        ],
        m.body.clone(),
    )
        .into_response();
    // Application properties travel as headers; the dead-letter reason is one.
    if let Some(reason) = &m.dead_letter_reason {
        if let Ok(v) = reason.parse() {
            response.headers_mut().insert("deadletterreason", v);
        }
    }
    response
}

async fn receive_main(
    State(s): State<BusState>,
    Path(queue): Path<String>,
    Query(q): Query<ReceiveQuery>,
) -> Response {
    receive(s, path_of(&queue, false), q).await
}

async fn receive_dead(
    State(s): State<BusState>,
    Path(queue): Path<String>,
    Query(q): Query<ReceiveQuery>,
) -> Response {
    receive(s, path_of(&queue, true), q).await
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    Complete,
    Unlock,
    Renew,
}

fn settle(s: &BusState, path: &str, id: &str, token: &str, how: Settle) -> Response {
    let Ok(token) = uuid::Uuid::parse_str(token) else {
        return bus_error(BusError::LockLost);
    };
    let r = s.bus.with(|ns, now| match how {
        Settle::Complete => ns.complete(path, id, token, now).map(|()| None),
        Settle::Unlock => ns.abandon(path, id, token, now).map(|()| None),
        Settle::Renew => ns.renew(path, id, token, now).map(Some),
    });
    match r {
        Ok(None) => StatusCode::OK.into_response(),
        Ok(Some(until)) => (
            StatusCode::OK,
            [(
                "brokerproperties",
                json!({ "LockedUntilUtc": rfc1123(until) }).to_string(),
            )],
        )
            .into_response(),
        Err(e) => bus_error(e),
    }
}

type LockPath = Path<(String, String, String)>;

async fn complete_main(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, false), &id, &t, Settle::Complete)
}
async fn unlock_main(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, false), &id, &t, Settle::Unlock)
}
async fn renew_main(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, false), &id, &t, Settle::Renew)
}
async fn complete_dead(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, true), &id, &t, Settle::Complete)
}
async fn unlock_dead(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, true), &id, &t, Settle::Unlock)
}
async fn renew_dead(State(s): State<BusState>, Path((q, id, t)): LockPath) -> Response {
    settle(&s, &path_of(&q, true), &id, &t, Settle::Renew)
}
