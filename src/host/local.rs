//! `kiln local`: the factory on one machine.
//!
//! The same function code the Functions host calls, driven by kiln: timers
//! from the function.json schedules, Service Bus queues from the embedded
//! durable queue, the HTTP API on a loopback port. Every invocation goes
//! through [`crate::app::invoke`] with the `{Data, Metadata}` contract.
//!
//! Shutdown (SIGINT/SIGTERM) stops taking work, lets running invocations
//! finish, and leaves every unfinished message in the queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::function_json::{FunctionSpec, TriggerSpec};
use super::timers;
use crate::app::wire::timer_payload;
use crate::app::{invoke, App, FunctionName, Invocation, InvokeError};
use crate::ports::{Clock, OutgoingMessage, Queue};
use crate::store::port::NewDeadLetter;
use crate::store::sqlite::queue::LocalQueue;

/// How long a delivered message stays locked to its invocation.
const LOCK: chrono::Duration = chrono::Duration::seconds(120);
/// Consumers per queue.
const WORKERS_PER_QUEUE: usize = 2;
/// Longest wait between queue checks when nothing wakes the worker.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// The `Queue` port on the embedded queue; wakes local consumers at once.
pub struct LocalQueuePort {
    pub queue: LocalQueue,
    pub clock: Arc<dyn Clock>,
    pub notify: Arc<Notify>,
}

#[async_trait]
impl Queue for LocalQueuePort {
    async fn send(&self, queue: &str, m: OutgoingMessage) -> anyhow::Result<()> {
        let now = self.clock.now();
        let at = now + chrono::Duration::from_std(m.delay).unwrap_or_default();
        self.queue.send(queue, &m.message_id, &m.body, now, at)?;
        self.notify.notify_waiters();
        Ok(())
    }
}

pub struct LocalHost {
    pub app: App,
    pub specs: Vec<FunctionSpec>,
    pub queue: LocalQueue,
    pub notify: Arc<Notify>,
}

impl LocalHost {
    /// Runs timers, queue consumers and the HTTP API until `shutdown` fires.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let now = self.app.clock.now();
        let released = self.queue.release_stale_locks(now)?;
        if released > 0 {
            tracing::info!(released, "released message locks left by a previous run");
        }
        let mut tasks = JoinSet::new();
        for spec in &self.specs {
            match &spec.trigger {
                TriggerSpec::Timer {
                    schedule,
                    run_on_startup,
                } => {
                    let cron = timers::parse_ncrontab(schedule).map_err(anyhow::Error::msg)?;
                    tasks.spawn(timer_loop(
                        self.app.clone(),
                        spec.name,
                        cron,
                        *run_on_startup,
                        shutdown.clone(),
                    ));
                }
                TriggerSpec::ServiceBus {
                    queue,
                    max_delivery_count,
                    ..
                } => {
                    for _ in 0..WORKERS_PER_QUEUE {
                        tasks.spawn(queue_loop(
                            self.app.clone(),
                            spec.name,
                            self.queue.clone(),
                            queue.clone(),
                            *max_delivery_count,
                            self.notify.clone(),
                            shutdown.clone(),
                        ));
                    }
                }
                // Served by the HTTP API (`POST /api/events/base-image`).
                TriggerSpec::EventGrid | TriggerSpec::Http { .. } => {}
            }
        }
        tasks.spawn(deliver_events(self.app.clone(), shutdown.clone()));
        let router = crate::host::serve::local_router(self.app.clone());
        let header_timeout = self.app.settings.http_read_timeout;
        let mut http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let stop = async move {
                let _ = http_shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = super::http::serve(listener, router, header_timeout, stop).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        let _ = shutdown.wait_for(|s| *s).await;
        tracing::info!("shutting down: finishing running invocations");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(60), drain)
            .await
            .is_err()
        {
            tracing::warn!("invocations still running after 60 s; their messages stay queued and are delivered again");
        }
        Ok(())
    }
}

