//! What the Table service would refuse, refused here before anything is
//! sent, with the key or property named.
//!
//! The service measures in UTF-16 (it stores strings that way): a key may be
//! 1 KiB (512 UTF-16 code units), a string property 64 KiB (32 Ki code
//! units), a binary property 64 KiB; an entity holds at most 252 custom
//! properties and 1 MiB of data. Keys must not contain `/ \ # ?` or control
//! characters (U+0000–U+001F, U+007F–U+009F). An entity group transaction
//! holds at most 100 operations on distinct entities of one partition, in at
//! most 4 MiB of payload.
//!
//! The entity size here is the sum of each key's and property's UTF-16 size
//! (names included) plus each value's: UTF-16 bytes for strings, raw bytes
//! for binary, 8 for 64-bit values and dates, 4 for Int32, 1 for a boolean,
//! 16 for a GUID. It is a lower bound of what the service counts, which adds
//! a few bytes per property; an entity near 1 MiB may still be refused there.

use super::entity::{Entity, Property, ODATA_TYPE, SYSTEM_PROPERTIES};
use super::TableError;

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_PROPERTY_BYTES: usize = 64 * 1024;
pub const MAX_CUSTOM_PROPERTIES: usize = 252;
pub const MAX_PROPERTY_NAME_CHARS: usize = 255;
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;
pub const MAX_BATCH_OPERATIONS: usize = 100;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

fn utf16_bytes(s: &str) -> usize {
    s.encode_utf16().count() * 2
}

/// A `PartitionKey` or `RowKey` value the service accepts.
pub fn check_key(which: &str, key: &str) -> Result<(), TableError> {
    let shown = || {
        let s: String = key.chars().take(40).collect();
        format!("{s:?}{}", if key.chars().count() > 40 { "…" } else { "" })
    };
    if utf16_bytes(key) > MAX_KEY_BYTES {
        return Err(TableError::Invalid(format!(
            "{which} {} is {} bytes as UTF-16; Table Storage allows {MAX_KEY_BYTES}",
            shown(),
            utf16_bytes(key)
        )));
    }
    if let Some(c) = key.chars().find(|c| {
        matches!(c, '/' | '\\' | '#' | '?') || matches!(*c as u32, 0..=0x1f | 0x7f..=0x9f)
    }) {
        return Err(TableError::Invalid(format!(
            "{which} {} contains {c:?}, which Table Storage forbids in keys (/ \\ # ? and control characters)",
            shown()
        )));
    }
    Ok(())
}

