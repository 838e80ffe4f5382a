use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::azure::arm::testing::client;

const T: &str = "/subscriptions/s/resourceGroups/myResourceGroup/providers/Microsoft.VirtualMachineImages/imageTemplates/myImageTemplate";

fn template_fixture() -> Value {
    serde_json::from_str(include_str!("../testdata/GetImageTemplate.json")).unwrap()
}

/// The spec's GET example, with the `lastRunStatus` the examples never show
/// (its shape from the spec and observed AIB output).
fn with_last_run(state: &str, sub: &str, message: &str) -> Value {
    let mut t = template_fixture();
    t["properties"]["provisioningState"] = json!("Succeeded");
    t["properties"]["lastRunStatus"] = json!({
        "startTime": "2019-08-21T00:39:40.61322415Z",
        "endTime": "0001-01-01T00:00:00Z",
        "runState": state,
        "runSubState": sub,
        "message": message
    });
    t
}

fn builder(server: &MockServer) -> AzureImageBuilder {
    AzureImageBuilder::new(client(&server.uri()).0, "s", "myResourceGroup")
}

async fn serve_template(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path(T))
        .and(query_param("api-version", API_VERSION))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

fn run_of(s: TemplateStatus) -> RunStatus {
    match s {
        TemplateStatus::Run(r) => r,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_running_template_reports_its_phase_and_no_end_time() {
    let server = MockServer::start().await;
    serve_template(&server, with_last_run("Running", "Customizing", "")).await;
    let run = run_of(builder(&server).status("myImageTemplate").await.unwrap());
    assert_eq!(run.run_state, RunState::Running);
    assert_eq!(run.run_sub_state, Some(RunSubState::Customizing));
    assert_eq!(
        run.start_time.unwrap().to_rfc3339(),
        "2019-08-21T00:39:40.613224150+00:00"
    );
    assert_eq!(run.end_time, None);
}

#[tokio::test]
async fn a_failed_run_carries_the_builders_message() {
    let server = MockServer::start().await;
    let msg = "Failed while waiting for packerizer: Microservice has failed: Failed while processing request: Error when executing packerizer: Packer build command has failed: exit status 1";
    serve_template(&server, with_last_run("Failed", "Building", msg)).await;
    let run = run_of(builder(&server).status("myImageTemplate").await.unwrap());
    assert_eq!(run.run_state, RunState::Failed);
    assert_eq!(run.message, msg);
}

#[tokio::test]
async fn a_template_never_run_is_not_run_and_an_absent_one_is_missing() {
    let server = MockServer::start().await;
    serve_template(&server, template_fixture()).await;
    let b = builder(&server);
    assert_eq!(
        b.status("myImageTemplate").await.unwrap(),
        TemplateStatus::NotRun
    );
    assert_eq!(b.status("other").await.unwrap(), TemplateStatus::Missing);
}

fn body() -> Value {
    let mut t = template_fixture();
    for k in ["id", "name", "type"] {
        t.as_object_mut().unwrap().remove(k);
    }
    t
}

#[tokio::test]
async fn a_new_template_is_created_tagged_with_its_hash_and_not_waited_for() {
    let server = MockServer::start().await;
    let op = "https://management.azure.com/subscriptions/s/providers/Microsoft.VirtualMachineImages/locations/westus/operations/op1?api-version=2025-10-01";
    Mock::given(method("PUT"))
        .and(path(T))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("Azure-AsyncOperation", op)
                .set_body_json(json!({"properties": {"provisioningState": "Creating"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Provisioning takes minutes; the invocation does not follow it.
    Mock::given(method("GET"))
        .and(path(
            "/subscriptions/s/providers/Microsoft.VirtualMachineImages/locations/westus/operations/op1",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "Succeeded"})))
        .expect(0)
        .mount(&server)
        .await;
    let status = builder(&server)
        .put_template("myImageTemplate", &body())
        .await
        .unwrap();
    assert_eq!(status, TemplateStatus::Provisioning);
    let put = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "PUT")
        .unwrap();
    let sent: Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(sent["tags"][BODY_HASH_TAG], json!(body_hash(&body())));
    // The pipeline's steps, then the inventory step with the nonce kiln
    // drew; the sent hash covers what AIB got.
    let nonce = sbom_step::nonce_in(&sent).expect("the kiln-sbom step");
    let expected = sbom_step::with_step(&body(), &nonce);
    assert_eq!(sent["properties"], expected["properties"]);
    assert_eq!(sent["tags"][SENT_HASH_TAG], json!(body_hash(&expected)));
}

#[tokio::test]
async fn a_template_already_there_with_the_same_body_is_adopted_without_a_put() {
    let server = MockServer::start().await;
    let mut existing = template_fixture();
    existing["tags"] = json!({ BODY_HASH_TAG: body_hash(&body()) });
    existing["properties"]["provisioningState"] = json!("Succeeded");
    serve_template(&server, existing).await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let status = builder(&server)
        .put_template("myImageTemplate", &body())
        .await
        .unwrap();
    assert_eq!(status, TemplateStatus::NotRun);
}

#[tokio::test]
async fn a_template_already_there_with_another_body_is_refused() {
    let server = MockServer::start().await;
    let mut existing = template_fixture();
    existing["tags"] = json!({ BODY_HASH_TAG: "0000" });
    serve_template(&server, existing).await;
    let e = builder(&server)
        .put_template("myImageTemplate", &body())
        .await
        .unwrap_err();
    assert!(e.message.contains("different body"), "{e}");
}

#[tokio::test]
async fn a_template_that_fails_provisioning_is_a_template_problem() {
    // Refused at the PUT.
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"code": "InvalidParameter", "message": "stagingResourceGroup must be empty"}
        })))
        .mount(&server)
        .await;
    let e = builder(&server)
        .put_template("myImageTemplate", &body())
        .await
        .unwrap_err();
    assert_eq!(e.category, FailureCategory::Validation, "{e}");
    assert!(e.message.contains("must be empty"), "{e}");
    // Refused while provisioning: the template reads Failed with AIB's code.
    let server = MockServer::start().await;
    let mut failed = template_fixture();
    failed["properties"]["provisioningState"] = json!("Failed");
    failed["properties"]["provisioningError"] = json!({
        "provisioningErrorCode": "BadSharedImageDistribute",
        "message": "The gallery image definition does not exist"
    });
    serve_template(&server, failed).await;
    assert_eq!(
        builder(&server).status("myImageTemplate").await.unwrap(),
        TemplateStatus::ProvisioningFailed {
            code: "BadSharedImageDistribute".into(),
            message: "The gallery image definition does not exist".into(),
        }
    );
    // And a run of it is refused with that category, without a POST.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let e = builder(&server).run("myImageTemplate").await.unwrap_err();
    assert_eq!(e.category, FailureCategory::Validation, "{e}");
}

