//! `/_sim/arm/...`: the semantic control API. No bearer token; JSON in and out.
//!
//! | route | body | does |
//! |---|---|---|
//! | `POST /_sim/arm/faults` | a [`Fault`] (`{"kind": "buildFails", "template": "t", "step": 2}`) | scripts a fault |
//! | `PUT /_sim/arm/profile` | a [`BuildProfile`] (`{"queuedSecs": 120, ...}`) | sets phase durations of runs started from now on |
//! | `POST /_sim/arm/gallery/versions` | [`SeedVersion`] | adds a settled gallery version |
//! | `POST /_sim/arm/marketplace` | [`SeedImageLine`] | adds a marketplace image line |
//! | `POST /_sim/arm/resources` | [`SeedResource`] | adds a Resource Graph row source |
//! | `GET /_sim/arm/templates/{name}/events` | – | the run's [`RunEvent`]s |
//! | `GET /_sim/arm/state` | – | what exists now: templates with their run state, versions, faults (for people debugging a run) |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::build::{BuildProfile, RunEvent};
use super::marketplace::line_key;
use super::resource_graph::as_stored;
use super::world::{Fault, Seeded, Version};
use super::ArmWorld;

/// A gallery version to exist already, replicated everywhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedVersion {
    /// `/subscriptions/.../galleries/{g}/images/{def}/versions/{x.y.z}`.
    pub id: String,
    #[serde(default = "default_region")]
    pub location: String,
    /// Region names; default: `[location]`.
    #[serde(default)]
    pub target_regions: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub published_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub exclude_from_latest: bool,
    pub end_of_life_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub block_deletion_before_end_of_life: bool,
}

fn default_region() -> String {
    "westeurope".to_string()
}

/// One marketplace image line and its versions.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedImageLine {
    pub location: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub versions: Vec<SeedImageVersion>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedImageVersion {
    pub name: String,
    /// `Active` (default), `ScheduledForDeprecation` or `Deprecated`.
    #[serde(default = "active")]
    pub image_state: String,
}

fn active() -> String {
    "Active".to_string()
}

/// A resource for Resource Graph: a VM, a scale set, a scale set instance,
/// with any ARM properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedResource {
    /// `Resources` or `ComputeResources`.
    pub table: String,
    /// Needs `id` and `type`; the subscription is read from `id`.
    pub resource: Value,
}

