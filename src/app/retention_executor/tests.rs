use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone};

use super::*;
use crate::ports::GalleryVersion;
use crate::store::port::AuditStore;
use crate::store::{Db, SqliteStore};

const WIN: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/win11";
const LINUX: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/ubuntu";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn version(definition: &str, v: &str, days_old: i64) -> GalleryVersion {
    GalleryVersion {
        definition_id: definition.into(),
        version: v.parse().unwrap(),
        published: Some(now() - TimeDelta::days(days_old)),
        exclude_from_latest: false,
        end_of_life: None,
        block_deletion_before_end_of_life: false,
        // Published by kiln for the pipeline the targets below plan.
        tags: BTreeMap::from([("kiln.pipeline".to_string(), "golden".to_string())]),
        replication: Vec::new(),
        provisioning_state: "Succeeded".into(),
    }
}

/// Deprecated by an earlier run; its grace period ended yesterday.
fn expired(definition: &str, v: &str) -> GalleryVersion {
    GalleryVersion {
        exclude_from_latest: true,
        end_of_life: Some(now() - TimeDelta::days(1)),
        ..version(definition, v, 90)
    }
}

#[derive(Default)]
struct FakeGallery {
    versions: Mutex<BTreeMap<String, Vec<GalleryVersion>>>,
    /// Definitions whose listing fails.
    unlistable: BTreeSet<String>,
    /// Definitions whose deletes fail without deleting.
    refuse_delete: BTreeSet<String>,
    /// Definitions whose deletes delete, then report an error (a timeout).
    delete_then_fail: BTreeSet<String>,
    /// Every changing call, in order: `update <def> <ver>` / `delete <def> <ver>`.
    calls: Mutex<Vec<String>>,
}

impl FakeGallery {
    fn with(versions: impl IntoIterator<Item = GalleryVersion>) -> Self {
        let g = FakeGallery::default();
        for v in versions {
            g.versions
                .lock()
                .unwrap()
                .entry(v.definition_id.clone())
                .or_default()
                .push(v);
        }
        g
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn listed(&self, definition: &str) -> Vec<String> {
        self.versions.lock().unwrap()[definition]
            .iter()
            .map(|v| v.version.to_string())
            .collect()
    }

    fn get(&self, definition: &str, v: &str) -> GalleryVersion {
        self.versions.lock().unwrap()[definition]
            .iter()
            .find(|g| g.version.to_string() == v)
            .cloned()
            .unwrap()
    }
}

#[async_trait]
impl Gallery for FakeGallery {
    async fn list_versions(&self, definition_id: &str) -> anyhow::Result<Vec<GalleryVersion>> {
        if self.unlistable.contains(definition_id) {
            anyhow::bail!("503 from the gallery");
        }
        Ok(self
            .versions
            .lock()
            .unwrap()
            .get(definition_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn update_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
        update: &VersionUpdate,
    ) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("update {definition_id} {version}"));
        let mut all = self.versions.lock().unwrap();
        let v = all
            .get_mut(definition_id)
            .and_then(|vs| vs.iter_mut().find(|v| v.version == version))
            .ok_or_else(|| anyhow::anyhow!("404 no version {version}"))?;
        if let Some(x) = update.exclude_from_latest {
            v.exclude_from_latest = x;
        }
        if let Some(eol) = update.end_of_life {
            v.end_of_life = Some(eol);
        }
        Ok(())
    }

    async fn delete_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete {definition_id} {version}"));
        if self.refuse_delete.contains(definition_id) {
            anyhow::bail!("409 the resource group is locked");
        }
        if let Some(vs) = self.versions.lock().unwrap().get_mut(definition_id) {
            vs.retain(|v| v.version != version);
        }
        if self.delete_then_fail.contains(definition_id) {
            anyhow::bail!("timed out waiting for the delete operation");
        }
        Ok(())
    }
}

struct FakeInventory(Result<InUseSet, String>);

#[async_trait]
impl Inventory for FakeInventory {
    async fn in_use(&self) -> anyhow::Result<InUseSet> {
        self.0.clone().map_err(anyhow::Error::msg)
    }
}

fn nothing_in_use() -> FakeInventory {
    FakeInventory(Ok(InUseSet::default()))
}

