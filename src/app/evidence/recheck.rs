//! Function `evidence_recheck` (a timer): refreshes the vulnerability feed
//! and re-matches every published version of a gated pipeline whose last
//! findings came from another feed (or another policy).
//!
//! - A version that newly crosses its policy's line is reported with a
//!   `dev.kiln.version.vulnerable` event saying whether consumers still run
//!   it; with `revoke: true` it is also excluded from latest and given an
//!   end of life now (its consumers keep running; new deployments of
//!   `latest` stop getting it).
//! - Under `enforce`, a version held back that now passes is promoted
//!   (`dev.kiln.version.promoted`): this is also how a promotion lost to a
//!   crash between the evidence step and the gallery call is made good.
//!
//! Timer triggers run on one instance at a time (the Functions host holds
//! a lease), and every step here is idempotent, so a repeated run changes
//! nothing twice.

use serde::Serialize;
use serde_json::{json, Value};

use super::super::events::CloudEvent;
use super::super::App;
use super::assess::{run_gate, tag_and_promote, SBOM_TAG};
use crate::domain::evidence::gate::{GateMode, GatePolicy};
use crate::domain::evidence::spdx;
use crate::domain::version::ImageVersion;
use crate::ports::{EvidenceFile, FeedRefresh, VersionUpdate};

/// What one re-check did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecheckOutcome {
    pub feed: String,
    pub checked: usize,
    pub unchanged: usize,
    pub newly_failing: Vec<String>,
    pub revoked: Vec<String>,
    pub promoted: Vec<String>,
    pub errors: Vec<String>,
}

impl RecheckOutcome {
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "evidence_recheck: feed {}; {} versions re-matched, {} unchanged; {} newly failing, {} revoked, {} promoted",
            self.feed,
            self.checked,
            self.unchanged,
            self.newly_failing.len(),
            self.revoked.len(),
            self.promoted.len()
        )];
        lines.extend(self.errors.iter().map(|e| format!("evidence_recheck: {e}")));
        lines
    }
}

