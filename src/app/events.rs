//! Events out: every build state change as a CloudEvent 1.0
//! (`dev.kiln.build.<state>`), appended to a JSON-lines file and, when a
//! webhook is configured, delivered from an outbox with an HMAC-SHA256
//! signature over the body and a timestamp (`events/signature.rs`), retried
//! with backoff. Delivery never blocks a transition: the transition only
//! writes the outbox row.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Webhook;
use crate::domain::build::Build;
use crate::store::port::{OutboxItem, OutboxRow};
use crate::store::Store;

mod signature;
pub use signature::{
    sign, verify, Rejected, DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

/// Deliveries given up after this many attempts (kept in the outbox with the last error).
pub const MAX_ATTEMPTS: u32 = 12;
/// How long a claimed event stays hidden from other deliverers: longer
/// than one delivery's HTTP timeout.
const DELIVERY_LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// Events claimed at once: their posts (10 s timeout each) fit in the lease.
const CLAIM_BATCH: usize = 5;
/// Claims per delivery run (at most 50 events per run, as before).
const DELIVERY_ROUNDS: usize = 10;

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

#[derive(Clone)]
pub struct EventSink {
    store: Arc<dyn Store>,
    file: Option<PathBuf>,
    /// The webhook and the client that posts to it (none is built without
    /// a webhook: a TLS client is a tenth of a millisecond of the start).
    webhook: Option<(Webhook, reqwest::Client)>,
    /// Every event this process emits, for watchers in the process (the
    /// app-level tests; a live view). Best effort: a slow receiver lags.
    /// Shared, not copied: each of the buffer's slots holds a pointer.
    live: tokio::sync::broadcast::Sender<Arc<CloudEvent>>,
}

/// Events a lagging receiver may fall behind by before it is told it lagged.
const LIVE_BUFFER: usize = 1024;

impl EventSink {
    pub fn new(store: Arc<dyn Store>, file: Option<PathBuf>, webhook: Option<Webhook>) -> Self {
        let webhook = webhook.map(|w| {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds");
            (w, http)
        });
        Self {
            store,
            file,
            webhook,
            live: tokio::sync::broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Events emitted from now on (after the file line is written).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<CloudEvent>> {
        self.live.subscribe()
    }

    /// The outbox row of an event when a webhook is configured, for the
    /// caller to commit together with the change it describes.
    pub fn outbox_row(&self, ev: &CloudEvent) -> Option<OutboxRow> {
        self.webhook.as_ref()?;
        let body = serde_json::to_string(ev).ok()?;
        Some(OutboxRow {
            event_id: ev.id.clone(),
            body,
            at: ev.time,
        })
    }

    /// Appends the event to the JSON-lines file (and the log).
    pub fn append(&self, ev: &CloudEvent) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(ev)?;
        line.push('\n');
        if let Some(path) = &self.file {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            // One write of the whole line: an appending write lands whole,
            // so lines of concurrent invocations (or of processes sharing
            // the file) never interleave, as `writeln!`'s separate write of
            // the newline let them.
            f.write_all(line.as_bytes())?;
        }
        tracing::info!(event = %ev.event_type, subject = %ev.subject, "event");
        // No receiver is the normal case outside tests.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(ev.clone()));
        }
        Ok(())
    }

    /// Records an event on its own: the file line now, the webhook delivery later.
    pub async fn publish(&self, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(row) = self.outbox_row(ev) {
            self.store.outbox_add(&row).await?;
        }
        self.append(ev)
    }

    /// Delivers due outbox events; returns how many were delivered.
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let Some((hook, http)) = &self.webhook else {
            return Ok(0);
        };
        // Claimed, not just read: another instance's deliverer skips these
        // until the lease ends, so one event is not posted twice at once. A
        // few at a time, each claim just before its posts, so that no
        // claimed event waits past its lease behind slow ones.
        let started = std::time::Instant::now();
        let mut delivered = 0;
        for _ in 0..DELIVERY_ROUNDS {
            let now = now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
            let due = self
                .store
                .outbox_claim(now, DELIVERY_LEASE, MAX_ATTEMPTS, CLAIM_BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            delivered += self.post_all(hook, http, due, now).await?;
        }
        Ok(delivered)
    }

    async fn post_all(
        &self,
        hook: &Webhook,
        http: &reqwest::Client,
        due: Vec<OutboxItem>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let mut delivered = 0;
        for item in due {
            let (id, body, attempts) = (&item.event_id, &item.body, item.attempts);
            // Signed as it is sent, with the wall clock the receiver checks
            // it against (not the factory's clock, which a simulation may
            // run fast), so a retry carries a fresh timestamp.
            let signed_at = Utc::now().timestamp();
            let result = http
                .post(&hook.url)
                .header("content-type", "application/cloudevents+json")
                .header(TIMESTAMP_HEADER, signed_at.to_string())
                .header(
                    SIGNATURE_HEADER,
                    sign(hook.secret.expose(), signed_at, body.as_bytes()),
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
                    self.store.outbox_delivered(&item, now).await?;
                }
                Err(e) => {
                    let backoff = chrono::Duration::seconds(2i64.pow(attempts.min(11)));
                    tracing::warn!(event = %id, attempts = attempts + 1, error = %e, "webhook delivery failed; will retry");
                    self.store.outbox_failed(&item, now + backoff, &e).await?;
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
    fn concurrent_appends_keep_one_event_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::new(
            crate::store::Db::open_in_memory().unwrap(),
        ));
        let sink = EventSink::new(store, Some(path.clone()), None);
        let now = Utc::now();
        std::thread::scope(|s| {
            for t in 0..8 {
                let sink = &sink;
                s.spawn(move || {
                    for i in 0..1000 {
                        let ev = CloudEvent::new(
                            "dev.kiln.test".into(),
                            format!("t{t}/{i}"),
                            now,
                            json!({ "n": i }),
                        );
                        sink.append(&ev).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8 * 1000);
        for l in lines {
            serde_json::from_str::<CloudEvent>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
    }
}
