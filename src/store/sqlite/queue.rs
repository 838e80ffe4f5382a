//! The local host's durable queue, with Service Bus semantics on one machine:
//! scheduled messages, peek-lock with a lock duration, a delivery count,
//! abandon with a delay, and dead-lettering after the maximum delivery count.
//!
//! A message is deleted only when its handler completed it, so a process
//! that dies mid-invocation loses nothing: the lock expires and the message
//! is delivered again.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{parse_ts, ts, Db};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub seq: i64,
    pub queue: String,
    pub message_id: String,
    pub body: String,
    pub enqueued_at: DateTime<Utc>,
    pub delivery_count: u32,
    pub lock_token: String,
}

#[derive(Clone)]
pub struct LocalQueue {
    db: Db,
}

impl LocalQueue {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Enqueues a message that becomes visible at `visible_at` (a scheduled message when in the future).
    pub fn send(
        &self,
        queue: &str,
        message_id: &str,
        body: &str,
        now: DateTime<Utc>,
        visible_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO queue_messages (queue, message_id, body, enqueued_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![queue, message_id, body, ts(now), ts(visible_at.max(now))],
            )
            .map(|_| ())
        })
    }

    /// Locks the oldest visible message of `queue` for `lock` and counts the delivery.
    pub fn receive(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        lock: Duration,
    ) -> anyhow::Result<Option<Delivery>> {
        let token = uuid::Uuid::new_v4().to_string();
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row = tx
                .query_row(
                    "SELECT seq, message_id, body, enqueued_at, delivery_count FROM queue_messages
                     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT 1",
                    params![queue, ts(now)],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, u32>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((seq, message_id, body, enqueued, count)) = row else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE queue_messages SET visible_at = ?2, delivery_count = delivery_count + 1, lock_token = ?3 WHERE seq = ?1",
                params![seq, ts(now + lock), token],
            )?;
            tx.commit()?;
            Ok(Some(Delivery {
                seq,
                queue: queue.to_string(),
                message_id,
                body,
                enqueued_at: parse_ts(&enqueued),
                delivery_count: count + 1,
                lock_token: token,
            }))
        })
    }

    /// Removes a handled message. False when the lock was lost (the message was redelivered).
    pub fn complete(&self, d: &Delivery) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM queue_messages WHERE seq = ?1 AND lock_token = ?2",
                params![d.seq, d.lock_token],
            )
            .map(|n| n == 1)
        })
    }

    /// Gives a message back, visible again at `retry_at`.
    pub fn abandon(&self, d: &Delivery, retry_at: DateTime<Utc>) -> anyhow::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE queue_messages SET visible_at = ?3, lock_token = NULL WHERE seq = ?1 AND lock_token = ?2",
                params![d.seq, d.lock_token, ts(retry_at)],
            )
            .map(|_| ())
        })
    }

    /// Makes locks held by a previous (dead) process visible again: on one
    /// machine with one host per data folder, no other consumer can hold them.
    pub fn release_stale_locks(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "UPDATE queue_messages SET lock_token = NULL, visible_at = ?1 WHERE lock_token IS NOT NULL",
                [ts(now)],
            )
        })
    }

    pub fn depth(&self, queue: &str) -> anyhow::Result<u64> {
        self.db.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                [queue],
                |r| r.get(0),
            )
        })
    }

    /// When the next message of `queue` becomes visible, if any.
    pub fn next_visible(&self, queue: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1",
                [queue],
                |r| r.get::<_, Option<String>>(0),
            )
            .map(|v| v.map(|s| parse_ts(&s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn q() -> LocalQueue {
        LocalQueue::new(Db::open_in_memory().unwrap())
    }
    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(s)
    }

    #[test]
    fn a_scheduled_message_stays_invisible_until_its_time() {
        let q = q();
        q.send("polls", "m1", "{}", t(0), t(30)).unwrap();
        assert!(q
            .receive("polls", t(29), Duration::seconds(60))
            .unwrap()
            .is_none());
        assert!(q
            .receive("polls", t(30), Duration::seconds(60))
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_locked_message_is_redelivered_after_its_lock_expires_with_a_higher_count() {
        let q = q();
        q.send("requests", "m1", "{}", t(0), t(0)).unwrap();
        let first = q
            .receive("requests", t(1), Duration::seconds(60))
            .unwrap()
            .unwrap();
        assert_eq!(first.delivery_count, 1);
        assert!(q
            .receive("requests", t(2), Duration::seconds(60))
            .unwrap()
            .is_none());
        let again = q
            .receive("requests", t(62), Duration::seconds(60))
            .unwrap()
            .unwrap();
        assert_eq!(again.delivery_count, 2);
        // The first holder lost its lock: completing with it does nothing.
        assert!(!q.complete(&first).unwrap());
        assert!(q.complete(&again).unwrap());
        assert_eq!(q.depth("requests").unwrap(), 0);
    }

    #[test]
    fn abandon_makes_the_message_visible_at_the_retry_time() {
        let q = q();
        q.send("requests", "m1", "{}", t(0), t(0)).unwrap();
        let d = q
            .receive("requests", t(0), Duration::seconds(60))
            .unwrap()
            .unwrap();
        q.abandon(&d, t(5)).unwrap();
        assert!(q
            .receive("requests", t(4), Duration::seconds(60))
            .unwrap()
            .is_none());
        assert!(q
            .receive("requests", t(5), Duration::seconds(60))
            .unwrap()
            .is_some());
    }
}
