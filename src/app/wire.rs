//! The custom-handler wire: what the Functions host sends a handler and
//! expects back (`{Data, Metadata}` in, `{Outputs, Logs, ReturnValue}` out),
//! the function names and their trigger bindings, and the decoding of binding
//! values. A leaf: the functions use it, it uses none of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Trigger binding names; the catalog test holds every function.json to them.
pub const TIMER_BINDING: &str = "timer";
pub const MESSAGE_BINDING: &str = "msg";
pub const EVENT_BINDING: &str = "event";
pub const REQUEST_BINDING: &str = "req";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FunctionName {
    PatchTuesday,
    BaseImageWatch,
    BaseImageEvents,
    BuildRequests,
    BuildPolls,
    BuildSweeper,
    Retention,
    EvidenceRecheck,
    Api,
}

impl FunctionName {
    pub const ALL: [FunctionName; 9] = [
        FunctionName::PatchTuesday,
        FunctionName::BaseImageWatch,
        FunctionName::BaseImageEvents,
        FunctionName::BuildRequests,
        FunctionName::BuildPolls,
        FunctionName::BuildSweeper,
        FunctionName::Retention,
        FunctionName::EvidenceRecheck,
        FunctionName::Api,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FunctionName::PatchTuesday => "patch_tuesday",
            FunctionName::BaseImageWatch => "base_image_watch",
            FunctionName::BaseImageEvents => "base_image_events",
            FunctionName::BuildRequests => "build_requests",
            FunctionName::BuildPolls => "build_polls",
            FunctionName::BuildSweeper => "build_sweeper",
            FunctionName::Retention => "retention",
            FunctionName::EvidenceRecheck => "evidence_recheck",
            FunctionName::Api => "api",
        }
    }

    /// The binding name of the function's trigger in its function.json.
    pub fn trigger_binding(self) -> &'static str {
        match self {
            FunctionName::PatchTuesday
            | FunctionName::BaseImageWatch
            | FunctionName::BuildSweeper
            | FunctionName::Retention
            | FunctionName::EvidenceRecheck => TIMER_BINDING,
            FunctionName::BuildRequests | FunctionName::BuildPolls => MESSAGE_BINDING,
            FunctionName::BaseImageEvents => EVENT_BINDING,
            FunctionName::Api => REQUEST_BINDING,
        }
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FunctionName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FunctionName::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a kiln function (known: {})",
                    FunctionName::ALL.map(|f| f.as_str()).join(", ")
                )
            })
    }
}

/// The host's invocation request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    #[serde(rename = "Data", default)]
    pub data: Map<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: Map<String, Value>,
}

/// The handler's reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResult {
    pub fn log(&mut self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        self.logs.push(line);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The payload cannot be read: the host gets a 4xx and the invocation fails.
    #[error("bad invocation payload: {0}")]
    BadPayload(String),
    /// Something worth retrying failed: the host gets a 5xx and retries.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Reads a binding value that the host may have JSON-encoded once more than
/// it needed to (plain strings arrive as `"\"…\""`).
pub fn decode_value(v: &Value) -> Value {
    let mut current = v.clone();
    for _ in 0..2 {
        match &current {
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(inner) => current = inner,
                Err(_) => break,
            },
            _ => break,
        }
    }
    current
}

/// The raw text of a message body binding, whatever its encoding.
pub fn message_text(v: &Value) -> String {
    match v {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            // A JSON string inside the string: that is the body text.
            Ok(Value::String(inner)) => inner,
            Ok(_) | Err(_) => s.clone(),
        },
        other => other.to_string(),
    }
}

pub fn trigger_value(inv: &Invocation, name: FunctionName) -> Result<&Value, InvokeError> {
    let key = name.trigger_binding();
    inv.data.get(key).ok_or_else(|| {
        InvokeError::BadPayload(format!(
            "Data.{key}: expected the {name} trigger's value (got keys: {})",
            inv.data.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Service Bus trigger metadata kiln reads (others are tolerated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageMeta {
    pub message_id: String,
    pub delivery_count: u32,
}

impl MessageMeta {
    pub fn from_metadata(m: &Map<String, Value>) -> Self {
        let message_id = m
            .get("MessageId")
            .map(decode_value)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let delivery_count = m
            .get("DeliveryCount")
            .map(decode_value)
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(1) as u32;
        Self {
            message_id,
            delivery_count,
        }
    }
}

/// The timer payload the local host sends, shaped like the Functions host's TimerInfo.
pub fn timer_payload(
    last: Option<chrono::DateTime<chrono::Utc>>,
    next: chrono::DateTime<chrono::Utc>,
    past_due: bool,
) -> Value {
    json!({
        "Schedule": { "AdjustForDST": true },
        "ScheduleStatus": last.map(|l| json!({ "Last": l.to_rfc3339(), "Next": next.to_rfc3339(), "LastUpdated": l.to_rfc3339() })),
        "IsPastDue": past_due,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_encoded_strings_are_read_through() {
        let v = json!("\"{\\\"a\\\":1}\"");
        assert_eq!(decode_value(&v), json!({"a": 1}));
        assert_eq!(message_text(&v), "{\"a\":1}");
        assert_eq!(message_text(&json!("{\"a\":1}")), "{\"a\":1}");
        assert_eq!(message_text(&json!({"a": 1})), "{\"a\":1}");
        assert_eq!(message_text(&json!("\"stringTest\"")), "stringTest");
    }

    #[test]
    fn function_names_parse_and_unknown_ones_are_named() {
        assert_eq!(
            "build_polls".parse::<FunctionName>().unwrap(),
            FunctionName::BuildPolls
        );
        let e = "build_pols".parse::<FunctionName>().unwrap_err();
        assert!(e.contains("build_pols") && e.contains("build_polls"), "{e}");
    }

    #[test]
    fn service_bus_metadata_is_read_tolerantly() {
        let m = json!({"MessageId": "\"abc\"", "DeliveryCount": "2", "SequenceNumber": 5, "UserProperties": {}});
        let meta = MessageMeta::from_metadata(m.as_object().unwrap());
        assert_eq!(meta.message_id, "abc");
        assert_eq!(meta.delivery_count, 2);
    }
}
