//! The one HTTP client every Azure adapter goes through.
//!
//! It owns what ARM asks of a well-behaved client: a bearer token per
//! request, an `x-ms-client-request-id` per request (logged, and quoted in
//! every error, so a support case can find the call), a timeout per request,
//! a named retry policy per call that honours `Retry-After` (but never
//! sleeps longer than an invocation may). It does not follow long-running
//! operations: kiln starts them and reads the resource again on a later
//! poll, so no Functions invocation blocks on ARM. The Service Bus adapter
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

use super::error::ArmError;
use super::identity::TokenSource;
use crate::domain::failure::FailureCategory;
use crate::metrics::Metrics;

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

/// Pauses on a clock `factor` times faster than the wall (`KILN_CLOCK`): a
/// kiln pointed at the simulator backs off in the simulator's time, so a
/// scenario keeps the proportions it would have in Azure.
pub struct ScaledPause(pub u32);

#[async_trait]
impl Pause for ScaledPause {
    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d / self.0.max(1)).await;
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
    /// The longest wait between attempts of one call. A `Retry-After` longer
    /// than this ends the call with the throttled answer instead: kiln's
    /// state machine asks again on a later poll, so an invocation never
    /// sleeps for long on ARM (throttling is absorbed by scheduled polls).
    pub retry_after_max: Duration,
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
            backoff_max: Duration::from_secs(4),
            retry_after_max: Duration::from_secs(10),
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
    /// Where each attempt's latency and status is counted, when the app has a registry.
    metrics: Option<Metrics>,
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
                metrics: None,
            }),
        }
    }

    /// The same client, counting every attempt in `metrics`
    /// (`kiln_provider_request_duration_seconds`, `kiln_provider_throttled_total`).
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let i = &self.inner;
        ArmClient {
            inner: Arc::new(Inner {
                http: i.http.clone(),
                opts: i.opts.clone(),
                tokens: i.tokens.clone(),
                pause: i.pause.clone(),
                metrics: Some(metrics.clone()),
            }),
        }
    }

    pub fn options(&self) -> &ArmOptions {
        &self.inner.opts
    }

    /// The same client (HTTP pool, credential, pauses, retry settings) for
    /// another service: `base_url` and token `scope` replaced. Used for the
    /// staging storage account's blob endpoint.
    pub fn rebased(&self, base_url: &str, scope: &str, service: &'static str) -> ArmClient {
        let opts = ArmOptions {
            base_url: base_url.trim_end_matches('/').to_string(),
            scope: scope.to_string(),
            service,
            send_client_request_id: true,
            ..self.inner.opts.clone()
        };
        ArmClient {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                opts,
                tokens: self.inner.tokens.clone(),
                pause: self.inner.pause.clone(),
                metrics: self.inner.metrics.clone(),
            }),
        }
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
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            if let Some(m) = &self.inner.metrics {
                let status = outcome.as_ref().ok().map(|(status, _, _)| *status);
                m.provider_call(o.service, method.as_str(), status, elapsed);
            }
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
                    let wait = match response.retry_after() {
                        Some(d) if d > o.retry_after_max => {
                            tracing::warn!(
                                service = o.service, %method, path = %url.path(), status,
                                client_request_id = %request_id, retry_after_s = d.as_secs(),
                                "azure asks to wait longer than one invocation may; giving the answer back"
                            );
                            return Ok(response);
                        }
                        Some(d) => d,
                        None => self.backoff(attempt),
                    };
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
}

fn retryable(r: &ArmResponse) -> bool {
    if matches!(r.status, 408 | 429 | 500 | 502 | 503 | 504) {
        return true;
    }
    // Compute answers 409 with this code when another operation holds the resource.
    r.status == 409 && r.body.contains("RetryableErrorDueToAnotherOperation")
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
