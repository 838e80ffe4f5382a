//! The HTTP API's own behaviour: filters and paging, retry, dead-letter
//! replay, error codes, API keys, body limits and slow clients, and the
//! OpenAPI document.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kiln::store::port::{BuildFilter, BuildStore, DeadLetterStore, NewDeadLetter};
use kiln::store::SqliteStore;

use super::harness::{bounded, db_of, tiny, Factory, Options};

const LIMIT: Duration = Duration::from_secs(60);

async fn get_with(f: &Factory, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = f.http.get(format!("{}{path}", f.api)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_filter_by_pipeline_state_and_time_and_page_with_an_offset() {
    bounded(async {
        let f = Factory::start(Options {
            pipelines: vec![
                tiny("a", json!({})),
                tiny("b", json!({})),
                tiny("c", json!({})),
            ],
            ..Options::default()
        })
        .await;
        let mut made = Vec::new();
        for p in ["a", "b", "c"] {
            let id = f.build(p, None).await;
            f.wait_terminal(&id, LIMIT).await;
            made.push(id);
        }
        let (_, _, all) = get_with(&f, "/api/builds").await;
        assert_eq!(
            ids(&all),
            vec![made[2].clone(), made[1].clone(), made[0].clone()]
        );
        // A listed build has the store's fields, under the store's names.
        let store = SqliteStore::new(db_of(f.dir.path()));
        let (stored, _) = store.get(&made[0]).await.unwrap().unwrap();
        assert_eq!(all[2], serde_json::to_value(&stored).unwrap());

        let (_, _, only_b) = get_with(&f, "/api/builds?pipeline=b&state=succeeded").await;
        assert_eq!(ids(&only_b), vec![made[1].clone()]);
        let (_, _, none) = get_with(&f, "/api/builds?state=failed").await;
        assert_eq!(ids(&none), Vec::<String>::new());

        // Paging: two pages of two, the header pointing at the second.
        let (_, headers, first) = get_with(&f, "/api/builds?limit=2").await;
        assert_eq!(ids(&first), vec![made[2].clone(), made[1].clone()]);
        let next = headers["x-kiln-next-offset"].to_str().unwrap().to_string();
        assert_eq!(next, "2");
        let (_, headers, second) =
            get_with(&f, &format!("/api/builds?limit=2&offset={next}")).await;
        assert_eq!(ids(&second), vec![made[0].clone()]);
        assert!(headers.get("x-kiln-next-offset").is_none(), "no third page");

        // The time window: since is inclusive, until exclusive.
        let created = |v: &Value| v["createdAt"].as_str().unwrap().to_string();
        let since = created(&all[1]);
        let (_, _, recent) =
            get_with(&f, &format!("/api/builds?since={}", urlencode(&since))).await;
        assert_eq!(ids(&recent), vec![made[2].clone(), made[1].clone()]);
        let (_, _, older) = get_with(&f, &format!("/api/builds?until={}", urlencode(&since))).await;
        assert_eq!(ids(&older), vec![made[0].clone()]);

        // Bad values name the parameter and the form expected.
        for (query, parameter) in [
            ("state=done", "state"),
            ("since=yesterday", "since"),
            ("limit=0", "limit"),
            ("limit=many", "limit"),
            ("offset=-2", "offset"),
        ] {
            let (status, _, e) = get_with(&f, &format!("/api/builds?{query}")).await;
            assert_eq!(status, 400, "{query}: {e}");
            assert_eq!(e["code"], "invalid_parameter", "{query}: {e}");
            assert_eq!(e["parameter"], parameter, "{query}: {e}");
            assert!(e["error"].as_str().unwrap().contains("expected"), "{e}");
        }
        // A pipeline's summary shows its last build.
        let p = f.get("/api/pipelines/c").await;
        assert_eq!(p["lastBuild"]["id"], made[2].as_str(), "{p:#}");
        assert_eq!(p["lastBuild"]["state"], "succeeded");
        f.stop().await;
    })
    .await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_is_retried_once_and_other_builds_are_refused_with_a_code() {
    bounded(async {
        let (name, mut doc) = tiny("broken", json!({}));
        doc["properties"]["customize"] =
            json!([{"type": "Shell", "name": "fails", "inline": ["exit 3"]}]);
        let f = Factory::start(Options {
            pipelines: vec![(name, doc), tiny("tiny", json!({}))],
            ..Options::default()
        })
        .await;
        let failed = f.build("broken", None).await;
        let v = f.wait_terminal(&failed, LIMIT).await;
        assert_eq!(v["state"], "failed");
        assert_eq!(v["failure"]["category"], "customizer", "{v:#}");

        let (status, r) = f
            .post(&format!("/api/builds/{failed}/retry"), &json!({}))
            .await;
        assert_eq!(status, 201, "{r}");
        assert_eq!(r["outcome"], "created");
        assert_eq!(r["retryOf"], failed.as_str());
        let retry = r["build"].as_str().unwrap().to_string();
        assert_ne!(retry, failed);
        assert_eq!(r["detail"]["pipeline"], "broken");
        assert!(r["detail"]["reason"].as_str().unwrap().contains(&failed));
        // Retrying the same build again answers with the first retry's build.
        let (status, again) = f
            .post(&format!("/api/builds/{failed}/retry"), &json!({}))
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["outcome"], "existing");
        assert_eq!(again["build"], retry.as_str());
        f.wait_terminal(&retry, LIMIT).await;

        let ok = f.build("tiny", None).await;
        assert_eq!(f.wait_terminal(&ok, LIMIT).await["state"], "succeeded");
        let (status, e) = f.post(&format!("/api/builds/{ok}/retry"), &json!({})).await;
        assert_eq!(status, 409, "{e}");
        assert_eq!(e["code"], "conflict_not_retryable");
        assert!(e["error"].as_str().unwrap().contains("succeeded"), "{e}");
        let (status, e) = f
            .post(&format!("/api/builds/{ok}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 409, "{e}");
        assert_eq!(e["code"], "conflict_terminal");
        let (status, e) = f.post("/api/builds/no-such-build/retry", &json!({})).await;
        assert_eq!(status, 404);
        assert_eq!(e["code"], "build_not_found");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_replayed_onto_its_queue_once() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let store = SqliteStore::new(db_of(f.dir.path()));
        // A build request the queue gave up on (say, while the pipeline was
        // being deployed), recorded as the host records one.
        store
            .record_dead_letter(&NewDeadLetter {
                queue: "build-requests",
                message_id: "lost-request",
                body: r#"{"pipeline":"tiny","requestedBy":"ci"}"#,
                reason: "MaxDeliveryCountExceeded: store unavailable",
                delivery_count: 10,
                now: chrono::Utc::now(),
            })
            .await
            .unwrap();
        let letters = f.get("/api/deadletters").await;
        let seq = letters[0]["seq"].as_i64().unwrap();
        assert_eq!(letters[0]["replayedAt"], Value::Null);

        let (status, r) = f
            .post(&format!("/api/deadletters/{seq}/replay"), &json!({}))
            .await;
        assert_eq!(status, 202, "{r}");
        let message_id = r["messageId"].as_str().unwrap().to_string();
        assert_eq!(message_id, format!("lost-request-replay-{seq}"));
        let (status, e) = f
            .post(&format!("/api/deadletters/{seq}/replay"), &json!({}))
            .await;
        assert_eq!(status, 409, "{e}");
        assert_eq!(e["code"], "conflict_replayed");

        // The message became a build, once.
        let key = format!("message:{message_id}");
        let deadline = Instant::now() + LIMIT;
        let build = loop {
            if let Some(id) = store.build_for_key("tiny", &key).await.unwrap() {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "the replayed request made no build"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(f.wait_terminal(&build, LIMIT).await["state"], "succeeded");
        let all = store.list(&BuildFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(f.get("/api/deadletters").await[0]["replayedAt"].is_string());

        for (path, status, code) in [
            (
                "/api/deadletters/999999/replay",
                404,
                "dead_letter_not_found",
            ),
            ("/api/deadletters/abc/replay", 400, "invalid_parameter"),
        ] {
            let (s, e) = f.post(path, &json!({})).await;
            assert_eq!((s, e["code"].as_str()), (status, Some(code)), "{path}: {e}");
        }
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_a_stable_code() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let send = |method: reqwest::Method, path: &str, body: Option<&'static str>| {
            let mut r = f.http.request(method, format!("{}{path}", f.api));
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b);
            }
            r.send()
        };
        let cases = [
            (
                reqwest::Method::GET,
                "/api/builds/nope",
                None,
                404,
                "build_not_found",
            ),
            (
                reqwest::Method::GET,
                "/api/pipelines/nope",
                None,
                404,
                "pipeline_not_found",
            ),
            (
                reqwest::Method::GET,
                "/api/no-such-route",
                None,
                404,
                "not_found",
            ),
            (
                reqwest::Method::DELETE,
                "/api/builds",
                None,
                405,
                "method_not_allowed",
            ),
            (
                reqwest::Method::POST,
                "/api/builds",
                Some("{not json"),
                400,
                "invalid_request",
            ),
            (
                reqwest::Method::POST,
                "/api/builds",
                Some(r#"{"pipeline":"nope"}"#),
                404,
                "pipeline_not_found",
            ),
            (
                reqwest::Method::POST,
                "/api/gallery/pin",
                Some(r#"{"versionId":"x"}"#),
                400,
                "invalid_request",
            ),
            (
                reqwest::Method::GET,
                "/api/pipelines/tiny/schedule?count=x",
                None,
                400,
                "invalid_parameter",
            ),
        ];
        for (method, path, body, status, code) in cases {
            let r = send(method.clone(), path, body).await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{method} {path}");
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["code"], code, "{method} {path}: {e}");
            assert!(!e["error"].as_str().unwrap().is_empty(), "{e}");
        }
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_set_every_route_but_health_needs_one_of_them() {
    bounded(async {
        let (old, new) = ("old-key-0123456789abcdef", "new-key-0123456789abcdef");
        let f = Factory::start(Options {
            env: vec![
                ("KILN_API_KEYS", format!("{old},{new}")),
                ("KILN_EVENTS_KEY", "events-key-0123456789".into()),
            ],
            ..Options::default()
        })
        .await;
        let url = |p: &str| format!("{}{p}", f.api);
        let health = f.http.get(url("/api/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        for path in [
            "/api/builds",
            "/api/openapi.json",
            "/api/pipelines",
            "/api/no-such-route",
        ] {
            let r = f.http.get(url(path)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            assert!(r.headers().contains_key("www-authenticate"));
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["code"], "unauthorized", "{path}: {e}");
            assert!(
                e["error"].as_str().unwrap().starts_with("no API key"),
                "{e}"
            );
        }
        // Either key (a rotation in progress), in either header.
        let r = f
            .http
            .get(url("/api/builds"))
            .bearer_auth(old)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = f
            .http
            .get(url("/api/builds"))
            .header("x-kiln-key", new)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = f
            .http
            .post(url("/api/builds"))
            .bearer_auth("old-key-0123456789abcdeX")
            .json(&json!({"pipeline": "tiny"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"].as_str().unwrap().starts_with("wrong API key"),
            "{e}"
        );
        assert!(!e.to_string().contains("0123456789abcdeX"), "{e}");
        // kiln local is its own Functions host: the custom handler's
        // invocation routes are not served, key or not.
        let r = f
            .http
            .post(url("/build_requests"))
            .bearer_auth(old)
            .json(&json!({"Data": {"msg": "{\"pipeline\":\"tiny\"}"}, "Metadata": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // The events webhook takes the events key, not an API key.
        let r = f
            .http
            .post(url("/api/events/base-image"))
            .header("x-kiln-key", "events-key-0123456789")
            .header("aeg-event-type", "Notification")
            .json(&json!([]))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{}", r.text().await.unwrap());
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_is_413_and_a_slow_client_is_cut_off_without_holding_up_others() {
    bounded(async {
        let f = Factory::start(Options {
            env: vec![("KILN_HTTP_READ_TIMEOUT", "1".into())],
            ..Options::default()
        })
        .await;
        let big = format!(
            r#"{{"pipeline":"tiny","reason":"{}"}}"#,
            "x".repeat(70 * 1024)
        );
        let r = f
            .http
            .post(format!("{}/api/builds", f.api))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "payload_too_large", "{e}");
        // The events webhook takes an Event Grid batch (up to 1 MiB).
        let batch = format!(r#"[{{"data":"{}"}}]"#, "x".repeat(200 * 1024));
        let r = f
            .http
            .post(format!("{}/api/events/base-image", f.api))
            .header("content-type", "application/json")
            .body(batch)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 413);

        let addr = f.api.trim_start_matches("http://").to_string();
        // Headers begun, never finished.
        let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stalled
            .write_all(b"GET /api/health HTTP/1.1\r\nhost: kiln\r\n")
            .await
            .unwrap();
        // Headers sent, the body never.
        let mut slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow_body
            .write_all(b"POST /api/builds HTTP/1.1\r\nhost: kiln\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"pip")
            .await
            .unwrap();
        // Meanwhile others are served.
        let started = Instant::now();
        assert_eq!(f.get("/api/health").await["status"], "ok");
        assert!(started.elapsed() < Duration::from_secs(1));

        // Reads until `done` says so or the server closes; fails after 10 s.
        async fn read_until(mut s: tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                    .await
                    .expect("the server kept a stalled connection for 10 s")
                    .unwrap_or(0);
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out).into_owned();
                if n == 0 || done(&text) {
                    return text;
                }
            }
        }
        let cut = read_until(stalled, |_| false).await;
        assert!(!cut.contains("200 OK"), "{cut}");
        let answer = read_until(slow_body, |t| t.contains("request_timeout")).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_the_error_schema() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let doc = f.get("/api/openapi.json").await;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/builds",
            "/api/builds/{id}",
            "/api/builds/{id}/retry",
            "/api/builds/{id}/cancel",
            "/api/deadletters/{seq}/replay",
            "/api/pipelines/{name}",
            "/api/gallery",
            "/api/retention/plan",
            "/api/health",
        ] {
            assert!(paths.contains_key(p), "{p} missing: {:?}", paths.keys());
        }
        let schemas = &doc["components"]["schemas"];
        assert!(
            schemas["ErrorBody"]["properties"]["code"].is_object(),
            "{schemas:#}"
        );
        let codes = schemas["ErrorCode"]["enum"].as_array().unwrap();
        for c in [
            "unauthorized",
            "payload_too_large",
            "conflict_terminal",
            "build_not_found",
            "internal",
        ] {
            assert!(codes.contains(&json!(c)), "{c}: {codes:?}");
        }
        assert!(doc["paths"]["/api/builds"]["get"]["responses"]["401"].is_object());
        assert!(doc["paths"]["/api/health"]["get"]["responses"]["401"].is_null());
        f.stop().await;
    })
    .await;
}
