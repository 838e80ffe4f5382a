//! Persistence: the embedded SQLite store used by `kiln local`.

pub mod db;
pub use db::Db;
pub mod builds;
pub mod cleanup;
pub mod queue;
pub mod table;

pub use builds::Store;

use chrono::{DateTime, Utc};

/// How every table stores an instant: RFC 3339, microseconds, UTC. The
/// fixed width makes text comparison in SQL agree with time order.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Queues a CloudEvent for webhook delivery (a repeated id is ignored).
pub(crate) fn insert_outbox(
    c: &rusqlite::Connection,
    event_id: &str,
    body: &str,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO event_outbox (event_id, body, next_attempt) VALUES (?1, ?2, ?3)",
        rusqlite::params![event_id, body, ts(at)],
    )
    .map(|_| ())
}
