//! Scale-out: three real `kiln serve` processes behind the simulated
//! Functions host, sharing one store, against the simulated Azure. A
//! Patch-Tuesday cycle requests 200 builds at once (and two more firings of
//! the same occurrence request them again), 50 duplicate manual requests
//! arrive through the API of different instances and the Service Bus, one
//! instance is SIGKILLed halfway and replaced on a new port. Every build
//! must end exactly once, no version may be published twice, no request may
//! be lost, and the global cap must hold across the instances.
//!
//! The store is Table Storage, as in Azure: an Azurite the test starts, or
//! the account `KILN_SCALE_TABLE_CONNECTION` names (a connection string
//! with a `TableEndpoint`). Each instance has its own data folder; the
//! table endpoint is behind a counting proxy that gives the store's
//! transactions per build. `KILN_SCALE_STORE=sqlite` runs the same scenario
//! on one SQLite file the three share instead (one machine).

mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use kiln::sim::functions_host::payload::{self, TimerFiring};
use kiln::sim::functions_host::{
    wait_until, FunctionsHost, HostHandle, HostOptions, InvocationTrigger,
};
use kiln::sim::server::{Sim, SimHandle, SimOptions};

use super::harness::{repo, tiny, API_KEY};
use crate::common::bounded_for;
use proxy::{through_proxy, CountingProxy};

const INSTANCES: usize = 3;
const PIPELINES: usize = 200;
/// `KILN_MAX_ACTIVE_BUILDS`.
const CAP: usize = 20;
/// Manual idempotency keys, each sent this many times.
const KEYS: usize = 10;
const SENDS_PER_KEY: usize = 5;
/// Sim seconds per wall second: a 30-minute AIB build takes 3 s.
const FACTOR: u32 = 300;
/// How long the whole run may take on the wall.
const RUN: Duration = Duration::from_secs(170);
/// How long a process may take to answer `GET /`.
const START: Duration = Duration::from_secs(30);
const TERMINAL: [&str; 3] = ["succeeded", "failed", "canceled"];

/// Where the instances keep their state.
enum SharedStore {
    /// One SQLite file, in the data folder all instances share.
    Sqlite { data_dir: PathBuf },
    /// Table Storage through the counting proxy; `prefix` keeps this run's
    /// tables apart from any other's on the same account.
    Table {
        connection: String,
        prefix: String,
        proxy: CountingProxy,
        /// The Azurite the test started, if it did (stopped on drop).
        _azurite: Option<kiln::store::table::testing::Azurite>,
    },
}

impl SharedStore {
    async fn from_env(dir: &Path) -> SharedStore {
        if std::env::var("KILN_SCALE_STORE").as_deref() == Ok("sqlite") {
            return SharedStore::Sqlite {
                data_dir: dir.join("data"),
            };
        }
        let (given, azurite) = match std::env::var("KILN_SCALE_TABLE_CONNECTION") {
            Ok(given) if !given.trim().is_empty() => (given, None),
            _ => {
                let azurite = kiln::store::table::testing::Azurite::start();
                (
                    azurite.connection_string().expose().to_string(),
                    Some(azurite),
                )
            }
        };
        {
            {
                // The endpoint's origin first (the proxy forwards there),
                // then the string with the proxy's own URL in its place.
                let (_, target) = through_proxy(&given, "http://127.0.0.1:1").expect(
                    "KILN_SCALE_TABLE_CONNECTION: give a connection string with TableEndpoint=…",
                );
                let proxy = CountingProxy::start(&target).await;
                let (connection, _) = through_proxy(&given, &proxy.url).unwrap();
                let prefix = format!("scale{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                SharedStore::Table {
                    connection,
                    prefix,
                    proxy,
                    _azurite: azurite,
                }
            }
        }
    }

