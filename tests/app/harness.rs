//! The app-level harness: a real `kiln local` (router, queue consumers,
//! timers, local provider) in the test process, on a loopback port, with a
//! fresh data folder per test.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use kiln::config::{Env, Settings};
use kiln::host::wiring::{local_runtime, LocalRuntime};
use kiln::ports::{Clock, SystemClock};
use kiln::providers::local::{BaseFrom, LocalProvider};
use kiln::store::sqlite::queue::LocalQueue;

pub use crate::common::{bounded, repo, SUB};

/// The shipped tiny pipeline, renamed, publishing to its own image definition,
/// with `kiln` settings merged in.
pub fn tiny(name: &str, kiln: Value) -> (String, Value) {
    let mut doc = crate::common::tiny_in("gal_test", name);
    merge(&mut doc["kiln"], kiln);
    (name.to_string(), doc)
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

pub struct Options {
    pub pipelines: Vec<(String, Value)>,
    pub env: Vec<(&'static str, String)>,
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pipelines: vec![tiny("tiny", json!({}))],
            env: vec![],
            clock: None,
        }
    }
}

pub struct Factory {
    pub dir: tempfile::TempDir,
    pub provider: LocalProvider,
    /// The embedded queue the host consumes.
    pub queue: LocalQueue,
    /// The events the factory emits, to wait on.
    pub events: kiln::app::events::EventSink,
    pub api: String,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    host: Option<JoinHandle<()>>,
}

pub fn settings(dir: &Path, extra: &[(&'static str, String)]) -> Settings {
    let mut env = Env::new();
    env.insert(
        "KILN_DATA_DIR".into(),
        dir.join("data").display().to_string(),
    );
    env.insert(
        "KILN_PIPELINES_DIR".into(),
        dir.join("pipelines").display().to_string(),
    );
    env.insert(
        "KILN_HANDLERS_DIR".into(),
        repo().join("handlers").display().to_string(),
    );
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    Settings::from_env(&env).unwrap()
}

/// The runtime without a running host (for tests that invoke functions themselves).
pub async fn runtime(dir: &Path, opts: &Options) -> LocalRuntime {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    for (name, doc) in &opts.pipelines {
        std::fs::write(
            dir.join(format!("pipelines/{name}.json")),
            serde_json::to_vec_pretty(doc).unwrap(),
        )
        .unwrap();
    }
    let clock = opts.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
    let rt = local_runtime(settings(dir, &opts.env), &Env::new(), clock)
        .await
        .unwrap();
    if rt.provider.list_bases().await.unwrap().is_empty() {
        rt.provider
            .import_base("kiln:busybox:tiny", "1.0.0", BaseFrom::Busybox)
            .await
            .unwrap();
    }
    rt
}

impl Factory {
    pub async fn start(opts: Options) -> Factory {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), &opts).await;
        let provider = rt.provider.clone();
        let queue = rt.queue.clone();
        let events = rt.app.events.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        let host = tokio::spawn(async move {
            rt.into_host().run(listener, rx).await.unwrap();
        });
        Factory {
            dir,
            provider,
            queue,
            events,
            api,
            http: reqwest::Client::new(),
            stop,
            host: Some(host),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests a build through the API; returns its id.
    pub async fn build(&self, pipeline: &str, key: Option<&str>) -> String {
        let (status, v) = self
            .post(
                "/api/builds",
                &json!({"pipeline": pipeline, "idempotencyKey": key, "requestedBy": "test"}),
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {v}");
        v["build"].as_str().unwrap().to_string()
    }

    /// The build as the API shows it.
    pub async fn build_state(&self, id: &str) -> Value {
        self.get(&format!("/api/builds/{id}")).await
    }

    /// Waits until the build ends, woken by the factory's own events
    /// rather than by polling; panics with its timeline after `limit`.
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        // Subscribed before the first look: an end between the look and
        // the wait is still heard.
        let mut events = self.events.subscribe();
        let subject = format!("builds/{id}");
        loop {
            let v = self.build_state(id).await;
            if matches!(
                v["state"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "build {id} did not end in {limit:?}: {v:#}"
            );
            let ended = async {
                loop {
                    match events.recv().await {
                        Ok(ev) if ev.subject == subject => {
                            if ev.event_type.ends_with(".succeeded")
                                || ev.event_type.ends_with(".failed")
                                || ev.event_type.ends_with(".canceled")
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind: look again.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(left, ended).await;
        }
    }

    /// Waits until `check` yields a value, looking again after each event
    /// the factory emits. Changes that emit no event (a queue drained) are
    /// seen within [`RECHECK`]. Panics naming `what` after `limit`.
    pub async fn until<T, Fut>(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Fut,
    ) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        // Subscribed before the first look, as in `wait_terminal`.
        let mut events = self.events.subscribe();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: not within {limit:?}");
            let wait = left.min(RECHECK);
            // The factory stopped emitting: look again after the pause
            // rather than spinning on the closed channel.
            if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) =
                tokio::time::timeout(wait, events.recv()).await
            {
                tokio::time::sleep(wait).await
            }
        }
    }

    /// Subscribes now to the factory's events; the wait then returns the
    /// first event of `kind`, emitted from this call on.
    pub fn expect_event(&self, kind: &str) -> EventWait {
        EventWait {
            events: self.events.subscribe(),
            kind: kind.to_string(),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.host.take() {
            tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// How often [`Factory::until`] looks again when no event wakes it.
const RECHECK: Duration = Duration::from_millis(250);

/// An event awaited since [`Factory::expect_event`].
pub struct EventWait {
    events: tokio::sync::broadcast::Receiver<std::sync::Arc<kiln::app::events::CloudEvent>>,
    kind: String,
}

impl EventWait {
    pub async fn within(
        mut self,
        limit: Duration,
    ) -> std::sync::Arc<kiln::app::events::CloudEvent> {
        let kind = self.kind.clone();
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(ev) if ev.event_type == kind => return ev,
                    Ok(_) => {}
                    Err(e) => panic!("waiting for {kind}: the event stream {e}"),
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within {limit:?}"))
    }
}

/// Loses every follow-up poll message queued so far (as a crashed host or
/// a purged queue would); returns how many were lost.
pub fn lose_polls(dir: &Path) -> usize {
    db_of(dir)
        .with(|c| c.execute("DELETE FROM queue_messages WHERE queue = 'build-polls'", []))
        .unwrap()
}

/// A second connection to a test's database, for tests that reach under
/// the host (lose messages, count them).
pub fn db_of(dir: &Path) -> kiln::store::Db {
    kiln::store::Db::open(&dir.join("data/kiln.db")).unwrap()
}

#[tokio::test]
#[should_panic(expected = "did not finish within its limit of 20ms")]
async fn a_test_that_hangs_fails_at_its_limit() {
    crate::common::bounded_for(Duration::from_millis(20), std::future::pending()).await
}
