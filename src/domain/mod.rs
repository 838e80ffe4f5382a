//! Pure types and decisions: no I/O, no async, no clock (time is a parameter).

pub mod build;
pub mod events_in;
pub mod gallery;
pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod template;
pub mod version;
