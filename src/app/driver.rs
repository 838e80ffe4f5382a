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
use crate::domain::build::{transition, Build, BuildState, Effect, Observation};
use crate::ports::OutgoingMessage;
use crate::store::port::{BreakerChange, Caps, Extras, Outcome, Retire, Transition, Write};

mod effects;
mod observe;

use effects::{keeps_build_resources, remove_leftover_version, start_run, submit};
use observe::observe;

/// How long a queued build waits before the sweeper looks at it again
/// (finished builds also wake queued ones directly).
const QUEUED_RECHECK: chrono::Duration = chrono::Duration::seconds(30);

/// Attempts at a conditional write before giving up for this invocation.
const MAX_RACES: usize = 8;

/// Advances `build_id` one step. `given` replaces the provider observation
/// (a cancel request, a submit failure). Returns the build as written.
///
/// Everything logged inside, down to the provider's calls and the local
/// run it starts, is in the `build` span with the build's id and pipeline.
#[tracing::instrument(name = "build", skip(app, given), fields(build_id = build_id, pipeline = tracing::field::Empty))]
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
        let Some((build, row_version)) = app.store.get(build_id).await? else {
            anyhow::bail!("build {build_id} does not exist");
        };
        tracing::Span::current().record("pipeline", build.pipeline.as_str());
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
        // A run that just succeeded gets its evidence (SBOM, diff, gate,
        // signed provenance) before it is recorded, so that the completion
        // event carries the summary. Repeated after a lost write race or a
        // crash, the step writes the same files again.
        let evidence = if matches!(d.build.state, BuildState::Succeeded { .. })
            && !matches!(build.state, BuildState::Succeeded { .. })
        {
            super::evidence::assess::assess(app, &d.build).await
        } else {
            None
        };
        // The event and the breaker count commit with the transition.
        let event = d.cause.as_ref().map(|cause| {
            let mut ev = CloudEvent::build_changed(&d.build, cause, now);
            if let (Some(summary), Some(data)) = (&evidence, ev.data.as_object_mut()) {
                data.insert("evidence".into(), summary.clone());
            }
            ev
        });
        let retire: Vec<Retire> = d
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::DeleteTemplate { template } => Some(Retire {
                    template: template.clone(),
                    build_id: d.build.id.clone(),
                    pipeline: d.build.pipeline.clone(),
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
        let step = Transition {
            build: &d.build,
            expected: row_version,
            from: &build.state,
            cause: d.cause.as_deref(),
            next_poll_at: next_poll,
            now,
            extras: &extras,
        };
        let write = if matches!(build.state, BuildState::Queued)
            && matches!(obs, Observation::SlotGranted)
        {
            let p = app.pipelines.get(&build.pipeline);
            let caps = Caps {
                pipeline: p.map(|p| p.kiln.build.max_concurrent).unwrap_or(1),
                global: app.settings.max_active_builds,
            };
            match app.store.claim_slot(&step, caps).await? {
                Some(w) => w,
                // The slot went to someone else between observing and writing.
                None => return Ok(Some(build)),
            }
        } else {
            if d.cause.is_none() && d.effects.is_empty() {
                return Ok(Some(build));
            }
            let (write, change) = app.store.commit(&step).await?;
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
        if build.state.name() != d.build.state.name() {
            tracing::info!(
                from = build.state.name(),
                to = d.build.state.name(),
                cause = d.cause.as_deref().unwrap_or(""),
                "build state changed"
            );
        }
        if d.build.state.is_terminal() {
            super::metrics::build_ended(app, &d.build, now).await;
        }
        if let Some(change) = breaker {
            announce_breaker(app, &d.build, change, now).await;
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
    let ids = match app.store.queued().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list queued builds");
            return;
        }
    };
    for id in ids {
        // Each queued build in a span of its own, not under the build whose
        // end woke it: a line names one build.
        let step = tracing::info_span!(parent: None, "admit_queued")
            .in_scope(|| Box::pin(advance(app, &id, None)));
        let still_queued = match step.await {
            Ok(b) => b.is_some_and(|b| matches!(b.state, BuildState::Queued)),
            Err(e) => {
                tracing::warn!(build = %id, error = %e, "cannot start queued build");
                true
            }
        };
        // Once the factory is full, the rest of the queue cannot start
        // either: stop instead of asking the store about every queued
        // build (each ask is several requests on Table Storage). A build
        // held back only by its own pipeline's cap does not stop the others.
        if still_queued {
            match app.store.active_builds().await {
                Ok(n) if n >= app.settings.max_active_builds as usize => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count active builds");
                    break;
                }
            }
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
async fn announce_breaker(app: &App, b: &Build, change: BreakerChange, now: DateTime<Utc>) {
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
    if let Err(e) = app.events.publish(&ev).await {
        tracing::warn!(error = %e, "event not recorded");
    }
}
