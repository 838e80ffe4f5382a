//! Triggers: the schedule driven across a month by a manual clock, base-image
//! updates in the local catalog, and inbound events on the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};
use tower::ServiceExt;

use kiln::app::{invoke, App, FunctionName, Invocation};
use kiln::host::wiring::LocalRuntime;
use kiln::ports::{Clock, ManualClock};
use kiln::providers::local::BaseFrom;

use crate::harness::{bounded, repo, runtime, tiny, Options};

pub async fn tick(app: &App, f: FunctionName) {
    let data = serde_json::Map::from_iter([(
        "timer".to_string(),
        json!({"Schedule": {"AdjustForDST": true}, "IsPastDue": false}),
    )]);
    invoke(
        app,
        f,
        Invocation {
            data,
            metadata: Default::default(),
        },
    )
    .await
    .unwrap();
}

/// Delivers every visible build request to the `build_requests` function.
pub async fn drain_requests(rt: &LocalRuntime, now: DateTime<Utc>) {
    let q = rt.queue.clone();
    while let Some(d) = q
        .receive("build-requests", now, Duration::seconds(60))
        .unwrap()
    {
        let data = serde_json::Map::from_iter([(
            "msg".to_string(),
            json!(serde_json::to_string(&d.body).unwrap()),
        )]);
        let metadata = serde_json::Map::from_iter([
            ("MessageId".to_string(), json!(d.message_id)),
            ("DeliveryCount".to_string(), json!(d.delivery_count)),
        ]);
        invoke(
            &rt.app,
            FunctionName::BuildRequests,
            Invocation { data, metadata },
        )
        .await
        .unwrap();
        q.complete(&d).unwrap();
    }
}

async fn builds_by_pipeline(app: &App) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for b in app.store.list(&Default::default()).await.unwrap() {
        out.entry(b.pipeline.clone())
            .or_default()
            .push(serde_json::to_value(&b).unwrap());
    }
    out
}

