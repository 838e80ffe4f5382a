//! Events out: every build state change as a CloudEvent 1.0
//! (`dev.kiln.build.<state>`), appended to a JSON-lines file and, when a
//! webhook is configured, delivered from an outbox with an HMAC-SHA256
//! signature, retried with backoff. Delivery never blocks a transition: the
//! transition only writes the outbox row.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::Webhook;
use crate::domain::build::Build;
use crate::store::{insert_outbox, ts, Db};

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-kiln-signature-256";
/// Deliveries given up after this many attempts (kept in the outbox with the last error).
pub const MAX_ATTEMPTS: u32 = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: Value,
}

impl CloudEvent {
    pub fn new(event_type: String, subject: String, time: DateTime<Utc>, data: Value) -> Self {
        Self {
            specversion: "1.0".into(),
            id: uuid::Uuid::new_v4().to_string(),
            source: "/kiln".into(),
            event_type,
            subject,
            time,
            datacontenttype: "application/json".into(),
            data,
        }
    }

    pub fn build_changed(b: &Build, cause: &str, now: DateTime<Utc>) -> Self {
        let data = json!({
            "buildId": b.id,
            "pipeline": b.pipeline,
            "state": b.state.name(),
            "detail": b.state,
            "version": b.version.to_string(),
            "attempt": b.attempt,
            "trigger": b.trigger,
            "cause": cause,
        });
        Self::new(
            format!("dev.kiln.build.{}", b.state.name()),
            format!("builds/{}", b.id),
            now,
            data,
        )
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Clone)]
pub struct EventSink {
    db: Db,
    file: Option<PathBuf>,
    webhook: Option<Webhook>,
    http: reqwest::Client,
}

impl EventSink {
    pub fn new(db: Db, file: Option<PathBuf>, webhook: Option<Webhook>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client builds");
        Self {
            db,
            file,
            webhook,
            http,
        }
    }

    /// The outbox row of an event when a webhook is configured, for the
    /// caller to commit together with the change it describes.
    pub fn outbox_row(&self, ev: &CloudEvent) -> Option<(String, String, DateTime<Utc>)> {
        self.webhook.as_ref()?;
        let body = serde_json::to_string(ev).ok()?;
        Some((ev.id.clone(), body, ev.time))
    }

    /// Appends the event to the JSON-lines file (and the log).
    pub fn append(&self, ev: &CloudEvent) -> anyhow::Result<()> {
        let line = serde_json::to_string(ev)?;
        if let Some(path) = &self.file {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{line}")?;
        }
        tracing::info!(event = %ev.event_type, subject = %ev.subject, "event");
        Ok(())
    }

    /// Records an event on its own: the file line now, the webhook delivery later.
    pub fn publish(&self, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some((id, body, at)) = self.outbox_row(ev) {
            self.db.with(|c| insert_outbox(c, &id, &body, at))?;
        }
        self.append(ev)
    }

    /// Delivers due outbox events; returns how many were delivered.
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let Some(hook) = &self.webhook else {
            return Ok(0);
        };
        let due: Vec<(i64, String, u32)> = self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, body, attempts FROM event_outbox
                 WHERE delivered_at IS NULL AND attempts < ?1 AND next_attempt <= ?2 ORDER BY seq LIMIT 50",
            )?;
            let rows = stmt.query_map(params![MAX_ATTEMPTS, ts(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        let mut delivered = 0;
        for (seq, body, attempts) in due {
            let result = self
                .http
                .post(&hook.url)
                .header("content-type", "application/cloudevents+json")
                .header(
                    SIGNATURE_HEADER,
                    sign(hook.secret.expose(), body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await
                // Without the URL: webhook URLs often carry their secret in the path.
                .map_err(|e| e.without_url().to_string())
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                });
            match result {
                Ok(()) => {
                    delivered += 1;
                    self.db.with(|c| {
                        c.execute(
                            "UPDATE event_outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE seq = ?1",
                            params![seq, ts(now)],
                        )
                    })?;
                }
                Err(e) => {
                    let backoff = chrono::Duration::seconds(2i64.pow(attempts.min(11)));
                    tracing::warn!(seq, attempts = attempts + 1, error = %e, "webhook delivery failed; will retry");
                    self.db.with(|c| {
                        c.execute(
                            "UPDATE event_outbox SET attempts = attempts + 1, next_attempt = ?2, last_error = ?3 WHERE seq = ?1",
                            params![seq, ts(now + backoff), e],
                        )
                    })?;
                }
            }
        }
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
