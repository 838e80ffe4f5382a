//! Retention policy and planner for gallery image versions.
//!
//! The planner is a pure function: given the versions of one image
//! definition, the policy, the set of images consumers use, the definition's
//! build status and `now`, it says for every version `Keep`, `Deprecate` or
//! `Delete`, with a reason a human can act on.
//!
//! # Staged deletion
//!
//! Nothing is deleted on sight. A version that should go is first
//! *deprecated*: excluded from latest (new VMs that ask for "latest" stop
//! getting it) and given an end of life `now + deprecate.graceDays`. A later
//! run deletes it once that end of life has passed. The gallery itself holds
//! the stage, so no local state has to survive between runs:
//!
//! > a version is **deprecated** when it is excluded from latest *and* has an
//! > end of life; its grace period ends at that end of life.
//!
//! A tag would have been more explicit, but the gallery port updates only the
//! publishing profile, and the two fields above are what consumers actually
//! see. The consequence, deliberately accepted: a version an owner excluded
//! from latest and gave an end of life counts as deprecated too, and is only
//! deleted after that end of life, which is the owner's own statement.
//!
//! Deprecating never brings an existing end of life forward: the new end of
//! life is the later of `now + graceDays` and the current one. This is what
//! keeps `blockDeletionBeforeEndOfLife` honest (kiln cannot shorten the
//! protected period by rewriting the date), and since deletion only happens
//! once the end of life has passed, a blocked version is never deleted early.
//!
//! # Which versions are candidates
//!
//! Only the planned pipelines' own versions (lineage tag `kiln.pipeline`)
//! are planned by default; the executor keeps every other version before
//! the rules run ([`ownership`]). Among those,
//! Versions are ordered numerically (`1.0.10 > 1.0.9`), newest first. The
//! first rule that applies decides:
//!
//! 1. definition skipped (latest build publishing or failed while publishing): keep;
//! 2. the current latest (newest version not excluded from latest): keep;
//! 3. in use by a VM or scale set (when `protectInUse`): keep;
//! 4. pinned (tag `pinTag`, any value): keep;
//! 5. no published date: keep, its age is unknown so it is never "old";
//! 6. younger than `minAgeDays`: keep;
//! 7. among the newest `keepLatest`: keep, except that one older than
//!    `maxAgeDays` is deprecated. It is never deleted while it stays among
//!    the newest `keepLatest`, so at least that many versions remain;
//! 8. otherwise the version is surplus: deprecate it, or keep it while its
//!    grace period runs, or delete it once the grace period is over, at most
//!    `maxDeletesPerRun` deletions per run, oldest (lowest version) first.
//!
//! `dryRun` is not read here: it changes what the executor does with the plan,
//! never the plan.
//!
//! # Awkward input
//!
//! The same version listed twice (a paging glitch) is planned once, merging
//! the copies on the protective side: it is pinned, blocked or in use if any
//! copy says so, excluded from latest or dated only if every copy is, and its
//! end of life and published date are the latest any copy gives.
//!
//! The planner takes every version it is given as one of the planned
//! definition's: comparing a long resource id per version would cost more
//! than all the rules together. Whoever reads versions from a gallery
//! filters them with [`belongs_to`] first (the executor does).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::gallery::{GalleryVersion, InUseSet};
use super::version::ImageVersion;

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
    /// Versions this pipeline did not publish are kept unless this says
    /// `manage` (see [`ownership`]).
    #[serde(default)]
    pub foreign_versions: ForeignVersions,
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
            foreign_versions: ForeignVersions::Keep,
        }
    }
}

/// What retention may know about the definition's latest build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DefinitionStatus {
    /// No build is publishing; the last one (if any) did not fail while publishing.
    Idle,
    /// A build is distributing to this definition right now.
    Publishing,
    /// The latest build failed while publishing; its version may be half there.
    FailedWhilePublishing,
}

/// Why a whole definition is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Publishing,
    FailedWhilePublishing,
    /// The gallery could not list the versions (set by the executor): never
    /// plan on partial knowledge.
    VersionsUnavailable {
        error: String,
    },
    /// Several pipelines publish to the definition with different retention
    /// policies (set by the executor): no policy is allowed to win silently.
    PoliciesDiffer {
        pipelines: Vec<String>,
    },
    /// Another target for the same definition, with the same policy, already
    /// covers it (set by the executor): it is planned once.
    PlannedWith {
        pipeline: String,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Publishing => f.write_str("the latest build is still publishing"),
            Skip::FailedWhilePublishing => f.write_str(
                "the latest build failed while publishing; retention waits for a successful build",
            ),
            Skip::VersionsUnavailable { error } => {
                write!(f, "the versions could not be listed: {error}")
            }
            Skip::PoliciesDiffer { pipelines } => write!(
                f,
                "pipelines {} publish here with different retention policies; nothing is cleaned until they agree",
                pipelines.join(", ")
            ),
            Skip::PlannedWith { pipeline } => {
                write!(f, "planned with pipeline {pipeline}, which targets the same definition")
            }
        }
    }
}

/// What to do with one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    Keep,
    /// Exclude from latest and set this end of life.
    Deprecate {
        end_of_life: DateTime<Utc>,
    },
    Delete,
}

impl Action {
    /// The spelling of the `retention_audit.action` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Deprecate { .. } => "deprecate",
            Action::Delete => "delete",
        }
    }
}

/// What made a version a candidate for deprecation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeprecationCause {
    /// Beyond the newest `keepLatest` and older than `minAgeDays`.
    Surplus { keep_latest: u32, min_age_days: u32 },
    /// Older than `maxAgeDays`.
    Expired { max_age_days: u32 },
}

