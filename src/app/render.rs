//! The image template kiln submits for a build: the user's template,
//! verbatim, with the few fields kiln owns set.
//!
//! - `tags`: `kiln.pipeline`, `kiln.build`, `kiln.attempt`, `kiln.version`;
//!   local-provider options (`kiln.network`, `kiln.stepTimeoutMinutes`,
//!   `kiln.bootTest.*`) ride along as tags, which AIB ignores. Every name is
//!   in `template::KILN_TEMPLATE_TAGS` (they count towards ARM's 50), and
//!   no value is longer than ARM's 256 characters.
//! - each SharedImage distributor: `galleryImageId` gets `/versions/<v>`
//!   (the version assigned at admission, so retries reuse it; AIB's own
//!   `versioning` is removed since an explicit version replaces it),
//!   `excludeFromLatest` from the promotion policy (or an enforced gate), lineage `artifactTags`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::build::{Build, BuildState, Trigger};
use crate::domain::pipeline::{FieldError, Pipeline};
use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::providers::azure::limits;

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

/// `text` as a tag value: as it is when it fits ARM's 256 characters, else
/// cut and marked with the whole text's digest, so that no body kiln sends
/// breaks the tag rules and a cut value is never mistaken for the command.
/// `kiln validate` refuses a boot test that does not fit ([`check_limits`]),
/// since the local provider runs what the tag says.
fn tag_value(text: &str) -> String {
    if text.chars().count() <= limits::MAX_TAG_VALUE_CHARS {
        return text.to_string();
    }
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let mark = format!("… [cut; sha256 {digest}]");
    let keep = limits::MAX_TAG_VALUE_CHARS - mark.chars().count();
    text.chars().take(keep).chain(mark.chars()).collect()
}

