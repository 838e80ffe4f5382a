use std::collections::BTreeMap;

use chrono::{TimeDelta, TimeZone};

use super::*;

const DEF: &str =
    "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/win11";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

/// A published, listed (not excluded) version `days_old` days old.
fn ver(version: &str, days_old: i64) -> GalleryVersion {
    GalleryVersion {
        definition_id: DEF.into(),
        version: version.parse().unwrap(),
        published: Some(now() - TimeDelta::days(days_old)),
        exclude_from_latest: false,
        end_of_life: None,
        block_deletion_before_end_of_life: false,
        tags: BTreeMap::new(),
        replication: Vec::new(),
        provisioning_state: "Succeeded".into(),
    }
}

trait Fixture {
    fn excluded(self) -> Self;
    /// End of life `days` from now (negative: in the past).
    fn eol_in(self, days: i64) -> Self;
    /// Deprecated by an earlier run, grace period ending in `days`.
    fn deprecated(self, days: i64) -> Self;
    fn blocked(self) -> Self;
    fn tag(self, key: &str, value: &str) -> Self;
    fn unpublished(self) -> Self;
}

impl Fixture for GalleryVersion {
    fn excluded(mut self) -> Self {
        self.exclude_from_latest = true;
        self
    }
    fn eol_in(mut self, days: i64) -> Self {
        self.end_of_life = Some(now() + TimeDelta::days(days));
        self
    }
    fn deprecated(self, days: i64) -> Self {
        self.excluded().eol_in(days)
    }
    fn blocked(mut self) -> Self {
        self.block_deletion_before_end_of_life = true;
        self
    }
    fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
    fn unpublished(mut self) -> Self {
        self.published = None;
        self
    }
}

fn policy(keep_latest: u32, min_age_days: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_latest,
        min_age_days,
        ..RetentionPolicy::default()
    }
}

fn run(versions: &[GalleryVersion], policy: &RetentionPolicy, in_use: &InUseSet) -> Plan {
    plan(DEF, versions, policy, in_use, DefinitionStatus::Idle, now())
}

fn item<'p>(plan: &'p Plan, version: &str) -> &'p PlanItem {
    let v: ImageVersion = version.parse().unwrap();
    plan.items
        .iter()
        .find(|i| i.version == v)
        .unwrap_or_else(|| panic!("{version} is not in the plan"))
}

fn action(plan: &Plan, version: &str) -> Action {
    item(plan, version).action
}

fn reason(plan: &Plan, version: &str) -> String {
    item(plan, version).reason.to_string()
}

fn grace_end() -> DateTime<Utc> {
    now() + TimeDelta::days(7)
}

#[test]
fn versions_are_ordered_numerically_not_as_text() {
    let versions = [ver("1.0.9", 30), ver("1.0.10", 30), ver("1.0.8", 30)];
    let p = run(&versions, &policy(2, 7), &InUseSet::default());
    let order: Vec<String> = p.items.iter().map(|i| i.version.to_string()).collect();
    assert_eq!(order, ["1.0.10", "1.0.9", "1.0.8"]);
    assert_eq!(action(&p, "1.0.10"), Action::Keep);
    assert_eq!(action(&p, "1.0.9"), Action::Keep);
    assert_eq!(
        action(&p, "1.0.8"),
        Action::Deprecate {
            end_of_life: grace_end()
        }
    );
    assert_eq!(
        reason(&p, "1.0.8"),
        "beyond the newest 2 versions and older than 7 days: exclude from latest, end of life 2026-06-08 12:00 UTC"
    );
}

#[test]
fn the_current_latest_is_kept_even_with_keep_latest_zero_and_a_max_age() {
    let versions = [ver("1.0.1", 400), ver("1.0.0", 500)];
    let p = run(
        &versions,
        &RetentionPolicy {
            max_age_days: Some(90),
            ..policy(0, 0)
        },
        &InUseSet::default(),
    );
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    assert_eq!(
        reason(&p, "1.0.1"),
        "current latest (newest version not excluded from latest)"
    );
    assert!(matches!(action(&p, "1.0.0"), Action::Deprecate { .. }));
}

