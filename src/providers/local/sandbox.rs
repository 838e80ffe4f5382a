//! Running things: the sandbox a step runs in, and one runner for every
//! child process a build starts (sandboxed steps and host tools alike) so
//! that each one streams its output to the build log, meets the step and
//! build deadlines, and dies with its whole process group on cancel.
//!
//! The sandbox (see docs/local-provider.md and [`super::namespace`]): the
//! image root at `/` through `pivot_root`, a fresh `/proc` (kernel knobs
//! read-only), a minimal `/dev`, the image's own `/tmp` (as on a build VM),
//! new pid, ipc, uts and cgroup namespaces, a network namespace when the
//! build turns the network off, a session of its own, a login environment,
//! and nothing of the host but `/etc/resolv.conf` (read-only, network on).
//! No user namespace: apt's `_apt` user and AIB's build user must be real
//! users inside, and set-user-id `sudo` must work.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use super::build_user::StepUser;
use super::namespace::{Diagnostics, Launch, Spec};
use super::records::{LocalRunState, Records};

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
                .is_some_and(|r| r.run_state == LocalRunState::Canceling)
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

/// A command run inside the image (see [`super::namespace`]).
pub(crate) struct Sandbox<'a> {
    pub root: &'a Path,
    pub network: bool,
    /// Who runs the command: AIB's build user for customizers and
    /// validators, root (`None`) for kiln's own work in the image.
    pub user: Option<&'a StepUser>,
    /// Extra environment on top of the login environment.
    pub env: Vec<(String, String)>,
}

/// PATH of a login on Ubuntu (`/etc/environment`), which an AIB step sees.
const LOGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Sandbox<'_> {
    /// The sandbox mounts over the image's `/proc` and `/dev` as root on the
    /// host, and steps use its `/tmp`: if the image made one of them a
    /// symlink, a mount or a write would land on a host path. Refuse such an
    /// image; make a missing one (a minimal root), as bubblewrap did.
    pub fn preflight(&self) -> Result<(), String> {
        for (d, mode) in [("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777)] {
            let path = self.root.join(d);
            match std::fs::symlink_metadata(&path) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "the image's /{d} is not a folder (a symlink?): the sandbox cannot use it"
                    ))
                }
                Err(_) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::create_dir(&path)
                        .and_then(|()| {
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        })
                        .map_err(|e| format!("cannot make the image's /{d}: {e}"))?;
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

    /// The environment a step starts with: a cleared one, then what a
    /// login gives (`HOME`, `USER`, `LOGNAME`, `SHELL`, `PATH`, `LANG`),
    /// then `env`.
    pub fn environment(&self) -> Vec<(String, String)> {
        let (name, home, shell) = match self.user {
            Some(u) => (u.name.as_str(), u.home.as_str(), u.shell.as_str()),
            None => ("root", "/root", "/bin/sh"),
        };
        let mut vars: Vec<(String, String)> = [
            ("PATH", LOGIN_PATH),
            ("HOME", home),
            ("USER", name),
            ("LOGNAME", name),
            ("SHELL", shell),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in &self.env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.clone(), v.clone()));
        }
        vars
    }

    /// The command, and what explains a failure to start it (pass the
    /// spawn error to [`Diagnostics::explain`]).
    pub fn command(&self, argv: &[&str]) -> std::io::Result<(Command, Diagnostics)> {
        // sshd starts a user without a home in `/`.
        let cwd = self
            .user
            .map(|u| u.home.as_str())
            .filter(|h| !h.is_empty())
            .unwrap_or("/");
        let (launch, diag) = Launch::prepare(&Spec {
            root: self.root,
            network: self.network,
            resolv_conf: self.can_bind_resolv_conf(),
            user: self.user.map(|u| u.ids),
            cwd,
        })?;
        let (program, args) = argv.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command to run")
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(self.environment());
        // SAFETY: `apply` makes only async-signal-safe system calls on data
        // prepared above (see the namespace module).
        unsafe {
            cmd.pre_exec(move || launch.apply());
        }
        Ok((cmd, diag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::local::namespace::Ids;

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_build_user_step_sees_the_login_environment_of_that_user() {
        let user = StepUser {
            name: "packer".into(),
            ids: Ids {
                uid: 1000,
                gid: 1000,
            },
            home: "/home/packer".into(),
            shell: "/bin/bash".into(),
        };
        let sb = Sandbox {
            root: Path::new("/data/staging/t/root"),
            network: false,
            user: Some(&user),
            env: vec![("PACKER_BUILDER_TYPE".into(), "azure-arm".into())],
        };
        let env = sb.environment();
        assert_eq!(get(&env, "HOME"), Some("/home/packer"));
        assert_eq!(get(&env, "USER"), Some("packer"));
        assert_eq!(get(&env, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&env, "PACKER_BUILDER_TYPE"), Some("azure-arm"));
        // AIB does not set it, so neither does kiln: a step that needs it says so.
        assert_eq!(get(&env, "DEBIAN_FRONTEND"), None);
    }

    #[test]
    fn kiln_work_in_the_image_runs_as_root_from_slash() {
        let sb = Sandbox {
            root: Path::new("/data/staging/t/root"),
            network: true,
            user: None,
            env: vec![],
        };
        assert_eq!(get(&sb.environment(), "HOME"), Some("/root"));
    }

    #[test]
    fn a_missing_proc_dev_or_tmp_is_made_and_a_symlinked_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let sb = Sandbox {
            root: root.path(),
            network: false,
            user: None,
            env: vec![],
        };
        sb.preflight().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::fs::metadata(root.path().join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        std::fs::remove_dir(root.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev", root.path().join("dev")).unwrap();
        assert!(sb.preflight().unwrap_err().contains("/dev is not a folder"));
    }
}
