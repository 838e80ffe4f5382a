//! Retention through the Azure face: versions consumers run are kept, the
//! rest are deprecated and later deleted, every step is audited, and an
//! inventory that cannot see a listed subscription changes nothing.

use chrono::{Duration, TimeZone, Utc};
use serde_json::{json, Value};

use kiln::sim::faults::Outcome;
use kiln::sim::server::SimOptions;

use super::harness::{bounded, tiny, World};

/// A subscription the inventory is told to read besides the sim's own.
const CONSUMERS: &str = "22222222-2222-2222-2222-222222222222";

/// The tiny pipeline's gallery definition, and the seeded versions: 1.0.4 is
/// the latest, a VM runs 1.0.1 through `latest`, a scale set instance runs
/// 1.0.2; 1.0.0 and 1.0.3 are surplus.
const SEEDED: [&str; 5] = ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"];
const IN_USE: [&str; 3] = ["1.0.1", "1.0.2", "1.0.4"];
const SURPLUS: [&str; 2] = ["1.0.0", "1.0.3"];

fn definition(sub: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/tiny")
}

/// The tiny pipeline with a policy that keeps only the latest and deletes
/// at the next run after deprecating (`graceDays: 0`: the sim's clock
/// cannot be moved forward, and a real grace period would take hours of
/// wall time even at 600×).
async fn world() -> World {
    // Far from the retention timer's 03:00: the runs are the API's.
    world_from(Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()).await
}

async fn world_from(start: chrono::DateTime<Utc>) -> World {
    let options = SimOptions {
        start: Some(start),
        ..SimOptions::new(600)
    };
    let w = World::with_env(
        options,
        &[(
            "KILN_AZURE_INVENTORY_SUBSCRIPTIONS",
            format!("00000000-0000-0000-0000-000000000000,{CONSUMERS}"),
        )],
        |sub| {
            let mut t = tiny(sub);
            t["kiln"]["retention"] = json!({
                "keepLatest": 1, "minAgeDays": 14, "pinTag": "kiln.pin", "protectInUse": true,
                "deprecate": { "graceDays": 0 }, "maxDeletesPerRun": 5, "dryRun": false
            });
            vec![("tiny".into(), t)]
        },
    )
    .await;
    let sub = w.subscription();
    let published = w.now() - Duration::days(60);
    for (n, v) in SEEDED.iter().enumerate() {
        w.control(
            "/_sim/arm/gallery/versions",
            json!({
                "id": format!("{}/versions/{v}", definition(&sub)),
                "publishedDate": published + Duration::hours(n as i64),
                "tags": {
                    "kiln.pipeline": "tiny", "kiln.build": format!("seeded-{n}"),
                    "kiln.source": "kiln:busybox:tiny", "kiln.sourceVersion": "1.0.0"
                }
            }),
        )
        .await;
    }
    w.control(
        "/_sim/arm/resources",
        json!({ "table": "Resources", "resource": {
            "id": format!("/subscriptions/{sub}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/vm-app-1"),
            "type": "Microsoft.Compute/virtualMachines",
            "location": "westeurope",
            "properties": { "storageProfile": { "imageReference": {
                "id": format!("{}/versions/latest", definition(&sub)),
                "exactVersion": "1.0.1"
            } } }
        } }),
    )
    .await;
    w.control(
        "/_sim/arm/resources",
        json!({ "table": "ComputeResources", "resource": {
            "id": format!("/subscriptions/{sub}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-app/virtualMachines/3"),
            "type": "microsoft.compute/virtualmachinescalesets/virtualmachines",
            "location": "westeurope",
            "properties": { "storageProfile": { "imageReference": {
                "id": format!("{}/versions/1.0.2", definition(&sub))
            } } }
        } }),
    )
    .await;
    w
}

/// The tiny definition's versions by name.
async fn versions(w: &World) -> std::collections::BTreeMap<String, Value> {
    w.tiny_versions()
        .await
        .into_iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect()
}

