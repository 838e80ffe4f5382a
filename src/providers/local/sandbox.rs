//! Running things: the bubblewrap sandbox a step runs in, and one runner for
//! every child process a build starts (sandboxed steps and host tools alike)
//! so that each one streams its output to the build log, meets the step and
//! build deadlines, and dies with its whole process group on cancel.
//!
//! The sandbox (see docs/local-provider.md): the image root bound at `/`, a
//! fresh `/proc`, a minimal `/dev`, a private `/tmp` (mode 1777), new pid,
//! ipc, uts and cgroup namespaces, no network namespace unless the build
//! turns the network off, a cleared environment, and nothing of the host
//! but `/etc/resolv.conf` (read-only, network on) and the step's own script.
//! No user namespace: apt's `_apt` user must exist inside.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::Records;

/// Lines of output kept for a failure message.
const TAIL: usize = 12;

/// The per-build customization log (`logs/<template>.log`), appended line by line.
#[derive(Clone)]
pub(crate) struct LogSink {
    file: Option<Arc<Mutex<std::fs::File>>>,
    /// Each line carries the seconds since the sink opened (the build started).
    start: std::time::Instant,
}

impl LogSink {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(file))),
            start: std::time::Instant::now(),
        })
    }

    /// A sink that keeps nothing (for runs whose output is captured instead).
    pub fn discard() -> Self {
        Self {
            file: None,
            start: std::time::Instant::now(),
        }
    }

    pub fn line(&self, text: &str) {
        if let Some(Ok(mut f)) = self.file.as_ref().map(|f| f.lock()) {
            let _ = writeln!(f, "[{:8.3}] {text}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// Cancellation of one run: set in this process by `cancel`, or seen in the
/// store (`Canceling`) when another process asked.
#[derive(Clone)]
pub(crate) struct CancelWatch {
    rx: watch::Receiver<bool>,
    records: Records,
    template: String,
}

impl CancelWatch {
    pub fn new(rx: watch::Receiver<bool>, records: Records, template: String) -> Self {
        Self {
            rx,
            records,
            template,
        }
    }

    pub fn is_canceled(&self) -> bool {
        *self.rx.borrow()
            || self
                .records
                .run_get(&self.template)
                .ok()
                .flatten()
                .is_some_and(|r| r.run_state == "Canceling")
    }

    /// Resolves when the run is canceled.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        loop {
            if self.is_canceled() {
                return;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The sender is gone: only the store can cancel now.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Exit code, or 128 + signal.
    Exited(i32),
    TimedOut,
    Canceled,
}

#[derive(Debug, Clone)]
pub(crate) struct ProcOutput {
    pub ended: Ended,
    /// Last lines of stdout and stderr, interleaved as they came.
    pub tail: Vec<String>,
    /// All of stdout, when asked for (then stdout is not logged).
    pub stdout: Option<String>,
}

impl ProcOutput {
    pub fn success(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
}

/// Runs `cmd` in its own process group. Output goes to `log` (each line
/// prefixed by `prefix`) as it comes; at `deadline` or on cancel the whole
/// group is killed.
pub(crate) async fn run_process(
    mut cmd: Command,
    log: &LogSink,
    prefix: &str,
    deadline: Instant,
    cancel: Option<&CancelWatch>,
    capture_stdout: bool,
) -> std::io::Result<ProcOutput> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL + 1)));
    let out = child.stdout.take().map(|s| {
        spawn_reader(
            s,
            log.clone(),
            prefix.to_string(),
            tail.clone(),
            capture_stdout,
        )
    });
    let err = child
        .stderr
        .take()
        .map(|s| spawn_reader(s, log.clone(), prefix.to_string(), tail.clone(), false));

    let canceled = async {
        match cancel {
            Some(c) => c.wait().await,
            None => std::future::pending::<()>().await,
        }
    };
    let ended = tokio::select! {
        status = child.wait() => {
            let status = status?;
            use std::os::unix::process::ExitStatusExt;
            Ended::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        _ = tokio::time::sleep_until(deadline) => Ended::TimedOut,
        _ = canceled => Ended::Canceled,
    };
    if ended != Ended::Exited(0) {
        // Kill the group whatever happened: a step that exited may have left
        // children behind (they would die with the pid namespace anyway).
        if let Some(pg) = pgid {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-pg, libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
    // Readers end when the last writer of each pipe is gone; bound the wait
    // in case something escaped the group while holding a pipe.
    let mut stdout = None;
    if let Some(h) = out {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), h).await {
            stdout = s;
        }
    }
    if let Some(h) = err {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok(ProcOutput {
        ended,
        tail,
        stdout,
    })
}

fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
    r: R,
    log: LogSink,
    prefix: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    capture: bool,
) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(r);
        let mut captured = capture.then(String::new);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(c) = captured.as_mut() {
                c.push_str(line);
                c.push('\n');
                continue;
            }
            log.line(&format!("{prefix}{line}"));
            if let Ok(mut t) = tail.lock() {
                t.push_back(line.to_string());
                if t.len() > TAIL {
                    t.pop_front();
                }
            }
        }
        captured
    })
}