#[tokio::test]
async fn a_template_still_creating_is_not_run_yet() {
    let server = MockServer::start().await;
    let mut creating = template_fixture();
    creating["properties"]["provisioningState"] = json!("Creating");
    serve_template(&server, creating).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&server)
        .await;
    let b = builder(&server);
    assert_eq!(
        b.status("myImageTemplate").await.unwrap(),
        TemplateStatus::Provisioning
    );
    assert_eq!(b.run("myImageTemplate").await.unwrap(), RunStart::NotReady);
}

#[tokio::test]
async fn run_starts_a_template_once_and_leaves_one_that_ran_alone() {
    let server = MockServer::start().await;
    serve_template(&server, template_fixture()).await;
    Mock::given(method("POST"))
        .and(path(format!("{T}/run")))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Azure-AsyncOperation",
            "https://management.azure.com/ops/run?api-version=2025-10-01",
        ))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        builder(&server).run("myImageTemplate").await.unwrap(),
        RunStart::Started
    );

    let ran = MockServer::start().await;
    serve_template(&ran, with_last_run("Succeeded", "", "")).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&ran)
        .await;
    builder(&ran).run("myImageTemplate").await.unwrap();
}

#[tokio::test]
async fn a_500_on_run_is_unconfirmed_and_not_retried() {
    // A 5xx may come after AIB started the run: it is neither a failure
    // (which would start a new attempt) nor retried (which could start a
    // second run); the next poll reads lastRunStatus.
    let server = MockServer::start().await;
    serve_template(&server, template_fixture()).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(
                json!({"error": {"code": "InternalServerError", "message": "boom"}}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let started = builder(&server).run("myImageTemplate").await.unwrap();
    assert!(
        matches!(&started, RunStart::Unconfirmed { reason } if reason.contains("boom")),
        "{started:?}"
    );
}

#[tokio::test]
async fn no_answer_to_run_is_unconfirmed() {
    // A server that never answers in time: the request may have landed.
    let server = MockServer::start().await;
    serve_template(&server, template_fixture()).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202).set_delay(std::time::Duration::from_secs(3)))
        .expect(1)
        .mount(&server)
        .await;
    let opts = crate::providers::azure::arm::ArmOptions {
        timeout: std::time::Duration::from_millis(300),
        ..crate::providers::azure::arm::testing::options(&server.uri())
    };
    let b = AzureImageBuilder::new(
        crate::providers::azure::arm::testing::client_with(opts).0,
        "s",
        "myResourceGroup",
    );
    assert!(matches!(
        b.run("myImageTemplate").await.unwrap(),
        RunStart::Unconfirmed { .. }
    ));
}

