//! Following builds from the CLI: the exit code says how a build ended,
//! listings print JSON with `--json`, progress is plain lines when piped,
//! and `kiln serve` logs JSON lines that name the build and pipeline.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::kiln;

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped tiny pipeline as `name`, on its own image definition, with
/// `customize` replaced when given.
fn write_tiny(dir: &Path, name: &str, customize: Option<Value>) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.json"))
            .unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["distribute"][0]["galleryImageId"] =
        json!(format!("{SUB}/galleries/gal_test/images/{name}"));
    if let Some(c) = customize {
        doc["properties"]["customize"] = c;
    }
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .unwrap();
}

/// `kiln` with the data folder, pipelines and API of one test factory.
struct Env {
    data: std::path::PathBuf,
    pipelines: std::path::PathBuf,
    port: u16,
    faults: String,
}

impl Env {
    fn kiln(&self) -> Command {
        let mut c = kiln();
        c.env("KILN_DATA_DIR", &self.data)
            .env("KILN_PIPELINES_DIR", &self.pipelines)
            .env("KILN_HTTP_PORT", self.port.to_string())
            .env("KILN_API", format!("http://127.0.0.1:{}", self.port))
            .env("KILN_LOCAL_FAULTS", &self.faults);
        c
    }

    fn import_base(&self) {
        let out = self
            .kiln()
            .args([
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
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.kiln().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} did not print JSON: {e}"))
    }
}

fn wait_until_up(url: &str, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server exited before answering"
        );
        if reqwest::blocking::get(url).is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not answer in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn build_wait_exits_with_how_the_build_ended_and_listings_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    write_tiny(&pipelines, "tiny", None);
    write_tiny(
        &pipelines,
        "broken",
        Some(json!([{"type": "Shell", "name": "fails", "inline": ["exit 3"]}])),
    );
    write_tiny(&pipelines, "slow", None);
    let env = Env {
        data: dir.path().join("data"),
        pipelines,
        port: free_port(),
        faults: r#"[{"pipeline": "slow", "kind": "slow", "seconds": 60}]"#.into(),
    };
    env.import_base();
    let mut host = env
        .kiln()
        .arg("local")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until_up(
            &format!("http://127.0.0.1:{}/api/health", env.port),
            &mut host,
        );
        let run = |args: &[&str]| env.kiln().args(args).output().unwrap();

        let ok = run(&["build", "tiny", "--wait"]);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let ok_id = String::from_utf8_lossy(&ok.stdout).trim().to_string();
        // Piped, progress is one plain line per change: no redraws, no colours.
        let progress = String::from_utf8_lossy(&ok.stderr).to_string();
        assert!(
            !progress.contains('\r') && !progress.contains('\u{1b}'),
            "{progress:?}"
        );
        assert!(
            progress
                .lines()
                .all(|l| l.starts_with(&format!("{ok_id}: "))),
            "{progress}"
        );
        assert!(
            progress.contains("succeeded: published version 1.0.0"),
            "{progress}"
        );

        let failed = run(&["build", "broken", "--wait"]);
        let failed_err = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(3), "{failed_err}");
        assert!(failed_err.contains("failed: customizer"), "{failed_err}");

        let waited = run(&[
            "build",
            "slow",
            "--key",
            "slow-1",
            "--wait",
            "--timeout",
            "1",
        ]);
        assert_eq!(
            waited.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&waited.stderr)
        );
        let slow_id = String::from_utf8_lossy(&waited.stdout).trim().to_string();
        // The same key follows the same build; a cancel from elsewhere ends it.
        let follower = env
            .kiln()
            .args(["build", "slow", "--key", "slow-1", "--wait"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cancel = run(&["cancel", &slow_id]);
        assert_eq!(cancel.status.code(), Some(0));
        let followed = follower.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&followed.stdout).trim(),
            slow_id,
            "the key names the same build"
        );
        assert_eq!(
            followed.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&followed.stderr)
        );
        let logs = run(&["logs", &slow_id, "--follow"]);
        assert_eq!(
            logs.status.code(),
            Some(4),
            "logs --follow ends as the build did"
        );

        let builds = env.json(&["builds", "--json"]);
        let states: std::collections::BTreeMap<String, String> = builds
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["pipeline"].as_str().unwrap().to_string(),
                    b["state"]["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("broken", "failed"),
                ("slow", "canceled"),
                ("tiny", "succeeded")
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
        );
        assert_eq!(env.json(&["show", &ok_id, "--json"])["state"], "succeeded");
        assert!(env.json(&["deadletters", "--json"]).is_array());
        assert!(env.json(&["retention", "plan", "--json"]).is_array());
        assert!(env.json(&["retention", "audit", "--json"]).is_array());
        let scheduled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/ubuntu-2204-baseline.json");
        let next = env.json(&[
            "schedule",
            "next",
            scheduled.to_str().unwrap(),
            "--json",
            "--count",
            "2",
        ]);
        assert_eq!(next.as_array().map(Vec::len), Some(2), "{next}");
    }));
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    host.wait().unwrap();
    result.unwrap();
}

#[test]
fn usage_errors_exit_2_and_the_help_lists_the_exit_codes() {
    let out = kiln().args(["build"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = kiln().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Exit codes:"), "{text}");
    for row in ["  3  the build failed", "  4  the build was canceled"] {
        assert!(text.contains(row), "{row}: {text}");
    }
    let bad = kiln()
        .arg("--help")
        .env("KILN_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KILN_LOG_FORMAT"));
}

/// Under the Functions host every log line is JSON, and a line about a
/// build carries its id and pipeline from the `build` span.
#[test]
fn kiln_serve_logs_json_lines_naming_the_build_and_its_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    write_tiny(&pipelines, "tiny", None);
    let env = Env {
        data: dir.path().join("data"),
        pipelines,
        port: free_port(),
        faults: "[]".into(),
    };
    env.import_base();
    let port = free_port();
    let mut serve = env
        .kiln()
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        // kiln serve refuses to start without API keys; this test calls a
        // function route, which the Functions host guards instead.
        .env("KILN_API_KEYS", "follow-test-key-0123456789")
        .env_remove("KILN_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until_up(&format!("{base}/"), &mut serve);
        let msg =
            json!({"pipeline": "tiny", "reason": "log test", "requestedBy": "test"}).to_string();
        let payload = json!({
            "Data": {"msg": serde_json::to_string(&msg).unwrap()},
            "Metadata": {"MessageId": "m-1", "DeliveryCount": 1}
        });
        let r = reqwest::blocking::Client::new()
            .post(format!("{base}/build_requests"))
            .json(&payload)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()
    }));
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let out = serve.wait_with_output().unwrap();
    let reply = reply.unwrap();
    let id = reply["ReturnValue"]["build"].as_str().unwrap().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let changed = lines
        .iter()
        .find(|l| l["message"] == "build state changed")
        .unwrap_or_else(|| panic!("no state change logged: {stderr}"));
    let span = changed["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "build")
        .unwrap_or_else(|| panic!("not in a build span: {changed}"));
    assert_eq!(span["build_id"], json!(id), "{changed}");
    assert_eq!(span["pipeline"], "tiny", "{changed}");
    assert!(
        changed["to"].is_string() && changed["level"] == "INFO",
        "{changed}"
    );
}
