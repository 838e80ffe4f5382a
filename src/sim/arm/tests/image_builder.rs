//! Image templates: put, run through every phase, outputs, cancel, delete, the log.

use reqwest::Method;
use serde_json::{json, Value};

use super::{template, Sim, DEF, RG, SUB};
use crate::domain::failure::FailureCategory;
use crate::ports::{Deletion, ImageBuilder, RunStart, RunState, RunSubState, TemplateStatus};

fn phase(s: &TemplateStatus) -> (RunState, Option<RunSubState>) {
    match s {
        TemplateStatus::Run(r) => (r.run_state.clone(), r.run_sub_state.clone()),
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_template_put_answers_201_creating_with_an_operation_to_follow() {
    let sim = Sim::start().await;
    let r = sim
        .call(
            Method::PUT,
            &sim.template_path("t1", ""),
            Some(template("1.0.0")),
        )
        .await;
    assert_eq!(r.status(), 201);
    let op = r.headers()["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        op.starts_with(&sim.url)
            && op.contains(
                "/providers/Microsoft.VirtualMachineImages/locations/westeurope/operations/"
            ),
        "{op}"
    );
    // Provisioning's seconds, in sim time (kiln waits them on the same clock).
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["properties"]["provisioningState"], "Creating");
    let staging = body["properties"]["exactStagingResourceGroup"]
        .as_str()
        .unwrap();
    let group = staging
        .strip_prefix(&format!("/subscriptions/{SUB}/resourceGroups/IT_{RG}_t1_"))
        .unwrap();
    assert!(
        group.len() == 8 && group.chars().all(|c| c.is_ascii_hexdigit()),
        "{staging}"
    );

    let status: Value = sim.call(Method::GET, &op, None).await.json().await.unwrap();
    assert_eq!(status["status"], "InProgress");
    sim.advance(1);
    let status: Value = sim.call(Method::GET, &op, None).await.json().await.unwrap();
    assert_eq!(status["status"], "Succeeded");
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["properties"]["provisioningState"], "Succeeded");
    assert!(doc["properties"].get("lastRunStatus").is_none());
}

#[tokio::test]
async fn arm_refuses_a_request_without_a_bearer_token_or_with_another_api_version() {
    let sim = Sim::start().await;
    let r = sim
        .http
        .get(format!("{}{}", sim.url, sim.template_path("t1", "")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "AuthenticationFailed");
    let r = sim
        .call(Method::GET, &sim.template_path("nope", ""), None)
        .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ResourceNotFound");
    assert_eq!(
        sim.builder().status("nope").await.unwrap(),
        TemplateStatus::Missing
    );
    let old = sim
        .template_path("nope", "")
        .replace("2025-10-01", "2024-02-01");
    let r = sim.call(Method::GET, &old, None).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "InvalidApiVersionParameter");
}

