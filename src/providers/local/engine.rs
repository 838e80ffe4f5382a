//! One build, start to end: the local analog of an AIB run.
//!
//! ```text
//! Building      resolve the source, copy it to staging/<template>/root
//! Customizing   AIB's build user made, injected fault steps (test hooks), then
//!               Shell and File customizers as that user
//! Validating    inVMValidations, build user removed, generalize, capture (ext4 + qcow2 + sha256 +
//!               packages + manifest), boot test (kiln.bootTest.check)
//! Distributing  SharedImage (local gallery, replicas per region), ManagedImage, VHD
//! ```
//!
//! Each state change is written to the store before the work it names, so
//! `status` reads exactly where a build is. A failure ends the run `Failed`
//! with a message `<category>: <what>: <last lines>`; the category prefix is
//! what [`super::classify`] reads. The run's context (inputs, `Fail`,
//! `Provenance`, the host-tool runner) is in `run.rs`; putting files into the
//! image (File customizer uploads, step scripts) is in `place.rs`.

use tokio::process::Command;
use tokio::time::Instant;

use super::bases::{self, SourceData};
use super::build_user::{self, BuildUser};
use super::capture::{self, Captured};
use super::records::LocalRunState;
use super::run::{Fail, Finished, Provenance, TemplateRun};
use super::sandbox::Ended;
use super::util::{now, tail_lines};
use super::{gallery, vm};
use crate::domain::build::FailureCategory;
use crate::domain::template::OnBuildError;
use crate::ports::RunOutput;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Customize,
    Validate,
}

impl Phase {
    pub(super) fn category(self) -> FailureCategory {
        match self {
            Phase::Customize => FailureCategory::Customizer,
            Phase::Validate => FailureCategory::Validation,
        }
    }
    pub(super) fn label(self) -> &'static str {
        match self {
            Phase::Customize => "customize",
            Phase::Validate => "validate",
        }
    }
}

impl TemplateRun {
    fn sub_state(&self, s: &str) -> Result<(), Fail> {
        if self.cancel.is_canceled() {
            return Err(Fail::Canceled);
        }
        self.log.line(&format!("==> {s}"));
        if !self
            .p
            .records
            .run_set_sub_state(&self.name, &self.p.instance_id, s)?
        {
            // The run is no longer ours (declared orphaned, or canceled from elsewhere).
            return Err(Fail::Canceled);
        }
        Ok(())
    }

    /// Runs the build and says how to report it. Never panics on a build error.
    pub async fn execute(self) -> Finished {
        let started = std::time::Instant::now();
        self.log.line(&format!(
            "==> kiln local build of template {} (instance {}, started {})",
            self.name,
            self.p.instance_id,
            now().to_rfc3339()
        ));
        let result = self.stages().await;
        let finished = match result {
            Ok(None) => Finished {
                state: LocalRunState::Succeeded,
                message: String::new(),
                kept_staging: None,
                cleanup: Some(self.staging.clone()),
            },
            Ok(Some(validation_message)) => {
                // continueDistributeOnFailure: distributed, yet the run failed.
                Finished {
                    state: LocalRunState::Failed,
                    message: validation_message,
                    kept_staging: None,
                    cleanup: Some(self.staging.clone()),
                }
            }
            Err(Fail::Canceled) => Finished {
                state: LocalRunState::Canceled,
                message: "canceled: the run was canceled".to_string(),
                kept_staging: None,
                cleanup: Some(self.staging.clone()),
            },
            Err(Fail::Failed {
                category,
                message,
                keep,
            }) => {
                let mut message = format!("{category}: {message}");
                let kept = keep && self.staging.exists();
                if kept {
                    message.push_str(&format!(
                        " (errorHandling abort: staging kept at {})",
                        self.staging.display()
                    ));
                }
                Finished {
                    state: LocalRunState::Failed,
                    message,
                    kept_staging: kept.then(|| self.staging.display().to_string()),
                    cleanup: (!kept).then(|| self.staging.clone()),
                }
            }
        };
        self.log.line(&format!(
            "==> {} after {:.1} s{}",
            finished.state,
            started.elapsed().as_secs_f64(),
            if finished.message.is_empty() {
                String::new()
            } else {
                format!(": {}", finished.message)
            }
        ));
        finished
    }