fn target(definition: &str, policy: RetentionPolicy) -> RetentionTarget {
    RetentionTarget {
        pipeline: "golden".into(),
        definition_id: definition.into(),
        policy,
        status: DefinitionStatus::Idle,
    }
}

fn keep_one() -> RetentionPolicy {
    RetentionPolicy {
        keep_latest: 1,
        ..RetentionPolicy::default()
    }
}

async fn statuses(db: &SqliteStore) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = db
        .audit(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.version, e.action, e.status))
        .collect();
    rows.reverse();
    rows
}

fn triple(v: &str, a: &str, s: &str) -> (String, String, String) {
    (v.into(), a.into(), s.into())
}

#[tokio::test]
async fn an_inventory_error_aborts_the_run_before_any_change() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([
        version(WIN, "1.0.2", 10),
        version(WIN, "1.0.1", 60),
        expired(WIN, "1.0.0"),
    ]);
    let inventory = FakeInventory(Err("Resource Graph: partial result".into()));
    let targets = [target(WIN, keep_one())];

    let err = apply(&db, &gallery, &inventory, &targets, now(), false)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("partial result"), "{err:#}");
    assert!(plan_all(&gallery, &inventory, &targets, now())
        .await
        .is_err());
    assert_eq!(gallery.calls(), Vec::<String>::new());
    assert_eq!(gallery.listed(WIN), ["1.0.2", "1.0.1", "1.0.0"]);
    assert!(db.audit(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dry_run_records_the_steps_and_changes_nothing() {
    for (policy_dry, forced) in [(true, false), (false, true)] {
        let db = SqliteStore::new(Db::open_in_memory().unwrap());
        let gallery = FakeGallery::with([
            version(WIN, "1.0.2", 10),
            version(WIN, "1.0.1", 60),
            expired(WIN, "1.0.0"),
        ]);
        let policy = RetentionPolicy {
            dry_run: policy_dry,
            ..keep_one()
        };
        let run = apply(
            &db,
            &gallery,
            &nothing_in_use(),
            &[target(WIN, policy)],
            now(),
            forced,
        )
        .await
        .unwrap();

        assert_eq!(gallery.calls(), Vec::<String>::new());
        assert_eq!(gallery.get(WIN, "1.0.1"), version(WIN, "1.0.1", 60));
        assert_eq!(run.applied.len(), 2);
        assert!(run.applied.iter().all(|s| s.outcome == StepOutcome::DryRun));
        assert_eq!(
            statuses(&db).await,
            [
                triple("1.0.0", "delete", "dry-run"),
                triple("1.0.1", "deprecate", "dry-run")
            ]
        );
    }
}

#[tokio::test]
async fn deprecation_then_deletion_happen_on_separate_runs() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([version(WIN, "1.0.1", 10), version(WIN, "1.0.0", 60)]);
    let targets = [target(WIN, keep_one())];

    let first = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    assert_eq!(first.applied.len(), 1);
    let deprecated = gallery.get(WIN, "1.0.0");
    assert!(deprecated.exclude_from_latest);
    assert_eq!(deprecated.end_of_life, Some(now() + TimeDelta::days(7)));

    // During the grace period nothing happens.
    let waiting = apply(
        &db,
        &gallery,
        &nothing_in_use(),
        &targets,
        now() + TimeDelta::days(3),
        false,
    )
    .await
    .unwrap();
    assert!(waiting.applied.is_empty());

    let later = now() + TimeDelta::days(8);
    let last = apply(&db, &gallery, &nothing_in_use(), &targets, later, false)
        .await
        .unwrap();
    assert_eq!(last.applied[0].action, Action::Delete);
    assert_eq!(gallery.listed(WIN), ["1.0.1"]);
    assert_eq!(
        gallery.calls(),
        [format!("update {WIN} 1.0.0"), format!("delete {WIN} 1.0.0")]
    );
}

#[tokio::test]
async fn a_run_changes_at_most_its_cap_and_the_next_run_finishes_the_rest() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let n = MAX_CHANGES_PER_RUN + 20;
    let mut versions: Vec<GalleryVersion> =
        (0..n).map(|i| expired(WIN, &format!("1.0.{i}"))).collect();
    versions.push(version(WIN, "2.0.0", 1));
    let gallery = FakeGallery::with(versions);
    let policy = RetentionPolicy {
        max_deletes_per_run: 1000,
        ..keep_one()
    };
    let targets = [target(WIN, policy)];

    let first = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    assert_eq!(first.applied.len(), MAX_CHANGES_PER_RUN);
    assert_eq!(first.deferred, 20);
    // Oldest first: what waits is the newest of the expired.
    assert_eq!(gallery.calls()[0], format!("delete {WIN} 1.0.0"));
    let second = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    assert_eq!(second.applied.len(), 20);
    assert_eq!(second.deferred, 0);
    assert_eq!(gallery.calls().len(), n);
    assert_eq!(gallery.listed(WIN), ["2.0.0"]);
}