#[test]
fn a_newer_version_excluded_from_latest_does_not_displace_the_current_latest() {
    // 2.0.0 is a canary published excluded from latest: 1.0.0 is what "latest" gives.
    let versions = [
        ver("2.0.0", 30).excluded(),
        ver("1.0.0", 60),
        ver("0.9.0", 90),
    ];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert!(matches!(
        item(&p, "1.0.0").reason,
        Reason::CurrentLatest { .. }
    ));
    assert!(matches!(action(&p, "2.0.0"), Action::Deprecate { .. }));
    assert!(matches!(action(&p, "0.9.0"), Action::Deprecate { .. }));
}

#[test]
fn a_version_in_use_is_kept_unless_protection_is_off() {
    let versions = [ver("1.0.2", 30), ver("1.0.1", 30), ver("1.0.0", 30)];
    let mut in_use = InUseSet::default();
    // ARM ids compare case-insensitively.
    in_use.add_reference(&format!("{}/VERSIONS/1.0.0", DEF.to_uppercase()));
    let p = run(&versions, &policy(1, 7), &in_use);
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert_eq!(reason(&p, "1.0.0"), "in use by a VM or scale set");
    assert!(matches!(action(&p, "1.0.1"), Action::Deprecate { .. }));

    let unprotected = RetentionPolicy {
        protect_in_use: false,
        ..policy(1, 7)
    };
    let p = run(&versions, &unprotected, &in_use);
    assert!(matches!(action(&p, "1.0.0"), Action::Deprecate { .. }));
}

#[test]
fn a_reference_to_the_definition_protects_its_current_latest() {
    let versions = [ver("1.0.1", 30).excluded(), ver("1.0.0", 30)];
    let mut in_use = InUseSet::default();
    in_use.add_reference(DEF);
    let p = run(&versions, &policy(0, 7), &in_use);
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert_eq!(
        reason(&p, "1.0.0"),
        "current latest (newest version not excluded from latest), in use by references to the definition without a version"
    );
    assert!(matches!(action(&p, "1.0.1"), Action::Deprecate { .. }));
}

#[test]
fn a_reference_to_versions_latest_counts_as_a_reference_to_the_definition() {
    let versions = [ver("1.0.1", 30), ver("1.0.0", 30)];
    let mut in_use = InUseSet::default();
    in_use.add_reference(&format!("{DEF}/versions/latest"));
    let p = run(&versions, &policy(0, 7), &in_use);
    assert_eq!(
        item(&p, "1.0.1").reason,
        Reason::CurrentLatest {
            referenced_by_definition: true
        }
    );
}

#[test]
fn an_unmapped_shared_gallery_reference_keeps_every_version_of_that_definition_name() {
    use crate::domain::gallery::{GalleryNames, ImageReference};
    let versions = [ver("1.0.2", 30), ver("1.0.1", 30), ver("1.0.0", 30)];
    let name = DEF.rsplit('/').next().unwrap();
    let shared = format!("/SharedGalleries/unknown-gallery/Images/{name}/Versions/1.0.0");
    let mut in_use = InUseSet::default();
    in_use.add_image_reference(
        &ImageReference {
            shared_gallery_image_id: Some(&shared),
            ..ImageReference::default()
        },
        &GalleryNames::default(),
    );
    let p = run(&versions, &policy(0, 7), &in_use);
    for v in ["1.0.2", "1.0.1", "1.0.0"] {
        assert_eq!(action(&p, v), Action::Keep, "{v}");
    }
}

#[test]
fn a_pinned_version_is_kept_whatever_the_tag_value() {
    let versions = [
        ver("1.0.3", 30),
        ver("1.0.2", 300).tag("kiln.pin", ""),
        ver("1.0.1", 300)
            .tag("kiln.pin", "audit 2026")
            .deprecated(-10),
        ver("1.0.0", 300).tag("owner", "x"),
    ];
    let p = run(&versions, &policy(1, 7), &InUseSet::default());
    assert_eq!(reason(&p, "1.0.2"), "pinned by tag kiln.pin");
    assert_eq!(action(&p, "1.0.2"), Action::Keep);
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    assert!(matches!(action(&p, "1.0.0"), Action::Deprecate { .. }));

    let custom = RetentionPolicy {
        pin_tag: "owner".into(),
        ..policy(1, 7)
    };
    let p = run(&versions, &custom, &InUseSet::default());
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert!(matches!(action(&p, "1.0.2"), Action::Deprecate { .. }));
}

