//! A counting reverse proxy on loopback: every request is forwarded to a
//! target origin as it came (method, path and query, headers, body), its
//! answer relayed, and the request counted. In front of a Table Storage
//! endpoint it counts the store's transactions: each request is one (a
//! `$batch` is one entity-group transaction). Shared Key signs the path,
//! not the host, so requests signed for the proxy's URL pass on unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub struct CountingProxy {
    /// `http://127.0.0.1:PORT`, the proxy's origin.
    pub url: String,
    count: Arc<AtomicU64>,
    kinds: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Forward {
    target: String,
    http: reqwest::Client,
    count: Arc<AtomicU64>,
    kinds: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
}

/// What a Table Storage request is, by its method and URL.
fn kind(method: &axum::http::Method, path_and_query: &str) -> &'static str {
    let decoded = path_and_query.replace("%24", "$");
    match method.as_str() {
        "POST" if decoded.contains("$batch") => "batch",
        "GET" if decoded.contains("$filter") => "query",
        "GET" if decoded.contains("PartitionKey=") => {
            let row = decoded
                .split("RowKey='")
                .nth(1)
                .unwrap_or("")
                .replace("%3A", ":");
            if decoded.contains("PartitionKey='ids'") {
                "point read: build index"
            } else if row.starts_with("b:") {
                "point read: build"
            } else if row.starts_with("state") {
                "point read: pipeline state"
            } else if row.starts_with("k:") {
                "point read: request key"
            } else if row.starts_with("c:") {
                "point read: cleanup"
            } else {
                "point read: other"
            }
        }
        "GET" => "other read",
        _ => "single write",
    }
}

/// Headers of one hop, not passed on.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

async fn forward(State(f): State<Forward>, req: Request) -> Response {
    f.count.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let k = kind(
        &parts.method,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    *f.kinds.lock().unwrap().entry(k).or_default() += 1;
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = f
        .http
        .request(parts.method.clone(), format!("{}{path}", f.target));
    for (k, v) in &parts.headers {
        if !hop_by_hop(k.as_str()) {
            out = out.header(k, v);
        }
    }
    let answer = match out.body(body).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (k, v) in &headers {
        if !hop_by_hop(k.as_str()) {
            response.headers_mut().append(k, v.clone());
        }
    }
    response
}

impl CountingProxy {
    /// Forwards to `target` (`http://host:port`, no path).
    pub async fn start(target: &str) -> CountingProxy {
        let count = Arc::new(AtomicU64::new(0));
        let kinds = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let state = Forward {
            kinds: kinds.clone(),
            target: target.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            count: count.clone(),
        };
        let router = Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        CountingProxy {
            url,
            count,
            kinds,
            task,
        }
    }

    /// Requests so far by kind (batch, query, point read, …).
    pub fn by_kind(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.kinds.lock().unwrap().clone()
    }

    /// Requests forwarded (or tried) so far.
    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Storage connection string whose `TableEndpoint` goes through the proxy
/// at `proxy_url`: the rewritten string and the origin to forward to (the
/// endpoint's path, Azurite's `/devstoreaccount1`, stays in the string).
/// `None` without an explicit `TableEndpoint`.
pub fn through_proxy(connection: &str, proxy_url: &str) -> Option<(String, String)> {
    let mut target = None;
    let parts: Vec<String> = connection
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("TableEndpoint") => {
                let v = v.trim();
                let after_scheme = v.find("://").map(|i| i + 3)?;
                let origin_end = v[after_scheme..]
                    .find('/')
                    .map(|i| after_scheme + i)
                    .unwrap_or(v.len());
                target = Some(v[..origin_end].to_string());
                Some(format!("{k}={proxy_url}{}", &v[origin_end..]))
            }
            _ => Some(part.to_string()),
        })
        .collect::<Option<_>>()?;
    Some((parts.join(";"), target?))
}

#[tokio::test]
async fn scale_proxy_forwards_relays_and_counts() {
    use axum::routing::{get, post};
    use serde_json::{json, Value};

    let target = Router::new()
        .route(
            "/devstoreaccount1/Tables",
            post(|req: Request| async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let query = req.uri().query().map(str::to_string);
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let echo = json!({
                    "auth": auth,
                    "query": query,
                    "body": String::from_utf8_lossy(&body),
                });
                (
                    StatusCode::CREATED,
                    [("x-ms-request-id", "r-1")],
                    axum::Json(echo),
                )
            }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, target).await.unwrap() });

    let proxy = CountingProxy::start(&origin).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/devstoreaccount1/Tables?x=1", proxy.url))
        .header("authorization", "SharedKey devstoreaccount1:sig")
        .body(r#"{"TableName":"kilnbuilds"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-ms-request-id"], "r-1");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(
        echo,
        json!({ "auth": "SharedKey devstoreaccount1:sig", "query": "x=1",
                "body": r#"{"TableName":"kilnbuilds"}"# })
    );
    let r = http
        .get(format!("{}/gone", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(proxy.requests(), 2);

    let conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;";
    let (rewritten, to) = through_proxy(conn, &proxy.url).unwrap();
    assert_eq!(to, "http://127.0.0.1:10002");
    assert_eq!(
        rewritten,
        format!("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;TableEndpoint={}/devstoreaccount1;", proxy.url)
    );
    assert_eq!(
        through_proxy("UseDevelopmentStorage=true", &proxy.url),
        None
    );
}