#[tokio::test]
async fn applying_twice_deletes_once() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([version(WIN, "1.0.1", 10), expired(WIN, "1.0.0")]);
    let targets = [target(WIN, keep_one())];

    let first = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    let second = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();

    assert_ne!(first.run_id, second.run_id);
    assert_eq!(gallery.calls(), [format!("delete {WIN} 1.0.0")]);
    assert!(second.applied.is_empty());
    assert_eq!(statuses(&db).await, [triple("1.0.0", "delete", "done")]);
}

#[tokio::test]
async fn a_delete_that_acted_but_reported_an_error_is_not_repeated() {
    // The gallery deleted the version but the call timed out (or the
    // process died right after): the next run finds it gone.
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery {
        delete_then_fail: [WIN.to_string()].into(),
        ..FakeGallery::with([version(WIN, "1.0.1", 10), expired(WIN, "1.0.0")])
    };
    let targets = [target(WIN, keep_one())];

    let first = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    assert_eq!(first.failures().count(), 1);
    apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    assert_eq!(gallery.calls(), [format!("delete {WIN} 1.0.0")]);
}

#[tokio::test]
async fn a_failing_delete_is_recorded_and_other_definitions_go_on() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery {
        refuse_delete: [WIN.to_string()].into(),
        ..FakeGallery::with([
            version(WIN, "1.0.1", 10),
            expired(WIN, "1.0.0"),
            version(LINUX, "2.0.1", 10),
            expired(LINUX, "2.0.0"),
        ])
    };
    let targets = [target(WIN, keep_one()), target(LINUX, keep_one())];

    let run = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();

    let failed: Vec<_> = run.failures().map(|s| s.definition_id.as_str()).collect();
    assert_eq!(failed, [WIN]);
    assert_eq!(gallery.listed(LINUX), ["2.0.1"]);
    assert_eq!(
        statuses(&db).await,
        [
            triple("1.0.0", "delete", "failed"),
            triple("2.0.0", "delete", "done")
        ]
    );
    let rows = db.audit(10).await.unwrap();
    assert!(
        rows[1]
            .reason
            .ends_with("— failed: 409 the resource group is locked"),
        "{}",
        rows[1].reason
    );
}

#[tokio::test]
async fn a_definition_that_cannot_be_listed_is_skipped_and_others_go_on() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery {
        unlistable: [WIN.to_string()].into(),
        ..FakeGallery::with([version(LINUX, "2.0.1", 10), expired(LINUX, "2.0.0")])
    };
    let targets = [target(WIN, keep_one()), target(LINUX, keep_one())];

    let run = apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();

    assert_eq!(
        run.plans[0].skipped.as_ref().unwrap().to_string(),
        "the versions could not be listed: 503 from the gallery"
    );
    assert_eq!(gallery.calls(), [format!("delete {LINUX} 2.0.0")]);
}

