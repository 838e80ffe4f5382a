//! kiln's client for Azure Blob Storage, on reqwest: the four operations
//! the evidence store needs (create a container, put a block blob, get a
//! blob, list blobs by prefix), nothing more.
//!
//! Like the Table client next door it is kiln's own adapter: the official
//! `azure_storage_blob` crate authorizes with Entra ID tokens only, so it
//! cannot talk to Azurite's Shared Key account, which is how every test
//! here and every `kiln local` user reaches Blob Storage. Each request has
//! a timeout and is retried under the Table client's named
//! [`RetryPolicy`] (the same statuses, backoff and `Retry-After` bound).
//!
//! Shared Key for the Blob service signs the twelve standard header lines,
//! the `x-ms-*` headers (lowercase, sorted, `name:value`) and the resource
//! (`/{account}{path}` then each query parameter as `\nname:value`,
//! lowercase names, sorted); a `Content-Length` of 0 is signed as empty.
//! On a path-style endpoint (Azurite) the path starts with the account, so
//! the account appears twice, as for tables.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use reqwest::{Method, StatusCode, Url};

use crate::config::Secret;
use crate::store::table::auth::{
    ConnectionStringError, Credential, Fields, SharedKey, DEV_ACCOUNT, DEV_ACCOUNT_KEY,
};
use crate::store::table::{RetryPolicy, STORAGE_SCOPE};

/// The REST version: one Azure and Azurite 3.35 both accept.
pub const API_VERSION: &str = "2021-12-02";
/// Where `UseDevelopmentStorage=true` points: Azurite's default blob port.
pub const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";
/// Each attempt, connect to last body byte: evidence files are at most a
/// few megabytes.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One container of one account.
#[derive(Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    /// `https://{account}.blob.core.windows.net` or path-style
    /// `http://127.0.0.1:10000/{account}`, no trailing slash.
    endpoint: String,
    container: String,
    credential: Credential,
    retry: RetryPolicy,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient")
            .field("endpoint", &self.endpoint)
            .field("container", &self.container)
            .field("credential", &self.credential)
            .finish()
    }
}

/// A page of a listing: blob names, and the `BlobPrefix`es a delimiter folded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub blobs: Vec<String>,
    pub prefixes: Vec<String>,
}

/// The blob endpoint and key of a storage connection string: `BlobEndpoint`,
/// or `{DefaultEndpointsProtocol}://{AccountName}.blob.{EndpointSuffix}`;
/// `UseDevelopmentStorage=true` is Azurite's account on its default port.
pub fn parse_connection_string(text: &Secret) -> anyhow::Result<(String, SharedKey)> {
    let fields = Fields::parse(text.expose())?;
    let get = |name: &str| fields.get(name);
    if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        let key = SharedKey::new(DEV_ACCOUNT, &Secret::new(DEV_ACCOUNT_KEY))?;
        return Ok((DEV_BLOB_ENDPOINT.to_string(), key));
    }
    let account = get("accountname").ok_or(ConnectionStringError::Missing("AccountName"))?;
    let key = get("accountkey").ok_or(ConnectionStringError::Missing("AccountKey"))?;
    let endpoint = match get("blobendpoint") {
        Some(e) if e.starts_with("https://") || e.starts_with("http://") => {
            e.trim_end_matches('/').to_string()
        }
        Some(_) => bail!("storage connection string: BlobEndpoint must be an http(s) URL"),
        None => format!(
            "{}://{account}.blob.{}",
            get("defaultendpointsprotocol").unwrap_or("https"),
            get("endpointsuffix").unwrap_or("core.windows.net")
        ),
    };
    Ok((endpoint, SharedKey::new(account, &Secret::new(key))?))
}

/// The standard headers kiln sends that Shared Key signs.
struct Signed<'a> {
    method: &'a Method,
    content_length: usize,
    content_type: &'a str,
    /// `*` for a create-only put, else empty.
    if_none_match: &'a str,
}

/// How a PUT of a blob treats one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutKind {
    /// Not a blob put (container create, reads, lists).
    None,
    Replace,
    /// `If-None-Match: *`: only if no blob has the name yet.
    CreateOnly,
}

