//! The transition function and its rules, state by state. Pure: the
//! driver observes, calls [`transition`], persists the result and only then
//! performs the effects.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    classify, Build, BuildState, Decision, Effect, FailureCategory, Observation, Phase, Tuning,
};
use crate::domain::run::{RunOutput, RunState, RunStatus, RunSubState, TemplateStatus};

/// The transition function: `(build, observation, now) → (build', effects)`.
pub fn transition(build: &Build, obs: &Observation, now: DateTime<Utc>, t: &Tuning) -> Decision {
    let mut next = build.clone();
    let mut effects = Vec::new();
    let cause = step(&mut next, obs, now, t, &mut effects);
    if next.state.is_terminal() && !build.state.is_terminal() {
        effects.retain(|e| !matches!(e, Effect::SchedulePoll { .. }));
        effects.push(Effect::AdmitQueued);
    }
    let changed = next.state != build.state || next.attempt != build.attempt;
    Decision {
        build: next,
        effects,
        cause: if changed { cause } else { None },
    }
}

fn poll(b: &mut Build, t: &Tuning, effects: &mut Vec<Effect>) {
    let finishing = matches!(
        b.state,
        BuildState::Validating | BuildState::Publishing { .. }
    );
    effects.push(Effect::SchedulePoll {
        after: t.poll_delay(b.quiet_polls, finishing),
    });
    b.quiet_polls = b.quiet_polls.saturating_add(1);
}

fn step(
    b: &mut Build,
    obs: &Observation,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    // Terminal states are final whatever arrives.
    match &b.state {
        BuildState::Succeeded { .. } | BuildState::Failed { .. } | BuildState::Canceled { .. } => {
            return None
        }
        BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Publishing { .. }
        | BuildState::Canceling { .. } => {}
    }

    if let Observation::CancelRequested { reason } = obs {
        return Some(request_cancel(b, reason.clone(), false, t, effects));
    }

    match b.state.clone() {
        BuildState::Queued => match obs {
            Observation::SlotGranted => {
                b.state = BuildState::Submitting { not_before: None };
                b.attempt_started_at = Some(now);
                b.quiet_polls = 0;
                effects.push(Effect::Submit {
                    template: b.template_name(),
                });
                poll(b, t, effects);
                Some("a build slot was free".into())
            }
            Observation::Provider { .. }
            | Observation::SubmitFailed { .. }
            | Observation::Tick
            | Observation::CancelRequested { .. } => None,
        },
        BuildState::Submitting { not_before } => match obs {
            Observation::SubmitFailed { category, message } => {
                Some(fail_or_retry(b, *category, message, now, t, effects))
            }
            Observation::Provider {
                status: TemplateStatus::Missing,
                leftover_version,
                ..
            } => submit_unless_waiting(b, not_before, *leftover_version, now, t, effects),
            Observation::Provider { .. } => observe_run(b, obs, now, t, effects),
            // Nothing was learned (the provider could not be asked, or the
            // backoff is not over): wait, never submit on a guess.
            Observation::Tick => {
                if let Some(cause) = check_timeout(b, now, t, effects) {
                    return Some(cause);
                }
                match not_before.filter(|at| *at > now) {
                    Some(at) => effects.push(Effect::SchedulePoll {
                        after: (at - now).to_std().unwrap_or_default(),
                    }),
                    None => poll(b, t, effects),
                }
                None
            }
            Observation::SlotGranted | Observation::CancelRequested { .. } => None,
        },
        BuildState::Running { .. } | BuildState::Validating | BuildState::Publishing { .. } => {
            match obs {
                Observation::Provider { .. } => observe_run(b, obs, now, t, effects),
                Observation::SubmitFailed { category, message } => {
                    Some(fail_or_retry(b, *category, message, now, t, effects))
                }
                Observation::Tick => {
                    if let Some(cause) = check_timeout(b, now, t, effects) {
                        return Some(cause);
                    }
                    poll(b, t, effects);
                    None
                }
                Observation::SlotGranted | Observation::CancelRequested { .. } => None,
            }
        }
        BuildState::Canceling { reason, timed_out } => match obs {
            Observation::Provider {
                status,
                outputs,
                replication,
                ..
            } => match status {
                TemplateStatus::Missing
                | TemplateStatus::NotRun
                | TemplateStatus::ProvisioningFailed { .. } => {
                    Some(finish_cancel(b, reason, timed_out, effects))
                }
                // No run can start on a template that is not ready, but
                // deleting it now would race its creation: wait for it.
                TemplateStatus::Provisioning | TemplateStatus::Deleting => {
                    if let Some(cause) = cancel_unconfirmed(b, &reason, now, t, effects) {
                        return Some(cause);
                    }
                    poll(b, t, effects);
                    None
                }
                TemplateStatus::Run(s) => match &s.run_state {
                    RunState::Canceled | RunState::Failed => {
                        Some(finish_cancel(b, reason, timed_out, effects))
                    }
                    // The run won the race: the image exists, so say so.
                    RunState::Succeeded => Some(succeed(b, outputs.clone(), vec![], effects)),
                    // A final state too. A version that reached some region
                    // is live there (the run won, partly): say so, as for a
                    // run that was not canceled, rather than leave a live
                    // version behind a canceled build. Regions still copying
                    // are waited for; nothing published, the cancel stands.
                    RunState::PartiallySucceeded => match replication {
                        Some(r)
                            if r.pending.is_empty()
                                && !r.completed.is_empty()
                                && r.unpublished.is_empty() =>
                        {
                            Some(succeed(b, outputs.clone(), r.failed.clone(), effects))
                        }
                        Some(r) if !r.pending.is_empty() => {
                            if let Some(cause) = cancel_unconfirmed(b, &reason, now, t, effects) {
                                return Some(cause);
                            }
                            poll(b, t, effects);
                            None
                        }
                        Some(_) | None => Some(finish_cancel(b, reason, timed_out, effects)),
                    },
                    RunState::Running | RunState::Canceling | RunState::Unknown(_) => {
                        if let Some(cause) = cancel_unconfirmed(b, &reason, now, t, effects) {
                            return Some(cause);
                        }
                        // A cancel that failed to reach the provider is sent again.
                        if s.run_state == RunState::Running {
                            effects.push(Effect::CancelRun {
                                template: b.template_name(),
                            });
                        }
                        poll(b, t, effects);
                        None
                    }
                },
            },
            Observation::SubmitFailed { .. } => Some(finish_cancel(b, reason, timed_out, effects)),
            Observation::Tick => {
                if let Some(cause) = cancel_unconfirmed(b, &reason, now, t, effects) {
                    return Some(cause);
                }
                poll(b, t, effects);
                None
            }
            Observation::SlotGranted | Observation::CancelRequested { .. } => None,
        },
        BuildState::Succeeded { .. } | BuildState::Failed { .. } | BuildState::Canceled { .. } => {
            None
        }
    }
}

