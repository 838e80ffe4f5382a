//! Distribution: the local Compute Gallery (image definitions → versions →
//! per-region replicas), managed images and VHD files.
//!
//! ```text
//! gallery/<subscription>/<resource group>/<gallery>/<image>/<version>/
//!     disk.qcow2  manifest.json  packages.txt  template.json  boot/{vmlinuz,initrd.img}
//!     replicas/<region>/<n>.qcow2          hard links of disk.qcow2 (copies across filesystems)
//! images/<managed image id as a folder name>/disk.qcow2 …
//! vhd/<template>/<runOutputName>.vhd      (or the distributor's uri)
//! ```
//!
//! Gallery rows live in the store; a version is claimed (`Creating`) before
//! its files are written, so a version is never published twice: a second
//! template asking for it is refused, the same template finds its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::capture::Captured;
use super::records::{Claim, ManagedImageRow, Records};
use super::run::{Fail, TemplateRun};
use super::util::{normalize_region, now, slug, ts};
use crate::domain::build::FailureCategory;
use crate::domain::gallery::RegionReplication;
use crate::domain::template::{Distributor, GalleryImageRef};
use crate::domain::version::ImageVersion;
use crate::ports::RunOutput;

/// The folder of a gallery version.
pub(crate) fn version_dir(data_dir: &Path, r: &GalleryImageRef, version: ImageVersion) -> PathBuf {
    data_dir
        .join("gallery")
        .join(r.subscription.to_ascii_lowercase())
        .join(r.resource_group.to_ascii_lowercase())
        .join(r.gallery.to_ascii_lowercase())
        .join(r.image.to_ascii_lowercase())
        .join(version.to_string())
}

/// Links `src` at `dest` (a hard link: replicas cost no space), or copies
/// it when linking is impossible (another filesystem).
fn link_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d)?;
    }
    match std::fs::hard_link(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(dest)?;
            std::fs::hard_link(src, dest).or_else(|_| std::fs::copy(src, dest).map(|_| ()))
        }
        Err(_) => std::fs::copy(src, dest).map(|_| ()),
    }
}

/// disk.qcow2, manifest, package list and kernel into `dir`.
fn place_artifact(c: &Captured, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    link_or_copy(&c.qcow2, &dir.join("disk.qcow2"))?;
    for f in [
        "manifest.json",
        "packages.txt",
        super::rebuild::TEMPLATE_FILE,
    ] {
        let src = c.dir.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f))?;
        }
    }
    for (src, name) in [(&c.kernel, "vmlinuz"), (&c.initrd, "initrd.img")] {
        if let Some(src) = src {
            std::fs::create_dir_all(dir.join("boot"))?;
            std::fs::copy(src, dir.join("boot").join(name))?;
        }
    }
    Ok(())
}

/// The regions and replica counts a SharedImage distributor asks for.
fn regions(d: &Distributor, location: &str) -> Vec<(String, u32)> {
    let Distributor::SharedImage {
        target_regions,
        replication_regions,
        ..
    } = d
    else {
        return vec![];
    };
    let mut out: Vec<(String, u32)> = if !target_regions.is_empty() {
        target_regions
            .iter()
            .map(|t| (t.name.clone(), t.replica_count.max(1)))
            .collect()
    } else if !replication_regions.is_empty() {
        replication_regions.iter().map(|r| (r.clone(), 1)).collect()
    } else {
        vec![(location.to_string(), 1)]
    };
    // One entry per region (the last one wins, as a map would).
    let mut seen = BTreeMap::new();
    for (i, (r, _)) in out.iter().enumerate() {
        seen.insert(normalize_region(r), i);
    }
    let keep: Vec<usize> = seen.into_values().collect();
    let mut i = 0;
    out.retain(|_| {
        let k = keep.contains(&i);
        i += 1;
        k
    });
    out
}

