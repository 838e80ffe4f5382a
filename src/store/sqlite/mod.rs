//! The store port in one SQLite file (WAL): `kiln local`'s default, and
//! the only place kiln writes SQL. One machine, one file: several processes
//! on that machine may share it (SQLite's locking), hosts on other machines
//! may not (WAL needs shared memory, which a network share does not give).
//!
//! `builds.rs` holds builds, admission and pipeline state; `cleanup.rs` the
//! template cleanup queue and kept logs; `records.rs` the outbox, the
//! retention audit, dead letters, timers and leases; `queue.rs` the local
//! host's durable queue, which is not part of the port (in Azure, Service
//! Bus is the queue).

pub mod builds;
pub mod cleanup;
pub mod db;
pub mod queue;
mod records;

pub use db::Db;

use chrono::{DateTime, Utc};

use crate::domain::stored_time;

use super::port::{OutboxRow, Store};

/// The store port on one database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database, for the local provider's own tables and tests.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

/// How every table stores an instant ([`crate::domain::stored_time`]).
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    stored_time::format(t)
}

/// A stored instant. Rows written by kiln always parse; anything else
/// reads as the epoch rather than failing a whole listing.
pub(crate) fn parse_ts(s: &str) -> DateTime<Utc> {
    stored_time::parse(s).unwrap_or_default()
}

/// Queues a CloudEvent for webhook delivery (a repeated id is ignored).
pub(crate) fn insert_outbox(c: &rusqlite::Connection, row: &OutboxRow) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO event_outbox (event_id, body, next_attempt) VALUES (?1, ?2, ?3)",
        rusqlite::params![row.event_id, row.body, ts(row.at)],
    )
    .map(|_| ())
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::{Db, SqliteStore};
    use crate::store::conformance::Pair;

    /// Two connections on one file: two processes on one machine.
    async fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let a = SqliteStore::new(Db::open(&path).unwrap());
        let b = SqliteStore::new(Db::open(&path).unwrap());
        Pair {
            a: Arc::new(a),
            b: Arc::new(b),
            keep: Some(Box::new(dir)),
        }
    }

    crate::conformance_suite!(pair());
}
