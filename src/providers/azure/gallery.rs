//! Compute Gallery image versions (GalleryRP).
//!
//! The api-version is pinned to 2025-03-03 on purpose: from 2026-03-03 on,
//! the gallery gives new versions a default `endOfLifeDate` (publish + 6
//! months) and `blockDeletionBeforeEndOfLife = true` unless told otherwise,
//! which would quietly change what retention may delete. Moving past it needs
//! a decision, not a version bump.
//!
//! Lists do not carry replication status; it comes only from a GET with
//! `$expand=ReplicationStatus`. A version whose provisioning has succeeded is
//! replicated to all its target regions, so only unfinished versions are
//! fetched one by one.

use std::collections::BTreeMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::arm::{ArmClient, RetryPolicy};
use super::error::ArmError;
use crate::domain::version::ImageVersion;
use crate::ports::{Gallery, GalleryVersion, RegionReplication, VersionUpdate};

pub const API_VERSION: &str = "2025-03-03";

#[derive(Clone)]
pub struct AzureGallery {
    arm: ArmClient,
}

impl AzureGallery {
    pub fn new(arm: ArmClient) -> Self {
        Self { arm }
    }

    fn version_path(definition_id: &str, version: &str, expand: bool) -> String {
        let expand = if expand {
            "&$expand=ReplicationStatus"
        } else {
            ""
        };
        format!(
            "{}/versions/{version}?api-version={API_VERSION}{expand}",
            definition_id.trim_end_matches('/')
        )
    }

    /// One version with its replication status; `None` when it does not exist.
    pub async fn get_version(
        &self,
        definition_id: &str,
        version: &str,
    ) -> Result<Option<GalleryVersion>, ArmError> {
        let path = Self::version_path(definition_id, version, true);
        Ok(self
            .arm
            .get_json(&path)
            .await?
            .and_then(|doc| gallery_version(definition_id, &doc)))
    }

