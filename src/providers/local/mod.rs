//! The local provider: real golden images built on one machine.
//!
//! It implements the app's ports ([`ImageBuilder`], [`Gallery`],
//! [`BaseCatalog`], [`Inventory`]) with base root filesystems from local
//! base images, customizers run in a namespace sandbox as AIB's build user, generalization, capture
//! to ext4/qcow2, a local Compute Gallery with regional replicas, and a boot
//! test under QEMU. It reports in AIB's vocabulary (`runState`,
//! `runSubState`, `message`, run outputs), so the build state machine cannot
//! tell it from Azure. See `docs/local-provider.md`.
//!
//! Durable state: rows in the shared SQLite store (`local_*` tables) and
//! files under `data_dir`:
//!
//! ```text
//! bases/<publisher>/<offer>/<sku>/<version>/root/   base root filesystems
//! staging/<template>/{root,work,out}/                one build (AIB's staging resource group)
//! gallery/<sub>/<rg>/<gallery>/<image>/<version>/    published versions and replicas
//! images/<managed image>/   vhd/<template>/         other distributor outputs
//! logs/<template>.log                                the customization log
//! ```
//!
//! This file is the provider type, its configuration and its lifecycle
//! (start-up sweep, tool check, waiting on a run). Beside it:
//!
//! ```text
//! image_builder.rs  the `ImageBuilder` port (put, run, status, cancel, delete)
//! other_ports.rs  the `Gallery`, `BaseCatalog` and `Inventory` ports
//! steps.rs        one customization step in the sandbox
//! tasks.rs        the registry of build tasks this process runs (cancel, wait, orphans)
//! run.rs          one run's context       engine.rs   one build, start to end
//! check.rs        what cannot be built    options.rs  per-build options from tags
//! bases.rs        base root filesystems   base_ops.rs  `kiln base` import/list/deprecate
//! fetch.rs        scriptUri/sourceUri     sandbox.rs / namespace.rs / build_user.rs  running steps
//! place.rs        files into the image (File customizer, step scripts)
//! generalize.rs   deprovisioning          capture.rs  ext4/qcow2 capture and provenance
//! gallery.rs      the local gallery       vm.rs       boot tests under QEMU
//! vm_ops.rs       run details, `kiln vm` run/create/list/delete
//! records/        the SQLite rows, one file per table family
//! faults.rs       test hooks              util.rs     small helpers
//! tests/          end-to-end tests by topic, fixtures in tests/mod.rs
//! ```

mod base_ops;
mod bases;
mod build_user;
mod capture;
mod check;
mod engine;
mod faults;
mod fetch;
mod gallery;
mod generalize;
mod image_builder;
mod inventory;
mod namespace;
mod options;
mod other_ports;
mod place;
mod rebuild;
mod records;
mod reproducible;
mod run;
mod sandbox;
pub mod signing;
mod steps;
mod tasks;
mod util;
mod vm;
mod vm_ops;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::domain::gallery::GalleryVersion;
use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::ports::{ImageBuilder, ProviderError, RunState, RunStatus, RunSubState, TemplateStatus};
use crate::store::Db;
use anyhow::{bail, Context};

pub use bases::{BaseFrom, BaseImage};
pub use faults::{FaultKind, FaultSpec, Faults};
pub(crate) use util::sha256_file;
pub use vm::{BootReport, VmRecord};
pub use vm_ops::RunDetails;

use records::{Records, RunRow};
use tasks::Tasks;
use util::{now, parse_ts};

/// What a host tool is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolNeed {
    /// Any build: copy, capture and read images.
    Build,
    /// Boot tests and `kiln vm run`.
    Boot,
    /// `kiln base import --debian`.
    DebianImport,
    /// `kiln base import --busybox`.
    BusyboxImport,
}

impl ToolNeed {
    /// (tool, Debian package).
    fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ToolNeed::Build => &[
                ("mkfs.ext4", "e2fsprogs"),
                ("debugfs", "e2fsprogs"),
                ("qemu-img", "qemu-utils"),
            ],
            ToolNeed::Boot => &[("qemu-system-x86_64", "qemu-system-x86")],
            ToolNeed::DebianImport => &[("mmdebstrap", "mmdebstrap")],
            ToolNeed::BusyboxImport => &[("busybox", "busybox-static")],
        }
    }
}