    /// The stages; `Ok(Some(msg))` = distributed despite a validation failure.
    async fn stages(&self) -> Result<Option<String>, Fail> {
        let t = &self.template;
        let props = &t.properties;
        let on_customizer_error = props
            .error_handling
            .clone()
            .unwrap_or_default()
            .on_customizer_error;
        let on_validation_error = props
            .error_handling
            .clone()
            .unwrap_or_default()
            .on_validation_error;
        let validate = props.validate.clone().unwrap_or_default();

        // ---- Building ----
        self.sub_state("Building")?;
        let source = bases::resolve(&self.p.records, &props.source)
            .map_err(|e| Fail::internal(format!("source: {e:#}")))?;
        self.p
            .records
            .run_set_source(&self.name, &self.p.instance_id, &source.exact)?;
        self.log.line(&format!(
            "source: {} (exact {})",
            source.describe, source.exact
        ));
        if self.staging.exists() {
            std::fs::remove_dir_all(&self.staging)?;
        }
        for d in [self.root(), self.work(), self.out()] {
            std::fs::create_dir_all(&d)?;
        }
        self.materialize(&source.from).await?;
        let mut prov = Provenance {
            started: Some(now()),
            ..Provenance::default()
        };
        // The base's inventory, for "what did this build change".
        let root = self.root();
        let started = std::time::Instant::now();
        prov.base_sbom = match tokio::task::spawn_blocking(move || {
            super::inventory::read_sbom(&root, "base", vec![], now())
        })
        .await
        .map_err(Fail::internal)?
        {
            Ok(s) => {
                self.log.line(&format!(
                    "evidence: base inventory of {} packages in {} ms",
                    s.packages.len(),
                    started.elapsed().as_millis()
                ));
                Some(s)
            }
            Err(e) => {
                self.log.line(&format!(
                    "evidence: the source's inventory cannot be read: {e:#}"
                ));
                None
            }
        };

        // ---- Customizing ----
        self.sub_state("Customizing")?;
        let user = build_user::ensure(&self.root())
            .map_err(|e| Fail::internal(format!("cannot make the build user in the image: {e}")))?;
        match &user {
            BuildUser::Created(build_user::Created { user: u, .. }) | BuildUser::Existing(u) => {
                self.log.line(&format!(
                    "steps run as the build user {} (uid {}) with passwordless sudo, as on AIB",
                    u.name, u.ids.uid
                ))
            }
            BuildUser::NoSudo => self
                .log
                .line("the image has no sudo: steps run as root (AIB's build user needs sudo)"),
        }
        let step_user = user.step_user();
        let abort_c = on_customizer_error == OnBuildError::Abort;
        self.inject_faults(&mut prov)
            .await
            .map_err(|f| f.keep(abort_c))?;
        if validate.source_validation_only {
            self.log
                .line("validate.sourceValidationOnly: customizers skipped, the source is validated as it is");
        } else {
            for (i, c) in props.customize.iter().enumerate() {
                let rec = self
                    .step(Phase::Customize, i, props.customize.len(), c, step_user)
                    .await
                    .map_err(|f| f.keep(abort_c))?;
                prov.customizers.push(rec);
            }
        }

        // ---- Validating ----
        self.sub_state("Validating")?;
        let abort_v = on_validation_error == OnBuildError::Abort;
        let mut validation_failure: Option<String> = None;
        let n = validate.in_vm_validations.len();
        for (i, v) in validate.in_vm_validations.iter().enumerate() {
            match self.step(Phase::Validate, i, n, v, step_user).await {
                Ok(rec) => prov.validators.push(rec),
                Err(Fail::Failed {
                    category, message, ..
                }) if validate.continue_distribute_on_failure => {
                    self.log.line(&format!(
                        "validation failed, distributing anyway (continueDistributeOnFailure): {message}"
                    ));
                    validation_failure = Some(format!("{category}: {message}"));
                    break;
                }
                Err(f) => return Err(f.keep(abort_v)),
            }
        }
        let root = self.root();
        // Deprovisioning, as AIB's last step: the build user goes first.
        let removed_user = match &user {
            BuildUser::Created(c) => build_user::remove(&root, c)?,
            BuildUser::Existing(_) | BuildUser::NoSudo => Vec::new(),
        };
        prov.generalized =
            tokio::task::spawn_blocking(move || super::generalize::generalize(&root))
                .await
                .map_err(Fail::internal)??;
        prov.generalized.splice(0..0, removed_user);
        self.log.line(&format!(
            "generalized: {} paths removed or emptied",
            prov.generalized.len()
        ));
        let captured = self.capture(&source, &prov).await?;
        if let Some(bt) = &self.opts.boot_test {
            if validation_failure.is_none() {
                if let Err(f) = self.boot_test(&captured, bt).await {
                    match f {
                        Fail::Failed {
                            category, message, ..
                        } if validate.continue_distribute_on_failure => {
                            validation_failure = Some(format!("{category}: {message}"));
                        }
                        f => return Err(f.keep(abort_v)),
                    }
                }
            }
        }

        // ---- Distributing ----
        self.sub_state("Distributing")?;
        for (i, d) in props.distribute.iter().enumerate() {
            if self.cancel.is_canceled() {
                return Err(Fail::Canceled);
            }
            let raw = self.body.pointer(&format!("/properties/distribute/{i}"));
            let out: RunOutput =
                gallery::distribute(self, &captured, d, raw, &source.exact).await?;
            self.log.line(&format!(
                "distributed {}: {}",
                out.name,
                out.artifact_id
                    .as_deref()
                    .or(out.artifact_uri.as_deref())
                    .unwrap_or("")
            ));
            self.p.records.output_put(&self.name, &out)?;
        }
        Ok(validation_failure)
    }

