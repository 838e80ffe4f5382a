//! Functions `build_requests`, `build_polls` and `build_sweeper`.
//!
//! Each returns what it did as a typed outcome and logs it through
//! `tracing`; the custom-handler adapter (`functions`) turns the
//! outcome into the invocation's log lines.

use serde::Deserialize;
use serde_json::{json, Value};

use super::admission::{self, AdmitOutcome};
use super::{driver, App, POLLS_QUEUE, REQUESTS_QUEUE};
use crate::domain::request::BuildRequest;
use crate::store::port::NewDeadLetter;

/// One delivery of a queue message, as the queue tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub delivery_count: u32,
}

/// A message recorded as a dead letter and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    pub queue: &'static str,
    pub message_id: String,
    pub reason: String,
}

impl DeadLettered {
    pub fn log_line(&self) -> String {
        format!(
            "{}: message {} dead-lettered: {}",
            self.queue, self.message_id, self.reason
        )
    }
}

/// What `build_requests` did with one request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Admission decided on the request.
    Admitted {
        pipeline: String,
        outcome: AdmitOutcome,
    },
    /// The request cannot succeed and was dead-lettered.
    DeadLettered(DeadLettered),
}

impl RequestOutcome {
    /// The function's return value.
    pub fn return_value(&self) -> anyhow::Result<Value> {
        Ok(match self {
            RequestOutcome::Admitted { outcome, .. } => serde_json::to_value(outcome)?,
            RequestOutcome::DeadLettered(d) => {
                json!({ "outcome": "deadLettered", "reason": d.reason })
            }
        })
    }

    pub fn log_lines(&self) -> Vec<String> {
        vec![match self {
            RequestOutcome::Admitted { pipeline, outcome } => {
                format!("build_requests: {pipeline} → {outcome:?}")
            }
            RequestOutcome::DeadLettered(d) => d.log_line(),
        }]
    }
}

/// What `build_polls` did with one poll message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// The poll cannot be acted on and was dead-lettered.
    DeadLettered(DeadLettered),
    /// The build moved on since the poll was scheduled; the poll was dropped.
    Stale { build_id: String, pipeline: String },
    /// The build was stepped and is now in `state`.
    Stepped {
        build_id: String,
        pipeline: String,
        state: &'static str,
    },
    /// There was nothing to step.
    Idle,
}

impl PollOutcome {
    pub fn log_lines(&self) -> Vec<String> {
        match self {
            PollOutcome::DeadLettered(d) => vec![d.log_line()],
            PollOutcome::Stale { build_id, pipeline } => {
                vec![format!(
                    "build_polls: stale poll for {build_id} ({pipeline}) dropped"
                )]
            }
            PollOutcome::Stepped {
                build_id,
                pipeline,
                state,
            } => {
                vec![format!("build_polls: {build_id} ({pipeline}) is {state}")]
            }
            PollOutcome::Idle => Vec::new(),
        }
    }
}

/// What one `build_sweeper` run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Builds whose poll was overdue.
    pub due: usize,
    /// Overdue builds the sweep stepped (all of them unless it ran out of time).
    pub stepped: usize,
    /// Steps that failed.
    pub failed: usize,
    /// Template cleanup steps taken.
    pub retired: usize,
    /// Events delivered.
    pub delivered: usize,
}

impl SweepOutcome {
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.retired > 0 {
            lines.push(format!(
                "build_sweeper: {} template cleanup steps",
                self.retired
            ));
        }
        if self.due > 0 || self.delivered > 0 {
            lines.push(format!(
                "build_sweeper: stepped {} overdue builds ({} failed), delivered {} events",
                self.stepped, self.failed, self.delivered
            ));
        }
        lines
    }
}

/// A request that cannot succeed is dead-lettered with its reason at the
/// first delivery and acknowledged: retrying it would only delay the queue.
async fn refuse(
    app: &App,
    queue: &'static str,
    text: &str,
    meta: &Delivery,
    reason: &str,
) -> anyhow::Result<DeadLettered> {
    app.store
        .record_dead_letter(&NewDeadLetter {
            queue,
            message_id: &meta.message_id,
            body: text,
            reason,
            delivery_count: meta.delivery_count,
            now: app.clock.now(),
        })
        .await?;
    app.metrics.dead_lettered(queue);
    tracing::warn!(queue, message_id = %meta.message_id, reason, "message dead-lettered");
    Ok(DeadLettered {
        queue,
        message_id: meta.message_id.clone(),
        reason: reason.to_string(),
    })
}

