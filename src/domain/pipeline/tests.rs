//! Pipeline files read and checked: kept template fields, every problem
//! with its JSON path, and the defaults a file without `kiln` takes.

use super::*;

const TINY: &str = r#"{
      "location": "westeurope",
      "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib": {}}},
      "properties": {
        "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "1", "version": "latest"},
        "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hi > /etc/hello"]}],
        "distribute": [{"type": "SharedImage", "runOutputName": "tiny",
          "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/tiny"}],
        "futureField": {"kept": true}
      },
      "kiln": {"versioning": {"scheme": "latest", "major": 1}}
    }"#;

#[test]
fn keeps_template_fields_kiln_does_not_model() {
    let p = Pipeline::parse("tiny", TINY).unwrap();
    assert_eq!(p.template_json["properties"]["futureField"]["kept"], true);
    assert!(p.template_json.get(KILN_KEY).is_none());
}

#[test]
fn unknown_kiln_fields_are_errors_with_their_path() {
    let text = TINY.replace(r#""versioning""#, r#""retension": {}, "versioning""#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "kiln.retension");
    assert!(
        errs[0].message.contains("unknown field"),
        "{}",
        errs[0].message
    );
}

#[test]
fn missing_required_template_field_names_it() {
    let text = TINY.replace(r#""runOutputName": "tiny","#, "");
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "properties.distribute[0]");
    assert!(
        errs[0].message.contains("runOutputName"),
        "{}",
        errs[0].message
    );
}

#[test]
fn wrong_type_deep_in_kiln_names_the_field() {
    let text = TINY.replace(r#""major": 1"#, r#""major": "one""#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "kiln.versioning.major");
}

#[test]
fn a_shell_step_needs_a_script() {
    let text = TINY.replace(r#""inline": ["echo hi > /etc/hello"]"#, r#""name2": 1"#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "properties.customize[0]");
}

#[test]
fn a_fixed_staging_resource_group_is_refused_with_why_and_what_to_do() {
    let text = TINY.replace(
            r#""futureField""#,
            r#""stagingResourceGroup": "/subscriptions/s/resourceGroups/rg-aib-staging", "futureField""#,
        );
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "properties.stagingResourceGroup");
    for part in ["concurrent", "attempt", "remove"] {
        assert!(errs[0].message.contains(part), "{}", errs[0].message);
    }
    // Empty is what AIB documents as "create one for this template".
    let text = TINY.replace(
        r#""futureField""#,
        r#""stagingResourceGroup": "", "futureField""#,
    );
    assert!(Pipeline::parse("tiny", &text).is_ok());
}

#[test]
fn a_versioned_gallery_target_is_refused() {
    let text = TINY.replace("images/tiny", "images/tiny/versions/1.0.0");
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "properties.distribute[0].galleryImageId");
}

#[test]
fn a_misspelled_or_misplaced_kiln_section_is_an_error_not_a_default() {
    let text = TINY.replace(r#""kiln": {"#, r#""Kiln": {"#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "Kiln", "{errs:?}");
    let text = TINY.replace(r#""futureField""#, r#""kiln": {}, "futureField""#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "properties.kiln", "{errs:?}");
}

#[test]
fn a_missing_or_empty_distribute_is_one_error() {
    for (from, to) in [
        (r#""distribute": ["#, r#""distribut": ["#),
        (r#""distribute": ["#, r#""distribute": "x", "d": ["#),
    ] {
        let text = TINY.replace(from, to);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        let n = errs
            .iter()
            .filter(|e| e.path == "properties.distribute")
            .count();
        assert_eq!(n, 1, "{errs:?}");
    }
}

#[test]
fn identity_type_is_read_as_arm_reads_it_regardless_of_case() {
    let text = TINY.replace(r#""type": "UserAssigned""#, r#""type": "userAssigned""#);
    assert!(Pipeline::parse("tiny", &text).is_ok());
    let text = TINY.replace(r#""type": "UserAssigned""#, r#""type": "SystemAssigned""#);
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs[0].path, "identity.type", "{errs:?}");
    assert!(errs[0].message.contains("user-assigned"), "{errs:?}");
}

#[test]
fn a_null_validate_is_no_validate() {
    let text = TINY.replace(r#""futureField""#, r#""validate": null, "futureField""#);
    assert!(Pipeline::parse("tiny", &text).is_ok());
}

#[test]
fn target_regions_and_replication_regions_exclude_each_other() {
    let text = TINY.replace(
        r#""runOutputName": "tiny","#,
        r#""runOutputName": "tiny", "replicationRegions": ["westeurope"],
               "targetRegions": [{"name": "westeurope"}],"#,
    );
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "properties.distribute[0].replicationRegions");
    // Either alone is fine: the seed lab's tutorial uses the deprecated one.
    let alone = TINY.replace(
        r#""runOutputName": "tiny","#,
        r#""runOutputName": "tiny", "replicationRegions": ["westeurope", "northeurope"],"#,
    );
    assert!(Pipeline::parse("tiny", &alone).is_ok());
}

#[test]
fn defaults_are_what_a_platform_team_expects() {
    let p = Pipeline::parse("tiny", TINY).unwrap();
    assert_eq!(p.kiln.build.max_attempts, 3);
    assert_eq!(p.kiln.build.max_concurrent, 1);
    assert!(p.kiln.retention.protect_in_use);
    assert_eq!(p.build_timeout_minutes(), 240);
}

fn paths(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn one_run_reports_every_problem_of_the_file_with_its_path() {
    let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
    let props = &mut doc["properties"];
    props["source"].as_object_mut().unwrap().remove("offer");
    props["customize"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Ansible", "playbook": "site.yml"}));
    props["distribute"] = serde_json::json!([]);
    doc.as_object_mut().unwrap().remove("identity");

    let errs = Pipeline::parse("tiny", &doc.to_string()).unwrap_err();

    let mut got = paths(&errs);
    got.sort();
    assert_eq!(
        got,
        [
            "identity",
            "properties.customize[1].type",
            "properties.distribute",
            "properties.source"
        ],
        "{errs:#?}"
    );
    let at = |p: &str| &errs.iter().find(|e| e.path == p).unwrap().message;
    assert!(at("properties.source").contains("missing field `offer`"));
    assert!(at("properties.customize[1].type").contains("unknown variant `Ansible`"));
    assert!(at("properties.distribute").contains("at least one distribution target"));
    assert!(at("identity").contains("UserAssigned"));
}

#[test]
fn each_list_element_is_read_on_its_own_and_keeps_its_index() {
    let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
    let good = doc["properties"]["distribute"][0].clone();
    let mut versioned = good.clone();
    versioned["runOutputName"] = "second".into();
    versioned["galleryImageId"] = format!(
        "{}/versions/1.0.0",
        good["galleryImageId"].as_str().unwrap()
    )
    .into();
    let mut broken = good.clone();
    broken.as_object_mut().unwrap().remove("galleryImageId");
    doc["properties"]["distribute"] = serde_json::json!([broken, versioned]);

    let errs = Pipeline::parse("tiny", &doc.to_string()).unwrap_err();

    assert_eq!(
        paths(&errs),
        [
            "properties.distribute[0]",
            "properties.distribute[1].galleryImageId"
        ],
        "the semantic checks still look at the target that parsed: {errs:#?}"
    );
}

#[test]
fn a_bad_kiln_key_does_not_hide_the_next_one() {
    let text = TINY.replace(
            r#""versioning": {"scheme": "latest", "major": 1}"#,
            r#""retention": {"keepLatest": "five"}, "build": {"maxAttempts": "three"}, "triggers": {"baseImage": {"enabled": true}}"#,
        );
    let errs = Pipeline::parse("tiny", &text).unwrap_err();
    assert_eq!(
        paths(&errs),
        ["kiln.retention.keepLatest", "kiln.build.maxAttempts"]
    );
}

#[test]
fn an_invalid_file_still_yields_its_template_for_the_provider_checks() {
    let text = TINY.replace(r#""versioning""#, r#""retension": {}, "versioning""#);
    match Pipeline::read("tiny", &text) {
        Parsed::Invalid { errors, template } => {
            assert_eq!(paths(&errors), ["kiln.retension"]);
            assert_eq!(template.unwrap().location, "westeurope");
        }
        Parsed::Valid(_) => panic!("an unknown kiln key is an error"),
    }
}

#[test]
fn a_pasted_template_without_a_kiln_section_takes_every_default() {
    let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
    doc.as_object_mut().unwrap().remove(KILN_KEY);
    let p = Pipeline::parse("tiny", &doc.to_string()).unwrap();
    assert_eq!(p.kiln.versioning, Versioning::default());
}

#[test]
fn the_identity_is_one_user_assigned_identity() {
    let with_identity = |identity: serde_json::Value| {
        let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
        doc["identity"] = identity;
        Pipeline::parse("tiny", &doc.to_string())
    };
    let errs = with_identity(serde_json::json!({"type": "None"})).unwrap_err();
    assert_eq!(paths(&errs), ["identity.type"]);
    let errs = with_identity(serde_json::json!({"type": "UserAssigned"})).unwrap_err();
    assert_eq!(paths(&errs), ["identity.userAssignedIdentities"]);
    let errs = with_identity(serde_json::json!({"type": "UserAssigned",
            "userAssignedIdentities": {"/a": {}, "/b": {}}}))
    .unwrap_err();
    assert_eq!(paths(&errs), ["identity.userAssignedIdentities"]);
    let errs = with_identity(serde_json::json!({"type": "SystemAssigned"})).unwrap_err();
    assert_eq!(paths(&errs), ["identity.type"]);
}

#[test]
fn malformed_json_reports_line_and_column() {
    let errs = Pipeline::parse("tiny", "{\n  \"location\": ,\n}").unwrap_err();
    assert!(errs[0].path.starts_with("line 2"), "{}", errs[0].path);
}

fn with_gate(gate: &str) -> String {
    TINY.replace(
        r#""versioning""#,
        &format!(r#""gate": {gate}, "versioning""#),
    )
}

#[test]
fn a_gate_is_read_with_its_defaults_and_absent_means_none() {
    let p = Pipeline::parse(
        "tiny",
        &with_gate(r#"{"mode": "enforce", "maxSeverity": "high"}"#),
    )
    .unwrap();
    let gate = p.kiln.gate.unwrap();
    assert_eq!(gate.mode, crate::domain::evidence::gate::GateMode::Enforce);
    assert_eq!(
        gate.max_severity,
        crate::domain::evidence::gate::Level::High
    );
    assert!(gate.require_fix);
    assert!(Pipeline::parse("tiny", TINY).unwrap().kiln.gate.is_none());
}

#[test]
fn gate_errors_name_the_field_and_what_was_expected() {
    let cases = [
        (r#"{"maxSeverity": "high"}"#, "kiln.gate", "mode"),
        (
            r#"{"mode": "enforce", "maxSeverty": "high"}"#,
            "kiln.gate.maxSeverty",
            "unknown field",
        ),
        (
            r#"{"mode": "enforce", "maxSeverity": "severe"}"#,
            "kiln.gate.maxSeverity",
            "low",
        ),
        (
            r#"{"mode": "enforce", "ignore": [{"id": "CVE-2099-0001"}]}"#,
            "kiln.gate.ignore[0]",
            "reason",
        ),
        (
            r#"{"mode": "enforce", "ignore": [{"id": "CVE-2099-0001", "reason": "  "}]}"#,
            "kiln.gate.ignore[0].reason",
            "why",
        ),
        (
            r#"{"mode": "enforce", "ignore": [{"id": "CVE-2099-0001", "reason": "r", "until": "31.01.2027"}]}"#,
            "kiln.gate.ignore[0].until",
            "YYYY-MM-DD",
        ),
        (
            r#"{"mode": "enforce", "ignore": [{"id": "CVE-2099-0001", "reason": "r"}, {"id": "CVE-2099-0001", "reason": "s"}]}"#,
            "kiln.gate.ignore[1].id",
            "twice",
        ),
    ];
    for (gate, path, says) in cases {
        let errs = Pipeline::parse("tiny", &with_gate(gate)).unwrap_err();
        assert_eq!(errs.len(), 1, "{gate}: {errs:?}");
        assert_eq!(errs[0].path, path, "{gate}: {errs:?}");
        assert!(
            errs[0].message.contains(says),
            "{gate}: {}",
            errs[0].message
        );
    }
}
