//! Builds through the whole factory: admission, the state machine, the local provider.

use std::time::Duration;

use serde_json::json;

use crate::harness::{bounded, tiny, Factory, Options};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_goes_through_the_queue_and_publishes_version_1_0_0() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let id = f.build("tiny", None).await;
        let v = f.wait_terminal(&id, LIMIT).await;
        assert_eq!(v["state"], "succeeded", "{v:#}");
        assert_eq!(v["version"], "1.0.0");
        let states: Vec<&str> = v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["to"].as_str().unwrap())
            .collect();
        assert_eq!(states.first(), Some(&"queued"));
        assert_eq!(states.last(), Some(&"succeeded"));
        assert!(v["secondsInState"]["queued"].as_f64().is_some());
        // The next build takes the next patch version.
        let id2 = f.build("tiny", None).await;
        assert_eq!(f.wait_terminal(&id2, LIMIT).await["version"], "1.0.1");
        let gallery = f.get("/api/gallery").await;
        let versions: Vec<&str> = gallery[0]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["1.0.0", "1.0.1"]);
        assert_eq!(gallery[0]["versions"][0]["tags"]["kiln.build"], json!(id));
        let page = f
            .http
            .get(format!("{}/api/dashboard", f.api))
            .send()
            .await
            .unwrap();
        assert!(page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        // The page draws these builds from the JSON API (tests/app/dashboard.rs
        // follows it in a browser); here: it is the dashboard, with its script.
        let page = page.text().await.unwrap();
        assert!(page.contains("/api/ui/assets/app.js?v="), "{page}");
        f.stop().await;
    })
    .await;
}

