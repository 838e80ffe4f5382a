//! Preflight against a fake ARM: the permissions API for kiln itself, the
//! identity, role assignment and role definition reads for Image Builder's.

use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::permissions::Plane;
use crate::providers::azure::arm::testing;

const SUB: &str = "/subscriptions/s1";
const RG: &str = "/subscriptions/s1/resourceGroups/rg-kiln";
const GALLERY: &str =
    "/subscriptions/s1/resourceGroups/rg-img/providers/Microsoft.Compute/galleries/corp";
const MARKET: &str =
    "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read";
const IDENTITY: &str =
    "/subscriptions/s1/resourceGroups/rg-img/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-aib";

fn kiln(scope: &str, plane: Plane, action: &str) -> Requirement {
    Requirement {
        who: Principal::Kiln,
        scope: scope.into(),
        plane,
        action: action.into(),
        role: "Reader",
        why: "test".into(),
    }
}

fn aib(scope: &str, action: &str) -> Requirement {
    Requirement {
        who: Principal::Aib {
            identity_id: IDENTITY.into(),
        },
        ..kiln(scope, Plane::Control, action)
    }
}

async fn permissions_at(server: &MockServer, scope: &str, body: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(format!(
            "{scope}/providers/Microsoft.Authorization/permissions"
        )))
        .and(query_param("api-version", AUTHORIZATION_API))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

fn verdict_of<'a>(found: &'a [(Requirement, Verdict)], action: &str) -> &'a Verdict {
    &found.iter().find(|(r, _)| r.action == action).unwrap().1
}

#[tokio::test]
async fn kilns_own_permissions_are_matched_with_wildcards_minus_not_actions_across_pages() {
    let server = MockServer::start().await;
    permissions_at(
        &server,
        RG,
        json!({"value": [{"actions": ["Microsoft.VirtualMachineImages/imageTemplates/*"], "notActions": []}]}),
    )
    .await;
    // The subscription's reply comes in two pages; Contributor-like on the
    // first, with the marketplace carved out, Reader-like nothing on the second.
    Mock::given(method("GET"))
        .and(path(format!(
            "{SUB}/providers/Microsoft.Authorization/permissions"
        )))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"value": [{"actions": ["Microsoft.Resources/*/read"], "notActions": []}]}),
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    permissions_at(
        &server,
        SUB,
        json!({"value": [{"actions": ["Microsoft.Compute/*/read"], "notActions": ["Microsoft.Compute/locations/*"]}],
               "nextLink": format!("https://management.azure.com{SUB}/providers/Microsoft.Authorization/permissions?api-version={AUTHORIZATION_API}&page=2")}),
    )
    .await;
    let p = Preflight::new(testing::client(&server.uri()).0);
    let found = p
        .check(&[
            kiln(
                RG,
                Plane::Control,
                "Microsoft.VirtualMachineImages/imageTemplates/run/action",
            ),
            kiln(
                RG,
                Plane::Control,
                "Microsoft.VirtualMachineImages/imageTemplates/cancel/action",
            ),
            kiln(SUB, Plane::Control, MARKET),
            kiln(
                SUB,
                Plane::Control,
                "Microsoft.Compute/virtualMachines/read",
            ),
            kiln(SUB, Plane::Control, "Microsoft.Resources/deployments/read"),
        ])
        .await
        .unwrap();
    assert_eq!(
        verdict_of(
            &found,
            "Microsoft.VirtualMachineImages/imageTemplates/run/action"
        ),
        &Verdict::Granted
    );
    assert_eq!(verdict_of(&found, MARKET), &Verdict::Missing);
    assert_eq!(
        verdict_of(&found, "Microsoft.Compute/virtualMachines/read"),
        &Verdict::Granted
    );
    assert_eq!(
        verdict_of(&found, "Microsoft.Resources/deployments/read"),
        &Verdict::Granted,
        "the second page counts"
    );
    // One call per scope (and page), however many requirements share it.
    let calls = server.received_requests().await.unwrap();
    assert_eq!(calls.len(), 3, "{calls:?}");
}

#[tokio::test]
async fn service_bus_send_and_receive_are_data_actions() {
    let server = MockServer::start().await;
    let ns = format!("{RG}/providers/Microsoft.ServiceBus/namespaces/sb");
    permissions_at(
        &server,
        &ns,
        json!({"value": [
            {"actions": ["*"], "notActions": [], "dataActions": [], "notDataActions": []},
            {"actions": [], "dataActions": ["Microsoft.ServiceBus/namespaces/messages/send/action"]}
        ]}),
    )
    .await;
    let p = Preflight::new(testing::client(&server.uri()).0);
    let found = p
        .check(&[
            kiln(
                &ns,
                Plane::Data,
                "Microsoft.ServiceBus/namespaces/messages/send/action",
            ),
            kiln(
                &ns,
                Plane::Data,
                "Microsoft.ServiceBus/namespaces/messages/receive/action",
            ),
        ])
        .await
        .unwrap();
    assert_eq!(found[0].1, Verdict::Granted);
    assert_eq!(
        found[1].1,
        Verdict::Missing,
        "Owner-like actions are no data actions"
    );
}

