//! One run's context: its fixed inputs (template, options, deadline,
//! staging folder, log, cancel), how it fails ([`Fail`]), what it did
//! ([`Provenance`]), and the runner for host tools every stage uses. The
//! stages themselves are in `engine.rs`, capture in `capture.rs`, the
//! distributors in `gallery.rs`; they all read this and none of them
//! each other's internals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::options::{BuildOptions, BUILD_SECONDS};
use super::records::LocalRunState;
use super::sandbox::{run_process, CancelWatch, Ended, LogSink, ProcOutput};
use super::util::tail_lines;
use super::Inner;
use crate::domain::build::FailureCategory;
use crate::domain::template::ImageTemplate;

/// Why a build stopped early.
#[derive(Debug)]
pub(crate) enum Fail {
    Failed {
        category: FailureCategory,
        message: String,
        /// `errorHandling: abort`: keep the staging folder for a look.
        keep: bool,
    },
    Canceled,
}

impl Fail {
    pub fn new(category: FailureCategory, message: impl Into<String>) -> Self {
        Fail::Failed {
            category,
            message: message.into(),
            keep: false,
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(FailureCategory::Internal, e.to_string())
    }
    pub(crate) fn keep(self, keep: bool) -> Self {
        match self {
            Fail::Failed {
                category, message, ..
            } => Fail::Failed {
                category,
                message,
                keep,
            },
            c => c,
        }
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        Fail::internal(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::internal(e)
    }
}

/// What the build did, for the provenance manifest.
#[derive(Debug, Default)]
pub(crate) struct Provenance {
    pub customizers: Vec<serde_json::Value>,
    pub validators: Vec<serde_json::Value>,
    pub faults: Vec<serde_json::Value>,
    pub generalized: Vec<String>,
    /// The source's inventory, taken before any step ran.
    pub base_sbom: Option<crate::domain::evidence::sbom::Sbom>,
    pub started: Option<chrono::DateTime<chrono::Utc>>,
}

pub(crate) struct TemplateRun {
    pub p: Arc<Inner>,
    pub name: String,
    pub template: ImageTemplate,
    pub body: serde_json::Value,
    pub body_sha256: String,
    pub opts: BuildOptions,
    pub log: LogSink,
    pub cancel: CancelWatch,
    pub deadline: Instant,
    pub build_timeout: Duration,
    pub staging: PathBuf,
}

/// How a finished build should be reported.
pub(crate) struct Finished {
    pub state: LocalRunState,
    pub message: String,
    pub kept_staging: Option<String>,
    /// The staging folder to remove once the status is written (scratch
    /// space: its removal is housekeeping, not part of the result).
    pub cleanup: Option<PathBuf>,
}

impl TemplateRun {
    pub fn new(
        p: Arc<Inner>,
        name: &str,
        template: ImageTemplate,
        body: serde_json::Value,
        body_sha256: String,
        cancel: CancelWatch,
    ) -> std::io::Result<Self> {
        let opts = BuildOptions::from_tags(&template.tags);
        let build_timeout = match template
            .tags
            .get(BUILD_SECONDS)
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(s) if s > 0 => Duration::from_secs(s),
            _ => match template.properties.build_timeout_in_minutes {
                None | Some(0) => Duration::from_secs(240 * 60),
                Some(m) => Duration::from_secs(u64::from(m) * 60),
            },
        };
        let log = LogSink::open(&p.log_path(name))?;
        let staging = p.data_dir.join("staging").join(name);
        Ok(TemplateRun {
            p,
            name: name.to_string(),
            template,
            body,
            body_sha256,
            opts,
            log,
            cancel,
            deadline: Instant::now() + build_timeout,
            build_timeout,
            staging,
        })
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.staging.join("root")
    }
    pub(crate) fn work(&self) -> PathBuf {
        self.staging.join("work")
    }
    pub(crate) fn out(&self) -> PathBuf {
        self.staging.join("out")
    }

    /// Runs a host tool for the build (cp, mkfs.ext4, qemu-img, debugfs)
    /// under the build deadline and cancel; a non-zero exit is `internal`.
    pub(crate) async fn tool(&self, what: &str, cmd: Command) -> Result<ProcOutput, Fail> {
        let out = run_process(
            cmd,
            &self.log,
            &format!("[{what}] "),
            self.deadline,
            Some(&self.cancel),
            false,
        )
        .await
        .map_err(|e| Fail::internal(format!("cannot run {what}: {e}")))?;
        match &out.ended {
            Ended::Exited(0) => {
                self.log.line(&format!("[{what}] done"));
                Ok(out)
            }
            Ended::Exited(code) => Err(Fail::internal(format!(
                "{what} exited with {code}: {}",
                tail_lines(&out.tail, 6)
            ))),
            Ended::TimedOut => Err(self.build_timeout_fail(what)),
            Ended::Canceled => Err(Fail::Canceled),
        }
    }

    pub(crate) fn build_timeout_fail(&self, during: &str) -> Fail {
        Fail::new(
            FailureCategory::Timeout,
            format!(
                "the build exceeded its {} limit (buildTimeoutInMinutes) during {during}",
                human(self.build_timeout)
            ),
        )
    }
}

pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}
