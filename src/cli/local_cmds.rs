//! Commands that run the factory or work on the local data folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::args::{BaseCmd, GalleryCmd, VmCmd};
use super::exit::Exit;
use crate::config::{gather_env, ProviderKind, Settings};
use crate::host::wiring::{azure_app, local_provider, local_runtime, open_db, NetworkChecks};
use crate::ports::{Gallery, ImageBuilder, SystemClock};
use crate::providers::local::{BaseFrom, LocalProvider, ToolNeed};

fn settings(local_settings: &Path) -> anyhow::Result<Settings> {
    Settings::from_env(&gather_env(Some(local_settings))?)
}

fn provider() -> anyhow::Result<LocalProvider> {
    let s = settings(Path::new("local.settings.json"))?;
    local_provider(&s, open_db(&s)?)
}

/// The local provider's template checks, for `kiln validate` when the local
/// provider is the one that builds (`KILN_PROVIDER` unset or `local`): what
/// it cannot do is no error for a pipeline that builds on Azure.
pub fn checker() -> Option<Box<dyn ImageBuilder>> {
    match settings(Path::new("local.settings.json")) {
        Ok(s) if s.provider == ProviderKind::Azure => return None,
        Ok(_) | Err(_) => {}
    }
    match provider() {
        Ok(p) => Some(Box::new(p) as Box<dyn ImageBuilder>),
        Err(e) => {
            eprintln!("warning: the local provider's checks were skipped: {e:#}");
            None
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Stops a command before it starts work that would fail later for want of
/// a host tool: one line per tool, with the Debian package that has it.
fn require_tools(needs: &[ToolNeed], what: &str) -> anyhow::Result<()> {
    let missing = LocalProvider::missing_tools(needs);
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "{what} needs host tools that are missing (scripts/setup-debian.sh installs them):\n{}",
        missing
            .iter()
            .map(|m| format!("  {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

pub async fn run_local(port: Option<u16>, local_settings: &Path) -> anyhow::Result<Exit> {
    let mut s = settings(local_settings)?;
    if let Some(p) = port {
        s.http_port = p;
    }
    let _lock = lock_data_dir(&s.data_dir)?;
    s.check_api_access(crate::config::Listener::Local(s.http_bind))?;
    let addr = std::net::SocketAddr::from((s.http_bind, s.http_port));
    // Builds need the capture tools (checked before the pipelines are read
    // and linted); pipelines with a boot test need QEMU too.
    require_tools(&[ToolNeed::Build], "kiln local")?;
    let env = gather_env(Some(local_settings))?;
    let runtime = local_runtime(s, &env, Arc::new(SystemClock)).await?;
    if runtime
        .app
        .pipelines
        .iter()
        .any(|p| p.kiln.build.boot_test.is_some())
    {
        require_tools(
            &[ToolNeed::Boot],
            "kiln local (a pipeline has kiln.build.bootTest)",
        )?;
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("Cannot listen on {addr}: the port is taken (choose another with --port)")
    })?;
    tracing::info!(%addr, pipelines = ?runtime.app.pipelines.names(), "kiln local is up");
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    runtime.into_host().run(listener, rx).await?;
    tracing::info!("kiln local stopped");
    Ok(Exit::Ok)
}

/// One host per data folder: it owns the queue's message locks (and
/// releases stale ones at start), so a second host would steal work.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    let path = dir.join("kiln.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("Cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another kiln local is running on the data folder {} (KILN_DATA_DIR); stop it or use another folder",
            dir.display()
        );
    }
    Ok(f)
}

pub async fn run_serve() -> anyhow::Result<Exit> {
    let port: u16 = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .or_else(|_| std::env::var("FUNCTIONS_HTTPWORKER_PORT"))
        .context("FUNCTIONS_CUSTOMHANDLER_PORT: not set (the Functions host sets it)")?
        .parse()
        .context("FUNCTIONS_CUSTOMHANDLER_PORT: expected a port number")?;
    let env = gather_env(Some(Path::new("local.settings.json")))?;
    let s = Settings::from_env(&env)?;
    s.check_api_access(crate::config::Listener::FunctionsHost)?;
    // KILN_CLOCK (from `kiln sim`) puts kiln on the simulator's time.
    let clock = s.clock();
    let (app, checks) = match s.provider {
        ProviderKind::Azure => azure_app(s, &env, clock).await?,
        ProviderKind::Local => (
            local_runtime(s, &env, clock).await?.app,
            NetworkChecks::none(),
        ),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(port, provider = ?app.settings.provider, "kiln custom handler listening");
    // The network checks run while the handler answers; one that fails
    // stops it as a wrong setting stops the start (the host then logs the
    // error and starts kiln again).
    crate::host::serve::run_checked(listener, app, checks.run(), shutdown_signal()).await?;
    Ok(Exit::Ok)
}

/// `kiln sim`: the simulated Azure in the foreground until Ctrl-C.
pub async fn run_sim(
    port: u16,
    clock_factor: u32,
    start: Option<&str>,
    factory_api_port: Option<u16>,
) -> anyhow::Result<Exit> {
    if clock_factor == 0 {
        bail!("--clock-factor: expected a whole number of at least 1, got 0");
    }
    let start = match start {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| anyhow::anyhow!("--start: `{t}` is not an RFC 3339 time: {e}"))?,
        ),
    };
    let mut options = crate::sim::server::SimOptions::new(clock_factor);
    options.port = port;
    options.start = start;
    let sim = crate::sim::server::Sim::start(options).await?;
    if let Some(api_port) = factory_api_port {
        let mut env = gather_env(Some(Path::new("local.settings.json")))?;
        // Its own store, so a local factory's data folder is left alone.
        env.entry("KILN_DATA_DIR".into())
            .or_insert_with(|| ".kiln-sim".into());
        let api_key = env
            .get("KILN_API_KEYS")
            .and_then(|k| k.split(',').next())
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| format!("sim-{}", uuid::Uuid::new_v4().simple()));
        let local = Settings::from_env(&env)?;
        let host_json = local
            .handlers_dir
            .parent()
            .map(|p| p.join("host.json"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("host.json"));
        let factory = crate::sim::factory::Factory::start(
            &sim,
            crate::sim::factory::FactoryOptions {
                data_dir: local.data_dir.clone(),
                pipelines_dir: local.pipelines_dir.clone(),
                handlers_dir: local.handlers_dir.clone(),
                host_json,
                api_port,
                // The events endpoint needs a key: yours, or one nobody
                // knows (set KILN_EVENTS_KEY to post events to it).
                extra_env: vec![
                    (
                        "KILN_EVENTS_KEY".to_string(),
                        env.get("KILN_EVENTS_KEY")
                            .cloned()
                            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                    ),
                    ("KILN_API_KEYS".to_string(), api_key.clone()),
                ],
            },
        )
        .await?;
        println!(
            "# kiln on the simulated Azure at {clock_factor}x: API {} (try `kiln build tiny --wait --api {}`)",
            factory.host.app_url(),
            factory.host.app_url()
        );
        // The API needs a key, as `kiln serve` does: yours (KILN_API_KEYS)
        // or this run's own, which only this simulator accepts.
        println!("export KILN_API_KEY='{api_key}'");
        shutdown_signal().await;
        factory.host.stop().await;
        sim.stop().await;
        return Ok(Exit::Ok);
    }
    println!(
        "# kiln sim on {} at {clock_factor}x; for `kiln serve` (with your own KILN_EVENTS_KEY):",
        sim.url()
    );
    for (k, v) in sim.kiln_env() {
        // Single quotes: the clock setting has spaces; nothing here has a quote.
        println!("export {k}='{v}'");
    }
    shutdown_signal().await;
    sim.stop().await;
    Ok(Exit::Ok)
}

pub async fn base(cmd: BaseCmd) -> anyhow::Result<Exit> {
    let p = provider()?;
    match cmd {
        BaseCmd::Import {
            urn,
            version,
            debian,
            include,
            tar,
            busybox,
        } => {
            let from = match (debian, tar, busybox) {
                (Some(suite), None, false) => {
                    require_tools(&[ToolNeed::DebianImport], "kiln base import --debian")?;
                    BaseFrom::Debian { suite, include }
                }
                (None, Some(t), false) => BaseFrom::Tar(t),
                (None, None, true) => {
                    require_tools(&[ToolNeed::BusyboxImport], "kiln base import --busybox")?;
                    BaseFrom::Busybox
                }
                _ => bail!("choose one of --debian SUITE, --tar FILE, --busybox"),
            };
            let b = p.import_base(&urn, &version, from).await?;
            println!("{}", serde_json::to_string(&b)?);
        }
        BaseCmd::Deprecate { urn, version } => {
            p.deprecate_base(&urn, &version).await?;
            println!("deprecated {urn} {version}");
        }
        BaseCmd::List { json } => {
            let bases = p.list_bases().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&bases)?);
            } else {
                for b in bases {
                    println!("{}", serde_json::to_string(&b)?);
                }
            }
        }
    }
    Ok(Exit::Ok)
}

