//! The evidence step of a build whose run succeeded: run once per gallery
//! version it published, before the build is recorded `succeeded`, so that
//! the completion event carries its summary.
//!
//! ```text
//! provider's run facts ─► SBOM (stored, digest tagged) ─► diff: previous version, base
//!                       └► gate: findings ─► verdict ─► enforce + pass: promote
//!                       └► provenance: statement ─► signed ─► stored
//! ```
//!
//! Every write is idempotent (same bytes for the same run, put replaces),
//! so a poll that repeats the step after a crash changes nothing; a step
//! that fails is named in the summary and the rest goes on.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::super::App;
use crate::domain::build::{Build, BuildState};
use crate::domain::evidence::diff::diff;
use crate::domain::evidence::facts::RunFacts;
use crate::domain::evidence::gate::{self, GateMode, GatePolicy, GateVerdict};
use crate::domain::evidence::provenance::{
    image_provenance, CustomizerRef, ProvenanceInput, SourceRef, SubjectFile,
};
use crate::domain::evidence::sbom::Sbom;
use crate::domain::evidence::spdx;
use crate::domain::template::GalleryImageRef;
use crate::domain::version::ImageVersion;
use crate::ports::{EvidenceFile, VersionUpdate};

/// The lineage tag with the SBOM's sha256.
pub const SBOM_TAG: &str = "kiln.sbom.sha256";
/// Names per kind of change in an event's summary.
const SUMMARY_NAMES: usize = 20;

/// The summaries of the versions `b` published (one per SharedImage
/// output), `None` when it published none or the provider reports nothing.
pub async fn assess(app: &App, b: &Build) -> Option<Value> {
    let BuildState::Succeeded { artifacts, .. } = &b.state else {
        return None;
    };
    let versions: Vec<(String, ImageVersion)> = artifacts
        .iter()
        .filter_map(|a| a.artifact_id.as_deref())
        .filter_map(GalleryImageRef::parse)
        .filter_map(|r| {
            let v: ImageVersion = r.version.as_deref()?.parse().ok()?;
            Some((r.definition_id(), v))
        })
        .collect();
    if versions.is_empty() {
        return None;
    }
    let facts = match app.builder.run_facts(&b.template_name()).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Some(
                json!({"status": "unavailable", "reason": "the provider reports no facts about the image"}),
            )
        }
        Err(e) => {
            tracing::warn!(build = %b.id, error = %e, "run facts unavailable; the version has no evidence");
            return Some(
                json!({"status": "unavailable", "reason": format!("the provider's facts: {e}")}),
            );
        }
    };
    let mut out = Vec::new();
    for (def, version) in versions {
        out.push(one_version(app, b, &facts, &def, version).await);
    }
    Some(if out.len() == 1 {
        out.remove(0)
    } else {
        Value::Array(out)
    })
}

