//! kiln: a golden-image factory for Azure VM Image Builder.
//!
//! Layers: [`domain`] (pure), [`ports`] (traits to the world), [`app`] (one
//! module per function), [`providers`] (local adapters), [`store`] (the
//! embedded store and queue), [`host`] (custom-handler server and local
//! host), [`cli`]; [`metrics`] (the registry `/api/metrics` exports).

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod host;
pub mod metrics;
pub mod ports;
pub mod providers;
pub mod sim;
pub mod store;
