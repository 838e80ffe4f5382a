use std::io;
use std::sync::Mutex;

use serde_json::json;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::testing::{client, TOKEN};
use super::*;

const RES: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.X/things/t1";

fn target() -> String {
    format!("{RES}?api-version=2025-10-01")
}

#[tokio::test]
async fn every_request_carries_a_bearer_token_and_a_fresh_client_request_id() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RES))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header_exists("x-ms-client-request-id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"name": "t1"})))
        .expect(2)
        .mount(&server)
        .await;
    let (c, _) = client(&server.uri());
    let a = c.get_json(&target()).await.unwrap().unwrap();
    assert_eq!(a["name"], "t1");
    c.get_json(&target()).await.unwrap();
    let ids: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers["x-ms-client-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert!(uuid::Uuid::parse_str(&ids[0]).is_ok());
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_that_long() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let (c, pauses) = client(&server.uri());
    let metrics = Metrics::new();
    let c = c.with_metrics(&metrics);
    let v = c.get_json(&target()).await.unwrap().unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(pauses.taken(), vec![Duration::from_secs(7)]);
    // Each attempt is timed under its status; the 429 also counts as throttling.
    let text = metrics.encode(crate::metrics::Gauges {
        active_builds: 0,
        queued_builds: 0,
    });
    let count = |name: &str, labels: &[&str]| -> Option<f64> {
        text.lines().find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{')?;
            (n == name && labels.iter().all(|x| rest.contains(x))).then(|| v.parse().unwrap())
        })
    };
    let calls = "kiln_provider_request_duration_seconds_count";
    for status in ["status=\"429\"", "status=\"200\""] {
        assert_eq!(
            count(calls, &["service=\"arm\"", "method=\"GET\"", status]),
            Some(1.0),
            "{status}: {text}"
        );
    }
    assert_eq!(
        count("kiln_provider_throttled_total", &["service=\"arm\""]),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_an_invocation_may_wait_hands_the_429_back() {
    // ARM asks for two minutes: sleeping that long inside a Functions
    // invocation is what must not happen; the caller's next poll asks again.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, pauses) = client(&server.uri());
    let r = c
        .send(Method::GET, &target(), None, RetryPolicy::Idempotent)
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(pauses.taken().is_empty(), "{:?}", pauses.taken());
}

#[tokio::test]
async fn a_500_on_a_post_action_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&server)
        .await;
    let (c, pauses) = client(&server.uri());
    let r = c
        .send(Method::POST, &target(), None, RetryPolicy::NoRetry)
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    let e = r.ok().unwrap_err();
    assert_eq!(e.category, FailureCategory::Transient);
    assert!(pauses.taken().is_empty());
}

#[tokio::test]
async fn idempotent_retries_stop_after_the_last_attempt() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&server)
        .await;
    let (c, pauses) = client(&server.uri());
    let e = c.get_json(&target()).await.unwrap_err();
    assert_eq!(e.status, Some(503));
    assert_eq!(pauses.taken().len(), 3);
}

#[tokio::test]
async fn a_client_error_is_answered_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": "RequestDisallowedByPolicy", "message": "denied by policy 'no-public-ip'"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(&server.uri());
    let e = c.get_json(&target()).await.unwrap_err();
    assert_eq!(e.category, FailureCategory::Policy);
    assert!(e.to_string().contains("no-public-ip"));
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported_as_network() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (c, pauses) = client(&format!("http://127.0.0.1:{port}"));
    let e = c.get_json(&target()).await.unwrap_err();
    assert_eq!(e.category, FailureCategory::Network);
    assert!(e.client_request_id.is_some());
    assert_eq!(pauses.taken().len(), 3);
}

#[tokio::test]
async fn a_list_follows_next_links_on_the_configured_host_only() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/things"))
        .respond_with(move |r: &Request| {
            let second = r.url.query().unwrap_or("").contains("skiptoken");
            let body = if second {
                json!({"value": [{"n": 3}]})
            } else {
                json!({"value": [{"n": 1}, {"n": 2}],
                       "nextLink": "http://svchost:99/things?api-version=1&$skiptoken=abc"})
            };
            ResponseTemplate::new(200).set_body_json(body)
        })
        .expect(2)
        .mount(&server)
        .await;
    let (c, _) = client(&server.uri());
    let items = c.list_all("/things?api-version=1").await.unwrap();
    let ns: Vec<i64> = items.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 2, 3]);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_token_never_reaches_logs_or_errors_but_the_request_id_does() {
    // Callsite interest is cached per process: a test thread without a
    // subscriber can turn a log line off for everyone. A global subscriber
    // that wants everything (and writes it nowhere) keeps every callsite on,
    // so this test's own subscriber sees its lines whatever runs beside it.
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(io::sink)
                .finish(),
        );
    });
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}),
        ))
        .mount(&server)
        .await;
    let (c, _) = client(&server.uri());
    let e = c.get_json(&target()).await.unwrap_err();
    assert_eq!(e.category, FailureCategory::Auth);
    let id = e.client_request_id.clone().unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains(&id), "the request id is logged: {text}");
    for shown in [text, e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(TOKEN), "token leaked: {shown}");
    }
}
