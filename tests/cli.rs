//! The `kiln` binary: offline commands (validate, render, schedule next,
//! package), `kiln local` with the client commands, and the function key.

use std::path::Path;
use std::process::Command;

#[path = "cli/follow.rs"]
mod follow;

/// The binary, with a data folder of its own: `kiln validate` opens the
/// local provider there, and tests running in parallel must not share one
/// (a folder being created by another run makes the provider checks vanish).
fn kiln() -> Command {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env(
        "KILN_DATA_DIR",
        std::env::temp_dir().join(format!("kiln-cli-{}-{run}", std::process::id())),
    );
    c
}

#[test]
fn the_shipped_pipelines_validate() {
    let out = kiln()
        .args([
            "validate",
            "pipelines/tiny.json",
            "pipelines/ubuntu-2204-baseline.json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_broken_copy_fails_with_file_field_path_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/ubuntu-2204-baseline.json"),
    )
    .unwrap();
    let broken = text
        .replace(
            r#""buildTimeoutInMinutes": 80"#,
            r#""buildTimeoutInMinutes": 2000"#,
        )
        .replace(r#""keepLatest": 5"#, r#""keepLatest": "five""#);
    let file = dir.path().join("broken.json");
    std::fs::write(&file, broken).unwrap();
    let windows = dir.path().join("windows.json");
    std::fs::write(
        &windows,
        text.replace(
            r#""type": "Shell",
        "name": "baseline""#,
            r#""type": "PowerShell",
        "name": "baseline""#,
        ),
    )
    .unwrap();
    let out = kiln()
        .arg("validate")
        .arg(&file)
        .arg(&windows)
        .arg("pipelines/tiny.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: kiln.retention.keepLatest: invalid type",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: properties.customize[0]", windows.display())),
        "{err}"
    );
    assert!(err.contains("not supported by the local provider"), "{err}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("pipelines/tiny.json: ok"),
        "the good file is still checked: {out}"
    );
}

/// The seed lab tutorial's template, pasted as given: its inline step starts
/// with `set -euxo pipefail`, which AIB's `/bin/sh -e` (dash) rejects.
#[test]
fn the_tutorial_template_fails_on_pipefail_alone_and_passes_without_it() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-lab-tutorial.json");
    let out = kiln().arg("validate").arg(&fixture).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let at = format!("{}: properties.customize[0].inline[0]: ", fixture.display());
    assert!(errors[0].starts_with(&at), "{err}");
    assert!(errors[0].contains("set -o pipefail"), "{err}");
    assert!(errors[0].contains("`/bin/sh -e` (dash on Ubuntu)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&fixture).unwrap();
    let without = text.replace("\"set -euxo pipefail\",", "");
    assert_ne!(without, text);
    let copy = dir.path().join("seed-lab-tutorial.json");
    std::fs::write(&copy, without).unwrap();
    let out = kiln().arg("validate").arg(&copy).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (seed-lab-tutorial)"));
}

/// Warnings are printed with the file and path, and do not fail the run.
#[test]
fn lint_warnings_do_not_fail_validate() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.json"))
            .unwrap();
    let warned = text.replace(
        r#""echo 'hello from kiln' > /etc/kiln-hello","#,
        r#""echo 'hello from kiln' > /etc/kiln-hello", "echo $unset_var","#,
    );
    assert_ne!(warned, text);
    let file = dir.path().join("warned.json");
    std::fs::write(&file, warned).unwrap();
    let out = kiln().arg("validate").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}: properties.customize[0].inline[1]: warning: SC2086",
            file.display()
        )),
        "{err}"
    );
}

/// One file with four unrelated problems reports all four in one run.
#[test]
fn validate_reports_every_problem_of_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.json"))
            .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc.as_object_mut().unwrap().remove("identity");
    let props = &mut doc["properties"];
    props["source"].as_object_mut().unwrap().remove("offer");
    props["customize"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Ansible"}));
    props["distribute"] = serde_json::json!([]);
    let file = dir.path().join("broken.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = kiln().arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for at in [
        "identity",
        "properties.source",
        "properties.customize[1].type",
        "properties.distribute",
    ] {
        assert!(
            err.contains(&format!("{}: {at}: ", file.display())),
            "{at}: {err}"
        );
    }
}

