//! The HTTP call under every Table Storage operation.
//!
//! Every request carries `x-ms-version` ([`API_VERSION`]), `x-ms-date`, the
//! OData version headers the service requires since 2009-09-19, an
//! `x-ms-client-request-id` (logged, and quoted when a call fails on the
//! way), and `Authorization`: Shared Key, signed per attempt since the date
//! changes, or a bearer token. Calls are sent again under the client's
//! [`RetryPolicy`]; any HTTP status comes back to the operation, which
//! reads it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;

use super::auth::{Credential, SignedParts, STORAGE_SCOPE};
use super::retry::RetryPolicy;
use super::TableError;
use crate::providers::azure::arm::Pause;

/// The REST version: the first with Entra ID for tables, and one Azurite 3 accepts.
pub const API_VERSION: &str = "2019-02-02";
pub(crate) const ACCEPT_FULL: &str = "application/json;odata=fullmetadata";
pub(crate) const ACCEPT_NONE: &str = "application/json;odata=nometadata";
const JSON: &str = "application/json";

#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Each attempt, connect to last body byte. The service gives a write
    /// up to 30 s; a client that stops sooner may miss a write that landed.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::standard(),
        }
    }
}

/// The HTTP side of a [`TableClient`](super::TableClient): where, as whom, how patiently.
pub(crate) struct Http {
    pub http: reqwest::Client,
    /// `https://{account}.table.core.windows.net` or a path-style
    /// `http://127.0.0.1:10002/{account}`, no trailing slash.
    pub endpoint: String,
    pub credential: Credential,
    pub opts: TableOptions,
    pub pause: Arc<dyn Pause>,
}

/// One request before it is signed.
pub(crate) struct Call {
    pub method: Method,
    /// Below the endpoint, percent-encoded: `Tables`, `t()`, `t(PartitionKey='…',RowKey='…')`, `$batch`.
    pub resource: String,
    /// Unencoded values.
    pub query: Vec<(&'static str, String)>,
    pub accept: &'static str,
    pub if_match: Option<String>,
    pub prefer_no_content: bool,
    pub body: Option<(String, Vec<u8>)>,
    /// What the caller asked for, in words, for logs and errors.
    pub op: String,
}

impl Call {
    pub fn new(method: Method, resource: String, accept: &'static str, op: String) -> Self {
        Self {
            method,
            resource,
            query: Vec::new(),
            accept,
            if_match: None,
            prefer_no_content: false,
            body: None,
            op,
        }
    }

    pub fn json_body(mut self, v: &Value) -> Self {
        self.body = Some((JSON.to_string(), v.to_string().into_bytes()));
        self.prefer_no_content = true;
        self
    }
}

pub(crate) struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn error(&self, op: &str) -> TableError {
        TableError::from_reply(
            op,
            self.status,
            self.header("x-ms-error-code"),
            &self.body,
            self.header("x-ms-request-id"),
            retry_after(&self.headers),
        )
    }

    pub fn ok(self, op: &str) -> Result<Reply, TableError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.error(op))
        }
    }

    pub fn etag(&self, op: &str) -> Result<String, TableError> {
        self.header("etag")
            .map(str::to_string)
            .ok_or_else(|| TableError::Protocol {
                op: op.to_string(),
                message: format!("HTTP {} without an ETag header", self.status),
            })
    }

    pub fn json(&self, op: &str) -> Result<Value, TableError> {
        serde_json::from_str(&self.body).map_err(|e| TableError::Protocol {
            op: op.to_string(),
            message: format!("body is not JSON: {e}"),
        })
    }
}

