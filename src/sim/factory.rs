//! The whole factory on the simulated Azure, as `kiln sim --factory` runs
//! it: `kiln serve` (the custom handler) in this process on the azure
//! provider pointed at the simulator, driven by the simulated Functions
//! host, whose HTTP front is the API the CLI talks to. Each pipeline's
//! marketplace source is seeded so that its first build has a base.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::functions_host::{FunctionsHost, HostHandle, HostOptions};
use super::server::SimHandle;
use crate::config::{Env, Settings};

pub struct FactoryOptions {
    /// kiln's store (`KILN_DATA_DIR`).
    pub data_dir: PathBuf,
    pub pipelines_dir: PathBuf,
    /// The function folders and host.json.
    pub handlers_dir: PathBuf,
    pub host_json: PathBuf,
    /// Port of the API (the simulated host's HTTP front); 0 picks one.
    pub api_port: u16,
    /// Settings beyond the simulator's (`KILN_EVENTS_KEY`, `KILN_API_KEYS`, …).
    pub extra_env: Vec<(String, String)>,
}

pub struct Factory {
    /// Where `kiln serve` listens (the host calls it there).
    pub handler_url: String,
    pub host: HostHandle,
}

impl Factory {
    pub async fn start(sim: &SimHandle, opts: FactoryOptions) -> anyhow::Result<Factory> {
        let mut env: Env = sim.kiln_env().into_iter().collect();
        for (k, v) in [
            ("KILN_DATA_DIR", opts.data_dir.display().to_string()),
            (
                "KILN_PIPELINES_DIR",
                opts.pipelines_dir.display().to_string(),
            ),
            ("KILN_HANDLERS_DIR", opts.handlers_dir.display().to_string()),
        ] {
            env.insert(k.to_string(), v);
        }
        env.extend(opts.extra_env.iter().cloned());
        let settings = Settings::from_env(&env)?;
        // As `kiln serve` does: the API is not left open by accident.
        settings.check_api_access(crate::config::Listener::FunctionsHost)?;
        let clock = settings.clock();
        let (app, checks) = crate::host::wiring::azure_app(settings, &env, clock).await?;
        checks.run().await?;
        for p in app.pipelines.iter() {
            seed_source(sim, &p.template).await?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let handler_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = crate::host::serve::run(
                listener,
                app,
                crate::host::serve::Readiness::passed(),
                std::future::pending(),
            )
            .await
            {
                tracing::error!(error = %e, "kiln serve stopped");
            }
        });
        let api_key = env
            .get("KILN_API_KEYS")
            .and_then(|k| k.split(',').next())
            .map(|k| k.trim().to_string());
        let host = FunctionsHost::start(HostOptions {
            app_port: opts.api_port,
            api_key,
            ..HostOptions::new(sim, &handler_url, &opts.handlers_dir).host_json(&opts.host_json)?
        })
        .await?;
        Ok(Factory { handler_url, host })
    }
}

/// Seeds the marketplace line a platform-image source reads, at 1.0.0.
async fn seed_source(
    sim: &SimHandle,
    template: &crate::domain::template::ImageTemplate,
) -> anyhow::Result<()> {
    let crate::domain::template::Source::PlatformImage {
        publisher,
        offer,
        sku,
        ..
    } = &template.properties.source
    else {
        return Ok(());
    };
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/arm/marketplace", sim.url()))
        .json(&json!({
            "location": template.location, "publisher": publisher, "offer": offer,
            "sku": sku, "versions": [{ "name": "1.0.0" }]
        }))
        .send()
        .await
        .context("seeding the simulated marketplace")?;
    anyhow::ensure!(
        r.status().is_success(),
        "seeding the simulated marketplace: {}",
        r.status()
    );
    Ok(())
}
