//! Specifications of the simulated Functions host: how it invokes a custom
//! handler (payloads, timers, queue deliveries and redelivery, HTTP
//! forwarding and function keys) and how it fronts several instances.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as AxPath, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;
use crate::ports::{OutgoingMessage, Queue};
use crate::providers::azure::arm::testing::client_with;
use crate::providers::azure::service_bus::{self, ServiceBusQueue};
use crate::sim::bus::MAX_DELIVERY_REASON;
use crate::sim::server::{Sim, SimOptions};

const DEADLINE: Duration = Duration::from_secs(20);

/// A custom handler that records every invocation and answers each function
/// with the status it was told (200 when not told).
#[derive(Clone, Default)]
struct TinyHandler {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    answers: Arc<BTreeMap<String, u16>>,
    /// Wall time a function takes to answer.
    delays: Arc<BTreeMap<String, Duration>>,
    /// Invocations running now, and the most seen at once, per function.
    running: Arc<Mutex<BTreeMap<String, (usize, usize)>>>,
}

impl TinyHandler {
    fn calls_to(&self, function: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _)| f == function)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn serve(self) -> String {
        let router = Router::new()
            .route("/", get(|| async { "ready" }))
            .route(
                "/{function}",
                post(
                    |State(h): State<TinyHandler>,
                     AxPath(f): AxPath<String>,
                     Json(body): Json<Value>| async move {
                        h.calls.lock().unwrap().push((f.clone(), body));
                        {
                            let mut r = h.running.lock().unwrap();
                            let e = r.entry(f.clone()).or_default();
                            e.0 += 1;
                            e.1 = e.1.max(e.0);
                        }
                        if let Some(d) = h.delays.get(&f) {
                            tokio::time::sleep(*d).await;
                        }
                        h.running.lock().unwrap().get_mut(&f).unwrap().0 -= 1;
                        let status = h.answers.get(&f).copied().unwrap_or(200);
                        (
                            StatusCode::from_u16(status).unwrap(),
                            Json(json!({ "Outputs": {}, "Logs": [], "ReturnValue": null })),
                        )
                    },
                ),
            )
            .route(
                "/api/{*path}",
                any(|req: Request| async move {
                    let echo = json!({
                        "method": req.method().as_str(),
                        "uri": req.uri().to_string(),
                        "key": req.headers().get("x-kiln-key").and_then(|v| v.to_str().ok()),
                    });
                    (StatusCode::IM_A_TEAPOT, Json(echo)).into_response()
                }),
            )
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }
}

fn repo_handlers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("handlers")
}

fn kiln_queue(sim: &SimHandle) -> ServiceBusQueue {
    ServiceBusQueue::new(
        client_with(service_bus::options(&sim.service_bus_url())).0,
        Arc::new(sim.clock()),
    )
}

async fn start(
    options: SimOptions,
    answers: &[(&str, u16)],
) -> (SimHandle, TinyHandler, HostHandle) {
    start_slow(options, answers, &[]).await
}

async fn start_slow(
    options: SimOptions,
    answers: &[(&str, u16)],
    delays: &[(&str, Duration)],
) -> (SimHandle, TinyHandler, HostHandle) {
    start_with(options, answers, delays, |_| {}).await
}

async fn start_with(
    options: SimOptions,
    answers: &[(&str, u16)],
    delays: &[(&str, Duration)],
    host_options: impl FnOnce(&mut HostOptions),
) -> (SimHandle, TinyHandler, HostHandle) {
    let sim = Sim::start(options).await.unwrap();
    let handler = TinyHandler {
        answers: Arc::new(answers.iter().map(|(f, s)| (f.to_string(), *s)).collect()),
        delays: Arc::new(delays.iter().map(|(f, d)| (f.to_string(), *d)).collect()),
        ..TinyHandler::default()
    };
    let url = handler.clone().serve().await;
    let mut opts = HostOptions::new(&sim, &url, &repo_handlers());
    opts.max_concurrent_calls = 2;
    host_options(&mut opts);
    let host = FunctionsHost::start(opts).await.unwrap();
    (sim, handler, host)
}