#[test]
fn the_newest_keep_latest_versions_are_kept() {
    let versions: Vec<_> = (0..6).map(|p| ver(&format!("1.0.{p}"), 100)).collect();
    let p = run(&versions, &policy(3, 7), &InUseSet::default());
    for kept in ["1.0.5", "1.0.4", "1.0.3"] {
        assert_eq!(action(&p, kept), Action::Keep);
    }
    assert_eq!(reason(&p, "1.0.4"), "newest 3 versions");
    for gone in ["1.0.2", "1.0.1", "1.0.0"] {
        assert!(matches!(action(&p, gone), Action::Deprecate { .. }));
    }
}

#[test]
fn a_version_younger_than_min_age_is_kept() {
    let versions = [ver("1.0.2", 1), ver("1.0.1", 6), ver("1.0.0", 7)];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(reason(&p, "1.0.1"), "younger than 7 days");
    // Exactly min age is old enough.
    assert!(matches!(action(&p, "1.0.0"), Action::Deprecate { .. }));
}

#[test]
fn a_version_without_published_date_is_never_old() {
    let versions = [
        ver("1.0.2", 30),
        ver("1.0.1", 0).unpublished(),
        ver("1.0.0", 0).unpublished().deprecated(-30),
    ];
    let p = run(
        &versions,
        &RetentionPolicy {
            max_age_days: Some(1),
            ..policy(0, 0)
        },
        &InUseSet::default(),
    );
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert_eq!(
        reason(&p, "1.0.0"),
        "no published date: age unknown, never treated as old"
    );
}

#[test]
fn deletion_is_staged_deprecate_then_wait_then_delete() {
    let versions = [
        ver("1.0.3", 10),
        ver("1.0.2", 60),
        ver("1.0.1", 60).deprecated(3),
        ver("1.0.0", 60).deprecated(-1),
    ];
    let p = run(&versions, &policy(1, 7), &InUseSet::default());
    assert_eq!(
        action(&p, "1.0.2"),
        Action::Deprecate {
            end_of_life: grace_end()
        }
    );
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    assert_eq!(
        reason(&p, "1.0.1"),
        "deprecated; grace period ends 2026-06-04 12:00 UTC"
    );
    assert_eq!(action(&p, "1.0.0"), Action::Delete);
    assert_eq!(
        reason(&p, "1.0.0"),
        "deprecated and grace period ended 2026-05-31 12:00 UTC"
    );
}

#[test]
fn a_version_past_end_of_life_but_still_in_latest_is_deprecated_first() {
    // The 2026-03-03 gallery default gives every version an end of life
    // six months after publishing; that alone is no notice to consumers.
    let versions = [ver("1.0.1", 10), ver("1.0.0", 200).eol_in(-20)];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(
        action(&p, "1.0.0"),
        Action::Deprecate {
            end_of_life: grace_end()
        }
    );
}

#[test]
fn deprecation_never_brings_an_end_of_life_forward() {
    let versions = [ver("1.0.1", 10), ver("1.0.0", 60).eol_in(200).blocked()];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(
        action(&p, "1.0.0"),
        Action::Deprecate {
            end_of_life: now() + TimeDelta::days(200)
        }
    );
}

#[test]
fn a_blocked_version_is_not_deleted_before_its_end_of_life() {
    let versions = [ver("1.0.1", 10), ver("1.0.0", 60).deprecated(214).blocked()];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(action(&p, "1.0.0"), Action::Keep);
    assert_eq!(
        reason(&p, "1.0.0"),
        "deprecated; end of life 2027-01-01 12:00 UTC not reached and deletion is blocked before end of life"
    );
}

