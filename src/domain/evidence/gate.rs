//! The vulnerability gate: an image's packages matched against an OSV
//! [`Feed`] ([`match_sbom`]), and a pipeline's [`GatePolicy`] deciding which
//! findings block promotion ([`evaluate`]).
//!
//! Debian and Ubuntu advisories name *source* packages (`curl`, not
//! `libcurl4`), so a package matches on [`Package::source`] and its
//! `source_version`, compared by dpkg's rules (`debversion`). Ranges follow
//! the schema's evaluation algorithm: `ECOSYSTEM` ranges with `introduced`,
//! `fixed`, `last_affected` and `limit` events, and explicit `versions`.
//!
//! Beside it: `gate/severity.rs` (how a finding's severity is chosen) and
//! `gate/policy.rs` (the pipeline's `kiln.gate` and the verdict).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use debversion::Version;
use serde::{Deserialize, Serialize};

use super::osv::{Advisory, Affected, Event, Feed, RangeType};
use super::sbom::{OsRelease, Package, Sbom};

mod policy;
mod severity;

pub use policy::{evaluate, Decision, GateIgnore, GateMode, GatePolicy, GateVerdict, Level};
pub use severity::{Severity, SeverityFrom};

/// One advisory that applies to one installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The advisory's id: `DSA-5587-1`, `DEBIAN-CVE-2024-2398`, `UBUNTU-CVE-…`.
    pub id: String,
    /// Its aliases and upstream ids (the CVEs), sorted; an ignore entry may name any of them.
    pub aliases: Vec<String>,
    /// The installed (binary) package: `libcurl4`.
    pub package: String,
    pub installed_version: String,
    /// The source package the advisory names: `curl`.
    pub source: String,
    /// The version compared: the source package's.
    pub source_version: String,
    /// The lowest version above the installed one that fixes it, when the
    /// advisory names one.
    pub fixed_version: Option<String>,
    pub severity: Severity,
    pub severity_from: SeverityFrom,
    /// When the fix became known: the advisory's `published` time (OSV has
    /// no time per fixed version). `None` without a fix, or when the
    /// advisory gives no publication time.
    pub fix_published: Option<DateTime<Utc>>,
    pub summary: Option<String>,
}

/// The OSV ecosystem an image's packages belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// `Debian:<VERSION_ID>`: `Debian:12`.
    Debian(String),
    /// `Ubuntu:<VERSION_ID>`, with `:LTS` on LTS releases, and the Ubuntu Pro
    /// pocket `Ubuntu:Pro:<VERSION_ID>[:LTS]`.
    Ubuntu(String),
}

/// Why an image's packages cannot be matched against OSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatchable {
    /// The image has no `/etc/os-release`.
    NoOsRelease,
    /// `ID` names a distribution kiln does not match (`alpine`, `rhel`, …).
    Distribution(String),
    /// `VERSION_ID` is absent (Debian testing/unstable): no release to scope advisories to.
    NoVersionId(String),
}

impl std::fmt::Display for Unmatchable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmatchable::NoOsRelease => write!(
                f,
                "the image has no /etc/os-release, so no OSV ecosystem to match its packages in"
            ),
            Unmatchable::Distribution(id) => write!(
                f,
                "os-release ID `{id}`: kiln matches Debian and Ubuntu packages only"
            ),
            Unmatchable::NoVersionId(id) => write!(
                f,
                "os-release of `{id}` has no VERSION_ID, so no release to scope advisories to"
            ),
        }
    }
}

/// Which pocket of a release an advisory's entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pocket {
    Standard,
    /// Ubuntu Pro (ESM): fixes only a Pro-attached machine receives.
    Pro,
}

