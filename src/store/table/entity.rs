//! A table entity: its keys, its ETag, and its properties in the Table
//! service's own JSON.
//!
//! Properties are kept as the OData JSON the service reads and writes, so an
//! entity read from the service goes back unchanged. JSON cannot tell some
//! Edm types from others, so those carry a `Name@odata.type` annotation next
//! to the value: `Edm.Int64` (a string of digits), `Edm.DateTime` (RFC 3339,
//! UTC), `Edm.Binary` (base64) and `Edm.Guid`. kiln also annotates
//! `Edm.Double`, so that `1e300` or `NaN` is never read back as something
//! else. Untyped JSON strings, booleans and integers are `Edm.String`,
//! `Edm.Boolean` and `Edm.Int32`. [`Entity::set`] and the typed getters write
//! and read those annotations, so callers never spell them.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// The annotation suffix that types the property it follows.
pub const ODATA_TYPE: &str = "@odata.type";

/// Properties every entity has; never custom property names.
pub const SYSTEM_PROPERTIES: [&str; 3] = ["PartitionKey", "RowKey", "Timestamp"];

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub partition_key: String,
    pub row_key: String,
    /// The version the service gave it: set on entities read back and
    /// after writes, `None` on one built here. Send it as
    /// [`IfMatch::Etag`] to write only over that version.
    pub etag: Option<String>,
    /// `Timestamp`, maintained by the service (ignored when writing).
    pub timestamp: Option<DateTime<Utc>>,
    /// Custom properties and their `@odata.type` annotations, wire form.
    pub properties: Map<String, Value>,
}

/// One typed property value.
#[derive(Debug, Clone, PartialEq)]
pub enum Property {
    String(String),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Double(f64),
    DateTime(DateTime<Utc>),
    Binary(Vec<u8>),
    Guid(uuid::Uuid),
}

impl From<&str> for Property {
    fn from(v: &str) -> Self {
        Property::String(v.to_string())
    }
}
impl From<String> for Property {
    fn from(v: String) -> Self {
        Property::String(v)
    }
}
impl From<bool> for Property {
    fn from(v: bool) -> Self {
        Property::Bool(v)
    }
}
impl From<i32> for Property {
    fn from(v: i32) -> Self {
        Property::Int32(v)
    }
}
impl From<i64> for Property {
    fn from(v: i64) -> Self {
        Property::Int64(v)
    }
}
impl From<f64> for Property {
    fn from(v: f64) -> Self {
        Property::Double(v)
    }
}
impl From<DateTime<Utc>> for Property {
    fn from(v: DateTime<Utc>) -> Self {
        Property::DateTime(v)
    }
}
impl From<Vec<u8>> for Property {
    fn from(v: Vec<u8>) -> Self {
        Property::Binary(v)
    }
}
impl From<uuid::Uuid> for Property {
    fn from(v: uuid::Uuid) -> Self {
        Property::Guid(v)
    }
}