#[test]
fn deletions_are_capped_per_run_oldest_first() {
    let mut versions = vec![ver("2.0.0", 10)];
    versions.extend((0..5).map(|p| ver(&format!("1.0.{p}"), 60).deprecated(-1)));
    let p = run(
        &versions,
        &RetentionPolicy {
            max_deletes_per_run: 2,
            ..policy(1, 7)
        },
        &InUseSet::default(),
    );
    let deleted: Vec<String> = p
        .items
        .iter()
        .filter(|i| i.action == Action::Delete)
        .map(|i| i.version.to_string())
        .collect();
    assert_eq!(deleted, ["1.0.1", "1.0.0"]);
    assert_eq!(
        reason(&p, "1.0.4"),
        "deprecated and grace period over, but the limit of 2 deletions per run is reached"
    );
}

#[test]
fn max_age_deprecates_among_the_newest_but_never_deletes_them() {
    let versions = [
        ver("1.0.3", 200),
        ver("1.0.2", 200),
        ver("1.0.1", 200).deprecated(-30),
        ver("1.0.0", 20),
    ];
    let p = run(
        &versions,
        &RetentionPolicy {
            max_age_days: Some(90),
            ..policy(3, 7)
        },
        &InUseSet::default(),
    );
    assert_eq!(action(&p, "1.0.3"), Action::Keep);
    assert!(matches!(action(&p, "1.0.2"), Action::Deprecate { .. }));
    assert_eq!(
        reason(&p, "1.0.2"),
        "older than 90 days: exclude from latest, end of life 2026-06-08 12:00 UTC"
    );
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    assert!(matches!(
        item(&p, "1.0.1").reason,
        Reason::DeprecatedAmongNewest { .. }
    ));
    // Beyond the newest 3 and 20 days old: surplus, not expired.
    assert!(matches!(
        item(&p, "1.0.0").reason,
        Reason::Deprecating {
            cause: DeprecationCause::Surplus { .. },
            ..
        }
    ));
}

#[test]
fn a_definition_still_publishing_or_failed_while_publishing_is_skipped() {
    let versions = [ver("1.0.1", 10), ver("1.0.0", 60).deprecated(-1)];
    for (status, why) in [
        (
            DefinitionStatus::Publishing,
            "the latest build is still publishing",
        ),
        (
            DefinitionStatus::FailedWhilePublishing,
            "the latest build failed while publishing; retention waits for a successful build",
        ),
    ] {
        let p = plan(
            DEF,
            &versions,
            &policy(0, 0),
            &InUseSet::default(),
            status,
            now(),
        );
        assert_eq!(
            p.skipped.as_ref().map(ToString::to_string).as_deref(),
            Some(why)
        );
        assert_eq!(p.items.len(), 2);
        assert!(p.items.iter().all(|i| i.action == Action::Keep));
        assert_eq!(p.changes().count(), 0);
    }
}

#[test]
fn duplicated_versions_are_planned_once_on_the_protective_side() {
    let versions = [
        ver("1.0.3", 10),
        ver("1.0.2", 60).deprecated(-1),
        ver("1.0.2", 60).deprecated(-1).tag("kiln.pin", "1"),
        ver("1.0.1", 60).deprecated(-1),
        ver("1.0.1", 60).deprecated(-1).unpublished(),
        ver("1.0.0", 60).deprecated(-1),
        ver("1.0.0", 60).deprecated(5),
    ];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    assert_eq!(p.items.len(), 4);
    assert_eq!(reason(&p, "1.0.2"), "pinned by tag kiln.pin");
    assert_eq!(action(&p, "1.0.1"), Action::Keep);
    // The later end of life wins: the grace period is still running.
    assert!(matches!(
        item(&p, "1.0.0").reason,
        Reason::GraceRunning { .. }
    ));
}

#[test]
fn dry_run_does_not_change_the_plan() {
    let versions = [
        ver("1.0.2", 10),
        ver("1.0.1", 60),
        ver("1.0.0", 60).deprecated(-1),
    ];
    let wet = run(&versions, &policy(0, 7), &InUseSet::default());
    let dry = run(
        &versions,
        &RetentionPolicy {
            dry_run: true,
            ..policy(0, 7)
        },
        &InUseSet::default(),
    );
    assert_eq!(wet, dry);
    assert_eq!(wet.changes().count(), 2);
}

