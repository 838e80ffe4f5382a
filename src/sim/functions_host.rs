//! The Functions host, simulated: it drives a custom handler (`kiln serve`)
//! over HTTP the way the Azure Functions host does, on the sim's clock.
//!
//! - Reads `handlers/*/function.json` through [`crate::host::function_json`] (the
//!   same single source the real host reads) and waits until the handler
//!   answers `GET /`.
//! - **Service Bus triggers**: `maxConcurrentCalls` receivers per queue
//!   (host.json's `extensions.serviceBus`) take messages from the sim's
//!   Service Bus by REST peek-lock, POST `{Data, Metadata}` to
//!   `/{function}`, renew the lock while the invocation runs (up to
//!   `maxAutoLockRenewalDuration`, 5 min), and complete on 2xx or abandon
//!   otherwise (`autoCompleteMessages`). An invocation past host.json's
//!   `functionTimeout` (in sim time) fails and its message is abandoned.
//! - **Timers** fire on their NCRONTAB schedules in sim time, one invocation
//!   at a time per function; occurrences missed while the previous one ran are
//!   delivered once, `IsPastDue: true`; `runOnStartup` fires at start.
//! - **Event Grid**: the app URL's `/runtime/webhooks/eventgrid?functionName=…`
//!   answers the validation handshake itself and invokes the function once
//!   per event; **HTTP** requests to `/api/…` are forwarded to the handler on
//!   their original path (`enableForwardingHttpRequest`) and its answer relayed.
//!
//! - **Scale-out**: the app may run on several instances
//!   ([`HostOptions::scaled`]): each invocation and each forwarded request
//!   goes to one live instance, round-robin (see [`instances`]); an
//!   instance can be replaced while the host runs
//!   ([`HostHandle::replace_instance`]), as the platform replaces one that died.
//!
//! Function keys are checked when one is set ([`HostOptions::function_key`]),
//! one key for every function. Not simulated: the scale controller (the
//! instances are the ones given), the host's own retry policies, output
//! bindings (kiln sends through its `Queue` port).

mod app;
mod instances;
pub mod payload;
mod queues;
#[cfg(test)]
mod tests;
mod timer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::host::function_json::{self, FunctionSpec, TriggerSpec};
use crate::host::timers;
use crate::ports::{Clock, ScaledClock};
use crate::sim::server::SimHandle;

/// The host version the handler is told about.
const HOST_VERSION: &str = "4.0.0-kiln-sim";

#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The custom handler's instances, `http://127.0.0.1:PORT` each: one for
    /// an app on one instance, several for a scaled-out one.
    pub instances: Vec<String>,
    /// `handlers/`, one folder per function.
    pub handlers_dir: PathBuf,
    /// The sim's Service Bus base URL.
    pub service_bus_url: String,
    pub clock: ScaledClock,
    /// Receivers per queue and instance (host.json
    /// `extensions.serviceBus.maxConcurrentCalls`, which is per instance).
    pub max_concurrent_calls: usize,
    /// Sim time an invocation may take (host.json `functionTimeout`).
    pub function_timeout: chrono::Duration,
    /// Sim time the host keeps renewing a message's lock during an invocation.
    pub max_auto_lock_renewal: chrono::Duration,
    /// Wall seconds one receive waits for a message.
    pub receive_timeout_secs: u64,
    /// Wall time the handler gets to answer `GET /` (60 s, as the host allows).
    pub startup_timeout: Duration,
    /// The key `authLevel: function` HTTP functions require (`x-functions-key`
    /// header or `code` query), as the host checks it; `None` checks nothing.
    pub function_key: Option<String>,
    /// kiln's own API key (`KILN_API_KEYS`), which the host's helpers
    /// ([`HostHandle::wait_for_build`]) send as a bearer token; the host
    /// forwards a caller's `Authorization` as it is.
    pub api_key: Option<String>,
    /// Loopback port of the host's own HTTP front (`/api/...` forwarded to
    /// the handler, as the Functions host's URL); 0 picks a free one.
    pub app_port: u16,
}