/// Delivers webhook events every second (in Azure the sweeper does it).
async fn deliver_events(app: App, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = app.events.deliver_due(app.clock.now()).await {
            tracing::warn!(error = %e, "event delivery failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn fire_timer(
    app: &App,
    f: FunctionName,
    last: Option<DateTime<Utc>>,
    next: DateTime<Utc>,
    past_due: bool,
) {
    let mut data = Map::new();
    data.insert("timer".into(), timer_payload(last, next, past_due));
    let inv = Invocation {
        data,
        metadata: Map::from_iter([("sys".to_string(), sys_meta(f, app.clock.now()))]),
    };
    match invoke(app, f, inv).await {
        Ok(_) => {}
        // A timer is not retried by the Functions host either; the next tick is.
        Err(e) => tracing::warn!(function = %f, error = %e, "timer invocation failed"),
    }
    if let Err(e) = app.store.record_fire(f.as_str(), app.clock.now()).await {
        tracing::warn!(function = %f, error = %e, "timer state not saved");
    }
}

async fn timer_loop(
    app: App,
    f: FunctionName,
    cron: croner::Cron,
    on_startup: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let now = app.clock.now();
    let last = last_fire(&app, f).await;
    let missed = last.is_some_and(|l| timers::missed_since(&cron, l, now));
    if on_startup || missed {
        let next = timers::next_after(&cron, now).unwrap_or(now);
        fire_timer(&app, f, last, next, missed).await;
    }
    loop {
        let now = app.clock.now();
        let Some(next) = timers::next_after(&cron, now) else {
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let last = last_fire(&app, f).await;
        let after = timers::next_after(&cron, next).unwrap_or(next);
        fire_timer(&app, f, last, after, false).await;
    }
}

async fn last_fire(app: &App, f: FunctionName) -> Option<DateTime<Utc>> {
    match app.store.last_fire(f.as_str()).await {
        Ok(at) => at,
        Err(e) => {
            tracing::warn!(function = %f, error = %e, "timer state not read; no catch-up");
            None
        }
    }
}

fn sys_meta(f: FunctionName, now: DateTime<Utc>) -> Value {
    json!({ "MethodName": f.as_str(), "UtcNow": now.to_rfc3339(), "RandGuid": uuid::Uuid::new_v4().to_string() })
}

async fn queue_loop(
    app: App,
    f: FunctionName,
    queue: LocalQueue,
    name: String,
    max_delivery: u32,
    notify: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let woken = notify.notified();
        let now = app.clock.now();
        let delivery = match queue.receive(&name, now, LOCK) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue = %name, error = %e, "receive failed");
                None
            }
        };
        let Some(d) = delivery else {
            let mut stop = shutdown.clone();
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        };
        let mut data = Map::new();
        // The Functions host JSON-encodes string messages once more; so do we.
        data.insert(
            "msg".into(),
            Value::String(serde_json::to_string(&d.body).unwrap_or_default()),
        );
        let metadata = Map::from_iter([
            ("MessageId".to_string(), json!(d.message_id)),
            ("DeliveryCount".to_string(), json!(d.delivery_count)),
            (
                "EnqueuedTimeUtc".to_string(),
                json!(d.enqueued_at.to_rfc3339()),
            ),
            ("SequenceNumber".to_string(), json!(d.seq)),
            ("ContentType".to_string(), json!("application/json")),
            ("sys".to_string(), sys_meta(f, now)),
        ]);
        let result = invoke(&app, f, Invocation { data, metadata }).await;
        let now = app.clock.now();
        let settle = match result {
            Ok(_) => queue.complete(&d).map(|_| ()),
            Err(e) => {
                let reason = match &e {
                    InvokeError::BadPayload(m) => m.clone(),
                    InvokeError::Failed(err) => format!("{err:#}"),
                };
                if d.delivery_count >= max_delivery {
                    tracing::warn!(queue = %name, message = %d.message_id, "dead-lettered after {} deliveries: {reason}", d.delivery_count);
                    dead_letter(
                        &app,
                        &queue,
                        &d,
                        &format!("MaxDeliveryCountExceeded: {reason}"),
                        now,
                    )
                    .await
                } else {
                    let backoff =
                        chrono::Duration::milliseconds(500 * 2i64.pow(d.delivery_count.min(8)));
                    tracing::warn!(queue = %name, message = %d.message_id, delivery = d.delivery_count, "invocation failed, retrying: {reason}");
                    queue.abandon(&d, now + backoff)
                }
            }
        };
        if let Err(e) = settle {
            tracing::warn!(queue = %name, error = %e, "message not settled; it will be delivered again");
        }
    }
}

/// Records the dead letter, then removes the message: a crash in between
/// records it twice, never loses it.
async fn dead_letter(
    app: &App,
    queue: &LocalQueue,
    d: &crate::store::sqlite::queue::Delivery,
    reason: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    app.store
        .record_dead_letter(&NewDeadLetter {
            queue: &d.queue,
            message_id: &d.message_id,
            body: &d.body,
            reason,
            delivery_count: d.delivery_count,
            now,
        })
        .await?;
    app.metrics.dead_lettered(&d.queue);
    queue.complete(d).map(|_| ())
}
