//! The small stores on SQLite: the events outbox, the retention audit, dead
//! letters, timer memory and leases.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{insert_outbox, parse_ts, ts, SqliteStore};
use crate::store::port::{
    AuditEntry, AuditRecord, AuditStore, DeadLetter, DeadLetterStore, NewDeadLetter, OutboxItem,
    OutboxRow, OutboxStore, ReplayMark, TimerStore,
};

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_add(&self, row: &OutboxRow) -> anyhow::Result<()> {
        self.db.with(|c| insert_outbox(c, row))
    }

    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        max_attempts: u32,
        limit: usize,
    ) -> anyhow::Result<Vec<OutboxItem>> {
        self.db.with(|c| {
            // One statement: the rows it moves past `now` are invisible to
            // the next claimant until the lease runs out.
            let mut stmt = c.prepare(
                "UPDATE event_outbox SET next_attempt = ?3
                  WHERE seq IN (SELECT seq FROM event_outbox
                                 WHERE delivered_at IS NULL AND attempts < ?1 AND next_attempt <= ?2
                                 ORDER BY seq LIMIT ?4)
                  RETURNING seq, event_id, body, attempts",
            )?;
            let rows = stmt.query_map(
                params![max_attempts, ts(now), ts(now + lease), limit as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        OutboxItem {
                            event_id: r.get(1)?,
                            locator: String::new(),
                            body: r.get(2)?,
                            attempts: r.get(3)?,
                        },
                    ))
                },
            )?;
            let mut items: Vec<(i64, OutboxItem)> = rows.collect::<rusqlite::Result<_>>()?;
            items.sort_by_key(|(seq, _)| *seq);
            Ok(items.into_iter().map(|(_, i)| i).collect())
        })
    }

    async fn outbox_delivered(&self, item: &OutboxItem, now: DateTime<Utc>) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE event_outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE event_id = ?1",
                params![item.event_id, ts(now)],
            )
            .map(|_| ())
        })
    }

    async fn outbox_failed(
        &self,
        item: &OutboxItem,
        next_attempt: DateTime<Utc>,
        error: &str,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE event_outbox SET attempts = attempts + 1, next_attempt = ?2, last_error = ?3
                  WHERE event_id = ?1",
                params![item.event_id, ts(next_attempt), error],
            )
            .map(|_| ())
        })
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_insert(&self, r: &AuditRecord<'_>) -> anyhow::Result<i64> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO retention_audit (run_id, at, definition, version, action, status, reason, policy)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.run_id,
                    r.at,
                    r.definition,
                    r.version,
                    r.action,
                    r.status,
                    r.reason,
                    r.policy
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    async fn audit_finish(
        &self,
        seq: i64,
        status: &str,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE retention_audit
                    SET status = ?2,
                        reason = CASE WHEN ?3 IS NULL THEN reason ELSE reason || ' — failed: ' || ?3 END
                  WHERE seq = ?1",
                params![seq, status, error],
            )
            .map(|_| ())
        })
    }

    async fn audit(&self, limit: usize) -> anyhow::Result<Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, run_id, at, definition, version, action, status, reason, policy
                   FROM retention_audit ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let policy: String = r.get(8)?;
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    run_id: r.get(1)?,
                    at: r.get(2)?,
                    definition: r.get(3)?,
                    version: r.get(4)?,
                    action: r.get(5)?,
                    status: r.get(6)?,
                    reason: r.get(7)?,
                    policy: crate::store::port::policy_json(policy),
                })
            })?;
            rows.collect()
        })
    }
}

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        seq: r.get(0)?,
        queue: r.get(1)?,
        message_id: r.get(2)?,
        body: r.get(3)?,
        reason: r.get(4)?,
        delivery_count: r.get(5)?,
        dead_at: parse_ts(&r.get::<_, String>(6)?),
        replayed_at: r.get::<_, Option<String>>(7)?.map(|s| parse_ts(&s)),
    })
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn record_dead_letter(&self, d: &NewDeadLetter<'_>) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO dead_letters (queue, message_id, body, reason, delivery_count, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    d.queue,
                    d.message_id,
                    d.body,
                    d.reason,
                    d.delivery_count,
                    ts(d.now)
                ],
            )
            .map(|_| ())
        })
    }

    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        self.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, queue, message_id, body, reason, delivery_count, dead_at, replayed_at
                   FROM dead_letters ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], dead_letter_row)?;
            rows.collect()
        })
    }

    async fn mark_replayed(&self, seq: i64, now: DateTime<Utc>) -> anyhow::Result<ReplayMark> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let row = tx
                .query_row(
                    "SELECT seq, queue, message_id, body, reason, delivery_count, dead_at, replayed_at
                       FROM dead_letters WHERE seq = ?1",
                    [seq],
                    dead_letter_row,
                )
                .optional()?;
            let mark = match row {
                None => ReplayMark::Missing,
                Some(DeadLetter {
                    replayed_at: Some(at),
                    ..
                }) => ReplayMark::Already(at),
                Some(mut d) => {
                    tx.execute(
                        "UPDATE dead_letters SET replayed_at = ?2 WHERE seq = ?1",
                        params![seq, ts(now)],
                    )?;
                    d.replayed_at = Some(now);
                    ReplayMark::Marked(d)
                }
            };
            tx.commit()?;
            Ok(mark)
        })
    }

    async fn unmark_replayed(&self, seq: i64) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE dead_letters SET replayed_at = NULL WHERE seq = ?1",
                [seq],
            )
            .map(|_| ())
        })
    }
}

#[async_trait]
impl TimerStore for SqliteStore {
    async fn last_fire(&self, function: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let at: Option<String> = self.db.with(|c| {
            c.query_row(
                "SELECT last_fire FROM timer_state WHERE function = ?1",
                [function],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(at.as_deref().map(parse_ts))
    }

    async fn record_fire(&self, function: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO timer_state (function, last_fire) VALUES (?1, ?2)
                 ON CONFLICT(function) DO UPDATE SET last_fire = excluded.last_fire",
                params![function, ts(at)],
            )
            .map(|_| ())
        })
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> anyhow::Result<bool> {
        self.db.with(|c| {
            // Taken when free, expired, or already ours; one statement decides.
            let n = c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?4)
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                  WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
                params![name, holder, ts(now), ts(now + ttl)],
            )?;
            Ok(n == 1)
        })
    }
}
