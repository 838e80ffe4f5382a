//! Compute Gallery image versions, 2025-03-03: GET (with
//! `$expand=ReplicationStatus`), list with `nextLink` paging, PATCH and
//! DELETE as long-running operations. Versions come from runs reaching
//! Distributing, or are seeded through `/_sim/arm/gallery/versions`.
//! Image definitions are not modelled: any definition path lists the
//! versions under it.

use std::time::Duration;

use axum::http::{header, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::operations::{operation_result, operation_status, page};
use super::world::{region_key, Operation, Version};
use super::{arm_error, Answer, ArmRequest, ArmWorld};

pub const API_VERSION: &str = "2025-03-03";
const TYPE: &str = "Microsoft.Compute/galleries/images/versions";
/// How long a PATCH stays `Updating` (sim time).
const UPDATING: Duration = Duration::from_secs(10);

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    let s = |i| req.seg(i);
    if s(0) != "subscriptions" {
        return None;
    }
    if s(2) == "providers"
        && s(3) == "microsoft.compute"
        && s(4) == "locations"
        && s(6) == "capsoperations"
        && req.segments.len() == 8
        && req.method == Method::GET
    {
        return Some(match req.query("monitor") {
            Some(_) => operation_result(world, req.raw(7)),
            None => operation_status(world, req.raw(7)),
        });
    }
    let is_versions = s(2) == "resourcegroups"
        && s(4) == "providers"
        && s(5) == "microsoft.compute"
        && s(6) == "galleries"
        && s(8) == "images"
        && s(10) == "versions";
    if !is_versions {
        return None;
    }
    if let Some(refused) = super::api_version(req, API_VERSION) {
        return Some(refused);
    }
    let definition = format!("/{}", req.raw[..10].join("/"));
    Some(match (&req.method, req.segments.len()) {
        (&Method::GET, 11) => list(world, req, &definition).into(),
        (&Method::GET, 12) => get(world, req, &definition).into(),
        (&Method::PATCH, 12) => patch(world, req, &definition).into(),
        (&Method::DELETE, 12) => delete(world, req, &definition).into(),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not served on {}", req.method, req.path),
        )
        .into(),
    })
}

fn key(definition: &str, version: &str) -> String {
    format!("{definition}/versions/{version}").to_ascii_lowercase()
}

pub(crate) fn provisioning_state(v: &Version, now: DateTime<Utc>) -> &'static str {
    if v.deleting_at.is_some() {
        "Deleting"
    } else if v.updating_until.is_some_and(|u| u > now) {
        "Updating"
    } else if now < v.settles {
        "Creating"
    } else if !v.failing_regions.is_empty() {
        "Failed"
    } else {
        "Succeeded"
    }
}

fn target_names(v: &Version) -> Vec<String> {
    v.publishing
        .get("targetRegions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The version resource; `replicationStatus` only when expanded, as the spec says.
pub(crate) fn view(v: &Version, now: DateTime<Utc>, expand: bool) -> Value {
    let mut props = json!({
        "publishingProfile": v.publishing,
        "storageProfile": v.storage_profile,
        "safetyProfile": v.safety_profile,
        "provisioningState": provisioning_state(v, now),
    });
    if expand {
        let settled = now >= v.settles;
        let span = (v.settles - v.created).num_seconds().max(1);
        let progress = ((now - v.created).num_seconds().clamp(0, span) * 100 / span) as u64;
        let summary: Vec<Value> = target_names(v)
            .iter()
            .map(|region| {
                let failed = v.failing_regions.contains(&region_key(region));
                let (state, details, progress) = match (settled, failed) {
                    (false, _) => ("Replicating", String::new(), progress),
                    (true, false) => ("Completed", String::new(), 100),
                    (true, true) => (
                        "Failed",
                        format!("Replication to region {region} failed."),
                        progress,
                    ),
                };
                json!({"region": region, "state": state, "details": details, "progress": progress})
            })
            .collect();
        let aggregated = if !settled {
            "InProgress"
        } else if v.failing_regions.is_empty() {
            "Completed"
        } else {
            "Failed"
        };
        props["replicationStatus"] = json!({"aggregatedState": aggregated, "summary": summary});
    }
    json!({
        "id": v.id,
        "name": v.name,
        "type": TYPE,
        "location": v.location,
        "tags": v.tags,
        "properties": props,
    })
}

fn not_found(req: &ArmRequest) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource '{TYPE}/{}/{}/{}' under resource group '{}' was not found.",
            req.raw(7),
            req.raw(9),
            req.raw(11),
            req.raw(3)
        ),
    )
}

