//! Service Bus triggers: receive by peek-lock, invoke, renew the lock while
//! the invocation runs, complete or abandon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;

use super::{payload, InvocationTrigger, Invoked, Settled, Shared};
use crate::host::function_json::FunctionSpec;
use crate::providers::azure::identity::SIM_TOKEN;

/// A message taken from the sim's Service Bus.
struct Delivery {
    location: String,
    props: Value,
    content_type: Option<String>,
    body: String,
}

async fn receive(shared: &Shared, queue: &str) -> anyhow::Result<Option<Delivery>> {
    let o = &shared.opts;
    let r = shared
        .http
        .post(format!(
            "{}/{queue}/messages/head?timeout={}",
            o.service_bus_url, o.receive_timeout_secs
        ))
        .bearer_auth(SIM_TOKEN)
        .timeout(Duration::from_secs(o.receive_timeout_secs + 10))
        .send()
        .await?;
    match r.status().as_u16() {
        204 => Ok(None),
        201 => {
            let header = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let props: Value = serde_json::from_str(
                &header("brokerproperties").context("201 without BrokerProperties")?,
            )
            .context("BrokerProperties: not JSON")?;
            let location = header("location").context("201 without Location")?;
            let content_type = header("content-type");
            Ok(Some(Delivery {
                location,
                props,
                content_type,
                body: r.text().await?,
            }))
        }
        other => bail!("receive from {queue}: HTTP {other}"),
    }
}

/// Renews the lock at `location` at half its remaining time, up to `max`
/// of sim time; never returns (the caller drops it when the invocation ends).
async fn keep_lock(shared: &Shared, location: &str, mut until: DateTime<Utc>, max: DateTime<Utc>) {
    loop {
        let now = shared.now();
        let wait = shared.wall((until - now) / 2).max(Duration::from_millis(5));
        tokio::time::sleep(wait).await;
        if shared.now() >= max {
            std::future::pending::<()>().await;
        }
        let renewed = shared
            .http
            .post(location)
            .bearer_auth(SIM_TOKEN)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| {
                r.headers()
                    .get("brokerproperties")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| serde_json::from_str::<Value>(v).ok())
            })
            .and_then(|p| p["LockedUntilUtc"].as_str().and_then(parse_rfc1123));
        match renewed {
            Some(t) => until = t,
            // Lost: the message will be delivered again; nothing left to keep.
            None => std::future::pending::<()>().await,
        }
    }
}

fn parse_rfc1123(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

async fn settle(shared: &Shared, location: &str, complete: bool) -> Settled {
    let method = if complete {
        reqwest::Method::DELETE
    } else {
        reqwest::Method::PUT
    };
    let r = shared
        .http
        .request(method, location)
        .bearer_auth(SIM_TOKEN)
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() && complete => Settled::Completed,
        Ok(r) if r.status().is_success() => Settled::Abandoned,
        Ok(_) | Err(_) => Settled::LockLost,
    }
}

pub(super) async fn worker(
    shared: Arc<Shared>,
    spec: FunctionSpec,
    queue: String,
    stopped: watch::Receiver<bool>,
) {
    let function = spec.name.as_str();
    while !*stopped.borrow() {
        // The instance first: nothing is taken off the queue while no
        // instance is live to run it.
        let Some(instance) = shared.instances.pick(Duration::from_secs(1)).await else {
            continue;
        };
        let d = match receive(&shared, &queue).await {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(queue, error = %e, "sim host: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let started = shared.now();
        let message_id = d.props["MessageId"].as_str().unwrap_or("").to_string();
        let delivery_count = d.props["DeliveryCount"].as_u64().unwrap_or(1);
        let body = payload::queue_invocation(
            function,
            &payload::QueueMessage {
                binding: &spec.binding_name,
                body: &d.body,
                message_id: &message_id,
                delivery_count,
                sequence_number: d.props["SequenceNumber"].as_i64().unwrap_or(0),
                enqueued: d.props["EnqueuedTimeUtc"].as_str().and_then(parse_rfc1123),
                lock_token: d.props["LockToken"].as_str().unwrap_or(""),
                content_type: d.content_type.as_deref(),
            },
            started,
        );
        let until = d.props["LockedUntilUtc"]
            .as_str()
            .and_then(parse_rfc1123)
            .unwrap_or(started);
        let renew_until = started + shared.opts.max_auto_lock_renewal;
        // A refused connection, a broken-off answer, a 5xx or the function
        // timeout all fail the invocation: the message is abandoned and
        // Service Bus delivers it again, to whichever instance takes it.
        let invoked = tokio::select! {
            a = shared.invoke_on(instance.clone(), function, &body) => a,
            _ = keep_lock(&shared, &d.location, until, renew_until) => Invoked {
                instance: Some(instance),
                answer: None,
            },
        };
        let settled = settle(&shared, &d.location, invoked.succeeded()).await;
        shared.record_invocation(
            function,
            InvocationTrigger::Queue {
                queue: queue.clone(),
                message_id,
                delivery_count,
                settled,
            },
            &invoked,
            started,
        );
    }
}
