//! What the evidence step costs a build: the SBOM, the diff and the gate.
//!
//! On a real Debian root (the host's own `/`, or `KILN_BENCH_ROOT`), times
//! each piece as a build does it: the inventory of the root (taken twice
//! per build, of the base and of the image), the SPDX document written and
//! read back, the diff of two such SBOMs (one package added, five
//! upgraded), the gate (match and verdict) against the fixture feed in
//! `tests/fixtures/osv/` and against a synthetic feed of 20 000 advisories
//! shaped like Debian's, 300 of them naming source packages of the root;
//! then all of it together, in the order `app::evidence::assess` and the
//! local provider run it. One thread throughout.
//!
//! `cargo bench --bench evidence` runs the criterion groups, then prints a
//! summary (medians of its own 21 iterations); `cargo bench --bench
//! evidence -- --summary` prints the summary only (about 10 s once built).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::Criterion;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use kiln::domain::evidence::diff::diff;
use kiln::domain::evidence::gate::{self, GatePolicy};
use kiln::domain::evidence::osv::{self, Feed};
use kiln::domain::evidence::sbom::Sbom;
use kiln::domain::evidence::spdx;
use kiln::providers::local::inventory_of;

const SYNTHETIC_ADVISORIES: usize = 20_000;
const SYNTHETIC_IN_IMAGE: usize = 300;
const ITERATIONS: usize = 21;
/// As many names per kind as the build's summary keeps (assess.rs).
const SUMMARY_NAMES: usize = 20;

struct Data {
    root: PathBuf,
    base: Sbom,
    image: Sbom,
    image_spdx: Vec<u8>,
    fixture: Feed,
    synthetic_bytes: Vec<u8>,
    synthetic: Feed,
    policy: GatePolicy,
    now: DateTime<Utc>,
}

/// The image: the base with one package added and five upgraded (source
/// versions too, so the gate sees the upgrade).
fn image_of(base: &Sbom) -> Sbom {
    let mut image = base.clone();
    image.subject = "bench/versions/1.0.1".into();
    let mut added = base.packages[0].clone();
    added.name = "kiln-bench-added".into();
    added.source = "kiln-bench-added".into();
    added.version = "1.0-1".into();
    added.source_version = "1.0-1".into();
    image.packages.push(added);
    for p in image.packages.iter_mut().step_by(97).take(5) {
        p.version.push_str("+bench1");
        p.source_version.push_str("+bench1");
    }
    image.normalize();
    image
}

/// `n` advisories in OSV's JSON as Debian's tracker exports them (one
/// entry for bookworm, one for trixie), `in_image` of them naming source
/// packages of `sbom`: half fixed above the installed version (findings),
/// half fixed below it (matched by name, not affected).
fn synthetic_feed(sbom: &Sbom, n: usize, in_image: usize) -> Vec<u8> {
    let mut sources: Vec<(&str, &str)> = sbom
        .packages
        .iter()
        .map(|p| (p.source.as_str(), p.source_version.as_str()))
        .collect();
    sources.sort();
    sources.dedup_by(|a, b| a.0 == b.0);
    let urgencies = ["low", "medium", "high", "not yet assigned"];
    let advisories: Vec<Value> = (0..n)
        .map(|i| {
            let (name, fixed) = if i < in_image {
                let (name, version) = sources[i % sources.len()];
                let fixed = if i % 2 == 0 {
                    format!("{version}+deb12u99")
                } else {
                    "0~bench".to_string()
                };
                (name.to_string(), fixed)
            } else {
                (format!("bench-absent-{i}"), format!("1.{i}-1"))
            };
            let entry = |eco: &str, distro: &str, fixed: &str| {
                json!({
                    "package": {"name": name, "ecosystem": eco,
                                "purl": format!("pkg:deb/debian/{name}?arch=source&distro={distro}")},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
                    "ecosystem_specific": {"urgency": urgencies[i % urgencies.len()]}
                })
            };
            json!({
                "schema_version": "1.7.0",
                "id": format!("DEBIAN-CVE-2099-{:05}", 10_000 + i),
                "summary": format!("{name}: synthetic advisory {i} (bench)"),
                "details": "A synthetic record for the benchmark; describes nothing real.",
                "published": "2026-09-15T08:00:00Z",
                "modified": "2026-09-20T08:00:00Z",
                "upstream": [format!("CVE-2099-{:05}", 10_000 + i)],
                "affected": [entry("Debian:12", "bookworm", &fixed), entry("Debian:13", "trixie", "99:0-1")],
                "references": [{"type": "ADVISORY", "url": format!("https://example.invalid/CVE-2099-{i}")}]
            })
        })
        .collect();
    serde_json::to_vec(&Value::Array(advisories)).unwrap()
}

