//! Which gallery images are in use, from Azure Resource Graph (2024-04-01).
//!
//! Retention must never delete an image a consumer still references, so the
//! answer here is all or nothing: every page is read to the end, and a
//! truncated answer, a scope Resource Graph skipped, a row count that falls
//! short of `totalRecords`, or any failed page is an error, never a smaller set.
//!
//! Two queries, because VM scale set instances live in their own table:
//! `Resources` holds VMs and scale set models; `ComputeResources` holds the
//! scale set instances, which can still run an older model's image.

use anyhow::{bail, Context};
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::arm::{ArmClient, RetryPolicy};
use crate::ports::{InUseSet, Inventory};

pub const API_VERSION: &str = "2024-04-01";
const PATH: &str = "/providers/Microsoft.ResourceGraph/resources";
/// Resource Graph's largest page.
const PAGE_SIZE: u32 = 1000;
/// A bound on paging, far above any real estate, so a service bug cannot loop forever.
const MAX_PAGES: usize = 10_000;

/// VMs and scale set models referencing a gallery image.
pub const MODELS_QUERY: &str = "Resources \
| where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets' \
| extend imageId = tostring(iff(type =~ 'microsoft.compute/virtualmachines', \
    properties.storageProfile.imageReference.id, \
    properties.virtualMachineProfile.storageProfile.imageReference.id)) \
| where imageId contains '/galleries/' \
| project id, imageId";

/// Scale set instances referencing a gallery image.
pub const INSTANCES_QUERY: &str = "ComputeResources \
| where type =~ 'microsoft.compute/virtualmachinescalesets/virtualmachines' \
| extend imageId = tostring(properties.storageProfile.imageReference.id) \
| where imageId contains '/galleries/' \
| project id, imageId";

pub struct AzureInventory {
    arm: ArmClient,
    /// Empty: every subscription the identity can read.
    subscriptions: Vec<String>,
}

impl AzureInventory {
    pub fn new(arm: ArmClient, subscriptions: Vec<String>) -> Self {
        Self { arm, subscriptions }
    }

    /// Every row of `query`, all pages, or an error.
    pub async fn rows(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let target = format!("{PATH}?api-version={API_VERSION}");
        let mut rows: Vec<Value> = Vec::new();
        let mut skip_token: Option<String> = None;
        for page_no in 1..=MAX_PAGES {
            let mut options = json!({
                "$top": PAGE_SIZE,
                "resultFormat": "objectArray",
                // A scope Resource Graph cannot read must fail the query, not shrink it.
                "allowPartialScopes": false,
            });
            if let Some(t) = &skip_token {
                options["$skipToken"] = json!(t);
            }
            let mut body = json!({"query": query, "options": options});
            if !self.subscriptions.is_empty() {
                body["subscriptions"] = json!(self.subscriptions);
            }
            // The query is a read, so retrying the POST is safe.
            let r = self
                .arm
                .send(Method::POST, &target, Some(&body), RetryPolicy::Idempotent)
                .await?
                .ok()
                .with_context(|| format!("page {page_no} failed"))?;
            if r.header("x-ms-tenant-subscription-limit-hit") == Some("true") {
                bail!("Resource Graph looked at only part of the tenant's subscriptions; set KILN_AZURE_INVENTORY_SUBSCRIPTIONS");
            }
            let page = r.json()?;
            let truncated = match page.get("resultTruncated") {
                Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                Some(Value::Bool(b)) => *b,
                _ => false,
            };
            if truncated {
                bail!("Resource Graph truncated the answer on page {page_no}");
            }
            let Some(data) = page.get("data").and_then(Value::as_array) else {
                bail!("page {page_no} has no data array");
            };
            rows.extend(data.iter().cloned());
            let next = page
                .get("$skipToken")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            match next {
                Some(t) if skip_token.as_deref() == Some(t.as_str()) => {
                    bail!("Resource Graph returned the same page token twice (page {page_no})")
                }
                Some(t) => skip_token = Some(t),
                None => {
                    let total = page
                        .get("totalRecords")
                        .and_then(Value::as_u64)
                        .unwrap_or(rows.len() as u64);
                    if (rows.len() as u64) < total {
                        bail!(
                            "Resource Graph stopped paging after {} of {total} rows",
                            rows.len()
                        );
                    }
                    return Ok(rows);
                }
            }
        }
        bail!("Resource Graph paging did not end after {MAX_PAGES} pages")
    }
}

