//! The embedded SQLite database: one file, WAL, migrations from `migrations/`.
//!
//! rusqlite is synchronous; every statement kiln runs is short (an indexed
//! row or two), so callers hold the connection for microseconds and no
//! async executor thread is blocked for long.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

/// Migrations in order. The file is the schema's source of truth; the name is
/// recorded once applied so each runs exactly once.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_core",
        include_str!("../../../migrations/0001_core.sql"),
    ),
    (
        "0002_local_provider",
        include_str!("../../../migrations/0002_local_provider.sql"),
    ),
    (
        "0003_template_cleanup",
        include_str!("../../../migrations/0003_template_cleanup.sql"),
    ),
    (
        "0004_shared_store",
        include_str!("../../../migrations/0004_shared_store.sql"),
    ),
    (
        "0005_dead_letter_replay",
        include_str!("../../../migrations/0005_dead_letter_replay.sql"),
    ),
];

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Cannot create the data folder {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("Cannot open the database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn, Some(path.to_path_buf()))
    }

    pub fn open_in_memory() -> anyhow::Result<Db> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> anyhow::Result<Db> {
        // Several processes (the host, `kiln base import`, tests) share one file.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` with the connection. Keep `f` short: it holds the only connection.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("database mutex poisoned"))?;
        Ok(f(&mut conn)?)
    }
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    // Every start after the first finds all migrations applied: one read says
    // so, without a write lock or a transaction per migration (this was most
    // of the store's share of `kiln serve`'s start-up).
    if all_applied(conn) {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)",
    )?;
    for (name, sql) in MIGRATIONS {
        // Immediate: two processes opening a new file at once must not both
        // read "not applied" and then race to apply it.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)
                .with_context(|| format!("Cannot apply migration {name}"))?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, datetime('now'))",
                [name],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Whether every migration is recorded. Any error (a new file has no
/// `schema_migrations` table yet) means "not known to be applied": the slow
/// path below creates the table and reports real errors.
fn all_applied(conn: &Connection) -> bool {
    let Ok(mut stmt) = conn.prepare("SELECT name FROM schema_migrations") else {
        return false;
    };
    let Ok(rows) = stmt.query_map([], |r| r.get::<_, String>(0)) else {
        return false;
    };
    let applied: Result<std::collections::HashSet<String>, _> = rows.collect();
    match applied {
        Ok(applied) => MIGRATIONS.iter().all(|(name, _)| applied.contains(*name)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_reopen_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        Db::open(&path).unwrap();
        let db = Db::open(&path).unwrap();
        let n: i64 = db
            .with(|c| c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_database_from_before_the_newest_migration_gets_it_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        Db::open(&path).unwrap();
        {
            // What an older kiln left: no replay column, 0005 not recorded.
            let conn = Connection::open(&path).unwrap();
            assert!(all_applied(&conn));
            conn.execute_batch(
                "ALTER TABLE dead_letters DROP COLUMN replayed_at;
                 DELETE FROM schema_migrations WHERE name = '0005_dead_letter_replay';",
            )
            .unwrap();
            assert!(!all_applied(&conn));
        }
        let db = Db::open(&path).unwrap();
        let (recorded, has_column): (i64, i64) = db
            .with(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM schema_migrations),
                            (SELECT COUNT(*) FROM pragma_table_info('dead_letters') WHERE name = 'replayed_at')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!(recorded as usize, MIGRATIONS.len());
        assert_eq!(has_column, 1);
    }

    #[test]
    fn a_new_file_is_not_taken_for_migrated() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(!all_applied(&conn));
    }
}
