//! The image template kiln submits for a build: the user's template,
//! verbatim, with the few fields kiln owns set.
//!
//! - `tags`: `kiln.pipeline`, `kiln.build`, `kiln.attempt`, `kiln.version`;
//!   local-provider options (`kiln.network`, `kiln.stepTimeoutMinutes`,
//!   `kiln.bootTest.*`) ride along as tags, which AIB ignores.
//! - each SharedImage distributor: `galleryImageId` gets `/versions/<v>`
//!   (the version assigned at admission, so retries reuse it; AIB's own
//!   `versioning` is removed since an explicit version replaces it),
//!   `excludeFromLatest` from the promotion policy, lineage `artifactTags`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::build::Build;
use crate::domain::pipeline::Pipeline;
use crate::domain::template::GalleryImageRef;

/// sha256 of the template with object keys sorted, so formatting and key
/// order do not change it.
pub fn template_hash(template: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), canonical(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let text = serde_json::to_string(&canonical(template)).expect("JSON serializes");
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn set_tag(obj: &mut Map<String, Value>, key: &str, k: &str, v: impl Into<String>) {
    let tags = obj.entry(key).or_insert_with(|| json!({}));
    if !tags.is_object() {
        *tags = json!({});
    }
    if let Some(t) = tags.as_object_mut() {
        t.insert(k.to_string(), Value::String(v.into()));
    }
}

pub fn render(pipeline: &Pipeline, build: &Build) -> Value {
    let mut doc = pipeline.template_json.clone();
    let policy = &pipeline.kiln.build;
    if let Some(obj) = doc.as_object_mut() {
        set_tag(obj, "tags", "kiln.pipeline", &pipeline.name);
        set_tag(obj, "tags", "kiln.build", &build.id);
        set_tag(obj, "tags", "kiln.attempt", build.attempt.to_string());
        set_tag(obj, "tags", "kiln.version", build.version.to_string());
        set_tag(obj, "tags", "kiln.templateHash", &build.template_hash);
        set_tag(obj, "tags", "kiln.network", policy.network.to_string());
        set_tag(
            obj,
            "tags",
            "kiln.stepTimeoutMinutes",
            policy.step_timeout_minutes.to_string(),
        );
        if let Some(bt) = &policy.boot_test {
            set_tag(obj, "tags", "kiln.bootTest.check", &bt.check);
            if let Some(e) = &bt.expect {
                set_tag(obj, "tags", "kiln.bootTest.expect", e);
            }
            set_tag(
                obj,
                "tags",
                "kiln.bootTest.timeoutSeconds",
                bt.timeout_seconds.to_string(),
            );
        }
    }
    let source_line = pipeline.template.properties.source.line();
    if let Some(dists) = doc
        .pointer_mut("/properties/distribute")
        .and_then(Value::as_array_mut)
    {
        for d in dists.iter_mut() {
            let Some(obj) = d.as_object_mut() else {
                continue;
            };
            if obj.get("type").and_then(Value::as_str) == Some("SharedImage") {
                let id = obj
                    .get("galleryImageId")
                    .and_then(Value::as_str)
                    .and_then(GalleryImageRef::parse);
                if let Some(r) = id {
                    obj.insert(
                        "galleryImageId".into(),
                        Value::String(r.version_id(&build.version.to_string())),
                    );
                }
                obj.remove("versioning");
                if pipeline.kiln.promotion.exclude_from_latest {
                    obj.insert("excludeFromLatest".into(), Value::Bool(true));
                }
            }
            set_tag(obj, "artifactTags", "kiln.pipeline", &pipeline.name);
            set_tag(obj, "artifactTags", "kiln.build", &build.id);
            set_tag(obj, "artifactTags", "kiln.source", &source_line);
            if let Some(sv) = &build.source_version {
                set_tag(obj, "artifactTags", "kiln.sourceVersion", sv);
            }
            set_tag(
                obj,
                "artifactTags",
                "kiln.templateHash",
                &build.template_hash,
            );
            for (k, v) in &pipeline.kiln.promotion.tags {
                set_tag(obj, "artifactTags", k, v);
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":[1,2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "b": {"d":[1,2], "c":2}, "a":1 }"#).unwrap();
        assert_eq!(template_hash(&a), template_hash(&b));
        let c: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":[2,1]}}"#).unwrap();
        assert_ne!(template_hash(&a), template_hash(&c));
    }
}
