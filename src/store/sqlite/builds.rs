//! Builds, their history, admission keys and pipeline runtime state.
//!
//! Every build write is conditional on the row version the writer read
//! (`UPDATE … WHERE row_version = ?`): a writer that lost a race gets
//! [`Write::Conflict`], re-reads and re-decides; nothing is overwritten.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{insert_outbox, parse_ts, ts, SqliteStore};
use crate::domain::build::Build;
use crate::domain::request::{admit, Admission as Decision, AdmissionView};
use crate::domain::version::ImageVersion;
use crate::store::port::{
    Admission, Admitted, BreakerChange, BuildFilter, BuildStore, Caps, Extras, HistoryEntry,
    Outcome, PipelineMemory, PipelineRuntime, PipelineStore, Transition, Write,
};

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

fn slot_free(c: &rusqlite::Connection, id: &str, caps: Caps) -> rusqlite::Result<bool> {
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
        && active_pipeline < i64::from(caps.pipeline)
        && active_all < i64::from(caps.global))
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

fn apply_extras(
    tx: &Transaction<'_>,
    pipeline: &str,
    extras: &Extras,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<BreakerChange>> {
    if let Some(row) = &extras.outbox {
        insert_outbox(tx, row)?;
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

#[async_trait]
impl BuildStore for SqliteStore {
    async fn get(&self, id: &str) -> anyhow::Result<Option<(Build, i64)>> {
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

    async fn list(&self, f: &BuildFilter) -> anyhow::Result<Vec<Build>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT body FROM builds
                 WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR state = ?2)
                   AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at < ?5)
                 ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?6",
            )?;
            let limit = f.limit.unwrap_or(200).min(10_000) as i64;
            let offset = i64::try_from(f.offset).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![
                    f.pipeline,
                    f.state,
                    limit,
                    f.since.map(ts),
                    f.until.map(ts),
                    offset
                ],
                |r| r.get::<_, String>(0),
            )?;
            rows.map(|r| r.and_then(parse_build)).collect()
        })
    }

    async fn history(&self, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at, from_state, to_state, cause FROM build_history WHERE build_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(HistoryEntry {
                    at: parse_ts(&r.get::<_, String>(0)?),
                    from: r.get(1)?,
                    to: r.get(2)?,
                    cause: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    async fn commit(&self, t: &Transition<'_>) -> anyhow::Result<(Write, Option<BreakerChange>)> {
        let body = serde_json::to_string(t.build)?;
        self.db.with(|c| {
            let tx = c.transaction()?;
            if !write_if_unchanged(&tx, t.build, &body, t.expected, t.next_poll_at, t.now)? {
                return Ok((Write::Conflict, None));
            }
            let change = apply_extras(&tx, &t.build.pipeline, t.extras, t.now)?;
            if let Some(cause) = t.cause {
                insert_history(
                    &tx,
                    &t.build.id,
                    t.now,
                    Some(t.from.name()),
                    t.build.state.name(),
                    cause,
                )?;
            }
            tx.commit()?;
            Ok((
                Write::Written {
                    row_version: t.expected + 1,
                },
                change,
            ))
        })
    }

    async fn claim_slot(&self, t: &Transition<'_>, caps: Caps) -> anyhow::Result<Option<Write>> {
        let body = serde_json::to_string(t.build)?;
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if !slot_free(&tx, &t.build.id, caps)? {
                return Ok(None);
            }
            if !write_if_unchanged(&tx, t.build, &body, t.expected, t.next_poll_at, t.now)? {
                return Ok(Some(Write::Conflict));
            }
            apply_extras(&tx, &t.build.pipeline, t.extras, t.now)?;
            insert_history(
                &tx,
                &t.build.id,
                t.now,
                Some(t.from.name()),
                t.build.state.name(),
                t.cause.unwrap_or_default(),
            )?;
            tx.commit()?;
            Ok(Some(Write::Written {
                row_version: t.expected + 1,
            }))
        })
    }

    async fn slot_free(&self, id: &str, caps: Caps, _now: DateTime<Utc>) -> anyhow::Result<bool> {
        self.db.with(|c| slot_free(c, id, caps))
    }

    async fn admit(&self, a: &Admission<'_>) -> anyhow::Result<Admitted> {
        let (pipeline, key, now) = (a.pipeline, a.key, a.now);
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing_for_key: Option<String> = tx
                .query_row(
                    "SELECT build_id FROM request_keys WHERE key = ?1",
                    [key],
                    |r| r.get(0),
                )
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
            let result = match admit(a.trigger, &view) {
                Decision::Existing { build } => Admitted::Existing(build),
                Decision::Paused { reason } => Admitted::Paused(reason),
                Decision::Coalesced { build } => {
                    tx.execute(
                        "INSERT INTO request_keys (key, build_id, created_at) VALUES (?1, ?2, ?3)",
                        params![key, build, ts(now)],
                    )?;
                    insert_history(
                        &tx,
                        &build,
                        now,
                        Some("queued"),
                        "queued",
                        &format!("request {key} coalesced into this build"),
                    )?;
                    Admitted::Coalesced(build)
                }
                Decision::New => {
                    let mut taken: Vec<ImageVersion> = a.gallery_versions.to_vec();
                    let mut stmt = tx.prepare("SELECT body FROM builds WHERE pipeline = ?1")?;
                    for body in stmt.query_map([pipeline], |r| r.get::<_, String>(0))? {
                        taken.push(parse_build(body?)?.version);
                    }
                    drop(stmt);
                    match (a.make)(&taken) {
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

    async fn build_for_key(&self, _pipeline: &str, key: &str) -> anyhow::Result<Option<String>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT build_id FROM request_keys WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
        })
    }

    async fn due(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id FROM builds WHERE terminal = 0 AND (next_poll_at IS NULL OR next_poll_at <= ?1)
                 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([ts(now)], |r| r.get(0))?;
            rows.collect()
        })
    }

    async fn active_builds(&self) -> anyhow::Result<usize> {
        self.db.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM builds WHERE terminal = 0 AND state != 'queued'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
        })
    }

    async fn queued(&self) -> anyhow::Result<Vec<String>> {
        self.db.with(|c| {
            let mut stmt =
                c.prepare("SELECT id FROM builds WHERE state = 'queued' ORDER BY created_at, id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }
}

#[async_trait]
impl PipelineStore for SqliteStore {
    async fn runtime(&self, pipeline: &str) -> anyhow::Result<PipelineRuntime> {
        self.db.with(|c| {
            c.query_row(
                "SELECT consecutive_failures, breaker_open_since, body FROM pipeline_state WHERE pipeline = ?1",
                [pipeline],
                |r| {
                    let since: Option<String> = r.get(1)?;
                    let body: String = r.get(2)?;
                    Ok(PipelineRuntime {
                        consecutive_failures: r.get(0)?,
                        breaker_open_since: since.as_deref().map(parse_ts),
                        memory: serde_json::from_str(&body).unwrap_or_default(),
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
        })
    }

    async fn modify_memory(
        &self,
        pipeline: &str,
        f: &mut (dyn for<'m> FnMut(&'m mut PipelineMemory) + Send),
    ) -> anyhow::Result<()> {
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
            f(&mut mem);
            tx.execute(
                "INSERT INTO pipeline_state (pipeline, body) VALUES (?1, ?2)
                 ON CONFLICT(pipeline) DO UPDATE SET body = excluded.body",
                params![
                    pipeline,
                    serde_json::to_string(&mem).expect("memory serializes")
                ],
            )?;
            tx.commit()
        })
    }

    async fn record_outcome(
        &self,
        pipeline: &str,
        o: Outcome,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<BreakerChange>> {
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let change = record_outcome_tx(&tx, pipeline, o, now)?;
            tx.commit()?;
            Ok(change)
        })
    }
}
