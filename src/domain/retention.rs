//! Retention policy and planner for gallery image versions.

use serde::{Deserialize, Serialize};

/// Per-pipeline retention policy (`kiln.retention`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    /// At least this many newest versions always remain.
    #[serde(default = "default_keep")]
    pub keep_latest: u32,
    /// Versions younger than this are never deprecated or deleted.
    #[serde(default = "default_min_age")]
    pub min_age_days: u32,
    /// Versions older than this are deprecated (then deleted after the grace period).
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// Versions carrying this tag (any value) are kept.
    #[serde(default = "default_pin")]
    pub pin_tag: String,
    /// Never deprecate or delete a version a VM or scale set uses.
    #[serde(default = "yes")]
    pub protect_in_use: bool,
    #[serde(default)]
    pub deprecate: Deprecate,
    #[serde(default = "default_max_deletes")]
    pub max_deletes_per_run: u32,
    /// Plan and record, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deprecate {
    /// Days between deprecation (excluded from latest, end of life set) and deletion.
    #[serde(default = "default_grace")]
    pub grace_days: u32,
}

impl Default for Deprecate {
    fn default() -> Self {
        Self {
            grace_days: default_grace(),
        }
    }
}

fn default_keep() -> u32 {
    3
}
fn default_min_age() -> u32 {
    7
}
fn default_pin() -> String {
    "kiln.pin".into()
}
fn yes() -> bool {
    true
}
fn default_max_deletes() -> u32 {
    10
}
fn default_grace() -> u32 {
    7
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_latest: default_keep(),
            min_age_days: default_min_age(),
            max_age_days: None,
            pin_tag: default_pin(),
            protect_in_use: true,
            deprecate: Deprecate::default(),
            max_deletes_per_run: default_max_deletes(),
            dry_run: false,
        }
    }
}