/// A command run inside the image with bubblewrap.
pub(crate) struct Sandbox<'a> {
    pub root: &'a Path,
    pub network: bool,
    /// Host files bound read-only inside the sandbox: (host path, path inside).
    pub ro_binds: Vec<(PathBuf, String)>,
}

impl Sandbox<'_> {
    /// bubblewrap mounts over the image's `/proc`, `/dev` and `/tmp` and runs
    /// as root: if the image made one of them a symlink, bwrap would follow it
    /// to a host path while setting up. Refuse such an image.
    pub fn preflight(&self) -> Result<(), String> {
        for d in ["proc", "dev", "tmp"] {
            if let Ok(md) = std::fs::symlink_metadata(self.root.join(d)) {
                if !md.is_dir() {
                    return Err(format!(
                        "the image's /{d} is not a folder (a symlink?): the sandbox cannot mount over it"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The image's `/etc/resolv.conf` can take the host's (read-only) when
    /// it is a plain file or absent, never when it is a symlink.
    fn can_bind_resolv_conf(&self) -> bool {
        let etc = self.root.join("etc");
        let etc_ok = std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir());
        let target_ok = match std::fs::symlink_metadata(etc.join("resolv.conf")) {
            Ok(m) => m.is_file(),
            Err(_) => true,
        };
        etc_ok && target_ok && Path::new("/etc/resolv.conf").exists()
    }

    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("bwrap");
        cmd.args(self.args(argv));
        cmd
    }

    pub fn args(&self, argv: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        push("--bind");
        a.push(self.root.as_os_str().to_owned());
        let mut push = |s: &str| a.push(OsString::from(s));
        for s in [
            "/", "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
        ] {
            push(s);
        }
        if self.network {
            if self.can_bind_resolv_conf() {
                for s in ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"] {
                    push(s);
                }
            }
        } else {
            push("--unshare-net");
        }
        for s in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup",
            "--die-with-parent",
            "--hostname",
            "kiln-build",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--setenv",
            "HOME",
            "/root",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "DEBIAN_FRONTEND",
            "noninteractive",
            "--chdir",
            "/",
        ] {
            push(s);
        }
        for (host, inside) in &self.ro_binds {
            a.push(OsString::from("--ro-bind"));
            a.push(host.as_os_str().to_owned());
            a.push(OsString::from(inside));
        }
        a.push(OsString::from("--"));
        a.extend(argv.iter().map(OsString::from));
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_arguments_isolate_the_step() {
        let sb = Sandbox {
            root: Path::new("/data/staging/t/root"),
            network: false,
            ro_binds: vec![(
                PathBuf::from("/data/staging/t/work/s.sh"),
                "/tmp/.kiln/step".into(),
            )],
        };
        let args: Vec<String> = sb
            .args(&["/bin/sh", "/tmp/.kiln/step"])
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with(
            "--bind /data/staging/t/root / --proc /proc --dev /dev --perms 1777 --tmpfs /tmp"
        ));
        assert!(joined.contains("--unshare-net"));
        assert!(!joined.contains("resolv.conf"));
        assert!(!joined.contains("--unshare-all") && !joined.contains("--unshare-user"));
        assert!(joined.contains("--clearenv"));
        assert!(joined.ends_with(
            "--ro-bind /data/staging/t/work/s.sh /tmp/.kiln/step -- /bin/sh /tmp/.kiln/step"
        ));
    }
}