    /// The store's settings for instance `name`.
    fn env(&self, dir: &Path, name: &str) -> Vec<(String, String)> {
        match self {
            // SQLite's locking lets processes on one machine share the file.
            SharedStore::Sqlite { data_dir } => {
                vec![("KILN_DATA_DIR".into(), data_dir.display().to_string())]
            }
            SharedStore::Table {
                connection, prefix, ..
            } => vec![
                (
                    "KILN_DATA_DIR".into(),
                    dir.join(format!("data-{name}")).display().to_string(),
                ),
                ("KILN_STORE".into(), "table".into()),
                ("KILN_TABLE_CONNECTION".into(), connection.clone()),
                ("KILN_TABLE_PREFIX".into(), prefix.clone()),
            ],
        }
    }

    fn transactions_per_build(&self, builds: usize) -> String {
        match self {
            SharedStore::Sqlite { .. } => "n/a (sqlite)".into(),
            SharedStore::Table { proxy, .. } => format!(
                "{:.1} ({} requests to Table Storage: {:?})",
                proxy.requests() as f64 / builds as f64,
                proxy.requests(),
                proxy.by_kind()
            ),
        }
    }
}

/// One `kiln serve` process.
struct Instance {
    name: String,
    child: Child,
    url: String,
    events: PathBuf,
    stderr: PathBuf,
}

