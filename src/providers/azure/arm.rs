//! The one HTTP client every Azure adapter goes through.
//!
//! It owns what ARM asks of a well-behaved client: a bearer token per
//! request, an `x-ms-client-request-id` per request (logged, and quoted in
//! every error, so a support case can find the call), a timeout per request,
//! a named retry policy per call, and long-running-operation polling that
//! honours `Retry-After` under an overall deadline. The Service Bus adapter
//! reuses it with another base URL and token scope.
//!
//! Follow-up URLs from the service (`nextLink`, `Azure-AsyncOperation`,
//! `Location`) are re-based onto the configured base URL: ARM hands out links
//! on its own host, and the token must never travel anywhere else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;
use tracing::Instrument;

use super::error::{category_for, ArmError};
use super::identity::TokenSource;
use crate::domain::failure::FailureCategory;

pub const MANAGEMENT_URL: &str = "https://management.azure.com";
pub const MANAGEMENT_SCOPE: &str = "https://management.azure.com/.default";

/// How a call may be repeated when it fails on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Reads and idempotent writes (GET, PUT, DELETE, queries): 429, 5xx,
    /// connection errors and timeouts are retried with exponential backoff
    /// and jitter, honouring `Retry-After`, up to `max_attempts`.
    Idempotent,
    /// Actions (POST `run`, `cancel`): sent once. The caller's state machine
    /// decides what a failure means; a blind resend could start a second build.
    NoRetry,
}

/// Waits between attempts and polls. Tests swap in one that records and returns at once.
#[async_trait]
pub trait Pause: Send + Sync {
    async fn pause(&self, d: Duration);
}

pub struct TokioPause;

#[async_trait]
impl Pause for TokioPause {
    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

#[derive(Debug, Clone)]
pub struct ArmOptions {
    /// `https://management.azure.com`, or a test server.
    pub base_url: String,
    /// Token scope for every request.
    pub scope: String,
    /// Name in logs and spans: `arm`, `servicebus`.
    pub service: &'static str,
    /// Each request, connect to last body byte.
    pub timeout: Duration,
    /// Attempts in all under [`RetryPolicy::Idempotent`].
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A longer `Retry-After` is cut to this, so one call cannot outlive a Functions invocation.
    pub retry_after_max: Duration,
    /// How long to follow one long-running operation before giving up on it.
    pub lro_deadline: Duration,
    /// Poll interval when the service gives no `Retry-After`.
    pub lro_poll: Duration,
    /// Whether to send `x-ms-client-request-id` (Service Bus would turn it into a message property).
    pub send_client_request_id: bool,
}

impl ArmOptions {
    pub fn management() -> Self {
        Self {
            base_url: MANAGEMENT_URL.to_string(),
            scope: MANAGEMENT_SCOPE.to_string(),
            service: "arm",
            timeout: Duration::from_secs(30),
            max_attempts: 4,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            lro_deadline: Duration::from_secs(240),
            lro_poll: Duration::from_secs(10),
            send_client_request_id: true,
        }
    }
}

/// A response, whatever its status; see [`ArmResponse::ok`].
#[derive(Debug)]
pub struct ArmResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub client_request_id: String,
}

impl ArmResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whole seconds only, as ARM sends them.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error this reply stands for, read from ARM's error envelope.
    pub fn error(&self) -> ArmError {
        ArmError::from_reply(self.status, &self.body, &self.client_request_id)
    }

    pub fn json(&self) -> Result<Value, ArmError> {
        if self.body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.body).map_err(|e| {
            ArmError::new(
                FailureCategory::Internal,
                format!("unreadable response body: {e}"),
            )
            .with_request_id(&self.client_request_id)
        })
    }

    /// The response if it succeeded, else its ARM error.
    pub fn ok(self) -> Result<ArmResponse, ArmError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.error())
        }
    }
}

#[derive(Clone)]
pub struct ArmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    opts: ArmOptions,
    tokens: Arc<dyn TokenSource>,
    pause: Arc<dyn Pause>,
}

