//! The store port: everything kiln keeps between invocations, drawn from
//! the use cases that need it. The app sees only these traits; SQLite
//! (`kiln local`, one machine) and Azure Table Storage (many instances)
//! implement them, and one conformance suite holds both to the same rules.
//!
//! The rules every implementation keeps:
//! - a build write is conditional on the revision the writer read; a lost
//!   race is [`Write::Conflict`], never an overwrite;
//! - a transition commits atomically with its history entry, its outbox
//!   event, its breaker count and the templates it retires;
//! - a slot claim never lets a pipeline or the factory exceed its cap, and
//!   queued builds of one pipeline start in admission order;
//! - one idempotency key admits at most one build;
//! - every "one worker must win" step (a timer firing, an outbox delivery)
//!   is a lease or a conditional write, so N instances can share a store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::build::{Build, BuildState, Trigger};
use crate::domain::version::ImageVersion;

/// The outcome of a conditional build write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Written { row_version: i64 },
    Conflict,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
}

/// What a pipeline remembers between invocations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct PipelineMemory {
    /// The schedule was evaluated up to this instant (catch-up starts here).
    pub schedule_checked_until: Option<DateTime<Utc>>,
    /// Newest source version the watcher saw, and when it first saw it.
    pub source_seen: Option<String>,
    pub source_seen_at: Option<DateTime<Utc>>,
    /// Source version of the last build the watcher requested.
    pub source_requested: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRuntime {
    pub consecutive_failures: u32,
    pub breaker_open_since: Option<DateTime<Utc>>,
    pub memory: PipelineMemory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerChange {
    Opened { failures: u32 },
    Closed,
}

/// Which builds a listing returns: newest first, `offset` of them skipped,
/// at most `limit` (default 200).
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub pipeline: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Builds skipped before the first returned (paging).
    pub offset: usize,
}

/// How a finished build counts for its pipeline's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub automatic: bool,
    pub succeeded: bool,
    pub threshold: u32,
}

/// A CloudEvent waiting for webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub event_id: String,
    /// The CloudEvent as JSON.
    pub body: String,
    pub at: DateTime<Utc>,
}

/// A template to retire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retire {
    pub template: String,
    pub build_id: String,
    pub pipeline: String,
    /// Keep the template and its build resources (the template's
    /// `errorHandling` asks for it on a failure): only the log is copied.
    pub keep: bool,
}

/// A row of the cleanup queue, as the sweeper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupJob {
    pub template: String,
    pub build_id: String,
    pub pipeline: String,
    pub keep: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What commits in the same transaction as a transition, so a crash right
/// after it cannot lose the webhook event, the breaker count or a template
/// to clean up.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub outbox: Option<OutboxRow>,
    /// Set when the transition ends the build.
    pub outcome: Option<Outcome>,
    /// Templates the transition retires, for the cleanup queue.
    pub retire: Vec<Retire>,
}

/// One step of a build's state machine, as it is written.
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    /// The build after the step.
    pub build: &'a Build,
    /// The revision the step was decided on.
    pub expected: i64,
    /// The state before the step.
    pub from: &'a BuildState,
    /// Why the state changed; `None` writes no history entry.
    pub cause: Option<&'a str>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub extras: &'a Extras,
}

/// The two limits a queued build must fit under to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// The pipeline's `maxConcurrent`.
    pub pipeline: u32,
    /// `KILN_MAX_ACTIVE_BUILDS`, over all pipelines.
    pub global: u32,
}

/// Makes the new build from the versions already taken (the gallery's and
/// every build's of the pipeline). A store may call it more than once when
/// it retries a lost race, so it must not have effects.
pub type MakeBuild<'a> = &'a (dyn Fn(&[ImageVersion]) -> Result<Build, String> + Send + Sync);

/// A build request to admit.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    pub pipeline: &'a str,
    pub key: &'a str,
    pub trigger: &'a Trigger,
    pub now: DateTime<Utc>,
    /// Versions the gallery already holds, read before admitting.
    pub gallery_versions: &'a [ImageVersion],
    pub make: MakeBuild<'a>,
}

/// Result of admitting a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Created(Box<Build>),
    Existing(String),
    Coalesced(String),
    Paused(String),
    /// The request cannot become a build (e.g. its version cannot be chosen).
    Refused(String),
}

