//! Refreshing the local OSV feed from a configurable URL (`http(s)://` or
//! `file://`): OSV's `<ecosystem>/all.zip`, or a mirror of it.
//!
//! - Each request has a timeout; `5xx`, `429`, connection errors and
//!   timeouts are retried under [`RetryPolicy::Idempotent`] (a GET) with
//!   exponential backoff and jitter, honouring a short `Retry-After`.
//! - Conditional GET: the `ETag` and `Last-Modified` of the last download
//!   are remembered beside the feed (`<feed>.http.json`) and sent back, so an
//!   unchanged feed costs a `304`.
//! - Atomic replace: the body goes to a temporary file in the feed's folder,
//!   is read back and parsed as a [`Feed`], and only then renamed over the
//!   feed. A truncated or wrong download never replaces a good feed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::domain::evidence::osv::Feed;
use crate::domain::redact;

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// A new feed is in place with this many advisories.
    Refreshed { advisories: usize },
    /// The server (or the file) has nothing newer; the feed is untouched.
    NotModified,
    /// Nothing was replaced; why, without credentials from the URL.
    Failed(String),
}

/// How a request may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// A GET: 429, 5xx, connection errors and timeouts are retried up to
    /// `max_attempts` in all.
    Idempotent,
    /// One attempt (tests, or a caller with its own schedule).
    NoRetry,
}

#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Each request, connect to last body byte: `all.zip` for Debian is tens of MB.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Attempts in all under [`RetryPolicy::Idempotent`].
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this ends the refresh instead of waiting:
    /// the timer tries again on its next tick.
    pub retry_after_max: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retry: RetryPolicy::Idempotent,
            max_attempts: 4,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
        }
    }
}

/// The validators of the last download, kept beside the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Validators {
    /// Validators belong to one URL; another URL starts afresh.
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

pub struct OsvFeedSource {
    http: reqwest::Client,
    options: FeedOptions,
}

/// `<feed>.http.json` beside the feed file.
fn validators_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".http.json");
    target.with_file_name(name)
}

/// What one attempt gave.
enum Answer {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    NotModified,
}

