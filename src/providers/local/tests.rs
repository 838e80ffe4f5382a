//! End-to-end tests of the local provider on busybox roots (milliseconds
//! each). They need root, mkfs.ext4, debugfs and qemu-img, as the
//! provider itself does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute";
const URN: &str = "kiln:busybox:test";

fn def_id(image: &str) -> String {
    format!("{SUB}/galleries/gal/images/{image}")
}

struct Env {
    dir: tempfile::TempDir,
    db: Db,
    p: LocalProvider,
}

impl Env {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Another provider on the same store and data (a process restart).
    fn restart(&self, instance: &str, faults: Faults) -> LocalProvider {
        LocalProvider::new(LocalConfig {
            data_dir: self.data(),
            db: self.db.clone(),
            instance_id: instance.to_string(),
            kvm: KvmMode::Off,
            faults,
        })
        .unwrap()
    }
}

async fn env_with(faults: Faults) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("kiln.db")).unwrap();
    let p = LocalProvider::new(LocalConfig {
        data_dir: dir.path().join("data"),
        db: db.clone(),
        instance_id: format!("test-{}", uuid::Uuid::new_v4()),
        kvm: KvmMode::Off,
        faults,
    })
    .unwrap();
    p.import_base(URN, "1.0.0", BaseFrom::Busybox)
        .await
        .unwrap();
    Env { dir, db, p }
}

async fn env() -> Env {
    env_with(Faults::none()).await
}

/// A template on the busybox base distributing to one gallery image.
fn template(image: &str, customize: Value) -> Value {
    json!({
        "location": "westeurope",
        "tags": {"kiln.pipeline": "tiny", "kiln.build": "b-1"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "test", "version": "latest"},
            "customize": customize,
            "distribute": [{
                "type": "SharedImage",
                "runOutputName": "sig",
                "galleryImageId": def_id(image),
                "targetRegions": [{"name": "westeurope", "replicaCount": 1}]
            }]
        }
    })
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut *v
    } else {
        v.pointer_mut(parent).unwrap()
    };
    target
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
}

fn shell(name: &str, lines: &[&str]) -> Value {
    json!({"type": "Shell", "name": name, "inline": lines})
}

async fn wait(p: &LocalProvider, name: &str) -> RunStatus {
    let start = std::time::Instant::now();
    loop {
        match p.status(name).await.unwrap() {
            // Ended, and its task has removed the staging folder.
            TemplateStatus::Run(s)
                if !matches!(s.run_state, RunState::Running | RunState::Canceling)
                    && !p.inner.has_task(name) =>
            {
                return s
            }
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "build {name} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn build(p: &LocalProvider, name: &str, body: &Value) -> RunStatus {
    p.put_template(name, body).await.unwrap();
    p.run(name).await.unwrap();
    wait(p, name).await
}

/// Reads a file of an ext4 image held in a qcow2, without mounting.
fn read_in_disk(qcow2: &Path, file: &str) -> Option<String> {
    let raw = qcow2.with_extension("test.raw");
    let ok = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow2)
        .arg(&raw)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(&raw)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&raw);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (!err.contains("File not found")).then_some(text)
}

fn sha256(bytes: &[u8]) -> String {
    util::sha256_hex(bytes)
}

