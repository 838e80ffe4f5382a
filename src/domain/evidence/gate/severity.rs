//! How severe a finding is, and where that came from. In order: a CVSS v4
//! or v3.x vector (the package's own `severity`, else the advisory's),
//! scored with the `cvss` crate and rated by its qualitative scale; else the
//! database's `database_specific.severity` (GitHub's `LOW` … `CRITICAL`);
//! else Ubuntu's priority; else Debian's `ecosystem_specific.urgency`; else
//! unknown, which the policy's `unknownSeverity` counts.
//!
//! CVSS v2 vectors are not scored: v2 has no qualitative rating of its own,
//! and every record that carries one also carries a newer one or a
//! distribution's rating.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::evidence::osv::{Advisory, Affected, SeverityScore};

/// A finding's severity: CVSS's qualitative scale, or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Rated, and rated harmless: CVSS 0.0, Debian `unimportant`, Ubuntu `negligible`.
    None,
    Low,
    Medium,
    High,
    Critical,
    /// Nothing in the advisory rates it.
    Unknown,
}

impl Severity {
    /// Position on the scale; `None` for unknown, which has none.
    pub(super) fn rank(self) -> Option<u8> {
        match self {
            Severity::None => Some(0),
            Severity::Low => Some(1),
            Severity::Medium => Some(2),
            Severity::High => Some(3),
            Severity::Critical => Some(4),
            Severity::Unknown => None,
        }
    }
}

/// Where a finding's severity came from, with the value read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SeverityFrom {
    /// A CVSS vector, its base score and the rating of that score.
    Cvss { vector: String, score: String },
    /// `database_specific.severity` of the package entry or the advisory.
    DatabaseSeverity { value: String },
    /// A `severity[]` entry of type `Ubuntu`.
    UbuntuPriority { value: String },
    /// Debian's `ecosystem_specific.urgency`.
    DebianUrgency { value: String },
    /// Nothing rated it.
    None,
}

pub(super) fn of(advisory: &Advisory, entry: &Affected) -> (Severity, SeverityFrom) {
    // The schema: package-level severity replaces the top-level one.
    let scores = if entry.severity.is_empty() {
        &advisory.severity
    } else {
        &entry.severity
    };
    if let Some(found) = cvss(scores) {
        return found;
    }
    let database = [
        entry.database_specific.as_ref(),
        advisory.database_specific.as_ref(),
    ]
    .into_iter()
    .flatten()
    .find_map(|d| d.get("severity").and_then(|s| s.as_str()));
    if let Some((value, rating)) = database.and_then(|v| database_rating(v).map(|r| (v, r))) {
        return (
            rating,
            SeverityFrom::DatabaseSeverity {
                value: value.to_string(),
            },
        );
    }
    let ubuntu = scores
        .iter()
        .filter(|s| s.kind == "Ubuntu")
        .find_map(|s| ubuntu_rating(&s.score).map(|r| (s.score.clone(), r)));
    if let Some((value, rating)) = ubuntu {
        return (rating, SeverityFrom::UbuntuPriority { value });
    }
    let urgency = entry
        .ecosystem_specific
        .as_ref()
        .and_then(|e| e.get("urgency"))
        .and_then(|u| u.as_str());
    if let Some((value, rating)) = urgency.and_then(|u| debian_rating(u).map(|r| (u, r))) {
        return (
            rating,
            SeverityFrom::DebianUrgency {
                value: value.to_string(),
            },
        );
    }
    (Severity::Unknown, SeverityFrom::None)
}

/// The newest CVSS version present that parses: v4, then v3.x.
fn cvss(scores: &[SeverityScore]) -> Option<(Severity, SeverityFrom)> {
    // The type names the version; a record without a type is known by its prefix.
    let of_kind = |kind: &'static str, prefix: &'static str| {
        scores
            .iter()
            .filter(move |s| s.kind == kind || (s.kind.is_empty() && s.score.starts_with(prefix)))
    };
    of_kind("CVSS_V4", "CVSS:4")
        .chain(of_kind("CVSS_V3", "CVSS:3"))
        .find_map(|s| {
            let vector = cvss::Cvss::from_str(s.score.trim()).ok()?;
            if !has_base_metrics(&vector) {
                return None;
            }
            let rating = match &vector {
                cvss::Cvss::CvssV30(_) | cvss::Cvss::CvssV31(_) | cvss::Cvss::CvssV40(_) => {
                    vector.severity()
                }
                // v2 is not enabled; the enum is non-exhaustive, and a
                // version added later is not rated here.
                _ => return None,
            };
            Some((
                from_cvss(rating),
                SeverityFrom::Cvss {
                    vector: s.score.trim().to_string(),
                    score: format!("{:.1}", vector.score()),
                },
            ))
        })
}

/// The parser accepts a vector missing base metrics and scores it 0.0
/// ("none"): such a vector must not rate a finding harmless.
fn has_base_metrics(v: &cvss::Cvss) -> bool {
    let needed: &[&str] = match v {
        cvss::Cvss::CvssV30(_) | cvss::Cvss::CvssV31(_) => {
            &["AV", "AC", "PR", "UI", "S", "C", "I", "A"]
        }
        cvss::Cvss::CvssV40(_) => &[
            "AV", "AC", "AT", "PR", "UI", "VC", "VI", "VA", "SC", "SI", "SA",
        ],
        _ => return false,
    };
    let present: Vec<&str> = v.metrics().map(|(m, _)| m.name()).collect();
    needed.iter().all(|n| present.contains(n))
}

fn from_cvss(s: cvss::Severity) -> Severity {
    match s {
        cvss::Severity::None => Severity::None,
        cvss::Severity::Low => Severity::Low,
        cvss::Severity::Medium => Severity::Medium,
        cvss::Severity::High => Severity::High,
        cvss::Severity::Critical => Severity::Critical,
    }
}

/// GitHub's scale (`MODERATE` is its medium), case-insensitive.
fn database_rating(v: &str) -> Option<Severity> {
    match v.trim().to_ascii_lowercase().as_str() {
        "low" => Some(Severity::Low),
        "moderate" | "medium" => Some(Severity::Medium),
        "high" | "important" => Some(Severity::High),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

/// Ubuntu's priorities; `untriaged` rates nothing.
fn ubuntu_rating(v: &str) -> Option<Severity> {
    match v.trim() {
        "negligible" => Some(Severity::None),
        "low" => Some(Severity::Low),
        "medium" => Some(Severity::Medium),
        "high" => Some(Severity::High),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

/// The Debian security tracker's urgencies. Its `**` suffix marks an
/// urgency it took from elsewhere; `not yet assigned`, `end-of-life` and
/// `unknown` rate nothing.
fn debian_rating(v: &str) -> Option<Severity> {
    match v.trim().trim_end_matches('*') {
        "unimportant" => Some(Severity::None),
        "low" => Some(Severity::Low),
        "medium" => Some(Severity::Medium),
        "high" => Some(Severity::High),
        _ => None,
    }
}
