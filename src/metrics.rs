//! The factory's metrics, in one registry per app (`App::metrics`), encoded
//! as OpenMetrics text for `GET /api/metrics`.
//!
//! Counters and histograms move where the event happens: a build's
//! transition into a final state (the driver), a dead letter (the queue
//! consumers), a retention step (the retention function), an Azure call
//! (the ARM client). The gauges (active and queued builds) are read from the
//! store at scrape time, so every instance of a scaled-out app reports the
//! same factory-wide figures while its counters cover only what that
//! instance did.
//!
//! No global registry: two apps in one process (tests) keep their own counts.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pipeline: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabels {
    pipeline: String,
    action: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    /// The HTTP status, or `error` when no response came back.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Builds last minutes to hours: 30 s to about 4 h.
fn build_buckets() -> Histogram {
    Histogram::new(exponential_buckets(30.0, 2.0, 10))
}

/// A state lasts from a second (submitting) to hours (running).
fn state_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// An Azure call: 10 ms to about 20 s.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// The registry and its metric families. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    builds: Family<OutcomeLabels, Counter>,
    build_duration: Histograms<OutcomeLabels>,
    state_duration: Histograms<StateLabels>,
    dead_letters: Family<QueueLabels, Counter>,
    retention: Family<RetentionLabels, Counter>,
    calls: Histograms<CallLabels>,
    throttled: Family<ServiceLabels, Counter>,
    active: Gauge,
    queued: Gauge,
}

/// The gauges read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub active_builds: usize,
    pub queued_builds: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let builds = Family::<OutcomeLabels, Counter>::default();
        let build_duration = Histograms::<OutcomeLabels>::new_with_constructor(build_buckets);
        let state_duration = Histograms::<StateLabels>::new_with_constructor(state_buckets);
        let dead_letters = Family::<QueueLabels, Counter>::default();
        let retention = Family::<RetentionLabels, Counter>::default();
        let calls = Histograms::<CallLabels>::new_with_constructor(call_buckets);
        let throttled = Family::<ServiceLabels, Counter>::default();
        let active = Gauge::default();
        let queued = Gauge::default();

        let mut r = Registry::with_prefix("kiln");
        r.register(
            "builds",
            "Builds that ended, by pipeline and outcome (succeeded, failed, canceled)",
            builds.clone(),
        );
        r.register_with_unit(
            "build_duration",
            "Time from a build's request to its end, by pipeline and outcome",
            Unit::Seconds,
            build_duration.clone(),
        );
        r.register_with_unit(
            "build_state_duration",
            "Time ended builds spent in each state, by pipeline and state",
            Unit::Seconds,
            state_duration.clone(),
        );
        r.register(
            "dead_letters",
            "Messages dead-lettered, by queue",
            dead_letters.clone(),
        );
        r.register(
            "retention_actions",
            "Retention steps, by pipeline, action (deprecate, delete) and status (done, failed, dry-run)",
            retention.clone(),
        );
        r.register_with_unit(
            "provider_request_duration",
            "Azure requests (each attempt), by service, method and HTTP status",
            Unit::Seconds,
            calls.clone(),
        );
        r.register(
            "provider_throttled",
            "Azure answers 429 (throttled), by service",
            throttled.clone(),
        );
        r.register(
            "builds_active",
            "Builds holding a slot now (factory-wide, read from the store)",
            active.clone(),
        );
        r.register(
            "builds_queued",
            "Builds waiting for a slot now (factory-wide, read from the store)",
            queued.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: r,
                builds,
                build_duration,
                state_duration,
                dead_letters,
                retention,
                calls,
                throttled,
                active,
                queued,
            }),
        }
    }

    /// A build ended: `outcome` is its final state's name; `seconds` runs
    /// from its request to its end.
    pub fn build_ended(&self, pipeline: &str, outcome: &str, seconds: f64) {
        let labels = OutcomeLabels {
            pipeline: pipeline.to_string(),
            outcome: outcome.to_string(),
        };
        self.inner.builds.get_or_create(&labels).inc();
        self.inner
            .build_duration
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
    }

    /// An ended build spent `seconds` in `state` (summed over its visits).
    pub fn time_in_state(&self, pipeline: &str, state: &str, seconds: f64) {
        self.inner
            .state_duration
            .get_or_create(&StateLabels {
                pipeline: pipeline.to_string(),
                state: state.to_string(),
            })
            .observe(seconds.max(0.0));
    }

    pub fn dead_lettered(&self, queue: &str) {
        self.inner
            .dead_letters
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    pub fn retention_step(&self, pipeline: &str, action: &str, status: &str) {
        self.inner
            .retention
            .get_or_create(&RetentionLabels {
                pipeline: pipeline.to_string(),
                action: action.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// One attempt of an Azure call: `status` is `None` when no response came back.
    pub fn provider_call(
        &self,
        service: &str,
        method: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let status_label = match status {
            Some(s) => s.to_string(),
            None => "error".to_string(),
        };
        self.inner
            .calls
            .get_or_create(&CallLabels {
                service: service.to_string(),
                method: method.to_string(),
                status: status_label,
            })
            .observe(elapsed.as_secs_f64());
        if status == Some(429) {
            self.inner
                .throttled
                .get_or_create(&ServiceLabels {
                    service: service.to_string(),
                })
                .inc();
        }
    }

    /// The registry as OpenMetrics text, with the gauges set to `gauges`.
    pub fn encode(&self, gauges: Gauges) -> String {
        self.inner
            .active
            .set(i64::try_from(gauges.active_builds).unwrap_or(i64::MAX));
        self.inner
            .queued
            .set(i64::try_from(gauges.queued_builds).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` whose labels include all of `labels`.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
    }

    #[test]
    fn counters_histograms_and_gauges_appear_with_their_labels() {
        let m = Metrics::new();
        m.build_ended("tiny", "succeeded", 90.0);
        m.build_ended("tiny", "succeeded", 30.0);
        m.build_ended("tiny", "failed", 10.0);
        m.time_in_state("tiny", "running", 3.0);
        m.dead_lettered("build-requests");
        m.provider_call("arm", "GET", Some(429), Duration::from_millis(20));
        m.provider_call("arm", "GET", Some(200), Duration::from_millis(20));
        let text = m.encode(Gauges {
            active_builds: 2,
            queued_builds: 5,
        });
        let ok = [("pipeline", "tiny"), ("outcome", "succeeded")];
        assert_eq!(sample(&text, "kiln_builds_total", &ok), Some(2.0), "{text}");
        assert_eq!(
            sample(&text, "kiln_build_duration_seconds_sum", &ok),
            Some(120.0)
        );
        assert_eq!(
            sample(
                &text,
                "kiln_build_duration_seconds_bucket",
                &[("outcome", "succeeded"), ("le", "60.0")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "kiln_provider_throttled_total",
                &[("service", "arm")]
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "kiln_builds_active", &[]), Some(2.0));
        assert_eq!(sample(&text, "kiln_builds_queued", &[]), Some(5.0));
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn two_registries_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.dead_lettered("build-polls");
        let g = Gauges {
            active_builds: 0,
            queued_builds: 0,
        };
        let q = [("queue", "build-polls")];
        assert_eq!(
            sample(&a.encode(g), "kiln_dead_letters_total", &q),
            Some(1.0)
        );
        assert_eq!(sample(&b.encode(g), "kiln_dead_letters_total", &q), None);
    }
}
