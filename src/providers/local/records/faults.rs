//! Durable fault-hook uses (`local_fault_uses`), so a test fault fires the
//! set number of times across restarts.

use rusqlite::OptionalExtension;

use super::Records;

impl Records {
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