/// An entity the service accepts: its keys, property names, each value, and the whole.
pub fn check_entity(e: &Entity) -> Result<(), TableError> {
    check_key("PartitionKey", &e.partition_key)?;
    check_key("RowKey", &e.row_key)?;
    let at = || {
        format!(
            "entity (PartitionKey {:?}, RowKey {:?})",
            e.partition_key, e.row_key
        )
    };
    let mut size = utf16_bytes("PartitionKey")
        + utf16_bytes(&e.partition_key)
        + utf16_bytes("RowKey")
        + utf16_bytes(&e.row_key);
    let mut count = 0;
    for name in e.property_names() {
        count += 1;
        if SYSTEM_PROPERTIES.contains(&name) || name.starts_with("odata.") {
            return Err(TableError::Invalid(format!(
                "{}: {name} is a system or control name, not a property",
                at()
            )));
        }
        if name.is_empty() || name.chars().count() > MAX_PROPERTY_NAME_CHARS {
            return Err(TableError::Invalid(format!(
                "{}: property name {:?} must be 1 to {MAX_PROPERTY_NAME_CHARS} characters",
                at(),
                name.chars().take(40).collect::<String>()
            )));
        }
        let value = e
            .get(name)
            .map_err(|err| TableError::Invalid(format!("{}: {err}", at())))?;
        let value_bytes = match &value {
            None => 0,
            Some(Property::String(s)) => utf16_bytes(s),
            Some(Property::Binary(b)) => b.len(),
            Some(Property::Int64(_) | Property::Double(_) | Property::DateTime(_)) => 8,
            Some(Property::Int32(_)) => 4,
            Some(Property::Bool(_)) => 1,
            Some(Property::Guid(_)) => 16,
        };
        if value_bytes > MAX_PROPERTY_BYTES {
            let unit = match value {
                Some(Property::String(_)) => "as UTF-16 ",
                _ => "",
            };
            return Err(TableError::Invalid(format!(
                "{}: property {name} is {value_bytes} bytes {unit}; Table Storage allows {MAX_PROPERTY_BYTES}",
                at()
            )));
        }
        size += utf16_bytes(name) + value_bytes;
    }
    if let Some(orphan) = e
        .properties
        .keys()
        .filter_map(|k| k.strip_suffix(ODATA_TYPE))
        .find(|base| !e.properties.contains_key(*base))
    {
        return Err(TableError::Invalid(format!(
            "{}: {orphan}{ODATA_TYPE} annotates a property the entity does not have",
            at()
        )));
    }
    if count > MAX_CUSTOM_PROPERTIES {
        return Err(TableError::Invalid(format!(
            "{}: {count} properties; Table Storage allows {MAX_CUSTOM_PROPERTIES} besides the keys and Timestamp",
            at()
        )));
    }
    if size > MAX_ENTITY_BYTES {
        return Err(TableError::Invalid(format!(
            "{}: {size} bytes of data; Table Storage allows {MAX_ENTITY_BYTES} per entity",
            at()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<(), TableError>) -> String {
        match r {
            Err(TableError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn keys_with_forbidden_characters_are_refused_by_name() {
        for (key, c) in [
            ("a/b", "'/'"),
            ("a\\b", "'\\\\'"),
            ("a#b", "'#'"),
            ("a?b", "'?'"),
            ("a\tb", "'\\t'"),
            ("a\u{85}b", "'\\u{85}'"),
        ] {
            let m = invalid(check_key("RowKey", key));
            assert!(m.starts_with("RowKey "), "{m}");
            assert!(m.contains(c), "{key:?}: {m}");
        }
        check_key("PartitionKey", "builds|2024-05-06|o'clock ü").unwrap();
    }

    #[test]
    fn a_key_is_measured_in_utf16_bytes() {
        check_key("PartitionKey", &"a".repeat(512)).unwrap();
        let m = invalid(check_key("PartitionKey", &"a".repeat(513)));
        assert!(m.contains("1026 bytes as UTF-16"), "{m}");
        // U+1F600 is two UTF-16 code units.
        assert!(check_key("PartitionKey", &"😀".repeat(257)).is_err());
    }

    #[test]
    fn a_string_over_32k_utf16_units_is_refused_and_one_just_under_is_not() {
        check_entity(&Entity::new("p", "r").with("S", "x".repeat(32 * 1024))).unwrap();
        let m = invalid(check_entity(
            &Entity::new("p", "r").with("S", "x".repeat(32 * 1024 + 1)),
        ));
        assert!(m.contains("property S is 65538 bytes as UTF-16"), "{m}");
        check_entity(&Entity::new("p", "r").with("B", vec![0u8; 64 * 1024])).unwrap();
        assert!(check_entity(&Entity::new("p", "r").with("B", vec![0u8; 64 * 1024 + 1])).is_err());
    }

    #[test]
    fn an_entity_over_1_mib_is_refused() {
        let mut e = Entity::new("p", "r");
        for i in 0..18 {
            e.set(&format!("Chunk{i}"), "x".repeat(32 * 1024));
        }
        let m = invalid(check_entity(&e));
        assert!(
            m.contains("bytes of data; Table Storage allows 1048576 per entity"),
            "{m}"
        );
    }

    #[test]
    fn at_most_252_custom_properties_and_no_system_names() {
        let mut e = Entity::new("p", "r");
        for i in 0..252 {
            e.set(&format!("P{i}"), i);
        }
        check_entity(&e).unwrap();
        e.set("P252", 1);
        assert!(invalid(check_entity(&e)).contains("253 properties"));
        let m = invalid(check_entity(
            &Entity::new("p", "r").with("Timestamp", "now"),
        ));
        assert!(m.contains("Timestamp is a system or control name"), "{m}");
    }
}
