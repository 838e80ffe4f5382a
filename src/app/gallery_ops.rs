//! Operator actions on published versions: pin (retention keeps it) and
//! promote (include it in `latest` after a staged rollout), through the
//! `Gallery` port, so they work the same on the local gallery and in Azure.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::App;
use crate::domain::gallery::GalleryVersion;
use crate::domain::template::GalleryImageRef;
use crate::ports::VersionUpdate;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PinRequest {
    pub version_id: String,
    /// Defaults to the `retention.pinTag` of the pipeline publishing there.
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub unpin: bool,
    /// Why it is pinned (the tag's value), e.g. "rollback target for INC-1234".
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteRequest {
    pub version_id: String,
    /// Exclude the version from `latest` again instead.
    #[serde(default)]
    pub demote: bool,
}

/// Why a request about a version cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `versionId` is not a gallery image version id (HTTP 400).
    #[error("{0}")]
    BadId(String),
    /// No such version (HTTP 404).
    #[error("{0}")]
    Missing(String),
}

async fn find(app: &App, version_id: &str) -> anyhow::Result<Result<GalleryVersion, Refusal>> {
    let Some(r) = GalleryImageRef::parse(version_id) else {
        return Ok(Err(Refusal::BadId(format!(
            "versionId: `{version_id}` is not a gallery image version id"
        ))));
    };
    let Some(version) = r.version.as_deref().and_then(|v| v.parse().ok()) else {
        return Ok(Err(Refusal::BadId(format!(
            "versionId: `{version_id}` names no Major.Minor.Patch version"
        ))));
    };
    let found = app
        .gallery
        .list_versions(&r.definition_id())
        .await?
        .into_iter()
        .find(|v| v.version == version);
    Ok(found.ok_or_else(|| Refusal::Missing(format!("no gallery image version {version_id}"))))
}

fn pin_tag_for(app: &App, definition_id: &str) -> String {
    app.pipelines
        .iter()
        .find(|p| {
            p.gallery_targets()
                .iter()
                .any(|t| t.definition_id().eq_ignore_ascii_case(definition_id))
        })
        .map(|p| p.kiln.retention.pin_tag.clone())
        .unwrap_or_else(|| "kiln.pin".to_string())
}

pub async fn pin(app: &App, req: &PinRequest) -> anyhow::Result<Result<GalleryVersion, Refusal>> {
    let v = match find(app, &req.version_id).await? {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let tag = req
        .tag
        .clone()
        .unwrap_or_else(|| pin_tag_for(app, &v.definition_id));
    let mut tags: BTreeMap<String, String> = v.tags.clone();
    if req.unpin {
        tags.remove(&tag);
    } else {
        let value = req
            .reason
            .clone()
            .unwrap_or_else(|| format!("pinned {}", app.clock.now().to_rfc3339()));
        tags.insert(tag, value);
    }
    let update = VersionUpdate {
        tags: Some(tags),
        ..VersionUpdate::default()
    };
    app.gallery
        .update_version(&v.definition_id, v.version, &update)
        .await?;
    find(app, &req.version_id).await
}

pub async fn promote(
    app: &App,
    req: &PromoteRequest,
) -> anyhow::Result<Result<GalleryVersion, Refusal>> {
    let v = match find(app, &req.version_id).await? {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let update = VersionUpdate {
        exclude_from_latest: Some(req.demote),
        ..VersionUpdate::default()
    };
    app.gallery
        .update_version(&v.definition_id, v.version, &update)
        .await?;
    find(app, &req.version_id).await
}
