//! Persistence. [`port`] is what the app sees; [`sqlite`] keeps it in one
//! file for one machine (`kiln local`, the default); [`table`] keeps it in
//! Azure Table Storage (or Azurite, or Cosmos DB for Table) so that many
//! instances share it. `KILN_STORE` picks one ([`open`]).
//!
//! All SQL lives under `sqlite/`; nothing outside this folder knows how a
//! store keeps its rows.

pub mod port;
pub mod sqlite;

#[cfg(test)]
pub mod conformance;

pub use port::Store;
pub use sqlite::{Db, SqliteStore};
