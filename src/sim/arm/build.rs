//! The scripted build: when each phase of a run starts and how it ends, as a
//! pure function of the run's start, the build profile and the faults
//! scripted for it. Nothing runs; every answer about a run (its
//! `lastRunStatus`, its operation, its log, its gallery versions) is read
//! from this plan at the world's current time, so the same inputs give the
//! same wire answers at every clock factor.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How long each phase of a build lasts, in sim time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildProfile {
    pub queued_secs: u64,
    pub building_secs: u64,
    pub customizing_secs: u64,
    /// Only for templates with `validate`.
    pub validating_secs: u64,
    pub distributing_secs: u64,
    /// From `POST /cancel` to `Canceled`.
    pub canceling_secs: u64,
    /// From a template `PUT` to `provisioningState: Succeeded` (or `Failed`).
    pub provisioning_secs: u64,
    /// From a template `DELETE` to the template being gone.
    pub deleting_secs: u64,
}

impl Default for BuildProfile {
    /// A 30-minute build: 2 min queued, 8 building, 12 customizing,
    /// 2 validating, 6 distributing.
    fn default() -> Self {
        Self {
            queued_secs: 120,
            building_secs: 480,
            customizing_secs: 720,
            validating_secs: 120,
            distributing_secs: 360,
            canceling_secs: 60,
            provisioning_secs: 20,
            deleting_secs: 30,
        }
    }
}

/// AIB `runSubState`, the phases the sim plays (it never optimizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSubState {
    Queued,
    Building,
    Customizing,
    Validating,
    Distributing,
}

impl RunSubState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunSubState::Queued => "Queued",
            RunSubState::Building => "Building",
            RunSubState::Customizing => "Customizing",
            RunSubState::Validating => "Validating",
            RunSubState::Distributing => "Distributing",
        }
    }
}

/// What the template asks of a build, and the faults scripted for it.
#[derive(Debug, Clone, Default)]
pub struct BuildPlan {
    /// One log description per customizer, in order.
    pub customizers: Vec<String>,
    pub validate: bool,
    /// `Some(i)`: customizer `i` (0-based) fails with `PackerBuildFailed`.
    pub failing_step: Option<usize>,
    /// A region whose replication fails: the run ends `PartiallySucceeded`.
    pub failing_region: Option<String>,
}

/// How a run ends when nobody cancels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Replication failed in `region`; the other regions completed.
    PartiallySucceeded {
        region: String,
    },
    /// Customizer `step` (0-based) exited non-zero.
    Failed {
        step: usize,
    },
}

/// When a run's phases start and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub started: DateTime<Utc>,
    /// Phases reached, each with its start, in order.
    pub phases: Vec<(RunSubState, DateTime<Utc>)>,
    /// Start of each customizer's step.
    pub steps: Vec<DateTime<Utc>>,
    pub ends: DateTime<Utc>,
    pub outcome: Outcome,
}

fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::from_std(Duration::from_secs(s)).unwrap_or(chrono::Duration::MAX)
}

impl Schedule {
    pub fn plan(started: DateTime<Utc>, profile: &BuildProfile, plan: &BuildPlan) -> Self {
        let mut at = started;
        let mut phases = vec![(RunSubState::Queued, at)];
        at += secs(profile.queued_secs);
        phases.push((RunSubState::Building, at));
        at += secs(profile.building_secs);
        phases.push((RunSubState::Customizing, at));
        let n = plan.customizers.len().max(1) as u64;
        let step = profile.customizing_secs / n;
        let steps: Vec<DateTime<Utc>> = (0..plan.customizers.len() as u64)
            .map(|k| at + secs(step * k))
            .collect();
        if let Some(failing) = plan.failing_step {
            let failing = failing.min(plan.customizers.len().saturating_sub(1));
            let ends = at + secs(step * failing as u64 + step / 2);
            return Self {
                started,
                phases,
                steps,
                ends,
                outcome: Outcome::Failed { step: failing },
            };
        }
        at += secs(profile.customizing_secs);
        if plan.validate {
            phases.push((RunSubState::Validating, at));
            at += secs(profile.validating_secs);
        }
        phases.push((RunSubState::Distributing, at));
        at += secs(profile.distributing_secs);
        let outcome = match &plan.failing_region {
            Some(region) => Outcome::PartiallySucceeded {
                region: region.clone(),
            },
            None => Outcome::Succeeded,
        };
        Self {
            started,
            phases,
            steps,
            ends: at,
            outcome,
        }
    }