pub async fn gallery(cmd: GalleryCmd) -> anyhow::Result<Exit> {
    let (path, body, api) = match cmd {
        GalleryCmd::Pin {
            version_id,
            tag,
            unpin,
            reason,
            api,
        } => (
            "/api/gallery/pin",
            serde_json::json!({"versionId": version_id, "tag": tag, "unpin": unpin, "reason": reason}),
            api,
        ),
        GalleryCmd::Promote {
            version_id,
            demote,
            api,
        } => (
            "/api/gallery/promote",
            serde_json::json!({"versionId": version_id, "demote": demote}),
            api,
        ),
        GalleryCmd::List { json } => return gallery_list(json).await,
        GalleryCmd::Cat { version_id, path } => {
            let v = provider()?
                .gallery_version(&version_id)
                .await?
                .with_context(|| format!("gallery image version {version_id} does not exist"))?;
            print!("{}", read_from_qcow2(&v.disk, &path)?);
            return Ok(Exit::Ok);
        }
    };
    let (_, v) = api.client()?.post(path, &body).await?;
    println!(
        "{}/versions/{}  excludeFromLatest={}  tags={}",
        v["definitionId"].as_str().unwrap_or(""),
        v["version"].as_str().unwrap_or(""),
        v["excludeFromLatest"],
        v["tags"]
    );
    Ok(Exit::Ok)
}

