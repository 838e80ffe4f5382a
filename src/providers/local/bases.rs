//! The local base images: root filesystems under marketplace-style
//! names (`publisher:offer:sku` + version), kept as folders under `bases/`,
//! and the resolution of a template's `source` to something a build can copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::process::Command;

use super::records::{BaseRow, Records};
use super::util::{cmp_versions, now, parse_ts, safe_component, slug, ts};
use crate::domain::template::{GalleryImageRef, Source};
use crate::domain::version::ImageVersion;

/// Where a new base version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseFrom {
    /// `mmdebstrap --variant=minbase` of a Debian suite (e.g. `bookworm`) from
    /// `$KILN_DEBIAN_MIRROR` (default `http://deb.debian.org/debian`), with
    /// extra packages; `sources.list` keeps only that mirror so apt works inside.
    Debian { suite: String, include: Vec<String> },
    /// A root filesystem tarball (any compression GNU tar reads).
    Tar(PathBuf),
    /// `/bin/busybox` (busybox-static) plus its applet links and a few
    /// folders: a root made in milliseconds, for tests.
    Busybox,
}

/// A base image version in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseImage {
    /// `publisher:offer:sku`
    pub urn: String,
    pub version: String,
    /// The root folder.
    pub path: PathBuf,
    /// How it was made (kind and arguments).
    pub origin: serde_json::Value,
    pub size_bytes: u64,
    pub imported_at: Option<DateTime<Utc>>,
    pub deprecated: bool,
}

impl From<BaseRow> for BaseImage {
    fn from(b: BaseRow) -> Self {
        BaseImage {
            urn: b.urn,
            version: b.version,
            path: PathBuf::from(b.path),
            origin: serde_json::from_str(&b.origin).unwrap_or(serde_json::Value::Null),
            size_bytes: b.size_bytes,
            imported_at: parse_ts(&b.imported_at),
            deprecated: b.deprecated,
        }
    }
}

pub(crate) const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

