//! Pipeline files: an AIB image template body, verbatim, plus a `kiln` section.
//!
//! ```json
//! { "location": "…", "identity": {…}, "tags": {…}, "properties": {…},
//!   "kiln": { "triggers": {…}, "versioning": {…}, "retention": {…},
//!             "promotion": {…}, "build": {…}, "gate": {…} } }
//! ```
//!
//! A user pastes the template they already deploy and adds `kiln`. Unknown
//! fields inside `kiln` are errors (a typo must not silently disable a
//! safety setting); template fields kiln does not model are kept as they are.
//!
//! This file holds the spec types and the error they report in. Beside it:
//!
//! ```text
//! pipeline/parse.rs   a file's text to a checked `Pipeline` (or every problem)
//! pipeline/read.rs    reading each section and list element on its own
//! pipeline/check.rs   the checks serde cannot express
//! pipeline/secrets.rs credentials in the file, refused by path and kind
//! pipeline/tests.rs   the tests, through `Pipeline::parse` and `Pipeline::read`
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::evidence::gate::GatePolicy;
use super::retention::RetentionPolicy;
// The schedule types live with the schedule; pipeline files name them here too.
pub use super::schedule::{Blackout, PatchTuesdaySpec, ScheduleSpec};
use super::template::{Distributor, GalleryImageRef, ImageTemplate};

mod check;
mod parse;
mod read;
pub mod secrets;

pub use parse::{valid_pipeline_name, Parsed};
pub use secrets::{AllowSecret, SecretKind};

/// The key under which kiln's own settings live in a pipeline file.
pub const KILN_KEY: &str = "kiln";

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The template exactly as the user wrote it, without the `kiln` key.
    pub template_json: serde_json::Value,
    pub template: ImageTemplate,
    pub kiln: KilnSection,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KilnSection {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub triggers: Triggers,
    #[serde(default)]
    pub versioning: Versioning,
    #[serde(default)]
    pub retention: RetentionPolicy,
    #[serde(default)]
    pub promotion: Promotion,
    #[serde(default)]
    pub build: BuildPolicy,
    /// Deliberate exceptions to the secret scan (`secrets.rs`), each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_secrets: Vec<AllowSecret>,
    /// The vulnerability gate on each new version; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GatePolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default)]
    pub base_image: BaseImageTrigger,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseImageTrigger {
    /// Build when a floating (`latest`) source gets a new version.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Updates seen within this many minutes of the first one make one build.
    #[serde(default = "default_debounce")]
    pub debounce_minutes: u32,
}

impl Default for BaseImageTrigger {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_minutes: default_debounce(),
        }
    }
}

fn default_debounce() -> u32 {
    30
}
fn yes() -> bool {
    true
}

/// How the next gallery version is chosen, once, at admission.
///
/// A flat struct rather than a tagged enum: serde buffers tagged enums, which
/// would lose the path of a wrong field in error messages.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Versioning {
    pub scheme: VersionScheme,
    /// Major version for the `latest` scheme.
    #[serde(default = "default_major")]
    pub major: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionScheme {
    /// Next patch under `major` (AIB's `Latest` scheme), starting at `major.0.0`.
    Latest,
    /// The source image's exact version (`Major.Minor.Patch`), as AIB's `Source` scheme.
    Source,
    /// `YYYY.MMDD.N`: the admission date, N counting builds of that day.
    Date,
}

fn default_major() -> u32 {
    1
}

impl Default for Versioning {
    fn default() -> Self {
        Versioning {
            scheme: VersionScheme::Latest,
            major: 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    /// Publish new versions excluded from `latest`, for a staged rollout.
    #[serde(default)]
    pub exclude_from_latest: bool,
    /// Extra tags put on every published version.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildPolicy {
    /// Attempts for transient failures, first one included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Builds of this pipeline that may be active at once.
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// Consecutive failed automatic builds that pause automatic triggers.
    #[serde(default = "default_breaker")]
    pub circuit_breaker_failures: u32,
    /// Local provider: network inside the customizer sandbox.
    #[serde(default = "yes")]
    pub network: bool,
    /// Local provider: limit for one customizer or validator step.
    #[serde(default = "default_step_timeout")]
    pub step_timeout_minutes: u32,
    /// Local provider: boot the captured image under QEMU and run this check as validation.
    #[serde(default)]
    pub boot_test: Option<BootTest>,
}

fn default_attempts() -> u32 {
    3
}
fn one() -> u32 {
    1
}
fn default_breaker() -> u32 {
    3
}
fn default_step_timeout() -> u32 {
    30
}

impl Default for BuildPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            max_concurrent: 1,
            circuit_breaker_failures: default_breaker(),
            network: true,
            step_timeout_minutes: default_step_timeout(),
            boot_test: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootTest {
    /// Shell run inside the booted guest; its output is reported.
    pub check: String,
    /// Text that must appear in the guest's output for the test to pass.
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default = "default_boot_timeout")]
    pub timeout_seconds: u32,
}

fn default_boot_timeout() -> u32 {
    180
}

/// One problem in a pipeline file, located by a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn field(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// Reads a serde value into `T`, reporting the failing field's full path.
///
/// serde stops at the first error, so callers read one section at a time (see `read`).
fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    prefix: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_string(),
            ("", i) => i.to_string(),
            (p, i) if i.starts_with('[') => format!("{p}{i}"),
            (p, i) => format!("{p}.{i}"),
        };
        // serde quotes the value it refused; a secret in the wrong place
        // must not reach the message.
        let message = e.into_inner().to_string();
        field(path, secrets::scrub(&message).into_owned())
    })
}

impl Pipeline {
    /// The image definitions this pipeline publishes to (SharedImage distributors).
    pub fn gallery_targets(&self) -> Vec<GalleryImageRef> {
        self.template
            .properties
            .distribute
            .iter()
            .filter_map(|d| match d {
                Distributor::SharedImage {
                    gallery_image_id, ..
                } => GalleryImageRef::parse(gallery_image_id),
                Distributor::ManagedImage { .. } | Distributor::Vhd { .. } => None,
            })
            .collect()
    }

    /// Timeout of one build attempt, as AIB applies it (0 or absent means 240 minutes).
    pub fn build_timeout_minutes(&self) -> u32 {
        match self.template.properties.build_timeout_in_minutes {
            None | Some(0) => 240,
            Some(m) => m,
        }
    }
}

#[cfg(test)]
mod tests;
