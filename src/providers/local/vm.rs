//! Booting images under QEMU, and the record of consumers ("VMs").
//!
//! A boot test converts the qcow2 to a scratch raw copy, writes a check
//! script into it with `debugfs -w` (no mount), and boots the kernel kept
//! beside the artifact directly (`-kernel/-initrd`, `init=/kiln-boot-check`).
//! The script prints markers on the serial console and ends the guest with
//! `echo b > /proc/sysrq-trigger`, which makes QEMU exit (`-no-reboot`).
//!
//! KVM is used when a probe shows it works within a few seconds (a kernel
//! boot to its first panic); otherwise TCG. The probe runs once per process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::time::Instant;

use super::sandbox::{run_process, CancelWatch, Ended, LogSink};
use super::{Inner, KvmMode};

pub(crate) const BEGIN: &str = "KILN-BOOT-BEGIN";
pub(crate) const END: &str = "KILN-BOOT-END";
pub(crate) const RC: &str = "KILN-BOOT-RC=";
const CHECK_PATH: &str = "kiln-boot-check";

/// What a boot test saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The check's output (between the markers), or the console when it never ran.
    pub output: String,
    /// The check ran and exited 0.
    pub passed: bool,
}

/// A consumer of an image: what retention must keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub name: String,
    /// A gallery image version id, or an image definition id (uses its latest).
    pub image_reference: String,
    pub created_at: String,
}

#[derive(Debug)]
pub(crate) enum BootError {
    Canceled,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BootError {
    fn from(e: anyhow::Error) -> Self {
        BootError::Other(e)
    }
}

impl From<std::io::Error> for BootError {
    fn from(e: std::io::Error) -> Self {
        BootError::Other(e.into())
    }
}

pub(crate) fn check_script(check: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # kiln boot test: runs as init, prints markers, reboots (QEMU exits with -no-reboot).\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         mount -t proc proc /proc 2>/dev/null\n\
         mount -t sysfs sysfs /sys 2>/dev/null\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         mount -t tmpfs tmpfs /tmp 2>/dev/null\n\
         mount -t tmpfs tmpfs /run 2>/dev/null\n\
         echo {BEGIN}\n\
         ( {check}\n\
         ) 2>&1\n\
         echo \"{RC}$?\"\n\
         echo {END}\n\
         sync\n\
         echo b > /proc/sysrq-trigger\n\
         sleep 30\n"
    )
}

/// Reads the markers of a console transcript: (output between them, exit code).
pub(crate) fn parse_console(console: &str) -> (Option<String>, Option<i32>) {
    let clean: String = console.replace('\r', "");
    let Some(b) = clean.find(BEGIN) else {
        return (None, None);
    };
    let after = &clean[b + BEGIN.len()..];
    let after = after.strip_prefix('\n').unwrap_or(after);
    let (body, rc) = match after.find(RC) {
        Some(i) => {
            let rc = after[i + RC.len()..]
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok());
            (&after[..i], rc)
        }
        None => (after.split(END).next().unwrap_or(after), None),
    };
    (Some(body.trim_end().to_string()), rc)
}

fn qemu_base(accel: &str, kernel: &Path, memory_mib: u32) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.arg("-accel").arg(accel);
    if accel == "kvm" {
        cmd.arg("-cpu").arg("host");
    }
    cmd.args([
        "-m",
        &memory_mib.to_string(),
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(kernel);
    cmd
}

/// Whether KVM guests work here: boots `kernel` without a root to its panic
/// (about a second under KVM). Known failure modes are an abort (`-cpu host`
/// MSR assertion) or a guest that hangs: both read as "no".
async fn kvm_works(kernel: &Path) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let mut cmd = qemu_base("kvm", kernel, 128);
    cmd.arg("-append").arg("console=ttyS0 panic=-1");
    let sink = LogSink::discard();
    match run_process(
        cmd,
        &sink,
        "",
        Instant::now() + Duration::from_secs(8),
        None,
        true,
    )
    .await
    {
        Ok(out) => {
            let text = out.stdout.unwrap_or_default();
            matches!(out.ended, Ended::Exited(_)) && text.contains("Linux version")
        }
        Err(_) => false,
    }
}

async fn choose_accel(p: &Inner, kernel: &Path) -> &'static str {
    if p.kvm == KvmMode::Off {
        return "tcg";
    }
    let mut known = p.kvm_ok.lock().await;
    let ok = match *known {
        Some(ok) => ok,
        None => {
            let ok = kvm_works(kernel).await;
            tracing::info!(kvm = ok, "local provider: KVM probe");
            *known = Some(ok);
            ok
        }
    };
    if ok {
        "kvm"
    } else {
        "tcg"
    }
}

