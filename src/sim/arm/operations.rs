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
use super::customization_log::run_message;
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

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OpStatus {
    /// Come back in `wait` (sim time).
    InProgress {
        wait: Duration,
    },
    Succeeded,
    /// With its error: `{code, message}`.
    Failed {
        error: Value,
    },
    Canceled,
}

impl OpStatus {
    fn as_str(&self) -> &'static str {
        match self {
            OpStatus::InProgress { .. } => "InProgress",
            OpStatus::Succeeded => "Succeeded",
            OpStatus::Failed { .. } => "Failed",
            OpStatus::Canceled => "Canceled",
        }
    }
}

fn status_of(world: &ArmWorld, op: &Operation, w: &World, now: DateTime<Utc>) -> OpStatus {
    let in_progress = |at: Option<DateTime<Utc>>| OpStatus::InProgress {
        wait: until(now, at),
    };
    let by = |at: DateTime<Utc>| {
        if at <= now {
            OpStatus::Succeeded
        } else {
            in_progress(Some(at))
        }
    };
    match op {
        Operation::TemplateCreate { template } => {
            let Some(t) = w.templates.get(template) else {
                return OpStatus::Succeeded;
            };
            match (t.provisioned_at, &t.provisioning_error) {
                (None, _) => in_progress(None),
                (Some(at), _) if at > now => in_progress(Some(at)),
                (Some(_), Some((code, message))) => OpStatus::Failed {
                    error: json!({"code": code, "message": message}),
                },
                (Some(_), None) => OpStatus::Succeeded,
            }
        }
        Operation::TemplateDelete { done, .. } => match done {
            Some(at) => by(*at),
            None => in_progress(None),
        },
        Operation::Run { template, run } => {
            let found = w.templates.get(template).filter(|t| t.runs == *run);
            let Some((t, r)) = found.and_then(|t| t.run.as_ref().map(|r| (t, r))) else {
                // The template went, or ran again: this run is over.
                return OpStatus::Canceled;
            };
            let v = r.run.view(now);
            match &v {
                RunView::Running(_) | RunView::Canceling(_) => {
                    in_progress(Some(r.run.schedule.ends))
                }
                RunView::Canceled { .. } => OpStatus::Canceled,
                RunView::Ended {
                    outcome: Outcome::Failed { .. },
                } => OpStatus::Failed {
                    error: json!({"code": "PackerBuildFailed", "message": run_message(world, t, r, &v)}),
                },
                RunView::Ended {
                    outcome: Outcome::Succeeded | Outcome::PartiallySucceeded { .. },
                } => OpStatus::Succeeded,
            }
        }
        Operation::Cancel { template, run } => {
            let running = w
                .templates
                .get(template)
                .filter(|t| t.runs == *run)
                .and_then(|t| t.run.as_ref())
                .filter(|r| !r.run.view(now).is_terminal());
            match running {
                Some(r) => in_progress(r.run.cancel.and_then(|c| c.done)),
                None => OpStatus::Succeeded,
            }
        }
        Operation::VersionUpdate { done } | Operation::VersionDelete { done } => by(*done),
    }
}

fn not_found(id: &str) -> Answer {
    arm_error(
        StatusCode::NOT_FOUND,
        "OperationNotFound",
        format!("The operation {id} was not found."),
    )
    .into()
}

/// `Azure-AsyncOperation`: 200 with `{id, name, status, error}` while and after it runs.
pub(crate) fn operation_status(world: &ArmWorld, id: &str) -> Answer {
    let (w, now) = world.lock();
    let Some(op) = w.operations.get(id) else {
        return not_found(id);
    };
    let status = status_of(world, op, &w, now);
    let mut body = json!({"id": id, "name": id, "status": status.as_str()});
    if let OpStatus::Failed { error } = &status {
        body["error"] = error.clone();
    }
    let mut r = Json(body).into_response();
    if let OpStatus::InProgress { wait } = status {
        r.headers_mut()
            .insert(header::RETRY_AFTER, world.retry_after(wait));
    }
    r.into()
}

/// A `Location` in the ARM RPC's manner (gallery `?monitor=true`): 202 while
/// the operation runs, then 204, or its error.
pub(crate) fn operation_result(world: &ArmWorld, id: &str) -> Answer {
    let (w, now) = world.lock();
    let Some(op) = w.operations.get(id) else {
        return not_found(id);
    };
    match status_of(world, op, &w, now) {
        OpStatus::InProgress { wait } => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, world.retry_after(wait));
            r.into()
        }
        OpStatus::Succeeded => StatusCode::NO_CONTENT.into(),
        OpStatus::Failed { error } => {
            (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into()
        }
        OpStatus::Canceled => arm_error(
            StatusCode::BAD_REQUEST,
            "OperationCanceled",
            "The operation was canceled.",
        )
        .into(),
    }
}