#[test]
fn render_prints_the_template_kiln_submits() {
    let out = kiln()
        .args(["render", "ubuntu-2204-baseline", "--version", "1.2.3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(t.get("kiln").is_none());
    let d = &t["properties"]["distribute"][0];
    assert!(d["galleryImageId"]
        .as_str()
        .unwrap()
        .ends_with("/images/ubuntu-2204-baseline/versions/1.2.3"));
    assert_eq!(
        d["artifactTags"]["baseosimg"], "ubuntu2204",
        "user tags are kept"
    );
    // The tutorial's deprecated region list is still valid in 2025-10-01.
    assert_eq!(
        d["replicationRegions"],
        serde_json::json!(["westeurope", "northeurope"])
    );
    assert_eq!(d["artifactTags"]["kiln.pipeline"], "ubuntu-2204-baseline");
    assert_eq!(
        t["properties"]["vmProfile"]["vmSize"], "Standard_D2s_v5",
        "unmodelled fields pass through"
    );
}

#[test]
fn schedule_next_prints_patch_tuesday_fire_times() {
    let out = kiln()
        .args([
            "schedule",
            "next",
            "ubuntu-2204-baseline",
            "--count",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for o in list {
        let at: chrono::DateTime<chrono::Utc> = o["firesAt"].as_str().unwrap().parse().unwrap();
        let berlin = at.with_timezone(&chrono_tz::Europe::Berlin);
        // Second Tuesday (8th-14th) plus one day, 03:00 local, unless deferred by the year-end freeze.
        if o["deferred"] == false {
            use chrono::{Datelike, Timelike};
            assert_eq!(berlin.weekday(), chrono::Weekday::Wed, "{o}");
            assert!((9..=15).contains(&berlin.day()), "{o}");
            assert_eq!(berlin.hour(), 3);
        }
    }
}

/// The issue's own words: `kiln local` + `kiln build tiny --wait` exits 0,
/// and `kiln show --json` reports `succeeded` and version `1.0.0`.
#[test]
fn kiln_local_then_kiln_build_wait_then_kiln_show() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let with_env = |c: &mut Command| {
        c.env("KILN_DATA_DIR", &data)
            .env("KILN_HTTP_PORT", port.to_string())
            .env("KILN_API", &api);
    };
    let mut import = kiln();
    with_env(&mut import);
    assert!(import
        .args([
            "base",
            "import",
            "kiln:busybox:tiny",
            "--version",
            "1.0.0",
            "--busybox"
        ])
        .status()
        .unwrap()
        .success());
    let mut local = kiln();
    with_env(&mut local);
    let mut host = local
        .arg("local")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if reqwest::blocking::get(format!("{api}/api/health")).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let result = std::panic::catch_unwind(|| {
        assert!(up, "kiln local did not come up");
        let mut build = kiln();
        with_env(&mut build);
        let out = build
            .args(["build", "tiny", "--wait", "--reason", "cli test"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut show = kiln();
        with_env(&mut show);
        let out = show.args(["show", &id, "--json"]).output().unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["version"], "1.0.0");
        assert!(v["timeline"].as_array().unwrap().len() >= 3);
    });
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    let status = host.wait().unwrap();
    result.unwrap();
    assert!(status.success(), "graceful stop: {status}");
}

/// A new user's first run must not get as far as a build that fails on a
/// missing tool: `kiln local` names each one and its package, and exits.
#[test]
fn kiln_local_refuses_to_start_without_its_host_tools() {
    let data = tempfile::tempdir().unwrap();
    // No PATH: the sbin folders still have mkfs.ext4 and debugfs, but
    // qemu-img (in /usr/bin) is not found.
    let out = kiln()
        .args(["local", "--port", "0"])
        .env("KILN_DATA_DIR", data.path())
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qemu-img (Debian package qemu-utils)"),
        "{err}"
    );
    assert!(!err.contains("mkfs.ext4"), "{err}");
}

/// The zip `kiln package` writes, as (path, unix mode, bytes).
fn read_zip(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            (f.name().to_string(), f.unix_mode().unwrap_or(0), bytes)
        })
        .collect()
}

/// What the Functions host reads from a zip deployment: host.json at the
/// root, `<function>/function.json` for each function, and the custom
/// handler where host.json says, executable. Nothing else but the pipelines.
#[test]
fn kiln_package_lays_out_what_the_functions_host_reads() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("stand-in-binary");
    std::fs::write(&binary, b"\x7fELF not really").unwrap();
    let out = dir.path().join("kiln.zip");
    let run = kiln()
        .args(["package", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let entries = read_zip(&out);
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("host.json")).unwrap()).unwrap();
    let exe = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .unwrap();
    let find = |p: &str| entries.iter().find(|(n, _, _)| n == p);

    let (_, mode, bytes) = find("host.json").expect("host.json at the root");
    assert_eq!(bytes, &std::fs::read(repo.join("host.json")).unwrap());
    assert_eq!(mode & 0o777, 0o644);
    let (_, mode, bytes) = find(exe).expect("the custom handler where host.json names it");
    assert_eq!(bytes, b"\x7fELF not really");
    assert_eq!(mode & 0o111, 0o111, "executable bit: {mode:o}");

    let mut functions = Vec::new();
    for f in std::fs::read_dir(repo.join("handlers")).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().to_string();
        let (_, _, bytes) = find(&format!("{name}/function.json"))
            .unwrap_or_else(|| panic!("{name}/function.json missing from the package"));
        assert_eq!(
            bytes,
            &std::fs::read(f.path().join("function.json")).unwrap(),
            "{name}"
        );
        functions.push(name);
    }
    // Every function the handler dispatches is packaged, and nothing else.
    functions.sort();
    let mut known: Vec<String> = kiln::app::wire::FunctionName::ALL
        .iter()
        .map(|f| f.as_str().to_string())
        .collect();
    known.sort();
    assert_eq!(functions, known);

    for (name, _, _) in &entries {
        let top = name.split('/').next().unwrap();
        let expected = top == "host.json"
            || top == exe
            || (top == "pipelines" && name.ends_with(".json"))
            || (functions.iter().any(|f| f == top) && name == &format!("{top}/function.json"));
        assert!(expected, "{name} does not belong in the package");
    }
    for p in std::fs::read_dir(repo.join("pipelines")).unwrap() {
        let p = p.unwrap();
        let name = format!("pipelines/{}", p.file_name().to_string_lossy());
        let (_, _, bytes) = find(&name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(bytes, &std::fs::read(p.path()).unwrap());
    }
}