impl HostOptions {
    /// Options against `sim`, with the host's defaults (maxConcurrentCalls 16,
    /// functionTimeout 5 min); [`HostOptions::host_json`] reads an app's own.
    pub fn new(sim: &SimHandle, handler_url: &str, handlers_dir: &Path) -> Self {
        Self::scaled(sim, &[handler_url.to_string()], handlers_dir)
    }

    /// As [`HostOptions::new`], for an app scaled out to `handler_urls`.
    pub fn scaled(sim: &SimHandle, handler_urls: &[String], handlers_dir: &Path) -> Self {
        Self {
            instances: handler_urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            handlers_dir: handlers_dir.to_path_buf(),
            service_bus_url: sim.service_bus_url(),
            clock: sim.clock(),
            max_concurrent_calls: 16,
            function_timeout: chrono::Duration::minutes(5),
            max_auto_lock_renewal: chrono::Duration::minutes(5),
            receive_timeout_secs: 1,
            startup_timeout: Duration::from_secs(60),
            function_key: None,
            api_key: None,
            app_port: 0,
        }
    }

    /// Takes `maxConcurrentCalls` and `functionTimeout` from a host.json.
    pub fn host_json(mut self, path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read {}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        if let Some(n) = doc.pointer("/extensions/serviceBus/maxConcurrentCalls") {
            self.max_concurrent_calls = n.as_u64().filter(|n| *n >= 1).with_context(|| {
                format!(
                    "{}: extensions.serviceBus.maxConcurrentCalls: expected a whole number of at least 1, got {n}",
                    path.display()
                )
            })? as usize;
        }
        if let Some(t) = doc.get("functionTimeout") {
            self.function_timeout = t.as_str().and_then(parse_timespan).with_context(|| {
                format!(
                    "{}: functionTimeout: expected hh:mm:ss, got {t}",
                    path.display()
                )
            })?;
        }
        Ok(self)
    }
}

/// `hh:mm:ss`, as host.json writes time spans.
fn parse_timespan(s: &str) -> Option<chrono::Duration> {
    let parts: Vec<i64> = s
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [h, m, sec] if h >= 0 && (0..60).contains(&m) && (0..60).contains(&sec) => {
            Some(chrono::Duration::seconds(h * 3600 + m * 60 + sec))
        }
        _ => None,
    }
}

/// How a queue invocation's message was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Settled {
    Completed,
    Abandoned,
    /// The lock had run out (or the settle failed): Service Bus delivers it again.
    LockLost,
}

/// What triggered an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum InvocationTrigger {
    Queue {
        queue: String,
        message_id: String,
        delivery_count: u64,
        settled: Settled,
    },
    Timer {
        past_due: bool,
    },
    EventGrid {
        event_id: String,
    },
}

/// One invocation the host made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationRecord {
    pub function: String,
    pub trigger: InvocationTrigger,
    /// The handler's status; `None` when it gave no answer within the function timeout.
    pub status: Option<u16>,
    pub sim_started: DateTime<Utc>,
    pub sim_ended: DateTime<Utc>,
    /// The instance it went to (its index in [`HostOptions::instances`]) and
    /// that instance's URL then; `None` when no instance was live.
    pub instance: Option<usize>,
    pub instance_url: Option<String>,
}

impl InvocationRecord {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

struct Shared {
    opts: HostOptions,
    specs: Vec<FunctionSpec>,
    http: reqwest::Client,
    log: Mutex<Vec<InvocationRecord>>,
    instances: instances::Instances,
}

/// What one invocation got, and from which instance.
struct Invoked {
    instance: Option<instances::Picked>,
    /// The handler's status and body; `None` without an answer (no live
    /// instance, a refused or broken connection, or the function timeout).
    answer: Option<(u16, String)>,
}

impl Invoked {
    fn status(&self) -> Option<u16> {
        self.answer.as_ref().map(|(s, _)| *s)
    }

    fn succeeded(&self) -> bool {
        self.status().is_some_and(|s| (200..300).contains(&s))
    }
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        self.opts.clock.now()
    }