fn patch_tuesday(offset: i32, blackouts: Value) -> Value {
    json!({"triggers": {"schedule": {"patchTuesday": {"offsetDays": offset, "at": "03:00", "timeZone": "Europe/Berlin"}, "blackouts": blackouts}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_ticks_builds_each_pipeline_once_per_cycle_with_blackouts_and_outages() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap(),
        ));
        let opts = Options {
            pipelines: vec![
                tiny("on-time", patch_tuesday(0, json!([]))),
                tiny("day-after", patch_tuesday(1, json!([]))),
                // Second Tuesday of December 2026 is the 8th: this one is blacked out until the 10th.
                tiny(
                    "frozen",
                    patch_tuesday(0, json!([{"from": "2026-12-07", "to": "2026-12-10"}])),
                ),
            ],
            clock: Some(clock.clone()),
            ..Options::default()
        };
        let rt = runtime(dir.path(), &opts).await;
        // A tick every 15 minutes for five weeks, except while the host is down
        // (2026-12-07T00:00 to 2026-12-09T12:00, across the 8th's and 9th's firings).
        let outage = (
            Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 9, 12, 0, 0).unwrap(),
        );
        let end = Utc.with_ymd_and_hms(2027, 1, 4, 0, 0, 0).unwrap();
        while clock.now() < end {
            let now = clock.now();
            if !(now >= outage.0 && now < outage.1) {
                tick(&rt.app, FunctionName::PatchTuesday).await;
                drain_requests(&rt, now).await;
            }
            clock.advance(Duration::minutes(15));
        }
        let builds = builds_by_pipeline(&rt.app).await;
        for p in ["on-time", "day-after", "frozen"] {
            let bs = builds
                .get(p)
                .unwrap_or_else(|| panic!("{p} never built: {builds:#?}"));
            assert_eq!(
                bs.len(),
                1,
                "{p}: exactly one build for cycle 2026-12: {bs:#?}"
            );
            assert_eq!(
                bs[0]["trigger"],
                json!({"kind": "schedule", "cycle": "2026-12"}),
                "{p}"
            );
        }
        let created = |p: &str| {
            builds[p][0]["createdAt"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
        };
        // The outage swallowed the 8th 02:00 UTC firing: caught up once, right after it.
        assert_eq!(created("on-time"), outage.1);
        // Day after: Dec 9 03:00 Berlin = 02:00 UTC, also inside the outage → caught up at its end.
        assert_eq!(created("day-after"), outage.1);
        // The blackout deferred the build to the first day after the window (Dec 11, 03:00 Berlin).
        assert_eq!(
            created("frozen"),
            Utc.with_ymd_and_hms(2026, 12, 11, 2, 0, 0).unwrap()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fires_on_time_when_the_host_is_up() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
        ));
        let opts = Options {
            pipelines: vec![tiny("monthly", patch_tuesday(1, json!([])))],
            clock: Some(clock.clone()),
            ..Options::default()
        };
        let rt = runtime(dir.path(), &opts).await;
        let end = Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap();
        while clock.now() < end {
            tick(&rt.app, FunctionName::PatchTuesday).await;
            drain_requests(&rt, clock.now()).await;
            clock.advance(Duration::minutes(15));
        }
        let mut created: Vec<String> = rt
            .app
            .store
            .list(&Default::default())
            .await
            .unwrap()
            .iter()
            .map(|b| b.created_at.to_rfc3339())
            .collect();
        created.sort();
        // Second Tuesdays: 2027-01-12 and 2027-02-09; +1 day at 03:00 Berlin (02:00 UTC).
        assert_eq!(
            created,
            ["2027-01-13T02:00:00+00:00", "2027-02-10T02:00:00+00:00"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_base_builds_each_pipeline_on_latest_once_and_no_pinned_one() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pinned, mut doc) = tiny("pinned", json!({}));
        doc["properties"]["source"]["version"] = json!("1.0.0");
        let opts = Options {
            pipelines: vec![
                tiny("follow-a", json!({})),
                tiny("follow-b", json!({})),
                (pinned, doc),
            ],
            ..Options::default()
        };
        let rt = runtime(dir.path(), &opts).await;
        let now = chrono::Utc::now();
        tick(&rt.app, FunctionName::BaseImageWatch).await;
        drain_requests(&rt, now).await;
        assert!(
            builds_by_pipeline(&rt.app).await.is_empty(),
            "the first look only records a baseline"
        );
        rt.provider
            .import_base("kiln:busybox:tiny", "1.1.0", BaseFrom::Busybox)
            .await
            .unwrap();
        for _ in 0..3 {
            tick(&rt.app, FunctionName::BaseImageWatch).await;
            drain_requests(&rt, chrono::Utc::now()).await;
        }
        let builds = builds_by_pipeline(&rt.app).await;
        assert_eq!(
            builds.keys().collect::<Vec<_>>(),
            ["follow-a", "follow-b"],
            "{builds:#?}"
        );
        // A deprecated source version becomes a warning on the pipelines following it.
        rt.provider
            .deprecate_base("kiln:busybox:tiny", "1.1.0")
            .await
            .unwrap();
        tick(&rt.app, FunctionName::BaseImageWatch).await;
        let warnings = rt
            .app
            .store
            .runtime("follow-a")
            .await
            .unwrap()
            .memory
            .warnings;
        assert_eq!(
            warnings,
            ["source kiln:busybox:tiny version 1.1.0 is deprecated"]
        );
        assert!(rt
            .app
            .store
            .runtime("pinned")
            .await
            .unwrap()
            .memory
            .warnings
            .is_empty());
        for p in ["follow-a", "follow-b"] {
            assert_eq!(builds[p].len(), 1);
            assert_eq!(
                builds[p][0]["trigger"],
                json!({"kind": "baseImage", "version": "1.1.0"})
            );
            assert_eq!(builds[p][0]["sourceVersion"], "1.1.0");
        }
    })
    .await;
}

