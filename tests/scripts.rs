//! The shell scripts a new user runs first: the set-up's tool check, and
//! shellcheck over every script in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::repo;

/// Where a tool is on this machine (the test needs the real ones).
fn which(tool: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed; run scripts/setup-debian.sh"))
}

/// The apt tools besides qemu-img (and the e2fsprogs ones, found in sbin).
const OTHER_APT_TOOLS: [&str; 6] = [
    "mmdebstrap",
    "busybox",
    "qemu-system-x86_64",
    "shellcheck",
    "chromium",
    "chromedriver",
];

fn check_with_path(path: &Path) -> std::process::Output {
    Command::new("/bin/bash")
        .arg(repo().join("scripts/setup-debian.sh"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn the_setup_check_passes_when_every_tool_is_there() {
    let out = check_with_path(Path::new(&std::env::var("PATH").unwrap_or_default()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What happened on a fresh machine: installing qemu-system-x86 made apt
/// remove the qemu-utils backport, and with it qemu-img. The check must
/// name the tool and its package, and fail.
#[test]
fn the_setup_check_names_a_removed_tool_and_its_package() {
    let bin = tempfile::tempdir().unwrap();
    for tool in OTHER_APT_TOOLS {
        std::os::unix::fs::symlink(which(tool), bin.path().join(tool)).unwrap();
    }
    // mmdebstrap is a perl script: its interpreter is found by absolute path.
    let out = check_with_path(bin.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qemu-img (Debian package qemu-utils)"),
        "{err}"
    );
    assert_eq!(err.matches("(Debian package").count(), 1, "{err}");
}

/// A tool that is there but does not run (a broken install) counts as missing.
#[test]
fn the_setup_check_runs_each_tool_not_just_finds_it() {
    let bin = tempfile::tempdir().unwrap();
    for tool in OTHER_APT_TOOLS {
        std::os::unix::fs::symlink(which(tool), bin.path().join(tool)).unwrap();
    }
    let broken = bin.path().join("qemu-img");
    std::fs::write(&broken, "#!/bin/sh\nexit 127\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = check_with_path(bin.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qemu-img (Debian package qemu-utils)"));
}

/// Azurite comes from npm, not apt: a missing one is named with its npm package.
#[test]
fn the_setup_check_names_a_missing_npm_tool_and_its_package() {
    let bin = tempfile::tempdir().unwrap();
    for tool in OTHER_APT_TOOLS.into_iter().chain(["qemu-img"]) {
        std::os::unix::fs::symlink(which(tool), bin.path().join(tool)).unwrap();
    }
    let out = check_with_path(bin.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("azurite-table (npm package azurite@3: npm install -g azurite@3)"),
        "{err}"
    );
    assert_eq!(err.matches("(Debian package").count(), 0, "{err}");
}

/// The browser test's driver is a package of its own (chromium-driver).
#[test]
fn the_setup_check_names_a_missing_browser_driver_and_its_package() {
    let bin = tempfile::tempdir().unwrap();
    for tool in OTHER_APT_TOOLS
        .into_iter()
        .chain(["qemu-img"])
        .filter(|t| *t != "chromedriver")
    {
        std::os::unix::fs::symlink(which(tool), bin.path().join(tool)).unwrap();
    }
    let out = check_with_path(bin.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chromedriver (Debian package chromium-driver)"),
        "{err}"
    );
    assert_eq!(err.matches("(Debian package").count(), 1, "{err}");
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.push(repo().join(".ci/run"));
    let out = Command::new(which("shellcheck"))
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
