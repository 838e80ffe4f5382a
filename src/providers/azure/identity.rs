//! Bearer tokens for the Azure adapters.
//!
//! The adapters ask a [`TokenSource`] for a token per request and never see
//! a credential. In Azure the source is the app's managed identity; on a
//! laptop it is the Azure CLI's login (`KILN_AZURE_CREDENTIAL=cli`); against
//! the simulator (`KILN_AZURE_CREDENTIAL=sim`) and in tests it is a fixed
//! string.
//!
//! `azure_identity` is used only for acquiring tokens. It is built without
//! its own HTTP stack (which would bring a second reqwest and a C crypto
//! library); the managed-identity endpoint is reached through kiln's reqwest
//! client via [`ReqwestBridge`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, ClientOptions, Method, Request, Transport};
use azure_identity::{
    AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

use crate::config::Secret;

/// A token is fetched again this long before it expires, so a request never
/// leaves with a token that dies in flight.
const REFRESH_MARGIN_SECS: i64 = 300;

/// Where bearer tokens come from.
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A token for `scope` (e.g. `https://management.azure.com/.default`).
    async fn token(&self, scope: &str) -> anyhow::Result<Secret>;
}

/// One fixed token, whatever the scope: for tests and for tokens minted elsewhere.
pub struct StaticToken(Secret);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Secret::new(token))
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self, _scope: &str) -> anyhow::Result<Secret> {
        Ok(self.0.clone())
    }
}

/// Which `azure_identity` credential to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// The Function App's managed identity; a user-assigned one when a client id is given.
    ManagedIdentity { client_id: Option<String> },
    /// Whoever is logged in to the Azure CLI (`az login`).
    AzureCli,
    /// The fixed token [`SIM_TOKEN`] for `kiln sim`; accepted only with loopback endpoints.
    Sim,
}

/// The token sent with `KILN_AZURE_CREDENTIAL=sim`. Not a secret: the
/// simulator checks that a bearer token is there, not what it says.
pub const SIM_TOKEN: &str = "kiln-sim";

/// Whether `url` is plain http on this machine (`http://127.0.0.1…`, `http://localhost…`).
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    host == "127.0.0.1" || host == "localhost"
}

/// The token source for a credential kind.
pub fn token_source(
    kind: &CredentialKind,
    http: reqwest::Client,
) -> anyhow::Result<Arc<dyn TokenSource>> {
    Ok(match kind {
        CredentialKind::Sim => Arc::new(StaticToken::new(SIM_TOKEN)),
        CredentialKind::ManagedIdentity { .. } | CredentialKind::AzureCli => {
            Arc::new(IdentityTokens::new(kind, http)?)
        }
    })
}

/// Tokens from an `azure_identity` credential, cached per scope until shortly
/// before they expire (the CLI credential does not cache, and spawning `az`
/// per request would cost a second each).
pub struct IdentityTokens {
    credential: Arc<dyn TokenCredential>,
    cache: tokio::sync::Mutex<HashMap<String, (Secret, i64)>>,
}

impl IdentityTokens {
    pub fn new(kind: &CredentialKind, http: reqwest::Client) -> anyhow::Result<Self> {
        let credential: Arc<dyn TokenCredential> = match kind {
            CredentialKind::ManagedIdentity { client_id } => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options: ClientOptions {
                        transport: Some(Transport::new(Arc::new(ReqwestBridge(http)))),
                        ..ClientOptions::default()
                    },
                };
                ManagedIdentityCredential::new(Some(options))
                    .context("Cannot set up the managed identity credential")?
            }
            CredentialKind::AzureCli => {
                AzureCliCredential::new(None).context("Cannot set up the Azure CLI credential")?
            }
            CredentialKind::Sim => {
                anyhow::bail!("the sim credential is a fixed token; use identity::token_source")
            }
        };
        Ok(Self {
            credential,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        })
    }
}

#[async_trait]
impl TokenSource for IdentityTokens {
    async fn token(&self, scope: &str) -> anyhow::Result<Secret> {
        // Holding the lock across the fetch means concurrent requests wait for
        // one fetch instead of each starting their own.
        let mut cache = self.cache.lock().await;
        let now = chrono::Utc::now().timestamp();
        if let Some((token, expires)) = cache.get(scope) {
            if expires - now > REFRESH_MARGIN_SECS {
                return Ok(token.clone());
            }
        }
        let fresh = self
            .credential
            .get_token(&[scope], None)
            .await
            .map_err(|e| anyhow::anyhow!("Cannot get a token for {scope}: {e}"))?;
        let token = Secret::new(fresh.token.secret());
        tracing::debug!(scope, expires_on = %fresh.expires_on, "acquired a token");
        cache.insert(
            scope.to_string(),
            (token.clone(), fresh.expires_on.unix_timestamp()),
        );
        Ok(token)
    }
}

/// Lets `azure_identity` reach the managed-identity endpoint through kiln's reqwest.
#[derive(Debug)]
struct ReqwestBridge(reqwest::Client);

#[async_trait]
impl azure_core::http::HttpClient for ReqwestBridge {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::ErrorKind;
        let method = match request.method() {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
            other => {
                return Err(azure_core::Error::with_message(
                    ErrorKind::Other,
                    format!("unsupported method {other:?}"),
                ))
            }
        };
        let mut builder = self
            .0
            .request(method, request.url().as_str())
            .timeout(Duration::from_secs(30));
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = match request.body() {
            Body::Bytes(bytes) => builder.body(bytes.to_vec()),
            Body::SeekableStream(_) => {
                // Token endpoints take small form or empty bodies; streams never occur.
                return Err(azure_core::Error::with_message(
                    ErrorKind::Other,
                    "streamed request bodies are not supported",
                ));
            }
        };
        let response = builder.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            azure_core::Error::with_error(kind, e, "token request failed")
        })?;
        let status = response.status().as_u16();
        let headers: HashMap<HeaderName, HeaderValue> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let v = v.to_str().ok()?;
                Some((
                    HeaderName::from(k.as_str().to_owned()),
                    HeaderValue::from(v.to_owned()),
                ))
            })
            .collect();
        let body = response
            .bytes()
            .await
            .map_err(|e| azure_core::Error::with_error(ErrorKind::Io, e, "token response body"))?;
        Ok(AsyncRawResponse::from_bytes(
            status.into(),
            Headers::from(headers),
            body,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_static_token_answers_every_scope_and_does_not_print() {
        let source = StaticToken::new("s3cr3t-token");
        let t = source
            .token("https://servicebus.azure.net/.default")
            .await
            .unwrap();
        assert_eq!(t.expose(), "s3cr3t-token");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn only_plain_http_on_this_machine_counts_as_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1",
            "http://localhost:1/servicebus",
        ] {
            assert!(is_loopback_http(ok), "{ok}");
        }
        for no in [
            "https://127.0.0.1:8080",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example:80",
            "http://10.0.0.1",
            "https://management.azure.com",
        ] {
            assert!(!is_loopback_http(no), "{no}");
        }
    }

    #[tokio::test]
    async fn the_sim_credential_sends_its_fixed_token() {
        let t = token_source(&CredentialKind::Sim, reqwest::Client::new())
            .unwrap()
            .token(crate::providers::azure::arm::MANAGEMENT_SCOPE)
            .await
            .unwrap();
        assert_eq!(t.expose(), SIM_TOKEN);
    }

    #[test]
    fn the_cli_credential_can_be_set_up_without_a_login() {
        // Construction must not shell out; only a token request runs `az`.
        assert!(IdentityTokens::new(&CredentialKind::AzureCli, reqwest::Client::new()).is_ok());
    }
}
