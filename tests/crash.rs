//! Crash safety: the real `kiln local` process is killed with SIGKILL at
//! random moments while 20 builds run, and restarted each time. Every build
//! must end in a terminal state, none may be duplicated, and no gallery
//! version may be published twice.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod common;

const BUILDS: usize = 20;

fn kiln(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(dir)
        .env("KILN_DATA_DIR", dir.join("data"))
        .env("KILN_PIPELINES_DIR", dir.join("pipelines"))
        .env("KILN_HANDLERS_DIR", common::repo().join("handlers"))
        .env("KILN_HTTP_PORT", port.to_string())
        .env("KILN_MAX_ACTIVE_BUILDS", "8")
        // Every build has a slow step, so kills land mid-build.
        .env(
            "KILN_LOCAL_FAULTS",
            r#"[{"pipeline": "*", "kind": "slow", "seconds": 2}]"#,
        )
        .env("KILN_LOG", "warn");
    c
}

fn start(dir: &Path, port: u16, n: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("kiln-{n}.log"))).unwrap();
    let mut child = kiln(dir, port)
        .arg("local")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::blocking::get(format!("http://127.0.0.1:{port}/api/health")).is_ok() {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "kiln local exited with {status}: {}",
                std::fs::read_to_string(dir.join(format!("kiln-{n}.log"))).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("kiln local did not come up");
}

fn pipeline(i: usize) -> Value {
    let mut doc = common::tiny_in("gal_crash", &format!("p{i:02}"));
    doc["kiln"]["build"]["maxAttempts"] = json!(10);
    doc
}

fn request(port: u16, i: usize) -> Option<String> {
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/builds"))
        .json(&json!({"pipeline": format!("p{i:02}"), "idempotencyKey": format!("crash-{i}")}))
        .timeout(Duration::from_secs(20))
        .send()
        .ok()?;
    let v: Value = r.json().ok()?;
    v["build"].as_str().map(str::to_string)
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    for i in 0..BUILDS {
        std::fs::write(
            root.join(format!("pipelines/p{i:02}.json")),
            serde_json::to_vec(&pipeline(i)).unwrap(),
        )
        .unwrap();
    }
    let st = kiln(root, 0)
        .args([
            "base",
            "import",
            "kiln:busybox:tiny",
            "--version",
            "1.0.0",
            "--busybox",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seed: u64 = rand::random();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut child = start(root, port, 0);
    let mut ids: Vec<Option<String>> = vec![None; BUILDS];
    for (i, slot) in ids.iter_mut().enumerate() {
        *slot = request(port, i);
    }
    for n in 1..=6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..2500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(root, port, n);
        // Callers retry after a crash: the same keys must find the same builds.
        for (i, slot) in ids.iter_mut().enumerate() {
            let again = request(port, i);
            match (&slot, &again) {
                (Some(a), Some(b)) => {
                    assert_eq!(a, b, "request {i} got a second build after a restart")
                }
                (None, Some(_)) => *slot = again,
                (_, None) => {}
            }
        }
    }

    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let builds: Vec<Value> = loop {
        let all: Vec<Value> = client
            .get(format!("http://127.0.0.1:{port}/api/builds?limit=1000"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let open = all
            .iter()
            .filter(|b| {
                !matches!(
                    b["state"]["state"].as_str(),
                    Some("succeeded" | "failed" | "canceled")
                )
            })
            .count();
        if open == 0 && all.len() >= BUILDS {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "builds still open after the crashes: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(builds.len(), BUILDS, "exactly one build per request");
    for i in 0..BUILDS {
        let mine: Vec<&Value> = builds
            .iter()
            .filter(|b| b["pipeline"] == format!("p{i:02}"))
            .collect();
        assert_eq!(mine.len(), 1, "pipeline p{i:02}: {mine:#?}");
        assert_eq!(mine[0]["state"]["state"], "succeeded", "{:#}", mine[0]);
    }
    let gallery: Vec<Value> = client
        .get(format!("http://127.0.0.1:{port}/api/gallery"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(gallery.len(), BUILDS);
    for def in &gallery {
        let versions = def["versions"].as_array().unwrap();
        assert_eq!(
            versions.len(),
            1,
            "one version per definition, published once: {def:#}"
        );
        assert_eq!(versions[0]["version"], "1.0.0");
        let build = builds
            .iter()
            .find(|b| b["pipeline"] == def["pipeline"])
            .unwrap();
        assert_eq!(versions[0]["tags"]["kiln.build"], build["id"]);
    }
    // SIGTERM is a graceful stop: the process ends on its own, successfully.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "kiln local ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful stop exited with {status}");
}