/// A provider that never confirms a cancel must not hold the build (and its
/// pipeline's slot) forever: past the attempt's timeout plus twice the
/// margin, the build fails as `timeout`, saying the run may still finish.
fn cancel_unconfirmed(
    b: &mut Build,
    reason: &str,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    let started = b.attempt_started_at?;
    let limit = Duration::from_secs(u64::from(b.timeout_minutes) * 60) + t.timeout_margin * 2;
    if (now - started).to_std().unwrap_or_default() <= limit {
        return None;
    }
    effects.push(Effect::DeleteTemplate {
        template: b.template_name(),
    });
    b.state = BuildState::Failed {
        category: FailureCategory::Timeout,
        message: format!(
            "the provider did not confirm the cancel ({reason}); its run may still publish version {}",
            b.version
        ),
    };
    Some("cancel not confirmed in time".into())
}

fn submit_unless_waiting(
    b: &mut Build,
    not_before: Option<DateTime<Utc>>,
    leftover_version: Option<bool>,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    if let Some(at) = not_before {
        if at > now {
            let wait = (at - now).to_std().unwrap_or_default();
            effects.push(Effect::SchedulePoll { after: wait });
            return None;
        }
    }
    let waited = not_before.is_some();
    if waited {
        // A new attempt: its clock starts now, not with the failed one.
        b.attempt_started_at = Some(now);
    }
    if let Some(cause) = check_timeout(b, now, t, effects) {
        return Some(cause);
    }
    // A retry distributes to the same version number, which an earlier
    // attempt that failed while distributing usually left behind (often
    // Failed): AIB would refuse to distribute onto it. It goes first; the
    // retry is submitted once the gallery no longer has it.
    if b.attempt > 1 && leftover_version != Some(false) {
        if leftover_version == Some(true) {
            effects.push(Effect::RemoveLeftoverVersion);
        }
        // The backoff is over and the attempt's clock runs from here: a
        // version that cannot be removed ends in this attempt's timeout,
        // instead of holding the build (and its slot) forever.
        b.state = BuildState::Submitting { not_before: None };
        poll(b, t, effects);
        return waited.then(|| {
            format!(
                "retry backoff over; attempt {} is submitted once the gallery holds no version {} from an earlier attempt",
                b.attempt, b.version
            )
        });
    }
    b.state = BuildState::Submitting { not_before: None };
    effects.push(Effect::Submit {
        template: b.template_name(),
    });
    poll(b, t, effects);
    waited.then(|| format!("retry backoff over, submitting attempt {}", b.attempt))
}

