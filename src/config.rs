//! Typed settings, read once at start from the environment (and, for
//! `kiln local`, from `local.settings.json`'s `Values`, which the Functions
//! tooling uses too). A missing or contradictory setting stops start-up with
//! one line naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::ports::{Clock, ScaledClock, SystemClock};

/// A secret: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Local,
    Azure,
}

/// Where build state lives (`KILN_STORE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// One SQLite file in the data folder: one machine.
    Sqlite,
    /// Azure Table Storage (or Azurite, or Cosmos DB for Table): many instances.
    Table {
        access: TableAccess,
        /// Prefix of the tables kiln creates (`KILN_TABLE_PREFIX`, default `kiln`).
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableAccess {
    /// `KILN_TABLE_CONNECTION`: a Storage connection string (Shared Key).
    ConnectionString(Secret),
    /// `KILN_TABLE_ENDPOINT`: the table endpoint, reached with Entra ID
    /// tokens (the app's managed identity in Azure).
    Endpoint(String),
}

/// Where evidence lives when not in the data folder: a Blob Storage
/// container every instance shares (`KILN_EVIDENCE_ENDPOINT` or
/// `KILN_EVIDENCE_CONNECTION`, and `KILN_EVIDENCE_CONTAINER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceBlobSettings {
    pub access: BlobAccess,
    /// `KILN_EVIDENCE_CONTAINER`, default `kiln-evidence`.
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAccess {
    /// A Storage connection string (Shared Key; `UseDevelopmentStorage=true` for Azurite).
    ConnectionString(Secret),
    /// The blob endpoint, reached with Entra ID tokens (the app's managed identity).
    Endpoint(String),
}

/// Who may call the HTTP API (every route but health and the events
/// webhook, which has its own key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAccess {
    /// `KILN_API_KEYS`: one of these keys, in `Authorization: Bearer` or
    /// `x-kiln-key`. Two at once let a key be rotated without downtime.
    Keys(Vec<Secret>),
    /// No keys set: open (`kiln local` on loopback).
    Open,
    /// `KILN_API_AUTH=off`: open on purpose (something in front checks callers).
    OpenByChoice,
}

/// Where the API listens, for the start-up check of [`Settings::check_api_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `kiln serve`, behind the Functions host.
    FunctionsHost,
    /// `kiln local` on `KILN_HTTP_BIND`.
    Local(std::net::IpAddr),
}

/// Shortest API key accepted: a key a person can guess is no key.
const MIN_API_KEY: usize = 16;

