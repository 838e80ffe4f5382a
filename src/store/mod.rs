//! Persistence: the embedded SQLite store used by `kiln local`.

pub mod db;
pub use db::Db;
pub mod builds;
pub mod queue;

pub use builds::Store;
