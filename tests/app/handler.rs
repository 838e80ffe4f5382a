//! The custom-handler protocol, replayed with the payload shapes the
//! Functions host sends (timer, Service Bus, Event Grid, HTTP), through the
//! real `kiln serve` router.

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use tower::ServiceExt;

use kiln::host::serve::{Checks, Readiness};

use crate::harness::{bounded, repo, runtime, tiny, Options, SUB};

async fn call(router: &axum::Router, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header(
            "X-Azure-Functions-InvocationId",
            "7c0e2b4a-1f63-4d2e-9b8a-5e6f7a8b9c0d",
        )
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    )
}

fn sys(method: &str) -> Value {
    json!({"MethodName": method, "UtcNow": "2026-11-27T10:00:00.1234567Z", "RandGuid": "24ad4c06-24ad-4e5b-8294-3da9714877e9"})
}

async fn router() -> (tempfile::TempDir, axum::Router, kiln::app::App) {
    let dir = tempfile::tempdir().unwrap();
    let (name, mut doc) = tiny("tiny", json!({}));
    doc["properties"]["source"] = json!({"type": "SharedImageVersion", "imageVersionId": format!("{SUB}/galleries/corpGallery/images/base/versions/latest")});
    let opts = Options {
        pipelines: vec![tiny("plain", json!({})), (name, doc)],
        ..Options::default()
    };
    let rt = runtime(dir.path(), &opts).await;
    let app = rt.app.clone();
    (
        dir,
        kiln::host::serve::router(rt.app, Readiness::passed()),
        app,
    )
}

fn timer_payload(function: &str) -> Value {
    json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
        "Metadata": {"sys": sys(function)}
    })
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Polls `f` once: whether it is still pending.
async fn pending_after_one_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut f = f;
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx).is_pending())).await
}

/// Until the start-up checks that run once kiln listens have passed, an
/// invocation waits (the readiness probe does not), so no build starts
/// under a setting they then refuse; a refusal answers 503 with the reason.
#[tokio::test]
async fn invocations_wait_for_the_start_up_checks_and_a_refusal_is_503() {
    bounded(async {
        let (_d, _, app) = router().await;
        let (verdict, ready) = Readiness::new();
        let r = kiln::host::serve::router(app.clone(), ready);
        let (status, _) = call(&r, "GET", "/", Value::Null).await;
        assert_eq!(status, 200, "the probe is answered while the checks run");
        let invocation = r
            .clone()
            .oneshot(post("/patch_tuesday", &timer_payload("patch_tuesday")));
        tokio::pin!(invocation);
        // One poll runs the handler up to its wait: no answer yet.
        assert!(pending_after_one_poll(invocation.as_mut()).await);
        verdict.send_replace(Checks::Passed);
        assert_eq!(invocation.await.unwrap().status(), 200);

        let (verdict, ready) = Readiness::new();
        let r = kiln::host::serve::router(app, ready);
        let invocation = r.oneshot(post("/patch_tuesday", &timer_payload("patch_tuesday")));
        tokio::pin!(invocation);
        assert!(pending_after_one_poll(invocation.as_mut()).await);
        verdict.send_replace(Checks::Failed(
            "KILN_SIGNING_KEY_VAULT_KEY: Key Vault has no key".into(),
        ));
        let resp = invocation.await.unwrap();
        assert_eq!(resp.status(), 503);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["Logs"][0].as_str().unwrap().contains("has no key"), "{v}");
    })
    .await;
}