/// PATCHes and DELETEs kiln sent for version `v` of the tiny definition.
fn changes_to(w: &World, v: &str) -> Vec<String> {
    w.arm_requests(&format!("/images/tiny/versions/{v}"))
        .into_iter()
        .filter(|r| r.method == "PATCH" || r.method == "DELETE")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

async fn audit(w: &World) -> Vec<Value> {
    let a = w.api_get("/api/retention/audit").await;
    a.as_array()
        .or_else(|| a["entries"].as_array())
        .cloned()
        .unwrap_or_default()
}

async fn apply(w: &World) -> Value {
    let r = w.api_post("/api/retention/apply", json!({})).await;
    assert_eq!(r.status(), 200, "retention apply");
    r.json().await.unwrap()
}

#[tokio::test]
async fn retention_keeps_what_consumers_run_deprecates_the_rest_then_deletes_it() {
    bounded(async {
        let w = world().await;

        // First run: the surplus is deprecated, in place.
        let run = apply(&w).await;
        let v = w
            .eventually("the deprecations to settle", || async {
                let v = versions(&w).await;
                SURPLUS
                    .iter()
                    .all(|s| v[*s]["properties"]["provisioningState"] == "Succeeded")
                    .then_some(v)
            })
            .await;
        for s in SURPLUS {
            let p = &v[s]["properties"]["publishingProfile"];
            assert_eq!(p["excludeFromLatest"], true, "{s} deprecated: {run}");
            assert!(
                p["endOfLifeDate"].is_string(),
                "{s} has an end of life: {p}"
            );
            assert!(
                changes_to(&w, s).iter().all(|c| c.starts_with("PATCH")),
                "{s} only patched in the first run"
            );
        }
        for u in IN_USE {
            let p = &v[u]["properties"]["publishingProfile"];
            assert_eq!(p["excludeFromLatest"], false, "{u} kept: {run}");
            assert!(p.get("endOfLifeDate").is_none(), "{u} kept: {p}");
        }

        // A later run, past their end of life: the deprecated versions go.
        let run = apply(&w).await;
        w.eventually("the deprecated versions to be deleted", || async {
            let v = versions(&w).await;
            SURPLUS.iter().all(|s| !v.contains_key(*s)).then_some(())
        })
        .await;
        let left: Vec<String> = versions(&w).await.into_keys().collect();
        assert_eq!(left, IN_USE, "{run}");
        for u in IN_USE {
            assert!(changes_to(&w, u).is_empty(), "{u}: {:?}", changes_to(&w, u));
        }

        // The audit has each step, done, and nothing for what was kept.
        let audit = audit(&w).await;
        for (action, s) in SURPLUS
            .iter()
            .flat_map(|s| [("deprecate", *s), ("delete", *s)])
        {
            assert!(
                audit
                    .iter()
                    .any(|e| e["version"] == s && e["action"] == action && e["status"] == "done"),
                "{action} {s} audited as done: {audit:?}"
            );
        }
        assert!(
            audit
                .iter()
                .all(|e| !IN_USE.contains(&e["version"].as_str().unwrap_or_default())),
            "{audit:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn retention_changes_nothing_when_a_listed_subscription_cannot_be_read() {
    bounded(async {
        let w = world().await;
        w.fault(json!({ "kind": "unreadableSubscription", "subscription": CONSUMERS }))
            .await;

        let r = w.api_post("/api/retention/apply", json!({})).await;
        assert_eq!(r.status(), 500, "the run aborts: {:?}", r.text().await);
        // It stopped at the inventory: the unreadable subscription was asked
        // about, and no version was touched.
        let refused = w
            .arm_requests(&format!("/subscriptions/{CONSUMERS}"))
            .into_iter()
            .any(|r| r.method == "GET" && matches!(r.outcome, Outcome::Status(403)));
        assert!(refused, "{}", w.diagnose());
        for v in SEEDED {
            assert!(changes_to(&w, v).is_empty(), "{v}: {:?}", changes_to(&w, v));
        }
        let v = versions(&w).await;
        for s in SEEDED {
            assert_eq!(
                v[s]["properties"]["publishingProfile"]["excludeFromLatest"], false,
                "{s}"
            );
        }
        assert!(
            audit(&w).await.is_empty(),
            "nothing planned, nothing audited"
        );
    })
    .await;
}

#[tokio::test]
async fn the_nightly_retention_timer_deprecates_the_surplus() {
    bounded(async {
        // A quarter of an hour (sim) before the `retention` timer's 03:00.
        let three = Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap();
        let w = world_from(three - Duration::minutes(15)).await;
        assert!(w.now() < three, "seeded only at {}", w.now());
        assert!(audit(&w).await.is_empty(), "nothing before the timer");
        let fired = w.timer_firings("retention", 1).await;
        assert!(fired >= three);
        let ok = w
            .host
            .invocations()
            .iter()
            .any(|i| i.function == "retention" && i.succeeded());
        assert!(ok, "{}", w.diagnose());
        let v = w
            .eventually("the deprecations to settle", || async {
                let v = versions(&w).await;
                SURPLUS
                    .iter()
                    .all(|s| v[*s]["properties"]["provisioningState"] == "Succeeded")
                    .then_some(v)
            })
            .await;
        for s in SURPLUS {
            assert_eq!(
                v[s]["properties"]["publishingProfile"]["excludeFromLatest"], true,
                "{s}"
            );
        }
        for u in IN_USE {
            assert!(changes_to(&w, u).is_empty(), "{u}: {:?}", changes_to(&w, u));
        }
        let audit = audit(&w).await;
        assert_eq!(audit.len(), SURPLUS.len(), "{audit:?}");
    })
    .await;
}