impl ArmWorld {
    pub fn seed_version(&self, seed: SeedVersion) -> Result<(), String> {
        let name = seed
            .id
            .rsplit('/')
            .next()
            .filter(|n| n.split('.').filter(|p| p.parse::<u32>().is_ok()).count() == 3)
            .ok_or_else(|| {
                format!(
                    "id: expected .../versions/<major.minor.patch>, got {}",
                    seed.id
                )
            })?
            .to_string();
        let (mut w, now) = self.lock();
        let published = seed.published_date.unwrap_or(now);
        let regions = if seed.target_regions.is_empty() {
            vec![seed.location.clone()]
        } else {
            seed.target_regions.clone()
        };
        let targets: Vec<Value> = regions
            .iter()
            .map(|r| json!({"name": r, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS", "excludeFromLatest": seed.exclude_from_latest}))
            .collect();
        let mut publishing = json!({
            "targetRegions": targets,
            "replicaCount": 1,
            "excludeFromLatest": seed.exclude_from_latest,
            "publishedDate": published.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "storageAccountType": "Standard_LRS",
        });
        if let Some(eol) = seed.end_of_life_date {
            publishing["endOfLifeDate"] =
                json!(eol.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let version = Version {
            id: seed.id.clone(),
            name,
            location: seed.location,
            tags: seed.tags,
            publishing,
            storage_profile: json!({"osDiskImage": {"sizeInGB": 30, "hostCaching": "ReadWrite"}}),
            safety_profile: json!({"allowDeletionOfReplicatedLocations": false, "blockDeletionBeforeEndOfLife": seed.block_deletion_before_end_of_life, "reportedForPolicyViolation": false}),
            created: published.min(now),
            settles: published.min(now),
            failing_regions: vec![],
            updating_until: None,
            deleting_at: None,
        };
        w.versions.insert(seed.id.to_ascii_lowercase(), version);
        Ok(())
    }

    pub fn seed_image_line(&self, seed: SeedImageLine) {
        let (mut w, _) = self.lock();
        let key = line_key(&seed.location, &seed.publisher, &seed.offer, &seed.sku);
        let line = w.marketplace.entry(key).or_default();
        for v in seed.versions {
            line.retain(|(name, _)| *name != v.name);
            line.push((v.name, v.image_state));
        }
    }

    pub fn seed_resource(&self, seed: SeedResource) -> Result<(), String> {
        if super::resource_graph::Table::parse(&seed.table).is_none() {
            return Err(format!(
                "table: expected Resources or ComputeResources, got {}",
                seed.table
            ));
        }
        let (subscription, resource) = as_stored(seed.resource)?;
        let (mut w, _) = self.lock();
        w.resources.push(Seeded {
            table: seed.table,
            subscription,
            resource,
        });
        Ok(())
    }

    /// A summary of the world at its now, for someone looking at a run.
    pub fn state(&self) -> Value {
        let (w, now) = self.lock();
        let templates: Vec<Value> = w
            .templates
            .values()
            .map(|t| {
                let run = t.run.as_ref().map(|r| {
                    let v = r.run.view(now);
                    json!({"runState": v.run_state(), "runSubState": v.sub_state().map(|p| p.as_str()), "startTime": r.run.schedule.started})
                });
                json!({"id": t.id, "stagingResourceGroup": t.staging_group, "deleting": t.deleting.is_some(), "run": run})
            })
            .collect();
        let versions: Vec<Value> = w
            .versions
            .values()
            .map(|v| json!({"id": v.id, "provisioningState": super::gallery::provisioning_state(v, now)}))
            .collect();
        let faults: Vec<String> = w.faults.iter().map(|f| format!("{f:?}")).collect();
        json!({"now": now, "templates": templates, "versions": versions, "faults": faults, "resources": w.resources.len()})
    }

    pub fn set_profile(&self, profile: BuildProfile) {
        let (mut w, _) = self.lock();
        w.profile = profile;
    }
}

fn refused(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn add_fault(State(world): State<Arc<ArmWorld>>, Json(fault): Json<Fault>) -> StatusCode {
    world.add_fault(fault);
    StatusCode::NO_CONTENT
}

async fn set_profile(
    State(world): State<Arc<ArmWorld>>,
    Json(p): Json<BuildProfile>,
) -> StatusCode {
    world.set_profile(p);
    StatusCode::NO_CONTENT
}

async fn seed_version(
    State(world): State<Arc<ArmWorld>>,
    Json(seed): Json<SeedVersion>,
) -> Response {
    match world.seed_version(seed) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => refused(e),
    }
}

async fn seed_image_line(
    State(world): State<Arc<ArmWorld>>,
    Json(seed): Json<SeedImageLine>,
) -> StatusCode {
    world.seed_image_line(seed);
    StatusCode::CREATED
}

async fn seed_resource(
    State(world): State<Arc<ArmWorld>>,
    Json(seed): Json<SeedResource>,
) -> Response {
    match world.seed_resource(seed) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => refused(e),
    }
}

async fn state(State(world): State<Arc<ArmWorld>>) -> Json<Value> {
    Json(world.state())
}

async fn events(
    State(world): State<Arc<ArmWorld>>,
    Path(name): Path<String>,
) -> Json<Vec<RunEvent>> {
    Json(world.template_events(&name))
}

pub(crate) fn router(world: Arc<ArmWorld>) -> axum::Router {
    axum::Router::new()
        .route("/_sim/arm/faults", post(add_fault))
        .route("/_sim/arm/profile", put(set_profile))
        .route("/_sim/arm/gallery/versions", post(seed_version))
        .route("/_sim/arm/marketplace", post(seed_image_line))
        .route("/_sim/arm/resources", post(seed_resource))
        .route("/_sim/arm/templates/{name}/events", get(events))
        .route("/_sim/arm/state", get(state))
        .with_state(world)
}