pub async fn recheck(app: &App) -> anyhow::Result<RecheckOutcome> {
    let mut out = RecheckOutcome {
        feed: match app.evidence.feed.refresh().await {
            FeedRefresh::NotConfigured => "kept by someone else (no KILN_OSV_FEED_URL)".into(),
            FeedRefresh::Refreshed { advisories } => format!("refreshed ({advisories} advisories)"),
            FeedRefresh::NotModified => "not modified".into(),
            FeedRefresh::Failed(why) => format!("refresh failed, the old one stays: {why}"),
        },
        ..RecheckOutcome::default()
    };
    let Some(feed) = app.evidence.feed.current().await? else {
        out.feed = "none configured (KILN_OSV_FEED)".into();
        return Ok(out);
    };
    let digest = feed.digest();
    let now = app.clock.now();
    let in_use = match app.inventory.in_use().await {
        Ok(set) => Some(set),
        Err(e) => {
            out.errors.push(format!("the in-use inventory is unavailable: {e:#}"));
            None
        }
    };
    for p in app.pipelines.iter() {
        let Some(policy) = p.kiln.gate.clone() else {
            continue;
        };
        for target in p.gallery_targets() {
            let def = target.definition_id();
            let versions = match app.gallery.list_versions(&def).await {
                Ok(v) => v,
                Err(e) => {
                    out.errors.push(format!("{def}: cannot list its versions: {e:#}"));
                    continue;
                }
            };
            for gv in versions {
                let version = gv.version;
                let id = format!("{def}/versions/{version}");
                let before = match last_findings(app, &def, version).await {
                    Ok(f) => f,
                    Err(e) => {
                        out.errors.push(format!("{id}: {e:#}"));
                        continue;
                    }
                };
                let Some(before) = before else {
                    // No gate ran for it (published before the gate, or
                    // the evidence step has not run yet): leave it be.
                    continue;
                };
                let same_feed = before["feedDigest"].as_str() == Some(digest.as_str());
                let same_policy = serde_json::to_value(&policy).ok().as_ref() == Some(&before["policy"]);
                let passed_before = before["verdict"]["verdict"].as_str() == Some("pass");
                let (passed_now, blocking) = if same_feed && same_policy {
                    out.unchanged += 1;
                    (passed_before, vec![])
                } else {
                    let sbom = match stored_sbom(app, &def, version).await {
                        Ok(Some(s)) => s,
                        Ok(None) => continue,
                        Err(e) => {
                            out.errors.push(format!("{id}: {e:#}"));
                            continue;
                        }
                    };
                    let mut errors = Vec::new();
                    let run = run_gate(app, &policy, &sbom, &def, version, now, &mut errors).await;
                    out.errors.extend(errors.into_iter().map(|e| format!("{id}: {e}")));
                    out.checked += 1;
                    (run.passed, run.summary["blocking"].as_array().cloned().unwrap_or_default())
                };
                if passed_before && !passed_now {
                    newly_failing(app, &policy, &gv, &id, blocking, in_use.as_ref(), now, &mut out).await;
                } else if passed_now && policy.mode == GateMode::Enforce && gv.exclude_from_latest {
                    promote_held(app, p, &gv, &def, &id, &mut out).await;
                }
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn newly_failing(
    app: &App,
    policy: &GatePolicy,
    gv: &crate::ports::GalleryVersion,
    id: &str,
    blocking: Vec<Value>,
    in_use: Option<&crate::ports::InUseSet>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut RecheckOutcome,
) {
    out.newly_failing.push(id.to_string());
    let def = id.rsplit_once("/versions/").map_or(id, |(d, _)| d);
    let mut revoked = false;
    if policy.revoke && !gv.exclude_from_latest {
        match app
            .gallery
            .update_version(
                def,
                gv.version,
                &VersionUpdate {
                    exclude_from_latest: Some(true),
                    end_of_life: Some(now),
                    tags: None,
                },
            )
            .await
        {
            Ok(()) => {
                revoked = true;
                out.revoked.push(id.to_string());
            }
            Err(e) => out.errors.push(format!("{id}: cannot revoke it: {e:#}")),
        }
    }
    let ev = CloudEvent::new(
        "dev.kiln.version.vulnerable".into(),
        format!("versions/{id}"),
        now,
        json!({
            "version": id,
            "blocking": blocking,
            "revoked": revoked,
            "inUse": in_use.map(|s| s.uses_version(gv)),
        }),
    );
    if let Err(e) = app.events.publish(&ev).await {
        out.errors.push(format!("{id}: cannot publish its event: {e:#}"));
    }
}

async fn promote_held(
    app: &App,
    p: &crate::domain::pipeline::Pipeline,
    gv: &crate::ports::GalleryVersion,
    def: &str,
    id: &str,
    out: &mut RecheckOutcome,
) {
    // A staged rollout the pipeline asks for, or a version revoked by an
    // end of life, is not the gate's to undo.
    if p.kiln.promotion.exclude_from_latest || gv.end_of_life.is_some() {
        return;
    }
    let sha = gv.tags.get(SBOM_TAG).cloned().unwrap_or_default();
    match tag_and_promote(app, def, gv.version, &sha, true).await {
        Ok(()) => {
            out.promoted.push(id.to_string());
            let ev = CloudEvent::new(
                "dev.kiln.version.promoted".into(),
                format!("versions/{id}"),
                app.clock.now(),
                json!({"version": id, "reason": "the vulnerability gate passes"}),
            );
            if let Err(e) = app.events.publish(&ev).await {
                out.errors.push(format!("{id}: cannot publish its event: {e:#}"));
            }
        }
        Err(e) => out.errors.push(format!("{id}: cannot promote it: {e:#}")),
    }
}

async fn last_findings(app: &App, def: &str, v: ImageVersion) -> anyhow::Result<Option<Value>> {
    match app.evidence.store.get(def, v, EvidenceFile::Findings).await? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

async fn stored_sbom(
    app: &App,
    def: &str,
    v: ImageVersion,
) -> anyhow::Result<Option<crate::domain::evidence::sbom::Sbom>> {
    match app.evidence.store.get(def, v, EvidenceFile::Sbom).await? {
        Some(bytes) => {
            let doc: Value = serde_json::from_slice(&bytes)?;
            Ok(Some(spdx::from_spdx_json(&doc)?))
        }
        None => Ok(None),
    }
}
