//! What kiln needs, per pipeline, and how ARM matches it.

use super::*;

fn perm(actions: &[&str], not_actions: &[&str]) -> Permission {
    Permission {
        actions: actions.iter().map(|s| s.to_string()).collect(),
        not_actions: not_actions.iter().map(|s| s.to_string()).collect(),
        ..Permission::default()
    }
}

const MARKET: &str =
    "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read";

#[test]
fn wildcards_match_any_run_of_characters_without_regard_to_case() {
    assert!(pattern_matches("*", MARKET));
    assert!(pattern_matches("*/read", MARKET));
    assert!(pattern_matches("Microsoft.Compute/*/read", MARKET));
    assert!(pattern_matches("microsoft.compute/*", MARKET));
    assert!(pattern_matches(
        "Microsoft.VirtualMachineImages/imageTemplates/*",
        "Microsoft.VirtualMachineImages/imageTemplates/run/action"
    ));
    assert!(!pattern_matches("Microsoft.Compute/*/write", MARKET));
    assert!(!pattern_matches("Microsoft.Compute/galleries/*", MARKET));
    assert!(!pattern_matches(
        "Microsoft.Compute/galleries/images/versions/read",
        "Microsoft.Compute/galleries/images/versions/readx"
    ));
    assert!(pattern_matches("a*b*c", "a/x/b/y/c"));
    assert!(!pattern_matches("a*b*c", "a/x/c/y/b"));
}

#[test]
fn not_actions_subtract_within_their_block_only() {
    let contributor = perm(&["*"], &["Microsoft.Authorization/*/Write"]);
    assert!(allows(
        std::slice::from_ref(&contributor),
        Plane::Control,
        MARKET
    ));
    assert!(!allows(
        std::slice::from_ref(&contributor),
        Plane::Control,
        "Microsoft.Authorization/roleAssignments/write"
    ));
    // Another role's block grants what this one's notActions left out.
    let owner = perm(&["*"], &[]);
    assert!(allows(
        &[contributor, owner],
        Plane::Control,
        "Microsoft.Authorization/roleAssignments/write"
    ));
}

#[test]
fn data_actions_are_granted_only_by_data_action_lists() {
    let send = "Microsoft.ServiceBus/namespaces/messages/send/action";
    let owner = perm(&["*"], &[]);
    assert!(!allows(&[owner], Plane::Data, send));
    let sender = Permission {
        data_actions: vec!["Microsoft.ServiceBus/*".into()],
        not_data_actions: vec!["Microsoft.ServiceBus/namespaces/messages/receive/action".into()],
        ..Permission::default()
    };
    assert!(allows(std::slice::from_ref(&sender), Plane::Data, send));
    assert!(!allows(
        std::slice::from_ref(&sender),
        Plane::Data,
        "Microsoft.ServiceBus/namespaces/messages/receive/action"
    ));
    assert!(!allows(&[sender], Plane::Control, send));
}

#[test]
fn the_permissions_api_reply_reads_as_permission_blocks() {
    let reply = r#"{"value":[{"actions":["*"],"notActions":["Microsoft.Authorization/*/Write"],"dataActions":[],"notDataActions":[]},{"actions":["*/read"]}]}"#;
    #[derive(Deserialize)]
    struct Reply {
        value: Vec<Permission>,
    }
    let r: Reply = serde_json::from_str(reply).unwrap();
    assert_eq!(r.value.len(), 2);
    assert_eq!(r.value[1], perm(&["*/read"], &[]));
}

fn pipeline(file: &str) -> Pipeline {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    Pipeline::parse("p", &text).unwrap()
}

fn deployment() -> Deployment {
    Deployment {
        subscription_id: "s1".into(),
        resource_group: "rg-kiln".into(),
        service_bus_id:
            "/subscriptions/s1/resourceGroups/rg-kiln/providers/Microsoft.ServiceBus/namespaces/sb"
                .into(),
        inventory_subscriptions: vec![],
    }
}

#[test]
fn a_marketplace_pipeline_needs_the_subscription_scope_marketplace_read() {
    let p = pipeline("ubuntu-2204-baseline.json");
    let reqs = requirements(&deployment(), [&p]);
    let market: Vec<&Requirement> = reqs.iter().filter(|r| r.action == MARKET).collect();
    assert_eq!(market.len(), 1);
    assert_eq!(market[0].scope, "/subscriptions/s1");
    assert_eq!(market[0].who, Principal::Kiln);
}

#[test]
fn every_adapter_call_has_its_requirement() {
    let p = pipeline("ubuntu-2204-baseline.json");
    let reqs = requirements(&deployment(), [&p]);
    let has = |who: &Principal, scope: &str, action: &str| {
        reqs.iter()
            .any(|r| &r.who == who && r.scope == scope && r.action == action)
    };
    let rg = "/subscriptions/s1/resourceGroups/rg-kiln";
    for a in ["read", "write", "delete", "run/action", "cancel/action"] {
        assert!(has(
            &Principal::Kiln,
            rg,
            &format!("Microsoft.VirtualMachineImages/imageTemplates/{a}")
        ));
    }
    let def = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-aib-lab/providers/Microsoft.Compute/galleries/gal_lab/images/ubuntu-2204-baseline";
    for a in ["read", "write", "delete"] {
        assert!(has(
            &Principal::Kiln,
            def,
            &format!("Microsoft.Compute/galleries/images/versions/{a}")
        ));
    }
    let identity = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-aib-lab/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-aib-lab";
    assert!(has(
        &Principal::Kiln,
        identity,
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
    ));
    assert!(has(
        &Principal::Aib {
            identity_id: identity.into()
        },
        def,
        "Microsoft.Compute/galleries/images/versions/write"
    ));
    let bus: Vec<&Requirement> = reqs
        .iter()
        .filter(|r| r.plane == Plane::Data && r.action.starts_with("Microsoft.ServiceBus/"))
        .collect();
    assert_eq!(bus.len(), 2);
    assert!(bus.iter().all(|r| r.scope == deployment().service_bus_id));
    assert!(has(
        &Principal::Kiln,
        "/subscriptions/s1",
        "Microsoft.Compute/virtualMachines/read"
    ));
}

