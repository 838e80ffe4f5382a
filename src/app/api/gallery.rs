//! `/api/gallery`: the versions of every image definition the pipelines
//! publish to, with what the next retention run will do to each; pin and
//! promote.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::limits::{Body, BODY_LIMIT};
use super::retention::PlanItemView;
use super::ApiResult;
use crate::app::gallery_ops::{self, Refusal};
use crate::app::App;
use crate::domain::gallery::GalleryVersion;
use crate::domain::retention::Reason;

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub region: String,
    pub replica_count: u32,
    /// `Replicating | Completed | Failed`
    pub state: String,
}

/// A gallery image version (the gallery's fields, with kiln's view of it).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub definition_id: String,
    pub version: String,
    pub published: Option<DateTime<Utc>>,
    pub exclude_from_latest: bool,
    pub end_of_life: Option<DateTime<Utc>>,
    pub block_deletion_before_end_of_life: bool,
    /// Lineage (`kiln.*`) and other tags.
    pub tags: BTreeMap<String, String>,
    /// Replicas per region.
    pub replication: Vec<Replica>,
    pub provisioning_state: String,
    /// Whether `latest` resolves to this version now.
    pub latest: bool,
    /// Whether a consumer (VM, scale set) uses it, as the last retention plan saw.
    pub in_use: bool,
    /// What the next retention run will do to it; absent when retention
    /// skips the definition.
    pub next_retention: Option<PlanItemView>,
    /// Its evidence in short (`/api/evidence?version=` has all of it):
    /// `{packages, sbomSha256, gate: {mode, verdict, blocking}, signed}`;
    /// absent when kiln kept none for it.
    #[schema(value_type = Option<Object>)]
    pub evidence: Option<Value>,
}