/// The same factory with its state in Table Storage (Azurite): one switch,
/// the same behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_factory_keeps_its_state_in_table_storage_when_asked_to() {
    bounded(async {
        let azurite = kiln::store::table::testing::Azurite::start();
        let f = Factory::start(Options {
            env: vec![
                ("KILN_STORE", "table".into()),
                (
                    "KILN_TABLE_CONNECTION",
                    azurite.connection_string().expose().to_string(),
                ),
            ],
            ..Options::default()
        })
        .await;
        let id = f.build("tiny", None).await;
        let v = f.wait_terminal(&id, LIMIT).await;
        assert_eq!(v["state"], "succeeded", "{v:#}");
        assert_eq!(v["version"], "1.0.0");
        let id2 = f.build("tiny", None).await;
        assert_eq!(f.wait_terminal(&id2, LIMIT).await["version"], "1.0.1");
        // The builds are in the table, not in the data folder's database.
        let rows: i64 = crate::harness::db_of(f.dir.path())
            .with(|c| c.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(rows, 0);
        let listed = f.get("/api/builds").await;
        assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_delivered_twenty_times_at_once_yields_one_build() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let api = f.api.clone();
            tasks.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{api}/api/builds"))
                    .json(&json!({"pipeline": "tiny", "idempotencyKey": "storm-1"}))
                    .send()
                    .await
                    .unwrap();
                let v: serde_json::Value = r.json().await.unwrap();
                v["build"].as_str().unwrap().to_string()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{ids:?}");
        let builds = f.get("/api/builds").await;
        assert_eq!(builds.as_array().unwrap().len(), 1);
        f.wait_terminal(&ids[0], LIMIT).await;
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transient_failures_then_success_ends_succeeded_on_attempt_3() {
    bounded(async {
        let faults = r#"[{"pipeline": "flaky", "kind": "fail-transient", "times": 2}]"#.to_string();
        let f = Factory::start(Options {
            pipelines: vec![tiny("flaky", json!({}))],
            env: vec![("KILN_LOCAL_FAULTS", faults)],
            ..Options::default()
        })
        .await;
        let id = f.build("flaky", None).await;
        let v = f.wait_terminal(&id, LIMIT).await;
        assert_eq!(v["state"], "succeeded", "{v:#}");
        assert_eq!(v["build"]["attempt"], 3);
        assert_eq!(v["version"], "1.0.0", "retries reuse the version");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_failure_names_its_category_and_the_failing_step() {
    bounded(async {
        let (name, mut doc) = tiny("broken", json!({}));
        doc["properties"]["customize"] = json!([{"type": "Shell", "name": "install-agent", "inline": ["echo fetching agent", "exit 3"]}]);
        let f = Factory::start(Options {
            pipelines: vec![(name, doc)],
            ..Options::default()
        })
        .await;
        let id = f.build("broken", None).await;
        let v = f.wait_terminal(&id, LIMIT).await;
        assert_eq!(v["state"], "failed");
        assert_eq!(v["build"]["state"]["category"], "customizer");
        let msg = v["build"]["state"]["message"].as_str().unwrap();
        assert!(msg.contains("install-agent"), "{msg}");
        assert!(
            msg.contains("fetching agent"),
            "the last lines of output are in the message: {msg}"
        );
        assert_eq!(
            v["build"]["attempt"], 1,
            "permanent failures are not retried"
        );
        // The customization log is one call away, not in a hidden resource group.
        let log = f
            .http
            .get(format!("{}/api/builds/{id}/log", f.api))
            .send()
            .await
            .unwrap();
        assert_eq!(log.status(), 200);
        let offset: usize = log.headers()["x-kiln-log-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let text = log.text().await.unwrap();
        assert!(text.contains("fetching agent"), "{text}");
        assert_eq!(offset, text.len());
        let rest = f
            .http
            .get(format!("{}/api/builds/{id}/log?offset={offset}", f.api))
            .send()
            .await
            .unwrap();
        assert_eq!(rest.text().await.unwrap(), "", "nothing new after the end");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_step_ends_failed_as_timeout() {
    bounded(async {
        let faults = r#"[{"pipeline": "hangs", "kind": "hang"}]"#.to_string();
        let f = Factory::start(Options {
            pipelines: vec![tiny("hangs", json!({"build": {"stepTimeoutMinutes": 1}}))],
            env: vec![("KILN_LOCAL_FAULTS", faults)],
            ..Options::default()
        })
        .await;
        let id = f.build("hangs", None).await;
        let v = f.wait_terminal(&id, Duration::from_secs(150)).await;
        assert_eq!(v["state"], "failed", "{v:#}");
        assert_eq!(v["build"]["state"]["category"], "timeout", "{v:#}");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_build_and_it_ends_canceled() {
    bounded(async {
        let faults = r#"[{"pipeline": "slow", "kind": "slow", "seconds": 30}]"#.to_string();
        let f = Factory::start(Options {
            pipelines: vec![tiny("slow", json!({}))],
            env: vec![("KILN_LOCAL_FAULTS", faults)],
            ..Options::default()
        })
        .await;
        let id = f.build("slow", None).await;
        // Wait until the provider runs it, then cancel.
        f.until("the build runs", LIMIT, || async {
            (f.build_state(&id).await["state"] == "running").then_some(())
        })
        .await;
        let (status, _) = f
            .post(&format!("/api/builds/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 202);
        let v = f.wait_terminal(&id, Duration::from_secs(20)).await;
        assert_eq!(v["state"], "canceled", "{v:#}");
        let states: Vec<&str> = v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["to"].as_str().unwrap())
            .collect();
        assert!(states.contains(&"canceling"), "{states:?}");
        // Canceling again is refused: the build already ended.
        let (status, _) = f
            .post(&format!("/api/builds/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 409);
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_build_per_pipeline_runs_at_a_time_and_queued_requests_coalesce() {
    bounded(async {
        // The first build is held long enough for the next two requests to
        // be admitted while it runs, even on a loaded machine.
        let faults =
            r#"[{"pipeline": "tiny", "kind": "slow", "seconds": 8, "times": 1}]"#.to_string();
        let f = Factory::start(Options {
            env: vec![("KILN_LOCAL_FAULTS", faults)],
            ..Options::default()
        })
        .await;
        let first = f.build("tiny", Some("a")).await;
        let second = f.build("tiny", Some("b")).await;
        let third = f.build("tiny", Some("c")).await;
        assert_ne!(first, second);
        assert_eq!(
            second, third,
            "a request for a pipeline with a queued build joins it"
        );
        assert_eq!(
            f.get(&format!("/api/builds/{second}")).await["state"],
            "queued"
        );
        let v1 = f.wait_terminal(&first, LIMIT).await;
        let v2 = f.wait_terminal(&second, LIMIT).await;
        assert_eq!(v1["state"], "succeeded");
        assert_eq!(v2["state"], "succeeded");
        let end_first = v1["timeline"].as_array().unwrap().last().unwrap()["at"]
            .as_str()
            .unwrap()
            .to_string();
        let start_second = v2["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["to"] == "submitting")
            .unwrap()["at"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            start_second >= end_first,
            "second started {start_second} before first ended {end_first}"
        );
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_messages_are_dead_lettered_at_first_delivery_and_nothing_else_changes() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let queue = f.queue.clone();
        let now = chrono::Utc::now();
        queue
            .send("build-requests", "bad-json", "{not json", now, now)
            .unwrap();
        queue
            .send(
                "build-requests",
                "unknown-pipeline",
                r#"{"pipeline":"nope"}"#,
                now,
                now,
            )
            .unwrap();
        let big = format!(r#"{{"pipeline":"tiny","reason":"{}"}}"#, "x".repeat(20_000));
        queue
            .send("build-requests", "too-big", &big, now, now)
            .unwrap();
        let good = f.build("tiny", None).await;
        let letters = f
            .until("three messages are dead-lettered", LIMIT, || async {
                let letters = f.get("/api/deadletters").await;
                let letters = letters.as_array().unwrap();
                (letters.len() >= 3).then(|| letters.clone())
            })
            .await;
        assert_eq!(letters.len(), 3, "{letters:#?}");
        for l in &letters {
            assert_eq!(
                l["deliveryCount"], 1,
                "no retries for what cannot succeed: {l}"
            );
        }
        let reason = |id: &str| {
            letters.iter().find(|l| l["messageId"] == id).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(
            reason("bad-json").contains("not a build request"),
            "{}",
            reason("bad-json")
        );
        assert!(reason("unknown-pipeline").contains("`nope` is not a deployed pipeline"));
        assert!(reason("too-big").contains("limit"));
        assert_eq!(f.wait_terminal(&good, LIMIT).await["state"], "succeeded");
        assert_eq!(f.get("/api/builds").await.as_array().unwrap().len(), 1);
        // The API refuses an unknown pipeline at once.
        let (status, v) = f.post("/api/builds", &json!({"pipeline": "nope"})).await;
        assert_eq!(status, 404, "{v}");
        f.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_finishes_a_build_whose_poll_messages_were_lost() {
    bounded(async {
        use std::sync::Arc;

        use kiln::app::FunctionName;
        use kiln::ports::{Clock, ManualClock};
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let opts = Options {
            clock: Some(clock.clone()),
            ..Options::default()
        };
        let rt = crate::harness::runtime(dir.path(), &opts).await;
        let q = rt.queue.clone();
        let now = clock.now();
        q.send("build-requests", "m1", r#"{"pipeline":"tiny"}"#, now, now)
            .unwrap();
        crate::triggers::drain_requests(&rt, now).await;
        let b = rt
            .app
            .store
            .list(&Default::default())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(b.state.name(), "submitting");
        // Every follow-up poll is lost.
        assert!(crate::harness::lose_polls(dir.path()) > 0);
        rt.provider
            .wait_run(&b.template_name(), Duration::from_secs(30))
            .await
            .unwrap();
        // Not yet overdue: the sweeper leaves it alone.
        crate::triggers::tick(&rt.app, FunctionName::BuildSweeper).await;
        assert_eq!(
            rt.app
                .store
                .get(&b.id)
                .await
                .unwrap()
                .unwrap()
                .0
                .state
                .name(),
            "submitting"
        );
        clock.advance(chrono::Duration::minutes(2));
        crate::triggers::tick(&rt.app, FunctionName::BuildSweeper).await;
        let (after, _) = rt.app.store.get(&b.id).await.unwrap().unwrap();
        assert_eq!(after.state.name(), "succeeded", "{after:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_scheduled_before_the_build_moved_on_is_dropped() {
    bounded(async {
        use kiln::app::{invoke, FunctionName, Invocation};

        let dir = tempfile::tempdir().unwrap();
        let rt = crate::harness::runtime(dir.path(), &Options::default()).await;
        let now = chrono::Utc::now();
        let q = rt.queue.clone();
        q.send("build-requests", "m1", r#"{"pipeline":"tiny"}"#, now, now)
            .unwrap();
        crate::triggers::drain_requests(&rt, now).await;
        let b = rt
            .app
            .store
            .list(&Default::default())
            .await
            .unwrap()
            .remove(0);
        let version = rt.app.store.get(&b.id).await.unwrap().unwrap().1;
        let poll = |v: i64| {
            let body = json!({"buildId": b.id, "rowVersion": v}).to_string();
            Invocation {
                data: serde_json::Map::from_iter([(
                    "msg".to_string(),
                    json!(serde_json::to_string(&body).unwrap()),
                )]),
                metadata: serde_json::Map::from_iter([(
                    "MessageId".to_string(),
                    json!(format!("poll:{v}")),
                )]),
            }
        };
        let stale = invoke(&rt.app, FunctionName::BuildPolls, poll(version - 1))
            .await
            .unwrap();
        assert!(stale.logs[0].contains("stale poll"), "{:?}", stale.logs);
        assert_eq!(
            rt.app.store.get(&b.id).await.unwrap().unwrap().1,
            version,
            "a stale poll writes nothing"
        );
        let current = invoke(&rt.app, FunctionName::BuildPolls, poll(version))
            .await
            .unwrap();
        assert!(!current.logs[0].contains("stale"), "{:?}", current.logs);
    })
    .await;
}