#[tokio::test]
async fn a_busybox_build_customizes_validates_captures_and_publishes_with_replicas() {
    let e = env().await;
    let payload = e.dir.path().join("motd");
    std::fs::write(&payload, "welcome to kiln\n").unwrap();
    let script = e.dir.path().join("setup.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho from-script > /etc/from-script\necho script ran\n",
    )
    .unwrap();
    let script_sha = sha256(&std::fs::read(&script).unwrap());
    let mut body = template(
        "app",
        json!([
            shell("write-info", &["echo 'pipeline=tiny' > /etc/aib-build-info", "echo history > /root/.ash_history", "echo step output line"]),
            {"type": "File", "name": "motd", "sourceUri": payload.display().to_string(), "destination": "/opt/app/etc/motd"},
            {"type": "Shell", "name": "script", "scriptUri": format!("file://{}", script.display()), "sha256Checksum": script_sha},
        ]),
    );
    set(
        &mut body,
        "/properties/validate",
        json!({"inVMValidations": [
            shell("check-info", &["grep -q pipeline=tiny /etc/aib-build-info", "test -f /opt/app/etc/motd"]),
            {"type": "File", "name": "validator-file", "sourceUri": payload.display().to_string(), "destination": "/var/lib/kiln/validated"}
        ]}),
    );
    set(
        &mut body,
        "/properties/distribute",
        json!([
            {"type": "SharedImage", "runOutputName": "sig", "galleryImageId": format!("{}/versions/1.0.0", def_id("app")),
             "targetRegions": [{"name": "West Europe", "replicaCount": 2}, {"name": "eastus", "replicaCount": 1}],
             "artifactTags": {"team": "platform"}, "endOfLifeDate": "2030-01-31T00:00:00Z"},
            {"type": "ManagedImage", "runOutputName": "mi", "imageId": format!("{SUB}/images/app-mi"), "location": "westeurope"},
            {"type": "VHD", "runOutputName": "vhd"}
        ]),
    );
    let s = build(&e.p, "kiln-b1-a1", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert_eq!(s.run_sub_state, Some(RunSubState::Distributing));
    assert!(s.end_time.is_some());

    // Run outputs in Azure's shapes.
    let outs = e.p.run_outputs("kiln-b1-a1").await.unwrap();
    assert_eq!(outs.len(), 3);
    assert_eq!(
        outs[0].artifact_id.as_deref(),
        Some(format!("{}/versions/1.0.0", def_id("app")).as_str())
    );
    assert_eq!(
        outs[1].artifact_id.as_deref(),
        Some(format!("{SUB}/images/app-mi").as_str())
    );
    let vhd = PathBuf::from(outs[2].artifact_uri.clone().unwrap());
    assert!(vhd.is_file());
    // A fixed VHD: the raw disk followed by a 512-byte footer starting "conectix".
    let bytes = std::fs::read(&vhd).unwrap();
    assert_eq!(bytes.len() % 512, 0);
    assert_eq!(&bytes[bytes.len() - 512..bytes.len() - 504], b"conectix");

    // The gallery version, its replicas (hard links) and metadata.
    let versions = e.p.list_versions(&def_id("app")).await.unwrap();
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(v.provisioning_state, "Succeeded");
    assert_eq!(v.tags.get("team").map(String::as_str), Some("platform"));
    assert_eq!(
        v.end_of_life.map(|t| t.to_rfc3339()),
        Some("2030-01-31T00:00:00+00:00".to_string())
    );
    assert!(!v.exclude_from_latest);
    assert_eq!(
        v.replication
            .iter()
            .map(|r| (r.region.as_str(), r.replica_count, r.state.as_str()))
            .collect::<Vec<_>>(),
        vec![("West Europe", 2, "Completed"), ("eastus", 1, "Completed")]
    );
    let pv = e.p.gallery_version(&v.id()).await.unwrap().unwrap();
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&pv.disk).unwrap().ino();
    for r in [
        "replicas/westeurope/1.qcow2",
        "replicas/westeurope/2.qcow2",
        "replicas/eastus/1.qcow2",
    ] {
        assert_eq!(
            std::fs::metadata(pv.path.join(r)).unwrap().ino(),
            ino,
            "{r}"
        );
    }
    assert!(!pv.path.join("replicas/westeurope/3.qcow2").exists());

    // What is in the image: customizations, generalization.
    assert_eq!(
        read_in_disk(&pv.disk, "/etc/aib-build-info").unwrap(),
        "pipeline=tiny\n"
    );
    assert_eq!(
        read_in_disk(&pv.disk, "/opt/app/etc/motd").unwrap(),
        "welcome to kiln\n"
    );
    assert_eq!(
        read_in_disk(&pv.disk, "/etc/from-script").unwrap(),
        "from-script\n"
    );
    assert_eq!(
        read_in_disk(&pv.disk, "/var/lib/kiln/validated").unwrap(),
        "welcome to kiln\n"
    );
    assert_eq!(read_in_disk(&pv.disk, "/etc/machine-id").unwrap(), "");
    assert!(read_in_disk(&pv.disk, "/root/.ash_history").is_none());

    // The manifest: provenance, hashes that match the files.
    let m = pv.manifest.unwrap();
    assert_eq!(m["template"], "kiln-b1-a1");
    assert_eq!(m["tags"]["kiln.pipeline"], "tiny");
    assert_eq!(m["source"]["exactVersion"], "1.0.0");
    assert_eq!(m["customizers"].as_array().unwrap().len(), 3);
    assert_eq!(m["customizers"][2]["sha256"], script_sha);
    assert_eq!(m["validators"].as_array().unwrap().len(), 2);
    assert_eq!(
        m["artifacts"]["disk.qcow2"]["sha256"],
        util::sha256_file(&pv.disk).unwrap()
    );
    assert!(m["generalized"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "emptied /etc/machine-id"));
    assert!(m["tools"]["qemu-img"]
        .as_str()
        .unwrap()
        .contains("qemu-img"));
    let body_sha = sha256(util::canonical_json(&body).as_bytes());
    assert_eq!(m["templateSha256"], body_sha);
    // The raw disk hashes the same after a round trip through qcow2.
    let raw = pv.path.join("check.raw");
    std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&pv.disk)
        .arg(&raw)
        .status()
        .unwrap();
    assert_eq!(
        m["artifacts"]["disk.img"]["sha256"],
        util::sha256_file(&raw).unwrap()
    );
    std::fs::remove_file(raw).unwrap();

    // The log streamed each step's output; staging is gone.
    let log = std::fs::read_to_string(e.p.log_path("kiln-b1-a1")).unwrap();
    assert!(log.contains("[write-info] step output line"), "{log}");
    assert!(log.contains("[script] script ran"));
    assert!(!e.data().join("staging/kiln-b1-a1").exists());

    // A managed image made here is a source for the next build.
    let mut next = template(
        "derived",
        json!([shell("check", &["test -f /etc/from-script"])]),
    );
    set(
        &mut next,
        "/properties/source",
        json!({"type": "ManagedImage", "imageId": format!("{SUB}/images/app-mi")}),
    );
    let s = build(&e.p, "kiln-b2-a1", &next).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
}

