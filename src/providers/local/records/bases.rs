//! Base root filesystems (`local_bases`): the local base images' rows.

use rusqlite::{params, OptionalExtension, Row};

use super::Records;

#[derive(Debug, Clone)]
pub(crate) struct BaseRow {
    pub urn: String,
    pub version: String,
    pub path: String,
    pub origin: String,
    pub size_bytes: u64,
    pub imported_at: String,
    pub deprecated: bool,
}

fn base_from_row(r: &Row<'_>) -> rusqlite::Result<BaseRow> {
    Ok(BaseRow {
        urn: r.get("urn")?,
        version: r.get("version")?,
        path: r.get("path")?,
        origin: r.get("origin")?,
        size_bytes: r.get::<_, i64>("size_bytes")? as u64,
        imported_at: r.get("imported_at")?,
        deprecated: r.get::<_, i64>("deprecated")? != 0,
    })
}

impl Records {
    // ---- bases ----

    pub fn base_insert(&self, b: &BaseRow) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO local_bases (urn, version, path, origin, size_bytes, imported_at, deprecated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![b.urn, b.version, b.path, b.origin, b.size_bytes as i64, b.imported_at, b.deprecated as i64],
            )
            .map(|n| n == 1)
        })
    }

    /// Marks a base version deprecated (as the marketplace marks images); false if unknown.
    pub fn base_deprecate(&self, urn: &str, version: &str) -> anyhow::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE local_bases SET deprecated = 1 WHERE urn = ?1 AND version = ?2",
                params![urn, version],
            )
            .map(|n| n == 1)
        })
    }

    pub fn base_get(&self, urn: &str, version: &str) -> anyhow::Result<Option<BaseRow>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT * FROM local_bases WHERE urn = ?1 AND version = ?2",
                [urn, version],
                base_from_row,
            )
            .optional()
        })
    }

    /// All bases, or those of one `publisher:offer:sku`.
    pub fn bases(&self, urn: Option<&str>) -> anyhow::Result<Vec<BaseRow>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT * FROM local_bases WHERE ?1 IS NULL OR urn = ?1 ORDER BY urn, imported_at",
            )?;
            let rows = st.query_map([urn], base_from_row)?;
            rows.collect()
        })
    }
}