impl Property {
    /// `(annotation, value)` as the service reads them.
    fn to_wire(&self) -> (Option<&'static str>, Value) {
        match self {
            Property::String(s) => (None, Value::String(s.clone())),
            Property::Bool(b) => (None, Value::Bool(*b)),
            Property::Int32(i) => (None, Value::from(*i)),
            Property::Int64(i) => (Some("Edm.Int64"), Value::String(i.to_string())),
            Property::Double(d) => (
                Some("Edm.Double"),
                serde_json::Number::from_f64(*d)
                    .map(Value::Number)
                    // NaN and the infinities travel as the strings OData names them by.
                    .unwrap_or_else(|| {
                        Value::String(
                            if d.is_nan() {
                                "NaN"
                            } else if *d > 0.0 {
                                "Infinity"
                            } else {
                                "-Infinity"
                            }
                            .into(),
                        )
                    }),
            ),
            Property::DateTime(t) => (
                Some("Edm.DateTime"),
                Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            ),
            Property::Binary(b) => (
                Some("Edm.Binary"),
                Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
            Property::Guid(g) => (Some("Edm.Guid"), Value::String(g.to_string())),
        }
    }

    /// The value of `name` from its wire form and annotation.
    fn from_wire(name: &str, edm: Option<&str>, v: &Value) -> Result<Property, PropertyError> {
        let bad = |expected: &'static str| PropertyError {
            name: name.to_string(),
            expected,
            found: v.to_string().chars().take(80).collect(),
        };
        match (edm, v) {
            (None | Some("Edm.String"), Value::String(s)) => Ok(Property::String(s.clone())),
            (None | Some("Edm.Boolean"), Value::Bool(b)) => Ok(Property::Bool(*b)),
            (None | Some("Edm.Int32"), Value::Number(n)) if n.is_i64() || n.is_u64() => n
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .map(Property::Int32)
                .ok_or_else(|| bad("an Edm.Int32")),
            (None | Some("Edm.Double"), Value::Number(n)) => n
                .as_f64()
                .map(Property::Double)
                .ok_or_else(|| bad("an Edm.Double")),
            (Some("Edm.Double"), Value::String(s)) => match s.as_str() {
                "NaN" => Ok(Property::Double(f64::NAN)),
                "Infinity" => Ok(Property::Double(f64::INFINITY)),
                "-Infinity" => Ok(Property::Double(f64::NEG_INFINITY)),
                _ => Err(bad("an Edm.Double")),
            },
            (Some("Edm.Int64"), Value::String(s)) => s
                .parse()
                .map(Property::Int64)
                .map_err(|_| bad("an Edm.Int64 string")),
            (Some("Edm.DateTime"), Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| Property::DateTime(t.with_timezone(&Utc)))
                .map_err(|_| bad("an Edm.DateTime in RFC 3339")),
            (Some("Edm.Binary"), Value::String(s)) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Property::Binary)
                .map_err(|_| bad("an Edm.Binary in base64")),
            (Some("Edm.Guid"), Value::String(s)) => s
                .parse()
                .map(Property::Guid)
                .map_err(|_| bad("an Edm.Guid")),
            _ => Err(bad("a value of a Table Storage type")),
        }
    }
}

/// The condition of a write on the entity's current version (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: the entity must exist, whatever its version.
    Any,
    /// Only over this version (an [`Entity::etag`] read earlier); else 412.
    Etag(String),
}

impl IfMatch {
    pub(crate) fn header(&self) -> &str {
        match self {
            IfMatch::Any => "*",
            IfMatch::Etag(e) => e,
        }
    }
}

/// A property that is there but is not what the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property {name}: expected {expected}, found {found}")]
pub struct PropertyError {
    pub name: String,
    pub expected: &'static str,
    pub found: String,
}

impl Entity {
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Self {
        Self {
            partition_key: partition_key.into(),
            row_key: row_key.into(),
            etag: None,
            timestamp: None,
            properties: Map::new(),
        }
    }

    /// Sets `name` (replacing any value and type it had).
    pub fn set(&mut self, name: &str, value: impl Into<Property>) -> &mut Self {
        let (edm, v) = value.into().to_wire();
        let annotation = format!("{name}{ODATA_TYPE}");
        match edm {
            Some(t) => {
                self.properties.insert(annotation, Value::String(t.into()));
            }
            None => {
                self.properties.remove(&annotation);
            }
        }
        self.properties.insert(name.to_string(), v);
        self
    }

    /// As [`set`](Self::set), by value, for building an entity in one expression.
    pub fn with(mut self, name: &str, value: impl Into<Property>) -> Self {
        self.set(name, value);
        self
    }

    pub fn remove(&mut self, name: &str) {
        self.properties.remove(name);
        self.properties.remove(&format!("{name}{ODATA_TYPE}"));
    }