async fn post(app: &App, path: &str, headers: &[(&str, &str)], body: String) -> (u16, Value) {
    let mut req = Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = kiln::app::api::router(app.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/events").join(name)).unwrap()
}

#[tokio::test]
async fn the_events_endpoint_speaks_event_grid_and_cloudevents_and_wants_its_key() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (name, mut doc) = tiny("ubuntu", json!({}));
        doc["properties"]["source"] = json!({"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"});
        let opts = Options {
            pipelines: vec![(name, doc), tiny("other", json!({}))],
            env: vec![("KILN_EVENTS_KEY", "k3y".into())],
            ..Options::default()
        };
        let rt = runtime(dir.path(), &opts).await;
        let app = &rt.app;
        let key = [("x-kiln-key", "k3y")];
        let depth = || rt.queue.depth("build-requests").unwrap();

        let (status, _) = post(
            app,
            "/api/events/base-image",
            &[],
            fixture("eventgrid-kiln-base-image-updated.json"),
        )
        .await;
        assert_eq!(status, 401);
        let (status, _) = post(
            app,
            "/api/events/base-image",
            &[("x-kiln-key", "wrong")],
            fixture("eventgrid-kiln-base-image-updated.json"),
        )
        .await;
        assert_eq!(status, 401);

        let (status, v) = post(
            app,
            "/api/events/base-image",
            &[("aeg-event-type", "SubscriptionValidation"), key[0]],
            fixture("eventgrid-subscription-validation.json"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            v,
            json!({"validationResponse": "0c5a9e7d-4b1f-4e6a-8d2c-3f9b7a1e6c54"})
        );

        let (status, v) = post(
            app,
            "/api/events/base-image",
            &[("aeg-event-type", "Notification"), key[0]],
            fixture("eventgrid-kiln-base-image-updated.json"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["requested"],
            json!([{"pipeline": "ubuntu", "version": "24.04.202605010"}])
        );
        let (status, _) = post(
            app,
            "/api/events/base-image?code=k3y",
            &[("content-type", "application/cloudevents+json")],
            fixture("cloudevents-kiln-base-image-updated.json"),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = post(
            app,
            "/api/events/base-image",
            &[
                key[0],
                ("content-type", "application/cloudevents-batch+json"),
            ],
            fixture("cloudevents-kiln-batch.json"),
        )
        .await;
        assert_eq!(status, 200);
        let before = depth();
        assert!(before >= 2);

        let (status, v) = post(
            app,
            "/api/events/base-image",
            &key,
            fixture("eventgrid-blob-created.json"),
        )
        .await;
        assert_eq!(status, 200, "unknown event types are acknowledged");
        assert_eq!(v["requested"], json!([]));
        let (status, v) = post(
            app,
            "/api/events/base-image",
            &key,
            r#"[{"id": "1", "data": {}}]"#.into(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(v["error"].as_str().unwrap().contains("eventType"), "{v}");
        let (status, _) = post(app, "/api/events/base-image", &key, "{{{".into()).await;
        assert_eq!(status, 400);
        assert_eq!(depth(), before, "malformed or ignored events start nothing");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_firing_together_make_one_build_per_cycle() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2027, 1, 12, 0, 0, 0).unwrap(),
        ));
        let opts = Options {
            pipelines: vec![tiny("twice", patch_tuesday(0, json!([])))],
            clock: Some(clock.clone()),
            ..Options::default()
        };
        let rt = runtime(dir.path(), &opts).await;
        tick(&rt.app, FunctionName::PatchTuesday).await; // arms the schedule
        clock.set(Utc.with_ymd_and_hms(2027, 1, 12, 2, 15, 0).unwrap());
        let (a, b) = (rt.app.clone(), rt.app.clone());
        tokio::join!(
            tick(&a, FunctionName::PatchTuesday),
            tick(&b, FunctionName::PatchTuesday)
        );
        drain_requests(&rt, clock.now()).await;
        let builds = rt.app.store.list(&Default::default()).await.unwrap();
        assert_eq!(builds.len(), 1, "{builds:#?}");
        assert_eq!(
            serde_json::to_value(&builds[0].trigger).unwrap(),
            json!({"kind": "schedule", "cycle": "2027-01"})
        );
    })
    .await;
}

