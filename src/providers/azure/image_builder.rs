//! Azure VM Image Builder image templates (`Microsoft.VirtualMachineImages`, 2025-10-01).
//!
//! A build is one template, named after the build and attempt. AIB cannot
//! update a template in place, so `put_template` creates it or adopts the one
//! already there when it carries the same body (kiln tags each template with
//! a hash of what it submitted).
//!
//! Nothing here waits for a long-running operation: creating a template
//! takes up to minutes, a run hours, a deletion minutes, and a Functions
//! invocation may not block that long. Each call starts the operation and
//! returns; the state machine reads the template again on its next poll
//! (`provisioningState`, then `lastRunStatus`) and the cleanup queue
//! confirms deletions. `run` is sent once and never retried blindly: an
//! answer that did not arrive is `Unconfirmed`, and the next read of
//! `lastRunStatus` says whether the run started.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use reqwest::Method;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::arm::{ArmClient, ArmResponse, RetryPolicy};
use super::error::ArmError;
use super::run_facts::SENT_HASH_TAG;
use super::sbom_step::{self, Block};
use super::staging_log::StagingLogs;
use crate::domain::evidence::facts::RunFacts;
use crate::domain::failure::FailureCategory;
use crate::domain::pipeline::FieldError;
use crate::domain::redact;
use crate::domain::run::provisioning_failure;
use crate::domain::template::ImageTemplate;
use crate::ports::{
    Deletion, ImageBuilder, ProviderError, RunOutput, RunStart, RunState, RunStatus, RunSubState,
    TemplateStatus,
};

pub const API_VERSION: &str = "2025-10-01";

/// Tag holding the sha256 of the body kiln submitted, to recognise its own template.
pub const BODY_HASH_TAG: &str = "kiln.bodyHash";