    /// Every version of a definition as listed (replication of unfinished versions fetched).
    pub async fn versions(&self, definition_id: &str) -> Result<Vec<GalleryVersion>, ArmError> {
        let list = format!(
            "{}/versions?api-version={API_VERSION}",
            definition_id.trim_end_matches('/')
        );
        let mut out = Vec::new();
        for item in self.arm.list_all(&list).await? {
            let Some(v) = gallery_version(definition_id, &item) else {
                continue;
            };
            let settled = v.provisioning_state.eq_ignore_ascii_case("Succeeded");
            if settled || item.pointer("/properties/replicationStatus").is_some() {
                out.push(v);
            } else if let Some(full) = self
                .get_version(definition_id, &v.version.to_string())
                .await?
            {
                out.push(full);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Gallery for AzureGallery {
    async fn list_versions(&self, definition_id: &str) -> anyhow::Result<Vec<GalleryVersion>> {
        self.versions(definition_id)
            .await
            .with_context(|| format!("Cannot list the versions of {definition_id}"))
    }

    async fn version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<Option<GalleryVersion>> {
        self.get_version(definition_id, &version.to_string())
            .await
            .with_context(|| format!("Cannot read {definition_id}/versions/{version}"))
    }

    async fn update_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
        update: &VersionUpdate,
    ) -> anyhow::Result<()> {
        if update.exclude_from_latest.is_none()
            && update.end_of_life.is_none()
            && update.tags.is_none()
        {
            return Ok(());
        }
        let path = Self::version_path(definition_id, &version.to_string(), false);
        let current = self.arm.get_json(&path).await?.with_context(|| {
            format!("Cannot update {definition_id}/versions/{version}: it does not exist")
        })?;
        let mut profile = Map::new();
        if let Some(x) = update.exclude_from_latest {
            profile.insert("excludeFromLatest".into(), json!(x));
        }
        if let Some(eol) = update.end_of_life {
            profile.insert(
                "endOfLifeDate".into(),
                json!(eol.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
        }
        // The update model declares storageProfile required (the spec's own
        // example sends it), so the current one is sent back unchanged.
        let mut body = json!({"properties": {
            "publishingProfile": profile,
            "storageProfile": current.pointer("/properties/storageProfile").cloned().unwrap_or(json!({})),
        }});
        if let Some(tags) = &update.tags {
            body["tags"] = json!(tags);
        }
        // Compute answers 200 or 202 and applies the change as a
        // long-running operation; nothing kiln does next depends on its end
        // (the next listing shows it), so it is not waited for.
        self.arm
            .send(Method::PATCH, &path, Some(&body), RetryPolicy::Idempotent)
            .await?
            .ok()
            .with_context(|| format!("Cannot update {definition_id}/versions/{version}"))?;
        tracing::info!(definition = definition_id, %version, ?update, "gallery version updated");
        Ok(())
    }

    async fn delete_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<()> {
        let path = Self::version_path(definition_id, &version.to_string(), false);
        let r = self
            .arm
            .send(Method::DELETE, &path, None, RetryPolicy::Idempotent)
            .await?;
        // 200/204 deleted, 202 accepted (the version reads Deleting, then is
        // gone), 404 gone already. The deletion is not waited for: a
        // Functions invocation may not block for minutes, and retention and
        // the driver read the gallery again before they rely on it.
        if !matches!(r.status, 200 | 202 | 204 | 404) {
            return Err(anyhow::Error::new(r.error())
                .context(format!("Cannot delete {definition_id}/versions/{version}")));
        }
        tracing::info!(definition = definition_id, %version, status = r.status, "gallery version deletion started");
        Ok(())
    }
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `West US` and `westus` are the same region.
fn region_key(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Reads a version resource. `None` for a name that is not `Major.Minor.Patch`
/// (the gallery allows no other, so such an item is not one of ours to manage).
pub fn gallery_version(definition_id: &str, item: &Value) -> Option<GalleryVersion> {
    let name = item.get("name").and_then(Value::as_str)?;
    let version: ImageVersion = match name.parse() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(definition = definition_id, %e, "skipping a gallery version");
            return None;
        }
    };
    let props = item.get("properties").cloned().unwrap_or(Value::Null);
    let publishing = props
        .get("publishingProfile")
        .cloned()
        .unwrap_or(Value::Null);
    let provisioning_state = props
        .get("provisioningState")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let default_count = publishing
        .get("replicaCount")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let targets: Vec<(String, u32)> = publishing
        .get("targetRegions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?;
            let count = t
                .get("regionalReplicaCount")
                .and_then(Value::as_u64)
                .unwrap_or(default_count);
            Some((region_key(name), count as u32))
        })
        .collect();
    let count_of = |region: &str| {
        targets
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, c)| *c)
            .unwrap_or(default_count as u32)
    };
    let replication = match props
        .pointer("/replicationStatus/summary")
        .and_then(Value::as_array)
    {
        Some(summary) => summary
            .iter()
            .filter_map(|s| {
                let region = region_key(s.get("region").and_then(Value::as_str)?);
                Some(RegionReplication {
                    replica_count: count_of(&region),
                    state: s
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or("Unknown")
                        .to_string(),
                    region,
                })
            })
            .collect(),
        None => {
            let state = if provisioning_state.eq_ignore_ascii_case("Succeeded") {
                "Completed"
            } else {
                "Unknown"
            };
            targets
                .iter()
                .map(|(region, count)| RegionReplication {
                    region: region.clone(),
                    replica_count: *count,
                    state: state.to_string(),
                })
                .collect()
        }
    };
    let tags: BTreeMap<String, String> = item
        .get("tags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(GalleryVersion {
        definition_id: definition_id.to_string(),
        version,
        published: time(publishing.get("publishedDate")),
        exclude_from_latest: publishing
            .get("excludeFromLatest")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        end_of_life: time(publishing.get("endOfLifeDate")),
        block_deletion_before_end_of_life: props
            .pointer("/safetyProfile/blockDeletionBeforeEndOfLife")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        tags,
        replication,
        provisioning_state,
    })
}

#[cfg(test)]
mod tests;
