//! [`Sim`]: one loopback listener for the whole simulated Azure.
//!
//! | path | what |
//! |---|---|
//! | ARM paths, `/blob/…`, `/_sim/arm/…` | [`super::arm::router`] |
//! | `/servicebus/{queue}/…` | [`super::bus::routes`]: the namespace's base URL is `{url}/servicebus` |
//! | `/keyvault/keys/…` | [`super::key_vault`]: the vault's base URL is `{url}/keyvault`, one P-256 key |
//! | `/_sim/requests`, `/_sim/faults` | [`super::faults::control_router`] |
//! | `/_sim/clock` | the sim's time and its `KILN_CLOCK` setting |
//! | `/_sim/bus/{queue}` | the messages of a queue (or `{queue}/$DeadLetterQueue`) as they stand |
//!
//! Everything but `/_sim/…` passes the fault and record layer. The clock is a
//! [`ScaledClock`] fixed at start: kiln reads the same one from `KILN_CLOCK`,
//! so the sim's clock cannot be moved afterwards without the two drifting apart.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::arm::{self, ArmSimOptions, ArmWorld};
use super::bus::{self, Bus, QueueConfig};
use super::faults::{self, Connection, FaultRule, RecordedRequest, SimListener, Transport};
use super::key_vault::{self, KeyVault, KEY_VAULT_PREFIX};
use crate::ports::{Clock, ScaledClock};

/// Where Service Bus lives under the sim's URL.
pub const SERVICE_BUS_PREFIX: &str = "/servicebus";

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Sim seconds per wall second.
    pub clock_factor: u32,
    /// Sim time at start; now when absent.
    pub start: Option<DateTime<Utc>>,
    /// Loopback port; 0 picks a free one.
    pub port: u16,
    /// The namespace's queues; empty: kiln's, as `infra/queues.json` declares them.
    pub queues: Vec<QueueConfig>,
    /// `maxDeliveryCount` overrides by queue name.
    pub max_delivery_counts: std::collections::BTreeMap<String, u32>,
    /// What `kiln serve` is told to use (`AZURE_SUBSCRIPTION_ID` …).
    pub subscription_id: String,
    pub resource_group: String,
    pub location: String,
    /// The Service Bus host name kiln is configured with (not resolved: the URL is the sim's).
    pub namespace: String,
}

impl SimOptions {
    /// kiln's queues and names; the subscription is the one the example
    /// pipelines name, so they run against the sim unchanged.
    pub fn new(clock_factor: u32) -> Self {
        Self {
            clock_factor,
            start: None,
            port: 0,
            queues: Vec::new(),
            max_delivery_counts: std::collections::BTreeMap::new(),
            subscription_id: "00000000-0000-0000-0000-000000000000".into(),
            resource_group: "rg-kiln-templates".into(),
            location: "westeurope".into(),
            namespace: "sb-kiln.servicebus.windows.net".into(),
        }
    }

    /// Sets a queue's `maxDeliveryCount`.
    pub fn max_delivery_count(mut self, queue: &str, n: u32) -> Self {
        self.max_delivery_counts.insert(queue.to_string(), n);
        self
    }

    /// The queues to serve, overrides applied.
    fn resolved_queues(&self) -> anyhow::Result<Vec<QueueConfig>> {
        let mut queues = if self.queues.is_empty() {
            QueueConfig::kiln_queues()?
        } else {
            self.queues.clone()
        };
        for (name, n) in &self.max_delivery_counts {
            let q = queues
                .iter_mut()
                .find(|q| &q.name == name)
                .with_context(|| format!("max_delivery_count: no queue `{name}`"))?;
            q.max_delivery_count = *n;
        }
        Ok(queues)
    }
}

pub struct Sim;

