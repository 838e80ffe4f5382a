//! Retiring templates: the cleanup queue's worker.
//!
//! One step per job and call, never waiting on the provider: read the
//! template; a run still going is canceled first and looked at again later
//! (a template is never deleted under its own run); a finished one has its
//! customization log copied into kiln's store, then is deleted unless its
//! `errorHandling` asked to keep the build resources; a deletion ARM accepted
//! is confirmed by a later read that finds the template gone. Failures back
//! off and are retried by the sweeper, so a template is never forgotten.

use chrono::{DateTime, Utc};

use super::App;
use crate::ports::{Deletion, RunState, TemplateStatus};
use crate::store::port::CleanupJob;

/// Jobs one sweep works off; the rest wait for the next sweep.
const SWEEP_LIMIT: usize = 20;
/// Wall time one sweep spends on the queue.
const SWEEP_SHARE: std::time::Duration = std::time::Duration::from_secs(60);
/// How soon an operation in progress (a cancel, a deletion) is looked at again.
const PROGRESS_RECHECK: chrono::Duration = chrono::Duration::seconds(60);
/// After this many failed copies the log is given up on, so the template
/// (and its staging resources, which cost money) still goes.
const LOG_ATTEMPTS: u32 = 5;

/// What one step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The template is gone, or kept on purpose: the job is over.
    Done,
    /// In progress; look again later.
    Later,
    /// Failed; retried with backoff.
    Failed(String),
}

/// Works off the jobs due now (the sweeper's share).
pub async fn sweep(app: &App) -> usize {
    let now = app.clock.now();
    let jobs = match app.store.cleanup_due(now, SWEEP_LIMIT).await {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the template cleanup queue");
            return 0;
        }
    };
    let started = std::time::Instant::now();
    let mut n = 0;
    for job in jobs {
        // The rest stay due for the next sweep.
        if started.elapsed() > SWEEP_SHARE {
            break;
        }
        run_step(app, &job).await;
        n += 1;
    }
    n
}

/// One step for `template` right after the transition that queued it.
pub async fn step_now(app: &App, template: &str) {
    let job = match app.store.cleanup_due(app.clock.now(), usize::MAX).await {
        Ok(jobs) => jobs.into_iter().find(|j| j.template == template),
        Err(e) => {
            tracing::warn!(template, error = %e, "cannot read the template cleanup queue");
            None
        }
    };
    if let Some(job) = job {
        run_step(app, &job).await;
    }
}

/// In the span of the job's build: every line names the build and its pipeline.
#[tracing::instrument(name = "build", skip_all, fields(build_id = %job.build_id, pipeline = %job.pipeline))]
async fn run_step(app: &App, job: &CleanupJob) {
    let step = step(app, job).await;
    let now = app.clock.now();
    let written = match &step {
        Step::Done => app.store.cleanup_done(job).await,
        Step::Later => {
            app.store
                .cleanup_later(job, now + PROGRESS_RECHECK, None)
                .await
        }
        Step::Failed(why) => {
            tracing::warn!(template = %job.template, build = %job.build_id, attempts = job.attempts + 1, error = %why, "template cleanup failed; retrying later");
            app.store
                .cleanup_later(job, retry_at(now, job.attempts), Some(why))
                .await
        }
    };
    if let Err(e) = written {
        tracing::warn!(template = %job.template, error = %e, "cannot record the cleanup step");
    }
}

/// Exponential backoff from a minute to an hour.
fn retry_at(now: DateTime<Utc>, attempts: u32) -> DateTime<Utc> {
    let minutes = 1i64 << attempts.min(6);
    now + chrono::Duration::minutes(minutes.min(60))
}

/// Decides and performs one step of `job`.
pub async fn step(app: &App, job: &CleanupJob) -> Step {
    let name = job.template.as_str();
    let status = match app.builder.status(name).await {
        Ok(s) => s,
        Err(e) => return Step::Failed(format!("cannot read the template: {e}")),
    };
    match status {
        TemplateStatus::Missing => Step::Done,
        TemplateStatus::Provisioning | TemplateStatus::Deleting => Step::Later,
        TemplateStatus::Run(run) if run.run_state == RunState::Running => {
            tracing::info!(
                template = name,
                "the template's run is still going; canceling it before deleting"
            );
            match app.builder.cancel(name).await {
                Ok(()) => Step::Later,
                Err(e) => Step::Failed(format!("cannot cancel the run still going: {e}")),
            }
        }
        // A state kiln does not know may be a run still going: never delete under it.
        TemplateStatus::Run(run)
            if matches!(run.run_state, RunState::Canceling | RunState::Unknown(_)) =>
        {
            Step::Later
        }
        TemplateStatus::Run(_)
        | TemplateStatus::NotRun
        | TemplateStatus::ProvisioningFailed { .. } => {
            if let Err(why) = copy_log(app, job).await {
                if job.attempts + 1 < LOG_ATTEMPTS {
                    return Step::Failed(why);
                }
                tracing::warn!(template = name, error = %why, "giving up on the customization log after {LOG_ATTEMPTS} tries; deleting the template anyway");
            }
            if job.keep {
                tracing::info!(template = name, build = %job.build_id, "errorHandling asks to keep the build resources: the template and its staging resource group stay for a look, and are deleted by hand");
                return Step::Done;
            }
            match app.builder.delete_template(name).await {
                Ok(Deletion::Gone) => Step::Done,
                Ok(Deletion::InProgress) => Step::Later,
                Err(e) => Step::Failed(format!("cannot delete the template: {e}")),
            }
        }
    }
}

/// Copies the whole customization log into the store (a provider without
/// one is fine: nothing to keep).
async fn copy_log(app: &App, job: &CleanupJob) -> Result<(), String> {
    match app.builder.customization_log(&job.template, 0).await {
        Ok(Some(bytes)) => app
            .store
            .put_log(&job.template, &job.build_id, &bytes, app.clock.now())
            .await
            .map_err(|e| format!("cannot keep the customization log: {e}")),
        Ok(None) => Ok(()),
        Err(e) => Err(format!("cannot read the customization log: {e}")),
    }
}
