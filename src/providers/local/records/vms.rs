//! VMs created from published images by `kiln vm` (`local_vms`).

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::super::util::ts;
use super::Records;

impl Records {
    // ---- VMs ----

    pub fn vm_insert(
        &self,
        name: &str,
        image: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<(String, String)>> {
        self.db.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT image_reference, created_at FROM local_vms WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if existing.is_none() {
                tx.execute(
                    "INSERT INTO local_vms (name, image_reference, created_at) VALUES (?1, ?2, ?3)",
                    params![name, image, ts(now)],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })
    }

    pub fn vms(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        self.db.with(|c| {
            let mut st =
                c.prepare("SELECT name, image_reference, created_at FROM local_vms ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
    }

    pub fn vm_delete(&self, name: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute("DELETE FROM local_vms WHERE name = ?1", [name])
                .map(|n| n == 1)
        })
    }
}
