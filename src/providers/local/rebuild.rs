//! Building a published version again, for `kiln verify --rebuild`: the
//! exact template body the version was built from (kept with it as
//! `template.json`), pinned to the source version it resolved to, run once
//! more with its output sent to a scratch VHD instead of the gallery. What
//! the run saw (its SBOM and disk digests) is compared with the signed
//! evidence by the caller; this module only runs it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{util, LocalProvider};
use crate::domain::evidence::facts::RunFacts;
use crate::domain::evidence::provenance::Statement;
use crate::domain::run::{RunStart, RunState, TemplateStatus};
use crate::ports::ImageBuilder;

/// The body a version was built from, as the local provider received it.
pub(crate) const TEMPLATE_FILE: &str = "template.json";

/// The rebuilds' template names: `kiln-rebuild-<12 hex>`.
const REBUILD_PREFIX: &str = "kiln-rebuild-";

/// Leftovers of a rebuild this old are abandoned: no live rebuild leaves
/// its ended template or scratch folder behind that long.
const ABANDONED: Duration = Duration::from_secs(24 * 3600);

/// Writes `bytes` to a new file at `path` that only its owner can read.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// The template of a rebuild: `body` with its source pinned to `exact` and
/// its outputs replaced by one VHD at `vhd`, so that nothing is published.
pub(crate) fn rebuild_body(body: &Value, exact: &str, vhd: &Path) -> anyhow::Result<Value> {
    let mut body = body.clone();
    let props = body
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .context("template.json: expected an object at `properties`")?;
    let source = props
        .get_mut("source")
        .and_then(Value::as_object_mut)
        .context("template.json: expected an object at `properties.source`")?;
    match source.get("type").and_then(Value::as_str) {
        Some("PlatformImage") => {
            source.insert("version".into(), json!(exact));
        }
        Some("SharedImageVersion") => {
            source.insert("imageVersionId".into(), json!(exact));
        }
        Some("ManagedImage") => {}
        other => bail!(
            "template.json: `properties.source.type` is {other:?}, not a source kiln builds from"
        ),
    }
    // Read-only fields AIB fills in; a body carrying them is refused.
    source.remove("exactVersion");
    props.insert(
        "distribute".into(),
        json!([{
            "type": "VHD",
            "runOutputName": "rebuild",
            "uri": format!("file://{}", vhd.display()),
        }]),
    );
    Ok(body)
}