/// A response: its status, `x-ms-error-code` and body.
struct Answer {
    status: StatusCode,
    code: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn failure(&self, op: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{op}: HTTP {} {}: {}",
            self.status,
            self.code.as_deref().unwrap_or(""),
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// The Blob service's string to sign for Shared Key.
fn string_to_sign(
    h: &Signed<'_>,
    ms_headers: &[(&str, String)],
    account: &str,
    url: &Url,
) -> String {
    let length = if h.content_length == 0 {
        String::new()
    } else {
        h.content_length.to_string()
    };
    // Content-Encoding, -Language, -Length, -MD5, -Type, Date,
    // If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range.
    let mut s = format!(
        "{}\n\n\n{length}\n\n{}\n\n\n\n{}\n\n\n",
        h.method.as_str(),
        h.content_type,
        h.if_none_match
    );
    let mut headers: Vec<(String, &str)> = ms_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    headers.sort();
    for (k, v) in headers {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{account}{}", url.path()));
    let mut params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    params.sort();
    for (k, v) in params {
        s.push_str(&format!("\n{k}:{v}"));
    }
    s
}

/// One `EnumerationResults` page of List Blobs (other elements are skipped).
#[derive(Debug, serde::Deserialize)]
struct EnumerationResults {
    #[serde(rename = "Blobs", default)]
    blobs: Blobs,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Blobs {
    #[serde(rename = "$value", default)]
    items: Vec<Entry>,
}

/// `<Blob><Name>…</Name><Properties>…</Properties></Blob>` or
/// `<BlobPrefix><Name>…</Name></BlobPrefix>`.
#[derive(Debug, serde::Deserialize)]
enum Entry {
    Blob {
        #[serde(rename = "Name")]
        name: String,
    },
    BlobPrefix {
        #[serde(rename = "Name")]
        name: String,
    },
}

/// Blob names and prefixes of one page, and its `NextMarker`.
fn parse_listing(xml: &str) -> anyhow::Result<(Listing, Option<String>)> {
    let page: EnumerationResults =
        quick_xml::de::from_str(xml).context("List Blobs: not an EnumerationResults document")?;
    let mut out = Listing::default();
    for entry in page.blobs.items {
        match entry {
            Entry::Blob { name } => out.blobs.push(name),
            Entry::BlobPrefix { name } => out.prefixes.push(name),
        }
    }
    Ok((out, page.next_marker.filter(|m| !m.is_empty())))
}

impl BlobClient {
    pub fn new(
        endpoint: &str,
        container: &str,
        credential: Credential,
        http: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let valid = (3..=63).contains(&container.len())
            && container
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !container.starts_with('-')
            && !container.contains("--");
        if !valid {
            bail!("`{container}` is not a blob container name (3-63 of a-z 0-9 -, no leading or double -)");
        }
        Ok(Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            container: container.to_string(),
            credential,
            retry: RetryPolicy::standard(),
        })
    }

    /// Under the retry policy: 408, 429 and 5xx and connection errors are
    /// sent again; any other status comes back.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<(&str, &[u8])>,
        put: PutKind,
        op: &str,
    ) -> anyhow::Result<Answer> {
        let mut attempt = 1u32;
        loop {
            let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            let mut ms: Vec<(&str, String)> = vec![
                ("x-ms-date", date),
                ("x-ms-version", API_VERSION.to_string()),
            ];
            let if_none_match = match put {
                PutKind::None => "",
                PutKind::Replace => {
                    ms.push(("x-ms-blob-type", "BlockBlob".to_string()));
                    ""
                }
                PutKind::CreateOnly => {
                    ms.push(("x-ms-blob-type", "BlockBlob".to_string()));
                    "*"
                }
            };
            let (content_type, bytes) = body.unwrap_or(("", &[]));
            let authorization = match &self.credential {
                Credential::SharedKey(key) => {
                    let to_sign = string_to_sign(
                        &Signed {
                            method: &method,
                            content_length: bytes.len(),
                            content_type,
                            if_none_match,
                        },
                        &ms,
                        key.account(),
                        &url,
                    );
                    format!("SharedKey {}:{}", key.account(), key.signature(&to_sign))
                }
                Credential::Bearer(tokens) => {
                    let token = tokens
                        .token(STORAGE_SCOPE)
                        .await
                        .with_context(|| format!("{op}: cannot get a token for {STORAGE_SCOPE}"))?;
                    format!("Bearer {}", token.expose())
                }
            };
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .timeout(TIMEOUT)
                .header("Authorization", authorization);
            for (k, v) in &ms {
                req = req.header(*k, v);
            }
            if !if_none_match.is_empty() {
                req = req.header("If-None-Match", if_none_match);
            }
            if body.is_some() {
                req = req
                    .header("Content-Type", content_type)
                    .header("Content-Length", bytes.len())
                    .body(bytes.to_vec());
            } else if method == Method::PUT {
                req = req.header("Content-Length", 0);
            }
            let (retry, failure) = match req.send().await {
                Ok(r) => {
                    let status = r.status();
                    let retry_after = crate::store::table::http::retry_after(r.headers());
                    let code = r
                        .headers()
                        .get("x-ms-error-code")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = r.bytes().await.map(|b| b.to_vec());
                    match body {
                        Ok(body) if !RetryPolicy::retryable_status(status.as_u16()) => {
                            return Ok(Answer { status, code, body })
                        }
                        Ok(b) => (
                            retry_after,
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&b)),
                        ),
                        Err(e) => (None, e.without_url().to_string()),
                    }
                }
                Err(e) => (None, e.without_url().to_string()),
            };
            match self.retry.wait(attempt, retry) {
                Some(wait) => {
                    tracing::warn!(op, attempt, error = %failure, "blob storage call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => bail!("{op}: {failure} (after {attempt} attempts)"),
            }
        }
    }

    fn url(&self, blob: Option<&str>, query: &[(&str, &str)]) -> anyhow::Result<Url> {
        let mut url = Url::parse(&format!("{}/{}", self.endpoint, self.container))
            .with_context(|| format!("`{}` is not a blob endpoint URL", self.endpoint))?;
        if let Some(name) = blob {
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("`{}` cannot take a path", self.endpoint))?
                .extend(name.split('/'));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Creates the container; one that exists already is fine.
    pub async fn ensure_container(&self) -> anyhow::Result<()> {
        let op = format!("create container {}", self.container);
        let url = self.url(None, &[("restype", "container")])?;
        let a = self
            .send(Method::PUT, url, None, PutKind::None, &op)
            .await?;
        match a.status {
            StatusCode::CREATED | StatusCode::CONFLICT => Ok(()),
            _ => Err(a.failure(&op)),
        }
    }

    /// Writes a block blob in one call: readers see the old blob or the
    /// new one, never part of either.
    pub async fn put(&self, name: &str, content_type: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.put_blob(name, content_type, bytes, PutKind::Replace)
            .await
            .map(|_| ())
    }

    /// Writes a block blob only if none has the name yet; true when this
    /// call wrote it (another writer's, or a retried first attempt's, is kept).
    pub async fn create(
        &self,
        name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<bool> {
        self.put_blob(name, content_type, bytes, PutKind::CreateOnly)
            .await
    }

    async fn put_blob(
        &self,
        name: &str,
        content_type: &str,
        bytes: &[u8],
        kind: PutKind,
    ) -> anyhow::Result<bool> {
        let op = format!("put blob {}/{name}", self.container);
        let url = self.url(Some(name), &[])?;
        let a = self
            .send(Method::PUT, url, Some((content_type, bytes)), kind, &op)
            .await?;
        let exists = matches!(
            a.code.as_deref(),
            Some("BlobAlreadyExists" | "ConditionNotMet")
        );
        match (a.status, kind) {
            (StatusCode::CREATED, PutKind::Replace | PutKind::CreateOnly) => Ok(true),
            (StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED, PutKind::CreateOnly)
                if exists =>
            {
                Ok(false)
            }
            (_, PutKind::None | PutKind::Replace | PutKind::CreateOnly) => Err(a.failure(&op)),
        }
    }

    /// A blob's bytes; `None` when no blob has the name. A missing
    /// container is an error: the store creates it before first use, so
    /// its absence means a wrong container name or account.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let op = format!("get blob {}/{name}", self.container);
        let url = self.url(Some(name), &[])?;
        let a = self
            .send(Method::GET, url, None, PutKind::None, &op)
            .await?;
        match (a.status, a.code.as_deref()) {
            (StatusCode::OK, _) => Ok(Some(a.body)),
            (StatusCode::NOT_FOUND, Some("BlobNotFound")) => Ok(None),
            _ => Err(a.failure(&op)),
        }
    }

    /// Every blob under `prefix`, all pages; with a `delimiter`, what lies
    /// deeper is folded into prefixes.
    pub async fn list(&self, prefix: &str, delimiter: Option<&str>) -> anyhow::Result<Listing> {
        let op = format!("list blobs {}/{prefix}", self.container);
        let mut out = Listing::default();
        let mut marker: Option<String> = None;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let mut query = vec![
                ("restype", "container"),
                ("comp", "list"),
                ("prefix", prefix),
            ];
            if let Some(d) = delimiter {
                query.push(("delimiter", d));
            }
            if let Some(m) = &marker {
                query.push(("marker", m.as_str()));
            }
            let url = self.url(None, &query)?;
            let a = self
                .send(Method::GET, url, None, PutKind::None, &op)
                .await?;
            if a.status != StatusCode::OK {
                return Err(a.failure(&op));
            }
            let (page, next) =
                parse_listing(&String::from_utf8_lossy(&a.body)).with_context(|| op.clone())?;
            out.blobs.extend(page.blobs);
            out.prefixes.extend(page.prefixes);
            match next {
                // A marker that comes back would page forever.
                Some(n) if !seen.insert(n.clone()) => {
                    bail!("{op}: the service returned the marker {n} twice")
                }
                Some(n) => marker = Some(n),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_string_to_sign_has_twelve_lines_then_headers_then_the_resource() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/kiln-evidence?restype=container&comp=list&prefix=a/b",
        )
        .unwrap();
        let s = string_to_sign(
            &Signed {
                method: &Method::GET,
                content_length: 0,
                content_type: "",
                if_none_match: "",
            },
            &[
                ("x-ms-version", API_VERSION.to_string()),
                ("x-ms-date", "Tue, 01 Dec 2026 10:00:00 GMT".to_string()),
            ],
            DEV_ACCOUNT,
            &url,
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-date:Tue, 01 Dec 2026 10:00:00 GMT\n\
             x-ms-version:2021-12-02\n\
             /devstoreaccount1/devstoreaccount1/kiln-evidence\n\
             comp:list\nprefix:a/b\nrestype:container"
        );
        let put = string_to_sign(
            &Signed {
                method: &Method::PUT,
                content_length: 12,
                content_type: "application/json",
                if_none_match: "*",
            },
            &[("x-ms-blob-type", "BlockBlob".to_string())],
            "acct",
            &Url::parse("https://acct.blob.core.windows.net/c/x/y.json").unwrap(),
        );
        assert!(
            // If-None-Match is the ninth standard line.
            put.starts_with("PUT\n\n\n12\n\napplication/json\n\n\n\n*\n\n\n"),
            "{put:?}"
        );
        assert!(
            put.ends_with("x-ms-blob-type:BlockBlob\n/acct/c/x/y.json"),
            "{put:?}"
        );
    }

    #[test]
    fn a_listing_page_gives_names_prefixes_and_the_next_marker() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix>s/rg/</Prefix><Delimiter>/</Delimiter>
  <Blobs>
    <Blob><Name>s/rg/g/i/definition.id</Name><Properties><Content-Length>9</Content-Length></Properties></Blob>
    <BlobPrefix><Name>s/rg/g/i/1.0.0/</Name></BlobPrefix>
    <BlobPrefix><Name>s/rg/g/i/a&amp;b/</Name></BlobPrefix>
  </Blobs>
  <NextMarker>2!72!MDAwMDE0</NextMarker>
</EnumerationResults>"#;
        let (page, next) = parse_listing(xml).unwrap();
        assert_eq!(page.blobs, vec!["s/rg/g/i/definition.id"]);
        assert_eq!(page.prefixes, vec!["s/rg/g/i/1.0.0/", "s/rg/g/i/a&b/"]);
        assert_eq!(next.as_deref(), Some("2!72!MDAwMDE0"));
        let (empty, next) =
            parse_listing("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>")
                .unwrap();
        assert!(parse_listing("not xml").is_err());
        assert_eq!(empty, Listing::default());
        assert_eq!(next, None);
    }

    #[test]
    fn connection_strings_name_the_blob_endpoint() {
        let (e, k) = parse_connection_string(&Secret::new("UseDevelopmentStorage=true")).unwrap();
        assert_eq!((e.as_str(), k.account()), (DEV_BLOB_ENDPOINT, DEV_ACCOUNT));
        let (e, _) = parse_connection_string(&Secret::new(format!(
            "DefaultEndpointsProtocol=https;AccountName=stkiln;AccountKey={DEV_ACCOUNT_KEY};EndpointSuffix=core.windows.net"
        )))
        .unwrap();
        assert_eq!(e, "https://stkiln.blob.core.windows.net");
        let (e, _) = parse_connection_string(&Secret::new(format!(
            "AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:41000/devstoreaccount1/;TableEndpoint=http://127.0.0.1:41002/devstoreaccount1"
        )))
        .unwrap();
        assert_eq!(e, "http://127.0.0.1:41000/devstoreaccount1");
        let err = parse_connection_string(&Secret::new("AccountName=a")).unwrap_err();
        assert!(err.to_string().contains("AccountKey is missing"), "{err}");
    }

    #[test]
    fn container_names_follow_the_service_rules() {
        let c = |n: &str| {
            BlobClient::new(
                DEV_BLOB_ENDPOINT,
                n,
                Credential::SharedKey(
                    SharedKey::new(DEV_ACCOUNT, &Secret::new(DEV_ACCOUNT_KEY)).unwrap(),
                ),
                reqwest::Client::new(),
            )
        };
        assert!(c("kiln-evidence").is_ok());
        for bad in ["ab", "Kiln", "-kiln", "kiln--evidence", "kiln_evidence"] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }
}
