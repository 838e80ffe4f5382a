//! One customization step of a build: a Shell or File customizer (or an
//! injected fault step) run in the sandbox as AIB's build user, under the
//! step's and the build's deadlines, and a failure that names the step and
//! quotes the last lines of its output. `engine.rs` decides which steps run
//! and in what order.

use std::path::Path;

use tokio::time::Instant;

use super::build_user::StepUser;
use super::fetch::{fetch, FetchError};
use super::place::{place_file, upload};
use super::run::{human, Fail, TemplateRun};
use super::sandbox::{run_process, Ended, ProcOutput, Sandbox};
use super::util::{sha256_hex, tail_lines};
use crate::domain::build::FailureCategory;
use crate::domain::redact;
use crate::domain::template::Customizer;

use super::engine::Phase;

impl TemplateRun {
    /// Uploads `script` to `inside` (under the image's `/tmp`) and runs it
    /// in the sandbox as `user`, the way Packer's shell provisioner runs it
    /// over SSH: `chmod +x`, then the user's login shell runs the file, which
    /// the kernel starts by its `#!` line (a file without one is run by that
    /// shell), under the step and build deadlines; then the file is removed,
    /// as Packer removes it.
    pub(super) async fn sandboxed(
        &self,
        step: &str,
        script: &Path,
        inside: &str,
        user: Option<&StepUser>,
    ) -> Result<ProcOutput, Fail> {
        let sb = Sandbox {
            root: &self.root(),
            network: self.opts.network,
            user,
            // What Packer sets for every script it runs.
            env: vec![
                ("PACKER_BUILDER_TYPE".into(), "azure-arm".into()),
                ("PACKER_BUILD_NAME".into(), "azure-arm".into()),
            ],
        };
        sb.preflight()
            .map_err(|e| Fail::new(FailureCategory::Customizer, format!("step '{step}': {e}")))?;
        let uploaded = upload(&self.root(), script, inside, user).map_err(|e| {
            Fail::new(
                FailureCategory::Customizer,
                format!("step '{step}': cannot upload its script to {inside}: {e}"),
            )
        })?;
        let shell = user.map_or("/bin/sh", |u| u.shell.as_str());
        let (cmd, diag) = sb
            .command(&[shell, "-c", inside])
            .map_err(|e| Fail::internal(format!("step '{step}': {e}")))?;
        let deadline = (Instant::now() + self.opts.step_timeout).min(self.deadline);
        let out = run_process(
            cmd,
            &self.log,
            &format!("[{step}] "),
            deadline,
            Some(&self.cancel),
            false,
        )
        .await;
        let _ = std::fs::remove_file(&uploaded);
        let out = out.map_err(|e| {
            let why = diag.explain().map(|d| format!("{d}: ")).unwrap_or_default();
            // What the image lacks (a home, a login shell) is the template's
            // problem to fix, as it would be on AIB.
            Fail::new(
                FailureCategory::Customizer,
                format!("step '{step}': the sandbox could not start: {why}{e}"),
            )
        })?;
        self.forget_mount_points();
        if out.ended == Ended::Canceled {
            return Err(Fail::Canceled);
        }
        Ok(out)
    }

