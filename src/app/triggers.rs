//! Functions that start builds on their own: `patch_tuesday` (schedules),
//! `base_image_watch` (polling sources on `latest`) and `base_image_events`
//! (Event Grid / CloudEvents). Each only enqueues requests with an
//! idempotency key; admission decides.
//!
//! Each returns what it did as a typed outcome and logs it through
//! `tracing`; the custom-handler adapter (`functions`) turns the
//! outcome into the invocation's log lines.

use chrono::Duration;
use serde_json::{json, Value};

use super::admission::enqueue;
use super::App;
use crate::domain::build::Trigger;
use crate::domain::events_in::{self, Inbound, InboundEvent};
use crate::domain::pipeline::Pipeline;
use crate::domain::request::BuildRequest;
use crate::domain::schedule::Schedule;
use crate::domain::source_watch::{self, Hint, Listed, Sighting, WatchMemory};
use crate::domain::template::Source;
use crate::ports::BaseVersion;
use crate::store::port::PipelineMemory;

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

/// What `base_image_watch` did for one pipeline following its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchStep {
    /// The source's versions could not be listed; the next tick tries again.
    Unlisted {
        pipeline: String,
        source: String,
        error: String,
    },
    /// The first look recorded the newest version as the baseline.
    Baseline {
        pipeline: String,
        source: String,
        version: String,
    },
    /// A build was requested for a newer version.
    Requested { pipeline: String, version: String },
}

/// What one `base_image_watch` run did (pipelines with nothing new are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOutcome {
    pub steps: Vec<WatchStep>,
}

impl WatchOutcome {
    pub fn log_lines(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match s {
                WatchStep::Unlisted {
                    pipeline,
                    source,
                    error,
                } => format!(
                    "base_image_watch: {pipeline}: cannot list versions of {source}: {error}"
                ),
                WatchStep::Baseline {
                    pipeline,
                    source,
                    version,
                } => format!("base_image_watch: {pipeline} baseline {source} at {version}"),
                WatchStep::Requested { pipeline, version } => {
                    format!("base_image_watch: {pipeline} requested for {version}")
                }
            })
            .collect()
    }
}

/// What `base_image_events` did with one inbound event, for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStep {
    /// A build was requested.
    Requested { pipeline: String, version: String },
    /// Nothing was requested, and why.
    Held {
        event: String,
        pipeline: String,
        version: String,
        reason: String,
    },
    /// The event is not one kiln acts on.
    Ignored { event: String, event_type: String },
}

/// What `base_image_events` did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsOutcome {
    /// A subscription validation handshake, answered with `response`.
    Handshake { response: Value },
    /// A batch of events, event by event.
    Batch { steps: Vec<EventStep> },
}

impl EventsOutcome {
    /// The reply to the sender: the handshake response, or the builds
    /// requested and held.
    pub fn reply(&self) -> Value {
        match self {
            EventsOutcome::Handshake { response } => response.clone(),
            EventsOutcome::Batch { steps } => {
                let mut requested = Vec::new();
                let mut held = Vec::new();
                for s in steps {
                    match s {
                        EventStep::Requested { pipeline, version } => {
                            requested.push(json!({ "pipeline": pipeline, "version": version }))
                        }
                        EventStep::Held {
                            pipeline,
                            version,
                            reason,
                            ..
                        } => held.push(
                            json!({ "pipeline": pipeline, "version": version, "reason": reason }),
                        ),
                        EventStep::Ignored { .. } => {}
                    }
                }
                json!({ "requested": requested, "held": held })
            }
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        let steps = match self {
            EventsOutcome::Handshake { .. } => {
                return vec![
                    "base_image_events: subscription validation handshake answered".to_string(),
                ]
            }
            EventsOutcome::Batch { steps } => steps,
        };
        let mut lines: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                EventStep::Requested { .. } => None,
                EventStep::Held {
                    event,
                    pipeline,
                    version,
                    reason,
                } => Some(format!(
                    "base_image_events: event {event}: {pipeline} not requested for {version}: {reason}"
                )),
                EventStep::Ignored { event, event_type } => Some(format!(
                    "base_image_events: event {event} of type {event_type} ignored"
                )),
            })
            .collect();
        let requested = steps
            .iter()
            .filter(|s| matches!(s, EventStep::Requested { .. }))
            .count();
        lines.push(format!("base_image_events: {requested} build requests"));
        lines
    }
}

