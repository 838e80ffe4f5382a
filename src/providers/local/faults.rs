//! Test hooks: faults injected into builds by configuration.
//!
//! `KILN_LOCAL_FAULTS` holds a JSON list such as
//! `[{"pipeline": "tiny", "kind": "fail-transient", "times": 2}]`. A fault
//! applies to builds whose template carries the tag `kiln.pipeline` equal to
//! `pipeline` (`*` matches every pipeline). It is injected as one more
//! sandboxed step before the customizers, so it meets the same timeouts,
//! cancellation and logging as a real step. Uses are counted in the store, so
//! "fail transiently twice, then succeed" holds across attempts and restarts.

use serde::{Deserialize, Serialize};

/// What an injected step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The step fails with a `network:` message (a transient category).
    FailTransient,
    /// The step exits 1: a customizer failure (permanent).
    Fail,
    /// The step never ends: the step or build timeout, or a cancel, ends it.
    Hang,
    /// The step sleeps `seconds` (default 5), then succeeds.
    Slow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The pipeline (template tag `kiln.pipeline`), or `*`.
    pub pipeline: String,
    pub kind: FaultKind,
    /// How many builds get it; absent = every build.
    #[serde(default)]
    pub times: Option<u32>,
    /// For `slow`: seconds to sleep.
    #[serde(default)]
    pub seconds: Option<u64>,
}

impl FaultSpec {
    /// The durable counter's key: the spec itself, so editing a fault starts a new count.
    pub(crate) fn key(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn matches(&self, pipeline: Option<&str>) -> bool {
        self.pipeline == "*" || pipeline == Some(self.pipeline.as_str())
    }

    /// The shell the injected step runs in the sandbox.
    pub(crate) fn script(&self) -> String {
        match self.kind {
            FaultKind::FailTransient => {
                "echo 'kiln fault hook: injected transient failure' >&2; exit 75".to_string()
            }
            FaultKind::Fail => "echo 'kiln fault hook: injected failure' >&2; exit 1".to_string(),
            FaultKind::Hang => "echo 'kiln fault hook: hanging'; exec sleep 2147483".to_string(),
            FaultKind::Slow => format!(
                "echo 'kiln fault hook: slow step'; sleep {}",
                self.seconds.unwrap_or(5)
            ),
        }
    }

    pub(crate) fn step_name(&self) -> String {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("kiln-fault-{kind}")
    }
}

/// The configured faults (empty in production).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub specs: Vec<FaultSpec>,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let specs: Vec<FaultSpec> = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!("KILN_LOCAL_FAULTS is not a list of faults ({e}); expected e.g. [{{\"pipeline\":\"tiny\",\"kind\":\"fail-transient\",\"times\":2}}]")
        })?;
        Ok(Self { specs })
    }

    /// Reads `KILN_LOCAL_FAULTS`; unset or empty means no faults.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("KILN_LOCAL_FAULTS") {
            Ok(s) if !s.trim().is_empty() => Self::parse(&s),
            _ => Ok(Self::none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_format() {
        let f = Faults::parse(
            r#"[{"pipeline":"tiny","kind":"fail-transient","times":2},
                {"pipeline":"*","kind":"slow","seconds":1}]"#,
        )
        .unwrap();
        assert_eq!(f.specs.len(), 2);
        assert_eq!(f.specs[0].kind, FaultKind::FailTransient);
        assert!(f.specs[0].matches(Some("tiny")));
        assert!(!f.specs[0].matches(Some("big")));
        assert!(f.specs[1].matches(None));
        assert_eq!(f.specs[1].step_name(), "kiln-fault-slow");
        assert!(Faults::parse(r#"[{"pipeline":"x","kind":"explode"}]"#).is_err());
    }
}
