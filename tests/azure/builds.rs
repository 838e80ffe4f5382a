//! Whole builds through the Azure face, and the contract defects each
//! scenario pins down.

use std::time::Duration;

use serde_json::json;

use kiln::sim::faults::{Fault, FaultRule};

use super::harness::{bounded, tiny, World};

fn first_attempt(id: &str) -> String {
    format!("kiln-{id}-a1")
}

#[tokio::test]
async fn a_build_succeeds_its_template_is_retired_and_its_log_is_kept() {
    bounded(async {
        let w = World::start().await;
        let id = w.request_build("tiny", "e2e-happy").await;
        let done = w.until(&id, "succeeded").await;
        let version = done["version"].as_str().unwrap().to_string();
        assert!(
            w.tiny_versions()
                .await
                .iter()
                .any(|v| v["name"] == version.as_str()),
            "{version} is not in the gallery"
        );
        // The template goes once the run is over (with AIB's staging group)…
        w.until_template_gone(&first_attempt(&id)).await;
        // …and kiln still serves the customization log from its own copy.
        let (status, log) = w.log(&id, 1).await;
        assert_eq!(status, 200, "{log}");
        assert!(log.contains("hello"), "the log names the customizer: {log}");
    })
    .await;
}

#[tokio::test]
async fn no_invocation_waits_for_a_long_running_operation() {
    bounded(async {
        // At 60x, with templates that take 5 minutes to create and 5 to delete
        // (as AIB's can): an invocation that followed either operation would
        // span at least 300 s of sim time; one that starts it and returns
        // spans its requests only (well under 90 s of sim time, 1.5 s of wall).
        let w = World::with(kiln::sim::server::SimOptions::new(60), |sub| {
            vec![("tiny".into(), tiny(sub))]
        })
        .await;
        let r = w
            .http
            .put(format!("{}/_sim/arm/profile", w.sim.url()))
            .json(&json!({
                "queuedSecs": 60, "buildingSecs": 60, "customizingSecs": 60, "validatingSecs": 0,
                "distributingSecs": 60, "cancelingSecs": 60, "provisioningSecs": 300, "deletingSecs": 300
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let id = w.request_build("tiny", "e2e-short-invocations").await;
        w.until(&id, "succeeded").await;
        w.until_template_gone(&first_attempt(&id)).await;
        let (longest, function) = w
            .host
            .invocations()
            .iter()
            .map(|i| {
                (
                    (i.sim_ended - i.sim_started).num_seconds(),
                    i.function.clone(),
                )
            })
            .max()
            .unwrap();
        assert!(longest < 90, "{function} took {longest} s of sim time");
        assert!(w.host.invocations().iter().all(|i| i.status.is_some()));
    })
    .await;
}

#[tokio::test]
async fn a_canceled_build_stops_its_run_and_then_retires_the_template() {
    bounded(async {
        let w = World::start().await;
        let id = w.request_build("tiny", "e2e-cancel").await;
        w.until(&id, "running").await;
        let r = w
            .api_post(&format!("/api/builds/{id}/cancel"), json!({}))
            .await;
        assert_eq!(r.status(), 202);
        let b = w.until(&id, "canceled").await;
        assert!(
            b["state"]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("API"),
            "{b}"
        );
        let timeline = w.build(&id).await["timeline"].to_string();
        assert!(timeline.contains("canceling"), "{timeline}");
        w.until_template_gone(&first_attempt(&id)).await;
        // The run was stopped before its template was deleted: ARM refuses to
        // delete a template under its run, and kiln never asked it to.
        let refused = w.deletes_refused(&first_attempt(&id));
        assert!(refused.is_empty(), "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_canceled_and_fails_as_timeout() {
    bounded(async {
        // A 30-minute build with a 10-minute timeout: kiln cancels it at the
        // timeout plus its 15-minute margin and ends the build `timeout`.
        let w = World::with_pipelines(|sub| {
            let mut t = tiny(sub);
            t["properties"]["buildTimeoutInMinutes"] = json!(10);
            vec![("tiny".into(), t)]
        })
        .await;
        let id = w.request_build("tiny", "e2e-timeout").await;
        let b = w.until(&id, "failed").await;
        assert_eq!(b["state"]["category"], "timeout", "{b}");
        w.until_template_gone(&first_attempt(&id)).await;
    })
    .await;
}

#[tokio::test]
async fn a_throttled_and_failing_arm_is_ridden_out() {
    bounded(async {
        let w = World::start().await;
        // Every template read is throttled once and the creation fails twice
        // with a 503 before ARM lets it through.
        w.transport_fault(FaultRule {
            method: Some("GET".into()),
            path: "*/imageTemplates/kiln-*".into(),
            times: 3,
            fault: Fault::Throttle {
                retry_after_secs: 1,
            },
        });
        w.transport_fault(FaultRule {
            method: Some("PUT".into()),
            path: "*/imageTemplates/kiln-*".into(),
            times: 2,
            fault: Fault::ServerError {
                status: 503,
                code: "ServiceUnavailable".into(),
            },
        });
        let id = w.request_build("tiny", "e2e-throttled").await;
        let b = w.until(&id, "succeeded").await;
        assert_eq!(b["attempt"], 1, "ridden out within the attempt: {b}");
    })
    .await;
}

#[tokio::test]
async fn a_transient_submit_failure_is_retried_as_a_new_attempt() {
    bounded(async {
        let w = World::start().await;
        // The first attempt's template can never be created.
        w.transport_fault(FaultRule {
            method: Some("PUT".into()),
            path: "*/imageTemplates/kiln-*-a1".into(),
            times: 10_000,
            fault: Fault::ServerError {
                status: 500,
                code: "InternalServerError".into(),
            },
        });
        let id = w.request_build("tiny", "e2e-retry").await;
        let b = w.until(&id, "succeeded").await;
        assert_eq!(b["attempt"], 2, "{b}");
    })
    .await;
}

#[tokio::test]
async fn a_lost_run_answer_is_confirmed_and_never_starts_a_second_run() {
    bounded(async {
        let w = World::start().await;
        w.fault(json!({ "kind": "runAnswerLost", "template": "kiln-*-a1" }))
            .await;
        let id = w.request_build("tiny", "e2e-lost-run").await;
        let b = w.until(&id, "succeeded").await;
        assert_eq!(
            b["attempt"], 1,
            "the lost answer was not a failed submit: {b}"
        );
        // No second attempt was started beside the run that did start, and the
        // template was never deleted under it (ARM would have answered 409).
        assert!(w.arm_requests(&format!("kiln-{id}-a2")).is_empty());
        let refused = w.deletes_refused(&first_attempt(&id));
        assert!(refused.is_empty(), "{refused:?}");
        let starts = w
            .sim
            .arm()
            .template_events(&first_attempt(&id))
            .iter()
            .filter(|e| e.run_sub_state == Some("Queued"))
            .count();
        assert_eq!(starts, 1, "one run");
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_a_failed_distribution_removes_the_version_it_left() {
    bounded(async {
        let w = World::start().await;
        // Attempt 1 replicates to no region: its version stays behind, Failed.
        w.fault(
            json!({ "kind": "replicationFails", "template": "kiln-*-a1", "region": "westeurope" }),
        )
        .await;
        let id = w.request_build("tiny", "e2e-leftover").await;
        let b = w.until(&id, "succeeded").await;
        assert_eq!(b["attempt"], 2, "{b}");
        let version = b["version"].as_str().unwrap();
        let deletes: Vec<_> = w
            .arm_requests(&format!("/versions/{version}"))
            .into_iter()
            .filter(|r| r.method == "DELETE")
            .collect();
        assert!(
            !deletes.is_empty(),
            "the leftover version was deleted first"
        );
        // Attempt 2 published it, Succeeded: at once, or after the evidence
        // step's tag update (a PATCH, `Updating` until its operation ends).
        w.eventually("attempt 2's version to be Succeeded", || async {
            let v = w
                .tiny_versions()
                .await
                .into_iter()
                .find(|v| v["name"] == version)
                .expect("attempt 2 published the version");
            match v["properties"]["provisioningState"].as_str() {
                Some("Succeeded") => Some(()),
                Some("Updating") => None,
                other => panic!("attempt 2's version is {other:?}: {v}"),
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_partial_success_ends_with_the_region_that_failed() {
    bounded(async {
        let w = World::with_pipelines(|sub| {
            let mut t = tiny(sub);
            t["properties"]["distribute"][0]["targetRegions"] = json!([
                { "name": "westeurope", "replicaCount": 1 },
                { "name": "northeurope", "replicaCount": 1 }
            ]);
            vec![("tiny".into(), t)]
        })
        .await;
        w.fault(
            json!({ "kind": "replicationFails", "template": "kiln-*-a1", "region": "northeurope" }),
        )
        .await;
        let id = w.request_build("tiny", "e2e-partial").await;
        let b = w.until(&id, "succeeded").await;
        assert_eq!(b["state"]["failedRegions"], json!(["northeurope"]), "{b}");
        assert_eq!(b["attempt"], 1);
    })
    .await;
}

#[tokio::test]
async fn a_failed_customizer_keeps_its_log_and_abort_keeps_the_template() {
    bounded(async {
        let w = World::with_pipelines(|sub| {
            let mut keep = tiny(sub);
            keep["properties"]["errorHandling"] = json!({ "onCustomizerError": "abort" });
            vec![("tiny".into(), tiny(sub)), ("keep".into(), keep)]
        })
        .await;
        w.fault(json!({ "kind": "buildFails", "template": "kiln-*-a1" }))
            .await;
        let cleaned = w.request_build("tiny", "e2e-fail-cleanup").await;
        let kept = w.request_build("keep", "e2e-fail-abort").await;
        for id in [&cleaned, &kept] {
            let b = w.until(id, "failed").await;
            assert_eq!(b["state"]["category"], "customizer", "{b}");
        }
        // The default cleans up, after copying the log kiln serves from then on.
        w.until_template_gone(&first_attempt(&cleaned)).await;
        let (status, log) = w.log(&cleaned, 1).await;
        assert_eq!(status, 200, "{log}");
        assert!(log.contains("hello"), "{log}");
        // `abort` keeps the template (and AIB's staging group) for a look.
        let sweeps_after = w.host.invocations().len() + 40;
        kiln::sim::functions_host::wait_until(
            Duration::from_secs(30),
            "a few more sweeps",
            || async { (w.host.invocations().len() > sweeps_after).then_some(()) },
        )
        .await
        .unwrap();
        let (status, _) = w.arm_get(&w.template_path(&first_attempt(&kept))).await;
        assert_eq!(status, 200, "the aborted build's template is kept");
        let (status, log): (u16, String) = w.log(&kept, 1).await;
        assert_eq!(status, 200, "{log}");
    })
    .await;
}

/// A SAS token the pipeline allows on purpose goes to AIB in the template
/// (AIB needs it to fetch the file), but AIB's customization log and run
/// messages quote it back: what kiln keeps, serves and reports is masked.
#[tokio::test]
async fn a_sas_token_reaches_aib_but_not_the_log_kiln_serves() {
    bounded(async {
        const SIG: &str = "c2FzLWF6dXJlLWNhbmFyeS04ZDJl";
        let w = World::with_pipelines(|sub| {
            let mut doc = tiny(sub);
            let customize = doc["properties"]["customize"].as_array_mut().unwrap();
            customize.push(json!({
                "type": "File", "name": "agent-config",
                "sourceUri": format!("https://acct.blob.core.windows.net/c/agent.conf?sv=2022-11-02&sr=b&sp=r&sig={SIG}"),
                "destination": "/tmp/agent.conf"
            }));
            let index = customize.len() - 1;
            doc["kiln"]["allowSecrets"] = json!([{
                "path": format!("properties.customize[{index}].sourceUri"),
                "kind": "sas-token",
                "reason": "a private blob read with a read-only SAS"
            }]);
            vec![("tiny".into(), doc)]
        })
        .await;
        let id = w.request_build("tiny", "sas-e2e").await;
        w.until(&id, "succeeded").await;
        // kiln's copy of AIB's log names the file with the values masked,
        // byte for byte: AIB was given the whole signature.
        let (status, log) = w.log(&id, 1).await;
        assert_eq!(status, 200, "{log}");
        let masked = format!(
            "Uploading https://acct.blob.core.windows.net/c/agent.conf?sv=**********&sr=*&sp=*&sig={} => /tmp/agent.conf",
            "*".repeat(SIG.len())
        );
        assert!(log.contains(&masked), "{log}");
        assert!(!log.contains(SIG), "{log}");
        let build = w.build(&id).await;
        assert!(!build.to_string().contains(SIG), "{build}");
    })
    .await;
}