/// Maps a provider run status onto the machine.
fn observe_run(
    b: &mut Build,
    obs: &Observation,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    let Observation::Provider {
        status,
        outputs,
        replication,
        ..
    } = obs
    else {
        return None;
    };
    let run = match status {
        TemplateStatus::Missing => {
            return Some(fail_or_retry(
                b,
                FailureCategory::Transient,
                "the provider no longer knows this build's template",
                now,
                t,
                effects,
            ))
        }
        TemplateStatus::ProvisioningFailed { code, message } => {
            let category = crate::domain::run::provisioning_failure(code);
            let message = format!("the image template was refused ({code}): {message}");
            return Some(fail_or_retry(b, category, &message, now, t, effects));
        }
        TemplateStatus::Provisioning | TemplateStatus::Deleting => {
            if let Some(cause) = check_timeout(b, now, t, effects) {
                return Some(cause);
            }
            poll(b, t, effects);
            return None;
        }
        // Provisioned and not run: the run request has not landed yet (or
        // its answer was lost and this read says it never started).
        TemplateStatus::NotRun => {
            if let Some(cause) = check_timeout(b, now, t, effects) {
                return Some(cause);
            }
            effects.push(Effect::Run {
                template: b.template_name(),
            });
            poll(b, t, effects);
            return None;
        }
        TemplateStatus::Run(run) => run,
    };
    let seen = format!(
        "{:?}/{:?}/{}",
        run.run_state, run.run_sub_state, run.message
    );
    if b.last_seen.as_deref() != Some(seen.as_str()) {
        // The provider signalled a change: poll again soon.
        b.quiet_polls = 0;
        b.last_seen = Some(seen);
    }
    match &run.run_state {
        RunState::Succeeded => Some(succeed(b, outputs.clone(), vec![], effects)),
        // The run is over; what remains is replication. Regions still copying
        // are waited for; once none is, the build ends with the regions that
        // hold the version and the ones that failed, instead of waiting for
        // replicas that will never come.
        RunState::PartiallySucceeded => match replication {
            Some(r)
                if r.pending.is_empty() && !r.completed.is_empty() && r.unpublished.is_empty() =>
            {
                Some(succeed(b, outputs.clone(), r.failed.clone(), effects))
            }
            // No region holds the version: the attempt failed to publish.
            // Replication failures are transient; the retry removes the
            // version this attempt left before it distributes again.
            Some(r) if r.pending.is_empty() => {
                let what = if r.unpublished.is_empty() {
                    "no region".to_string()
                } else {
                    format!("no region for {}", r.unpublished.join(", "))
                };
                let message = format!(
                    "replication: the run ended PartiallySucceeded and version {} replicated to {what} (failed in {}): {}",
                    b.version,
                    r.failed.join(", "),
                    run.message
                );
                Some(fail_or_retry(
                    b,
                    FailureCategory::Replication,
                    &message,
                    now,
                    t,
                    effects,
                ))
            }
            Some(_) | None => {
                if let Some(cause) = check_timeout(b, now, t, effects) {
                    return Some(cause);
                }
                let changed = b.state != BuildState::Publishing { replicating: true };
                b.state = BuildState::Publishing { replicating: true };
                poll(b, t, effects);
                changed.then(|| "run ended; waiting for gallery replication".to_string())
            }
        },
        RunState::Failed => {
            let category = classify(&run.message);
            Some(fail_or_retry(b, category, &run.message, now, t, effects))
        }
        RunState::Canceled => {
            b.state = BuildState::Canceled {
                reason: format!("canceled at the provider: {}", run.message),
            };
            effects.push(Effect::DeleteTemplate {
                template: b.template_name(),
            });
            Some("the provider reports the run canceled".into())
        }
        RunState::Running | RunState::Canceling | RunState::Unknown(_) => {
            if let Some(cause) = check_timeout(b, now, t, effects) {
                return Some(cause);
            }
            let target = phase_state(run);
            let changed = target != b.state;
            b.state = target;
            poll(b, t, effects);
            changed.then(|| format!("provider phase {}", sub_state_name(run)))
        }
    }
}

