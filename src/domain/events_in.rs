//! Placeholder replaced by the schedule branch.
pub enum Inbound {
    Handshake { validation_code: String },
    Events(Vec<InboundEvent>),
}
pub enum InboundEvent {
    BaseImageUpdated {
        id: String,
        line: String,
        version: String,
    },
    GalleryVersionWritten {
        id: String,
        definition_id: String,
        version: String,
    },
    Ignored {
        id: String,
        event_type: String,
    },
}
pub fn parse(_body: &[u8], _a: Option<&str>, _c: Option<&str>) -> Result<Inbound, String> {
    Err("todo".into())
}
pub fn handshake_response(code: &str) -> serde_json::Value {
    serde_json::json!({ "validationResponse": code })
}
