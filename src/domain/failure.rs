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

/// Whether `text` has one of `words` as a whole word ("script" is not in
/// "subscription").
fn has_word(text: &str, words: &[&str]) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| words.contains(&w))
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
    } else if has(&["packerbuildfailed", "packer build command has failed"])
        || has_word(&lower, &["customizer", "script"])
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aib_failure_messages_read_as_their_category() {
        let packer = "Failed while waiting for packerizer: Microservice has failed: Failed while processing request: Error when executing packerizer: Packer build command has failed: exit status 1. During the image build, a failure has occurred";
        assert_eq!(classify(packer), FailureCategory::Customizer);
        assert_eq!(
            classify("the inline script exited with 2"),
            FailureCategory::Customizer
        );
        assert_eq!(
            classify("Failed in distributing 1 images out of total 1: context deadline exceeded"),
            FailureCategory::Replication
        );
    }

    #[test]
    fn a_word_inside_another_is_not_that_word() {
        // "subscription" holds "script"; it says nothing about a customizer.
        assert_eq!(
            classify("the subscription's resource group is not empty"),
            FailureCategory::Internal
        );
    }
}