#[tokio::test]
async fn a_scope_that_is_not_there_or_not_readable_is_reported_not_checked() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!(
            "{RG}/providers/Microsoft.Authorization/permissions"
        )))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "ResourceGroupNotFound", "message": "Resource group 'rg-kiln' could not be found."}}),
        ))
        .mount(&server)
        .await;
    let p = Preflight::new(testing::client(&server.uri()).0);
    let found = p
        .check(&[kiln(
            RG,
            Plane::Control,
            "Microsoft.VirtualMachineImages/imageTemplates/read",
        )])
        .await
        .unwrap();
    match &found[0].1 {
        Verdict::Unknown(why) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// The identity's principal, its role assignments that apply at the
/// target (the one on another gallery does not), and their definitions.
async fn image_builder_world(server: &MockServer, identity_status: u16) {
    Mock::given(method("GET"))
        .and(path(IDENTITY))
        .and(query_param("api-version", IDENTITY_API))
        .respond_with(ResponseTemplate::new(identity_status).set_body_json(
            if identity_status == 200 {
                json!({"id": IDENTITY, "properties": {"principalId": "p-aib", "clientId": "c-aib"}})
            } else {
                json!({"error": {"code": "AuthorizationFailed", "message": "no read"}})
            },
        ))
        .mount(server)
        .await;
    let def = format!("{GALLERY}/images/ubuntu");
    let writer = "/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/writer";
    let other = "/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/owner";
    Mock::given(method("GET"))
        .and(path(format!(
            "{def}/providers/Microsoft.Authorization/roleAssignments"
        )))
        .and(query_param("$filter", "principalId eq 'p-aib'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            {"properties": {"scope": GALLERY.to_uppercase(), "roleDefinitionId": writer, "principalId": "p-aib"}},
            {"properties": {"scope": "/subscriptions/s1/resourceGroups/rg-img/providers/Microsoft.Compute/galleries/corp2", "roleDefinitionId": other, "principalId": "p-aib"}}
        ]})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(writer))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"properties": {
            "roleName": "kiln image distributor",
            "permissions": [{"actions": ["Microsoft.Compute/galleries/images/versions/write"], "notActions": []}]
        }})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(other))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"properties": {"permissions": [{"actions": ["*"]}]}})),
        )
        .expect(0)
        .mount(server)
        .await;
}

#[tokio::test]
async fn the_image_builder_identity_is_checked_through_its_role_assignments_at_or_above_the_target()
{
    let server = MockServer::start().await;
    image_builder_world(&server, 200).await;
    let def = format!("{GALLERY}/images/ubuntu");
    let p = Preflight::new(testing::client(&server.uri()).0);
    let found = p
        .check(&[
            aib(&def, "Microsoft.Compute/galleries/images/versions/write"),
            aib(&def, "Microsoft.Compute/galleries/images/versions/delete"),
        ])
        .await
        .unwrap();
    assert_eq!(found[0].1, Verdict::Granted);
    assert_eq!(
        found[1].1,
        Verdict::Missing,
        "the Owner-like role on another gallery does not apply"
    );
}

#[tokio::test]
async fn an_identity_kiln_cannot_read_leaves_its_checks_not_made_with_the_reason() {
    let server = MockServer::start().await;
    image_builder_world(&server, 403).await;
    let p = Preflight::new(testing::client(&server.uri()).0);
    let found = p
        .check(&[aib(
            &format!("{GALLERY}/images/ubuntu"),
            "Microsoft.Compute/galleries/images/versions/write",
        )])
        .await
        .unwrap();
    match &found[0].1 {
        Verdict::Unknown(why) => {
            assert!(
                why.contains("cannot read the identity") && why.contains(IDENTITY),
                "{why}"
            );
            assert!(!why.contains(testing::TOKEN));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_assignment_covers_its_scope_and_everything_below_it() {
    assert!(covers(GALLERY, &format!("{GALLERY}/images/ubuntu")));
    assert!(covers(
        &GALLERY.to_uppercase(),
        &format!("{GALLERY}/images/u")
    ));
    assert!(covers("/", GALLERY));
    assert!(covers(SUB, GALLERY));
    assert!(!covers(
        &format!("{GALLERY}2"),
        &format!("{GALLERY}/images/u")
    ));
    assert!(!covers(&format!("{GALLERY}/images/u"), GALLERY));
}

#[tokio::test]
async fn no_answer_from_azure_ends_the_run_instead_of_failing_every_check() {
    // Nothing listens here: the connection is refused.
    let p = Preflight::new(testing::client("http://127.0.0.1:1").0);
    let e = p
        .check(&[
            kiln(RG, Plane::Control, "a/read"),
            kiln(SUB, Plane::Control, "b/read"),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.status, None, "{e}");
}
