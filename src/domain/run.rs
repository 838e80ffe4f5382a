//! Azure VM Image Builder's run vocabulary, shared by every provider.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// AIB `RunState`. AIB is a service that adds values: unknown ones are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Running,
    Canceling,
    Succeeded,
    PartiallySucceeded,
    Failed,
    Canceled,
    Unknown(String),
}

impl RunState {
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "running" => RunState::Running,
            "canceling" => RunState::Canceling,
            "succeeded" => RunState::Succeeded,
            "partiallysucceeded" => RunState::PartiallySucceeded,
            "failed" => RunState::Failed,
            "canceled" => RunState::Canceled,
            _ => RunState::Unknown(s.to_string()),
        }
    }
}

/// AIB `RunSubState`: the phase of a running build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunSubState {
    Queued,
    Building,
    Customizing,
    Optimizing,
    Validating,
    Distributing,
    Unknown(String),
}

impl RunSubState {
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "queued" => RunSubState::Queued,
            "building" => RunSubState::Building,
            "customizing" => RunSubState::Customizing,
            "optimizing" => RunSubState::Optimizing,
            "validating" => RunSubState::Validating,
            "distributing" => RunSubState::Distributing,
            _ => RunSubState::Unknown(s.to_string()),
        }
    }
}

/// AIB `lastRunStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_state: RunState,
    pub run_sub_state: Option<RunSubState>,
    pub message: String,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

/// What the provider knows of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateStatus {
    /// No template by this name: never submitted, or deleted.
    Missing,
    /// Accepted and still being created (ARM `provisioningState` Creating or
    /// Updating): it cannot run yet.
    Provisioning,
    /// Being deleted (`provisioningState` Deleting).
    Deleting,
    /// The provider refused the template (`provisioningState` Failed), with
    /// its error code (AIB's `provisioningError.provisioningErrorCode`).
    ProvisioningFailed {
        code: String,
        message: String,
    },
    /// Created, never run.
    NotRun,
    Run(RunStatus),
}

/// What asking the provider to run a template came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// The provider accepted the run (or a run was already there).
    Started,
    /// The template is not provisioned yet; ask again later.
    NotReady,
    /// The request may or may not have started a run (timeout, dropped
    /// answer, 5xx): only `lastRunStatus` can say, so the next poll reads it
    /// before anything is resubmitted or deleted.
    Unconfirmed { reason: String },
}

/// What a template deletion came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    Gone,
    /// Accepted and still going (ARM 202); confirm later by reading the template.
    InProgress,
}

/// Image Builder's provisioning error codes name a problem with the template
/// (retrying the same body cannot help), except `ServerError` and `Other`.
pub fn provisioning_failure(code: &str) -> crate::domain::failure::FailureCategory {
    use crate::domain::failure::FailureCategory;
    match code {
        "ServerError" => FailureCategory::Transient,
        "Other" | "" => FailureCategory::Internal,
        _ => FailureCategory::Validation,
    }
}

/// AIB `runOutputs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    pub name: String,
    pub artifact_id: Option<String>,
    pub artifact_uri: Option<String>,
    pub provisioning_state: String,
}