pub(crate) fn debian_mirror() -> String {
    std::env::var("KILN_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// Splits and checks `publisher:offer:sku`.
pub(crate) fn parse_urn(urn: &str) -> anyhow::Result<[&str; 3]> {
    let parts: Vec<&str> = urn.split(':').collect();
    match parts.as_slice() {
        [p, o, s] if [p, o, s].iter().all(|x| safe_component(x)) => Ok([p, o, s]),
        _ => bail!("`{urn}` is not a base image name: expected publisher:offer:sku, each 1-128 of A-Z a-z 0-9 . - _"),
    }
}

/// Imports a base: builds the root in a temporary folder, moves it into
/// place, then records it. A failed import leaves nothing behind.
pub(crate) async fn import(
    records: &Records,
    data_dir: &Path,
    urn: &str,
    version: &str,
    from: BaseFrom,
) -> anyhow::Result<BaseImage> {
    let [publisher, offer, sku] = parse_urn(urn)?;
    if !safe_component(version) {
        bail!("`{version}` is not a base image version: use 1-128 of A-Z a-z 0-9 . - _ (e.g. 12.20241201)");
    }
    if records.base_get(urn, version)?.is_some() {
        bail!("base {urn} version {version} is already in the catalog; a base version never changes: import a new version");
    }
    let bases = data_dir.join("bases");
    let tmp = bases.join(format!(".import-{}", uuid::Uuid::new_v4()));
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).with_context(|| format!("Cannot create {}", root.display()))?;
    let result = async {
        let origin = match &from {
            BaseFrom::Debian { suite, include } => {
                debootstrap(&root, suite, include).await?;
                serde_json::json!({"kind": "debian", "suite": suite, "include": include, "mirror": debian_mirror()})
            }
            BaseFrom::Tar(file) => {
                untar(&root, file).await?;
                serde_json::json!({"kind": "tar", "file": file})
            }
            BaseFrom::Busybox => {
                let bin = busybox_root(&root).await?;
                serde_json::json!({"kind": "busybox", "busybox": bin})
            }
        };
        let root2 = root.clone();
        let size = tokio::task::spawn_blocking(move || super::util::tree_size(&root2)).await??;
        let dest_dir = bases.join(publisher).join(offer).join(sku).join(version);
        if dest_dir.exists() {
            // Left over by an import that died before recording: not in the catalog, so replace it.
            std::fs::remove_dir_all(&dest_dir)?;
        }
        std::fs::create_dir_all(&dest_dir)?;
        let dest = dest_dir.join("root");
        std::fs::rename(&root, &dest)
            .with_context(|| format!("Cannot move the new root to {}", dest.display()))?;
        let row = BaseRow {
            urn: urn.to_string(),
            version: version.to_string(),
            path: dest.display().to_string(),
            origin: origin.to_string(),
            size_bytes: size,
            imported_at: ts(now()),
            deprecated: false,
        };
        if !records.base_insert(&row)? {
            let _ = std::fs::remove_dir_all(&dest_dir);
            bail!("base {urn} version {version} was imported concurrently");
        }
        Ok::<_, anyhow::Error>(BaseImage::from(row))
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn run_tool(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("Cannot start {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        bail!("{what} failed ({}):\n{tail}", out.status);
    }
    Ok(())
}

async fn debootstrap(root: &Path, suite: &str, include: &[String]) -> anyhow::Result<()> {
    if !safe_component(suite) {
        bail!("`{suite}` is not a Debian suite name");
    }
    let mirror = debian_mirror();
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase").arg("--quiet");
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(suite).arg(root).arg(&mirror);
    run_tool(cmd, "mmdebstrap").await?;
    // Only the main mirror: a security suite that cannot be reached breaks `apt-get update`.
    let apt = root.join("etc/apt");
    std::fs::write(
        apt.join("sources.list"),
        format!("deb {mirror} {suite} main\n"),
    )?;
    if let Ok(rd) = std::fs::read_dir(apt.join("sources.list.d")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

async fn untar(root: &Path, file: &Path) -> anyhow::Result<()> {
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    let mut cmd = Command::new("tar");
    cmd.arg("--extract")
        .arg("--preserve-permissions")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--file")
        .arg(file)
        .arg("--directory")
        .arg(root);
    run_tool(cmd, "tar").await
}

/// A static busybox and the folders a build needs. Returns the busybox used.
async fn busybox_root(root: &Path) -> anyhow::Result<PathBuf> {
    let bin = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox not found: install busybox-static")?;
    let list = Command::new(&bin)
        .arg("--list")
        .output()
        .await
        .context("Cannot run busybox --list")?;
    for d in [
        "bin", "etc", "tmp", "proc", "dev", "root", "var/log", "var/tmp",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&bin, root.join("bin/busybox"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || !safe_component(applet) {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(root.join("etc/hostname"), "busybox\n")?;
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"kiln busybox\"\nID=busybox\nPRETTY_NAME=\"kiln busybox test root\"\n",
    )?;
    // Like any installed system, the base has an identity; generalization removes it.
    std::fs::write(
        root.join("etc/machine-id"),
        format!("{}\n", uuid::Uuid::new_v4().simple()),
    )?;
    Ok(bin)
}

/// What a template's source resolved to.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedSource {
    pub from: SourceData,
    /// The exact version (`PlatformImage`) or resource id (gallery and managed images).
    pub exact: String,
    /// For the manifest: type and name of the line.
    pub describe: serde_json::Value,
    /// When that exact version was made (imported, published): the
    /// reproducible build's `SOURCE_DATE_EPOCH` (see `reproducible.rs`).
    pub made_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub(crate) enum SourceData {
    /// A root folder to copy.
    Root(PathBuf),
    /// A captured qcow2 disk (a gallery version or managed image) to unpack.
    Disk(PathBuf),
}

/// Newest base version of `urn` (numeric ordering), deprecated ones last.
pub(crate) fn newest_base(records: &Records, urn: &str) -> anyhow::Result<Option<BaseRow>> {
    let mut all = records.bases(Some(urn))?;
    all.sort_by(|a, b| {
        (!a.deprecated)
            .cmp(&!b.deprecated)
            .then_with(|| cmp_versions(&a.version, &b.version))
    });
    Ok(all.pop())
}

/// The newest published version of a definition that is not excluded from latest.
pub(crate) fn latest_version(
    records: &Records,
    definition_id: &str,
) -> anyhow::Result<Option<super::records::VersionRow>> {
    Ok(records
        .versions(definition_id)?
        .into_iter()
        .filter(|v| v.provisioning_state == "Succeeded" && !v.exclude_from_latest)
        .max_by_key(|v| v.version))
}

/// Finds the data behind a template's source; errors read as `source …` messages.
pub(crate) fn resolve(records: &Records, source: &Source) -> anyhow::Result<ResolvedSource> {
    match source {
        Source::PlatformImage {
            publisher,
            offer,
            sku,
            version,
            ..
        } => {
            let urn = format!("{publisher}:{offer}:{sku}");
            let row = if version.eq_ignore_ascii_case("latest") {
                newest_base(records, &urn)?.with_context(|| {
                    format!("base image {urn} is not in the local catalog (kiln base import)")
                })?
            } else {
                records.base_get(&urn, version)?.with_context(|| {
                    format!("base image {urn} version {version} is not in the local catalog")
                })?
            };
            Ok(ResolvedSource {
                from: SourceData::Root(PathBuf::from(&row.path)),
                exact: row.version.clone(),
                describe: serde_json::json!({"type": "PlatformImage", "urn": urn, "version": version, "exactVersion": row.version}),
                made_at: parse_ts(&row.imported_at),
            })
        }
        Source::SharedImageVersion {
            image_version_id, ..
        } => {
            let r = GalleryImageRef::parse(image_version_id).with_context(|| {
                format!("`{image_version_id}` is not a gallery image version id")
            })?;
            let def = r.definition_id();
            let row = match r.version.as_deref() {
                None => bail!(
                    "`{image_version_id}` names no version (…/versions/1.2.3 or …/versions/latest)"
                ),
                Some(v) if v.eq_ignore_ascii_case("latest") => latest_version(records, &def)?
                    .with_context(|| format!("gallery image {def} has no published version"))?,
                Some(v) => {
                    let v: ImageVersion = v.parse()?;
                    records
                        .version_get(&def, v)?
                        .filter(|r| r.provisioning_state == "Succeeded")
                        .with_context(|| {
                            format!("gallery image version {def}/versions/{v} does not exist")
                        })?
                }
            };
            Ok(ResolvedSource {
                from: SourceData::Disk(Path::new(&row.path).join("disk.qcow2")),
                exact: row.id(),
                describe: serde_json::json!({"type": "SharedImageVersion", "imageVersionId": image_version_id, "exactVersion": row.id()}),
                made_at: row.published_at.as_deref().and_then(parse_ts),
            })
        }
        Source::ManagedImage { image_id } => {
            let row = records
                .managed_image_get(image_id)?
                .with_context(|| format!("managed image {image_id} does not exist locally (made by a ManagedImage distributor)"))?;
            Ok(ResolvedSource {
                from: SourceData::Disk(Path::new(&row.path).join("disk.qcow2")),
                exact: row.id.clone(),
                describe: serde_json::json!({"type": "ManagedImage", "imageId": image_id, "folder": slug(&row.id)}),
                made_at: parse_ts(&row.created_at),
            })
        }
    }
}