#[async_trait]
impl Inventory for AzureInventory {
    async fn in_use(&self) -> anyhow::Result<InUseSet> {
        let mut set = InUseSet::default();
        for (what, query) in [
            ("VMs and scale sets", MODELS_QUERY),
            ("scale set instances", INSTANCES_QUERY),
        ] {
            let rows = self
                .rows(query)
                .await
                .with_context(|| format!("Cannot list the images used by {what}"))?;
            for row in rows {
                if let Some(id) = row.get("imageId").and_then(Value::as_str) {
                    set.add_reference(id);
                }
            }
        }
        tracing::info!(
            versions = set.versions.len(),
            definitions = set.definitions.len(),
            "in-use gallery images read"
        );
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;
    use crate::providers::azure::arm::testing::client;

    const DEF: &str = "/subscriptions/s/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corp/images/ubuntu";

    /// The spec's first-page example with VM rows in place of its disks.
    fn first_page(rows: Vec<Value>, total: u64) -> Value {
        let mut p: Value =
            serde_json::from_str(include_str!("testdata/ResourcesFirstPageQuery.json")).unwrap();
        p["data"] = json!(rows);
        p["count"] = json!(p["data"].as_array().unwrap().len());
        p["totalRecords"] = json!(total);
        p
    }

    /// The spec's next-page example, made the last page (no `$skipToken`).
    fn last_page(rows: Vec<Value>, total: u64) -> Value {
        let mut p: Value =
            serde_json::from_str(include_str!("testdata/ResourcesNextPageQuery.json")).unwrap();
        p["data"] = json!(rows);
        p["count"] = json!(p["data"].as_array().unwrap().len());
        p["totalRecords"] = json!(total);
        p.as_object_mut().unwrap().remove("$skipToken");
        p
    }

    fn vm(n: u32, image: &str) -> Value {
        json!({"id": format!("/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/vm{n}"), "imageId": image})
    }

    fn sent(r: &Request) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    const FIRST_TOKEN: &str = "eyAibm8iOiAibHVjayIsICJidXQiOiAibmljZSIsICJ0cnkiOiAiISIgfQ==";

    /// Models: two pages; instances: one page. `second` answers the second models page.
    async fn graph(second: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .and(query_param("api-version", API_VERSION))
            .respond_with(move |r: &Request| {
                let body = sent(r);
                let query = body["query"].as_str().unwrap_or("");
                if query.starts_with("ComputeResources") {
                    let row = json!({"id": "/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/0",
                                     "imageId": format!("{DEF}/versions/1.0.1")});
                    return ResponseTemplate::new(200).set_body_json(last_page(vec![row], 1));
                }
                match body["options"]["$skipToken"].as_str() {
                    None => ResponseTemplate::new(200).set_body_json(first_page(
                        vec![vm(1, &format!("{DEF}/versions/1.0.0")), vm(2, &format!("{DEF}/Versions/1.0.0/"))],
                        3,
                    )),
                    Some(_) => second.clone(),
                }
            })
            .mount(&server)
            .await;
        server
    }

    #[tokio::test]
    async fn every_page_of_both_queries_is_read_into_the_in_use_set() {
        let server = graph(
            ResponseTemplate::new(200)
                .set_body_json(last_page(vec![vm(3, &DEF.to_uppercase())], 3)),
        )
        .await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec!["s".into()]);
        let set = inv.in_use().await.unwrap();
        let lower = DEF.to_ascii_lowercase();
        assert_eq!(
            set.versions.iter().cloned().collect::<Vec<_>>(),
            vec![
                format!("{lower}/versions/1.0.0"),
                format!("{lower}/versions/1.0.1")
            ]
        );
        assert_eq!(
            set.definitions.iter().cloned().collect::<Vec<_>>(),
            vec![lower]
        );

        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 3);
        let second = sent(&requests[1]);
        assert_eq!(second["options"]["$skipToken"], FIRST_TOKEN);
        assert_eq!(second["query"], MODELS_QUERY);
        assert_eq!(second["subscriptions"], json!(["s"]));
        assert_eq!(second["options"]["allowPartialScopes"], false);
    }

    #[tokio::test]
    async fn a_failing_second_page_fails_the_whole_answer() {
        let server = graph(ResponseTemplate::new(400).set_body_json(
            json!({"error": {"code": "BadRequest", "message": "Please provide below info when asking for support"}}),
        ))
        .await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec![]);
        let e = inv.in_use().await.unwrap_err();
        assert!(format!("{e:#}").contains("page 2 failed"), "{e:#}");
    }

    #[tokio::test]
    async fn a_truncated_answer_is_an_error() {
        let mut page = last_page(vec![vm(3, DEF)], 3);
        page["resultTruncated"] = json!("true");
        let server = graph(ResponseTemplate::new(200).set_body_json(page)).await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec![]);
        let e = inv.in_use().await.unwrap_err();
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
    }

    #[tokio::test]
    async fn paging_that_stops_short_of_the_total_is_an_error() {
        let server = graph(ResponseTemplate::new(200).set_body_json(last_page(vec![], 3))).await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec![]);
        let e = inv.in_use().await.unwrap_err();
        assert!(format!("{e:#}").contains("after 2 of 3 rows"), "{e:#}");
    }

    #[tokio::test]
    async fn a_tenant_query_cut_to_the_first_subscriptions_is_an_error() {
        let server = graph(
            ResponseTemplate::new(200)
                .insert_header("x-ms-tenant-subscription-limit-hit", "true")
                .set_body_json(last_page(vec![vm(3, DEF)], 3)),
        )
        .await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec![]);
        let e = inv.in_use().await.unwrap_err();
        assert!(
            format!("{e:#}").contains("KILN_AZURE_INVENTORY_SUBSCRIPTIONS"),
            "{e:#}"
        );
    }
}
