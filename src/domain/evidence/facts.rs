//! What a provider reports about a finished run for its evidence: the
//! image's inventory (and its base's), the disks it wrote with their
//! digests, and what went in (template, source, customizers). The app turns
//! these into the stored SBOM, the diff, the gate's findings and the signed
//! provenance; the provider only says what it saw.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sbom::Sbom;

/// A file and its sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub name: String,
    pub sha256: String,
}

/// One customizer as it ran: what it was and the digest of what it ran or placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomizerFact {
    pub name: String,
    /// `Shell`, `File`, `PowerShell`, …
    pub kind: String,
    pub sha256: Option<String>,
    /// The `scriptUri` or `sourceUri`, credentials already removed.
    pub uri: Option<String>,
    /// A File customizer's destination inside the image.
    pub destination: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunFacts {
    /// The image as captured.
    pub sbom: Sbom,
    /// The source image before any customizer ran, when the provider saw it.
    pub base_sbom: Option<Sbom>,
    /// The disks written, with their digests (none when the provider cannot
    /// read them, as with AIB's managed disks).
    pub disks: Vec<Digest>,
    pub template_sha256: String,
    /// The source as the template names it.
    pub source: String,
    /// The exact version it resolved to.
    pub source_exact: String,
    pub customizers: Vec<CustomizerFact>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}
