//! The template cleanup queue and the customization logs kept from it.
//!
//! Deleting a template is not one call: its log must be copied first (in
//! Azure it goes with the staging resource group), a run that may still be
//! going must be canceled and seen to stop, and ARM deletes asynchronously.
//! So retiring a template is a row here, committed with the transition that
//! ended its attempt, and worked off by the sweeper until the provider says
//! the template is gone.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{ts, SqliteStore};
use crate::store::port::{CleanupJob, CleanupStore, Retire};

/// Queues `r` (a template already queued keeps its row).
pub(crate) fn insert(
    c: &rusqlite::Connection,
    r: &Retire,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO template_cleanup (template, build_id, pipeline, keep, next_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT(template) DO NOTHING",
        params![r.template, r.build_id, r.pipeline, r.keep, ts(now)],
    )
    .map(|_| ())
}

/// A row of `SELECT template, build_id, pipeline, keep, attempts, last_error`.
fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<CleanupJob> {
    Ok(CleanupJob {
        template: r.get(0)?,
        build_id: r.get(1)?,
        pipeline: r.get(2)?,
        keep: r.get(3)?,
        attempts: r.get(4)?,
        last_error: r.get(5)?,
    })
}

#[async_trait]
impl CleanupStore for SqliteStore {
    /// Jobs due at `now`, oldest first, at most `limit` (one sweep's share).
    async fn cleanup_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> anyhow::Result<Vec<CleanupJob>> {
        self.db().with(|c| {
            let mut stmt = c.prepare(
                "SELECT template, build_id, pipeline, keep, attempts, last_error FROM template_cleanup
                 WHERE next_at <= ?1 ORDER BY next_at, template LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![ts(now), limit as i64], job)?;
            rows.collect()
        })
    }

    /// Every job still queued for `build_id` (the API shows them).
    async fn cleanup_of(&self, build_id: &str) -> anyhow::Result<Vec<CleanupJob>> {
        self.db().with(|c| {
            let mut stmt = c.prepare(
                "SELECT template, build_id, pipeline, keep, attempts, last_error FROM template_cleanup
                 WHERE build_id = ?1 ORDER BY template",
            )?;
            let rows = stmt.query_map([build_id], job)?;
            rows.collect()
        })
    }

    /// Looks at the job again at `next_at`; `error` says why it is not done
    /// (`None`: it is progressing, e.g. a deletion ARM accepted).
    async fn cleanup_later(
        &self,
        job: &CleanupJob,
        next_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        self.db().with(|c| {
            c.execute(
                // Only failures count (and keep their reason); a step that
                // found the work still in progress is not a failed attempt.
                "UPDATE template_cleanup SET
                     attempts = attempts + CASE WHEN ?3 IS NULL THEN 0 ELSE 1 END,
                     next_at = ?2, last_error = COALESCE(?3, last_error)
                 WHERE template = ?1",
                params![job.template, ts(next_at), error],
            )
            .map(|_| ())
        })
    }

    /// The template is gone (or kept on purpose with its log copied): the job ends.
    async fn cleanup_done(&self, job: &CleanupJob) -> anyhow::Result<()> {
        self.db().with(|c| {
            c.execute(
                "DELETE FROM template_cleanup WHERE template = ?1",
                [&job.template],
            )
            .map(|_| ())
        })
    }

    /// Keeps the customization log of `template` (a later copy replaces an earlier one).
    async fn put_log(
        &self,
        template: &str,
        build_id: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.db().with(|c| {
            c.execute(
                "INSERT INTO build_logs (template, build_id, body, fetched_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(template) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at",
                params![template, build_id, body, ts(now)],
            )
            .map(|_| ())
        })
    }

    /// The kept customization log of `template`, if one was copied.
    async fn log(&self, template: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.db().with(|c| {
            c.query_row(
                "SELECT body FROM build_logs WHERE template = ?1",
                [template],
                |r| r.get(0),
            )
            .optional()
        })
    }
}
