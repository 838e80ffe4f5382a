//! Which gallery images are in use, from Azure Resource Graph (2024-04-01).
//!
//! Retention must never delete an image a consumer still references, so the
//! answer here is all or nothing: every page is read to the end, and a
//! truncated answer, a scope Resource Graph skipped, a row count that falls
//! short of `totalRecords`, a listed subscription the identity cannot read,
//! or any failed page is an error, never a smaller set.
//!
//! Three queries, kept to the subset `<Table> | where type in~ (…) | project
//! col, name = path.to.field, …` (the filtering is done here, in Rust):
//!
//! - `Resources`: VMs (VM scale set Flex members among them: ordinary VMs
//!   with `properties.virtualMachineScaleSet.id`) and scale set models;
//! - `ComputeResources`: scale set instances, which can still run an older
//!   model's image (all of them are read: an instance on the latest model
//!   may still run the version `latest` meant when it was made);
//! - `Resources`: galleries, for their `identifier.uniqueName` and community
//!   `publicNames`, which map `/SharedGalleries/…` and
//!   `/CommunityGalleries/…` references back to gallery ids. A reference to a
//!   gallery this query does not see (another tenant's, or outside the
//!   inventory's subscriptions) counts its definition name as in use.
//!
//! Every `imageReference` projects `id`, `exactVersion`,
//! `sharedGalleryImageId` and `communityGalleryImageId`, nothing more.

use anyhow::{bail, Context};
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::arm::{ArmClient, RetryPolicy};
use crate::domain::gallery::{GalleryNames, ImageReference};
use crate::ports::{InUseSet, Inventory};

pub const API_VERSION: &str = "2024-04-01";
/// Subscriptions (Microsoft.Resources), to check that each listed one is readable.
pub const SUBSCRIPTIONS_API_VERSION: &str = "2022-12-01";
const PATH: &str = "/providers/Microsoft.ResourceGraph/resources";
/// Resource Graph's largest page.
const PAGE_SIZE: u32 = 1000;
/// A bound on paging, far above any real estate, so a service bug cannot loop forever.
const MAX_PAGES: usize = 10_000;

/// VMs (Flex members included) and scale set models: their image references.
pub const MODELS_QUERY: &str = "Resources \
| where type in~ ('microsoft.compute/virtualmachines', 'microsoft.compute/virtualmachinescalesets') \
| project id, scaleSetId = properties.virtualMachineScaleSet.id, \
imageId = properties.storageProfile.imageReference.id, \
exactVersion = properties.storageProfile.imageReference.exactVersion, \
sharedGalleryImageId = properties.storageProfile.imageReference.sharedGalleryImageId, \
communityGalleryImageId = properties.storageProfile.imageReference.communityGalleryImageId, \
modelImageId = properties.virtualMachineProfile.storageProfile.imageReference.id, \
modelExactVersion = properties.virtualMachineProfile.storageProfile.imageReference.exactVersion, \
modelSharedGalleryImageId = properties.virtualMachineProfile.storageProfile.imageReference.sharedGalleryImageId, \
modelCommunityGalleryImageId = properties.virtualMachineProfile.storageProfile.imageReference.communityGalleryImageId";

/// Scale set instances: their image references.
pub const INSTANCES_QUERY: &str = "ComputeResources \
| where type =~ 'microsoft.compute/virtualmachinescalesets/virtualmachines' \
| project id, \
imageId = properties.storageProfile.imageReference.id, \
exactVersion = properties.storageProfile.imageReference.exactVersion, \
sharedGalleryImageId = properties.storageProfile.imageReference.sharedGalleryImageId, \
communityGalleryImageId = properties.storageProfile.imageReference.communityGalleryImageId";

/// Galleries: the names shared and community references use.
pub const GALLERIES_QUERY: &str = "Resources \
| where type =~ 'microsoft.compute/galleries' \
| project id, uniqueName = properties.identifier.uniqueName, \
publicNames = properties.sharingProfile.communityGalleryInfo.publicNames";