fn phase_state(run: &RunStatus) -> BuildState {
    match &run.run_sub_state {
        None | Some(RunSubState::Queued) | Some(RunSubState::Unknown(_)) => BuildState::Running {
            phase: Phase::Queued,
        },
        Some(RunSubState::Building) => BuildState::Running {
            phase: Phase::Building,
        },
        Some(RunSubState::Customizing) => BuildState::Running {
            phase: Phase::Customizing,
        },
        Some(RunSubState::Optimizing) => BuildState::Running {
            phase: Phase::Optimizing,
        },
        Some(RunSubState::Validating) => BuildState::Validating,
        Some(RunSubState::Distributing) => BuildState::Publishing { replicating: false },
    }
}

fn sub_state_name(run: &RunStatus) -> String {
    match &run.run_sub_state {
        None => "Queued".into(),
        Some(RunSubState::Unknown(s)) => s.clone(),
        Some(s) => format!("{s:?}"),
    }
}

fn check_timeout(
    b: &mut Build,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> Option<String> {
    let started = b.attempt_started_at?;
    let limit = Duration::from_secs(u64::from(b.timeout_minutes) * 60) + t.timeout_margin;
    let elapsed = (now - started).to_std().unwrap_or_default();
    (elapsed > limit).then(|| {
        let reason = format!(
            "attempt {} ran {} s, past buildTimeoutInMinutes ({}) plus a margin of {} s",
            b.attempt,
            elapsed.as_secs(),
            b.timeout_minutes,
            t.timeout_margin.as_secs()
        );
        request_cancel(b, reason, true, t, effects)
    })
}

fn request_cancel(
    b: &mut Build,
    reason: String,
    timed_out: bool,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> String {
    match b.state {
        // Nothing reached the provider yet: cancel at once.
        BuildState::Queued => {
            b.state = BuildState::Canceled {
                reason: reason.clone(),
            };
            format!("canceled before start: {reason}")
        }
        BuildState::Submitting { .. }
        | BuildState::Running { .. }
        | BuildState::Validating
        | BuildState::Publishing { .. }
        | BuildState::Canceling { .. }
        | BuildState::Succeeded { .. }
        | BuildState::Failed { .. }
        | BuildState::Canceled { .. } => {
            b.state = BuildState::Canceling {
                reason: reason.clone(),
                timed_out,
            };
            b.quiet_polls = 0;
            effects.push(Effect::CancelRun {
                template: b.template_name(),
            });
            poll(b, t, effects);
            format!("cancel requested: {reason}")
        }
    }
}

fn finish_cancel(
    b: &mut Build,
    reason: String,
    timed_out: bool,
    effects: &mut Vec<Effect>,
) -> String {
    effects.push(Effect::DeleteTemplate {
        template: b.template_name(),
    });
    if timed_out {
        b.state = BuildState::Failed {
            category: FailureCategory::Timeout,
            message: reason,
        };
        "timed out; the provider run is stopped".into()
    } else {
        b.state = BuildState::Canceled { reason };
        "the provider stopped the run".into()
    }
}

fn succeed(
    b: &mut Build,
    artifacts: Vec<RunOutput>,
    failed_regions: Vec<String>,
    effects: &mut Vec<Effect>,
) -> String {
    effects.push(Effect::DeleteTemplate {
        template: b.template_name(),
    });
    let cause = if failed_regions.is_empty() {
        format!("published version {}", b.version)
    } else {
        format!(
            "published version {}; replication failed in {}",
            b.version,
            failed_regions.join(", ")
        )
    };
    b.state = BuildState::Succeeded {
        artifacts,
        failed_regions,
    };
    cause
}

fn fail_or_retry(
    b: &mut Build,
    category: FailureCategory,
    message: &str,
    now: DateTime<Utc>,
    t: &Tuning,
    effects: &mut Vec<Effect>,
) -> String {
    effects.push(Effect::DeleteTemplate {
        template: b.template_name(),
    });
    if category.is_transient() && b.attempt < b.max_attempts {
        let delay = t.retry_delay(&b.id, b.attempt);
        b.attempt += 1;
        // The next attempt's clock starts when it is submitted, not with
        // this one's: a tick during the backoff must not time it out.
        b.attempt_started_at = None;
        b.quiet_polls = 0;
        b.last_seen = None;
        b.state = BuildState::Submitting {
            not_before: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
        };
        effects.push(Effect::SchedulePoll { after: delay });
        format!(
            "{category} failure, retrying as attempt {} in {} ms: {message}",
            b.attempt,
            delay.as_millis()
        )
    } else {
        let why = if category.is_transient() {
            format!(" (after {} attempts)", b.attempt)
        } else {
            String::new()
        };
        b.state = BuildState::Failed {
            category,
            message: format!("{message}{why}"),
        };
        format!("{category} failure{why}")
    }
}
