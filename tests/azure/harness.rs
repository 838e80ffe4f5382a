//! The test world: the simulator, `kiln serve` pointed at it, and the
//! simulated Functions host, with helpers that read like the scenarios.

use std::time::Duration;

use serde_json::{json, Value};

use kiln::sim::factory::{Factory, FactoryOptions};
use kiln::sim::faults::FaultRule;
use kiln::sim::functions_host::{wait_until, HostHandle};
use kiln::sim::server::{Sim, SimHandle, SimOptions};

/// How long any one scenario step may take on the wall clock.
pub const STEP: Duration = Duration::from_secs(60);

pub use crate::common::{bounded, repo};

/// The shipped tiny pipeline on the sim's subscription, with an Azure-sized
/// build timeout (the sim plays a 30-minute AIB build).
pub fn tiny(subscription: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("pipelines/tiny.json"))
        .unwrap()
        .replace("00000000-0000-0000-0000-000000000000", subscription);
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["buildTimeoutInMinutes"] = json!(60);
    doc
}

/// The API key this world's `kiln serve` takes (`KILN_API_KEYS`).
pub const API_KEY: &str = "sim-e2e-api-key-0123456789";

/// A client that sends [`API_KEY`] on every request, as the CLI does.
pub fn keyed_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

pub struct World {
    pub sim: SimHandle,
    pub host: HostHandle,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl World {
    /// The sim at 600× with the tiny pipeline as shipped (adapted).
    pub async fn start() -> World {
        Self::with_pipelines(|sub| vec![("tiny".into(), tiny(sub))]).await
    }

    /// The sim at 600× with the pipelines `make` returns for its subscription.
    pub async fn with_pipelines(make: impl FnOnce(&str) -> Vec<(String, Value)>) -> World {
        Self::with(SimOptions::new(600), make).await
    }

    pub async fn with(
        options: SimOptions,
        make: impl FnOnce(&str) -> Vec<(String, Value)>,
    ) -> World {
        Self::with_env(options, &[], make).await
    }

    /// As [`World::with`], with settings for `kiln serve` beyond the sim's
    /// (`KILN_AZURE_INVENTORY_SUBSCRIPTIONS`, …); they win over the defaults.
    pub async fn with_env(
        options: SimOptions,
        extra_env: &[(&str, String)],
        make: impl FnOnce(&str) -> Vec<(String, Value)>,
    ) -> World {
        let sim = Sim::start(options).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pipelines = make(&sim.options().subscription_id);
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        for (name, doc) in &pipelines {
            std::fs::write(
                dir.path().join(format!("pipelines/{name}.json")),
                serde_json::to_string_pretty(doc).unwrap(),
            )
            .unwrap();
        }
        // The factory as `kiln sim --factory` runs it, on this world's files.
        let mut env = vec![
            (
                "KILN_EVENTS_KEY".to_string(),
                "sim-e2e-events-key".to_string(),
            ),
            ("KILN_API_KEYS".to_string(), API_KEY.to_string()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let factory = Factory::start(
            &sim,
            FactoryOptions {
                data_dir: dir.path().join("data"),
                pipelines_dir: dir.path().join("pipelines"),
                handlers_dir: repo().join("handlers"),
                host_json: repo().join("host.json"),
                api_port: 0,
                extra_env: env,
            },
        )
        .await
        .unwrap();
        let host = factory.host;
        World {
            sim,
            host,
            http: keyed_client(),
            _dir: dir,
        }
    }

    /// `KILN_DATA_DIR` of this world's `kiln serve`.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    /// The CloudEvents `kiln serve` wrote so far (`<data dir>/events.jsonl`).
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data_dir().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn subscription(&self) -> String {
        self.sim.options().subscription_id.clone()
    }

    /// POSTs to a `/_sim/...` control route, asserting it was taken.
    pub async fn control(&self, route: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}{route}", self.sim.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{route}: {}", r.status());
    }

    /// A semantic fault of the ARM side (`/_sim/arm/faults`).
    pub async fn fault(&self, fault: Value) {
        self.control("/_sim/arm/faults", fault).await;
    }

    /// A transport fault: the next `times` requests matching get `fault`.
    pub fn transport_fault(&self, rule: FaultRule) {
        self.sim.inject(rule);
    }

    /// Sends a build request to `build-requests` as a CI pipeline would, and
    /// returns the build it became.
    pub async fn request_build(&self, pipeline: &str, key: &str) -> String {
        let sent = self
            .http
            .post(format!("{}/build-requests/messages", self.sim.service_bus_url()))
            .bearer_auth("ci-pipeline")
            .header("BrokerProperties", json!({ "MessageId": key }).to_string())
            .header("Content-Type", "application/json")
            .body(
                json!({ "pipeline": pipeline, "reason": "azure end to end", "requestedBy": "ci@sim", "idempotencyKey": key })
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
        self.build_with_key(key).await
    }

    /// The build admitted under `key`.
    pub async fn build_with_key(&self, key: &str) -> String {
        let url = format!("{}/api/builds", self.host.app_url());
        let http = self.http.clone();
        wait_until(STEP, &format!("a build for request {key}"), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let list: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let builds = list.as_array().or_else(|| list["builds"].as_array())?;
                builds.iter().find_map(|b| {
                    let b = if b.get("build").is_some() {
                        &b["build"]
                    } else {
                        b
                    };
                    // Stored as the request key kiln derives (`manual:<pipeline>:<key>`).
                    let stored = b["idempotencyKey"].as_str().unwrap_or_default();
                    (stored == key || stored.ends_with(&format!(":{key}")))
                        .then(|| b["id"].as_str().unwrap().to_string())
                })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnose()))
    }

    /// Waits until build `id` is in `state` (`succeeded`, `failed`, …) and
    /// returns the build as the API shows it (`id`, `attempt`, `state`, …).
    pub async fn until(&self, id: &str, state: &str) -> Value {
        let detail = self
            .host
            .wait_for_build(id, state, STEP)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnose()));
        detail["build"].clone()
    }

    /// `GET /api/builds/{id}` as the app answers it.
    pub async fn build(&self, id: &str) -> Value {
        self.api_get(&format!("/api/builds/{id}")).await
    }

    pub async fn api_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.host.app_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn api_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.host.app_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The customization log kiln serves for a build's attempt.
    pub async fn log(&self, id: &str, attempt: u32) -> (u16, String) {
        let r = self
            .http
            .get(format!(
                "{}/api/builds/{id}/log?attempt={attempt}",
                self.host.app_url()
            ))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// ARM's answer to a GET (through the sim, as kiln's adapters see it).
    pub async fn arm_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.sim.url()))
            .bearer_auth("test")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub fn template_path(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}?api-version=2025-10-01",
            self.subscription(),
            self.sim.options().resource_group
        )
    }

    /// Waits until ARM no longer has template `name` (kiln retired it).
    pub async fn until_template_gone(&self, name: &str) {
        let path = self.template_path(name);
        let http = self.http.clone();
        let url = format!("{}{path}", self.sim.url());
        wait_until(STEP, &format!("template {name} to be deleted"), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).bearer_auth("test").send().await.ok()?;
                (r.status() == 404).then_some(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnose()));
    }

    /// The versions of the tiny pipeline's gallery definition, every page.
    pub async fn tiny_versions(&self) -> Vec<Value> {
        let mut path = format!(
            "/subscriptions/{}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/tiny/versions?api-version=2025-03-03",
            self.subscription()
        );
        let mut out = Vec::new();
        loop {
            let (_, doc) = self.arm_get(&path).await;
            out.extend(doc["value"].as_array().cloned().unwrap_or_default());
            // The sim's nextLink is absolute, on its own URL.
            match doc["nextLink"].as_str() {
                Some(next) => path = next.trim_start_matches(self.sim.url()).to_string(),
                None => return out,
            }
        }
    }

    /// ARM requests (not Service Bus) whose path holds `part`.
    pub fn arm_requests(&self, part: &str) -> Vec<kiln::sim::faults::RecordedRequest> {
        self.sim
            .transport()
            .requests_matching(part)
            .into_iter()
            .filter(|r| !r.path.starts_with("/servicebus"))
            .collect()
    }

    /// The sim's now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        kiln::ports::Clock::now(&self.sim.clock())
    }

    /// Every build of `pipeline`, newest first, as `GET /api/builds` lists them.
    pub async fn builds_of(&self, pipeline: &str) -> Vec<Value> {
        let list = self
            .api_get(&format!("/api/builds?pipeline={pipeline}"))
            .await;
        list.as_array().cloned().unwrap_or_default()
    }

    /// Waits until `pipeline` has a build and returns the newest one's id.
    pub async fn newest_build_of(&self, pipeline: &str) -> String {
        self.eventually(&format!("a build of {pipeline}"), || async {
            let builds = self.builds_of(pipeline).await;
            builds
                .first()
                .map(|b| b["id"].as_str().unwrap().to_string())
        })
        .await
    }

    /// Waits, up to [`STEP`], until `check` answers `Some`; on the deadline
    /// the test fails with what the world did.
    pub async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        wait_until(STEP, what, check)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnose()))
    }

    /// Waits until timer function `function` has ended `n` more invocations
    /// than it had when called, and returns the sim time the last one ended.
    pub async fn timer_firings(&self, function: &str, n: usize) -> chrono::DateTime<chrono::Utc> {
        let ended = |w: &World| -> Vec<kiln::sim::functions_host::InvocationRecord> {
            w.host
                .invocations()
                .into_iter()
                .filter(|i| i.function == function)
                .collect()
        };
        let before = ended(self).len();
        self.eventually(&format!("{n} more firings of {function}"), || async {
            let now = ended(self);
            (now.len() >= before + n).then(|| now[before + n - 1].sim_ended)
        })
        .await
    }

    /// Delivers `events` (Event Grid schema) as Event Grid does, to the
    /// host's webhook for `base_image_events`; returns the host's status.
    pub async fn event_grid(&self, events: Value) -> u16 {
        self.http
            .post(format!(
                "{}/runtime/webhooks/eventgrid?functionName=base_image_events",
                self.host.app_url()
            ))
            .header("aeg-event-type", "Notification")
            .json(&events)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// DELETEs of `template` that ARM refused with 409: kiln asked to delete
    /// it while its run was still going.
    pub fn deletes_refused(&self, template: &str) -> Vec<kiln::sim::faults::RecordedRequest> {
        self.arm_requests(template)
            .into_iter()
            .filter(|r| {
                r.method == "DELETE" && matches!(r.outcome, kiln::sim::faults::Outcome::Status(409))
            })
            .collect()
    }

    /// What the host invoked and the first Azure requests, for a failure message.
    pub fn diagnose(&self) -> String {
        let invocations: Vec<String> = self
            .host
            .invocations()
            .iter()
            .filter(|i| {
                !matches!(
                    i.function.as_str(),
                    "build_sweeper" | "patch_tuesday" | "base_image_watch"
                )
            })
            .map(|i| format!("{} {:?} -> {:?}", i.function, i.trigger, i.status))
            .collect();
        let requests: Vec<String> = self
            .sim
            .requests()
            .into_iter()
            .filter(|r| !r.path.contains("/messages/head"))
            .rev()
            .take(25)
            .map(|r| format!("{} {} -> {:?}", r.method, r.path, r.outcome))
            .collect();
        format!(
            "invocations (timers left out):\n  {}\nlast requests:\n  {}",
            invocations.join("\n  "),
            requests.join("\n  ")
        )
    }
}