/// Boots `qcow2` (never modified: a scratch raw copy is booted) and runs `check` as init.
pub(crate) async fn boot(
    p: &Inner,
    qcow2: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    check: &str,
    timeout: Duration,
    cancel: Option<&CancelWatch>,
) -> Result<BootReport, BootError> {
    let scratch = p
        .data_dir
        .join("tmp")
        .join(format!("boot-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch)?;
    let result = boot_in(p, &scratch, qcow2, kernel, initrd, check, timeout, cancel).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn quiet_tool(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        anyhow::bail!("{what} failed: {}", text.trim());
    }
    Ok(text)
}

#[allow(clippy::too_many_arguments)]
async fn boot_in(
    p: &Inner,
    scratch: &Path,
    qcow2: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    check: &str,
    timeout: Duration,
    cancel: Option<&CancelWatch>,
) -> Result<BootReport, BootError> {
    let raw = scratch.join("disk.raw");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-O", "raw"]).arg(qcow2).arg(&raw);
    quiet_tool(cmd, "qemu-img convert").await?;
    let script = scratch.join("check.sh");
    std::fs::write(&script, check_script(check))?;
    let cmds = scratch.join("debugfs.cmds");
    std::fs::write(
        &cmds,
        format!(
            "rm /{CHECK_PATH}\nwrite {} /{CHECK_PATH}\nsif /{CHECK_PATH} mode 0100755\nsif /{CHECK_PATH} uid 0\nsif /{CHECK_PATH} gid 0\n",
            script.display()
        ),
    )?;
    let mut cmd = Command::new("debugfs");
    cmd.arg("-w").arg("-f").arg(&cmds).arg(&raw);
    quiet_tool(cmd, "debugfs write").await?;
    let mut cmd = Command::new("debugfs");
    cmd.arg("-R").arg(format!("stat /{CHECK_PATH}")).arg(&raw);
    let stat = quiet_tool(cmd, "debugfs stat").await?;
    if !stat.contains("Mode:  0755") {
        return Err(
            anyhow::anyhow!("cannot place the boot check in the image: {}", stat.trim()).into(),
        );
    }

    let started = Instant::now();
    let deadline = started + timeout;
    let mut accel = choose_accel(p, kernel).await;
    loop {
        let mut cmd = qemu_base(accel, kernel, 512);
        if let Some(i) = initrd {
            cmd.arg("-initrd").arg(i);
        }
        cmd.arg("-append")
            .arg(format!(
                "root=/dev/vda rw rootfstype=ext4 console=ttyS0 init=/{CHECK_PATH} quiet panic=-1"
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", raw.display()));
        let sink = LogSink::discard();
        let out = run_process(cmd, &sink, "", deadline, cancel, true).await?;
        let console = out.stdout.clone().unwrap_or_default();
        if out.ended == Ended::Canceled {
            return Err(BootError::Canceled);
        }
        let (body, rc) = parse_console(&console);
        if body.is_none() && accel == "kvm" && out.ended == Ended::TimedOut {
            // KVM passed the probe but this guest never reached init: use TCG from now on.
            *p.kvm_ok.lock().await = Some(false);
            accel = "tcg";
            if Instant::now() + Duration::from_secs(20) < deadline {
                continue;
            }
        }
        let passed = rc == Some(0);
        let output = match body {
            Some(b) => b,
            None => {
                let lines: Vec<&str> = console.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                match out.ended {
                    Ended::TimedOut => format!(
                        "(timed out after {} s before the check ran)\n{tail}",
                        timeout.as_secs()
                    ),
                    _ => format!("(the guest stopped before the check ran)\n{tail}"),
                }
            }
        };
        return Ok(BootReport {
            accel: accel.to_string(),
            output,
            passed,
        });
    }
}

/// Where a version's artifact lives: (qcow2, kernel, initrd).
pub(crate) fn artifact_files(dir: &Path) -> (PathBuf, Option<PathBuf>, Option<PathBuf>) {
    let kernel = dir.join("boot/vmlinuz");
    let initrd = dir.join("boot/initrd.img");
    (
        dir.join("disk.qcow2"),
        kernel.is_file().then_some(kernel),
        initrd.is_file().then_some(initrd),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_are_read_through_noise() {
        let console = "\x1bc\x1b[?7lSeaBIOS\r\nKILN-BOOT-BEGIN\r\n6.1.0-50-cloud-amd64\r\nok\r\nKILN-BOOT-RC=0\r\nKILN-BOOT-END\r\n[   10.7] sysrq: Resetting\r\n";
        let (body, rc) = parse_console(console);
        assert_eq!(body.as_deref(), Some("6.1.0-50-cloud-amd64\nok"));
        assert_eq!(rc, Some(0));
        assert_eq!(parse_console("Kernel panic"), (None, None));
        let (_, rc) = parse_console("KILN-BOOT-BEGIN\nno\nKILN-BOOT-RC=3\n");
        assert_eq!(rc, Some(3));
    }

    #[test]
    fn the_check_script_reboots_at_the_end() {
        let s = check_script("uname -r");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("( uname -r\n) 2>&1"));
        assert!(s.contains("echo b > /proc/sysrq-trigger"));
    }
}
