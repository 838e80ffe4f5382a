use std::process::Command;

use serde_json::json;

use super::*;
use crate::domain::lint::joined;

const NONCE: &str = "00112233445566778899aabbccddeeff";
const OS: &str = "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nID=ubuntu\nVERSION_ID=\"22.04\"\n";
const DPKG: &str = "ii \tjq\t1.6-2.1ubuntu3\tamd64\tjq\t1.6-2.1ubuntu3\n\
ii \tlibssl3\t3.0.2-0ubuntu1.15\tamd64\topenssl\t3.0.2-0ubuntu1.15\n\
rc \told-thing\t1.0-1\tamd64\told-thing\t1.0-1\n";

/// The lines as AIB's log carries them: Packer's prefix before each, CRLF.
fn in_log(lines: &[String]) -> String {
    let mut log = String::from(
        "[INFO] PACKER OUT ==> azure-arm: Provisioning with shell script: /tmp/script.sh\n",
    );
    for l in lines {
        log.push_str(&format!("[INFO] PACKER OUT     azure-arm: {l}\r\n"));
    }
    log.push_str("[INFO] PACKER OUT Build 'azure-arm' finished.\n");
    log
}

#[test]
fn a_rendered_block_is_found_in_the_log_whatever_prefixes_its_lines() {
    let log = in_log(&render(NONCE, OS.as_bytes(), DPKG.as_bytes()));
    assert_eq!(
        find_block(&log, NONCE).unwrap(),
        Some(Block::Inventory {
            os_release: OS.into(),
            dpkg: DPKG.into()
        })
    );
}

#[test]
fn a_block_with_another_nonce_is_not_read_and_the_last_right_one_wins() {
    let forged = render("ffff", OS.as_bytes(), b"ii \tevil\t1\tamd64\tevil\t1\n");
    let older = render(NONCE, OS.as_bytes(), b"");
    let newer = render(NONCE, OS.as_bytes(), DPKG.as_bytes());
    let log = in_log(&[older, forged, newer].concat());
    let Some(Block::Inventory { dpkg, .. }) = find_block(&log, NONCE).unwrap() else {
        panic!("no inventory");
    };
    assert_eq!(dpkg, DPKG);
    assert_eq!(
        find_block(&in_log(&render("ffff", b"", b"")), NONCE),
        Ok(None)
    );
    assert_eq!(find_block("no block at all\n", NONCE), Ok(None));
}

#[test]
fn a_damaged_or_cut_block_is_an_error_that_says_what_is_wrong() {
    let mut lines = render(NONCE, OS.as_bytes(), DPKG.as_bytes());
    let dpkg_line = lines.iter().position(|l| l.contains(":dpkg ")).unwrap();
    let l = &mut lines[dpkg_line];
    let last = l.pop().unwrap();
    l.push(if last == 'A' { 'B' } else { 'A' });
    let err = find_block(&in_log(&lines), NONCE).unwrap_err();
    assert!(err.contains("dpkg") && err.contains("sha256"), "{err}");

    let mut cut = render(NONCE, OS.as_bytes(), DPKG.as_bytes());
    cut.pop();
    let err = find_block(&in_log(&cut), NONCE).unwrap_err();
    assert!(err.contains("no end line"), "{err}");
}

#[test]
fn a_skipped_step_says_why() {
    let log = in_log(&[format!("{TAG}:{NONCE}:skip no dpkg-query")]);
    assert_eq!(
        find_block(&log, NONCE).unwrap(),
        Some(Block::Skipped {
            reason: "no dpkg-query".into()
        })
    );
}

#[test]
fn dpkg_query_lines_give_installed_packages_with_their_sources() {
    let p = parse_dpkg_query(DPKG).unwrap();
    assert_eq!(
        p.len(),
        2,
        "the removed package with config files left is not installed"
    );
    assert_eq!(
        (
            p[1].name.as_str(),
            p[1].source.as_str(),
            p[1].source_version.as_str()
        ),
        ("libssl3", "openssl", "3.0.2-0ubuntu1.15")
    );
    assert_eq!(p[0].license, None);
    let err = parse_dpkg_query("ii \tjq\t1.6\n").unwrap_err();
    assert!(
        err.contains("line 1") && err.contains("6 tab-separated"),
        "{err}"
    );
}

fn template(customize: Value, source: Value) -> Value {
    json!({"location": "westus", "properties": {"source": source, "customize": customize}})
}

#[test]
fn the_step_is_appended_to_linux_templates_only_and_once() {
    let ubuntu = json!({"type": "PlatformImage", "publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-gen2", "version": "latest"});
    let shell = json!({"type": "Shell", "name": "base", "inline": ["apt-get install -y jq"]});
    let linux = template(json!([shell]), ubuntu.clone());
    let sent = with_step(&linux, NONCE);
    let steps = sent["properties"]["customize"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1]["name"], STEP_NAME);
    assert_eq!(nonce_in(&sent).as_deref(), Some(NONCE));
    assert_eq!(with_step(&sent, NONCE), sent, "never twice");
    assert_eq!(
        with_step(&linux, NONCE),
        sent,
        "the same nonce gives the same body"
    );

    let ps = json!({"type": "PowerShell", "name": "w", "inline": ["Write-Host hi"]});
    for windows in [
        template(json!([shell, ps]), ubuntu.clone()),
        template(
            json!([shell]),
            json!({"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"}),
        ),
        template(
            json!([{"type": "File", "sourceUri": "https://x/y", "destination": "/etc/y"}]),
            ubuntu,
        ),
    ] {
        assert_eq!(with_step(&windows, NONCE), windows);
        assert_eq!(nonce_in(&windows), None);
    }
}

#[test]
fn the_script_passes_shellcheck_as_sh() {
    let out = Command::new("shellcheck")
        .args(["--norc", "--shell=sh", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(joined(&script(NONCE)).as_bytes())?;
            c.wait_with_output()
        })
        .expect("shellcheck runs (Debian package shellcheck)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The real step, run as AIB runs it (`/bin/sh -e`), on this machine's dpkg
/// database: its output parses, and is exactly what `render` (the
/// simulator's writer) makes of the same inputs.
#[test]
fn the_real_script_prints_this_machines_packages_in_the_rendered_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sh");
    std::fs::write(&file, joined(&script(NONCE))).unwrap();
    let out = Command::new("/bin/sh")
        .arg("-e")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();

    let Some(Block::Inventory { os_release, dpkg }) = find_block(
        &in_log(&printed.lines().map(str::to_string).collect::<Vec<_>>()),
        NONCE,
    )
    .unwrap() else {
        panic!("no inventory in {printed}");
    };
    let os = os_of(&os_release).expect("an ID in /etc/os-release");
    assert_eq!(
        Some(os),
        os_of(&std::fs::read_to_string("/etc/os-release").unwrap())
    );
    let packages = parse_dpkg_query(&dpkg).unwrap();
    let own = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "dpkg"])
        .output()
        .unwrap();
    let dpkg_pkg = packages
        .iter()
        .find(|p| p.name == "dpkg")
        .expect("dpkg is installed");
    assert_eq!(dpkg_pkg.version, String::from_utf8_lossy(&own.stdout));
    assert!(packages.len() > 50, "{} packages", packages.len());

    let os_bytes = std::fs::read("/etc/os-release").unwrap();
    let query = Command::new("dpkg-query")
        .args(["-W", "-f", DPKG_FORMAT])
        .output()
        .unwrap();
    let rendered = render(NONCE, &os_bytes, &query.stdout);
    assert_eq!(printed.lines().collect::<Vec<_>>(), rendered);
}
