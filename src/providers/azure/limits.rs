//! Azure Resource Manager's and Image Builder's limits on what kiln sends,
//! as pure checks, so that `kiln validate` reports a template Azure would
//! refuse instead of a build failing at its first PUT.
//!
//! - Tags: at most 50 per resource; a name at most 512 characters, without
//!   `<>%&\?/`; a value at most 256 characters (ARM's documented tag rules).
//!   kiln's own tags ([`KILN_TEMPLATE_TAGS`], [`KILN_ARTIFACT_TAGS`]) count.
//!   A distributor's `artifactTags` become the gallery version's tags, so
//!   the same rules apply there.
//! - Names: an image template name and a run output name match
//!   `^[A-Za-z0-9-_.]{1,64}$` (the 2025-10-01 spec's path parameters). kiln
//!   names templates `kiln-{buildId}-a{attempt}`, checked for the longest
//!   build id and the pipeline's last attempt.
//! - Size: ARM refuses a request body over 4 MB; a large inline script is
//!   what gets a template there.
//!
//! [`check_template`] works on the typed template (all an
//! [`ImageBuilder::check`](crate::ports::ImageBuilder::check) gets);
//! [`check_body`] on the rendered body, which `kiln validate` renders for a
//! worst-case build (`app::render::check_limits`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::domain::pipeline::FieldError;
use crate::domain::template::{
    step_paths, Distributor, ImageTemplate, KILN_ARTIFACT_TAGS, KILN_TEMPLATE_TAGS,
};

pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_NAME_CHARS: usize = 512;
pub const MAX_TAG_VALUE_CHARS: usize = 256;
pub const TAG_NAME_FORBIDDEN: [char; 7] = ['<', '>', '%', '&', '\\', '?', '/'];
/// ARM's request body limit.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Image template and run output names: `^[A-Za-z0-9-_.]{1,64}$`.
pub const MAX_NAME_CHARS: usize = 64;
/// The longest build id kiln makes (`YYYYMMDD-HHMMSS-xxxxxx`,
/// `app::admission::new_build_id`).
pub const LONGEST_BUILD_ID: &str = "99991231-235959-ffffff";
/// What the Azure adapter adds to a rendered body before the PUT: the
/// `kiln.bodyHash` tag and its sha256 value, quoted, with a comma.
const BODY_HASH_TAG_BYTES: usize = 96;

fn error(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// The tags at `at` (`tags`, `properties.distribute[0].artifactTags`), with
/// the names kiln adds to them. A tag kiln sets itself is counted once.
pub fn check_tags<'a>(
    at: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    kiln_adds: &[&str],
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (name, value) in tags {
        // ARM tag names compare case-insensitively.
        names.insert(name.to_ascii_lowercase());
        let path = format!("{at}.{name}");
        let name_chars = name.chars().count();
        if name_chars > MAX_TAG_NAME_CHARS {
            errors.push(error(
                &path,
                format!(
                    "tag name of {name_chars} characters: ARM allows at most {MAX_TAG_NAME_CHARS}"
                ),
            ));
        }
        if name.trim().is_empty() {
            errors.push(error(&path, "empty tag name: ARM requires one"));
        }
        let bad: String = name
            .chars()
            .filter(|c| TAG_NAME_FORBIDDEN.contains(c))
            .collect();
        if !bad.is_empty() {
            errors.push(error(
                &path,
                format!("tag name contains `{bad}`: ARM refuses < > % & \\ ? / in tag names"),
            ));
        }
        let value_chars = value.chars().count();
        if value_chars > MAX_TAG_VALUE_CHARS {
            errors.push(error(
                &path,
                format!("tag value of {value_chars} characters: ARM allows at most {MAX_TAG_VALUE_CHARS}"),
            ));
        }
    }
    let kiln: BTreeSet<String> = kiln_adds.iter().map(|n| n.to_ascii_lowercase()).collect();
    let own = names.difference(&kiln).count();
    let total = own + kiln.len();
    if total > MAX_TAGS {
        errors.push(error(
            at,
            format!(
                "{total} tags ({own} of the pipeline's and {} that kiln sets itself): ARM allows at most {MAX_TAGS} per resource; remove {}",
                kiln.len(),
                total - MAX_TAGS
            ),
        ));
    }
    errors
}