fn version_order(name: &str) -> Vec<u64> {
    name.split('.').filter_map(|p| p.parse().ok()).collect()
}

fn list(world: &ArmWorld, req: &ArmRequest, definition: &str) -> Response {
    let (w, now) = world.lock();
    let prefix = format!("{}/versions/", definition.to_ascii_lowercase());
    let mut versions: Vec<&Version> = w
        .versions
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .collect();
    versions.sort_by_key(|v| version_order(&v.name));
    let items = versions.iter().map(|v| view(v, now, false)).collect();
    let base = format!("{definition}/versions?api-version={API_VERSION}");
    Json(page(world, req, items, &base)).into_response()
}

fn get(world: &ArmWorld, req: &ArmRequest, definition: &str) -> Response {
    let (w, now) = world.lock();
    let expand = req
        .query("$expand")
        .is_some_and(|e| e.eq_ignore_ascii_case("ReplicationStatus"));
    match w.versions.get(&key(definition, req.raw(11))) {
        Some(v) => Json(view(v, now, expand)).into_response(),
        None => not_found(req),
    }
}

fn operation_headers(
    world: &ArmWorld,
    r: &mut Response,
    sub: &str,
    location: &str,
    op: &str,
    wait: Duration,
    with_location: bool,
) {
    let base = format!(
        "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{}/capsOperations/{op}",
        region_key(location)
    );
    let h = r.headers_mut();
    if let Ok(v) = world
        .url(&format!("{base}?api-version={API_VERSION}"))
        .parse()
    {
        h.insert(HeaderName::from_static("azure-asyncoperation"), v);
    }
    if with_location {
        if let Ok(v) = world
            .url(&format!("{base}?monitor=true&api-version={API_VERSION}"))
            .parse()
        {
            h.insert(header::LOCATION, v);
        }
    }
    h.insert(header::RETRY_AFTER, world.retry_after(wait));
}

/// PATCH: `publishingProfile.excludeFromLatest`/`endOfLifeDate` and `tags`
/// change; the answer is 200 with `provisioningState: Updating` and an
/// operation, as the spec's example shows.
fn patch(world: &ArmWorld, req: &ArmRequest, definition: &str) -> Response {
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
    let (mut w, now) = world.lock();
    let op = w.guid(definition);
    let k = key(definition, req.raw(11));
    let Some(v) = w.versions.get_mut(&k) else {
        return not_found(req);
    };
    if v.deleting_at.is_some() {
        return arm_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The gallery image version {} is being deleted.", v.name),
        );
    }
    if let Some(profile) = body
        .pointer("/properties/publishingProfile")
        .and_then(Value::as_object)
    {
        for field in ["excludeFromLatest", "endOfLifeDate"] {
            if let Some(x) = profile.get(field) {
                v.publishing[field] = x.clone();
            }
        }
    }
    if let Some(tags) = body.get("tags").and_then(Value::as_object) {
        v.tags = tags
            .iter()
            .filter_map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
            .collect();
    }
    let done = now + chrono::Duration::from_std(UPDATING).unwrap_or_default();
    v.updating_until = Some(done);
    let mut r = Json(view(v, now, false)).into_response();
    let location = v.location.clone();
    w.operations
        .insert(op.clone(), Operation::VersionUpdate { done });
    operation_headers(world, &mut r, req.raw(1), &location, &op, UPDATING, false);
    r
}

fn delete(world: &ArmWorld, req: &ArmRequest, definition: &str) -> Response {
    let (mut w, now) = world.lock();
    let op = w.guid(definition);
    let secs = w.profile.deleting_secs;
    let k = key(definition, req.raw(11));
    let Some(v) = w.versions.get_mut(&k) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let done = *v
        .deleting_at
        .get_or_insert(now + chrono::Duration::seconds(secs as i64));
    let location = v.location.clone();
    w.operations
        .insert(op.clone(), Operation::VersionDelete { done });
    let mut r = StatusCode::ACCEPTED.into_response();
    let wait = (done - now).to_std().unwrap_or_default();
    operation_headers(world, &mut r, req.raw(1), &location, &op, wait, true);
    r
}
