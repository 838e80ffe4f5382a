//! The state behind every ARM answer. Keys are lower-cased resource ids,
//! because ARM ids are case-insensitive. Time-dependent facts (a run's phase,
//! a version's replication) are stored as plans with times and read at the
//! request's now; [`World::tick`] applies the few effects that change what
//! exists (a run reaching Distributing creates its gallery versions, a
//! finished delete removes its resource).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::build::{BuildProfile, Outcome, Run, RunEvent};

/// A semantic fault, scripted through `POST /_sim/arm/faults`. Each names
/// the template it applies to (any resource group) and takes effect at the
/// next operation of its kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Fault {
    /// The template's PUT (`operation: put`) or DELETE (`operation: delete`)
    /// operation stays InProgress, and the template `Creating`/`Deleting`.
    LroNeverFinishes {
        template: String,
        operation: LroKind,
    },
    /// A cancel of the template's run stays `Canceling`.
    StuckCanceling { template: String },
    /// The run fails in customizer `step` (1-based; default: the last) with
    /// AIB's `PackerBuildFailed` message.
    BuildFails {
        template: String,
        #[serde(default)]
        step: Option<usize>,
    },
    /// Replication to `region` fails: the run ends `PartiallySucceeded`.
    ReplicationFails { template: String, region: String },
    /// `POST /run` starts the build and never answers.
    RunAnswerLost { template: String },
    /// Resource Graph cannot read this subscription.
    UnreadableSubscription { subscription: String },
    /// The caller (kiln's identity) lacks `action` (a control or data
    /// action) everywhere: its permissions list it under `notActions`.
    DenyAction { action: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LroKind {
    Put,
    Delete,
}

/// An image template.
#[derive(Debug, Clone)]
pub struct Template {
    /// As the client spelled it.
    pub id: String,
    pub name: String,
    pub subscription: String,
    pub resource_group: String,
    /// The PUT body, as sent.
    pub body: Value,
    /// `None`: provisioning never ends (fault).
    pub provisioned_at: Option<DateTime<Utc>>,
    /// AIB's provisioning error for an invalid body: (code, message).
    pub provisioning_error: Option<(String, String)>,
    /// `Some(None)`: deleting forever (fault); `Some(Some(t))`: gone at `t`.
    pub deleting: Option<Option<DateTime<Utc>>>,
    pub staging_group: String,
    pub run: Option<TemplateRun>,
    /// Runs started so far, for distinct names per run.
    pub runs: u32,
}

impl Template {
    pub fn error_handling(&self, key: &str) -> &str {
        self.body
            .pointer(&format!("/properties/errorHandling/{key}"))
            .and_then(Value::as_str)
            .unwrap_or("cleanup")
    }

    /// Whether the last run's failure keeps the build resources
    /// (`errorHandling: abort`), so deleting the template keeps the staging group.
    pub fn keeps_staging(&self, now: DateTime<Utc>) -> bool {
        let Some(run) = &self.run else { return false };
        let failed = matches!(
            run.run.view(now),
            super::build::RunView::Ended {
                outcome: Outcome::Failed { .. }
            }
        );
        failed
            && self
                .error_handling("onCustomizerError")
                .eq_ignore_ascii_case("abort")
    }
}

/// A template's run with what it leaves behind.
#[derive(Debug, Clone)]
pub struct TemplateRun {
    pub run: Run,
    pub operation: String,
    pub storage_account: String,
    pub log_folder: String,
    /// Distribution targets, read from the template at run start.
    pub outputs: Vec<Output>,
    /// Whether the run's gallery versions exist yet.
    pub distributed: bool,
    /// `source.exactVersion` for a platform image source.
    pub exact_version: Option<String>,
}

/// One `distribute[]` entry's result.
#[derive(Debug, Clone)]
pub struct Output {
    pub run_output_name: String,
    /// For SharedImage: the version id created; else the requested artifact.
    pub artifact_id: Option<String>,
    pub shared: Option<SharedImage>,
}

#[derive(Debug, Clone)]
pub struct SharedImage {
    pub definition: String,
    pub version: String,
    pub regions: Vec<(String, u64)>,
    pub tags: BTreeMap<String, String>,
    pub exclude_from_latest: bool,
}

/// A gallery image version.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub name: String,
    pub location: String,
    pub tags: BTreeMap<String, String>,
    /// `publishingProfile` as stored (targetRegions, replicaCount, excludeFromLatest, endOfLifeDate, publishedDate).
    pub publishing: Value,
    pub storage_profile: Value,
    pub safety_profile: Value,
    pub created: DateTime<Utc>,
    /// When replication ends.
    pub settles: DateTime<Utc>,
    /// Regions whose replication fails (normalised names).
    pub failing_regions: Vec<String>,
    pub updating_until: Option<DateTime<Utc>>,
    pub deleting_at: Option<DateTime<Utc>>,
}

