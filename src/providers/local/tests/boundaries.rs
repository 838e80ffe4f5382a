//! The sandbox's boundaries, one test each, in the terms an auditor checks:
//! a customizer runs as root in its image (AIB's customizers run under
//! `sudo`), and still cannot read the host's files, kiln's own data or
//! another build's staging, inherit kiln's environment, signal a host
//! process, leave a process running after its build, or reach a host
//! loopback service when the pipeline asks for no network.
//!
//! Each probe is written so that it would succeed without the boundary:
//! the paths are the host's real ones, the processes really run, and the
//! network test first proves its probe reaches the service with the
//! network on.

use std::io::Read as _;
use std::net::TcpListener;

use super::*;

/// A file that exists on the host for the test's length.
struct Canary(PathBuf);

impl Canary {
    fn new(path: PathBuf, text: &str) -> Canary {
        std::fs::write(&path, text).unwrap();
        Canary(path)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A shell line that fails the step when `path` can be read.
fn must_not_read(path: &Path) -> String {
    format!(
        "if cat '{p}' 2>/dev/null; then echo 'read {p}'; exit 1; fi",
        p = path.display()
    )
}

#[tokio::test]
async fn a_step_cannot_read_the_invoking_users_home_or_kiln_s_database() {
    let e = env().await;
    let home = PathBuf::from(std::env::var("HOME").expect("HOME is set"));
    let token = uuid::Uuid::new_v4().simple().to_string();
    let canary = Canary::new(home.join(format!(".kiln-canary-{token}")), &token);
    let db = e.dir.path().join("kiln.db");
    assert!(db.is_file(), "the store this provider writes is at {db:?}");
    let body = template(
        "app",
        json!([shell(
            "peek",
            &[
                &must_not_read(&canary.0),
                &must_not_read(&db),
                // Nor by listing: the host's home is not the image's.
                &format!(
                    "if ls -a '{}' 2>/dev/null | grep -q kiln-canary; then exit 1; fi",
                    home.display()
                ),
                &format!(
                    "if ls '{}' 2>/dev/null; then echo 'saw the data dir'; exit 1; fi",
                    e.data().display()
                ),
            ]
        )]),
    );
    let s = build(&e.p, "t-home", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let log = std::fs::read_to_string(e.p.log_path("t-home")).unwrap();
    assert!(!log.contains(&token), "{log}");
}

#[tokio::test]
async fn a_step_cannot_read_another_build_s_staging_folder() {
    let e = env().await;
    let token = uuid::Uuid::new_v4().simple().to_string();
    // Build A stages a file in its image and stays running.
    let holder = template(
        "holder",
        json!([shell(
            "hold",
            // Held until canceled below, so its staging outlives build B.
            &[&format!("echo {token} > /tmp/staged-secret"), "sleep 600"]
        )]),
    );
    e.p.put_template("t-holder", &holder).await.unwrap();
    e.p.run("t-holder").await.unwrap();
    let staged = e.data().join("staging/t-holder/root/tmp/staged-secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !staged.is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "build A never staged {staged:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&staged).unwrap().trim(), token);
    // Build B knows the host path and still cannot read it.
    let body = template("peeker", json!([shell("peek", &[&must_not_read(&staged)])]));
    let s = build(&e.p, "t-peeker", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let log = std::fs::read_to_string(e.p.log_path("t-peeker")).unwrap();
    assert!(!log.contains(&token), "{log}");
    // The file was there all along: B failed to read it, not to find it.
    assert!(staged.is_file(), "build A's staging went away during B");
    e.p.cancel("t-holder").await.unwrap();
    wait(&e.p, "t-holder").await;
}

#[tokio::test]
async fn a_step_gets_a_minimal_explicit_environment_not_kiln_s() {
    let e = env().await;
    // What `sh` sets itself, and what the sandbox sets on purpose (a login's
    // variables and Packer's two).
    let allowed = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "PWD",
        "SHLVL",
        "OLDPWD",
        "_",
        "PACKER_BUILDER_TYPE",
        "PACKER_BUILD_NAME",
    ];
    // The test process has variables outside that list (cargo sets
    // CARGO_*), so a sandbox that passed its environment on would fail.
    let inherited: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(!inherited.is_empty());
    let check = format!(
        "for v in $(env | cut -d= -f1); do case \" {} \" in *\" $v \"*) ;; *) echo \"unexpected variable $v\"; exit 1;; esac; done",
        allowed.join(" ")
    );
    let body = template(
        "app",
        json!([shell(
            "env",
            &[&check, "test \"$PACKER_BUILDER_TYPE\" = azure-arm"]
        )]),
    );
    let s = build(&e.p, "t-env", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
}

#[tokio::test]
async fn a_step_cannot_see_signal_or_trace_a_host_process() {
    let e = env().await;
    let mut host = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let pid = host.id();
    let body = template(
        "app",
        json!([shell(
            "reach",
            &[
                // Not visible, so neither `kill` nor ptrace (which needs
                // /proc/<pid> and the pid) can name it.
                &format!("if test -e /proc/{pid}/status && grep -q sleep /proc/{pid}/status; then echo 'sees the host process'; exit 1; fi"),
                &format!("kill -KILL {pid} 2>/dev/null || true"),
                &format!("if cat /proc/{pid}/mem 2>/dev/null | head -c1 | grep -q .; then exit 1; fi"),
            ]
        )]),
    );
    let s = build(&e.p, "t-signal", &body).await;
    let alive = host.try_wait().unwrap().is_none();
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert!(alive, "the step killed host process {pid}");
}

/// Processes on the host whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let mut cmdline = Vec::new();
        if std::fs::File::open(entry.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .is_ok()
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_daemon_a_step_forks_does_not_outlive_its_build() {
    let e = env().await;
    // A sleep with a length no other process has, to find it by.
    let seconds = 30_000 + (uuid::Uuid::new_v4().as_u128() % 9_000) as u32;
    let marker = format!("sleep {seconds}");
    let body = template(
        "app",
        json!([shell(
            "daemon",
            &[
                // Detached twice: its own session, and its parent gone.
                &format!("( setsid {marker} >/dev/null 2>&1 & )"),
                // It runs while the step does.
                &format!("sleep 0.2; ps | grep -v grep | grep -q '{marker}'"),
            ]
        )]),
    );
    let s = build(&e.p, "t-daemon", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    // `wait` returned once the build's task ended and its staging went.
    assert_eq!(host_processes_with(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn without_network_a_step_cannot_reach_a_host_loopback_service() {
    let e = env().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The service answers each connection by closing it, and counts them.
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let connected = || hits.swap(0, std::sync::atomic::Ordering::SeqCst) > 0;
    // busybox's nc (its wget crashes on this host's static build).
    let probe = format!("echo probe | nc -w 2 127.0.0.1 {port} 2>/dev/null || true");
    // With the network on, the probe reaches the service: it is a real probe.
    let body = template("app", json!([shell("probe", &[&probe])]));
    let s = build(&e.p, "t-online", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert!(connected(), "the probe did not reach 127.0.0.1:{port}");
    // With `kiln.network: false` the same probe reaches nothing.
    let mut body = template("app", json!([shell("probe", &[&probe])]));
    set(&mut body, "/tags/kiln.network", json!("false"));
    let s = build(&e.p, "t-offline", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert!(
        !connected(),
        "a step without network reached 127.0.0.1:{port}"
    );
}
