//! The CLI's client of the running app's HTTP API.
//!
//! In Azure the API is an HTTP function with `authLevel: function`: the
//! Functions host answers 401 to any call without a function key. The key
//! (`--function-key` / `KILN_FUNCTION_KEY`) goes in `x-functions-key` on
//! every request, marked sensitive so that no debug output shows it; it is
//! never put in an error. `kiln local` needs none.
//!
//! kiln's own API key (`KILN_API_KEY`, one of the server's `KILN_API_KEYS`)
//! goes as `Authorization: Bearer`, under the same rules: marked
//! sensitive, only over https or to loopback, never in an error.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::config::Secret;

/// The header the Functions host reads a function key from.
pub const FUNCTION_KEY_HEADER: &str = "x-functions-key";

/// Whether `base` is https, or plain http on this machine only.
fn secure_or_loopback(base: &str) -> bool {
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => matches!(
            u.host_str(),
            Some("127.0.0.1") | Some("localhost") | Some("[::1]")
        ),
        _ => false,
    }
}

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    sends_key: bool,
}

impl ApiClient {
    /// A client sending `function_key`, and `KILN_API_KEY` from the environment.
    pub fn new(base: &str, function_key: Option<&Secret>) -> anyhow::Result<Self> {
        let api_key = std::env::var("KILN_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(Secret::new);
        Self::with_keys(base, function_key, api_key.as_ref())
    }

    pub fn with_keys(
        base: &str,
        function_key: Option<&Secret>,
        api_key: Option<&Secret>,
    ) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    anyhow::anyhow!("KILN_API_KEY: expected an API key of visible ASCII characters")
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            if !secure_or_loopback(base) {
                bail!(
                    "--api {base}: an API key is only sent over https (or to a loopback address)"
                );
            }
        }
        if let Some(key) = function_key {
            let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "KILN_FUNCTION_KEY / --function-key: expected a function key of visible ASCII characters"
                )
            })?;
            value.set_sensitive(true);
            headers.insert(FUNCTION_KEY_HEADER, value);
        }
        if function_key.is_some() && !secure_or_loopback(base) {
            bail!("--api {base}: a function key is only sent over https (or to a loopback address); use https://<app>.azurewebsites.net");
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                // A redirect would carry the key to wherever it points.
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            sends_key: function_key.is_some(),
        })
    }

    async fn read(&self, resp: reqwest::Response) -> anyhow::Result<(u16, Value)> {
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == 401 {
            // kiln's own refusal says `unauthorized`; the Functions host's has no body.
            if body.get("code").and_then(Value::as_str) == Some("unauthorized") {
                bail!(
                    "the kiln API at {} refused the call for its API key (HTTP 401): set KILN_API_KEY to one of the server's KILN_API_KEYS",
                    self.base
                );
            }
            bail!("{}", self.unauthorized());
        }
        if status >= 400 {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{msg} (HTTP {status})");
        }
        Ok((status, body))
    }

    /// The Functions host's 401 has no body worth showing; say what to do.
    fn unauthorized(&self) -> String {
        if self.sends_key {
            format!(
                "the kiln API at {} refused the function key (HTTP 401): check KILN_FUNCTION_KEY / --function-key (`az functionapp function keys list -g <group> -n <app> --function-name api`)",
                self.base
            )
        } else {
            format!(
                "the kiln API at {} needs a function key (HTTP 401): set KILN_FUNCTION_KEY or pass --function-key (`az functionapp function keys list -g <group> -n <app> --function-name api`)",
                self.base
            )
        }
    }

    fn unreachable(&self) -> String {
        format!(
            "Cannot reach the kiln API at {}: is `kiln local` running? (set --api)",
            self.base
        )
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Ok(self.read(resp).await?.1)
    }

    /// A text resource and the response headers (for logs).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<(String, HeaderMap)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        let headers = resp.headers().clone();
        if !resp.status().is_success() {
            let (_, body) = self.read(resp).await?;
            bail!("{body}");
        }
        let bytes = resp.bytes().await?;
        Ok((String::from_utf8_lossy(&bytes).into_owned(), headers))
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        self.read(resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const KEY: &str = "fk-s3cr3t-value==";

    /// The Functions host in front of an `authLevel: function` route: 401
    /// unless the right key comes in `x-functions-key`.
    async fn host_requiring_the_key() -> MockServer {
        let server = MockServer::start().await;
        for m in ["GET", "POST"] {
            Mock::given(method(m))
                .and(header(FUNCTION_KEY_HEADER, KEY))
                .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
                .with_priority(1)
                .mount(&server)
                .await;
        }
        Mock::given(path("/api/builds"))
            .respond_with(ResponseTemplate::new(401))
            .with_priority(2)
            .mount(&server)
            .await;
        server
    }

    #[tokio::test]
    async fn the_function_key_goes_in_x_functions_key_on_every_request() {
        let server = host_requiring_the_key().await;
        let c = ApiClient::new(&server.uri(), Some(&Secret::new(KEY))).unwrap();
        assert_eq!(c.get("/api/builds").await.unwrap(), serde_json::json!([]));
        let (status, _) = c.post("/api/builds", &serde_json::json!({})).await.unwrap();
        assert_eq!(status, 200);
        c.get_text("/api/builds").await.unwrap();
    }

    #[tokio::test]
    async fn a_401_without_a_key_says_to_set_it() {
        let server = host_requiring_the_key().await;
        let c = ApiClient::new(&server.uri(), None).unwrap();
        let e = c.get("/api/builds").await.unwrap_err().to_string();
        assert!(
            e.contains("needs a function key")
                && e.contains("KILN_FUNCTION_KEY")
                && e.contains("--function-key"),
            "{e}"
        );
        let e = c.get_text("/api/builds").await.unwrap_err().to_string();
        assert!(e.contains("KILN_FUNCTION_KEY"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_key_is_reported_without_the_key() {
        let server = host_requiring_the_key().await;
        let wrong = "fk-wrong-value";
        let c = ApiClient::new(&server.uri(), Some(&Secret::new(wrong))).unwrap();
        let e = c
            .post("/api/builds", &serde_json::json!({}))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused the function key"), "{e}");
        assert!(!e.contains(wrong), "{e}");
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_without_echoing_it() {
        let e = ApiClient::new("http://127.0.0.1:1", Some(&Secret::new("bad\nkey")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("KILN_FUNCTION_KEY"), "{e}");
        assert!(!e.contains("bad"), "{e}");
    }

    #[tokio::test]
    async fn the_api_key_goes_as_a_bearer_token_and_a_refusal_names_kiln_api_key() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(header("authorization", "Bearer api-key-0123456789"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(path("/api/builds"))
            .respond_with(ResponseTemplate::new(401).set_body_json(
                serde_json::json!({"code": "unauthorized", "error": "wrong API key"}),
            ))
            .with_priority(2)
            .mount(&server)
            .await;
        let key = Secret::new("api-key-0123456789");
        let c = ApiClient::with_keys(&server.uri(), None, Some(&key)).unwrap();
        assert_eq!(c.get("/api/builds").await.unwrap(), serde_json::json!([]));
        let wrong = Secret::new("api-key-wrong-000");
        let c = ApiClient::with_keys(&server.uri(), None, Some(&wrong)).unwrap();
        let e = c.get("/api/builds").await.unwrap_err().to_string();
        assert!(e.contains("set KILN_API_KEY"), "{e}");
        assert!(!e.contains("api-key-wrong"), "{e}");
        assert!(ApiClient::with_keys("http://kiln.example.com", None, Some(&key)).is_err());
    }

    #[test]
    fn a_key_is_never_sent_in_clear_beyond_this_machine() {
        let key = Secret::new("k3y");
        let e = ApiClient::new("http://kiln.example.com", Some(&key))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only sent over https"), "{e}");
        assert!(!e.contains("k3y"), "{e}");
        assert!(ApiClient::new("https://kiln.azurewebsites.net", Some(&key)).is_ok());
        assert!(ApiClient::new("http://127.0.0.1:7071", Some(&key)).is_ok());
        // Without a key, plain http anywhere is the caller's business.
        assert!(ApiClient::new("http://kiln.example.com", None).is_ok());
    }
}
