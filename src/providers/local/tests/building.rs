//! A build from start to end: customize, validate, capture, publish; and
//! how a failing customizer or validation ends it (messages, cleanup,
//! `onError` / `onValidationError`, `continueDistribute`).

use super::*;

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
