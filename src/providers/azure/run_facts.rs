//! What the Azure provider can tell of a succeeded run, for its evidence:
//! the inventory the `kiln-sbom` step printed (`sbom_step.rs`) and what the
//! template itself says (its source and the version AIB resolved, each
//! customizer, the run's times).
//!
//! Two things the local provider reports are missing here, and why:
//! - no base SBOM: AIB gives no look at the source image before the first
//!   step, and a step kiln put first would cost a second inventory in every
//!   build for a diff the previous version's SBOM mostly answers;
//! - no disk digests: AIB's managed disks and gallery versions are not
//!   readable as bytes by kiln, so provenance's only subject is the SBOM.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::sbom_step;
use crate::domain::evidence::facts::{CustomizerFact, RunFacts};
use crate::domain::evidence::sbom::{PlacedFile, Sbom};
use crate::domain::redact;

/// Tag holding the sha256 of the body kiln sent (the pipeline's template
/// with the `kiln-sbom` step, before kiln's own tags): provenance's template digest.
pub const SENT_HASH_TAG: &str = "kiln.sentSha256";

/// The facts of template `name` (its ARM document `doc`) from the block's
/// two parts. Errors say which field of the template was missing.
pub fn facts(name: &str, doc: &Value, os_release: &str, dpkg: &str) -> Result<RunFacts, String> {
    let packages = sbom_step::parse_dpkg_query(dpkg)?;
    let props = doc.get("properties").unwrap_or(&Value::Null);
    let time = |k: &str| -> Result<DateTime<Utc>, String> {
        props
            .pointer(&format!("/lastRunStatus/{k}"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("properties.lastRunStatus.{k}: expected an RFC 3339 time"))
    };
    let (started, finished) = (time("startTime")?, time("endTime")?);
    let template_sha256 = doc
        .get("tags")
        .and_then(|t| t.get(SENT_HASH_TAG))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("tags.{SENT_HASH_TAG}: expected the sha256 of the body kiln sent"))?
        .to_string();
    let source = props
        .get("source")
        .ok_or("properties.source: missing")?
        .clone();
    let text = |k: &str| source.get(k).and_then(Value::as_str);
    let source_exact = text("exactVersion")
        .or_else(|| text("version"))
        .or_else(|| text("imageVersionId"))
        .or_else(|| text("imageId"))
        .ok_or("properties.source: neither exactVersion, version, imageVersionId nor imageId")?
        .to_string();
    let mut asked = source;
    if let Some(o) = asked.as_object_mut() {
        o.remove("exactVersion");
    }
    let steps: Vec<&Value> = props
        .get("customize")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let customizers: Vec<CustomizerFact> = steps.iter().map(|c| customizer(c)).collect();
    let mut sbom = Sbom {
        subject: name.to_string(),
        os: sbom_step::os_of(os_release),
        packages,
        files: customizers
            .iter()
            .filter(|c| c.kind == "File")
            .filter_map(|c| {
                Some(PlacedFile {
                    path: c.destination.clone()?,
                    sha256: c.sha256.clone()?,
                })
            })
            .collect(),
        created: finished,
        tool: format!("kiln {}", env!("CARGO_PKG_VERSION")),
    };
    sbom.normalize();
    Ok(RunFacts {
        sbom,
        base_sbom: None,
        disks: vec![],
        template_sha256,
        source: asked.to_string(),
        source_exact,
        customizers,
        started,
        finished,
    })
}

/// One customizer: an inline step's digest is that of its lines as Packer
/// writes them (joined, newline-terminated, as the local provider counts
/// them); a step from a URI carries the `sha256Checksum` the template gives
/// (AIB checks it), or none.
fn customizer(c: &Value) -> CustomizerFact {
    let text = |k: &str| c.get(k).and_then(Value::as_str);
    let inline = c.get("inline").and_then(Value::as_array).map(|lines| {
        let lines: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
        hex::encode(Sha256::digest((lines.join("\n") + "\n").as_bytes()))
    });
    CustomizerFact {
        name: text("name").unwrap_or("").to_string(),
        kind: text("type").unwrap_or("").to_string(),
        sha256: inline.or_else(|| text("sha256Checksum").map(str::to_ascii_lowercase)),
        uri: text("scriptUri")
            .or_else(|| text("sourceUri"))
            .map(|u| redact::uri(u).into_owned()),
        destination: text("destination").map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "name": "kiln-b1-1",
            "tags": {"kiln.bodyHash": "aa", SENT_HASH_TAG: "bb"},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-gen2", "version": "latest", "exactVersion": "22.04.202409250"},
                "customize": [
                    {"type": "Shell", "name": "base", "inline": ["apt-get install -y jq"]},
                    {"type": "File", "name": "motd", "sourceUri": "https://acct.blob.core.windows.net/c/motd?sv=2022-11-02&sig=SECRET", "destination": "/etc/motd", "sha256Checksum": "ABCDEF"},
                    {"type": "Shell", "name": "remote", "scriptUri": "https://example.com/s.sh"}
                ],
                "lastRunStatus": {"startTime": "2026-12-01T10:00:00Z", "endTime": "2026-12-01T10:30:00Z", "runState": "Succeeded"}
            }
        })
    }

    #[test]
    fn the_template_says_source_version_steps_and_times() {
        let f = facts(
            "kiln-b1-1",
            &doc(),
            "ID=ubuntu\nVERSION_ID=\"22.04\"\n",
            "ii \tjq\t1.6-2.1ubuntu3\tamd64\tjq\t1.6-2.1ubuntu3\n",
        )
        .unwrap();
        assert_eq!(f.template_sha256, "bb");
        assert_eq!(f.source_exact, "22.04.202409250");
        assert!(!f.source.contains("exactVersion"), "{}", f.source);
        assert_eq!(f.sbom.package("jq").unwrap().version, "1.6-2.1ubuntu3");
        assert_eq!(
            f.sbom.os.as_ref().unwrap().version_id.as_deref(),
            Some("22.04")
        );
        assert_eq!(f.sbom.created, f.finished);
        assert_eq!(
            f.customizers[0].sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"apt-get install -y jq\n")).as_str())
        );
        assert_eq!(f.customizers[1].sha256.as_deref(), Some("abcdef"));
        assert!(!f.customizers[1].uri.as_deref().unwrap().contains("SECRET"));
        assert_eq!(f.customizers[2].sha256, None);
        assert_eq!(
            f.sbom.files,
            vec![PlacedFile {
                path: "/etc/motd".into(),
                sha256: "abcdef".into()
            }]
        );
        assert!(f.base_sbom.is_none() && f.disks.is_empty());
    }

    #[test]
    fn a_template_without_what_provenance_needs_is_an_error_naming_the_field() {
        let mut d = doc();
        d["tags"].as_object_mut().unwrap().remove(SENT_HASH_TAG);
        let e = facts("t", &d, "ID=ubuntu\n", "").unwrap_err();
        assert!(e.contains("tags.kiln.sentSha256"), "{e}");
        let mut d = doc();
        d["properties"]["lastRunStatus"]["endTime"] = json!("soon");
        let e = facts("t", &d, "ID=ubuntu\n", "").unwrap_err();
        assert!(e.contains("lastRunStatus.endTime"), "{e}");
    }
}
