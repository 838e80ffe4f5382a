use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;

use super::*;
use crate::ports::{OutgoingMessage, Queue};
use crate::providers::azure::arm::testing::{client_with, RecordedPauses, TOKEN};
use crate::providers::azure::service_bus::{self, ServiceBusQueue};
use crate::sim::faults::{Fault, FaultRule, Outcome};
use crate::sim::server::{Sim, SimHandle, SimOptions};

const Q: &str = "build-polls";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 8, 17, 0, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn config(max: u32) -> QueueConfig {
    QueueConfig {
        name: Q.into(),
        max_delivery_count: max,
        lock_duration: secs(60),
        duplicate_window: chrono::Duration::minutes(10),
    }
}

fn msg(id: &str) -> NewMessage {
    NewMessage {
        message_id: Some(id.into()),
        body: br#"{"buildId":"b1"}"#.to_vec(),
        ..NewMessage::default()
    }
}

// ---------------------------------------------------------------- the model

#[test]
fn a_scheduled_message_is_held_until_its_enqueue_time() {
    let mut ns = Namespace::new(&[config(10)]);
    let at = t0() + secs(90);
    ns.send(
        Q,
        NewMessage {
            scheduled_enqueue: Some(at),
            ..msg("m1")
        },
        t0(),
    )
    .unwrap();
    assert_eq!(ns.receive(Q, at - secs(1)).unwrap(), None);
    assert_eq!(ns.next_change(Q, t0()), Some(at));
    let got = ns.receive(Q, at).unwrap().unwrap();
    assert_eq!(got.message.message_id, "m1");
    assert_eq!(got.message.enqueued_time, at);
}

#[test]
fn a_message_id_seen_within_the_window_is_dropped_and_accepted_after_it() {
    let mut ns = Namespace::new(&[config(10)]);
    assert!(matches!(
        ns.send(Q, msg("m1"), t0()).unwrap(),
        Sent::Enqueued { .. }
    ));
    assert_eq!(
        ns.send(Q, msg("m1"), t0() + secs(599)).unwrap(),
        Sent::Duplicate
    );
    assert_eq!(ns.snapshot(Q, t0()).unwrap().len(), 1);
    assert!(matches!(
        ns.send(Q, msg("m1"), t0() + secs(600)).unwrap(),
        Sent::Enqueued { .. }
    ));
}

#[test]
fn a_locked_message_is_hidden_until_complete_deletes_it() {
    let mut ns = Namespace::new(&[config(10)]);
    ns.send(Q, msg("m1"), t0()).unwrap();
    let l = ns.receive(Q, t0()).unwrap().unwrap();
    assert_eq!(l.message.delivery_count, 1);
    assert_eq!(l.locked_until, t0() + secs(60));
    assert_eq!(ns.receive(Q, t0() + secs(1)).unwrap(), None);
    ns.complete(Q, "m1", l.lock_token, t0() + secs(2)).unwrap();
    assert!(ns.snapshot(Q, t0() + secs(120)).unwrap().is_empty());
    assert_eq!(
        ns.complete(Q, "m1", l.lock_token, t0() + secs(3)),
        Err(BusError::LockLost)
    );
}

#[test]
fn abandon_makes_a_message_visible_at_once_and_an_expired_lock_redelivers_it() {
    let mut ns = Namespace::new(&[config(10)]);
    ns.send(Q, msg("m1"), t0()).unwrap();
    let first = ns.receive(Q, t0()).unwrap().unwrap();
    ns.abandon(Q, "m1", first.lock_token, t0() + secs(1))
        .unwrap();
    let second = ns.receive(Q, t0() + secs(1)).unwrap().unwrap();
    assert_eq!(second.message.delivery_count, 2);
    // Not settled: visible again when the lock runs out, not before.
    assert_eq!(ns.receive(Q, t0() + secs(60)).unwrap(), None);
    let third = ns.receive(Q, t0() + secs(61)).unwrap().unwrap();
    assert_eq!(third.message.delivery_count, 3);
    // The stale lock can settle nothing.
    assert_eq!(
        ns.complete(Q, "m1", second.lock_token, t0() + secs(62)),
        Err(BusError::LockLost)
    );
}

