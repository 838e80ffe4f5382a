//! The template cleanup queue and the customization logs kept from it.
//!
//! Deleting a template is not one call: its log must be copied first (in
//! Azure it goes with the staging resource group), a run that may still be
//! going must be canceled and seen to stop, and ARM deletes asynchronously.
//! So retiring a template is a row here, committed with the transition that
//! ended its attempt, and worked off by the sweeper until the provider says
//! the template is gone.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{ts, Store};

/// A template to retire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retire {
    pub template: String,
    pub build_id: String,
    /// Keep the template and its build resources (the template's
    /// `errorHandling` asks for it on a failure): only the log is copied.
    pub keep: bool,
}

/// A row of the queue, as the sweeper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupJob {
    pub template: String,
    pub build_id: String,
    pub keep: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Queues `r` (a template already queued keeps its row).
pub(crate) fn insert(
    c: &rusqlite::Connection,
    r: &Retire,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO template_cleanup (template, build_id, keep, next_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(template) DO NOTHING",
        params![r.template, r.build_id, r.keep, ts(now)],
    )
    .map(|_| ())
}

/// A row of `SELECT template, build_id, keep, attempts, last_error`.
fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<CleanupJob> {
    Ok(CleanupJob {
        template: r.get(0)?,
        build_id: r.get(1)?,
        keep: r.get(2)?,
        attempts: r.get(3)?,
        last_error: r.get(4)?,
    })
}

impl Store {
    /// Jobs due at `now`, oldest first, at most `limit` (one sweep's share).
    pub fn cleanup_due(&self, now: DateTime<Utc>, limit: usize) -> anyhow::Result<Vec<CleanupJob>> {
        self.db().with(|c| {
            let mut stmt = c.prepare(
                "SELECT template, build_id, keep, attempts, last_error FROM template_cleanup
                 WHERE next_at <= ?1 ORDER BY next_at, template LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![ts(now), limit as i64], job)?;
            rows.collect()
        })
    }

    /// Every job still queued for `build_id` (the API shows them).
    pub fn cleanup_of(&self, build_id: &str) -> anyhow::Result<Vec<CleanupJob>> {
        self.db().with(|c| {
            let mut stmt = c.prepare(
                "SELECT template, build_id, keep, attempts, last_error FROM template_cleanup
                 WHERE build_id = ?1 ORDER BY template",
            )?;
            let rows = stmt.query_map([build_id], job)?;
            rows.collect()
        })
    }

    /// Looks at the job again at `next_at`; `error` says why it is not done
    /// (`None`: it is progressing, e.g. a deletion ARM accepted).
    pub fn cleanup_later(
        &self,
        template: &str,
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
                params![template, ts(next_at), error],
            )
            .map(|_| ())
        })
    }

    /// The template is gone (or kept on purpose with its log copied): the job ends.
    pub fn cleanup_done(&self, template: &str) -> anyhow::Result<()> {
        self.db().with(|c| {
            c.execute(
                "DELETE FROM template_cleanup WHERE template = ?1",
                [template],
            )
            .map(|_| ())
        })
    }

    /// Keeps the customization log of `template` (a later copy replaces an earlier one).
    pub fn put_log(
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
    pub fn log(&self, template: &str) -> anyhow::Result<Option<Vec<u8>>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;
    use chrono::TimeZone;

    fn store() -> Store {
        Store::new(Db::open_in_memory().unwrap())
    }

    fn retire(template: &str) -> Retire {
        Retire {
            template: template.into(),
            build_id: "b1".into(),
            keep: false,
        }
    }

    #[test]
    fn a_queued_template_is_due_until_done_and_later_moves_it_back() {
        let s = store();
        let t0 = Utc.with_ymd_and_hms(2026, 12, 8, 18, 0, 0).unwrap();
        s.db()
            .with(|c| insert(c, &retire("kiln-b1-a1"), t0))
            .unwrap();
        // A second retirement of the same template keeps one row.
        s.db()
            .with(|c| insert(c, &retire("kiln-b1-a1"), t0))
            .unwrap();
        assert_eq!(s.cleanup_due(t0, 10).unwrap().len(), 1);
        let later = t0 + chrono::Duration::minutes(2);
        s.cleanup_later("kiln-b1-a1", later, Some("409 Conflict"))
            .unwrap();
        // Progress (no error) moves it on without counting as a failure.
        s.cleanup_later("kiln-b1-a1", later, None).unwrap();
        assert!(s.cleanup_due(t0, 10).unwrap().is_empty());
        let job = &s.cleanup_due(later, 10).unwrap()[0];
        assert_eq!(job.attempts, 1);
        assert_eq!(job.last_error.as_deref(), Some("409 Conflict"));
        s.cleanup_done("kiln-b1-a1").unwrap();
        assert!(s.cleanup_due(later, 10).unwrap().is_empty());
    }

    #[test]
    fn a_kept_log_is_read_back_and_replaced_by_a_later_copy() {
        let s = store();
        let t0 = Utc.with_ymd_and_hms(2026, 12, 8, 18, 0, 0).unwrap();
        assert_eq!(s.log("kiln-b1-a1").unwrap(), None);
        s.put_log("kiln-b1-a1", "b1", b"first", t0).unwrap();
        s.put_log("kiln-b1-a1", "b1", b"first and more", t0)
            .unwrap();
        assert_eq!(s.log("kiln-b1-a1").unwrap().unwrap(), b"first and more");
    }
}