impl VersionView {
    fn new(
        v: &GalleryVersion,
        latest: bool,
        plan: Option<&crate::domain::retention::PlanItem>,
    ) -> Self {
        Self {
            definition_id: v.definition_id.clone(),
            version: v.version.to_string(),
            published: v.published,
            exclude_from_latest: v.exclude_from_latest,
            end_of_life: v.end_of_life,
            block_deletion_before_end_of_life: v.block_deletion_before_end_of_life,
            tags: v.tags.clone(),
            replication: v
                .replication
                .iter()
                .map(|r| Replica {
                    region: r.region.clone(),
                    replica_count: r.replica_count,
                    state: r.state.clone(),
                })
                .collect(),
            provisioning_state: v.provisioning_state.clone(),
            latest,
            in_use: plan.is_some_and(|i| matches!(i.reason, Reason::InUse)),
            next_retention: plan.map(PlanItemView::from),
            evidence: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Definition {
    /// Image definition resource id.
    pub definition: String,
    /// The pipeline publishing to it (the first, when several do).
    pub pipeline: String,
    /// Oldest first.
    pub versions: Vec<VersionView>,
}

/// The summary the evidence step stored, cut to what a listing shows; a
/// file that cannot be read is left out of the listing, not an error.
async fn evidence_in_short(
    app: &App,
    def: &str,
    version: crate::domain::version::ImageVersion,
) -> Option<Value> {
    let s = crate::app::evidence::read::json_file(
        app.evidence.store.as_ref(),
        def,
        version,
        crate::ports::EvidenceFile::Summary,
    )
    .await
    .ok()??;
    // The gate's latest word is in findings.json (the re-check rewrites
    // it); the summary has the one at publish time.
    let findings = crate::app::evidence::read::json_file(
        app.evidence.store.as_ref(),
        def,
        version,
        crate::ports::EvidenceFile::Findings,
    )
    .await
    .ok()
    .flatten();
    let gate = s["gate"].as_object().map(|g| {
        let (verdict, blocking) = match &findings {
            Some(f) => (
                f["verdict"]["verdict"].clone(),
                f["verdict"]["blocking"].as_array().map_or(0, Vec::len),
            ),
            None => (
                g.get("verdict").cloned().unwrap_or(Value::Null),
                g.get("blocking")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            ),
        };
        serde_json::json!({"mode": g.get("mode"), "verdict": verdict, "blocking": blocking})
    });
    Some(serde_json::json!({
        "packages": s["sbom"]["packages"],
        "sbomSha256": s["sbom"]["sha256"],
        "gate": gate,
        "signed": s["provenance"]["signed"],
    }))
}

/// Every definition the pipelines publish to, with its versions.
#[utoipa::path(get, path = "/api/gallery", tag = "gallery",
    responses((status = 200, description = "Definitions and their versions", body = Vec<Definition>)))]
pub async fn list(State(app): State<App>) -> ApiResult {
    let plans = crate::app::retention_function::plan(&app).await?;
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in app.pipelines.iter() {
        for t in p.gallery_targets() {
            let def = t.definition_id();
            if !seen.insert(def.to_ascii_lowercase()) {
                continue;
            }
            let mut versions = app.gallery.list_versions(&def).await?;
            versions.sort_by_key(|v| v.version);
            let latest = versions
                .iter()
                .filter(|v| !v.exclude_from_latest)
                .map(|v| v.version)
                .max();
            let plan = plans
                .iter()
                .find(|pl| pl.definition_id.eq_ignore_ascii_case(&def));
            let mut views = Vec::with_capacity(versions.len());
            for v in &versions {
                let item = plan.and_then(|pl| pl.items.iter().find(|i| i.version == v.version));
                let mut view = VersionView::new(v, Some(v.version) == latest, item);
                view.evidence = evidence_in_short(&app, &def, v.version).await;
                views.push(view);
            }
            out.push(Definition {
                definition: def,
                pipeline: p.name.clone(),
                versions: views,
            });
        }
    }
    Ok(Json(out).into_response())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn refusal(e: Refusal) -> ApiError {
    match e {
        Refusal::BadId(m) => ApiError::bad_request(m),
        Refusal::Missing(m) => ApiError::not_found(ErrorCode::GalleryNotFound, m),
    }
}

/// The body of `POST /api/gallery/pin`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; `gallery_ops::PinRequest` reads it.
pub struct PinBody {
    /// The version's resource id (`…/images/<def>/versions/1.2.3`).
    version_id: String,
    /// Default: the pipeline's `retention.pinTag`.
    tag: Option<String>,
    /// Remove the pin instead.
    unpin: Option<bool>,
    /// Why (the tag's value).
    reason: Option<String>,
}

/// The body of `POST /api/gallery/promote`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; `gallery_ops::PromoteRequest` reads it.
pub struct PromoteBody {
    version_id: String,
    /// Exclude it from `latest` again instead.
    demote: Option<bool>,
}

/// The version as the gallery has it after a pin or promote.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GalleryVersionView {
    pub definition_id: String,
    pub version: String,
    pub published: Option<DateTime<Utc>>,
    pub exclude_from_latest: bool,
    pub end_of_life: Option<DateTime<Utc>>,
    pub block_deletion_before_end_of_life: bool,
    pub tags: BTreeMap<String, String>,
    #[schema(value_type = Vec<Object>)]
    pub replication: Value,
    pub provisioning_state: String,
}

impl From<&GalleryVersion> for GalleryVersionView {
    fn from(v: &GalleryVersion) -> Self {
        Self {
            definition_id: v.definition_id.clone(),
            version: v.version.to_string(),
            published: v.published,
            exclude_from_latest: v.exclude_from_latest,
            end_of_life: v.end_of_life,
            block_deletion_before_end_of_life: v.block_deletion_before_end_of_life,
            tags: v.tags.clone(),
            replication: serde_json::to_value(&v.replication).unwrap_or(Value::Null),
            provisioning_state: v.provisioning_state.clone(),
        }
    }
}

/// Pins a version (retention keeps it) or unpins it.
#[utoipa::path(post, path = "/api/gallery/pin", tag = "gallery", request_body = PinBody,
    responses(
        (status = 200, description = "The version after the change", body = GalleryVersionView),
        (status = 400, description = "Not a pin request, or not a version id (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such version (`gallery_not_found`)", body = ErrorBody),
    ))]
pub async fn pin(State(app): State<App>, Body(body): Body<BODY_LIMIT>) -> ApiResult {
    let req: gallery_ops::PinRequest = parse_json(&body)?;
    match gallery_ops::pin(&app, &req).await? {
        Ok(v) => Ok(Json(GalleryVersionView::from(&v)).into_response()),
        Err(e) => Err(refusal(e)),
    }
}

/// Includes a version in `latest` (or excludes it again).
#[utoipa::path(post, path = "/api/gallery/promote", tag = "gallery", request_body = PromoteBody,
    responses(
        (status = 200, description = "The version after the change", body = GalleryVersionView),
        (status = 400, description = "Not a promote request, or not a version id (`invalid_request`)", body = ErrorBody),
        (status = 404, description = "No such version (`gallery_not_found`)", body = ErrorBody),
    ))]
pub async fn promote(State(app): State<App>, Body(body): Body<BODY_LIMIT>) -> ApiResult {
    let req: gallery_ops::PromoteRequest = parse_json(&body)?;
    match gallery_ops::promote(&app, &req).await? {
        Ok(v) => Ok(Json(GalleryVersionView::from(&v)).into_response()),
        Err(e) => Err(refusal(e)),
    }
}
