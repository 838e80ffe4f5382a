//! Capture: the staging root becomes an ext4 filesystem image (`mkfs.ext4 -d`,
//! no mount needed) and a qcow2 (`qemu-img convert`), each with its sha256;
//! the kernel and initrd are kept beside them for boot tests; the package
//! list and a provenance manifest complete the artifact.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::bases::ResolvedSource;
use super::inventory;
use super::reproducible;
use super::run::{Fail, Provenance, TemplateRun};
use super::util::{cmp_versions, now, resolve_inside, sha256_file, tree_size, ts};
use crate::domain::evidence::facts::{CustomizerFact, Digest, RunFacts};
use crate::domain::evidence::sbom::PlacedFile;

pub(crate) const FS_LABEL: &str = "kiln-root";
const MIB: u64 = 1 << 20;

/// The captured artifact in staging/<template>/out.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub dir: PathBuf,
    pub img: PathBuf,
    pub qcow2: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// Filesystem size for `content` bytes: 1.3x plus 16 MiB, in whole MiB.
/// The 30% covers ext4's own metadata (inode tables, journal) and leaves a
/// booted test system room to write; an image deployed for real is grown to
/// its OS disk size anyway. Everything downstream (hash, qcow2, boot copy)
/// scales with this size, so it stays tight.
pub(crate) fn image_size(content: u64) -> u64 {
    let want = content + content * 3 / 10 + 16 * MIB;
    want.div_ceil(MIB) * MIB
}

/// The newest `/boot/vmlinuz-*` of the image and its initrd, if any; only
/// regular files (never a symlink, which the host would resolve on its side).
pub(crate) fn find_kernel(root: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let boot = resolve_inside(root, "/boot/x", false)
        .ok()?
        .parent()?
        .to_path_buf();
    let regular = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| m.is_file())
            .unwrap_or(false)
    };
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .filter(|v| regular(&boot.join(format!("vmlinuz-{v}"))))
        .collect();
    versions.sort_by(|a, b| cmp_versions(a, b));
    let v = versions.pop()?;
    let initrd = boot.join(format!("initrd.img-{v}"));
    Some((
        boot.join(format!("vmlinuz-{v}")),
        regular(&initrd).then_some(initrd),
    ))
}

pub(crate) async fn tool_version(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output().await {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".to_string(),
    }
}

pub(crate) async fn tool_versions() -> serde_json::Value {
    let (mkfs, qemu_img, debugfs) = tokio::join!(
        tool_version("mkfs.ext4", "-V"),
        tool_version("qemu-img", "--version"),
        tool_version("debugfs", "-V"),
    );
    serde_json::json!({
        "kiln": env!("CARGO_PKG_VERSION"),
        // Steps run in kiln's own namespace sandbox (see namespace.rs).
        "sandbox": "kiln namespaces + pivot_root",
        "mkfs.ext4": mkfs,
        "qemu-img": qemu_img,
        "debugfs": debugfs,
    })
}

async fn hash(path: PathBuf) -> Result<String, Fail> {
    tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(Fail::internal)?
        .map_err(Fail::internal)
}

