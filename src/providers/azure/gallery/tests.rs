use chrono::TimeZone;
use serde_json::json;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::azure::arm::testing::client;

const DEF: &str = "/subscriptions/s/resourceGroups/myResourceGroup/providers/Microsoft.Compute/galleries/myGalleryName/images/myGalleryImageName";

fn list_page() -> Value {
    serde_json::from_str(include_str!(
        "../testdata/GalleryImageVersion_ListByGalleryImage.json"
    ))
    .unwrap()
}

fn with_replication() -> Value {
    serde_json::from_str(include_str!(
        "../testdata/GalleryImageVersion_Get_WithReplicationStatus.json"
    ))
    .unwrap()
}

fn gallery(server: &MockServer) -> AzureGallery {
    AzureGallery::new(client(&server.uri()).0)
}

#[tokio::test]
async fn versions_are_listed_across_pages_and_read_into_gallery_versions() {
    let server = MockServer::start().await;
    let first = list_page();
    // The example's nextLink points at `svchost:99`; the client keeps it on its own host.
    let mut second = list_page();
    second["value"][0]["name"] = json!("1.0.1");
    second["value"][0]["tags"] = json!({"kiln.build": "b-2"});
    second.as_object_mut().unwrap().remove("nextLink");
    Mock::given(method("GET"))
        .and(path(format!("{DEF}/versions")))
        .and(query_param("api-version", API_VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/subscriptions/subscriptionId/resourceGroups/myResourceGroup/providers/Microsoft.Compute/galleries/myGalleryName/images/myGalleryImageName/versions",
        ))
        .and(query_param("$skiptoken", "token/Subscriptions/subscriptionId/ResourceGroups/myResourceGroup/galleries/myGalleryName/images/myGalleryImageName/versions/myGalleryImageVersionName"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second))
        .expect(1)
        .mount(&server)
        .await;
    let got = gallery(&server).list_versions(DEF).await.unwrap();
    assert_eq!(got.len(), 2);
    let v = &got[0];
    assert_eq!(v.definition_id, DEF);
    assert_eq!(v.version, ImageVersion::new(1, 0, 0));
    assert_eq!(
        v.published,
        Some(Utc.with_ymd_and_hms(2018, 1, 1, 0, 0, 0).unwrap())
    );
    assert!(!v.exclude_from_latest && !v.block_deletion_before_end_of_life);
    assert_eq!(v.end_of_life, None);
    assert_eq!(v.provisioning_state, "Succeeded");
    assert_eq!(
        v.replication,
        vec![
            RegionReplication {
                region: "westus".into(),
                replica_count: 1,
                state: "Completed".into()
            },
            RegionReplication {
                region: "eastus".into(),
                replica_count: 2,
                state: "Completed".into()
            },
        ]
    );
    assert_eq!(got[1].version, ImageVersion::new(1, 0, 1));
    assert_eq!(got[1].tags["kiln.build"], "b-2");
}

#[tokio::test]
async fn an_unfinished_version_is_fetched_with_its_replication_status() {
    let server = MockServer::start().await;
    let mut page = list_page();
    page.as_object_mut().unwrap().remove("nextLink");
    page["value"][0]["properties"]["provisioningState"] = json!("Creating");
    let mut full = with_replication();
    full["properties"]["provisioningState"] = json!("Creating");
    full["properties"]["replicationStatus"]["aggregatedState"] = json!("InProgress");
    full["properties"]["replicationStatus"]["summary"][1]["state"] = json!("Replicating");
    Mock::given(method("GET"))
        .and(path(format!("{DEF}/versions")))
        .respond_with(ResponseTemplate::new(200).set_body_json(page))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DEF}/versions/1.0.0")))
        .and(query_param("$expand", "ReplicationStatus"))
        .respond_with(ResponseTemplate::new(200).set_body_json(full))
        .expect(1)
        .mount(&server)
        .await;
    let got = gallery(&server).list_versions(DEF).await.unwrap();
    let states: Vec<(&str, &str)> = got[0]
        .replication
        .iter()
        .map(|r| (r.region.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![("westus", "Completed"), ("eastus", "Replicating")]
    );
    assert_eq!(got[0].replication[1].replica_count, 2);
}