    /// The sandbox creates an empty /etc/resolv.conf to bind onto when the
    /// image has none; it is not the image's, so it goes.
    fn forget_mount_points(&self) {
        let p = self.root().join("etc/resolv.conf");
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            if md.is_file() && md.len() == 0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    pub(super) fn step_failure(&self, phase: Phase, step: &str, out: &ProcOutput) -> Fail {
        let last = tail_lines(&out.tail, 8);
        match out.ended {
            Ended::TimedOut if Instant::now() >= self.deadline => {
                self.build_timeout_fail(&format!("step '{step}'"))
            }
            Ended::TimedOut => Fail::new(
                FailureCategory::Timeout,
                format!(
                    "step '{step}' exceeded its {} limit (kiln.stepTimeoutMinutes): {last}",
                    human(self.opts.step_timeout)
                ),
            ),
            Ended::Exited(code) => Fail::new(
                phase.category(),
                format!("step '{step}' exited with {code}: {last}"),
            ),
            Ended::Canceled => Fail::Canceled,
        }
    }

    /// One customizer or validator.
    pub(super) async fn step(
        &self,
        phase: Phase,
        i: usize,
        n: usize,
        c: &Customizer,
        user: Option<&StepUser>,
    ) -> Result<serde_json::Value, Fail> {
        let list = match phase {
            Phase::Customize => "customize",
            Phase::Validate => "inVMValidations",
        };
        let step = c
            .name()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{list}[{i}]"));
        self.log.line(&format!(
            "==> [{} {}/{}] {} '{}'",
            phase.label(),
            i + 1,
            n,
            c.kind(),
            step
        ));
        let cat = phase.category();
        let fetch_fail = |uri: &str, e: FetchError| match e {
            // (`uri` is the redacted form: see the callers.)
            FetchError::Network(m) => {
                Fail::new(FailureCategory::Network, format!("step '{step}': {m}"))
            }
            FetchError::Missing(m) => Fail::new(cat, format!("step '{step}': {m}")),
            FetchError::Checksum { .. } => Fail::new(cat, format!("step '{step}': {e} for {uri}")),
        };
        let work = self.work().join(format!("{}-{i}", phase.label()));
        match c {
            Customizer::Shell {
                inline,
                script_uri,
                sha256_checksum,
                ..
            } => {
                let (sha, uri): (String, Option<String>) = match (inline, script_uri) {
                    (Some(lines), None) => {
                        // Packer's shell provisioner: the lines joined into one
                        // file that starts with its inline_shebang, `/bin/sh -e`
                        // (AIB sets no other): the first failing line fails the step.
                        let text = lines.join("\n") + "\n";
                        std::fs::write(&work, format!("#!/bin/sh -e\n{text}"))?;
                        (sha256_hex(text.as_bytes()), None)
                    }
                    (None, Some(uri)) => {
                        let sha = fetch(&self.p.http, uri, &work, sha256_checksum.as_deref())
                            .await
                            .map_err(|e| fetch_fail(&redact::uri(uri), e))?;
                        (sha, Some(redact::uri(uri).into_owned()))
                    }
                    _ => {
                        return Err(Fail::new(
                            cat,
                            format!(
                                "step '{step}': Shell needs exactly one of inline and scriptUri"
                            ),
                        ))
                    }
                };
                // Packer uploads each script to /tmp/script_<n>.sh.
                let inside = format!("/tmp/script_{}_{i}.sh", phase.label());
                let out = self.sandboxed(&step, &work, &inside, user).await?;
                if !out.success() {
                    return Err(self.step_failure(phase, &step, &out));
                }
                Ok(
                    serde_json::json!({"index": i, "name": step, "type": "Shell", "sha256": sha, "scriptUri": uri}),
                )
            }
            Customizer::File {
                source_uri,
                destination,
                sha256_checksum,
                ..
            } => {
                let sha = fetch(&self.p.http, source_uri, &work, sha256_checksum.as_deref())
                    .await
                    .map_err(|e| fetch_fail(&redact::uri(source_uri), e))?;
                // The log and the provenance name the file, not its token.
                let source_uri = redact::uri(source_uri);
                place_file(&self.root(), &work, destination, user).map_err(|e| {
                    Fail::new(
                        cat,
                        format!("step '{step}': cannot place {destination}: {e}"),
                    )
                })?;
                self.log.line(&format!(
                    "[{step}] {source_uri} -> {destination} (sha256 {sha})"
                ));
                Ok(
                    serde_json::json!({"index": i, "name": step, "type": "File", "sha256": sha, "sourceUri": source_uri, "destination": destination}),
                )
            }
            other => Err(Fail::new(
                cat,
                format!(
                    "step '{step}': {} is not supported by the local provider",
                    other.kind()
                ),
            )),
        }
    }
}
