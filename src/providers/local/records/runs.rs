//! Templates, their runs and run outputs (`local_templates`, `local_runs`,
//! `local_run_outputs`): the row types, the stored run states, and the
//! statements that move a run from start to end.

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{params, OptionalExtension, Row};

use super::super::util::ts;
use super::Records;
use crate::ports::{RunOutput, RunState};

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

impl Records {
    // ---- templates ----

    /// The names of the templates starting with `prefix`.
    pub fn template_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT name FROM local_templates WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
            )?;
            let rows = st.query_map([prefix], |r| r.get(0))?;
            rows.collect()
        })
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

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