/// Whether boot tests may use KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvmMode {
    /// KVM when a short probe shows guests run; TCG otherwise.
    #[default]
    Auto,
    /// Always TCG.
    Off,
}

pub struct LocalConfig {
    /// Root of everything the provider writes (bases, staging, gallery, logs).
    pub data_dir: PathBuf,
    pub db: Db,
    /// Unique per process start: runs recorded by another instance whose
    /// process is gone are reported `Failed` (`orphaned: …`).
    pub instance_id: String,
    pub kvm: KvmMode,
    /// Test hooks (`Faults::from_env()` reads `KILN_LOCAL_FAULTS`).
    pub faults: Faults,
}

/// A local gallery version with where its files are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedVersion {
    pub id: String,
    pub version: GalleryVersion,
    /// The template run that published it.
    pub template: String,
    pub path: PathBuf,
    pub disk: PathBuf,
    pub manifest: Option<serde_json::Value>,
}

/// The failure category a run's message starts with (`customizer: …`); one
/// reading of messages for every provider lives in the domain.
pub use crate::domain::failure::classify;

/// The inventory (SBOM) of the root file system at `root`, read the way a
/// build reads its base and its image: dpkg's database, each package's
/// copyright file, the os-release; no placed files. `subject` names it.
/// Blocking. Public for `benches/evidence.rs`.
pub fn inventory_of(
    root: &Path,
    subject: &str,
) -> anyhow::Result<crate::domain::evidence::sbom::Sbom> {
    inventory::read_sbom(root, subject, Vec::new(), now())
}

pub(crate) struct Inner {
    pub data_dir: PathBuf,
    pub records: Records,
    pub instance_id: String,
    pub kvm: KvmMode,
    pub faults: Faults,
    pub http: reqwest::Client,
    pid: u32,
    pid_start: String,
    tasks: Tasks,
    pub kvm_ok: tokio::sync::Mutex<Option<bool>>,
    tools: tokio::sync::OnceCell<serde_json::Value>,
}

impl Inner {
    pub fn log_path(&self, template: &str) -> PathBuf {
        self.data_dir.join("logs").join(format!("{template}.log"))
    }

    pub async fn tools(&self) -> serde_json::Value {
        self.tools.get_or_init(capture::tool_versions).await.clone()
    }

    fn has_task(&self, name: &str) -> bool {
        self.tasks.has(name)
    }

    /// An active run nobody is running any more: this instance has no task
    /// for it, or another instance's process is gone. Another live process
    /// (a second kiln sharing the store) is left alone.
    fn orphan_reason(&self, run: &RunRow) -> Option<String> {
        if !run.is_active() {
            return None;
        }
        if run.instance_id == self.instance_id {
            return (!self.has_task(&run.template)).then(|| {
                "orphaned: the build task of this process ended without reporting a result"
                    .to_string()
            });
        }
        if run.pid != self.pid && util::process_alive(run.pid, &run.pid_start) {
            return None;
        }
        Some(format!(
            "orphaned: the process running this build exited (instance {}, pid {}) before it finished",
            run.instance_id, run.pid
        ))
    }
}

#[derive(Clone)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

fn perr(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::internal(e)
}

fn status_of(run: &RunRow) -> RunStatus {
    RunStatus {
        run_state: run.run_state.into(),
        run_sub_state: run.run_sub_state.as_deref().map(RunSubState::parse),
        message: run.message.clone(),
        start_time: parse_ts(&run.start_time),
        end_time: run.end_time.as_deref().and_then(parse_ts),
    }
}

impl LocalProvider {
    pub fn new(cfg: LocalConfig) -> anyhow::Result<Self> {
        for d in ["bases", "staging", "gallery", "logs", "tmp"] {
            let p = cfg.data_dir.join(d);
            std::fs::create_dir_all(&p)
                .with_context(|| format!("Cannot create {}", p.display()))?;
        }
        let pid = std::process::id();
        let provider = Self {
            inner: Arc::new(Inner {
                data_dir: cfg.data_dir,
                records: Records::new(cfg.db),
                instance_id: cfg.instance_id,
                kvm: cfg.kvm,
                faults: cfg.faults,
                http: fetch::http_client(),
                pid,
                pid_start: util::process_start(pid).unwrap_or_default(),
                tasks: Tasks::default(),
                kvm_ok: tokio::sync::Mutex::new(None),
                tools: tokio::sync::OnceCell::new(),
            }),
        };
        provider.sweep_staging();
        Ok(provider)
    }

