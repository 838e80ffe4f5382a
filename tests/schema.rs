//! Every image template body kiln sends to Azure VM Image Builder validates
//! against the official 2025-10-01 spec (`tests/data/imagebuilder_2025-10-01.json`).
//!
//! The spec is Swagger 2.0, not JSON Schema, so it is wrapped before use:
//!
//! - the document becomes a schema whose root is `#/definitions/ImageTemplate`,
//!   so the spec's own `#/definitions/…` references resolve;
//! - polymorphic types (`discriminator: type`) become a `oneOf` over their
//!   subtypes, each of which requires its `x-ms-discriminator-value`: an
//!   unknown customizer or distributor type is an error, as it is for AIB;
//! - `readOnly` properties are forbidden (kiln sends a PUT body, and ARM
//!   refuses or ignores what only the service may set);
//! - the outside references, ARM's common types (`TrackedResource`, …),
//!   are written out here;
//! - `x-ms-*` keys are left in place: JSON Schema ignores unknown keywords.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use kiln::app::render::{render, template_hash};
use kiln::domain::build::{Build, BuildState, Trigger};
use kiln::domain::pipeline::{Parsed, Pipeline};

const SPEC: &str = include_str!("data/imagebuilder_2025-10-01.json");
/// Where the spec's references to ARM's common types point.
const COMMON_TYPES: [&str; 2] = [
    "../../../../../../common-types/resource-management/v3/types.json#/definitions/",
    "../../../../../../common-types/resource-management/v5/types.json#/definitions/",
];

mod common;

use common::repo;

