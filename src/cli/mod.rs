//! `kiln` subcommands. Thin: each one parses, calls the library, prints,
//! and ends with an [`Exit`] code (listed in `kiln --help`).
//!
//! - `args.rs`: the command line (clap).
//! - `exit.rs`: the exit codes.
//! - `offline.rs`: commands on files alone (validate, render, schedule, package).
//! - `remote.rs`: commands through a running factory's HTTP API.
//! - `watch.rs` and `progress.rs`: following a build, and how it is shown.
//! - `local_cmds.rs`: running the factory (local, serve, sim) and the local data folder.
//! - `evidence_cmds.rs`: a version's SBOM, diff and verification, from the data folder.
//! - `client.rs`: the HTTP client of the API; `preflight.rs`, `package.rs`.
//! - `logging.rs`: the log lines' format (JSON under the Functions host).

mod args;
mod client;
mod evidence_cmds;
mod exit;
mod local_cmds;
pub mod logging;
mod offline;
mod package;
mod preflight;
mod progress;
mod remote;
mod watch;

pub use args::Cli;
pub use exit::Exit;

use args::{Command, RetentionCmd, ScheduleCmd};

pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Local { port, settings } => local_cmds::run_local(port, &settings).await,
        Command::Serve => local_cmds::run_serve().await,
        Command::Sim {
            port,
            clock_factor,
            start,
            factory,
            api_port,
        } => {
            let factory = factory.then_some(api_port);
            local_cmds::run_sim(port, clock_factor, start.as_deref(), factory).await
        }
        Command::Validate { files } => offline::validate(&files),
        Command::Render { pipeline, version } => offline::render(&pipeline, &version),
        Command::Build {
            pipeline,
            wait,
            key,
            reason,
            timeout,
            api,
        } => remote::build(&api, &pipeline, wait, key, reason, timeout).await,
        Command::Builds {
            json,
            pipeline,
            api,
        } => remote::builds(&api, json, pipeline).await,
        Command::Show { id, json, api } => remote::show(&api, &id, json).await,
        Command::Logs {
            id,
            attempt,
            follow,
            api,
        } => watch::logs(&api.client()?, &id, attempt, follow).await,
        Command::Cancel { id, api } => remote::cancel(&api, &id).await,
        Command::Deadletters { json, api } => remote::dead_letters(&api, json).await,
        Command::Schedule {
            command:
                ScheduleCmd::Next {
                    pipeline,
                    count,
                    json,
                },
        } => offline::schedule_next(&pipeline, count, json),
        Command::Retention { command } => match command {
            RetentionCmd::Plan { json, api } => remote::retention_plan(&api, json).await,
            RetentionCmd::Apply { api } => remote::retention_apply(&api).await,
            RetentionCmd::Audit { json, api } => remote::retention_audit(&api, json).await,
        },
        Command::Base { command } => local_cmds::base(command).await,
        Command::Sbom { version_id, format } => evidence_cmds::sbom(&version_id, format).await,
        Command::Diff { from, to, json } => evidence_cmds::diff(&from, to.as_deref(), json).await,
        Command::Verify {
            version_id,
            key,
            rebuild,
            rebuild_timeout,
            json,
        } => {
            let rebuild =
                rebuild.then(|| std::time::Duration::from_secs(rebuild_timeout.saturating_mul(60)));
            evidence_cmds::verify(&version_id, &key, rebuild, json).await
        }
        Command::Gallery { command } => local_cmds::gallery(command).await,
        Command::Vm { command } => local_cmds::vm(command).await,
        Command::Package { binary, out, root } => offline::package_zip(&root, &binary, &out),
        Command::Preflight {
            assignee,
            service_bus_id,
        } => {
            preflight::run(preflight::Options {
                assignee,
                service_bus_id,
            })
            .await
        }
    }
}
