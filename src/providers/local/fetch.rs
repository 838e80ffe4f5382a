//! Fetching `scriptUri` / `sourceUri` to the build's work folder, with the
//! template's `sha256Checksum` verified before anything uses the bytes.

use std::path::Path;
use std::time::Duration;

use super::util::sha256_file;
use crate::domain::redact;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// Could not reach the server, or it answered 5xx/429: worth retrying.
    Network(String),
    /// The file is not there (or the server said 4xx): the template is wrong.
    Missing(String),
    Checksum {
        expected: String,
        actual: String,
    },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Network(m) | FetchError::Missing(m) => f.write_str(m),
            FetchError::Checksum { expected, actual } => {
                write!(f, "sha256 mismatch: expected {expected}, got {actual}")
            }
        }
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(600))
        .user_agent(concat!("kiln-local/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Copies or downloads `uri` to `dest`; returns the sha256 of what arrived.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    uri: &str,
    dest: &Path,
    expected_sha256: Option<&str>,
) -> Result<String, FetchError> {
    if uri.starts_with("https://") || uri.starts_with("http://") {
        // Messages name the URI without its SAS token or password, and
        // reqwest's errors are stripped of the URL they would quote.
        let shown = redact::uri(uri);
        let resp = client.get(uri).send().await.map_err(|e| {
            FetchError::Network(format!("cannot download {shown}: {}", e.without_url()))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let msg = format!("cannot download {shown}: HTTP {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                FetchError::Network(msg)
            } else {
                FetchError::Missing(msg)
            });
        }
        let bytes = resp.bytes().await.map_err(|e| {
            FetchError::Network(format!("cannot download {shown}: {}", e.without_url()))
        })?;
        std::fs::write(dest, &bytes)
            .map_err(|e| FetchError::Missing(format!("cannot write {}: {e}", dest.display())))?;
    } else {
        let local = uri.strip_prefix("file://").unwrap_or(uri);
        let md = std::fs::metadata(local)
            .map_err(|e| FetchError::Missing(format!("cannot read {local}: {e}")))?;
        if !md.is_file() {
            return Err(FetchError::Missing(format!("{local} is not a file")));
        }
        std::fs::copy(local, dest)
            .map_err(|e| FetchError::Missing(format!("cannot copy {local}: {e}")))?;
    }
    let d = dest.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || sha256_file(&d))
        .await
        .map_err(|e| FetchError::Missing(e.to_string()))?
        .map_err(|e| FetchError::Missing(format!("cannot hash {}: {e}", dest.display())))?;
    if let Some(expected) = expected_sha256.filter(|s| !s.is_empty()) {
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(FetchError::Checksum {
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
    }
    Ok(actual)
}
