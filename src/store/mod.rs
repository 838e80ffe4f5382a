//! Persistence. [`port`] is what the app sees; [`sqlite`] keeps it in one
//! file for one machine (`kiln local`, the default); [`table_store`] keeps
//! it in Azure Table Storage (or Azurite, or Cosmos DB for Table) so that
//! many instances share it, through the REST client in [`table`].
//! `KILN_STORE` picks one.
//!
//! All SQL lives under `sqlite/`; nothing outside this folder knows how a
//! store keeps its rows.

pub mod port;
pub mod sqlite;
pub mod table;
pub mod table_store;

#[cfg(test)]
pub mod conformance;

pub use port::Store;
pub use sqlite::{Db, SqliteStore};