impl Release {
    pub fn of(os: Option<&OsRelease>) -> Result<Release, Unmatchable> {
        let os = os.ok_or(Unmatchable::NoOsRelease)?;
        let version = || {
            os.version_id
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Unmatchable::NoVersionId(os.id.clone()))
        };
        match os.id.as_str() {
            "debian" => Ok(Release::Debian(version()?)),
            "ubuntu" => Ok(Release::Ubuntu(version()?)),
            other => Err(Unmatchable::Distribution(other.to_string())),
        }
    }

    /// Whether an advisory's `ecosystem` string is this release, and in which pocket.
    fn pocket(&self, ecosystem: &str) -> Option<Pocket> {
        match self {
            Release::Debian(v) => {
                (ecosystem.strip_prefix("Debian:")? == v).then_some(Pocket::Standard)
            }
            Release::Ubuntu(v) => {
                let rest = ecosystem.strip_prefix("Ubuntu:")?;
                let (pocket, rest) = match rest.strip_prefix("Pro:") {
                    Some(r) => (Pocket::Pro, r),
                    None => (Pocket::Standard, rest),
                };
                // `Ubuntu:22.04:LTS` or `Ubuntu:22.10`; FIPS and `:for:`
                // variants are other package sets and do not match.
                let release = rest.strip_suffix(":LTS").unwrap_or(rest);
                (release == v).then_some(pocket)
            }
        }
    }
}

/// The findings for an image: [`try_match`], with an image that cannot be
/// matched giving none (ask [`Release::of`] to tell that apart from a clean image).
pub fn match_sbom(sbom: &Sbom, feed: &Feed) -> Vec<Finding> {
    try_match(sbom, feed).unwrap_or_default()
}

/// Every (advisory, installed package) pair where the package's source
/// version is affected, sorted by advisory id and package.
pub fn try_match(sbom: &Sbom, feed: &Feed) -> Result<Vec<Finding>, Unmatchable> {
    let release = Release::of(sbom.os.as_ref())?;
    let mut by_source: HashMap<&str, Vec<&Package>> = HashMap::new();
    for p in &sbom.packages {
        by_source.entry(p.source.as_str()).or_default().push(p);
    }
    let mut found: BTreeMap<(String, String), Finding> = BTreeMap::new();
    for advisory in feed.advisories() {
        for (source, entries) in entries_for(advisory, &release) {
            let Some(installed) = by_source.get(source) else {
                continue;
            };
            for p in installed {
                let Ok(v) = Version::from_str(&p.source_version) else {
                    continue;
                };
                let Some((entry, fixed)) = entries
                    .iter()
                    .find_map(|e| affects(e, &v).map(|fixed| (*e, fixed)))
                else {
                    continue;
                };
                let (severity, severity_from) = severity::of(advisory, entry);
                let finding = Finding {
                    id: advisory.id.clone(),
                    aliases: aliases(advisory),
                    package: p.name.clone(),
                    installed_version: p.version.clone(),
                    source: p.source.clone(),
                    source_version: p.source_version.clone(),
                    fix_published: fixed.as_ref().and(advisory.published),
                    fixed_version: fixed,
                    severity,
                    severity_from,
                    summary: advisory.summary.clone(),
                };
                // One per binary package, whatever its architectures.
                found
                    .entry((finding.id.clone(), finding.package.clone()))
                    .or_insert(finding);
            }
        }
    }
    Ok(found.into_values().collect())
}

/// The advisory's entries for this release, per source package. The Ubuntu
/// Pro pocket's entries are used only where the advisory has no standard
/// entry for the package: a standard image does not get Pro's fixes, but on
/// a release where only Pro still publishes, those entries are all there is.
fn entries_for<'a>(
    advisory: &'a Advisory,
    release: &Release,
) -> BTreeMap<&'a str, Vec<&'a Affected>> {
    let mut standard: BTreeMap<&str, Vec<&Affected>> = BTreeMap::new();
    let mut pro: BTreeMap<&str, Vec<&Affected>> = BTreeMap::new();
    for a in &advisory.affected {
        let Some(pkg) = &a.package else { continue };
        match release.pocket(&pkg.ecosystem) {
            Some(Pocket::Standard) => standard.entry(pkg.name.as_str()).or_default().push(a),
            Some(Pocket::Pro) => pro.entry(pkg.name.as_str()).or_default().push(a),
            None => {}
        }
    }
    for (name, entries) in pro {
        standard.entry(name).or_insert(entries);
    }
    standard
}

