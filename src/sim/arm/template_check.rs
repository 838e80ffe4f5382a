//! Image Builder's checks of a template body at PUT. A body that fails one
//! is still accepted (201): the template then ends `provisioningState:
//! Failed` with `provisioningError.provisioningErrorCode`, as AIB reports
//! its validation, and the PUT's operation ends Failed with the same code.

use serde_json::Value;

/// The first problem of `body`, as (AIB provisioning error code, message).
pub(crate) fn check(body: &Value, sub: &str) -> Option<(&'static str, String)> {
    let p = body.get("properties")?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let identity = body
        .pointer("/identity/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !identity.eq_ignore_ascii_case("UserAssigned") {
        return Some(("InvalidParameter", "identity: a user-assigned identity is required (identity.type UserAssigned with one userAssignedIdentities entry)".into()));
    }
    match p.get("source").and_then(|s| text(s, "type")).as_deref() {
        Some("PlatformImage" | "ManagedImage" | "SharedImageVersion") => {}
        other => {
            return Some((
                "BadSourceType",
                format!("source.type: expected PlatformImage, ManagedImage or SharedImageVersion, got {other:?}"),
            ))
        }
    }
    for (i, c) in p
        .get("customize")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match text(c, "type").as_deref() {
            Some("Shell" | "PowerShell") => {
                if c.get("scriptUri").is_none() && c.get("inline").is_none() {
                    return Some((
                        "NoCustomizerScript",
                        format!("customize[{i}]: a scriptUri or inline is required"),
                    ));
                }
            }
            Some("File" | "WindowsRestart" | "WindowsUpdate") => {}
            other => {
                return Some((
                    "BadCustomizerType",
                    format!("customize[{i}].type: unknown customizer type {other:?}"),
                ))
            }
        }
    }
    let distribute = p
        .get("distribute")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty());
    let Some(distribute) = distribute else {
        return Some((
            "InvalidParameter",
            "distribute: at least one distribution target is required".into(),
        ));
    };
    for (i, d) in distribute.iter().enumerate() {
        let name = text(d, "runOutputName").unwrap_or_default();
        let name_ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Some((
                "InvalidParameter",
                format!("distribute[{i}].runOutputName: expected 1 to 64 of A-Z a-z 0-9 - _ ., got {name:?}"),
            ));
        }
        match text(d, "type").as_deref() {
            Some("SharedImage") => {
                let gallery = text(d, "galleryImageId").unwrap_or_default();
                if !gallery.to_ascii_lowercase().contains("/galleries/") {
                    return Some((
                        "BadSharedImageDistribute",
                        format!("distribute[{i}].galleryImageId: expected a gallery image id, got {gallery:?}"),
                    ));
                }
                if d.get("targetRegions").is_some() && d.get("replicationRegions").is_some() {
                    return Some(("InvalidParameter", format!("distribute[{i}]: targetRegions and replicationRegions cannot both be set")));
                }
            }
            Some("ManagedImage" | "VHD") => {}
            other => {
                return Some((
                    "BadDistributeType",
                    format!("distribute[{i}].type: unknown distribution type {other:?}"),
                ))
            }
        }
    }
    if let Some(group) = text(p, "stagingResourceGroup").filter(|g| !g.is_empty()) {
        let prefix = format!("/subscriptions/{sub}/resourcegroups/");
        let lower = group.to_ascii_lowercase();
        let ok = lower
            .strip_prefix(&prefix)
            .is_some_and(|g| !g.is_empty() && !g.contains('/'));
        if !ok {
            return Some(("BadStagingResourceGroup", format!("stagingResourceGroup: expected /subscriptions/{sub}/resourceGroups/<name> in the template's subscription, got {group}")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::check;
    use serde_json::{json, Value};

    fn valid() -> Value {
        json!({
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/x/id": {}}},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                "customize": [{"type": "Shell", "inline": ["true"]}],
                "distribute": [{"type": "SharedImage", "runOutputName": "out", "galleryImageId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/c/images/d"}]
            }
        })
    }

    #[test]
    fn each_problem_has_the_code_image_builder_gives_it() {
        assert_eq!(check(&valid(), "s"), None);
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/identity",
                json!({"type": "SystemAssigned"}),
                "InvalidParameter",
            ),
            ("/properties/source/type", json!("Iso"), "BadSourceType"),
            (
                "/properties/customize/0",
                json!({"type": "Shell"}),
                "NoCustomizerScript",
            ),
            (
                "/properties/customize/0/type",
                json!("Ansible"),
                "BadCustomizerType",
            ),
            ("/properties/distribute", json!([]), "InvalidParameter"),
            (
                "/properties/distribute/0/runOutputName",
                json!("has space"),
                "InvalidParameter",
            ),
            (
                "/properties/distribute/0/type",
                json!("Blob"),
                "BadDistributeType",
            ),
            (
                "/properties/distribute/0/galleryImageId",
                json!("/images/d"),
                "BadSharedImageDistribute",
            ),
        ];
        for (pointer, value, code) in cases {
            let mut body = valid();
            *body.pointer_mut(pointer).unwrap() = value;
            assert_eq!(check(&body, "s").map(|(c, _)| c), Some(code), "{pointer}");
        }
        let mut body = valid();
        body["properties"]["stagingResourceGroup"] = json!("/subscriptions/other/resourceGroups/g");
        assert_eq!(
            check(&body, "s").map(|(c, _)| c),
            Some("BadStagingResourceGroup")
        );
        body["properties"]["stagingResourceGroup"] = json!("/subscriptions/s/resourceGroups/g");
        assert_eq!(check(&body, "s"), None);
    }
}
