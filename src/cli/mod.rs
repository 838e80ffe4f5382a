//! `kiln` subcommands. Thin: each one parses, calls the library, prints.

mod client;
mod local_cmds;
mod package;
mod preflight;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use client::ApiClient;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Golden-image factory for Azure VM Image Builder"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct ApiOpt {
    /// Base URL of the running app's HTTP API.
    #[arg(
        long,
        global = true,
        env = "KILN_API",
        default_value = "http://127.0.0.1:7071"
    )]
    api: String,
    /// Function key of the app in Azure (the API is `authLevel: function`),
    /// sent as `x-functions-key`; `kiln local` needs none.
    #[arg(
        long = "function-key",
        global = true,
        env = "KILN_FUNCTION_KEY",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    function_key: Option<crate::config::Secret>,
}

fn parse_secret(s: &str) -> Result<crate::config::Secret, String> {
    Ok(crate::config::Secret::new(s))
}

impl ApiOpt {
    fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(&self.api, self.function_key.as_ref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole factory on this machine (embedded store, queue, local provider, HTTP API).
    Local {
        /// HTTP port of the API (default: KILN_HTTP_PORT or 7071).
        #[arg(long)]
        port: Option<u16>,
        /// Settings file whose `Values` are read like app settings.
        #[arg(long, default_value = "local.settings.json")]
        settings: PathBuf,
    },
    /// Run as an Azure Functions custom handler on FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve,
    /// Run the Azure simulator in the foreground; prints the settings a `kiln serve` needs.
    Sim {
        /// Loopback port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Sim seconds per wall second.
        #[arg(long, default_value_t = 60)]
        clock_factor: u32,
        /// Sim time at start (RFC 3339; default: now).
        #[arg(long)]
        start: Option<String>,
        /// Also run the factory on it: `kiln serve` on the azure provider,
        /// driven by a simulated Functions host whose API answers on
        /// `--api-port` (the CLI's `--api`).
        #[arg(long)]
        factory: bool,
        /// The factory's API port.
        #[arg(long, default_value_t = 7071, requires = "factory")]
        api_port: u16,
    },
    /// Check pipeline files; prints `file: json.path: what was expected` per problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the image template kiln would submit for a pipeline's next build.
    Render {
        pipeline: String,
        /// Version to show in the distribution targets.
        #[arg(long, default_value = "1.0.0")]
        version: String,
    },
    /// Request a build; prints its id.
    Build {
        pipeline: String,
        /// Follow the build and exit 0 only when it succeeds.
        #[arg(long)]
        wait: bool,
        /// Idempotency key: the same key returns the same build.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// List builds.
    Builds {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Show one build with its timeline.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Print a build's customization log (every step's output).
    Logs {
        id: String,
        /// Attempt to show (default: the current one).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing while the build runs.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Cancel a build.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// List dead-lettered messages with their reasons.
    Deadletters {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Schedules.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCmd,
    },
    /// Gallery retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCmd,
    },
    /// Local base images.
    Base {
        #[command(subcommand)]
        command: local_cmds::BaseCmd,
    },
    /// Gallery versions: list and read locally; pin and promote through the API.
    Gallery {
        #[command(subcommand)]
        command: local_cmds::GalleryCmd,
    },
    /// Local consumers and boot tests.
    Vm {
        #[command(subcommand)]
        command: local_cmds::VmCmd,
    },
    /// Build the zip to deploy to the Function App: host.json, one folder per
    /// function, the binary host.json names, and the (validated) pipelines.
    Package {
        /// The release binary (`cargo build --release`: target/release/kiln).
        #[arg(long)]
        binary: PathBuf,
        /// Where to write the zip.
        #[arg(long, default_value = "kiln.zip")]
        out: PathBuf,
        /// The repository: host.json, handlers/ and pipelines/ are read from here.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Check every Azure permission kiln and the pipelines' Image Builder
    /// identities need (the Azure provider's settings); prints the `az`
    /// command for each one missing and exits 1 unless all are granted.
    Preflight {
        /// Who the fix commands grant kiln's roles to (default:
        /// AZURE_CLIENT_ID, else the Function App's identity).
        #[arg(long)]
        assignee: Option<String>,
        /// Resource id of the Service Bus namespace (default: the one named
        /// by ServiceBusConnection__fullyQualifiedNamespace, in KILN_AZURE_RESOURCE_GROUP).
        #[arg(long)]
        service_bus_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// Print the next fire times of a pipeline's schedule.
    Next {
        pipeline: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// Print what retention would do; changes nothing.
    Plan {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Apply the retention plan.
    Apply {
        #[command(flatten)]
        api: ApiOpt,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Command::Validate { files } => validate(&files),
        Command::Render { pipeline, version } => render(&pipeline, &version),
        Command::Build {
            pipeline,
            wait,
            key,
            reason,
            timeout,
            api,
        } => build(&api, &pipeline, wait, key, reason, timeout).await,
        Command::Builds {
            json,
            pipeline,
            api,
        } => builds(&api, json, pipeline).await,
        Command::Show { id, json, api } => show(&api, &id, json).await,
        Command::Logs {
            id,
            attempt,
            follow,
            api,
        } => logs(&api, &id, attempt, follow).await,
        Command::Cancel { id, api } => {
            let (_, body) = api
                .client()?
                .post(&format!("/api/builds/{id}/cancel"), &json!({}))
                .await?;
            println!("{id}: {}", body["state"].as_str().unwrap_or("canceling"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Deadletters { json, api } => {
            let v = api.client()?.get("/api/deadletters").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for d in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {}  {}",
                        d["deadAt"].as_str().unwrap_or(""),
                        d["queue"].as_str().unwrap_or(""),
                        d["messageId"].as_str().unwrap_or(""),
                        d["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule {
            command:
                ScheduleCmd::Next {
                    pipeline,
                    count,
                    json,
                },
        } => schedule_next(&pipeline, count, json),
        Command::Retention { command } => match command {
            RetentionCmd::Plan { json, api } => {
                let v = api.client()?.get("/api/retention/plan").await?;
                print_plan(&v, json)?;
                Ok(ExitCode::SUCCESS)
            }
            RetentionCmd::Apply { api } => {
                let (_, v) = api
                    .client()?
                    .post("/api/retention/apply", &json!({}))
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Base { command } => local_cmds::base(command).await,
        Command::Gallery { command } => local_cmds::gallery(command).await,
        Command::Vm { command } => local_cmds::vm(command).await,
        Command::Package { binary, out, root } => {
            let entries = package::entries(&root, &binary)?;
            package::write_zip(&entries, &out)?;
            let functions = entries
                .iter()
                .filter(|e| e.path.ends_with("/function.json"))
                .count();
            let pipelines = entries
                .iter()
                .filter(|e| e.path.starts_with("pipelines/"))
                .count();
            println!(
                "{}: {functions} functions, {pipelines} pipelines, {} entries",
                out.display(),
                entries.len()
            );
            Ok(ExitCode::SUCCESS)
        }
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

fn pipelines_dir() -> PathBuf {
    PathBuf::from(std::env::var("KILN_PIPELINES_DIR").unwrap_or_else(|_| "pipelines".into()))
}

fn load_pipeline(name_or_file: &str) -> anyhow::Result<crate::domain::pipeline::Pipeline> {
    let path = if name_or_file.ends_with(".json") {
        PathBuf::from(name_or_file)
    } else {
        pipelines_dir().join(format!("{name_or_file}.json"))
    };
    crate::app::pipelines::load_file(&path, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Prints every error and warning of each file as `file: json.path: …`;
/// fails (exit 1) only on errors.
fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    use crate::app::lint;
    use crate::domain::finding::Finding;

    let checker = local_cmds::checker();
    let shellcheck = lint::Shellcheck::default();
    let shellcheck = if shellcheck.available() {
        Some(shellcheck)
    } else {
        eprintln!("{}", lint::skipped_warning());
        None
    };
    let mut bad = 0;
    for f in files {
        let check = crate::app::pipelines::check_file(f, checker.as_deref());
        let mut findings: Vec<Finding> = check.errors.iter().cloned().map(Finding::from).collect();
        if let (Some(sc), Some(t)) = (&shellcheck, check.template()) {
            findings.extend(sc.lint(t));
        }
        for finding in &findings {
            eprintln!("{}: {finding}", f.display());
        }
        let errors = findings.iter().filter(|x| x.is_error()).count();
        match &check.pipeline {
            Some(p) if errors == 0 => println!("{}: ok ({})", f.display(), p.name),
            Some(_) | None => bad += 1,
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(pipeline: &str, version: &str) -> anyhow::Result<ExitCode> {
    let p = load_pipeline(pipeline)?;
    let version = version
        .parse()
        .map_err(|e| anyhow::anyhow!("--version: {e}"))?;
    let now = chrono::Utc::now();
    let b = crate::domain::build::Build {
        id: "preview".into(),
        pipeline: p.name.clone(),
        trigger: crate::domain::build::Trigger::Manual,
        reason: "render".into(),
        requested_by: "cli".into(),
        idempotency_key: "render".into(),
        version,
        source_version: None,
        template_hash: crate::app::render::template_hash(&p.template_json),
        attempt: 1,
        max_attempts: p.kiln.build.max_attempts,
        timeout_minutes: p.build_timeout_minutes(),
        state: crate::domain::build::BuildState::Queued,
        created_at: now,
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::app::render::render(&p, &b))?
    );
    Ok(ExitCode::SUCCESS)
}

fn schedule_next(pipeline: &str, count: usize, json: bool) -> anyhow::Result<ExitCode> {
    let p = load_pipeline(pipeline)?;
    let spec = p
        .kiln
        .triggers
        .schedule
        .as_ref()
        .with_context(|| format!("pipeline {} has no kiln.triggers.schedule", p.name))?;
    let s = crate::domain::schedule::Schedule::from_spec(spec).map_err(anyhow::Error::msg)?;
    let next = s.next(chrono::Utc::now(), count);
    if json {
        println!("{}", serde_json::to_string_pretty(&next)?);
    } else {
        for o in next {
            let note = if o.deferred {
                "  (deferred by blackout)"
            } else {
                ""
            };
            println!("{}  cycle {}{note}", o.fires_at.to_rfc3339(), o.cycle);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn build(
    api: &ApiOpt,
    pipeline: &str,
    wait: bool,
    key: Option<String>,
    reason: Option<String>,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let body = json!({
        "pipeline": pipeline,
        "reason": reason.unwrap_or_else(|| "requested from the CLI".into()),
        "requestedBy": user,
        "idempotencyKey": key,
    });
    let (status, v) = client.post("/api/builds", &body).await?;
    let Some(id) = v["build"].as_str().map(str::to_string) else {
        anyhow::bail!(
            "request queued (key {}) but not admitted yet (HTTP {status}); see `kiln builds`",
            v["requestKey"]
        );
    };
    println!("{id}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut last = String::new();
    loop {
        let v = client.get(&format!("/api/builds/{id}")).await?;
        let state = v["state"].as_str().unwrap_or("").to_string();
        if state != last {
            eprintln!("{id}: {state}");
            last = state.clone();
        }
        match state.as_str() {
            "succeeded" => {
                eprintln!(
                    "{id}: published version {}",
                    v["version"].as_str().unwrap_or("?")
                );
                return Ok(ExitCode::SUCCESS);
            }
            "failed" | "canceled" => {
                let detail = &v["build"]["state"];
                eprintln!(
                    "{id}: {state}: {} {}",
                    detail["category"].as_str().unwrap_or(""),
                    detail["message"]
                        .as_str()
                        .or(detail["reason"].as_str())
                        .unwrap_or("")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("{id}: still {state} after {timeout} s");
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn logs(
    api: &ApiOpt,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let mut offset = 0u64;
    loop {
        let mut path = format!("/api/builds/{id}/log?offset={offset}");
        if let Some(a) = attempt {
            path.push_str(&format!("&attempt={a}"));
        }
        let (text, headers) = client.get_text(&path).await?;
        print!("{text}");
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        offset = header("x-kiln-log-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let state = header("x-kiln-build-state").unwrap_or_default();
        if !follow || matches!(state.as_str(), "succeeded" | "failed" | "canceled") {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn builds(api: &ApiOpt, json: bool, pipeline: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match pipeline {
        Some(p) => format!("/api/builds?pipeline={p}"),
        None => "/api/builds".into(),
    };
    let v = api.client()?.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<24} {:<12} {:<10} {:>7}  REASON",
        "ID", "PIPELINE", "STATE", "VERSION", "ATTEMPT"
    );
    for b in v.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<24} {:<12} {:<10} {:>7}  {}",
            b["id"].as_str().unwrap_or(""),
            b["pipeline"].as_str().unwrap_or(""),
            b["state"]["state"].as_str().unwrap_or(""),
            b["version"].as_str().unwrap_or(""),
            b["attempt"].as_u64().unwrap_or(0),
            b["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(api: &ApiOpt, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = api.client()?.get(&format!("/api/builds/{id}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let b = &v["build"];
    println!("build     {}", b["id"].as_str().unwrap_or(""));
    println!("pipeline  {}", b["pipeline"].as_str().unwrap_or(""));
    println!("state     {}", v["state"].as_str().unwrap_or(""));
    println!("version   {}", v["version"].as_str().unwrap_or(""));
    println!("attempt   {}/{}", b["attempt"], b["maxAttempts"]);
    println!(
        "trigger   {}  ({})",
        b["trigger"]["kind"].as_str().unwrap_or(""),
        b["reason"].as_str().unwrap_or("")
    );
    if let Some(m) = b["state"]["message"].as_str() {
        println!(
            "failure   {}: {m}",
            b["state"]["category"].as_str().unwrap_or("")
        );
    }
    println!("timeline:");
    for h in v["timeline"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:>11} → {:<11} {}",
            h["at"].as_str().unwrap_or(""),
            h["from"].as_str().unwrap_or("-"),
            h["to"].as_str().unwrap_or(""),
            h["cause"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    for plan in v.as_array().into_iter().flatten() {
        println!("{}", plan["definitionId"].as_str().unwrap_or(""));
        if let Some(s) = plan.get("skipped").filter(|s| !s.is_null()) {
            println!("  skipped: {s}");
        }
        for item in plan["items"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} {:<10} {}",
                item["version"].as_str().unwrap_or(""),
                item["action"]["kind"].as_str().unwrap_or("?"),
                item["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
