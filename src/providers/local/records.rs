//! The local provider's rows in the shared SQLite store (`migrations/0002_local_provider.sql`).
//!
//! Every function is one or two short statements; callers never hold the
//! connection across an await.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{params, OptionalExtension, Row};

use super::util::{parse_ts, ts};
use crate::domain::gallery::{GalleryVersion, RegionReplication};
use crate::domain::version::ImageVersion;
use crate::ports::{RunOutput, RunState};
use crate::store::Db;

#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub template: String,
    pub body_sha256: String,
    pub instance_id: String,
    pub pid: u32,
    pub pid_start: String,
    pub run_state: LocalRunState,
    pub run_sub_state: Option<String>,
    pub message: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub source_version: Option<String>,
    pub staging: Option<String>,
    pub manifest: Option<String>,
}

impl RunRow {
    pub fn is_active(&self) -> bool {
        self.run_state.is_active()
    }
}

/// The AIB run states the local provider records. A narrower set than
/// [`RunState`]: it never writes `PartiallySucceeded` or a value it does not
/// know, so a stored value outside this set is a damaged row, not news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalRunState {
    Running,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
}

impl LocalRunState {
    const ALL: [LocalRunState; 5] = [
        LocalRunState::Running,
        LocalRunState::Canceling,
        LocalRunState::Succeeded,
        LocalRunState::Failed,
        LocalRunState::Canceled,
    ];

    /// The text stored in `local_runs.run_state` (AIB's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            LocalRunState::Running => "Running",
            LocalRunState::Canceling => "Canceling",
            LocalRunState::Succeeded => "Succeeded",
            LocalRunState::Failed => "Failed",
            LocalRunState::Canceled => "Canceled",
        }
    }

    /// Still running: the run has not reached its end state.
    pub fn is_active(self) -> bool {
        match self {
            LocalRunState::Running | LocalRunState::Canceling => true,
            LocalRunState::Succeeded | LocalRunState::Failed | LocalRunState::Canceled => false,
        }
    }

    /// Reads a stored value; exact, as only [`Self::as_str`] writes them.
    fn from_stored(template: &str, stored: &str) -> Result<Self, UnknownRunState> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == stored)
            .ok_or_else(|| UnknownRunState {
                template: template.to_string(),
                stored: stored.to_string(),
            })
    }
}

impl std::fmt::Display for LocalRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<LocalRunState> for RunState {
    fn from(s: LocalRunState) -> Self {
        match s {
            LocalRunState::Running => RunState::Running,
            LocalRunState::Canceling => RunState::Canceling,
            LocalRunState::Succeeded => RunState::Succeeded,
            LocalRunState::Failed => RunState::Failed,
            LocalRunState::Canceled => RunState::Canceled,
        }
    }
}

/// A `local_runs.run_state` value the local provider never writes.
#[derive(Debug)]
pub(crate) struct UnknownRunState {
    template: String,
    stored: String,
}

impl std::fmt::Display for UnknownRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expected: Vec<&str> = LocalRunState::ALL.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "local_runs.run_state of template {} is `{}`; expected one of {}",
            self.template,
            self.stored,
            expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownRunState {}

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    let template: String = r.get("template")?;
    let stored: String = r.get("run_state")?;
    let run_state = LocalRunState::from_stored(&template, &stored).map_err(|e| {
        let column = r.as_ref().column_index("run_state").unwrap_or_default();
        rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e))
    })?;
    Ok(RunRow {
        template,
        body_sha256: r.get("body_sha256")?,
        instance_id: r.get("instance_id")?,
        pid: r.get("pid")?,
        pid_start: r.get("pid_start")?,
        run_state,
        run_sub_state: r.get("run_sub_state")?,
        message: r.get("message")?,
        start_time: r.get("start_time")?,
        end_time: r.get("end_time")?,
        source_version: r.get("source_version")?,
        staging: r.get("staging")?,
        manifest: r.get("manifest")?,
    })
}

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
pub(crate) struct BaseRow {
    pub urn: String,
    pub version: String,
    pub path: String,
    pub origin: String,
    pub size_bytes: u64,
    pub imported_at: String,
    pub deprecated: bool,
}

