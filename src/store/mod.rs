//! Persistence: the embedded SQLite store used by `kiln local`.

pub mod db;
pub use db::Db;