#[test]
fn kiln_package_refuses_invalid_pipelines_naming_file_and_field() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("host.json"), root.path().join("host.json")).unwrap();
    for f in std::fs::read_dir(repo.join("handlers")).unwrap() {
        let f = f.unwrap();
        let d = root.path().join("handlers").join(f.file_name());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(f.path().join("function.json"), d.join("function.json")).unwrap();
    }
    std::fs::create_dir_all(root.path().join("pipelines")).unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("pipelines/tiny.json")).unwrap()).unwrap();
    doc["kiln"]["versioning"]["major"] = serde_json::json!("one");
    std::fs::write(root.path().join("pipelines/tiny.json"), doc.to_string()).unwrap();
    let binary = root.path().join("bin");
    std::fs::write(&binary, b"x").unwrap();
    let out = root.path().join("kiln.zip");
    let run = kiln()
        .args(["package", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&out)
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("tiny.json") && err.contains("kiln.versioning.major"),
        "{err}"
    );
    assert!(!out.exists(), "no package from invalid pipelines");
}

/// The package's app root, as the Functions host starts `kiln serve` in it:
/// no KILN_HANDLERS_DIR, the function folders beside the binary. The
/// handler must find them (and start) by its defaults.
#[test]
fn kiln_serve_starts_from_the_package_root_by_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("stand-in");
    std::fs::write(&binary, b"x").unwrap();
    let out = dir.path().join("kiln.zip");
    assert!(kiln()
        .args(["package", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap()
        .status
        .success());
    let root = dir.path().join("wwwroot");
    for (name, _, bytes) in read_zip(&out) {
        let p = root.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .current_dir(&root)
        .env_remove("KILN_HANDLERS_DIR")
        .env_remove("KILN_PIPELINES_DIR")
        .env_remove("FUNCTIONS_APP_ROOT_PATH")
        .env_remove("KILN_PROVIDER")
        .env("KILN_DATA_DIR", dir.path().join("data"))
        .env("KILN_API_KEYS", "cli-test-api-key-0123456789")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut up = false;
    while std::time::Instant::now() < deadline {
        if serve.try_wait().unwrap().is_some() {
            break;
        }
        if reqwest::blocking::get(format!("http://127.0.0.1:{port}/")).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let output = serve.wait_with_output().unwrap();
    assert!(
        up,
        "kiln serve did not start from the package root: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kiln_serve_refuses_to_start_with_an_open_api_and_local_refuses_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let serve = kiln()
        .arg("serve")
        .env_remove("KILN_API_KEYS")
        .env_remove("KILN_API_AUTH")
        .env_remove("KILN_PROVIDER")
        .env("KILN_DATA_DIR", dir.path().join("data"))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "1")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(
        err.contains("KILN_API_KEYS: required by kiln serve"),
        "{err}"
    );
    let local = kiln()
        .args(["local", "--port", "1"])
        .env_remove("KILN_API_KEYS")
        .env("KILN_HTTP_BIND", "0.0.0.0")
        .env("KILN_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!local.status.success());
    let err = String::from_utf8_lossy(&local.stderr);
    assert!(
        err.contains("KILN_API_KEYS: required when kiln local listens on 0.0.0.0"),
        "{err}"
    );
}

/// The Functions host in front of the API: 401 unless `x-functions-key`
/// carries the key. The CLI sends KILN_FUNCTION_KEY, and says what to set
/// when it is missing.
#[test]
fn client_commands_send_the_function_key_and_explain_a_401() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/builds"))
            .and(header("x-functions-key", "the-key"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(401))
            .with_priority(2)
            .mount(&server)
            .await;
        server
    });
    let ok = kiln()
        .args(["builds", "--json", "--api", &server.uri()])
        .env("KILN_FUNCTION_KEY", "the-key")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = kiln()
        .args(["builds", "--api", &server.uri()])
        .env_remove("KILN_FUNCTION_KEY")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("KILN_FUNCTION_KEY"), "{err}");
    let wrong = kiln()
        .args(["builds", "--api", &server.uri(), "--function-key", "not-it"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("refused the function key") && !err.contains("not-it"),
        "{err}"
    );
    let help = kiln()
        .args(["builds", "--help"])
        .env("KILN_FUNCTION_KEY", "the-key")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("the-key"));
    drop(rt);
}

/// A SAS URL in a Shell step: `kiln validate` fails naming file, path and
/// kind, and so does every command that loads the pipeline, with the same
/// line; neither prints the token.
#[test]
fn a_pipeline_with_a_sas_url_is_refused_without_printing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.json")).unwrap(),
    )
    .unwrap();
    // Made here, not written in the repository.
    let sig: String = (0..43)
        .map(|i| char::from(b'A' + ((i * 7 + 3) % 26) as u8))
        .collect();
    let url = format!(
        "https://acct.blob.core.windows.net/scripts/setup.sh?sv=2022-11-02&sp=r&se=2027-01-01&sig={sig}%3D"
    );
    doc["properties"]["customize"][0] =
        serde_json::json!({"type": "Shell", "name": "fetch", "scriptUri": url});
    let file = dir.path().join("leaky.json");
    std::fs::write(&file, doc.to_string()).unwrap();

    let out = kiln().arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("sas-token"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.starts_with(&format!(
            "{}: properties.customize[0].scriptUri: looks like a SAS token (kind `sas-token`)",
            file.display()
        )),
        "{line}"
    );
    assert!(!err.contains(&sig[..8]), "{err}");

    let out = kiln()
        .arg("render")
        .arg(&file)
        .args(["--version", "1.0.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(line), "{err}");
    assert!(!err.contains(&sig[..8]), "{err}");
}
