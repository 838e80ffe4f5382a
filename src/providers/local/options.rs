//! Per-build options the local provider reads from the template's tags.
//!
//! The app passes the pipeline's `kiln.build` policy as template tags (an AIB
//! template has no other place for them, and tags travel with the template):
//!
//! | tag | meaning | default |
//! |---|---|---|
//! | `kiln.network` | `false` runs steps in a network namespace of their own (loopback only) | `true` |
//! | `kiln.stepTimeoutMinutes` | limit of one customizer/validator step | 30 |
//! | `kiln.stepTimeoutSeconds` | the same in seconds (wins over minutes) | – |
//! | `kiln.bootTest.check` | shell run in the booted image after capture | – |
//! | `kiln.bootTest.expect` | text the boot test's output must contain | – |
//! | `kiln.bootTest.timeoutSeconds` | boot test limit | 180 |
//! | `kiln.buildTimeoutSeconds` | whole-build limit in seconds (wins over `buildTimeoutInMinutes`) | – |
//! | `kiln.pipeline`, `kiln.build` | recorded in the manifest; faults match `kiln.pipeline` | – |

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::pipeline::FieldError;

pub(crate) const NETWORK: &str = "kiln.network";
pub(crate) const STEP_MINUTES: &str = "kiln.stepTimeoutMinutes";
pub(crate) const STEP_SECONDS: &str = "kiln.stepTimeoutSeconds";
pub(crate) const BOOT_CHECK: &str = "kiln.bootTest.check";
pub(crate) const BOOT_EXPECT: &str = "kiln.bootTest.expect";
pub(crate) const BOOT_TIMEOUT: &str = "kiln.bootTest.timeoutSeconds";
pub(crate) const BUILD_SECONDS: &str = "kiln.buildTimeoutSeconds";
pub(crate) const PIPELINE: &str = "kiln.pipeline";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootCheck {
    pub check: String,
    pub expect: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildOptions {
    pub network: bool,
    pub step_timeout: Duration,
    pub boot_test: Option<BootCheck>,
    pub pipeline: Option<String>,
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn parse_num(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|n| *n > 0)
}

impl BuildOptions {
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Self {
        let step_timeout = tags
            .get(STEP_SECONDS)
            .and_then(|s| parse_num(s))
            .map(Duration::from_secs)
            .or_else(|| {
                tags.get(STEP_MINUTES)
                    .and_then(|s| parse_num(s))
                    .map(|m| Duration::from_secs(m * 60))
            })
            .unwrap_or(Duration::from_secs(30 * 60));
        let boot_test = tags
            .get(BOOT_CHECK)
            .filter(|c| !c.trim().is_empty())
            .map(|check| BootCheck {
                check: check.clone(),
                expect: tags.get(BOOT_EXPECT).filter(|e| !e.is_empty()).cloned(),
                timeout: Duration::from_secs(
                    tags.get(BOOT_TIMEOUT)
                        .and_then(|s| parse_num(s))
                        .unwrap_or(180),
                ),
            });
        BuildOptions {
            network: tags
                .get(NETWORK)
                .and_then(|s| parse_bool(s))
                .unwrap_or(true),
            step_timeout,
            boot_test,
            pipeline: tags.get(PIPELINE).cloned(),
        }
    }
}

pub(crate) fn check_tags(tags: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(v) = tags.get(NETWORK) {
        if parse_bool(v).is_none() {
            errors.push(FieldError {
                path: format!("tags.{NETWORK}"),
                message: format!("expected true or false, got `{v}`"),
            });
        }
    }
    for key in [STEP_MINUTES, STEP_SECONDS, BOOT_TIMEOUT, BUILD_SECONDS] {
        if let Some(v) = tags.get(key) {
            if parse_num(v).is_none() {
                errors.push(FieldError {
                    path: format!("tags.{key}"),
                    message: format!("expected a positive whole number, got `{v}`"),
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_build_policy_from_tags() {
        let mut tags = BTreeMap::new();
        let o = BuildOptions::from_tags(&tags);
        assert!(o.network);
        assert_eq!(o.step_timeout, Duration::from_secs(1800));
        assert!(o.boot_test.is_none());
        tags.insert(NETWORK.into(), "false".into());
        tags.insert(STEP_MINUTES.into(), "5".into());
        tags.insert(BOOT_CHECK.into(), "uname -r".into());
        let o = BuildOptions::from_tags(&tags);
        assert!(!o.network);
        assert_eq!(o.step_timeout, Duration::from_secs(300));
        assert_eq!(o.boot_test.unwrap().timeout, Duration::from_secs(180));
        tags.insert(STEP_SECONDS.into(), "2".into());
        assert_eq!(
            BuildOptions::from_tags(&tags).step_timeout,
            Duration::from_secs(2)
        );
        tags.insert(NETWORK.into(), "maybe".into());
        assert_eq!(check_tags(&tags).len(), 1);
    }
}