/// A message a handler or queue gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Orders dead letters (newest highest); unique within a store.
    pub seq: i64,
    pub queue: String,
    pub message_id: String,
    pub body: String,
    pub reason: String,
    pub delivery_count: u32,
    pub dead_at: DateTime<Utc>,
    /// When it was put back on its queue; `None` until then.
    pub replayed_at: Option<DateTime<Utc>>,
}

/// The outcome of marking a dead letter replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayMark {
    /// This caller marked it: it is the one to send the message again.
    Marked(DeadLetter),
    /// It was replayed before (at this time): nothing to send.
    Already(DateTime<Utc>),
    Missing,
}

/// A dead letter to record.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    pub queue: &'a str,
    pub message_id: &'a str,
    pub body: &'a str,
    pub reason: &'a str,
    pub delivery_count: u32,
    pub now: DateTime<Utc>,
}

/// An outbox event claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub event_id: String,
    /// Where the store keeps the event (opaque to callers).
    pub locator: String,
    pub body: String,
    /// Attempts before this one.
    pub attempts: u32,
}

/// A retention step to record before it is carried out.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    pub run_id: &'a str,
    /// RFC 3339, as the run states it.
    pub at: &'a str,
    pub definition: &'a str,
    pub version: &'a str,
    /// `deprecate | delete`
    pub action: &'a str,
    /// `planned | done | failed | dry-run`
    pub status: &'a str,
    pub reason: &'a str,
    /// The policy in force, as JSON.
    pub policy: &'a str,
}

/// One row of the retention audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub seq: i64,
    pub run_id: String,
    /// RFC 3339, as recorded.
    pub at: String,
    pub definition: String,
    pub version: String,
    /// `deprecate | delete`
    pub action: String,
    /// `planned | done | failed | dry-run`
    pub status: String,
    pub reason: String,
    /// The policy in force when the step was planned.
    pub policy: serde_json::Value,
}

