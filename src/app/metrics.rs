//! `GET /api/metrics` (Prometheus scrapes it) and what a build's end
//! records in the app's registry ([`crate::metrics`]).
//!
//! Each instance exports its own counters: in a scaled-out Function App,
//! sum them across instances; the gauges are factory-wide (read from the
//! store), so take one instance's value, not the sum.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::App;
use crate::domain::build::Build;
use crate::metrics::{Gauges, CONTENT_TYPE};
use crate::store::port::HistoryEntry;

/// The registry as OpenMetrics text. A scrape costs two store reads (the
/// active and the queued builds), nothing per build or pipeline.
pub async fn scrape(State(app): State<App>) -> Response {
    let gauges = async {
        Ok::<_, anyhow::Error>(Gauges {
            active_builds: app.store.active_builds().await?,
            queued_builds: app.store.queued().await?.len(),
        })
    };
    match gauges.await {
        Ok(g) => ([("content-type", CONTENT_TYPE)], app.metrics.encode(g)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: the store did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not answer; see the kiln log",
            )
                .into_response()
        }
    }
}

/// Records a build that just ended (its final write is durable): the
/// outcome, the time from request to end, and the time it spent in each
/// state, read from its history once.
pub async fn build_ended(app: &App, b: &Build, now: DateTime<Utc>) {
    let outcome = b.state.name();
    let total = (now - b.created_at).num_milliseconds() as f64 / 1000.0;
    app.metrics.build_ended(&b.pipeline, outcome, total);
    match app.store.history(&b.id).await {
        Ok(history) => {
            for (state, seconds) in time_per_state(&history) {
                app.metrics.time_in_state(&b.pipeline, state, seconds);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "history not read; the build's time per state is not recorded")
        }
    }
}

/// Seconds spent in each non-final state of an ended build's history,
/// summed over repeated visits (a retry passes `submitting` again), in the
/// order first entered.
fn time_per_state(history: &[HistoryEntry]) -> Vec<(&str, f64)> {
    let mut out: Vec<(&str, f64)> = Vec::new();
    for pair in history.windows(2) {
        let seconds = (pair[1].at - pair[0].at).num_milliseconds() as f64 / 1000.0;
        let state = pair[0].to.as_str();
        match out.iter_mut().find(|(s, _)| *s == state) {
            Some((_, total)) => *total += seconds,
            None => out.push((state, seconds)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_s: i64, to: &str) -> HistoryEntry {
        HistoryEntry {
            at: DateTime::from_timestamp(1_700_000_000 + at_s, 0).unwrap(),
            from: None,
            to: to.into(),
            cause: String::new(),
        }
    }

    #[test]
    fn repeated_states_are_summed_and_the_final_state_takes_no_time() {
        let h = [
            entry(0, "queued"),
            entry(2, "submitting"),
            entry(5, "running"),
            entry(65, "submitting"),
            entry(66, "running"),
            entry(166, "failed"),
        ];
        assert_eq!(
            time_per_state(&h),
            vec![("queued", 2.0), ("submitting", 4.0), ("running", 160.0)]
        );
    }
}