impl ArmClient {
    pub fn new(http: reqwest::Client, opts: ArmOptions, tokens: Arc<dyn TokenSource>) -> Self {
        Self::with_pause(http, opts, tokens, Arc::new(TokioPause))
    }

    pub fn with_pause(
        http: reqwest::Client,
        mut opts: ArmOptions,
        tokens: Arc<dyn TokenSource>,
        pause: Arc<dyn Pause>,
    ) -> Self {
        opts.base_url = opts.base_url.trim_end_matches('/').to_string();
        Self {
            inner: Arc::new(Inner {
                http,
                opts,
                tokens,
                pause,
            }),
        }
    }

    pub fn options(&self) -> &ArmOptions {
        &self.inner.opts
    }

    /// `target` is a path with query (`/subscriptions/…?api-version=…`) or a
    /// link the service returned; either way it lands on the configured base.
    fn url(&self, target: &str) -> Result<Url, ArmError> {
        let base = &self.inner.opts.base_url;
        let path_and_query = if target.starts_with("http://") || target.starts_with("https://") {
            let link = Url::parse(target).map_err(|e| {
                ArmError::new(FailureCategory::Internal, format!("bad link {target}: {e}"))
            })?;
            match link.query() {
                Some(q) => format!("{}?{q}", link.path()),
                None => link.path().to_string(),
            }
        } else {
            target.to_string()
        };
        Url::parse(&format!("{base}{path_and_query}"))
            .map_err(|e| ArmError::new(FailureCategory::Internal, format!("bad URL {target}: {e}")))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.inner.opts;
        let exp = o
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(o.backoff_max);
        // Jitter in [exp/2, exp] keeps concurrent invocations from retrying in step.
        let ms = exp.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(ms / 2..=ms)
        })
    }

    /// Sends one call under `policy`. Any HTTP status comes back as `Ok`;
    /// `Err` means no usable response (token, connection, timeout).
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        policy: RetryPolicy,
    ) -> Result<ArmResponse, ArmError> {
        self.send_with(method, target, policy, |b| match body {
            Some(v) => b.json(v),
            None => b,
        })
        .await
    }

    /// As [`send`](Self::send), with the request builder finished by `finish`
    /// (headers and body beyond JSON, used by the Service Bus adapter).
    pub async fn send_with(
        &self,
        method: Method,
        target: &str,
        policy: RetryPolicy,
        finish: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<ArmResponse, ArmError> {
        let o = &self.inner.opts;
        let url = self.url(target)?;
        let mut attempt = 1u32;
        loop {
            let request_id = uuid::Uuid::new_v4().to_string();
            let token = self.inner.tokens.token(&o.scope).await.map_err(|e| {
                ArmError::new(FailureCategory::Auth, format!("{e:#}")).with_request_id(&request_id)
            })?;
            let mut builder = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(o.timeout)
                .bearer_auth(token.expose());
            if o.send_client_request_id {
                builder = builder.header("x-ms-client-request-id", &request_id);
            }
            let builder = finish(builder);
            let span = tracing::info_span!(
                "azure_call",
                service = o.service,
                method = %method,
                path = %url.path(),
                client_request_id = %request_id,
                attempt,
            );
            let started = Instant::now();
            let outcome = async {
                let r = builder.send().await?;
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body = r.text().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            }
            .instrument(span)
            .await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let last = policy == RetryPolicy::NoRetry || attempt >= o.max_attempts;
            match outcome {
                Ok((status, headers, body)) => {
                    let response = ArmResponse {
                        status,
                        headers,
                        body,
                        client_request_id: request_id.clone(),
                    };
                    let arm_request_id = response.header("x-ms-request-id").unwrap_or("");
                    tracing::debug!(
                        service = o.service, %method, path = %url.path(), status,
                        client_request_id = %request_id, arm_request_id, elapsed_ms, attempt,
                        "azure call answered"
                    );
                    if last || !retryable(&response) {
                        return Ok(response);
                    }
                    let wait = response
                        .retry_after()
                        .map(|d| d.min(o.retry_after_max))
                        .unwrap_or_else(|| self.backoff(attempt));
                    tracing::warn!(
                        service = o.service, %method, path = %url.path(), status,
                        client_request_id = %request_id, wait_ms = wait.as_millis() as u64, attempt,
                        "azure call will be retried"
                    );
                    self.inner.pause.pause(wait).await;
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout();
                    tracing::warn!(
                        service = o.service, %method, path = %url.path(),
                        client_request_id = %request_id, elapsed_ms, attempt, error = %e,
                        "azure call failed on the way"
                    );
                    if last || !transient {
                        return Err(ArmError::new(
                            FailureCategory::Network,
                            format!("{method} {}: {e}", url.path()),
                        )
                        .with_request_id(&request_id));
                    }
                    self.inner.pause.pause(self.backoff(attempt)).await;
                }
            }
            attempt += 1;
        }
    }

    /// GET a resource: `None` when it does not exist.
    pub async fn get_json(&self, target: &str) -> Result<Option<Value>, ArmError> {
        let r = self
            .send(Method::GET, target, None, RetryPolicy::Idempotent)
            .await?;
        if r.status == 404 {
            return Ok(None);
        }
        r.ok()?.json().map(Some)
    }

    /// Every item of a `{value, nextLink}` list, following `nextLink` to the end.
    pub async fn list_all(&self, target: &str) -> Result<Vec<Value>, ArmError> {
        let mut items = Vec::new();
        let mut next = Some(target.to_string());
        while let Some(link) = next.take() {
            let page = self
                .send(Method::GET, &link, None, RetryPolicy::Idempotent)
                .await?
                .ok()?
                .json()?;
            if let Some(values) = page.get("value").and_then(Value::as_array) {
                items.extend(values.iter().cloned());
            }
            next = page
                .get("nextLink")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        Ok(items)
    }

    /// Follows a long-running operation started by `first` until it ends.
    ///
    /// `Azure-AsyncOperation` is preferred (its body says Succeeded, Failed or
    /// Canceled); otherwise `Location` is polled while it answers 202;
    /// otherwise, when `resource` is given and the body's `provisioningState`
    /// is not terminal, the resource itself is polled. Returns the last response.
    pub async fn wait(
        &self,
        first: ArmResponse,
        resource: Option<&str>,
    ) -> Result<ArmResponse, ArmError> {
        let first = first.ok()?;
        let mut clock = Deadline::new(self.inner.opts.lro_deadline);
        if let Some(op) = first.header("azure-asyncoperation").map(str::to_string) {
            let mut wait = first.retry_after();
            loop {
                self.pause_within(&mut clock, wait, &op).await?;
                let r = self
                    .send(Method::GET, &op, None, RetryPolicy::Idempotent)
                    .await?
                    .ok()?;
                let doc = r.json()?;
                let status = doc.get("status").and_then(Value::as_str).unwrap_or("");
                match status.to_ascii_lowercase().as_str() {
                    "succeeded" => return Ok(r),
                    "failed" | "canceled" | "cancelled" => {
                        return Err(operation_error(&doc, status, &r.client_request_id))
                    }
                    _ => wait = r.retry_after(),
                }
            }
        }
        if first.status == 202 {
            if let Some(loc) = first.header("location").map(str::to_string) {
                let mut wait = first.retry_after();
                loop {
                    self.pause_within(&mut clock, wait, &loc).await?;
                    let r = self
                        .send(Method::GET, &loc, None, RetryPolicy::Idempotent)
                        .await?;
                    if r.status != 202 {
                        return r.ok();
                    }
                    wait = r.retry_after();
                }
            }
        }
        let Some(resource) = resource else {
            return Ok(first);
        };
        let mut current = first;
        loop {
            let doc = current.json()?;
            let state = doc
                .pointer("/properties/provisioningState")
                .and_then(Value::as_str)
                .unwrap_or("Succeeded");
            match state.to_ascii_lowercase().as_str() {
                "succeeded" => return Ok(current),
                "failed" | "canceled" => {
                    return Err(operation_error(&doc, state, &current.client_request_id))
                }
                _ => {}
            }
            let wait = current.retry_after();
            self.pause_within(&mut clock, wait, resource).await?;
            current = self
                .send(Method::GET, resource, None, RetryPolicy::Idempotent)
                .await?
                .ok()?;
        }
    }

    async fn pause_within(
        &self,
        clock: &mut Deadline,
        wait: Option<Duration>,
        what: &str,
    ) -> Result<(), ArmError> {
        let o = &self.inner.opts;
        let wait = wait.unwrap_or(o.lro_poll).min(o.retry_after_max);
        if !clock.allows(wait) {
            // Transient, not timeout: the operation goes on in Azure, and the
            // next step of the state machine will find it further along.
            return Err(ArmError::new(
                FailureCategory::Transient,
                format!(
                    "gave up following {} after {}s; it is still running",
                    self.url(what)
                        .map(|u| u.path().to_string())
                        .unwrap_or_default(),
                    o.lro_deadline.as_secs()
                ),
            ));
        }
        self.inner.pause.pause(wait).await;
        clock.waited += wait;
        Ok(())
    }
}

/// Time spent following an operation: real time plus the pauses, so a test
/// pause that returns at once still counts against the deadline.
struct Deadline {
    started: Instant,
    waited: Duration,
    limit: Duration,
}

impl Deadline {
    fn new(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            waited: Duration::ZERO,
            limit,
        }
    }
    fn allows(&self, next: Duration) -> bool {
        self.started.elapsed() + self.waited + next <= self.limit
    }
}