/// ARM's limits on what kiln would send for this pipeline, whichever
/// provider runs it: the body rendered for a worst-case build (the longest
/// build id, the last attempt) with kiln's own tags, and the derived
/// template names. `kiln validate` and `kiln local` report these.
pub fn check_limits(pipeline: &Pipeline) -> Vec<FieldError> {
    let policy = &pipeline.kiln.build;
    let mut errors = Vec::new();
    if let Some(bt) = &policy.boot_test {
        let fields = [("check", Some(&bt.check)), ("expect", bt.expect.as_ref())];
        for (key, text) in fields {
            let Some(text) = text else { continue };
            let chars = text.chars().count();
            if chars > limits::MAX_TAG_VALUE_CHARS {
                errors.push(FieldError {
                    path: format!("kiln.build.bootTest.{key}"),
                    message: format!(
                        "{chars} characters: the boot test travels to the provider as the image template tag kiln.bootTest.{key}, and ARM tag values hold at most {}; put the commands in a script the image carries (a File or Shell step) and call that",
                        limits::MAX_TAG_VALUE_CHARS
                    ),
                });
            }
        }
    }
    let worst = Build {
        id: limits::LONGEST_BUILD_ID.into(),
        pipeline: pipeline.name.clone(),
        trigger: Trigger::Manual,
        reason: String::new(),
        requested_by: String::new(),
        idempotency_key: String::new(),
        version: ImageVersion::new(i32::MAX as u32, i32::MAX as u32, i32::MAX as u32),
        source_version: Some("9".repeat(32)),
        template_hash: "f".repeat(64),
        attempt: policy.max_attempts,
        max_attempts: policy.max_attempts,
        timeout_minutes: pipeline.build_timeout_minutes(),
        state: BuildState::Queued,
        created_at: chrono::DateTime::UNIX_EPOCH,
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    };
    errors.extend(limits::check_body(&render(pipeline, &worst)));
    errors.extend(limits::check_template_names(policy.max_attempts));
    errors
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
            set_tag(obj, "tags", "kiln.bootTest.check", tag_value(&bt.check));
            if let Some(e) = &bt.expect {
                set_tag(obj, "tags", "kiln.bootTest.expect", tag_value(e));
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
                // An enforced vulnerability gate publishes the version held
                // back from `latest`; the evidence step promotes it once the
                // gate passes.
                let gate_holds =
                    pipeline.kiln.gate.as_ref().is_some_and(|g| {
                        g.mode == crate::domain::evidence::gate::GateMode::Enforce
                    });
                if pipeline.kiln.promotion.exclude_from_latest || gate_holds {
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
            // Held by an enforced gate, unless the pipeline holds it itself:
            // then only an operator promotes it.
            let gate_enforced = pipeline
                .kiln
                .gate
                .as_ref()
                .is_some_and(|g| g.mode == crate::domain::evidence::gate::GateMode::Enforce);
            if gate_enforced && !pipeline.kiln.promotion.exclude_from_latest {
                set_tag(obj, "artifactTags", "kiln.gate", "held");
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::{KILN_ARTIFACT_TAGS, KILN_TEMPLATE_TAGS};

    /// The shipped tiny pipeline with `kiln` settings and template tags changed.
    fn tiny(kiln: Value, tags: Value) -> Pipeline {
        let text = include_str!("../../pipelines/tiny.json");
        let mut doc: Value = serde_json::from_str(text).unwrap();
        doc["kiln"] = kiln;
        doc["tags"] = tags;
        Pipeline::parse("tiny", &doc.to_string()).unwrap()
    }

    fn boot_test(check: &str) -> Value {
        json!({"build": {"bootTest": {"check": check, "expect": "ok"}}})
    }

    fn a_build(p: &Pipeline) -> Build {
        Build {
            id: "20261201-100000-abcdef".into(),
            pipeline: p.name.clone(),
            trigger: Trigger::Manual,
            reason: "test".into(),
            requested_by: "test".into(),
            idempotency_key: "k".into(),
            version: ImageVersion::new(1, 0, 3),
            source_version: Some("1.2.3".into()),
            template_hash: template_hash(&p.template_json),
            attempt: 2,
            max_attempts: 3,
            timeout_minutes: 60,
            state: BuildState::Queued,
            created_at: chrono::DateTime::UNIX_EPOCH,
            attempt_started_at: None,
            quiet_polls: 0,
            last_seen: None,
        }
    }

    #[test]
    fn every_tag_kiln_adds_is_one_it_counts_against_the_limit() {
        let p = tiny(boot_test("uname -r"), json!({"owner": "platform"}));
        let body = render(&p, &a_build(&p));
        for name in body["tags"].as_object().unwrap().keys() {
            assert!(
                name == "owner" || KILN_TEMPLATE_TAGS.contains(&name.as_str()),
                "{name} is not in KILN_TEMPLATE_TAGS"
            );
        }
        for d in body["properties"]["distribute"].as_array().unwrap() {
            for name in d["artifactTags"].as_object().unwrap().keys() {
                assert!(
                    KILN_ARTIFACT_TAGS.contains(&name.as_str())
                        || p.kiln.promotion.tags.contains_key(name),
                    "{name} is not in KILN_ARTIFACT_TAGS"
                );
            }
        }
    }

    #[test]
    fn a_boot_test_too_long_for_a_tag_is_cut_and_marked_not_copied() {
        let long = format!("echo {}", "x".repeat(400));
        let p = tiny(boot_test(&long), json!({}));
        let body = render(&p, &a_build(&p));
        let tag = body["tags"]["kiln.bootTest.check"].as_str().unwrap();
        assert_eq!(tag.chars().count(), limits::MAX_TAG_VALUE_CHARS);
        assert!(tag.starts_with("echo xxx"), "{tag}");
        let digest = hex::encode(Sha256::digest(long.as_bytes()));
        assert!(tag.ends_with(&format!("[cut; sha256 {digest}]")), "{tag}");
        // …and validate refuses it, since the local provider would run the cut text.
        let errs = check_limits(&p);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "kiln.build.bootTest.check");
        assert!(
            errs[0].message.contains("405 characters"),
            "{}",
            errs[0].message
        );
        // A short one travels as it is.
        let p = tiny(boot_test("uname -r"), json!({}));
        assert_eq!(
            render(&p, &a_build(&p))["tags"]["kiln.bootTest.check"],
            "uname -r"
        );
        assert_eq!(check_limits(&p), []);
    }

    #[test]
    fn validate_counts_kilns_tags_towards_the_fifty() {
        // With a boot test, kiln sets all of its template tags.
        let tags = |n: usize| -> Value {
            (0..n)
                .map(|i| (format!("t{i:02}"), json!("v")))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let room = limits::MAX_TAGS - KILN_TEMPLATE_TAGS.len();
        let p = tiny(boot_test("true"), tags(room));
        assert_eq!(check_limits(&p), []);
        let p = tiny(boot_test("true"), tags(room + 1));
        let errs = check_limits(&p);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "tags");
        assert!(errs[0].message.contains("51 tags"), "{}", errs[0].message);
    }

    #[test]
    fn the_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":[1,2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "b": {"d":[1,2], "c":2}, "a":1 }"#).unwrap();
        assert_eq!(template_hash(&a), template_hash(&b));
        let c: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":[2,1]}}"#).unwrap();
        assert_ne!(template_hash(&a), template_hash(&c));
    }
}
