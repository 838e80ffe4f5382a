//! `infra/` read as text: no Bicep compiler installs from the registries the
//! build machines reach, so these tests hold the properties the open issue
//! asked for (one source for the queues' settings, names that do not collide
//! across deployments, secrets as Key Vault references, Application
//! Insights, the subscription-scope marketplace grant) where a reviewer
//! would otherwise have to remember them.

use kiln::domain::permissions::{requirements, Deployment, Principal};

mod common;

use common::repo;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the Bicep block that starts at `header` (up to its closing
/// brace at the start of a line).
fn block<'a>(text: &'a str, header: &str) -> &'a str {
    let start = text.find(header).unwrap_or_else(|| panic!("no `{header}`"));
    let rest = &text[start..];
    let end = rest.find("\n}").map(|i| i + 2).unwrap_or(rest.len());
    &rest[..end]
}

fn queues_json() -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&read("infra/queues.json"))
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn the_bicep_reads_every_queue_setting_from_queues_json() {
    let main = read("infra/main.bicep");
    assert!(
        main.contains("var queues = loadJsonContent('queues.json')"),
        "main.bicep must load infra/queues.json"
    );
    for (name, settings) in queues_json() {
        let header = format!("name: '{name}'");
        let at = main
            .find(&header)
            .unwrap_or_else(|| panic!("no queue {name} in main.bicep"));
        let resource = &main[main[..at].rfind("resource ").unwrap()..];
        let resource = &resource[..resource.find("\n}").unwrap()];
        for key in settings.as_object().unwrap().keys() {
            let line = format!("{key}: queues['{name}'].{key}");
            assert!(
                resource.contains(&line),
                "{name}: expected `{line}` in\n{resource}"
            );
        }
    }
    // No number typed in by hand anywhere in infra/.
    for f in ["infra/main.bicep", "infra/modules/parent-gallery.bicep"] {
        for line in read(f).lines() {
            let code = line.split("//").next().unwrap();
            if let Some(v) = code.trim().strip_prefix("maxDeliveryCount:") {
                assert!(v.trim().starts_with("queues["), "{f}: {line}");
            }
        }
    }
}

#[test]
fn every_service_bus_trigger_names_a_queue_of_queues_json_and_sets_no_delivery_count() {
    let queues = queues_json();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("handlers")).unwrap() {
        let path = entry.unwrap().path().join("function.json");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for b in doc["bindings"].as_array().unwrap() {
            assert!(
                b.get("maxDeliveryCount").is_none(),
                "{}: maxDeliveryCount belongs to the queue",
                path.display()
            );
            if b["type"] == "serviceBusTrigger" {
                let q = b["queueName"].as_str().unwrap();
                assert!(queues.contains_key(q), "{}: {q}", path.display());
                seen += 1;
            }
        }
    }
    assert_eq!(seen, queues.len());
}

#[test]
fn custom_roles_have_guid_names_and_role_names_unique_per_deployment() {
    for f in ["infra/main.bicep", "infra/modules/subscription-roles.bicep"] {
        let text = read(f);
        let mut found = 0;
        for (at, _) in text.match_indices("'Microsoft.Authorization/roleDefinitions@") {
            let resource = &text[at..];
            let resource = &resource[..resource.find("\n}").unwrap()];
            let name = resource
                .lines()
                .find(|l| l.trim_start().starts_with("name:"))
                .unwrap();
            assert!(name.contains("guid("), "{f}: {name}");
            let role_name = resource
                .lines()
                .find(|l| l.trim_start().starts_with("roleName:"))
                .unwrap();
            assert!(
                role_name.contains("${suffix}")
                    || role_name.contains("${subscription().subscriptionId}"),
                "{f}: the roleName must not collide with another deployment's: {role_name}"
            );
            found += 1;
        }
        assert!(found > 0, "{f}: no role definitions");
    }
}

#[test]
fn the_event_grid_topic_and_subscription_names_carry_the_deployment_suffix() {
    let module = read("infra/modules/parent-gallery.bicep");
    assert!(!module.contains("name: 'kiln-${resourceGroup().name}'"));
    assert!(module.contains("'kiln-${deploymentSuffix}'"));
    assert!(module.contains("name: 'kiln-${deploymentSuffix}-base-image-events'"));
    assert!(
        module.contains("existingSystemTopicName"),
        "one system topic per source: an existing one must be reusable"
    );
    let main = read("infra/main.bicep");
    let call = block(&main, "module parent 'modules/parent-gallery.bicep'");
    assert!(call.contains("deploymentSuffix: suffix"), "{call}");
}