#[tokio::test]
async fn a_conflict_on_run_is_fine_when_a_run_exists() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(T))
        .respond_with(ResponseTemplate::new(200).set_body_json(template_fixture()))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    serve_template(&server, with_last_run("Running", "Queued", "")).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(409).set_body_json(
            json!({"error": {"code": "Conflict", "message": "The image template is already running"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    builder(&server).run("myImageTemplate").await.unwrap();
}

#[tokio::test]
async fn run_outputs_are_read_across_pages() {
    let server = MockServer::start().await;
    let outputs = format!("{T}/runOutputs");
    // The example's nextLink is relative, spells `resourcegroups` in lower case and carries $skipToken=3.
    let mut first: Value =
        serde_json::from_str(include_str!("../testdata/ListRunOutputs.json")).unwrap();
    let next = first["nextLink"]
        .as_str()
        .unwrap()
        .replace("{subscription-id}", "s");
    first["nextLink"] = json!(next);
    let next_path = next.split('?').next().unwrap().to_string();
    Mock::given(method("GET"))
        .and(path(next_path.as_str()))
        .and(query_param("$skipToken", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            {"name": "vhdOutput", "properties": {"artifactUri": "https://st.blob.core.windows.net/vhds/x.vhd", "provisioningState": "Succeeded"}}
        ]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(outputs.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .expect(1)
        .mount(&server)
        .await;
    let got = builder(&server)
        .run_outputs("myImageTemplate")
        .await
        .unwrap();
    let names: Vec<&str> = got.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["myManagedImageOutput", "mySharedImageOutput", "vhdOutput"]
    );
    assert!(got[1]
        .artifact_id
        .as_deref()
        .unwrap()
        .ends_with("/images/SharedImageOutput/imageversions/1.2.3"));
    assert_eq!(
        got[2].artifact_uri.as_deref(),
        Some("https://st.blob.core.windows.net/vhds/x.vhd")
    );
}

#[tokio::test]
async fn deleting_is_started_not_waited_for_and_read_by_the_arm_contract() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(T))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Location",
            "https://management.azure.com/subscriptions/s/providers/Microsoft.VirtualMachineImages/locations/westus/operations/d1?api-version=2025-10-01",
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/subscriptions/s/providers/Microsoft.VirtualMachineImages/locations/westus/operations/d1"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(T.replace("myImageTemplate", "sync")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(T.replace("myImageTemplate", "busy")))
        .respond_with(ResponseTemplate::new(409).set_body_json(
            json!({"error": {"code": "Conflict", "message": "the template is running"}}),
        ))
        .mount(&server)
        .await;
    let b = builder(&server);
    assert_eq!(
        b.delete_template("myImageTemplate").await.unwrap(),
        Deletion::InProgress
    );
    assert_eq!(b.delete_template("sync").await.unwrap(), Deletion::Gone);
    assert_eq!(b.delete_template("gone").await.unwrap(), Deletion::Gone);
    let e = b.delete_template("busy").await.unwrap_err();
    assert!(e.message.contains("running"), "{e}");
}

#[tokio::test]
async fn cancelling_a_template_that_is_gone_is_fine() {
    let server = MockServer::start().await;
    builder(&server).cancel("gone").await.unwrap();
}

#[test]
fn image_builder_adds_no_checks_of_its_own() {
    let server_less = AzureImageBuilder::new(client("http://127.0.0.1:9").0, "s", "rg");
    let ok: ImageTemplate = serde_json::from_value(template_fixture()).unwrap();
    assert!(server_less.check(&ok).is_empty());
}

#[test]
fn the_body_hash_ignores_key_order() {
    let a = json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}});
    let b = json!({"b": {"c": [1, {"e": 3, "d": 2}]}, "a": 1});
    assert_eq!(body_hash(&a), body_hash(&b));
    assert_ne!(body_hash(&a), body_hash(&json!({"a": 2})));
}