    fn wall(&self, d: chrono::Duration) -> Duration {
        self.opts.clock.wall(d.to_std().unwrap_or_default())
    }

    fn record(&self, r: InvocationRecord) {
        self.log.lock().expect("log mutex").push(r);
    }

    /// The function timeout on the wall (at least `floor`).
    fn timeout_wall(&self, floor: Duration) -> Duration {
        self.wall(self.opts.function_timeout).max(floor)
    }

    /// POSTs one invocation to the next live instance (waiting up to the
    /// function timeout for one); a refused connection takes that instance
    /// out of rotation.
    async fn invoke(&self, function: &str, body: &Value) -> Invoked {
        let wait = self.timeout_wall(Duration::from_millis(50));
        match self.instances.pick(wait).await {
            Some(instance) => self.invoke_on(instance, function, body).await,
            None => {
                tracing::warn!(function, "sim host: no live instance to invoke");
                Invoked {
                    instance: None,
                    answer: None,
                }
            }
        }
    }

    /// POSTs one invocation to `instance`.
    async fn invoke_on(
        &self,
        instance: instances::Picked,
        function: &str,
        body: &Value,
    ) -> Invoked {
        let timeout = self.timeout_wall(Duration::from_millis(50));
        let r = self
            .http
            .post(format!("{}/{function}", instance.url))
            .header(
                "x-azure-functions-invocationid",
                uuid::Uuid::new_v4().to_string(),
            )
            .header("x-azure-functions-hostversion", HOST_VERSION)
            .header("user-agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
            .json(body)
            .timeout(timeout)
            .send()
            .await;
        let answer = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(text) => Some((status, text)),
                    // The instance died while it answered.
                    Err(e) => {
                        tracing::warn!(function, instance = instance.index, error = %e, "sim host: the answer broke off");
                        None
                    }
                }
            }
            Err(e) => {
                if e.is_connect() {
                    self.instances.mark_down(&instance);
                }
                tracing::warn!(function, instance = instance.index, error = %e, "sim host: invocation got no answer");
                None
            }
        };
        Invoked {
            instance: Some(instance),
            answer,
        }
    }

    /// An invocation's record.
    fn record_invocation(
        &self,
        function: &str,
        trigger: InvocationTrigger,
        invoked: &Invoked,
        sim_started: DateTime<Utc>,
    ) {
        self.record(InvocationRecord {
            function: function.to_string(),
            trigger,
            status: invoked.status(),
            sim_started,
            sim_ended: self.now(),
            instance: invoked.instance.as_ref().map(|i| i.index),
            instance_url: invoked.instance.as_ref().map(|i| i.url.clone()),
        });
    }
}

pub struct FunctionsHost;

impl FunctionsHost {
    /// Reads the catalog, waits for the handler, and starts the triggers and
    /// the app's HTTP side.
    pub async fn start(opts: HostOptions) -> anyhow::Result<HostHandle> {
        let specs = function_json::load(&opts.handlers_dir)?;
        anyhow::ensure!(
            !opts.instances.is_empty(),
            "the app needs at least one instance"
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        for url in &opts.instances {
            wait_for_handler(&http, url, opts.startup_timeout).await?;
        }
        let app_port = opts.app_port;
        let shared = Arc::new(Shared {
            instances: instances::Instances::new(&opts.instances),
            opts,
            specs,
            http,
            log: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for spec in &shared.specs {
            match &spec.trigger {
                TriggerSpec::ServiceBus { queue, .. } => {
                    // Each instance's host runs maxConcurrentCalls receivers;
                    // any receive goes to any live instance.
                    let receivers = shared.opts.max_concurrent_calls * shared.instances.len();
                    for _ in 0..receivers {
                        tasks.push(tokio::spawn(queues::worker(
                            shared.clone(),
                            spec.clone(),
                            queue.clone(),
                            stopped.clone(),
                        )));
                    }
                }
                // One schedule per function for the whole app, as the real
                // host's blob lease per timer function gives one instance
                // each firing; the firing goes to one live instance.
                TriggerSpec::Timer {
                    schedule,
                    run_on_startup,
                } => {
                    let cron = timers::parse_ncrontab(schedule).map_err(anyhow::Error::msg)?;
                    tasks.push(tokio::spawn(timer::run(
                        shared.clone(),
                        spec.clone(),
                        cron,
                        *run_on_startup,
                        stopped.clone(),
                    )));
                }
                // Served by the app's HTTP side.
                TriggerSpec::EventGrid | TriggerSpec::Http { .. } => {}
            }
        }
        {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                shared.instances.probe_down(&shared.http, stopped).await;
            }));
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
            .await
            .with_context(|| format!("Cannot listen on 127.0.0.1:{app_port}"))?;
        let app_url = format!("http://{}", listener.local_addr()?);
        let router = app::router(shared.clone());
        let mut http_stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sim host: app listener stopped");
            }
        }));
        Ok(HostHandle {
            app_url,
            shared,
            stop,
            tasks,
        })
    }
}

