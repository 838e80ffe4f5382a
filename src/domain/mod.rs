//! Pure types and decisions: no I/O, no async, no clock (time is a parameter).

pub mod build;
pub mod events_in;
pub mod failure;
pub mod finding;
pub mod gallery;
pub mod lint;
pub mod permissions;
pub mod pipeline;
pub mod request;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod source_watch;
pub mod stored_time;
pub mod template;
pub mod version;
pub mod version_order;