async fn one_version(
    app: &App,
    b: &Build,
    facts: &RunFacts,
    def: &str,
    version: ImageVersion,
) -> Value {
    let ev = &app.evidence;
    let now = app.clock.now();
    let version_id = format!("{def}/versions/{version}");
    let mut errors: Vec<String> = Vec::new();

    let mut sbom = facts.sbom.clone();
    sbom.subject = version_id.clone();
    sbom.normalize();
    let sbom_bytes = spdx::to_spdx_bytes(&sbom);
    let sbom_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sbom_bytes));
    if let Err(e) = ev
        .store
        .put(def, version, EvidenceFile::Sbom, &sbom_bytes)
        .await
    {
        errors.push(format!("storing the SBOM: {e:#}"));
    }
    if let Some(base) = &facts.base_sbom {
        let bytes = spdx::to_spdx_bytes(base);
        if let Err(e) = ev
            .store
            .put(def, version, EvidenceFile::BaseSbom, &bytes)
            .await
        {
            errors.push(format!("storing the base SBOM: {e:#}"));
        }
    }

    // What changed: since the newest earlier version with an SBOM, and since the base.
    let previous = match previous_sbom(app, def, version).await {
        Ok(p) => p,
        Err(e) => {
            errors.push(format!("reading the previous version's SBOM: {e:#}"));
            None
        }
    };
    let since_previous = previous.as_ref().map(|(v, old)| {
        json!({"version": v.to_string(), "changes": diff(old, &sbom).summary(SUMMARY_NAMES)})
    });
    let since_base = facts
        .base_sbom
        .as_ref()
        .map(|base| diff(base, &sbom).summary(SUMMARY_NAMES));

    // The gate.
    let policy = app
        .pipelines
        .get(&b.pipeline)
        .and_then(|p| p.kiln.gate.clone());
    let gate = match &policy {
        Some(policy) => Some(run_gate(app, policy, &sbom, def, version, now, &mut errors).await),
        None => None,
    };
    // Promotion: only under enforce, only when the gate passed; the
    // version's own `kiln.gate` tag (render sets `held` when the gate holds
    // it) decides, not the pipeline as loaded now, which may have changed
    // since the template was rendered.
    let promote = matches!((&policy, &gate), (Some(p), Some(g)) if p.mode == GateMode::Enforce && g.verdict == Verdict::Pass);

    // Provenance, signed.
    let statement = image_provenance(&provenance_input(app, b, facts, &sbom_sha));
    let provenance = match crate::ports::sign_statement(ev.signer.as_ref(), &statement).await {
        Ok(envelope) => match serde_json::to_vec_pretty(&envelope) {
            Ok(bytes) => match ev
                .store
                .put(def, version, EvidenceFile::Provenance, &bytes)
                .await
            {
                Ok(()) => {
                    json!({"signed": true, "keyId": envelope.signatures.first().and_then(|s| s.keyid.clone())})
                }
                Err(e) => {
                    errors.push(format!("storing the provenance: {e:#}"));
                    json!({"signed": false})
                }
            },
            Err(e) => {
                errors.push(format!("encoding the provenance: {e}"));
                json!({"signed": false})
            }
        },
        Err(e) => {
            errors.push(format!("signing the provenance: {e}"));
            json!({"signed": false})
        }
    };

    // The lineage tag, and promotion when the enforced gate passed.
    let promoted = match tag_and_promote(app, def, version, &sbom_sha, promote).await {
        Ok(promoted) => promoted,
        Err(e) => {
            errors.push(format!("tagging the version: {e:#}"));
            false
        }
    };

    let summary = json!({
        "version": version_id,
        "sbom": {"sha256": sbom_sha, "packages": sbom.packages.len(), "files": sbom.files.len()},
        "sincePrevious": since_previous,
        "sinceBase": since_base,
        "gate": gate.as_ref().map(|g| &g.summary),
        "promoted": promoted,
        "provenance": provenance,
        "errors": errors,
    });
    if let Ok(bytes) = serde_json::to_vec_pretty(&summary) {
        if let Err(e) = ev
            .store
            .put(def, version, EvidenceFile::Summary, &bytes)
            .await
        {
            tracing::warn!(build = %b.id, error = %e, "cannot store the evidence summary");
        }
    }
    for e in &errors {
        tracing::warn!(build = %b.id, version = %version_id, "evidence: {e}");
    }
    summary
}

/// The newest version before `version` that has an SBOM, with that SBOM.
async fn previous_sbom(
    app: &App,
    def: &str,
    version: ImageVersion,
) -> anyhow::Result<Option<(ImageVersion, Sbom)>> {
    let mut earlier: Vec<ImageVersion> = app
        .evidence
        .store
        .versions(def)
        .await?
        .into_iter()
        .filter(|v| *v < version)
        .collect();
    earlier.sort();
    while let Some(v) = earlier.pop() {
        if let Some(bytes) = app.evidence.store.get(def, v, EvidenceFile::Sbom).await? {
            let doc: Value = serde_json::from_slice(&bytes)?;
            return Ok(Some((v, spdx::from_spdx_json(&doc)?)));
        }
    }
    Ok(None)
}

/// What the gate said about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    /// The gate could not run (no feed, an unreadable one, an image whose
    /// release no feed describes): neither promotes nor revokes.
    Unavailable,
}

/// What the gate found for one version.
pub(crate) struct GateRun {
    pub verdict: Verdict,
    pub summary: Value,
}

