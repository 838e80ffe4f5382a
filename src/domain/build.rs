//! The build state machine. (Failure categories first; the machine follows.)

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a build failed. Drives the retry policy: only transient categories retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureCategory {
    Auth,
    Policy,
    Network,
    Quota,
    Customizer,
    Validation,
    Timeout,
    Replication,
    Transient,
    Internal,
}

impl FailureCategory {
    pub fn is_transient(self) -> bool {
        match self {
            FailureCategory::Network
            | FailureCategory::Quota
            | FailureCategory::Replication
            | FailureCategory::Transient => true,
            FailureCategory::Auth
            | FailureCategory::Policy
            | FailureCategory::Customizer
            | FailureCategory::Validation
            | FailureCategory::Timeout
            | FailureCategory::Internal => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCategory::Auth => "auth",
            FailureCategory::Policy => "policy",
            FailureCategory::Network => "network",
            FailureCategory::Quota => "quota",
            FailureCategory::Customizer => "customizer",
            FailureCategory::Validation => "validation",
            FailureCategory::Timeout => "timeout",
            FailureCategory::Replication => "replication",
            FailureCategory::Transient => "transient",
            FailureCategory::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
