//! Pure types and decisions: no I/O, no async, no clock (time is a parameter).

pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod template;
pub mod version;