impl Sim {
    /// Binds 127.0.0.1, builds the clock and the worlds, and serves until the
    /// handle is stopped or dropped.
    pub async fn start(options: SimOptions) -> anyhow::Result<SimHandle> {
        let queues = options.resolved_queues()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
            .await
            .with_context(|| {
                format!(
                    "Cannot listen on 127.0.0.1:{} (choose another with --port)",
                    options.port
                )
            })?;
        let url = format!("http://{}", listener.local_addr()?);
        let now = Utc::now();
        let clock = ScaledClock {
            start: options.start.unwrap_or(now),
            anchor: now,
            factor: options.clock_factor.max(1),
        };
        let world = ArmWorld::new(
            Arc::new(clock),
            ArmSimOptions {
                scale: Some(clock),
                ..ArmSimOptions::new(url.clone())
            },
        );
        let bus = Arc::new(Bus::new(clock, &queues));
        let transport = Transport::new(clock);
        let vault = Arc::new(KeyVault::new(&format!("{url}{KEY_VAULT_PREFIX}")));
        let router = arm::router(world.clone())
            .nest(
                SERVICE_BUS_PREFIX,
                bus::routes::router(bus.clone(), &format!("{url}{SERVICE_BUS_PREFIX}")),
            )
            .nest(KEY_VAULT_PREFIX, key_vault::router(vault.clone()))
            .merge(faults::control_router(transport.clone()))
            .merge(control_router(clock, bus.clone()))
            .layer(axum::middleware::from_fn_with_state(
                transport.clone(),
                faults::layer,
            ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(
                SimListener(listener),
                router.into_make_service_with_connect_info::<Connection>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sim: server stopped");
            }
        });
        tracing::info!(%url, factor = clock.factor, "sim: listening");
        Ok(SimHandle {
            url,
            clock,
            bus,
            transport,
            arm: world,
            vault,
            options,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

fn control_router(clock: ScaledClock, bus: Arc<Bus>) -> Router {
    let clock_route = get(move || async move {
        Json(json!({
            "now": clock.now().to_rfc3339(),
            "factor": clock.factor,
            "setting": clock.to_setting(),
        }))
    });
    Router::new()
        .route("/_sim/clock", clock_route)
        .route("/_sim/bus/{*path}", get(bus_snapshot))
        .with_state(bus)
}

async fn bus_snapshot(State(bus): State<Arc<Bus>>, Path(path): Path<String>) -> Response {
    match bus.with(|ns, now| ns.snapshot(&path, now)) {
        Ok(list) => Json(list).into_response(),
        Err(e) => (axum::http::StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

/// A running simulator.
pub struct SimHandle {
    url: String,
    clock: ScaledClock,
    bus: Arc<Bus>,
    transport: Arc<Transport>,
    arm: Arc<ArmWorld>,
    vault: Arc<KeyVault>,
    options: SimOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: ARM's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Service Bus namespace's base URL.
    pub fn service_bus_url(&self) -> String {
        format!("{}{SERVICE_BUS_PREFIX}", self.url)
    }

    pub fn clock(&self) -> ScaledClock {
        self.clock
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    pub fn arm(&self) -> &Arc<ArmWorld> {
        &self.arm
    }

    /// The simulated Key Vault and its one signing key.
    pub fn key_vault(&self) -> &Arc<KeyVault> {
        &self.vault
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// Every Azure request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.transport.requests()
    }

    pub fn inject(&self, rule: FaultRule) {
        self.transport.inject(rule);
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The settings a `kiln serve` needs to run against this simulator, on its clock.
    /// (`KILN_EVENTS_KEY` is kiln's own secret and not among them.)
    pub fn kiln_env(&self) -> Vec<(String, String)> {
        let o = &self.options;
        [
            ("KILN_PROVIDER", "azure".to_string()),
            ("KILN_AZURE_MANAGEMENT_URL", self.url.clone()),
            ("KILN_AZURE_SERVICE_BUS_URL", self.service_bus_url()),
            ("KILN_AZURE_CREDENTIAL", "sim".to_string()),
            (
                crate::providers::azure::key_vault::KEY_SETTING,
                self.vault.key_id(),
            ),
            ("KILN_CLOCK", self.clock.to_setting()),
            ("AZURE_SUBSCRIPTION_ID", o.subscription_id.clone()),
            ("KILN_AZURE_RESOURCE_GROUP", o.resource_group.clone()),
            ("KILN_AZURE_LOCATION", o.location.clone()),
            (
                "ServiceBusConnection__fullyQualifiedNamespace",
                o.namespace.clone(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Stops serving: open requests get 2 s to finish (a receive may be
    /// waiting up to its `timeout`), then the server task is ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    /// Dropped without `stop`: the server ends at once, open requests too.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