#[test]
fn past_max_delivery_count_a_message_moves_to_the_dead_letter_queue() {
    let mut ns = Namespace::new(&[config(2)]);
    ns.send(Q, msg("m1"), t0()).unwrap();
    ns.send(Q, msg("m2"), t0()).unwrap();
    // m1 is abandoned twice; m2's locks run out twice.
    for round in 0..2 {
        let now = t0() + secs(100 * round);
        let a = ns.receive(Q, now).unwrap().unwrap();
        assert_eq!(a.message.message_id, "m1");
        let b = ns.receive(Q, now).unwrap().unwrap();
        assert_eq!(b.message.message_id, "m2");
        ns.abandon(Q, "m1", a.lock_token, now).unwrap();
    }
    let later = t0() + secs(400);
    assert_eq!(ns.receive(Q, later).unwrap(), None);
    let dlq = format!("{Q}/$DeadLetterQueue");
    let dead = ns.snapshot(&dlq, later).unwrap();
    assert_eq!(
        dead.iter()
            .map(|m| (m.message_id.as_str(), m.dead_letter_reason.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("m1", Some(MAX_DELIVERY_REASON)),
            ("m2", Some(MAX_DELIVERY_REASON))
        ]
    );
    // The dead-letter sub-queue is received from like a queue.
    let d = ns.receive(&dlq, later).unwrap().unwrap();
    ns.complete(
        &dlq,
        &d.message.sequence_number.to_string(),
        d.lock_token,
        later,
    )
    .unwrap();
    assert_eq!(ns.snapshot(&dlq, later).unwrap().len(), 1);
}

#[test]
fn an_unknown_queue_is_gone() {
    let mut ns = Namespace::new(&[config(2)]);
    assert_eq!(
        ns.send("nope", msg("m1"), t0()),
        Err(BusError::NoEntity("nope".into()))
    );
}

#[test]
fn kilns_queues_come_from_infra_queues_json() {
    let queues = QueueConfig::kiln_queues().unwrap();
    let polls = queues.iter().find(|q| q.name == Q).unwrap();
    assert_eq!(polls.max_delivery_count, 10);
    assert_eq!(polls.lock_duration, chrono::Duration::minutes(5));
    assert_eq!(polls.duplicate_window, chrono::Duration::minutes(10));
    let requests = queues.iter().find(|q| q.name == "build-requests").unwrap();
    assert_eq!(requests.max_delivery_count, 5);
    assert_eq!(requests.duplicate_window, chrono::Duration::hours(1));
}

#[test]
fn iso_8601_durations_read_as_service_bus_writes_them() {
    assert_eq!(iso8601_duration("PT5M"), Some(secs(300)));
    assert_eq!(iso8601_duration("PT1H30M"), Some(secs(5400)));
    assert_eq!(iso8601_duration("P1DT2S"), Some(secs(86_402)));
    assert_eq!(iso8601_duration("P14D"), Some(secs(14 * 86_400)));
    for bad in ["5M", "PT", "P", "PT5", "PT5X", "P1M", "PT1M1H"] {
        assert_eq!(iso8601_duration(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------- over HTTP, with kiln's adapter

async fn sim(options: SimOptions) -> SimHandle {
    Sim::start(options).await.unwrap()
}

/// kiln's real Service Bus adapter against the sim, on the sim's clock, with
/// retries that record their pauses instead of sleeping.
fn kiln_queue(sim: &SimHandle) -> (ServiceBusQueue, Arc<RecordedPauses>) {
    let mut o = service_bus::options(&sim.service_bus_url());
    o.timeout = Duration::from_secs(5);
    o.backoff_base = Duration::ZERO;
    o.backoff_max = Duration::ZERO;
    let (client, pauses) = client_with(o);
    (ServiceBusQueue::new(client, Arc::new(sim.clock())), pauses)
}

fn outgoing(id: &str, delay_secs: u64) -> OutgoingMessage {
    OutgoingMessage {
        message_id: id.into(),
        body: r#"{"buildId":"b1"}"#.into(),
        delay: Duration::from_secs(delay_secs),
    }
}

struct Received {
    status: u16,
    props: serde_json::Value,
    location: String,
    body: String,
    dead_letter_reason: Option<String>,
}

async fn head(sim: &SimHandle, path: &str, timeout: u64) -> Received {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/{path}/messages/head?timeout={timeout}",
            sim.service_bus_url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let props = header("brokerproperties")
        .map(|p| serde_json::from_str(&p).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let (location, reason) = (
        header("location").unwrap_or_default(),
        header("deadletterreason"),
    );
    Received {
        status: r.status().as_u16(),
        props,
        location,
        dead_letter_reason: reason,
        body: r.text().await.unwrap(),
    }
}

async fn settle(method: reqwest::Method, location: &str) -> u16 {
    reqwest::Client::new()
        .request(method, location)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn kilns_scheduled_poll_is_held_until_its_sim_time() {
    let sim = sim(SimOptions::new(600)).await;
    let (q, _) = kiln_queue(&sim);
    // 10 sim minutes: 1 s on the wall. RFC 1123 has whole seconds, so the
    // scheduled time may be up to a second before `sent_at + 600 s`.
    let sent_at = sim.clock().now();
    q.send(Q, outgoing("poll-b1-1", 600)).await.unwrap();
    assert_eq!(head(&sim, Q, 0).await.status, 204);
    let started = Instant::now();
    let got = head(&sim, Q, 10).await;
    assert_eq!(got.status, 201);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sim.clock().now() >= sent_at + secs(599));
    assert_eq!(got.props["MessageId"], "poll-b1-1");
    assert_eq!(got.props["DeliveryCount"], 1);
    assert_eq!(got.body, r#"{"buildId":"b1"}"#);
    let enqueued =
        DateTime::parse_from_rfc2822(got.props["EnqueuedTimeUtc"].as_str().unwrap()).unwrap();
    assert!(enqueued >= sent_at + secs(599), "{enqueued} vs {sent_at}");
}

#[tokio::test]
async fn a_resent_message_id_is_taken_once() {
    let sim = sim(SimOptions::new(1)).await;
    let (q, _) = kiln_queue(&sim);
    q.send(Q, outgoing("poll-b1-1", 0)).await.unwrap();
    q.send(Q, outgoing("poll-b1-1", 0)).await.unwrap();
    let list = sim.bus().with(|ns, now| ns.snapshot(Q, now)).unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn peek_lock_complete_and_abandon_over_rest() {
    let sim = sim(SimOptions::new(1)).await;
    let (q, _) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    let first = head(&sim, Q, 1).await;
    assert_eq!(first.status, 201);
    assert!(first
        .location
        .starts_with(&format!("{}/{Q}/messages/m1/", sim.service_bus_url())));
    assert_eq!(
        first.props["LockToken"].as_str().unwrap(),
        first.location.rsplit('/').next().unwrap()
    );
    // Locked: nobody else gets it.
    assert_eq!(head(&sim, Q, 0).await.status, 204);
    assert_eq!(settle(reqwest::Method::PUT, &first.location).await, 200);
    let second = head(&sim, Q, 1).await;
    assert_eq!(second.props["DeliveryCount"], 2);
    assert_eq!(settle(reqwest::Method::DELETE, &first.location).await, 404);
    assert_eq!(settle(reqwest::Method::DELETE, &second.location).await, 200);
    assert_eq!(head(&sim, Q, 0).await.status, 204);
}

#[tokio::test]
async fn an_expired_lock_redelivers_and_the_last_delivery_goes_to_the_dead_letter_queue() {
    // build-polls' lock is 5 sim minutes: 1.5 s on the wall at 200×.
    let sim = sim(SimOptions::new(200).max_delivery_count(Q, 2)).await;
    let (q, _) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    let first = head(&sim, Q, 1).await;
    assert_eq!(first.props["DeliveryCount"], 1);
    let second = head(&sim, Q, 5).await;
    assert_eq!(second.status, 201, "redelivered when the lock ran out");
    assert_eq!(second.props["DeliveryCount"], 2);
    assert_eq!(settle(reqwest::Method::DELETE, &first.location).await, 404);
    assert_eq!(settle(reqwest::Method::PUT, &second.location).await, 200);
    assert_eq!(head(&sim, Q, 0).await.status, 204);
    let dead = head(&sim, &format!("{Q}/$DeadLetterQueue"), 1).await;
    assert_eq!(dead.status, 201);
    assert_eq!(dead.props["MessageId"], "m1");
    assert_eq!(
        dead.dead_letter_reason.as_deref(),
        Some(MAX_DELIVERY_REASON)
    );
    assert!(dead.location.contains("/$DeadLetterQueue/messages/m1/"));
    assert_eq!(settle(reqwest::Method::DELETE, &dead.location).await, 200);
}

#[tokio::test]
async fn a_request_without_a_bearer_token_is_refused_and_no_token_is_recorded() {
    let sim = sim(SimOptions::new(1)).await;
    let r = reqwest::Client::new()
        .post(format!("{}/{Q}/messages", sim.service_bus_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (q, _) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    let log = sim.requests();
    assert_eq!(
        log.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec![Outcome::Status(401), Outcome::Status(201)]
    );
    assert_eq!(log[1].path, "/servicebus/build-polls/messages");
    assert!(!format!("{log:?}").contains(TOKEN));
}

#[tokio::test]
async fn a_throttled_send_waits_the_retry_after_and_succeeds() {
    let sim = sim(SimOptions::new(1)).await;
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path: "*/build-polls/messages".into(),
        times: 1,
        fault: Fault::Throttle {
            retry_after_secs: 7,
        },
    });
    let (q, pauses) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    assert_eq!(pauses.taken(), vec![Duration::from_secs(7)]);
    let outcomes: Vec<_> = sim.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Status(429), Outcome::Status(201)]);
    assert_eq!(
        sim.bus().with(|ns, now| ns.snapshot(Q, now)).unwrap().len(),
        1
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_send_lands() {
    let sim = sim(SimOptions::new(1)).await;
    sim.inject(FaultRule {
        method: None,
        path: "/servicebus/*".into(),
        times: 2,
        fault: Fault::ServerError {
            status: 503,
            code: "ServerBusy".into(),
        },
    });
    let (q, pauses) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    assert_eq!(pauses.taken().len(), 2);
    let outcomes: Vec<_> = sim.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Status(503),
            Outcome::Status(503),
            Outcome::Status(201)
        ]
    );
}

#[tokio::test]
async fn a_dropped_response_leaves_the_message_sent_though_the_sender_saw_an_error() {
    let sim = sim(SimOptions::new(1)).await;
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path: "*/messages".into(),
        times: 1,
        fault: Fault::DropResponse,
    });
    let (q, _) = kiln_queue(&sim);
    let e = q.send(Q, outgoing("m1", 0)).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("Cannot send to queue build-polls"),
        "{e:#}"
    );
    // At least once: the message is there; a resend is taken once.
    assert_eq!(
        sim.bus().with(|ns, now| ns.snapshot(Q, now)).unwrap().len(),
        1
    );
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    assert_eq!(
        sim.bus().with(|ns, now| ns.snapshot(Q, now)).unwrap().len(),
        1
    );
    let outcomes: Vec<_> = sim.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Dropped, Outcome::Status(201)]);
}

#[tokio::test]
async fn a_throttled_arm_read_is_retried_after_its_retry_after() {
    use crate::ports::{ImageBuilder, TemplateStatus};
    use crate::providers::azure::arm::testing;
    use crate::providers::azure::image_builder::AzureImageBuilder;

    let sim = sim(SimOptions::new(1)).await;
    sim.inject(FaultRule {
        method: Some("GET".into()),
        path: "*/imageTemplates/kiln-b1-a1".into(),
        times: 1,
        fault: Fault::Throttle {
            retry_after_secs: 3,
        },
    });
    let (arm, pauses) = testing::client(sim.url());
    let o = sim.options();
    let builder = AzureImageBuilder::new(arm, &o.subscription_id, &o.resource_group);
    // No such template in the sim: after the retry, ARM's 404.
    assert_eq!(
        builder.status("kiln-b1-a1").await.unwrap(),
        TemplateStatus::Missing
    );
    assert_eq!(pauses.taken(), vec![Duration::from_secs(3)]);
    let log = sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].outcome, Outcome::Status(429));
    assert!(log[0].client_request_id.is_some());
    assert!(log[0]
        .path
        .contains("/imageTemplates/kiln-b1-a1?api-version="));
}

