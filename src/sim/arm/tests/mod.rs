//! Contract tests: kiln's real Azure adapters are the client, the sim is
//! served on a loopback listener. Sim time is a manual clock that a test
//! moves with [`Sim::advance`]; the client's own pauses (retry backoff,
//! `Retry-After`) advance it by the wall time they stand for at the clock
//! factor, as they would move a scaled world. Nothing sleeps, except the one
//! test that runs a scaled clock on the wall.

mod faults;
mod gallery;
mod graph;
mod image_builder;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::{router, ArmSimOptions, ArmWorld};
use crate::ports::{ImageBuilder, ManualClock, RunStart, ScaledClock, TemplateStatus};
use crate::providers::azure::arm::{testing, ArmClient, ArmOptions, Pause};
use crate::providers::azure::gallery::AzureGallery;
use crate::providers::azure::identity::StaticToken;
use crate::providers::azure::image_builder::AzureImageBuilder;

pub const SUB: &str = "11111111-2222-3333-4444-555555555555";
pub const RG: &str = "rg-kiln-templates";
pub const DEF: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corp/images/ubuntu";
/// Sim seconds per wall second, as a `KILN_CLOCK` factor.
pub const FACTOR: u32 = 60;

/// A kiln pause that moves sim time by what it stands for instead of waiting.
struct AdvanceClock(Arc<ManualClock>);

#[async_trait]
impl Pause for AdvanceClock {
    async fn pause(&self, d: Duration) {
        let sim = d * FACTOR;
        self.0
            .advance(chrono::Duration::from_std(sim).unwrap_or_default());
        tokio::task::yield_now().await;
    }
}

pub struct Sim {
    pub clock: Arc<ManualClock>,
    pub world: Arc<ArmWorld>,
    pub url: String,
    pub http: reqwest::Client,
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 8, 17, 0, 0).unwrap()
}

impl Sim {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let clock = Arc::new(ManualClock::new(t0()));
        let mut options = ArmSimOptions::new(&url);
        options.scale = Some(ScaledClock {
            start: t0(),
            anchor: t0(),
            factor: FACTOR,
        });
        let world = ArmWorld::new(clock.clone(), options);
        let app = router(world.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            clock,
            world,
            url,
            http: reqwest::Client::new(),
        }
    }

    pub fn advance(&self, minutes: i64) {
        self.clock.advance(chrono::Duration::minutes(minutes));
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        crate::ports::Clock::now(self.clock.as_ref())
    }

    pub fn set(&self, t: DateTime<Utc>) {
        self.clock.set(t);
    }

    pub fn client_with(&self, opts: ArmOptions) -> ArmClient {
        ArmClient::with_pause(
            reqwest::Client::new(),
            opts,
            Arc::new(StaticToken::new(testing::TOKEN)),
            Arc::new(AdvanceClock(self.clock.clone())),
        )
    }

    pub fn client(&self) -> ArmClient {
        self.client_with(testing::options(&self.url))
    }

    pub fn builder(&self) -> AzureImageBuilder {
        AzureImageBuilder::new(self.client(), SUB, RG)
    }

    pub fn gallery(&self) -> AzureGallery {
        AzureGallery::new(self.client())
    }

    pub fn template_path(&self, name: &str, suffix: &str) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}{suffix}?api-version=2025-10-01"
        )
    }

    /// A raw authorised request, for what the adapters do not show.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_or_url: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.url)
        };
        let mut b = self.http.request(method, url).bearer_auth("any-token");
        if let Some(body) = body {
            b = b.json(&body);
        }
        b.send().await.unwrap()
    }

    pub async fn control(&self, path: &str, body: Value) {
        let r = self
            .http
            .request(
                if path.ends_with("profile") {
                    reqwest::Method::PUT
                } else {
                    reqwest::Method::POST
                },
                format!("{}/_sim/arm/{path}", self.url),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
    }

    pub async fn fault(&self, fault: Value) {
        self.control("faults", fault).await;
    }

    /// PUTs through kiln, which does not wait, and lets the sim's
    /// provisioning finish: the template is then `NotRun`.
    pub async fn provisioned(&self, name: &str, body: &Value) {
        let b = self.builder();
        assert_eq!(
            b.put_template(name, body).await.unwrap(),
            TemplateStatus::Provisioning
        );
        self.advance(1);
        assert_eq!(b.status(name).await.unwrap(), TemplateStatus::NotRun);
    }

    /// Runs through kiln, which must see the run accepted.
    pub async fn started(&self, name: &str) {
        assert_eq!(self.builder().run(name).await.unwrap(), RunStart::Started);
    }

    /// The template's `lastRunStatus`, raw.
    pub async fn last_run(&self, name: &str) -> Value {
        let doc: Value = self
            .call(reqwest::Method::GET, &self.template_path(name, ""), None)
            .await
            .json()
            .await
            .unwrap();
        doc["properties"]["lastRunStatus"].clone()
    }
}

/// A template body as kiln submits it: two Shell steps, a validation, one
/// SharedImage distribute with an explicit version to two regions.
pub fn template(version: &str) -> Value {
    json!({
        "location": "westeurope",
        "tags": {"kiln.build": "b1"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kiln-builder": {}}},
        "properties": {
            "buildTimeoutInMinutes": 60,
            "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "update", "inline": ["sudo apt-get update"]},
                {"type": "Shell", "name": "harden", "scriptUri": "https://example.blob.core.windows.net/scripts/harden.sh"}
            ],
            "validate": {"inVMValidations": [{"type": "Shell", "name": "smoke", "inline": ["true"]}]},
            "distribute": [{
                "type": "SharedImage",
                "galleryImageId": format!("{DEF}/versions/{version}"),
                "runOutputName": "ubuntu-gallery",
                "targetRegions": [{"name": "westeurope", "replicaCount": 1}, {"name": "northeurope", "replicaCount": 2}],
                "artifactTags": {"kiln.pipeline": "ubuntu"}
            }]
        }
    })
}
