//! The transport layer in front of every Azure route of the simulator:
//! bearer-token check, scripted faults and the request log.
//!
//! - **Authorization.** ARM and Service Bus refuse a request without
//!   `Authorization: Bearer …` (401). The token's value is not checked and
//!   never recorded. The staging blobs (`/blob/…`, SAS in the URL) and the
//!   control API (`/_sim/…`) need none.
//! - **Faults.** A [`FaultRule`] answers the next `times` requests whose
//!   method and path match: 429 with `Retry-After`, a 5xx with an ARM error
//!   envelope, or a *dropped response* — the request reaches its handler
//!   (which acts: the template is created, the message enqueued) and then the
//!   connection is closed without an answer, the way a lost response looks to
//!   a client. Dropping needs the connection, so it works through
//!   [`SimListener`] (the server's listener), not through `oneshot`.
//! - **Request log.** Every request (method, path and query with secret
//!   values masked, status or `dropped`, wall and sim time,
//!   `x-ms-client-request-id`) is kept in order, readable through
//!   `GET /_sim/requests` and [`Transport::requests`]; the control API itself
//!   is not logged.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ports::{Clock, ScaledClock};

/// Requests kept in the log; older ones are forgotten first.
const LOG_CAPACITY: usize = 100_000;

/// What a matching request gets instead of (or after) its handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum Fault {
    /// 429 with `Retry-After` (seconds) and ARM's `TooManyRequests` envelope.
    Throttle { retry_after_secs: u64 },
    /// A 5xx with an ARM error envelope carrying `code`.
    ServerError { status: u16, code: String },
    /// The handler runs; the connection is then closed without an answer.
    DropResponse,
}

/// The next `times` requests matching `method` (any when absent) and `path`
/// (a glob: `*` matches any run of characters, query excluded) get `fault`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    pub times: u32,
    pub fault: Fault,
}

impl FaultRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && glob(&self.path, path)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// How a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Status(u16),
    /// Handled, then the connection was closed without an answer.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// Order of arrival, from 1.
    pub seq: u64,
    pub method: String,
    /// Path and query; values of query keys that may carry secrets are `***`.
    pub path: String,
    pub outcome: Outcome,
    /// Set when a scripted fault answered (or dropped) the request.
    pub fault: Option<String>,
    pub wall: DateTime<Utc>,
    pub sim: DateTime<Utc>,
    pub client_request_id: Option<String>,
}

/// Query keys whose values are kept in the log; every other value is masked
/// (SAS signatures, function keys, tokens).
const SAFE_QUERY_KEYS: [&str; 7] = [
    "api-version",
    "timeout",
    "$expand",
    "$top",
    "$filter",
    "$skipToken",
    "functionName",
];

/// The path with its query, secret values masked.
pub fn loggable(path: &str, query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return path.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if SAFE_QUERY_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k)) => {
                format!("{k}={v}")
            }
            Some((k, _)) => format!("{k}=***"),
            None => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// The fault rules and the log, shared by the layer and the control API.
pub struct Transport {
    clock: ScaledClock,
    rules: Mutex<Vec<FaultRule>>,
    log: Mutex<(u64, VecDeque<RecordedRequest>)>,
}

impl Transport {
    pub fn new(clock: ScaledClock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new((0, VecDeque::new())),
        })
    }

    /// Adds a rule after the existing ones; the first matching rule answers.
    pub fn inject(&self, rule: FaultRule) {
        self.rules.lock().expect("rules mutex").push(rule);
    }

    /// Rules with requests left to answer.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules.lock().expect("rules mutex").clone()
    }

    pub fn clear_faults(&self) {
        self.rules.lock().expect("rules mutex").clear();
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log
            .lock()
            .expect("log mutex")
            .1
            .iter()
            .cloned()
            .collect()
    }

    /// The requests whose path contains `part` (a template name such as
    /// `kiln-<build>-a1`, a queue), oldest first.
    pub fn requests_matching(&self, part: &str) -> Vec<RecordedRequest> {
        let log = self.log.lock().expect("log mutex");
        log.1
            .iter()
            .filter(|r| r.path.contains(part))
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.log.lock().expect("log mutex").1.clear();
    }

    /// Takes one use of the first rule matching the request.
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("rules mutex");
        let rule = rules.iter_mut().find(|r| r.matches(method, path))?;
        rule.times -= 1;
        let fault = rule.fault.clone();
        rules.retain(|r| r.times > 0);
        Some(fault)
    }

    fn record(&self, mut r: RecordedRequest) {
        let mut log = self.log.lock().expect("log mutex");
        log.0 += 1;
        r.seq = log.0;
        if log.1.len() >= LOG_CAPACITY {
            log.1.pop_front();
        }
        log.1.push_back(r);
    }
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn has_bearer_token(req: &Request) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty())
}

