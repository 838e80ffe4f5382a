//! Builds kiln starts on its own: a Patch-Tuesday cycle, a new marketplace
//! version seen by the watcher, and a parent gallery version announced by
//! Event Grid. Each is admitted once under its request key.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use kiln::sim::server::SimOptions;

use super::harness::{bounded, tiny, World};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn created(build: &Value) -> DateTime<Utc> {
    at(build["createdAt"].as_str().unwrap())
}

/// Build `id` as kiln records it (`/api/builds/{id}` without its timeline).
async fn record(w: &World, id: &str) -> Value {
    w.build(id).await["build"].clone()
}

/// Messages sent to `build-requests` so far (kiln's requests, and ours).
fn requests_sent(w: &World) -> usize {
    w.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/servicebus/build-requests/messages"))
        .filter(|r| !r.path.contains("/messages/head"))
        .count()
}

#[tokio::test]
async fn a_patch_tuesday_cycle_builds_once_under_its_cycle_key() {
    bounded(async {
        // December 2026's Patch Tuesday is the 8th; a day later at 03:00 in
        // Berlin is 02:00 UTC on the 9th. The sim starts 40 sim minutes before,
        // so the timer's first firing (which only arms the schedule) comes well
        // before the cycle, however long start-up takes.
        let fires = Utc.with_ymd_and_hms(2026, 12, 9, 2, 0, 0).unwrap();
        let options = SimOptions {
            start: Some(fires - Duration::minutes(40)),
            ..SimOptions::new(600)
        };
        let w = World::with(options, |sub| {
            let mut t = tiny(sub);
            t["kiln"]["triggers"]["schedule"] = json!({
                "patchTuesday": { "offsetDays": 1, "at": "03:00", "timeZone": "Europe/Berlin" }
            });
            vec![("tiny".into(), t)]
        })
        .await;

        // The firings before the cycle's time build nothing.
        let armed = w.timer_firings("patch_tuesday", 1).await;
        assert!(armed < fires, "the first firing at {armed} came too late");
        assert!(w.builds_of("tiny").await.is_empty());

        let id = w.newest_build_of("tiny").await;
        let b = &record(&w, &id).await;
        assert_eq!(
            b["trigger"],
            json!({ "kind": "schedule", "cycle": "2026-12" }),
            "{b}"
        );
        assert_eq!(b["idempotencyKey"], "schedule:tiny:2026-12", "{b}");
        assert_eq!(b["requestedBy"], "kiln/patch_tuesday", "{b}");
        assert!(created(b) >= fires, "built before the cycle: {b}");
        assert!(
            created(b) < fires + Duration::minutes(20),
            "the 02:00 firing should have built it: {b}"
        );
        w.until(&id, "succeeded").await;

        // Later firings in the same cycle find it checked and build nothing.
        w.timer_firings("patch_tuesday", 2).await;
        // A firing that requests the cycle again (a crash after the request was
        // sent, before the schedule was marked checked) is deduplicated by the
        // request key at admission.
        let replay = "replayed-cycle-request";
        let sent = w
            .http
            .post(format!(
                "{}/build-requests/messages",
                w.sim.service_bus_url()
            ))
            .bearer_auth("kiln")
            .header(
                "BrokerProperties",
                json!({ "MessageId": replay }).to_string(),
            )
            .header("Content-Type", "application/json")
            .body(
                json!({
                    "pipeline": "tiny", "reason": "schedule cycle 2026-12",
                    "requestedBy": "kiln/patch_tuesday",
                    "trigger": { "kind": "schedule", "cycle": "2026-12" }
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
        w.eventually("the replayed request to be taken and completed", || async {
            w.host
                .invocations()
                .into_iter()
                .find_map(|i| match i.trigger {
                    kiln::sim::functions_host::InvocationTrigger::Queue {
                        message_id,
                        settled,
                        ..
                    } if message_id == replay => Some(settled),
                    _ => None,
                })
        })
        .await;
        let builds = w.builds_of("tiny").await;
        assert_eq!(builds.len(), 1, "one build for the cycle: {builds:?}");
    })
    .await;
}

#[tokio::test]
async fn a_new_marketplace_version_builds_once_after_the_debounce() {
    bounded(async {
        let w = World::with_pipelines(|sub| {
            let mut t = tiny(sub);
            t["kiln"]["triggers"]["baseImage"] = json!({ "enabled": true, "debounceMinutes": 30 });
            vec![("tiny".into(), t)]
        })
        .await;
        // The first look records 1.0.0 (seeded by the harness) as the baseline
        // and builds nothing, then or at the next look.
        w.eventually("the watcher's baseline", || async {
            let p = w.api_get("/api/pipelines/tiny").await;
            (p["lastSourceVersion"] == "1.0.0").then_some(())
        })
        .await;
        w.timer_firings("base_image_watch", 1).await;
        assert!(w.builds_of("tiny").await.is_empty(), "no build for 1.0.0");

        let published = w.now();
        w.control(
            "/_sim/arm/marketplace",
            json!({
                "location": "westeurope", "publisher": "kiln", "offer": "busybox", "sku": "tiny",
                "versions": [{ "name": "1.0.1" }]
            }),
        )
        .await;
        // The next look sees it; the looks during the 30-minute window do not
        // build (three of them at least).
        w.timer_firings("base_image_watch", 3).await;
        assert!(
            w.builds_of("tiny").await.is_empty(),
            "built during the debounce"
        );

        let id = w.newest_build_of("tiny").await;
        let b = &record(&w, &id).await;
        assert_eq!(b["sourceVersion"], "1.0.1", "{b}");
        assert_eq!(
            b["trigger"],
            json!({ "kind": "baseImage", "version": "1.0.1" }),
            "{b}"
        );
        assert_eq!(b["idempotencyKey"], "base:tiny:1.0.1", "{b}");
        // Seen at the first look after it was published, built at the first
        // look once 30 minutes had passed since (one firing early at most,
        // for a look that had just started when it was published).
        let waited = created(b) - published;
        assert!(
            waited >= Duration::minutes(30) && waited <= Duration::minutes(50),
            "built {waited} after the version appeared: {b}"
        );
        let done = w.until(&id, "succeeded").await;
        let version = done["version"].as_str().unwrap().to_string();
        let v = w
            .tiny_versions()
            .await
            .into_iter()
            .find(|v| v["name"] == version.as_str())
            .expect("the build's version is in the gallery");
        assert_eq!(v["tags"]["kiln.sourceVersion"], "1.0.1", "{v}");

        // Later looks find 1.0.1 requested and build nothing more.
        w.timer_firings("base_image_watch", 2).await;
        assert_eq!(w.builds_of("tiny").await.len(), 1);
    })
    .await;
}

/// A ResourceWriteSuccess event, as a subscription system topic sends it,
/// for a write on `resource`.
fn resource_write(id: &str, subscription: &str, resource: &str, now: DateTime<Utc>) -> Value {
    json!({
        "id": id,
        "topic": format!("/subscriptions/{subscription}"),
        "subject": resource,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": now.to_rfc3339(),
        "data": {
            "resourceProvider": "Microsoft.Compute",
            "resourceUri": resource,
            "operationName": "Microsoft.Compute/galleries/images/versions/write",
            "status": "Succeeded",
            "subscriptionId": subscription,
            "tenantId": "11111111-1111-1111-1111-111111111111"
        },
        "dataVersion": "2",
        "metadataVersion": "1"
    })
}

#[tokio::test]
async fn a_parent_version_event_builds_once_and_only_for_a_new_version() {
    bounded(async {
        let parent = |sub: &str| {
            format!("/subscriptions/{sub}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/parent")
        };
        let w = World::with_pipelines(|sub| {
            let mut t = tiny(sub);
            t["properties"]["source"] = json!({
                "type": "SharedImageVersion",
                "imageVersionId": format!("{}/versions/latest", parent(sub))
            });
            vec![("child".into(), t)]
        })
        .await;
        let sub = w.subscription();
        let version = |v: &str| format!("{}/versions/{v}", parent(&sub));
        let seed = |v: &str| {
            w.control(
                "/_sim/arm/gallery/versions",
                json!({ "id": version(v), "tags": { "kiln.pipeline": "parent" } }),
            )
        };
        seed("1.0.0").await;
        w.eventually("the watcher's baseline", || async {
            let p = w.api_get("/api/pipelines/child").await;
            (p["lastSourceVersion"] == "1.0.0").then_some(())
        })
        .await;

        // An older parent version, and a PATCH of the current one: both are
        // writes on a version, neither is news. Nothing is requested.
        seed("0.9.0").await;
        let sent_before = requests_sent(&w);
        let status = w
            .event_grid(json!([
                resource_write("ev-older", &sub, &version("0.9.0"), w.now()),
                resource_write("ev-patch", &sub, &version("1.0.0"), w.now()),
            ]))
            .await;
        assert_eq!(status, 200);
        // kiln decides within the invocation: had it requested a build, the
        // request would have been sent before the webhook answered.
        assert_eq!(
            requests_sent(&w),
            sent_before,
            "an old version was requested"
        );
        w.timer_firings("base_image_watch", 1).await;
        assert!(w.builds_of("child").await.is_empty());

        // A new, succeeded parent version, announced right after a look of the
        // watcher, so the event (not the next look) is what requests it.
        w.timer_firings("base_image_watch", 1).await;
        seed("1.1.0").await;
        let sent_before = requests_sent(&w);
        let status = w
            .event_grid(json!([resource_write(
                "ev-new",
                &sub,
                &version("1.1.0"),
                w.now()
            )]))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            requests_sent(&w),
            sent_before + 1,
            "one request, sent before the webhook answered"
        );
        let id = w.newest_build_of("child").await;
        let b = &record(&w, &id).await;
        assert_eq!(b["requestedBy"], "kiln/base_image_events", "{b}");
        assert_eq!(
            b["trigger"],
            json!({ "kind": "baseImage", "version": "1.1.0" }),
            "{b}"
        );
        assert_eq!(b["sourceVersion"], "1.1.0", "{b}");
        w.until(&id, "succeeded").await;

        // The watcher's later looks find 1.1.0 requested already.
        w.timer_firings("base_image_watch", 2).await;
        let builds = w.builds_of("child").await;
        assert_eq!(builds.len(), 1, "{builds:?}");
    })
    .await;
}
