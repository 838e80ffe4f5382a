//! `GET /api/metrics`: what the factory did shows in the Prometheus text,
//! read back by parsing the exposition (name, labels, value).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{bounded, tiny, Factory, Options};

const LIMIT: Duration = Duration::from_secs(60);

/// One sample line: `name{k="v",…} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in `{line}`"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in `{line}`: {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in `{line}`"));
                let mut labels = BTreeMap::new();
                // Label values here never hold `",` (pipeline, state and queue names).
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label `{pair}` in `{line}`"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample `name` with exactly the labels `want` (plus `le` for buckets).
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert!(hits.len() <= 1, "{name} {want:?} appears twice: {hits:?}");
    hits.first().map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scrape_counts_builds_by_pipeline_and_outcome_with_their_durations_and_dead_letters() {
    bounded(async {
        let (name, mut broken) = tiny("broken", json!({}));
        broken["properties"]["customize"] =
            json!([{"type": "Shell", "name": "fails", "inline": ["exit 3"]}]);
        // Slow enough that a poll sees it running (a quick build is seen only once it has ended).
        let slow =
            r#"[{"pipeline": "tiny", "kind": "slow", "seconds": 2, "times": 1}]"#.to_string();
        let f = Factory::start(Options {
            pipelines: vec![tiny("tiny", json!({})), (name, broken)],
            env: vec![("KILN_LOCAL_FAULTS", slow)],
            ..Options::default()
        })
        .await;

        let before = parse(&scrape(&f).await);
        assert_eq!(
            value(
                &before,
                "kiln_builds_total",
                &[("pipeline", "tiny"), ("outcome", "succeeded")]
            ),
            None,
            "nothing counted before any build"
        );

        let ok = f.build("tiny", None).await;
        let bad = f.build("broken", None).await;
        let ok_view = f.wait_terminal(&ok, LIMIT).await;
        assert_eq!(ok_view["state"], "succeeded", "{ok_view:#}");
        assert_eq!(f.wait_terminal(&bad, LIMIT).await["state"], "failed");
        let now = chrono::Utc::now();
        f.queue
            .send("build-requests", "bad-json", "{not json", now, now)
            .unwrap();
        let deadline = Instant::now() + LIMIT;
        while f
            .get("/api/deadletters")
            .await
            .as_array()
            .unwrap()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the bad message was not dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let text = scrape(&f).await;
        let s = parse(&text);
        let succeeded = [("pipeline", "tiny"), ("outcome", "succeeded")];
        let failed = [("pipeline", "broken"), ("outcome", "failed")];
        assert_eq!(
            value(&s, "kiln_builds_total", &succeeded),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&s, "kiln_builds_total", &failed), Some(1.0), "{text}");
        assert_eq!(
            value(
                &s,
                "kiln_builds_total",
                &[("pipeline", "tiny"), ("outcome", "failed")]
            ),
            None,
            "no failure counted for the pipeline that succeeded"
        );
        assert_eq!(
            value(&s, "kiln_build_duration_seconds_count", &succeeded),
            Some(1.0)
        );
        let total = value(&s, "kiln_build_duration_seconds_sum", &succeeded).unwrap();
        assert!(total > 0.0, "a build takes time: {total}");
        // Each state the succeeded build passed through is in the histogram
        // with the time the API shows for it; the final state takes none.
        let shown = ok_view["secondsInState"].as_object().unwrap();
        assert!(shown.contains_key("running"), "{ok_view:#}");
        for (state, seconds) in shown {
            let labels = [("pipeline", "tiny"), ("state", state.as_str())];
            let count = value(&s, "kiln_build_state_duration_seconds_count", &labels);
            if state == "succeeded" {
                assert_eq!(count, None, "{text}");
                continue;
            }
            assert_eq!(count, Some(1.0), "{state}: {text}");
            let sum = value(&s, "kiln_build_state_duration_seconds_sum", &labels).unwrap();
            let want = seconds.as_f64().unwrap();
            assert!(
                (sum - want).abs() < 0.002,
                "{state}: {sum} s counted, {want} s shown"
            );
        }
        let running = value(
            &s,
            "kiln_build_state_duration_seconds_sum",
            &[("pipeline", "tiny"), ("state", "running")],
        )
        .unwrap();
        assert!(
            running > 0.0 && running <= total,
            "time running ({running} s) is part of the whole ({total} s)"
        );
        assert_eq!(
            value(
                &s,
                "kiln_dead_letters_total",
                &[("queue", "build-requests")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&s, "kiln_builds_active", &[]), Some(0.0));
        assert_eq!(value(&s, "kiln_builds_queued", &[]), Some(0.0));
        f.stop().await;
    })
    .await;
}

async fn scrape(f: &Factory) -> String {
    let r = f
        .http
        .get(format!("{}/api/metrics", f.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    r.text().await.unwrap()
}