fn retryable(r: &ArmResponse) -> bool {
    if matches!(r.status, 408 | 429 | 500 | 502 | 503 | 504) {
        return true;
    }
    // Compute answers 409 with this code when another operation holds the resource.
    r.status == 409 && r.body.contains("RetryableErrorDueToAnotherOperation")
}

/// The error of a failed or canceled operation status body.
fn operation_error(doc: &Value, status: &str, request_id: &str) -> ArmError {
    let err = doc
        .get("error")
        .or_else(|| doc.pointer("/properties/error"));
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or(status);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the operation ended without an error message");
    let mut e = ArmError::new(
        category_for(None, code, message),
        format!("operation {status}: {message}"),
    )
    .with_request_id(request_id);
    e.code = Some(code.to_string());
    e
}

#[cfg(test)]
pub(crate) mod testing {
    //! A client against a wiremock server: static token, no real waiting.

    use std::sync::Mutex;

    use super::*;
    use crate::providers::azure::identity::StaticToken;

    pub const TOKEN: &str = "test-token-must-not-leak";

    /// Records each pause and returns at once.
    #[derive(Default)]
    pub struct RecordedPauses(pub Mutex<Vec<Duration>>);

    #[async_trait]
    impl Pause for RecordedPauses {
        async fn pause(&self, d: Duration) {
            self.0.lock().unwrap().push(d);
        }
    }

    impl RecordedPauses {
        pub fn taken(&self) -> Vec<Duration> {
            self.0.lock().unwrap().clone()
        }
    }

    pub fn options(base: &str) -> ArmOptions {
        ArmOptions {
            base_url: base.to_string(),
            timeout: Duration::from_secs(5),
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..ArmOptions::management()
        }
    }

    pub fn client(base: &str) -> (ArmClient, Arc<RecordedPauses>) {
        client_with(options(base))
    }

    pub fn client_with(opts: ArmOptions) -> (ArmClient, Arc<RecordedPauses>) {
        let pauses = Arc::new(RecordedPauses::default());
        let c = ArmClient::with_pause(
            reqwest::Client::new(),
            opts,
            Arc::new(StaticToken::new(TOKEN)),
            pauses.clone(),
        );
        (c, pauses)
    }
}

#[cfg(test)]
mod tests;