/// What an operation id stands for.
#[derive(Debug, Clone)]
pub enum Operation {
    TemplateCreate {
        template: String,
    },
    TemplateDelete {
        template: String,
        done: Option<DateTime<Utc>>,
    },
    Run {
        template: String,
        run: u32,
    },
    Cancel {
        template: String,
        run: u32,
    },
    VersionUpdate {
        done: DateTime<Utc>,
    },
    VersionDelete {
        done: DateTime<Utc>,
    },
}

/// A Resource Graph row source.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub table: String,
    pub subscription: String,
    pub resource: Value,
}

pub struct World {
    pub profile: BuildProfile,
    pub templates: BTreeMap<String, Template>,
    pub operations: BTreeMap<String, Operation>,
    pub versions: BTreeMap<String, Version>,
    /// Staging groups that exist: lower-cased `/subscriptions/{s}/resourcegroups/{g}` → template key.
    pub staging: BTreeMap<String, String>,
    /// Storage accounts kept after their template went: account → (staging
    /// group key, the template as it went, when it went); the log is rendered
    /// from it when read.
    pub kept_logs: BTreeMap<String, (String, Template, DateTime<Utc>)>,
    /// `location/publisher/offer/sku` lower-cased → versions (name, imageState).
    pub marketplace: BTreeMap<String, Vec<(String, String)>>,
    pub resources: Vec<Seeded>,
    pub faults: Vec<Fault>,
    /// Every gallery version a run distributed, in order; a version
    /// distributed twice (which `versions` would hide, the second
    /// overwriting the first) shows here twice.
    pub publications: Vec<Publication>,
    /// Makes names unique and deterministic.
    counter: u64,
}

/// A gallery version created by a run's distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The version's id as the run named it (`…/images/{def}/versions/{v}`).
    pub version_id: String,
    /// The template whose run distributed it.
    pub template: String,
    /// Sim time the distribution began.
    pub at: DateTime<Utc>,
}

impl World {
    pub fn new(profile: BuildProfile) -> Self {
        Self {
            profile,
            templates: BTreeMap::new(),
            operations: BTreeMap::new(),
            versions: BTreeMap::new(),
            staging: BTreeMap::new(),
            kept_logs: BTreeMap::new(),
            marketplace: BTreeMap::new(),
            resources: Vec::new(),
            faults: Vec::new(),
            publications: Vec::new(),
            counter: 0,
        }
    }

    /// Hex digits derived from `seed` and a counter: names are random-looking
    /// and the same in every run of the same script.
    pub fn hex(&mut self, seed: &str, len: usize) -> String {
        self.counter += 1;
        let digest = Sha256::digest(format!("{seed}#{}", self.counter).as_bytes());
        hex::encode(digest)[..len].to_string()
    }