pub(crate) async fn capture(
    b: &TemplateRun,
    source: &ResolvedSource,
    prov: &Provenance,
) -> Result<Captured, Fail> {
    let root = b.staging.join("root");
    let dir = b.staging.join("out");
    let img = dir.join("disk.img");
    let qcow2 = dir.join("disk.qcow2");

    // The image's inventory, read from its package database before the
    // times are clamped (reading changes access times).
    let files: Vec<PlacedFile> = prov
        .customizers
        .iter()
        .filter(|c| c["type"] == "File")
        .filter_map(|c| {
            Some(PlacedFile {
                path: c["destination"].as_str()?.to_string(),
                sha256: c["sha256"].as_str()?.to_string(),
            })
        })
        .collect();
    let r = root.clone();
    let subject = b.name.clone();
    let started = std::time::Instant::now();
    let sbom =
        tokio::task::spawn_blocking(move || inventory::read_sbom(&r, &subject, files, now()))
            .await
            .map_err(Fail::internal)?
            .map_err(|e| Fail::internal(format!("capture: the image's inventory: {e:#}")))?;
    b.log.line(&format!(
        "evidence: inventory of {} packages in {} ms",
        sbom.packages.len(),
        started.elapsed().as_millis()
    ));
    let packages: Option<String> = (!sbom.packages.is_empty()).then(|| {
        sbom.packages
            .iter()
            .map(|p| format!("{}\t{}\n", p.name, p.version))
            .collect()
    });
    let r = root.clone();
    let content = tokio::task::spawn_blocking(move || tree_size(&r))
        .await
        .map_err(Fail::internal)??;
    let size = image_size(content);
    b.log.line(&format!(
        "capture: {} MiB of content, ext4 image of {} MiB",
        content.div_ceil(MIB),
        size / MIB
    ));
    // Reproducible capture (see reproducible.rs): clamped times, a UUID
    // and hash seed from the inputs, fixed superblock and change times.
    let epoch = reproducible::source_date_epoch(source.made_at);
    // From what went into the image, not the template body: that carries
    // the build's id in its tags, different on every build.
    let steps = serde_json::to_vec(&prov.customizers).map_err(Fail::internal)?;
    let fs_uuid = reproducible::filesystem_uuid(&super::util::sha256_hex(&steps), &source.exact);
    let r = root.clone();
    let paths = tokio::task::spawn_blocking(move || reproducible::clamp_times(&r, epoch))
        .await
        .map_err(Fail::internal)??;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.arg("-q")
        .arg("-F")
        .arg("-d")
        .arg(&root)
        .arg("-L")
        .arg(FS_LABEL)
        .arg("-U")
        .arg(&fs_uuid)
        .arg("-E")
        .arg(format!("hash_seed={fs_uuid}"))
        .arg(&img)
        .arg(format!("{}M", size / MIB))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    b.tool("mkfs.ext4", mkfs).await?;
    let (script, unquotable) = reproducible::ctime_script(&paths, epoch);
    let script_file = dir.join("ctimes.debugfs");
    std::fs::write(&script_file, script)?;
    // debugfs echoes every command on stdout (thousands of lines, not for
    // the build log) and reports a failed one on stderr with exit code 0.
    let mut debugfs = Command::new("debugfs");
    debugfs
        .arg("-w")
        .arg("-f")
        .arg(&script_file)
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout_at(b.deadline, debugfs.output())
        .await
        .map_err(|_| b.build_timeout_fail("setting change times"))?
        .map_err(|e| Fail::internal(format!("cannot run debugfs: {e}")))?;
    let _ = std::fs::remove_file(&script_file);
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !out.status.success() {
        return Err(Fail::internal(format!(
            "debugfs exited with {}: {}",
            out.status,
            complaints.join(" | ")
        )));
    }
    if !unquotable.is_empty() || !complaints.is_empty() {
        b.log.line(&format!(
            "capture: {} paths keep their change time ({}), so the disk may not reproduce",
            unquotable.len() + complaints.len(),
            complaints
                .first()
                .map_or("debugfs cannot quote their names", String::as_str)
        ));
    }
    let mut convert = Command::new("qemu-img");
    convert
        .arg("convert")
        .arg("-O")
        .arg("qcow2")
        .arg(&img)
        .arg(&qcow2);
    // The raw image is hashed while qemu-img converts it (both only read it).
    let (img_sha, converted) = tokio::join!(hash(img.clone()), b.tool("qemu-img convert", convert));
    converted?;
    let img_sha = img_sha?;
    let qcow2_sha = hash(qcow2.clone()).await?;
    b.log.line("capture: disk.img and disk.qcow2 hashed");
    let qcow2_size = std::fs::metadata(&qcow2)?.len();

    let (kernel, initrd) = match find_kernel(&root) {
        Some((k, i)) => {
            let boot = dir.join("boot");
            std::fs::create_dir_all(&boot)?;
            std::fs::copy(&k, boot.join("vmlinuz"))?;
            let initrd = match i {
                Some(i) => {
                    std::fs::copy(&i, boot.join("initrd.img"))?;
                    Some(boot.join("initrd.img"))
                }
                None => None,
            };
            let kname = k.file_name().map(|n| n.to_string_lossy().to_string());
            (Some((boot.join("vmlinuz"), kname)), initrd)
        }
        None => (None, None),
    };

    let package_count = packages
        .as_ref()
        .map(|p| p.lines().filter(|l| !l.is_empty()).count());
    if let Some(p) = &packages {
        std::fs::write(dir.join("packages.txt"), p)?;
    }
    let tools = b.p.tools().await;
    let kiln_tags: serde_json::Map<String, serde_json::Value> = b
        .template
        .tags
        .iter()
        .filter(|(k, _)| k.starts_with("kiln."))
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let manifest = serde_json::json!({
        "kind": "kiln.local.image",
        "template": b.name,
        "templateSha256": b.body_sha256,
        "location": b.template.location,
        "tags": kiln_tags,
        "source": source.describe,
        "sourceExactVersion": source.exact,
        "customizers": prov.customizers,
        "validators": prov.validators,
        "faultsInjected": prov.faults,
        "generalized": prov.generalized,
        "filesystem": {"type": "ext4", "label": FS_LABEL, "uuid": fs_uuid, "sizeBytes": size, "contentBytes": content},
        "sourceDateEpoch": epoch,
        "artifacts": {
            "disk.img": {"format": "raw", "sha256": img_sha, "sizeBytes": size},
            "disk.qcow2": {"format": "qcow2", "sha256": qcow2_sha, "sizeBytes": qcow2_size},
        },
        "kernel": kernel.as_ref().and_then(|(_, n)| n.clone()),
        "packages": match package_count {
            Some(n) => serde_json::json!({"manager": "dpkg", "count": n, "file": "packages.txt"}),
            None => serde_json::json!({"manager": null, "count": 0}),
        },
        "tools": tools,
        "builtAt": ts(now()),
    });
    // The exact body, kept with the version for `kiln verify --rebuild`,
    // unless it carries a credential (a SAS in a scriptUri, a key): kiln
    // keeps no secret in a file, and a redacted body would not be the one
    // the provenance signs. Readable by kiln's user only all the same.
    let secrets = b
        .body
        .as_object()
        .map(|o| crate::domain::pipeline::secrets::scan(o, None))
        .unwrap_or_default();
    if secrets.is_empty() {
        super::rebuild::write_private(
            &dir.join(super::rebuild::TEMPLATE_FILE),
            &serde_json::to_vec_pretty(&b.body).map_err(Fail::internal)?,
        )?;
    } else {
        let at: Vec<&str> = secrets.iter().map(|h| h.path.as_str()).collect();
        b.log.line(&format!(
            "template.json not kept: the template carries credentials ({}), so this version cannot be rebuilt by `kiln verify --rebuild`",
            at.join(", ")
        ));
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).map_err(Fail::internal)?,
    )?;
    b.p.records
        .run_set_manifest(&b.name, &b.p.instance_id, &manifest.to_string())?;
    // What the app's evidence step reads (`run_facts`), kept outside the
    // staging folder until the template is deleted.
    let facts = RunFacts {
        sbom,
        base_sbom: prov.base_sbom.clone(),
        disks: vec![Digest {
            name: "disk.qcow2".into(),
            sha256: qcow2_sha.clone(),
        }],
        template_sha256: b.body_sha256.clone(),
        source: source.describe.to_string(),
        source_exact: source.exact.clone(),
        customizers: prov
            .customizers
            .iter()
            .map(|c| CustomizerFact {
                name: c["name"].as_str().unwrap_or("").to_string(),
                kind: c["type"].as_str().unwrap_or("").to_string(),
                sha256: c["sha256"].as_str().map(str::to_string),
                uri: c["scriptUri"]
                    .as_str()
                    .or(c["sourceUri"].as_str())
                    .map(str::to_string),
                destination: c["destination"].as_str().map(str::to_string),
            })
            .collect(),
        started: prov.started.unwrap_or_else(now),
        finished: now(),
    };
    crate::providers::evidence_files::write_atomic(
        &facts_path(&b.p.data_dir, &b.name),
        &serde_json::to_vec(&facts).map_err(Fail::internal)?,
    )?;
    b.log.line(&format!(
        "captured: disk.img sha256 {img_sha}, disk.qcow2 sha256 {qcow2_sha}"
    ));
    Ok(Captured {
        dir,
        img,
        qcow2,
        kernel: kernel.map(|(p, _)| p),
        initrd,
    })
}

/// Where a template's run facts are kept.
pub(crate) fn facts_path(data_dir: &Path, template: &str) -> PathBuf {
    data_dir
        .join("facts")
        .join(format!("{}.json", super::util::slug(template)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_leave_headroom_in_whole_mib() {
        assert_eq!(image_size(0), 16 * MIB);
        assert_eq!(image_size(100 * MIB), 146 * MIB);
        assert_eq!(image_size(1) % MIB, 0);
    }

    #[test]
    fn kernels_are_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        assert!(find_kernel(dir.path()).is_none());
        std::fs::write(boot.join("vmlinuz-6.1.0-9-amd64"), "k").unwrap();
        std::fs::write(boot.join("vmlinuz-6.1.0-10-amd64"), "k").unwrap();
        std::fs::write(boot.join("initrd.img-6.1.0-10-amd64"), "i").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", boot.join("vmlinuz-9.9.9")).unwrap();
        let (k, i) = find_kernel(dir.path()).unwrap();
        assert!(k.ends_with("vmlinuz-6.1.0-10-amd64"));
        assert!(i.unwrap().ends_with("initrd.img-6.1.0-10-amd64"));
    }
}