fn setup() -> Data {
    let root = std::env::var_os("KILN_BENCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let base = inventory_of(&root, "base").unwrap();
    assert!(
        base.packages.len() > 100,
        "{} has {} packages in its dpkg database; the bench wants a real Debian root (KILN_BENCH_ROOT)",
        root.display(),
        base.packages.len()
    );
    let image = image_of(&base);
    let image_spdx = spdx::to_spdx_bytes(&image);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv");
    let fixture = osv::load(&fixtures).unwrap();
    let synthetic_bytes = synthetic_feed(&image, SYNTHETIC_ADVISORIES, SYNTHETIC_IN_IMAGE);
    let synthetic = Feed::parse_file("synthetic.json", &synthetic_bytes).unwrap();
    assert_eq!(synthetic.len(), SYNTHETIC_ADVISORIES);
    let policy: GatePolicy = serde_json::from_value(json!({"mode": "enforce"})).unwrap();
    Data {
        root,
        base,
        image,
        image_spdx,
        fixture,
        synthetic_bytes,
        synthetic,
        policy,
        now: "2026-12-01T00:00:00Z".parse().unwrap(),
    }
}

/// The gate as `run_gate` does it: match, verdict, each finding's decision,
/// the findings record serialized for the store.
fn gate_step(d: &Data, sbom: &Sbom, feed: &Feed) -> (usize, Vec<u8>) {
    let findings = gate::try_match(sbom, feed).unwrap();
    let verdict = gate::evaluate(&d.policy, &findings, d.now);
    let decisions: Vec<Value> = findings
        .iter()
        .map(|f| json!({"finding": f, "decision": d.policy.decide(f, d.now)}))
        .collect();
    let record = json!({
        "checkedAt": d.now,
        "feedDigest": feed.digest(),
        "feedAdvisories": feed.len(),
        "policy": &d.policy,
        "verdict": verdict,
        "findings": decisions,
    });
    (findings.len(), serde_json::to_vec_pretty(&record).unwrap())
}

/// Everything a build adds for its evidence, in order: the base's
/// inventory (after the source is copied), the image's (at capture), then
/// what `assess` does with them: both SPDX documents and the image's
/// digest, the previous version's SBOM read back, the diffs since it and
/// since the base, and the gate.
fn evidence_step(d: &Data, feed: &Feed) -> usize {
    let base = inventory_of(&d.root, "base").unwrap();
    let mut image = inventory_of(&d.root, "image").unwrap();
    image.subject = "bench/versions/1.0.1".into();
    image.normalize();
    let bytes = spdx::to_spdx_bytes(&image);
    let sha = hex::encode(Sha256::digest(&bytes));
    let base_bytes = spdx::to_spdx_bytes(&base);
    let doc: Value = serde_json::from_slice(&d.image_spdx).unwrap();
    let previous = spdx::from_spdx_json(&doc).unwrap();
    let since_previous = diff(&previous, &image).summary(SUMMARY_NAMES);
    let since_base = diff(&base, &image).summary(SUMMARY_NAMES);
    let (findings, record) = gate_step(d, &image, feed);
    black_box((sha, base_bytes, since_previous, since_base, record));
    findings
}

fn benches(c: &mut Criterion, d: &Data) {
    let mut g = c.benchmark_group("evidence");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("inventory of the root (read_sbom)", |b| {
        b.iter(|| inventory_of(black_box(&d.root), "base").unwrap())
    });
    g.bench_function("SPDX render (to_spdx_bytes)", |b| {
        b.iter(|| spdx::to_spdx_bytes(black_box(&d.image)))
    });
    g.bench_function("SPDX parse (from_slice + from_spdx_json)", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&d.image_spdx)).unwrap();
            spdx::from_spdx_json(&v).unwrap()
        })
    });
    g.bench_function("diff + summary", |b| {
        b.iter(|| diff(black_box(&d.base), black_box(&d.image)).summary(SUMMARY_NAMES))
    });
    g.bench_function("gate, fixture feed", |b| {
        b.iter(|| gate_step(d, black_box(&d.image), &d.fixture))
    });
    g.bench_function("gate, 20 000 advisories", |b| {
        b.iter(|| gate_step(d, black_box(&d.image), &d.synthetic))
    });
    g.bench_function("feed load, 20 000 advisories (parse_file)", |b| {
        b.iter(|| Feed::parse_file("synthetic.json", black_box(&d.synthetic_bytes)).unwrap())
    });
    g.bench_function("evidence step, 20 000 advisories", |b| {
        b.iter(|| evidence_step(d, &d.synthetic))
    });
    g.finish();
}

