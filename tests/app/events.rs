//! Events out and the circuit breaker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{json, Value};

use kiln::app::events::{verify, Rejected, DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use crate::harness::{bounded, tiny, Factory, Options};

const LIMIT: Duration = Duration::from_secs(60);

type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A webhook receiver on loopback that fails its first `fail_first` deliveries.
async fn receiver(fail_first: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let calls = Arc::new(Mutex::new(0usize));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let g = g.clone();
            let calls = calls.clone();
            async move {
                let mut n = calls.lock().unwrap();
                *n += 1;
                if *n <= fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_state_change_is_a_signed_cloudevent_on_the_webhook_and_in_the_file() {
    bounded(async {
        let (url, got) = receiver(1).await;
        let f = Factory::start(Options {
            env: vec![
                ("KILN_WEBHOOK_URL", url),
                ("KILN_WEBHOOK_SECRET", "hook-secret".into()),
            ],
            ..Options::default()
        })
        .await;
        let id = f.build("tiny", None).await;
        assert_eq!(
            f.wait_terminal(&id, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
        // The first delivery gets a 503 and is retried with backoff, so events may
        // arrive out of order (each carries its time); wait for all of them.
        let wanted = [
            "dev.kiln.build.queued",
            "dev.kiln.build.submitting",
            "dev.kiln.build.succeeded",
        ];
        let mut types = Vec::new();
        for _ in 0..100 {
            types = got
                .lock()
                .unwrap()
                .iter()
                .map(|(_, b)| {
                    serde_json::from_str::<Value>(b).unwrap()["type"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            if wanted.iter().all(|w| types.iter().any(|t| t == w)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in wanted {
            assert!(types.contains(&t.to_string()), "{t} missing from {types:?}");
        }
        for (headers, body) in got.lock().unwrap().iter() {
            let sig = headers.get(SIGNATURE_HEADER).unwrap().to_str().unwrap();
            let ts = headers.get(TIMESTAMP_HEADER).unwrap().to_str().unwrap();
            let now = chrono::Utc::now().timestamp();
            assert_eq!(
                verify(
                    "hook-secret",
                    sig,
                    ts,
                    body.as_bytes(),
                    now,
                    DEFAULT_TOLERANCE
                ),
                Ok(())
            );
            // The same delivery replayed after the window is refused.
            assert!(matches!(
                verify(
                    "hook-secret",
                    sig,
                    ts,
                    body.as_bytes(),
                    now + 301,
                    DEFAULT_TOLERANCE
                ),
                Err(Rejected::TooOld { .. })
            ));
            let ev: Value = serde_json::from_str(body).unwrap();
            assert_eq!(ev["specversion"], "1.0");
            assert_eq!(ev["data"]["buildId"], json!(id));
        }
        let file = std::fs::read_to_string(f.dir.path().join("data/events.jsonl")).unwrap();
        assert!(file.lines().count() >= 3);
        assert!(!file.contains("hook-secret"));
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consecutive_automatic_failures_pause_triggers_until_a_build_succeeds() {
    bounded(async {
        let faults = r#"[{"pipeline": "fragile", "kind": "fail", "times": 3}]"#.to_string();
        let (name, mut doc) = tiny("fragile", json!({"build": {"circuitBreakerFailures": 2}}));
        doc["properties"]["source"] = json!({"type": "PlatformImage", "publisher": "Contoso", "offer": "base", "sku": "1", "version": "latest"});
        let f = Factory::start(Options {
            pipelines: vec![(name, doc)],
            env: vec![("KILN_LOCAL_FAULTS", faults)],
            ..Options::default()
        })
        .await;
        f.provider
            .import_base(
                "Contoso:base:1",
                "1.0.0",
                kiln::providers::local::BaseFrom::Busybox,
            )
            .await
            .unwrap();
        let update = |v: &str| {
            json!([{"id": format!("e-{v}"), "subject": "Contoso:base:1", "eventType": "dev.kiln.base-image.updated",
            "eventTime": "2026-11-27T10:00:00Z", "dataVersion": "1", "data": {"line": "Contoso:base:1", "version": v}}])
        };
        for v in ["1.0.1", "1.0.2"] {
            let (status, body) = f.post("/api/events/base-image", &update(v)).await;
            assert_eq!(status, 200, "{body}");
            f.until(&format!("the build for {v} fails"), LIMIT, || async {
                let builds = f.get("/api/builds?pipeline=fragile").await;
                builds
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["trigger"]["version"] == v && b["state"]["state"] == "failed")
                    .then_some(())
            })
            .await;
        }
        let p = f.get("/api/pipelines/fragile").await;
        assert_eq!(p["automaticTriggers"], "paused", "{p:#}");
        assert_eq!(p["consecutiveFailures"], 2);
        // A third automatic request is refused while paused…
        let (status, body) = f.post("/api/events/base-image", &update("1.0.3")).await;
        assert_eq!(body["requested"][0]["version"], "1.0.3", "{status} {body}");
        // Wait until the request left the queue: it was handled (and refused).
        let queue = f.queue.clone();
        f.until("the refused request leaves the queue", LIMIT, || async {
            (queue.depth("build-requests").unwrap() == 0).then_some(())
        })
        .await;
        assert_eq!(queue.depth("build-requests").unwrap(), 0);
        let builds = f.get("/api/builds?pipeline=fragile").await;
        assert_eq!(builds.as_array().unwrap().len(), 2, "{builds:#}");
        // …a manual build still runs (the third injected failure), then one succeeds and re-arms.
        let manual = f.build("fragile", Some("m1")).await;
        assert_eq!(
            f.wait_terminal(&manual, Duration::from_secs(60)).await["state"],
            "failed"
        );
        // The breaker closes just after the build ends: listen from before.
        let resumed = f.expect_event("dev.kiln.pipeline.resumed");
        let manual = f.build("fragile", Some("m2")).await;
        assert_eq!(
            f.wait_terminal(&manual, Duration::from_secs(60)).await["state"],
            "succeeded"
        );
        // The breaker's count is committed before its event is written, so the
        // API can say `armed` a moment before the event: wait for the event.
        resumed.within(LIMIT).await;
        assert_eq!(
            f.get("/api/pipelines/fragile").await["automaticTriggers"],
            "armed"
        );
        let file = std::fs::read_to_string(f.dir.path().join("data/events.jsonl")).unwrap();
        assert!(
            file.contains("dev.kiln.pipeline.paused") && file.contains("dev.kiln.pipeline.resumed"),
            "{file}"
        );
        f.stop().await;
    })
    .await;
}