#[test]
fn a_version_belongs_to_its_definition_whatever_the_case_and_trailing_slash() {
    let v = ver("1.0.0", 1);
    assert!(belongs_to(&v, DEF));
    assert!(belongs_to(&v, &format!("{}/", DEF.to_uppercase())));
    assert!(!belongs_to(&v, &DEF.replace("win11", "win10")));
    assert!(!belongs_to(&v, &format!("{DEF}-old")));
}

#[test]
fn plan_many_gives_the_same_plans_as_plan() {
    let a = [ver("1.0.1", 10), ver("1.0.0", 60).deprecated(-1)];
    let mut b = a.to_vec();
    for v in &mut b {
        v.definition_id = format!("{DEF}-b");
    }
    let pol = policy(0, 7);
    let in_use = InUseSet::default();
    let inputs = [
        PlanInput {
            definition_id: DEF,
            versions: &a,
            policy: &pol,
            status: DefinitionStatus::Idle,
        },
        PlanInput {
            definition_id: &b[0].definition_id,
            versions: &b,
            policy: &pol,
            status: DefinitionStatus::Publishing,
        },
    ];
    let many = plan_many(inputs, &in_use, now());
    let one_by_one: Vec<Plan> = inputs
        .iter()
        .map(|i| {
            plan(
                i.definition_id,
                i.versions,
                i.policy,
                &in_use,
                i.status,
                now(),
            )
        })
        .collect();
    assert_eq!(many, one_by_one);
    assert_eq!(many[0].changes().count(), 1);
    assert!(many[1].skipped.is_some());
}

#[test]
fn plan_many_on_several_threads_keeps_input_order_and_results() {
    let pol = policy(0, 7);
    let in_use = InUseSet::default();
    let defs: Vec<(String, Vec<GalleryVersion>)> = (0..PARALLEL_FROM * 2 + 3)
        .map(|i| {
            let id = format!("{DEF}-{i}");
            let mut vs = vec![
                ver("1.0.2", 3),
                ver("1.0.1", 30),
                ver("1.0.0", 60 + i as i64),
            ];
            for v in &mut vs {
                v.definition_id = id.clone();
            }
            (id, vs)
        })
        .collect();
    let inputs: Vec<PlanInput> = defs
        .iter()
        .enumerate()
        .map(|(i, (id, vs))| PlanInput {
            definition_id: id,
            versions: vs,
            policy: &pol,
            status: if i % 7 == 0 {
                DefinitionStatus::Publishing
            } else {
                DefinitionStatus::Idle
            },
        })
        .collect();
    let many = plan_many(inputs.iter().copied(), &in_use, now());
    let one_by_one: Vec<Plan> = inputs
        .iter()
        .map(|i| {
            plan(
                i.definition_id,
                i.versions,
                i.policy,
                &in_use,
                i.status,
                now(),
            )
        })
        .collect();
    assert_eq!(many.len(), defs.len());
    assert_eq!(many, one_by_one);
}

#[test]
fn a_plan_serializes_with_readable_reasons() {
    let versions = [ver("1.0.1", 10), ver("1.0.0", 60)];
    let p = run(&versions, &policy(0, 7), &InUseSet::default());
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["items"][1],
        serde_json::json!({
            "version": "1.0.0",
            "action": { "kind": "deprecate", "endOfLife": "2026-06-08T12:00:00Z" },
            "reason": "beyond the newest 0 versions and older than 7 days: exclude from latest, end of life 2026-06-08 12:00 UTC"
        })
    );
}

mod properties {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A generated version entry before it becomes a `GalleryVersion`.
    #[derive(Debug, Clone)]
    struct Entry {
        version: ImageVersion,
        upper_case_id: bool,
        published_days_ago: Option<i64>,
        excluded: bool,
        eol_in_days: Option<i64>,
        blocked: bool,
        pinned: bool,
    }

