//! The build state machine.
//!
//! A build lives for minutes to hours; an invocation for seconds, and
//! messages arrive late, twice or never. So the machine is level-triggered:
//! each step observes the provider's current view of the build's template
//! and decides from that, never from memory of what it asked for. The
//! transition is a pure function; the driver (`app::driver`) persists the
//! result with a conditional write and only then performs the effects.
//!
//! ```text
//! queued → submitting → running{phase} → validating → publishing → succeeded
//!    └──────────┴────────────┴──────────────┴────────────┴──→ failed
//!    any non-terminal ── cancel ──→ canceling → canceled
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::failure::{classify, FailureCategory};
use super::run::{RunOutput, TemplateStatus};
use super::version::ImageVersion;

/// The provider's phase while `running` (AIB `runSubState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Queued,
    Building,
    Customizing,
    Optimizing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum BuildState {
    /// Admitted, waiting for a slot (per-pipeline and global concurrency).
    Queued,
    /// Handing the template to the provider; `not_before` delays a retry.
    Submitting {
        not_before: Option<DateTime<Utc>>,
    },
    Running {
        phase: Phase,
    },
    Validating,
    /// Distributing; `replicating` once the run ended but replicas are still copying.
    Publishing {
        replicating: bool,
    },
    Succeeded {
        artifacts: Vec<RunOutput>,
        /// Regions where a PartiallySucceeded run's replication failed: the
        /// version exists and is usable elsewhere; adding the regions back to
        /// the version's target regions re-replicates it.
        #[serde(
            default,
            rename = "failedRegions",
            skip_serializing_if = "Vec::is_empty"
        )]
        failed_regions: Vec<String>,
    },
    Failed {
        category: FailureCategory,
        message: String,
    },
    /// Cancel asked of the provider. `timed_out` turns the end into a `timeout` failure.
    Canceling {
        reason: String,
        timed_out: bool,
    },
    Canceled {
        reason: String,
    },
}

impl BuildState {
    /// The spelling used by the API, the CLI, events and the store.
    pub fn name(&self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Submitting { .. } => "submitting",
            BuildState::Running { .. } => "running",
            BuildState::Validating => "validating",
            BuildState::Publishing { .. } => "publishing",
            BuildState::Succeeded { .. } => "succeeded",
            BuildState::Failed { .. } => "failed",
            BuildState::Canceling { .. } => "canceling",
            BuildState::Canceled { .. } => "canceled",
        }
    }

    pub fn is_terminal(&self) -> bool {
        match self {
            BuildState::Succeeded { .. }
            | BuildState::Failed { .. }
            | BuildState::Canceled { .. } => true,
            BuildState::Queued
            | BuildState::Submitting { .. }
            | BuildState::Running { .. }
            | BuildState::Validating
            | BuildState::Publishing { .. }
            | BuildState::Canceling { .. } => false,
        }
    }
}

/// What started a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Trigger {
    Schedule { cycle: String },
    BaseImage { version: String },
    Manual,
}

impl Trigger {
    /// Automatic builds count towards the circuit breaker; manual ones never do.
    pub fn is_automatic(&self) -> bool {
        match self {
            Trigger::Schedule { .. } | Trigger::BaseImage { .. } => true,
            Trigger::Manual => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub id: String,
    pub pipeline: String,
    pub trigger: Trigger,
    pub reason: String,
    pub requested_by: String,
    pub idempotency_key: String,
    /// Assigned at admission, reused by every attempt.
    pub version: ImageVersion,
    /// The source's exact version when the scheme or the source pinned it.
    pub source_version: Option<String>,
    pub template_hash: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// AIB's build timeout for one attempt.
    pub timeout_minutes: u32,
    pub state: BuildState,
    pub created_at: DateTime<Utc>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    /// Polls since the last observed change, for the adaptive poll delay.
    pub quiet_polls: u32,
    /// Last `runSubState`/message seen, to notice change.
    pub last_seen: Option<String>,
}

impl Build {
    /// Provider template name of the current attempt: derived from the build
    /// id so a repeated submit finds the earlier template instead of a twin.
    pub fn template_name(&self) -> String {
        template_name(&self.id, self.attempt)
    }
}

pub fn template_name(build_id: &str, attempt: u32) -> String {
    format!("kiln-{build_id}-a{attempt}")
}

/// What a step learned about the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Admission found a free slot for this queued build.
    SlotGranted,
    /// The provider's view of the current attempt's template, and its run
    /// outputs when it succeeded; `replication` when the run ended
    /// PartiallySucceeded and the gallery was asked about its regions;
    /// `leftover_version` when a retry is about to be submitted and the
    /// gallery was asked whether an earlier attempt left the version behind.
    Provider {
        status: TemplateStatus,
        outputs: Vec<RunOutput>,
        replication: Option<Replication>,
        leftover_version: Option<bool>,
    },
    /// Submitting (put template + run) failed.
    SubmitFailed {
        category: FailureCategory,
        message: String,
    },
    CancelRequested {
        reason: String,
    },
    /// Nothing new: a sweep or a poll with no provider call.
    Tick,
}

/// Where the versions of a PartiallySucceeded run stand, region by region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replication {
    pub completed: Vec<String>,
    pub failed: Vec<String>,
    /// Still replicating, or not reported yet.
    pub pending: Vec<String>,
    /// Outputs (definitions) that reached no region at all.
    pub unpublished: Vec<String>,
}

