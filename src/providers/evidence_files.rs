//! Evidence in the data folder, one folder per gallery version:
//!
//! ```text
//! evidence/<subscription>/<resource group>/<gallery>/<image>/
//!     definition.id                      the definition's id as first written
//!     <version>/sbom.spdx.json  base.spdx.json  provenance.dsse.json  findings.json  summary.json
//! ```
//!
//! Folder names are the id's segments lowercased (ARM ids are
//! case-insensitive), as the local gallery lays out its versions. Every
//! file is written to a temporary name in its folder and renamed, so a
//! reader sees the old file or the new one, never half of either.

use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;

use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::ports::{EvidenceFile, EvidenceStore};

/// The definition's id as first written (the folder names are lowercased).
pub(crate) const DEFINITION_FILE: &str = "definition.id";

#[derive(Debug, Clone)]
pub struct EvidenceFiles {
    root: PathBuf,
}

impl EvidenceFiles {
    /// Evidence under `<data dir>/evidence`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("evidence"),
        }
    }

    fn definition_dir(&self, definition_id: &str) -> anyhow::Result<PathBuf> {
        let mut dir = self.root.clone();
        dir.extend(definition_segments(definition_id)?);
        Ok(dir)
    }
}

/// Where a definition's evidence goes, on disk and in Blob Storage alike:
/// subscription, resource group, gallery and image, lowercased (ARM ids are
/// case-insensitive).
pub(crate) fn definition_segments(definition_id: &str) -> anyhow::Result<[String; 4]> {
    let r = GalleryImageRef::parse(definition_id).with_context(|| {
        format!("evidence: `{definition_id}` is not a gallery image definition id")
    })?;
    let segments = [&r.subscription, &r.resource_group, &r.gallery, &r.image]
        .map(|segment| segment.to_ascii_lowercase());
    for s in &segments {
        // Segments come from an id kiln parsed; refuse anything that would
        // climb out of the evidence folder (or blob prefix) all the same.
        if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            anyhow::bail!("evidence: `{definition_id}` has an unusable segment `{s}`");
        }
    }
    Ok(segments)
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[async_trait]
impl EvidenceStore for EvidenceFiles {
    async fn put(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let dir = self.definition_dir(definition_id)?;
        let id_file = dir.join(DEFINITION_FILE);
        if !id_file.exists() {
            write_atomic(&id_file, definition_id.as_bytes())?;
        }
        write_atomic(&dir.join(version.to_string()).join(file.file_name()), bytes)
    }

    async fn get(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let dir = self.definition_dir(definition_id)?;
        read_optional(&dir.join(version.to_string()).join(file.file_name()))
    }

    async fn versions(&self, definition_id: &str) -> anyhow::Result<Vec<ImageVersion>> {
        let dir = self.definition_dir(definition_id)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(anyhow::anyhow!("cannot list {}: {e}", dir.display())),
        };
        let mut out: Vec<ImageVersion> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn definitions(&self) -> anyhow::Result<Vec<String>> {
        // subscription/resource group/gallery/image: four levels down.
        let mut level = vec![self.root.clone()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for dir in level {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    next.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            }
            level = next;
        }
        let mut out = Vec::new();
        for dir in level {
            if let Some(id) = read_optional(&dir.join(DEFINITION_FILE))? {
                out.push(String::from_utf8_lossy(&id).trim().to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// What every [`EvidenceStore`] does, run against each of them.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub const DEF: &str = "/subscriptions/s/resourceGroups/RG-Images/providers/Microsoft.Compute/galleries/gal/images/Base";

    /// Files round-trip per version, are replaced whole, list back by
    /// version and definition, and the definition id is case-insensitive.
    pub async fn round_trip(ev: &dyn EvidenceStore) {
        let v1 = ImageVersion::new(1, 0, 0);
        let v2 = ImageVersion::new(1, 0, 1);
        assert_eq!(ev.get(DEF, v1, EvidenceFile::Sbom).await.unwrap(), None);
        assert_eq!(ev.versions(DEF).await.unwrap(), vec![]);
        assert_eq!(ev.definitions().await.unwrap(), Vec::<String>::new());
        ev.put(DEF, v1, EvidenceFile::Sbom, b"one").await.unwrap();
        ev.put(DEF, v2, EvidenceFile::Sbom, b"two").await.unwrap();
        ev.put(DEF, v2, EvidenceFile::Sbom, b"two again")
            .await
            .unwrap();
        assert_eq!(
            ev.get(DEF, v1, EvidenceFile::Sbom).await.unwrap().unwrap(),
            b"one"
        );
        assert_eq!(
            ev.get(DEF, v2, EvidenceFile::Sbom).await.unwrap().unwrap(),
            b"two again"
        );
        assert_eq!(ev.get(DEF, v2, EvidenceFile::Findings).await.unwrap(), None);
        assert_eq!(ev.versions(DEF).await.unwrap(), vec![v1, v2]);
        // ARM ids are case-insensitive: the same definition in other case.
        let other_case = DEF
            .replace("RG-Images", "rg-images")
            .replace("Base", "BASE");
        assert_eq!(ev.versions(&other_case).await.unwrap(), vec![v1, v2]);
        assert_eq!(ev.definitions().await.unwrap(), vec![DEF.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_round_trip_per_version_and_list_back() {
        let dir = tempfile::tempdir().unwrap();
        let ev = EvidenceFiles::new(dir.path());
        conformance::round_trip(&ev).await;
        // Only whole files are left behind: no temporary file stays.
        let names: Vec<String> =
            std::fs::read_dir(dir.path().join("evidence/s/rg-images/gal/base/1.0.1"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
        assert_eq!(names, vec!["sbom.spdx.json".to_string()]);
    }

    #[tokio::test]
    async fn an_id_that_is_not_a_definition_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ev = EvidenceFiles::new(dir.path());
        let e = ev
            .put(
                "/subscriptions/s/not-a-gallery",
                ImageVersion::new(1, 0, 0),
                EvidenceFile::Sbom,
                b"x",
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not a gallery image definition id"),
            "{e}"
        );
        let e = ev
            .get(
                "/subscriptions/s/resourceGroups/../providers/Microsoft.Compute/galleries/g/images/i",
                ImageVersion::new(1, 0, 0),
                EvidenceFile::Sbom,
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unusable segment"), "{e}");
        assert!(!dir.path().join("evidence").exists());
    }
}