/// The version to publish: explicit in `galleryImageId`, else from `versioning`.
fn choose_version(
    records: &Records,
    r: &GalleryImageRef,
    versioning: Option<&serde_json::Value>,
    source_exact: &str,
) -> Result<ImageVersion, Fail> {
    if let Some(v) = &r.version {
        return v
            .parse()
            .map_err(|e| Fail::internal(format!("distribute: {e}")));
    }
    let scheme = versioning
        .and_then(|v| v.get("scheme"))
        .and_then(|s| s.as_str())
        .unwrap_or("Latest");
    if scheme.eq_ignore_ascii_case("Source") {
        let nums: Vec<u32> = source_exact
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('.')
            .map_while(|p| p.parse::<u32>().ok())
            .collect();
        return match nums.as_slice() {
            [a, b, c, ..] => Ok(ImageVersion::new(*a, *b, *c)),
            _ => Err(Fail::internal(format!(
                "distribute: versioning scheme Source needs a source version of three numbers, got `{source_exact}`"
            ))),
        };
    }
    let major = versioning
        .and_then(|v| v.get("major"))
        .and_then(|m| m.as_i64())
        .filter(|m| *m >= 0)
        .map(|m| m as u32);
    let existing = records.versions(&r.definition_id())?;
    let newest = existing
        .iter()
        .map(|v| v.version)
        .filter(|v| major.is_none_or(|m| v.major == m))
        .max();
    Ok(match (newest, major) {
        (Some(v), _) => v.next_patch(),
        (None, Some(m)) => ImageVersion::new(m, 0, 0),
        (None, None) => ImageVersion::new(1, 0, 0),
    })
}