async fn wait_for_handler(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // Any HTTP answer means the handler is up; socket errors mean wait.
        if http
            .get(format!("{url}/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the custom handler at {url} did not answer GET / within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running host.
pub struct HostHandle {
    app_url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl HostHandle {
    /// The Function App's URL: `/api/…` and `/runtime/webhooks/eventgrid`.
    pub fn app_url(&self) -> &str {
        &self.app_url
    }

    /// Every invocation so far, in the order they ended.
    pub fn invocations(&self) -> Vec<InvocationRecord> {
        self.shared.log.lock().expect("log mutex").clone()
    }

    /// The instances' URLs, by index.
    pub fn instances(&self) -> Vec<String> {
        self.shared.instances.urls()
    }

    /// Puts a new process at `url` in place of instance `index` (one that
    /// died, say), once it answers `GET /`; from then on invocations go to it.
    pub async fn replace_instance(&self, index: usize, url: &str) -> anyhow::Result<()> {
        let url = url.trim_end_matches('/');
        wait_for_handler(&self.shared.http, url, self.shared.opts.startup_timeout).await?;
        self.shared.instances.replace(index, url)
    }

    /// Waits until kiln's `/api/builds/{id}` (through the app URL) reports
    /// `state`; fails at once if the build ends in another terminal state,
    /// and at `deadline` with the last answer.
    pub async fn wait_for_build(
        &self,
        id: &str,
        state: &str,
        deadline: Duration,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/builds/{id}", self.app_url);
        let http = self.shared.http.clone();
        let key = self.shared.opts.function_key.clone().unwrap_or_default();
        let api_key = self.shared.opts.api_key.clone();
        let last = Arc::new(Mutex::new(Value::Null));
        let seen = last.clone();
        let r = wait_until(deadline, &format!("build {id} to be {state}"), || {
            let (http, url, seen, key) = (http.clone(), url.clone(), seen.clone(), key.clone());
            let api_key = api_key.clone();
            async move {
                let mut get = http.get(&url).header("x-functions-key", key);
                if let Some(k) = api_key {
                    get = get.bearer_auth(k);
                }
                let doc: Value = get.send().await.ok()?.json().await.ok()?;
                *seen.lock().expect("seen mutex") = doc.clone();
                let now = doc["state"].as_str().unwrap_or("").to_string();
                if now == state {
                    return Some(Ok(doc));
                }
                if ["succeeded", "failed", "canceled"].contains(&now.as_str()) {
                    return Some(Err(anyhow::anyhow!(
                        "build {id} ended {now}, not {state}: {doc}"
                    )));
                }
                None
            }
        })
        .await;
        match r {
            Ok(result) => result,
            Err(e) => Err(e.context(format!("last answer: {}", last.lock().expect("last mutex")))),
        }
    }

    /// Stops the triggers and the app listener; running invocations are cut.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Probes every 20 ms until `probe` gives a value; an error naming `what`
/// after `deadline`.
pub async fn wait_until<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!(
                "timed out after {} s waiting for {what}",
                deadline.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