/// The middleware: `axum::middleware::from_fn_with_state(transport, layer)`.
pub async fn layer(State(t): State<Arc<Transport>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let mut entry = RecordedRequest {
        seq: 0,
        method: method.clone(),
        path: loggable(&path, req.uri().query()),
        outcome: Outcome::Status(0),
        fault: None,
        wall: Utc::now(),
        sim: t.clock.now(),
        client_request_id: req
            .headers()
            .get("x-ms-client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let needs_token = !path.starts_with("/blob/");
    let response = if needs_token && !has_bearer_token(&req) {
        arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or is not a Bearer token.",
        )
    } else {
        match t.take_fault(&method, &path) {
            None => next.run(req).await,
            Some(fault) => {
                entry.fault = Some(format!("{fault:?}"));
                match fault {
                    Fault::Throttle { retry_after_secs } => {
                        let mut r = arm_error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "TooManyRequests",
                            "The request is being throttled (scripted fault).",
                        );
                        r.headers_mut()
                            .insert("retry-after", retry_after_secs.into());
                        r
                    }
                    Fault::ServerError { status, code } => arm_error(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        &code,
                        "The server had an error while processing the request (scripted fault).",
                    ),
                    Fault::DropResponse => {
                        let conn = req.extensions().get::<ConnectInfo<Connection>>().cloned();
                        let r = next.run(req).await;
                        match conn {
                            Some(ConnectInfo(c)) => {
                                c.kill();
                                entry.outcome = Outcome::Dropped;
                                t.record(entry);
                                return r;
                            }
                            // Without the server's listener there is no
                            // connection to close; answer like a gateway that lost it.
                            None => arm_error(
                                StatusCode::BAD_GATEWAY,
                                "ConnectionDropped",
                                "dropping a response needs the simulator's own listener",
                            ),
                        }
                    }
                }
            }
        }
    };
    entry.outcome = Outcome::Status(response.status().as_u16());
    t.record(entry);
    response
}

#[derive(Debug, Deserialize)]
struct RequestsQuery {
    /// Only requests whose path contains this (a template name, a queue).
    path_contains: Option<String>,
}

/// `GET|DELETE /_sim/requests`, `GET|POST|DELETE /_sim/faults`.
pub fn control_router(t: Arc<Transport>) -> Router {
    Router::new()
        .route(
            "/_sim/requests",
            get(
                |State(t): State<Arc<Transport>>, Query(q): Query<RequestsQuery>| async move {
                    Json(match q.path_contains {
                        Some(part) => t.requests_matching(&part),
                        None => t.requests(),
                    })
                },
            )
            .delete(|State(t): State<Arc<Transport>>| async move {
                t.clear_requests();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/faults",
            get(|State(t): State<Arc<Transport>>| async move { Json(t.rules()) })
                .post(
                    |State(t): State<Arc<Transport>>, Json(rule): Json<FaultRule>| async move {
                        t.inject(rule);
                        StatusCode::CREATED
                    },
                )
                .delete(|State(t): State<Arc<Transport>>| async move {
                    t.clear_faults();
                    StatusCode::NO_CONTENT
                }),
        )
        .with_state(t)
}

/// One accepted connection, as request handlers see it: the fault layer can
/// close it without an answer.
#[derive(Debug, Clone)]
pub struct Connection {
    killed: Arc<AtomicBool>,
}

impl Connection {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream that fails every write (and reads as closed) once its
/// connection is killed, so hyper drops it before the response is written.
pub struct KillableStream {
    inner: tokio::net::TcpStream,
    killed: Arc<AtomicBool>,
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The simulator's listener: TCP connections that the fault layer can kill.
pub struct SimListener(pub tokio::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = KillableStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        KillableStream {
                            inner,
                            killed: Arc::new(AtomicBool::new(false)),
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own listener does.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, SimListener>> for Connection {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SimListener>) -> Self {
        Connection {
            killed: stream.io().killed.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob(
            "*/run",
            "/subscriptions/s/imageTemplates/kiln-b1-a1/run"
        ));
        assert!(glob(
            "/subscriptions/*/imageTemplates/kiln-*-a1/run",
            "/subscriptions/s/imageTemplates/kiln-b1-a1/run"
        ));
        assert!(!glob("*/run", "/subscriptions/s/imageTemplates/kiln-b1-a1"));
        assert!(glob("/build-polls/messages", "/build-polls/messages"));
        assert!(!glob("/build-polls/messages", "/build-polls/messages/head"));
        assert!(glob("*", ""));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn query_values_that_may_be_secrets_are_masked() {
        assert_eq!(
            loggable("/blob/c/log", Some("sv=2022&sig=abc%2F&se=2026")),
            "/blob/c/log?sv=***&sig=***&se=***"
        );
        assert_eq!(
            loggable("/x", Some("api-version=2025-10-01&code=k3y")),
            "/x?api-version=2025-10-01&code=***"
        );
        assert_eq!(loggable("/x", None), "/x");
    }

    #[test]
    fn a_rule_answers_its_number_of_requests_and_then_is_gone() {
        let t = Transport::new(ScaledClock {
            start: Utc::now(),
            anchor: Utc::now(),
            factor: 1,
        });
        t.inject(FaultRule {
            method: Some("post".into()),
            path: "*/messages".into(),
            times: 2,
            fault: Fault::DropResponse,
        });
        assert_eq!(t.take_fault("GET", "/q/messages"), None);
        assert_eq!(
            t.take_fault("POST", "/q/messages"),
            Some(Fault::DropResponse)
        );
        assert_eq!(
            t.take_fault("POST", "/q/messages"),
            Some(Fault::DropResponse)
        );
        assert_eq!(t.take_fault("POST", "/q/messages"), None);
        assert!(t.rules().is_empty());
    }
}
