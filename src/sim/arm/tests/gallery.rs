//! Gallery versions (replication, paging, PATCH, DELETE) and marketplace lists.

use chrono::TimeZone;
use reqwest::Method;
use serde_json::{json, Value};

use super::{template, Sim, DEF, SUB};
use crate::domain::template::Source;
use crate::domain::version::ImageVersion;
use crate::ports::{BaseCatalog, Gallery, ImageBuilder, VersionUpdate};
use crate::providers::azure::marketplace::AzureCatalog;

fn v(s: &str) -> ImageVersion {
    s.parse().unwrap()
}

async fn seed_versions(sim: &Sim, names: &[&str]) {
    for n in names {
        sim.control(
            "gallery/versions",
            json!({"id": format!("{DEF}/versions/{n}"), "targetRegions": ["westeurope", "North Europe"],
                   "publishedDate": "2026-11-01T00:00:00Z", "tags": {"kiln.pipeline": "ubuntu"}}),
        )
        .await;
    }
}

#[tokio::test]
async fn a_version_appears_at_distributing_and_replicates_region_by_region() {
    let sim = Sim::start().await;
    sim.provisioned("t1", &template("1.2.0")).await;
    sim.started("t1").await;
    sim.advance(23);
    assert!(sim
        .gallery()
        .get_version(DEF, "1.2.0")
        .await
        .unwrap()
        .is_none());
    sim.advance(2);
    let got = sim
        .gallery()
        .get_version(DEF, "1.2.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.provisioning_state, "Creating");
    let states: Vec<(&str, &str)> = got
        .replication
        .iter()
        .map(|r| (r.region.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("westeurope", "Replicating"),
            ("northeurope", "Replicating")
        ]
    );
    assert_eq!(got.replication[1].replica_count, 2);
    // Without $expand the list carries no replication status, as the spec says.
    let page: Value = sim
        .call(
            Method::GET,
            &format!("{DEF}/versions?api-version=2025-03-03"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(page["value"][0]["properties"]
        .get("replicationStatus")
        .is_none());
    sim.advance(5);
    let got = sim
        .gallery()
        .get_version(DEF, "1.2.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.provisioning_state, "Succeeded");
    assert!(got.replication.iter().all(|r| r.state == "Completed"));
    assert_eq!(
        got.published,
        Some(super::t0() + chrono::Duration::minutes(24) + chrono::Duration::seconds(60))
    );
}

#[tokio::test]
async fn version_lists_page_through_next_link() {
    let sim = Sim::start().await;
    seed_versions(&sim, &["1.0.10", "1.0.2", "1.0.1", "2.0.0", "1.1.0"]).await;
    let first: Value = sim
        .call(
            Method::GET,
            &format!("{DEF}/versions?api-version=2025-03-03"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    assert!(first["nextLink"].as_str().unwrap().starts_with(&sim.url));
    let all = sim.gallery().list_versions(DEF).await.unwrap();
    let names: Vec<String> = all.iter().map(|g| g.version.to_string()).collect();
    assert_eq!(names, ["1.0.1", "1.0.2", "1.0.10", "1.1.0", "2.0.0"]);
    assert!(all
        .iter()
        .all(|g| g.provisioning_state == "Succeeded" && g.replication.len() == 2));
}

#[tokio::test]
async fn a_patch_changes_the_publishing_profile_and_tags_as_an_operation() {
    let sim = Sim::start().await;
    seed_versions(&sim, &["1.0.0"]).await;
    let raw = sim
        .call(
            Method::PATCH,
            &format!("{DEF}/versions/1.0.0?api-version=2025-03-03"),
            Some(json!({"properties": {"publishingProfile": {"excludeFromLatest": true}, "storageProfile": {}}})),
        )
        .await;
    assert_eq!(raw.status(), 200);
    assert!(raw.headers().contains_key("azure-asyncoperation"));
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["properties"]["provisioningState"], "Updating");

    let eol = chrono::Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap();
    let update = VersionUpdate {
        exclude_from_latest: Some(false),
        end_of_life: Some(eol),
        tags: Some([("kiln.pin".to_string(), "keep".to_string())].into()),
    };
    sim.gallery()
        .update_version(DEF, v("1.0.0"), &update)
        .await
        .unwrap();
    // kiln does not follow the update's operation; the sim applies it at
    // once and reads Updating for 10 s.
    sim.advance(1);
    let got = sim
        .gallery()
        .get_version(DEF, "1.0.0")
        .await
        .unwrap()
        .unwrap();
    assert!(!got.exclude_from_latest);
    assert_eq!(got.end_of_life, Some(eol));
    assert_eq!(got.tags.keys().collect::<Vec<_>>(), ["kiln.pin"]);
    assert_eq!(got.provisioning_state, "Succeeded");
}

#[tokio::test]
async fn a_delete_is_a_long_running_operation_and_a_second_one_finds_nothing() {
    let sim = Sim::start().await;
    seed_versions(&sim, &["1.0.0", "1.0.1"]).await;
    let path = format!("{DEF}/versions/1.0.0?api-version=2025-03-03");
    let r = sim.call(Method::DELETE, &path, None).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("/capsOperations/") && location.contains("monitor=true"),
        "{location}"
    );
    let doc: Value = sim
        .call(Method::GET, &path, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["properties"]["provisioningState"], "Deleting");
    // kiln starts the deletion and does not wait for it.
    sim.gallery().delete_version(DEF, v("1.0.1")).await.unwrap();
    let going = sim
        .gallery()
        .get_version(DEF, "1.0.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(going.provisioning_state, "Deleting");
    sim.advance(1);
    assert!(sim
        .gallery()
        .get_version(DEF, "1.0.1")
        .await
        .unwrap()
        .is_none());
    sim.gallery().delete_version(DEF, v("1.0.1")).await.unwrap();
    sim.advance(1);
    assert_eq!(sim.call(Method::GET, &path, None).await.status(), 404);
}

#[tokio::test]
async fn marketplace_lists_come_from_seeded_image_lines() {
    let sim = Sim::start().await;
    sim.control(
        "marketplace",
        json!({"location": "westeurope", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server",
               "versions": [{"name": "24.04.202409120"}, {"name": "24.04.202410100", "imageState": "Deprecated"}, {"name": "24.04.202409300"}]}),
    )
    .await;
    let list_path = format!("/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/publishers/Canonical/artifacttypes/vmimage/offers/ubuntu-24_04-lts/skus/server/versions?api-version=2024-11-01");
    let list: Value = sim
        .call(Method::GET, &list_path, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_array(), "a bare array, as the spec says: {list}");
    let arm = sim.client();
    let catalog = AzureCatalog::new(
        arm.clone(),
        SUB,
        "westeurope",
        crate::providers::azure::gallery::AzureGallery::new(arm),
    );
    let ubuntu = Source::PlatformImage {
        publisher: "Canonical".into(),
        offer: "ubuntu-24_04-lts".into(),
        sku: "server".into(),
        version: "latest".into(),
        exact_version: None,
    };
    let got = catalog.versions(&ubuntu).await.unwrap();
    let flagged: Vec<(&str, bool)> = got
        .iter()
        .map(|v| (v.version.as_str(), v.deprecated))
        .collect();
    assert_eq!(
        flagged,
        [
            ("24.04.202409120", false),
            ("24.04.202410100", true),
            ("24.04.202409300", false)
        ]
    );
    let other = Source::PlatformImage {
        publisher: "Canonical".into(),
        offer: "ubuntu-22_04-lts".into(),
        sku: "server".into(),
        version: "latest".into(),
        exact_version: None,
    };
    assert!(catalog.versions(&other).await.is_err());
}

#[tokio::test]
async fn a_run_canceled_while_distributing_leaves_its_version_failed() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.3.0")).await;
    sim.started("t1").await;
    sim.advance(26);
    b.cancel("t1").await.unwrap();
    sim.advance(10);
    let got = sim
        .gallery()
        .get_version(DEF, "1.3.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.provisioning_state, "Failed");
    assert!(
        got.replication.iter().all(|r| r.state == "Failed"),
        "{:?}",
        got.replication
    );
    assert!(b
        .run_outputs("t1")
        .await
        .unwrap()
        .iter()
        .all(|o| o.provisioning_state == "Failed"));
}
