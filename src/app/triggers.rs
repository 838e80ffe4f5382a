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
use crate::domain::source_watch::{self, Hint, Listed, Sighting, WatchMemory};
use crate::domain::template::Source;
use crate::ports::BaseVersion;
use crate::store::port::PipelineMemory;

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
        app.store
            .update_memory(&p.name, |m| {
                if m.schedule_checked_until.is_none_or(|t| t < now) {
                    m.schedule_checked_until = Some(now);
                }
            })
            .await?;
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
            Sighting::Baseline => out.log(format!(
                "base_image_watch: {} baseline {} at {version}",
                p.name,
                source.line(),
            )),
            Sighting::UpToDate { .. } | Sighting::Debouncing { .. } => {}
            Sighting::Build => {
                let reason = format!("base image {} updated to {version}", source.line());
                request_base_build(app, p, &version, reason, "kiln/base_image_watch").await?;
                out.log(format!(
                    "base_image_watch: {} requested for {version}",
                    p.name
                ));
            }
        }
    }
    Ok(())
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
    let mut held = Vec::new();
    for ev in events {
        match ev {
            InboundEvent::BaseImageUpdated { id, line, version } => {
                // kiln's own event is the sender's word that `version` is
                // new (it holds the events key): requested as it says.
                for p in app.pipelines.iter().filter(|p| follows(p, &line)) {
                    let reason = format!("event {id}: {line} has version {version}");
                    request_base_build(app, p, &version, reason, "kiln/base_image_events").await?;
                    requested.push(json!({ "pipeline": p.name, "version": version }));
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
                            requested.push(json!({ "pipeline": p.name, "version": version }))
                        }
                        WriteOutcome::Held(why) => {
                            out.log(format!(
                                "base_image_events: event {id}: {} not requested for {version}: {why}",
                                p.name
                            ));
                            held.push(
                                json!({ "pipeline": p.name, "version": version, "reason": why }),
                            );
                        }
                    }
                }
            }
            InboundEvent::Ignored { id, event_type } => {
                out.log(format!(
                    "base_image_events: event {id} of type {event_type} ignored"
                ));
            }
        }
    }
    out.log(format!(
        "base_image_events: {} build requests",
        requested.len()
    ));
    Ok(Ok(json!({ "requested": requested, "held": held })))
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
