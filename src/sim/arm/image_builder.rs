//! `Microsoft.VirtualMachineImages/imageTemplates` 2025-10-01: PUT, GET,
//! DELETE, `run`, `cancel`, `runOutputs`, and the operations they start.
//!
//! Modelled choices where the spec is silent (see docs/simulator-arm.md):
//! a PUT over an existing template answers 409 (AIB cannot update one); a
//! DELETE while a build runs answers 409 `Conflict` at once and deletes
//! nothing (AIB refuses to delete a running template; cancel first); `run`
//! while running answers 409; `cancel` with nothing running answers 409.

use std::time::Duration;

use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::build::{BuildPlan, Cancel, Outcome, Run, RunView, Schedule};
use super::customization_log::{describe, run_message};
use super::distribute::shared_image;
use super::operations::{operation_status, page, until};
use super::template_check::check;
use super::world::{Fault, LroKind, Operation, Output, Template, TemplateRun, World};
use super::{arm_error, Answer, ArmRequest, ArmWorld};

pub const API_VERSION: &str = "2025-10-01";
const TYPE: &str = "Microsoft.VirtualMachineImages/imageTemplates";
/// AIB's zero time for an unfinished run's end.
const NO_TIME: &str = "0001-01-01T00:00:00Z";

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    let s = |i| req.seg(i);
    if s(0) != "subscriptions" {
        return None;
    }
    // /subscriptions/{s}/providers/Microsoft.VirtualMachineImages/locations/{l}/operations/{id}
    if s(2) == "providers"
        && s(3) == "microsoft.virtualmachineimages"
        && s(4) == "locations"
        && s(6) == "operations"
        && req.segments.len() == 8
        && req.method == axum::http::Method::GET
    {
        return Some(operation_status(world, req.raw(7)));
    }
    if s(2) != "resourcegroups"
        || s(4) != "providers"
        || s(5) != "microsoft.virtualmachineimages"
        || s(6) != "imagetemplates"
        || req.segments.len() < 8
    {
        return None;
    }
    if let Some(refused) = super::api_version(req, API_VERSION) {
        return Some(refused);
    }
    let name = req.raw(7);
    let key = template_key(req.raw(1), req.raw(3), name);
    let id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/{TYPE}/{name}",
        req.raw(1),
        req.raw(3)
    );
    use axum::http::Method as M;
    Some(match (&req.method, s(8), req.segments.len()) {
        (&M::PUT, _, 8) => put(world, req, &key, &id).into(),
        (&M::GET, _, 8) => get(world, &key, name, req.raw(3)).into(),
        (&M::DELETE, _, 8) => delete(world, &key).into(),
        (&M::POST, "run", 9) => return Some(run(world, &key, name, req.raw(3))),
        (&M::POST, "cancel", 9) => cancel(world, &key, name, req.raw(3)).into(),
        (&M::GET, "runoutputs", 9) => run_outputs(world, req, &key, &id).into(),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not served on {}", req.method, req.path),
        )
        .into(),
    })
}

pub(crate) fn template_key(sub: &str, rg: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/{TYPE}/{name}").to_ascii_lowercase()
}

fn not_found(name: &str, rg: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The Resource '{TYPE}/{name}' under resource group '{rg}' was not found."),
    )
}

/// The template's region (a PUT without one is refused).
fn location_of(body: &Value) -> String {
    body.get("location")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn operation_url(world: &ArmWorld, t: &Template, id: &str) -> String {
    world.url(&format!(
        "/subscriptions/{}/providers/Microsoft.VirtualMachineImages/locations/{}/operations/{id}?api-version={API_VERSION}",
        t.subscription,
        location_of(&t.body).to_ascii_lowercase().replace(' ', "")
    ))
}

/// Which operation headers an answer carries, as the spec declares them:
/// PUT and run/cancel `Azure-AsyncOperation` (run/cancel also `Location`),
/// DELETE only `Location`. Both are the operation's status URL, as in the
/// spec's examples: it answers 200 with `{status}` whether or not the
/// operation has ended.
#[derive(Clone, Copy)]
struct Links {
    async_operation: bool,
    location: bool,
}

const PUT_LINKS: Links = Links {
    async_operation: true,
    location: false,
};
const ACTION_LINKS: Links = Links {
    async_operation: true,
    location: true,
};
const DELETE_LINKS: Links = Links {
    async_operation: false,
    location: true,
};

/// A response with the headers of an accepted long-running operation.
fn accepted(
    world: &ArmWorld,
    status: StatusCode,
    t: &Template,
    op: &str,
    links: Links,
    wait: Duration,
    body: Option<Value>,
) -> Response {
    let mut r = match body {
        Some(b) => (status, Json(b)).into_response(),
        None => status.into_response(),
    };
    let h = r.headers_mut();
    let url = operation_url(world, t, op);
    if let (true, Ok(v)) = (links.async_operation, url.parse()) {
        h.insert(HeaderName::from_static("azure-asyncoperation"), v);
    }
    if let (true, Ok(v)) = (links.location, url.parse()) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::RETRY_AFTER, world.retry_after(wait));
    r
}

