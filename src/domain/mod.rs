//! Pure types and decisions: no I/O, no async, no clock (time is a parameter).
//!
//! | idea | modules |
//! |---|---|
//! | a build's life | [`build`] (the state machine), [`failure`] (categories and retry), [`run`] (AIB's run vocabulary), [`request`] (build requests) |
//! | what a pipeline says | [`pipeline`] (the file: template plus `kiln`), [`template`] (the AIB template, typed), [`finding`] and [`lint`] (what `kiln validate` reports) |
//! | when builds start | [`schedule`] (Patch Tuesday, cron, blackouts), [`source_watch`] (a floating source's new version), [`events_in`] (base-image events) |
//! | the gallery | [`version`] (`Major.Minor.Patch`), [`version_order`] (source versions), [`gallery`] (versions, lineage, in-use), [`retention`] (policy and planner) |
//! | what an image holds | [`evidence`] (SBOM, package diff, vulnerability gate, signed provenance) |
//! | Azure's rules | [`permissions`] (the roles kiln and AIB need) |
//! | what kiln writes | [`stored_time`] (the one stored time format), [`redact`] (URIs without their credentials) |

pub mod build;
pub mod events_in;
pub mod evidence;
pub mod failure;
pub mod finding;
pub mod gallery;
pub mod lint;
pub mod permissions;
pub mod pipeline;
pub mod redact;
pub mod request;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod source_watch;
pub mod stored_time;
pub mod template;
pub mod version;
pub mod version_order;