/// Whole seconds only, as the storage services send them.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Http {
    /// Sends `call` under the retry policy. Any HTTP status comes back as
    /// `Ok`; `Err` means no answer (connection, timeout, token).
    pub async fn send(&self, call: &Call) -> Result<Reply, TableError> {
        let inner = self;
        let url = self.url(call)?;
        let mut attempt = 1u32;
        loop {
            let request_id = uuid::Uuid::new_v4().to_string();
            let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            let content_type = call.body.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
            let authorization =
                match &inner.credential {
                    Credential::SharedKey(key) => key.authorization(&SignedParts {
                        method: call.method.as_str(),
                        content_md5: "",
                        content_type,
                        date: &date,
                        url: &url,
                    }),
                    Credential::Bearer(tokens) => {
                        let token = tokens.token(STORAGE_SCOPE).await.map_err(|e| {
                            TableError::Transport {
                                op: call.op.clone(),
                                message: format!("cannot get a token for {STORAGE_SCOPE}: {e:#}"),
                            }
                        })?;
                        format!("Bearer {}", token.expose())
                    }
                };
            let mut builder = inner
                .http
                .request(call.method.clone(), url.clone())
                .timeout(inner.opts.timeout)
                .header("x-ms-date", &date)
                .header("x-ms-version", API_VERSION)
                .header("x-ms-client-request-id", &request_id)
                .header("DataServiceVersion", "3.0;NetFx")
                .header("MaxDataServiceVersion", "3.0;NetFx")
                .header("Accept", call.accept)
                .header("Authorization", authorization);
            if let Some(m) = &call.if_match {
                builder = builder.header("If-Match", m);
            }
            if call.prefer_no_content {
                builder = builder.header("Prefer", "return-no-content");
            }
            if let Some((t, body)) = &call.body {
                builder = builder.header("Content-Type", t).body(body.clone());
            }
            let started = Instant::now();
            let outcome = async {
                let r = builder.send().await?;
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body = r.text().await?;
                Ok::<_, reqwest::Error>(Reply {
                    status,
                    headers,
                    body,
                })
            }
            .await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(reply) => {
                    let service_request_id = reply.header("x-ms-request-id").unwrap_or("");
                    tracing::debug!(
                        service = "table", op = %call.op, status = reply.status, attempt,
                        client_request_id = %request_id, service_request_id, elapsed_ms,
                        "table call answered"
                    );
                    if !RetryPolicy::retryable_status(reply.status) {
                        return Ok(reply);
                    }
                    let Some(wait) = inner.opts.retry.wait(attempt, retry_after(&reply.headers))
                    else {
                        return Ok(reply);
                    };
                    tracing::warn!(
                        service = "table", op = %call.op, status = reply.status, attempt,
                        client_request_id = %request_id, wait_ms = wait.as_millis() as u64,
                        "table call will be retried"
                    );
                    inner.pause.pause(wait).await;
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_body();
                    tracing::warn!(
                        service = "table", op = %call.op, attempt, client_request_id = %request_id,
                        elapsed_ms, error = %e, "table call failed on the way"
                    );
                    let wait = if transient {
                        inner.opts.retry.wait(attempt, None)
                    } else {
                        None
                    };
                    let Some(wait) = wait else {
                        return Err(TableError::Transport {
                            op: call.op.clone(),
                            message: format!(
                                "{} {} after {attempt} attempt(s): {e} (x-ms-client-request-id {request_id})",
                                call.method,
                                url.path()
                            ),
                        });
                    };
                    inner.pause.pause(wait).await;
                }
            }
            attempt += 1;
        }
    }

    fn url(&self, call: &Call) -> Result<Url, TableError> {
        let mut url = format!("{}/{}", self.endpoint, call.resource);
        for (i, (name, value)) in call.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.push_str(&encode(value));
        }
        Url::parse(&url).map_err(|e| TableError::Invalid(format!("{}: bad URL: {e}", call.op)))
    }
}

/// `table(PartitionKey='…',RowKey='…')`, each key quoted as an OData string
/// literal and percent-encoded.
pub(crate) fn entity_path(table: &str, pk: &str, rk: &str) -> String {
    format!(
        "{table}(PartitionKey='{}',RowKey='{}')",
        encode(&pk.replace('\'', "''")),
        encode(&rk.replace('\'', "''"))
    )
}

/// Percent-encodes every byte but RFC 3986's unreserved characters, so
/// nothing in a value reads as URL syntax (`'` is `%27`, a space `%20`, never `+`).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_a_path_are_quoted_literals_and_percent_encoded() {
        assert_eq!(
            entity_path("builds", "o'clock", "a b+c"),
            "builds(PartitionKey='o%27%27clock',RowKey='a%20b%2Bc')"
        );
        assert_eq!(encode("1!8!U21pdGg-"), "1%218%21U21pdGg-");
    }
}
