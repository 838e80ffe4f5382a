//! Marketplace image versions, 2024-11-01, from images seeded through
//! `/_sim/arm/marketplace`:
//! `GET /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/publishers/{p}/artifacttypes/vmimage/offers/{o}/skus/{k}/versions`
//! answers a bare JSON array (no paging, as the spec says), and
//! `.../versions/{v}` one `VirtualMachineImage` with its
//! `imageDeprecationStatus`. An image line never seeded answers 404.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{arm_error, Answer, ArmRequest, ArmWorld};

pub const API_VERSION: &str = "2024-11-01";

/// The seed key of an image line.
pub fn line_key(location: &str, publisher: &str, offer: &str, sku: &str) -> String {
    format!("{location}/{publisher}/{offer}/{sku}").to_ascii_lowercase()
}

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    let s = |i| req.seg(i);
    let matches = s(0) == "subscriptions"
        && s(2) == "providers"
        && s(3) == "microsoft.compute"
        && s(4) == "locations"
        && s(6) == "publishers"
        && s(8) == "artifacttypes"
        && s(9) == "vmimage"
        && s(10) == "offers"
        && s(12) == "skus"
        && s(14) == "versions"
        && req.method == Method::GET;
    if !matches || !(15..=16).contains(&req.segments.len()) {
        return None;
    }
    if let Some(refused) = super::api_version(req, API_VERSION) {
        return Some(refused);
    }
    let (location, publisher, offer, sku) = (req.raw(5), req.raw(7), req.raw(11), req.raw(13));
    let (w, _) = world.lock();
    let Some(versions) = w
        .marketplace
        .get(&line_key(location, publisher, offer, sku))
    else {
        return Some(
            arm_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "Artifact: VMImage was not found for {publisher}:{offer}:{sku} in {location}."
                ),
            )
            .into(),
        );
    };
    let id = |v: &str| {
        format!(
            "/Subscriptions/{}/Providers/Microsoft.Compute/Locations/{location}/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions/{v}",
            req.raw(1)
        )
    };
    if req.segments.len() == 15 {
        let list: Vec<Value> = versions
            .iter()
            .map(|(v, _)| json!({"location": location, "name": v, "id": id(v)}))
            .collect();
        return Some(axum::Json(list).into());
    }
    let wanted = req.raw(15);
    Some(match versions.iter().find(|(v, _)| v == wanted) {
        Some((v, state)) => axum::Json(json!({
            "location": location,
            "name": v,
            "id": id(v),
            "properties": {
                "hyperVGeneration": "V2",
                "architecture": "x64",
                "osDiskImage": {"operatingSystem": "Linux"},
                "imageDeprecationStatus": {"imageState": state},
            },
        }))
        .into(),
        None => arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("Artifact: VMImage was not found for {publisher}:{offer}:{sku}:{wanted} in {location}."),
        )
        .into(),
    })
}
