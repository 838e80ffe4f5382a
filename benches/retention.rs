//! Retention planning at the scale of a busy subscription: 100,000 versions
//! over 1,000 image definitions (ten times the per-region version quota, so
//! a whole tenant's worth), against a bare numeric sort of the same versions.
//!
//! The sort is the floor: planning has to order every definition's versions
//! anyway, so the ratio says how much the rules cost on top of that.
//!
//! `cargo bench --bench retention` runs the criterion groups, then prints
//!
//! `retention plan: X ms for 100000 versions / 1000 definitions; bare sort: Y ms; ratio: Z`
//!
//! from a few plainly timed iterations (medians).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use criterion::{BatchSize, Criterion};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use kiln::domain::gallery::{GalleryVersion, InUseSet};
use kiln::domain::retention::{plan_many, DefinitionStatus, Deprecate, PlanInput, RetentionPolicy};
use kiln::domain::version::ImageVersion;

const DEFINITIONS: usize = 1_000;
const VERSIONS_PER_DEFINITION: usize = 100;
const SUMMARY_ITERATIONS: usize = 31;

struct Definition {
    id: String,
    versions: Vec<GalleryVersion>,
    policy: usize,
    status: DefinitionStatus,
}

struct Data {
    now: DateTime<Utc>,
    definitions: Vec<Definition>,
    policies: Vec<RetentionPolicy>,
    in_use: InUseSet,
    /// The same versions, flat, in the order they were generated (unsorted).
    flat: Vec<ImageVersion>,
}

impl Data {
    fn inputs(&self) -> impl Iterator<Item = PlanInput<'_>> {
        self.definitions.iter().map(|d| PlanInput {
            definition_id: &d.id,
            versions: &d.versions,
            policy: &self.policies[d.policy],
            status: d.status,
        })
    }
}

/// Deterministic pseudo-random data: the same seed gives the same figures.
fn data() -> Data {
    let mut rng = StdRng::seed_from_u64(0x6b69_6c6e);
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    let policies = vec![
        RetentionPolicy::default(),
        RetentionPolicy {
            keep_latest: 5,
            min_age_days: 14,
            max_age_days: Some(180),
            ..RetentionPolicy::default()
        },
        RetentionPolicy {
            keep_latest: 1,
            min_age_days: 0,
            max_age_days: Some(90),
            deprecate: Deprecate { grace_days: 3 },
            max_deletes_per_run: 50,
            ..RetentionPolicy::default()
        },
        RetentionPolicy {
            dry_run: true,
            protect_in_use: false,
            ..RetentionPolicy::default()
        },
    ];

    let mut in_use = InUseSet::default();
    let mut definitions = Vec::with_capacity(DEFINITIONS);
    let mut flat = Vec::with_capacity(DEFINITIONS * VERSIONS_PER_DEFINITION);
    for d in 0..DEFINITIONS {
        let id = format!(
            "/subscriptions/00000000-0000-0000-0000-{:012}/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gallery{}/images/image-{d:04}",
            d % 7,
            d % 13
        );
        let mut versions = Vec::with_capacity(VERSIONS_PER_DEFINITION);
        for i in 0..VERSIONS_PER_DEFINITION {
            let version = if rng.gen_bool(0.01) {
                // Versions with int32-sized parts (date-based schemes).
                ImageVersion::new(
                    rng.gen_range(0..3),
                    2_025_000 + i as u32,
                    2_000_000_000 + i as u32,
                )
            } else if i > 0 && rng.gen_bool(0.01) {
                // The same version listed twice (paging glitch).
                versions.last().map(|v: &GalleryVersion| v.version).unwrap()
            } else {
                ImageVersion::new(1 + (i / 50) as u32, ((i / 10) % 5) as u32, (i % 10) as u32)
            };
            let published = rng
                .gen_bool(0.95)
                .then(|| now - TimeDelta::hours(rng.gen_range(0..400 * 24)));
            let deprecated = rng.gen_bool(0.3);
            let end_of_life = (deprecated || rng.gen_bool(0.2))
                .then(|| now + TimeDelta::days(rng.gen_range(-30..60)));
            let mut tags = BTreeMap::new();
            tags.insert("kiln.pipeline".to_string(), format!("pipeline-{d}"));
            if rng.gen_bool(0.02) {
                tags.insert("kiln.pin".to_string(), "release".to_string());
            }
            let v = GalleryVersion {
                definition_id: id.clone(),
                version,
                published,
                exclude_from_latest: deprecated || rng.gen_bool(0.05),
                end_of_life,
                block_deletion_before_end_of_life: rng.gen_bool(0.05),
                tags,
                replication: Vec::new(),
                provisioning_state: "Succeeded".to_string(),
            };
            if rng.gen_bool(0.03) {
                in_use.add_reference(&v.id());
            }
            flat.push(v.version);
            versions.push(v);
        }
        // Galleries list in no promised order.
        versions.shuffle(&mut rng);
        if rng.gen_bool(0.1) {
            in_use.add_reference(&id);
        }
        definitions.push(Definition {
            id,
            versions,
            policy: d % policies.len(),
            status: if rng.gen_bool(0.02) {
                DefinitionStatus::Publishing
            } else {
                DefinitionStatus::Idle
            },
        });
    }
    flat.shuffle(&mut rng);
    Data {
        now,
        definitions,
        policies,
        in_use,
        flat,
    }
}

fn plan_everything(data: &Data) -> usize {
    let plans = plan_many(data.inputs(), &data.in_use, data.now);
    plans.iter().map(|p| p.items.len()).sum()
}

fn benches(c: &mut Criterion, data: &Data) {
    let mut group = c.benchmark_group("retention");
    group.sample_size(20);
    // 20 plans of ~20-30 ms do not fit criterion's default 5 s.
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("plan 100k versions / 1k definitions", |b| {
        b.iter(|| black_box(plan_everything(black_box(data))))
    });
    group.bench_function("bare numeric sort of 100k versions", |b| {
        b.iter_batched(
            || data.flat.clone(),
            |mut v| {
                v.sort_unstable();
                v
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn summary(data: &Data) {
    let plan = median(
        (0..SUMMARY_ITERATIONS)
            .map(|_| {
                let start = Instant::now();
                black_box(plan_everything(black_box(data)));
                start.elapsed()
            })
            .collect(),
    );
    let sort = median(
        (0..SUMMARY_ITERATIONS)
            .map(|_| {
                let mut v = data.flat.clone();
                let start = Instant::now();
                v.sort_unstable();
                let took = start.elapsed();
                black_box(v);
                took
            })
            .collect(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "retention plan: {:.1} ms for {} versions / {} definitions; bare sort: {:.1} ms; ratio: {:.2}",
        ms(plan),
        data.flat.len(),
        data.definitions.len(),
        ms(sort),
        plan.as_secs_f64() / sort.as_secs_f64()
    );
}

fn main() {
    let data = data();
    // Every version is planned exactly once (duplicates merged per definition).
    let items = plan_everything(&data);
    assert!(items <= data.flat.len() && items > data.flat.len() * 9 / 10);

    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &data);
    c.final_summary();
    // Only under `cargo bench`: `cargo test --benches` runs each bench once as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        summary(&data);
    }
}
