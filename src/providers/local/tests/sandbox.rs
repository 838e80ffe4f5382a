//! What a step may and may not reach: /tmp carried between steps, host
//! files and kernel knobs out of reach, symlink escapes, refused
//! customizers, no network on request, and files placed as the build user.

use super::*;

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
    let err = place::place_file(r, &src, "/etc/app.conf", Some(&user)).unwrap_err();
    assert!(
        err.to_string()
            .contains("not writable by the build user packer"),
        "{err}"
    );
    assert!(err.to_string().contains("upload to /tmp"), "{err}");
    assert!(!r.join("etc/app.conf").exists());
    let err = place::place_file(r, &src, "/opt/app/app.conf", Some(&user)).unwrap_err();
    assert!(err.to_string().contains("does not create folders"), "{err}");

    place::place_file(r, &src, "/tmp/app.conf", Some(&user)).unwrap();
    let md = std::fs::metadata(r.join("tmp/app.conf")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4242, 4242));
    // Someone else's file in sticky /tmp cannot be replaced.
    std::fs::write(r.join("tmp/roots"), "root's\n").unwrap();
    std::fs::set_permissions(r.join("tmp/roots"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = place::place_file(r, &src, "/tmp/roots", Some(&user)).unwrap_err();
    assert!(err.to_string().contains("may not replace it"), "{err}");
    assert_eq!(
        std::fs::read_to_string(r.join("tmp/roots")).unwrap(),
        "root's\n"
    );
    // Without a build user (an image without sudo), kiln places it as root
    // and makes the folders.
    place::place_file(r, &src, "/opt/app/app.conf", None).unwrap();
    assert_eq!(
        std::fs::read_to_string(r.join("opt/app/app.conf")).unwrap(),
        "hello\n"
    );
}
