//! `/api/evidence`: a gallery version's evidence: its summary and the
//! gate's findings, its SBOM (SPDX 2.3), what changed against another
//! version or its base, and its signed provenance (a DSSE envelope).

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::ApiResult;
use crate::app::evidence::read;
use crate::app::App;
use crate::domain::version::ImageVersion;
use crate::ports::EvidenceFile;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; the handlers read it by hand to name a bad value.
pub struct VersionQuery {
    /// A gallery image version id: `/subscriptions/…/galleries/G/images/I/versions/1.2.3`.
    version: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DiffQuery {
    /// The newer version id.
    to: String,
    /// The older version id; absent compares `to` with its base image.
    from: Option<String>,
}

fn param(q: &[(String, String)], name: &str) -> Option<String> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn version_param(q: &[(String, String)], name: &str) -> Result<(String, ImageVersion), ApiError> {
    let v = param(q, name)
        .ok_or_else(|| ApiError::parameter(name, "a gallery image version id", ""))?;
    read::parse_version_id(&v).map_err(|e| {
        let mut err = ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameter,
            format!("{name}: {e}"),
        );
        err.body.parameter = Some(name.to_string());
        err
    })
}

fn missing(what: &str, id: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::EvidenceNotFound,
        format!("{id} has no {what}: it was published before kiln kept evidence, or not by kiln"),
    )
}

/// The version's evidence summary (SBOM digest, what changed, the gate) and
/// the gate's last findings.
#[utoipa::path(get, path = "/api/evidence", tag = "gallery", params(VersionQuery),
    responses(
        (status = 200, description = "`{summary, findings}`: the evidence step's summary and the gate's last findings (null without a gate)", body = Object),
        (status = 400, description = "`version` is not a version id (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "No evidence for it (`evidence_not_found`)", body = ErrorBody),
    ))]
pub async fn show(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> ApiResult {
    let (def, v) = version_param(&q, "version")?;
    let store = app.evidence.store.as_ref();
    let summary = read::json_file(store, &def, v, EvidenceFile::Summary).await?;
    let findings = read::json_file(store, &def, v, EvidenceFile::Findings).await?;
    if summary.is_none() && findings.is_none() {
        return Err(missing("evidence", &format!("{def}/versions/{v}")));
    }
    Ok(Json(json!({"summary": summary, "findings": findings})).into_response())
}

/// The version's SBOM, SPDX 2.3 JSON, as stored (its sha256 is the
/// version's `kiln.sbom.sha256` tag).
#[utoipa::path(get, path = "/api/evidence/sbom", tag = "gallery", params(VersionQuery),
    responses(
        (status = 200, description = "The SPDX 2.3 document", content_type = "application/spdx+json", body = Object),
        (status = 400, description = "`version` is not a version id (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "No SBOM for it (`evidence_not_found`)", body = ErrorBody),
    ))]
pub async fn sbom(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> ApiResult {
    let (def, v) = version_param(&q, "version")?;
    match app.evidence.store.get(&def, v, EvidenceFile::Sbom).await? {
        Some(bytes) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/spdx+json")],
            bytes,
        )
            .into_response()),
        None => Err(missing("SBOM", &format!("{def}/versions/{v}"))),
    }
}

/// Packages added, removed, upgraded and downgraded from `from` to `to`,
/// or from `to`'s base image when `from` is absent.
#[utoipa::path(get, path = "/api/evidence/diff", tag = "gallery", params(DiffQuery),
    responses(
        (status = 200, description = "`{from, to, added, removed, upgraded, downgraded}`", body = Object),
        (status = 400, description = "A version id is malformed (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "A version has no SBOM (`evidence_not_found`)", body = ErrorBody),
    ))]
pub async fn diff(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> ApiResult {
    let (to_def, to_v) = version_param(&q, "to")?;
    let store = app.evidence.store.as_ref();
    let to_id = format!("{to_def}/versions/{to_v}");
    let (from_label, result) = match param(&q, "from") {
        Some(_) => {
            let (from_def, from_v) = version_param(&q, "from")?;
            let label = format!("{from_def}/versions/{from_v}");
            (
                label,
                read::diff_versions(store, (&from_def, from_v), (&to_def, to_v)).await,
            )
        }
        None => (
            "base".to_string(),
            read::diff_from_base(store, &to_def, to_v).await,
        ),
    };
    match result {
        Ok(d) => {
            let mut v = serde_json::to_value(&d).map_err(anyhow::Error::from)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("from".into(), Value::String(from_label));
                o.insert("to".into(), Value::String(to_id));
            }
            Ok(Json(v).into_response())
        }
        Err(e) if e.to_string().contains("has no") => Err(ApiError::not_found(
            ErrorCode::EvidenceNotFound,
            format!("{e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The version's signed provenance: a DSSE envelope around an in-toto
/// statement with a SLSA provenance v1 predicate.
#[utoipa::path(get, path = "/api/evidence/provenance", tag = "gallery", params(VersionQuery),
    responses(
        (status = 200, description = "The DSSE envelope", body = Object),
        (status = 400, description = "`version` is not a version id (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "No provenance for it (`evidence_not_found`)", body = ErrorBody),
    ))]
pub async fn provenance(
    State(app): State<App>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let (def, v) = version_param(&q, "version")?;
    match read::json_file(
        app.evidence.store.as_ref(),
        &def,
        v,
        EvidenceFile::Provenance,
    )
    .await?
    {
        Some(doc) => Ok(Json(doc).into_response()),
        None => Err(missing("provenance", &format!("{def}/versions/{v}"))),
    }
}