#[test]
fn secrets_reach_the_app_as_key_vault_references_only() {
    let main = read("infra/main.bicep");
    for setting in [
        "KILN_EVENTS_KEY",
        "KILN_API_KEYS",
        "KILN_WEBHOOK_SECRET",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    ] {
        let line = main
            .lines()
            .find(|l| l.contains(&format!("name: '{setting}'")))
            .unwrap_or_else(|| panic!("no {setting} setting"));
        assert!(
            line.contains("value: '@Microsoft.KeyVault(SecretUri=${"),
            "{setting} must be a Key Vault reference: {line}"
        );
    }
    // The secret values go into the vault, nowhere else.
    let mentions = |line: &str, word: &str| {
        line.match_indices(word).any(|(i, _)| {
            let after = line[i + word.len()..].chars().next();
            !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
    };
    for secret in ["eventsKey", "apiKeys", "webhookSecret", "listKeys()"] {
        for line in main.lines().filter(|l| mentions(l, secret)) {
            let t = line.trim_start();
            let allowed = t.starts_with("param ")
                || t.starts_with("//")
                || t.starts_with("@description")
                || t.starts_with("properties: { value:")
                || t.starts_with("value: 'DefaultEndpointsProtocol=");
            assert!(allowed, "{secret} outside the vault: {line}");
        }
    }
    let grant = block(&main, "resource appSecrets ");
    assert!(grant.contains("scope: vault"), "{grant}");
    assert!(grant.contains("roles.keyVaultSecretsUser"), "{grant}");
    assert!(main.contains("keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'"));
    assert!(main.contains("keyVaultReferenceIdentity:"));
}

#[test]
fn application_insights_is_connected() {
    let main = read("infra/main.bicep");
    assert!(main.contains("'Microsoft.Insights/components@"));
    assert!(main.contains(
        "{ name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }"
    ));
}

#[test]
fn the_app_scales_out_on_table_storage_and_keeps_nothing_on_the_content_share() {
    let main = read("infra/main.bicep");
    assert!(!main.contains("functionAppScaleLimit: 1"));
    assert!(!main.contains("maximumElasticWorkerCount: 1"));
    assert!(main.contains("functionAppScaleLimit: maxInstances"));
    assert!(main.contains("{ name: 'KILN_STORE', value: 'table' }"));
    assert!(main.contains(
        "{ name: 'KILN_TABLE_ENDPOINT', value: storage.properties.primaryEndpoints.table }"
    ));
    assert!(
        !main.contains("value: '/home/"),
        "no kiln state on the SMB content share"
    );
    // The identity the endpoint is reached with may read and write tables.
    let roles = block(&main, "resource appStorage");
    assert!(
        roles.contains("roles.storageTableDataContributor"),
        "{roles}"
    );
}

/// What preflight requires at subscription scope for a marketplace source
/// is what infra grants there, by the same action name.
#[test]
fn the_marketplace_read_preflight_requires_is_granted_at_subscription_scope() {
    let p =
        kiln::app::pipelines::load_file(&repo().join("pipelines/ubuntu-2204-baseline.json"), None)
            .unwrap();
    let d = Deployment {
        subscription_id: "s1".into(),
        resource_group: "rg".into(),
        service_bus_id: "sb".into(),
        inventory_subscriptions: vec![],
    };
    let market = requirements(&d, [&p])
        .into_iter()
        .find(|r| {
            r.who == Principal::Kiln && r.scope == "/subscriptions/s1" && r.action.contains("skus")
        })
        .expect("a marketplace requirement");
    let module = read("infra/modules/subscription-roles.bicep");
    assert!(module.contains("targetScope = 'subscription'"));
    assert!(
        module.contains(&format!("'{}'", market.action)),
        "{}",
        market.action
    );
    let main = read("infra/main.bicep");
    let call = block(
        &main,
        "module subscriptionRoles 'modules/subscription-roles.bicep'",
    );
    assert!(call.contains("scope: subscription()"), "{call}");
    assert!(call.contains("principalId: appPrincipalId"), "{call}");
}
