//! Resource Graph: paging, the KQL subset, unreadable scopes.

use reqwest::Method;
use serde_json::{json, Value};

use super::{Sim, DEF, SUB};
use crate::ports::Inventory;
use crate::providers::azure::resource_graph::AzureInventory;

const OTHER_SUB: &str = "99999999-2222-3333-4444-555555555555";
const QUERY: &str = "Resources | where type in~ ('Microsoft.Compute/virtualMachines') | project id, imageId = properties.storageProfile.imageReference.id";
const PATH: &str = "/providers/Microsoft.ResourceGraph/resources?api-version=2024-04-01";

async fn seed(sim: &Sim) {
    for (sub, n) in [(SUB, 1), (SUB, 2), (SUB, 3), (OTHER_SUB, 4)] {
        sim.control(
            "resources",
            json!({"table": "Resources", "resource": {
                "id": format!("/subscriptions/{sub}/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/vm{n}"),
                "type": "Microsoft.Compute/virtualMachines",
                "location": "westeurope",
                "properties": {"storageProfile": {"imageReference": {"id": format!("{DEF}/versions/1.0.{n}")}}}}}),
        )
        .await;
    }
    sim.control(
        "resources",
        json!({"table": "Resources", "resource": {
            "id": format!("/subscriptions/{SUB}/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/vm-marketplace"),
            "type": "Microsoft.Compute/virtualMachines",
            "properties": {"storageProfile": {"imageReference": {"publisher": "Canonical"}}}}}),
    )
    .await;
    sim.control(
        "resources",
        json!({"table": "ComputeResources", "resource": {
            "id": format!("/subscriptions/{SUB}/resourceGroups/app/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/0"),
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "properties": {"storageProfile": {"imageReference": {"id": format!("{DEF}/versions/2.0.0")}}}}}),
    )
    .await;
}

async fn query(sim: &Sim, body: Value) -> (u16, Value) {
    let r = sim.call(Method::POST, PATH, Some(body)).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn pages_follow_the_skip_token_to_the_total() {
    let sim = Sim::start().await;
    seed(&sim).await;
    let (status, first) = query(
        &sim,
        json!({"query": QUERY, "subscriptions": [SUB], "options": {"$top": 2}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first["totalRecords"], 4);
    assert_eq!(first["count"], 2);
    assert_eq!(first["resultTruncated"], "false");
    let token = first["$skipToken"].as_str().unwrap();
    let (_, second) = query(&sim, json!({"query": QUERY, "subscriptions": [SUB], "options": {"$top": 2, "$skipToken": token}})).await;
    assert_eq!(second["count"], 2);
    assert!(second.get("$skipToken").is_none());
    let rows: Vec<&Value> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    assert!(
        ids.windows(2)
            .all(|w| w[0].to_lowercase() < w[1].to_lowercase()),
        "{ids:?}"
    );
    let marketplace = rows
        .iter()
        .find(|r| r["id"].as_str().unwrap().ends_with("vm-marketplace"))
        .unwrap();
    assert_eq!(
        marketplace["imageId"],
        Value::Null,
        "a missing path projects null"
    );
}

#[tokio::test]
async fn kiln_reads_every_row_of_a_subset_query() {
    let sim = Sim::start().await;
    seed(&sim).await;
    let inv = AzureInventory::new(sim.client(), vec![SUB.into(), OTHER_SUB.into()]);
    let rows = inv.rows(QUERY).await.unwrap();
    assert_eq!(rows.len(), 5);
    let instances = inv
        .rows("ComputeResources | where type =~ 'microsoft.compute/virtualmachinescalesets/virtualmachines' | project id, imageId = properties.storageProfile.imageReference.id")
        .await
        .unwrap();
    assert_eq!(instances[0]["imageId"], format!("{DEF}/versions/2.0.0"));
}

#[tokio::test]
async fn anything_outside_the_subset_is_an_invalid_query() {
    let sim = Sim::start().await;
    let (status, e) = query(
        &sim,
        json!({"query": "Resources | where type =~ 'a' or type =~ 'b' | project id"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["details"][0]["code"], "InvalidQuery");
}

#[tokio::test]
async fn an_unreadable_subscription_fails_a_scoped_query_and_hides_from_a_tenant_one() {
    let sim = Sim::start().await;
    seed(&sim).await;
    sim.fault(json!({"kind": "unreadableSubscription", "subscription": OTHER_SUB}))
        .await;
    let (status, e) = query(&sim, json!({"query": QUERY, "subscriptions": [SUB, OTHER_SUB], "options": {"allowPartialScopes": false}})).await;
    assert_eq!(status, 403);
    assert_eq!(e["error"]["code"], "AccessDenied");
    assert_eq!(e["error"]["details"][0]["code"], "AccessDenied");
    let inv = AzureInventory::new(sim.client(), vec![SUB.into(), OTHER_SUB.into()]);
    let err = inv.rows(QUERY).await.unwrap_err();
    assert!(format!("{err:#}").contains("page 1 failed"), "{err:#}");
    // Before any query, kiln reads each listed subscription: refused.
    let r = sim
        .call(
            Method::GET,
            &format!("/subscriptions/{OTHER_SUB}?api-version=2022-12-01"),
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    let err = inv.in_use().await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot be read"), "{err:#}");
    // At tenant scope the unreadable subscription's rows are silently absent.
    let tenant = AzureInventory::new(sim.client(), vec![]);
    assert_eq!(tenant.rows(QUERY).await.unwrap().len(), 4);
}

#[tokio::test]
async fn kiln_reads_the_in_use_set_from_seeded_resources() {
    let sim = Sim::start().await;
    seed(&sim).await;
    let inv = AzureInventory::new(sim.client(), vec![SUB.into(), OTHER_SUB.into()]);
    let set = inv.in_use().await.unwrap();
    let lower = DEF.to_ascii_lowercase();
    let versions: Vec<String> = set.versions.iter().cloned().collect();
    assert_eq!(
        versions,
        ["1.0.1", "1.0.2", "1.0.3", "1.0.4", "2.0.0"]
            .iter()
            .map(|v| format!("{lower}/versions/{v}"))
            .collect::<Vec<_>>()
    );
}
