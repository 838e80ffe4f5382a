//! What the app needs from the world, as traits. The `local` and `azure`
//! providers implement them; the app and the state machine see only these.
//!
//! The image-builder port speaks Azure VM Image Builder's vocabulary
//! (`runState`, `runSubState`, `message`, run outputs) so that the state
//! machine cannot tell the providers apart.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::build::FailureCategory;
pub use crate::domain::evidence::dsse::PublicKey;
use crate::domain::evidence::dsse::{pae, Envelope, IN_TOTO_PAYLOAD_TYPE};
pub use crate::domain::evidence::facts::RunFacts;
use crate::domain::evidence::provenance::Statement;
pub use crate::domain::gallery::{GalleryVersion, InUseSet, RegionReplication};
use crate::domain::pipeline::FieldError;
pub use crate::domain::run::{
    Deletion, RunOutput, RunStart, RunState, RunStatus, RunSubState, TemplateStatus,
};
use crate::domain::template::{ImageTemplate, Source};
use crate::domain::version::ImageVersion;

/// A provider call that did not work, classified so the state machine can
/// decide between retrying and failing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{category}: {message}")]
pub struct ProviderError {
    pub category: FailureCategory,
    pub message: String,
}

impl ProviderError {
    pub fn new(category: FailureCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
        }
    }
    pub fn internal(e: impl fmt::Display) -> Self {
        Self::new(FailureCategory::Internal, e.to_string())
    }
}

/// The image builder: AIB image templates, or the local provider.
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Creates template `name` from an AIB template body, or finds it already
    /// there (same name, same body): repeating the call makes no twin. It
    /// does not wait for provisioning (that can take minutes, longer than an
    /// invocation may block): the answer is the template's status now,
    /// usually `Provisioning` or `NotRun`.
    async fn put_template(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<TemplateStatus, ProviderError>;
    /// Starts the template's run; a template that already ran or is running
    /// is left as it is. Sent once: an answer that never came is
    /// `Unconfirmed`, never a failure, so no second run can follow it.
    async fn run(&self, name: &str) -> Result<RunStart, ProviderError>;
    async fn status(&self, name: &str) -> Result<TemplateStatus, ProviderError>;
    async fn run_outputs(&self, name: &str) -> Result<Vec<RunOutput>, ProviderError>;
    async fn cancel(&self, name: &str) -> Result<(), ProviderError>;
    /// Starts deleting the template (not its outputs) without waiting for
    /// it; missing templates are `Gone`. Callers make sure no run is going first.
    async fn delete_template(&self, name: &str) -> Result<Deletion, ProviderError>;
    /// Provider-specific checks, run at validation before anything starts.
    fn check(&self, template: &ImageTemplate) -> Vec<FieldError>;
    /// The customization log of a template's run, from byte `offset` on,
    /// when the provider can read it (`None`: no log here).
    async fn customization_log(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        let _ = (name, offset);
        Ok(None)
    }
    /// What the provider saw of a succeeded run's image, for its evidence
    /// (SBOM, disks, inputs); `None` when this provider cannot tell.
    async fn run_facts(&self, name: &str) -> Result<Option<RunFacts>, ProviderError> {
        let _ = name;
        Ok(None)
    }
}

/// A change to a version: its publishing profile (staged deprecation) or its
/// tags (pins). `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionUpdate {
    pub exclude_from_latest: Option<bool>,
    pub end_of_life: Option<DateTime<Utc>>,
    /// Replaces the version's tags (ARM PATCH semantics for `tags`).
    pub tags: Option<std::collections::BTreeMap<String, String>>,
}

#[async_trait]
pub trait Gallery: Send + Sync {
    async fn list_versions(&self, definition_id: &str) -> anyhow::Result<Vec<GalleryVersion>>;
    /// Sends the change; the provider applies it asynchronously.
    async fn update_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
        update: &VersionUpdate,
    ) -> anyhow::Result<()>;
    /// Starts deleting a version, without waiting for the provider to
    /// finish (a later listing shows it gone); a version already gone is
    /// not an error.
    async fn delete_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<()>;
    /// One version with its per-region replication, `None` when it does not exist.
    async fn version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<Option<GalleryVersion>> {
        Ok(self
            .list_versions(definition_id)
            .await?
            .into_iter()
            .find(|v| v.version == version))
    }
}

/// A version of a base image as its catalog reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseVersion {
    pub version: String,
    pub deprecated: bool,
}

