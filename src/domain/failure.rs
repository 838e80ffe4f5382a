//! Failure categories: why a build failed, and so whether it may be retried.

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

/// Reads a provider's failure message into a category.
///
/// The local provider prefixes its messages with the category
/// (`customizer: step 'x' exited with 1`); Azure VM Image Builder writes free
/// text, so the known phrases of its troubleshooting guide are matched too.
pub fn classify(message: &str) -> FailureCategory {
    let lower = message.to_ascii_lowercase();
    if let Some((prefix, _)) = lower.split_once(':') {
        let category = match prefix.trim() {
            "auth" => Some(FailureCategory::Auth),
            "policy" => Some(FailureCategory::Policy),
            "network" => Some(FailureCategory::Network),
            "quota" => Some(FailureCategory::Quota),
            "customizer" => Some(FailureCategory::Customizer),
            "validation" => Some(FailureCategory::Validation),
            "timeout" => Some(FailureCategory::Timeout),
            "replication" => Some(FailureCategory::Replication),
            "transient" | "orphaned" => Some(FailureCategory::Transient),
            "internal" => Some(FailureCategory::Internal),
            _ => None,
        };
        if let Some(c) = category {
            return c;
        }
    }
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "authorizationfailed",
        "not authorized",
        "cannot be used",
        "forbidden",
    ]) {
        FailureCategory::Auth
    } else if has(&["requestdisallowedbypolicy", "policy violation"]) {
        FailureCategory::Policy
    } else if has(&[
        "quota",
        "too many azure container instances",
        "operationnotallowed",
    ]) {
        FailureCategory::Quota
    } else if has(&[
        "error waiting on azure compute gallery",
        "replication failed",
        "failed in distributing",
    ]) {
        FailureCategory::Replication
    } else if has(&["context deadline exceeded", "timeout waiting", "timed out"]) {
        FailureCategory::Timeout
    } else if has(&["validation", "validator"]) {
        FailureCategory::Validation
    } else if has(&[
        "packerbuildfailed",
        "packer build command has failed",
        "customizer",
        "script",
    ]) {
        FailureCategory::Customizer
    } else if has(&[
        "internalerror",
        "internal error occurred",
        "servererror",
        "throttl",
        "429",
        "503",
        "504",
        "gateway",
    ]) {
        FailureCategory::Transient
    } else if has(&["connection", "dns", "network", "unreachable", "tls"]) {
        FailureCategory::Network
    } else {
        FailureCategory::Internal
    }
}
