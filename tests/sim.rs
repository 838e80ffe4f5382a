//! One build end to end on the simulated Azure: the simulator (ARM and
//! Service Bus, at 600× sim time), `kiln serve`'s router in this process on
//! the azure provider pointed at it (`KILN_CLOCK`, `KILN_AZURE_*_URL`,
//! `KILN_AZURE_CREDENTIAL=sim`), and the simulated Functions host driving it
//! from the repository's `handlers/` and `host.json`. A build request goes in
//! through Service Bus, as a CI pipeline would send it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use kiln::config::{Env, Settings};
use kiln::sim::functions_host::{wait_until, FunctionsHost, HostOptions};
use kiln::sim::server::{Sim, SimHandle, SimOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped tiny pipeline on the sim's subscription, with an Azure-sized
/// build timeout: its 10 minutes fit the local provider, while the sim plays
/// a 30-minute AIB build.
fn tiny_on(sim: &SimHandle) -> String {
    let text = std::fs::read_to_string(repo().join("pipelines/tiny.json"))
        .unwrap()
        .replace(
            "00000000-0000-0000-0000-000000000000",
            &sim.options().subscription_id,
        );
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["buildTimeoutInMinutes"] = json!(60);
    doc.to_string()
}

/// `kiln serve` (the custom handler) on a loopback port, configured from the
/// sim's settings as `kiln sim` prints them.
async fn kiln_serve(sim: &SimHandle, dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(dir.join("pipelines/tiny.json"), tiny_on(sim)).unwrap();
    let mut env: Env = sim.kiln_env().into_iter().collect();
    for (k, v) in [
        ("KILN_DATA_DIR", dir.join("data").display().to_string()),
        (
            "KILN_PIPELINES_DIR",
            dir.join("pipelines").display().to_string(),
        ),
        (
            "KILN_HANDLERS_DIR",
            repo().join("handlers").display().to_string(),
        ),
        ("KILN_EVENTS_KEY", "sim-e2e-events-key".to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    let settings = Settings::from_env(&env).unwrap();
    let clock = settings.clock();
    let app = kiln::host::wiring::azure_app(settings, &env, clock).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        kiln::host::serve::run(listener, app, std::future::pending())
            .await
            .unwrap();
    });
    url
}

/// What the host invoked and the last Azure requests, for a failure message.
fn diagnose(sim: &SimHandle, host: &kiln::sim::functions_host::HostHandle) -> String {
    let invocations: Vec<String> = host
        .invocations()
        .iter()
        .filter(|i| {
            !matches!(
                i.function.as_str(),
                "build_sweeper" | "patch_tuesday" | "base_image_watch"
            )
        })
        .map(|i| format!("{} {:?} -> {:?}", i.function, i.trigger, i.status))
        .collect();
    // Receives (the host's long polls) left out.
    let requests: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| !r.path.contains("/messages/head"))
        .collect();
    let last: Vec<String> = requests
        .iter()
        .take(10)
        .map(|r| format!("{} {} -> {:?}", r.method, r.path, r.outcome))
        .collect();
    format!(
        "invocations (timers left out):\n  {}\nfirst requests:\n  {}",
        invocations.join("\n  "),
        last.join("\n  ")
    )
}

#[tokio::test]

async fn a_build_requested_through_service_bus_succeeds_and_its_version_is_in_the_gallery() {
    let sim = Sim::start(SimOptions::new(600)).await.unwrap();
    // The tiny pipeline's source, in the sim's marketplace (ARM's control API).
    let seeded = reqwest::Client::new()
        .post(format!("{}/_sim/arm/marketplace", sim.url()))
        .json(
            &json!({ "location": "westeurope", "publisher": "kiln", "offer": "busybox",
                       "sku": "tiny", "versions": [{ "name": "1.0.0" }] }),
        )
        .send()
        .await
        .unwrap();
    assert!(
        seeded.status().is_success(),
        "seeding the marketplace: {}",
        seeded.status()
    );
    let dir = tempfile::tempdir().unwrap();
    let handler = kiln_serve(&sim, dir.path()).await;
    let host = FunctionsHost::start(
        HostOptions::new(&sim, &handler, &repo().join("handlers"))
            .host_json(&repo().join("host.json"))
            .unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();

    let sent = http
        .post(format!("{}/build-requests/messages", sim.service_bus_url()))
        .bearer_auth("ci-pipeline")
        .header("BrokerProperties", r#"{"MessageId":"sim-e2e-1"}"#)
        .header("Content-Type", "application/json")
        .body(
            json!({ "pipeline": "tiny", "reason": "simulator end to end", "requestedBy": "ci@sim", "idempotencyKey": "sim-e2e-1" })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);

    let builds_url = format!("{}/api/builds", host.app_url());
    let id = wait_until(
        Duration::from_secs(30),
        "the request to be admitted",
        || async {
            let list: Value = http.get(&builds_url).send().await.ok()?.json().await.ok()?;
            let builds = list.as_array().or_else(|| list["builds"].as_array())?;
            builds
                .iter()
                .find_map(|b| b["id"].as_str().or_else(|| b["build"]["id"].as_str()))
                .map(str::to_string)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&sim, &host)));
    let done = host
        .wait_for_build(&id, "succeeded", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diagnose(&sim, &host)));
    let version = done["version"].as_str().unwrap().to_string();

    let gallery = format!(
        "{}/subscriptions/{}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/tiny/versions?api-version=2025-03-03",
        sim.url(),
        sim.options().subscription_id
    );
    let versions: Value = http
        .get(&gallery)
        .bearer_auth("check")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        versions["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == version.as_str()),
        "{version} not in {versions}"
    );
    // Every ARM call of this build is in the request log under its template name.
    let template_calls = sim.transport().requests_matching(&format!("kiln-{id}-a1"));
    assert!(!template_calls.is_empty());
}

#[test]
fn kiln_sim_prints_the_settings_kiln_serve_needs_and_serves_until_stopped() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "sim",
            "--clock-factor",
            "600",
            "--start",
            "2026-12-08T17:00:00Z",
        ])
        .env("KILN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut env = Env::new();
    let mut line = String::new();
    while env.len() < 9 && out.read_line(&mut line).unwrap() > 0 {
        if let Some((k, v)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        {
            env.insert(k.to_string(), v.trim_matches('\'').to_string());
        }
        line.clear();
    }
    let url = env["KILN_AZURE_MANAGEMENT_URL"].clone();
    let answer = reqwest::blocking::get(format!("{url}/_sim/clock"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(env["KILN_PROVIDER"], "azure");
    assert_eq!(env["KILN_AZURE_CREDENTIAL"], "sim");
    assert_eq!(
        env["KILN_AZURE_SERVICE_BUS_URL"],
        format!("{url}/servicebus")
    );
    let clock = kiln::ports::ScaledClock::parse_setting(&env["KILN_CLOCK"]).unwrap();
    assert_eq!(clock.factor, 600);
    assert_eq!(clock.start.to_rfc3339(), "2026-12-08T17:00:00+00:00");
    // What it printed is a configuration kiln accepts.
    env.insert("KILN_EVENTS_KEY".into(), "k".into());
    let s = Settings::from_env(&env).unwrap();
    assert_eq!(s.clock, Some(clock));
    assert!(kiln::providers::azure::AzureSettings::from_env(&env).is_ok());
    let answer: Value = answer.unwrap().json().unwrap();
    assert_eq!(answer["setting"], env["KILN_CLOCK"].as_str());
}