fn api_access(env: &Env) -> anyhow::Result<ApiAccess> {
    unresolved_reference(env, "KILN_API_KEYS")?;
    let keys: Vec<Secret> = get(env, "KILN_API_KEYS")
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect();
    if let Some(i) = keys.iter().position(|k| {
        k.expose().len() < MIN_API_KEY || !k.expose().bytes().all(|b| b.is_ascii_graphic())
    }) {
        // The key itself is not echoed, only which one.
        bail!("KILN_API_KEYS: key {} of {} is not a key: expected at least {MIN_API_KEY} visible ASCII characters per key, keys separated by commas", i + 1, keys.len());
    }
    match (get(env, "KILN_API_AUTH"), keys.is_empty()) {
        (None | Some("keys"), false) => Ok(ApiAccess::Keys(keys)),
        (None | Some("keys"), true) => Ok(ApiAccess::Open),
        (Some("off"), true) => Ok(ApiAccess::OpenByChoice),
        (Some("off"), false) => bail!(
            "KILN_API_AUTH=off and KILN_API_KEYS: set one, not both (off leaves the API open)"
        ),
        (Some(other), _) => {
            bail!("KILN_API_AUTH: expected `keys` (the default) or `off`, got `{other}`")
        }
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub provider: ProviderKind,
    /// Where the store, the queue and the local provider keep their files.
    pub data_dir: PathBuf,
    pub pipelines_dir: PathBuf,
    pub handlers_dir: PathBuf,
    /// Builds active at once across all pipelines; the rest wait queued.
    pub max_active_builds: u32,
    /// Key required on the events webhook (`x-kiln-key` header or `code` query).
    pub events_key: Option<Secret>,
    pub webhook: Option<Webhook>,
    /// JSON-lines file receiving every CloudEvent kiln emits.
    pub events_file: Option<PathBuf>,
    /// Port of the local host's HTTP API.
    pub http_port: u16,
    /// `KILN_HTTP_BIND`: the address `kiln local` listens on (loopback by default).
    pub http_bind: std::net::IpAddr,
    /// `KILN_HTTP_READ_TIMEOUT` (seconds): how long a client may take to
    /// send a request's body, and (`kiln local`) its headers.
    pub http_read_timeout: std::time::Duration,
    pub api_access: ApiAccess,
    /// The local provider's fault hooks (tests only), as JSON.
    pub local_faults: Option<String>,
    /// `KILN_CLOCK`: a scaled clock shared with the Azure simulator; `None`
    /// is the system clock.
    pub clock: Option<ScaledClock>,
    pub store: StoreSettings,
    /// `KILN_OSV_FEED`: the vulnerability feed (an OSV file, folder or zip).
    pub osv_feed: Option<PathBuf>,
    /// `KILN_OSV_FEED_URL`: where the `evidence_recheck` timer refreshes it from.
    pub osv_feed_url: Option<String>,
    /// Evidence in Blob Storage; `None` keeps it in the data folder.
    pub evidence_blobs: Option<EvidenceBlobSettings>,
}

pub type Env = BTreeMap<String, String>;

/// Process environment overlaid on `local.settings.json` values (environment wins).
pub fn gather_env(local_settings: Option<&Path>) -> anyhow::Result<Env> {
    let mut env = Env::new();
    if let Some(path) = local_settings.filter(|p| p.exists()) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read {}", path.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        if let Some(values) = doc.get("Values").and_then(|v| v.as_object()) {
            for (k, v) in values {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                env.insert(k.clone(), v);
            }
        }
    }
    env.extend(std::env::vars());
    Ok(env)
}

