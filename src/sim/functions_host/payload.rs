//! What the Functions host sends a custom handler, written from the
//! protocol notes (the reference's CUSTOM_HANDLER.md), not from kiln's
//! decoder, so that the simulator tests the decoder instead of agreeing with it.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// The `sys` metadata every invocation carries.
pub fn sys(function: &str, now: DateTime<Utc>) -> Value {
    json!({
        "MethodName": function,
        "UtcNow": now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "RandGuid": uuid::Uuid::new_v4().to_string(),
    })
}

/// `{Data, Metadata}` for one invocation.
pub fn invocation(data: Map<String, Value>, metadata: Map<String, Value>) -> Value {
    json!({ "Data": data, "Metadata": metadata })
}

/// A string binding value as the host serializes it: the string JSON-encoded
/// once more (`stringTest` arrives as `"\"stringTest\""`).
pub fn string_value(text: &str) -> Value {
    Value::String(serde_json::to_string(text).expect("a string serializes"))
}

/// A Service Bus message as the queue trigger hands it over.
pub struct QueueMessage<'a> {
    pub binding: &'a str,
    pub body: &'a str,
    pub message_id: &'a str,
    pub delivery_count: u64,
    pub sequence_number: i64,
    pub enqueued: Option<DateTime<Utc>>,
    pub lock_token: &'a str,
    pub content_type: Option<&'a str>,
}

pub fn queue_invocation(function: &str, m: &QueueMessage<'_>, now: DateTime<Utc>) -> Value {
    let data = Map::from_iter([(m.binding.to_string(), string_value(m.body))]);
    let mut metadata = Map::from_iter([
        ("MessageId".to_string(), json!(m.message_id)),
        ("DeliveryCount".to_string(), json!(m.delivery_count)),
        ("SequenceNumber".to_string(), json!(m.sequence_number)),
        ("LockToken".to_string(), json!(m.lock_token)),
        ("UserProperties".to_string(), json!({})),
        ("ApplicationProperties".to_string(), json!({})),
        ("sys".to_string(), sys(function, now)),
    ]);
    if let Some(t) = m.enqueued {
        metadata.insert("EnqueuedTimeUtc".into(), json!(t.to_rfc3339()));
    }
    if let Some(ct) = m.content_type {
        metadata.insert("ContentType".into(), json!(ct));
    }
    invocation(data, metadata)
}

/// A timer trigger's `TimerInfo`.
pub struct TimerFiring {
    /// The occurrence delivered before this one, and when it was delivered.
    pub last: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub next: DateTime<Utc>,
    pub past_due: bool,
}

pub fn timer_invocation(
    function: &str,
    binding: &str,
    t: &TimerFiring,
    now: DateTime<Utc>,
) -> Value {
    let status = match t.last {
        Some((last, updated)) => json!({
            "Last": last.to_rfc3339(),
            "Next": t.next.to_rfc3339(),
            "LastUpdated": updated.to_rfc3339(),
        }),
        // No monitor record yet: the first firing has none.
        None => Value::Null,
    };
    let timer = json!({
        "Schedule": { "AdjustForDST": true },
        "ScheduleStatus": status,
        "IsPastDue": t.past_due,
    });
    invocation(
        Map::from_iter([(binding.to_string(), timer)]),
        Map::from_iter([("sys".to_string(), sys(function, now))]),
    )
}

/// One Event Grid event for an `eventGridTrigger` (the host invokes once per event).
pub fn event_invocation(function: &str, binding: &str, event: &Value, now: DateTime<Utc>) -> Value {
    invocation(
        Map::from_iter([(binding.to_string(), event.clone())]),
        Map::from_iter([("sys".to_string(), sys(function, now))]),
    )
}