fn put(world: &ArmWorld, req: &ArmRequest, key: &str, id: &str) -> Response {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized: expected a JSON object.",
            )
        }
    };
    if body
        .get("location")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    }
    let (sub, rg, name) = (req.raw(1), req.raw(3), req.raw(7));
    let (mut w, now) = world.lock();
    if w.templates.contains_key(key) {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The image template {name} already exists; Image Builder cannot update an image template in place. Delete it, or use a new name."),
        );
    }
    let error = check(&body, sub);
    let never = w.has_fault(|f| matches!(f, Fault::LroNeverFinishes { template, operation: LroKind::Put } if names(template, name)));
    let provisioned_at =
        (!never).then(|| now + chrono::Duration::seconds(w.profile.provisioning_secs as i64));
    let staging_group = match body
        .pointer("/properties/stagingResourceGroup")
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty())
    {
        Some(g) if error.is_none() => g.rsplit('/').next().unwrap_or(g).to_string(),
        _ => format!("IT_{rg}_{name}_{}", w.hex(key, 8)),
    };
    let template = Template {
        id: id.to_string(),
        name: name.to_string(),
        subscription: sub.to_string(),
        resource_group: rg.to_string(),
        body,
        provisioned_at,
        provisioning_error: error.map(|(c, m)| (c.to_string(), m)),
        deleting: None,
        staging_group,
        run: None,
        runs: 0,
    };
    let op = w.guid(key);
    w.operations.insert(
        op.clone(),
        Operation::TemplateCreate {
            template: key.to_string(),
        },
    );
    w.staging.insert(
        super::world::staging_key(sub, &template.staging_group),
        key.to_string(),
    );
    let view = view(world, &template, now);
    let wait = until(now, provisioned_at);
    w.templates.insert(key.to_string(), template.clone());
    accepted(
        world,
        StatusCode::CREATED,
        &template,
        &op,
        PUT_LINKS,
        wait,
        Some(view),
    )
}

fn provisioning_state(t: &Template, now: DateTime<Utc>) -> &'static str {
    if t.deleting.is_some() {
        "Deleting"
    } else if t.provisioned_at.is_none_or(|at| at > now) {
        "Creating"
    } else if t.provisioning_error.is_some() {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// The template resource as GET answers it.
pub(crate) fn view(world: &ArmWorld, t: &Template, now: DateTime<Utc>) -> Value {
    let mut props = t
        .body
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let state = provisioning_state(t, now);
    props.insert("provisioningState".into(), json!(state));
    if let (Some((code, message)), "Failed") = (&t.provisioning_error, state) {
        props.insert(
            "provisioningError".into(),
            json!({"provisioningErrorCode": code, "message": message}),
        );
    }
    props.insert(
        "exactStagingResourceGroup".into(),
        json!(format!(
            "/subscriptions/{}/resourceGroups/{}",
            t.subscription, t.staging_group
        )),
    );
    if let Some(run) = &t.run {
        props.insert("lastRunStatus".into(), last_run_status(world, t, run, now));
        if let (Some(v), Some(source)) = (
            &run.exact_version,
            props.get_mut("source").and_then(Value::as_object_mut),
        ) {
            source.insert("exactVersion".into(), json!(v));
        }
    }
    let mut identity = t.body.get("identity").cloned().unwrap_or(json!({}));
    if let Some(ids) = identity
        .get_mut("userAssignedIdentities")
        .and_then(Value::as_object_mut)
    {
        for (i, v) in ids.values_mut().enumerate() {
            *v = json!({"principalId": format!("00000000-0000-0000-0000-00000000000{}", i % 10), "clientId": format!("00000000-0000-0000-0000-0000000000a{}", i % 10)});
        }
    }
    json!({
        "id": t.id,
        "name": t.name,
        "type": TYPE,
        "location": location_of(&t.body),
        "tags": t.body.get("tags").cloned().unwrap_or(json!({})),
        "identity": identity,
        "properties": props,
    })
}

fn last_run_status(world: &ArmWorld, t: &Template, run: &TemplateRun, now: DateTime<Utc>) -> Value {
    let v = run.run.view(now);
    let end = run.run.ended_at(now).map(time).unwrap_or(NO_TIME.into());
    let mut status = json!({
        "startTime": time(run.run.schedule.started),
        "endTime": end,
        "runState": v.run_state(),
        "message": run_message(world, t, run, &v),
    });
    if let Some(p) = v.sub_state() {
        status["runSubState"] = json!(p.as_str());
    }
    status
}

fn get(world: &ArmWorld, key: &str, name: &str, rg: &str) -> Response {
    let (w, now) = world.lock();
    match w.templates.get(key) {
        Some(t) => Json(view(world, t, now)).into_response(),
        None => not_found(name, rg),
    }
}

fn delete(world: &ArmWorld, key: &str) -> Response {
    let (mut w, now) = world.lock();
    let Some(t) = w.templates.get(key) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if t.run
        .as_ref()
        .is_some_and(|r| !r.run.view(now).is_terminal())
    {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The image template {} cannot be deleted while a build is running: cancel the build first, then delete the template.", t.name),
        );
    }
    let name = t.name.clone();
    let never = w.has_fault(|f| matches!(f, Fault::LroNeverFinishes { template, operation: LroKind::Delete } if names(template, &name)));
    let done = (!never).then(|| now + chrono::Duration::seconds(w.profile.deleting_secs as i64));
    let op = w.guid(key);
    w.operations.insert(
        op.clone(),
        Operation::TemplateDelete {
            template: key.to_string(),
            done,
        },
    );
    let Some(t) = w.templates.get_mut(key) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if t.deleting.is_none() {
        t.deleting = Some(done);
    }
    accepted(
        world,
        StatusCode::ACCEPTED,
        t,
        &op,
        DELETE_LINKS,
        until(now, done),
        None,
    )
}

