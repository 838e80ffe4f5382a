//! kiln's Azure face on the simulator: what one build costs in ARM requests,
//! and how late kiln sees a run end.
//!
//! Starts the simulator at a clock factor, `kiln serve` on the azure provider
//! on the sim's clock, and the simulated Functions host driving it (the same
//! set-up as `tests/azure/harness.rs`), then runs N builds of the tiny
//! pipeline one after the other, each from its CI request to kiln's read that
//! confirms the template is gone. For each build it reports:
//!
//! - **ARM requests** attributable to the build: management-plane and blob
//!   requests inside the build's window (the CI's send up to the read that
//!   confirms the template's deletion) whose path names the build's template
//!   (`…/imageTemplates/kiln-<build>-a<n>[/run|/runOutputs…]`, and its
//!   staging group `IT_<rg>_<template>_<hex>`, whose storage list names it
//!   too), its gallery version (`…/versions/<version>`), an ARM operation
//!   (`…/operations/<id>`: with one build at a time, only this build's), or
//!   the staging blob (`/blob/…`, the same). Every other management request
//!   in the window (timers' Resource Graph and marketplace reads, gallery
//!   lists) is shown apart as "other ARM", not counted.
//! - **Service Bus**, apart: kiln's sends (`POST /{queue}/messages`, the
//!   CI's own build request not included) and the host's receives
//!   (`…/messages/head`: deliveries, and empty long-polls, which cost wall
//!   time, not work) and settlements (complete, abandon, renew).
//! - **Seen late**: kiln's timeline entry `succeeded` minus the sim's
//!   `Succeeded` event of the run, in simulated seconds.
//! - **Deleted after**: from that `Succeeded` event to kiln's DELETE of the
//!   template, and to the template being gone in the sim.
//!
//! Prints the median and the max over the N builds against the targets (at
//! most 40 ARM requests per build, at most 60 s seen late).
//!
//! `cargo bench --bench azure_build [-- --factor 120 --builds 5 | --quick]`
//! (also `KILN_BENCH_FACTOR`, `KILN_BENCH_BUILDS`; `--quick` is one build;
//! `--distributing-secs S` shortens or lengthens the sim's Distributing phase;
//! `KILN_BENCH_LOG=1` lists the attributable requests of the last build).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use kiln::ports::Clock;
use kiln::sim::arm::BuildProfile;
use kiln::sim::factory::{Factory, FactoryOptions};
use kiln::sim::faults::{Outcome, RecordedRequest};
use kiln::sim::functions_host::HostHandle;
use kiln::sim::server::{Sim, SimHandle, SimOptions};

const TARGET_ARM: usize = 40;
const TARGET_LATE_SECS: f64 = 60.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Args {
    factor: u32,
    builds: usize,
    /// Overrides the sim profile's 6-minute Distributing phase (a what-if).
    distributing_secs: Option<u64>,
}

fn args() -> Args {
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut factor = env_num("KILN_BENCH_FACTOR").unwrap_or(120) as u32;
    let mut builds = env_num("KILN_BENCH_BUILDS").unwrap_or(5) as usize;
    let mut distributing_secs = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a whole number"))
        };
        match a.as_str() {
            "--factor" => factor = value("--factor") as u32,
            "--builds" => builds = value("--builds") as usize,
            "--quick" => builds = 1,
            "--distributing-secs" => distributing_secs = Some(value("--distributing-secs")),
            // `cargo bench` passes `--bench`; a filter string means nothing here.
            _ => {}
        }
    }
    assert!(
        factor >= 1 && builds >= 1,
        "--factor and --builds must be at least 1"
    );
    Args {
        factor,
        builds,
        distributing_secs,
    }
}

/// The shipped tiny pipeline on the sim's subscription, with an Azure-sized
/// build timeout (the sim plays a 30-minute AIB build).
fn tiny(subscription: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("pipelines/tiny.json"))
        .unwrap()
        .replace("00000000-0000-0000-0000-000000000000", subscription);
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["buildTimeoutInMinutes"] = json!(60);
    doc
}

