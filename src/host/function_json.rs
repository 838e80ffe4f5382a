//! The function definitions: `handlers/<function>/function.json`, the single
//! source of trigger settings for the Functions host and the local host,
//! and `infra/queues.json`, the single source of the Service Bus queues'
//! settings for `infra/main.bicep` and the local host.
//!
//! `maxDeliveryCount` belongs to the queue, not to the trigger: Service Bus
//! dead-letters a message after the queue's count, and the
//! `serviceBusTrigger` binding has no such property. So it lives in `infra/queues.json`,
//! which Bicep reads with `loadJsonContent()` and kiln embeds at compile
//! time (the file is in the repository, not in the deployed package).

use std::collections::BTreeMap;
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

/// Where the queues' settings live, as named in errors.
pub const QUEUES_FILE: &str = "infra/queues.json";
const QUEUES_JSON: &str = include_str!("../../infra/queues.json");

/// One queue's settings in `infra/queues.json` (what `main.bicep` deploys).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSettings {
    /// Deliveries before Service Bus dead-letters a message.
    pub max_delivery_count: u32,
    /// ISO 8601 duration; as long as `host.json`'s `functionTimeout`.
    pub lock_duration: String,
    /// ISO 8601 duration over which a repeated `MessageId` is dropped.
    pub duplicate_detection_history_time_window: String,
}

/// The queues' settings, by queue name.
pub fn queues() -> anyhow::Result<BTreeMap<String, QueueSettings>> {
    parse_queues(QUEUES_JSON)
}

fn parse_queues(text: &str) -> anyhow::Result<BTreeMap<String, QueueSettings>> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let queues: BTreeMap<String, QueueSettings> = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{QUEUES_FILE}: {}: {}", e.path(), e.inner()))?;
    for (name, q) in &queues {
        if q.max_delivery_count == 0 {
            bail!("{QUEUES_FILE}: {name}.maxDeliveryCount: expected at least 1");
        }
    }
    Ok(queues)
}

/// Reads every function folder under `dir`: each folder with a
/// `function.json`, as the Functions host does (so the app root of a
/// deployed package, where `pipelines/` sits beside the function folders,
/// reads as well as the repository's `handlers/`). A `function.json` that is
/// not a kiln function, or a kiln function without one, is an error.
pub fn load(dir: &Path) -> anyhow::Result<Vec<FunctionSpec>> {
    let queues = queues()?;
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
        if !path.exists() {
            continue;
        }
        let name: FunctionName = folder
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {e}", entry.path().display()))?;
        specs.push(read_one(name, &path, &queues)?);
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

fn read_one(
    name: FunctionName,
    path: &Path,
    queues: &BTreeMap<String, QueueSettings>,
) -> anyhow::Result<FunctionSpec> {
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
        "serviceBusTrigger" => {
            if trigger.get("maxDeliveryCount").is_some() {
                bail!(
                    "{}: bindings[].maxDeliveryCount: not a trigger property (Service Bus counts deliveries per queue); set it in {QUEUES_FILE}",
                    path.display()
                );
            }
            let queue = s("queueName")
                .with_context(|| format!("{}: bindings[].queueName: missing", path.display()))?;
            let settings = queues.get(&queue).with_context(|| {
                format!(
                    "{}: bindings[].queueName: queue `{queue}` is not in {QUEUES_FILE} (expected one of {})",
                    path.display(),
                    queues.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            TriggerSpec::ServiceBus {
                max_delivery_count: settings.max_delivery_count,
                queue,
                connection: s("connection").with_context(|| {
                    format!("{}: bindings[].connection: missing", path.display())
                })?,
            }
        }
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

    /// A copy of the repository's function folders in a temporary folder.
    fn copy_of_handlers() -> tempfile::TempDir {
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
        dir
    }

    #[test]
    fn a_stray_function_or_a_missing_function_is_an_error() {
        let dir = copy_of_handlers();
        std::fs::create_dir_all(dir.path().join("build_pols")).unwrap();
        std::fs::copy(
            repo_handlers().join("build_polls/function.json"),
            dir.path().join("build_pols/function.json"),
        )
        .unwrap();
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

    /// The app root of a deployed package: function folders beside
    /// `pipelines/` and the binary, as the Functions host expects them.
    #[test]
    fn folders_without_a_function_json_are_not_functions() {
        let dir = copy_of_handlers();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        std::fs::write(dir.path().join("host.json"), "{}").unwrap();
        std::fs::write(dir.path().join("kiln"), "binary").unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), FunctionName::ALL.len());
    }

    #[test]
    fn the_local_host_takes_each_queues_delivery_count_from_infra_queues_json() {
        let doc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(QUEUES_FILE))
                .unwrap(),
        )
        .unwrap();
        let specs = load(&repo_handlers()).unwrap();
        let mut seen = 0;
        for spec in &specs {
            match &spec.trigger {
                TriggerSpec::ServiceBus {
                    queue,
                    max_delivery_count,
                    ..
                } => {
                    assert_eq!(
                        u64::from(*max_delivery_count),
                        doc[queue.as_str()]["maxDeliveryCount"].as_u64().unwrap(),
                        "{queue}"
                    );
                    seen += 1;
                }
                TriggerSpec::Timer { .. } | TriggerSpec::EventGrid | TriggerSpec::Http { .. } => {}
            }
        }
        assert_eq!(seen, 2);
        assert_eq!(
            doc.as_object().unwrap().len(),
            seen,
            "a queue no function reads"
        );
    }

    #[test]
    fn max_delivery_count_in_a_trigger_binding_is_refused_and_points_at_the_queues_file() {
        let dir = copy_of_handlers();
        let p = dir.path().join("build_polls/function.json");
        let mut doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        doc["bindings"][0]["maxDeliveryCount"] = serde_json::json!(3);
        std::fs::write(&p, doc.to_string()).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("build_polls/function.json: bindings[].maxDeliveryCount")
                && e.contains(QUEUES_FILE),
            "{e}"
        );
    }

    #[test]
    fn a_queue_missing_from_the_queues_file_is_named() {
        let dir = copy_of_handlers();
        let p = dir.path().join("build_polls/function.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"build-polls\"", "\"build-pols\"")).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("queue `build-pols` is not in infra/queues.json"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_queues_file_names_the_queue_and_field() {
        let e = parse_queues(r#"{"build-polls": {"maxDeliveryCount": "ten", "lockDuration": "PT5M", "duplicateDetectionHistoryTimeWindow": "PT1M"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("infra/queues.json: build-polls.maxDeliveryCount"),
            "{e}"
        );
        let e = parse_queues(r#"{"build-polls": {"maxDeliveryCount": 0, "lockDuration": "PT5M", "duplicateDetectionHistoryTimeWindow": "PT1M"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("build-polls.maxDeliveryCount: expected at least 1"),
            "{e}"
        );
    }
}
