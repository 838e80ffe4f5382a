//! What the local provider cannot build, found before anything starts.

use std::path::{Component, Path};

use crate::domain::pipeline::FieldError;
use crate::domain::template::{Customizer, Distributor, GalleryImageRef, ImageTemplate, Source};
use crate::domain::version::ImageVersion;

use super::options;
use super::util::safe_component;

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// A `sourceUri`/`scriptUri` the local provider can fetch: an absolute local
/// path, `file://`, `https://` or `http://`.
pub(crate) fn uri_supported(uri: &str) -> bool {
    uri.starts_with('/')
        || uri.starts_with("file:///")
        || uri.starts_with("https://")
        || uri.starts_with("http://")
}

/// Whether `dest` is absolute and free of `..` (and not `/` itself).
pub(crate) fn destination_ok(dest: &str) -> bool {
    let p = Path::new(dest);
    p.is_absolute()
        && p.components().any(|c| matches!(c, Component::Normal(_)))
        && p.components().all(|c| {
            matches!(
                c,
                Component::RootDir | Component::Normal(_) | Component::CurDir
            )
        })
}

/// Why the local provider cannot fetch a supported URI, found before a
/// build starts: a local file that is not there, or an Azure Storage blob
/// without a SAS token, which AIB downloads with the template's
/// user-assigned identity and the local provider (no identity) cannot.
pub(crate) fn unreachable(uri: &str) -> Option<String> {
    if uri.starts_with('/') {
        return (!Path::new(uri).is_file())
            .then(|| format!("`{uri}` is not a file on this machine"));
    }
    let url = reqwest::Url::parse(uri).ok()?;
    if url.scheme() == "file" {
        let path = url.to_file_path().ok()?;
        return (!path.is_file())
            .then(|| format!("`{}` is not a file on this machine", path.display()));
    }
    // The parser lowercases the host and keeps the port and the fragment
    // apart; every Azure cloud's blob endpoint counts.
    let host = url.host_str().unwrap_or("").trim_end_matches('.');
    let blob = [
        ".blob.core.windows.net",
        ".blob.core.usgovcloudapi.net",
        ".blob.core.chinacloudapi.cn",
        ".blob.storage.azure.net",
    ]
    .iter()
    .any(|suffix| host.ends_with(suffix));
    let signed = url
        .query_pairs()
        .any(|(k, v)| k.eq_ignore_ascii_case("sig") && !v.is_empty());
    (blob && !signed).then(|| {
        "an Azure Storage blob without a SAS token: AIB downloads it with the template's identity, which the local provider does not have (use a local copy, or a SAS URL listed in kiln.allowSecrets)".to_string()
    })
}

