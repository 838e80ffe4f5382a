//! Retention executor: plans every target against one snapshot of what is in
//! use, then applies the plans step by step.
//!
//! Safety rules, in the order they bite:
//!
//! - The in-use set is read once per run, before anything else. If the
//!   inventory fails, the run stops there: "I could not look" must never read
//!   as "nothing is in use".
//! - A definition whose versions cannot be listed is skipped (its plan says
//!   why); the other definitions go on.
//! - A definition several targets share is planned once when their policies
//!   are equal (with the most cautious of their statuses), and not at all
//!   when they differ: no pipeline's policy silently overrides another's.
//! - Every deprecation and deletion is written to `retention_audit` as
//!   `planned` *before* the gallery is called, then marked `done` or `failed`.
//!   If the audit cannot be written, nothing more is done.
//! - A step that fails is recorded and the run goes on with the next step:
//!   one definition's lock or permission problem does not hold up the rest.
//! - Dry run (`dryRun` in the policy, or forced for the whole run) records
//!   `dry-run` steps and calls nothing that changes the gallery.
//!
//! - A run changes at most [`MAX_CHANGES_PER_RUN`] versions; the rest are
//!   `deferred` to the next run. Each change is one started ARM operation
//!   (not waited for), so a run fits well inside a Functions invocation
//!   however much has piled up.
//!
//! Resuming after a crash needs no bookkeeping: every run plans afresh from
//! the gallery's current state, so a version deleted before the crash is
//! simply absent, and one deprecated before the crash is now "grace running".
//! Deleting a version that is already gone is harmless by the `Gallery`
//! contract. Steps of a crashed run stay `planned` in the audit, which is
//! the truth: nobody saw them finish.

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::domain::retention::{
    belongs_to,
    ownership::{merge_kept, split_foreign},
    plan, Action, DefinitionStatus, Plan, RetentionPolicy, Skip,
};
use crate::domain::version::ImageVersion;
use crate::ports::{Gallery, InUseSet, Inventory, VersionUpdate};
use crate::store::port::AuditRecord;
use crate::store::Store;

/// Gallery changes one run may start; the rest wait for the next run, which
/// plans afresh. At one or two ARM requests per change this keeps a run to
/// well under a minute of calls.
pub const MAX_CHANGES_PER_RUN: usize = 100;

/// One image definition to clean, with the policy of the pipeline that publishes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionTarget {
    pub pipeline: String,
    pub definition_id: String,
    pub policy: RetentionPolicy,
    /// What the build records say about the definition's latest build.
    pub status: DefinitionStatus,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Recorded, gallery untouched.
    DryRun,
    Done,
    Failed {
        error: String,
    },
}

impl StepOutcome {
    /// The spelling of the `retention_audit.status` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepOutcome::DryRun => "dry-run",
            StepOutcome::Done => "done",
            StepOutcome::Failed { .. } => "failed",
        }
    }
}

/// A deprecation or deletion this run carried out (or recorded, in dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedStep {
    pub pipeline: String,
    pub definition_id: String,
    pub version: ImageVersion,
    pub action: Action,
    pub reason: String,
    #[serde(flatten)]
    pub outcome: StepOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRun {
    pub run_id: String,
    pub at: DateTime<Utc>,
    /// The whole run was forced to dry run (policies may also ask for it one by one).
    pub forced_dry_run: bool,
    /// One plan per target, in the targets' order.
    pub plans: Vec<Plan>,
    pub applied: Vec<AppliedStep>,
    /// Planned changes left for the next run (the per-run cap was reached).
    pub deferred: usize,
}

impl RetentionRun {
    pub fn failures(&self) -> impl Iterator<Item = &AppliedStep> {
        self.applied.iter().filter(|s| match s.outcome {
            StepOutcome::Failed { .. } => true,
            StepOutcome::DryRun | StepOutcome::Done => false,
        })
    }
}