impl LocalProvider {
    /// Builds the published version `version_id` again from its
    /// `template.json` and returns what that run saw. The template body
    /// must be the one the verified statement `signed` names (by sha256),
    /// and the source is pinned to the version it names: the version's own
    /// files are not trusted for either. The run's template, log, staging
    /// and scratch disk are removed afterwards, whatever the outcome.
    pub async fn rebuild(
        &self,
        version_id: &str,
        signed: &Statement,
        limit: Duration,
    ) -> anyhow::Result<RunFacts> {
        self.sweep_rebuilds().await;
        let published = self
            .gallery_version(version_id)
            .await?
            .with_context(|| format!("{version_id} is not in the local gallery"))?;
        let path = published.path.join(TEMPLATE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "Cannot read {} (kiln keeps no template that carries credentials, such as a SAS in a scriptUri, nor had it kept templates before this version: such versions cannot be rebuilt)",
                path.display()
            )
        })?;
        let body: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let sha = util::sha256_hex(util::canonical_json(&body).as_bytes());
        let recorded = signed.template_sha256().unwrap_or("");
        if !sha.eq_ignore_ascii_case(recorded) {
            bail!(
                "{}: sha256 is {sha}, the signed provenance says {recorded}: not the template it was built from",
                path.display()
            );
        }
        let exact = signed.source_version().with_context(|| {
            format!("{version_id}: the signed provenance names no source version")
        })?;
        // In the data folder, beside the published disks: a rebuild's VHD is
        // as large as the image, more than /tmp may hold.
        let vhd_dir = self.inner.data_dir.join("vhd");
        let scratch = std::fs::create_dir_all(&vhd_dir)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("rebuild-")
                    .tempdir_in(&vhd_dir)
            })
            .with_context(|| format!("Cannot make a scratch folder in {}", vhd_dir.display()))?;
        let rebuilt = rebuild_body(&body, exact, &scratch.path().join("disk.vhd"))?;
        let name = format!(
            "kiln-rebuild-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let result = tokio::select! {
            r = self.run_once(&name, &rebuilt, limit) => r,
            // Ctrl-C: the run is canceled and cleaned up like any other end.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("the rebuild was interrupted")),
        };
        if result.is_err() {
            self.stop(&name).await;
        }
        // Cleanup whatever happened: the template (its staging and facts).
        self.remove_rebuild(&name).await;
        result
    }

    /// Deletes a rebuild's template (its staging and facts) and its log.
    async fn remove_rebuild(&self, name: &str) {
        if let Err(e) = self.delete_template(name).await {
            tracing::warn!(template = %name, error = %e, "cannot delete the rebuild's template");
        }
        let _ = std::fs::remove_file(self.inner.log_path(name));
    }

    /// What an earlier rebuild left when its process was killed. Another
    /// `kiln verify --rebuild` may be running beside this one, so only
    /// what is surely abandoned goes: a template whose run ended over
    /// [`ABANDONED`] ago (a live rebuild deletes its own within seconds of
    /// the end), and scratch folders older than that. (An orphaned run is
    /// reported ended when its status is read, so a killed rebuild's
    /// template goes a day later.)
    async fn sweep_rebuilds(&self) {
        let names = match self.inner.records.template_names(REBUILD_PREFIX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list templates for leftover rebuilds");
                return;
            }
        };
        let abandoned = chrono::Duration::from_std(ABANDONED).unwrap_or_default();
        for name in &names {
            let ended_long_ago = match self.status(name).await {
                Ok(TemplateStatus::Run(s)) => {
                    !matches!(s.run_state, RunState::Running | RunState::Canceling)
                        && s.end_time
                            .is_some_and(|t| chrono::Utc::now() - t > abandoned)
                }
                Ok(
                    TemplateStatus::Missing
                    | TemplateStatus::Provisioning
                    | TemplateStatus::Deleting
                    | TemplateStatus::ProvisioningFailed { .. }
                    | TemplateStatus::NotRun,
                )
                | Err(_) => false,
            };
            if ended_long_ago {
                self.remove_rebuild(name).await;
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.inner.data_dir.join("vhd")) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ABANDONED);
                if old && e.file_name().to_string_lossy().starts_with("rebuild-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Cancels a rebuild that is still running and waits (a minute at
    /// most) for it to stop, so that its template can be deleted.
    async fn stop(&self, name: &str) {
        let _ = self.cancel(name).await;
        // Ended, or still going after a minute: either way the caller deletes.
        let _ = self.wait_run(name, Duration::from_secs(60)).await;
    }

    async fn run_once(
        &self,
        name: &str,
        body: &Value,
        limit: Duration,
    ) -> anyhow::Result<RunFacts> {
        self.put_template(name, body)
            .await
            .map_err(|e| anyhow::anyhow!("the rebuild's template was refused: {e}"))?;
        // The local provider creates a template at once, so it is ready to run.
        match self
            .run(name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the rebuild: {e}"))?
        {
            RunStart::Started | RunStart::Unconfirmed { .. } => {}
            RunStart::NotReady => bail!("the rebuild's template is not ready to run"),
        }
        let status = self.wait_run(name, limit).await?;
        if status.run_state != RunState::Succeeded {
            bail!(
                "the rebuild ended {:?}: {}",
                status.run_state,
                status.message
            );
        }
        self.run_facts(name)
            .await
            .map_err(anyhow::Error::msg)?
            .context("the rebuild left no run facts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_pins_the_source_and_publishes_nothing() {
        let body = json!({
            "location": "westeurope",
            "tags": {"kiln.build": "20261208-020000-a1b2c3"},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "debian",
                           "sku": "12", "version": "latest", "exactVersion": "12.0.1"},
                "customize": [{"type": "Shell", "name": "jq", "inline": ["apt-get install -y jq"]}],
                "distribute": [{"type": "SharedImage", "runOutputName": "sig",
                                "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.0.0"}]
            }
        });
        let out = rebuild_body(&body, "12.0.1", Path::new("/data/vhd/rebuild-x/disk.vhd")).unwrap();
        assert_eq!(
            out["properties"]["source"],
            json!({"type": "PlatformImage", "publisher": "kiln", "offer": "debian", "sku": "12", "version": "12.0.1"})
        );
        assert_eq!(
            out["properties"]["distribute"],
            json!([{"type": "VHD", "runOutputName": "rebuild", "uri": "file:///data/vhd/rebuild-x/disk.vhd"}])
        );
        // The steps are the same steps.
        assert_eq!(
            out["properties"]["customize"],
            body["properties"]["customize"]
        );

        let mut shared = body.clone();
        shared["properties"]["source"] = json!({"type": "SharedImageVersion",
            "imageVersionId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/base/versions/latest"});
        let exact = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/base/versions/2.1.0";
        let out = rebuild_body(&shared, exact, Path::new("/x.vhd")).unwrap();
        assert_eq!(out["properties"]["source"]["imageVersionId"], exact);

        let mut odd = body;
        odd["properties"]["source"] = json!({"type": "ISO"});
        let e = rebuild_body(&odd, "1", Path::new("/x.vhd"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("properties.source.type"), "{e}");
    }
}