/// An Image Builder resource name (image template, run output).
pub fn check_name(at: &str, what: &str, name: &str) -> Option<FieldError> {
    let fits = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!fits).then(|| {
        error(
            at,
            format!("{what} `{name}`: expected 1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 - _ . (Image Builder's name rule)"),
        )
    })
}

/// The template name of the longest build id at the last attempt.
pub fn check_template_names(max_attempts: u32) -> Vec<FieldError> {
    let name = crate::domain::build::template_name(LONGEST_BUILD_ID, max_attempts);
    check_name(
        "kiln.build.maxAttempts",
        "the image template name kiln derives",
        &name,
    )
    .into_iter()
    .collect()
}

/// A request body of `bytes` bytes.
pub fn check_size(at: &str, bytes: usize) -> Option<FieldError> {
    (bytes > MAX_REQUEST_BYTES).then(|| {
        error(
            at,
            format!(
                "the image template body is {bytes} bytes: ARM refuses request bodies over {MAX_REQUEST_BYTES} (4 MB); move large inline scripts into files (scriptUri) the build downloads"
            ),
        )
    })
}

/// The body of an image template PUT, as rendered. kiln's own tags are
/// counted whether the body has them yet or not (the Azure adapter adds
/// `kiln.bodyHash` at the PUT).
pub fn check_body(body: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let strings = |v: Option<&Value>| -> Vec<(String, String)> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let tags = strings(body.get("tags"));
    errors.extend(check_tags(
        "tags",
        tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &KILN_TEMPLATE_TAGS,
    ));
    let distribute = body
        .pointer("/properties/distribute")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, d) in distribute.iter().enumerate() {
        let at = format!("properties.distribute[{i}]");
        let tags = strings(d.get("artifactTags"));
        errors.extend(check_tags(
            &format!("{at}.artifactTags"),
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &KILN_ARTIFACT_TAGS,
        ));
        if let Some(name) = d.get("runOutputName").and_then(Value::as_str) {
            errors.extend(check_name(
                &format!("{at}.runOutputName"),
                "run output name",
                name,
            ));
        }
    }
    let bytes = serde_json::to_vec(body).map_or(0, |b| b.len()) + BODY_HASH_TAG_BYTES;
    errors.extend(check_size("properties", bytes));
    errors
}

