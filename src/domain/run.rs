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
    /// Created, never run.
    NotRun,
    Run(RunStatus),
}

/// AIB `runOutputs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    pub name: String,
    pub artifact_id: Option<String>,
    pub artifact_uri: Option<String>,
    pub provisioning_state: String,
}
