//! What a step learns about the world: the attempt's template, and what the
//! gallery says when it matters (replication of a partly published run; a
//! version an earlier attempt left before a retry).

use super::super::App;
use crate::domain::build::{Build, BuildState, Observation, Replication};
use crate::domain::template::{Distributor, GalleryImageRef};
use crate::ports::{GalleryVersion, RunState, TemplateStatus};

pub(super) async fn observe(app: &App, b: &Build) -> anyhow::Result<Observation> {
    if matches!(b.state, BuildState::Queued) {
        let p = app.pipelines.get(&b.pipeline);
        let caps = crate::store::port::Caps {
            pipeline: p.map(|p| p.kiln.build.max_concurrent).unwrap_or(1),
            global: app.settings.max_active_builds,
        };
        return Ok(
            if app.store.slot_free(&b.id, caps, app.clock.now()).await? {
                Observation::SlotGranted
            } else {
                Observation::Tick
            },
        );
    }
    if let BuildState::Submitting {
        not_before: Some(at),
    } = b.state
    {
        if at > app.clock.now() {
            return Ok(Observation::Tick);
        }
    }
    let template = b.template_name();
    let status = match app.builder.status(&template).await {
        Ok(s) => s,
        Err(e) => {
            // The provider could not be asked: wait and ask again, never decide on it.
            tracing::warn!(build = %b.id, error = %e, "provider status unavailable");
            return Ok(Observation::Tick);
        }
    };
    let (outputs, replication) = match &status {
        TemplateStatus::Run(run) => match run.run_state {
            RunState::Succeeded | RunState::PartiallySucceeded => {
                // Without its outputs a finished run cannot be recorded (and
                // its template must not be deleted): ask again next time.
                let outputs = match app.builder.run_outputs(&template).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(build = %b.id, error = %e, "run outputs unavailable");
                        return Ok(Observation::Tick);
                    }
                };
                let replication = if run.run_state == RunState::PartiallySucceeded {
                    match replication(app, &outputs).await {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(build = %b.id, error = %e, "replication status unavailable");
                            return Ok(Observation::Tick);
                        }
                    }
                } else {
                    None
                };
                (outputs, replication)
            }
            RunState::Running
            | RunState::Canceling
            | RunState::Failed
            | RunState::Canceled
            | RunState::Unknown(_) => (vec![], None),
        },
        TemplateStatus::Missing
        | TemplateStatus::NotRun
        | TemplateStatus::Provisioning
        | TemplateStatus::Deleting
        | TemplateStatus::ProvisioningFailed { .. } => (vec![], None),
    };
    // A retry about to be submitted must not distribute onto the version an
    // earlier attempt left; ask the gallery only then.
    let leftover_version = match (&b.state, &status) {
        (BuildState::Submitting { .. }, TemplateStatus::Missing) if b.attempt > 1 => {
            // What an earlier attempt left: its version in the gallery, or
            // its template not yet confirmed gone (the cleanup queue stops
            // and confirms its run first), so two runs can never publish
            // this build's version at once.
            let earlier_template = match app.store.cleanup_of(&b.id).await {
                Ok(jobs) => jobs.iter().any(|j| j.template != template),
                Err(e) => {
                    tracing::warn!(build = %b.id, error = %e, "cannot read the cleanup queue");
                    return Ok(Observation::Tick);
                }
            };
            match leftover_versions(app, b).await {
                Ok(left) => Some(earlier_template || !left.is_empty()),
                Err(e) => {
                    tracing::warn!(build = %b.id, error = %e, "cannot ask the gallery for a leftover version");
                    return Ok(Observation::Tick);
                }
            }
        }
        _ => None,
    };
    Ok(Observation::Provider {
        status,
        outputs,
        replication,
        leftover_version,
    })
}

/// Region by region, where the gallery versions of a PartiallySucceeded run stand.
async fn replication(
    app: &App,
    outputs: &[crate::ports::RunOutput],
) -> anyhow::Result<Replication> {
    let mut r = Replication::default();
    for o in outputs {
        let Some(image) = o.artifact_id.as_deref().and_then(GalleryImageRef::parse) else {
            continue;
        };
        let Some(version) = image.version.as_deref().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let Some(v) = app.gallery.version(&image.definition_id(), version).await? else {
            // Listed as an output but not (yet) readable: still to come.
            r.pending.push(format!(
                "{} (version not readable yet)",
                image.definition_id()
            ));
            continue;
        };
        let before = (r.completed.len(), r.pending.len());
        for region in &v.replication {
            let slot = match region.state.to_ascii_lowercase().as_str() {
                "completed" => &mut r.completed,
                "failed" => &mut r.failed,
                _ => &mut r.pending,
            };
            slot.push(region.region.clone());
        }
        // An output that reached no region and is not copying anywhere
        // failed as a whole, whatever the other outputs did.
        if !v.replication.is_empty() && (r.completed.len(), r.pending.len()) == before {
            r.unpublished.push(image.definition_id());
        }
        if v.replication.is_empty() {
            r.pending.push(format!(
                "{} (no replication status yet)",
                image.definition_id()
            ));
        }
    }
    if r.completed.is_empty() && r.failed.is_empty() && r.pending.is_empty() {
        r.pending.push("no gallery output reported yet".into());
    }
    Ok(r)
}

/// The gallery targets of a build's pipeline, as definition ids.
fn target_definitions(app: &App, b: &Build) -> Vec<String> {
    let Some(p) = app.pipelines.get(&b.pipeline) else {
        return vec![];
    };
    p.template
        .properties
        .distribute
        .iter()
        .filter_map(|d| match d {
            Distributor::SharedImage {
                gallery_image_id, ..
            } => GalleryImageRef::parse(gallery_image_id).map(|r| r.definition_id()),
            Distributor::ManagedImage { .. } | Distributor::Vhd { .. } => None,
        })
        .collect()
}

/// The build's version where an earlier attempt left it behind.
pub(super) async fn leftover_versions(app: &App, b: &Build) -> anyhow::Result<Vec<GalleryVersion>> {
    let mut left = Vec::new();
    for def in target_definitions(app, b) {
        if let Some(v) = app.gallery.version(&def, b.version).await? {
            left.push(v);
        }
    }
    Ok(left)
}
