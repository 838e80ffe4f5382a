//! Versions of base images: marketplace images (Compute `VirtualMachineImages`,
//! 2024-11-01) and parent gallery images (through [`AzureGallery`]).
//!
//! The marketplace list is a bare JSON array of `{name, location, id}` with no
//! paging and no properties. Deprecation is only in a version's own GET
//! (`properties.imageDeprecationStatus.imageState`), so only the newest
//! version, the one a `latest` build would use, is asked about: one extra
//! read per watch instead of one per published version.

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;

use super::arm::ArmClient;
use super::gallery::AzureGallery;
use crate::domain::template::Source;
use crate::domain::version_order;
use crate::ports::{BaseCatalog, BaseVersion};

pub const API_VERSION: &str = "2024-11-01";

pub struct AzureCatalog {
    arm: ArmClient,
    subscription_id: String,
    location: String,
    gallery: AzureGallery,
}

impl AzureCatalog {
    pub fn new(
        arm: ArmClient,
        subscription_id: &str,
        location: &str,
        gallery: AzureGallery,
    ) -> Self {
        Self {
            arm,
            subscription_id: subscription_id.to_string(),
            location: location.to_string(),
            gallery,
        }
    }

    async fn platform(
        &self,
        publisher: &str,
        offer: &str,
        sku: &str,
    ) -> anyhow::Result<Vec<BaseVersion>> {
        let versions = format!(
            "/subscriptions/{}/providers/Microsoft.Compute/locations/{}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions",
            self.subscription_id, self.location
        );
        let list = self
            .arm
            .get_json(&format!("{versions}?api-version={API_VERSION}"))
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{publisher}:{offer}:{sku} is not in the marketplace of {}",
                    self.location
                )
            })?;
        let mut out: Vec<BaseVersion> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .map(|name| BaseVersion {
                version: name.to_string(),
                deprecated: false,
            })
            .collect();
        let newest = out
            .iter_mut()
            .max_by(|a, b| version_order::compare(&a.version, &b.version));
        if let Some(newest) = newest {
            let one = self
                .arm
                .get_json(&format!(
                    "{versions}/{}?api-version={API_VERSION}",
                    newest.version
                ))
                .await?;
            let state = one
                .as_ref()
                .and_then(|d| d.pointer("/properties/imageDeprecationStatus/imageState"))
                .and_then(Value::as_str)
                .unwrap_or("Active");
            if state.eq_ignore_ascii_case("ScheduledForDeprecation") {
                tracing::info!(publisher, offer, sku, version = %newest.version, "newest source version is scheduled for deprecation");
            }
            newest.deprecated = state.eq_ignore_ascii_case("Deprecated");
        }
        Ok(out)
    }

    /// Versions a `…/versions/latest` source can resolve to: provisioned and
    /// not excluded from latest. Past their end of life counts as deprecated.
    async fn shared(&self, image_version_id: &str) -> anyhow::Result<Vec<BaseVersion>> {
        let definition = match image_version_id.to_ascii_lowercase().rfind("/versions/") {
            Some(i) => &image_version_id[..i],
            None => image_version_id,
        };
        let now = Utc::now();
        Ok(self
            .gallery
            .versions(definition)
            .await?
            .into_iter()
            .filter(|v| {
                !v.exclude_from_latest && v.provisioning_state.eq_ignore_ascii_case("Succeeded")
            })
            .map(|v| BaseVersion {
                version: v.version.to_string(),
                deprecated: v.end_of_life.is_some_and(|eol| eol <= now),
            })
            .collect())
    }
}