/// Why a version gets its action. Data rather than text so that planning
/// allocates nothing per version and tests can match on it; `Display` gives
/// the human sentence (also what it serializes to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Skipped(Skip),
    CurrentLatest {
        referenced_by_definition: bool,
    },
    InUse,
    Pinned {
        tag: String,
    },
    NoPublishedDate,
    YoungerThanMinAge {
        min_age_days: u32,
    },
    AmongNewest {
        keep_latest: u32,
    },
    /// Older than `maxAgeDays` and already deprecated, but among the newest `keepLatest`.
    DeprecatedAmongNewest {
        keep_latest: u32,
        max_age_days: u32,
    },
    Deprecating {
        cause: DeprecationCause,
        end_of_life: DateTime<Utc>,
    },
    GraceRunning {
        end_of_life: DateTime<Utc>,
        deletion_blocked: bool,
    },
    GraceOver {
        end_of_life: DateTime<Utc>,
    },
    DeleteLimitReached {
        max_deletes_per_run: u32,
    },
    /// Not published by kiln for the planned pipelines (set by the
    /// executor, see [`ownership`]): `published_by` is the pipeline its
    /// lineage tag names, if any.
    NotOwned {
        published_by: Option<String>,
    },
}

struct When(DateTime<Utc>);

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d %H:%M UTC"))
    }
}

impl fmt::Display for DeprecationCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeprecationCause::Surplus {
                keep_latest,
                min_age_days,
            } => write!(
                f,
                "beyond the newest {keep_latest} versions and older than {min_age_days} days"
            ),
            DeprecationCause::Expired { max_age_days } => {
                write!(f, "older than {max_age_days} days")
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Skipped(skip) => write!(f, "definition skipped: {skip}"),
            Reason::CurrentLatest {
                referenced_by_definition,
            } => {
                f.write_str("current latest (newest version not excluded from latest)")?;
                if *referenced_by_definition {
                    f.write_str(", in use by references to the definition without a version")?;
                }
                Ok(())
            }
            Reason::InUse => f.write_str("in use by a VM or scale set"),
            Reason::Pinned { tag } => write!(f, "pinned by tag {tag}"),
            Reason::NoPublishedDate => {
                f.write_str("no published date: age unknown, never treated as old")
            }
            Reason::YoungerThanMinAge { min_age_days } => {
                write!(f, "younger than {min_age_days} days")
            }
            Reason::AmongNewest { keep_latest } => write!(f, "newest {keep_latest} versions"),
            Reason::DeprecatedAmongNewest {
                keep_latest,
                max_age_days,
            } => write!(
                f,
                "older than {max_age_days} days and deprecated, but among the newest {keep_latest} versions: never deleted while it stays there"
            ),
            Reason::Deprecating {
                cause,
                end_of_life,
            } => write!(
                f,
                "{cause}: exclude from latest, end of life {}",
                When(*end_of_life)
            ),
            Reason::GraceRunning {
                end_of_life,
                deletion_blocked: true,
            } => write!(
                f,
                "deprecated; end of life {} not reached and deletion is blocked before end of life",
                When(*end_of_life)
            ),
            Reason::GraceRunning {
                end_of_life,
                deletion_blocked: false,
            } => write!(f, "deprecated; grace period ends {}", When(*end_of_life)),
            Reason::GraceOver { end_of_life } => write!(
                f,
                "deprecated and grace period ended {}",
                When(*end_of_life)
            ),
            Reason::DeleteLimitReached {
                max_deletes_per_run,
            } => write!(
                f,
                "deprecated and grace period over, but the limit of {max_deletes_per_run} deletions per run is reached"
            ),
            Reason::NotOwned { published_by } => {
                match published_by {
                    Some(p) => write!(f, "published by pipeline {p}, not this one")?,
                    None => f.write_str("not published by kiln (no kiln.pipeline tag)")?,
                }
                f.write_str("; kept unless the policy says foreignVersions: manage")
            }
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Skip {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanItem {
    pub version: ImageVersion,
    pub action: Action,
    pub reason: Reason,
}

/// The plan for one image definition. `items` has one entry per distinct
/// version, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub definition_id: String,
    pub skipped: Option<Skip>,
    pub items: Vec<PlanItem>,
}

impl Plan {
    /// A definition that is not planned at all: nothing is touched.
    pub fn skipped(definition_id: &str, why: Skip) -> Plan {
        Plan {
            definition_id: definition_id.to_string(),
            skipped: Some(why),
            items: Vec::new(),
        }
    }

    /// The items that change something (deprecations and deletions).
    pub fn changes(&self) -> impl Iterator<Item = &PlanItem> {
        self.items.iter().filter(|i| match i.action {
            Action::Keep => false,
            Action::Deprecate { .. } | Action::Delete => true,
        })
    }
}

/// Whether a listed version is one of `definition_id`'s (ARM ids compare
/// case-insensitively; a trailing slash does not count).
pub fn belongs_to(version: &GalleryVersion, definition_id: &str) -> bool {
    let a = version.definition_id.trim_end_matches('/');
    let b = definition_id.trim_end_matches('/');
    a == b || a.eq_ignore_ascii_case(b)
}

/// One definition to plan, for [`plan_many`].
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub definition_id: &'a str,
    pub versions: &'a [GalleryVersion],
    pub policy: &'a RetentionPolicy,
    pub status: DefinitionStatus,
}

pub mod ownership;
mod planner;
pub use ownership::ForeignVersions;
#[cfg(test)]
use planner::PARALLEL_FROM;
pub use planner::{plan, plan_many};

#[cfg(test)]
mod tests;
