//! The status of long-running operations (template PUT, DELETE, run,
//! cancel; gallery PATCH and DELETE), read from what they act on at the
//! request's now, and `{value, nextLink}` paging shared by the lists.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::build::{Outcome, RunView};
use super::image_builder::run_message;
use super::world::{Operation, World};
use super::{arm_error, Answer, ArmRequest, ArmWorld};

/// How often a client is told to come back when nothing is due sooner (sim time).
pub(crate) const POLL: Duration = Duration::from_secs(60);

/// Sim time until `at` (at most [`POLL`]); [`POLL`] when it never comes.
pub(crate) fn until(now: DateTime<Utc>, at: Option<DateTime<Utc>>) -> Duration {
    at.and_then(|a| (a - now).to_std().ok())
        .map(|d| d.min(POLL))
        .unwrap_or(POLL)
}

/// One `{value, nextLink}` page of `items`, `$skipToken` being the offset.
pub(crate) fn page(world: &ArmWorld, req: &ArmRequest, items: Vec<Value>, base: &str) -> Value {
    let skip: usize = req
        .query("$skipToken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let size = world.options.page_size.max(1);
    let value: Vec<Value> = items.iter().skip(skip).take(size).cloned().collect();
    let mut out = json!({ "value": value });
    if skip + size < items.len() {
        out["nextLink"] = json!(world.url(&format!("{base}&$skipToken={}", skip + size)));
    }
    out
}

/// An operation's status body: InProgress, Succeeded, Failed or Canceled.
fn status_of(
    world: &ArmWorld,
    op: &Operation,
    w: &World,
    now: DateTime<Utc>,
) -> (String, Option<Value>, Duration) {
    let in_progress = |at: Option<DateTime<Utc>>| ("InProgress".to_string(), None, until(now, at));
    let done = || ("Succeeded".to_string(), None, POLL);
    match op {
        Operation::TemplateCreate { template } => match w.templates.get(template) {
            None => done(),
            Some(t) => match (t.provisioned_at, &t.provisioning_error) {
                (at, _) if at.is_none_or(|a| a > now) => in_progress(at),
                (_, Some((code, message))) => (
                    "Failed".into(),
                    Some(json!({"code": code, "message": message})),
                    POLL,
                ),
                (_, None) => done(),
            },
        },
        Operation::TemplateDelete { done: at, .. } => match at {
            Some(a) if *a <= now => done(),
            _ => in_progress(*at),
        },
        Operation::Run { template, run } => {
            let Some(t) = w.templates.get(template).filter(|t| t.runs == *run) else {
                return ("Canceled".into(), None, POLL);
            };
            let Some(r) = &t.run else {
                return ("Canceled".into(), None, POLL);
            };
            let v = r.run.view(now);
            match &v {
                RunView::Running(_) | RunView::Canceling(_) => {
                    in_progress(Some(r.run.schedule.ends))
                }
                RunView::Canceled { .. } => ("Canceled".into(), None, POLL),
                RunView::Ended {
                    outcome: Outcome::Failed { .. },
                } => (
                    "Failed".into(),
                    Some(
                        json!({"code": "PackerBuildFailed", "message": run_message(world, t, r, &v)}),
                    ),
                    POLL,
                ),
                RunView::Ended { .. } => done(),
            }
        }
        Operation::Cancel { template, run } => {
            let run_view = w
                .templates
                .get(template)
                .filter(|t| t.runs == *run)
                .and_then(|t| t.run.as_ref());
            match run_view {
                Some(r) if !r.run.view(now).is_terminal() => {
                    in_progress(r.run.cancel.and_then(|c| c.done))
                }
                Some(_) | None => done(),
            }
        }
        Operation::VersionUpdate { done: at } | Operation::VersionDelete { done: at } => {
            if *at <= now {
                done()
            } else {
                in_progress(Some(*at))
            }
        }
    }
}

pub(crate) fn operation_status(world: &ArmWorld, id: &str) -> Answer {
    let (w, now) = world.lock();
    let Some(op) = w.operations.get(id) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            format!("The operation {id} was not found."),
        )
        .into();
    };
    let (status, error, wait) = status_of(world, op, &w, now);
    let mut body = json!({"id": id, "name": id, "status": status});
    if let Some(e) = error {
        body["error"] = e;
    }
    let mut r = Json(body).into_response();
    if status == "InProgress" {
        r.headers_mut()
            .insert(header::RETRY_AFTER, world.retry_after(wait));
    }
    r.into()
}

/// The `Location` of an operation: 202 while it runs, then 204 (or its error).
pub(crate) fn operation_result(world: &ArmWorld, id: &str) -> Answer {
    let (w, now) = world.lock();
    let Some(op) = w.operations.get(id) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            format!("The operation {id} was not found."),
        )
        .into();
    };
    let (status, error, wait) = status_of(world, op, &w, now);
    match status.as_str() {
        "InProgress" => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, world.retry_after(wait));
            r.into()
        }
        "Succeeded" => StatusCode::NO_CONTENT.into(),
        _ => {
            let e = error.unwrap_or(
                json!({"code": status, "message": format!("The operation ended {status}.")}),
            );
            (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into()
        }
    }
}
