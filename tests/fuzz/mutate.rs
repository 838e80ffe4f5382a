//! Mutations of seed inputs, as a mutational fuzzer makes them: byte-level
//! (AFL's flips, deletions, dictionary tokens and splices), which mostly
//! exercise the JSON reader and its errors, and value-level (a node of the
//! parsed document replaced, dropped, duplicated or given a new key), which
//! keeps the document JSON so that the checks behind the reader are reached.

use serde_json::{json, Map, Value};

/// Pieces of JSON that turn a valid document into an interesting invalid
/// (or differently valid) one: AFL's dictionary idea.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "18446744073709551616",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[[[[[[[[",
    "{\"a\":",
    "\"kiln\"",
    "\"type\"",
    "\"Shell\"",
    "\"inline\"",
    "\"sig=",
    "?sv=2022&sig=",
    "\"eventType\"",
    "\"specversion\"",
    "\"Data\"",
    "\"Metadata\"",
    "\"pipeline\"",
    "\"trigger\"",
    "\"allowSecrets\"",
    "\"gate\"",
    "\"ignore\"",
    "é",
    "\u{1F600}",
];

/// One edit: (operation, position or node, argument).
pub type Edit = (u8, u16, u8);

pub fn bytes(seed: &[u8], edits: &[Edit], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(op, pos, arg) in edits {
        let at = if b.is_empty() {
            0
        } else {
            pos as usize % (b.len() + 1)
        };
        match op % 6 {
            0 if at < b.len() => b[at] = arg,
            1 => b.insert(at, arg),
            2 if at < b.len() => {
                let end = (at + 1 + arg as usize % 16).min(b.len());
                b.drain(at..end);
            }
            3 => {
                let t = TOKENS[arg as usize % TOKENS.len()].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            4 if !other.is_empty() => {
                // A piece of another seed, as AFL's splicing stage does.
                let from = pos as usize % other.len();
                let to = (from + 1 + arg as usize * 4).min(other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            5 => b.truncate(at),
            _ => {}
        }
    }
    b
}

/// Values that sit at the edges of what the readers accept.
fn interesting(arg: u8) -> Value {
    let long = "x".repeat(5000);
    let values = [
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(1.5e300),
        json!(""),
        json!(" "),
        json!("\u{0}"),
        json!(long),
        json!([]),
        json!({}),
        json!("latest"),
        json!("Shell"),
        json!("PlatformImage"),
        json!("SharedImage"),
        json!("UserAssigned"),
        json!("2026-13-45"),
        json!("25:99"),
        json!("Europe/Nowhere"),
        json!("1.0.0"),
        json!("9999999999.0.0"),
        json!("set -euxo pipefail"),
        json!("https://a.blob.core.windows.net/c/x?sv=2022-11-02&se=2027&sig=AAAAAAAAAAAAAAAAAAAAAAAA"),
        json!("--password literal-value"),
        json!("$.properties.customize[0]"),
        json!("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/d/versions/1.0.0"),
        json!("dev.kiln.base-image.updated"),
        json!("Microsoft.EventGrid.SubscriptionValidationEvent"),
        json!({"kind": "schedule", "cycle": "2026-12"}),
        json!([{"type": "Shell", "inline": ["true"]}]),
    ];
    values[arg as usize % values.len()].clone()
}

const KEYS: &[&str] = &[
    "type",
    "kiln",
    "inline",
    "scriptUri",
    "sourceUri",
    "allowSecrets",
    "gate",
    "ignore",
    "until",
    "name",
    "version",
    "validate",
    "inVMValidations",
    "distribute",
    "stagingResourceGroup",
    "triggers",
    "retention",
    "build",
    "data",
    "eventType",
    "specversion",
    "id",
    "subject",
    "validationCode",
    "Data",
    "Metadata",
    "msg",
    "event",
    "trigger",
    "idempotencyKey",
    "x",
];

/// Every node of `v`, in pre-order.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(m) => m.values().map(count).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => 0,
    }
}

/// The node at pre-order index `i` (which `count` bounds).
fn nth(v: &mut Value, i: usize) -> Option<&mut Value> {
    if i == 0 {
        return Some(v);
    }
    let mut i = i - 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(m) => m.values_mut().collect(),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => return None,
    };
    for c in children {
        let n = count(c);
        if i < n {
            return nth(c, i);
        }
        i -= n;
    }
    None
}

/// A seed that is JSON, edited as a document; other seeds pass unchanged.
pub fn json(seed: &[u8], edits: &[Edit], other: &[u8]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(seed) else {
        return seed.to_vec();
    };
    let donor: Option<Value> = serde_json::from_slice(other).ok();
    for &(op, node, arg) in edits {
        let total = count(&doc);
        let Some(target) = nth(&mut doc, node as usize % total) else {
            continue;
        };
        match op % 6 {
            0 => *target = interesting(arg),
            1 => match target {
                // Drop a member or an element.
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(arg as usize % m.len()).cloned().unwrap();
                    m.shift_remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(arg as usize % a.len());
                }
                _ => *target = Value::Null,
            },
            2 => match target {
                Value::Array(a) if !a.is_empty() => {
                    let x = a[arg as usize % a.len()].clone();
                    a.push(x);
                }
                other => *other = Value::Array(vec![other.clone(), other.clone()]),
            },
            3 => {
                let key = KEYS[arg as usize % KEYS.len()];
                match target {
                    Value::Object(m) => {
                        m.insert(key.into(), interesting(arg / 3));
                    }
                    other => {
                        let mut m = Map::new();
                        m.insert(key.into(), other.clone());
                        *other = Value::Object(m);
                    }
                }
            }
            4 => {
                // A node of another seed grafted in.
                if let Some(d) = &donor {
                    let mut d = d.clone();
                    let n = count(&d);
                    if let Some(x) = nth(&mut d, arg as usize % n) {
                        *target = x.clone();
                    }
                }
            }
            _ => {
                if let Value::String(s) = target {
                    let cut = s
                        .char_indices()
                        .nth(arg as usize % (s.chars().count() + 1))
                        .map_or(s.len(), |(i, _)| i);
                    s.truncate(cut);
                } else {
                    *target = Value::String(target.to_string());
                }
            }
        }
    }
    serde_json::to_vec(&doc).expect("a value serializes")
}