/// Plans every target without changing anything.
///
/// Fails only when the in-use set cannot be read; a definition whose versions
/// cannot be listed gets a skipped plan saying so.
pub async fn plan_all(
    gallery: &dyn Gallery,
    inventory: &dyn Inventory,
    targets: &[RetentionTarget],
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Plan>> {
    let in_use = inventory
        .in_use()
        .await
        .context("Cannot tell which images are in use, so retention changed nothing")?;
    Ok(plan_targets(gallery, &in_use, targets, now).await)
}

async fn plan_targets(
    gallery: &dyn Gallery,
    in_use: &InUseSet,
    targets: &[RetentionTarget],
    now: DateTime<Utc>,
) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let p = match shared(targets, i) {
            Shared::No => {
                plan_target(gallery, in_use, t, &[t.pipeline.as_str()], t.status, now).await
            }
            Shared::First { status, owners } => {
                let owners: Vec<&str> = owners
                    .iter()
                    .map(|&j| targets[j].pipeline.as_str())
                    .collect();
                plan_target(gallery, in_use, t, &owners, status, now).await
            }
            Shared::Later { first } => Plan::skipped(
                &t.definition_id,
                Skip::PlannedWith {
                    pipeline: targets[first].pipeline.clone(),
                },
            ),
            Shared::PoliciesDiffer { pipelines } => {
                Plan::skipped(&t.definition_id, Skip::PoliciesDiffer { pipelines })
            }
        };
        plans.push(p);
    }
    plans
}

/// How target `i` relates to other targets for the same definition.
enum Shared {
    No,
    /// The first of several targets with one policy: it plans for all of
    /// them, with the most cautious of their statuses.
    First {
        status: DefinitionStatus,
        /// The targets planned together: their pipelines own the versions.
        owners: Vec<usize>,
    },
    Later {
        first: usize,
    },
    PoliciesDiffer {
        pipelines: Vec<String>,
    },
}

/// Targets are few (one per pipeline), so a quadratic scan is fine.
fn shared(targets: &[RetentionTarget], i: usize) -> Shared {
    let same: Vec<usize> = (0..targets.len())
        .filter(|&j| {
            targets[j]
                .definition_id
                .trim_end_matches('/')
                .eq_ignore_ascii_case(targets[i].definition_id.trim_end_matches('/'))
        })
        .collect();
    if same.len() == 1 {
        return Shared::No;
    }
    if same.iter().any(|&j| targets[j].policy != targets[i].policy) {
        return Shared::PoliciesDiffer {
            pipelines: same.iter().map(|&j| targets[j].pipeline.clone()).collect(),
        };
    }
    if same[0] != i {
        return Shared::Later { first: same[0] };
    }
    let status = same
        .iter()
        .map(|&j| targets[j].status)
        .fold(DefinitionStatus::Idle, cautious);
    Shared::First {
        status,
        owners: same,
    }
}

/// The status that holds retention back most: any build publishing, then
/// any failed while publishing.
fn cautious(a: DefinitionStatus, b: DefinitionStatus) -> DefinitionStatus {
    use DefinitionStatus::{FailedWhilePublishing, Idle, Publishing};
    match (a, b) {
        (Publishing, _) | (_, Publishing) => Publishing,
        (FailedWhilePublishing, _) | (_, FailedWhilePublishing) => FailedWhilePublishing,
        (Idle, Idle) => Idle,
    }
}

async fn plan_target(
    gallery: &dyn Gallery,
    in_use: &InUseSet,
    t: &RetentionTarget,
    owners: &[&str],
    status: DefinitionStatus,
    now: DateTime<Utc>,
) -> Plan {
    match gallery.list_versions(&t.definition_id).await {
        Ok(mut versions) => {
            // The planner trusts its input to be one definition's versions;
            // this is where that is made true.
            let listed = versions.len();
            versions.retain(|v| belongs_to(v, &t.definition_id));
            if versions.len() != listed {
                tracing::warn!(
                    definition = %t.definition_id,
                    ignored = listed - versions.len(),
                    "the gallery listed versions of another definition; retention ignores them"
                );
            }
            let (own, kept) = split_foreign(versions, owners, t.policy.foreign_versions);
            let mut p = plan(&t.definition_id, &own, &t.policy, in_use, status, now);
            merge_kept(&mut p.items, kept);
            p
        }
        Err(e) => {
            let error = format!("{e:#}");
            tracing::warn!(definition = %t.definition_id, %error, "retention skips a definition it cannot list");
            Plan::skipped(&t.definition_id, Skip::VersionsUnavailable { error })
        }
    }
}