/// The platform image version a run builds from, as AIB reports it in
/// `source.exactVersion`: the version asked for, or for `latest` the newest
/// seeded in the template's region (none seeded: not reported).
fn exact_version(w: &World, props: &Value, location: &str) -> Option<String> {
    let source = props.get("source")?;
    if source.get("type").and_then(Value::as_str) != Some("PlatformImage") {
        return None;
    }
    let text = |k: &str| source.get(k).and_then(Value::as_str).unwrap_or("");
    let version = text("version");
    if !version.eq_ignore_ascii_case("latest") {
        return Some(version.to_string());
    }
    let key = super::marketplace::line_key(location, text("publisher"), text("offer"), text("sku"));
    w.marketplace
        .get(&key)?
        .iter()
        .map(|(v, _)| v.clone())
        .max_by(|a, b| crate::domain::version_order::compare(a, b))
}

fn run(world: &ArmWorld, key: &str, name: &str, rg: &str) -> Answer {
    let (mut w, now) = world.lock();
    let Some(t) = w.templates.get(key) else {
        return not_found(name, rg).into();
    };
    if provisioning_state(t, now) != "Succeeded" {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "The image template {name} cannot run: its provisioningState is {}.",
                provisioning_state(t, now)
            ),
        )
        .into();
    }
    if t.run
        .as_ref()
        .is_some_and(|r| !r.run.view(now).is_terminal())
    {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The image template {name} is already running a build."),
        )
        .into();
    }
    let props = t.body.get("properties").cloned().unwrap_or(Value::Null);
    let customizers: Vec<String> = props
        .get("customize")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| describe(c, i))
        .collect();
    let last = customizers.len().saturating_sub(1);
    let failing_step = w.faults.iter().find_map(|f| {
        let Fault::BuildFails { template, step } = f else {
            return None;
        };
        names(template, name).then(|| step.map_or(last, |s| s.saturating_sub(1)))
    });
    let failing_region = w.faults.iter().find_map(|f| {
        let Fault::ReplicationFails { template, region } = f else {
            return None;
        };
        names(template, name).then(|| region.clone())
    });
    let plan = BuildPlan {
        customizers,
        validate: props.get("validate").is_some_and(Value::is_object),
        failing_step,
        failing_region,
    };
    let source_version = exact_version(&w, &props, &location_of(&t.body));
    let outputs: Vec<Output> = props
        .get("distribute")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            let shared = (d.get("type").and_then(Value::as_str) == Some("SharedImage"))
                .then(|| shared_image(&w, d, source_version.as_deref()))
                .flatten();
            Output {
                run_output_name: d
                    .get("runOutputName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                artifact_id: shared
                    .as_ref()
                    // As the service writes it (ListRunOutputs example).
                    .map(|s| format!("{}/imageversions/{}", s.definition, s.version))
                    .or_else(|| d.get("imageId").and_then(Value::as_str).map(str::to_string)),
                shared,
            }
        })
        .collect();
    let lost =
        w.has_fault(|f| matches!(f, Fault::RunAnswerLost { template } if names(template, name)));
    let op = w.guid(key);
    let account = w.hex(key, 20);
    let folder = w.guid(key);
    let profile = w.profile;
    let Some(t) = w.templates.get_mut(key) else {
        return not_found(name, rg).into();
    };
    t.runs += 1;
    let run_no = t.runs;
    let schedule = Schedule::plan(now, &profile, &plan);
    let wait = until(now, Some(schedule.ends));
    t.run = Some(TemplateRun {
        run: Run {
            schedule,
            cancel: None,
        },
        operation: op.clone(),
        storage_account: account,
        log_folder: folder,
        outputs,
        distributed: false,
        exact_version: source_version,
    });
    let answer = accepted(
        world,
        StatusCode::ACCEPTED,
        t,
        &op,
        ACTION_LINKS,
        wait,
        None,
    );
    w.operations.insert(
        op,
        Operation::Run {
            template: key.to_string(),
            run: run_no,
        },
    );
    if lost {
        return Answer::Never;
    }
    answer.into()
}

