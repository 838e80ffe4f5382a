//! App-level tests: the real router, queue consumers, timers and the local
//! provider, driven the way the Functions host and users drive them.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod browser;
mod builds;
mod dashboard;
mod events;
mod evidence;
mod handler;
mod harness;
mod metrics;
mod retention;
mod schemathesis;
mod triggers;
