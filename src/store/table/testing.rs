//! The test fixture: a private Azurite (Microsoft's local Table Storage)
//! per test, on a free port with its data in a temporary folder, stopped
//! when dropped.
//!
//! It is plain library code rather than `#[cfg(test)]` so that integration
//! tests under `tests/` can use it too (they link the library built without
//! `cfg(test)`); it is small, starts nothing unless called, and pulls in
//! nothing the library does not already depend on.
//!
//! Azurite is an npm package (`azurite-table`, installed by
//! `scripts/setup-debian.sh`). A test that needs it and does not find it
//! fails, naming the command that installs it: CI installs it, so a
//! silently skipped test would hide a broken set-up.
//!
//! Azurite runs without `--skipApiVersionCheck`: that it accepts kiln's
//! `x-ms-version` is part of what the tests check.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::auth::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
use super::TableClient;
use crate::config::Secret;

/// How long Azurite may take to answer on its port (node starts in about a second).
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Azurite {
    child: Child,
    port: u16,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Azurite {
    /// Starts `azurite-table` from PATH (or the program `KILN_AZURITE_TABLE`
    /// names, for an install outside PATH) and waits until its port accepts
    /// connections.
    pub fn start() -> Azurite {
        let program =
            std::env::var("KILN_AZURITE_TABLE").unwrap_or_else(|_| "azurite-table".into());
        Self::start_program(&program)
    }

    /// As [`start`](Self::start), with this program. Panics, saying what to
    /// do, when it does not run or does not come up.
    pub fn start_program(program: &str) -> Azurite {
        // Another process may take the port between our probe and Azurite's
        // bind; Azurite then exits, and another free port is tried.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let data = tempfile::tempdir().expect("a temporary folder for Azurite's data");
            let port = free_port();
            // A file, not a pipe: nobody reads a pipe while the tests run, and a full one would stall Azurite.
            let log_path = data.path().join("azurite-stderr.log");
            let log = std::fs::File::create(&log_path).expect("Azurite's log file");
            let child = Command::new(program)
                .args(["--silent", "--disableTelemetry"])
                .arg("--location")
                .arg(data.path())
                .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => panic!(
                    "cannot run {program} ({e}): Azurite is needed for the Table Storage tests; \
                     install it with scripts/setup-debian.sh (npm install -g azurite@3)"
                ),
            };
            let mut azurite = Azurite {
                child,
                port,
                log: log_path,
                _data: data,
            };
            match azurite.wait_until_listening() {
                Ok(()) => return azurite,
                Err(e) => last_failure = e,
            }
        }
        panic!("Azurite did not start: {last_failure}")
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "azurite-table exited ({status}): {}",
                    stderr.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "azurite-table did not listen on 127.0.0.1:{} within {}s",
                    self.port,
                    START_DEADLINE.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path-style endpoint of Azurite's development account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.port)
    }

    /// A connection string for this instance, in the form a deployment would have.
    pub fn connection_string(&self) -> Secret {
        Secret::new(format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};TableEndpoint={}",
            self.endpoint()
        ))
    }

    /// A client on this instance, with Shared Key.
    pub fn client(&self) -> TableClient {
        TableClient::from_connection_string(reqwest::Client::new(), &self.connection_string())
            .expect("Azurite's connection string is valid")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