fn checksum_ok(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_step(c: &Customizer, path: &str, validator: bool, errors: &mut Vec<FieldError>) {
    let what = if validator {
        "validators"
    } else {
        "customizers"
    };
    match c {
        Customizer::PowerShell { .. }
        | Customizer::WindowsRestart { .. }
        | Customizer::WindowsUpdate { .. } => {
            errors.push(err(
                path,
                format!(
                    "{} {what} are not supported by the local provider (it builds Linux images only); use the azure provider",
                    c.kind()
                ),
            ));
        }
        Customizer::Shell {
            inline,
            script_uri,
            sha256_checksum,
            ..
        } => {
            match (inline, script_uri) {
                (Some(_), Some(_)) => errors.push(err(
                    path,
                    "Shell takes either inline or scriptUri, not both",
                )),
                (None, None) => errors.push(err(path, "Shell needs inline or scriptUri")),
                _ => {}
            }
            if let Some(u) = script_uri {
                if !uri_supported(u) {
                    errors.push(err(
                        format!("{path}.scriptUri"),
                        "the local provider fetches scripts from an absolute path, file://, https:// or http://",
                    ));
                } else if let Some(why) = unreachable(u) {
                    errors.push(err(
                        format!("{path}.scriptUri"),
                        format!("the local provider cannot fetch it: {why}"),
                    ));
                }
            }
            if let Some(s) = sha256_checksum {
                if !s.is_empty() && !checksum_ok(s) {
                    errors.push(err(
                        format!("{path}.sha256Checksum"),
                        "expected 64 hex digits",
                    ));
                }
            }
        }
        Customizer::File {
            source_uri,
            destination,
            sha256_checksum,
            ..
        } => {
            if !uri_supported(source_uri) {
                errors.push(err(
                    format!("{path}.sourceUri"),
                    "the local provider fetches files from an absolute path, file://, https:// or http://",
                ));
            } else if let Some(why) = unreachable(source_uri) {
                errors.push(err(
                    format!("{path}.sourceUri"),
                    format!("the local provider cannot fetch it: {why}"),
                ));
            }
            if !destination_ok(destination) {
                errors.push(err(
                    format!("{path}.destination"),
                    format!(
                        "`{destination}` must be an absolute path inside the image, without `..`"
                    ),
                ));
            }
            if let Some(s) = sha256_checksum {
                if !s.is_empty() && !checksum_ok(s) {
                    errors.push(err(
                        format!("{path}.sha256Checksum"),
                        "expected 64 hex digits",
                    ));
                }
            }
        }
    }
}

fn gallery_ref_ok(r: &GalleryImageRef) -> bool {
    [&r.subscription, &r.resource_group, &r.gallery, &r.image]
        .iter()
        .all(|c| safe_component(c))
}

pub(crate) fn check(t: &ImageTemplate) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let p = &t.properties;
    match &p.source {
        Source::PlatformImage {
            publisher,
            offer,
            sku,
            version,
            ..
        } => {
            for (name, v) in [("publisher", publisher), ("offer", offer), ("sku", sku), ("version", version)] {
                if !safe_component(v) {
                    errors.push(err(
                        format!("properties.source.{name}"),
                        format!("`{v}` cannot name a local base image (1-128 of A-Z a-z 0-9 . - _)"),
                    ));
                }
            }
        }
        Source::SharedImageVersion {
            image_version_id, ..
        } => match GalleryImageRef::parse(image_version_id) {
            Some(r) if gallery_ref_ok(&r)
                && r
                    .version
                    .as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case("latest") || v.parse::<ImageVersion>().is_ok()) => {}
            _ => errors.push(err(
                "properties.source.imageVersionId",
                "expected a gallery image version id …/galleries/G/images/D/versions/(Major.Minor.Patch|latest)",
            )),
        },
        Source::ManagedImage { image_id } => {
            if image_id.trim().is_empty() {
                errors.push(err("properties.source.imageId", "expected a managed image id"));
            }
        }
    }
    for (i, c) in p.customize.iter().enumerate() {
        check_step(c, &format!("properties.customize[{i}]"), false, &mut errors);
    }
    if let Some(v) = &p.validate {
        for (i, c) in v.in_vm_validations.iter().enumerate() {
            check_step(
                c,
                &format!("properties.validate.inVMValidations[{i}]"),
                true,
                &mut errors,
            );
        }
    }
    for (i, d) in p.distribute.iter().enumerate() {
        let path = format!("properties.distribute[{i}]");
        if !safe_component(d.run_output_name()) {
            errors.push(err(
                format!("{path}.runOutputName"),
                "expected 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        match d {
            Distributor::SharedImage {
                gallery_image_id,
                target_regions,
                ..
            } => match GalleryImageRef::parse(gallery_image_id) {
                Some(r) if gallery_ref_ok(&r) => {
                    if let Some(v) = &r.version {
                        if v.parse::<ImageVersion>().is_err() {
                            errors.push(err(
                                format!("{path}.galleryImageId"),
                                format!("`{v}` is not a gallery image version (Major.Minor.Patch)"),
                            ));
                        }
                    }
                    for (j, tr) in target_regions.iter().enumerate() {
                        if tr.replica_count == 0 || tr.replica_count > 100 {
                            errors.push(err(
                                format!("{path}.targetRegions[{j}].replicaCount"),
                                "expected 1..=100 replicas",
                            ));
                        }
                    }
                }
                _ => errors.push(err(
                    format!("{path}.galleryImageId"),
                    "expected a gallery image id …/galleries/G/images/D[/versions/V] with plain names",
                )),
            },
            Distributor::ManagedImage { image_id, .. } => {
                if image_id.trim().is_empty() {
                    errors.push(err(format!("{path}.imageId"), "expected a managed image id"));
                }
            }
            Distributor::Vhd { uri, .. } => {
                if let Some(u) = uri {
                    let local = u.strip_prefix("file://").unwrap_or(u);
                    if !local.starts_with('/') || !destination_ok(local) {
                        errors.push(err(
                            format!("{path}.uri"),
                            "the local provider writes VHDs to an absolute local path or file:// URI",
                        ));
                    }
                }
            }
        }
    }
    errors.extend(options::check_tags(&t.tags));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(customize: serde_json::Value) -> ImageTemplate {
        serde_json::from_value(serde_json::json!({
            "location": "westeurope",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "1", "version": "latest"},
                "customize": customize,
                "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn sources_the_local_provider_cannot_fetch_are_found_before_a_build() {
        let script = tempfile::NamedTempFile::new().unwrap();
        let here = script.path().display().to_string();
        assert_eq!(unreachable(&here), None);
        assert_eq!(unreachable(&format!("file://{here}")), None);
        assert!(unreachable("/nonexistent/setup.sh")
            .unwrap()
            .contains("not a file on this machine"));
        let blob = "https://acct.blob.core.windows.net/scripts/setup.sh";
        assert!(unreachable(blob).unwrap().contains("SAS"));
        assert_eq!(unreachable(&format!("{blob}?sv=2024&sig=abc")), None);
        assert_eq!(unreachable("https://example.com/setup.sh"), None);
        for unsigned in [
            "https://ACCT.BLOB.CORE.WINDOWS.NET/s/x.sh",
            "https://acct.blob.core.windows.net:443/s/x.sh",
            "https://acct.blob.core.windows.net/s/x.sh#?sig=x",
            "https://acct.blob.core.windows.net/s/x.sh?sig=",
            "https://acct.blob.core.usgovcloudapi.net/s/x.sh",
        ] {
            assert!(unreachable(unsigned).is_some(), "{unsigned}");
        }
        assert_eq!(unreachable(&format!("{blob}?SIG=abc")), None);
        let t = template(serde_json::json!([
            {"type": "Shell", "scriptUri": blob},
            {"type": "File", "sourceUri": "/nonexistent/f", "destination": "/tmp/f"}
        ]));
        let errs = check(&t);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "properties.customize[0].scriptUri",
                "properties.customize[1].sourceUri"
            ]
        );
    }

    #[test]
    fn windows_steps_are_refused_with_their_index() {
        let t = template(serde_json::json!([
            {"type": "Shell", "inline": ["true"]},
            {"type": "PowerShell", "inline": ["Write-Host"]},
            {"type": "WindowsRestart"},
            {"type": "WindowsUpdate"}
        ]));
        let errs = check(&t);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "properties.customize[1]",
                "properties.customize[2]",
                "properties.customize[3]"
            ]
        );
        assert!(errs
            .iter()
            .all(|e| e.message.contains("not supported by the local provider")));
    }

    #[test]
    fn file_destinations_must_stay_inside() {
        for bad in ["etc/motd", "/etc/../../host", "../x", "/"] {
            let t = template(
                serde_json::json!([{"type": "File", "sourceUri": "/etc/passwd", "destination": bad}]),
            );
            assert_eq!(check(&t).len(), 1, "{bad}");
        }
        let t = template(
            serde_json::json!([{"type": "File", "sourceUri": "/etc/passwd", "destination": "/etc/motd"}]),
        );
        assert!(check(&t).is_empty());
    }
}