#[async_trait]
impl BaseCatalog for AzureCatalog {
    async fn versions(&self, source: &Source) -> anyhow::Result<Vec<BaseVersion>> {
        match source {
            Source::PlatformImage {
                publisher,
                offer,
                sku,
                ..
            } => self.platform(publisher, offer, sku).await,
            Source::SharedImageVersion {
                image_version_id, ..
            } => self.shared(image_version_id).await,
            Source::ManagedImage { image_id } => {
                anyhow::bail!("managed image {image_id} has no versions to watch")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::azure::arm::testing::client;

    const SKU: &str = "/subscriptions/s/providers/Microsoft.Compute/locations/westeurope/publishers/Canonical/artifacttypes/vmimage/offers/ubuntu-24_04-lts/skus/server/versions";

    fn catalog(server: &MockServer) -> AzureCatalog {
        let arm = client(&server.uri()).0;
        AzureCatalog::new(arm.clone(), "s", "westeurope", AzureGallery::new(arm))
    }

    fn ubuntu() -> Source {
        Source::PlatformImage {
            publisher: "Canonical".into(),
            offer: "ubuntu-24_04-lts".into(),
            sku: "server".into(),
            version: "latest".into(),
            exact_version: None,
        }
    }

    /// An entry shaped like the spec example, with real names.
    fn entry(version: &str) -> Value {
        let mut e: Value = serde_json::from_str(include_str!(
            "testdata/VirtualMachineImage_List_MaximumSet_Gen.json"
        ))
        .unwrap();
        let mut e = e[0].take();
        e["name"] = json!(version);
        e["location"] = json!("westeurope");
        e["id"] = json!(format!("/Subscriptions/s/Providers/Microsoft.Compute/Locations/westeurope/Publishers/Canonical/ArtifactTypes/VMImage/Offers/ubuntu-24_04-lts/Skus/server/Versions/{version}"));
        e
    }

    #[tokio::test]
    async fn marketplace_versions_are_listed_and_the_newest_is_checked_for_deprecation() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(SKU))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                entry("24.04.202409120"),
                entry("24.04.202410100"),
                entry("24.04.202409300"),
            ])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{SKU}/24.04.202410100")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "24.04.202410100", "location": "westeurope",
                "properties": {"imageDeprecationStatus": {"imageState": "Deprecated"}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let got = catalog(&server).versions(&ubuntu()).await.unwrap();
        let flagged: Vec<(&str, bool)> = got
            .iter()
            .map(|v| (v.version.as_str(), v.deprecated))
            .collect();
        assert_eq!(
            flagged,
            vec![
                ("24.04.202409120", false),
                ("24.04.202410100", true),
                ("24.04.202409300", false)
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_marketplace_image_is_an_error_not_an_empty_list() {
        let server = MockServer::start().await;
        let e = catalog(&server).versions(&ubuntu()).await.unwrap_err();
        assert!(
            e.to_string().contains("Canonical:ubuntu-24_04-lts:server"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_gallery_source_lists_what_latest_can_resolve_to() {
        let server = MockServer::start().await;
        let def = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/parent/images/base";
        let item = |name: &str, exclude: bool, state: &str, eol: &str| {
            json!({
                "name": name,
                "properties": {
                    "publishingProfile": {"excludeFromLatest": exclude, "endOfLifeDate": eol, "publishedDate": "2025-01-01T00:00:00Z"},
                    "provisioningState": state
                }
            })
        };
        Mock::given(method("GET"))
            .and(path(format!("{def}/versions")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
                item("1.0.0", false, "Succeeded", "2020-01-01T00:00:00Z"),
                item("1.1.0", true, "Succeeded", "2099-01-01T00:00:00Z"),
                item("1.2.0", false, "Succeeded", "2099-01-01T00:00:00Z"),
                item("1.3.0", false, "Failed", "2099-01-01T00:00:00Z"),
            ]})))
            .mount(&server)
            .await;
        // The failed one is looked at more closely; it stays failed.
        Mock::given(method("GET"))
            .and(path(format!("{def}/versions/1.3.0")))
            .respond_with(ResponseTemplate::new(200).set_body_json(item(
                "1.3.0",
                false,
                "Failed",
                "2099-01-01T00:00:00Z",
            )))
            .mount(&server)
            .await;
        let source = Source::SharedImageVersion {
            image_version_id: format!("{def}/versions/latest"),
            exact_version: None,
        };
        let got = catalog(&server).versions(&source).await.unwrap();
        let flagged: Vec<(&str, bool)> = got
            .iter()
            .map(|v| (v.version.as_str(), v.deprecated))
            .collect();
        assert_eq!(flagged, vec![("1.0.0", true), ("1.2.0", false)]);
    }
}