    /// The phase a run is in at `t` (the last one started).
    pub fn phase_at(&self, t: DateTime<Utc>) -> RunSubState {
        self.phases
            .iter()
            .take_while(|(_, s)| *s <= t)
            .last()
            .map(|(p, _)| *p)
            .unwrap_or(RunSubState::Queued)
    }

    pub fn distributing_from(&self) -> Option<DateTime<Utc>> {
        self.phases
            .iter()
            .find(|(p, _)| *p == RunSubState::Distributing)
            .map(|(_, s)| *s)
    }
}

/// A cancel request against a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    pub at: DateTime<Utc>,
    /// `None`: the run stays `Canceling` (fault).
    pub done: Option<DateTime<Utc>>,
}

/// A run's `runState` at some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunView {
    Running(RunSubState),
    Canceling(RunSubState),
    Canceled { ended: DateTime<Utc> },
    Ended { outcome: Outcome },
}

impl RunView {
    pub fn run_state(&self) -> &'static str {
        match self {
            RunView::Running(_) => "Running",
            RunView::Canceling(_) => "Canceling",
            RunView::Canceled { .. } => "Canceled",
            RunView::Ended { outcome } => match outcome {
                Outcome::Succeeded => "Succeeded",
                Outcome::PartiallySucceeded { .. } => "PartiallySucceeded",
                Outcome::Failed { .. } => "Failed",
            },
        }
    }

    pub fn sub_state(&self) -> Option<RunSubState> {
        match self {
            RunView::Running(p) | RunView::Canceling(p) => Some(*p),
            RunView::Canceled { .. } | RunView::Ended { .. } => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, RunView::Canceled { .. } | RunView::Ended { .. })
    }
}

/// One moment a run reached a `runState`/`runSubState`, in sim time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    pub run_state: &'static str,
    pub run_sub_state: Option<&'static str>,
    pub at: DateTime<Utc>,
}

/// A run: its plan and whether someone canceled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub schedule: Schedule,
    pub cancel: Option<Cancel>,
}

impl Run {
    /// A cancel counts only if it came before the run ended.
    fn effective_cancel(&self) -> Option<Cancel> {
        self.cancel.filter(|c| c.at < self.schedule.ends)
    }

    pub fn view(&self, t: DateTime<Utc>) -> RunView {
        if let Some(c) = self.effective_cancel().filter(|c| c.at <= t) {
            return match c.done {
                Some(done) if done <= t => RunView::Canceled { ended: done },
                _ => RunView::Canceling(self.schedule.phase_at(c.at)),
            };
        }
        if t < self.schedule.ends {
            RunView::Running(self.schedule.phase_at(t))
        } else {
            RunView::Ended {
                outcome: self.schedule.outcome.clone(),
            }
        }
    }

