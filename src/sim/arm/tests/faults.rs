//! The semantic faults, each seen through kiln's adapters.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::{template, Sim, DEF, RG, SUB};
use crate::domain::failure::{classify, FailureCategory};
use crate::ports::{Deletion, ImageBuilder, RunStart, RunState, TemplateStatus};
use crate::providers::azure::arm::testing;
use crate::providers::azure::image_builder::AzureImageBuilder;

fn run_of(s: TemplateStatus) -> crate::ports::RunStatus {
    match s {
        TemplateStatus::Run(r) => r,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_put_that_never_finishes_leaves_the_template_provisioning() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "lroNeverFinishes", "template": "t1", "operation": "put"}))
        .await;
    let b = sim.builder();
    assert_eq!(
        b.put_template("t1", &template("1.0.0")).await.unwrap(),
        TemplateStatus::Provisioning
    );
    sim.advance(600);
    assert_eq!(b.status("t1").await.unwrap(), TemplateStatus::Provisioning);
    assert_eq!(b.run("t1").await.unwrap(), RunStart::NotReady);
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["properties"]["provisioningState"], "Creating");
}

#[tokio::test]
async fn a_delete_that_never_finishes_keeps_the_template_deleting() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "lroNeverFinishes", "template": "t1", "operation": "delete"}))
        .await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    let r = sim
        .call(Method::DELETE, &sim.template_path("t1", ""), None)
        .await;
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(b.delete_template("t1").await.unwrap(), Deletion::InProgress);
    sim.advance(600);
    let s: Value = sim
        .call(Method::GET, &location, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["status"], "InProgress");
    let doc: Value = sim
        .call(Method::GET, &sim.template_path("t1", ""), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["properties"]["provisioningState"], "Deleting");
    assert_ne!(b.status("t1").await.unwrap(), TemplateStatus::Missing);
}

#[tokio::test]
async fn a_stuck_cancel_stays_canceling() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "stuckCanceling", "template": "t1"}))
        .await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    sim.started("t1").await;
    sim.advance(12);
    b.cancel("t1").await.unwrap();
    sim.advance(600);
    let r = run_of(b.status("t1").await.unwrap());
    assert_eq!(r.run_state, RunState::Canceling);
    assert_eq!(r.end_time, None);
    // A second cancel is accepted and changes nothing.
    b.cancel("t1").await.unwrap();
    assert_eq!(
        run_of(b.status("t1").await.unwrap()).run_state,
        RunState::Canceling
    );
}

#[tokio::test]
async fn a_failed_build_says_packer_build_failed_and_logs_the_failing_step() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "buildFails", "template": "t1", "step": 2}))
        .await;
    let b = sim.builder();
    let mut body = template("1.0.0");
    body["properties"]["errorHandling"] =
        json!({"onCustomizerError": "abort", "onValidationError": "cleanup"});
    sim.provisioned("t1", &body).await;
    sim.started("t1").await;
    sim.advance(30);
    let r = run_of(b.status("t1").await.unwrap());
    assert_eq!(r.run_state, RunState::Failed);
    assert!(
        r.message.contains("Packer build command has failed"),
        "{}",
        r.message
    );
    assert_eq!(classify(&r.message), FailureCategory::Customizer);
    assert!(b.run_outputs("t1").await.unwrap().is_empty());
    assert!(sim
        .gallery()
        .get_version(DEF, "1.0.0")
        .await
        .unwrap()
        .is_none());

    let log_url = r
        .message
        .split("Image Build log location: ")
        .nth(1)
        .unwrap()
        .split(". OperationId")
        .next()
        .unwrap()
        .to_string();
    let log = sim
        .call(Method::GET, &log_url, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("step 2 (Provisioning with shell script: https://example.blob.core.windows.net/scripts/harden.sh (harden)) failed"), "{log}");
    assert!(log.contains("non-zero exit status: 1"), "{log}");
    // kiln finds the same log through the staging group (the message's
    // location is http on loopback, which kiln does not take from a message).
    assert_eq!(
        b.customization_log("t1", 0).await.unwrap().unwrap(),
        log.as_bytes()
    );

    // errorHandling abort: deleting the template keeps the build resources and the log.
    assert_eq!(b.delete_template("t1").await.unwrap(), Deletion::InProgress);
    sim.advance(1);
    assert_eq!(b.status("t1").await.unwrap(), TemplateStatus::Missing);
    assert_eq!(
        sim.call(Method::GET, &log_url, None)
            .await
            .text()
            .await
            .unwrap(),
        log
    );
}

#[tokio::test]
async fn replication_failing_in_one_region_partially_succeeds() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "replicationFails", "template": "t1", "region": "northeurope"}))
        .await;
    let b = sim.builder();
    sim.provisioned("t1", &template("1.0.0")).await;
    sim.started("t1").await;
    sim.advance(31);
    let r = run_of(b.status("t1").await.unwrap());
    assert_eq!(r.run_state, RunState::PartiallySucceeded);
    assert_eq!(
        classify(&r.message),
        FailureCategory::Replication,
        "{}",
        r.message
    );
    let v = sim
        .gallery()
        .get_version(DEF, "1.0.0")
        .await
        .unwrap()
        .unwrap();
    let states: Vec<(&str, &str)> = v
        .replication
        .iter()
        .map(|r| (r.region.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![("westeurope", "Completed"), ("northeurope", "Failed")]
    );
}

#[tokio::test]
async fn a_run_whose_answer_is_lost_has_started_anyway() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind": "runAnswerLost", "template": "t1"}))
        .await;
    sim.provisioned("t1", &template("1.0.0")).await;
    let mut opts = testing::options(&sim.url);
    opts.timeout = Duration::from_millis(300);
    let impatient = AzureImageBuilder::new(sim.client_with(opts), SUB, RG);
    let answer = impatient.run("t1").await.unwrap();
    assert!(matches!(answer, RunStart::Unconfirmed { .. }), "{answer:?}");
    let r = run_of(impatient.status("t1").await.unwrap());
    assert_eq!(r.run_state, RunState::Running);
    // Asked again, kiln finds the run and does not start a second one.
    assert_eq!(impatient.run("t1").await.unwrap(), RunStart::Started);
    let starts = sim
        .world
        .template_events("t1")
        .iter()
        .filter(|e| e.run_sub_state == Some("Queued"))
        .count();
    assert_eq!(starts, 1);
}
