//! Functions `build_requests`, `build_polls` and `build_sweeper`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{InvocationResult, MessageMeta};
use super::{admission, driver, App, POLLS_QUEUE, REQUESTS_QUEUE};
use crate::domain::request::BuildRequest;
use crate::store::port::NewDeadLetter;

/// A request that cannot succeed is dead-lettered with its reason at the
/// first delivery and acknowledged: retrying it would only delay the queue.
async fn refuse(
    app: &App,
    queue: &str,
    text: &str,
    meta: &MessageMeta,
    reason: &str,
    out: &mut InvocationResult,
) -> anyhow::Result<Value> {
    app.store
        .record_dead_letter(&NewDeadLetter {
            queue,
            message_id: &meta.message_id,
            body: text,
            reason,
            delivery_count: meta.delivery_count,
            now: app.clock.now(),
        })
        .await?;
    out.log(format!(
        "{queue}: message {} dead-lettered: {reason}",
        meta.message_id
    ));
    Ok(json!({ "outcome": "deadLettered", "reason": reason }))
}

pub async fn build_requests(
    app: &App,
    text: &str,
    meta: &MessageMeta,
    out: &mut InvocationResult,
) -> anyhow::Result<Value> {
    let req = match BuildRequest::parse(text.as_bytes()) {
        Ok(r) => r,
        Err(e) => return refuse(app, REQUESTS_QUEUE, text, meta, &e.to_string(), out).await,
    };
    match admission::admit(app, &req, &meta.message_id).await? {
        Ok(outcome) => {
            out.log(format!("build_requests: {} → {:?}", req.pipeline, outcome));
            Ok(serde_json::to_value(outcome)?)
        }
        Err(refused) => refuse(app, REQUESTS_QUEUE, text, meta, &refused.0, out).await,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Poll {
    build_id: String,
    /// The build's row version when the poll was scheduled.
    #[serde(default)]
    row_version: Option<i64>,
}

pub async fn build_polls(
    app: &App,
    text: &str,
    meta: &MessageMeta,
    out: &mut InvocationResult,
) -> anyhow::Result<()> {
    let poll: Poll = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            refuse(
                app,
                POLLS_QUEUE,
                text,
                meta,
                &format!("not a poll message: {e}"),
                out,
            )
            .await?;
            return Ok(());
        }
    };
    let Some((_, current)) = app.store.get(&poll.build_id).await? else {
        refuse(
            app,
            POLLS_QUEUE,
            text,
            meta,
            &format!("buildId: no build {}", poll.build_id),
            out,
        )
        .await?;
        return Ok(());
    };
    // The build moved on since this poll was scheduled (the sweeper or a
    // cancel stepped it and scheduled its own poll): this chain ends here.
    if poll.row_version.is_some_and(|v| v != current) {
        out.log(format!(
            "build_polls: stale poll for {} dropped",
            poll.build_id
        ));
        return Ok(());
    }
    if let Some(b) = driver::advance(app, &poll.build_id, None).await? {
        out.log(format!("build_polls: {} is {}", b.id, b.state.name()));
    }
    Ok(())
}

/// How long a sweep steps overdue builds before it leaves the rest (and
/// the cleanup queue) to the next sweep.
const SWEEP_SHARE: std::time::Duration = std::time::Duration::from_secs(90);

/// The safety net: steps every build whose poll is overdue (lost message,
/// crashed invocation), starts queued builds that fit, delivers events.
pub async fn build_sweeper(app: &App, out: &mut InvocationResult) -> anyhow::Result<()> {
    let now = app.clock.now();
    let due = app.store.due(now).await?;
    let mut failures = 0;
    // A slow ARM must not make one sweep run into the next: past its share
    // of the invocation budget the sweep stops, and the next one goes on
    // (every build it skipped is still due).
    let started = std::time::Instant::now();
    let mut stepped = 0usize;
    for id in &due {
        if started.elapsed() > SWEEP_SHARE {
            tracing::warn!(
                left = due.len() - stepped,
                "sweep out of time; the next sweep steps the rest"
            );
            break;
        }
        stepped += 1;
        if let Err(e) = driver::advance(app, id, None).await {
            failures += 1;
            tracing::warn!(build = %id, error = %e, "sweeper could not step build");
        }
    }
    driver::admit_queued(app).await;
    let retired = super::cleanup::sweep(app).await;
    if retired > 0 {
        out.log(format!("build_sweeper: {retired} template cleanup steps"));
    }
    let delivered = app
        .events
        .deliver_due(app.clock.now())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "event delivery failed");
            0
        });
    if !due.is_empty() || delivered > 0 {
        out.log(format!(
            "build_sweeper: stepped {} overdue builds ({failures} failed), delivered {delivered} events",
            stepped
        ));
    }
    if failures > 0 && failures == stepped {
        anyhow::bail!("every overdue build failed to step");
    }
    Ok(())
}
