//! Builds, their history, admission keys and pipeline runtime state.
//!
//! Every build write is conditional on the row version the writer read
//! (`UPDATE … WHERE row_version = ?`): a writer that lost a race gets
//! [`Write::Conflict`], re-reads and re-decides; nothing is overwritten.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::{insert_outbox, ts, Db};
use crate::domain::build::{Build, BuildState, Trigger};
use crate::domain::request::{admit, Admission, AdmissionView};
use crate::domain::version::ImageVersion;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Written { row_version: i64 },
    Conflict,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
}

/// What a pipeline remembers between invocations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct PipelineMemory {
    /// The schedule was evaluated up to this instant (catch-up starts here).
    pub schedule_checked_until: Option<DateTime<Utc>>,
    /// Newest source version the watcher saw, and when it first saw it.
    pub source_seen: Option<String>,
    pub source_seen_at: Option<DateTime<Utc>>,
    /// Source version of the last build the watcher requested.
    pub source_requested: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRuntime {
    pub consecutive_failures: u32,
    pub breaker_open_since: Option<DateTime<Utc>>,
    pub memory: PipelineMemory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerChange {
    Opened { failures: u32 },
    Closed,
}

#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub pipeline: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Clone)]
pub struct Store {
    db: Db,
}

fn parse_build(body: String) -> rusqlite::Result<Build> {
    serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn insert_history(
    tx: &Transaction<'_>,
    id: &str,
    at: DateTime<Utc>,
    from: Option<&str>,
    to: &str,
    cause: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO build_history (build_id, seq, at, from_state, to_state, cause)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM build_history WHERE build_id = ?1), ?2, ?3, ?4, ?5)",
        params![id, ts(at), from, to, cause],
    )?;
    Ok(())
}

fn insert_build(tx: &Transaction<'_>, b: &Build, now: DateTime<Utc>) -> rusqlite::Result<()> {
    let body = serde_json::to_string(b).expect("a build serializes");
    tx.execute(
        "INSERT INTO builds (id, pipeline, state, terminal, automatic, row_version, created_at, updated_at, next_poll_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6, ?6, ?7)",
        params![
            b.id,
            b.pipeline,
            b.state.name(),
            b.state.is_terminal(),
            b.trigger.is_automatic(),
            ts(now),
            body
        ],
    )?;
    insert_history(
        tx,
        &b.id,
        now,
        None,
        b.state.name(),
        &format!("admitted: {}", b.reason),
    )
}

fn slot_free(
    c: &rusqlite::Connection,
    id: &str,
    pipeline_max: u32,
    global_cap: u32,
) -> rusqlite::Result<bool> {
    let (pipeline, created): (String, String) = c.query_row(
        "SELECT pipeline, created_at FROM builds WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let active_pipeline: i64 = c.query_row(
        "SELECT COUNT(*) FROM builds WHERE pipeline = ?1 AND terminal = 0 AND state != 'queued'",
        [&pipeline],
        |r| r.get(0),
    )?;
    let active_all: i64 = c.query_row(
        "SELECT COUNT(*) FROM builds WHERE terminal = 0 AND state != 'queued'",
        [],
        |r| r.get(0),
    )?;
    let older_queued: i64 = c.query_row(
        "SELECT COUNT(*) FROM builds WHERE pipeline = ?1 AND state = 'queued'
           AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))",
        params![pipeline, created, id],
        |r| r.get(0),
    )?;
    Ok(older_queued == 0
        && active_pipeline < i64::from(pipeline_max)
        && active_all < i64::from(global_cap))
}

/// The conditional write: false when the row is no longer at `expected`.
fn write_if_unchanged(
    tx: &Transaction<'_>,
    build: &Build,
    body: &str,
    expected: i64,
    next_poll_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE builds SET state = ?1, terminal = ?2, row_version = row_version + 1,
                updated_at = ?3, next_poll_at = ?4, body = ?5
         WHERE id = ?6 AND row_version = ?7",
        params![
            build.state.name(),
            build.state.is_terminal(),
            ts(now),
            next_poll_at.map(ts),
            body,
            build.id,
            expected
        ],
    )?;
    Ok(n == 1)
}

/// How a finished build counts for its pipeline's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub automatic: bool,
    pub succeeded: bool,
    pub threshold: u32,
}

/// What commits in the same transaction as a transition, so a crash right
/// after it cannot lose the webhook event or the breaker count.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// (event id, CloudEvent JSON, when) for the webhook outbox.
    pub outbox: Option<(String, String, DateTime<Utc>)>,
    /// Set when the transition ends the build.
    pub outcome: Option<Outcome>,
    /// Templates the transition retires, for the cleanup queue.
    pub retire: Vec<super::cleanup::Retire>,
}

