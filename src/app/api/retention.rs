//! `/api/retention`: the plan (changing nothing), applying it, and the audit.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiResult;
use crate::app::retention_executor::RetentionRun;
use crate::app::App;
use crate::domain::retention::{Plan, PlanItem};
use crate::store::port::AuditEntry;

/// What retention does to one version, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanItemView {
    pub version: String,
    /// `{kind: keep} | {kind: deprecate, endOfLife} | {kind: delete}`
    #[schema(value_type = Object)]
    pub action: Value,
    /// Why, in a sentence.
    pub reason: String,
}

impl From<&PlanItem> for PlanItemView {
    fn from(i: &PlanItem) -> Self {
        Self {
            version: i.version.to_string(),
            action: serde_json::to_value(i.action).unwrap_or(Value::Null),
            reason: i.reason.to_string(),
        }
    }
}

/// The plan for one image definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub definition_id: String,
    /// Why the definition is left alone this run, when it is.
    pub skipped: Option<String>,
    /// One per version, newest first.
    pub items: Vec<PlanItemView>,
}

impl From<&Plan> for PlanView {
    fn from(p: &Plan) -> Self {
        Self {
            definition_id: p.definition_id.clone(),
            skipped: p.skipped.as_ref().map(|s| s.to_string()),
            items: p.items.iter().map(PlanItemView::from).collect(),
        }
    }
}

/// A retention run.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub run_id: String,
    pub at: DateTime<Utc>,
    pub forced_dry_run: bool,
    pub plans: Vec<PlanView>,
    /// Steps carried out (or recorded, in dry run), each with its `status`.
    #[schema(value_type = Vec<Object>)]
    pub applied: Value,
    /// Planned changes left for the next run (the per-run cap was reached).
    pub deferred: usize,
}

impl From<&RetentionRun> for RunView {
    fn from(r: &RetentionRun) -> Self {
        Self {
            run_id: r.run_id.clone(),
            at: r.at,
            forced_dry_run: r.forced_dry_run,
            plans: r.plans.iter().map(PlanView::from).collect(),
            applied: serde_json::to_value(&r.applied).unwrap_or(Value::Null),
            deferred: r.deferred,
        }
    }
}

/// One row of the retention audit.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    pub seq: i64,
    pub run_id: String,
    pub at: String,
    pub definition: String,
    pub version: String,
    /// `deprecate | delete`
    pub action: String,
    /// `planned | done | failed | dry-run`
    pub status: String,
    pub reason: String,
    /// The policy in force when the step was planned.
    pub policy: Value,
}

impl From<&AuditEntry> for AuditView {
    fn from(a: &AuditEntry) -> Self {
        Self {
            seq: a.seq,
            run_id: a.run_id.clone(),
            at: a.at.clone(),
            definition: a.definition.clone(),
            version: a.version.clone(),
            action: a.action.clone(),
            status: a.status.clone(),
            reason: a.reason.clone(),
            policy: a.policy.clone(),
        }
    }
}

/// What retention would do now; changes nothing.
#[utoipa::path(get, path = "/api/retention/plan", tag = "retention",
    responses((status = 200, description = "One plan per image definition", body = Vec<PlanView>)))]
pub async fn plan(State(app): State<App>) -> ApiResult {
    let plans = crate::app::retention_function::plan(&app).await?;
    let views: Vec<PlanView> = plans.iter().map(PlanView::from).collect();
    Ok(Json(views).into_response())
}

/// Applies the plan (each pipeline's `dryRun` still holds).
#[utoipa::path(post, path = "/api/retention/apply", tag = "retention",
    responses((status = 200, description = "The run", body = RunView)))]
pub async fn apply(State(app): State<App>) -> ApiResult {
    let run = crate::app::retention_function::run(&app, false).await?;
    Ok(Json(RunView::from(&run)).into_response())
}

/// The newest 1000 audit rows, newest first.
#[utoipa::path(get, path = "/api/retention/audit", tag = "retention",
    responses((status = 200, description = "Audit rows", body = Vec<AuditView>)))]
pub async fn audit(State(app): State<App>) -> ApiResult {
    let rows = app.store.audit(1000).await?;
    let views: Vec<AuditView> = rows.iter().map(AuditView::from).collect();
    Ok(Json(views).into_response())
}