/// Where source images come from: the marketplace, a parent gallery, the local catalog.
#[async_trait]
pub trait BaseCatalog: Send + Sync {
    /// Versions of a source's image line, in no particular order.
    async fn versions(&self, source: &Source) -> anyhow::Result<Vec<BaseVersion>>;
}

#[async_trait]
pub trait Inventory: Send + Sync {
    /// The complete in-use set. An error (including a partial answer) must
    /// abort retention, never be read as "nothing in use".
    async fn in_use(&self) -> anyhow::Result<InUseSet>;
}

/// A message to send to one of kiln's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub message_id: String,
    pub body: String,
    /// Scheduled delivery (Service Bus `ScheduledEnqueueTimeUtc`).
    pub delay: std::time::Duration,
}

/// The queues between functions: build requests and build polls.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, queue: &str, message: OutgoingMessage) -> anyhow::Result<()>;
}

/// One piece of a gallery version's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvidenceFile {
    /// The image's SBOM, SPDX 2.3 JSON.
    Sbom,
    /// The source image's SBOM before customizing, SPDX 2.3 JSON.
    BaseSbom,
    /// The signed in-toto statement, a DSSE envelope.
    Provenance,
    /// The vulnerability gate's last findings and verdict.
    Findings,
    /// What the build's completion event said: diff and gate in short.
    Summary,
}

impl EvidenceFile {
    pub const ALL: [EvidenceFile; 5] = [
        EvidenceFile::Sbom,
        EvidenceFile::BaseSbom,
        EvidenceFile::Provenance,
        EvidenceFile::Findings,
        EvidenceFile::Summary,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            EvidenceFile::Sbom => "sbom.spdx.json",
            EvidenceFile::BaseSbom => "base.spdx.json",
            EvidenceFile::Provenance => "provenance.dsse.json",
            EvidenceFile::Findings => "findings.json",
            EvidenceFile::Summary => "summary.json",
        }
    }
}

/// Where a gallery version's evidence is kept: beside the data folder
/// locally, in a blob container in Azure (a gallery version has room for
/// tags only). Writes replace whole files atomically.
#[async_trait]
pub trait EvidenceStore: Send + Sync {
    async fn put(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
        bytes: &[u8],
    ) -> anyhow::Result<()>;
    async fn get(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
    ) -> anyhow::Result<Option<Vec<u8>>>;
    /// The versions of a definition that have any evidence.
    async fn versions(&self, definition_id: &str) -> anyhow::Result<Vec<ImageVersion>>;
    /// Every definition with evidence, for the re-check after publish.
    async fn definitions(&self) -> anyhow::Result<Vec<String>>;
}

/// What a feed refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRefresh {
    /// No URL is configured: the feed is a file someone else keeps.
    NotConfigured,
    Refreshed {
        advisories: usize,
    },
    NotModified,
    /// The old feed stays; the reason says why the new one did not come.
    Failed(String),
}

/// A vulnerability feed in OSV's format.
#[async_trait]
pub trait VulnerabilityFeed: Send + Sync {
    /// The feed as it is on disk now (loaded again only when it changed);
    /// `None` when no feed is configured.
    async fn current(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::domain::evidence::osv::Feed>>>;
    /// Fetches a newer copy from its URL, when one is configured.
    async fn refresh(&self) -> FeedRefresh;
}

/// Time, as a port, so the local host's tests can drive it across a month.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(std::sync::Mutex::new(start))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock mutex") = t;
    }
    pub fn advance(&self, d: chrono::Duration) {
        let mut g = self.0.lock().expect("clock mutex");
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock mutex")
    }
}

/// A clock that runs `factor` times faster than the wall clock from
/// `anchor` (a wall instant) on, reading `start` at the anchor. The Azure
/// simulator and a `kiln serve` pointed at it share one (`KILN_CLOCK`), so a
/// 30-minute build passes in 30 s at factor 60 and both sides agree on every
/// timestamp, scheduled delivery and timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaledClock {
    pub start: DateTime<Utc>,
    pub anchor: DateTime<Utc>,
    pub factor: u32,
}

impl ScaledClock {
    /// Sim time at wall time `wall`.
    pub fn at(&self, wall: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed = (wall - self.anchor).num_microseconds().unwrap_or(i64::MAX);
        self.start + chrono::Duration::microseconds(elapsed.saturating_mul(i64::from(self.factor)))
    }

    /// How long, on the wall, `d` of sim time lasts.
    pub fn wall(&self, d: std::time::Duration) -> std::time::Duration {
        d / self.factor.max(1)
    }