async fn gallery_list(json: bool) -> anyhow::Result<Exit> {
    let p = provider()?;
    let mut out = Vec::new();
    for def in p.gallery_images().await? {
        let mut versions = p.list_versions(&def).await?;
        versions.sort_by_key(|v| v.version);
        out.push(serde_json::json!({ "definition": def, "versions": versions }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Exit::Ok);
    }
    for d in &out {
        println!("{}", d["definition"].as_str().unwrap_or(""));
        for v in d["versions"].as_array().into_iter().flatten() {
            let regions: Vec<String> = v["replication"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}x{} {}",
                        r["region"].as_str().unwrap_or(""),
                        r["replicaCount"],
                        r["state"].as_str().unwrap_or("")
                    )
                })
                .collect();
            println!(
                "  {:<12} {}  excludeFromLatest={}  build={}  [{}]",
                v["version"].as_str().unwrap_or(""),
                v["published"].as_str().unwrap_or("-"),
                v["excludeFromLatest"],
                v["tags"]["kiln.build"].as_str().unwrap_or("-"),
                regions.join(", ")
            );
        }
    }
    Ok(Exit::Ok)
}

/// Reads one file out of a qcow2's ext4 filesystem: convert to raw, then debugfs.
pub fn read_from_qcow2(qcow2: &Path, path: &str) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new().prefix("kiln-cat").tempdir()?;
    let raw = dir.path().join("disk.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow2)
        .arg(&raw)
        .status()
        .context("Cannot run qemu-img")?;
    if !st.success() {
        bail!("qemu-img convert of {} failed", qcow2.display());
    }
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&raw)
        .output()
        .context("Cannot run debugfs")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success()
        || (text.is_empty() && String::from_utf8_lossy(&out.stderr).contains("not found"))
    {
        bail!("{path}: not found in {}", qcow2.display());
    }
    Ok(text)
}

pub async fn vm(cmd: VmCmd) -> anyhow::Result<Exit> {
    let p = provider()?;
    match cmd {
        VmCmd::Run {
            version_id,
            check,
            timeout,
        } => {
            require_tools(&[ToolNeed::Boot], "kiln vm run")?;
            let r = p
                .vm_run(&version_id, &check, Duration::from_secs(timeout))
                .await?;
            println!("accel: {}", r.accel);
            println!("{}", r.output);
            return Ok(Exit::ok_if(r.passed));
        }
        VmCmd::Create { image, name } => {
            let r = p.vm_create(&image, &name).await?;
            println!("{}  {}", r.name, r.image_reference);
        }
        VmCmd::List { json } => {
            let vms = p.vm_list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
            } else {
                for v in vms {
                    println!("{}  {}  {}", v.name, v.image_reference, v.created_at);
                }
            }
        }
        VmCmd::Delete { name } => {
            if !p.vm_delete(&name).await? {
                bail!("no VM named {name}");
            }
            println!("deleted {name}");
        }
    }
    Ok(Exit::Ok)
}