/// The instances' processes. Every one, killed ones included, is killed
/// and reaped when the test ends or panics.
struct Fleet {
    dir: PathBuf,
    env: Vec<(String, String)>,
    procs: Vec<Instance>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Settings a test process may have inherited that would change the instances.
fn inherited(key: &str) -> bool {
    ["KILN_", "AZURE_", "FUNCTIONS_", "ServiceBusConnection"]
        .iter()
        .any(|p| key.starts_with(p))
}

impl Fleet {
    /// Starts `kiln serve` as instance `name` on a free port, with the
    /// fleet's settings, its store's and its own events file.
    fn spawn(&mut self, name: &str, store: &SharedStore) -> usize {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let events = self.dir.join(format!("events-{name}.jsonl"));
        let stderr = self.dir.join(format!("kiln-{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("serve").current_dir(&self.dir);
        for (k, _) in std::env::vars() {
            if inherited(&k) {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().cloned())
            .envs(store.env(&self.dir, name))
            .env("KILN_EVENTS_FILE", &events)
            .env("KILN_API_KEYS", API_KEY)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().unwrap();
        self.procs.push(Instance {
            name: name.to_string(),
            child,
            url: format!("http://127.0.0.1:{port}"),
            events,
            stderr,
        });
        self.procs.len() - 1
    }

    /// Waits until process `i` answers `GET /`; fails with its log if it exits.
    async fn ready(&mut self, i: usize) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START;
        loop {
            let p = &mut self.procs[i];
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!(
                    "kiln serve {} exited ({status}) before it answered:\n{}",
                    p.name,
                    std::fs::read_to_string(&p.stderr).unwrap_or_default()
                );
            }
            let up = http
                .get(format!("{}/", p.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok();
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kiln serve {} did not answer within {START:?}",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs process `i`.
    fn kill(&mut self, i: usize) {
        self.procs[i].child.kill().unwrap();
        self.procs[i].child.wait().unwrap();
    }

    /// Every CloudEvent any instance wrote, merged.
    fn events(&self) -> Vec<Value> {
        self.procs
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(&p.events)
                    .unwrap_or_default()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<Value>(l).unwrap_or_else(|e| {
                            panic!("{}: not one event a line ({e}): {l}", p.events.display())
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last lines of every instance's log, for a failure message.
    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p.stderr).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
                format!("  {} ({}):\n    {tail}", p.name, p.url)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn pipeline_name(i: usize) -> String {
    format!("p{i:03}")
}

/// The tiny pipeline with its own gallery image definition, built on
/// Patch Tuesday (the day after, 03:00 in Berlin).
fn scheduled_copy(subscription: &str, name: &str) -> Value {
    let mut doc = tiny(subscription);
    let d = &mut doc["properties"]["distribute"][0];
    d["galleryImageId"] = json!(d["galleryImageId"]
        .as_str()
        .unwrap()
        .replace("/images/tiny", &format!("/images/{name}")));
    d["runOutputName"] = json!(name);
    doc["kiln"]["triggers"] = json!({
        "schedule": { "patchTuesday": { "offsetDays": 1, "at": "03:00", "timeZone": "Europe/Berlin" } },
        "baseImage": { "enabled": false }
    });
    doc
}

/// The marketplace line the tiny pipeline builds from, at 1.0.0 (as
/// `sim::factory` seeds each pipeline's source).
async fn seed_marketplace(sim: &SimHandle, http: &reqwest::Client) {
    let r = http
        .post(format!("{}/_sim/arm/marketplace", sim.url()))
        .json(&json!({
            "location": "westeurope", "publisher": "kiln", "offer": "busybox",
            "sku": "tiny", "versions": [{ "name": "1.0.0" }]
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// An ARM GET, as kiln's adapters make it.
async fn get_bearer_json(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).bearer_auth("test").send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// Every build, as the API lists them.
async fn all_builds(http: &reqwest::Client, api: &str) -> Option<Vec<Value>> {
    get_json(http, &format!("{api}/api/builds?limit=10000"))
        .await?
        .as_array()
        .cloned()
}

fn state(b: &Value) -> &str {
    b["state"]["state"].as_str().unwrap_or("")
}

fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// A manual build request as a CI pipeline sends it.
fn manual_request(pipeline: &str, key: &str, send: usize) -> Value {
    json!({ "pipeline": pipeline, "idempotencyKey": key,
            "reason": format!("duplicate #{send}"), "requestedBy": "ci@scale" })
}

/// Sends one copy of a duplicate request: `send` 0 through the app's front,
/// 1 and 2 straight to instances 1 and 2, 3 and 4 onto the requests queue
/// under message ids of their own (so that kiln, not Service Bus's
/// duplicate detection, has to find the duplicate). Returns how it went.
async fn send_duplicate(
    http: reqwest::Client,
    front: String,
    instances: Vec<String>,
    bus: String,
    pipeline: String,
    key: String,
    send: usize,
) -> String {
    let body = manual_request(&pipeline, &key, send);
    let api = match send {
        0 => Some(front),
        1 | 2 => Some(instances[send].clone()),
        _ => None,
    };
    match api {
        Some(base) => {
            let r = http
                .post(format!("{base}/api/builds"))
                .json(&body)
                .send()
                .await
                .unwrap();
            format!("api {}", r.status().as_u16())
        }
        None => {
            let r = http
                .post(format!("{bus}/build-requests/messages"))
                .bearer_auth("ci-pipeline")
                .header(
                    "BrokerProperties",
                    json!({ "MessageId": format!("{key}-sb{send}") }).to_string(),
                )
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            "bus 201".into()
        }
    }
}

/// Invokes `patch_tuesday` straight on an instance, as a second host that
/// also believed it held the timer would.
async fn extra_firing(
    http: reqwest::Client,
    instance: String,
    now: DateTime<Utc>,
    next: DateTime<Utc>,
) -> u16 {
    let body = payload::timer_invocation(
        "patch_tuesday",
        "timer",
        &TimerFiring {
            last: None,
            next,
            past_due: false,
        },
        now,
    );
    http.post(format!("{instance}/patch_tuesday"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Most intervals open at once: each `(start, end)` holds from start up to,
/// not including, end.
fn max_overlap(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // At one instant an end goes before a start.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}

fn queue_len(sim: &SimHandle, path: &str) -> usize {
    sim.bus()
        .with(|ns, now| ns.snapshot(path, now))
        .unwrap()
        .len()
}

/// The events webhook the instances deliver to: every body received, in
/// order (a redelivery appears again, as at-least-once allows).
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let g = g.clone();
            async move {
                let ev: Value = serde_json::from_str(&body).expect("a CloudEvent body");
                g.lock().unwrap().push(ev);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

/// Build id → the distinct ids of its terminal CloudEvents, and how many
/// terminal lines or deliveries each build had in all.
fn terminal_events(events: &[Value]) -> BTreeMap<String, (BTreeSet<String>, usize)> {
    let mut by_build: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for ev in events {
        let kind = ev["type"].as_str().unwrap_or("");
        if TERMINAL
            .iter()
            .any(|t| kind == format!("dev.kiln.build.{t}"))
        {
            let entry = by_build
                .entry(ev["data"]["buildId"].as_str().unwrap().to_string())
                .or_default();
            entry.0.insert(ev["id"].as_str().unwrap().to_string());
            entry.1 += 1;
        }
    }
    by_build
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_instances_build_exactly_once_under_one_cap() {
    // The scenario takes about 95 s here; a hang fails it after ten minutes.
    bounded_for(Duration::from_secs(600), async {
        // Patch Tuesday December 2026 is the 8th; the day after at 03:00 in
        // Berlin is 02:00 UTC on the 9th. The sim starts two sim hours before
        // (24 s on the wall), so one of the timer's firings before it (every
        // quarter hour) arms the schedules, even on a loaded machine where
        // the first firings are slow while 200 pipelines are armed (see the
        // function timeout below).
        let fires = Utc.with_ymd_and_hms(2026, 12, 9, 2, 0, 0).unwrap();
        let sim = Sim::start(SimOptions {
            start: Some(fires - chrono::Duration::minutes(120)),
            ..SimOptions::new(FACTOR)
        })
        .await
        .unwrap();
        // kiln's API key on every request (the sim's own routes ignore it).
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {API_KEY}").parse().unwrap(),
        );
        // As long as the function itself may take (its invocation budget,
        // 200 s): arming 200 schedules on Azurite on a loaded CI machine
        // outlasted 30 s, and the test is about once-only, not speed.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(240))
            .default_headers(headers)
            .build()
            .unwrap();
        seed_marketplace(&sim, &http).await;

        let dir = tempfile::tempdir().unwrap();
        let pipelines_dir = dir.path().join("pipelines");
        std::fs::create_dir_all(&pipelines_dir).unwrap();
        let subscription = sim.options().subscription_id.clone();
        let names: Vec<String> = (0..PIPELINES).map(pipeline_name).collect();
        for name in &names {
            std::fs::write(
                pipelines_dir.join(format!("{name}.json")),
                scheduled_copy(&subscription, name).to_string(),
            )
            .unwrap();
        }

        // The settings `sim::factory` gives its in-process kiln serve, and
        // a webhook: its outbox rows commit with the transitions, so it is
        // the events path that survives the SIGKILL below.
        let store = SharedStore::from_env(dir.path()).await;
        let (hook_url, delivered) = webhook_receiver().await;
        let mut env = sim.kiln_env();
        env.extend([
            ("KILN_WEBHOOK_URL".to_string(), hook_url),
            (
                "KILN_WEBHOOK_SECRET".to_string(),
                "sim-scale-webhook-secret".to_string(),
            ),
            (
                "KILN_EVENTS_KEY".to_string(),
                "sim-scale-events-key".to_string(),
            ),
            (
                "KILN_PIPELINES_DIR".into(),
                pipelines_dir.display().to_string(),
            ),
            (
                "KILN_HANDLERS_DIR".into(),
                repo().join("handlers").display().to_string(),
            ),
            ("KILN_MAX_ACTIVE_BUILDS".into(), CAP.to_string()),
            ("KILN_LOG".into(), "warn".into()),
        ]);
        let mut fleet = Fleet {
            dir: dir.path().to_path_buf(),
            env,
            procs: Vec::new(),
        };
        // One after the other, as instances join a running app.
        let first = fleet.spawn("0", &store);
        fleet.ready(first).await;
        for i in 1..INSTANCES {
            let p = fleet.spawn(&i.to_string(), &store);
            fleet.ready(p).await;
        }
        if let SharedStore::Table { proxy, .. } = &store {
            assert!(
                proxy.requests() > 0,
                "KILN_STORE=table: the instances started without a request to Table Storage"
            );
        }
        let urls: Vec<String> = fleet.procs.iter().map(|p| p.url.clone()).collect();
        // The shipped host.json with a longer function timeout: its 5
        // minutes are one wall second at this clock, which arming 200
        // schedules on Azurite can outlast on a loaded machine (in Azure the
        // same firing takes seconds of its 5 minutes). The scenario is about
        // exactly-once across instances, not about that race.
        let mut host_json: Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join("host.json")).unwrap())
                .unwrap();
        host_json["functionTimeout"] = json!("00:30:00");
        let host_json_path = dir.path().join("host.json");
        std::fs::write(&host_json_path, host_json.to_string()).unwrap();
        let host = FunctionsHost::start(
            HostOptions::scaled(&sim, &urls, &repo().join("handlers"))
                .host_json(&host_json_path)
                .unwrap(),
        )
        .await
        .unwrap();
        let front = host.app_url().to_string();

        let firings = |host: &HostHandle| -> Vec<kiln::sim::functions_host::InvocationRecord> {
            host.invocations()
                .into_iter()
                .filter(|r| r.function == "patch_tuesday")
                .collect()
        };
        let armed = wait_until(RUN, "the schedules to be armed", || async {
            firings(&host).into_iter().find(|r| r.succeeded())
        })
        .await
        .unwrap();
        assert!(
            armed.sim_ended < fires,
            "the first firing at {} came too late to arm the schedules",
            armed.sim_ended
        );

        // The cycle's occurrence: the host's timer fires on one instance, and
        // two more firings of the same occurrence go straight to the other
        // two, with the 50 duplicate manual requests alongside.
        let clock = sim.clock();
        wait_until(RUN, "the cycle's time", || async {
            (kiln::ports::Clock::now(&clock) >= fires).then_some(())
        })
        .await
        .unwrap();
        let started = Instant::now();
        let mut sends = tokio::task::JoinSet::new();
        for instance in &urls[1..] {
            let f = extra_firing(
                http.clone(),
                instance.clone(),
                kiln::ports::Clock::now(&clock),
                fires + chrono::Duration::minutes(15),
            );
            sends.spawn(async move { format!("extra firing {}", f.await) });
        }
        let manual: Vec<(String, String)> = (0..KEYS)
            .map(|k| (pipeline_name(k * PIPELINES / KEYS), format!("dup-{k}")))
            .collect();
        for (pipeline, key) in &manual {
            for send in 0..SENDS_PER_KEY {
                sends.spawn(send_duplicate(
                    http.clone(),
                    front.clone(),
                    urls.clone(),
                    sim.service_bus_url(),
                    pipeline.clone(),
                    key.clone(),
                    send,
                ));
            }
        }
        let mut outcomes = BTreeMap::<String, usize>::new();
        while let Some(r) = sends.join_next().await {
            *outcomes.entry(r.unwrap()).or_default() += 1;
        }
        assert_eq!(outcomes["extra firing 200"], INSTANCES - 1, "{outcomes:?}");

        // Halfway, instance 0 is SIGKILLed and replaced on a new port.
        let half = wait_until(RUN, "half the builds to end", || async {
            let builds = all_builds(&http, &front).await?;
            let ended = builds
                .iter()
                .filter(|b| TERMINAL.contains(&state(b)))
                .count();
            (ended >= PIPELINES / 2).then_some(ended)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        let killed_url = urls[0].clone();
        fleet.kill(first);
        let killed_at = kiln::ports::Clock::now(&clock);
        let replacement = fleet.spawn("0-replacement", &store);
        fleet.ready(replacement).await;
        let replacement_url = fleet.procs[replacement].url.clone();
        host.replace_instance(0, &replacement_url).await.unwrap();

        // The end: every request admitted (the requests queue is empty) and
        // every build terminal.
        let builds = wait_until(RUN, "every build to end", || async {
            if queue_len(&sim, "build-requests") > 0 {
                return None;
            }
            let builds = all_builds(&http, &front).await?;
            let done = builds.len() >= PIPELINES && builds.iter().all(|b| TERMINAL.contains(&state(b)));
            done.then_some(builds)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        let wall = started.elapsed();

        // No message lost: the queues drain (a poll scheduled before its build
        // moved on is dropped when it comes due), nothing was dead-lettered.
        wait_until(
            Duration::from_secs(30),
            "the polls queue to drain",
            || async { (queue_len(&sim, "build-polls") == 0).then_some(()) },
        )
        .await
        .unwrap();
        for q in [
            "build-requests/$DeadLetterQueue",
            "build-polls/$DeadLetterQueue",
        ] {
            assert_eq!(queue_len(&sim, q), 0, "{q}");
        }
        let dead = get_json(&http, &format!("{front}/api/deadletters"))
            .await
            .unwrap();
        assert_eq!(dead, json!([]), "kiln dead-lettered requests");

        // Every build ends exactly once, and every request key has one build.
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut ended: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for b in &builds {
            let id = b["id"].as_str().unwrap().to_string();
            assert_eq!(state(b), "succeeded", "{b}");
            let detail = get_json(&http, &format!("{front}/api/builds/{id}"))
                .await
                .unwrap();
            let timeline = detail["timeline"].as_array().unwrap();
            let terminal: Vec<&Value> = timeline
                .iter()
                .filter(|h| TERMINAL.contains(&h["to"].as_str().unwrap()))
                .collect();
            assert_eq!(
                terminal.len(),
                1,
                "build {id} ended {} times: {timeline:?}",
                terminal.len()
            );
            ended.insert(id.clone(), at(&terminal[0]["at"]));
            keys.entry(b["idempotencyKey"].as_str().unwrap().to_string())
                .or_default()
                .insert(id.clone());
            for h in timeline {
                let cause = h["cause"].as_str().unwrap_or("");
                if let Some(key) = cause
                    .strip_prefix("request ")
                    .and_then(|c| c.strip_suffix(" coalesced into this build"))
                {
                    keys.entry(key.to_string()).or_default().insert(id.clone());
                }
            }
        }
        let mut expected: BTreeSet<String> = names
            .iter()
            .map(|p| format!("schedule:{p}:2026-12"))
            .collect();
        expected.extend(manual.iter().map(|(p, k)| format!("manual:{p}:{k}")));
        assert_eq!(
            keys.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "the request keys the builds answer"
        );
        for (key, ids) in &keys {
            assert_eq!(ids.len(), 1, "request {key} has builds {ids:?}");
        }

        // One terminal CloudEvent per build. On the webhook, every build's
        // (the sweeper delivers the outbox; a redelivery repeats the same
        // event id, never a second event). In the instances' files, at most
        // one: a line is written after its commit, so the SIGKILLed
        // instance may have lost one (docs/design.md), but none is doubled
        // and each is the event the webhook got.
        let hooked = wait_until(RUN, "every terminal event delivered", || async {
            let by_build = terminal_events(&delivered.lock().unwrap());
            ended
                .keys()
                .all(|id| by_build.contains_key(id))
                .then_some(by_build)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} of {} builds delivered\n{}",
                terminal_events(&delivered.lock().unwrap()).len(),
                ended.len(),
                fleet.logs()
            )
        });
        let hooked_ids: BTreeMap<String, BTreeSet<String>> =
            hooked.iter().map(|(b, (ids, _))| (b.clone(), ids.clone())).collect();
        let once: BTreeMap<String, usize> = ended.keys().map(|id| (id.clone(), 1)).collect();
        assert_eq!(
            hooked_ids.iter().map(|(b, ids)| (b.clone(), ids.len())).collect::<BTreeMap<_, _>>(),
            once,
            "distinct terminal events per build on the webhook"
        );
        let in_files = terminal_events(&fleet.events());
        for (build, (ids, lines)) in &in_files {
            assert_eq!(*lines, 1, "build {build}: {lines} terminal lines in the events files");
            assert_eq!(
                Some(ids),
                hooked_ids.get(build),
                "build {build}: the file's terminal event is the webhook's"
            );
        }
        // A missing line can only be one the killed instance had committed
        // and not yet written: its build ended before the kill.
        let lost: Vec<&String> = ended.keys().filter(|b| !in_files.contains_key(*b)).collect();
        for build in &lost {
            assert!(
                ended[*build] <= killed_at,
                "build {build} ended at {} after the kill ({killed_at}) and its terminal line is missing",
                ended[*build]
            );
        }
        eprintln!(
            "scale: terminal events: {} builds on the webhook ({} deliveries), {} in the files ({} lost in the kill)",
            hooked.len(),
            hooked.values().map(|(_, n)| n).sum::<usize>(),
            in_files.len(),
            lost.len()
        );

        // No version published twice; each build's version published once, by it.
        let publications = sim.arm().publications();
        let mut published: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &publications {
            published
                .entry(p.version_id.to_ascii_lowercase())
                .or_default()
                .push(p.template.clone());
        }
        for (version, by) in &published {
            assert_eq!(by.len(), 1, "{version} published by {by:?}");
        }
        let gallery = format!(
            "/subscriptions/{subscription}/resourcegroups/rg-images/providers/microsoft.compute/galleries/gal_lab/images"
        );
        for b in &builds {
            let id = b["id"].as_str().unwrap();
            let version = format!(
                "{gallery}/{}/versions/{}",
                b["pipeline"].as_str().unwrap(),
                b["version"].as_str().unwrap()
            );
            let by = published
                .get(&version)
                .unwrap_or_else(|| panic!("build {id}'s {version} was never published"));
            assert!(
                by[0].starts_with(&format!("kiln-{id}-a")),
                "{version}: {by:?}"
            );
        }
        assert_eq!(
            publications.len(),
            builds.len(),
            "one publication per build"
        );

        // The cap held across the instances. A build holds a slot from its
        // claim to its terminal write; its first ARM request comes after the
        // claim is durable and the observation that ended it before the
        // terminal write, so [first ARM request, terminal entry] lies inside
        // the time it held a slot: more of those at once than the cap would
        // mean more builds held slots at once than the cap.
        let requests = sim.requests();
        assert_eq!(
            requests.first().map(|r| r.seq),
            Some(1),
            "the request log overflowed"
        );
        let mut first_seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for r in &requests {
            if let Some(rest) = r.path.split("/imageTemplates/kiln-").nth(1) {
                if let Some((id, _)) = rest.rsplit_once("-a") {
                    first_seen.entry(id.to_string()).or_insert(r.sim);
                }
            }
        }
        let intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = ended
            .iter()
            .map(|(id, end)| {
                let start = first_seen
                    .get(id)
                    .unwrap_or_else(|| panic!("build {id} never reached ARM"));
                (*start, *end)
            })
            .collect();
        let most = max_overlap(&intervals);
        assert!(
            most <= CAP,
            "{most} builds active at once, over the cap of {CAP}"
        );

        // The instances: all took invocations; what the kill cut was abandoned
        // and delivered again.
        let invocations = host.invocations();
        let cut: Vec<_> = invocations
            .iter()
            .filter(|r| r.instance_url.as_deref() == Some(killed_url.as_str()) && !r.succeeded())
            .collect();
        // A lost terminal line is one the killed instance committed and had
        // not written when it died: the build ended inside an invocation of
        // it that the kill cut (one such invocation, a sweep, may end many).
        for build in &lost {
            assert!(
                cut.iter().any(|r| r.sim_started <= ended[*build]),
                "build {build} ended at {} with its terminal line missing, but no invocation the kill cut had started by then",
                ended[*build]
            );
        }
        for r in &cut {
            if let InvocationTrigger::Queue { message_id, .. } = &r.trigger {
                assert!(
                    invocations.iter().any(|o| matches!(&o.trigger,
                        InvocationTrigger::Queue { message_id: m, settled: kiln::sim::functions_host::Settled::Completed, .. } if m == message_id)),
                    "message {message_id}, cut by the kill, was never completed"
                );
            }
        }
        let mut served = BTreeMap::<String, usize>::new();
        for r in &invocations {
            if let Some(u) = &r.instance_url {
                *served.entry(u.clone()).or_default() += 1;
            }
        }
        assert!(
            fleet
                .procs
                .iter()
                .all(|p| served.get(&p.url).is_some_and(|n| *n > 0)),
            "an instance served nothing: {served:?}"
        );
        // Later firings in the cycle find every schedule checked (and request
        // nothing the assertions above would have caught).
        let later_firings = firings(&host)
            .into_iter()
            .filter(|r| r.sim_started >= fires + chrono::Duration::minutes(15))
            .count();
        assert!(
            later_firings >= 1,
            "the schedule timer fired once more in the cycle"
        );

        let arm: Vec<&str> = requests
            .iter()
            .map(|r| r.path.as_str())
            .filter(|p| !p.starts_with("/servicebus") && !p.starts_with("/blob"))
            .collect();
        let on = |part: &str| arm.iter().filter(|p| p.contains(part)).count();
        let (on_templates, operations, gallery) = (
            on("/imageTemplates/"),
            on("/operations/"),
            on("/galleries/"),
        );
        let n = builds.len();

        // Each definition's versions as the gallery lists them: each build's
        // version there once.
        let mut by_pipeline: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for b in &builds {
            by_pipeline
                .entry(b["pipeline"].as_str().unwrap())
                .or_default()
                .push(b["version"].as_str().unwrap());
        }
        for (pipeline, versions) in &by_pipeline {
            let listed = get_bearer_json(
                &http,
                &format!(
                    "{}/subscriptions/{subscription}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/{pipeline}/versions?api-version=2025-03-03",
                    sim.url()
                ),
            )
            .await;
            let names: Vec<&str> = listed["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect();
            for v in versions {
                assert_eq!(
                    names.iter().filter(|n| *n == v).count(),
                    1,
                    "{pipeline} {v} in {names:?}"
                );
            }
            assert_eq!(names.len(), versions.len(), "{pipeline}: {names:?}");
        }

        // Every attempt's template retired, the killed instance's included.
        let templates: Vec<String> = builds
            .iter()
            .map(|b| {
                format!(
                    "{}/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.VirtualMachineImages/imageTemplates/kiln-{}-a{}?api-version=2025-10-01",
                    sim.url(),
                    sim.options().resource_group,
                    b["id"].as_str().unwrap(),
                    b["attempt"]
                )
            })
            .collect();
        let left = std::sync::Mutex::new(templates);
        wait_until(RUN, "every template to be retired", || async {
            let pending = left.lock().unwrap().clone();
            let mut still = Vec::new();
            for url in pending {
                let r = http.get(&url).bearer_auth("test").send().await;
                if !r.is_ok_and(|r| r.status() == 404) {
                    still.push(url);
                }
            }
            let done = still.is_empty();
            *left.lock().unwrap() = still;
            done.then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", left.lock().unwrap()));

        // How the invocations went, per function.
        let mut calls = BTreeMap::<&str, (usize, usize)>::new();
        for r in &invocations {
            let e = calls.entry(r.function.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(!r.succeeded());
        }
        eprintln!(
            "scale: {n} builds on {INSTANCES} instances (cap {CAP}, most active at once {most}) in {:.1} s: {:.1} builds per minute (wall)",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64() * 60.0
        );
        eprintln!(
            "scale: ARM requests per build: {:.1} ({} in all: {on_templates} on templates, {operations} on operations, {gallery} on the gallery, {} other)",
            arm.len() as f64 / n as f64,
            arm.len(),
            arm.len() - on_templates - operations - gallery
        );
        eprintln!(
            "scale: store transactions per build: {}",
            store.transactions_per_build(n)
        );
        let cycle_firing = firings(&host)
            .into_iter()
            .find(|r| r.sim_started >= fires)
            .and_then(|r| r.status)
            .map_or("no answer".to_string(), |s| s.to_string());
        eprintln!(
            "scale: the cycle's timer firing answered {cycle_firing}, with 2 more at once; duplicates {outcomes:?}; {} patch_tuesday firings after"
            , later_firings
        );
        eprintln!(
            "scale: instance 0 SIGKILLed at {killed_at} with {half} builds ended, {} invocations cut, replaced on a new port",
            cut.len()
        );
        eprintln!("scale: invocations (all, failed) per function: {calls:?}; per instance: {served:?}");
        host.stop().await;
    })
    .await;
}
