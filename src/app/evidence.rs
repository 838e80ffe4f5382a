//! Evidence for every published version, on both faces: the SBOM the
//! provider saw, what changed since the previous version and since the
//! base, what the vulnerability gate says, and signed provenance.
//!
//! | step | module |
//! |---|---|
//! | after a run succeeds, before the build is recorded `succeeded` | [`assess`] |
//! | the timer that re-matches published versions when the feed changes | [`recheck`] |
//! | reading it back: SBOM, diff, findings, verification | [`read`] |
//!
//! Nothing here fails a build: a step that cannot be done is named in the
//! summary, and under `enforce` a version whose gate could not run stays
//! excluded from latest until a re-check passes it.

use std::sync::Arc;

use crate::domain::evidence::provenance::BuildPlatform;
use crate::ports::{EvidenceStore, Signer, VulnerabilityFeed};

pub mod assess;
pub mod read;
pub mod recheck;

/// What the evidence steps use.
#[derive(Clone)]
pub struct Evidence {
    pub store: Arc<dyn EvidenceStore>,
    /// Signs provenance: the local key file, or a Key Vault key in Azure.
    pub signer: Arc<dyn Signer>,
    pub feed: Arc<dyn VulnerabilityFeed>,
    pub platform: BuildPlatform,
}