fn median_ms(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut v: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[0]))
}

fn summary(d: &Data) {
    let spdx_bytes = d.image_spdx.len();
    let fixture_findings = gate_step(d, &d.image, &d.fixture).0;
    let synthetic_findings = gate_step(d, &d.image, &d.synthetic).0;
    let changes = diff(&d.base, &d.image);
    println!(
        "evidence: {} ({} packages), SPDX {} KiB, diff {} added / {} upgraded, one thread, {ITERATIONS} iterations",
        d.root.display(),
        d.base.packages.len(),
        spdx_bytes / 1024,
        changes.added.len(),
        changes.upgraded.len()
    );
    println!("                                                         median       min");
    let row = |name: &str, (med, min): (f64, f64)| {
        println!("  {name:<52} {med:>8.2} ms {min:>8.2} ms");
    };
    row(
        "inventory of the root (read_sbom)",
        median_ms(|| {
            black_box(inventory_of(&d.root, "base").unwrap());
        }),
    );
    row(
        "SPDX render (to_spdx_bytes)",
        median_ms(|| {
            black_box(spdx::to_spdx_bytes(&d.image));
        }),
    );
    row(
        "SPDX parse (from_slice + from_spdx_json)",
        median_ms(|| {
            let v: Value = serde_json::from_slice(&d.image_spdx).unwrap();
            black_box(spdx::from_spdx_json(&v).unwrap());
        }),
    );
    row(
        "diff + summary",
        median_ms(|| {
            black_box(diff(&d.base, &d.image).summary(SUMMARY_NAMES));
        }),
    );
    row(
        &format!(
            "gate, fixture feed ({} advisories, {fixture_findings} findings)",
            d.fixture.len()
        ),
        median_ms(|| {
            black_box(gate_step(d, &d.image, &d.fixture));
        }),
    );
    row(
        &format!("gate, {SYNTHETIC_ADVISORIES} advisories ({synthetic_findings} findings)"),
        median_ms(|| {
            black_box(gate_step(d, &d.image, &d.synthetic));
        }),
    );
    row(
        &format!(
            "feed load, {SYNTHETIC_ADVISORIES} advisories ({} MiB JSON)",
            d.synthetic_bytes.len() >> 20
        ),
        median_ms(|| {
            black_box(Feed::parse_file("synthetic.json", &d.synthetic_bytes).unwrap());
        }),
    );
    row(
        "evidence step, fixture feed",
        median_ms(|| {
            black_box(evidence_step(d, &d.fixture));
        }),
    );
    row(
        &format!("evidence step, {SYNTHETIC_ADVISORIES} advisories"),
        median_ms(|| {
            black_box(evidence_step(d, &d.synthetic));
        }),
    );
}

fn main() {
    let d = setup();
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--summary") {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, &d);
        c.final_summary();
    }
    // `cargo test --benches` runs each benchmark once (no `--bench`): no summary then.
    if args.iter().any(|a| a == "--bench" || a == "--summary") {
        summary(&d);
    }
}