#[tokio::test]
async fn a_run_moves_through_every_phase_and_leaves_its_gallery_version() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    assert_eq!(b.status("t1").await.unwrap(), TemplateStatus::NotRun);
    sim.started("t1").await;
    let started = sim.clock_now();
    let mut seen = vec![];
    for minute in [0, 2, 10, 22, 24] {
        sim.set(started + chrono::Duration::minutes(minute));
        seen.push(phase(&b.status("t1").await.unwrap()));
        let last = sim.last_run("t1").await;
        assert_eq!(last["endTime"], "0001-01-01T00:00:00Z");
    }
    use RunSubState as S;
    assert_eq!(
        seen,
        [
            S::Queued,
            S::Building,
            S::Customizing,
            S::Validating,
            S::Distributing
        ]
        .into_iter()
        .map(|s| (RunState::Running, Some(s)))
        .collect::<Vec<_>>()
    );
    sim.set(started + chrono::Duration::minutes(30));
    let TemplateStatus::Run(done) = b.status("t1").await.unwrap() else {
        panic!()
    };
    assert_eq!(done.run_state, RunState::Succeeded);
    assert_eq!(done.end_time, Some(started + chrono::Duration::minutes(30)));
    assert_eq!(done.start_time, Some(started));

    let outputs = b.run_outputs("t1").await.unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "ubuntu-gallery");
    assert_eq!(
        outputs[0].artifact_id.as_deref(),
        Some(format!("{DEF}/imageversions/1.0.0").as_str())
    );
    assert_eq!(outputs[0].provisioning_state, "Succeeded");
    let v = sim
        .gallery()
        .get_version(DEF, "1.0.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.provisioning_state, "Succeeded");
    assert_eq!(
        v.tags.get("kiln.pipeline").map(String::as_str),
        Some("ubuntu")
    );

    let state: Value = sim
        .http
        .get(format!("{}/_sim/arm/state", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["templates"][0]["run"]["runState"], "Succeeded");
    assert_eq!(state["versions"][0]["provisioningState"], "Succeeded");
    let over_http: Vec<Value> = sim
        .http
        .get(format!("{}/_sim/arm/templates/t1/events", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = sim.world.template_events("t1");
    assert_eq!(over_http.len(), events.len());
    let states: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e.run_state, e.run_sub_state))
        .collect();
    assert_eq!(states.first(), Some(&("Running", Some("Queued"))));
    assert_eq!(states.last(), Some(&("Succeeded", None)));
    assert_eq!(
        events.last().unwrap().at,
        started + chrono::Duration::minutes(30)
    );
}

#[tokio::test]
async fn the_run_operation_stays_in_progress_for_the_whole_build() {
    let sim = Sim::start().await;
    sim.provisioned("t1", &template("1.0.0")).await;
    let r = sim
        .call(Method::POST, &sim.template_path("t1", "/run"), None)
        .await;
    assert_eq!(r.status(), 202);
    let op = r.headers()["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_string();
    // 60 s of sim time between polls, said in sim seconds.
    assert_eq!(r.headers()["retry-after"], "60");
    sim.advance(29);
    let s: Value = sim.call(Method::GET, &op, None).await.json().await.unwrap();
    assert_eq!(s["status"], "InProgress");
    sim.advance(1);
    let s: Value = sim.call(Method::GET, &op, None).await.json().await.unwrap();
    assert_eq!(s["status"], "Succeeded");
    // A second run while one is going is refused; kiln reads that as "running".
    sim.provisioned("t2", &template("1.0.1")).await;
    sim.started("t2").await;
    let r = sim
        .call(Method::POST, &sim.template_path("t2", "/run"), None)
        .await;
    assert_eq!(r.status(), 409);
    sim.started("t2").await;
}

#[tokio::test]
async fn a_canceled_run_goes_through_canceling_to_canceled() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    sim.started("t1").await;
    sim.advance(5);
    b.cancel("t1").await.unwrap();
    assert_eq!(
        phase(&b.status("t1").await.unwrap()),
        (RunState::Canceling, Some(RunSubState::Building))
    );
    sim.advance(1);
    assert_eq!(phase(&b.status("t1").await.unwrap()).0, RunState::Canceled);
    // Nothing left to cancel: refused on the wire, fine for kiln.
    let r = sim
        .call(Method::POST, &sim.template_path("t1", "/cancel"), None)
        .await;
    assert_eq!(r.status(), 409);
    b.cancel("t1").await.unwrap();
    assert!(b.run_outputs("t1").await.unwrap().is_empty());
}

#[tokio::test]
async fn deleting_a_running_template_is_refused_until_its_run_ends() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    sim.started("t1").await;
    let r = sim
        .call(Method::DELETE, &sim.template_path("t1", ""), None)
        .await;
    assert_eq!(r.status(), 409);
    let e = b.delete_template("t1").await.unwrap_err();
    assert!(e.message.contains("cancel the build first"), "{e}");
    b.cancel("t1").await.unwrap();
    sim.advance(2);
    let r = sim
        .call(Method::DELETE, &sim.template_path("t1", ""), None)
        .await;
    assert_eq!(r.status(), 202);
    // As the spec declares for DELETE: `Location` only, the operation's status URL.
    assert!(!r.headers().contains_key("azure-asyncoperation"));
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("/operations/"), "{location}");
    assert!(r.headers().contains_key("retry-after"));
    let s: Value = sim
        .call(Method::GET, &location, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["status"], "InProgress");
    assert_eq!(b.delete_template("t1").await.unwrap(), Deletion::InProgress);
    assert_eq!(b.status("t1").await.unwrap(), TemplateStatus::Deleting);
    sim.advance(1);
    let s: Value = sim
        .call(Method::GET, &location, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["status"], "Succeeded");
    assert_eq!(b.status("t1").await.unwrap(), TemplateStatus::Missing);
    // Deleting what is gone is fine.
    assert_eq!(
        sim.call(Method::DELETE, &sim.template_path("t1", ""), None)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn an_invalid_template_ends_failed_with_an_image_builder_code() {
    let sim = Sim::start().await;
    let b = sim.builder();
    for (name, field, value, code) in [
        (
            "bad",
            "stagingResourceGroup",
            json!("rg-not-an-id"),
            "BadStagingResourceGroup",
        ),
        ("bad2", "distribute", json!([]), "InvalidParameter"),
    ] {
        let mut body = template("1.0.0");
        body["properties"][field] = value;
        // Accepted first, as AIB does; the checks end the provisioning.
        assert_eq!(
            b.put_template(name, &body).await.unwrap(),
            TemplateStatus::Provisioning
        );
        sim.advance(1);
        let doc: Value = sim
            .call(Method::GET, &sim.template_path(name, ""), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(doc["properties"]["provisioningState"], "Failed");
        assert_eq!(
            doc["properties"]["provisioningError"]["provisioningErrorCode"],
            code
        );
        let TemplateStatus::ProvisioningFailed { code: seen, .. } = b.status(name).await.unwrap()
        else {
            panic!("{name}: expected ProvisioningFailed");
        };
        assert_eq!(seen, code);
        let e = b.run(name).await.unwrap_err();
        assert_eq!(e.category, FailureCategory::Validation, "{e}");
    }
}

#[tokio::test]
async fn the_customization_log_grows_with_the_run_and_reads_from_an_offset() {
    let sim = Sim::start().await;
    sim.provisioned("t1", &template("1.0.0")).await;
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    let staging = doc["properties"]["exactStagingResourceGroup"]
        .as_str()
        .unwrap()
        .to_string();
    let accounts =
        format!("{staging}/providers/Microsoft.Storage/storageAccounts?api-version=2023-05-01");
    let list: Value = sim
        .call(Method::GET, &accounts, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["value"], json!([]), "no storage before the first run");
    sim.started("t1").await;
    let list: Value = sim
        .call(Method::GET, &accounts, None)
        .await
        .json()
        .await
        .unwrap();
    let blob = list["value"][0]["properties"]["primaryEndpoints"]["blob"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        blob.starts_with(&format!("{}/blob/", sim.url)) && blob.ends_with('/'),
        "{blob}"
    );

    let names = sim
        .call(
            Method::GET,
            &format!("{blob}packerlogs?restype=container&comp=list"),
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    let name = names
        .split("<Name>")
        .nth(1)
        .and_then(|s| s.split("</Name>").next())
        .unwrap()
        .to_string();
    assert!(name.ends_with("/customization.log"), "{names}");
    let log_url = format!("{blob}packerlogs/{name}");
    let early = sim
        .call(Method::GET, &log_url, None)
        .await
        .bytes()
        .await
        .unwrap();
    sim.advance(20);
    let later = sim
        .call(Method::GET, &log_url, None)
        .await
        .bytes()
        .await
        .unwrap();
    assert!(later.len() > early.len() && later.starts_with(&early));
    let text = String::from_utf8_lossy(&later);
    assert!(
        text.contains("Provisioning with shell script: /tmp/script_0.sh (update)"),
        "{text}"
    );
    assert!(text.contains("Provisioning with shell script: https://example.blob.core.windows.net/scripts/harden.sh (harden)"), "{text}");

    let r = sim
        .http
        .get(&log_url)
        .bearer_auth("t")
        .header("Range", format!("bytes={}-", early.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes {}-{}/{}", early.len(), later.len() - 1, later.len())
    );
    assert_eq!(r.bytes().await.unwrap(), later[early.len()..]);
    let r = sim
        .http
        .get(&log_url)
        .bearer_auth("t")
        .header("Range", format!("bytes={}-", later.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    // kiln's reader finds the same bytes through the staging group.
    let b = sim.builder();
    let tail = b.customization_log("t1", early.len() as u64).await.unwrap();
    assert_eq!(tail.as_deref(), Some(&later[early.len()..]));
    let none_new = b.customization_log("t1", later.len() as u64).await.unwrap();
    assert_eq!(none_new, Some(vec![]));
    assert_eq!(sim.http.get(&log_url).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn deleting_the_template_removes_its_staging_group() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    let staging = doc["properties"]["exactStagingResourceGroup"]
        .as_str()
        .unwrap()
        .to_string();
    sim.started("t1").await;
    sim.advance(30);
    assert_eq!(b.delete_template("t1").await.unwrap(), Deletion::InProgress);
    sim.advance(1);
    let r = sim
        .call(
            Method::GET,
            &format!(
                "{staging}/providers/Microsoft.Storage/storageAccounts?api-version=2023-05-01"
            ),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn run_outputs_page_and_name_each_gallery_version_as_its_versioning_says() {
    let sim = Sim::start().await;
    sim.control(
        "marketplace",
        json!({"location": "westeurope", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server",
               "versions": [{"name": "24.04.202409120"}, {"name": "24.04.202410100"}]}),
    )
    .await;
    let other = DEF.replace("/images/ubuntu", "/images/ubuntu-min");
    sim.control(
        "gallery/versions",
        json!({"id": format!("{other}/versions/2.0.3")}),
    )
    .await;
    sim.control(
        "gallery/versions",
        json!({"id": format!("{other}/versions/3.0.0")}),
    )
    .await;
    let mut body = template("1.0.0");
    let shared = |name: &str, gallery: &str, versioning: Value| {
        json!({"type": "SharedImage", "runOutputName": name, "galleryImageId": gallery,
               "targetRegions": [{"name": "westeurope"}], "versioning": versioning})
    };
    body["properties"]["distribute"]
        .as_array_mut()
        .unwrap()
        .extend([
            shared("latest-2", &other, json!({"scheme": "Latest", "major": 2})),
            shared("from-source", &other, json!({"scheme": "Source"})),
        ]);
    let b = sim.builder();
    sim.provisioned("t1", &body).await;
    sim.started("t1").await;
    sim.advance(31);
    let first: Value = sim
        .call(Method::GET, &sim.template_path("t1", "/runOutputs"), None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        first["nextLink"].as_str().is_some(),
        "a page of 2 of 3: {first}"
    );
    let got: Vec<(String, Option<String>)> = b
        .run_outputs("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.artifact_id))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "ubuntu-gallery".to_string(),
                Some(format!("{DEF}/imageversions/1.0.0"))
            ),
            (
                "latest-2".to_string(),
                Some(format!("{other}/imageversions/2.0.4"))
            ),
            (
                "from-source".to_string(),
                Some(format!("{other}/imageversions/24.4.202410100"))
            ),
        ]
    );
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["properties"]["source"]["exactVersion"],
        "24.04.202410100"
    );
}

#[tokio::test]
async fn putting_the_same_template_again_adopts_it_and_another_body_is_refused() {
    let sim = Sim::start().await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    assert_eq!(
        b.put_template("t1", &template("1.0.0")).await.unwrap(),
        TemplateStatus::NotRun
    );
    let e = b.put_template("t1", &template("1.0.1")).await.unwrap_err();
    assert!(e.message.contains("different body"), "{e}");
    // On the wire, a PUT over an existing template is a conflict.
    let r = sim
        .call(
            Method::PUT,
            &sim.template_path("t1", ""),
            Some(template("1.0.0")),
        )
        .await;
    assert_eq!(r.status(), 409);
}

/// The one test on the wall clock: a scaled world and kiln's own pauses.
#[tokio::test]
async fn on_a_scaled_clock_a_thirty_minute_build_takes_its_wall_share() {
    use crate::providers::azure::arm::ArmClient;
    use crate::providers::azure::identity::StaticToken;
    use crate::providers::azure::image_builder::AzureImageBuilder;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let now = chrono::Utc::now();
    let clock = crate::ports::ScaledClock {
        start: super::t0(),
        anchor: now,
        factor: 1800,
    };
    let mut options = crate::sim::arm::ArmSimOptions::new(&url);
    options.scale = Some(clock);
    let world = crate::sim::arm::ArmWorld::new(Arc::new(clock), options);
    let app = crate::sim::arm::router(world);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let arm = ArmClient::new(
        reqwest::Client::new(),
        crate::providers::azure::arm::testing::options(&url),
        Arc::new(StaticToken::new("t")),
    );
    let b = AzureImageBuilder::new(arm, SUB, RG);
    let began = Instant::now();
    let deadline = began + Duration::from_secs(20);
    assert_eq!(
        b.put_template("t1", &template("1.0.0")).await.unwrap(),
        TemplateStatus::Provisioning
    );
    // kiln asks again until provisioning (20 sim seconds: 11 ms here) is over.
    loop {
        match b.run("t1").await.unwrap() {
            RunStart::Started => break,
            RunStart::NotReady if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("{other:?}"),
        }
    }
    let status = loop {
        let s = b.status("t1").await.unwrap();
        if matches!(&s, TemplateStatus::Run(r) if r.end_time.is_some()) || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let TemplateStatus::Run(r) = status else {
        panic!("{status:?}")
    };
    assert_eq!(r.run_state, RunState::Succeeded, "{r:?}");
    // 30 sim minutes at 1800x is one wall second.
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