struct World {
    sim: SimHandle,
    host: HostHandle,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The factory on the simulator, as `kiln sim --factory` runs it, with the
/// tiny pipeline on the sim's subscription.
async fn start(factor: u32) -> World {
    let sim = Sim::start(SimOptions::new(factor)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc = tiny(&sim.options().subscription_id);
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("pipelines/tiny.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let factory = Factory::start(
        &sim,
        FactoryOptions {
            data_dir: dir.path().join("data"),
            pipelines_dir: dir.path().join("pipelines"),
            handlers_dir: repo().join("handlers"),
            host_json: repo().join("host.json"),
            api_port: 0,
            extra_env: vec![("KILN_EVENTS_KEY".into(), "sim-bench-events-key".into())],
        },
    )
    .await
    .unwrap();
    World {
        sim,
        host: factory.host,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

/// What one build cost and how late it was seen.
struct Measure {
    arm: usize,
    other_arm: usize,
    sb_sends: usize,
    deliveries: usize,
    empty_receives: usize,
    settles: usize,
    late: f64,
    delete_asked: f64,
    gone: f64,
    /// Attributable requests by shape (`GET …/imageTemplates/{template}`).
    shapes: BTreeMap<String, usize>,
    /// The window's other ARM requests by shape.
    other_shapes: BTreeMap<String, usize>,
    listing: Vec<String>,
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

fn is_sb(r: &RecordedRequest) -> bool {
    r.path.starts_with("/servicebus")
}

/// The request's path with the build's names replaced, for grouping.
fn shape(r: &RecordedRequest, template: &str, version: &str) -> String {
    let mut p = path_only(&r.path).to_string();
    if let Some(i) = p.find("/resourceGroups/IT_") {
        let end = p[i + 16..].find('/').map_or(p.len(), |j| i + 16 + j);
        p.replace_range(i..end, "/resourceGroups/{staging}");
    }
    if let Some(i) = p.find("/operations/") {
        p.replace_range(i + 12.., "{id}");
    }
    if p.starts_with("/blob/") {
        p = "/blob/{account}/packerlogs…".into();
    }
    let p = p
        .replace(template, "{template}")
        .replace(&format!("/versions/{version}"), "/versions/{version}");
    let p = p
        .split_once("/providers/")
        .map_or(p.clone(), |(_, rest)| format!("…/{rest}"));
    format!("{} {p}", r.method)
}

fn attributable(r: &RecordedRequest, template: &str, version: &str) -> bool {
    let p = path_only(&r.path);
    !is_sb(r)
        && (p.contains(template)
            || (p.contains("/galleries/") && p.ends_with(&format!("/versions/{version}")))
            || p.contains("/operations/")
            || p.starts_with("/blob/"))
}

async fn kiln_build(w: &World, id: &str) -> Option<Value> {
    let url = format!("{}/api/builds/{id}", w.host.app_url());
    w.http.get(url).send().await.ok()?.json().await.ok()
}

async fn build_id(w: &World, key: &str) -> Option<String> {
    let list: Value = w
        .http
        .get(format!("{}/api/builds", w.host.app_url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let builds = list.as_array().or_else(|| list["builds"].as_array())?;
    builds.iter().find_map(|b| {
        let b = if b.get("build").is_some() {
            &b["build"]
        } else {
            b
        };
        let stored = b["idempotencyKey"].as_str().unwrap_or_default();
        (stored == key || stored.ends_with(&format!(":{key}")))
            .then(|| b["id"].as_str().unwrap().to_string())
    })
}

fn template_exists(w: &World, name: &str) -> bool {
    let state = w.sim.arm().state();
    let suffix = format!("/imagetemplates/{}", name.to_ascii_lowercase());
    state["templates"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t["id"]
                .as_str()
                .is_some_and(|id| id.to_ascii_lowercase().ends_with(&suffix))
        })
    })
}

async fn one_build(w: &World, i: usize, deadline: Duration) -> Measure {
    let key = format!("bench-{i}");
    let first_seq = w.sim.requests().last().map_or(0, |r| r.seq);
    let sent = w
        .http
        .post(format!("{}/build-requests/messages", w.sim.service_bus_url()))
        .bearer_auth("ci-pipeline")
        .header("BrokerProperties", json!({ "MessageId": key }).to_string())
        .header("Content-Type", "application/json")
        .body(
            json!({ "pipeline": "tiny", "reason": "azure bench", "requestedBy": "ci@sim", "idempotencyKey": key })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201, "sending the build request");
    let end = Instant::now() + deadline;
    let step = Duration::from_millis(20);
    let fail = |what: &str| -> ! { panic!("build {i}: timed out waiting for {what}") };

    let id = loop {
        if let Some(id) = build_id(w, &key).await {
            break id;
        }
        if Instant::now() > end {
            fail("kiln to admit the request");
        }
        tokio::time::sleep(step).await;
    };
    let template = format!("kiln-{id}-a1");

    // Until kiln says succeeded; the run's events are kept as they are read,
    // since the sim forgets them with the template.
    let mut events = Vec::new();
    let detail = loop {
        let e = w.sim.arm().template_events(&template);
        if !e.is_empty() {
            events = e;
        }
        if let Some(d) = kiln_build(w, &id).await {
            match d["state"].as_str().unwrap_or_default() {
                "succeeded" => break d,
                "failed" | "canceled" => panic!("build {i} ended {}: {d}", d["state"]),
                _ => {}
            }
        }
        if Instant::now() > end {
            fail("the build to succeed");
        }
        tokio::time::sleep(step).await;
    };
    let e = w.sim.arm().template_events(&template);
    if !e.is_empty() {
        events = e;
    }
    let version = detail["version"].as_str().unwrap().to_string();
    let ran_ok = events
        .iter()
        .find(|e| e.run_state == "Succeeded")
        .unwrap_or_else(|| panic!("build {i}: the sim shows no Succeeded run: {events:?}"))
        .at;
    let seen = detail["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|h| h["to"] == "succeeded"))
        .and_then(|h| h["at"].as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("build {i}: no `succeeded` in the timeline: {detail}"))
        .with_timezone(&Utc);

    // Until the template is gone and kiln has read that it is (the cleanup
    // job's last request): the build's window ends there.
    let mut gone_at = None;
    let last_seq = loop {
        if gone_at.is_none() && !template_exists(w, &template) {
            gone_at = Some(w.sim.clock().now());
        }
        // (A 404 before the deletion is kiln's look before it creates the template.)
        let requests = w.sim.requests();
        let deleted = requests.iter().find(|r| {
            r.method == "DELETE"
                && path_only(&r.path).ends_with(&format!("/imageTemplates/{template}"))
                && r.outcome == Outcome::Status(202)
        });
        let confirmed = deleted.and_then(|d| {
            requests.iter().find(|r| {
                r.seq > d.seq
                    && r.method == "GET"
                    && path_only(&r.path).ends_with(&format!("/imageTemplates/{template}"))
                    && r.outcome == Outcome::Status(404)
            })
        });
        if let Some(r) = confirmed {
            break r.seq;
        }
        if Instant::now() > end {
            fail("kiln to confirm the template's deletion");
        }
        tokio::time::sleep(step).await;
    };
    let window: Vec<RecordedRequest> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.seq > first_seq && r.seq <= last_seq)
        .collect();
    let delete_asked = window
        .iter()
        .find(|r| {
            r.method == "DELETE"
                && path_only(&r.path).ends_with(&format!("/imageTemplates/{template}"))
                && r.outcome == Outcome::Status(202)
        })
        .map(|r| r.sim)
        .unwrap_or_else(|| panic!("build {i}: kiln never deleted {template}"));

    let mut m = Measure {
        arm: 0,
        other_arm: 0,
        sb_sends: 0,
        deliveries: 0,
        empty_receives: 0,
        settles: 0,
        late: secs(ran_ok, seen),
        delete_asked: secs(ran_ok, delete_asked),
        gone: secs(ran_ok, gone_at.unwrap_or(delete_asked)),
        shapes: BTreeMap::new(),
        other_shapes: BTreeMap::new(),
        listing: Vec::new(),
    };
    let mut ci_send_skipped = false;
    for r in &window {
        let p = path_only(&r.path);
        if is_sb(r) {
            if r.method == "POST" && p.ends_with("/messages") {
                if !ci_send_skipped && p.contains("/build-requests/") {
                    ci_send_skipped = true;
                } else {
                    m.sb_sends += 1;
                }
            } else if p.ends_with("/messages/head") {
                match r.outcome {
                    Outcome::Status(201) => m.deliveries += 1,
                    Outcome::Status(_) | Outcome::Dropped => m.empty_receives += 1,
                }
            } else {
                m.settles += 1;
            }
        } else if attributable(r, &template, &version) {
            m.arm += 1;
            *m.shapes.entry(shape(r, &template, &version)).or_default() += 1;
            m.listing.push(format!(
                "{:>7.1} s  {} {} -> {:?}",
                secs(events.first().map_or(r.sim, |e| e.at), r.sim),
                r.method,
                path_only(&r.path),
                r.outcome
            ));
        } else {
            m.other_arm += 1;
            *m.other_shapes
                .entry(shape(r, &template, &version))
                .or_default() += 1;
        }
    }
    m
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn print_shapes(shapes: &BTreeMap<String, usize>) {
    let mut shapes: Vec<_> = shapes.iter().collect();
    shapes.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
    for (s, n) in shapes {
        println!("    {n:>3}  {s}");
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Generous: a whole build with its cleanup is about 35 sim minutes.
    let deadline = Duration::from_secs((4 * 3600 / u64::from(a.factor)).max(60));
    let wall = Instant::now();
    let ms: Vec<Measure> = rt.block_on(async {
        let w = start(a.factor).await;
        if let Some(secs) = a.distributing_secs {
            w.sim.arm().set_profile(BuildProfile {
                distributing_secs: secs,
                ..BuildProfile::default()
            });
        }
        let mut ms = Vec::new();
        for i in 0..a.builds {
            ms.push(one_build(&w, i, deadline).await);
        }
        ms
    });
    let wall = wall.elapsed();

    println!(
        "azure_build: tiny pipeline on the simulator, clock factor {}, {} build(s) in sequence{}, {:.0} s wall",
        a.factor,
        a.builds,
        a.distributing_secs
            .map(|s| format!(", Distributing {s} s"))
            .unwrap_or_default(),
        wall.as_secs_f64()
    );
    println!("  build  ARM  other  SB sends  deliveries  empty rx  settles  seen late  delete asked  gone");
    for (i, m) in ms.iter().enumerate() {
        println!(
            "  {i:>5}  {:>3}  {:>5}  {:>8}  {:>10}  {:>8}  {:>7}  {:>7.1} s  {:>10.1} s  {:>5.1} s",
            m.arm,
            m.other_arm,
            m.sb_sends,
            m.deliveries,
            m.empty_receives,
            m.settles,
            m.late,
            m.delete_asked,
            m.gone
        );
    }
    let col = |f: fn(&Measure) -> f64| ms.iter().map(f).collect::<Vec<_>>();
    for (name, pick) in [
        ("median", median as fn(Vec<f64>) -> f64),
        ("max", |v: Vec<f64>| max(&v)),
    ] {
        println!(
            "  {name:>6} {:>4.0}  {:>5.0}  {:>8.0}  {:>10.0}  {:>8.0}  {:>7.0}  {:>7.1} s  {:>10.1} s  {:>5.1} s",
            pick(col(|m| m.arm as f64)),
            pick(col(|m| m.other_arm as f64)),
            pick(col(|m| m.sb_sends as f64)),
            pick(col(|m| m.deliveries as f64)),
            pick(col(|m| m.empty_receives as f64)),
            pick(col(|m| m.settles as f64)),
            pick(col(|m| m.late)),
            pick(col(|m| m.delete_asked)),
            pick(col(|m| m.gone)),
        );
    }
    let arm_max = ms.iter().map(|m| m.arm).max().unwrap();
    let late_max = max(&col(|m| m.late));
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  targets: ARM requests per build <= {TARGET_ARM} (max {arm_max}: {}); seen late <= {TARGET_LATE_SECS:.0} s (max {late_max:.1} s: {})",
        verdict(arm_max <= TARGET_ARM),
        verdict(late_max <= TARGET_LATE_SECS)
    );
    let last = ms.last().unwrap();
    println!("  attributable requests of the last build, by shape:");
    print_shapes(&last.shapes);
    println!("  other ARM requests in its window (not counted), by shape:");
    print_shapes(&last.other_shapes);
    if std::env::var_os("KILN_BENCH_LOG").is_some() {
        println!(
            "  attributable requests of the last build (sim seconds from the run's first event):"
        );
        for l in &last.listing {
            println!("    {l}");
        }
    }
}
