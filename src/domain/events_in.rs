//! Inbound base-image events: the body of `POST /api/events/base-image`, or
//! the event the Event Grid trigger hands over in Azure, parsed without I/O.
//!
//! Two envelopes arrive: the Event Grid schema (an array of events carrying
//! `eventType`) and CloudEvents 1.0 (an object carrying `specversion`, or an
//! array of them). Two kinds of event matter: kiln's own
//! `dev.kiln.base-image.updated` (schema in `docs/events-in.md`) and Azure
//! Resource Manager's `Microsoft.Resources.ResourceWriteSuccess` on a gallery
//! image version. Every other event is acknowledged and ignored: rejecting
//! it would only make Event Grid retry it or dead-letter it.

use serde_json::{Map, Value};

/// The CloudEvents / Event Grid type of kiln's own base-image event.
pub const BASE_IMAGE_UPDATED: &str = "dev.kiln.base-image.updated";
const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
const RESOURCE_WRITE_SUCCESS: &str = "Microsoft.Resources.ResourceWriteSuccess";

/// What a delivery asks of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Event Grid is validating a new subscription: answer 200 with
    /// [`handshake_response`] (202 is not accepted).
    Handshake { validation_code: String },
    /// Events to act on, in delivery order; possibly none.
    Events(Vec<InboundEvent>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundEvent {
    /// kiln's own event: a base image line got a new version.
    BaseImageUpdated {
        id: String,
        /// `publisher:offer:sku`, or a gallery image definition id, as sent
        /// (ARM ids compare case-insensitively).
        line: String,
        version: String,
    },
    /// Microsoft.Resources.ResourceWriteSuccess on a gallery image version.
    ///
    /// ARM reports the write, not the end of provisioning or replication:
    /// the caller checks the version's state before building on it.
    GalleryVersionWritten {
        id: String,
        /// The version's id without `/versions/…`, as the event spelled it.
        definition_id: String,
        version: String,
    },
    /// Acknowledged and ignored (logged by the caller).
    Ignored { id: String, event_type: String },
}

impl InboundEvent {
    /// The event's id, for logs and deduplication.
    pub fn id(&self) -> &str {
        match self {
            InboundEvent::BaseImageUpdated { id, .. }
            | InboundEvent::GalleryVersionWritten { id, .. }
            | InboundEvent::Ignored { id, .. } => id,
        }
    }
}

/// The body that completes Event Grid's subscription validation.
pub fn handshake_response(validation_code: &str) -> Value {
    serde_json::json!({ "validationResponse": validation_code })
}

/// Parses a delivery. `aeg_event_type` and `content_type` are the request
/// headers of those names, when present. The error names the event (by
/// position and id) and the field at fault, and what was expected there.
pub fn parse(
    body: &[u8],
    aeg_event_type: Option<&str>,
    content_type: Option<&str>,
) -> Result<Inbound, String> {
    let value = decode(body)?;
    let declared = declared_shape(content_type);
    let items: Vec<&Value> = match (&value, declared) {
        (Value::Array(items), Declared::Batch | Declared::Unspecified) => items.iter().collect(),
        (Value::Object(_), Declared::Single | Declared::Unspecified) => vec![&value],
        (Value::Array(_), Declared::Single) => {
            return Err(
                "content type application/cloudevents+json: expected one event object, got an array".into(),
            )
        }
        (Value::Object(_), Declared::Batch) => {
            return Err(
                "content type application/cloudevents-batch+json: expected an array of events, got an object".into(),
            )
        }
        (other, _) => {
            return Err(format!(
                "expected a JSON array of events or one event object, got {}",
                kind(other)
            ))
        }
    };
    let only_cloudevents = !matches!(declared, Declared::Unspecified);
    let envelopes = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| envelope(i, item, only_cloudevents))
        .collect::<Result<Vec<_>, _>>()?;

    let is_validation = |e: &&Envelope| e.event_type.eq_ignore_ascii_case(SUBSCRIPTION_VALIDATION);
    match aeg_event_type.map(str::trim) {
        Some(h) if h.eq_ignore_ascii_case("SubscriptionValidation") => {
            let e = envelopes.iter().find(is_validation).ok_or_else(|| {
                format!("aeg-event-type is SubscriptionValidation but no {SUBSCRIPTION_VALIDATION} was delivered")
            })?;
            handshake(e)
        }
        // A validation event in a notification is no handshake to answer.
        Some(h) if h.eq_ignore_ascii_case("Notification") => events(&envelopes),
        // No header (a local post, the Event Grid trigger) or one this code
        // does not know: go by the content.
        _ => match envelopes.iter().find(is_validation) {
            Some(e) => handshake(e),
            None => events(&envelopes),
        },
    }
}

