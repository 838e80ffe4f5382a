//! The SBOM as a CycloneDX 1.5 JSON document, through OWASP's
//! `cyclonedx-bom` crate (its model, its validation, its writer).
//!
//! The image is `metadata.component` (type `container`: CycloneDX's word
//! for a packaged, isolated runtime, which a disk image is); the operating
//! system, every installed package (type `library`, with its purl) and
//! every placed file (type `file`, with its SHA-256) are components.
//! Deterministic like the SPDX rendering: the serial number is a UUID made
//! from the sha256 of the SPDX bytes, so the same inventory gives the same
//! document.

use cyclonedx_bom::models::component::Classification;
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{LicenseChoice, Licenses};
use cyclonedx_bom::models::tool::{Tool, Tools};
use cyclonedx_bom::prelude::*;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sbom::Sbom;
use super::spdx::to_spdx_bytes;

#[derive(Debug, Error)]
pub enum CycloneDxError {
    #[error("CycloneDX 1.5: the document does not validate: {0}")]
    Invalid(String),
    #[error("CycloneDX 1.5: writing JSON: {0}")]
    Write(String),
}

/// The inventory as CycloneDX 1.5 JSON (pretty, with a trailing newline).
pub fn to_cyclonedx_bytes(sbom: &Sbom) -> Result<Vec<u8>, CycloneDxError> {
    let bom = bom(sbom);
    let result = bom.validate_version(SpecVersion::V1_5);
    if !result.passed() {
        return Err(CycloneDxError::Invalid(format!("{result:?}")));
    }
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out)
        .map_err(|e| CycloneDxError::Write(e.to_string()))?;
    // The crate writes compact JSON; re-indent for people, as the SPDX file is.
    let value: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| CycloneDxError::Write(e.to_string()))?;
    let mut bytes = serde_json::to_vec_pretty(&value).expect("serializable");
    bytes.push(b'\n');
    Ok(bytes)
}

fn bom(sbom: &Sbom) -> Bom {
    let digest = Sha256::digest(to_spdx_bytes(sbom));
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    let serial = uuid::Builder::from_custom_bytes(id).into_uuid();

    let mut components = Vec::new();
    if let Some(os) = &sbom.os {
        let mut c = Component::new(
            Classification::OperatingSystem,
            &os.id,
            os.version_id.as_deref().unwrap_or(""),
            Some("os".into()),
        );
        if os.version_id.is_none() {
            c.version = None;
        }
        c.description = os.pretty_name.as_deref().map(NormalizedString::new);
        components.push(c);
    }
    for p in &sbom.packages {
        let purl = sbom.purl(p);
        let mut c = Component::new(
            Classification::Library,
            &p.name,
            &p.version,
            Some(purl.clone()),
        );
        c.purl = purl.parse().ok();
        c.licenses = p
            .license
            .as_deref()
            .map(|l| Licenses(vec![LicenseChoice::Expression(SpdxExpression::new(l))]));
        components.push(c);
    }
    for f in &sbom.files {
        let mut c = Component::new(
            Classification::File,
            &f.path,
            "",
            Some(format!("file:{}", f.path)),
        );
        c.version = None;
        c.hashes = Some(Hashes(vec![Hash {
            alg: HashAlgorithm::SHA_256,
            content: HashValue(f.sha256.clone()),
        }]));
        components.push(c);
    }
    let mut image = Component::new(
        Classification::Container,
        &sbom.subject,
        "",
        Some("image".into()),
    );
    image.version = None;
    let (tool_name, tool_version) = sbom.tool.split_once(' ').unwrap_or((&sbom.tool, ""));
    Bom {
        serial_number: UrnUuid::new(format!("urn:uuid:{serial}")).ok(),
        metadata: Some(Metadata {
            timestamp: DateTime::try_from(
                sbom.created
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .ok(),
            tools: Some(Tools::List(vec![Tool {
                vendor: None,
                name: Some(NormalizedString::new(tool_name)),
                version: Some(NormalizedString::new(tool_version))
                    .filter(|_| !tool_version.is_empty()),
                hashes: None,
                external_references: None,
            }])),
            component: Some(image),
            ..Metadata::default()
        }),
        components: Some(Components(components)),
        ..Bom::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::evidence::sbom::{OsRelease, Package, PackageManager, PlacedFile};
    use chrono::{TimeZone, Utc};

    fn sample() -> Sbom {
        Sbom {
            subject: "web/1.0.3".into(),
            os: Some(OsRelease {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            }),
            packages: vec![Package {
                name: "libcurl4".into(),
                version: "7.88.1-10+deb12u5".into(),
                arch: "amd64".into(),
                source: "curl".into(),
                source_version: "7.88.1-10+deb12u5".into(),
                license: Some("curl AND (MIT OR GPL-2.0-or-later)".into()),
                manager: PackageManager::Dpkg,
            }],
            files: vec![PlacedFile {
                path: "/etc/motd".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            }],
            created: Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap(),
            tool: "kiln 0.1.0".into(),
        }
    }

    #[test]
    fn a_valid_deterministic_cyclonedx_1_5_document() {
        let bytes = to_cyclonedx_bytes(&sample()).unwrap();
        assert_eq!(bytes, to_cyclonedx_bytes(&sample()).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["bomFormat"], "CycloneDX");
        assert_eq!(v["specVersion"], "1.5");
        assert!(v["serialNumber"].as_str().unwrap().starts_with("urn:uuid:"));
        assert_eq!(v["metadata"]["component"]["name"], "web/1.0.3");
        let comps = v["components"].as_array().unwrap();
        assert_eq!(comps[0]["type"], "operating-system");
        assert_eq!(
            comps[1]["purl"],
            "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u5?arch=amd64&distro=debian-12&upstream=curl"
        );
        assert_eq!(
            comps[1]["licenses"][0]["expression"],
            "curl AND (MIT OR GPL-2.0-or-later)"
        );
        assert_eq!(comps[2]["hashes"][0]["alg"], "SHA-256");
        // Another inventory, another serial number.
        let mut other = sample();
        other.packages[0].version = "7.88.1-10+deb12u6".into();
        let w: serde_json::Value =
            serde_json::from_slice(&to_cyclonedx_bytes(&other).unwrap()).unwrap();
        assert_ne!(v["serialNumber"], w["serialNumber"]);
    }

    #[test]
    fn an_invalid_expression_fails_validation_rather_than_being_written() {
        let mut s = sample();
        s.packages[0].license = Some("GPL-2+ or".into());
        assert!(matches!(
            to_cyclonedx_bytes(&s),
            Err(CycloneDxError::Invalid(_))
        ));
    }
}