#[tokio::test]
async fn a_staged_deprecation_patches_the_publishing_profile_without_waiting() {
    let server = MockServer::start().await;
    let v = format!("{DEF}/versions/1.0.0");
    Mock::given(method("GET"))
        .and(path(v.as_str()))
        .and(query_param_is_missing("$expand"))
        .respond_with(ResponseTemplate::new(200).set_body_json(with_replication()))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(v.as_str()))
        .and(query_param("api-version", API_VERSION))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Azure-AsyncOperation", "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/locations/westus/capsOperations/u1?api-version=2025-03-03")
                .set_body_json(json!({"properties": {"provisioningState": "Updating"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/subscriptions/s/providers/Microsoft.Compute/locations/westus/capsOperations/u1",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "Succeeded"})))
        .expect(0)
        .mount(&server)
        .await;
    let eol = Utc.with_ymd_and_hms(2026, 6, 30, 0, 0, 0).unwrap();
    gallery(&server)
        .update_version(
            DEF,
            ImageVersion::new(1, 0, 0),
            &VersionUpdate {
                exclude_from_latest: Some(true),
                end_of_life: Some(eol),
                tags: None,
            },
        )
        .await
        .unwrap();
    let patch = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "PATCH")
        .unwrap();
    let sent: Value = serde_json::from_slice(&patch.body).unwrap();
    assert_eq!(
        sent["properties"]["publishingProfile"],
        json!({"excludeFromLatest": true, "endOfLifeDate": "2026-06-30T00:00:00Z"})
    );
    assert_eq!(
        sent["properties"]["storageProfile"],
        with_replication()["properties"]["storageProfile"]
    );
}

#[tokio::test]
async fn deleting_is_started_not_waited_for_and_a_gone_version_is_fine() {
    let server = MockServer::start().await;
    let v = format!("{DEF}/versions/1.0.0");
    // Headers as in the spec's delete example.
    Mock::given(method("DELETE"))
        .and(path(v.as_str()))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("Azure-AsyncOperation", "https://management.azure.com/subscriptions/000000-8de3-42e7-b00e-8970003527749a/providers/Microsoft.Compute/locations/westus2/capsOperations/0012b61c-2d36-40bc-b7ed-1f0e48757277?api-version=2022-01-03")
                .insert_header("Location", "https://management.azure.com/subscriptions/000000-8de3-42e7-b00e-8970003527749a/providers/Microsoft.Compute/locations/westus2/capsOperations/0012b61c-2d36-40bc-b7ed-1f0e48757277?monitor=true&api-version=2022-01-03"),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Retention reads the gallery again; the invocation does not follow the operation.
    let op = "/subscriptions/000000-8de3-42e7-b00e-8970003527749a/providers/Microsoft.Compute/locations/westus2/capsOperations/0012b61c-2d36-40bc-b7ed-1f0e48757277";
    Mock::given(method("GET"))
        .and(path(op))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "InProgress"})))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("{DEF}/versions/2.0.0")))
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({
            "error": {"code": "OperationNotAllowed", "message": "the version is in use by a replication"}
        })))
        .mount(&server)
        .await;
    let g = gallery(&server);
    g.delete_version(DEF, ImageVersion::new(1, 0, 0))
        .await
        .unwrap();
    g.delete_version(DEF, ImageVersion::new(9, 9, 9))
        .await
        .unwrap();
    let e = g
        .delete_version(DEF, ImageVersion::new(2, 0, 0))
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("in use by a replication"),
        "{e:#}"
    );
}

#[tokio::test]
async fn a_delete_blocked_before_end_of_life_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({"error": {
            "code": "OperationNotAllowed",
            "message": "Deletion of the gallery image version is blocked before its end of life date."
        }})))
        .mount(&server)
        .await;
    let e = gallery(&server)
        .delete_version(DEF, ImageVersion::new(1, 0, 0))
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("blocked before its end of life"),
        "{e:#}"
    );
}

#[test]
fn a_version_name_that_is_not_major_minor_patch_is_skipped() {
    let mut item = list_page()["value"][0].clone();
    item["name"] = json!("latest");
    assert!(gallery_version(DEF, &item).is_none());
}