    fn version() -> impl Strategy<Value = ImageVersion> {
        // Few distinct small numbers so duplicates and neighbours are
        // common, plus int32-sized parts.
        let part = prop_oneof![4 => 0u32..4, 1 => (i32::MAX as u32 - 2)..=i32::MAX as u32];
        (part.clone(), part.clone(), prop_oneof![0u32..12, part])
            .prop_map(|(a, b, c)| ImageVersion::new(a, b, c))
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            version(),
            any::<bool>(),
            proptest::option::weighted(0.85, -5i64..400),
            proptest::bool::weighted(0.4),
            proptest::option::weighted(0.5, -60i64..300),
            proptest::bool::weighted(0.3),
            proptest::bool::weighted(0.1),
        )
            .prop_map(
                |(
                    version,
                    upper_case_id,
                    published_days_ago,
                    excluded,
                    eol_in_days,
                    blocked,
                    pinned,
                )| {
                    Entry {
                        version,
                        upper_case_id,
                        published_days_ago,
                        excluded,
                        eol_in_days,
                        blocked,
                        pinned,
                    }
                },
            )
    }

    fn gallery_version(e: &Entry) -> GalleryVersion {
        let mut v = ver(&e.version.to_string(), 0);
        if e.upper_case_id {
            v.definition_id = DEF.to_ascii_uppercase();
        }
        v.published = e.published_days_ago.map(|d| now() - TimeDelta::days(d));
        v.exclude_from_latest = e.excluded;
        v.end_of_life = e.eol_in_days.map(|d| now() + TimeDelta::days(d));
        v.block_deletion_before_end_of_life = e.blocked;
        if e.pinned {
            v.tags.insert("kiln.pin".into(), String::new());
        }
        v
    }

    fn policy() -> impl Strategy<Value = RetentionPolicy> {
        (
            0u32..6,
            0u32..60,
            proptest::option::of(0u32..200),
            any::<bool>(),
            0u32..30,
            0u32..5,
            any::<bool>(),
        )
            .prop_map(
                |(
                    keep_latest,
                    min_age_days,
                    max_age_days,
                    protect_in_use,
                    grace,
                    max_deletes,
                    dry_run,
                )| {
                    RetentionPolicy {
                        keep_latest,
                        min_age_days,
                        max_age_days,
                        pin_tag: "kiln.pin".into(),
                        protect_in_use,
                        deprecate: Deprecate { grace_days: grace },
                        max_deletes_per_run: max_deletes,
                        dry_run,
                        // The planner plans what it is given; ownership is
                        // the executor's filter (`ownership`'s tests).
                        foreign_versions: ForeignVersions::Keep,
                    }
                },
            )
    }

    fn status() -> impl Strategy<Value = DefinitionStatus> {
        prop_oneof![
            8 => Just(DefinitionStatus::Idle),
            1 => Just(DefinitionStatus::Publishing),
            1 => Just(DefinitionStatus::FailedWhilePublishing),
        ]
    }

    /// Consumers' references: some listed versions, some unknown ones,
    /// maybe the definition itself.
    fn in_use(entries: &[Entry]) -> impl Strategy<Value = InUseSet> {
        let listed: Vec<ImageVersion> = entries.iter().map(|e| e.version).collect();
        (
            proptest::sample::subsequence(listed.clone(), 0..=listed.len()),
            proptest::collection::vec(version(), 0..3),
            any::<bool>(),
            any::<bool>(),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(listed, unknown, by_definition, shout, by_alias)| {
                let mut set = InUseSet::default();
                for v in listed.iter().chain(&unknown) {
                    let id = format!("{DEF}/versions/{v}");
                    set.add_reference(&if shout { id.to_uppercase() } else { id });
                }
                if by_definition {
                    set.add_reference(&format!("{DEF}/"));
                }
                if by_alias {
                    set.add_reference(&format!("{DEF}/versions/latest"));
                }
                set
            })
    }

    fn case() -> impl Strategy<Value = (Vec<Entry>, RetentionPolicy, InUseSet, DefinitionStatus)> {
        proptest::collection::vec(entry(), 0..24).prop_flat_map(|entries| {
            let in_use = in_use(&entries);
            (Just(entries), policy(), in_use, status())
        })
    }

    /// Everything the input says about one version number, across copies.
    struct Truth<'a> {
        copies: Vec<&'a GalleryVersion>,
    }

    impl Truth<'_> {
        fn any(&self, f: impl Fn(&GalleryVersion) -> bool) -> bool {
            self.copies.iter().any(|v| f(v))
        }
        fn all(&self, f: impl Fn(&GalleryVersion) -> bool) -> bool {
            self.copies.iter().all(|v| f(v))
        }
    }

    fn check(
        versions: &[GalleryVersion],
        policy: &RetentionPolicy,
        in_use: &InUseSet,
        status: DefinitionStatus,
    ) -> Result<(), TestCaseError> {
        let p = plan(DEF, versions, policy, in_use, status, now());

        let mut truth: BTreeMap<ImageVersion, Truth> = BTreeMap::new();
        for v in versions {
            truth
                .entry(v.version)
                .or_insert(Truth { copies: Vec::new() })
                .copies
                .push(v);
        }

        // One item per distinct version, strictly newest first.
        let planned: Vec<ImageVersion> = p.items.iter().map(|i| i.version).collect();
        let mut expected: Vec<ImageVersion> = truth.keys().copied().collect();
        expected.reverse();
        prop_assert_eq!(&planned, &expected);

        let touched = |i: &PlanItem| i.action != Action::Keep;
        let deletes = p
            .items
            .iter()
            .filter(|i| i.action == Action::Delete)
            .count();

        // dryRun never changes the plan.
        let flipped = RetentionPolicy {
            dry_run: !policy.dry_run,
            ..policy.clone()
        };
        prop_assert_eq!(&plan(DEF, versions, &flipped, in_use, status, now()), &p);

        match status {
            DefinitionStatus::Idle => prop_assert!(p.skipped.is_none()),
            DefinitionStatus::Publishing | DefinitionStatus::FailedWhilePublishing => {
                prop_assert!(p.skipped.is_some());
                prop_assert!(p.items.iter().all(|i| i.action == Action::Keep));
                return Ok(());
            }
        }

        // The newest version not excluded from latest (by any copy) is never touched.
        let latest = truth
            .iter()
            .rev()
            .find(|(_, t)| t.any(|v| !v.exclude_from_latest))
            .map(|(v, _)| *v);

        // At least keepLatest remain; in fact the newest keepLatest are never deleted.
        prop_assert!(truth.len() - deletes >= truth.len().min(policy.keep_latest as usize));
        prop_assert!(deletes <= policy.max_deletes_per_run as usize);

        let mut newest_deleted: Option<ImageVersion> = None;
        let mut oldest_held_back: Option<ImageVersion> = None;
        for (rank, item) in p.items.iter().enumerate() {
            let t = &truth[&item.version];
            let v = item.version;
            if Some(v) == latest {
                prop_assert_eq!(item.action, Action::Keep, "latest {} touched", v);
            }
            if policy.protect_in_use && t.any(|g| in_use.uses_version(g)) {
                prop_assert!(!touched(item), "{} in use but {:?}", v, item.action);
            }
            if t.any(|g| g.tags.contains_key("kiln.pin")) {
                prop_assert!(!touched(item), "{} pinned but {:?}", v, item.action);
            }
            if t.any(|g| g.published.is_none()) {
                prop_assert!(!touched(item), "{} undated but {:?}", v, item.action);
            }
            if touched(item) {
                let min_age = TimeDelta::days(policy.min_age_days.into());
                prop_assert!(
                    t.all(|g| g.published.is_some_and(|d| now() - d >= min_age)),
                    "{} younger than min age but {:?}",
                    v,
                    item.action
                );
            }
            match item.action {
                Action::Keep => {
                    if matches!(item.reason, Reason::DeleteLimitReached { .. }) {
                        oldest_held_back = Some(v);
                    }
                }
                Action::Deprecate { end_of_life } => {
                    let grace = TimeDelta::days(policy.deprecate.grace_days.into());
                    prop_assert!(end_of_life >= now() + grace);
                    // Never brings an existing end of life forward.
                    prop_assert!(t.all(|g| g.end_of_life.is_none_or(|e| e <= end_of_life)));
                }
                Action::Delete => {
                    newest_deleted.get_or_insert(v);
                    prop_assert!(rank >= policy.keep_latest as usize);
                    // Staged: every copy was deprecated and its grace period is over,
                    // which also means no block before end of life applies.
                    prop_assert!(t.all(
                        |g| g.exclude_from_latest && g.end_of_life.is_some_and(|e| e <= now())
                    ));
                    prop_assert!(t.all(|g| !g.block_deletion_before_end_of_life
                        || g.end_of_life.is_some_and(|e| now() >= e)));
                }
            }

            // Liveness: a surplus version nothing protects is acted upon,
            // so the properties above cannot pass by keeping everything.
            let protected = Some(v) == latest
                || (policy.protect_in_use
                    && in_use.versions.iter().any(|id| {
                        id.strip_prefix(&format!("{}/versions/", DEF.to_ascii_lowercase()))
                            .is_some_and(|rest| rest.parse() == Ok(v))
                    }))
                || t.any(|g| g.tags.contains_key("kiln.pin"))
                || !t.all(|g| {
                    g.published
                        .is_some_and(|d| now() - d >= TimeDelta::days(policy.min_age_days.into()))
                });
            if !protected && rank >= policy.keep_latest as usize {
                let deprecated = t.all(|g| g.exclude_from_latest && g.end_of_life.is_some());
                let grace_over = t.all(|g| g.end_of_life.is_some_and(|e| e <= now()));
                match (deprecated, grace_over) {
                    (false, _) => prop_assert!(
                        matches!(item.action, Action::Deprecate { .. }),
                        "{} should be deprecated: {:?}",
                        v,
                        item
                    ),
                    (true, true) => prop_assert!(
                        item.action == Action::Delete
                            || matches!(item.reason, Reason::DeleteLimitReached { .. }),
                        "{} should be deleted: {:?}",
                        v,
                        item
                    ),
                    (true, false) => prop_assert!(
                        matches!(item.reason, Reason::GraceRunning { .. }),
                        "{} should wait: {:?}",
                        v,
                        item
                    ),
                }
            }
        }
        // Oldest first: everything held back by the limit is newer than
        // everything deleted.
        if let (Some(held), Some(deleted)) = (oldest_held_back, newest_deleted) {
            prop_assert!(held > deleted);
        }
        if oldest_held_back.is_some() {
            prop_assert_eq!(deletes, policy.max_deletes_per_run as usize);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_invariant_holds_for_random_definitions(
            (entries, policy, in_use, status) in case(),
            shuffle_seed in any::<u64>(),
        ) {
            let mut versions: Vec<GalleryVersion> = entries.iter().map(gallery_version).collect();
            // Input order must not matter: rotate deterministically by the seed.
            if !versions.is_empty() {
                let n = versions.len();
                versions.rotate_left((shuffle_seed % n as u64) as usize);
            }
            check(&versions, &policy, &in_use, status)?;
            let mut reversed = versions.clone();
            reversed.reverse();
            prop_assert_eq!(
                plan(DEF, &versions, &policy, &in_use, status, now()),
                plan(DEF, &reversed, &policy, &in_use, status, now())
            );
        }

        #[test]
        fn ids_in_the_in_use_set_match_the_planners_view(
            (entries, _policy, in_use, _status) in case(),
        ) {
            // The planner's range scan must find at least what
            // `InUseSet::uses_version` finds, version by version.
            let versions: Vec<GalleryVersion> = entries.iter().map(gallery_version).collect();
            let everything = RetentionPolicy { keep_latest: 0, min_age_days: 0, ..RetentionPolicy::default() };
            let p = plan(DEF, &versions, &everything, &in_use, DefinitionStatus::Idle, now());
            let in_use_versions: BTreeSet<ImageVersion> = versions
                .iter()
                .filter(|v| in_use.uses_version(v))
                .map(|v| v.version)
                .collect();
            for i in &p.items {
                if in_use_versions.contains(&i.version) {
                    prop_assert!(matches!(i.reason, Reason::InUse | Reason::CurrentLatest { .. }), "{:?}", i);
                }
            }
        }
    }
}
