//! The CLI's client of the running app's HTTP API.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    async fn read(&self, resp: reqwest::Response) -> anyhow::Result<(u16, Value)> {
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
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
    pub async fn get_text(
        &self,
        path: &str,
    ) -> anyhow::Result<(String, reqwest::header::HeaderMap)> {
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