    /// Removes staging folders nobody needs: runs that ended (and did not
    /// keep theirs for `abort`) whose process exited before cleaning up.
    fn sweep_staging(&self) {
        let Ok(dirs) = std::fs::read_dir(self.inner.data_dir.join("staging")) else {
            return;
        };
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            let stale = match self.inner.records.run_get(&name) {
                Ok(Some(run)) => !run.is_active() && run.staging.is_none(),
                Ok(None) => true,
                Err(_) => false,
            };
            if stale {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }

    /// The host tools that `needs` call for and are not on `PATH` (or the
    /// sbin folders), each as `tool (Debian package P)`, for a start-up
    /// error of one line per tool.
    pub fn missing_tools(needs: &[ToolNeed]) -> Vec<String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        needs
            .iter()
            .flat_map(|n| n.tools())
            .filter(|(tool, _)| seen.insert(*tool))
            .filter(|(tool, _)| !dirs.iter().any(|d| d.join(tool).is_file()))
            .map(|(tool, package)| format!("{tool} (Debian package {package})"))
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The customization log of a template's run (`logs/<template>.log`).
    pub fn log_path(&self, template: &str) -> PathBuf {
        self.inner.log_path(template)
    }

    // ---- runs ----

    /// Waits until a run ends (or `timeout`), then returns its status.
    /// Wakes at once for runs of this process; polls the store for others.
    pub async fn wait_run(&self, name: &str, timeout: Duration) -> anyhow::Result<RunStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(mut progress) = self.inner.tasks.progress(name) {
                let _ = tokio::time::timeout_at(deadline, progress.status_written()).await;
            }
            match self.status(name).await? {
                TemplateStatus::Missing => bail!("template {name} does not exist"),
                TemplateStatus::NotRun
                | TemplateStatus::Provisioning
                | TemplateStatus::Deleting
                | TemplateStatus::ProvisioningFailed { .. } => {
                    bail!("template {name} has not run")
                }
                TemplateStatus::Run(s)
                    if !matches!(s.run_state, RunState::Running | RunState::Canceling) =>
                {
                    return Ok(s)
                }
                TemplateStatus::Run(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "template {name} is still running after {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn mark_orphan_if_needed(&self, run: &RunRow) -> anyhow::Result<()> {
        if let Some(reason) = self.inner.orphan_reason(run) {
            if self
                .inner
                .records
                .run_orphan(&run.template, &run.instance_id, &reason, now())?
            {
                tracing::warn!(template = %run.template, "{reason}");
                let _ = std::fs::remove_dir_all(
                    self.inner.data_dir.join("staging").join(&run.template),
                );
            }
        }
        Ok(())
    }

    // ---- gallery ----

    /// Image definition ids of the local gallery.
    pub async fn gallery_images(&self) -> anyhow::Result<Vec<String>> {
        self.inner.records.images()
    }

    /// A version by id (`…/versions/1.2.3` or `…/versions/latest`).
    pub async fn gallery_version(
        &self,
        version_id: &str,
    ) -> anyhow::Result<Option<PublishedVersion>> {
        let r = GalleryImageRef::parse(version_id)
            .with_context(|| format!("`{version_id}` is not a gallery image version id"))?;
        let def = r.definition_id();
        let row = match r.version.as_deref() {
            None => bail!("`{version_id}` names no version"),
            Some(v) if v.eq_ignore_ascii_case("latest") => {
                bases::latest_version(&self.inner.records, &def)?
            }
            Some(v) => self
                .inner
                .records
                .version_get(&def, v.parse::<ImageVersion>()?)?,
        };
        Ok(row.map(|row| {
            let path = PathBuf::from(&row.path);
            PublishedVersion {
                id: row.id(),
                version: row.to_gallery_version(),
                template: row.template.clone(),
                disk: path.join("disk.qcow2"),
                manifest: std::fs::read(path.join("manifest.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok()),
                path,
            }
        }))
    }
}

#[cfg(test)]
mod tests;