    /// The `KILN_CLOCK` spelling: `scaled start=<rfc3339> anchor=<rfc3339> factor=<n>`.
    pub fn to_setting(&self) -> String {
        format!(
            "scaled start={} anchor={} factor={}",
            self.start.to_rfc3339(),
            self.anchor.to_rfc3339(),
            self.factor
        )
    }

    pub fn parse_setting(text: &str) -> Result<Self, String> {
        let expected = "expected `scaled start=<rfc3339> anchor=<rfc3339> factor=<n>`";
        let mut words = text.split_whitespace();
        if words.next() != Some("scaled") {
            return Err(format!("{expected}, got `{text}`"));
        }
        let (mut start, mut anchor, mut factor) = (None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!("{expected}; `{word}` is not key=value"));
            };
            let time = |v: &str| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("{key}: `{v}` is not an RFC 3339 time: {e}"))
            };
            match key {
                "start" => start = Some(time(value)?),
                "anchor" => anchor = Some(time(value)?),
                "factor" => {
                    factor = Some(value.parse::<u32>().ok().filter(|f| *f >= 1).ok_or_else(
                        || format!("factor: expected a whole number of at least 1, got `{value}`"),
                    )?)
                }
                other => return Err(format!("{expected}; unknown key `{other}`")),
            }
        }
        match (start, anchor, factor) {
            (Some(start), Some(anchor), Some(factor)) => Ok(Self {
                start,
                anchor,
                factor,
            }),
            _ => Err(format!("{expected}, got `{text}`")),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        self.at(Utc::now())
    }
}

/// Signs provenance: the local key file, or a Key Vault key.
#[async_trait]
pub trait Signer: Send + Sync {
    /// The public half (its [`PublicKey::key_id`] is the DSSE `keyid`). A
    /// Key Vault signer reads it on first use, so a vault that cannot be
    /// reached at start leaves builds unsigned, not the factory down.
    async fn public_key(&self) -> Result<PublicKey, ProviderError>;
    /// The signature of `message` (the DSSE PAE): 64 bytes for Ed25519,
    /// and r‖s for ECDSA P-256 over SHA-256 of `message`.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ProviderError>;
}

/// The statement in a DSSE envelope signed by `signer`. The signature is
/// checked against the signer's own public key before it is handed back,
/// so a key that signs with something other than what it claims (a Key
/// Vault key rotated under its id, a wrong algorithm) fails here and not
/// at `kiln verify`.
pub async fn sign_statement(
    signer: &dyn Signer,
    statement: &Statement,
) -> Result<Envelope, ProviderError> {
    let payload = serde_json::to_vec(statement).map_err(ProviderError::internal)?;
    let message = pae(IN_TOTO_PAYLOAD_TYPE, &payload);
    let public = signer.public_key().await?;
    let signature = signer.sign(&message).await?;
    public.verify(&message, &signature).map_err(|e| {
        ProviderError::new(
            FailureCategory::Internal,
            format!(
                "the signature from key {} does not verify with its public key: {e}",
                public.key_id()
            ),
        )
    })?;
    Ok(Envelope::new(
        IN_TOTO_PAYLOAD_TYPE,
        &payload,
        &public.key_id(),
        &signature,
    ))
}

#[cfg(test)]
mod clock_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_scaled_clock_runs_factor_times_faster_from_its_anchor() {
        let anchor = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 12, 8, 17, 0, 0).unwrap();
        let c = ScaledClock {
            start,
            anchor,
            factor: 60,
        };
        assert_eq!(c.at(anchor), start);
        assert_eq!(
            c.at(anchor + chrono::Duration::seconds(30)),
            start + chrono::Duration::minutes(30)
        );
        assert_eq!(
            c.wall(std::time::Duration::from_secs(1800)),
            std::time::Duration::from_secs(30)
        );
    }

    #[test]
    fn the_setting_round_trips_and_bad_ones_say_what_was_expected() {
        let anchor = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let c = ScaledClock {
            start: anchor,
            anchor,
            factor: 600,
        };
        assert_eq!(ScaledClock::parse_setting(&c.to_setting()).unwrap(), c);
        for bad in [
            "fast",
            "scaled start=now anchor=now factor=2",
            "scaled factor=0",
            "scaled start=2026-12-01T00:00:00Z anchor=2026-12-01T00:00:00Z",
        ] {
            let e = ScaledClock::parse_setting(bad).unwrap_err();
            assert!(
                e.contains("expected") || e.contains("RFC 3339"),
                "{bad}: {e}"
            );
        }
    }
}