/// Matches `sbom` against the feed, decides with `policy`, and stores the
/// findings with the feed's digest (the re-check compares it).
pub(crate) async fn run_gate(
    app: &App,
    policy: &GatePolicy,
    sbom: &Sbom,
    def: &str,
    version: ImageVersion,
    now: DateTime<Utc>,
    errors: &mut Vec<String>,
) -> GateRun {
    let mode = policy.mode;
    let feed = match app.evidence.feed.current().await {
        Ok(Some(f)) => f,
        Ok(None) => {
            errors.push("gate: no vulnerability feed is configured (KILN_OSV_FEED)".into());
            return GateRun {
                verdict: Verdict::Unavailable,
                summary: json!({"mode": mode, "verdict": "unavailable", "reason": "no vulnerability feed is configured"}),
            };
        }
        Err(e) => {
            errors.push(format!("gate: the feed cannot be read: {e:#}"));
            return GateRun {
                verdict: Verdict::Unavailable,
                summary: json!({"mode": mode, "verdict": "unavailable", "reason": format!("the feed cannot be read: {e:#}")}),
            };
        }
    };
    let findings = match gate::try_match(sbom, &feed) {
        Ok(f) => f,
        Err(e) => {
            errors.push(format!("gate: {e}"));
            return GateRun {
                verdict: Verdict::Unavailable,
                summary: json!({"mode": mode, "verdict": "unavailable", "reason": e.to_string()}),
            };
        }
    };
    let verdict = gate::evaluate(policy, &findings, now);
    let decisions: Vec<Value> = findings
        .iter()
        .map(|f| json!({"finding": f, "decision": policy.decide(f, now)}))
        .collect();
    let record = json!({
        "checkedAt": now,
        "feedDigest": feed.digest(),
        "feedAdvisories": feed.len(),
        "policy": policy,
        "verdict": verdict,
        "findings": decisions,
    });
    match serde_json::to_vec_pretty(&record) {
        Ok(bytes) => {
            if let Err(e) = app
                .evidence
                .store
                .put(def, version, EvidenceFile::Findings, &bytes)
                .await
            {
                errors.push(format!("gate: storing the findings: {e:#}"));
            }
        }
        Err(e) => errors.push(format!("gate: encoding the findings: {e}")),
    }
    let (passed, blocking) = match &verdict {
        GateVerdict::Pass { .. } => (true, vec![]),
        GateVerdict::Fail { blocking } => (
            false,
            blocking
                .iter()
                .map(|f| {
                    format!(
                        "{} ({} {}, {:?})",
                        f.id, f.package, f.installed_version, f.severity
                    )
                })
                .collect(),
        ),
    };
    GateRun {
        verdict: if passed { Verdict::Pass } else { Verdict::Fail },
        summary: json!({
            "mode": mode,
            "verdict": if passed { "pass" } else { "fail" },
            "findings": findings.len(),
            "blocking": blocking,
            "feedDigest": feed.digest(),
        }),
    }
}

/// The tag that says the gate holds a version back (`held`, set by render
/// under `enforce`) or let it go (`passed`): the re-check only ever
/// promotes a version the gate itself held, never one an operator demoted.
pub const GATE_TAG: &str = "kiln.gate";

/// Adds the SBOM's digest to the version's tags and, when `promote` and the
/// gate held this version, takes it into `latest` (tag `kiln.gate=passed`).
/// The gallery replaces tags whole, so the current ones are read first.
/// Returns whether it promoted.
pub(crate) async fn tag_and_promote(
    app: &App,
    def: &str,
    version: ImageVersion,
    sbom_sha: &str,
    promote: bool,
) -> anyhow::Result<bool> {
    let current = app
        .gallery
        .version(def, version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{def}/versions/{version} is not in the gallery"))?;
    let held = current.tags.get(GATE_TAG).map(String::as_str) == Some("held");
    let promote = promote && held && current.exclude_from_latest && current.end_of_life.is_none();
    let tagged = current.tags.get(SBOM_TAG).map(String::as_str) == Some(sbom_sha);
    if tagged && !promote {
        return Ok(false);
    }
    let mut tags = current.tags.clone();
    tags.insert(SBOM_TAG.to_string(), sbom_sha.to_string());
    if promote {
        tags.insert(GATE_TAG.to_string(), "passed".to_string());
    }
    app.gallery
        .update_version(
            def,
            version,
            &VersionUpdate {
                exclude_from_latest: promote.then_some(false),
                end_of_life: None,
                tags: Some(tags),
            },
        )
        .await?;
    Ok(promote)
}

fn provenance_input(app: &App, b: &Build, facts: &RunFacts, sbom_sha: &str) -> ProvenanceInput {
    let mut subjects: Vec<SubjectFile> = facts
        .disks
        .iter()
        .map(|d| SubjectFile {
            name: d.name.clone(),
            sha256: d.sha256.clone(),
        })
        .collect();
    subjects.push(SubjectFile {
        name: EvidenceFile::Sbom.file_name().to_string(),
        sha256: sbom_sha.to_string(),
    });
    ProvenanceInput {
        build_id: b.id.clone(),
        pipeline: b.pipeline.clone(),
        template_name: b.template_name(),
        template_sha256: facts.template_sha256.clone(),
        source: SourceRef {
            uri: facts.source.clone(),
            version: facts.source_exact.clone(),
            sha256: None,
        },
        customizers: facts
            .customizers
            .iter()
            .map(|c| CustomizerRef {
                name: c.name.clone(),
                kind: c.kind.clone(),
                sha256: c.sha256.clone().unwrap_or_default(),
                uri: c.uri.clone(),
                destination: c.destination.clone(),
            })
            .collect(),
        subjects,
        platform: app.evidence.platform,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        started: facts.started,
        finished: facts.finished,
    }
}
