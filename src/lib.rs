//! kiln: a golden-image factory for Azure VM Image Builder.
//!
//! Layers: [`domain`] (pure), [`ports`] (traits to the world), [`app`] (one
//! module per function), [`providers`] (local and Azure adapters), [`host`]
//! (custom-handler server and local host), [`cli`].

// Temporary, branch `retention` only: the lead's `src/app/mod.rs` replaces this at merge.
pub mod app {
    pub mod retention;
}
pub mod domain;
pub mod ports;
pub mod store;
