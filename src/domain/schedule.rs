//! Schedules: Patch Tuesday plus an offset, or a 6-field cron, with blackouts.
//! (Being written; see the helper's brief.)

use super::pipeline::ScheduleSpec;

#[derive(Debug, Clone)]
pub struct Schedule {
    pub spec: ScheduleSpec,
}

impl Schedule {
    pub fn from_spec(spec: &ScheduleSpec) -> Result<Schedule, String> {
        Ok(Schedule { spec: spec.clone() })
    }
}
