//! `base_image_watch`: polls the sources of pipelines that follow
//! `latest` and requests a build once a new version has settled.

use super::{debounce, listed, request_base_build, with_watch};
use crate::app::App;
use crate::domain::source_watch::{self, Listed, Sighting};
use crate::domain::template::Source;

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
