//! The shapes `/api/builds` answers with, for the OpenAPI document: the
//! store's build under its own field names, its timeline, failure and the
//! outcome of a request.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::build::Build;
use crate::store::port::HistoryEntry;

/// A build, as the store keeps it (the same fields, the same names).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildView {
    pub id: String,
    pub pipeline: String,
    /// `{kind: schedule, cycle} | {kind: baseImage, version} | {kind: manual}`
    #[schema(value_type = Object)]
    pub trigger: Value,
    pub reason: String,
    pub requested_by: String,
    pub idempotency_key: String,
    /// `Major.Minor.Patch`
    pub version: String,
    pub source_version: Option<String>,
    pub template_hash: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_minutes: u32,
    /// `{state: <name>, …}`: the state and what it carries (a failure's
    /// `category` and `message`, a success's `artifacts`).
    #[schema(value_type = Object)]
    pub state: Value,
    pub created_at: DateTime<Utc>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    pub quiet_polls: u32,
    pub last_seen: Option<String>,
}

impl From<&Build> for BuildView {
    fn from(b: &Build) -> Self {
        Self {
            id: b.id.clone(),
            pipeline: b.pipeline.clone(),
            trigger: serde_json::to_value(&b.trigger).unwrap_or(Value::Null),
            reason: b.reason.clone(),
            requested_by: b.requested_by.clone(),
            idempotency_key: b.idempotency_key.clone(),
            version: b.version.to_string(),
            source_version: b.source_version.clone(),
            template_hash: b.template_hash.clone(),
            attempt: b.attempt,
            max_attempts: b.max_attempts,
            timeout_minutes: b.timeout_minutes,
            state: serde_json::to_value(&b.state).unwrap_or(Value::Null),
            created_at: b.created_at,
            attempt_started_at: b.attempt_started_at,
            quiet_polls: b.quiet_polls,
            last_seen: b.last_seen.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
}

impl From<&HistoryEntry> for TimelineEntry {
    fn from(h: &HistoryEntry) -> Self {
        Self {
            at: h.at,
            from: h.from.clone(),
            to: h.to.clone(),
            cause: h.cause.clone(),
        }
    }
}

/// Why a failed build failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The failure category (`customizer`, `timeout`, `quota`, …).
    pub category: String,
    pub message: String,
    /// The state the build was in when it failed (from the timeline).
    pub failed_in: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildDetail {
    pub build: BuildView,
    pub state: String,
    pub version: String,
    pub timeline: Vec<TimelineEntry>,
    /// Seconds spent in each state (the current one counts up to now).
    pub seconds_in_state: BTreeMap<String, f64>,
    pub failure: Option<Failure>,
    /// The last lines of the current attempt's customization log, when there is one.
    pub log_tail: Option<String>,
}

/// The body of `POST /api/builds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; `BuildRequest::parse` reads it.
pub struct CreateBuild {
    /// A deployed pipeline's name.
    #[schema(min_length = 1)]
    pub pipeline: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    /// The same key returns the same build.
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
}

/// What became of a build request.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequested {
    /// The build's id; absent while the request still waits in the queue (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// `created | existing | coalesced | queued`
    pub outcome: String,
    pub request_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<BuildView>,
    /// The queue message, while the request waits (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The build this one retries (`POST /api/builds/{id}/retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelAccepted {
    pub build: String,
    /// The state after the cancel was asked for.
    pub state: Option<String>,
}