    /// The typed value of `name`; `None` when the entity has no such property.
    pub fn get(&self, name: &str) -> Result<Option<Property>, PropertyError> {
        let Some(v) = self.properties.get(name).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let edm = self
            .properties
            .get(&format!("{name}{ODATA_TYPE}"))
            .and_then(Value::as_str);
        Property::from_wire(name, edm, v).map(Some)
    }

    /// Names of the custom properties (annotations not counted).
    pub fn property_names(&self) -> impl Iterator<Item = &str> {
        self.properties
            .keys()
            .filter(|k| !k.ends_with(ODATA_TYPE))
            .map(String::as_str)
    }

    pub fn get_str(&self, name: &str) -> Result<Option<&str>, PropertyError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Property::String(_)) => Ok(self.properties.get(name).and_then(Value::as_str)),
            Some(_) => Err(self.mismatch(name, "an Edm.String")),
        }
    }

    pub fn get_i64(&self, name: &str) -> Result<Option<i64>, PropertyError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Property::Int64(i)) => Ok(Some(i)),
            // An Int32 widens without loss; a writer may have stored a small count as one.
            Some(Property::Int32(i)) => Ok(Some(i.into())),
            Some(_) => Err(self.mismatch(name, "an Edm.Int64")),
        }
    }

    pub fn get_bool(&self, name: &str) -> Result<Option<bool>, PropertyError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Property::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.mismatch(name, "an Edm.Boolean")),
        }
    }

    pub fn get_datetime(&self, name: &str) -> Result<Option<DateTime<Utc>>, PropertyError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Property::DateTime(t)) => Ok(Some(t)),
            Some(_) => Err(self.mismatch(name, "an Edm.DateTime")),
        }
    }

    pub fn get_binary(&self, name: &str) -> Result<Option<Vec<u8>>, PropertyError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Property::Binary(b)) => Ok(Some(b)),
            Some(_) => Err(self.mismatch(name, "an Edm.Binary")),
        }
    }

    fn mismatch(&self, name: &str, expected: &'static str) -> PropertyError {
        PropertyError {
            name: name.to_string(),
            expected,
            found: self
                .properties
                .get(name)
                .map(|v| v.to_string().chars().take(80).collect())
                .unwrap_or_default(),
        }
    }

    /// The JSON body of an insert, update or merge: keys and custom properties.
    pub(crate) fn to_wire(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "PartitionKey".into(),
            Value::String(self.partition_key.clone()),
        );
        body.insert("RowKey".into(), Value::String(self.row_key.clone()));
        for (k, v) in &self.properties {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }

    /// An entity from the service's JSON (`odata=fullmetadata` or less).
    /// `etag` is the response's `ETag` header, for a single-entity read;
    /// entities in a query carry theirs as `odata.etag`.
    pub(crate) fn from_wire(v: &Value, etag: Option<&str>) -> Result<Entity, String> {
        let obj = v.as_object().ok_or("an entity is not a JSON object")?;
        let key = |name: &str| {
            obj.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("an entity has no {name}"))
        };
        let timestamp = obj
            .get("Timestamp")
            .and_then(Value::as_str)
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| format!("entity Timestamp {s:?} is not RFC 3339"))
            })
            .transpose()?;
        let etag = etag.map(str::to_string).or_else(|| {
            obj.get("odata.etag")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let properties = obj
            .iter()
            .filter(|(k, v)| {
                // Control information (`odata.*`), system properties and their
                // annotations, and the nulls a `$select` of a missing property yields.
                !k.starts_with("odata.")
                    && !SYSTEM_PROPERTIES
                        .iter()
                        .any(|s| k.as_str() == *s || k.strip_suffix(ODATA_TYPE) == Some(s))
                    && !v.is_null()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Entity {
            partition_key: key("PartitionKey")?,
            row_key: key("RowKey")?,
            etag,
            timestamp,
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn types_json_cannot_tell_apart_are_annotated_on_the_wire() {
        let at = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
        let e = Entity::new("p", "r")
            .with("Count", 9_007_199_254_740_993_i64)
            .with("At", at)
            .with("Blob", vec![1u8, 2, 3, 4])
            .with("Name", "kiln")
            .with("Small", 7)
            .with("Ok", true)
            .with("Ratio", 0.5);
        assert_eq!(
            e.to_wire(),
            json!({
                "PartitionKey": "p", "RowKey": "r",
                "Count@odata.type": "Edm.Int64", "Count": "9007199254740993",
                "At@odata.type": "Edm.DateTime", "At": "2024-05-06T07:08:09.000000Z",
                "Blob@odata.type": "Edm.Binary", "Blob": "AQIDBA==",
                "Name": "kiln", "Small": 7, "Ok": true,
                "Ratio@odata.type": "Edm.Double", "Ratio": 0.5,
            })
        );
    }

    #[test]
    fn an_entity_read_back_gives_its_typed_values() {
        let wire = json!({
            "odata.metadata": "http://x/$metadata#t/@Element",
            "odata.etag": "W/\"datetime'2024-05-06T07%3A08%3A09.1234567Z'\"",
            "PartitionKey": "p", "RowKey": "r",
            "Timestamp@odata.type": "Edm.DateTime", "Timestamp": "2024-05-06T07:08:09.1234567Z",
            "Count@odata.type": "Edm.Int64", "Count": "-42",
            "Blob@odata.type": "Edm.Binary", "Blob": "AQIDBA==",
            "Missing": null,
            "Name": "kiln",
        });
        let e = Entity::from_wire(&wire, None).unwrap();
        assert_eq!(
            e.etag.as_deref(),
            Some("W/\"datetime'2024-05-06T07%3A08%3A09.1234567Z'\"")
        );
        assert_eq!(e.timestamp.unwrap().timestamp_subsec_nanos(), 123_456_700);
        assert_eq!(e.get_i64("Count").unwrap(), Some(-42));
        assert_eq!(e.get_binary("Blob").unwrap(), Some(vec![1, 2, 3, 4]));
        assert_eq!(e.get_str("Name").unwrap(), Some("kiln"));
        assert_eq!(e.get("Missing").unwrap(), None);
        let mut names: Vec<_> = e.property_names().collect();
        names.sort();
        assert_eq!(names, ["Blob", "Count", "Name"]);
    }

    #[test]
    fn asking_for_the_wrong_type_names_the_property() {
        let e = Entity::new("p", "r").with("Name", "kiln");
        let err = e.get_i64("Name").unwrap_err();
        assert_eq!(err.name, "Name");
        assert!(err.to_string().contains("expected an Edm.Int64"), "{err}");
        let mut bad = Entity::new("p", "r");
        bad.properties
            .insert("N@odata.type".into(), json!("Edm.Int64"));
        bad.properties.insert("N".into(), json!("twelve"));
        assert!(bad
            .get("N")
            .unwrap_err()
            .to_string()
            .contains("Edm.Int64 string"));
    }

    #[test]
    fn setting_an_untyped_value_drops_the_old_annotation() {
        let mut e = Entity::new("p", "r").with("N", 5_i64);
        e.set("N", "five");
        assert_eq!(e.get("N").unwrap(), Some(Property::String("five".into())));
        e.remove("N");
        assert!(e.properties.is_empty());
    }

    #[test]
    fn doubles_that_json_cannot_hold_travel_as_odata_strings() {
        let e = Entity::new("p", "r")
            .with("X", f64::INFINITY)
            .with("Y", 1e300);
        assert_eq!(e.properties["X"], json!("Infinity"));
        assert_eq!(e.get("X").unwrap(), Some(Property::Double(f64::INFINITY)));
        assert_eq!(e.get("Y").unwrap(), Some(Property::Double(1e300)));
    }
}