#[tokio::test]
async fn a_customizer_failure_names_the_step_and_its_last_lines_and_cleans_up() {
    let e = env().await;
    let body = template(
        "app",
        json!([shell(
            "install-agent",
            &[
                "echo fetching agent",
                "echo 'E: unable to locate package' >&2",
                "exit 3"
            ]
        )]),
    );
    let s = build(&e.p, "t-fail", &body).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .starts_with("customizer: step 'install-agent' exited with 3: "),
        "{}",
        s.message
    );
    assert!(
        s.message
            .contains("fetching agent | E: unable to locate package"),
        "{}",
        s.message
    );
    assert_eq!(classify(&s.message), FailureCategory::Customizer);
    assert!(!e.data().join("staging/t-fail").exists());
    assert!(e.p.run_outputs("t-fail").await.unwrap().is_empty());
    assert!(e.p.list_versions(&def_id("app")).await.unwrap().is_empty());
    // Inline lines stop at the first failure, as AIB's `sh -e`.
    let body = template(
        "app",
        json!([shell(
            "stops",
            &["false", "echo not reached > /etc/reached"]
        )]),
    );
    let s = build(&e.p, "t-fail2", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 'stops' exited with 1"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn abort_keeps_staging_and_cleanup_removes_it() {
    let e = env().await;
    let mut body = template(
        "app",
        json!([shell("bad", &["echo partial > /etc/partial", "exit 1"])]),
    );
    set(
        &mut body,
        "/properties/errorHandling",
        json!({"onCustomizerError": "abort"}),
    );
    let s = build(&e.p, "t-abort", &body).await;
    let staging = e.data().join("staging/t-abort");
    assert!(
        s.message
            .contains(&format!("staging kept at {}", staging.display())),
        "{}",
        s.message
    );
    assert!(staging.join("root/etc/partial").exists());
    let d = e.p.run_details("t-abort").await.unwrap().unwrap();
    assert_eq!(d.staging_kept, Some(staging));

    set(
        &mut body,
        "/properties/errorHandling",
        json!({"onCustomizerError": "cleanup"}),
    );
    let s = build(&e.p, "t-cleanup", &body).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(!s.message.contains("staging kept"));
    assert!(!e.data().join("staging/t-cleanup").exists());

    // onValidationError abort keeps it too.
    let mut body = template("app", json!([]));
    set(
        &mut body,
        "/properties/validate",
        json!({"inVMValidations": [shell("v", &["exit 2"])]}),
    );
    set(
        &mut body,
        "/properties/errorHandling",
        json!({"onValidationError": "abort"}),
    );
    let s = build(&e.p, "t-vabort", &body).await;
    assert!(
        s.message.starts_with("validation: step 'v' exited with 2"),
        "{}",
        s.message
    );
    assert!(e.data().join("staging/t-vabort/root").exists());
}

#[tokio::test]
async fn checksums_are_verified_before_a_script_or_file_is_used() {
    let e = env().await;
    let script = e.dir.path().join("s.sh");
    std::fs::write(&script, "echo hi\n").unwrap();
    let wrong = "0".repeat(64);
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "s", "scriptUri": script.display().to_string(), "sha256Checksum": wrong}]),
    );
    let s = build(&e.p, "t-sum", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 's': sha256 mismatch: expected 0000"),
        "{}",
        s.message
    );
    let body = template(
        "app",
        json!([{"type": "File", "name": "f", "sourceUri": script.display().to_string(), "destination": "/etc/x", "sha256Checksum": wrong}]),
    );
    let s = build(&e.p, "t-sum2", &body).await;
    assert!(s.message.contains("sha256 mismatch"), "{}", s.message);
    let body = template(
        "app",
        json!([{"type": "File", "name": "f", "sourceUri": "/nonexistent/file", "destination": "/etc/x"}]),
    );
    // A local file that is not there is refused with the template, before
    // any build starts.
    let err = e.p.put_template("t-missing", &body).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("`/nonexistent/file` is not a file on this machine"),
        "{err:#}"
    );
}

/// A one-request-at-a-time HTTP server: path → (status, body).
async fn http_server(routes: Vec<(&'static str, u16, &'static str)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, *b))
                .unwrap_or((404, "not found"));
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_files_come_over_http_with_their_checksums() {
    let e = env().await;
    let script = "echo over-http > /etc/http-script\n";
    let base = http_server(vec![("/s.sh", 200, script), ("/boom", 503, "busy")]).await;
    let body = template(
        "app",
        json!([
            {"type": "Shell", "name": "remote", "scriptUri": format!("{base}/s.sh"), "sha256Checksum": sha256(script.as_bytes())},
            {"type": "File", "name": "remote-file", "sourceUri": format!("{base}/s.sh"), "destination": "/srv/s.sh"}
        ]),
    );
    let s = build(&e.p, "t-http", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "gone", "scriptUri": format!("{base}/nope.sh")}]),
    );
    let s = build(&e.p, "t-http404", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 'gone': cannot download"),
        "{}",
        s.message
    );
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "busy", "scriptUri": format!("{base}/boom")}]),
    );
    let s = build(&e.p, "t-http503", &body).await;
    assert!(
        s.message
            .starts_with("network: step 'busy': cannot download"),
        "{}",
        s.message
    );
    assert!(classify(&s.message).is_transient());
}