/// Plans and applies retention for every target. See the module docs for
/// the guarantees.
pub async fn apply(
    store: &dyn Store,
    gallery: &dyn Gallery,
    inventory: &dyn Inventory,
    targets: &[RetentionTarget],
    now: DateTime<Utc>,
    force_dry_run: bool,
) -> anyhow::Result<RetentionRun> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let plans = plan_all(gallery, inventory, targets, now).await?;
    let at = now.to_rfc3339_opts(SecondsFormat::Millis, true);

    let mut applied = Vec::new();
    let mut changes = 0usize;
    let mut deferred = 0usize;
    for (target, plan) in targets.iter().zip(&plans) {
        let dry_run = force_dry_run || target.policy.dry_run;
        let policy_json = serde_json::to_string(&target.policy)?;
        // Oldest first: if the run stops halfway, what is gone is the oldest.
        for item in plan.items.iter().rev() {
            let change = match item.action {
                Action::Keep => continue,
                Action::Deprecate { end_of_life } => Change::Deprecate(VersionUpdate {
                    exclude_from_latest: Some(true),
                    end_of_life: Some(end_of_life),
                    tags: None,
                }),
                Action::Delete => Change::Delete,
            };
            if !dry_run {
                if changes >= MAX_CHANGES_PER_RUN {
                    deferred += 1;
                    continue;
                }
                changes += 1;
            }
            let reason = item.reason.to_string();
            let row = AuditRow {
                run_id: &run_id,
                at: &at,
                definition: &plan.definition_id,
                version: item.version,
                action: item.action,
                reason: &reason,
                policy: &policy_json,
            };
            let outcome = if dry_run {
                row.insert(store, &StepOutcome::DryRun).await?;
                StepOutcome::DryRun
            } else {
                let seq = row.insert_planned(store).await?;
                let result = match &change {
                    Change::Deprecate(update) => {
                        gallery
                            .update_version(&plan.definition_id, item.version, update)
                            .await
                    }
                    Change::Delete => {
                        gallery
                            .delete_version(&plan.definition_id, item.version)
                            .await
                    }
                };
                let outcome = match result {
                    Ok(()) => StepOutcome::Done,
                    Err(e) => StepOutcome::Failed {
                        error: format!("{e:#}"),
                    },
                };
                finish(store, seq, &outcome).await?;
                outcome
            };
            match &outcome {
                StepOutcome::Failed { error } => tracing::warn!(
                    run_id, definition = %plan.definition_id, version = %item.version,
                    action = item.action.as_str(), %error, "retention step failed"
                ),
                StepOutcome::Done | StepOutcome::DryRun => tracing::info!(
                    run_id, definition = %plan.definition_id, version = %item.version,
                    action = item.action.as_str(), status = outcome.as_str(), %reason,
                    "retention step"
                ),
            }
            applied.push(AppliedStep {
                pipeline: target.pipeline.clone(),
                definition_id: plan.definition_id.clone(),
                version: item.version,
                action: item.action,
                reason,
                outcome,
            });
        }
    }

    Ok(RetentionRun {
        run_id,
        at: now,
        forced_dry_run: force_dry_run,
        plans,
        applied,
        deferred,
    })
}

/// The gallery call a plan item turns into.
enum Change {
    Deprecate(VersionUpdate),
    Delete,
}

struct AuditRow<'a> {
    run_id: &'a str,
    at: &'a str,
    definition: &'a str,
    version: ImageVersion,
    action: Action,
    reason: &'a str,
    policy: &'a str,
}

impl AuditRow<'_> {
    async fn insert_planned(&self, store: &dyn Store) -> anyhow::Result<i64> {
        self.insert_status(store, "planned").await
    }

    async fn insert(&self, store: &dyn Store, outcome: &StepOutcome) -> anyhow::Result<i64> {
        self.insert_status(store, outcome.as_str()).await
    }

    async fn insert_status(&self, store: &dyn Store, status: &str) -> anyhow::Result<i64> {
        let version = self.version.to_string();
        store
            .audit_insert(&AuditRecord {
                run_id: self.run_id,
                at: self.at,
                definition: self.definition,
                version: &version,
                action: self.action.as_str(),
                status,
                reason: self.reason,
                policy: self.policy,
            })
            .await
            .with_context(|| {
                format!(
                    "Cannot record retention step {} {} {}; stopping before touching it",
                    self.action.as_str(),
                    self.definition,
                    self.version
                )
            })
    }
}

/// Marks a recorded step with its outcome. A failure's error is appended to
/// the reason: the audit has no field of its own for it.
async fn finish(store: &dyn Store, seq: i64, outcome: &StepOutcome) -> anyhow::Result<()> {
    let error = match outcome {
        StepOutcome::Failed { error } => Some(error.as_str()),
        StepOutcome::Done | StepOutcome::DryRun => None,
    };
    store
        .audit_finish(seq, outcome.as_str(), error)
        .await
        .with_context(|| format!("Cannot record the outcome of retention step {seq}"))
}

#[cfg(test)]
mod tests;
