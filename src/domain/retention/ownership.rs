//! Which versions retention may act on. kiln publishes every version with
//! the lineage tag `kiln.pipeline`; a version without it (imported by hand,
//! published by another tool) or with another pipeline's name is not this
//! policy's to retire. Such versions are kept and reported, unless the
//! policy says `foreignVersions: manage`.
//!
//! Ownership is decided before planning, so a foreign version takes no
//! place among the newest `keepLatest`: the rules count only the
//! pipeline's own versions, and a newer foreign version cannot push one of
//! them out.

use serde::{Deserialize, Serialize};

use super::{Action, PlanItem, Reason};
use crate::domain::gallery::GalleryVersion;

/// The lineage tag naming the pipeline that published a version.
pub const PIPELINE_TAG: &str = "kiln.pipeline";

/// What retention does with versions its pipelines did not publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ForeignVersions {
    /// Keep them, whatever the rules would say (the default).
    #[default]
    Keep,
    /// Plan them as the pipeline's own: for a definition kiln took over.
    Manage,
}

/// Who published a version, as its tags say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publisher {
    /// No `kiln.pipeline` tag: not published by kiln.
    Unknown,
    /// Published by kiln for this pipeline.
    Pipeline(String),
}

impl Publisher {
    pub fn of(v: &GalleryVersion) -> Publisher {
        match v.tags.get(PIPELINE_TAG) {
            Some(p) if !p.is_empty() => Publisher::Pipeline(p.clone()),
            Some(_) | None => Publisher::Unknown,
        }
    }
}

/// Splits a definition's versions into those the rules plan and the plan
/// items of those kept because `owners` (the pipelines planned together
/// for this definition) did not publish them.
pub fn split_foreign(
    versions: Vec<GalleryVersion>,
    owners: &[&str],
    foreign: ForeignVersions,
) -> (Vec<GalleryVersion>, Vec<PlanItem>) {
    match foreign {
        ForeignVersions::Manage => (versions, Vec::new()),
        ForeignVersions::Keep => {
            let mut own = Vec::with_capacity(versions.len());
            let mut kept = Vec::new();
            for v in versions {
                match Publisher::of(&v) {
                    Publisher::Pipeline(p) if owners.contains(&p.as_str()) => own.push(v),
                    Publisher::Pipeline(p) => kept.push(PlanItem {
                        version: v.version,
                        action: Action::Keep,
                        reason: Reason::NotOwned {
                            published_by: Some(p),
                        },
                    }),
                    Publisher::Unknown => kept.push(PlanItem {
                        version: v.version,
                        action: Action::Keep,
                        reason: Reason::NotOwned { published_by: None },
                    }),
                }
            }
            (own, kept)
        }
    }
}

/// Puts the kept foreign items into a plan's items, newest first. A
/// version listed both as the pipeline's and as another's (copies with
/// different tags) is kept: the foreign item wins.
pub fn merge_kept(items: &mut Vec<PlanItem>, kept: Vec<PlanItem>) {
    if kept.is_empty() {
        return;
    }
    items.retain(|i| !kept.iter().any(|k| k.version == i.version));
    items.extend(kept);
    items.sort_by_key(|i| std::cmp::Reverse(i.version));
    items.dedup_by(|a, b| a.version == b.version);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ver(v: &str, pipeline: Option<&str>) -> GalleryVersion {
        GalleryVersion {
            definition_id: "/d".into(),
            version: v.parse().unwrap(),
            published: None,
            exclude_from_latest: false,
            end_of_life: None,
            block_deletion_before_end_of_life: false,
            tags: pipeline
                .map(|p| BTreeMap::from([(PIPELINE_TAG.to_string(), p.to_string())]))
                .unwrap_or_default(),
            replication: Vec::new(),
            provisioning_state: "Succeeded".into(),
        }
    }

    fn versions(vs: &[GalleryVersion]) -> Vec<String> {
        vs.iter().map(|v| v.version.to_string()).collect()
    }

    #[test]
    fn only_the_owners_versions_are_planned_and_the_rest_are_kept_with_who_published_them() {
        let (own, kept) = split_foreign(
            vec![
                ver("1.0.0", Some("golden")),
                ver("1.0.1", None),
                ver("1.0.2", Some("hotfix")),
                ver("1.0.3", Some("other")),
                ver("1.0.4", Some("")),
            ],
            &["golden", "hotfix"],
            ForeignVersions::Keep,
        );
        assert_eq!(versions(&own), ["1.0.0", "1.0.2"]);
        let reasons: Vec<(String, String)> = kept
            .iter()
            .map(|i| {
                assert_eq!(i.action, Action::Keep);
                (i.version.to_string(), i.reason.to_string())
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("1.0.1".to_string(), "not published by kiln (no kiln.pipeline tag); kept unless the policy says foreignVersions: manage".to_string()),
                ("1.0.3".to_string(), "published by pipeline other, not this one; kept unless the policy says foreignVersions: manage".to_string()),
                ("1.0.4".to_string(), "not published by kiln (no kiln.pipeline tag); kept unless the policy says foreignVersions: manage".to_string()),
            ]
        );
    }

    #[test]
    fn manage_plans_every_version() {
        let (own, kept) = split_foreign(
            vec![ver("1.0.0", None), ver("1.0.1", Some("other"))],
            &["golden"],
            ForeignVersions::Manage,
        );
        assert_eq!(versions(&own), ["1.0.0", "1.0.1"]);
        assert!(kept.is_empty());
    }

    #[test]
    fn kept_items_join_the_plan_newest_first_and_win_over_a_copy() {
        let item = |v: &str, action| PlanItem {
            version: v.parse().unwrap(),
            action,
            reason: Reason::InUse,
        };
        let mut items = vec![item("1.0.3", Action::Keep), item("1.0.1", Action::Delete)];
        let kept = vec![
            PlanItem {
                reason: Reason::NotOwned { published_by: None },
                ..item("1.0.2", Action::Keep)
            },
            PlanItem {
                reason: Reason::NotOwned { published_by: None },
                ..item("1.0.1", Action::Keep)
            },
        ];
        merge_kept(&mut items, kept);
        let got: Vec<(String, Action)> = items
            .iter()
            .map(|i| (i.version.to_string(), i.action))
            .collect();
        assert_eq!(
            got,
            [
                ("1.0.3".to_string(), Action::Keep),
                ("1.0.2".to_string(), Action::Keep),
                ("1.0.1".to_string(), Action::Keep),
            ]
        );
    }
}
