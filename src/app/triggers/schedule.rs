//! `patch_tuesday`: fires each scheduled pipeline once per cycle
//! (Patch Tuesday plus its offset, in its time zone, outside blackouts).

use super::request;
use crate::app::admission::enqueue;
use crate::app::App;
use crate::domain::build::Trigger;
use crate::domain::schedule::Schedule;

/// What `patch_tuesday` did for one scheduled pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleStep {
    /// The first run: the schedule is armed, nothing requested.
    Armed { pipeline: String },
    /// A build was requested for the cycle.
    Requested { pipeline: String, cycle: String },
}

/// What one `patch_tuesday` run did, pipeline by pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleOutcome {
    pub steps: Vec<ScheduleStep>,
}

impl ScheduleOutcome {
    pub fn log_lines(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match s {
                ScheduleStep::Armed { pipeline } => format!("patch_tuesday: {pipeline} armed"),
                ScheduleStep::Requested { pipeline, cycle } => {
                    format!("patch_tuesday: {pipeline} cycle {cycle} requested")
                }
            })
            .collect()
    }
}

/// Fires each scheduled pipeline at most once per cycle. The first run only
/// arms the schedule; later runs look at everything since the last check,
/// so a missed or past-due firing is caught up once (the latest occurrence).
pub async fn patch_tuesday(app: &App) -> anyhow::Result<ScheduleOutcome> {
    let now = app.clock.now();
    let mut outcome = ScheduleOutcome::default();
    for p in app.pipelines.iter() {
        let Some(spec) = &p.kiln.triggers.schedule else {
            continue;
        };
        let schedule = Schedule::from_spec(spec).map_err(anyhow::Error::msg)?;
        let checked = app
            .store
            .runtime(&p.name)
            .await?
            .memory
            .schedule_checked_until;
        let Some(since) = checked else {
            app.store
                .update_memory(&p.name, |m| m.schedule_checked_until = Some(now))
                .await?;
            tracing::info!(pipeline = %p.name, "schedule armed");
            outcome.steps.push(ScheduleStep::Armed {
                pipeline: p.name.clone(),
            });
            continue;
        };
        if let Some(occ) = schedule.latest_due(since, now) {
            let reason = if occ.deferred {
                format!("schedule cycle {} (deferred by a blackout)", occ.cycle)
            } else {
                format!("schedule cycle {}", occ.cycle)
            };
            enqueue(
                app,
                &request(
                    &p.name,
                    Trigger::Schedule {
                        cycle: occ.cycle.clone(),
                    },
                    reason,
                    "kiln/patch_tuesday",
                ),
            )
            .await?;
            tracing::info!(pipeline = %p.name, cycle = %occ.cycle, "schedule cycle requested");
            outcome.steps.push(ScheduleStep::Requested {
                pipeline: p.name.clone(),
                cycle: occ.cycle.clone(),
            });
        }
        // Only after the request is durable: a crash before this line repeats
        // the request, which its key deduplicates.
        app.store
            .update_memory(&p.name, |m| {
                if m.schedule_checked_until.is_none_or(|t| t < now) {
                    m.schedule_checked_until = Some(now);
                }
            })
            .await?;
    }
    Ok(outcome)
}