fn cancel(world: &ArmWorld, key: &str, name: &str, rg: &str) -> Response {
    let (mut w, now) = world.lock();
    let stuck =
        w.has_fault(|f| matches!(f, Fault::StuckCanceling { template } if names(template, name)));
    let canceling = w.profile.canceling_secs as i64;
    let op = w.guid(key);
    let Some(t) = w.templates.get_mut(key) else {
        return not_found(name, rg);
    };
    let run_no = t.runs;
    let Some(run) = t.run.as_mut().filter(|r| !r.run.view(now).is_terminal()) else {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The image template {name} has no build running to cancel."),
        );
    };
    if run.run.cancel.is_none() {
        run.run.cancel = Some(Cancel {
            at: now,
            done: (!stuck).then(|| now + chrono::Duration::seconds(canceling)),
        });
    }
    let done = run.run.cancel.and_then(|c| c.done);
    let wait = until(now, done);
    let t = t.clone();
    w.operations.insert(
        op.clone(),
        Operation::Cancel {
            template: key.to_string(),
            run: run_no,
        },
    );
    accepted(
        world,
        StatusCode::ACCEPTED,
        &t,
        &op,
        ACTION_LINKS,
        wait,
        None,
    )
}

fn run_outputs(world: &ArmWorld, req: &ArmRequest, key: &str, id: &str) -> Response {
    let (w, now) = world.lock();
    let Some(t) = w.templates.get(key) else {
        return not_found(req.raw(7), req.raw(3));
    };
    let items: Vec<Value> = t
        .run
        .iter()
        .filter(|r| r.distributed)
        .flat_map(|r| {
            let state = match r.run.view(now) {
                RunView::Ended {
                    outcome: Outcome::Succeeded | Outcome::PartiallySucceeded { .. },
                } => "Succeeded",
                RunView::Ended {
                    outcome: Outcome::Failed { .. },
                }
                | RunView::Canceled { .. } => "Failed",
                RunView::Running(_) | RunView::Canceling(_) => "Creating",
            };
            r.outputs.iter().map(move |o| {
                let mut props = Map::new();
                if let Some(a) = &o.artifact_id {
                    props.insert("artifactId".into(), json!(a));
                }
                props.insert("provisioningState".into(), json!(state));
                json!({
                    "id": format!("{id}/runOutputs/{}", o.run_output_name),
                    "name": o.run_output_name,
                    "type": "Microsoft.VirtualMachineImages/imageTemplates/runOutputs",
                    "properties": props,
                })
            })
        })
        .collect();
    let base = format!("{id}/runOutputs?api-version={API_VERSION}");
    Json(page(world, req, items, &base)).into_response()
}

/// Whether a fault's `template` names template `name`: exactly, or as a
/// glob (`kiln-*-a1`: every build's first attempt), case-insensitively, so a
/// scenario can script a fault before the build id is known.
fn names(pattern: &str, name: &str) -> bool {
    crate::sim::faults::glob(&pattern.to_ascii_lowercase(), &name.to_ascii_lowercase())
}
