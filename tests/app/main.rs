//! App-level tests: the real router, queue consumers, timers and the local
//! provider, driven the way the Functions host and users drive them.

mod api;
mod builds;
mod events;
mod handler;
mod harness;
mod retention;
mod schemathesis;
mod triggers;
