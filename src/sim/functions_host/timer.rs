//! Timer triggers: NCRONTAB occurrences in sim time, one firing at a time
//! for the whole app (however many instances it runs on), each on one
//! instance; occurrences missed while a firing ran are delivered once, past due.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{payload, InvocationTrigger, Shared};
use crate::host::function_json::FunctionSpec;
use crate::host::timers;

/// Sleeps until the sim clock reads `at`, or returns `false` when stopped.
async fn sleep_until(
    shared: &Shared,
    at: DateTime<Utc>,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let now = shared.now();
        if now >= at {
            return true;
        }
        let wait = shared.wall(at - now) + Duration::from_millis(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|s| *s) => return false,
        }
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    spec: FunctionSpec,
    cron: croner::Cron,
    run_on_startup: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let function = spec.name.as_str();
    let start = shared.now();
    let mut last: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    // The occurrence to deliver next and whether it is late.
    let mut due = if run_on_startup {
        start
    } else {
        match timers::next_after(&cron, start) {
            Some(t) => t,
            None => return,
        }
    };
    let mut past_due = false;
    loop {
        if !sleep_until(&shared, due, &mut stopped).await {
            return;
        }
        let Some(next) = timers::next_after(&cron, due) else {
            return;
        };
        let now = shared.now();
        let body = payload::timer_invocation(
            function,
            &spec.binding_name,
            &payload::TimerFiring {
                last,
                next,
                past_due,
            },
            now,
        );
        // One instance runs the firing. When it fails (a refused
        // connection, a 5xx, the timeout), the real host does not retry it
        // (a timer is retried only under a `retry` policy in function.json,
        // and kiln sets none): the schedule monitor records the occurrence
        // and the next one fires as usual. (An instance that dies holding
        // the timer's blob lease loses it when the lease lapses; another
        // instance takes it, and with `useMonitor` fires once, past due, if
        // it finds an occurrence missed.) So here: the firing is recorded
        // with its failure, and the next occurrence fires on its tick.
        let invoked = shared.invoke(function, &body).await;
        shared.record_invocation(
            function,
            InvocationTrigger::Timer { past_due },
            &invoked,
            now,
        );
        let ended = shared.now();
        last = Some((due, ended));
        // Occurrences that passed while this one ran collapse into one late firing.
        if timers::missed_since(&cron, due, ended) {
            let mut latest = next;
            while let Some(n) = timers::next_after(&cron, latest).filter(|n| *n <= ended) {
                latest = n;
            }
            due = latest;
            past_due = true;
        } else {
            due = next;
            past_due = false;
        }
    }
}