#[tokio::test]
async fn the_readiness_probe_gets_an_answer() {
    bounded(async {
        let (_d, r, _) = router().await;
        let (status, _) = call(&r, "GET", "/", Value::Null).await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_timer_invocation_answers_outputs_logs_and_return_value() {
    bounded(async {
        let (_d, r, _) = router().await;
        let payload = json!({
            "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "2026-11-27T09:59:30+00:00", "LastUpdated": "2026-11-27T09:59:30+00:00", "Next": "2026-11-27T10:00:00+00:00"}, "IsPastDue": false}},
            "Metadata": {"sys": sys("base_image_watch")}
        });
        let (status, v) = call(&r, "POST", "/base_image_watch", payload).await;
        assert_eq!(status, 200, "{v}");
        assert!(v.get("Outputs").is_some() && v.get("ReturnValue").is_some());
        let logs: Vec<&str> = v["Logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(
            logs.iter()
                .any(|l| l.starts_with("base_image_watch: plain baseline")),
            "{v}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_past_due_timer_with_no_schedule_status_is_accepted() {
    bounded(async {
        let (_d, r, _) = router().await;
        let payload = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": true}}, "Metadata": {}});
        let (status, v) = call(&r, "POST", "/patch_tuesday", payload).await;
        assert_eq!(status, 200, "{v}");
        assert!(
            v["Logs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l.as_str().unwrap().contains("past due")),
            "{v}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_service_bus_message_arrives_double_encoded_and_is_admitted_once() {
    bounded(async {
        let (_d, r, app) = router().await;
        let body = json!({"pipeline": "plain", "reason": "CVE-2026-0001", "requestedBy": "ci", "idempotencyKey": "pr-1"}).to_string();
        let payload = |id: &str, count: u32| {
            json!({
                "Data": {"msg": serde_json::to_string(&body).unwrap()},
                "Metadata": {
                    "MessageId": id, "DeliveryCount": count, "SequenceNumber": 7, "EnqueuedTimeUtc": "2026-11-27T10:00:00Z",
                    "ExpiresAtUtc": "2026-12-11T10:00:00Z", "ContentType": "application/json", "CorrelationId": null,
                    "UserProperties": {}, "sys": sys("build_requests")
                }
            })
        };
        let (status, v) = call(&r, "POST", "/build_requests", payload("m-1", 1)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["ReturnValue"]["outcome"], "created", "{v}");
        let id = v["ReturnValue"]["build"].as_str().unwrap().to_string();
        let line = v["Logs"][0].as_str().unwrap();
        assert!(
            line.contains(&id) && line.contains("plain"),
            "the log line names the build and its pipeline: {v}"
        );
        let (_, again) = call(&r, "POST", "/build_requests", payload("m-2", 2)).await;
        assert_eq!(
            again["ReturnValue"],
            json!({"outcome": "existing", "build": id})
        );
        assert_eq!(app.store.list(&Default::default()).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_event_grid_invocation_reaches_the_pipelines_following_the_parent() {
    bounded(async {
        let (_d, r, _) = router().await;
        let mut event: Value = serde_json::from_str(
            &std::fs::read_to_string(
                repo().join("tests/fixtures/events/eventgrid-resource-write-gallery-version.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let version_id = format!("{SUB}/galleries/corpGallery/images/base/versions/1.4.0");
        event[0]["subject"] = json!(version_id);
        event[0]["data"]["resourceUri"] = json!(version_id);
        let payload =
            json!({"Data": {"event": event[0].clone()}, "Metadata": {"sys": sys("base_image_events")}});
        let (status, v) = call(&r, "POST", "/base_image_events", payload).await;
        assert_eq!(status, 200, "{v}");
        // The write reached the pipeline following the parent; the event is only
        // a hint, and the local gallery has no such version, so nothing is queued.
        assert_eq!(v["ReturnValue"]["requested"], json!([]), "{v}");
        assert_eq!(v["ReturnValue"]["held"][0]["pipeline"], "tiny", "{v}");
        assert_eq!(v["ReturnValue"]["held"][0]["version"], "1.4.0", "{v}");
        let queued = kiln::store::sqlite::queue::LocalQueue::new(crate::harness::db_of(_d.path()))
            .depth("build-requests")
            .unwrap();
        assert_eq!(queued, 0);
    })
    .await;
}

#[tokio::test]
async fn an_http_invocation_in_payload_mode_is_served_by_the_api_router() {
    bounded(async {
        let (_d, r, _) = router().await;
        let payload = json!({
            "Data": {"req": {"Url": "http://localhost:7071/api/pipelines/plain?code=s3cret-key", "Method": "GET", "Query": {"code": "s3cret-key"},
                              "Headers": {"Accept": ["application/json"]}, "Params": {"path": "pipelines/plain"}, "Body": ""}},
            "Metadata": {}
        });
        let (status, v) = call(&r, "POST", "/api", payload).await;
        assert_eq!(status, 200, "{v}");
        let res = &v["Outputs"]["res"];
        assert_eq!(res["statusCode"], "200");
        let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["name"], "plain");
        // The host forwards `Logs` to Application Insights: the call is there, its key is not.
        assert_eq!(
            v["Logs"],
            json!(["api: GET /api/pipelines/plain answered 200"]),
            "{v}"
        );
    })
    .await;
}

#[tokio::test]
async fn forwarded_http_requests_reach_the_api_on_their_original_path() {
    bounded(async {
        let (_d, r, _) = router().await;
        let (status, v) = call(&r, "GET", "/api/pipelines", Value::Null).await;
        assert_eq!(status, 200);
        assert_eq!(v.as_array().unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn bad_invocations_get_specific_4xx_answers() {
    bounded(async {
        let (_d, r, _) = router().await;
        let (status, v) = call(
            &r,
            "POST",
            "/build_pols",
            json!({"Data": {}, "Metadata": {}}),
        )
        .await;
        assert_eq!(status, 404);
        assert!(
            v["Logs"][0]
                .as_str()
                .unwrap()
                .contains("`build_pols` is not a kiln function"),
            "{v}"
        );
        let (status, v) = call(&r, "POST", "/build_polls", json!("not an invocation")).await;
        assert_eq!(status, 400);
        assert!(
            v["Logs"][0]
                .as_str()
                .unwrap()
                .contains("not an invocation payload"),
            "{v}"
        );
        let (status, v) = call(
            &r,
            "POST",
            "/patch_tuesday",
            json!({"Data": {"myTimer": {}}, "Metadata": {}}),
        )
        .await;
        assert_eq!(status, 400);
        assert!(v["Logs"][0].as_str().unwrap().contains("Data.timer"), "{v}");
    })
    .await;
}
