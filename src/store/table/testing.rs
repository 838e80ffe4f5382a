//! The test fixture: a private Azurite (Microsoft's local Table Storage, or
//! its Blob Storage for the evidence store)
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
//! `x-ms-version` is part of what the tests check. [`Azurite::start_with_oauth`]
//! serves https with a certificate made for the occasion (Azurite takes
//! bearer tokens only over https), for the Entra ID path.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};

use super::auth::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
use super::TableClient;
use crate::config::Secret;
use crate::providers::azure::identity::TokenSource;

/// How long Azurite may take to answer on its port (node starts in about a second).
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Azurite {
    child: Child,
    port: u16,
    /// `azurite-table` or `azurite-blob`: what this one serves.
    service: Service,
    log: PathBuf,
    /// The self-signed certificate Azurite serves, when it serves https.
    tls_cert: Option<Vec<u8>>,
    _data: tempfile::TempDir,
}

impl Azurite {
    /// Starts `azurite-table` from PATH (or the program `KILN_AZURITE_TABLE`
    /// names, for an install outside PATH) and waits until its port accepts
    /// connections. Plain http, Shared Key.
    pub fn start() -> Azurite {
        Self::launch(&program(), false)
    }

    /// `azurite-blob` (or `KILN_AZURITE_BLOB`), plain http, Shared Key:
    /// Blob Storage for the evidence store's tests.
    pub fn start_blob() -> Azurite {
        let program = std::env::var("KILN_AZURITE_BLOB").unwrap_or_else(|_| "azurite-blob".into());
        Self::launch_service(&program, false, Service::Blob)
    }

    /// As [`start`](Self::start), with this program. Panics, saying what to
    /// do, when it does not run or does not come up.
    pub fn start_program(program: &str) -> Azurite {
        Self::launch(program, false)
    }

    /// Azurite over https (a certificate made here with `openssl`) with
    /// `--oauth basic`, so that it accepts bearer tokens: it refuses them
    /// over http. Basic OAuth checks a token's claims (audience, issuer,
    /// lifetime), not its signature; see [`unsigned_token`].
    pub fn start_with_oauth() -> Azurite {
        Self::launch(&program(), true)
    }

    fn launch(program: &str, oauth: bool) -> Azurite {
        Self::launch_service(program, oauth, Service::Table)
    }

    fn launch_service(program: &str, oauth: bool, service: Service) -> Azurite {
        // Another process may take the port between our probe and Azurite's
        // bind; Azurite then exits, and another free port is tried.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let data = tempfile::tempdir().expect("a temporary folder for Azurite's data");
            let port = free_port();
            // A file, not a pipe: nobody reads a pipe while the tests run, and a full one would stall Azurite.
            let log_path = data.path().join("azurite.log");
            let log = std::fs::File::create(&log_path).expect("Azurite's log file");
            let log_err = log.try_clone().expect("Azurite's log file, for stderr");
            let mut command = Command::new(program);
            command
                .args(["--silent", "--disableTelemetry"])
                .arg("--location")
                .arg(data.path())
                .args(match service {
                    Service::Table => ["--tableHost", "127.0.0.1", "--tablePort"],
                    Service::Blob => ["--blobHost", "127.0.0.1", "--blobPort"],
                })
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err));
            let tls_cert = oauth.then(|| {
                let (cert, key) = self_signed_certificate(data.path());
                command
                    .args(["--oauth", "basic", "--cert"])
                    .arg(&cert)
                    .arg("--key")
                    .arg(&key);
                std::fs::read(&cert).expect("the certificate just made")
            });
            let child = match command.spawn() {
                Ok(c) => c,
                Err(e) => panic!(
                    "cannot run {program} ({e}): Azurite is needed for the Table Storage tests; \
                     install it with scripts/setup-debian.sh (npm install -g azurite@3)"
                ),
            };
            let mut azurite = Azurite {
                child,
                port,
                service,
                log: log_path,
                tls_cert,
                _data: data,
            };
            match azurite.wait_until_listening() {
                Ok(()) => return azurite,
                Err(e) => last_failure = e,
            }
        }
        panic!("Azurite did not start: {last_failure}")
    }

    /// Ready when this child says it listens and the port answers. The
    /// port alone is not enough: when two tests draw the same free port, the
    /// loser's port answers too, from the winner's Azurite, until the loser
    /// exits with EADDRINUSE.
    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // "Azurite Table service successfully started on 127.0.0.1:P",
        // "Azurite Blob service successfully listens on http://127.0.0.1:P".
        let started = match self.service {
            Service::Table => format!("successfully started on 127.0.0.1:{}", self.port),
            Service::Blob => format!("successfully listens on http://127.0.0.1:{}", self.port),
        };
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(&started)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("azurite-table exited ({status}): {}", log.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "azurite-table did not start on 127.0.0.1:{} within {}s: {}",
                    self.port,
                    START_DEADLINE.as_secs(),
                    log.trim()
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
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/{DEV_ACCOUNT}", self.port)
    }

    /// A connection string for this instance, in the form a deployment would have.
    pub fn connection_string(&self) -> Secret {
        let endpoint = match self.service {
            Service::Table => "TableEndpoint",
            Service::Blob => "BlobEndpoint",
        };
        Secret::new(format!(
            "AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};{endpoint}={}",
            self.endpoint()
        ))
    }

    /// An HTTP client that trusts this instance's certificate when it has one.
    pub fn http_client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.tls_cert {
            let cert = reqwest::Certificate::from_pem(pem).expect("a PEM certificate");
            builder = builder.add_root_certificate(cert);
        }
        builder.build().expect("an HTTP client")
    }

    /// A client on this instance, with Shared Key.
    pub fn client(&self) -> TableClient {
        TableClient::from_connection_string(self.http_client(), &self.connection_string())
            .expect("Azurite's connection string is valid")
    }

    /// A client on this instance with bearer tokens from `tokens` (needs [`start_with_oauth`](Self::start_with_oauth)).
    pub fn bearer_client(&self, tokens: Arc<dyn TokenSource>) -> TableClient {
        TableClient::with_token(self.http_client(), &self.endpoint(), tokens)
            .expect("Azurite's endpoint is valid")
    }
}

/// A JWT with the claims Azurite's basic OAuth checks (audience
/// `https://storage.azure.com`, an Entra issuer, `nbf`/`iat`/`exp` around
/// `now`, expired when `valid_for` is negative) and a signature nobody checks.
pub fn unsigned_token(now: DateTime<Utc>, valid_for: chrono::Duration) -> String {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let (start, end) = if valid_for < chrono::Duration::zero() {
        (now + valid_for * 2, now + valid_for)
    } else {
        (now - chrono::Duration::minutes(1), now + valid_for)
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(serde_json::json!({"alg": "HS256", "typ": "JWT"})),
        b64(serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
            "iat": start.timestamp(),
            "nbf": start.timestamp(),
            "exp": end.timestamp(),
        }))
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Table,
    Blob,
}

fn program() -> String {
    std::env::var("KILN_AZURITE_TABLE").unwrap_or_else(|_| "azurite-table".into())
}

/// `cert.pem` and `key.pem` for 127.0.0.1 in `dir`, made with the openssl CLI.
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // An end-entity certificate: rustls refuses a CA certificate as a server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}) to make Azurite's https certificate"));
    assert!(
        out.status.success(),
        "openssl could not make a certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
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