    /// When the run ended, if it has by `t`.
    pub fn ended_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.view(t) {
            RunView::Canceled { ended } => Some(ended),
            RunView::Ended { .. } => Some(self.schedule.ends),
            RunView::Running(_) | RunView::Canceling(_) => None,
        }
    }

    /// Every state the run reached by `t`, with when.
    pub fn events(&self, t: DateTime<Utc>) -> Vec<RunEvent> {
        let cancel = self.effective_cancel();
        let cut = cancel.map(|c| c.at).unwrap_or(self.schedule.ends);
        let mut out: Vec<RunEvent> = self
            .schedule
            .phases
            .iter()
            .filter(|(_, s)| *s < cut || (*s == self.schedule.started))
            .map(|(p, s)| RunEvent {
                run_state: "Running",
                run_sub_state: Some(p.as_str()),
                at: *s,
            })
            .collect();
        match cancel {
            Some(c) => {
                out.push(RunEvent {
                    run_state: "Canceling",
                    run_sub_state: Some(self.schedule.phase_at(c.at).as_str()),
                    at: c.at,
                });
                if let Some(done) = c.done {
                    out.push(RunEvent {
                        run_state: "Canceled",
                        run_sub_state: None,
                        at: done,
                    });
                }
            }
            None => out.push(RunEvent {
                run_state: RunView::Ended {
                    outcome: self.schedule.outcome.clone(),
                }
                .run_state(),
                run_sub_state: None,
                at: self.schedule.ends,
            }),
        }
        out.retain(|e| e.at <= t);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn mins(m: i64) -> chrono::Duration {
        chrono::Duration::minutes(m)
    }

    fn plan(validate: bool) -> BuildPlan {
        BuildPlan {
            customizers: vec!["a".into(), "b".into(), "c".into()],
            validate,
            ..BuildPlan::default()
        }
    }

    #[test]
    fn the_default_build_takes_thirty_minutes_through_every_phase() {
        let s = Schedule::plan(t0(), &BuildProfile::default(), &plan(true));
        let starts: Vec<(RunSubState, i64)> = s
            .phases
            .iter()
            .map(|(p, at)| (*p, (*at - t0()).num_minutes()))
            .collect();
        assert_eq!(
            starts,
            vec![
                (RunSubState::Queued, 0),
                (RunSubState::Building, 2),
                (RunSubState::Customizing, 10),
                (RunSubState::Validating, 22),
                (RunSubState::Distributing, 24)
            ]
        );
        assert_eq!(s.ends, t0() + mins(30));
        assert_eq!(
            s.steps,
            vec![t0() + mins(10), t0() + mins(14), t0() + mins(18)]
        );
    }

    #[test]
    fn without_validate_there_is_no_validating_phase() {
        let s = Schedule::plan(t0(), &BuildProfile::default(), &plan(false));
        assert!(s.phases.iter().all(|(p, _)| *p != RunSubState::Validating));
        assert_eq!(s.ends, t0() + mins(28));
    }

    #[test]
    fn a_failing_step_ends_the_run_during_customizing() {
        let mut p = plan(true);
        p.failing_step = Some(1);
        let run = Run {
            schedule: Schedule::plan(t0(), &BuildProfile::default(), &p),
            cancel: None,
        };
        assert_eq!(run.schedule.ends, t0() + mins(16));
        assert_eq!(
            run.view(t0() + mins(15)),
            RunView::Running(RunSubState::Customizing)
        );
        assert_eq!(run.view(t0() + mins(16)).run_state(), "Failed");
        let last = run.events(t0() + mins(60)).pop().unwrap();
        assert_eq!((last.run_state, last.at), ("Failed", t0() + mins(16)));
    }

    #[test]
    fn a_cancel_goes_through_canceling_to_canceled_and_a_stuck_one_stays() {
        let schedule = Schedule::plan(t0(), &BuildProfile::default(), &plan(false));
        let mut run = Run {
            schedule,
            cancel: Some(Cancel {
                at: t0() + mins(5),
                done: Some(t0() + mins(6)),
            }),
        };
        assert_eq!(
            run.view(t0() + mins(5)),
            RunView::Canceling(RunSubState::Building)
        );
        assert_eq!(
            run.view(t0() + mins(7)),
            RunView::Canceled {
                ended: t0() + mins(6)
            }
        );
        let states: Vec<&str> = run
            .events(t0() + mins(60))
            .iter()
            .map(|e| e.run_state)
            .collect();
        assert_eq!(states, vec!["Running", "Running", "Canceling", "Canceled"]);
        run.cancel = Some(Cancel {
            at: t0() + mins(5),
            done: None,
        });
        assert_eq!(
            run.view(t0() + mins(600)),
            RunView::Canceling(RunSubState::Building)
        );
    }

    #[test]
    fn a_cancel_after_the_end_changes_nothing() {
        let schedule = Schedule::plan(t0(), &BuildProfile::default(), &plan(false));
        let run = Run {
            schedule,
            cancel: Some(Cancel {
                at: t0() + mins(40),
                done: Some(t0() + mins(41)),
            }),
        };
        assert_eq!(run.view(t0() + mins(50)).run_state(), "Succeeded");
    }
}
