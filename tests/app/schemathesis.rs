//! schemathesis (PyPI, installed by scripts/setup-debian.sh) against a
//! running local host: every documented route, with generated valid and
//! invalid inputs, must answer without a server error and as the OpenAPI
//! document says (status, content type, body schema).
//!
//! Bounded: a fixed seed, at most 25 cases per operation, no stateful
//! phase; one pipeline whose builds finish in seconds, so the POSTs that
//! do work (a build, a retention run) end by themselves.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{bounded, tiny, Factory, Options};

/// The schemathesis CLI: `KILN_SCHEMATHESIS`, else the one the setup
/// script installs.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("KILN_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/kiln-tools/venv/bin/schemathesis"));
    assert!(
        path.exists(),
        "{} not found: run scripts/setup-debian.sh (it installs schemathesis in /opt/kiln-tools/venv)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_failing_case_against_the_local_host() {
    bounded(async {
        let bin = schemathesis();
        let f = Factory::start(Options {
            pipelines: vec![tiny("tiny", json!({}))],
            ..Options::default()
        })
        .await;
        // Something to list and show besides what schemathesis makes.
        let id = f.build("tiny", None).await;
        f.wait_terminal(&id, Duration::from_secs(60)).await;

        let work = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let run = tokio::process::Command::new(&bin)
            .arg("run")
            .arg(format!("{}/api/openapi.json", f.api))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--seed",
                "20261201",
                // One worker: Debian 12's Python 3.11 can fail `ast.parse` (which
                // hypothesis calls) when two threads parse at once (CPython
                // gh-106905), a runtime error in schemathesis, not a finding.
                "--workers",
                "1",
                "--request-timeout",
                "40",
            ])
            .env("NO_COLOR", "1")
            // Its example database and reports stay out of the checkout.
            .current_dir(work.path())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .expect("schemathesis ran for more than 5 minutes")
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Vec<&str> = text.lines().rev().take(30).collect();
        let summary: Vec<&str> = summary.into_iter().rev().collect();
        eprintln!(
            "schemathesis took {:?}:\n{}",
            started.elapsed(),
            summary.join("\n")
        );
        assert!(out.status.success(), "schemathesis failed:\n{text}");
        assert!(
            text.contains("passed") && !text.contains("No operations"),
            "schemathesis tested nothing:\n{text}"
        );
        f.stop().await;
    })
    .await;
}
