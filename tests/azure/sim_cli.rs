//! `kiln sim` as a user runs it: the settings it prints are what `kiln serve` needs.

use serde_json::Value;

use kiln::config::{Env, Settings};

/// Starts `kiln sim` and reads the settings it prints.
fn start_sim(args: &[&str]) -> (std::process::Child, Env) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("sim")
        .args(args)
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
    (child, env)
}

#[test]
fn kiln_sim_prints_the_settings_kiln_serve_needs_and_serves_until_stopped() {
    let (mut child, mut env) =
        start_sim(&["--clock-factor", "600", "--start", "2026-12-08T17:00:00Z"]);
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

/// `kiln serve` reads its Key Vault key once it answers the host (so the
/// network call does not delay the first answer), and a key that cannot
/// sign still stops it, with the setting and the reason.
#[test]
fn kiln_serve_stops_on_a_signing_key_key_vault_does_not_have() {
    let (mut sim, env) = start_sim(&[]);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let missing = format!(
        "{}/keyvault/keys/no-such-key/0123abcd",
        env["KILN_AZURE_MANAGEMENT_URL"]
    );
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(&env)
        .env("KILN_SIGNING_KEY_VAULT_KEY", &missing)
        .env("KILN_DATA_DIR", data.path())
        .env("KILN_EVENTS_KEY", "k")
        .env("KILN_API_KEYS", "a-key-for-this-test-only")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("KILN_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut said).unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let status = status.expect("kiln serve kept running with a key Key Vault does not have");
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("KILN_SIGNING_KEY_VAULT_KEY") && said.contains("no-such-key"),
        "{said}"
    );
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
