//! The staging resource group's storage account and its `customization.log`.
//!
//! ARM: `GET /subscriptions/{s}/resourceGroups/{staging}/providers/Microsoft.Storage/storageAccounts`
//! lists the account of the template's run (none before the first run),
//! with `primaryEndpoints.blob` pointing back at the sim.
//! Blob: `/blob/{account}/packerlogs?restype=container&comp=list` and
//! `GET /blob/{account}/packerlogs/{folder}/customization.log` with `Range: bytes=N-`.
//!
//! The log itself is rendered in `customization_log`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use super::customization_log::{render_log, CONTAINER, LOG};
use super::world::staging_key;
use super::{arm_error, Answer, ArmRequest, ArmWorld};

/// `Microsoft.Storage` as the staging account is listed.
pub const STORAGE_API_VERSION: &str = "2023-05-01";

/// `GET .../resourceGroups/{staging}/providers/Microsoft.Storage/storageAccounts`.
pub(crate) fn handle_arm(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    let s = |i| req.seg(i);
    if !(s(0) == "subscriptions"
        && s(2) == "resourcegroups"
        && s(4) == "providers"
        && s(5) == "microsoft.storage"
        && s(6) == "storageaccounts"
        && req.segments.len() == 7
        && req.method == axum::http::Method::GET)
    {
        return None;
    }
    if let Some(refused) = super::api_version(req, STORAGE_API_VERSION) {
        return Some(refused);
    }
    let (w, _) = world.lock();
    let group = staging_key(req.raw(1), req.raw(3));
    let mut accounts = Vec::new();
    if let Some(key) = w.staging.get(&group) {
        if let Some(run) = w.templates.get(key).and_then(|t| t.run.as_ref()) {
            accounts.push(run.storage_account.clone());
        }
    }
    for (account, (g, _, _)) in &w.kept_logs {
        if *g == group {
            accounts.push(account.clone());
        }
    }
    if !w.staging.contains_key(&group) && accounts.is_empty() {
        return Some(
            arm_error(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                format!("Resource group '{}' could not be found.", req.raw(3)),
            )
            .into(),
        );
    }
    let value: Vec<Value> = accounts
        .iter()
        .map(|a| {
            json!({
                "id": format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{a}", req.raw(1), req.raw(3)),
                "name": a,
                "type": "Microsoft.Storage/storageAccounts",
                "kind": "StorageV2",
                "sku": {"name": "Standard_LRS", "tier": "Standard"},
                "properties": {
                    "provisioningState": "Succeeded",
                    "primaryEndpoints": {"blob": world.url(&format!("/blob/{a}/"))},
                },
            })
        })
        .collect();
    Some(Json(json!({ "value": value })).into())
}

pub(crate) fn blob_router(world: Arc<ArmWorld>) -> axum::Router {
    axum::Router::new()
        .route("/blob/{account}/{container}", get(list_blobs))
        .route("/blob/{account}/{container}/{*blob}", get(get_blob))
        .with_state(world)
}

/// The run's log bytes behind an account, and its folder.
fn find_log(world: &ArmWorld, account: &str) -> Option<(String, Vec<u8>)> {
    let (w, now) = world.lock();
    if let Some((_, t, gone_at)) = w.kept_logs.get(account) {
        let run = t.run.as_ref()?;
        return Some((run.log_folder.clone(), render_log(t, run, *gone_at)));
    }
    w.templates.values().find_map(|t| {
        let run = t.run.as_ref().filter(|r| r.storage_account == account)?;
        Some((run.log_folder.clone(), render_log(t, run, now)))
    })
}

fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>");
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// Storage wants credentials too: a bearer token or a SAS signature.
fn authorized(headers: &HeaderMap, query: &std::collections::HashMap<String, String>) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7)
        || query.contains_key("sig")
}

async fn list_blobs(
    State(world): State<Arc<ArmWorld>>,
    Path((account, container)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    request: Request,
) -> Response {
    if !authorized(request.headers(), &q) {
        return storage_error(
            StatusCode::UNAUTHORIZED,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request.",
        );
    }
    if q.get("restype").map(String::as_str) != Some("container")
        || q.get("comp").map(String::as_str) != Some("list")
    {
        return storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            "Expected restype=container&comp=list.",
        );
    }
    let Some((folder, log)) = find_log(&world, &account).filter(|_| container == CONTAINER) else {
        return storage_error(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            "The specified container does not exist.",
        );
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}\" ContainerName=\"{CONTAINER}\"><Blobs><Blob><Name>{folder}/{LOG}</Name><Properties><Content-Length>{}</Content-Length><Content-Type>text/plain</Content-Type><BlobType>AppendBlob</BlobType></Properties></Blob></Blobs><NextMarker /></EnumerationResults>",
        world.url(&format!("/blob/{account}/")),
        log.len()
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        body,
    )
        .into_response()
}

async fn get_blob(
    State(world): State<Arc<ArmWorld>>,
    Path((account, container, blob)): Path<(String, String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    request: Request,
) -> Response {
    if !authorized(request.headers(), &q) {
        return storage_error(
            StatusCode::UNAUTHORIZED,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request.",
        );
    }
    let found = find_log(&world, &account)
        .filter(|(folder, _)| container == CONTAINER && blob == format!("{folder}/{LOG}"));
    let Some((_, log)) = found else {
        return storage_error(
            StatusCode::NOT_FOUND,
            "BlobNotFound",
            "The specified blob does not exist.",
        );
    };
    let total = log.len();
    let range = request
        .headers()
        .get(header::RANGE)
        .or_else(|| request.headers().get("x-ms-range"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(range) = range else {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], log).into_response();
    };
    let Some((start, end)) = parse_range(&range, total) else {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
            "",
        )
            .into_response();
    };
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::CONTENT_TYPE, "text/plain".to_string()),
            (
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            ),
        ],
        log[start..=end].to_vec(),
    )
        .into_response()
}

/// `bytes=N-` or `bytes=N-M` within `total` bytes, as inclusive bounds.
fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    if start >= total {
        return None;
    }
    let end = match b.trim() {
        "" => total - 1,
        e => e.parse::<usize>().ok()?.min(total - 1),
    };
    (end >= start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_read_as_storage_reads_them() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=2-5", 10), Some((2, 5)));
        assert_eq!(parse_range("bytes=2-50", 10), Some((2, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
        assert_eq!(parse_range("items=0-", 10), None);
    }
}