fn get<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.get(key)
        .map(String::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// App Service leaves a Key Vault reference it cannot resolve in the
/// setting as written: taken as the secret, it would be a value anyone who
/// can read the app's configuration knows.
fn unresolved_reference(env: &Env, key: &str) -> anyhow::Result<()> {
    match get(env, key) {
        Some(v) if v.trim_start().starts_with("@Microsoft.KeyVault(") => bail!(
            "{key}: the Key Vault reference did not resolve (does the app identity have Key Vault Secrets User on the vault?)"
        ),
        Some(_) | None => Ok(()),
    }
}

/// The function folders when neither `KILN_HANDLERS_DIR` nor the Functions
/// host's `FUNCTIONS_APP_ROOT_PATH` is set: `handlers/` in the repository
/// (`kiln local`), else the working directory itself, which is the app root
/// of a deployed package where the Functions host wants them (`kiln
/// package` puts them there).
fn default_handlers_dir(cwd: &Path) -> PathBuf {
    if cwd.join("handlers").is_dir() {
        PathBuf::from("handlers")
    } else {
        PathBuf::from(".")
    }
}

/// A Storage endpoint reached with Entra ID tokens: https, or plain http
/// to a loopback host only (Azurite), since the token would travel in the
/// clear; no query or fragment (a pasted SAS is not an endpoint).
fn storage_endpoint(key: &str, value: &str, example: &str) -> anyhow::Result<String> {
    let expected = || {
        format!("{key}: expected an https:// URL such as {example} (plain http only on loopback), got `{}`", crate::domain::redact::uri(value))
    };
    let url = reqwest::Url::parse(value).map_err(|_| anyhow::anyhow!(expected()))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !scheme_ok || host.is_empty() {
        bail!(expected());
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("{key}: an endpoint has no query or fragment (kiln authenticates with Entra ID, not a SAS), got `{}`", crate::domain::redact::uri(value));
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn evidence_blob_settings(env: &Env) -> anyhow::Result<Option<EvidenceBlobSettings>> {
    unresolved_reference(env, "KILN_EVIDENCE_CONNECTION")?;
    let access = match (get(env, "KILN_EVIDENCE_CONNECTION"), get(env, "KILN_EVIDENCE_ENDPOINT")) {
        (None, None) => {
            if get(env, "KILN_EVIDENCE_CONTAINER").is_some() {
                bail!("KILN_EVIDENCE_CONTAINER: set, but neither KILN_EVIDENCE_ENDPOINT nor KILN_EVIDENCE_CONNECTION says which storage account");
            }
            return Ok(None);
        }
        (Some(c), None) => BlobAccess::ConnectionString(Secret::new(c)),
        (None, Some(e)) => BlobAccess::Endpoint(storage_endpoint(
            "KILN_EVIDENCE_ENDPOINT",
            e,
            "https://ACCOUNT.blob.core.windows.net",
        )?),
        (Some(_), Some(_)) => bail!("KILN_EVIDENCE_CONNECTION and KILN_EVIDENCE_ENDPOINT: set one, not both (a connection string uses its key, an endpoint uses Entra ID)"),
    };
    let container = get(env, "KILN_EVIDENCE_CONTAINER").unwrap_or("kiln-evidence");
    let valid = (3..=63).contains(&container.len())
        && container
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if !valid {
        bail!("KILN_EVIDENCE_CONTAINER: expected a container name (3-63 of a-z 0-9 -, no leading, trailing or double -), got `{container}`");
    }
    Ok(Some(EvidenceBlobSettings {
        access,
        container: container.to_string(),
    }))
}

fn store_settings(env: &Env) -> anyhow::Result<StoreSettings> {
    let connection = get(env, "KILN_TABLE_CONNECTION");
    let endpoint = get(env, "KILN_TABLE_ENDPOINT");
    match get(env, "KILN_STORE").unwrap_or("sqlite") {
        "sqlite" => {
            if connection.is_some() || endpoint.is_some() {
                bail!("KILN_STORE: is `sqlite` (the default), but KILN_TABLE_CONNECTION or KILN_TABLE_ENDPOINT is set; set KILN_STORE=table to use Table Storage");
            }
            Ok(StoreSettings::Sqlite)
        }
        "table" => {
            unresolved_reference(env, "KILN_TABLE_CONNECTION")?;
            let access = match (connection, endpoint) {
                (Some(c), None) => TableAccess::ConnectionString(Secret::new(c)),
                (None, Some(e)) => TableAccess::Endpoint(storage_endpoint(
                    "KILN_TABLE_ENDPOINT",
                    e,
                    "https://ACCOUNT.table.core.windows.net",
                )?),
                (Some(_), Some(_)) => bail!("KILN_TABLE_CONNECTION and KILN_TABLE_ENDPOINT: set one, not both (a connection string uses its key, an endpoint uses Entra ID)"),
                (None, None) => bail!("KILN_STORE=table needs KILN_TABLE_ENDPOINT (managed identity) or KILN_TABLE_CONNECTION (a connection string; `UseDevelopmentStorage=true` for Azurite)"),
            };
            let prefix = get(env, "KILN_TABLE_PREFIX").unwrap_or("kiln").to_string();
            // Table names: 3-63 alphanumerics starting with a letter; kiln appends up to 8.
            if prefix.is_empty()
                || prefix.len() > 40
                || !prefix.starts_with(|c: char| c.is_ascii_alphabetic())
                || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
            {
                bail!("KILN_TABLE_PREFIX: expected 1-40 letters and digits starting with a letter, got `{prefix}`");
            }
            Ok(StoreSettings::Table { access, prefix })
        }
        other => bail!("KILN_STORE: expected `sqlite` or `table`, got `{other}`"),
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> anyhow::Result<Settings> {
        let provider = match get(env, "KILN_PROVIDER").unwrap_or("local") {
            "local" => ProviderKind::Local,
            "azure" => ProviderKind::Azure,
            other => bail!("KILN_PROVIDER: expected `local` or `azure`, got `{other}`"),
        };
        let number = |key: &str, default: u32, min: u32| -> anyhow::Result<u32> {
            match get(env, key) {
                None => Ok(default),
                Some(s) => match s.parse::<u32>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => bail!("{key}: expected a whole number of at least {min}, got `{s}`"),
                },
            }
        };
        let webhook = match (
            get(env, "KILN_WEBHOOK_URL"),
            get(env, "KILN_WEBHOOK_SECRET"),
        ) {
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://")
                    || url.starts_with("http://127.0.0.1")
                    || url.starts_with("http://localhost"))
                {
                    // The URL itself is not echoed: it may carry a secret.
                    bail!(
                        "KILN_WEBHOOK_URL: expected an https:// URL (plain http only on loopback)"
                    );
                }
                Some(Webhook {
                    url: url.to_string(),
                    secret: Secret::new(secret),
                })
            }
            (None, None) => None,
            (Some(_), None) => bail!(
                "KILN_WEBHOOK_SECRET: required when KILN_WEBHOOK_URL is set (events are signed)"
            ),
            (None, Some(_)) => bail!("KILN_WEBHOOK_URL: required when KILN_WEBHOOK_SECRET is set"),
        };
        let data_dir = PathBuf::from(get(env, "KILN_DATA_DIR").unwrap_or(".kiln"));
        unresolved_reference(env, "KILN_EVENTS_KEY")?;
        unresolved_reference(env, "KILN_WEBHOOK_SECRET")?;
        let events_key = get(env, "KILN_EVENTS_KEY").map(Secret::new);
        if provider == ProviderKind::Azure && events_key.is_none() {
            bail!("KILN_EVENTS_KEY: required with KILN_PROVIDER=azure (the events endpoint must not be open)");
        }
        let store = store_settings(env)?;
        let http_port = match get(env, "KILN_HTTP_PORT") {
            None => 7071,
            Some(s) => s
                .parse()
                .with_context(|| format!("KILN_HTTP_PORT: expected a port number, got `{s}`"))?,
        };
        let http_bind = match get(env, "KILN_HTTP_BIND") {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(s) => s.parse().with_context(|| {
                format!("KILN_HTTP_BIND: expected an IP address such as 127.0.0.1 or 0.0.0.0, got `{s}`")
            })?,
        };
        let read_timeout = number("KILN_HTTP_READ_TIMEOUT", 10, 1)?;
        Ok(Settings {
            provider,
            http_bind,
            http_read_timeout: std::time::Duration::from_secs(u64::from(read_timeout)),
            api_access: api_access(env)?,
            evidence_blobs: evidence_blob_settings(env)?,
            osv_feed: get(env, "KILN_OSV_FEED").map(PathBuf::from),
            osv_feed_url: match get(env, "KILN_OSV_FEED_URL") {
                None => None,
                Some(u)
                    if u.starts_with("https://")
                        || u.starts_with("http://")
                        || u.starts_with("file://") =>
                {
                    Some(u.to_string())
                }
                Some(u) => anyhow::bail!(
                    "KILN_OSV_FEED_URL: expected an https://, http:// or file:// URL, got `{}`",
                    crate::domain::redact::uri(u)
                ),
            },
            events_file: Some(
                get(env, "KILN_EVENTS_FILE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join("events.jsonl")),
            ),
            data_dir,
            pipelines_dir: PathBuf::from(get(env, "KILN_PIPELINES_DIR").unwrap_or("pipelines")),
            handlers_dir: get(env, "KILN_HANDLERS_DIR")
                .or(get(env, "FUNCTIONS_APP_ROOT_PATH"))
                .map(PathBuf::from)
                .unwrap_or_else(|| default_handlers_dir(Path::new("."))),
            max_active_builds: number("KILN_MAX_ACTIVE_BUILDS", 4, 1)?,
            events_key,
            webhook,
            http_port,
            local_faults: get(env, "KILN_LOCAL_FAULTS").map(str::to_string),
            clock: match get(env, "KILN_CLOCK") {
                None => None,
                Some(text) => Some(
                    ScaledClock::parse_setting(text.trim())
                        .map_err(|e| anyhow::anyhow!("KILN_CLOCK: {e}"))?,
                ),
            },
            store,
        })
    }

    /// Refuses an API that would be open where it must not be: `kiln serve`
    /// needs keys unless `KILN_API_AUTH=off`; `kiln local` needs them when
    /// it listens beyond loopback.
    pub fn check_api_access(&self, listener: Listener) -> anyhow::Result<()> {
        match (&self.api_access, listener) {
            (ApiAccess::Keys(_) | ApiAccess::OpenByChoice, _) => Ok(()),
            (ApiAccess::Open, Listener::Local(ip)) if ip.is_loopback() => Ok(()),
            (ApiAccess::Open, Listener::Local(ip)) => bail!(
                "KILN_API_KEYS: required when kiln local listens on {ip} (KILN_HTTP_BIND beyond loopback): set one or more keys of at least {MIN_API_KEY} characters, comma-separated"
            ),
            (ApiAccess::Open, Listener::FunctionsHost) => bail!(
                "KILN_API_KEYS: required by kiln serve (every API route but health needs a key): set one or more keys of at least {MIN_API_KEY} characters, comma-separated, or KILN_API_AUTH=off if something in front of kiln checks every caller"
            ),
        }
    }

    /// The clock kiln runs on: `KILN_CLOCK`'s scaled clock, else the system's.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match self.clock {
            Some(scaled) => Arc::new(scaled),
            None => Arc::new(SystemClock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evidence_goes_to_blob_storage_only_when_an_account_is_named() {
        assert_eq!(Settings::from_env(&env(&[])).unwrap().evidence_blobs, None);
        let s = Settings::from_env(&env(&[(
            "KILN_EVIDENCE_ENDPOINT",
            "https://acct.blob.core.windows.net/",
        )]))
        .unwrap();
        assert_eq!(
            s.evidence_blobs,
            Some(EvidenceBlobSettings {
                access: BlobAccess::Endpoint("https://acct.blob.core.windows.net".into()),
                container: "kiln-evidence".into(),
            })
        );
        let s = Settings::from_env(&env(&[
            ("KILN_EVIDENCE_CONNECTION", "UseDevelopmentStorage=true"),
            ("KILN_EVIDENCE_CONTAINER", "images-evidence"),
        ]))
        .unwrap();
        assert_eq!(s.evidence_blobs.unwrap().container, "images-evidence");
        for local in [
            "http://127.0.0.1:10000/devstoreaccount1",
            "http://localhost:10000/x",
            "http://[::1]:10000/x",
        ] {
            assert!(
                Settings::from_env(&env(&[("KILN_EVIDENCE_ENDPOINT", local)])).is_ok(),
                "{local}"
            );
        }
        for (pairs, expected) in [
            (
                vec![(
                    "KILN_EVIDENCE_ENDPOINT",
                    "http://acct.blob.core.windows.net",
                )],
                "KILN_EVIDENCE_ENDPOINT: expected an https:// URL",
            ),
            (
                vec![
                    ("KILN_EVIDENCE_ENDPOINT", "https://a.blob.core.windows.net"),
                    ("KILN_EVIDENCE_CONNECTION", "UseDevelopmentStorage=true"),
                ],
                "set one, not both",
            ),
            (
                vec![("KILN_EVIDENCE_CONTAINER", "kiln-evidence")],
                "neither KILN_EVIDENCE_ENDPOINT nor KILN_EVIDENCE_CONNECTION",
            ),
            (
                vec![(
                    "KILN_EVIDENCE_ENDPOINT",
                    "http://localhost.example.com:10000/acct",
                )],
                "plain http only on loopback",
            ),
            (
                vec![(
                    "KILN_EVIDENCE_ENDPOINT",
                    "https://a.blob.core.windows.net/?sv=2022&sig=secret",
                )],
                "no query or fragment",
            ),
            (
                vec![
                    ("KILN_EVIDENCE_ENDPOINT", "https://a.blob.core.windows.net"),
                    ("KILN_EVIDENCE_CONTAINER", "Kiln_Evidence"),
                ],
                "KILN_EVIDENCE_CONTAINER: expected a container name",
            ),
        ] {
            let e = Settings::from_env(&env(&pairs)).unwrap_err().to_string();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn the_store_is_sqlite_unless_table_storage_is_asked_for_completely() {
        assert_eq!(
            Settings::from_env(&env(&[])).unwrap().store,
            StoreSettings::Sqlite
        );
        let s = Settings::from_env(&env(&[
            ("KILN_STORE", "table"),
            (
                "KILN_TABLE_ENDPOINT",
                "https://acct.table.core.windows.net/",
            ),
        ]))
        .unwrap();
        assert_eq!(
            s.store,
            StoreSettings::Table {
                access: TableAccess::Endpoint("https://acct.table.core.windows.net".into()),
                prefix: "kiln".into()
            }
        );
        let refused = [
            (vec![("KILN_STORE", "tables")], "KILN_STORE: expected"),
            (vec![("KILN_STORE", "table")], "KILN_STORE=table needs"),
            (
                vec![("KILN_TABLE_CONNECTION", "UseDevelopmentStorage=true")],
                "KILN_STORE: is `sqlite`",
            ),
            (
                vec![
                    ("KILN_STORE", "table"),
                    ("KILN_TABLE_CONNECTION", "UseDevelopmentStorage=true"),
                    ("KILN_TABLE_ENDPOINT", "https://acct.table.core.windows.net"),
                ],
                "set one, not both",
            ),
            (
                vec![
                    ("KILN_STORE", "table"),
                    ("KILN_TABLE_ENDPOINT", "http://acct.table.core.windows.net"),
                ],
                "KILN_TABLE_ENDPOINT: expected an https://",
            ),
            (
                vec![
                    ("KILN_STORE", "table"),
                    ("KILN_TABLE_CONNECTION", "UseDevelopmentStorage=true"),
                    ("KILN_TABLE_PREFIX", "kiln-prod"),
                ],
                "KILN_TABLE_PREFIX",
            ),
        ];
        for (pairs, start) in refused {
            let e = Settings::from_env(&env(&pairs)).unwrap_err().to_string();
            assert!(e.contains(start), "{pairs:?}: {e}");
        }
        // A connection string is a secret: it is never echoed.
        let s = Settings::from_env(&env(&[
            ("KILN_STORE", "table"),
            ("KILN_TABLE_CONNECTION", "AccountKey=c2VjcmV0"),
        ]))
        .unwrap();
        assert!(!format!("{s:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn defaults_run_the_local_factory() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(s.provider, ProviderKind::Local);
        assert_eq!(s.max_active_builds, 4);
        assert_eq!(s.http_port, 7071);
        assert!(s.webhook.is_none());
    }

    #[test]
    fn function_folders_default_to_handlers_in_the_repository_and_the_app_root_in_a_package() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(default_handlers_dir(repo), PathBuf::from("handlers"));
        let package = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(package.path().join("build_polls")).unwrap();
        assert_eq!(default_handlers_dir(package.path()), PathBuf::from("."));
        // The Functions host names the app root to its custom handler.
        let s =
            Settings::from_env(&env(&[("FUNCTIONS_APP_ROOT_PATH", "/home/site/wwwroot")])).unwrap();
        assert_eq!(s.handlers_dir, PathBuf::from("/home/site/wwwroot"));
        let s = Settings::from_env(&env(&[
            ("FUNCTIONS_APP_ROOT_PATH", "/home/site/wwwroot"),
            ("KILN_HANDLERS_DIR", "/srv/fn"),
        ]))
        .unwrap();
        assert_eq!(s.handlers_dir, PathBuf::from("/srv/fn"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let e = Settings::from_env(&env(&[("KILN_PROVIDER", "aws")])).unwrap_err();
        assert!(e.to_string().starts_with("KILN_PROVIDER"), "{e}");
        let e = Settings::from_env(&env(&[("KILN_MAX_ACTIVE_BUILDS", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("KILN_MAX_ACTIVE_BUILDS"), "{e}");
        let e = Settings::from_env(&env(&[("KILN_WEBHOOK_URL", "https://x")])).unwrap_err();
        assert!(e.to_string().starts_with("KILN_WEBHOOK_SECRET"), "{e}");
        let e = Settings::from_env(&env(&[("KILN_PROVIDER", "azure")])).unwrap_err();
        assert!(e.to_string().starts_with("KILN_EVENTS_KEY"), "{e}");
    }

    #[test]
    fn kiln_clock_selects_a_scaled_clock_and_a_bad_one_is_named_in_one_line() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert!(s.clock.is_none());
        let setting = "scaled start=2026-12-08T17:00:00Z anchor=2026-12-01T12:00:00Z factor=600";
        let s = Settings::from_env(&env(&[("KILN_CLOCK", setting)])).unwrap();
        let c = s.clock.unwrap();
        assert_eq!(c.factor, 600);
        assert_eq!(
            c.to_setting(),
            ScaledClock::parse_setting(setting).unwrap().to_setting()
        );
        for bad in ["fast", "scaled factor=0"] {
            let e = Settings::from_env(&env(&[("KILN_CLOCK", bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("KILN_CLOCK: ") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn an_unresolved_key_vault_reference_is_no_secret() {
        let reference = "@Microsoft.KeyVault(SecretUri=https://kilnkv.vault.azure.net/secrets/kiln-events-key/)";
        let e = Settings::from_env(&env(&[
            ("KILN_PROVIDER", "azure"),
            ("KILN_EVENTS_KEY", reference),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("KILN_EVENTS_KEY: the Key Vault reference did not resolve"),
            "{e}"
        );
        let e = Settings::from_env(&env(&[
            ("KILN_WEBHOOK_URL", "https://hooks.example"),
            ("KILN_WEBHOOK_SECRET", reference),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("KILN_WEBHOOK_SECRET"), "{e}");
    }

    #[test]
    fn api_keys_are_read_checked_and_required_where_the_api_is_exposed() {
        let k1 = "k1-0123456789abcdef";
        let k2 = "k2-0123456789abcdef";
        let s = Settings::from_env(&env(&[("KILN_API_KEYS", &format!("{k1}, {k2}"))])).unwrap();
        assert_eq!(
            s.api_access,
            ApiAccess::Keys(vec![Secret::new(k1), Secret::new(k2)])
        );
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        s.check_api_access(Listener::FunctionsHost).unwrap();
        s.check_api_access(Listener::Local("0.0.0.0".parse().unwrap()))
            .unwrap();

        let open = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(open.api_access, ApiAccess::Open);
        assert_eq!(open.http_bind.to_string(), "127.0.0.1");
        open.check_api_access(Listener::Local(open.http_bind))
            .unwrap();
        let e = open
            .check_api_access(Listener::FunctionsHost)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("KILN_API_KEYS: required by kiln serve"),
            "{e}"
        );
        let e = open
            .check_api_access(Listener::Local("0.0.0.0".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.0"), "{e}");
        let off = Settings::from_env(&env(&[("KILN_API_AUTH", "off")])).unwrap();
        off.check_api_access(Listener::FunctionsHost).unwrap();

        let one_bad = format!("{k1},tiny");
        let refused = [
            (vec![("KILN_API_KEYS", "short")], "key 1 of 1 is not a key"),
            (vec![("KILN_API_KEYS", one_bad.as_str())], "key 2 of 2"),
            (
                vec![("KILN_API_AUTH", "off"), ("KILN_API_KEYS", k1)],
                "set one, not both",
            ),
            (vec![("KILN_API_AUTH", "none")], "KILN_API_AUTH: expected"),
            (vec![("KILN_HTTP_BIND", "everywhere")], "KILN_HTTP_BIND"),
            (
                vec![("KILN_HTTP_READ_TIMEOUT", "0")],
                "KILN_HTTP_READ_TIMEOUT",
            ),
        ];
        for (pairs, want) in refused {
            let e = Settings::from_env(&env(&pairs)).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
            assert!(!e.contains("tiny") && !e.contains("short"), "{e}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_env(&env(&[
            ("KILN_WEBHOOK_URL", "https://hooks.example"),
            ("KILN_WEBHOOK_SECRET", "s3cr3t-value"),
        ]))
        .unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn local_settings_values_are_read_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("local.settings.json");
        std::fs::write(
            &p,
            r#"{"IsEncrypted": false, "Values": {"KILN_MAX_ACTIVE_BUILDS": "2", "PATH": "x"}}"#,
        )
        .unwrap();
        let e = gather_env(Some(&p)).unwrap();
        assert_eq!(e["KILN_MAX_ACTIVE_BUILDS"], "2");
        assert_ne!(e["PATH"], "x");
    }
}
