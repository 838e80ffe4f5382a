//! kiln's client for Azure Table Storage, on reqwest: the REST operations a
//! store needs, nothing of the store itself.
//!
//! There is no maintained official Rust SDK for tables (the unofficial
//! `azure_data_tables` sits on an old `azure_core` without Entra ID), so
//! this is an adapter of kiln's own, like the Service Bus and ARM ones:
//! a timeout per request, a named [`RetryPolicy`], and errors that say which
//! operation on which keys failed and tell 404, 409 and 412 apart.
//!
//! - [`client`]: [`TableClient`] and its operations.
//! - [`http`]: the HTTP call under each: headers, signing, timeouts, retries.
//! - [`auth`]: connection strings, Shared Key signing, bearer tokens.
//! - [`entity`]: [`Entity`] with its ETag and Edm-typed properties; [`IfMatch`].
//! - [`filter`]: `$filter` expressions whose values cannot break out of their quotes.
//! - [`batch`]: entity group transactions (`multipart/mixed`).
//! - [`limits`]: the service's size and character limits, checked before sending.
//! - [`retry`]: which failures are sent again, and how a retried write reads.
//! - [`error`]: [`TableError`], by what the caller does next.
//! - [`testing`]: the Azurite fixture the tests run against.
//!
//! Wire format: the Table service REST reference (Insert/Update/Merge/Delete
//! Entity, Query Entities, Query Timeout and Pagination, Performing Entity
//! Group Transactions, Authorize with Shared Key, Payload Format for Table
//! Service Operations, Understanding the Table Service Data Model).

pub mod auth;
pub mod batch;
pub mod client;
pub mod entity;
pub mod error;
pub mod filter;
pub mod http;
pub mod limits;
pub mod retry;
pub mod testing;

pub use auth::{ConnectionString, Credential, SharedKey, STORAGE_SCOPE};
pub use batch::BatchOp;
pub use client::{Continuation, Page, TableClient};
pub use entity::{Entity, IfMatch, Property, PropertyError};
pub use error::TableError;
pub use filter::Filter;
pub use http::{TableOptions, API_VERSION};
pub use retry::RetryPolicy;

#[cfg(test)]
mod tests;
