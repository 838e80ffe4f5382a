//! `/api/pipelines`: each deployed pipeline with its next scheduled runs,
//! its source and the source version last seen, its last build, breaker
//! and warnings; and a schedule's next firings.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::ApiResult;
use crate::app::App;
use crate::domain::schedule::{Occurrence, Schedule};
use crate::store::port::BuildFilter;

/// Next runs shown with a pipeline.
const NEXT_RUNS: usize = 3;

/// One firing of a schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OccurrenceView {
    /// What the firing builds: `YYYY-MM` for Patch Tuesday, `YYYY-MM-DDTHH:MM` for cron.
    pub cycle: String,
    /// When the rule alone says to fire.
    pub scheduled: DateTime<Utc>,
    /// When it fires (later than `scheduled` when a blackout deferred it).
    pub fires_at: DateTime<Utc>,
    /// Whether a blackout moved it.
    pub deferred: bool,
}

impl From<&Occurrence> for OccurrenceView {
    fn from(o: &Occurrence) -> Self {
        Self {
            cycle: o.cycle.clone(),
            scheduled: o.scheduled,
            fires_at: o.fires_at,
            deferred: o.deferred,
        }
    }
}

/// A pipeline's newest build.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastBuild {
    pub id: String,
    pub state: String,
    pub version: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineView {
    pub name: String,
    pub description: Option<String>,
    /// The template's source, as the pipeline file has it.
    #[schema(value_type = Object)]
    pub source: Value,
    /// The source in one line (`publisher:offer:sku:version`, an image id, …).
    pub source_line: String,
    #[schema(value_type = Option<Object>)]
    pub schedule: Value,
    #[schema(value_type = Object)]
    pub base_image_trigger: Value,
    #[schema(value_type = Object)]
    pub versioning: Value,
    #[schema(value_type = Object)]
    pub retention: Value,
    /// Image definition ids the pipeline publishes to.
    pub targets: Vec<String>,
    /// `armed`, or `paused` while the circuit breaker is open.
    pub automatic_triggers: String,
    pub breaker_open_since: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub warnings: Vec<String>,
    /// Source version of the last build the watcher requested.
    pub last_source_version: Option<String>,
    /// Newest source version the watcher saw, and when it first saw it.
    pub source_seen: Option<String>,
    pub source_seen_at: Option<DateTime<Utc>>,
    /// The schedule's next firings (empty without a schedule).
    pub next_runs: Vec<OccurrenceView>,
    pub last_build: Option<LastBuild>,
}

fn no_pipeline(app: &App, name: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::PipelineNotFound,
        format!(
            "no pipeline {name} (deployed: {})",
            app.pipelines.names().join(", ")
        ),
    )
}

async fn summary(app: &App, name: &str) -> Result<PipelineView, ApiError> {
    let p = app
        .pipelines
        .get(name)
        .ok_or_else(|| no_pipeline(app, name))?;
    let rt = app.store.runtime(name).await?;
    let next_runs = p
        .kiln
        .triggers
        .schedule
        .as_ref()
        .and_then(|s| Schedule::from_spec(s).ok())
        .map(|s| s.next(app.clock.now(), NEXT_RUNS))
        .unwrap_or_default();
    let last_build = app
        .store
        .list(&BuildFilter {
            pipeline: Some(name.to_string()),
            limit: Some(1),
            ..BuildFilter::default()
        })
        .await?
        .into_iter()
        .next()
        .map(|b| LastBuild {
            id: b.id.clone(),
            state: b.state.name().into(),
            version: b.version.to_string(),
            created_at: b.created_at,
        });
    let json = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    Ok(PipelineView {
        name: p.name.clone(),
        description: p.kiln.description.clone(),
        source: json(serde_json::to_value(&p.template.properties.source)),
        source_line: p.template.properties.source.line(),
        schedule: json(serde_json::to_value(&p.kiln.triggers.schedule)),
        base_image_trigger: json(serde_json::to_value(&p.kiln.triggers.base_image)),
        versioning: json(serde_json::to_value(&p.kiln.versioning)),
        retention: json(serde_json::to_value(&p.kiln.retention)),
        targets: p
            .gallery_targets()
            .iter()
            .map(|t| t.definition_id())
            .collect(),
        automatic_triggers: if rt.breaker_open_since.is_some() {
            "paused"
        } else {
            "armed"
        }
        .into(),
        breaker_open_since: rt.breaker_open_since,
        consecutive_failures: rt.consecutive_failures,
        warnings: rt.memory.warnings.clone(),
        last_source_version: rt.memory.source_requested.clone(),
        source_seen: rt.memory.source_seen.clone(),
        source_seen_at: rt.memory.source_seen_at,
        next_runs: next_runs.iter().map(OccurrenceView::from).collect(),
        last_build,
    })
}

/// Every deployed pipeline.
#[utoipa::path(get, path = "/api/pipelines", tag = "pipelines",
    responses((status = 200, description = "The pipelines", body = Vec<PipelineView>)))]
pub async fn list(State(app): State<App>) -> ApiResult {
    let mut out = Vec::new();
    for p in app.pipelines.iter() {
        out.push(summary(&app, &p.name).await?);
    }
    Ok(Json(out).into_response())
}

#[utoipa::path(get, path = "/api/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name")),
    responses(
        (status = 200, description = "The pipeline", body = PipelineView),
        (status = 404, description = "Not deployed (`pipeline_not_found`)", body = ErrorBody),
    ))]
pub async fn show(State(app): State<App>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(summary(&app, &name).await?).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; `schedule` reads it by hand to name a bad value.
pub struct CountQuery {
    /// How many firings (default 5, at most 100).
    #[param(minimum = 0)]
    count: Option<usize>,
}

/// A pipeline's next scheduled firings.
#[utoipa::path(get, path = "/api/pipelines/{name}/schedule", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"), CountQuery),
    responses(
        (status = 200, description = "The next firings", body = Vec<OccurrenceView>),
        (status = 400, description = "`count` is not a whole number", body = ErrorBody),
        (status = 404, description = "No such pipeline, or it has no schedule", body = ErrorBody),
        (status = 422, description = "The schedule does not parse (`refused`)", body = ErrorBody),
    ))]
pub async fn schedule(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let mut count = 5;
    for (k, v) in &q {
        if k == "count" {
            count = v
                .parse()
                .map_err(|_| ApiError::parameter("count", "a whole number of firings", v))?;
        }
    }
    let p = app
        .pipelines
        .get(&name)
        .ok_or_else(|| no_pipeline(&app, &name))?;
    let Some(spec) = &p.kiln.triggers.schedule else {
        return Err(ApiError::not_found(
            ErrorCode::ScheduleNotFound,
            format!("pipeline {name} has no schedule (kiln.triggers.schedule)"),
        ));
    };
    let s = Schedule::from_spec(spec).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Refused,
            e,
        )
    })?;
    let firings: Vec<OccurrenceView> = s
        .next(app.clock.now(), count.min(100))
        .iter()
        .map(OccurrenceView::from)
        .collect();
    Ok(Json(firings).into_response())
}