/// The build VM's /tmp is a disk folder: what the File customizer or one
/// step puts there, the next step finds (AIB's "upload to /tmp, then `sudo
/// mv`" pattern). The host kernel's knobs stay read-only, and a step has no
/// controlling terminal to reach the operator's.
#[tokio::test]
async fn tmp_carries_over_between_steps_and_the_host_kernel_is_out_of_reach() {
    let e = env().await;
    let payload = e.dir.path().join("agent.conf");
    std::fs::write(&payload, "agent=on\n").unwrap();
    let body = template(
        "app",
        json!([
            {"type": "File", "name": "upload", "sourceUri": payload.display().to_string(), "destination": "/tmp/agent.conf"},
            shell("first", &["echo from-first > /tmp/handoff"]),
            shell(
                "second",
                &[
                    "grep -q agent=on /tmp/agent.conf",
                    "grep -q from-first /tmp/handoff",
                    // core_pattern runs a program as root on the host: the
                    // classic way out of a container.
                    "test -e /proc/sys/kernel/core_pattern",
                    "if (echo '|/tmp/x' > /proc/sys/kernel/core_pattern) 2>/dev/null; then echo 'wrote core_pattern'; exit 1; fi",
                    "if (cat </dev/tty) 2>/dev/null; then echo 'opened a terminal'; exit 1; fi",
                ]
            ),
        ]),
    );
    let s = build(&e.p, "t-tmp", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
}

#[tokio::test]
async fn a_sandboxed_step_cannot_read_a_host_file() {
    let e = env().await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "host-secret-4711").unwrap();
    let in_data = e.data().join("db-secret");
    std::fs::write(&in_data, "host-secret-4712").unwrap();
    let body = template(
        "app",
        json!([shell(
            "peek",
            &[
                &format!("cat {} || echo no-such-file-{}", secret.path().display(), 1),
                &format!("cat {} || echo no-such-file-{}", in_data.display(), 2),
                &format!("cat {}", secret.path().display()),
            ]
        )]),
    );
    let s = build(&e.p, "t-peek", &body).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .starts_with("customizer: step 'peek' exited with 1"),
        "{}",
        s.message
    );
    let log = std::fs::read_to_string(e.p.log_path("t-peek")).unwrap();
    assert!(
        log.contains("no-such-file-1") && log.contains("no-such-file-2"),
        "{log}"
    );
    assert!(!log.contains("host-secret-471"), "{log}");
    assert!(!s.message.contains("host-secret"));
}

#[tokio::test]
async fn a_file_customizer_cannot_escape_through_a_symlink() {
    let e = env().await;
    let payload = e.dir.path().join("payload");
    std::fs::write(&payload, "x").unwrap();
    let host_target = e.dir.path().join("host-dir");
    std::fs::create_dir_all(&host_target).unwrap();
    let body = template(
        "app",
        json!([
            shell("plant", &[&format!("ln -s {} /escape", host_target.display())]),
            {"type": "File", "name": "escape", "sourceUri": payload.display().to_string(), "destination": "/escape/pwned"}
        ]),
    );
    let s = build(&e.p, "t-escape", &body).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(s.message.contains("symlink"), "{}", s.message);
    assert!(!host_target.join("pwned").exists());
}

#[tokio::test]
async fn an_image_whose_mount_points_are_symlinks_is_refused() {
    // Steps cannot do this (their /tmp is a mount), but a tarball base can.
    let e = env().await;
    let host_dir = e.dir.path().join("host-tmp");
    std::fs::create_dir_all(&host_dir).unwrap();
    let bad =
        e.p.import_base("kiln:busybox:badtmp", "1", BaseFrom::Busybox)
            .await
            .unwrap();
    std::fs::remove_dir(bad.path.join("tmp")).unwrap();
    std::os::unix::fs::symlink(&host_dir, bad.path.join("tmp")).unwrap();
    let mut body = template("app", json!([shell("step", &["echo hi"])]));
    set(&mut body, "/properties/source/sku", json!("badtmp"));
    let s = build(&e.p, "t-badtmp", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 'step': the image's /tmp is not a folder"),
        "{}",
        s.message
    );
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn unsupported_customizers_and_traversals_are_refused_before_anything_runs() {
    let e = env().await;
    let mut body = template(
        "app",
        json!([
            shell("ok", &["true"]),
            {"type": "PowerShell", "name": "ps", "inline": ["Write-Host hi"]},
            {"type": "File", "sourceUri": "/etc/hostname", "destination": "/etc/../../../host-file"},
            {"type": "File", "sourceUri": "/etc/hostname", "destination": "relative/path"},
        ]),
    );
    set(
        &mut body,
        "/properties/validate",
        json!({"inVMValidations": [{"type": "WindowsRestart"}]}),
    );
    let t: ImageTemplate = serde_json::from_value(body.clone()).unwrap();
    let errors = e.p.check(&t);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "properties.customize[1]",
            "properties.customize[2].destination",
            "properties.customize[3].destination",
            "properties.validate.inVMValidations[0]"
        ]
    );
    assert!(errors[0]
        .message
        .contains("not supported by the local provider"));
    assert!(errors[3]
        .message
        .contains("not supported by the local provider"));
    let err = e.p.put_template("t-bad", &body).await.unwrap_err();
    assert_eq!(err.category, FailureCategory::Policy);
    assert!(matches!(
        e.p.status("t-bad").await.unwrap(),
        TemplateStatus::Missing
    ));
}

