//! Functions that start builds on their own: `patch_tuesday` (schedules),
//! `base_image_watch` (polling sources on `latest`) and `base_image_events`
//! (Event Grid / CloudEvents). Each only enqueues requests with an
//! idempotency key; admission decides.
//!
//! Each returns what it did as a typed outcome and logs it through
//! `tracing`; the custom-handler adapter (`functions`) turns the
//! outcome into the invocation's log lines.
//!
//! ```text
//! schedule.rs   patch_tuesday and its outcome
//! watch.rs      base_image_watch and its outcome
//! inbound.rs    base_image_events and its outcome
//! mod.rs        what the base-image triggers share: the watcher memory,
//!               the debounce, one request per new version
//! ```

mod inbound;
mod schedule;
mod watch;

pub use inbound::{base_image_events, EventStep, EventsOutcome};
pub use schedule::{patch_tuesday, ScheduleOutcome, ScheduleStep};
pub use watch::{base_image_watch, WatchOutcome, WatchStep};

use chrono::Duration;

use super::admission::enqueue;
use super::App;
use crate::domain::build::Trigger;
use crate::domain::pipeline::Pipeline;
use crate::domain::request::BuildRequest;
use crate::domain::source_watch::{self, Listed, WatchMemory};
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