/// A parent gallery as Azure's base catalog reports it: the versions
/// `latest` can resolve to (provisioned, not excluded from latest).
#[derive(Default)]
struct ParentGallery(std::sync::Mutex<Vec<(String, &'static str, bool)>>);

impl ParentGallery {
    /// Sets a version's provisioning state and `excludeFromLatest`.
    fn set(&self, version: &str, state: &'static str, excluded: bool) {
        let mut v = self.0.lock().unwrap();
        v.retain(|(n, ..)| n != version);
        v.push((version.to_string(), state, excluded));
    }
}

#[async_trait::async_trait]
impl kiln::ports::BaseCatalog for ParentGallery {
    async fn versions(
        &self,
        _source: &kiln::domain::template::Source,
    ) -> anyhow::Result<Vec<kiln::ports::BaseVersion>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, state, excluded)| *state == "Succeeded" && !excluded)
            .map(|(v, ..)| kiln::ports::BaseVersion {
                version: v.clone(),
                deprecated: false,
            })
            .collect())
    }
}

const PARENT: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corpGallery/images/ubuntu-2404-base";

/// A child pipeline on the parent's `latest`, with a debounce of `debounce` minutes.
fn child(debounce: u32) -> (String, Value) {
    let (name, mut doc) = tiny(
        "child",
        json!({"triggers": {"baseImage": {"enabled": true, "debounceMinutes": debounce}}}),
    );
    doc["properties"]["source"] = json!({"type": "SharedImageVersion", "imageVersionId": format!("{PARENT}/versions/latest")});
    (name, doc)
}

/// Resource Manager's `ResourceWriteSuccess` for a `method` on a parent version.
fn parent_written(event: &str, version: &str, method: &str) -> String {
    let mut body: Value =
        serde_json::from_str(&fixture("eventgrid-resource-write-gallery-version.json")).unwrap();
    let uri = format!("{PARENT}/versions/{version}");
    body[0]["id"] = json!(event);
    body[0]["subject"] = json!(uri);
    body[0]["data"]["resourceUri"] = json!(uri);
    body[0]["data"]["httpRequest"]["method"] = json!(method);
    body.to_string()
}

/// The runtime with the parent gallery as its base catalog.
async fn child_runtime(
    dir: &std::path::Path,
    debounce: u32,
    clock: Option<Arc<dyn Clock>>,
) -> (LocalRuntime, App, Arc<ParentGallery>) {
    let opts = Options {
        pipelines: vec![child(debounce)],
        clock,
        ..Options::default()
    };
    let rt = runtime(dir, &opts).await;
    let parent = Arc::new(ParentGallery::default());
    let app = App {
        catalog: parent.clone(),
        ..rt.app.clone()
    };
    (rt, app, parent)
}