#[tokio::test]
async fn versions_listed_under_another_definition_are_ignored() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([version(WIN, "1.0.1", 10), expired(WIN, "1.0.0")]);
    // A misbehaving listing: WIN's answer includes a LINUX version, newer
    // than anything WIN has and not excluded from latest.
    gallery
        .versions
        .lock()
        .unwrap()
        .get_mut(WIN)
        .unwrap()
        .push(version(LINUX, "9.0.0", 90));

    let run = apply(
        &db,
        &gallery,
        &nothing_in_use(),
        &[target(
            WIN,
            RetentionPolicy {
                keep_latest: 0,
                ..keep_one()
            },
        )],
        now(),
        false,
    )
    .await
    .unwrap();

    // 1.0.1 is still WIN's latest, and 9.0.0 is neither planned nor touched.
    let planned: Vec<String> = run.plans[0]
        .items
        .iter()
        .map(|i| i.version.to_string())
        .collect();
    assert_eq!(planned, ["1.0.1", "1.0.0"]);
    assert_eq!(gallery.calls(), [format!("delete {WIN} 1.0.0")]);
}

#[tokio::test]
async fn a_definition_two_pipelines_share_is_planned_once_or_not_at_all() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    // 0.9.0 is hotfix's own: the two pipelines planned together own the
    // definition together, so it is planned like golden's versions.
    let mut hotfix_version = expired(WIN, "0.9.0");
    hotfix_version
        .tags
        .insert("kiln.pipeline".into(), "hotfix".into());
    let gallery = FakeGallery::with([
        version(WIN, "1.0.1", 10),
        expired(WIN, "1.0.0"),
        hotfix_version,
    ]);
    let hotfix = RetentionTarget {
        pipeline: "hotfix".into(),
        definition_id: WIN.to_uppercase(),
        ..target(WIN, keep_one())
    };

    // Same policy: planned once, by the first target.
    let same = [target(WIN, keep_one()), hotfix.clone()];
    let plans = plan_all(&gallery, &nothing_in_use(), &same, now())
        .await
        .unwrap();
    let changes: Vec<(String, &str)> = plans[0]
        .changes()
        .map(|i| (i.version.to_string(), i.action.as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            ("1.0.0".to_string(), "delete"),
            ("0.9.0".to_string(), "delete")
        ]
    );
    assert_eq!(
        plans[1].skipped,
        Some(Skip::PlannedWith {
            pipeline: "golden".into()
        })
    );

    // Same policy, but the other pipeline is publishing: wait for it.
    let busy = [
        target(WIN, keep_one()),
        RetentionTarget {
            status: DefinitionStatus::Publishing,
            ..hotfix.clone()
        },
    ];
    let plans = plan_all(&gallery, &nothing_in_use(), &busy, now())
        .await
        .unwrap();
    assert_eq!(plans[0].skipped, Some(Skip::Publishing));

    // Different policies: neither wins, nothing is touched.
    let differ = [
        target(WIN, keep_one()),
        RetentionTarget {
            policy: RetentionPolicy::default(),
            ..hotfix
        },
    ];
    let run = apply(&db, &gallery, &nothing_in_use(), &differ, now(), false)
        .await
        .unwrap();
    assert!(run.plans.iter().all(|p| matches!(
        &p.skipped,
        Some(Skip::PoliciesDiffer { pipelines }) if pipelines == &["golden", "hotfix"]
    )));
    assert_eq!(gallery.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn versions_in_use_are_left_alone_by_the_executor() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([version(WIN, "1.0.1", 10), expired(WIN, "1.0.0")]);
    let mut in_use = InUseSet::default();
    in_use.add_reference(&format!("{WIN}/versions/1.0.0"));

    let run = apply(
        &db,
        &gallery,
        &FakeInventory(Ok(in_use)),
        &[target(WIN, keep_one())],
        now(),
        false,
    )
    .await
    .unwrap();

    assert!(run.applied.is_empty());
    assert_eq!(gallery.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn the_audit_lists_newest_first_with_reason_and_policy_and_no_keeps() {
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with([
        version(WIN, "1.0.2", 10),
        version(WIN, "1.0.1", 60),
        expired(WIN, "1.0.0"),
    ]);
    let run = apply(
        &db,
        &gallery,
        &nothing_in_use(),
        &[target(WIN, keep_one())],
        now(),
        false,
    )
    .await
    .unwrap();

    let rows = db.audit(10).await.unwrap();
    assert_eq!(rows.len(), 2, "keeps are not audited");
    assert!(rows[0].seq > rows[1].seq);
    assert_eq!(
        (rows[0].version.as_str(), rows[0].action.as_str()),
        ("1.0.1", "deprecate")
    );
    assert_eq!(rows[0].run_id, run.run_id);
    assert_eq!(rows[0].at, "2026-06-01T12:00:00.000Z");
    assert_eq!(rows[0].definition, WIN);
    assert_eq!(
        rows[0].reason,
        "beyond the newest 1 versions and older than 7 days: exclude from latest, end of life 2026-06-08 12:00 UTC"
    );
    assert_eq!(rows[0].policy["keepLatest"], 1);
    assert_eq!(rows[0].policy["pinTag"], "kiln.pin");
    assert_eq!(db.audit(1).await.unwrap(), rows[..1]);
}

/// A version kiln did not publish for the planned pipeline: untagged
/// (imported by hand) or tagged with another pipeline.
fn foreign(definition: &str, v: &str, days_old: i64, pipeline: Option<&str>) -> GalleryVersion {
    let mut g = version(definition, v, days_old);
    g.tags.clear();
    if let Some(p) = pipeline {
        g.tags.insert("kiln.pipeline".into(), p.into());
    }
    g
}

#[tokio::test]
async fn versions_the_pipeline_did_not_publish_are_never_touched_unless_the_policy_manages_them() {
    let versions = [
        version(WIN, "1.0.5", 10),
        foreign(WIN, "1.0.4", 80, None),
        version(WIN, "1.0.3", 90),
        foreign(WIN, "1.0.2", 90, Some("other")),
        GalleryVersion {
            tags: BTreeMap::new(),
            ..expired(WIN, "1.0.1")
        },
        expired(WIN, "1.0.0"),
    ];
    let db = SqliteStore::new(Db::open_in_memory().unwrap());
    let gallery = FakeGallery::with(versions.clone());
    let targets = [target(WIN, keep_one())];
    let plans = plan_all(&gallery, &nothing_in_use(), &targets, now())
        .await
        .unwrap();
    let actions: Vec<(String, &str, String)> = plans[0]
        .items
        .iter()
        .map(|i| {
            (
                i.version.to_string(),
                i.action.as_str(),
                i.reason.to_string(),
            )
        })
        .collect();
    let kept = "kept unless the policy says foreignVersions: manage";
    assert_eq!(
        actions,
        [
            ("1.0.5".to_string(), "keep", "current latest (newest version not excluded from latest)".to_string()),
            ("1.0.4".to_string(), "keep", format!("not published by kiln (no kiln.pipeline tag); {kept}")),
            // The newest of golden's own beyond keepLatest 1: surplus.
            ("1.0.3".to_string(), "deprecate", "beyond the newest 1 versions and older than 7 days: exclude from latest, end of life 2026-06-08 12:00 UTC".to_string()),
            ("1.0.2".to_string(), "keep", format!("published by pipeline other, not this one; {kept}")),
            // Deprecated once and past its grace period, yet not golden's.
            ("1.0.1".to_string(), "keep", format!("not published by kiln (no kiln.pipeline tag); {kept}")),
            ("1.0.0".to_string(), "delete", "deprecated and grace period ended 2026-05-31 12:00 UTC".to_string()),
        ]
    );
    apply(&db, &gallery, &nothing_in_use(), &targets, now(), false)
        .await
        .unwrap();
    let sorted = |mut calls: Vec<String>| {
        calls.sort();
        calls
    };
    assert_eq!(
        sorted(gallery.calls()),
        [format!("delete {WIN} 1.0.0"), format!("update {WIN} 1.0.3")]
    );

    // Said explicitly, the policy plans them as its own.
    let gallery = FakeGallery::with(versions);
    let manage = RetentionPolicy {
        foreign_versions: crate::domain::retention::ForeignVersions::Manage,
        ..keep_one()
    };
    apply(
        &db,
        &gallery,
        &nothing_in_use(),
        &[target(WIN, manage)],
        now(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        sorted(gallery.calls()),
        [
            format!("delete {WIN} 1.0.0"),
            format!("delete {WIN} 1.0.1"),
            format!("update {WIN} 1.0.2"),
            format!("update {WIN} 1.0.3"),
            format!("update {WIN} 1.0.4"),
        ]
    );
}
