//! What a run's `distribute[]` SharedImage entries create: the gallery
//! version's name (explicit, or from `versioning`), its regions and tags.

use serde_json::Value;

use super::world::{SharedImage, World};

/// The gallery version a SharedImage distribute creates.
pub(crate) fn shared_image(
    w: &World,
    d: &Value,
    source_version: Option<&str>,
) -> Option<SharedImage> {
    let gallery = d.get("galleryImageId").and_then(Value::as_str)?;
    let (definition, explicit) = match gallery.to_ascii_lowercase().rfind("/versions/") {
        Some(i) => (
            gallery[..i].to_string(),
            Some(gallery[i + 10..].to_string()),
        ),
        None => (gallery.trim_end_matches('/').to_string(), None),
    };
    let version = match explicit {
        Some(v) => v,
        None => next_version(w, &definition, d.get("versioning"), source_version),
    };
    let regions: Vec<(String, u64)> = match d.get("targetRegions").and_then(Value::as_array) {
        Some(targets) => targets
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("name")?.as_str()?.to_string(),
                    r.get("replicaCount").and_then(Value::as_u64).unwrap_or(1),
                ))
            })
            .collect(),
        None => d
            .get("replicationRegions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r.as_str()?.to_string(), 1)))
            .collect(),
    };
    let tags = d
        .get("artifactTags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(SharedImage {
        definition,
        version,
        regions,
        tags,
        exclude_from_latest: d
            .get("excludeFromLatest")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// AIB's `versioning`: `Latest` (the default here) is one patch above the
/// highest existing version (of `major`, when given); `Source` takes the
/// source image's version.
fn next_version(
    w: &World,
    definition: &str,
    versioning: Option<&Value>,
    source_version: Option<&str>,
) -> String {
    let scheme = versioning
        .and_then(|v| v.get("scheme"))
        .and_then(Value::as_str)
        .unwrap_or("Latest");
    if scheme.eq_ignore_ascii_case("Source") {
        if let Some(v) = source_version {
            let parts: Vec<u64> = v.split('.').filter_map(|p| p.parse().ok()).collect();
            if parts.len() == 3 {
                return format!("{}.{}.{}", parts[0], parts[1], parts[2]);
            }
        }
    }
    let major = versioning
        .and_then(|v| v.get("major"))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let prefix = format!("{}/versions/", definition.to_ascii_lowercase());
    let highest = w
        .versions
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .filter_map(|v| {
            let p: Vec<u64> = v.split('.').filter_map(|x| x.parse().ok()).collect();
            (p.len() == 3).then(|| (p[0], p[1], p[2]))
        })
        .filter(|(m, _, _)| major < 0 || *m as i64 == major)
        .max();
    match highest {
        Some((a, b, c)) => format!("{a}.{b}.{}", c + 1),
        None if major >= 0 => format!("{major}.0.0"),
        None => "1.0.0".to_string(),
    }
}
