//! No secret leaves: the real `kiln local` process runs a build with known
//! secret values in its settings (the webhook secret, the events key, an
//! API key; a caller also presents a wrong key) and a
//! SAS token in a File customizer's `sourceUri` (allowed on purpose, as a
//! pipeline that fetches a private blob must), and none of them appears in
//! what kiln writes or serves: its log output, the API's answers, the
//! dashboard, the events (file and webhook), the customization log, or the
//! provenance manifest of the published version.
//!
//! The SAS token is used: the file server only answers a request that
//! carries it, so a build that succeeds proves kiln passed it on where it
//! was needed and nowhere else.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The secret values; each is distinctive, so a substring search finds
/// any copy, and each leaks with its own name in the failure.
const WEBHOOK_SECRET: &str = "whsec-canary-7f3a91c2e5";
const EVENTS_KEY: &str = "evkey-canary-4b8d20f6a1";
const SAS_SIG: &str = "c2FzLWNhbmFyeS05ZTFmMmQ3YjQ0";
const API_KEY: &str = "apikey-canary-61d0c8e3f2b7";
/// A wrong key a caller sends: refused, and not written down either.
const WRONG_KEY: &str = "wrongkey-canary-5a4e93b1c7";

fn secrets() -> [(&'static str, &'static str); 5] {
    [
        ("the webhook secret", WEBHOOK_SECRET),
        ("the events key", EVENTS_KEY),
        ("the SAS signature", SAS_SIG),
        ("the API key", API_KEY),
        ("a refused API key", WRONG_KEY),
    ]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback HTTP server that records every request (head and body) and
/// answers `answer(request_target)`.
fn recorder(answer: fn(&str) -> (u16, &'static str)) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            // Head, then as much body as content-length says.
            loop {
                let n = conn.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = answer(&target);
            record.lock().unwrap().push(text);
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (url, seen)
}

/// The blob store: the file only for a request with the SAS signature.
fn blob(target: &str) -> (u16, &'static str) {
    if target.starts_with("/c/agent.conf?") && target.contains(&format!("sig={SAS_SIG}")) {
        (200, "agent=on\n")
    } else {
        (403, "AuthenticationFailed")
    }
}

fn pipeline(blob_url: &str) -> Value {
    let mut doc = common::tiny_in("gal_secrets", "tiny");
    doc["properties"]["customize"] = json!([
        {"type": "File", "name": "agent-config",
         "sourceUri": format!("{blob_url}/c/agent.conf?sv=2022-11-02&se=2027-01-01&sr=b&sp=r&sig={SAS_SIG}"),
         "destination": "/tmp/agent.conf"},
        {"type": "Shell", "name": "install", "inline": ["grep -q agent=on /tmp/agent.conf"]}
    ]);
    doc["kiln"]["allowSecrets"] = json!([{
        "path": "properties.customize[0].sourceUri",
        "kind": "sas-token",
        "reason": "the agent's configuration is a private blob read with a read-only SAS"
    }]);
    doc
}

/// Every file under `dir` kiln writes, disk images included, except the
/// store (it keeps the template as submitted, SAS included: the local
/// provider needs it as AIB does) and the base images' root file systems.
fn text_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                // An image's root file system is the image, not kiln's output.
                if name != "root" {
                    stack.push(path);
                }
            } else if kind.is_file() && !name.starts_with("kiln.db") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn no_secret_appears_in_logs_api_answers_events_build_logs_the_dashboard_or_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let (blob_url, blob_requests) = recorder(blob);
    let (hook_url, deliveries) = recorder(|_| (200, "ok"));
    std::fs::write(
        pipelines.join("tiny.json"),
        serde_json::to_vec_pretty(&pipeline(&blob_url)).unwrap(),
    )
    .unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let kiln = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.current_dir(common::repo())
            .args(args)
            .env("KILN_DATA_DIR", &data)
            .env("KILN_PIPELINES_DIR", &pipelines)
            .env("KILN_HTTP_PORT", port.to_string())
            .env("KILN_WEBHOOK_URL", format!("{hook_url}/hook"))
            .env("KILN_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("KILN_EVENTS_KEY", EVENTS_KEY)
            .env("KILN_API_KEYS", API_KEY)
            // As talkative as kiln gets.
            .env("KILN_LOG", "debug");
        c
    };
    let import = kiln(&[
        "base",
        "import",
        "kiln:busybox:tiny",
        "--version",
        "1.0.0",
        "--busybox",
    ])
    .output()
    .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let log_path = dir.path().join("kiln.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut host = kiln(&["local"])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{api}/api/health")).send().is_err() {
            assert!(
                Instant::now() < deadline,
                "kiln local did not come up: {}",
                std::fs::read_to_string(&log_path).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A caller with a wrong key is refused (and logged, without it).
        let refused = reqwest::blocking::Client::new()
            .get(format!("{api}/api/builds"))
            .header("x-kiln-key", WRONG_KEY)
            .send()
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let created: Value = http
            .post(format!("{api}/api/builds"))
            .json(&json!({"pipeline": "tiny", "requestedBy": "secrets test"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let id = created["build"].as_str().expect("a build id").to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        let build = loop {
            let b: Value = http
                .get(format!("{api}/api/builds/{id}"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            if matches!(
                b["state"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ) {
                break b;
            }
            assert!(Instant::now() < deadline, "build {id} did not end: {b:#}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(build["state"], "succeeded", "{build:#}");
        // The SAS reached the one party that needed it.
        assert!(blob_requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(SAS_SIG)));
        // The webhook got the terminal event, signed.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !deliveries
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.contains("dev.kiln.build.succeeded"))
        {
            assert!(Instant::now() < deadline, "no succeeded event delivered");
            std::thread::sleep(Duration::from_millis(100));
        }

        // Everything kiln serves about it.
        let mut answers = Vec::new();
        for path in [
            "/api/health".to_string(),
            "/api/pipelines".into(),
            "/api/pipelines/tiny".into(),
            "/api/builds".into(),
            format!("/api/builds/{id}"),
            format!("/api/builds/{id}/log"),
            "/api/gallery".into(),
            "/api/retention/plan".into(),
            "/api/retention/audit".into(),
            "/api/deadletters".into(),
            "/api/dashboard".into(),
            "/api/ui/".into(),
            "/api/ui/in-use".into(),
            "/api/ui/assets/app.js".into(),
            "/api/openapi.json".into(),
            "/api/metrics".into(),
        ] {
            let r = http.get(format!("{api}{path}")).send().unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            answers.push((path, r.text().unwrap()));
        }
        let log = http
            .get(format!("{api}/api/builds/{id}/log"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(
            log.contains("agent.conf?sv=REDACTED"),
            "the build log names the file: {log}"
        );

        // What it wrote: files under its data folder (events, customization
        // logs, gallery manifests), its own log output, the webhook bodies.
        let mut written: Vec<(String, String)> = text_files(&data)
            .into_iter()
            .map(|p| {
                let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).to_string();
                (p.display().to_string(), text)
            })
            .collect();
        assert!(
            written
                .iter()
                .any(|(p, t)| p.ends_with("manifest.json") && t.contains("agent-config")),
            "the provenance manifest is among the files: {:?}",
            written.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        assert!(written.iter().any(|(p, _)| p.ends_with("events.jsonl")));
        written.extend(
            deliveries
                .lock()
                .unwrap()
                .iter()
                .map(|d| ("a webhook delivery".to_string(), d.clone())),
        );
        for (what, value) in secrets() {
            for (path, text) in &answers {
                assert!(
                    !text.contains(value),
                    "{what} is in the answer to GET {path}"
                );
            }
            for (file, text) in &written {
                assert!(!text.contains(value), "{what} is in {file}");
            }
        }
    }));
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    let _ = host.wait();
    let output = std::fs::read_to_string(&log_path).unwrap();
    result.unwrap();
    assert!(output.contains("event"), "kiln logged its work: {output}");
    assert!(
        output.contains("API call refused: wrong API key"),
        "{output}"
    );
    for (what, value) in secrets() {
        assert!(!output.contains(value), "{what} is in kiln's log output");
    }
}
