//! kiln: a golden-image factory for Azure VM Image Builder.
//!
//! Layers: [`domain`] (pure), [`ports`] (traits to the world), [`app`] (one
//! module per function), [`providers`] (local and Azure adapters), [`host`]
//! (custom-handler server and local host), [`cli`].

pub mod domain;
pub mod ports;
pub mod providers;
pub mod store;