/// What the driver must do after persisting the new build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Create the attempt's template (idempotent), and run it if it is
    /// ready at once; otherwise a later poll sees it provisioned and runs it.
    Submit {
        template: String,
    },
    /// Run the attempt's template, which is provisioned and has not run.
    Run {
        template: String,
    },
    /// Start deleting the gallery version an earlier attempt of this build
    /// left behind (AIB cannot distribute onto an existing version).
    RemoveLeftoverVersion,
    CancelRun {
        template: String,
    },
    /// Retire a template that will not be used again: its customization
    /// log is kept, a run still going is canceled and confirmed first, and
    /// the deletion is retried until the provider confirms it (the driver
    /// hands this to the durable cleanup queue).
    DeleteTemplate {
        template: String,
    },
    SchedulePoll {
        after: Duration,
    },
    /// Give queued builds a chance at the slot this build freed.
    AdmitQueued,
}

/// Tuning of the machine: poll delays, retry backoff, timeout margin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// The cap while validating or distributing, the phases a run ends from:
    /// the end is seen within this, without polling a long build often.
    pub poll_max_finishing: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Slack past `buildTimeoutInMinutes` before kiln cancels the run itself.
    pub timeout_margin: Duration,
}

impl Tuning {
    pub fn azure() -> Self {
        Self {
            poll_initial: Duration::from_secs(30),
            poll_max: Duration::from_secs(300),
            poll_max_finishing: Duration::from_secs(60),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(1800),
            timeout_margin: Duration::from_secs(15 * 60),
        }
    }
    pub fn local() -> Self {
        Self {
            poll_initial: Duration::from_millis(250),
            poll_max: Duration::from_secs(5),
            poll_max_finishing: Duration::from_secs(2),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            timeout_margin: Duration::from_secs(60),
        }
    }

    /// Short at first, doubling every few quiet polls, capped (lower while
    /// `finishing`).
    pub fn poll_delay(&self, quiet_polls: u32, finishing: bool) -> Duration {
        let factor = 1u32 << (quiet_polls / 2).min(10);
        let cap = if finishing {
            self.poll_max_finishing.min(self.poll_max)
        } else {
            self.poll_max
        };
        (self.poll_initial * factor).min(cap)
    }

    /// Exponential backoff with a deterministic jitter of up to +25%, derived
    /// from the build id so two builds failing together do not retry together.
    pub fn retry_delay(&self, build_id: &str, attempt: u32) -> Duration {
        let exp = self.retry_base * (1u32 << attempt.saturating_sub(1).min(16));
        let base = exp.min(self.retry_max);
        let hash = build_id.bytes().fold(attempt as u64, |h, b| {
            h.wrapping_mul(31).wrapping_add(b as u64)
        });
        base + base.mul_f64((hash % 1000) as f64 / 4000.0)
    }
}

/// The result of one transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub build: Build,
    pub effects: Vec<Effect>,
    /// Why the state changed (recorded in history); `None` if it did not.
    pub cause: Option<String>,
}

mod transition;
pub use transition::transition;

#[cfg(test)]
mod tests;
