//! What `kiln local` shows of runs and VMs beyond the ports: a run's
//! details, booting a published version, and the records of VM consumers.
//! The boot itself (QEMU, the check script) is in `vm.rs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::util::now;
use super::vm::{self, BootReport, VmRecord};
use super::{bases, status_of, util, LocalProvider};
use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::ports::{ImageBuilder, RunStatus, TemplateStatus};

/// A run as the CLI and API show it (more than AIB's `lastRunStatus`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    pub template: String,
    pub status: RunStatus,
    /// The exact source version (`PlatformImage`) or resource id used.
    pub source_exact_version: Option<String>,
    /// The staging folder kept by `errorHandling: abort`.
    pub staging_kept: Option<PathBuf>,
    pub log_path: PathBuf,
    /// The provenance manifest, once the image was captured.
    pub manifest: Option<serde_json::Value>,
    pub instance_id: String,
}

impl LocalProvider {
    pub async fn run_details(&self, template: &str) -> anyhow::Result<Option<RunDetails>> {
        // Through status() so an orphan is reported as such.
        if !matches!(self.status(template).await?, TemplateStatus::Run(_)) {
            return Ok(None);
        }
        let Some(run) = self.inner.records.run_get(template)? else {
            return Ok(None);
        };
        Ok(Some(RunDetails {
            template: template.to_string(),
            status: status_of(&run),
            source_exact_version: run.source_version.clone(),
            staging_kept: run.staging.as_ref().map(PathBuf::from),
            log_path: self.log_path(template),
            manifest: run
                .manifest
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            instance_id: run.instance_id.clone(),
        }))
    }

    /// Boots a published version under QEMU and runs `check` (shell) as init.
    pub async fn vm_run(
        &self,
        version_id: &str,
        check: &str,
        timeout: Duration,
    ) -> anyhow::Result<BootReport> {
        let v = self
            .gallery_version(version_id)
            .await?
            .with_context(|| format!("gallery image version {version_id} does not exist"))?;
        let (disk, kernel, initrd) = vm::artifact_files(&v.path);
        let Some(kernel) = kernel else {
            bail!(
                "image version {} has no kernel: its base had no /boot/vmlinuz-* (import a Debian base with --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv to boot it)",
                v.id
            );
        };
        vm::boot(
            &self.inner,
            &disk,
            &kernel,
            initrd.as_deref(),
            check,
            timeout,
            None,
        )
        .await
        .map_err(|e| match e {
            vm::BootError::Canceled => anyhow::anyhow!("boot canceled"),
            vm::BootError::Other(e) => e,
        })
    }

    /// Records a consumer of an image version (or of a definition's latest).
    /// The same name with the same image is fine; with another image it is an error.
    pub async fn vm_create(&self, image_version_id: &str, name: &str) -> anyhow::Result<VmRecord> {
        if !util::safe_component(name) {
            bail!("`{name}` is not a VM name (1-128 of A-Z a-z 0-9 . - _)");
        }
        let r = GalleryImageRef::parse(image_version_id)
            .with_context(|| format!("`{image_version_id}` is not a gallery image (version) id"))?;
        let reference = match r.version.as_deref() {
            Some(v) if !v.eq_ignore_ascii_case("latest") => {
                let v: ImageVersion = v.parse()?;
                self.inner
                    .records
                    .version_get(&r.definition_id(), v)?
                    .filter(|row| row.provisioning_state == "Succeeded")
                    .with_context(|| {
                        format!("gallery image version {image_version_id} does not exist")
                    })?
                    .id()
            }
            _ => {
                let def = r.definition_id();
                bases::latest_version(&self.inner.records, &def)?
                    .with_context(|| format!("gallery image {def} has no version to run"))?;
                def
            }
        };
        match self.inner.records.vm_insert(name, &reference, now())? {
            None => {}
            Some((existing, _)) if existing.eq_ignore_ascii_case(&reference) => {}
            Some((existing, _)) => bail!("VM {name} already exists with image {existing}"),
        }
        self.vm_list()
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .context("VM record vanished")
    }

    pub async fn vm_list(&self) -> anyhow::Result<Vec<VmRecord>> {
        Ok(self
            .inner
            .records
            .vms()?
            .into_iter()
            .map(|(name, image_reference, created_at)| VmRecord {
                name,
                image_reference,
                created_at,
            })
            .collect())
    }

    /// Removes a consumer record; true when it existed.
    pub async fn vm_delete(&self, name: &str) -> anyhow::Result<bool> {
        self.inner.records.vm_delete(name)
    }
}
