//! Retention end to end on the local provider: a dozen builds, consumers,
//! a pin, the plan, and two applies (deprecate, then delete).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use kiln::ports::{Gallery, VersionUpdate};

use crate::harness::{bounded, tiny, Factory, Options, SUB};

fn actions(plan: &Value) -> BTreeMap<String, String> {
    plan[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["version"].as_str().unwrap().to_string(),
                i["action"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_only_what_is_unused_unpinned_and_surplus() {
    bounded(async {
        let policy = json!({"retention": {"keepLatest": 3, "minAgeDays": 0, "deprecate": {"graceDays": 0}, "maxDeletesPerRun": 20}});
        let f = Factory::start(Options {
            pipelines: vec![tiny("fleet", policy)],
            ..Options::default()
        })
        .await;
        for i in 0..12 {
            let id = f.build("fleet", Some(&format!("b{i}"))).await;
            assert_eq!(
                f.wait_terminal(&id, Duration::from_secs(60)).await["state"],
                "succeeded"
            );
        }
        let def = format!("{SUB}/galleries/gal_test/images/fleet");
        f.provider
            .vm_create(&format!("{def}/versions/1.0.2"), "web-1")
            .await
            .unwrap();
        f.provider
            .vm_create(&format!("{def}/versions/1.0.5"), "web-2")
            .await
            .unwrap();
        let v4 = f
            .provider
            .list_versions(&def)
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.version.to_string() == "1.0.4")
            .unwrap();
        let mut tags = v4.tags.clone();
        tags.insert("kiln.pin".into(), "rollback target".into());
        f.provider
            .update_version(
                &def,
                v4.version,
                &VersionUpdate {
                    tags: Some(tags),
                    ..Default::default()
                },
            )
            .await
            .unwrap();

        let plan = f.get("/api/retention/plan").await;
        let expected_changes = ["1.0.0", "1.0.1", "1.0.3", "1.0.6", "1.0.7", "1.0.8"];
        let a = actions(&plan);
        assert_eq!(a.len(), 12, "{plan:#}");
        for (v, act) in &a {
            let want = if expected_changes.contains(&v.as_str()) {
                "deprecate"
            } else {
                "keep"
            };
            assert_eq!(act, want, "version {v}: {plan:#}");
        }
        // The plan changed nothing.
        assert!(f
            .provider
            .list_versions(&def)
            .await
            .unwrap()
            .iter()
            .all(|v| !v.exclude_from_latest));

        let (status, run) = f.post("/api/retention/apply", &json!({})).await;
        assert_eq!(status, 200, "{run}");
        let versions = f.provider.list_versions(&def).await.unwrap();
        for v in &versions {
            assert_eq!(
                v.exclude_from_latest,
                expected_changes.contains(&v.version.to_string().as_str()),
                "{v:?}"
            );
        }
        // The grace period (0 days) is over at the next run: deprecated versions go.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = actions(&f.get("/api/retention/plan").await);
        for v in expected_changes {
            assert_eq!(a[v], "delete", "{v}");
        }
        let (status, _) = f.post("/api/retention/apply", &json!({})).await;
        assert_eq!(status, 200);

        let mut left: Vec<String> = f
            .provider
            .list_versions(&def)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        left.sort_by_key(|v| v.parse::<kiln::domain::version::ImageVersion>().unwrap());
        assert_eq!(
            left,
            ["1.0.2", "1.0.4", "1.0.5", "1.0.9", "1.0.10", "1.0.11"]
        );
        assert_eq!(
            f.provider.vm_list().await.unwrap().len(),
            2,
            "consumers untouched"
        );
        let audit = f.get("/api/retention/audit").await;
        let done: Vec<(String, String)> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "done")
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["version"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            done.iter().filter(|(a, _)| a == "deprecate").count(),
            6,
            "{audit:#}"
        );
        assert_eq!(
            done.iter().filter(|(a, _)| a == "delete").count(),
            6,
            "{audit:#}"
        );
        assert!(done
            .iter()
            .all(|(_, v)| expected_changes.contains(&v.as_str())));
        // A third run finds nothing to do.
        let a = actions(&f.get("/api/retention/plan").await);
        assert!(a.values().all(|act| act == "keep"), "{a:?}");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staged_version_is_promoted_and_pinned_through_the_api() {
    bounded(async {
        let f = Factory::start(Options {
            pipelines: vec![tiny(
                "staged",
                json!({"promotion": {"excludeFromLatest": true}, "retention": {"pinTag": "keep-me"}}),
            )],
            ..Options::default()
        })
        .await;
        let id = f.build("staged", None).await;
        assert_eq!(
            f.wait_terminal(&id, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
        let def = format!("{SUB}/galleries/gal_test/images/staged");
        let version_id = format!("{def}/versions/1.0.0");
        let listed = f.provider.list_versions(&def).await.unwrap();
        assert!(
            listed[0].exclude_from_latest,
            "published excluded from latest, for a staged rollout"
        );

        let (status, v) = f
            .post("/api/gallery/promote", &json!({"versionId": version_id}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["excludeFromLatest"], false);
        let (status, v) = f
            .post(
                "/api/gallery/pin",
                &json!({"versionId": version_id, "reason": "rollback target"}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["tags"]["keep-me"], "rollback target",
            "the pipeline's pinTag is used"
        );
        assert_eq!(v["tags"]["kiln.build"], json!(id), "lineage tags are kept");
        let (_, v) = f
            .post(
                "/api/gallery/pin",
                &json!({"versionId": version_id, "unpin": true}),
            )
            .await;
        assert!(v["tags"].get("keep-me").is_none());

        let (status, v) = f
            .post(
                "/api/gallery/promote",
                &json!({"versionId": format!("{def}/versions/9.9.9")}),
            )
            .await;
        assert_eq!(status, 404);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("no gallery image version"),
            "{v}"
        );
        let (status, _) = f
            .post(
                "/api/gallery/pin",
                &json!({"versionId": version_id, "colour": "red"}),
            )
            .await;
        assert_eq!(status, 400);
        let (status, v) = f
            .post("/api/gallery/promote", &json!({"versionId": "not-an-id"}))
            .await;
        assert_eq!(status, 400, "{v}");
        f.stop().await;
    })
    .await;
}