pub async fn build_requests(
    app: &App,
    text: &str,
    meta: &Delivery,
) -> anyhow::Result<RequestOutcome> {
    let req = match BuildRequest::parse(text.as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            return Ok(RequestOutcome::DeadLettered(
                refuse(app, REQUESTS_QUEUE, text, meta, &e.to_string()).await?,
            ))
        }
    };
    match admission::admit(app, &req, &meta.message_id).await? {
        Ok(outcome) => {
            tracing::info!(pipeline = %req.pipeline, outcome = ?outcome, "build request decided");
            Ok(RequestOutcome::Admitted {
                pipeline: req.pipeline,
                outcome,
            })
        }
        Err(refused) => Ok(RequestOutcome::DeadLettered(
            refuse(app, REQUESTS_QUEUE, text, meta, &refused.0).await?,
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Poll {
    build_id: String,
    /// The build's row version when the poll was scheduled.
    #[serde(default)]
    row_version: Option<i64>,
}

pub async fn build_polls(app: &App, text: &str, meta: &Delivery) -> anyhow::Result<PollOutcome> {
    let poll: Poll = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("not a poll message: {e}");
            return Ok(PollOutcome::DeadLettered(
                refuse(app, POLLS_QUEUE, text, meta, &reason).await?,
            ));
        }
    };
    let Some((build, current)) = app.store.get(&poll.build_id).await? else {
        let reason = format!("buildId: no build {}", poll.build_id);
        return Ok(PollOutcome::DeadLettered(
            refuse(app, POLLS_QUEUE, text, meta, &reason).await?,
        ));
    };
    // The build moved on since this poll was scheduled (the sweeper or a
    // cancel stepped it and scheduled its own poll): this chain ends here.
    if poll.row_version.is_some_and(|v| v != current) {
        tracing::info!(build = %poll.build_id, pipeline = %build.pipeline, "stale poll dropped");
        return Ok(PollOutcome::Stale {
            build_id: poll.build_id,
            pipeline: build.pipeline,
        });
    }
    Ok(match driver::advance(app, &poll.build_id, None).await? {
        Some(b) => {
            tracing::info!(build = %b.id, pipeline = %b.pipeline, state = b.state.name(), "build polled");
            PollOutcome::Stepped {
                build_id: b.id,
                pipeline: b.pipeline,
                state: b.state.name(),
            }
        }
        None => PollOutcome::Idle,
    })
}

/// How long a sweep steps overdue builds before it leaves the rest (and
/// the cleanup queue) to the next sweep.
const SWEEP_SHARE: std::time::Duration = std::time::Duration::from_secs(90);

/// The safety net: steps every build whose poll is overdue (lost message,
/// crashed invocation), starts queued builds that fit, delivers events.
pub async fn build_sweeper(app: &App) -> anyhow::Result<SweepOutcome> {
    let now = app.clock.now();
    let due = app.store.due(now).await?;
    let mut failed = 0;
    // A slow ARM must not make one sweep run into the next: past its share
    // of the invocation budget the sweep stops, and the next one goes on
    // (every build it skipped is still due).
    let started = std::time::Instant::now();
    let mut stepped = 0usize;
    for id in &due {
        if started.elapsed() > SWEEP_SHARE {
            tracing::warn!(
                left = due.len() - stepped,
                "sweep out of time; the next sweep steps the rest"
            );
            break;
        }
        stepped += 1;
        if let Err(e) = driver::advance(app, id, None).await {
            failed += 1;
            tracing::warn!(build = %id, error = %e, "sweeper could not step build");
        }
    }
    driver::admit_queued(app).await;
    let retired = super::cleanup::sweep(app).await;
    if retired > 0 {
        tracing::info!(retired, "template cleanup steps taken");
    }
    let delivered = app
        .events
        .deliver_due(app.clock.now())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "event delivery failed");
            0
        });
    let outcome = SweepOutcome {
        due: due.len(),
        stepped,
        failed,
        retired,
        delivered,
    };
    if outcome.due > 0 || delivered > 0 {
        tracing::info!(
            due = outcome.due,
            stepped,
            failed,
            delivered,
            "sweep stepped overdue builds and delivered events"
        );
    }
    if failed > 0 && failed == stepped {
        anyhow::bail!("every overdue build failed to step");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_the_log_lines_the_host_forwards() {
        let quiet = SweepOutcome::default();
        assert!(quiet.log_lines().is_empty());
        let busy = SweepOutcome {
            due: 3,
            stepped: 2,
            failed: 1,
            retired: 4,
            delivered: 5,
        };
        assert_eq!(
            busy.log_lines(),
            [
                "build_sweeper: 4 template cleanup steps",
                "build_sweeper: stepped 2 overdue builds (1 failed), delivered 5 events",
            ]
        );
        let dead = DeadLettered {
            queue: POLLS_QUEUE,
            message_id: "m-1".into(),
            reason: "buildId: no build b-1".into(),
        };
        assert_eq!(
            PollOutcome::DeadLettered(dead).log_lines(),
            ["build-polls: message m-1 dead-lettered: buildId: no build b-1"]
        );
        assert!(PollOutcome::Idle.log_lines().is_empty());
    }
}
