//! Reading a version's evidence back, for the API and the CLI alike: they
//! hand in the evidence store (the CLI opens the data folder's without a
//! running factory).

use serde::Serialize;
use serde_json::Value;

use crate::domain::evidence::diff::{diff, PackageDiff};
use crate::domain::evidence::dsse::{verify_envelope_with_key, Envelope, PublicKey};
use crate::domain::evidence::provenance::check_subjects;
use crate::domain::evidence::sbom::Sbom;
use crate::domain::evidence::spdx;
use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::ports::{EvidenceFile, EvidenceStore};

/// A gallery version id split into its definition and version, or a
/// message saying what was expected.
pub fn parse_version_id(id: &str) -> Result<(String, ImageVersion), String> {
    let r = GalleryImageRef::parse(id).ok_or_else(|| {
        format!("`{id}` is not a gallery image version id (/subscriptions/…/galleries/G/images/I/versions/1.2.3)")
    })?;
    let v = r
        .version
        .as_deref()
        .ok_or_else(|| format!("`{id}` names no version (…/versions/1.2.3)"))?;
    let v: ImageVersion = v
        .parse()
        .map_err(|e| format!("`{id}`: the version `{v}` is not Major.Minor.Patch: {e}"))?;
    Ok((r.definition_id(), v))
}

/// A stored file, parsed as JSON.
pub async fn json_file(
    store: &dyn EvidenceStore,
    def: &str,
    v: ImageVersion,
    file: EvidenceFile,
) -> anyhow::Result<Option<Value>> {
    match store.get(def, v, file).await? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} of {def}/versions/{v} is not JSON: {e}",
                file.file_name()
            )
        })?)),
        None => Ok(None),
    }
}

/// A stored SBOM (`Sbom` or `BaseSbom`), read into kiln's model.
pub async fn sbom(
    store: &dyn EvidenceStore,
    def: &str,
    v: ImageVersion,
    file: EvidenceFile,
) -> anyhow::Result<Option<Sbom>> {
    match json_file(store, def, v, file).await? {
        Some(doc) => Ok(Some(spdx::from_spdx_json(&doc).map_err(|e| {
            anyhow::anyhow!("{} of {def}/versions/{v}: {e}", file.file_name())
        })?)),
        None => Ok(None),
    }
}

/// What changed from version `a` to version `b` (any two versions, of one
/// definition or two).
pub async fn diff_versions(
    store: &dyn EvidenceStore,
    a: (&str, ImageVersion),
    b: (&str, ImageVersion),
) -> anyhow::Result<PackageDiff> {
    let old = sbom(store, a.0, a.1, EvidenceFile::Sbom)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{}/versions/{} has no SBOM", a.0, a.1))?;
    let new = sbom(store, b.0, b.1, EvidenceFile::Sbom)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{}/versions/{} has no SBOM", b.0, b.1))?;
    Ok(diff(&old, &new))
}

/// What the build changed on top of its base.
pub async fn diff_from_base(
    store: &dyn EvidenceStore,
    def: &str,
    v: ImageVersion,
) -> anyhow::Result<PackageDiff> {
    let base = sbom(store, def, v, EvidenceFile::BaseSbom)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{def}/versions/{v} has no base SBOM (the provider did not see its source)"
            )
        })?;
    let new = sbom(store, def, v, EvidenceFile::Sbom)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{def}/versions/{v} has no SBOM"))?;
    Ok(diff(&base, &new))
}

/// What `kiln verify` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub version: String,
    /// The key the provenance is signed with, when a trusted one verified it.
    pub signed_by: Option<String>,
    /// Each file checked against the signed subjects: name and outcome.
    pub files: Vec<(String, String)>,
    /// Everything that failed; empty means verified.
    pub problems: Vec<String>,
    /// The signed statement, when a trusted key verified it.
    #[serde(skip)]
    pub statement: Option<crate::domain::evidence::provenance::Statement>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the version's signed provenance with `trusted`, and that the
/// stored SBOM and the `disks` on hand (name, sha256) are exactly its
/// subjects.
pub async fn verify(
    store: &dyn EvidenceStore,
    def: &str,
    v: ImageVersion,
    trusted: &[PublicKey],
    disks: &[(String, String)],
) -> anyhow::Result<Verification> {
    let id = format!("{def}/versions/{v}");
    let mut out = Verification {
        version: id.clone(),
        signed_by: None,
        files: vec![],
        problems: vec![],
        statement: None,
    };
    let Some(bytes) = store.get(def, v, EvidenceFile::Provenance).await? else {
        out.problems.push(format!(
            "{id} has no provenance (built before kiln signed provenance, or not by kiln)"
        ));
        return Ok(out);
    };
    let envelope: Envelope = match serde_json::from_slice(&bytes) {
        Ok(e) => e,
        Err(e) => {
            out.problems
                .push(format!("provenance.dsse.json is not a DSSE envelope: {e}"));
            return Ok(out);
        }
    };
    let statement = match verify_envelope_with_key(&envelope, trusted) {
        Ok((s, key)) => {
            out.signed_by = Some(key);
            s
        }
        Err(e) => {
            out.problems.push(format!("signature: {e}"));
            return Ok(out);
        }
    };
    let mut files: Vec<(String, String)> = disks.to_vec();
    match store.get(def, v, EvidenceFile::Sbom).await? {
        Some(sbom) => files.push((
            EvidenceFile::Sbom.file_name().to_string(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sbom)),
        )),
        None => out.problems.push(format!("{id} has no stored SBOM")),
    }
    let pairs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    match check_subjects(&statement, &pairs) {
        Ok(()) => {}
        Err(mismatches) => out
            .problems
            .extend(mismatches.iter().map(|m| m.to_string())),
    }
    out.statement = Some(statement);
    out.files = files
        .iter()
        .map(|(n, s)| {
            let bad = out.problems.iter().any(|p| p.starts_with(&format!("{n}:")));
            (
                n.clone(),
                if bad {
                    "differs".to_string()
                } else {
                    format!("sha256 {s} matches")
                },
            )
        })
        .collect();
    Ok(out)
}