fn queue_records(host: &HostHandle, function: &str) -> Vec<(u64, Settled)> {
    host.invocations()
        .into_iter()
        .filter(|r| r.function == function)
        .filter_map(|r| match r.trigger {
            InvocationTrigger::Queue {
                delivery_count,
                settled,
                ..
            } => Some((delivery_count, settled)),
            InvocationTrigger::Timer { .. } | InvocationTrigger::EventGrid { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn a_queue_message_is_delivered_as_the_host_does_and_completed_on_success() {
    let (sim, handler, host) = start(SimOptions::new(60), &[]).await;
    kiln_queue(&sim)
        .send(
            "build-polls",
            OutgoingMessage {
                message_id: "poll-b1-3".into(),
                body: r#"{"buildId":"b1","rowVersion":3}"#.into(),
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap();
    wait_until(DEADLINE, "the poll to be completed", || async {
        (queue_records(&host, "build_polls") == vec![(1, Settled::Completed)]).then_some(())
    })
    .await
    .unwrap();
    let call = &handler.calls_to("build_polls")[0];
    // The body arrives as a string holding the JSON-encoded body text.
    assert_eq!(
        call["Data"]["msg"],
        json!("\"{\\\"buildId\\\":\\\"b1\\\",\\\"rowVersion\\\":3}\"")
    );
    assert_eq!(call["Metadata"]["MessageId"], "poll-b1-3");
    assert_eq!(call["Metadata"]["DeliveryCount"], 1);
    assert_eq!(call["Metadata"]["ContentType"], "application/json");
    assert_eq!(call["Metadata"]["sys"]["MethodName"], "build_polls");
    assert!(call["Metadata"]["EnqueuedTimeUtc"].is_string());
    let left = sim
        .bus()
        .with(|ns, now| ns.snapshot("build-polls", now))
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_failed_invocation_abandons_its_message_until_it_is_dead_lettered() {
    let options = SimOptions::new(60).max_delivery_count("build-requests", 2);
    let (sim, handler, host) = start(options, &[("build_requests", 500)]).await;
    kiln_queue(&sim)
        .send(
            "build-requests",
            OutgoingMessage {
                message_id: "r1".into(),
                body: r#"{"pipeline":"tiny"}"#.into(),
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap();
    let dead = wait_until(DEADLINE, "the request to be dead-lettered", || async {
        let d = sim
            .bus()
            .with(|ns, now| ns.snapshot("build-requests/$DeadLetterQueue", now))
            .unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await
    .unwrap();
    assert_eq!(dead[0].message_id, "r1");
    assert_eq!(
        dead[0].dead_letter_reason.as_deref(),
        Some(MAX_DELIVERY_REASON)
    );
    assert_eq!(
        queue_records(&host, "build_requests"),
        vec![(1, Settled::Abandoned), (2, Settled::Abandoned)]
    );
    let counts: Vec<Value> = handler
        .calls_to("build_requests")
        .iter()
        .map(|c| c["Metadata"]["DeliveryCount"].clone())
        .collect();
    assert_eq!(counts, vec![json!(1), json!(2)]);
}

#[tokio::test]
async fn timers_fire_on_their_schedule_in_sim_time_with_their_status() {
    // build_sweeper: `*/30 * * * * *`, runOnStartup: every 0.5 s on the wall at 60×.
    let (sim, handler, host) = start(SimOptions::new(60), &[]).await;
    let calls = wait_until(DEADLINE, "three sweeper firings", || async {
        let c = handler.calls_to("build_sweeper");
        (c.len() >= 3).then_some(c)
    })
    .await
    .unwrap();
    let first = &calls[0]["Data"]["timer"];
    assert_eq!(first["ScheduleStatus"], Value::Null);
    assert_eq!(first["IsPastDue"], false);
    assert_eq!(first["Schedule"]["AdjustForDST"], true);
    let time = |v: &Value| DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    use chrono::Timelike;
    // Occurrences fall on :00 and :30 of sim time.
    let second = &calls[1]["Data"]["timer"]["ScheduleStatus"];
    assert_eq!(time(&second["Next"]).second() % 30, 0, "{second}");
    let third = &calls[2]["Data"]["timer"]["ScheduleStatus"];
    assert_eq!(time(&third["Last"]).second() % 30, 0, "{third}");
    assert!(time(&third["Next"]) > time(&third["Last"]), "{third}");
    let fired: Vec<_> = host
        .invocations()
        .into_iter()
        .filter(|r| r.function == "build_sweeper")
        .collect();
    assert!(fired.iter().all(InvocationRecord::succeeded));
    assert!(sim.clock().now() >= time(&third["Last"]));
}

#[tokio::test]
async fn occurrences_missed_during_a_slow_firing_are_delivered_once_past_due() {
    // 150 ms on the wall is 90 s of sim time at 600×: three occurrences of */30 s.
    let (_sim, handler, _host) = start_slow(
        SimOptions::new(600),
        &[],
        &[("build_sweeper", Duration::from_millis(150))],
    )
    .await;
    let calls = wait_until(DEADLINE, "two sweeper firings", || async {
        let c = handler.calls_to("build_sweeper");
        (c.len() >= 2).then_some(c)
    })
    .await
    .unwrap();
    assert_eq!(calls[0]["Data"]["timer"]["IsPastDue"], false);
    assert_eq!(calls[1]["Data"]["timer"]["IsPastDue"], true);
}

#[tokio::test]
async fn a_queue_gets_max_concurrent_calls_invocations_at_once() {
    let (sim, handler, host) = start_slow(
        SimOptions::new(60),
        &[],
        &[("build_polls", Duration::from_millis(300))],
    )
    .await;
    let q = kiln_queue(&sim);
    for i in 0..4 {
        q.send(
            "build-polls",
            OutgoingMessage {
                message_id: format!("p{i}"),
                body: "{}".into(),
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap();
    }
    wait_until(DEADLINE, "four polls completed", || async {
        (queue_records(&host, "build_polls").len() == 4).then_some(())
    })
    .await
    .unwrap();
    // The test host runs two receivers per queue.
    assert_eq!(handler.running.lock().unwrap()["build_polls"].1, 2);
}

async fn send_poll(sim: &SimHandle, id: &str) {
    kiln_queue(sim)
        .send(
            "build-polls",
            OutgoingMessage {
                message_id: id.into(),
                body: "{}".into(),
                delay: Duration::ZERO,
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_invocation_keeps_its_message_locked_by_renewing_the_lock() {
    // 1.2 s on the wall is 12 sim minutes at 600×, past the 5-minute lock.
    let (sim, _handler, host) = start_with(
        SimOptions::new(600),
        &[],
        &[("build_polls", Duration::from_millis(1200))],
        |o| {
            o.function_timeout = chrono::Duration::minutes(30);
            o.max_auto_lock_renewal = chrono::Duration::minutes(30);
        },
    )
    .await;
    send_poll(&sim, "p1").await;
    wait_until(DEADLINE, "the poll to be settled", || async {
        let r = queue_records(&host, "build_polls");
        (!r.is_empty()).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        queue_records(&host, "build_polls"),
        vec![(1, Settled::Completed)]
    );
}

#[tokio::test]
async fn an_invocation_past_the_function_timeout_fails_and_its_message_is_abandoned() {
    // functionTimeout 5 sim minutes is 0.5 s on the wall at 600×.
    let (sim, _handler, host) = start_slow(
        SimOptions::new(600),
        &[],
        &[("build_polls", Duration::from_millis(1500))],
    )
    .await;
    send_poll(&sim, "p1").await;
    let first = wait_until(DEADLINE, "the first delivery to end", || async {
        host.invocations()
            .into_iter()
            .find(|r| r.function == "build_polls")
    })
    .await
    .unwrap();
    assert_eq!(first.status, None);
    assert!(
        matches!(
            first.trigger,
            InvocationTrigger::Queue {
                delivery_count: 1,
                settled: Settled::Abandoned,
                ..
            }
        ),
        "{first:?}"
    );
}

#[tokio::test]
async fn event_grid_is_validated_by_the_host_and_each_event_invokes_the_function() {
    let (_sim, handler, host) = start(SimOptions::new(600), &[]).await;
    let http = reqwest::Client::new();
    let hook = format!(
        "{}/runtime/webhooks/eventgrid?functionName=base_image_events",
        host.app_url()
    );
    let v: Value = http
        .post(&hook)
        .header("aeg-event-type", "SubscriptionValidation")
        .json(
            &json!([{ "id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                        "data": { "validationCode": "512d38b6" } }]),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({ "validationResponse": "512d38b6" }));
    assert!(handler.calls_to("base_image_events").is_empty());
    let event = json!({ "id": "e1", "eventType": "Microsoft.Resources.ResourceWriteSuccess",
                        "subject": "/x", "data": {}, "dataVersion": "2", "eventTime": "2026-12-08T17:00:00Z" });
    let r = http
        .post(&hook)
        .header("aeg-event-type", "Notification")
        .json(&json!([event]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        handler.calls_to("base_image_events")[0]["Data"]["event"],
        event
    );
}

#[tokio::test]
async fn http_requests_are_forwarded_on_their_path_and_the_answer_relayed() {
    let (_sim, _handler, host) = start(SimOptions::new(600), &[]).await;
    let r = reqwest::Client::new()
        .get(format!("{}/api/builds/b1?x=1", host.app_url()))
        .header("x-kiln-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(
        echo,
        json!({ "method": "GET", "uri": "/api/builds/b1?x=1", "key": "k" })
    );
    // function.json allows get, post and options only.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/builds/b1", host.app_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn with_a_function_key_http_calls_without_it_get_401() {
    let (_sim, _handler, host) = start_with(SimOptions::new(60), &[], &[], |o| {
        o.function_key = Some("fk-1".into());
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/builds", host.app_url());
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let wrong = http
        .get(&url)
        .header("x-functions-key", "fk-2")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let by_header = http
        .get(&url)
        .header("x-functions-key", "fk-1")
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 418);
    let by_code = http.get(format!("{url}?code=fk-1")).send().await.unwrap();
    assert_eq!(by_code.status(), 418);
}

#[tokio::test]
async fn host_json_sets_the_concurrency_and_the_function_timeout() {
    let sim = Sim::start(SimOptions::new(1)).await.unwrap();
    let o = HostOptions::new(&sim, "http://127.0.0.1:1", &repo_handlers())
        .host_json(&repo_handlers().join("../host.json"))
        .unwrap();
    assert_eq!(o.max_concurrent_calls, 4);
    assert_eq!(o.function_timeout, chrono::Duration::minutes(5));
    assert_eq!(
        parse_timespan("01:02:03"),
        Some(chrono::Duration::seconds(3723))
    );
    assert_eq!(parse_timespan("5m"), None);
}

#[tokio::test]
async fn a_handler_that_never_answers_stops_the_host_from_starting() {
    let sim = Sim::start(SimOptions::new(1)).await.unwrap();
    let mut o = HostOptions::new(&sim, "http://127.0.0.1:9", &repo_handlers());
    o.startup_timeout = Duration::from_millis(200);
    let e = FunctionsHost::start(o).await.err().unwrap().to_string();
    assert!(e.contains("did not answer GET /"), "{e}");
}

mod scaled;