/// The typed template, before kiln renders it: the template's own tags with
/// room for kiln's, names, and a lower bound of the body size (the steps,
/// distributors and tags, which is where size comes from).
pub fn check_template(t: &ImageTemplate) -> Vec<FieldError> {
    let mut errors = check_tags(
        "tags",
        t.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &KILN_TEMPLATE_TAGS,
    );
    let p = &t.properties;
    let mut bytes = serde_json::to_vec(&t.tags).map_or(0, |b| b.len());
    for (i, d) in p.distribute.iter().enumerate() {
        let at = format!("properties.distribute[{i}]");
        let tags = match d {
            Distributor::SharedImage { artifact_tags, .. }
            | Distributor::ManagedImage { artifact_tags, .. }
            | Distributor::Vhd { artifact_tags, .. } => artifact_tags,
        };
        errors.extend(check_tags(
            &format!("{at}.artifactTags"),
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &KILN_ARTIFACT_TAGS,
        ));
        errors.extend(check_name(
            &format!("{at}.runOutputName"),
            "run output name",
            d.run_output_name(),
        ));
        bytes += serde_json::to_vec(d).map_or(0, |b| b.len());
    }
    let validators = p
        .validate
        .as_ref()
        .map_or(&[][..], |v| &v.in_vm_validations);
    for (_, step) in step_paths(&p.customize, validators) {
        bytes += serde_json::to_vec(step).map_or(0, |b| b.len());
    }
    errors.extend(check_size("properties", bytes));
    // kiln allows at most 10 attempts (`kiln.build.maxAttempts`).
    errors.extend(check_template_names(10));
    errors
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn many(n: usize) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("t{i:02}"), "v".to_string()))
            .collect()
    }

    fn pairs(m: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
        m.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[test]
    fn kilns_own_tags_count_towards_the_fifty() {
        let fits = many(MAX_TAGS - KILN_TEMPLATE_TAGS.len());
        assert_eq!(check_tags("tags", pairs(&fits), &KILN_TEMPLATE_TAGS), []);
        let over = many(MAX_TAGS - KILN_TEMPLATE_TAGS.len() + 1);
        let errs = check_tags("tags", pairs(&over), &KILN_TEMPLATE_TAGS);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "tags");
        assert!(errs[0].message.contains("51 tags"), "{}", errs[0].message);
        assert!(errs[0].message.contains("remove 1"), "{}", errs[0].message);
    }

    #[test]
    fn a_tag_kiln_sets_itself_is_counted_once() {
        let mut tags = many(MAX_TAGS - KILN_TEMPLATE_TAGS.len());
        tags.insert("kiln.pipeline".into(), "mine".into());
        tags.remove("t00");
        tags.insert("Kiln.Build".into(), "x".into());
        assert_eq!(check_tags("tags", pairs(&tags), &KILN_TEMPLATE_TAGS), []);
    }

    #[test]
    fn tag_names_and_values_have_arms_lengths_and_characters() {
        let mut tags = BTreeMap::new();
        tags.insert("a".repeat(512), "b".repeat(256));
        assert_eq!(check_tags("tags", pairs(&tags), &[]), []);
        let mut tags = BTreeMap::new();
        tags.insert("a".repeat(513), "ok".into());
        tags.insert("cost/center".into(), "ok".into());
        tags.insert("owner".into(), "é".repeat(257));
        let errs = check_tags("tags", pairs(&tags), &[]);
        let messages: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{messages:#?}");
        assert!(messages.iter().any(|m| m.contains("513 characters")));
        assert!(messages
            .iter()
            .any(|m| m.starts_with("tags.cost/center: ") && m.contains("`/`")));
        assert!(messages
            .iter()
            .any(|m| m.starts_with("tags.owner: ") && m.contains("257 characters")));
    }

    #[test]
    fn derived_template_names_fit_image_builders_rule() {
        assert_eq!(check_template_names(10), []);
        let longest = crate::domain::build::template_name(LONGEST_BUILD_ID, 10);
        assert!(longest.len() <= MAX_NAME_CHARS, "{longest}");
        assert!(check_name("x", "name", &"a".repeat(65)).is_some());
        assert!(check_name("x", "name", "kiln b1").is_some());
        assert!(check_name("x", "name", "").is_some());
    }

    #[test]
    fn a_body_over_four_megabytes_cannot_be_sent() {
        let script = "x".repeat(MAX_REQUEST_BYTES);
        let body = json!({
            "location": "westeurope", "tags": {},
            "properties": {"customize": [{"type": "Shell", "inline": [script]}],
                           "distribute": [{"type": "SharedImage", "runOutputName": "o", "galleryImageId": "g"}]}
        });
        let errs = check_body(&body);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "properties");
        assert!(errs[0].message.contains("4 MB"), "{}", errs[0].message);
        let small = json!({"tags": {}, "properties": {"distribute": []}});
        assert_eq!(check_body(&small), []);
    }

    #[test]
    fn a_rendered_body_counts_every_tag_kiln_sets() {
        let tags: serde_json::Map<String, Value> = (0..MAX_TAGS)
            .map(|i| (format!("t{i}"), json!("v")))
            .collect();
        let errs = check_body(&json!({"tags": tags, "properties": {}}));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .message
                .starts_with("61 tags (50 of the pipeline's and 11 that kiln sets itself)"),
            "{}",
            errs[0].message
        );
    }
}