#[tokio::test]
async fn a_step_over_its_time_limit_fails_as_timeout() {
    let e = env().await;
    let mut body = template("app", json!([shell("slow", &["echo started", "sleep 30"])]));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("1"));
    let t0 = std::time::Instant::now();
    let s = build(&e.p, "t-timeout", &body).await;
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(
        s.message
            .starts_with("timeout: step 'slow' exceeded its 1 s limit"),
        "{}",
        s.message
    );
    assert!(s.message.contains("started"));
    assert_eq!(classify(&s.message), FailureCategory::Timeout);

    // The whole-build limit (buildTimeoutInMinutes; seconds through a local tag).
    let mut body = template(
        "app",
        json!([shell("a", &["sleep 1"]), shell("b", &["sleep 30"])]),
    );
    set(&mut body, "/tags/kiln.buildTimeoutSeconds", json!("2"));
    let s = build(&e.p, "t-build-timeout", &body).await;
    assert!(
        s.message.starts_with(
            "timeout: the build exceeded its 2 s limit (buildTimeoutInMinutes) during step 'b'"
        ),
        "{}",
        s.message
    );
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

#[tokio::test]
async fn cancel_kills_the_sandbox_and_cleans_up() {
    let e = env().await;
    let body = template(
        "app",
        json!([shell("long", &["echo long-running", "sleep 4242"])]),
    );
    e.p.put_template("t-cancel", &body).await.unwrap();
    e.p.run("t-cancel").await.unwrap();
    let start = std::time::Instant::now();
    while processes_with("sleep 4242") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match e.p.status("t-cancel").await.unwrap() {
        TemplateStatus::Run(s) => {
            assert_eq!(s.run_state, RunState::Running);
            assert_eq!(s.run_sub_state, Some(RunSubState::Customizing));
        }
        other => panic!("{other:?}"),
    }
    e.p.cancel("t-cancel").await.unwrap();
    let s = wait(&e.p, "t-cancel").await;
    assert_eq!(s.run_state, RunState::Canceled);
    assert_eq!(processes_with("sleep 4242"), 0);
    assert!(!e.data().join("staging/t-cancel").exists());
    // Canceling a finished run changes nothing.
    e.p.cancel("t-cancel").await.unwrap();
    let ok = build(&e.p, "t-done", &template("app", json!([]))).await;
    assert_eq!(ok.run_state, RunState::Succeeded);
    e.p.cancel("t-done").await.unwrap();
    assert!(
        matches!(e.p.status("t-done").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Succeeded)
    );
}

#[tokio::test]
async fn steps_run_without_network_when_the_pipeline_says_so() {
    let e = env().await;
    // Only `lo` in a fresh network namespace.
    let check = "test \"$(grep -c : /proc/net/dev)\" -eq 1";
    let mut body = template("app", json!([shell("offline", &[check])]));
    set(&mut body, "/tags/kiln.network", json!("false"));
    let s = build(&e.p, "t-offline", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    // And in its own pid namespace, as root, with a cleared environment.
    let body = template(
        "app",
        json!([shell(
            "ns",
            &[
                "test \"$(id -u)\" = 0",
                "test \"$(hostname)\" = kiln-build",
                "test -z \"$KILN_SECRET_ENV\"",
                "ps | grep -v grep | grep -c sh",
            ]
        )]),
    );
    std::env::set_var("KILN_SECRET_ENV", "leak");
    let s = build(&e.p, "t-ns", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
}

#[tokio::test]
async fn validation_failures_stop_distribution_unless_asked_to_continue() {
    let e = env().await;
    let mut body = template("app", json!([shell("c", &["echo ok > /etc/ok"])]));
    set(
        &mut body,
        "/properties/validate",
        json!({"inVMValidations": [shell("expect-missing", &["echo checking", "test -f /etc/missing"])]}),
    );
    let s = build(&e.p, "t-val", &body).await;
    assert!(
        s.message
            .starts_with("validation: step 'expect-missing' exited with 1: checking"),
        "{}",
        s.message
    );
    assert!(e.p.run_outputs("t-val").await.unwrap().is_empty());
    assert!(e.p.list_versions(&def_id("app")).await.unwrap().is_empty());

    set(
        &mut body,
        "/properties/validate/continueDistributeOnFailure",
        json!(true),
    );
    let s = build(&e.p, "t-val2", &body).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(s.message.starts_with("validation: "), "{}", s.message);
    assert_eq!(e.p.run_outputs("t-val2").await.unwrap().len(), 1);
    assert_eq!(e.p.list_versions(&def_id("app")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn source_validation_only_validates_the_source_as_it_is() {
    let e = env().await;
    let mut body = template("app", json!([shell("never", &["exit 1"])]));
    set(
        &mut body,
        "/properties/validate",
        json!({"sourceValidationOnly": true, "inVMValidations": [shell("is-busybox", &["grep -q busybox /etc/os-release"])]}),
    );
    let s = build(&e.p, "t-svo", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let log = std::fs::read_to_string(e.p.log_path("t-svo")).unwrap();
    assert!(log.contains("customizers skipped"));
}

#[tokio::test]
async fn a_run_of_a_dead_instance_is_reported_orphaned_not_running_forever() {
    let e = env().await;
    let body = template("app", json!([shell("nap", &["sleep 2"])]));
    e.p.put_template("t-orphan", &body).await.unwrap();
    e.p.run("t-orphan").await.unwrap();
    // Same store and data, new instance: the old process is "gone".
    let p2 = e.restart("after-restart", Faults::none());
    let s = match p2.status("t-orphan").await.unwrap() {
        TemplateStatus::Run(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .starts_with("orphaned: the process running this build exited"),
        "{}",
        s.message
    );
    assert_eq!(classify(&s.message), FailureCategory::Transient);
    // Persisted: the first instance finds it failed too, and its task cannot overwrite it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match e.p.status("t-orphan").await.unwrap() {
        TemplateStatus::Run(s) => assert!(s.message.starts_with("orphaned:"), "{}", s.message),
        other => panic!("{other:?}"),
    }
    // run() does not start a twin.
    p2.run("t-orphan").await.unwrap();
    assert!(
        matches!(p2.status("t-orphan").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Failed)
    );
}

#[tokio::test]
async fn templates_are_idempotent_and_runs_have_no_twins() {
    let e = env().await;
    let body = template("app", json!([shell("one", &["echo once >> /etc/count"])]));
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::Missing
    ));
    e.p.put_template("t-idem", &body).await.unwrap();
    e.p.put_template("t-idem", &body).await.unwrap();
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::NotRun
    ));
    // Changed before it ran: an update.
    let body2 = template("app", json!([shell("two", &["echo twice >> /etc/count"])]));
    e.p.put_template("t-idem", &body2).await.unwrap();
    e.p.run("t-idem").await.unwrap();
    e.p.run("t-idem").await.unwrap();
    let s = wait(&e.p, "t-idem").await;
    assert_eq!(s.run_state, RunState::Succeeded);
    e.p.run("t-idem").await.unwrap();
    assert!(
        matches!(e.p.status("t-idem").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Succeeded)
    );
    let log = std::fs::read_to_string(e.p.log_path("t-idem")).unwrap();
    assert_eq!(log.matches("kiln local build of template").count(), 1);
    assert!(log.contains("'two'"));
    // The same body again is fine; another body after the run is refused.
    e.p.put_template("t-idem", &body2).await.unwrap();
    assert!(e.p.put_template("t-idem", &body).await.is_err());
    // Delete removes the record, not the outputs.
    e.p.delete_template("t-idem").await.unwrap();
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::Missing
    ));
    assert_eq!(e.p.list_versions(&def_id("app")).await.unwrap().len(), 1);
    e.p.delete_template("t-idem").await.unwrap();
}