fn aliases(a: &Advisory) -> Vec<String> {
    let mut all: Vec<String> = a
        .aliases
        .iter()
        .chain(&a.upstream)
        .filter(|x| **x != a.id)
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Whether version `v` is affected by the entry (listed in `versions` or
/// inside an `ECOSYSTEM` range), and if so the lowest fix above it.
fn affects(entry: &Affected, v: &Version) -> Option<Option<String>> {
    let listed = entry.versions.iter().any(|x| same_version(x, v));
    let in_range = entry
        .ranges
        .iter()
        .filter(|r| r.kind == RangeType::Ecosystem)
        .any(|r| in_range(&r.events, v));
    (listed || in_range).then(|| lowest_fix_above(entry, v))
}

fn same_version(listed: &str, v: &Version) -> bool {
    Version::from_str(listed).is_ok_and(|x| x == *v)
}

/// A bound as a version; `introduced: "0"` sorts before every version.
/// An unparsable bound is `None`, and its event is skipped (an exporter's
/// mistake must not turn a range into "everything").
fn bound(s: &str) -> Option<Version> {
    Version::from_str(s).ok()
}

/// The schema's `IncludedInRanges` for one range: outside every `limit`
/// (when any) is unaffected; else the events, in version order, switch the
/// state on (`introduced` ≤ v) and off (`fixed` ≤ v, `last_affected` < v).
fn in_range(events: &[Event], v: &Version) -> bool {
    let limits: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Limit(l) => Some(l),
            Event::Introduced(_) | Event::Fixed(_) | Event::LastAffected(_) => None,
        })
        .collect();
    let before_limits = limits.is_empty()
        || limits
            .iter()
            .any(|l| l.contains('*') || bound(l).is_some_and(|b| *v < b));
    if !before_limits {
        return false;
    }
    // (None = version zero, event): sorted, zero first.
    let mut timeline: Vec<(Option<Version>, &Event)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Introduced(x) if x == "0" => Some((None, e)),
            Event::Introduced(x) | Event::Fixed(x) | Event::LastAffected(x) => {
                bound(x).map(|b| (Some(b), e))
            }
            Event::Limit(_) => None,
        })
        .collect();
    timeline.sort_by(|a, b| a.0.cmp(&b.0));
    let mut vulnerable = false;
    for (at, e) in &timeline {
        match (e, at) {
            (Event::Introduced(_), None) => vulnerable = true,
            (Event::Introduced(_), Some(b)) if v >= b => vulnerable = true,
            (Event::Fixed(_), Some(b)) if v >= b => vulnerable = false,
            (Event::LastAffected(_), Some(b)) if v > b => vulnerable = false,
            (
                Event::Introduced(_) | Event::Fixed(_) | Event::LastAffected(_) | Event::Limit(_),
                _,
            ) => {}
        }
    }
    vulnerable
}

/// The lowest `fixed` version above `v` in the entry's `ECOSYSTEM` ranges.
fn lowest_fix_above(entry: &Affected, v: &Version) -> Option<String> {
    entry
        .ranges
        .iter()
        .filter(|r| r.kind == RangeType::Ecosystem)
        .flat_map(|r| &r.events)
        .filter_map(|e| match e {
            Event::Fixed(f) => bound(f).filter(|b| b > v).map(|b| (b, f.clone())),
            Event::Introduced(_) | Event::LastAffected(_) | Event::Limit(_) => None,
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, f)| f)
}

#[cfg(test)]
mod tests;