/// The shape a CloudEvents content type promises.
#[derive(Clone, Copy)]
enum Declared {
    Single,
    Batch,
    Unspecified,
}

fn declared_shape(content_type: Option<&str>) -> Declared {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/cloudevents+json") => Declared::Single,
        Some("application/cloudevents-batch+json") => Declared::Batch,
        _ => Declared::Unspecified,
    }
}

fn decode(body: &[u8]) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    match value {
        // The Functions host passes a trigger's value as a JSON string
        // holding the JSON.
        Value::String(inner) => serde_json::from_str(&inner)
            .map_err(|e| format!("body is a JSON string that does not hold JSON: {e}")),
        other => Ok(other),
    }
}

/// One event, whichever schema it came in.
struct Envelope<'a> {
    /// `event N \`id\``, to prefix errors with.
    at: String,
    id: String,
    event_type: String,
    subject: Option<&'a str>,
    data: Option<&'a Value>,
    has_data_base64: bool,
}

fn envelope(i: usize, item: &Value, only_cloudevents: bool) -> Result<Envelope<'_>, String> {
    let Value::Object(obj) = item else {
        return Err(format!("event {i}: expected an object, got {}", kind(item)));
    };
    let cloudevent = obj.contains_key("specversion");
    if only_cloudevents && !cloudevent {
        return Err(format!(
            "event {i}: missing `specversion` (the content type says CloudEvents)"
        ));
    }
    let id = required_string(obj, "id").map_err(|e| format!("event {i}: {e}"))?;
    let at = format!("event {i} `{id}`");
    let type_key = if cloudevent {
        let version = required_string(obj, "specversion").map_err(|e| format!("{at}: {e}"))?;
        if version != "1.0" {
            return Err(format!("{at}: specversion `{version}`: expected 1.0"));
        }
        "type"
    } else {
        "eventType"
    };
    let event_type = required_string(obj, type_key).map_err(|e| format!("{at}: {e}"))?;
    Ok(Envelope {
        id: id.to_string(),
        event_type: event_type.to_string(),
        subject: obj.get("subject").and_then(Value::as_str),
        data: obj.get("data"),
        has_data_base64: obj.contains_key("data_base64"),
        at,
    })
}

fn handshake(e: &Envelope) -> Result<Inbound, String> {
    let code = e
        .data
        .and_then(|d| d.get("validationCode"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            format!(
                "{}: {SUBSCRIPTION_VALIDATION} without data.validationCode",
                e.at
            )
        })?;
    Ok(Inbound::Handshake {
        validation_code: code.to_string(),
    })
}

fn events(envelopes: &[Envelope]) -> Result<Inbound, String> {
    envelopes
        .iter()
        .map(classify)
        .collect::<Result<Vec<_>, _>>()
        .map(Inbound::Events)
}

fn classify(e: &Envelope) -> Result<InboundEvent, String> {
    if e.event_type.eq_ignore_ascii_case(RESOURCE_WRITE_SUCCESS) {
        return resource_written(e);
    }
    if e.event_type.eq_ignore_ascii_case(BASE_IMAGE_UPDATED) {
        return base_image_updated(e);
    }
    Ok(ignored(e))
}

fn ignored(e: &Envelope) -> InboundEvent {
    InboundEvent::Ignored {
        id: e.id.clone(),
        event_type: e.event_type.clone(),
    }
}

fn resource_written(e: &Envelope) -> Result<InboundEvent, String> {
    // `subject` carries the same id in the subscription and resource-group
    // system topics; `data.resourceUri` is the documented field.
    let uri = e
        .data
        .and_then(|d| d.get("resourceUri"))
        .and_then(Value::as_str)
        .or(e.subject)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            format!(
                "{}: {RESOURCE_WRITE_SUCCESS} without data.resourceUri or subject",
                e.at
            )
        })?;
    Ok(match gallery_image(uri) {
        Some(GalleryImage {
            definition_id,
            version: Some(version),
        }) => InboundEvent::GalleryVersionWritten {
            id: e.id.clone(),
            definition_id,
            version,
        },
        Some(GalleryImage { version: None, .. }) | None => ignored(e),
    })
}