fn request(pipeline: &str, trigger: Trigger, reason: String, by: &str) -> BuildRequest {
    BuildRequest {
        pipeline: pipeline.to_string(),
        reason: Some(reason),
        requested_by: Some(by.to_string()),
        idempotency_key: None,
        trigger: Some(trigger),
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

/// Polls the sources on `latest` and requests a build when a newer version
/// has been seen for the debounce window. The first look records a baseline.
pub async fn base_image_watch(app: &App) -> anyhow::Result<WatchOutcome> {
    let now = app.clock.now();
    let mut outcome = WatchOutcome::default();
    for p in app.pipelines.iter() {
        let source = &p.template.properties.source;
        if !source.floats() || !p.kiln.triggers.base_image.enabled {
            continue;
        }
        let versions = match app.catalog.versions(source).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pipeline = %p.name, source = %source.line(), error = %e, "cannot list source versions");
                outcome.steps.push(WatchStep::Unlisted {
                    pipeline: p.name.clone(),
                    source: source.line(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let listed: Vec<Listed<'_>> = versions.iter().map(listed).collect();
        let gallery_source = matches!(source, Source::SharedImageVersion { .. });
        let Some(newest) = source_watch::newest(&listed, gallery_source) else {
            continue;
        };
        let warning = newest.deprecated.then(|| {
            format!(
                "source {} version {} is deprecated",
                source.line(),
                newest.version
            )
        });
        let version = newest.version.to_string();
        let sighting = app
            .store
            .update_memory(&p.name, |m| {
                m.warnings.retain(|w| !w.starts_with("source "));
                m.warnings.extend(warning.clone());
                with_watch(m, |w| source_watch::sight(w, &version, now, debounce(p)))
            })
            .await?;
        match sighting {
            Sighting::Baseline => {
                tracing::info!(pipeline = %p.name, source = %source.line(), version, "source baseline recorded");
                outcome.steps.push(WatchStep::Baseline {
                    pipeline: p.name.clone(),
                    source: source.line(),
                    version,
                });
            }
            Sighting::UpToDate { .. } | Sighting::Debouncing { .. } => {}
            Sighting::Build => {
                let reason = format!("base image {} updated to {version}", source.line());
                request_base_build(app, p, &version, reason, "kiln/base_image_watch").await?;
                tracing::info!(pipeline = %p.name, version, "base image build requested");
                outcome.steps.push(WatchStep::Requested {
                    pipeline: p.name.clone(),
                    version,
                });
            }
        }
    }
    Ok(outcome)
}

fn listed(v: &BaseVersion) -> Listed<'_> {
    Listed {
        version: &v.version,
        deprecated: v.deprecated,
    }
}

fn debounce(p: &Pipeline) -> Duration {
    Duration::minutes(i64::from(p.kiln.triggers.base_image.debounce_minutes))
}

/// Runs a watch decision on the pipeline memory's watch fields.
fn with_watch<T>(m: &mut PipelineMemory, decide: impl FnOnce(&mut WatchMemory) -> T) -> T {
    let mut w = WatchMemory {
        requested: m.source_requested.take(),
        seen: m.source_seen.take(),
        seen_at: m.source_seen_at.take(),
    };
    let out = decide(&mut w);
    m.source_requested = w.requested;
    m.source_seen = w.seen;
    m.source_seen_at = w.seen_at;
    out
}

/// Requests a base-image build of `version`, then records it as requested.
/// The watcher and events both come through here, so both use the request
/// key `base:<pipeline>:<version>`: whichever is first builds, the other
/// finds the build. The record comes after the enqueue, so a crash in
/// between repeats the request, which the key deduplicates.
async fn request_base_build(
    app: &App,
    p: &Pipeline,
    version: &str,
    reason: String,
    by: &str,
) -> anyhow::Result<()> {
    let trigger = Trigger::BaseImage {
        version: version.to_string(),
    };
    enqueue(app, &request(&p.name, trigger, reason, by)).await?;
    app.store
        .update_memory(&p.name, |m| {
            with_watch(m, |w| source_watch::record_requested(w, version))
        })
        .await?;
    Ok(())
}

fn follows(p: &Pipeline, line: &str) -> bool {
    let source = &p.template.properties.source;
    source.floats()
        && p.kiln.triggers.base_image.enabled
        && match source {
            Source::PlatformImage { .. } => source.line().eq_ignore_ascii_case(line),
            Source::SharedImageVersion { .. } => source
                .line()
                .eq_ignore_ascii_case(line.trim_end_matches('/')),
            Source::ManagedImage { .. } => false,
        }
}

/// Handles a batch of inbound events. `Err` is a malformed body (HTTP 400).
pub async fn base_image_events(
    app: &App,
    body: &[u8],
    aeg_event_type: Option<&str>,
    content_type: Option<&str>,
) -> anyhow::Result<Result<EventsOutcome, String>> {
    let inbound = match events_in::parse(body, aeg_event_type, content_type) {
        Ok(i) => i,
        Err(reason) => return Ok(Err(reason)),
    };
    let events = match inbound {
        Inbound::Handshake { validation_code } => {
            tracing::info!("subscription validation handshake answered");
            return Ok(Ok(EventsOutcome::Handshake {
                response: events_in::handshake_response(&validation_code),
            }));
        }
        Inbound::Events(events) => events,
    };
    let mut steps = Vec::new();
    for ev in events {
        match ev {
            InboundEvent::BaseImageUpdated { id, line, version } => {
                // kiln's own event is the sender's word that `version` is
                // new (it holds the events key): requested as it says.
                for p in app.pipelines.iter().filter(|p| follows(p, &line)) {
                    let reason = format!("event {id}: {line} has version {version}");
                    request_base_build(app, p, &version, reason, "kiln/base_image_events").await?;
                    tracing::info!(event = %id, pipeline = %p.name, version, "base image build requested");
                    steps.push(EventStep::Requested {
                        pipeline: p.name.clone(),
                        version: version.clone(),
                    });
                }
            }
            InboundEvent::GalleryVersionWritten {
                id,
                definition_id,
                version,
            } => {
                for p in app.pipelines.iter().filter(|p| follows(p, &definition_id)) {
                    match gallery_write(app, p, &id, &definition_id, &version).await? {
                        WriteOutcome::Requested => {
                            tracing::info!(event = %id, pipeline = %p.name, version, "base image build requested");
                            steps.push(EventStep::Requested {
                                pipeline: p.name.clone(),
                                version: version.clone(),
                            });
                        }
                        WriteOutcome::Held(why) => {
                            tracing::info!(event = %id, pipeline = %p.name, version, reason = %why, "base image build not requested");
                            steps.push(EventStep::Held {
                                event: id.clone(),
                                pipeline: p.name.clone(),
                                version: version.clone(),
                                reason: why,
                            });
                        }
                    }
                }
            }
            InboundEvent::Ignored { id, event_type } => {
                tracing::info!(event = %id, event_type = %event_type, "event ignored");
                steps.push(EventStep::Ignored {
                    event: id,
                    event_type,
                });
            }
        }
    }
    let requested = steps
        .iter()
        .filter(|s| matches!(s, EventStep::Requested { .. }))
        .count();
    tracing::info!(requested, "base image events handled");
    Ok(Ok(EventsOutcome::Batch { steps }))
}

/// What a gallery write did for one pipeline.
enum WriteOutcome {
    Requested,
    /// Nothing requested, and why.
    Held(String),
}

/// A write on a parent gallery version, for one pipeline following it. The
/// event is only a hint: the version is read again through the catalog and
/// must be provisioned, not excluded from latest, the newest, and newer than
/// what the pipeline last requested; then it goes through the watcher's own
/// debounce.
async fn gallery_write(
    app: &App,
    p: &Pipeline,
    event: &str,
    definition_id: &str,
    version: &str,
) -> anyhow::Result<WriteOutcome> {
    use WriteOutcome::Held;
    let source = &p.template.properties.source;
    let versions = match app.catalog.versions(source).await {
        Ok(v) => v,
        // The watcher lists the source again on its next tick.
        Err(e) => {
            return Ok(Held(format!(
                "cannot list versions of {definition_id}: {e}"
            )))
        }
    };
    let listed: Vec<Listed<'_>> = versions.iter().map(listed).collect();
    let now = app.clock.now();
    let hint = app
        .store
        .update_memory(&p.name, |m| {
            with_watch(m, |w| {
                source_watch::hint(w, version, &listed, now, debounce(p))
            })
        })
        .await?;
    Ok(match hint {
        Hint::NotProvisioned => {
            Held("not a provisioned version `latest` can resolve to (yet)".into())
        }
        Hint::NotEligible => Held("excluded from latest or past its end of life".into()),
        Hint::Superseded { newest } => Held(format!("older than {newest}")),
        Hint::Sighted(Sighting::Baseline) => Held("recorded as the baseline".into()),
        Hint::Sighted(Sighting::UpToDate { requested }) => {
            Held(format!("not newer than {requested}, already requested"))
        }
        Hint::Sighted(Sighting::Debouncing { due, .. }) => Held(format!(
            "debouncing until {}",
            due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        Hint::Sighted(Sighting::Build) => {
            let reason = format!("event {event}: {definition_id} has version {version}");
            request_base_build(app, p, version, reason, "kiln/base_image_events").await?;
            WriteOutcome::Requested
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_batch_replies_requested_and_held_and_logs_in_event_order() {
        let outcome = EventsOutcome::Batch {
            steps: vec![
                EventStep::Ignored {
                    event: "e-1".into(),
                    event_type: "Other".into(),
                },
                EventStep::Requested {
                    pipeline: "a".into(),
                    version: "1.0.1".into(),
                },
                EventStep::Held {
                    event: "e-2".into(),
                    pipeline: "b".into(),
                    version: "1.0.1".into(),
                    reason: "older than 1.0.2".into(),
                },
            ],
        };
        assert_eq!(
            outcome.reply(),
            json!({
                "requested": [{"pipeline": "a", "version": "1.0.1"}],
                "held": [{"pipeline": "b", "version": "1.0.1", "reason": "older than 1.0.2"}],
            })
        );
        assert_eq!(
            outcome.log_lines(),
            [
                "base_image_events: event e-1 of type Other ignored",
                "base_image_events: event e-2: b not requested for 1.0.1: older than 1.0.2",
                "base_image_events: 1 build requests",
            ]
        );
    }
}
