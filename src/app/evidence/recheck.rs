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
use super::assess::{run_gate, tag_and_promote, Verdict, SBOM_TAG};
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
    if app.evidence.feed.current().await?.is_none() {
        out.feed = "none configured (KILN_OSV_FEED)".into();
        return Ok(out);
    }

    let now = app.clock.now();
    let in_use = match app.inventory.in_use().await {
        Ok(set) => Some(set),
        Err(e) => {
            out.errors
                .push(format!("the in-use inventory is unavailable: {e:#}"));
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
                    out.errors
                        .push(format!("{def}: cannot list its versions: {e:#}"));
                    continue;
                }
            };
            // Only this pipeline's versions: another pipeline publishing to
            // the same definition has its own policy.
            for gv in versions.into_iter().filter(|v| {
                v.tags.get("kiln.pipeline").map(String::as_str) == Some(p.name.as_str())
            }) {
                let version = gv.version;
                let id = format!("{def}/versions/{version}");
                let sbom = match stored_sbom(app, &def, version).await {
                    Ok(Some(s)) => s,
                    // Published before kiln kept evidence: nothing to match.
                    Ok(None) => continue,
                    Err(e) => {
                        out.errors.push(format!("{id}: {e:#}"));
                        continue;
                    }
                };
                let before = match app
                    .evidence
                    .store
                    .get(&def, version, EvidenceFile::Findings)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        out.errors.push(format!("{id}: {e:#}"));
                        continue;
                    }
                };
                let verdict_before = before
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|f| f["verdict"]["verdict"].as_str().map(str::to_string));
                // Matched again every time, not only when the feed changed:
                // an ignore entry that ran out or a fix that grew old enough
                // changes the verdict on the same feed.
                let mut errors = Vec::new();
                let run = run_gate(app, &policy, &sbom, &def, version, now, &mut errors).await;
                out.errors
                    .extend(errors.into_iter().map(|e| format!("{id}: {e}")));
                out.checked += 1;
                let blocking = run.summary["blocking"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let failed_before = verdict_before.as_deref() == Some("fail");
                match (failed_before, run.verdict) {
                    // The gate could not run: decide nothing on it.
                    (_, Verdict::Unavailable) => out.unchanged += 1,
                    (true, Verdict::Fail) => out.unchanged += 1,
                    (false, Verdict::Fail) => {
                        let acted = newly_failing(
                            app,
                            &policy,
                            &gv,
                            &id,
                            blocking,
                            in_use.as_ref(),
                            now,
                            &mut out,
                        )
                        .await;
                        if !acted {
                            // Not revoked or not reported: put the old findings
                            // back, so the next run finds it newly failing again.
                            restore(app, &def, version, before.as_deref(), &id, &mut out).await;
                        }
                    }
                    (_, Verdict::Pass) if policy.mode == GateMode::Enforce => {
                        promote_held(app, &gv, &def, &id, &mut out).await
                    }
                    (_, Verdict::Pass) => out.unchanged += 1,
                }
            }
        }
    }
    Ok(out)
}

async fn restore(
    app: &App,
    def: &str,
    version: ImageVersion,
    before: Option<&[u8]>,
    id: &str,
    out: &mut RecheckOutcome,
) {
    let Some(bytes) = before else {
        return;
    };
    if let Err(e) = app
        .evidence
        .store
        .put(def, version, EvidenceFile::Findings, bytes)
        .await
    {
        out.errors
            .push(format!("{id}: cannot restore its findings: {e:#}"));
    }
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
) -> bool {
    out.newly_failing.push(id.to_string());
    let mut done = true;
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
            Err(e) => {
                done = false;
                out.errors.push(format!("{id}: cannot revoke it: {e:#}"));
            }
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
            // Who still runs it: VMs, scale sets and their instances; and
            // who may (a reference kiln could not map to one gallery).
            "consumers": in_use.map(|s| s.consumers_of(gv)),
            "maybeConsumers": in_use.map(|s| s.maybe_consumers_of(gv)),
        }),
    );
    if let Err(e) = app.events.publish(&ev).await {
        done = false;
        out.errors
            .push(format!("{id}: cannot publish its event: {e:#}"));
    }
    done
}

/// Promotes a version the gate held (`kiln.gate=held`) now that it passes;
/// anything else excluded from latest (a demotion, the pipeline's own
/// staged rollout, a revoked version) is not the gate's to undo.
async fn promote_held(
    app: &App,
    gv: &crate::ports::GalleryVersion,
    def: &str,
    id: &str,
    out: &mut RecheckOutcome,
) {
    let sha = gv.tags.get(SBOM_TAG).cloned().unwrap_or_default();
    match tag_and_promote(app, def, gv.version, &sha, true).await {
        Ok(false) => out.unchanged += 1,
        Ok(true) => {
            out.promoted.push(id.to_string());
            let ev = CloudEvent::new(
                "dev.kiln.version.promoted".into(),
                format!("versions/{id}"),
                app.clock.now(),
                json!({"version": id, "reason": "the vulnerability gate passes"}),
            );
            if let Err(e) = app.events.publish(&ev).await {
                out.errors
                    .push(format!("{id}: cannot publish its event: {e:#}"));
            }
        }
        Err(e) => out.errors.push(format!("{id}: cannot promote it: {e:#}")),
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
