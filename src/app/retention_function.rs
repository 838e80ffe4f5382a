//! Function `retention`: plans and applies retention for every image
//! definition the deployed pipelines publish to.

use super::retention_executor::{apply, plan_all, RetentionRun, RetentionTarget};
use super::App;
use crate::domain::build::BuildState;
use crate::domain::retention::{DefinitionStatus, Plan};
use crate::store::port::BuildFilter;

/// Builds looked at when deciding whether a definition is being published to.
const RECENT_BUILDS: usize = 50;

/// Whether any recent build of the pipeline is publishing, or the most
/// recent build that reached publishing ended without succeeding: retention
/// leaves such a definition alone for this run.
async fn definition_status(app: &App, pipeline: &str) -> anyhow::Result<DefinitionStatus> {
    let recent = app
        .store
        .list(&BuildFilter {
            pipeline: Some(pipeline.to_string()),
            limit: Some(RECENT_BUILDS),
            ..BuildFilter::default()
        })
        .await?;
    if recent
        .iter()
        .any(|b| matches!(b.state, BuildState::Publishing { .. }))
    {
        return Ok(DefinitionStatus::Publishing);
    }
    // Newest first: the first finished build that reached publishing decides.
    for b in recent.iter().filter(|b| b.state.is_terminal()) {
        let reached_publishing = app
            .store
            .history(&b.id)
            .await?
            .iter()
            .any(|h| h.to == "publishing");
        if !reached_publishing {
            continue;
        }
        return Ok(match &b.state {
            BuildState::Succeeded { .. } => DefinitionStatus::Idle,
            BuildState::Failed { .. } | BuildState::Canceled { .. } => {
                DefinitionStatus::FailedWhilePublishing
            }
            BuildState::Queued
            | BuildState::Submitting { .. }
            | BuildState::Running { .. }
            | BuildState::Validating
            | BuildState::Publishing { .. }
            | BuildState::Canceling { .. } => DefinitionStatus::Idle,
        });
    }
    Ok(DefinitionStatus::Idle)
}

pub async fn targets(app: &App) -> anyhow::Result<Vec<RetentionTarget>> {
    let mut out = Vec::new();
    for p in app.pipelines.iter() {
        let status = definition_status(app, &p.name).await?;
        for t in p.gallery_targets() {
            out.push(RetentionTarget {
                pipeline: p.name.clone(),
                definition_id: t.definition_id(),
                policy: p.kiln.retention.clone(),
                status,
            });
        }
    }
    Ok(out)
}

/// The plan, changing nothing.
pub async fn plan(app: &App) -> anyhow::Result<Vec<Plan>> {
    plan_all(
        app.gallery.as_ref(),
        app.inventory.as_ref(),
        &targets(app).await?,
        app.clock.now(),
    )
    .await
}

/// Applies the plan (each pipeline's `dryRun` still holds; `dry_run` forces it for all).
pub async fn run(app: &App, dry_run: bool) -> anyhow::Result<RetentionRun> {
    let run = apply(
        app.store.as_ref(),
        app.gallery.as_ref(),
        app.inventory.as_ref(),
        &targets(app).await?,
        app.clock.now(),
        dry_run,
    )
    .await?;
    for step in &run.applied {
        app.metrics
            .retention_step(&step.pipeline, step.action.as_str(), step.outcome.as_str());
    }
    Ok(run)
}