/// The image reference columns of a VM (or instance) row, and of a scale set model row.
const VM_COLUMNS: [&str; 4] = [
    "imageId",
    "exactVersion",
    "sharedGalleryImageId",
    "communityGalleryImageId",
];
const MODEL_COLUMNS: [&str; 4] = [
    "modelImageId",
    "modelExactVersion",
    "modelSharedGalleryImageId",
    "modelCommunityGalleryImageId",
];

/// A row's image reference under `columns` (a missing path projects null).
fn reference<'a>(row: &'a Value, columns: [&str; 4]) -> ImageReference<'a> {
    let col = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    ImageReference {
        id: col(columns[0]),
        exact_version: col(columns[1]),
        shared_gallery_image_id: col(columns[2]),
        community_gallery_image_id: col(columns[3]),
    }
}

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

impl AzureInventory {
    /// Each listed subscription must be readable: Resource Graph leaves out
    /// a subscription the identity cannot read instead of failing, and its
    /// consumers would then look like none.
    async fn check_subscriptions(&self) -> anyhow::Result<()> {
        for sub in &self.subscriptions {
            let target = format!("/subscriptions/{sub}?api-version={SUBSCRIPTIONS_API_VERSION}");
            self.arm
                .send(Method::GET, &target, None, RetryPolicy::Idempotent)
                .await
                .and_then(|r| r.ok())
                .with_context(|| {
                    format!("subscription {sub} in KILN_AZURE_INVENTORY_SUBSCRIPTIONS cannot be read, so its VMs and scale sets cannot be seen; give the app's identity Reader on it or remove it from the list")
                })?;
        }
        Ok(())
    }

    async fn gallery_names(&self) -> anyhow::Result<GalleryNames> {
        let mut names = GalleryNames::default();
        let rows = self
            .rows(GALLERIES_QUERY)
            .await
            .context("Cannot list the galleries' shared and community names")?;
        for row in &rows {
            let Some(id) = row.get("id").and_then(Value::as_str) else {
                continue;
            };
            let public: Vec<&str> = row
                .get("publicNames")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            names.add(id, row.get("uniqueName").and_then(Value::as_str), &public);
        }
        Ok(names)
    }
}