#[tokio::test]
async fn an_unknown_queue_answers_410_and_unreadable_properties_400() {
    let sim = sim(SimOptions::new(1)).await;
    let (q, _) = kiln_queue(&sim);
    let e = q.send("nope", outgoing("m1", 0)).await.unwrap_err();
    assert!(format!("{e:#}").contains("HTTP 410"), "{e:#}");
    let r = reqwest::Client::new()
        .post(format!("{}/{Q}/messages", sim.service_bus_url()))
        .bearer_auth(TOKEN)
        .header(
            "BrokerProperties",
            r#"{"MessageId":"m1","ScheduledEnqueueTimeUtc":"2026-12-08T17:00:00Z"}"#,
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("ScheduledEnqueueTimeUtc"));
}

#[tokio::test]
async fn faults_are_scripted_and_the_log_read_through_the_control_api() {
    let sim = sim(SimOptions::new(1)).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_sim/faults", sim.url()))
        .json(&serde_json::json!({
            "method": "POST", "path": "*/build-polls/messages", "times": 1,
            "fault": { "kind": "throttle", "retryAfterSecs": 2 }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (q, pauses) = kiln_queue(&sim);
    q.send(Q, outgoing("m1", 0)).await.unwrap();
    assert_eq!(pauses.taken(), vec![Duration::from_secs(2)]);
    let log: serde_json::Value = http
        .get(format!(
            "{}/_sim/requests?path_contains=build-polls",
            sim.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<_> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![
            serde_json::json!({"status": 429}),
            serde_json::json!({"status": 201})
        ]
    );
    assert!(log[0]["fault"].as_str().unwrap().contains("Throttle"));
    assert!(log[0]["sim"].is_string() && log[0]["wall"].is_string());
    let rules: serde_json::Value = http
        .get(format!("{}/_sim/faults", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules, serde_json::json!([]));
}

#[tokio::test]
async fn a_message_id_with_a_slash_still_has_a_working_lock_uri() {
    let sim = sim(SimOptions::new(1)).await;
    let (q, _) = kiln_queue(&sim);
    q.send(Q, outgoing("manual:tiny:pr/4711?x", 0))
        .await
        .unwrap();
    let got = head(&sim, Q, 1).await;
    assert_eq!(got.props["MessageId"], "manual:tiny:pr/4711?x");
    assert!(
        got.location
            .contains("/messages/manual%3Atiny%3Apr%2F4711%3Fx/"),
        "{}",
        got.location
    );
    assert_eq!(settle(reqwest::Method::DELETE, &got.location).await, 200);
}
