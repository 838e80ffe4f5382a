//! `GET /subscriptions/{id}` (Microsoft.Resources 2022-12-01), which kiln's
//! inventory reads to make sure each listed subscription is readable before
//! it trusts Resource Graph's silence about it. Every subscription exists
//! and is `Enabled`, except one marked unreadable (fault): that answers 403
//! `AuthorizationFailed`, ARM's answer to a read the caller has no role for.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::world::Fault;
use super::{arm_error, Answer, ArmRequest, ArmWorld};

pub const API_VERSION: &str = "2022-12-01";

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    if !(req.segments.len() == 2 && req.seg(0) == "subscriptions" && req.method == Method::GET) {
        return None;
    }
    if let Some(refused) = super::api_version(req, API_VERSION) {
        return Some(refused);
    }
    let sub = req.raw(1);
    let (w, _) = world.lock();
    let unreadable = w.has_fault(|f| {
        matches!(f, Fault::UnreadableSubscription { subscription } if subscription.eq_ignore_ascii_case(sub))
    });
    if unreadable {
        return Some(
            arm_error(
                StatusCode::FORBIDDEN,
                "AuthorizationFailed",
                format!("The client does not have authorization to perform action 'Microsoft.Resources/subscriptions/read' over scope '/subscriptions/{sub}' or the scope is invalid."),
            )
            .into(),
        );
    }
    Some(
        axum::Json(json!({
            "id": format!("/subscriptions/{sub}"),
            "subscriptionId": sub,
            "displayName": format!("sim-{sub}"),
            "state": "Enabled",
            "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
            "authorizationSource": "RoleBased",
        }))
        .into(),
    )
}
