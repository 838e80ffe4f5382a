//! The driver: advances one build by one step.
//!
//! read (build, row version) → observe the provider → transition (pure) →
//! conditional write → effects. A lost write race re-reads and re-decides;
//! effects run only after the new state is durable, and are idempotent
//! (template names derive from the build id), so a crash between write and
//! effect is repaired by the next poll or by the sweeper.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::events::CloudEvent;
use super::{App, POLLS_QUEUE};
use crate::domain::build::{
    transition, Build, BuildState, Effect, FailureCategory, Observation, Replication,
};
use crate::domain::template::{Distributor, GalleryImageRef, OnBuildError};
use crate::ports::{GalleryVersion, OutgoingMessage, RunStart, RunState, TemplateStatus};
use crate::store::builds::{BreakerChange, Extras, Outcome, Write};
use crate::store::cleanup::Retire;

/// How long a queued build waits before the sweeper looks at it again
/// (finished builds also wake queued ones directly).
const QUEUED_RECHECK: chrono::Duration = chrono::Duration::seconds(30);

/// Attempts at a conditional write before giving up for this invocation.
const MAX_RACES: usize = 8;

/// Advances `build_id` one step. `given` replaces the provider observation
/// (a cancel request, a submit failure). Returns the build as written.
pub async fn advance(
    app: &App,
    build_id: &str,
    given: Option<Observation>,
) -> anyhow::Result<Option<Build>> {
    let mut wake_queued = false;
    let mut result = None;
    let mut pending = given;
    // A follow-up (a submit failure) belongs to the row this step wrote; if
    // someone else moved the build on meanwhile, it is stale and dropped.
    let mut follow_up_of: Option<i64> = None;
    for _ in 0..MAX_RACES {
        let Some((build, row_version)) = app.store.get(build_id)? else {
            anyhow::bail!("build {build_id} does not exist");
        };
        if build.state.is_terminal() {
            return Ok(Some(build));
        }
        if follow_up_of.is_some_and(|v| v != row_version) {
            tracing::info!(
                build = build_id,
                "the build moved on; dropping a stale submit failure"
            );
            break;
        }
        let now = app.clock.now();
        let obs = match pending.clone() {
            Some(o) => o,
            None => observe(app, &build).await?,
        };
        let d = transition(&build, &obs, now, &app.tuning);
        let next_poll = next_poll_at(&d.effects, &d.build, now);
        // The event and the breaker count commit with the transition.
        let event = d
            .cause
            .as_ref()
            .map(|cause| CloudEvent::build_changed(&d.build, cause, now));
        let retire: Vec<Retire> = d
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::DeleteTemplate { template } => Some(Retire {
                    template: template.clone(),
                    build_id: d.build.id.clone(),
                    keep: keeps_build_resources(app, &d.build),
                }),
                Effect::Submit { .. }
                | Effect::Run { .. }
                | Effect::RemoveLeftoverVersion
                | Effect::CancelRun { .. }
                | Effect::SchedulePoll { .. }
                | Effect::AdmitQueued => None,
            })
            .collect();
        let extras = Extras {
            outbox: event.as_ref().and_then(|e| app.events.outbox_row(e)),
            outcome: outcome(app, &d.build),
            retire: retire.clone(),
        };
        let mut breaker = None;
        let write = if matches!(build.state, BuildState::Queued)
            && matches!(obs, Observation::SlotGranted)
        {
            let p = app.pipelines.get(&build.pipeline);
            let pmax = p.map(|p| p.kiln.build.max_concurrent).unwrap_or(1);
            let cause = d.cause.clone().unwrap_or_default();
            match app.store.claim_slot(
                &d.build,
                row_version,
                pmax,
                app.settings.max_active_builds,
                &cause,
                next_poll,
                now,
                &extras,
            )? {
                Some(w) => w,
                // The slot went to someone else between observing and writing.
                None => return Ok(Some(build)),
            }
        } else {
            if d.cause.is_none() && d.effects.is_empty() {
                return Ok(Some(build));
            }
            let (write, change) = app.store.update(
                &d.build,
                row_version,
                &build.state,
                d.cause.as_deref(),
                next_poll,
                now,
                &extras,
            )?;
            breaker = change;
            write
        };
        let written = match write {
            Write::Conflict => {
                if follow_up_of.is_some() {
                    break;
                }
                tracing::debug!(build = build_id, "lost a write race; re-reading");
                continue;
            }
            Write::Written { row_version } => row_version,
        };
        if let Some(ev) = &event {
            if let Err(e) = app.events.append(ev) {
                tracing::warn!(build = %d.build.id, error = %e, "event not written to the events file");
            }
        }
        if let Some(change) = breaker {
            announce_breaker(app, &d.build, change, now);
        }
        let mut follow_up = None;
        for effect in &d.effects {
            match effect {
                Effect::Submit { template } => {
                    if let Err(e) = submit(app, &d.build, template).await {
                        tracing::warn!(build = build_id, error = %e, "submit failed");
                        follow_up = Some(Observation::SubmitFailed {
                            category: e.category,
                            message: e.message,
                        });
                    }
                }
                Effect::Run { template } => {
                    if let Err(e) = start_run(app, template).await {
                        tracing::warn!(build = build_id, error = %e, "the run was refused");
                        follow_up = Some(Observation::SubmitFailed {
                            category: e.category,
                            message: e.message,
                        });
                    }
                }
                Effect::RemoveLeftoverVersion => remove_leftover_version(app, &d.build).await,
                Effect::CancelRun { template } => {
                    if let Err(e) = app.builder.cancel(template).await {
                        tracing::warn!(build = build_id, error = %e, "cancel at the provider failed; the next poll retries");
                    }
                }
                // Queued durably with the write above; one step now, the
                // sweeper does the rest.
                Effect::DeleteTemplate { .. } => {}
                Effect::SchedulePoll { after } => {
                    // The row version lets a poll that arrives after the build
                    // moved on (late, or overtaken by the sweeper) be dropped,
                    // so poll chains never multiply.
                    let msg = OutgoingMessage {
                        message_id: format!("poll:{}:{written}", d.build.id),
                        body: json!({ "buildId": d.build.id, "rowVersion": written }).to_string(),
                        delay: *after,
                    };
                    if let Err(e) = app.queue.send(POLLS_QUEUE, msg).await {
                        // The sweeper finds the build by its next_poll_at.
                        tracing::warn!(build = build_id, error = %e, "poll not scheduled; the sweeper will step the build");
                    }
                }
                Effect::AdmitQueued => wake_queued = true,
            }
        }
        for r in &retire {
            super::cleanup::step_now(app, &r.template).await;
        }
        result = Some(d.build);
        pending = follow_up;
        if pending.is_none() {
            break;
        }
        follow_up_of = Some(written);
    }
    if wake_queued {
        admit_queued(app).await;
    }
    Ok(result)
}

