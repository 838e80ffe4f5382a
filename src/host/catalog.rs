//! The function catalog: `handlers/<function>/function.json`, the single
//! source of trigger settings for the Functions host and the local host.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::app::FunctionName;

#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSpec {
    /// NCRONTAB, six fields, UTC.
    Timer {
        schedule: String,
        run_on_startup: bool,
    },
    ServiceBus {
        queue: String,
        connection: String,
        /// Deliveries before dead-lettering (the queue's `maxDeliveryCount`).
        max_delivery_count: u32,
    },
    EventGrid,
    Http {
        route: String,
        methods: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: FunctionName,
    pub binding_name: String,
    pub trigger: TriggerSpec,
}

#[derive(Debug, Deserialize)]
struct FunctionJson {
    bindings: Vec<serde_json::Value>,
}

/// Reads every function folder under `dir`. A folder that is not a kiln
/// function, or a kiln function without a folder, is an error.
pub fn load(dir: &Path) -> anyhow::Result<Vec<FunctionSpec>> {
    let mut specs = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("Cannot read the handlers folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let folder = entry.file_name().to_string_lossy().to_string();
        let path = entry.path().join("function.json");
        let name: FunctionName = folder
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {e}", entry.path().display()))?;
        specs.push(read_one(name, &path)?);
    }
    for f in FunctionName::ALL {
        if !specs.iter().any(|s| s.name == f) {
            bail!(
                "{}: missing function.json for function {f}",
                dir.join(f.as_str()).display()
            );
        }
    }
    specs.sort_by_key(|s| s.name);
    Ok(specs)
}

fn read_one(name: FunctionName, path: &Path) -> anyhow::Result<FunctionSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let doc: FunctionJson = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a function.json", path.display()))?;
    let trigger = doc
        .bindings
        .iter()
        .find(|b| b.get("direction").and_then(|d| d.as_str()) == Some("in"))
        .with_context(|| {
            format!(
                "{}: bindings: expected one trigger binding with direction \"in\"",
                path.display()
            )
        })?;
    let s = |k: &str| trigger.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let binding_name =
        s("name").with_context(|| format!("{}: bindings[].name: missing", path.display()))?;
    if binding_name != name.trigger_binding() {
        bail!(
            "{}: bindings[].name: expected \"{}\" (the name kiln's {name} function reads), got \"{binding_name}\"",
            path.display(),
            name.trigger_binding()
        );
    }
    let kind = s("type").unwrap_or_default();
    let spec = match kind.as_str() {
        "timerTrigger" => {
            let schedule = s("schedule")
                .with_context(|| format!("{}: bindings[].schedule: missing", path.display()))?;
            if schedule.split_whitespace().count() != 6 {
                bail!(
                    "{}: bindings[].schedule: expected 6 NCRONTAB fields, got `{schedule}`",
                    path.display()
                );
            }
            crate::host::timers::parse_ncrontab(&schedule)
                .map_err(|e| anyhow::anyhow!("{}: bindings[].schedule: {e}", path.display()))?;
            TriggerSpec::Timer {
                schedule,
                run_on_startup: trigger
                    .get("runOnStartup")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            }
        }
        "serviceBusTrigger" => TriggerSpec::ServiceBus {
            queue: s("queueName")
                .with_context(|| format!("{}: bindings[].queueName: missing", path.display()))?,
            connection: s("connection")
                .with_context(|| format!("{}: bindings[].connection: missing", path.display()))?,
            max_delivery_count: trigger
                .get("maxDeliveryCount")
                .and_then(|v| v.as_u64())
                .unwrap_or(10) as u32,
        },
        "eventGridTrigger" => TriggerSpec::EventGrid,
        "httpTrigger" => TriggerSpec::Http {
            route: s("route").unwrap_or_default(),
            methods: trigger
                .get("methods")
                .and_then(|m| m.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        },
        other => bail!(
            "{}: bindings[].type: `{other}` is not a trigger kiln handles",
            path.display()
        ),
    };
    Ok(FunctionSpec {
        name,
        binding_name,
        trigger: spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_handlers() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("handlers")
    }

    #[test]
    fn every_function_has_a_function_json_and_every_folder_is_a_function() {
        let specs = load(&repo_handlers()).unwrap();
        assert_eq!(specs.len(), FunctionName::ALL.len());
    }

    #[test]
    fn trigger_kinds_match_the_design() {
        let specs = load(&repo_handlers()).unwrap();
        let kind = |f: FunctionName| specs.iter().find(|s| s.name == f).unwrap().trigger.clone();
        assert!(matches!(
            kind(FunctionName::PatchTuesday),
            TriggerSpec::Timer { .. }
        ));
        assert!(matches!(
            kind(FunctionName::BuildSweeper),
            TriggerSpec::Timer { .. }
        ));
        assert!(
            matches!(kind(FunctionName::BuildRequests), TriggerSpec::ServiceBus { ref queue, .. } if queue == crate::app::REQUESTS_QUEUE)
        );
        assert!(
            matches!(kind(FunctionName::BuildPolls), TriggerSpec::ServiceBus { ref queue, .. } if queue == crate::app::POLLS_QUEUE)
        );
        assert_eq!(kind(FunctionName::BaseImageEvents), TriggerSpec::EventGrid);
        assert!(matches!(kind(FunctionName::Api), TriggerSpec::Http { .. }));
    }

    #[test]
    fn a_stray_folder_or_a_missing_function_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for f in FunctionName::ALL {
            let d = dir.path().join(f.as_str());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(
                repo_handlers().join(f.as_str()).join("function.json"),
                d.join("function.json"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("build_pols")).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("build_pols"), "{e}");
        std::fs::remove_dir_all(dir.path().join("build_pols")).unwrap();
        std::fs::remove_dir_all(dir.path().join("retention")).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("missing function.json for function retention"),
            "{e}"
        );
    }
}