    /// A GUID-shaped name, deterministic like [`World::hex`].
    pub fn guid(&mut self, seed: &str) -> String {
        let h = self.hex(seed, 32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    pub fn has_fault(&self, pred: impl Fn(&Fault) -> bool) -> bool {
        self.faults.iter().any(pred)
    }

    pub fn template_by_name(&self, name: &str) -> Option<&Template> {
        self.templates
            .values()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    pub fn template_events(&self, name: &str, now: DateTime<Utc>) -> Vec<RunEvent> {
        self.template_by_name(name)
            .and_then(|t| t.run.as_ref())
            .map(|r| r.run.events(now))
            .unwrap_or_default()
    }

    /// Applies what time has done: distributed versions appear, finished deletes remove.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        let mut created = Vec::new();
        for t in self.templates.values_mut() {
            let Some(run) = t.run.as_mut() else { continue };
            if run.distributed {
                continue;
            }
            let Some(from) = run.run.schedule.distributing_from() else {
                continue;
            };
            let canceled_before = run.run.cancel.is_some_and(|c| c.at <= from);
            if from > now || canceled_before {
                continue;
            }
            run.distributed = true;
            let failing = match &run.run.schedule.outcome {
                Outcome::PartiallySucceeded { region } => vec![region_key(region)],
                Outcome::Succeeded | Outcome::Failed { .. } => vec![],
            };
            for out in &run.outputs {
                if let Some(shared) = &out.shared {
                    created.push((
                        shared.clone(),
                        from,
                        run.run.schedule.ends,
                        failing.clone(),
                        t.name.clone(),
                    ));
                }
            }
        }
        for (shared, from, settles, failing, template) in created {
            let id = format!("{}/versions/{}", shared.definition, shared.version);
            self.publications.push(Publication {
                version_id: id.clone(),
                template,
                at: from,
            });
            let location = shared
                .regions
                .first()
                .map(|(r, _)| r.clone())
                .unwrap_or_default();
            let targets: Vec<Value> = shared
                .regions
                .iter()
                .map(|(name, count)| {
                    serde_json::json!({"name": name, "regionalReplicaCount": count, "storageAccountType": "Standard_LRS", "excludeFromLatest": shared.exclude_from_latest})
                })
                .collect();
            let version = Version {
                name: shared.version.clone(),
                location,
                tags: shared.tags.clone(),
                publishing: serde_json::json!({
                    "targetRegions": targets,
                    "replicaCount": 1,
                    "excludeFromLatest": shared.exclude_from_latest,
                    "publishedDate": from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "storageAccountType": "Standard_LRS",
                }),
                storage_profile: serde_json::json!({"osDiskImage": {"sizeInGB": 30, "hostCaching": "ReadWrite"}}),
                safety_profile: serde_json::json!({"allowDeletionOfReplicatedLocations": false, "blockDeletionBeforeEndOfLife": false, "reportedForPolicyViolation": false}),
                created: from,
                settles,
                failing_regions: failing,
                updating_until: None,
                deleting_at: None,
                id: id.clone(),
            };
            self.versions.insert(id.to_ascii_lowercase(), version);
        }
        self.fail_canceled_distributions();
        let gone: Vec<String> = self
            .templates
            .iter()
            .filter(|(_, t)| matches!(t.deleting, Some(Some(at)) if at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(t) = self.templates.remove(&key) {
                let group = staging_key(&t.subscription, &t.staging_group);
                if !t.keeps_staging(now) {
                    self.staging.remove(&group);
                } else if let Some(run) = &t.run {
                    self.kept_logs
                        .insert(run.storage_account.clone(), (group, t.clone(), now));
                }
            }
        }
        self.versions
            .retain(|_, v| v.deleting_at.is_none_or(|at| at > now));
    }
}

impl World {
    /// A run canceled while distributing leaves its versions `Failed`,
    /// settled when the cancel began: replication stopped there.
    fn fail_canceled_distributions(&mut self) {
        let mut stopped: Vec<(String, DateTime<Utc>)> = Vec::new();
        for t in self.templates.values() {
            let Some(run) = t.run.as_ref().filter(|r| r.distributed) else {
                continue;
            };
            let Some(cancel) = run.run.cancel.filter(|c| c.at < run.run.schedule.ends) else {
                continue;
            };
            for shared in run.outputs.iter().filter_map(|o| o.shared.as_ref()) {
                let id = format!("{}/versions/{}", shared.definition, shared.version);
                stopped.push((id.to_ascii_lowercase(), cancel.at));
            }
        }
        for (key, at) in stopped {
            if let Some(v) = self.versions.get_mut(&key) {
                if v.settles > at {
                    v.settles = at;
                    v.failing_regions = v.regions();
                }
            }
        }
    }
}

impl Version {
    /// The normalised names of the version's target regions.
    pub fn regions(&self) -> Vec<String> {
        self.publishing
            .get("targetRegions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(region_key))
            .collect()
    }
}

pub fn staging_key(subscription: &str, group: &str) -> String {
    format!("/subscriptions/{subscription}/resourcegroups/{group}").to_ascii_lowercase()
}

/// `West US` and `westus` are the same region.
pub fn region_key(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}