fn base_image_updated(e: &Envelope) -> Result<InboundEvent, String> {
    let at = &e.at;
    if e.has_data_base64 {
        return Err(format!(
            "{at}: data_base64 is not supported for {BASE_IMAGE_UPDATED}; send data as JSON"
        ));
    }
    let data = match e.data {
        Some(Value::Object(data)) => data,
        Some(other) => {
            return Err(format!(
                "{at}: data: expected an object, got {}",
                kind(other)
            ))
        }
        None => return Err(format!("{at}: missing `data`")),
    };
    let field = |key: &str| optional_string(data, key).map_err(|err| format!("{at}: {err}"));
    let version = field("version")?.ok_or_else(|| format!("{at}: data.version: missing"))?;
    if version.eq_ignore_ascii_case("latest") {
        return Err(format!(
            "{at}: data.version `{version}`: expected the concrete new version"
        ));
    }
    let line = match (
        field("line")?,
        field("publisher")?,
        field("offer")?,
        field("sku")?,
    ) {
        (Some(line), None, None, None) => line.to_string(),
        (Some(_), ..) => {
            return Err(format!(
                "{at}: data: give either line or publisher, offer and sku, not both"
            ))
        }
        (None, Some(publisher), Some(offer), Some(sku)) => format!("{publisher}:{offer}:{sku}"),
        (None, publisher, offer, _) => {
            let missing = match (publisher, offer) {
                (None, _) => "publisher",
                (Some(_), None) => "offer",
                (Some(_), Some(_)) => "sku",
            };
            return Err(format!(
                "{at}: data.{missing}: missing (give line, or publisher, offer and sku)"
            ));
        }
    };
    if !is_marketplace_line(&line) && gallery_image(&line).is_none_or(|g| g.version.is_some()) {
        return Err(format!(
            "{at}: data.line `{line}`: expected publisher:offer:sku or a gallery image definition id (…/galleries/G/images/D)"
        ));
    }
    Ok(InboundEvent::BaseImageUpdated {
        id: e.id.clone(),
        line,
        version: version.to_string(),
    })
}

/// `publisher:offer:sku`, three non-empty parts.
fn is_marketplace_line(line: &str) -> bool {
    let parts: Vec<&str> = line.split(':').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && !p.contains('/'))
}

struct GalleryImage {
    definition_id: String,
    version: Option<String>,
}

/// Reads `/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/
/// galleries/G/images/D[/versions/V]`, nothing more or less; the keywords
/// compare case-insensitively, as ARM treats them.
fn gallery_image(id: &str) -> Option<GalleryImage> {
    const KEYWORDS: [(usize, &str); 6] = [
        (1, "subscriptions"),
        (3, "resourceGroups"),
        (5, "providers"),
        (6, "Microsoft.Compute"),
        (7, "galleries"),
        (9, "images"),
    ];
    let segments: Vec<&str> = id.trim_end_matches('/').split('/').collect();
    let version = match segments.len() {
        11 => None,
        13 if segments[11].eq_ignore_ascii_case("versions") => Some(segments[12]),
        _ => return None,
    };
    let keywords_fit = KEYWORDS
        .iter()
        .all(|(i, k)| segments[*i].eq_ignore_ascii_case(k));
    let names_given = [2, 4, 8, 10].iter().all(|i| !segments[*i].is_empty());
    if !segments[0].is_empty() || !keywords_fit || !names_given || version == Some("") {
        return None;
    }
    Some(GalleryImage {
        definition_id: segments[..11].join("/"),
        version: version.map(str::to_string),
    })
}

fn required_string<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(format!("missing `{key}`")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("`{key}` is empty")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`{key}`: expected a string, got {}", kind(other))),
    }
}

fn optional_string<'a>(data: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("data.{key}: empty")),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(other) => Err(format!(
            "data.{key}: expected a string, got {}",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
