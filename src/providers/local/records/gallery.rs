//! The local gallery and other distributor outputs (`local_images`,
//! `local_versions`, `local_managed_images`): image definitions, the claim
//! that keeps a version from being published twice, and managed images.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::super::util::{parse_ts, ts};
use super::Records;
use crate::domain::gallery::{GalleryVersion, RegionReplication};
use crate::domain::version::ImageVersion;

/// A published (or publishing) local gallery version.
#[derive(Debug, Clone)]
pub(crate) struct VersionRow {
    pub definition_id: String,
    pub version: ImageVersion,
    pub template: String,
    pub path: String,
    pub published_at: Option<String>,
    pub exclude_from_latest: bool,
    pub end_of_life: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub replication: Vec<RegionReplication>,
    pub provisioning_state: String,
}

impl VersionRow {
    pub fn to_gallery_version(&self) -> GalleryVersion {
        GalleryVersion {
            definition_id: self.definition_id.clone(),
            version: self.version,
            published: self.published_at.as_deref().and_then(parse_ts),
            exclude_from_latest: self.exclude_from_latest,
            end_of_life: self.end_of_life.as_deref().and_then(parse_ts),
            block_deletion_before_end_of_life: false,
            tags: self.tags.clone(),
            replication: self.replication.clone(),
            provisioning_state: self.provisioning_state.clone(),
        }
    }

    pub fn id(&self) -> String {
        format!("{}/versions/{}", self.definition_id, self.version)
    }
}

fn version_from_row(r: &Row<'_>) -> rusqlite::Result<VersionRow> {
    let (major, minor, patch): (u32, u32, u32) =
        (r.get("major")?, r.get("minor")?, r.get("patch")?);
    let tags: String = r.get("tags")?;
    let replication: String = r.get("replication")?;
    Ok(VersionRow {
        definition_id: r.get("definition_id")?,
        version: ImageVersion::new(major, minor, patch),
        template: r.get("template")?,
        path: r.get("path")?,
        published_at: r.get("published_at")?,
        exclude_from_latest: r.get::<_, i64>("exclude_from_latest")? != 0,
        end_of_life: r.get("end_of_life")?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        replication: serde_json::from_str(&replication).unwrap_or_default(),
        provisioning_state: r.get("provisioning_state")?,
    })
}

#[derive(Debug, Clone)]
pub(crate) struct ManagedImageRow {
    pub id: String,
    pub template: String,
    pub path: String,
    pub created_at: String,
}

/// Outcome of claiming a gallery version for publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// New row in state `Creating`: go ahead.
    Claimed,
    /// This template already holds it (a repeated or resumed publish).
    Ours { state: String },
    /// Another template published it: a version is never published twice.
    Taken { template: String },
}

impl Records {
    // ---- gallery ----

    pub fn image_ensure(
        &self,
        id: &str,
        gallery: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO local_gallery_images (id, gallery, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, gallery, name, ts(now)],
            )
            .map(|_| ())
        })
    }

    pub fn images(&self) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut st = c.prepare("SELECT id FROM local_gallery_images ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Claims `definition/version` for `template` (state `Creating`).
    pub fn version_claim(
        &self,
        definition_id: &str,
        version: ImageVersion,
        template: &str,
        path: &str,
    ) -> anyhow::Result<Claim> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT template, provisioning_state FROM local_gallery_versions
                     WHERE definition_id = ?1 AND version = ?2",
                    params![definition_id, version.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let claim = match existing {
                Some((t, state)) if t == template => Claim::Ours { state },
                Some((t, _)) => Claim::Taken { template: t },
                None => {
                    tx.execute(
                        "INSERT INTO local_gallery_versions (definition_id, version, major, minor, patch,
                           template, path, provisioning_state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'Creating')",
                        params![
                            definition_id,
                            version.to_string(),
                            version.major,
                            version.minor,
                            version.patch,
                            template,
                            path
                        ],
                    )?;
                    Claim::Claimed
                }
            };
            tx.commit()?;
            Ok(claim)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn version_complete(
        &self,
        definition_id: &str,
        version: ImageVersion,
        published_at: DateTime<Utc>,
        exclude_from_latest: bool,
        end_of_life: Option<&str>,
        tags: &BTreeMap<String, String>,
        replication: &[RegionReplication],
        state: &str,
    ) -> anyhow::Result<()> {
        let tags = serde_json::to_string(tags)?;
        let replication = serde_json::to_string(replication)?;
        self.db.with(|c| {
            c.execute(
                "UPDATE local_gallery_versions SET published_at = ?3, exclude_from_latest = ?4,
                   end_of_life = ?5, tags = ?6, replication = ?7, provisioning_state = ?8
                 WHERE definition_id = ?1 AND version = ?2",
                params![
                    definition_id,
                    version.to_string(),
                    ts(published_at),
                    exclude_from_latest as i64,
                    end_of_life,
                    tags,
                    replication,
                    state
                ],
            )
            .map(|_| ())
        })
    }

    pub fn version_get(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<Option<VersionRow>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT * FROM local_gallery_versions WHERE definition_id = ?1 AND version = ?2",
                params![definition_id, version.to_string()],
                version_from_row,
            )
            .optional()
        })
    }

    pub fn versions(&self, definition_id: &str) -> anyhow::Result<Vec<VersionRow>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT * FROM local_gallery_versions WHERE definition_id = ?1
                 ORDER BY major, minor, patch",
            )?;
            let rows = st.query_map([definition_id], version_from_row)?;
            rows.collect()
        })
    }

    pub fn version_update(
        &self,
        definition_id: &str,
        version: ImageVersion,
        exclude_from_latest: Option<bool>,
        end_of_life: Option<DateTime<Utc>>,
        tags: Option<&std::collections::BTreeMap<String, String>>,
    ) -> anyhow::Result<bool> {
        let tags = tags.map(serde_json::to_string).transpose()?;
        self.db.with(|c| {
            c.execute(
                "UPDATE local_gallery_versions SET
                   exclude_from_latest = COALESCE(?3, exclude_from_latest),
                   end_of_life = COALESCE(?4, end_of_life),
                   tags = COALESCE(?5, tags)
                 WHERE definition_id = ?1 AND version = ?2",
                params![
                    definition_id,
                    version.to_string(),
                    exclude_from_latest.map(|b| b as i64),
                    end_of_life.map(ts),
                    tags
                ],
            )
            .map(|n| n == 1)
        })
    }

    pub fn version_delete(&self, definition_id: &str, version: ImageVersion) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM local_gallery_versions WHERE definition_id = ?1 AND version = ?2",
                params![definition_id, version.to_string()],
            )
            .map(|_| ())
        })
    }

    // ---- managed images ----

    pub fn managed_image_put(
        &self,
        m: &ManagedImageRow,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let tags = serde_json::to_string(tags)?;
        self.db.with(|c| {
            c.execute(
                "INSERT INTO local_managed_images (id, template, path, location, tags, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET template = excluded.template, path = excluded.path,
                   location = excluded.location, tags = excluded.tags, created_at = excluded.created_at",
                params![m.id, m.template, m.path, location, tags, m.created_at],
            )
            .map(|_| ())
        })
    }

    pub fn managed_image_get(&self, id: &str) -> anyhow::Result<Option<ManagedImageRow>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT id, template, path, created_at FROM local_managed_images WHERE id = ?1",
                [id],
                |r| {
                    Ok(ManagedImageRow {
                        id: r.get(0)?,
                        template: r.get(1)?,
                        path: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }
}