/// A run of the spec's template with kiln's step, and `log` as its customization.log.
async fn serve_run_with_log(server: &MockServer, log: String) -> String {
    let rg = "/subscriptions/s/resourceGroups/IT_myResourceGroup_myImageTemplate_0a1b";
    let nonce = "0123456789abcdef0123456789abcdef".to_string();
    let mut t = sbom_step::with_step(&with_last_run("Succeeded", "", ""), &nonce);
    t["properties"]["exactStagingResourceGroup"] = json!(rg);
    t["properties"]["lastRunStatus"]["endTime"] = json!("2019-08-21T01:09:40Z");
    t["tags"][SENT_HASH_TAG] = json!("5e7");
    serve_template(server, t).await;
    Mock::given(method("GET"))
        .and(path(format!("{rg}/providers/Microsoft.Storage/storageAccounts")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            {"name": "st", "properties": {"primaryEndpoints": {"blob": format!("{}/blob/st/", server.uri())}}}
        ]})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob/st/packerlogs"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "<EnumerationResults><Blobs><Blob><Name>ab/customization.log</Name></Blob></Blobs></EnumerationResults>",
        ))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob/st/packerlogs/ab/customization.log"))
        .respond_with(ResponseTemplate::new(200).set_body_string(log))
        .mount(server)
        .await;
    nonce
}

fn log_of(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("[INFO] PACKER OUT     azure-arm: {l}\n"))
        .collect()
}

#[tokio::test]
async fn run_facts_read_the_steps_block_from_the_runs_log() {
    let server = MockServer::start().await;
    let nonce = "0123456789abcdef0123456789abcdef";
    let dpkg = "ii \tjq\t1.6-2.1ubuntu3\tamd64\tjq\t1.6-2.1ubuntu3\n";
    let log = log_of(&sbom_step::render(
        nonce,
        b"ID=ubuntu\nVERSION_ID=22.04\n",
        dpkg.as_bytes(),
    ));
    serve_run_with_log(&server, log).await;
    let f = builder(&server)
        .run_facts("myImageTemplate")
        .await
        .unwrap()
        .expect("facts");
    assert_eq!(f.sbom.package("jq").unwrap().version, "1.6-2.1ubuntu3");
    assert_eq!(f.template_sha256, "5e7");
    assert_eq!(f.customizers.last().unwrap().name, sbom_step::STEP_NAME);
}

#[tokio::test]
async fn a_damaged_block_is_an_error_naming_the_template_and_no_block_is_no_facts() {
    let server = MockServer::start().await;
    let nonce = "0123456789abcdef0123456789abcdef";
    let mut lines = sbom_step::render(nonce, b"ID=ubuntu\n", b"ii \tjq\t1.6\tamd64\tjq\t1.6\n");
    lines.remove(2);
    serve_run_with_log(&server, log_of(&lines)).await;
    let e = builder(&server)
        .run_facts("myImageTemplate")
        .await
        .unwrap_err();
    assert!(
        e.message.contains("myImageTemplate") && e.message.contains("kiln-sbom"),
        "{}",
        e.message
    );

    let server = MockServer::start().await;
    serve_run_with_log(
        &server,
        "[INFO] PACKER OUT Build 'azure-arm' finished.\n".into(),
    )
    .await;
    assert_eq!(
        builder(&server).run_facts("myImageTemplate").await.unwrap(),
        None
    );

    // A template without the step (Windows, or made before it): no facts, no log read.
    let server = MockServer::start().await;
    serve_template(&server, with_last_run("Succeeded", "", "")).await;
    assert_eq!(
        builder(&server).run_facts("myImageTemplate").await.unwrap(),
        None
    );
}