fn apply_extras(
    tx: &Transaction<'_>,
    pipeline: &str,
    extras: &Extras,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<BreakerChange>> {
    if let Some((id, body, at)) = &extras.outbox {
        insert_outbox(tx, id, body, *at)?;
    }
    for r in &extras.retire {
        super::cleanup::insert(tx, r, now)?;
    }
    match extras.outcome {
        Some(o) => record_outcome_tx(tx, pipeline, o, now),
        None => Ok(None),
    }
}

fn record_outcome_tx(
    tx: &Transaction<'_>,
    pipeline: &str,
    o: Outcome,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<BreakerChange>> {
    tx.execute(
        "INSERT INTO pipeline_state (pipeline) VALUES (?1) ON CONFLICT(pipeline) DO NOTHING",
        [pipeline],
    )?;
    let (failures, open): (u32, bool) = tx.query_row(
        "SELECT consecutive_failures, breaker_open_since IS NOT NULL FROM pipeline_state WHERE pipeline = ?1",
        [pipeline],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let change = if o.succeeded {
        tx.execute(
            "UPDATE pipeline_state SET consecutive_failures = 0, breaker_open_since = NULL WHERE pipeline = ?1",
            [pipeline],
        )?;
        open.then_some(BreakerChange::Closed)
    } else if o.automatic {
        let failures = failures + 1;
        let opens = !open && failures >= o.threshold;
        tx.execute(
            "UPDATE pipeline_state SET consecutive_failures = ?2,
                 breaker_open_since = CASE WHEN ?3 THEN ?4 ELSE breaker_open_since END
             WHERE pipeline = ?1",
            params![pipeline, failures, opens, ts(now)],
        )?;
        opens.then_some(BreakerChange::Opened { failures })
    } else {
        None
    };
    Ok(change)
}

/// Result of admitting a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Created(Box<Build>),
    Existing(String),
    Coalesced(String),
    Paused(String),
    /// The request cannot become a build (e.g. its version cannot be chosen).
    Refused(String),
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<(Build, i64)>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT body, row_version FROM builds WHERE id = ?1",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .map(|(body, v)| parse_build(body).map(|b| (b, v)))
            .transpose()
        })
    }

    pub fn list(&self, f: &BuildFilter) -> anyhow::Result<Vec<Build>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT body FROM builds
                 WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY created_at DESC, id DESC LIMIT ?3",
            )?;
            let limit = f.limit.unwrap_or(200).min(10_000) as i64;
            let rows = stmt.query_map(params![f.pipeline, f.state, limit], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|r| r.and_then(parse_build)).collect()
        })
    }

    pub fn history(&self, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at, from_state, to_state, cause FROM build_history WHERE build_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([id], |r| {
                let at: String = r.get(0)?;
                Ok(HistoryEntry {
                    at: DateTime::parse_from_rfc3339(&at)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_default(),
                    from: r.get(1)?,
                    to: r.get(2)?,
                    cause: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Writes `build` if the row is still at `expected`; appends history when `cause` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        build: &Build,
        expected: i64,
        from: &BuildState,
        cause: Option<&str>,
        next_poll_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        extras: &Extras,
    ) -> anyhow::Result<(Write, Option<BreakerChange>)> {
        let body = serde_json::to_string(build)?;
        self.db.with(|c| {
            let tx = c.transaction()?;
            if !write_if_unchanged(&tx, build, &body, expected, next_poll_at, now)? {
                return Ok((Write::Conflict, None));
            }
            let change = apply_extras(&tx, &build.pipeline, extras, now)?;
            if let Some(cause) = cause {
                insert_history(
                    &tx,
                    &build.id,
                    now,
                    Some(from.name()),
                    build.state.name(),
                    cause,
                )?;
            }
            tx.commit()?;
            Ok((
                Write::Written {
                    row_version: expected + 1,
                },
                change,
            ))
        })
    }

    /// Admits a request in one transaction: dedupe by key, breaker, coalescing,
    /// then `create` builds the new build from the versions already taken.
    pub fn admit(
        &self,
        pipeline: &str,
        key: &str,
        trigger: &Trigger,
        now: DateTime<Utc>,
        gallery_versions: &[ImageVersion],
        create: impl FnOnce(&[ImageVersion]) -> Result<Build, String>,
    ) -> anyhow::Result<Admitted> {
        let mut create = Some(create);
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing_for_key: Option<String> = tx
                .query_row("SELECT build_id FROM request_keys WHERE key = ?1", [key], |r| r.get(0))
                .optional()?;
            let queued_build: Option<String> = tx
                .query_row(
                    "SELECT id FROM builds WHERE pipeline = ?1 AND state = 'queued' ORDER BY created_at, id LIMIT 1",
                    [pipeline],
                    |r| r.get(0),
                )
                .optional()?;
            let breaker_open: bool = tx
                .query_row(
                    "SELECT breaker_open_since IS NOT NULL FROM pipeline_state WHERE pipeline = ?1",
                    [pipeline],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            let view = AdmissionView {
                existing_for_key,
                queued_build,
                breaker_open,
            };
            let result = match admit(trigger, &view) {
                Admission::Existing { build } => Admitted::Existing(build),
                Admission::Paused { reason } => Admitted::Paused(reason),
                Admission::Coalesced { build } => {
                    tx.execute(
                        "INSERT INTO request_keys (key, build_id, created_at) VALUES (?1, ?2, ?3)",
                        params![key, build, ts(now)],
                    )?;
                    insert_history(&tx, &build, now, Some("queued"), "queued", &format!("request {key} coalesced into this build"))?;
                    Admitted::Coalesced(build)
                }
                Admission::New => {
                    let mut taken: Vec<ImageVersion> = gallery_versions.to_vec();
                    let mut stmt = tx.prepare("SELECT body FROM builds WHERE pipeline = ?1")?;
                    for body in stmt.query_map([pipeline], |r| r.get::<_, String>(0))? {
                        taken.push(parse_build(body?)?.version);
                    }
                    drop(stmt);
                    let make = create.take().expect("create is called once");
                    match make(&taken) {
                        Ok(build) => {
                            insert_build(&tx, &build, now)?;
                            tx.execute(
                                "INSERT INTO request_keys (key, build_id, created_at) VALUES (?1, ?2, ?3)",
                                params![key, build.id, ts(now)],
                            )?;
                            Admitted::Created(Box::new(build))
                        }
                        Err(reason) => Admitted::Refused(reason),
                    }
                }
            };
            tx.commit()?;
            Ok(result)
        })
    }

    pub fn build_for_key(&self, key: &str) -> anyhow::Result<Option<String>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT build_id FROM request_keys WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Whether queued build `id` may start: it is the oldest queued build
    /// of its pipeline and fits under both the pipeline's and the global cap.
    pub fn slot_free(&self, id: &str, pipeline_max: u32, global_cap: u32) -> anyhow::Result<bool> {
        self.db.with(|c| slot_free(c, id, pipeline_max, global_cap))
    }

    /// Starts a queued build atomically: the slot check and the conditional
    /// write happen in one transaction, so two builds cannot take one slot.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_slot(
        &self,
        build: &Build,
        expected: i64,
        pipeline_max: u32,
        global_cap: u32,
        cause: &str,
        next_poll_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        extras: &Extras,
    ) -> anyhow::Result<Option<Write>> {
        let body = serde_json::to_string(build)?;
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if !slot_free(&tx, &build.id, pipeline_max, global_cap)? {
                return Ok(None);
            }
            if !write_if_unchanged(&tx, build, &body, expected, next_poll_at, now)? {
                return Ok(Some(Write::Conflict));
            }
            apply_extras(&tx, &build.pipeline, extras, now)?;
            insert_history(
                &tx,
                &build.id,
                now,
                Some("queued"),
                build.state.name(),
                cause,
            )?;
            tx.commit()?;
            Ok(Some(Write::Written {
                row_version: expected + 1,
            }))
        })
    }

    /// Non-terminal builds whose next poll is due (the sweeper's work list), oldest first.
    pub fn due(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id FROM builds WHERE terminal = 0 AND (next_poll_at IS NULL OR next_poll_at <= ?1)
                 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([ts(now)], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn queued(&self) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut stmt =
                c.prepare("SELECT id FROM builds WHERE state = 'queued' ORDER BY created_at, id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn runtime(&self, pipeline: &str) -> anyhow::Result<PipelineRuntime> {
        self.db.with(|c| {
            c.query_row(
                "SELECT consecutive_failures, breaker_open_since, body FROM pipeline_state WHERE pipeline = ?1",
                [pipeline],
                |r| {
                    let since: Option<String> = r.get(1)?;
                    let body: String = r.get(2)?;
                    Ok(PipelineRuntime {
                        consecutive_failures: r.get(0)?,
                        breaker_open_since: since
                            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                            .map(|t| t.with_timezone(&Utc)),
                        memory: serde_json::from_str(&body).unwrap_or_default(),
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
        })
    }

    /// Reads, changes and writes a pipeline's memory in one transaction.
    pub fn update_memory<T>(
        &self,
        pipeline: &str,
        f: impl FnOnce(&mut PipelineMemory) -> T,
    ) -> anyhow::Result<T> {
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let body: Option<String> = tx
                .query_row(
                    "SELECT body FROM pipeline_state WHERE pipeline = ?1",
                    [pipeline],
                    |r| r.get(0),
                )
                .optional()?;
            let mut mem: PipelineMemory = body
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or_default();
            let out = f(&mut mem);
            tx.execute(
                "INSERT INTO pipeline_state (pipeline, body) VALUES (?1, ?2)
                 ON CONFLICT(pipeline) DO UPDATE SET body = excluded.body",
                params![
                    pipeline,
                    serde_json::to_string(&mem).expect("memory serializes")
                ],
            )?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Counts a finished automatic build towards the circuit breaker.
    pub fn record_outcome(
        &self,
        pipeline: &str,
        automatic: bool,
        succeeded: bool,
        threshold: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<BreakerChange>> {
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let change = record_outcome_tx(
                &tx,
                pipeline,
                Outcome {
                    automatic,
                    succeeded,
                    threshold,
                },
                now,
            )?;
            tx.commit()?;
            Ok(change)
        })
    }
}

#[cfg(test)]
mod tests;
