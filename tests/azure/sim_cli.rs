//! `kiln sim` as a user runs it: the settings it prints are what `kiln serve` needs.

use serde_json::Value;

use kiln::config::{Env, Settings};

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
    while env.len() < 10 && out.read_line(&mut line).unwrap() > 0 {
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
    // Provenance is signed by the sim's Key Vault key.
    assert!(
        env["KILN_SIGNING_KEY_VAULT_KEY"]
            .starts_with(&format!("{url}/keyvault/keys/kiln-provenance/")),
        "{}",
        env["KILN_SIGNING_KEY_VAULT_KEY"]
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

/// A port nobody listens on now (the OS picks it; it is free again once dropped).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn kiln_sim_factory_builds_the_shipped_tiny_pipeline_through_the_cli() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["sim", "--clock-factor", "600", "--factory", "--api-port"])
        .arg(port.to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KILN_DATA_DIR", data.path())
        .env("KILN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says where its API is once the factory is up.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // Then the API key it made for this run, as an export line.
    let mut export = String::new();
    out.read_line(&mut export).unwrap();
    let key = export
        .trim()
        .strip_prefix("export KILN_API_KEY=")
        .map(|k| k.trim_matches('\'').to_string())
        .unwrap_or_default();
    let api = format!("http://127.0.0.1:{port}");
    let unkeyed = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["builds", "--api", &api])
        .env_remove("KILN_API_KEY")
        .output()
        .unwrap();
    let built = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "tiny", "--wait", "--api", &api])
        .env("KILN_API_KEY", &key)
        .output()
        .unwrap();
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["builds", "--api", &api])
        .env("KILN_API_KEY", &key)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(&api), "{line}");
    assert!(key.len() >= 16, "no API key printed: {export}");
    // Without the key the API refuses, and the CLI says what to set.
    assert!(!unkeyed.status.success());
    let said = String::from_utf8_lossy(&unkeyed.stderr);
    assert!(
        said.contains("KILN_API_KEY") && !said.contains(&key),
        "{said}"
    );
    assert!(
        built.status.success(),
        "kiln build: {}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("succeeded"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
}