impl OsvFeedSource {
    pub fn new(options: FeedOptions) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30).min(options.timeout))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, options })
    }

    /// Brings the feed at `target` (a file, `.zip` or `.json`) up to date with `url`.
    pub async fn refresh(&self, url: &str, target: &Path) -> Refresh {
        let shown = redact::uri(url);
        let answer = if let Some(path) = url.strip_prefix("file://") {
            self.read_local(Path::new(path), target)
        } else if url.starts_with("https://") || url.starts_with("http://") {
            self.download(url, &shown, target).await
        } else {
            Err(format!(
                "feed URL {shown}: expected an http://, https:// or file:// URL"
            ))
        };
        let (bytes, etag, last_modified) = match answer {
            Err(why) => return Refresh::Failed(why),
            Ok(Answer::NotModified) => return Refresh::NotModified,
            Ok(Answer::Body {
                bytes,
                etag,
                last_modified,
            }) => (bytes, etag, last_modified),
        };
        let target_owned = target.to_path_buf();
        // Parsing a large zip is CPU work: off the async threads.
        let replaced =
            tokio::task::spawn_blocking(move || replace_atomically(&target_owned, bytes)).await;
        let advisories = match replaced {
            Ok(Ok(n)) => n,
            Ok(Err(why)) => return Refresh::Failed(format!("feed from {shown}: {why}")),
            Err(e) => return Refresh::Failed(format!("feed from {shown}: {e}")),
        };
        let validators = Validators {
            url: url_digest(url),
            etag,
            last_modified,
        };
        // Best effort: without them the next refresh downloads once more.
        if let Err(e) = write_validators(target, &validators) {
            tracing::warn!(feed = %target.display(), error = %e, "osv feed validators not saved");
        }
        Refresh::Refreshed { advisories }
    }

    /// A local file: "not modified" when it holds what the feed holds.
    fn read_local(&self, source: &Path, target: &Path) -> Result<Answer, String> {
        let bytes = std::fs::read(source)
            .map_err(|e| format!("feed file {}: cannot read: {e}", source.display()))?;
        match std::fs::read(target) {
            Ok(current) if current == bytes => Ok(Answer::NotModified),
            Ok(_) | Err(_) => Ok(Answer::Body {
                bytes,
                etag: None,
                last_modified: None,
            }),
        }
    }

    async fn download(&self, url: &str, shown: &str, target: &Path) -> Result<Answer, String> {
        // Validators only for the same URL, and only while the feed they describe is there.
        let validators = read_validators(target)
            .filter(|v| v.url == url_digest(url) && target.is_file())
            .unwrap_or_default();
        let mut attempt = 1u32;
        loop {
            let mut request = self.http.get(url).timeout(self.options.timeout);
            if let Some(etag) = &validators.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &validators.last_modified {
                request = request.header(IF_MODIFIED_SINCE, lm);
            }
            let last =
                self.options.retry == RetryPolicy::NoRetry || attempt >= self.options.max_attempts;
            let wait = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::NOT_MODIFIED {
                        return Ok(Answer::NotModified);
                    }
                    if status.is_success() {
                        let header = |name| {
                            response
                                .headers()
                                .get(name)
                                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
                        match response.bytes().await {
                            Ok(body) => {
                                return Ok(Answer::Body {
                                    bytes: body.to_vec(),
                                    etag,
                                    last_modified,
                                })
                            }
                            // A body cut off by the timeout or the connection: transient.
                            Err(e) if !last => {
                                tracing::warn!(url = %shown, attempt, error = %e.without_url(), "osv feed body broke off; retrying");
                                self.backoff(attempt)
                            }
                            Err(e) => {
                                return Err(format!(
                                    "feed from {shown}: body broke off: {}",
                                    e.without_url()
                                ))
                            }
                        }
                    } else {
                        let transient = status.is_server_error() || status.as_u16() == 429;
                        if last || !transient {
                            return Err(format!("feed from {shown}: HTTP {status}"));
                        }
                        let retry_after = response
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        match retry_after {
                            Some(d) if d > self.options.retry_after_max => {
                                return Err(format!(
                                    "feed from {shown}: HTTP {status}, asked to wait {}s",
                                    d.as_secs()
                                ))
                            }
                            Some(d) => d,
                            None => self.backoff(attempt),
                        }
                    }
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout();
                    if last || !transient {
                        return Err(format!("feed from {shown}: {}", e.without_url()));
                    }
                    self.backoff(attempt)
                }
            };
            tracing::warn!(url = %shown, attempt, wait_ms = wait.as_millis() as u64, "osv feed download will be retried");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// `backoff_base * 2^(attempt-1)`, capped, with jitter in its upper half.
    fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.options;
        let exp = o
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(o.backoff_max);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(ms / 2..=ms)
        })
    }
}

/// Writes `bytes` to a temporary file beside `target`, parses what was
/// written, and renames it over `target` only when it is a feed.
fn replace_atomically(target: &Path, bytes: Vec<u8>) -> Result<usize, String> {
    use std::io::Write;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) | None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".osv-feed.")
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
    drop(bytes);
    let written = std::fs::read(tmp.path())
        .map_err(|e| format!("cannot read back {}: {e}", tmp.path().display()))?;
    let name = target.display().to_string();
    // The temporary file is removed when `tmp` drops on this error.
    let feed = Feed::parse_file(&name, &written).map_err(|e| format!("not replaced: {e}"))?;
    // An empty feed parses, and would pass every held version at the next
    // re-check: a download with no advisory is taken for a broken one.
    if feed.is_empty() {
        return Err("not replaced: the download holds no advisory".into());
    }
    tmp.persist(target)
        .map_err(|e| format!("cannot rename over {}: {}", target.display(), e.error))?;
    Ok(feed.len())
}

/// What the validators file remembers of the URL: its sha256, so that a
/// SAS token in the URL is never written to disk.
fn url_digest(url: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(url.as_bytes()))
    )
}

fn read_validators(target: &Path) -> Option<Validators> {
    let text = std::fs::read(validators_path(target)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_validators(target: &Path, v: &Validators) -> std::io::Result<()> {
    let path = validators_path(target);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(tmp.as_file(), v)?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
