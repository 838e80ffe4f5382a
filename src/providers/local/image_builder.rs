//! The local provider as AIB's `imageTemplates` API: put a template, run
//! it, report its status and run outputs, cancel, delete. The build itself
//! runs in `engine.rs`; this file is the port's contract around it.

use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use super::records::{LocalRunState, RunRow};
use super::util::now;
use super::{check, perr, run, sandbox, status_of, util, LocalProvider};
use crate::domain::build::FailureCategory;
use crate::domain::pipeline::FieldError;
use crate::domain::template::ImageTemplate;
use crate::ports::{
    Deletion, ImageBuilder, ProviderError, RunFacts, RunOutput, RunStart, TemplateStatus,
};

#[async_trait]
impl ImageBuilder for LocalProvider {
    async fn customization_log(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.log_path(name);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(perr(e)),
        };
        f.seek(SeekFrom::Start(offset)).map_err(perr)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(perr)?;
        Ok(Some(bytes))
    }

    async fn put_template(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<TemplateStatus, ProviderError> {
        if !util::safe_component(name) || name.len() > 64 {
            return Err(ProviderError::new(
                FailureCategory::Policy,
                format!("`{name}` is not an image template name (1-64 of A-Z a-z 0-9 - _ .)"),
            ));
        }
        let t: ImageTemplate = serde_json::from_value(body.clone()).map_err(|e| {
            ProviderError::new(
                FailureCategory::Policy,
                format!("not a valid image template: {e}"),
            )
        })?;
        let errors = check::check(&t);
        if !errors.is_empty() {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(ProviderError::new(FailureCategory::Policy, text.join("; ")));
        }
        let sha = util::sha256_hex(util::canonical_json(body).as_bytes());
        let r = &self.inner.records;
        if let Some((_, existing)) = r.template_get(name).map_err(perr)? {
            if existing == sha {
                return self.status(name).await;
            }
            if let Some(run) = r.run_get(name).map_err(perr)? {
                let what = if run.is_active() {
                    "is running"
                } else {
                    "has run"
                };
                return Err(ProviderError::internal(format!(
                    "template {name} {what}: its body cannot change (delete it and create a new one)"
                )));
            }
        }
        r.template_put(name, &body.to_string(), &sha, now())
            .map_err(perr)?;
        // Local templates are ready as soon as they are written.
        Ok(TemplateStatus::NotRun)
    }

    async fn run(&self, name: &str) -> Result<RunStart, ProviderError> {
        let p = &self.inner;
        let Some((body, sha)) = p.records.template_get(name).map_err(perr)? else {
            return Err(ProviderError::internal(format!(
                "template {name} does not exist"
            )));
        };
        if p.records.run_get(name).map_err(perr)?.is_some() {
            return Ok(RunStart::Started); // ran or running: no twin
        }
        let body: serde_json::Value = serde_json::from_str(&body).map_err(perr)?;
        let template: ImageTemplate = serde_json::from_value(body.clone()).map_err(perr)?;
        let Some((guard, cancel_rx)) = p.tasks.register(name).map_err(perr)? else {
            return Ok(RunStart::Started);
        };
        let row = RunRow {
            template: name.to_string(),
            body_sha256: sha.clone(),
            instance_id: p.instance_id.clone(),
            pid: p.pid,
            pid_start: p.pid_start.clone(),
            run_state: LocalRunState::Running,
            run_sub_state: Some("Queued".into()),
            message: String::new(),
            start_time: util::ts(now()),
            end_time: None,
            source_version: None,
            staging: None,
            manifest: None,
        };
        if !p.records.run_insert(&row).map_err(perr)? {
            drop(guard);
            return Ok(RunStart::Started);
        }
        let inner = p.clone();
        let name = name.to_string();
        tokio::spawn(
            async move {
                let guard = guard;
                let cancel =
                    sandbox::CancelWatch::new(cancel_rx, inner.records.clone(), name.clone());
                let finished = match run::TemplateRun::new(
                    inner.clone(),
                    &name,
                    template,
                    body,
                    sha,
                    cancel,
                ) {
                    Ok(build) => build.execute().await,
                    Err(e) => run::Finished {
                        state: LocalRunState::Failed,
                        message: format!("internal: cannot start the build: {e}"),
                        kept_staging: None,
                        cleanup: None,
                    },
                };
                if let Err(e) = inner.records.run_finish(
                    &name,
                    &inner.instance_id,
                    finished.state,
                    &finished.message,
                    finished.kept_staging.as_deref(),
                    now(),
                ) {
                    tracing::error!(template = %name, "cannot record the end of the run: {e:#}");
                }
                guard.status_written();
                if let Some(dir) = finished.cleanup {
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                }
                drop(guard);
            }
            // The run's lines stay in the span of the build that started it.
            .in_current_span(),
        );
        Ok(RunStart::Started)
    }

    async fn status(&self, name: &str) -> Result<TemplateStatus, ProviderError> {
        let r = &self.inner.records;
        if r.template_get(name).map_err(perr)?.is_none() {
            return Ok(TemplateStatus::Missing);
        }
        let Some(run) = r.run_get(name).map_err(perr)? else {
            return Ok(TemplateStatus::NotRun);
        };
        if run.is_active() {
            self.mark_orphan_if_needed(&run).map_err(perr)?;
            let run = r.run_get(name).map_err(perr)?.unwrap_or(run);
            return Ok(TemplateStatus::Run(status_of(&run)));
        }
        Ok(TemplateStatus::Run(status_of(&run)))
    }

    async fn run_outputs(&self, name: &str) -> Result<Vec<RunOutput>, ProviderError> {
        self.inner.records.outputs(name).map_err(perr)
    }

    async fn cancel(&self, name: &str) -> Result<(), ProviderError> {
        let p = &self.inner;
        let Some(run) = p.records.run_get(name).map_err(perr)? else {
            return Ok(());
        };
        if !run.is_active() {
            return Ok(());
        }
        let progress = p.tasks.cancel(name).map_err(perr)?;
        p.records.run_set_canceling(name).map_err(perr)?;
        match progress {
            Some(mut progress) => {
                // Wait for the task to kill its sandbox and clean up.
                let _ = tokio::time::timeout(Duration::from_secs(120), progress.ended()).await;
            }
            None => {
                if p.orphan_reason(&run).is_some() {
                    // Nobody runs it: cancel it here.
                    p.records
                        .run_finish(
                            name,
                            &run.instance_id,
                            LocalRunState::Canceled,
                            "canceled: the run was canceled (its process had exited)",
                            None,
                            now(),
                        )
                        .map_err(perr)?;
                    let _ = std::fs::remove_dir_all(p.data_dir.join("staging").join(name));
                }
                // Else another live process runs it and sees `Canceling` in the store.
            }
        }
        Ok(())
    }

    async fn delete_template(&self, name: &str) -> Result<Deletion, ProviderError> {
        if let Some(run) = self.inner.records.run_get(name).map_err(perr)? {
            if run.is_active() {
                self.cancel(name).await?;
            }
        }
        match std::fs::remove_file(super::capture::facts_path(&self.inner.data_dir, name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(perr(anyhow::anyhow!(
                    "cannot delete the run facts of {name}: {e}"
                )))
            }
        }
        self.inner
            .records
            .template_delete(name)
            .map_err(perr)
            .map(|()| Deletion::Gone)
    }

    async fn run_facts(&self, name: &str) -> Result<Option<RunFacts>, ProviderError> {
        let path = super::capture::facts_path(&self.inner.data_dir, name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ProviderError::internal(format!("{} is not run facts: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ProviderError::internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn check(&self, template: &ImageTemplate) -> Vec<FieldError> {
        check::check(template)
    }
}
