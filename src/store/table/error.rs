//! What a Table Storage call can end in, by what the caller does next.
//!
//! Callers of an optimistic store must tell 404 (gone), 409 (already there)
//! and 412 (someone else wrote first) apart, so those are variants of their
//! own; everything else the service says is [`TableError::Http`] with its
//! status and error code. Every message names the operation (`insert into
//! builds (PartitionKey 'p', RowKey 'r')`) and the service's
//! `x-ms-request-id` when there was one; none carries a key, a token or a
//! request header.

use std::time::Duration;

use serde_json::Value;

use super::auth::ConnectionStringError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TableError {
    /// 404: the entity (`ResourceNotFound`) or the table (`TableNotFound`) does not exist.
    #[error("{op}: not found ({code}): {message}")]
    NotFound {
        op: String,
        code: String,
        message: String,
    },
    /// 409: `EntityAlreadyExists` on an insert, `TableBeingDeleted`, … An
    /// insert retried after a lost reply can meet its own first attempt
    /// here; see [`TableClient::insert`](super::TableClient::insert).
    #[error("{op}: conflict ({code}): {message}")]
    Conflict {
        op: String,
        code: String,
        message: String,
    },
    /// 412: the `If-Match` ETag is no longer the entity's (`UpdateConditionNotSatisfied`).
    #[error("{op}: precondition failed ({code}): {message}")]
    PreconditionFailed {
        op: String,
        code: String,
        message: String,
    },
    /// An entity group transaction was refused by operation `index` (0-based,
    /// in the order given); nothing in it was committed.
    #[error("{op}: operation {index} failed with HTTP {status} ({code}): {message}; nothing was committed")]
    BatchFailed {
        op: String,
        index: usize,
        status: u16,
        code: String,
        message: String,
    },
    /// 429 or 503 (`ServerBusy`) after the retry policy gave up, or with a
    /// `Retry-After` longer than one call may wait.
    #[error("{op}: throttled (HTTP {status}{}): {message}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    Throttled {
        op: String,
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Any other answer that is not a success (400, 403 `AuthenticationFailed`, 5xx, …).
    #[error("{op}: HTTP {status} ({code}): {message}")]
    Http {
        op: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused or reset, timeout, or a token that could not be had.
    #[error("{op}: {message}")]
    Transport { op: String, message: String },
    /// Refused before sending: the service would refuse it too (a key with
    /// `/`, a property over 64 KiB, 101 operations in a batch, …).
    #[error("not sent: {0}")]
    Invalid(String),
    /// The client cannot be set up (connection string, endpoint).
    #[error(transparent)]
    Config(#[from] ConnectionStringError),
    /// A success whose body kiln cannot read (not the Table service's JSON).
    #[error("{op}: unreadable response: {message}")]
    Protocol { op: String, message: String },
}

impl TableError {
    /// The error an unsuccessful reply stands for.
    pub(crate) fn from_reply(
        op: &str,
        status: u16,
        error_code_header: Option<&str>,
        body: &str,
        request_id: Option<&str>,
        retry_after: Option<Duration>,
    ) -> TableError {
        let (body_code, message) = service_error(body);
        let code = error_code_header
            .map(str::to_string)
            .or(body_code)
            .unwrap_or_else(|| "none".to_string());
        let mut message = first_line(&message).to_string();
        if message.is_empty() {
            message = "no error message".to_string();
        }
        if let Some(id) = request_id {
            message.push_str(&format!(" (x-ms-request-id {id})"));
        }
        let op = op.to_string();
        match status {
            404 => TableError::NotFound { op, code, message },
            409 => TableError::Conflict { op, code, message },
            412 => TableError::PreconditionFailed { op, code, message },
            429 | 503 => TableError::Throttled {
                op,
                status,
                retry_after,
                message: format!("{code}: {message}"),
            },
            _ => TableError::Http {
                op,
                status,
                code,
                message,
            },
        }
    }

    /// The HTTP status behind a service answer, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            TableError::NotFound { .. } => Some(404),
            TableError::Conflict { .. } => Some(409),
            TableError::PreconditionFailed { .. } => Some(412),
            TableError::BatchFailed { status, .. }
            | TableError::Throttled { status, .. }
            | TableError::Http { status, .. } => Some(*status),
            TableError::Transport { .. }
            | TableError::Invalid(_)
            | TableError::Config(_)
            | TableError::Protocol { .. } => None,
        }
    }
}

/// `(code, message)` from the service's error body: OData JSON
/// (`{"odata.error":{"code":…,"message":{"value":…}}}`) or, for failures
/// outside OData such as authentication, XML (`<Code>…</Code><Message>…`).
pub(crate) fn service_error(body: &str) -> (Option<String>, String) {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let e = v.get("odata.error").unwrap_or(&v);
        let code = e.get("code").and_then(Value::as_str).map(str::to_string);
        let message = e
            .get("message")
            .map(|m| match m {
                Value::String(s) => s.clone(),
                other => other
                    .get("value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
            .unwrap_or_default();
        return (code, message);
    }
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + end].trim().to_string())
    };
    let code = tag("Code").or_else(|| tag("code"));
    let message = tag("Message")
        .or_else(|| tag("message"))
        .unwrap_or_else(|| body.chars().take(200).collect());
    (code, message)
}

/// The service appends `\nRequestId:…\nTime:…` to every message; the request id is reported separately.
pub(crate) fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_and_xml_error_bodies_give_their_code_and_first_message_line() {
        let json = r#"{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"The specified entity already exists.\nRequestId:abc\nTime:2024-01-01T00:00:00Z"}}}"#;
        let (code, message) = service_error(json);
        assert_eq!(code.as_deref(), Some("EntityAlreadyExists"));
        assert_eq!(first_line(&message), "The specified entity already exists.");
        let xml = "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:x</Message></Error>";
        let (code, message) = service_error(xml);
        assert_eq!(code.as_deref(), Some("AuthenticationFailed"));
        assert_eq!(
            first_line(&message),
            "Server failed to authenticate the request."
        );
    }

    #[test]
    fn statuses_callers_act_on_have_variants_of_their_own() {
        let e = |status| TableError::from_reply("get", status, Some("X"), "", Some("rid"), None);
        assert!(matches!(e(404), TableError::NotFound { .. }));
        assert!(matches!(e(409), TableError::Conflict { .. }));
        assert!(matches!(e(412), TableError::PreconditionFailed { .. }));
        assert!(matches!(e(429), TableError::Throttled { .. }));
        assert!(matches!(e(503), TableError::Throttled { .. }));
        assert!(matches!(e(403), TableError::Http { status: 403, .. }));
        assert!(
            e(500).to_string().contains("x-ms-request-id rid"),
            "{}",
            e(500)
        );
    }
}