/// Gives every queued build a chance at a free slot, oldest first.
pub async fn admit_queued(app: &App) {
    let ids = match app.store.queued() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list queued builds");
            return;
        }
    };
    for id in ids {
        if let Err(e) = Box::pin(advance(app, &id, None)).await {
            tracing::warn!(build = %id, error = %e, "cannot start queued build");
        }
    }
}

fn next_poll_at(effects: &[Effect], b: &Build, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if b.state.is_terminal() {
        return None;
    }
    let polls = effects.iter().filter_map(|e| match e {
        Effect::SchedulePoll { after } => Some(*after),
        Effect::Submit { .. }
        | Effect::Run { .. }
        | Effect::RemoveLeftoverVersion
        | Effect::CancelRun { .. }
        | Effect::DeleteTemplate { .. }
        | Effect::AdmitQueued => None,
    });
    // The sweeper's deadline: the poll's time plus slack, so it only acts when the poll was lost.
    match polls.min() {
        Some(after) => Some(
            now + chrono::Duration::from_std(after * 2).unwrap_or_default()
                + chrono::Duration::seconds(5),
        ),
        None => Some(now + QUEUED_RECHECK),
    }
}

async fn observe(app: &App, b: &Build) -> anyhow::Result<Observation> {
    if matches!(b.state, BuildState::Queued) {
        let p = app.pipelines.get(&b.pipeline);
        let pmax = p.map(|p| p.kiln.build.max_concurrent).unwrap_or(1);
        return Ok(
            if app
                .store
                .slot_free(&b.id, pmax, app.settings.max_active_builds)?
            {
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
            let earlier_template = match app.store.cleanup_of(&b.id) {
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
async fn leftover_versions(app: &App, b: &Build) -> anyhow::Result<Vec<GalleryVersion>> {
    let mut left = Vec::new();
    for def in target_definitions(app, b) {
        if let Some(v) = app.gallery.version(&def, b.version).await? {
            left.push(v);
        }
    }
    Ok(left)
}

async fn remove_leftover_version(app: &App, b: &Build) {
    let left = match leftover_versions(app, b).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(build = %b.id, error = %e, "cannot look for a leftover version; the next poll asks again");
            return;
        }
    };
    for v in left {
        let def = &v.definition_id;
        // Only what this build published goes: a version with this number
        // from anywhere else is not kiln's to delete, and the attempt waits
        // (and, if it stays, ends in its timeout) instead.
        let ours = v.tags.get("kiln.build").map(String::as_str) == Some(b.id.as_str());
        if !ours {
            tracing::warn!(build = %b.id, definition = %def, version = %b.version, "version exists and was not published by this build; not deleting it, the retry waits");
            continue;
        }
        if v.provisioning_state.eq_ignore_ascii_case("Deleting") {
            continue;
        }
        tracing::warn!(build = %b.id, definition = %def, version = %b.version, attempt = b.attempt, "removing the version an earlier attempt left behind before retrying");
        if let Err(e) = app.gallery.delete_version(def, b.version).await {
            tracing::warn!(build = %b.id, error = %e, "cannot delete the leftover version; the next poll tries again");
        }
    }
}

/// Whether a failed build's template asks to keep its build resources for
/// a look (AIB `errorHandling: abort` for the kind of error that happened).
fn keeps_build_resources(app: &App, b: &Build) -> bool {
    let BuildState::Failed { category, .. } = &b.state else {
        return false;
    };
    let Some(eh) = app
        .pipelines
        .get(&b.pipeline)
        .and_then(|p| p.template.properties.error_handling.clone())
    else {
        return false;
    };
    match category {
        FailureCategory::Customizer => eh.on_customizer_error == OnBuildError::Abort,
        // A template refused at provisioning never ran: nothing to look at.
        FailureCategory::Validation => {
            eh.on_validation_error == OnBuildError::Abort
                && !matches!(&b.state, BuildState::Failed { message, .. } if message.starts_with("the image template was refused"))
        }
        FailureCategory::Auth
        | FailureCategory::Policy
        | FailureCategory::Network
        | FailureCategory::Quota
        | FailureCategory::Timeout
        | FailureCategory::Replication
        | FailureCategory::Transient
        | FailureCategory::Internal => false,
    }
}

async fn submit(app: &App, b: &Build, template: &str) -> Result<(), crate::ports::ProviderError> {
    let pipeline = app.pipelines.get(&b.pipeline).ok_or_else(|| {
        crate::ports::ProviderError::new(
            crate::domain::build::FailureCategory::Internal,
            format!("pipeline {} is no longer deployed", b.pipeline),
        )
    })?;
    let body = super::render::render(pipeline, b);
    match app.builder.put_template(template, &body).await? {
        // Ready at once (the local provider; or adopted after provisioning).
        TemplateStatus::NotRun => start_run(app, template).await,
        TemplateStatus::ProvisioningFailed { code, message } => {
            Err(crate::ports::ProviderError::new(
                crate::domain::run::provisioning_failure(&code),
                format!("the image template was refused ({code}): {message}"),
            ))
        }
        // Still provisioning (the next poll runs it once it is ready), or
        // already running or ran.
        TemplateStatus::Provisioning
        | TemplateStatus::Deleting
        | TemplateStatus::Missing
        | TemplateStatus::Run(_) => Ok(()),
    }
}

/// Asks for the run. Only a definite refusal is an error: an answer that
/// never came is confirmed by the next poll through `lastRunStatus`.
async fn start_run(app: &App, template: &str) -> Result<(), crate::ports::ProviderError> {
    match app.builder.run(template).await? {
        RunStart::Started | RunStart::NotReady => Ok(()),
        RunStart::Unconfirmed { reason } => {
            tracing::warn!(template, %reason, "run request unconfirmed; the next poll reads lastRunStatus before anything else");
            Ok(())
        }
    }
}

/// How a transition into a final state counts for the circuit breaker.
fn outcome(app: &App, b: &Build) -> Option<Outcome> {
    let succeeded = match &b.state {
        BuildState::Succeeded { .. } => true,
        BuildState::Failed { .. } => false,
        BuildState::Canceled { .. }
        | BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Publishing { .. }
        | BuildState::Canceling { .. } => return None,
    };
    let threshold = app
        .pipelines
        .get(&b.pipeline)
        .map(|p| p.kiln.build.circuit_breaker_failures)
        .unwrap_or(3);
    Some(Outcome {
        automatic: b.trigger.is_automatic(),
        succeeded,
        threshold,
    })
}

/// Says that the circuit breaker opened or closed (the count itself is already committed).
fn announce_breaker(app: &App, b: &Build, change: BreakerChange, now: DateTime<Utc>) {
    let (kind, detail) = match change {
        BreakerChange::Opened { failures } => (
            "dev.kiln.pipeline.paused",
            format!("{failures} consecutive automatic builds failed; automatic triggers are paused until a build succeeds"),
        ),
        BreakerChange::Closed => (
            "dev.kiln.pipeline.resumed",
            "a build succeeded; automatic triggers are re-armed".to_string(),
        ),
    };
    tracing::warn!(pipeline = %b.pipeline, "{detail}");
    let ev = CloudEvent::new(
        kind.into(),
        format!("pipelines/{}", b.pipeline),
        now,
        json!({ "pipeline": b.pipeline, "detail": detail, "buildId": b.id }),
    );
    if let Err(e) = app.events.publish(&ev) {
        tracing::warn!(error = %e, "event not recorded");
    }
}