pub(crate) async fn distribute(
    b: &TemplateRun,
    c: &Captured,
    d: &Distributor,
    raw: Option<&serde_json::Value>,
    source_exact: &str,
) -> Result<RunOutput, Fail> {
    let records = &b.p.records;
    let name = d.run_output_name().to_string();
    match d {
        Distributor::SharedImage {
            gallery_image_id,
            exclude_from_latest,
            artifact_tags,
            versioning,
            ..
        } => {
            let r = GalleryImageRef::parse(gallery_image_id).ok_or_else(|| {
                Fail::internal(format!(
                    "distribute {name}: `{gallery_image_id}` is not a gallery image id"
                ))
            })?;
            let version = choose_version(records, &r, versioning.as_ref(), source_exact)?;
            let def = r.definition_id();
            let id = r.version_id(&version.to_string());
            let dir = version_dir(&b.p.data_dir, &r, version);
            records.image_ensure(&def, &r.gallery, &r.image, now())?;
            match records.version_claim(&def, version, &b.name, &dir.display().to_string())? {
                Claim::Taken { template } => {
                    return Err(Fail::internal(format!(
                        "distribute {name}: gallery image version {id} already exists (published by template {template}); a version is never published twice"
                    )))
                }
                Claim::Ours { state } if state == "Succeeded" => {
                    b.log.line(&format!("{id} was already published by this template"));
                    return Ok(output(name, Some(id), None));
                }
                Claim::Ours { .. } | Claim::Claimed => {}
            }
            let end_of_life = raw
                .and_then(|v| v.get("endOfLifeDate"))
                .and_then(|v| v.as_str())
                .and_then(super::util::parse_ts)
                .map(ts);
            let regions = regions(d, &b.template.location);
            let published = (|| -> std::io::Result<Vec<RegionReplication>> {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?; // left by an interrupted publish of ours
                }
                place_artifact(c, &dir)?;
                let mut repl = Vec::new();
                for (region, count) in &regions {
                    let folder = dir.join("replicas").join(normalize_region(region));
                    for n in 1..=*count {
                        link_or_copy(&dir.join("disk.qcow2"), &folder.join(format!("{n}.qcow2")))?;
                    }
                    repl.push(RegionReplication {
                        region: region.clone(),
                        replica_count: *count,
                        state: "Completed".to_string(),
                    });
                }
                Ok(repl)
            })();
            match published {
                Ok(repl) => {
                    records.version_complete(
                        &def,
                        version,
                        now(),
                        *exclude_from_latest,
                        end_of_life.as_deref(),
                        artifact_tags,
                        &repl,
                        "Succeeded",
                    )?;
                    b.log.line(&format!(
                        "published {id}: {}",
                        repl.iter()
                            .map(|r| format!("{} x{}", r.region, r.replica_count))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    Ok(output(name, Some(id), None))
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    records.version_delete(&def, version)?;
                    Err(Fail::new(
                        FailureCategory::Replication,
                        format!("distribute {name}: replicating {id} failed: {e}"),
                    ))
                }
            }
        }
        Distributor::ManagedImage {
            image_id,
            location,
            artifact_tags,
            ..
        } => {
            if let Some(existing) = records.managed_image_get(image_id)? {
                if existing.template != b.name {
                    return Err(Fail::internal(format!(
                        "distribute {name}: managed image {image_id} already exists (made by template {})",
                        existing.template
                    )));
                }
            }
            let dir = b.p.data_dir.join("images").join(slug(image_id));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            place_artifact(c, &dir)?;
            records.managed_image_put(
                &ManagedImageRow {
                    id: image_id.clone(),
                    template: b.name.clone(),
                    path: dir.display().to_string(),
                    created_at: ts(now()),
                },
                location,
                artifact_tags,
            )?;
            Ok(output(name, Some(image_id.clone()), None))
        }
        Distributor::Vhd { uri, .. } => {
            let path = match uri {
                Some(u) => PathBuf::from(u.strip_prefix("file://").unwrap_or(u)),
                None => {
                    b.p.data_dir
                        .join("vhd")
                        .join(&b.name)
                        .join(format!("{name}.vhd"))
                }
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // A fixed-size VHD: the format Azure takes for page-blob disks.
            let mut cmd = Command::new("qemu-img");
            cmd.arg("convert")
                .arg("-O")
                .arg("vpc")
                .arg("-o")
                .arg("subformat=fixed,force_size=on")
                .arg(&c.img)
                .arg(&path);
            b.tool("qemu-img convert (vhd)", cmd).await?;
            Ok(output(name, None, Some(path.display().to_string())))
        }
    }
}

fn output(name: String, artifact_id: Option<String>, artifact_uri: Option<String>) -> RunOutput {
    RunOutput {
        name,
        artifact_id,
        artifact_uri,
        provisioning_state: "Succeeded".to_string(),
    }
}

/// Deletes a version's files and row; a version already gone is fine.
pub(crate) fn delete_version(
    records: &Records,
    definition_id: &str,
    version: ImageVersion,
) -> anyhow::Result<()> {
    if let Some(row) = records.version_get(definition_id, version)? {
        match std::fs::remove_dir_all(&row.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot delete {}: {e}", row.path)),
        }
        records.version_delete(definition_id, version)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::TargetRegion;

    fn shared(target: Vec<TargetRegion>, replication: Vec<String>) -> Distributor {
        Distributor::SharedImage {
            run_output_name: "sig".into(),
            gallery_image_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d".into(),
            target_regions: target,
            replication_regions: replication,
            exclude_from_latest: false,
            artifact_tags: BTreeMap::new(),
            versioning: None,
        }
    }

    #[test]
    fn regions_come_from_target_regions_then_replication_regions_then_location() {
        let tr = |n: &str, c: u32| TargetRegion {
            name: n.into(),
            replica_count: c,
            storage_account_type: None,
        };
        assert_eq!(
            regions(
                &shared(vec![tr("West Europe", 2), tr("eastus", 1)], vec![]),
                "x"
            ),
            vec![("West Europe".to_string(), 2), ("eastus".to_string(), 1)]
        );
        assert_eq!(
            regions(&shared(vec![], vec!["northeurope".into()]), "x"),
            vec![("northeurope".to_string(), 1)]
        );
        assert_eq!(
            regions(&shared(vec![], vec![]), "westus"),
            vec![("westus".to_string(), 1)]
        );
    }
}