#[tokio::test]
async fn a_gallery_version_is_never_published_twice() {
    let e = env().await;
    let explicit = |image: &str| {
        let mut b = template(image, json!([]));
        set(
            &mut b,
            "/properties/distribute/0/galleryImageId",
            json!(format!("{}/versions/2.0.0", def_id(image))),
        );
        b
    };
    let s = build(&e.p, "t-v1", &explicit("app")).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let s = build(&e.p, "t-v2", &explicit("app")).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .contains("already exists (published by template t-v1)"),
        "{}",
        s.message
    );
    assert_eq!(e.p.list_versions(&def_id("app")).await.unwrap().len(), 1);
    // Without an explicit version, `Latest` versioning takes the next patch.
    let s = build(&e.p, "t-v3", &template("app", json!([]))).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let versions: Vec<String> =
        e.p.list_versions(&def_id("app"))
            .await
            .unwrap()
            .iter()
            .map(|v| v.version.to_string())
            .collect();
    assert_eq!(versions, ["2.0.0", "2.0.1"]);
}

#[tokio::test]
async fn gallery_versions_update_delete_and_feed_builds() {
    let e = env().await;
    for (n, v) in [("t-g1", "1.0.9"), ("t-g2", "1.0.10")] {
        let mut b = template(
            "base",
            json!([shell("mark", &[&format!("echo {v} > /etc/base-version")])]),
        );
        set(
            &mut b,
            "/properties/distribute/0/galleryImageId",
            json!(format!("{}/versions/{v}", def_id("base"))),
        );
        assert_eq!(build(&e.p, n, &b).await.run_state, RunState::Succeeded);
    }
    let latest =
        e.p.gallery_version(&format!("{}/versions/latest", def_id("base")))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(latest.version.version.to_string(), "1.0.10");
    assert_eq!(e.p.gallery_images().await.unwrap(), vec![def_id("base")]);

    // A build from `…/versions/latest` gets 1.0.10's content.
    let mut child = template(
        "child",
        json!([shell("from-parent", &["grep -qx 1.0.10 /etc/base-version"])]),
    );
    set(
        &mut child,
        "/properties/source",
        json!({"type": "SharedImageVersion", "imageVersionId": format!("{}/versions/latest", def_id("base"))}),
    );
    let s = build(&e.p, "t-child", &child).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let d = e.p.run_details("t-child").await.unwrap().unwrap();
    assert_eq!(
        d.source_exact_version,
        Some(format!("{}/versions/1.0.10", def_id("base")))
    );

    // Excluded from latest: latest falls back; the base catalog marks it.
    let v10: ImageVersion = "1.0.10".parse().unwrap();
    e.p.update_version(
        &def_id("base"),
        v10,
        &VersionUpdate {
            exclude_from_latest: Some(true),
            end_of_life: None,
            tags: None,
        },
    )
    .await
    .unwrap();
    let latest =
        e.p.gallery_version(&format!("{}/versions/latest", def_id("base")))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(latest.version.version.to_string(), "1.0.9");
    let src = Source::SharedImageVersion {
        image_version_id: format!("{}/versions/latest", def_id("base")),
        exact_version: None,
    };
    let vs = e.p.versions(&src).await.unwrap();
    assert!(vs.iter().any(|v| v.version == "1.0.10" && v.deprecated));

    // Delete removes files; deleting again is fine; ids compare case-insensitively.
    let path =
        e.p.gallery_version(&format!("{}/versions/1.0.10", def_id("base")))
            .await
            .unwrap()
            .unwrap()
            .path;
    e.p.delete_version(
        &def_id("base")
            .to_uppercase()
            .replace("/VERSIONS", "/versions"),
        v10,
    )
    .await
    .unwrap();
    assert!(!path.exists());
    e.p.delete_version(&def_id("base"), v10).await.unwrap();
    assert_eq!(e.p.list_versions(&def_id("base")).await.unwrap().len(), 1);
    assert!(e
        .p
        .update_version(&def_id("base"), v10, &VersionUpdate::default())
        .await
        .is_err());
}