    /// Copies the source into staging/<template>/root.
    async fn materialize(&self, from: &SourceData) -> Result<(), Fail> {
        let root = self.root();
        match from {
            SourceData::Root(src) => {
                let mut cmd = Command::new("cp");
                cmd.arg("-a")
                    .arg("--reflink=auto")
                    .arg(format!("{}/.", src.display()))
                    .arg(&root);
                self.tool("copy source", cmd).await?;
            }
            SourceData::Disk(qcow2) => {
                let raw = self.work().join("source.raw");
                let mut cmd = Command::new("qemu-img");
                cmd.arg("convert").arg("-O").arg("raw").arg(qcow2).arg(&raw);
                self.tool("qemu-img convert", cmd).await?;
                let mut cmd = Command::new("debugfs");
                cmd.arg("-R")
                    .arg(format!("rdump / {}", root.display()))
                    .arg(&raw);
                self.tool("debugfs rdump", cmd).await?;
                let _ = std::fs::remove_file(&raw);
                let _ = std::fs::remove_dir(root.join("lost+found"));
                if std::fs::read_dir(&root)?.next().is_none() {
                    return Err(Fail::internal(format!(
                        "source: nothing could be read from {}",
                        qcow2.display()
                    )));
                }
            }
        }
        Ok(())
    }

    async fn inject_faults(&self, prov: &mut Provenance) -> Result<(), Fail> {
        for spec in &self.p.faults.specs {
            if !spec.matches(self.opts.pipeline.as_deref()) {
                continue;
            }
            let Some(use_n) = self.p.records.fault_claim(&spec.key(), spec.times)? else {
                continue;
            };
            let name = spec.step_name();
            let of = spec.times.map(|t| format!(" of {t}")).unwrap_or_default();
            self.log
                .line(&format!("==> [fault] {name} (use {use_n}{of})"));
            prov.faults
                .push(serde_json::json!({"fault": spec, "use": use_n}));
            let script = self.work().join(format!("{name}.sh"));
            std::fs::write(&script, spec.script())?;
            // kiln's own test hook, not a customer step: it runs as root.
            let out = self
                .sandboxed(&name, &script, "/tmp/script_fault.sh", None)
                .await?;
            match out.ended {
                Ended::Exited(0) => {}
                Ended::Exited(code) if spec.kind == super::faults::FaultKind::FailTransient => {
                    return Err(Fail::new(
                        FailureCategory::Network,
                        format!(
                            "step '{name}' exited with {code}: injected transient failure (fault use {use_n}{of}): {}",
                            tail_lines(&out.tail, 4)
                        ),
                    ))
                }
                _ => return Err(self.step_failure(Phase::Customize, &name, &out)),
            }
        }
        Ok(())
    }

    async fn capture(
        &self,
        source: &bases::ResolvedSource,
        prov: &Provenance,
    ) -> Result<Captured, Fail> {
        capture::capture(self, source, prov).await
    }

    async fn boot_test(
        &self,
        captured: &Captured,
        bt: &super::options::BootCheck,
    ) -> Result<(), Fail> {
        self.log.line("==> boot test (kiln.bootTest)");
        let Some(kernel) = &captured.kernel else {
            return Err(Fail::new(
                FailureCategory::Validation,
                "boot test: the image has no kernel (/boot/vmlinuz-*); build it from a base with a kernel",
            ));
        };
        let timeout = bt
            .timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let report = vm::boot(
            &self.p,
            &captured.qcow2,
            kernel,
            captured.initrd.as_deref(),
            &bt.check,
            timeout,
            Some(&self.cancel),
        )
        .await
        .map_err(|e| match e {
            vm::BootError::Canceled => Fail::Canceled,
            vm::BootError::Other(e) => {
                Fail::new(FailureCategory::Validation, format!("boot test: {e:#}"))
            }
        })?;
        for line in report.output.lines() {
            self.log
                .line(&format!("[boot-test/{}] {line}", report.accel));
        }
        let expect_ok = bt
            .expect
            .as_deref()
            .is_none_or(|e| report.output.contains(e));
        if report.passed && expect_ok {
            Ok(())
        } else {
            let lines: Vec<String> = report.output.lines().map(str::to_string).collect();
            let why = if !report.passed {
                "the check failed".to_string()
            } else {
                format!(
                    "the output lacks `{}`",
                    bt.expect.clone().unwrap_or_default()
                )
            };
            Err(Fail::new(
                FailureCategory::Validation,
                format!(
                    "boot test ({}): {why}: {}",
                    report.accel,
                    tail_lines(&lines, 8)
                ),
            ))
        }
    }
}
