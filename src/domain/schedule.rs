//! Placeholder replaced by the schedule branch.
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::pipeline::ScheduleSpec;

#[derive(Debug, Clone, Serialize)]
pub struct Occurrence {
    pub cycle: String,
    pub scheduled: DateTime<Utc>,
    pub fires_at: DateTime<Utc>,
    pub deferred: bool,
}

#[derive(Debug, Clone)]
pub struct Schedule;

impl Schedule {
    pub fn from_spec(_spec: &ScheduleSpec) -> Result<Schedule, String> {
        Ok(Schedule)
    }
    pub fn next(&self, _after: DateTime<Utc>, _count: usize) -> Vec<Occurrence> {
        vec![]
    }
    pub fn latest_due(&self, _c: DateTime<Utc>, _now: DateTime<Utc>) -> Option<Occurrence> {
        None
    }
}