#[test]
fn the_build_log_is_read_where_image_builder_stages_the_build() {
    let mut p = pipeline("tiny.json");
    let blobs = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read";
    let scope_of = |p: &Pipeline| {
        requirements(&deployment(), [p])
            .into_iter()
            .find(|r| r.action == blobs)
            .map(|r| (r.scope, r.plane))
    };
    // A group per template, anywhere in the subscription.
    assert_eq!(
        scope_of(&p),
        Some(("/subscriptions/s1".to_string(), Plane::Data))
    );
    let group = "/subscriptions/s1/resourceGroups/rg-aib-staging";
    p.template.properties.staging_resource_group = Some(group.into());
    assert_eq!(scope_of(&p), Some((group.to_string(), Plane::Data)));
}

#[test]
fn inventory_subscriptions_each_need_read_and_repeats_collapse() {
    let p = pipeline("tiny.json");
    let mut d = deployment();
    d.inventory_subscriptions = vec!["s2".into(), "s3".into()];
    let reqs = requirements(&d, [&p, &p]);
    for sub in ["/subscriptions/s2", "/subscriptions/s3"] {
        assert!(reqs
            .iter()
            .any(|r| r.scope == sub && r.action == "Microsoft.Compute/virtualMachines/read"));
    }
    assert!(!reqs
        .iter()
        .any(|r| r.scope == "/subscriptions/s1" && r.action.contains("virtualMachines")));
    let unique: BTreeSet<(&Principal, &str, &str)> = reqs
        .iter()
        .map(|r| (&r.who, r.scope.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(unique.len(), reqs.len());
}

#[test]
fn a_gallery_source_needs_read_on_the_source_for_kiln_and_image_builder() {
    let mut p = pipeline("tiny.json");
    let src = "/subscriptions/s9/resourceGroups/rg-base/providers/Microsoft.Compute/galleries/corpBase/images/ubuntu/versions/latest";
    p.template.properties.source = Source::SharedImageVersion {
        image_version_id: src.into(),
        exact_version: None,
    };
    let reqs = requirements(&deployment(), [&p]);
    let def = "/subscriptions/s9/resourceGroups/rg-base/providers/Microsoft.Compute/galleries/corpBase/images/ubuntu";
    let readers: Vec<&Principal> = reqs
        .iter()
        .filter(|r| r.scope == def && r.action.ends_with("versions/read"))
        .map(|r| &r.who)
        .collect();
    assert_eq!(readers.len(), 2, "{readers:?}");
    assert!(!reqs.iter().any(|r| r.action == MARKET));
}

#[test]
fn an_action_needed_for_two_reasons_is_listed_once() {
    let mut p = pipeline("tiny.json");
    // Built from the definition it publishes to: read is needed both to
    // list the source and to plan retention.
    let def = p.gallery_targets()[0].definition_id();
    p.template.properties.source = Source::SharedImageVersion {
        image_version_id: format!("{def}/versions/latest"),
        exact_version: None,
    };
    let reads = requirements(&deployment(), [&p])
        .into_iter()
        .filter(|r| {
            r.who == Principal::Kiln
                && r.scope == def
                && r.action == "Microsoft.Compute/galleries/images/versions/read"
        })
        .count();
    assert_eq!(reads, 1);
}

#[test]
fn fix_commands_name_the_assignee_role_and_scope() {
    let p = pipeline("tiny.json");
    let reqs = requirements(&deployment(), [&p]);
    let market = reqs.iter().find(|r| r.action == MARKET).unwrap();
    assert_eq!(
        fix_command(market, "1111-app"),
        "az role assignment create --assignee 1111-app --role \"Reader\" --scope /subscriptions/s1"
    );
    let aib = reqs
        .iter()
        .find(|r| matches!(r.who, Principal::Aib { .. }))
        .unwrap();
    let cmd = fix_command(aib, "1111-app");
    assert!(
        cmd.contains("--assignee \"$(az identity show --ids /subscriptions/")
            && cmd.contains("--scope /subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_lab/images/tiny"),
        "{cmd}"
    );
}

#[test]
fn preflight_passes_only_when_everything_is_granted() {
    let p = pipeline("tiny.json");
    let reqs = requirements(&deployment(), [&p]);
    let all = |v: Verdict| -> Vec<(Requirement, Verdict)> {
        reqs.iter().map(|r| (r.clone(), v.clone())).collect()
    };
    assert!(passes(&all(Verdict::Granted)));
    let mut one_missing = all(Verdict::Granted);
    one_missing[0].1 = Verdict::Missing;
    assert!(!passes(&one_missing));
    let mut one_unknown = all(Verdict::Granted);
    one_unknown[0].1 = Verdict::Unknown("403".into());
    assert!(!passes(&one_unknown));
}