/// ARM's common types the spec refers to: `TrackedResource` and
/// `ProxyResource` (both with `Resource`'s read-only fields), and
/// `ErrorResponse` (only in responses, so left open).
fn common_types() -> [(&'static str, Value); 3] {
    let resource = json!({
        "id": {"type": "string", "readOnly": true},
        "name": {"type": "string", "readOnly": true},
        "type": {"type": "string", "readOnly": true},
        "systemData": {"type": "object", "readOnly": true}
    });
    let mut tracked = resource.clone();
    tracked["tags"] = json!({"type": "object", "additionalProperties": {"type": "string"}});
    tracked["location"] = json!({"type": "string"});
    [
        (
            "TrackedResource",
            json!({"type": "object", "properties": tracked, "required": ["location"]}),
        ),
        (
            "ProxyResource",
            json!({"type": "object", "properties": resource}),
        ),
        ("ErrorResponse", json!({"type": "object"})),
    ]
}

/// Replaces every read-only property's schema with one nothing satisfies.
fn forbid_read_only(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Object(props)) = obj.get_mut("properties") {
                for (_, p) in props.iter_mut() {
                    if p.get("readOnly") == Some(&Value::Bool(true)) {
                        *p = json!({"not": {}, "description": "read-only: not allowed in a PUT body"});
                    }
                }
            }
            for (_, child) in obj.iter_mut() {
                forbid_read_only(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_read_only),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// The spec as a JSON Schema document validating an `ImageTemplate` body.
fn image_template_schema() -> Value {
    let spec: Value = serde_json::from_str(SPEC).expect("the spec is JSON");
    let mut defs: Map<String, Value> = spec["definitions"]
        .as_object()
        .expect("the spec has definitions")
        .clone();
    for (name, schema) in common_types() {
        defs.insert(format!("common.{name}"), schema);
    }

    // Polymorphism: Base (with `discriminator`) ← Sub (allOf Base, with
    // `x-ms-discriminator-value`). References to Base mean "one of the Subs";
    // the Subs extend `Base.base`, the base's own properties.
    let bases: Vec<(String, String)> = defs
        .iter()
        .filter_map(|(name, d)| {
            d.get("discriminator")
                .and_then(Value::as_str)
                .map(|f| (name.clone(), f.to_string()))
        })
        .collect();
    for (base, field) in &bases {
        let base_ref = format!("#/definitions/{base}");
        let own_ref = format!("#/definitions/{base}.base");
        let mut subs = Vec::new();
        for (name, d) in defs.iter_mut() {
            let value = d
                .get("x-ms-discriminator-value")
                .and_then(Value::as_str)
                .map(str::to_string);
            let Some(all_of) = d.get_mut("allOf").and_then(Value::as_array_mut) else {
                continue;
            };
            let mut extends = false;
            for r in all_of.iter_mut() {
                if r.get("$ref").and_then(Value::as_str) == Some(base_ref.as_str()) {
                    r["$ref"] = json!(own_ref);
                    extends = true;
                }
            }
            if !extends {
                continue;
            }
            let value = value
                .unwrap_or_else(|| panic!("{name} extends {base} without a discriminator value"));
            all_of.push(json!({"properties": {field: {"enum": [value]}}, "required": [field]}));
            subs.push(json!({"$ref": format!("#/definitions/{name}")}));
        }
        let own = defs.remove(base).expect("the base is defined");
        defs.insert(format!("{base}.base"), own);
        defs.insert(base.clone(), json!({"oneOf": subs}));
    }

    let mut defs = Value::Object(defs);
    forbid_read_only(&mut defs);
    let mut text = serde_json::to_string(&defs).unwrap();
    for prefix in COMMON_TYPES {
        text = text.replace(prefix, "#/definitions/common.");
    }
    assert!(
        !text.contains("common-types"),
        "an outside reference is left in the spec"
    );
    json!({
        "$ref": "#/definitions/ImageTemplate",
        "definitions": serde_json::from_str::<Value>(&text).unwrap()
    })
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&image_template_schema()).expect("the wrapped spec is a valid schema")
}

/// Every schema violation of `body`, as `path: message`.
fn violations(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn build_for(p: &Pipeline) -> Build {
    Build {
        id: "0f3c9a6e-5d1b-4c2a-9e8f-7a6b5c4d3e2f".into(),
        pipeline: p.name.clone(),
        trigger: Trigger::Manual,
        reason: "schema test".into(),
        requested_by: "tests".into(),
        idempotency_key: "schema".into(),
        version: "1.0.7".parse().unwrap(),
        source_version: Some("22.04.202611010".into()),
        template_hash: template_hash(&p.template_json),
        attempt: 3,
        max_attempts: p.kiln.build.max_attempts,
        timeout_minutes: p.build_timeout_minutes(),
        state: BuildState::Queued,
        created_at: chrono::Utc::now(),
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    }
}

/// The pipeline files: `pipelines/*.json` and `tests/fixtures/*.json`.
fn pipeline_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["pipelines", "tests/fixtures"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read_pipeline(path: &Path) -> Pipeline {
    let name = path.file_stem().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    match Pipeline::read(name, &text) {
        Parsed::Valid(p) => *p,
        Parsed::Invalid { errors, .. } => panic!("{}: {errors:?}", path.display()),
    }
}

#[test]
fn every_rendered_pipeline_is_a_valid_image_template_put_body() {
    let v = validator();
    let files = pipeline_files();
    assert!(files.len() >= 3, "{files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let p = read_pipeline(path);
        let mut body = render(&p, &build_for(&p));
        // What the Azure adapter adds before the PUT.
        body["tags"][kiln::providers::azure::image_builder::BODY_HASH_TAG] = json!("0".repeat(64));
        for problem in violations(&v, &body) {
            failures.push(format!("{}: {problem}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What a deliberately wrong body does to a good one.
type Breakage = fn(&mut Value);

/// A known-good body to break on purpose.
fn good_body() -> Value {
    let path = repo().join("pipelines/ubuntu-2204-baseline.json");
    let p = read_pipeline(&path);
    render(&p, &build_for(&p))
}

#[test]
fn the_schema_check_refuses_bodies_that_break_the_spec() {
    let v = validator();
    assert_eq!(violations(&v, &good_body()), Vec::<String>::new());

    let broken: [(&str, Breakage); 7] = [
        ("no identity", |b| {
            b.as_object_mut().unwrap().remove("identity");
        }),
        ("no location", |b| {
            b.as_object_mut().unwrap().remove("location");
        }),
        ("a read-only field", |b| {
            b["properties"]["provisioningState"] = json!("Succeeded");
        }),
        ("a read-only source field", |b| {
            b["properties"]["source"]["exactVersion"] = json!("22.04.202611010");
        }),
        ("an unknown customizer type", |b| {
            b["properties"]["customize"][0]["type"] = json!("Bash");
        }),
        ("a timeout past 960 minutes", |b| {
            b["properties"]["buildTimeoutInMinutes"] = json!(961);
        }),
        ("a tag that is not a string", |b| {
            b["tags"]["kiln.attempt"] = json!(3);
        }),
    ];
    for (what, breaks) in broken {
        let mut body = good_body();
        breaks(&mut body);
        assert!(
            !violations(&v, &body).is_empty(),
            "{what}: the schema accepted {body:#}"
        );
    }
}

#[test]
fn a_distributor_without_its_required_fields_is_refused() {
    let v = validator();
    let mut body = good_body();
    body["properties"]["distribute"][0]
        .as_object_mut()
        .unwrap()
        .remove("runOutputName");
    let found = violations(&v, &body);
    assert!(!found.is_empty(), "{body:#}");
    let mut body = good_body();
    body["properties"]["distribute"][0]
        .as_object_mut()
        .unwrap()
        .remove("galleryImageId");
    assert!(!violations(&v, &body).is_empty(), "{body:#}");
}
