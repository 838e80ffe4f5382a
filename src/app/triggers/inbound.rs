//! `base_image_events`: Event Grid and CloudEvents deliveries of new
//! marketplace or parent-gallery versions, each held or requested.

use serde_json::{json, Value};

use super::{debounce, follows, listed, request_base_build, with_watch};
use crate::app::App;
use crate::domain::events_in::{self, Inbound, InboundEvent};
use crate::domain::pipeline::Pipeline;
use crate::domain::source_watch::{self, Hint, Listed, Sighting};

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