#[async_trait]
impl Inventory for AzureInventory {
    async fn in_use(&self) -> anyhow::Result<InUseSet> {
        self.check_subscriptions().await?;
        let names = self.gallery_names().await?;
        let mut set = InUseSet::default();
        for (what, query) in [
            ("VMs and scale sets", MODELS_QUERY),
            ("scale set instances", INSTANCES_QUERY),
        ] {
            let rows = self
                .rows(query)
                .await
                .with_context(|| format!("Cannot list the images used by {what}"))?;
            for row in &rows {
                // A VM's reference, or a scale set model's (`model…`), held
                // by the row's resource (for reports; retention reads the sets).
                let by = row.get("id").and_then(Value::as_str).unwrap_or("");
                set.add_image_reference_by(by, &reference(row, VM_COLUMNS), &names);
                set.add_image_reference_by(by, &reference(row, MODEL_COLUMNS), &names);
            }
        }
        tracing::info!(
            versions = set.versions.len(),
            definitions = set.definitions.len(),
            definition_names = set.definition_names.len(),
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

    const GALLERY: &str =
        "/subscriptions/s/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corp";
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

    fn vm_id(n: u32) -> String {
        format!(
            "/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/vm{n}"
        )
    }

    fn vm(n: u32, image: &str) -> Value {
        json!({"id": vm_id(n), "imageId": image})
    }

    fn sent(r: &Request) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    const FIRST_TOKEN: &str = "eyAibm8iOiAibHVjayIsICJidXQiOiAibmljZSIsICJ0cnkiOiAiISIgfQ==";

    /// The gallery `corp`, shared directly and to the community.
    fn galleries_page() -> Value {
        last_page(
            vec![json!({"id": GALLERY, "uniqueName": "s-CORP",
                        "publicNames": ["corp-7f3e9a1c-5b2d-4e8f-a6c1-9d0b3e5f7a21"]})],
            1,
        )
    }

    /// Galleries: one page. Models: two pages, `second` answers the second.
    /// Instances: one page. Subscriptions `s` and `s1` are readable.
    async fn graph(second: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/subscriptions/s"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"id": "/subscriptions/s", "subscriptionId": "s", "state": "Enabled"}),
            ))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .and(query_param("api-version", API_VERSION))
            .respond_with(move |r: &Request| {
                let body = sent(r);
                let query = body["query"].as_str().unwrap_or("");
                if query == GALLERIES_QUERY {
                    return ResponseTemplate::new(200).set_body_json(galleries_page());
                }
                if query == INSTANCES_QUERY {
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

    async fn queries(server: &MockServer) -> Vec<Value> {
        let requests = server.received_requests().await.unwrap();
        requests
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .map(sent)
            .collect()
    }

    #[tokio::test]
    async fn every_page_of_every_query_is_read_into_the_in_use_set() {
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

        let sent = queries(&server).await;
        assert_eq!(sent.len(), 4, "galleries, two model pages, instances");
        assert_eq!(sent[0]["query"], GALLERIES_QUERY);
        let second = &sent[2];
        assert_eq!(second["options"]["$skipToken"], FIRST_TOKEN);
        assert_eq!(second["query"], MODELS_QUERY);
        assert_eq!(second["subscriptions"], json!(["s"]));
        assert_eq!(second["options"]["allowPartialScopes"], false);
    }

    #[tokio::test]
    async fn every_kind_of_image_reference_counts() {
        let server = MockServer::start().await;
        let models = vec![
            // On latest: the definition, and the version it runs.
            json!({"id": vm_id(1), "imageId": format!("{DEF}/versions/latest"), "exactVersion": "1.0.4"}),
            // A VM scale set Flex member is an ordinary VM.
            json!({"id": vm_id(2), "scaleSetId": "/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachineScaleSets/flex",
                   "imageId": format!("{DEF}/versions/1.0.2")}),
            // A scale set model.
            json!({"id": "/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachineScaleSets/uniform",
                   "modelImageId": format!("{DEF}/versions/1.0.3")}),
            // Shared directly, by the gallery's unique name.
            json!({"id": vm_id(3), "sharedGalleryImageId": "/SharedGalleries/s-corp/Images/ubuntu/Versions/1.0.5"}),
            // Shared to the community, on latest.
            json!({"id": vm_id(4), "communityGalleryImageId": "/CommunityGalleries/corp-7f3e9a1c-5b2d-4e8f-a6c1-9d0b3e5f7a21/Images/windows/Versions/latest",
                   "exactVersion": "2.0.0"}),
            // From a gallery kiln cannot map: its definition name is protected.
            json!({"id": vm_id(5), "sharedGalleryImageId": "/SharedGalleries/other-TENANT/Images/rhel/Versions/9.0.0"}),
            // A marketplace image: no gallery.
            json!({"id": vm_id(6), "imageId": null}),
        ];
        let instance = json!({"id": "/subscriptions/s/resourceGroups/app/providers/Microsoft.Compute/virtualMachineScaleSets/uniform/virtualMachines/3",
                              "imageId": format!("{DEF}/versions/latest"), "exactVersion": "1.0.1"});
        Mock::given(method("POST"))
            .and(path(PATH))
            .respond_with(move |r: &Request| {
                let page = match sent(r)["query"].as_str().unwrap() {
                    q if q == GALLERIES_QUERY => galleries_page(),
                    q if q == MODELS_QUERY => last_page(models.clone(), models.len() as u64),
                    _ => last_page(vec![instance.clone()], 1),
                };
                ResponseTemplate::new(200).set_body_json(page)
            })
            .mount(&server)
            .await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec![]);
        let set = inv.in_use().await.unwrap();
        let lower = DEF.to_ascii_lowercase();
        let windows = format!("{}/images/windows", GALLERY.to_ascii_lowercase());
        let mut want: Vec<String> = ["1.0.1", "1.0.2", "1.0.3", "1.0.4", "1.0.5"]
            .iter()
            .map(|v| format!("{lower}/versions/{v}"))
            .collect();
        want.push(format!("{windows}/versions/2.0.0"));
        assert_eq!(set.versions.iter().cloned().collect::<Vec<_>>(), want);
        assert_eq!(
            set.definitions.iter().cloned().collect::<Vec<_>>(),
            vec![lower, windows]
        );
        assert_eq!(
            set.definition_names.iter().cloned().collect::<Vec<_>>(),
            vec!["rhel".to_string()]
        );
    }

    #[tokio::test]
    async fn a_listed_subscription_the_identity_cannot_read_fails_the_whole_answer() {
        let server = graph(ResponseTemplate::new(200).set_body_json(last_page(vec![], 2))).await;
        Mock::given(method("GET"))
            .and(path("/subscriptions/s2"))
            .respond_with(ResponseTemplate::new(403).set_body_json(json!({"error": {
                "code": "AuthorizationFailed",
                "message": "The client does not have authorization to perform action 'Microsoft.Resources/subscriptions/read' over scope '/subscriptions/s2'."
            }})))
            .mount(&server)
            .await;
        let inv = AzureInventory::new(client(&server.uri()).0, vec!["s".into(), "s2".into()]);
        let e = format!("{:#}", inv.in_use().await.unwrap_err());
        assert!(e.contains("subscription s2"), "{e}");
        assert!(e.contains("KILN_AZURE_INVENTORY_SUBSCRIPTIONS"), "{e}");
        assert!(
            queries(&server).await.is_empty(),
            "nothing is read from a partial scope"
        );
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

    /// The KQL subset the Azure simulator evaluates:
    /// `<Resources|ComputeResources> | where type in~ ('a', 'b') | project col, name = path.to.field, …`
    /// (or `type =~ 'a'`).
    fn fits_the_simulator_subset(query: &str) -> Result<(), String> {
        let parts: Vec<&str> = query.split('|').map(str::trim).collect();
        let [table, filter, projection] = parts[..] else {
            return Err(format!(
                "expected table | where | project, got {} parts",
                parts.len()
            ));
        };
        if !matches!(table, "Resources" | "ComputeResources") {
            return Err(format!("table `{table}`"));
        }
        let quoted = |s: &str| {
            let s = s.trim();
            s.len() >= 2
                && s.starts_with('\'')
                && s.ends_with('\'')
                && !s[1..s.len() - 1].contains('\'')
        };
        let filter_ok = match filter.strip_prefix("where type ") {
            Some(rest) => match (rest.strip_prefix("in~ ("), rest.strip_prefix("=~ ")) {
                (Some(list), None) => list
                    .strip_suffix(')')
                    .is_some_and(|l| l.split(',').all(quoted)),
                (None, Some(one)) => quoted(one),
                (Some(_), Some(_)) | (None, None) => false,
            },
            None => false,
        };
        if !filter_ok {
            return Err(format!("filter `{filter}`"));
        }
        let Some(columns) = projection.strip_prefix("project ") else {
            return Err(format!("projection `{projection}`"));
        };
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let path = |s: &str| s.split('.').all(ident);
        for col in columns.split(',').map(str::trim) {
            let ok = match col.split_once(" = ") {
                Some((name, p)) => ident(name) && path(p),
                None => ident(col),
            };
            if !ok {
                return Err(format!("column `{col}`"));
            }
        }
        Ok(())
    }

    #[test]
    fn the_queries_fit_the_simulators_kql_subset() {
        for q in [MODELS_QUERY, INSTANCES_QUERY, GALLERIES_QUERY] {
            assert_eq!(fits_the_simulator_subset(q), Ok(()), "{q}");
        }
        // The checker itself refuses what the subset does not have.
        let old = "Resources | where type =~ 'x' or type =~ 'y' | extend a = tostring(b) | where a contains 'g' | project id, a";
        assert!(fits_the_simulator_subset(old).is_err());
        assert!(fits_the_simulator_subset(
            "Resources | where type =~ 'x' | project id, a = iff(x, y, z)"
        )
        .is_err());
    }
}
