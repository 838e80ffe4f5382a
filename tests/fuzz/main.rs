//! Fuzz targets for what kiln reads from outside: pipeline files,
//! custom-handler invocations, Event Grid / CloudEvents deliveries and
//! build request messages (`targets.rs`).
//!
//! They are [bolero](https://camshaft.github.io/bolero/) targets, so the same
//! functions run two ways:
//!
//! - under `cargo test` (stable Rust, part of `./scripts/test.sh`): every
//!   seed (the repository's pipelines and fixtures, a few handler payloads,
//!   and every input in `tests/fuzz/regressions/<target>/`), then a bounded
//!   number of random mutations of those seeds (`mutate.rs`) and of random
//!   bytes. Random, not coverage-guided.
//! - under a coverage-guided engine, `cargo bolero test --engine afl` or
//!   libFuzzer (see `docs/security.md`), for long runs.
//!
//! An input that ever made a target fail is kept in `regressions/` so that
//! every later run tries it first.

mod mutate;
mod targets;

use std::path::{Path, PathBuf};

/// Random inputs per target and mode; `BOLERO_RANDOM_ITERATIONS` overrides it.
const ITERATIONS: usize = 20_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The seeds of a target: the given files and its regressions.
fn seeds(target: &str, dirs: &[&str], extra: &[&str]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|d| files_in(&repo().join(d)))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .chain(files_in(
            &repo().join("tests/fuzz/regressions").join(target),
        ))
        .map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    out.extend(extra.iter().map(|s| s.as_bytes().to_vec()));
    assert!(!out.is_empty(), "{target}: no seeds");
    out
}

/// Runs `target` on every seed, then on random mutations of the seeds (as
/// documents and as bytes), then on random bytes.
fn fuzz(target: fn(&[u8]), seeds: Vec<Vec<u8>>) {
    for s in &seeds {
        target(s);
    }
    bolero::check!()
        .with_type::<(bool, u16, u16, Vec<mutate::Edit>)>()
        .with_iterations(ITERATIONS)
        .for_each(|(as_bytes, which, splice, edits)| {
            let seed = &seeds[*which as usize % seeds.len()];
            let other = &seeds[*splice as usize % seeds.len()];
            let input = if *as_bytes {
                mutate::bytes(seed, edits, other)
            } else {
                mutate::json(seed, edits, other)
            };
            target(&input);
        });
    bolero::check!()
        .with_iterations(ITERATIONS / 4)
        .for_each(|bytes: &[u8]| target(bytes));
}

#[test]
fn pipeline_files() {
    let seeds = seeds(
        "pipeline",
        &["pipelines", "tests/fixtures"],
        &[
            r#"{"location":"l","identity":{"type":"UserAssigned","userAssignedIdentities":{"/i":{}}},"properties":{"source":{"type":"PlatformImage","publisher":"p","offer":"o","sku":"s","version":"latest"},"customize":[{"type":"File","sourceUri":"https://a.blob.core.windows.net/c/f?sv=1&sig=AAAAAAAAAAAAAAAAAAAA","destination":"/f"}],"distribute":[{"type":"VHD","runOutputName":"v"}]},"kiln":{"allowSecrets":[{"path":"properties.customize[0].sourceUri","kind":"sas-token","reason":"r"}]}}"#,
        ],
    );
    fuzz(targets::pipeline, seeds);
}

/// Payloads as the Functions host sends them (shapes from `app::wire`'s tests
/// and the host simulator).
const INVOCATIONS: &[&str] = &[
    r#"{"Data":{"msg":"{\"pipeline\":\"tiny\",\"reason\":\"r\"}"},"Metadata":{"MessageId":"\"m1\"","DeliveryCount":"2"}}"#,
    r#"{"Data":{"msg":"\"{\\\"pipeline\\\":\\\"tiny\\\"}\""},"Metadata":{"MessageId":"m2","DeliveryCount":1}}"#,
    r#"{"Data":{"msg":"{\"buildId\":\"b1\"}"},"Metadata":{}}"#,
    r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":true}},"Metadata":{}}"#,
    r#"{"Data":{"event":"{\"id\":\"e1\",\"subject\":\"Canonical:ubuntu:22_04\",\"eventType\":\"dev.kiln.base-image.updated\",\"eventTime\":\"2026-11-27T10:00:00Z\",\"dataVersion\":\"1\",\"data\":{\"line\":\"Canonical:ubuntu:22_04\",\"version\":\"1.0.1\"}}"},"Metadata":{}}"#,
    r#"{"Data":{"req":{"Url":"http://localhost/api/builds","Method":"POST","Headers":{"Content-Type":["application/json"]},"Body":"{\"pipeline\":\"tiny\"}"}},"Metadata":{}}"#,
];

#[test]
fn custom_handler_invocations() {
    fuzz(targets::invocation, seeds("invocation", &[], INVOCATIONS));
}

#[test]
fn event_grid_and_cloudevents_deliveries() {
    fuzz(
        targets::events,
        seeds("events", &["tests/fixtures/events"], &[]),
    );
}

#[test]
fn build_request_messages() {
    let seeds = seeds(
        "build_request",
        &[],
        &[
            r#"{"pipeline":"tiny"}"#,
            r#"{"pipeline":"tiny","reason":"hotfix","requestedBy":"ops","idempotencyKey":"k-1"}"#,
            r#"{"pipeline":"tiny","trigger":{"kind":"schedule","cycle":"2026-12"}}"#,
            r#"{"pipeline":"tiny","trigger":{"kind":"baseImage","version":"1.2.3"}}"#,
            r#"{"pipeline":"tiny","trigger":{"kind":"manual"}}"#,
        ],
    );
    fuzz(targets::build_request, seeds);
}

#[test]
fn osv_feed_files() {
    fuzz(
        targets::osv_feed,
        seeds("osv_feed", &["tests/fixtures/osv"], &[]),
    );
}