#[tokio::test]
async fn the_base_catalog_orders_versions_and_records_the_exact_one() {
    let e = env().await;
    e.p.import_base(URN, "1.0.10", BaseFrom::Busybox)
        .await
        .unwrap();
    e.p.import_base(URN, "1.0.9", BaseFrom::Busybox)
        .await
        .unwrap();
    assert!(e
        .p
        .import_base(URN, "1.0.9", BaseFrom::Busybox)
        .await
        .is_err());
    assert!(e
        .p
        .import_base("no-colons", "1", BaseFrom::Busybox)
        .await
        .is_err());
    let bases = e.p.list_bases().await.unwrap();
    assert_eq!(
        bases.iter().map(|b| b.version.as_str()).collect::<Vec<_>>(),
        ["1.0.0", "1.0.9", "1.0.10"]
    );
    assert!(bases[0].path.join("bin/busybox").is_file());
    let src = Source::PlatformImage {
        publisher: "kiln".into(),
        offer: "busybox".into(),
        sku: "test".into(),
        version: "latest".into(),
        exact_version: None,
    };
    assert_eq!(e.p.versions(&src).await.unwrap().len(), 3);
    let s = build(&e.p, "t-latest", &template("app", json!([]))).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let d = e.p.run_details("t-latest").await.unwrap().unwrap();
    assert_eq!(d.source_exact_version.as_deref(), Some("1.0.10"));
    assert_eq!(d.manifest.unwrap()["source"]["exactVersion"], "1.0.10");
    // A pinned version, and a missing one.
    let mut b = template("app", json!([]));
    set(&mut b, "/properties/source/version", json!("1.0.9"));
    build(&e.p, "t-pinned", &b).await;
    assert_eq!(
        e.p.run_details("t-pinned")
            .await
            .unwrap()
            .unwrap()
            .source_exact_version
            .as_deref(),
        Some("1.0.9")
    );
    set(&mut b, "/properties/source/version", json!("9.9.9"));
    let s = build(&e.p, "t-nobase", &b).await;
    assert!(s.message.starts_with("internal: source: base image kiln:busybox:test version 9.9.9 is not in the local catalog"), "{}", s.message);
    // Tarball import.
    let tar = e.dir.path().join("root.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&bases[0].path)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let t =
        e.p.import_base("kiln:tar:test", "1", BaseFrom::Tar(tar))
            .await
            .unwrap();
    assert!(t.path.join("bin/busybox").is_file());
}

#[tokio::test]
async fn injected_faults_fail_transiently_then_let_builds_through_across_restarts() {
    let faults = Faults::parse(r#"[{"pipeline":"tiny","kind":"fail-transient","times":2},{"pipeline":"other","kind":"fail"}]"#).unwrap();
    let e = env_with(faults.clone()).await;
    let body = template("app", json!([]));
    let s = build(&e.p, "t-f1", &body).await;
    assert!(s.message.starts_with("network: step 'kiln-fault-fail-transient' exited with 75: injected transient failure (fault use 1 of 2)"), "{}", s.message);
    assert!(classify(&s.message).is_transient());
    // The count is durable: a restarted process sees the second use, then none.
    let p2 = e.restart("second", faults);
    let s = build(&p2, "t-f2", &body).await;
    assert!(s.message.contains("fault use 2 of 2"), "{}", s.message);
    let s = build(&p2, "t-f3", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let mut other = body.clone();
    set(&mut other, "/tags/kiln.pipeline", json!("other"));
    let s = build(&p2, "t-f4", &other).await;
    assert!(
        s.message
            .starts_with("customizer: step 'kiln-fault-fail' exited with 1"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn hang_and_slow_faults_meet_the_step_limit() {
    let faults = Faults::parse(r#"[{"pipeline":"hang","kind":"hang","times":1},{"pipeline":"slow","kind":"slow","seconds":1}]"#).unwrap();
    let e = env_with(faults).await;
    let mut body = template("app", json!([]));
    set(&mut body, "/tags/kiln.pipeline", json!("hang"));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("1"));
    let s = build(&e.p, "t-hang", &body).await;
    assert!(
        s.message
            .starts_with("timeout: step 'kiln-fault-hang' exceeded"),
        "{}",
        s.message
    );
    set(&mut body, "/tags/kiln.pipeline", json!("slow"));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("20"));
    let t0 = std::time::Instant::now();
    let s = build(&e.p, "t-slow", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert!(t0.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn vms_are_consumers_that_retention_sees() {
    let e = env().await;
    let mut b = template("app", json!([]));
    set(
        &mut b,
        "/properties/distribute/0/galleryImageId",
        json!(format!("{}/versions/1.0.0", def_id("app"))),
    );
    assert_eq!(build(&e.p, "t-vm", &b).await.run_state, RunState::Succeeded);
    let vid = format!("{}/versions/1.0.0", def_id("app"));
    let vm = e.p.vm_create(&vid, "web-1").await.unwrap();
    assert_eq!(vm.image_reference, vid);
    e.p.vm_create(&vid, "web-1").await.unwrap();
    e.p.vm_create(&format!("{}/versions/latest", def_id("app")), "web-2")
        .await
        .unwrap();
    assert!(e
        .p
        .vm_create(&format!("{}/versions/9.9.9", def_id("app")), "web-3")
        .await
        .is_err());
    assert!(e
        .p
        .vm_create(&format!("{}/versions/latest", def_id("app")), "web-1")
        .await
        .is_err());
    assert_eq!(e.p.vm_list().await.unwrap().len(), 2);
    let used = e.p.in_use().await.unwrap();
    assert!(used.versions.contains(&vid.to_ascii_lowercase()));
    assert!(used.uses_latest_of(&def_id("app")));
    assert!(e.p.vm_delete("web-2").await.unwrap());
    assert!(!e.p.vm_delete("web-2").await.unwrap());
    assert!(!e.p.in_use().await.unwrap().uses_latest_of(&def_id("app")));
    // A busybox image has no kernel to boot.
    let err =
        e.p.vm_run(&vid, "true", Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("has no kernel"), "{err}");
    // A boot test on it fails validation clearly.
    let mut b = template("app", json!([]));
    set(&mut b, "/tags/kiln.bootTest.check", json!("uname -r"));
    let s = build(&e.p, "t-boot-nokernel", &b).await;
    assert!(
        s.message
            .starts_with("validation: boot test: the image has no kernel"),
        "{}",
        s.message
    );
}

#[test]
fn the_tools_are_installed_here() {
    use super::ToolNeed::*;
    assert_eq!(
        LocalProvider::missing_tools(&[Build, Boot, DebianImport, BusyboxImport]),
        Vec::<String>::new()
    );
}

#[test]
fn classify_reads_the_category_prefix() {
    assert_eq!(
        classify("customizer: step 'x' exited with 1: …"),
        FailureCategory::Customizer
    );
    assert_eq!(classify("timeout: …"), FailureCategory::Timeout);
    assert_eq!(classify("validation: …"), FailureCategory::Validation);
    assert_eq!(classify("network: injected"), FailureCategory::Network);
    assert_eq!(
        classify("orphaned: the process running this build exited"),
        FailureCategory::Transient
    );
    assert_eq!(classify("replication: x"), FailureCategory::Replication);
    assert_eq!(classify("something odd"), FailureCategory::Internal);
}

/// AIB's File customizer uploads as the build user: a folder that user
/// cannot write is refused with what to do instead, and what it places is
/// the user's.
#[test]
fn the_file_customizer_writes_as_the_build_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("tmp")).unwrap();
    std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(r.join("etc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = r.join("payload");
    std::fs::write(&src, "hello\n").unwrap();
    let user = build_user::StepUser {
        name: "packer".into(),
        ids: namespace::Ids {
            uid: 4242,
            gid: 4242,
        },
        home: "/home/packer".into(),
        shell: "/bin/sh".into(),
    };
    let err = engine::place_file(r, &src, "/etc/app.conf", Some(&user)).unwrap_err();
    assert!(
        err.to_string()
            .contains("not writable by the build user packer"),
        "{err}"
    );
    assert!(err.to_string().contains("upload to /tmp"), "{err}");
    assert!(!r.join("etc/app.conf").exists());
    let err = engine::place_file(r, &src, "/opt/app/app.conf", Some(&user)).unwrap_err();
    assert!(err.to_string().contains("does not create folders"), "{err}");

    engine::place_file(r, &src, "/tmp/app.conf", Some(&user)).unwrap();
    let md = std::fs::metadata(r.join("tmp/app.conf")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4242, 4242));
    // Someone else's file in sticky /tmp cannot be replaced.
    std::fs::write(r.join("tmp/roots"), "root's\n").unwrap();
    std::fs::set_permissions(r.join("tmp/roots"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = engine::place_file(r, &src, "/tmp/roots", Some(&user)).unwrap_err();
    assert!(err.to_string().contains("may not replace it"), "{err}");
    assert_eq!(
        std::fs::read_to_string(r.join("tmp/roots")).unwrap(),
        "root's\n"
    );
    // Without a build user (an image without sudo), kiln places it as root
    // and makes the folders.
    engine::place_file(r, &src, "/opt/app/app.conf", None).unwrap();
    assert_eq!(
        std::fs::read_to_string(r.join("opt/app/app.conf")).unwrap(),
        "hello\n"
    );
}