async fn deliver(app: &App, body: String) -> Value {
    let (status, v) = post(app, "/api/events/base-image", &[], body).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn child_builds(app: &App) -> Vec<Value> {
    builds_by_pipeline(app)
        .await
        .remove("child")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_old_unfinished_or_excluded_parent_versions_start_no_build() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (rt, app, parent) = child_runtime(dir.path(), 0, None).await;
        parent.set("1.0.0", "Succeeded", false);
        parent.set("1.0.1", "Succeeded", false);
        tick(&app, FunctionName::BaseImageWatch).await; // baseline 1.0.1
        let requested = || async {
            rt.app
                .store
                .runtime("child")
                .await
                .unwrap()
                .memory
                .source_requested
        };
        assert_eq!(requested().await.as_deref(), Some("1.0.1"));

        // A PATCH of an older version (tags, replication regions…).
        let v = deliver(&app, parent_written("old", "1.0.0", "PATCH")).await;
        assert_eq!(v["requested"], json!([]), "{v}");
        // kiln's own retention deprecates an old version: excludeFromLatest and end of life.
        parent.set("1.0.0", "Succeeded", true);
        let v = deliver(&app, parent_written("retention", "1.0.0", "PATCH")).await;
        assert_eq!(v["requested"], json!([]), "{v}");
        // A new version is written but still Creating.
        parent.set("1.1.0", "Creating", false);
        let v = deliver(&app, parent_written("creating", "1.1.0", "PUT")).await;
        assert_eq!(v["requested"], json!([]), "{v}");
        // A newer version published excluded from latest.
        parent.set("1.2.0", "Succeeded", true);
        let v = deliver(&app, parent_written("excluded", "1.2.0", "PUT")).await;
        assert_eq!(v["requested"], json!([]), "{v}");
        drain_requests(&rt, chrono::Utc::now()).await;
        assert_eq!(child_builds(&app).await, Vec::<Value>::new());
        assert_eq!(
            requested().await.as_deref(),
            Some("1.0.1"),
            "no event moved the baseline"
        );

        // Once 1.1.0 has provisioned, the watcher builds it: no event blocked it.
        parent.set("1.1.0", "Succeeded", false);
        tick(&app, FunctionName::BaseImageWatch).await;
        drain_requests(&rt, chrono::Utc::now()).await;
        let builds = child_builds(&app).await;
        assert_eq!(builds.len(), 1, "{builds:#?}");
        assert_eq!(
            builds[0]["trigger"],
            json!({"kind": "baseImage", "version": "1.1.0"})
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_succeeded_parent_version_builds_once_and_the_watcher_sees_it_built() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (rt, app, parent) = child_runtime(dir.path(), 0, None).await;
        parent.set("1.0.0", "Succeeded", false);
        tick(&app, FunctionName::BaseImageWatch).await; // baseline
        parent.set("1.1.0", "Succeeded", false);
        let v = deliver(&app, parent_written("new", "1.1.0", "PUT")).await;
        assert_eq!(
            v["requested"],
            json!([{"pipeline": "child", "version": "1.1.0"}])
        );
        // Event Grid delivers at least once; a later PATCH of the same version too.
        deliver(&app, parent_written("new", "1.1.0", "PUT")).await;
        deliver(&app, parent_written("tags", "1.1.0", "PATCH")).await;
        tick(&app, FunctionName::BaseImageWatch).await;
        drain_requests(&rt, chrono::Utc::now()).await;
        let builds = child_builds(&app).await;
        assert_eq!(builds.len(), 1, "{builds:#?}");
        assert_eq!(builds[0]["sourceVersion"], "1.1.0");
        let memory = rt.app.store.runtime("child").await.unwrap().memory;
        assert_eq!(memory.source_requested.as_deref(), Some("1.1.0"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_starts_the_debounce_and_the_watcher_builds_when_it_ends() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
        ));
        let (rt, app, parent) = child_runtime(dir.path(), 30, Some(clock.clone())).await;
        parent.set("1.0.0", "Succeeded", false);
        tick(&app, FunctionName::BaseImageWatch).await; // baseline
        parent.set("1.1.0", "Succeeded", false);
        let v = deliver(&app, parent_written("new", "1.1.0", "PUT")).await;
        assert_eq!(v["requested"], json!([]), "debouncing: {v}");
        clock.set(Utc.with_ymd_and_hms(2026, 12, 1, 10, 29, 0).unwrap());
        tick(&app, FunctionName::BaseImageWatch).await;
        drain_requests(&rt, clock.now()).await;
        assert_eq!(child_builds(&app).await, Vec::<Value>::new());
        // The window started with the event, not with the watcher's first look.
        clock.set(Utc.with_ymd_and_hms(2026, 12, 1, 10, 30, 0).unwrap());
        tick(&app, FunctionName::BaseImageWatch).await;
        let v = deliver(&app, parent_written("again", "1.1.0", "PATCH")).await;
        assert_eq!(v["requested"], json!([]), "already requested: {v}");
        drain_requests(&rt, clock.now()).await;
        assert_eq!(child_builds(&app).await.len(), 1);
    })
    .await;
}
