//! The `customization.log` of a run, as Packer in AIB's build container
//! writes it: rendered from the run's plan at the request's now, so it only
//! ever grows. A line per phase start, two per customizer (the provisioner
//! starting, then what it runs, with the step's name; the `kiln-sbom`
//! step's inventory block after its lines, `inventory.rs`), and for a failed run
//! the failing step's exit status. Shaped like Packer's output, not byte for
//! byte.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::build::{Outcome, RunSubState, RunView};
use super::world::{Template, TemplateRun};
use super::ArmWorld;

pub(crate) const CONTAINER: &str = "packerlogs";
pub(crate) const LOG: &str = "customization.log";

pub(crate) fn log_url(world: &ArmWorld, run: &TemplateRun) -> String {
    world.url(&format!(
        "/blob/{}/{CONTAINER}/{}/{LOG}",
        run.storage_account, run.log_folder
    ))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y/%m/%d %H:%M:%S").to_string()
}

/// The log of `run` as it stands at `now`.
pub(crate) fn render_log(t: &Template, run: &TemplateRun, now: DateTime<Utc>) -> Vec<u8> {
    let s = &run.run.schedule;
    let cut = run
        .run
        .cancel
        .filter(|c| c.at < s.ends)
        .map(|c| c.at)
        .unwrap_or(s.ends);
    let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
    for (phase, at) in &s.phases {
        let line = match phase {
            RunSubState::Queued => format!("PACKER START: image template {} queued", t.name),
            RunSubState::Building => {
                "[azure-arm] ==> azure-arm: Creating the build VM ...".to_string()
            }
            RunSubState::Customizing => {
                "[azure-arm] ==> azure-arm: Waiting for SSH to become available...".to_string()
            }
            RunSubState::Validating => {
                "[azure-arm] ==> azure-arm: Running in-VM validations ...".to_string()
            }
            RunSubState::Distributing => {
                "[azure-arm] ==> azure-arm: Capturing image and distributing ...".to_string()
            }
        };
        lines.push((*at, line));
    }
    for (i, at) in s.steps.iter().enumerate() {
        let what = describe_step(t, i);
        lines.push((
            *at,
            format!(
                "[azure-arm] (telemetry) Starting provisioner {}",
                packer_type(t, i)
            ),
        ));
        lines.push((*at, format!("[azure-arm] ==> azure-arm: {what}")));
        // What the step prints, as Packer relays a script's output.
        if let Some(c) = customizer(t, i) {
            for l in super::inventory::block(&t.body, c) {
                lines.push((*at, format!("[azure-arm]     azure-arm: {l}")));
            }
        }
    }
    match &s.outcome {
        Outcome::Failed { step } => {
            lines.push((
                s.ends,
                "[azure-arm] ==> azure-arm: Script exited with non-zero exit status: 1. Allowed exit codes are: [0]".to_string(),
            ));
            lines.push((
                s.ends,
                format!(
                    "[azure-arm] Build 'azure-arm' errored: step {} ({}) failed: Script exited with non-zero exit status: 1",
                    step + 1,
                    describe_step(t, *step)
                ),
            ));
        }
        Outcome::PartiallySucceeded { region } => lines.push((
            s.ends,
            format!("[azure-arm] ==> azure-arm: replication to {region} failed"),
        )),
        Outcome::Succeeded => lines.push((
            s.ends,
            "[azure-arm] Build 'azure-arm' finished.".to_string(),
        )),
    }
    if let Some(c) = run.run.cancel.filter(|c| c.at < s.ends) {
        lines.retain(|(at, _)| *at < c.at);
        lines.push((
            c.at,
            "[azure-arm] Cancelling build after receiving a cancel request".to_string(),
        ));
        if let Some(done) = c.done {
            lines.push((done, "[azure-arm] Build 'azure-arm' canceled.".to_string()));
        }
    } else {
        lines.retain(|(at, _)| *at <= cut);
    }
    // Stable: phases and steps that start together keep their order.
    lines.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    for (at, line) in lines.into_iter().filter(|(at, _)| *at <= now) {
        out.push_str(&format!("{} {line}\n", stamp(at)));
    }
    out.into_bytes()
}

fn customizer(t: &Template, i: usize) -> Option<&Value> {
    t.body
        .pointer("/properties/customize")
        .and_then(Value::as_array)
        .and_then(|a| a.get(i))
}

fn describe_step(t: &Template, i: usize) -> String {
    // The run plan holds the same descriptions; re-derived here so a kept
    // log needs nothing but the template.
    customizer(t, i)
        .map(|c| describe(c, i))
        .unwrap_or_else(|| format!("step {}", i + 1))
}

fn packer_type(t: &Template, i: usize) -> &'static str {
    match customizer(t, i)
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
    {
        Some("PowerShell") => "powershell",
        Some("File") => "file",
        Some("WindowsRestart") => "windows-restart",
        Some("WindowsUpdate") => "windows-update",
        _ => "shell",
    }
}

/// One log line per customizer: what Packer prints when it starts it.
pub(crate) fn describe(c: &Value, i: usize) -> String {
    let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
    let what = match text("type") {
        "Shell" if c.get("scriptUri").is_some() => {
            format!("Provisioning with shell script: {}", text("scriptUri"))
        }
        "Shell" => format!("Provisioning with shell script: /tmp/script_{i}.sh"),
        "PowerShell" if c.get("scriptUri").is_some() => {
            format!("Provisioning with powershell script: {}", text("scriptUri"))
        }
        "PowerShell" => {
            format!("Provisioning with powershell script: C:/Windows/Temp/script_{i}.ps1")
        }
        "File" => format!("Uploading {} => {}", text("sourceUri"), text("destination")),
        "WindowsRestart" => "Restarting Machine".to_string(),
        other => format!("Running {other} customizer"),
    };
    match c.get("name").and_then(Value::as_str) {
        Some(n) => format!("{what} ({n})"),
        None => what,
    }
}

/// `lastRunStatus.message` as AIB writes it.
pub(crate) fn run_message(
    world: &ArmWorld,
    t: &Template,
    run: &TemplateRun,
    v: &RunView,
) -> String {
    match v {
        RunView::Ended {
            outcome: Outcome::Failed { .. },
        } => format!(
            "Failed while waiting for packerizer: Microservice has failed: Failed while processing request: Error when executing packerizer: Packer build command has failed: exit status 1. During the image build, a failure has occurred, please review the build log to identify which build/customization step failed. For more troubleshooting steps go to https://aka.ms/azvmimagebuilderts. Image Build log location: {}. OperationId: {}. Use this operationId to search packer logs.",
            log_url(world, run),
            run.operation
        ),
        RunView::Ended {
            outcome: Outcome::PartiallySucceeded { region },
        } => format!(
            "Distribution for one or more distributors failed; the run output shows which. Error waiting on Azure Compute Gallery: replication failed in region {region} for image template {}.",
            t.name
        ),
        RunView::Ended {
            outcome: Outcome::Succeeded,
        }
        | RunView::Running(_)
        | RunView::Canceling(_)
        | RunView::Canceled { .. } => String::new(),
    }
}
