//! A real browser for the dashboard tests: Debian's headless Chromium,
//! driven through chromedriver (WebDriver) with fantoccini.
//!
//! Missing packages fail the test with the package named: CI installs them
//! (scripts/setup-debian.sh), so a skip would hide a broken set-up.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long one wait for the page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// chromedriver and the browser session it started. Dropping it ends
/// chromedriver and every Chromium process (they share a process group).
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Runs `tool --version`; panics naming the Debian package when it cannot.
fn require(tool: &str, package: &str) -> String {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "`{tool} --version` failed ({}): reinstall the Debian package `{package}` (scripts/setup-debian.sh installs it)\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "`{tool}` is missing ({e}): install the Debian package `{package}` (scripts/setup-debian.sh installs it)"
        ),
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless
    /// Chromium session with a fresh profile and the given window size.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = require("chromium", "chromium");
        let driver_version = require("chromedriver", "chromium-driver");
        eprintln!("browser: {chromium}; {driver_version}");
        let port = free_loopback_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group, so that Drop can end the browser too.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if ready.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url}/status within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("chromedriver on {url} did not open a Chromium session: {e}")
            });
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Waits (up to [`WAIT`]) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let status = self.text_of("#status").await;
                let fresh = self.text_of("#freshness").await;
                panic!("no `{css}` on the page within {WAIT:?} ({e}); status: {status:?}; freshness: {fresh:?}")
            }
        }
    }

    /// Clicks the element matching `css`, finding it again when the live
    /// page redrew it between the find and the click (a stale element), up
    /// to [`WAIT`].
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = self.wait_for(css).await;
            match e.click().await {
                Ok(()) => return,
                // Redrawn or covered for a moment: look again.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot click `{css}` within {WAIT:?}: {err}"),
            }
        }
    }

    async fn text_of(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Saves a PNG of the window to `target/test-artifacts/dashboard/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = crate::harness::repo().join("target/test-artifacts/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Ends the session (Chromium quits); Drop then ends chromedriver.
    pub async fn close(self) {
        self.client.clone().close().await.unwrap();
    }
}

fn which(tool: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("`{tool}` is not on PATH"))
        .display()
        .to_string()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started.
        let pgid = self.driver.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
