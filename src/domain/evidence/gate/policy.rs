//! A pipeline's gate (`kiln.gate`) and what it decides about findings.
//!
//! ```json
//! "gate": { "mode": "enforce", "maxSeverity": "medium", "requireFix": true,
//!           "fixAgeDays": 0, "unknownSeverity": "medium", "revoke": false,
//!           "ignore": [{"id": "CVE-2024-2398", "reason": "not reachable: …", "until": "2027-01-31"}] }
//! ```
//!
//! A finding blocks when its severity (an unknown one counted as
//! `unknownSeverity`) is above `maxSeverity`, a fix exists (unless
//! `requireFix` is false), that fix is at least `fixAgeDays` old, and no
//! current `ignore` entry names it.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Finding, Severity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatePolicy {
    /// Required: whether a failing gate only reports or also holds promotion.
    pub mode: GateMode,
    /// The highest severity allowed; above it blocks.
    #[serde(default = "medium")]
    pub max_severity: Level,
    /// Only findings with a fix available block.
    #[serde(default = "yes")]
    pub require_fix: bool,
    /// A fix must have been known this many days (since the advisory's
    /// `published` time) before its finding blocks: time to ship it.
    #[serde(default)]
    pub fix_age_days: u32,
    /// How a finding no advisory field rates counts.
    #[serde(default = "medium")]
    pub unknown_severity: Level,
    /// Re-checking after publish: a version that newly fails is excluded
    /// from latest and given an end of life.
    #[serde(default)]
    pub revoke: bool,
    /// Findings accepted on purpose, each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<GateIgnore>,
}

fn medium() -> Level {
    Level::Medium
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GateMode {
    /// Findings are reported; promotion goes ahead.
    Audit,
    /// The version is published excluded from latest and promoted only when the gate passes.
    Enforce,
}

/// A policy threshold on the severity scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    fn severity(self) -> Severity {
        match self {
            Level::Low => Severity::Low,
            Level::Medium => Severity::Medium,
            Level::High => Severity::High,
            Level::Critical => Severity::Critical,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GateIgnore {
    /// The advisory's id or one of its aliases (a CVE id).
    pub id: String,
    /// Why it is accepted; required, and not blank (`pipeline/check.rs`).
    pub reason: String,
    /// The last day (UTC) it is ignored; from the next day it counts again.
    #[serde(
        default,
        deserialize_with = "date",
        serialize_with = "date_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<NaiveDate>,
}

fn date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a date as YYYY-MM-DD (the last day the finding is ignored), got `{text}`"
            ))
        })
}

fn date_out<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.format("%Y-%m-%d").to_string()),
        None => s.serialize_none(),
    }
}

impl GateIgnore {
    fn covers(&self, f: &Finding, now: DateTime<Utc>) -> bool {
        let named = f.id == self.id || f.aliases.contains(&self.id);
        let current = self.until.is_none_or(|last| now.date_naive() <= last);
        named && current
    }
}

/// What the policy says about one finding, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    Blocks,
    /// At or below `maxSeverity`.
    WithinSeverity,
    /// No fix yet, and `requireFix` is set.
    NoFix,
    /// The fix is younger than `fixAgeDays`.
    FixTooRecent {
        days: i64,
    },
    /// A current `ignore` entry names it.
    Ignored {
        reason: String,
    },
}

impl GatePolicy {
    pub fn decide(&self, f: &Finding, now: DateTime<Utc>) -> Decision {
        let counted = match f.severity {
            Severity::Unknown => self.unknown_severity.severity(),
            Severity::None
            | Severity::Low
            | Severity::Medium
            | Severity::High
            | Severity::Critical => f.severity,
        };
        if counted.rank() <= self.max_severity.severity().rank() {
            return Decision::WithinSeverity;
        }
        if self.require_fix && f.fixed_version.is_none() {
            return Decision::NoFix;
        }
        // Only a fix can be too recent: an unfixed finding that may block
        // (`requireFix: false`) blocks at once. A fix whose advisory gives no
        // publication time counts as old: not knowing is no grace period.
        if let (Some(_), Some(published)) = (&f.fixed_version, f.fix_published) {
            let days = (now - published).num_days();
            if days < i64::from(self.fix_age_days) {
                return Decision::FixTooRecent { days };
            }
        }
        if let Some(i) = self.ignore.iter().find(|i| i.covers(f, now)) {
            return Decision::Ignored {
                reason: i.reason.clone(),
            };
        }
        Decision::Blocks
    }
}

/// The gate's answer for one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "camelCase")]
pub enum GateVerdict {
    /// Nothing blocks; `findings` were matched in all.
    Pass { findings: usize },
    /// These findings block, in the order given.
    Fail { blocking: Vec<Finding> },
}

pub fn evaluate(policy: &GatePolicy, findings: &[Finding], now: DateTime<Utc>) -> GateVerdict {
    let blocking: Vec<Finding> = findings
        .iter()
        .filter(|f| policy.decide(f, now) == Decision::Blocks)
        .cloned()
        .collect();
    if blocking.is_empty() {
        GateVerdict::Pass {
            findings: findings.len(),
        }
    } else {
        GateVerdict::Fail { blocking }
    }
}
