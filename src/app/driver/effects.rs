//! Effects the driver performs after a transition is durable: submitting and
//! running a template, removing a leftover version, and deciding whether a
//! failed build's resources are kept.

use super::super::App;
use super::observe::leftover_versions;
use crate::domain::build::{Build, BuildState, FailureCategory};
use crate::domain::template::OnBuildError;
use crate::ports::{RunStart, TemplateStatus};

pub(super) async fn remove_leftover_version(app: &App, b: &Build) {
    let left = match leftover_versions(app, b).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(build = %b.id, error = %e, "cannot look for a leftover version; the next poll asks again");
            return;
        }
    };
    for v in left {
        let def = &v.definition_id;
        // Only what this build published goes: a version with this number
        // from anywhere else is not kiln's to delete, and the attempt waits
        // (and, if it stays, ends in its timeout) instead.
        let ours = v.tags.get("kiln.build").map(String::as_str) == Some(b.id.as_str());
        if !ours {
            tracing::warn!(build = %b.id, definition = %def, version = %b.version, "version exists and was not published by this build; not deleting it, the retry waits");
            continue;
        }
        if v.provisioning_state.eq_ignore_ascii_case("Deleting") {
            continue;
        }
        tracing::warn!(build = %b.id, definition = %def, version = %b.version, attempt = b.attempt, "removing the version an earlier attempt left behind before retrying");
        if let Err(e) = app.gallery.delete_version(def, b.version).await {
            tracing::warn!(build = %b.id, error = %e, "cannot delete the leftover version; the next poll tries again");
        }
    }
}

/// Whether a failed build's template asks to keep its build resources for
/// a look (AIB `errorHandling: abort` for the kind of error that happened).
pub(super) fn keeps_build_resources(app: &App, b: &Build) -> bool {
    let BuildState::Failed { category, .. } = &b.state else {
        return false;
    };
    let Some(eh) = app
        .pipelines
        .get(&b.pipeline)
        .and_then(|p| p.template.properties.error_handling.clone())
    else {
        return false;
    };
    match category {
        FailureCategory::Customizer => eh.on_customizer_error == OnBuildError::Abort,
        // A template refused at provisioning never ran: nothing to look at.
        FailureCategory::Validation => {
            eh.on_validation_error == OnBuildError::Abort
                && !matches!(&b.state, BuildState::Failed { message, .. } if message.starts_with("the image template was refused"))
        }
        FailureCategory::Auth
        | FailureCategory::Policy
        | FailureCategory::Network
        | FailureCategory::Quota
        | FailureCategory::Timeout
        | FailureCategory::Replication
        | FailureCategory::Transient
        | FailureCategory::Internal => false,
    }
}

pub(super) async fn submit(
    app: &App,
    b: &Build,
    template: &str,
) -> Result<(), crate::ports::ProviderError> {
    let pipeline = app.pipelines.get(&b.pipeline).ok_or_else(|| {
        crate::ports::ProviderError::new(
            crate::domain::build::FailureCategory::Internal,
            format!("pipeline {} is no longer deployed", b.pipeline),
        )
    })?;
    let body = crate::app::render::render(pipeline, b);
    match app.builder.put_template(template, &body).await? {
        // Ready at once (the local provider; or adopted after provisioning).
        TemplateStatus::NotRun => start_run(app, template).await,
        TemplateStatus::ProvisioningFailed { code, message } => {
            Err(crate::ports::ProviderError::new(
                crate::domain::run::provisioning_failure(&code),
                format!("the image template was refused ({code}): {message}"),
            ))
        }
        // Still provisioning (the next poll runs it once it is ready), or
        // already running or ran.
        TemplateStatus::Provisioning
        | TemplateStatus::Deleting
        | TemplateStatus::Missing
        | TemplateStatus::Run(_) => Ok(()),
    }
}

/// Asks for the run. Only a definite refusal is an error: an answer that
/// never came is confirmed by the next poll through `lastRunStatus`.
pub(super) async fn start_run(
    app: &App,
    template: &str,
) -> Result<(), crate::ports::ProviderError> {
    match app.builder.run(template).await? {
        RunStart::Started | RunStart::NotReady => Ok(()),
        RunStart::Unconfirmed { reason } => {
            tracing::warn!(template, %reason, "run request unconfirmed; the next poll reads lastRunStatus before anything else");
            Ok(())
        }
    }
}