pub struct AzureImageBuilder {
    arm: ArmClient,
    logs: StagingLogs,
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates`
    collection: String,
}

impl AzureImageBuilder {
    pub fn new(arm: ArmClient, subscription_id: &str, resource_group: &str) -> Self {
        Self {
            logs: StagingLogs::new(arm.clone()),
            arm,
            collection: format!(
                "/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/Microsoft.VirtualMachineImages/imageTemplates"
            ),
        }
    }

    fn path(&self, name: &str, suffix: &str) -> String {
        format!(
            "{}/{name}{suffix}?api-version={API_VERSION}",
            self.collection
        )
    }

    /// Accepts the template `found` if it is kiln's with the same body, and
    /// says where it stands.
    fn adopt(
        &self,
        name: &str,
        hash: &str,
        found: ArmResponse,
    ) -> Result<TemplateStatus, ProviderError> {
        let doc = found.json()?;
        let theirs = doc
            .get("tags")
            .and_then(|t| t.get(BODY_HASH_TAG))
            .and_then(Value::as_str);
        if theirs != Some(hash) {
            return Err(ProviderError::new(
                FailureCategory::Internal,
                format!("image template {name} already exists with a different body, and Image Builder cannot update a template; delete it or start a new attempt"),
            ));
        }
        Ok(template_status(&doc))
    }

    async fn get(&self, name: &str) -> Result<ArmResponse, ArmError> {
        self.arm
            .send(
                Method::GET,
                &self.path(name, ""),
                None,
                RetryPolicy::Idempotent,
            )
            .await
    }
}

#[async_trait]
impl ImageBuilder for AzureImageBuilder {
    async fn put_template(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<TemplateStatus, ProviderError> {
        let hash = body_hash(body);
        let path = self.path(name, "");
        let found = self.get(name).await?;
        if found.status != 404 {
            return self.adopt(name, &hash, found.ok()?);
        }
        // The inventory step, with a nonce drawn now and kept in the
        // template (sbom_step.rs). A retried PUT resends these bytes; a
        // template found later is adopted by the hash of `body`, so the
        // nonce never has to be drawn twice alike.
        let sent = sbom_step::with_step(body, &sbom_step::new_nonce());
        let sent_hash = body_hash(&sent);
        let mut tagged = sent;
        if let Some(obj) = tagged.as_object_mut() {
            let tags = obj
                .entry("tags")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(tags) = tags.as_object_mut() {
                tags.insert(BODY_HASH_TAG.into(), Value::String(hash.clone()));
                tags.insert(SENT_HASH_TAG.into(), Value::String(sent_hash));
            }
        }
        let r = self
            .arm
            .send(Method::PUT, &path, Some(&tagged), RetryPolicy::Idempotent)
            .await?;
        if r.status == 409 {
            // Another invocation created it between our GET and PUT (or a
            // retried PUT found its own first attempt).
            let found = self.get(name).await?.ok()?;
            return self.adopt(name, &hash, found);
        }
        // AIB answers 201 with `provisioningState: Creating` and an
        // `Azure-AsyncOperation` to follow; the next poll reads the template
        // instead of this invocation waiting for it.
        let created = r.ok().map_err(provisioning_error)?;
        let doc = created.json()?;
        Ok(if doc.pointer("/properties").is_some() {
            template_status(&doc)
        } else {
            TemplateStatus::Provisioning
        })
    }

    async fn run(&self, name: &str) -> Result<RunStart, ProviderError> {
        match self.status(name).await? {
            TemplateStatus::Run(_) => return Ok(RunStart::Started),
            TemplateStatus::Missing => {
                return Err(ProviderError::new(
                    FailureCategory::Transient,
                    format!("image template {name} does not exist, so it cannot run"),
                ))
            }
            TemplateStatus::Provisioning | TemplateStatus::Deleting => {
                return Ok(RunStart::NotReady)
            }
            TemplateStatus::ProvisioningFailed { code, message } => {
                return Err(ProviderError::new(
                    provisioning_failure(&code),
                    format!("image template {name} was refused ({code}): {message}"),
                ))
            }
            TemplateStatus::NotRun => {}
        }
        let sent = self
            .arm
            .send(
                Method::POST,
                &self.path(name, "/run"),
                None,
                RetryPolicy::NoRetry,
            )
            .await;
        let r = match sent {
            Ok(r) => r,
            // The request may have reached AIB before the connection broke.
            Err(e) if e.category == FailureCategory::Network => {
                tracing::warn!(template = name, error = %e, "no answer to the run request; lastRunStatus will say whether it started");
                return Ok(RunStart::Unconfirmed {
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if r.is_success() {
            tracing::info!(template = name, status = r.status, client_request_id = %r.client_request_id, "image template run started");
            return Ok(RunStart::Started);
        }
        let err = r.error();
        match r.status {
            // "Already running", or a twin run request that won: a run exists now.
            // "Already running", a twin run request that won, or another
            // operation on the template: a run exists now or may soon; the
            // next poll's lastRunStatus says which.
            409 => {
                if let TemplateStatus::Run(_) = self.status(name).await? {
                    return Ok(RunStart::Started);
                }
                Ok(RunStart::Unconfirmed {
                    reason: err.to_string(),
                })
            }
            // Throttled: the request was not acted on; the next poll asks again.
            429 => Ok(RunStart::NotReady),
            // A server error or gateway timeout may come after AIB acted.
            408 | 500..=599 => Ok(RunStart::Unconfirmed {
                reason: err.to_string(),
            }),
            _ => Err(err.into()),
        }
    }

    async fn status(&self, name: &str) -> Result<TemplateStatus, ProviderError> {
        match self.arm.get_json(&self.path(name, "")).await? {
            None => Ok(TemplateStatus::Missing),
            Some(doc) => Ok(template_status(&doc)),
        }
    }

    async fn run_outputs(&self, name: &str) -> Result<Vec<RunOutput>, ProviderError> {
        let items = match self.arm.list_all(&self.path(name, "/runOutputs")).await {
            Ok(items) => items,
            Err(e) if e.is_not_found() => return Ok(vec![]),
            Err(e) => return Err(e.into()),
        };
        Ok(items.iter().filter_map(run_output).collect())
    }

    async fn cancel(&self, name: &str) -> Result<(), ProviderError> {
        let r = self
            .arm
            .send(
                Method::POST,
                &self.path(name, "/cancel"),
                None,
                RetryPolicy::NoRetry,
            )
            .await?;
        if r.is_success() || r.status == 404 {
            return Ok(());
        }
        let err = r.error();
        // Refused because nothing is running: there is nothing to cancel.
        if matches!(r.status, 400 | 409) {
            match self.status(name).await? {
                TemplateStatus::Run(s)
                    if matches!(s.run_state, RunState::Running | RunState::Canceling) => {}
                _ => return Ok(()),
            }
        }
        Err(err.into())
    }

    /// ARM's DELETE contract: 200 or 204 deleted, 202 accepted and going on
    /// (the template then reads `Deleting` until it is gone), 404 gone
    /// already. Anything else failed, and the cleanup queue tries again.
    async fn delete_template(&self, name: &str) -> Result<Deletion, ProviderError> {
        let r = self
            .arm
            .send(
                Method::DELETE,
                &self.path(name, ""),
                None,
                RetryPolicy::Idempotent,
            )
            .await?;
        match r.status {
            200 | 204 | 404 => Ok(Deletion::Gone),
            202 => Ok(Deletion::InProgress),
            _ => Err(r.error().into()),
        }
    }

    /// The run's `customization.log` from the staging resource group, while
    /// the template exists (kiln keeps a copy when it retires the template).
    async fn customization_log(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        match self.arm.get_json(&self.path(name, "")).await? {
            None => Ok(None),
            // AIB's log names each customizer's URI, SAS included; what kiln
            // keeps and serves is masked in place (offsets stay right).
            Some(doc) => Ok(self.logs.read(name, &doc, offset).await?.map(|mut bytes| {
                redact::mask_urls(&mut bytes);
                bytes
            })),
        }
    }

    /// The inventory the `kiln-sbom` step printed into the run's log, and
    /// what the template says of its inputs (`run_facts.rs`). `None` for a
    /// template without the step (Windows, or made before it) or a log
    /// without its block; a damaged block is an error.
    async fn run_facts(&self, name: &str) -> Result<Option<RunFacts>, ProviderError> {
        let Some(doc) = self.arm.get_json(&self.path(name, "")).await? else {
            return Ok(None);
        };
        let Some(nonce) = sbom_step::nonce_in(&doc) else {
            return Ok(None);
        };
        let Some(bytes) = self.logs.read(name, &doc, 0).await? else {
            tracing::warn!(
                template = name,
                "no customization log: the image has no SBOM"
            );
            return Ok(None);
        };
        let bad = |e: String| {
            ProviderError::internal(format!(
                "the kiln-sbom block in image template {name}'s customization log: {e}"
            ))
        };
        match sbom_step::find_block(&String::from_utf8_lossy(&bytes), &nonce).map_err(bad)? {
            None => {
                tracing::warn!(
                    template = name,
                    "the customization log has no kiln-sbom block: the image has no SBOM"
                );
                Ok(None)
            }
            Some(Block::Skipped { reason }) => {
                tracing::info!(template = name, reason = %reason, "the kiln-sbom step printed no inventory");
                Ok(None)
            }
            Some(Block::Inventory { os_release, dpkg }) => {
                super::run_facts::facts(name, &doc, &os_release, &dpkg)
                    .map(Some)
                    .map_err(|e| ProviderError::internal(format!("image template {name}: {e}")))
            }
        }
    }

    /// ARM's tag, name and size limits (`limits.rs`), before anything is
    /// sent. What AIB requires of every template (a user-assigned identity
    /// among them) is checked when the pipeline is read, whichever provider
    /// builds it.
    fn check(&self, template: &ImageTemplate) -> Vec<FieldError> {
        super::limits::check_template(template)
    }
}

/// sha256 of the body with object keys sorted, so key order does not matter.
fn body_hash(body: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    write(body, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Image Builder's provisioning error codes name a template problem, except these two.
fn provisioning_error(mut e: ArmError) -> ProviderError {
    if e.category == FailureCategory::Internal {
        e.category = provisioning_failure(e.code.as_deref().unwrap_or(""));
    }
    e.into()
}

fn template_status(doc: &Value) -> TemplateStatus {
    let text = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or("");
    match text("/properties/provisioningState")
        .to_ascii_lowercase()
        .as_str()
    {
        "creating" | "updating" | "accepted" => return TemplateStatus::Provisioning,
        "deleting" => return TemplateStatus::Deleting,
        "failed" => {
            return TemplateStatus::ProvisioningFailed {
                code: text("/properties/provisioningError/provisioningErrorCode").to_string(),
                // AIB quotes the customizer URIs it could not use, SAS and all.
                message: redact::mask_urls_in(text("/properties/provisioningError/message")),
            };
        }
        _ => {}
    }
    let Some(last) = doc
        .pointer("/properties/lastRunStatus")
        .filter(|v| v.is_object())
    else {
        return TemplateStatus::NotRun;
    };
    let text = |k: &str| last.get(k).and_then(Value::as_str);
    TemplateStatus::Run(RunStatus {
        run_state: RunState::parse(text("runState").unwrap_or("")),
        run_sub_state: text("runSubState")
            .filter(|s| !s.is_empty())
            .map(RunSubState::parse),
        message: redact::mask_urls_in(text("message").unwrap_or("")),
        start_time: text("startTime").and_then(time),
        end_time: text("endTime").and_then(time),
    })
}

/// AIB reports an unfinished run's end as `0001-01-01T00:00:00Z`: that is no time at all.
fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| t.year() > 1)
}

fn run_output(item: &Value) -> Option<RunOutput> {
    let text = |p: &str| item.pointer(p).and_then(Value::as_str).map(str::to_string);
    Some(RunOutput {
        name: text("/name")?,
        artifact_id: text("/properties/artifactId"),
        artifact_uri: text("/properties/artifactUri"),
        provisioning_state: text("/properties/provisioningState").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
