//! Admission: a build request becomes a build, or finds the one it belongs to.

use serde::Serialize;

use super::{driver, App, REQUESTS_QUEUE};
use crate::domain::build::{Build, BuildState, Trigger};
use crate::domain::request::{next_version, BuildRequest};
use crate::domain::template::Source;
use crate::domain::version::ImageVersion;
use crate::ports::OutgoingMessage;
use crate::store::port::{Admission, Admitted};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum AdmitOutcome {
    Created { build: String },
    Existing { build: String },
    Coalesced { build: String },
    Paused { reason: String },
}

impl AdmitOutcome {
    pub fn build_id(&self) -> Option<&str> {
        match self {
            AdmitOutcome::Created { build }
            | AdmitOutcome::Existing { build }
            | AdmitOutcome::Coalesced { build } => Some(build),
            AdmitOutcome::Paused { .. } => None,
        }
    }
}

/// A request that can never succeed: it is dead-lettered, not retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Admits a request; permanent problems are `Refused`, anything else is an
/// I/O error worth retrying.
pub async fn admit(
    app: &App,
    req: &BuildRequest,
    message_id: &str,
) -> anyhow::Result<Result<AdmitOutcome, Refused>> {
    let Some(pipeline) = app.pipelines.get(&req.pipeline) else {
        return Ok(Err(Refused(format!(
            "pipeline: `{}` is not a deployed pipeline (known: {})",
            req.pipeline,
            app.pipelines.names().join(", ")
        ))));
    };
    let key = req.key(message_id);
    if let Some(existing) = app.store.build_for_key(&pipeline.name, &key).await? {
        return Ok(Ok(AdmitOutcome::Existing { build: existing }));
    }
    let now = app.clock.now();
    let trigger = req.trigger();

    // What the gallery already holds, read before the admission transaction.
    let mut published: Vec<ImageVersion> = Vec::new();
    for target in pipeline.gallery_targets() {
        for v in app.gallery.list_versions(&target.definition_id()).await? {
            published.push(v.version);
        }
    }
    let source_version =
        resolve_source_version(app, &pipeline.template.properties.source, &trigger).await?;
    let template_hash = super::render::template_hash(&pipeline.template_json);
    let id = new_build_id(now);
    let p = pipeline.clone();
    let r = req.clone();
    let sv = source_version.clone();
    let build_key = key.clone();
    let make = move |taken: &[ImageVersion]| {
        let version = next_version(&p.kiln.versioning, taken, sv.as_deref(), now)?;
        Ok(Build {
            id: id.clone(),
            pipeline: p.name.clone(),
            trigger: r.trigger(),
            reason: r.reason.clone().unwrap_or_else(|| "requested".into()),
            requested_by: r.requested_by.clone().unwrap_or_else(|| "unknown".into()),
            idempotency_key: build_key.clone(),
            version,
            source_version: sv.clone(),
            template_hash: template_hash.clone(),
            attempt: 1,
            max_attempts: p.kiln.build.max_attempts,
            timeout_minutes: p.build_timeout_minutes(),
            state: BuildState::Queued,
            created_at: now,
            attempt_started_at: None,
            quiet_polls: 0,
            last_seen: None,
        })
    };
    let admitted = app
        .store
        .admit(&Admission {
            pipeline: &pipeline.name,
            key: &key,
            trigger: &trigger,
            now,
            gallery_versions: &published,
            make: &make,
        })
        .await?;
    Ok(Ok(match admitted {
        Admitted::Created(b) => {
            let ev = super::events::CloudEvent::build_changed(&b, "admitted", now);
            if let Err(e) = app.events.publish(&ev).await {
                tracing::warn!(error = %e, "event not recorded");
            }
            tracing::info!(build = %b.id, pipeline = %b.pipeline, version = %b.version, "build admitted");
            driver::advance(app, &b.id, None).await?;
            AdmitOutcome::Created { build: b.id }
        }
        Admitted::Existing(id) => AdmitOutcome::Existing { build: id },
        Admitted::Coalesced(id) => AdmitOutcome::Coalesced { build: id },
        Admitted::Paused(reason) => AdmitOutcome::Paused { reason },
        Admitted::Refused(reason) => return Ok(Err(Refused(format!("versioning: {reason}")))),
    }))
}

/// The source's exact version, when a base-image trigger names it or the
/// source is pinned; a floating source is asked for its newest version.
async fn resolve_source_version(
    app: &App,
    source: &Source,
    trigger: &Trigger,
) -> anyhow::Result<Option<String>> {
    if let Trigger::BaseImage { version } = trigger {
        return Ok(Some(version.clone()));
    }
    match source {
        Source::PlatformImage { version, .. } if !source.floats() => Ok(Some(version.clone())),
        Source::SharedImageVersion {
            image_version_id, ..
        } if !source.floats() => Ok(image_version_id.rsplit('/').next().map(str::to_string)),
        Source::PlatformImage { .. } | Source::SharedImageVersion { .. } => {
            // A catalog outage is retried (an error), never read as "no versions".
            let versions = app.catalog.versions(source).await?;
            Ok(versions
                .iter()
                .map(|v| v.version.clone())
                .max_by(|a, b| crate::domain::version_order::compare(a, b)))
        }
        Source::ManagedImage { .. } => Ok(None),
    }
}

/// Sortable, unique, short: `YYYYMMDD-HHMMSS-xxxxxx`.
pub fn new_build_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%d-%H%M%S"), &rand[..6])
}

/// Puts a request on the requests queue (what timers, events and the API do).
pub async fn enqueue(app: &App, req: &BuildRequest) -> anyhow::Result<String> {
    let message_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_string(req)?;
    app.queue
        .send(
            REQUESTS_QUEUE,
            OutgoingMessage {
                message_id: message_id.clone(),
                body,
                delay: std::time::Duration::ZERO,
            },
        )
        .await?;
    Ok(message_id)
}
