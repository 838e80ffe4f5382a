//! The Function App's own HTTP side: the Event Grid webhook the runtime
//! serves for `eventGridTrigger` functions, and HTTP forwarding of `/api/…`
//! to the handler (`enableForwardingHttpRequest`), each to one live instance.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{payload, InvocationTrigger, Shared};
use crate::host::function_json::TriggerSpec;

/// Largest request body forwarded, as the Functions host limits it (100 MB).
const MAX_BODY: usize = 100 * 1024 * 1024;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/runtime/webhooks/eventgrid", post(event_grid))
        .route("/api", any(forward))
        .route("/api/{*path}", any(forward))
        .with_state(shared)
}

#[derive(Debug, Deserialize)]
struct WebhookQuery {
    #[serde(rename = "functionName")]
    function_name: String,
}

/// Event Grid's delivery: an array of events. The validation handshake is
/// the runtime's (the function never sees it); each other event is one invocation.
async fn event_grid(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<WebhookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(spec) = shared
        .specs
        .iter()
        .find(|s| s.name.as_str() == q.function_name && s.trigger == TriggerSpec::EventGrid)
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no eventGridTrigger function `{}`", q.function_name),
        )
            .into_response();
    };
    let events: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(Value::Array(a)) => a,
        Ok(other) => vec![other],
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response();
        }
    };
    let validation = headers
        .get("aeg-event-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SubscriptionValidation"));
    if validation {
        let code = events
            .first()
            .and_then(|e| e.pointer("/data/validationCode"))
            .cloned()
            .unwrap_or(Value::Null);
        return Json(json!({ "validationResponse": code })).into_response();
    }
    let function = spec.name.as_str();
    let mut all_ok = true;
    for event in &events {
        let started = shared.now();
        let invoked = shared
            .invoke(
                function,
                &payload::event_invocation(function, &spec.binding_name, event, started),
            )
            .await;
        all_ok &= invoked.succeeded();
        shared.record_invocation(
            function,
            InvocationTrigger::EventGrid {
                event_id: event["id"].as_str().unwrap_or("").to_string(),
            },
            &invoked,
            started,
        );
    }
    // Event Grid retries a delivery that was not answered 200.
    if all_ok {
        StatusCode::OK.into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// Whether the request has the function key in `x-functions-key` or `?code=`.
fn carries_key(req: &Request, key: &str) -> bool {
    let header = req
        .headers()
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok());
    let code = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("code=")));
    header == Some(key) || code == Some(key)
}

/// Headers that belong to one hop, not to the forwarded request or answer.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let allowed = shared.specs.iter().any(|s| match &s.trigger {
        TriggerSpec::Http { methods, .. } => {
            methods.is_empty()
                || methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(req.method().as_str()))
        }
        TriggerSpec::Timer { .. } | TriggerSpec::ServiceBus { .. } | TriggerSpec::EventGrid => {
            false
        }
    });
    if !allowed {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(key) = &shared.opts.function_key {
        if !carries_key(&req, key) {
            // The host's answer to a missing or wrong key: 401, no body.
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let timeout = shared.timeout_wall(std::time::Duration::from_secs(1));
    // Any live instance serves it. One that refuses the connection never saw
    // the request, so the next live one gets it (as the front end routes
    // around a dead instance); any other failure is the caller's 502.
    let answer = loop {
        let Some(instance) = shared.instances.pick(timeout).await else {
            return (StatusCode::SERVICE_UNAVAILABLE, "no live instance").into_response();
        };
        let mut out = shared
            .http
            .request(parts.method.clone(), format!("{}{path}", instance.url));
        for (k, v) in &parts.headers {
            if !hop_by_hop(k.as_str()) {
                out = out.header(k, v);
            }
        }
        match out.timeout(timeout).body(body.clone()).send().await {
            Ok(a) => break a,
            Err(e) if e.is_connect() => shared.instances.mark_down(&instance),
            Err(e) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("the handler gave no answer: {e}"),
                )
                    .into_response()
            }
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (k, v) in &headers {
        if !hop_by_hop(k.as_str()) {
            response.headers_mut().append(k, v.clone());
        }
    }
    response
}
