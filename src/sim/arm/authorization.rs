//! What `kiln preflight` reads: the caller's permissions at a scope
//! (`Microsoft.Authorization/permissions`, 2022-04-01), a user-assigned
//! identity's principal id (`Microsoft.ManagedIdentity`, 2023-01-31), that
//! principal's role assignments and their role definitions.
//!
//! The model is deliberately small: kiln's identity may do everything except
//! the actions a `denyAction` fault takes away (they come back under
//! `notActions`/`notDataActions`, as a role with exclusions reads); every
//! user-assigned identity exists and holds one Contributor assignment at
//! subscription scope. Enough to show preflight finding a gap and printing
//! its fix, not a model of Azure RBAC.

use axum::http::Method;
use serde_json::{json, Value};

use super::world::Fault;
use super::{api_version, Answer, ArmRequest, ArmWorld};

pub const AUTHORIZATION_API: &str = "2022-04-01";
pub const IDENTITY_API: &str = "2023-01-31";
/// Contributor's built-in role definition id.
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    if req.method != Method::GET {
        return None;
    }
    let n = req.segments.len();
    let tail = |k: usize| req.segments[n.saturating_sub(k)..].join("/");
    if n >= 2 && tail(2) == "microsoft.authorization/permissions" {
        return Some(api_version(req, AUTHORIZATION_API).unwrap_or_else(|| permissions(world)));
    }
    if n >= 2 && tail(2) == "microsoft.authorization/roleassignments" {
        return Some(api_version(req, AUTHORIZATION_API).unwrap_or_else(|| assignments(req)));
    }
    if n >= 3 && req.seg(n - 3) == "microsoft.authorization" && req.seg(n - 2) == "roledefinitions"
    {
        return Some(api_version(req, AUTHORIZATION_API).unwrap_or_else(|| definition(req)));
    }
    if n >= 3
        && req.seg(n - 3) == "microsoft.managedidentity"
        && req.seg(n - 2) == "userassignedidentities"
    {
        return Some(api_version(req, IDENTITY_API).unwrap_or_else(|| identity(req)));
    }
    None
}

fn permissions(world: &ArmWorld) -> Answer {
    let (w, _) = world.lock();
    let denied: Vec<String> = w
        .faults
        .iter()
        .filter_map(|f| {
            let Fault::DenyAction { action } = f else {
                return None;
            };
            Some(action.clone())
        })
        .collect();
    // A data action reads like one (`…/blobs/read` under blobServices).
    let (data, control): (Vec<String>, Vec<String>) = denied.into_iter().partition(|a| {
        a.to_ascii_lowercase()
            .contains("/blobservices/containers/blobs/")
    });
    axum::Json(json!({"value": [{
        "actions": ["*"], "notActions": control,
        "dataActions": ["*"], "notDataActions": data,
    }]}))
    .into()
}

fn principal_of(identity_path: &str) -> String {
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            identity_path.to_ascii_lowercase().as_bytes(),
        ))
    };
    format!(
        "{}-{}-{}-{}-{}",
        &digest[0..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    )
}

fn identity(req: &ArmRequest) -> Answer {
    let id = req.path.clone();
    axum::Json(json!({
        "id": id,
        "name": req.raw(req.raw.len() - 1),
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "properties": {
            "principalId": principal_of(&id),
            "clientId": principal_of(&format!("{id}/client")),
            "tenantId": "00000000-0000-0000-0000-00000000aaaa",
        },
    }))
    .into()
}

fn subscription_of(req: &ArmRequest) -> String {
    match (req.seg(0), req.raw(1)) {
        ("subscriptions", sub) if !sub.is_empty() => sub.to_string(),
        _ => "00000000-0000-0000-0000-000000000000".into(),
    }
}

fn assignments(req: &ArmRequest) -> Answer {
    let sub = subscription_of(req);
    // `$filter=principalId eq '<id>'`: the one assignment every identity has.
    let principal = req
        .query("$filter")
        .and_then(|f| f.split('\'').nth(1))
        .unwrap_or_default()
        .to_string();
    let value: Vec<Value> = if principal.is_empty() {
        vec![]
    } else {
        vec![json!({
            "id": format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments/{}", principal_of(&principal)),
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "principalId": principal,
                "roleDefinitionId": format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{CONTRIBUTOR}"),
                "scope": format!("/subscriptions/{sub}"),
            },
        })]
    };
    axum::Json(json!({ "value": value })).into()
}

fn definition(req: &ArmRequest) -> Answer {
    axum::Json(json!({
        "id": req.path,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": "Contributor",
            "type": "BuiltInRole",
            "permissions": [{
                "actions": ["*"],
                "notActions": [
                    "Microsoft.Authorization/*/Delete",
                    "Microsoft.Authorization/*/Write",
                    "Microsoft.Authorization/elevateAccess/Action"
                ],
                "dataActions": [], "notDataActions": []
            }],
            "assignableScopes": ["/"],
        },
    }))
    .into()
}
