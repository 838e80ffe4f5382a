//! Kiln's queues on Azure Service Bus, through the REST send endpoint.
//!
//! `POST https://{namespace}/{queue}/messages` with an Entra ID token for
//! `https://servicebus.azure.net/.default`. The `BrokerProperties` header
//! carries the `MessageId` (Service Bus duplicate detection keys on it) and,
//! for a delayed poll, `ScheduledEnqueueTimeUtc` in RFC 1123 form. Any other
//! header would become an application property of the message, so this
//! client sends no `x-ms-client-request-id`; the id is still logged.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Map};

use super::arm::{ArmClient, ArmOptions, RetryPolicy};
use crate::ports::{Clock, OutgoingMessage, Queue};

pub const SCOPE: &str = "https://servicebus.azure.net/.default";

/// Client options for a namespace (`https://sb-kiln.servicebus.windows.net`, or a test server).
pub fn options(base_url: &str) -> ArmOptions {
    ArmOptions {
        base_url: base_url.to_string(),
        scope: SCOPE.to_string(),
        service: "servicebus",
        send_client_request_id: false,
        ..ArmOptions::management()
    }
}

pub struct ServiceBusQueue {
    client: ArmClient,
    /// Kiln's clock: a scheduled delivery is dated in kiln's time, which is
    /// the simulator's under `KILN_CLOCK`.
    clock: Arc<dyn Clock>,
}

impl ServiceBusQueue {
    pub fn new(client: ArmClient, clock: Arc<dyn Clock>) -> Self {
        Self { client, clock }
    }
}

/// The `BrokerProperties` header for a message sent at `now`.
fn broker_properties(message: &OutgoingMessage, now: chrono::DateTime<Utc>) -> String {
    let mut props = Map::new();
    props.insert("MessageId".into(), json!(message.message_id));
    if message.delay > Duration::ZERO {
        let at = now
            + chrono::Duration::from_std(message.delay)
                .unwrap_or_else(|_| chrono::Duration::days(1));
        props.insert(
            "ScheduledEnqueueTimeUtc".into(),
            json!(at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        );
    }
    serde_json::Value::Object(props).to_string()
}

#[async_trait]
impl Queue for ServiceBusQueue {
    async fn send(&self, queue: &str, message: OutgoingMessage) -> anyhow::Result<()> {
        let broker = broker_properties(&message, self.clock.now());
        let body = message.body.clone();
        // Retrying a send may deliver a twin if the first one landed unseen;
        // every consumer is idempotent (at-least-once is the contract), and
        // duplicate detection on MessageId removes most twins anyway.
        let r = self
            .client
            .send_with(
                Method::POST,
                &format!("/{queue}/messages"),
                RetryPolicy::Idempotent,
                |b| {
                    b.header("BrokerProperties", broker.as_str())
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                },
            )
            .await
            .with_context(|| format!("Cannot send to queue {queue}"))?;
        let r = r
            .ok()
            .with_context(|| format!("Cannot send to queue {queue}"))?;
        tracing::debug!(queue, message_id = %message.message_id, delay_s = message.delay.as_secs(), client_request_id = %r.client_request_id, "message sent");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::azure::arm::testing::{client_with, TOKEN};

    fn queue(server: &MockServer) -> ServiceBusQueue {
        let mut o = options(&server.uri());
        o.backoff_base = Duration::ZERO;
        o.backoff_max = Duration::ZERO;
        ServiceBusQueue::new(client_with(o).0, Arc::new(crate::ports::SystemClock))
    }

    fn message(delay: u64) -> OutgoingMessage {
        OutgoingMessage {
            message_id: "poll-b1-7".into(),
            body: r#"{"build":"b1"}"#.into(),
            delay: Duration::from_secs(delay),
        }
    }

    #[test]
    fn a_delay_becomes_a_scheduled_enqueue_time_in_rfc_1123() {
        let now = Utc.with_ymd_and_hms(1994, 11, 6, 8, 47, 37).unwrap();
        assert_eq!(
            broker_properties(&message(120), now),
            r#"{"MessageId":"poll-b1-7","ScheduledEnqueueTimeUtc":"Sun, 06 Nov 1994 08:49:37 GMT"}"#
        );
        assert_eq!(
            broker_properties(&message(0), now),
            r#"{"MessageId":"poll-b1-7"}"#
        );
    }

    #[tokio::test]
    async fn a_message_is_posted_with_its_id_a_token_and_no_request_id_property() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/build-polls/messages"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&server)
            .await;
        queue(&server)
            .send("build-polls", message(30))
            .await
            .unwrap();
        let r = &server.received_requests().await.unwrap()[0];
        let props: serde_json::Value =
            serde_json::from_str(r.headers["brokerproperties"].to_str().unwrap()).unwrap();
        assert_eq!(props["MessageId"], "poll-b1-7");
        assert!(props["ScheduledEnqueueTimeUtc"]
            .as_str()
            .unwrap()
            .ends_with(" GMT"));
        assert_eq!(r.body, br#"{"build":"b1"}"#);
        assert!(!r.headers.contains_key("x-ms-client-request-id"));
    }

    #[tokio::test]
    async fn the_scheduled_time_is_read_from_kilns_clock_not_the_system_clock() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201))
            .mount(&server)
            .await;
        let at = Utc.with_ymd_and_hms(2031, 3, 4, 5, 6, 0).unwrap();
        let q = ServiceBusQueue::new(
            client_with(options(&server.uri())).0,
            Arc::new(crate::ports::ManualClock::new(at)),
        );
        q.send("build-polls", message(60)).await.unwrap();
        let r = &server.received_requests().await.unwrap()[0];
        let props: serde_json::Value =
            serde_json::from_str(r.headers["brokerproperties"].to_str().unwrap()).unwrap();
        assert_eq!(
            props["ScheduledEnqueueTimeUtc"],
            "Tue, 04 Mar 2031 05:07:00 GMT"
        );
    }

    #[tokio::test]
    async fn a_busy_namespace_is_retried_and_a_missing_queue_is_an_error() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/build-requests/messages"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/build-requests/messages"))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&server)
            .await;
        let q = queue(&server);
        q.send("build-requests", message(0)).await.unwrap();
        // Service Bus answers 410 Gone for an entity that does not exist.
        Mock::given(method("POST"))
            .and(path("/nope/messages"))
            .respond_with(ResponseTemplate::new(410))
            .mount(&server)
            .await;
        let e = q.send("nope", message(0)).await.unwrap_err();
        assert!(format!("{e:#}").contains("HTTP 410"), "{e:#}");
        assert!(!format!("{e:#}").contains(TOKEN));
    }
}
