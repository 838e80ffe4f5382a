//! Function `retention`: plans and applies retention for every image
//! definition the deployed pipelines publish to.

use super::retention::{apply, plan_all, RetentionRun, RetentionTarget};
use super::App;
use crate::domain::build::BuildState;
use crate::domain::retention::{DefinitionStatus, Plan};
use crate::store::builds::BuildFilter;

/// Whether the pipeline's latest build is publishing, or failed while
/// publishing: retention leaves such a definition alone for this run.
fn definition_status(app: &App, pipeline: &str) -> anyhow::Result<DefinitionStatus> {
    let latest = app.store.list(&BuildFilter {
        pipeline: Some(pipeline.to_string()),
        state: None,
        limit: Some(1),
    })?;
    let Some(b) = latest.first() else {
        return Ok(DefinitionStatus::Idle);
    };
    Ok(match &b.state {
        BuildState::Publishing { .. } => DefinitionStatus::Publishing,
        BuildState::Failed { .. } | BuildState::Canceled { .. } => {
            let history = app.store.history(&b.id)?;
            let ended_publishing = history.last().is_some_and(|h| {
                matches!(h.from.as_deref(), Some("publishing") | Some("canceling"))
                    && history.iter().any(|x| x.to == "publishing")
            });
            if ended_publishing {
                DefinitionStatus::FailedWhilePublishing
            } else {
                DefinitionStatus::Idle
            }
        }
        BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Canceling { .. }
        | BuildState::Succeeded { .. } => DefinitionStatus::Idle,
    })
}

pub fn targets(app: &App) -> anyhow::Result<Vec<RetentionTarget>> {
    let mut out = Vec::new();
    for p in app.pipelines.iter() {
        let status = definition_status(app, &p.name)?;
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
        &targets(app)?,
        app.clock.now(),
    )
    .await
}

/// Applies the plan (each pipeline's `dryRun` still holds; `dry_run` forces it for all).
pub async fn run(app: &App, dry_run: bool) -> anyhow::Result<RetentionRun> {
    apply(
        app.store.db(),
        app.gallery.as_ref(),
        app.inventory.as_ref(),
        &targets(app)?,
        app.clock.now(),
        dry_run,
    )
    .await
}
