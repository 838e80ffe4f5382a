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

/// `kiln serve` on the simulator's settings with `key` as its signing key.
fn serve_with_key(env: &Env, key: &str, data: &std::path::Path, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env)
        .env("KILN_SIGNING_KEY_VAULT_KEY", key)
        .env("KILN_DATA_DIR", data)
        .env("KILN_EVENTS_KEY", "k")
        .env("KILN_API_KEYS", "a-key-for-this-test-only")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("KILN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Its exit status within `limit`, if it exits; and what it wrote to stderr.
fn exit_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut stderr = child.stderr.take().unwrap();
    // Read as it is written, so a chatty child never blocks on a full pipe.
    let said = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, said.join().unwrap())
}

/// A key that cannot sign stops `kiln serve`, with the setting and the reason.
#[test]
fn kiln_serve_stops_on_a_signing_key_key_vault_does_not_have() {
    let (mut sim, env) = start_sim(&[]);
    let data = tempfile::tempdir().unwrap();
    let missing = format!(
        "{}/keyvault/keys/no-such-key/0123abcd",
        env["KILN_AZURE_MANAGEMENT_URL"]
    );
    let mut serve = serve_with_key(&env, &missing, data.path(), free_port());
    let (status, said) = exit_within(&mut serve, std::time::Duration::from_secs(60));
    let _ = sim.kill();
    let _ = sim.wait();
    let status = status.expect("kiln serve kept running with a key Key Vault does not have");
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("KILN_SIGNING_KEY_VAULT_KEY") && said.contains("no-such-key"),
        "{said}"
    );
}

/// The key is read once kiln answers the host, so a vault that is slow to
/// answer does not hold back the readiness probe; and a SIGTERM while the
/// read is still waiting stops kiln at once rather than after the read's
/// retries (minutes).
#[test]
fn kiln_serve_answers_while_its_key_is_read_and_stops_at_once_on_sigterm() {
    let (mut sim, env) = start_sim(&[]);
    // A vault that takes connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vault = format!(
        "http://{}/keyvault/keys/kiln-provenance/0123abcd",
        silent.local_addr().unwrap()
    );
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept() {
            open.push(conn);
        }
    });
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = serve_with_key(&env, &vault, data.path(), port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answered = loop {
        match reqwest::blocking::get(format!("http://127.0.0.1:{port}/")) {
            Ok(r) => break Some(r.status().as_u16()),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(_) => break None,
        }
    };
    // SAFETY: signals our own child by its id.
    unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) };
    let (status, said) = exit_within(&mut serve, std::time::Duration::from_secs(20));
    let _ = sim.kill();
    let _ = sim.wait();
    drop(held);
    assert_eq!(answered, Some(200), "{said}");
    let status = status.expect("kiln serve outlived SIGTERM by 20 s while its key read waited");
    assert!(status.success(), "{status}: {said}");
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