fn base_from_row(r: &Row<'_>) -> rusqlite::Result<BaseRow> {
    Ok(BaseRow {
        urn: r.get("urn")?,
        version: r.get("version")?,
        path: r.get("path")?,
        origin: r.get("origin")?,
        size_bytes: r.get::<_, i64>("size_bytes")? as u64,
        imported_at: r.get("imported_at")?,
        deprecated: r.get::<_, i64>("deprecated")? != 0,
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

#[derive(Clone)]
pub(crate) struct Records {
    db: Db,
}

impl Records {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    // ---- templates ----

    pub fn template_get(&self, name: &str) -> anyhow::Result<Option<(String, String)>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT body, body_sha256 FROM local_templates WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }

    pub fn template_put(
        &self,
        name: &str,
        body: &str,
        sha: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO local_templates (name, body, body_sha256, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body,
                   body_sha256 = excluded.body_sha256, updated_at = excluded.updated_at",
                params![name, body, sha, ts(now)],
            )
            .map(|_| ())
        })
    }

    /// Deletes the template and its run record (AIB deletes the run outputs
    /// records with the template; the artifacts themselves stay).
    pub fn template_delete(&self, name: &str) -> anyhow::Result<()> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM local_run_outputs WHERE template = ?1", [name])?;
            tx.execute("DELETE FROM local_runs WHERE template = ?1", [name])?;
            tx.execute("DELETE FROM local_templates WHERE name = ?1", [name])?;
            tx.commit()
        })
    }

    // ---- runs ----

    pub fn run_get(&self, name: &str) -> anyhow::Result<Option<RunRow>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT * FROM local_runs WHERE template = ?1",
                [name],
                run_from_row,
            )
            .optional()
        })
    }

    /// Records a new run; false when the template already has one (no twin).
    pub fn run_insert(&self, row: &RunRow) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO local_runs (template, body_sha256, instance_id, pid, pid_start,
                   run_state, run_sub_state, message, start_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.template,
                    row.body_sha256,
                    row.instance_id,
                    row.pid,
                    row.pid_start,
                    row.run_state.as_str(),
                    row.run_sub_state,
                    row.message,
                    row.start_time
                ],
            )
            .map(|n| n == 1)
        })
    }

    /// Moves an active run owned by `instance` to a new sub-state.
    pub fn run_set_sub_state(&self, name: &str, instance: &str, sub: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET run_sub_state = ?3
                 WHERE template = ?1 AND instance_id = ?2 AND run_state = ?4",
                params![name, instance, sub, LocalRunState::Running.as_str()],
            )
            .map(|n| n == 1)
        })
    }

    pub fn run_set_source(&self, name: &str, instance: &str, source: &str) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET source_version = ?3 WHERE template = ?1 AND instance_id = ?2",
                params![name, instance, source],
            )
            .map(|_| ())
        })
    }

    pub fn run_set_manifest(
        &self,
        name: &str,
        instance: &str,
        manifest: &str,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET manifest = ?3 WHERE template = ?1 AND instance_id = ?2",
                params![name, instance, manifest],
            )
            .map(|_| ())
        })
    }

    /// Ends an active run owned by `instance`. False when the run is no longer
    /// this instance's to end (declared orphaned, or already ended).
    pub fn run_finish(
        &self,
        name: &str,
        instance: &str,
        state: LocalRunState,
        message: &str,
        staging: Option<&str>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET run_state = ?3, message = ?4, staging = ?5, end_time = ?6
                 WHERE template = ?1 AND instance_id = ?2 AND run_state IN (?7, ?8)",
                params![
                    name,
                    instance,
                    state.as_str(),
                    message,
                    staging,
                    ts(now),
                    LocalRunState::Running.as_str(),
                    LocalRunState::Canceling.as_str()
                ],
            )
            .map(|n| n == 1)
        })
    }

    pub fn run_set_canceling(&self, name: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET run_state = ?2 WHERE template = ?1 AND run_state = ?3",
                params![
                    name,
                    LocalRunState::Canceling.as_str(),
                    LocalRunState::Running.as_str()
                ],
            )
            .map(|n| n == 1)
        })
    }

    /// Declares an active run of a dead instance failed. Conditional on the
    /// instance read, so a concurrent finish is never overwritten.
    pub fn run_orphan(
        &self,
        name: &str,
        instance: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_runs SET run_state = ?5, message = ?3, end_time = ?4
                 WHERE template = ?1 AND instance_id = ?2 AND run_state IN (?6, ?7)",
                params![
                    name,
                    instance,
                    message,
                    ts(now),
                    LocalRunState::Failed.as_str(),
                    LocalRunState::Running.as_str(),
                    LocalRunState::Canceling.as_str()
                ],
            )
            .map(|n| n == 1)
        })
    }

    pub fn output_put(&self, template: &str, o: &RunOutput) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO local_run_outputs (template, name, artifact_id, artifact_uri, provisioning_state)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(template, name) DO UPDATE SET artifact_id = excluded.artifact_id,
                   artifact_uri = excluded.artifact_uri, provisioning_state = excluded.provisioning_state",
                params![template, o.name, o.artifact_id, o.artifact_uri, o.provisioning_state],
            )
            .map(|_| ())
        })
    }

    pub fn outputs(&self, template: &str) -> anyhow::Result<Vec<RunOutput>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT name, artifact_id, artifact_uri, provisioning_state FROM local_run_outputs
                 WHERE template = ?1 ORDER BY rowid",
            )?;
            let rows = st.query_map([template], |r| {
                Ok(RunOutput {
                    name: r.get(0)?,
                    artifact_id: r.get(1)?,
                    artifact_uri: r.get(2)?,
                    provisioning_state: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    // ---- bases ----

    pub fn base_insert(&self, b: &BaseRow) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO local_bases (urn, version, path, origin, size_bytes, imported_at, deprecated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![b.urn, b.version, b.path, b.origin, b.size_bytes as i64, b.imported_at, b.deprecated as i64],
            )
            .map(|n| n == 1)
        })
    }

    /// Marks a base version deprecated (as the marketplace marks images); false if unknown.
    pub fn base_deprecate(&self, urn: &str, version: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_bases SET deprecated = 1 WHERE urn = ?1 AND version = ?2",
                params![urn, version],
            )
            .map(|n| n == 1)
        })
    }

    pub fn base_get(&self, urn: &str, version: &str) -> anyhow::Result<Option<BaseRow>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT * FROM local_bases WHERE urn = ?1 AND version = ?2",
                [urn, version],
                base_from_row,
            )
            .optional()
        })
    }

    /// All bases, or those of one `publisher:offer:sku`.
    pub fn bases(&self, urn: Option<&str>) -> anyhow::Result<Vec<BaseRow>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT * FROM local_bases WHERE ?1 IS NULL OR urn = ?1 ORDER BY urn, imported_at",
            )?;
            let rows = st.query_map([urn], base_from_row)?;
            rows.collect()
        })
    }

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

    // ---- VMs ----

    pub fn vm_insert(
        &self,
        name: &str,
        image: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<(String, String)>> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT image_reference, created_at FROM local_vms WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if existing.is_none() {
                tx.execute(
                    "INSERT INTO local_vms (name, image_reference, created_at) VALUES (?1, ?2, ?3)",
                    params![name, image, ts(now)],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })
    }

    pub fn vms(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        self.db.with(|c| {
            let mut st =
                c.prepare("SELECT name, image_reference, created_at FROM local_vms ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
    }

    pub fn vm_delete(&self, name: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute("DELETE FROM local_vms WHERE name = ?1", [name])
                .map(|n| n == 1)
        })
    }

    // ---- faults ----

    /// Takes one use of a fault if fewer than `times` were taken; returns the
    /// use number (1-based) or `None` when used up. Durable across restarts.
    pub fn fault_claim(&self, key: &str, times: Option<u32>) -> anyhow::Result<Option<u32>> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let used: u32 = tx
                .query_row(
                    "SELECT uses FROM local_fault_uses WHERE fault_key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if times.is_some_and(|t| used >= t) {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO local_fault_uses (fault_key, uses) VALUES (?1, 1)
                 ON CONFLICT(fault_key) DO UPDATE SET uses = uses + 1",
                [key],
            )?;
            tx.commit()?;
            Ok(Some(used + 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records_with_template(name: &str) -> Records {
        let r = Records::new(Db::open_in_memory().unwrap());
        r.template_put(name, "{}", "sha", Utc::now()).unwrap();
        r
    }

    fn run_row(template: &str, run_state: LocalRunState) -> RunRow {
        RunRow {
            template: template.to_string(),
            body_sha256: "sha".to_string(),
            instance_id: "i1".to_string(),
            pid: 1,
            pid_start: String::new(),
            run_state,
            run_sub_state: Some("Queued".to_string()),
            message: String::new(),
            start_time: ts(Utc::now()),
            end_time: None,
            source_version: None,
            staging: None,
            manifest: None,
        }
    }

    #[test]
    fn every_run_state_is_stored_in_aibs_spelling_and_reads_back_as_itself() {
        for state in LocalRunState::ALL {
            let r = records_with_template("t");
            assert!(r.run_insert(&run_row("t", state)).unwrap());
            let stored: String =
                r.db.with(|c| {
                    c.query_row(
                        "SELECT run_state FROM local_runs WHERE template = 't'",
                        [],
                        |row| row.get(0),
                    )
                })
                .unwrap();
            assert_eq!(stored, state.as_str());
            assert_eq!(r.run_get("t").unwrap().unwrap().run_state, state);
        }
    }

    #[test]
    fn the_states_map_onto_aibs_run_states() {
        let mapped: Vec<RunState> = LocalRunState::ALL.into_iter().map(RunState::from).collect();
        let parsed: Vec<RunState> = LocalRunState::ALL
            .into_iter()
            .map(|s| RunState::parse(s.as_str()))
            .collect();
        assert_eq!(mapped, parsed);
        assert!(!mapped.iter().any(|s| matches!(s, RunState::Unknown(_))));
    }

    #[test]
    fn an_unknown_stored_run_state_is_an_error_naming_the_template_and_the_value() {
        let r = records_with_template("t-odd");
        r.run_insert(&run_row("t-odd", LocalRunState::Running))
            .unwrap();
        r.db.with(|c| c.execute("UPDATE local_runs SET run_state = 'Paused'", []))
            .unwrap();
        let e = format!("{:#}", r.run_get("t-odd").unwrap_err());
        assert!(
            e.contains("local_runs.run_state of template t-odd is `Paused`")
                && e.contains("expected one of Running, Canceling, Succeeded, Failed, Canceled"),
            "{e}"
        );
    }

    #[test]
    fn finishing_and_orphaning_only_touch_active_runs() {
        let r = records_with_template("t");
        r.run_insert(&run_row("t", LocalRunState::Running)).unwrap();
        assert!(r.run_set_canceling("t").unwrap());
        assert!(!r.run_set_canceling("t").unwrap(), "already canceling");
        assert!(r
            .run_finish(
                "t",
                "i1",
                LocalRunState::Canceled,
                "canceled",
                None,
                Utc::now()
            )
            .unwrap());
        assert!(!r.run_orphan("t", "i1", "orphaned", Utc::now()).unwrap());
        let run = r.run_get("t").unwrap().unwrap();
        assert_eq!(run.run_state, LocalRunState::Canceled);
        assert!(!run.is_active());
    }
}
