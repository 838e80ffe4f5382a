//! The dispatch both hosts use: one invocation of one function, decoded
//! from the custom-handler wire ([`super::wire`]) and handed to the module
//! that implements it.

use serde_json::Value;

use super::wire::{decode_value, message_text, trigger_value, MessageMeta};
pub use super::wire::{FunctionName, Invocation, InvocationResult, InvokeError};
use super::{builds, triggers, App};

/// Invokes one function with the host's payload.
pub async fn invoke(
    app: &App,
    name: FunctionName,
    inv: Invocation,
) -> Result<InvocationResult, InvokeError> {
    let mut out = InvocationResult::default();
    match name {
        FunctionName::PatchTuesday => {
            let timer = trigger_value(&inv, name)?;
            if timer
                .get("IsPastDue")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                out.log("patch_tuesday: timer is past due; catching up once");
            }
            triggers::patch_tuesday(app, &mut out).await?;
        }
        FunctionName::BaseImageWatch => {
            trigger_value(&inv, name)?;
            triggers::base_image_watch(app, &mut out).await?;
        }
        FunctionName::BaseImageEvents => {
            let event = decode_value(trigger_value(&inv, name)?);
            let batch = match event {
                Value::Array(_) => event,
                other => Value::Array(vec![other]),
            };
            let body =
                serde_json::to_vec(&batch).map_err(|e| InvokeError::BadPayload(e.to_string()))?;
            match triggers::base_image_events(app, &body, None, None, &mut out).await? {
                Ok(reply) => out.return_value = reply,
                Err(reason) => return Err(InvokeError::BadPayload(reason)),
            }
        }
        FunctionName::BuildRequests => {
            let text = message_text(trigger_value(&inv, name)?);
            let meta = MessageMeta::from_metadata(&inv.metadata);
            out.return_value = builds::build_requests(app, &text, &meta, &mut out).await?;
        }
        FunctionName::BuildPolls => {
            let text = message_text(trigger_value(&inv, name)?);
            let meta = MessageMeta::from_metadata(&inv.metadata);
            builds::build_polls(app, &text, &meta, &mut out).await?;
        }
        FunctionName::BuildSweeper => {
            trigger_value(&inv, name)?;
            builds::build_sweeper(app, &mut out).await?;
        }
        FunctionName::Retention => {
            trigger_value(&inv, name)?;
            let run = super::retention_job::run(app, false).await?;
            out.log(format!(
                "retention: run {} applied {} steps ({} failed)",
                run.run_id,
                run.applied.len(),
                run.failures().count()
            ));
            out.return_value = serde_json::to_value(&run).map_err(anyhow::Error::from)?;
        }
        FunctionName::Api => {
            let req = trigger_value(&inv, name)?;
            out.outputs
                .insert("res".into(), super::api::invoke_payload(app, req).await?);
        }
    }
    Ok(out)
}