/// Builds, their history and admission keys.
#[async_trait]
pub trait BuildStore: Send + Sync {
    /// The build and its revision.
    async fn get(&self, id: &str) -> anyhow::Result<Option<(Build, i64)>>;
    /// Newest first.
    async fn list(&self, f: &BuildFilter) -> anyhow::Result<Vec<Build>>;
    /// Oldest first.
    async fn history(&self, id: &str) -> anyhow::Result<Vec<HistoryEntry>>;
    /// Writes the transition if the build is still at `t.expected`.
    async fn commit(&self, t: &Transition<'_>) -> anyhow::Result<(Write, Option<BreakerChange>)>;
    /// Starts a queued build: the slot check and the conditional write are
    /// one decision. `None`: no slot is free (or an older build of its
    /// pipeline is first in line).
    async fn claim_slot(&self, t: &Transition<'_>, caps: Caps) -> anyhow::Result<Option<Write>>;
    /// Whether queued build `id` may start at `now` (a hint; the claim decides).
    async fn slot_free(&self, id: &str, caps: Caps, now: DateTime<Utc>) -> anyhow::Result<bool>;
    /// Dedupe by key, breaker, coalescing, then a new build: one decision.
    async fn admit(&self, a: &Admission<'_>) -> anyhow::Result<Admitted>;
    async fn build_for_key(&self, pipeline: &str, key: &str) -> anyhow::Result<Option<String>>;
    /// Non-terminal builds whose next poll is due, oldest first.
    async fn due(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<String>>;
    /// Queued builds, oldest first.
    async fn queued(&self) -> anyhow::Result<Vec<String>>;
    /// Builds holding a place under the global cap (a hint: a claim decides).
    async fn active_builds(&self) -> anyhow::Result<usize>;
}

/// What a pipeline carries between builds: its breaker and watcher memory.
#[async_trait]
pub trait PipelineStore: Send + Sync {
    async fn runtime(&self, pipeline: &str) -> anyhow::Result<PipelineRuntime>;
    /// Reads, changes and writes a pipeline's memory as one decision. `f`
    /// may run more than once (a store retries a lost race); the last run's
    /// change is the one kept.
    async fn modify_memory(
        &self,
        pipeline: &str,
        f: &mut (dyn for<'m> FnMut(&'m mut PipelineMemory) + Send),
    ) -> anyhow::Result<()>;
    /// Counts a finished build towards the circuit breaker on its own.
    async fn record_outcome(
        &self,
        pipeline: &str,
        o: Outcome,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<BreakerChange>>;
}

/// The template cleanup queue and the customization logs kept from it.
#[async_trait]
pub trait CleanupStore: Send + Sync {
    /// Jobs due at `now`, oldest first, at most `limit`.
    async fn cleanup_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> anyhow::Result<Vec<CleanupJob>>;
    async fn cleanup_of(&self, build_id: &str) -> anyhow::Result<Vec<CleanupJob>>;
    /// Looks at the job again at `next_at`; `error` says why it is not done
    /// (`None`: it is progressing, which is not a failed attempt).
    async fn cleanup_later(
        &self,
        job: &CleanupJob,
        next_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> anyhow::Result<()>;
    async fn cleanup_done(&self, job: &CleanupJob) -> anyhow::Result<()>;
    /// Keeps the customization log of `template` (a later copy replaces an earlier one).
    async fn put_log(
        &self,
        template: &str,
        build_id: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()>;
    async fn log(&self, template: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

/// CloudEvents waiting for webhook delivery.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Queues an event outside a transition (a repeated id is ignored).
    async fn outbox_add(&self, row: &OutboxRow) -> anyhow::Result<()>;
    /// Claims up to `limit` due events with fewer than `max_attempts`
    /// attempts, hiding each from other claimants for `lease`.
    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        max_attempts: u32,
        limit: usize,
    ) -> anyhow::Result<Vec<OutboxItem>>;
    async fn outbox_delivered(&self, item: &OutboxItem, now: DateTime<Utc>) -> anyhow::Result<()>;
    async fn outbox_failed(
        &self,
        item: &OutboxItem,
        next_attempt: DateTime<Utc>,
        error: &str,
    ) -> anyhow::Result<()>;
}

/// The retention audit: every step recorded before it is carried out.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records a step; returns its `seq`.
    async fn audit_insert(&self, r: &AuditRecord<'_>) -> anyhow::Result<i64>;
    /// Marks a recorded step with its outcome (`error` is appended to the reason).
    async fn audit_finish(&self, seq: i64, status: &str, error: Option<&str>)
        -> anyhow::Result<()>;
    /// The most recent `limit` rows, newest first.
    async fn audit(&self, limit: usize) -> anyhow::Result<Vec<AuditEntry>>;
}

/// Dead letters recorded by a queue or by a handler that refused a message.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    async fn record_dead_letter(&self, d: &NewDeadLetter<'_>) -> anyhow::Result<()>;
    /// Newest first.
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>>;
    /// Marks dead letter `seq` replayed at `now`, once: of two callers, one
    /// gets [`ReplayMark::Marked`] and the other [`ReplayMark::Already`].
    async fn mark_replayed(&self, seq: i64, now: DateTime<Utc>) -> anyhow::Result<ReplayMark>;
    /// Clears the mark again (the message could not be sent).
    async fn unmark_replayed(&self, seq: i64) -> anyhow::Result<()>;
}

/// Timer memory and leases: what lets several hosts share the timers.
#[async_trait]
pub trait TimerStore: Send + Sync {
    async fn last_fire(&self, function: &str) -> anyhow::Result<Option<DateTime<Utc>>>;
    async fn record_fire(&self, function: &str, at: DateTime<Utc>) -> anyhow::Result<()>;
    /// Takes or renews lease `name` for `holder` until `now + ttl`; false
    /// when another holder's lease has not expired.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> anyhow::Result<bool>;
}

/// Everything kiln persists.
pub trait Store:
    BuildStore + PipelineStore + CleanupStore + OutboxStore + AuditStore + DeadLetterStore + TimerStore
{
    /// `sqlite` or `table`, for logs and health.
    fn kind(&self) -> &'static str;
}

impl dyn Store {
    /// [`PipelineStore::modify_memory`] returning what `f` returns.
    pub async fn update_memory<T: Send>(
        &self,
        pipeline: &str,
        mut f: impl FnMut(&mut PipelineMemory) -> T + Send,
    ) -> anyhow::Result<T> {
        let mut out = None;
        self.modify_memory(pipeline, &mut |m| out = Some(f(m)))
            .await?;
        out.ok_or_else(|| anyhow::anyhow!("the store did not run the memory update"))
    }
}

/// A stored policy: written by kiln as JSON; anything else is shown as the
/// text it is.
pub fn policy_json(stored: String) -> serde_json::Value {
    serde_json::from_str(&stored).unwrap_or(serde_json::Value::String(stored))
}
