//! Functions that start builds on their own: `patch_tuesday` (schedules),
//! `base_image_watch` (polling sources on `latest`) and `base_image_events`
//! (Event Grid / CloudEvents). Each only enqueues requests with an
//! idempotency key; admission decides.

use chrono::Duration;
use serde_json::{json, Value};

use super::admission::enqueue;
use super::wire::InvocationResult;
use super::App;
use crate::domain::build::Trigger;
use crate::domain::events_in::{self, Inbound, InboundEvent};
use crate::domain::pipeline::Pipeline;
use crate::domain::request::BuildRequest;
use crate::domain::schedule::Schedule;
use crate::domain::template::Source;
use crate::domain::version_order;

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
pub async fn patch_tuesday(app: &App, out: &mut InvocationResult) -> anyhow::Result<()> {
    let now = app.clock.now();
    for p in app.pipelines.iter() {
        let Some(spec) = &p.kiln.triggers.schedule else {
            continue;
        };
        let schedule = Schedule::from_spec(spec).map_err(anyhow::Error::msg)?;
        let checked = app.store.runtime(&p.name)?.memory.schedule_checked_until;
        let Some(since) = checked else {
            app.store
                .update_memory(&p.name, |m| m.schedule_checked_until = Some(now))?;
            out.log(format!("patch_tuesday: {} armed", p.name));
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
            out.log(format!(
                "patch_tuesday: {} cycle {} requested",
                p.name, occ.cycle
            ));
        }
        // Only after the request is durable: a crash before this line repeats
        // the request, which its key deduplicates.
        app.store.update_memory(&p.name, |m| {
            if m.schedule_checked_until.is_none_or(|t| t < now) {
                m.schedule_checked_until = Some(now);
            }
        })?;
    }
    Ok(())
}

/// Polls the sources on `latest` and requests a build when a newer version
/// has been seen for the debounce window. The first look records a baseline.
pub async fn base_image_watch(app: &App, out: &mut InvocationResult) -> anyhow::Result<()> {
    let now = app.clock.now();
    for p in app.pipelines.iter() {
        let source = &p.template.properties.source;
        if !source.floats() || !p.kiln.triggers.base_image.enabled {
            continue;
        }
        let versions = match app.catalog.versions(source).await {
            Ok(v) => v,
            Err(e) => {
                out.log(format!(
                    "base_image_watch: {}: cannot list versions of {}: {e}",
                    p.name,
                    source.line()
                ));
                continue;
            }
        };
        let Some(newest) = versions
            .iter()
            .max_by(|a, b| version_order::compare(&a.version, &b.version))
        else {
            continue;
        };
        let warning = newest.deprecated.then(|| {
            format!(
                "source {} version {} is deprecated",
                source.line(),
                newest.version
            )
        });
        let debounce = Duration::minutes(i64::from(p.kiln.triggers.base_image.debounce_minutes));
        let decision = app.store.update_memory(&p.name, |m| {
            m.warnings.retain(|w| !w.starts_with("source "));
            m.warnings.extend(warning.clone());
            match &m.source_requested {
                None => {
                    m.source_requested = Some(newest.version.clone());
                    WatchDecision::Baseline
                }
                Some(done) if version_order::compare(&newest.version, done).is_le() => {
                    WatchDecision::UpToDate
                }
                Some(_) => {
                    if m.source_seen.as_deref() != Some(newest.version.as_str()) {
                        m.source_seen = Some(newest.version.clone());
                        m.source_seen_at = Some(now);
                    }
                    let seen_at = m.source_seen_at.unwrap_or(now);
                    if now - seen_at >= debounce {
                        // Recorded only once the request is durable (below).
                        WatchDecision::Build
                    } else {
                        WatchDecision::Debouncing
                    }
                }
            }
        })?;
        match decision {
            WatchDecision::Baseline => out.log(format!(
                "base_image_watch: {} baseline {} at {}",
                p.name,
                source.line(),
                newest.version
            )),
            WatchDecision::UpToDate | WatchDecision::Debouncing => {}
            WatchDecision::Build => {
                let reason = format!("base image {} updated to {}", source.line(), newest.version);
                enqueue(
                    app,
                    &request(
                        &p.name,
                        Trigger::BaseImage {
                            version: newest.version.clone(),
                        },
                        reason,
                        "kiln/base_image_watch",
                    ),
                )
                .await?;
                // After the enqueue: a crash in between repeats the request,
                // which its key (`base:<pipeline>:<version>`) deduplicates.
                app.store.update_memory(&p.name, |m| {
                    let newer = m
                        .source_requested
                        .as_deref()
                        .is_none_or(|d| version_order::compare(&newest.version, d).is_gt());
                    if newer {
                        m.source_requested = Some(newest.version.clone());
                    }
                })?;
                out.log(format!(
                    "base_image_watch: {} requested for {}",
                    p.name, newest.version
                ));
            }
        }
    }
    Ok(())
}

enum WatchDecision {
    Baseline,
    UpToDate,
    Debouncing,
    Build,
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
    out: &mut InvocationResult,
) -> anyhow::Result<Result<Value, String>> {
    let inbound = match events_in::parse(body, aeg_event_type, content_type) {
        Ok(i) => i,
        Err(reason) => return Ok(Err(reason)),
    };
    let events = match inbound {
        Inbound::Handshake { validation_code } => {
            out.log("base_image_events: subscription validation handshake answered");
            return Ok(Ok(events_in::handshake_response(&validation_code)));
        }
        Inbound::Events(events) => events,
    };
    let mut requested = Vec::new();
    for ev in events {
        let (line, version, origin) = match ev {
            InboundEvent::BaseImageUpdated { id, line, version } => (line, version, id),
            InboundEvent::GalleryVersionWritten {
                id,
                definition_id,
                version,
            } => (definition_id, version, id),
            InboundEvent::Ignored { id, event_type } => {
                out.log(format!(
                    "base_image_events: event {id} of type {event_type} ignored"
                ));
                continue;
            }
        };
        for p in app.pipelines.iter().filter(|p| follows(p, &line)) {
            let reason = format!("event {origin}: {line} has version {version}");
            enqueue(
                app,
                &request(
                    &p.name,
                    Trigger::BaseImage {
                        version: version.clone(),
                    },
                    reason,
                    "kiln/base_image_events",
                ),
            )
            .await?;
            app.store.update_memory(&p.name, |m| {
                let newer = m
                    .source_requested
                    .as_deref()
                    .is_none_or(|d| version_order::compare(&version, d).is_gt());
                if newer {
                    m.source_requested = Some(version.clone());
                }
            })?;
            requested.push(json!({ "pipeline": p.name, "version": version }));
        }
    }
    out.log(format!(
        "base_image_events: {} build requests",
        requested.len()
    ));
    Ok(Ok(json!({ "requested": requested })))
}
