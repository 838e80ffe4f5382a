//! The functions of the factory and what they share.
//!
//! Each function decodes its trigger, calls the domain and the ports, and
//! encodes its outputs. Both hosts (the Functions custom handler and
//! `kiln local`) invoke them through [`invoke`].
//!
//! | role | modules |
//! |---|---|
//! | functions (one per `handlers/<function>`) | [`builds`] (`build_requests`, `build_polls`, `build_sweeper`), [`triggers`] (`patch_tuesday`, `base_image_watch`, `base_image_events`), [`retention_function`] (`retention`), [`evidence`] (`evidence_recheck`) |
//! | dispatch and wire | [`functions`] (name → function, the invocation budget, outcomes into the reply and its logs), [`wire`] (the custom-handler payloads) |
//! | HTTP | [`api`] (the `/api` routes), [`dashboard`], [`metrics`] (`/api/metrics`, and what a build's end records) |
//! | shared services | [`driver`] (one step of a build), [`admission`], [`cleanup`] (retiring templates), [`retention_executor`] (plans and applies retention), [`events`] (CloudEvents out), [`evidence`] (SBOM, diff, gate and provenance of a published version), [`render`] (the template AIB gets), [`pipelines`], [`lint`], [`gallery_ops`] |

pub mod admission;
pub mod api;
pub mod builds;
pub mod cleanup;
pub mod dashboard;
pub mod driver;
pub mod events;
pub mod evidence;
pub mod functions;
pub mod gallery_ops;
pub mod lint;
pub mod metrics;
pub mod pipelines;
pub mod render;
pub mod retention_executor;
pub mod retention_function;
pub mod triggers;
pub mod wire;

use std::sync::Arc;

use crate::config::Settings;
use crate::domain::build::Tuning;
use crate::ports::{BaseCatalog, Clock, Gallery, ImageBuilder, Inventory, Queue};
use crate::store::Store;

pub use functions::invoke;
pub use pipelines::PipelineSet;
pub use wire::{FunctionName, Invocation, InvocationResult, InvokeError};

/// Queue names, as the function.json bindings name them.
pub const REQUESTS_QUEUE: &str = "build-requests";
pub const POLLS_QUEUE: &str = "build-polls";

/// Everything a function may use. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    pub pipelines: Arc<PipelineSet>,
    pub store: Arc<dyn Store>,
    pub builder: Arc<dyn ImageBuilder>,
    pub gallery: Arc<dyn Gallery>,
    pub catalog: Arc<dyn BaseCatalog>,
    pub inventory: Arc<dyn Inventory>,
    pub queue: Arc<dyn Queue>,
    pub clock: Arc<dyn Clock>,
    pub events: events::EventSink,
    /// This instance's counters and histograms (`GET /api/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// SBOMs, the vulnerability gate and signed provenance of published versions.
    pub evidence: evidence::Evidence,
    pub tuning: Tuning,
}
