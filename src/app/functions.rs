//! The dispatch both hosts use: one invocation of one function, decoded
//! from the custom-handler wire ([`super::wire`]) and handed to the module
//! that implements it. The adapter between the functions and the wire:
//! each function returns a typed outcome (and logs it through `tracing`),
//! and only here is it turned into the host's reply, its `ReturnValue` and
//! the `Logs` lines the host forwards to Application Insights.

use serde_json::Value;

use super::wire::{decode_value, message_text, trigger_value, MessageMeta};
pub use super::wire::{FunctionName, Invocation, InvocationResult, InvokeError};
use super::{builds, triggers, App};

/// Invokes one function with the host's payload.
/// The most one invocation may take, on the wall: under the HTTP trigger's
/// 230 s and host.json's 5-minute `functionTimeout`, so kiln ends an
/// invocation before the host kills it. Every step is level-triggered and
/// each write carries what must follow it (`next_poll_at`, outbox rows,
/// cleanup rows), so work cut short here is picked up by the next poll or
/// sweep, as after a crash.
pub const INVOCATION_BUDGET: std::time::Duration = std::time::Duration::from_secs(200);

/// Runs function `name` on `inv`, within [`INVOCATION_BUDGET`].
pub async fn invoke(
    app: &App,
    name: FunctionName,
    inv: Invocation,
) -> Result<InvocationResult, InvokeError> {
    match tokio::time::timeout(INVOCATION_BUDGET, invoke_unbounded(app, name, inv)).await {
        Ok(result) => result,
        Err(_) => Err(InvokeError::Failed(anyhow::anyhow!(
            "{name} ran past its budget of {} s and was stopped; what it left is picked up by the next poll or sweep",
            INVOCATION_BUDGET.as_secs()
        ))),
    }
}

/// The Service Bus trigger metadata of a message invocation.
fn delivery(inv: &Invocation) -> builds::Delivery {
    let MessageMeta {
        message_id,
        delivery_count,
    } = MessageMeta::from_metadata(&inv.metadata);
    builds::Delivery {
        message_id,
        delivery_count,
    }
}

async fn invoke_unbounded(
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
            out.logs
                .extend(triggers::patch_tuesday(app).await?.log_lines());
        }
        FunctionName::BaseImageWatch => {
            trigger_value(&inv, name)?;
            out.logs
                .extend(triggers::base_image_watch(app).await?.log_lines());
        }
        FunctionName::BaseImageEvents => {
            let event = decode_value(trigger_value(&inv, name)?);
            let batch = match event {
                Value::Array(_) => event,
                other => Value::Array(vec![other]),
            };
            let body =
                serde_json::to_vec(&batch).map_err(|e| InvokeError::BadPayload(e.to_string()))?;
            match triggers::base_image_events(app, &body, None, None).await? {
                Ok(outcome) => {
                    out.logs.extend(outcome.log_lines());
                    out.return_value = outcome.reply();
                }
                Err(reason) => return Err(InvokeError::BadPayload(reason)),
            }
        }
        FunctionName::BuildRequests => {
            let text = message_text(trigger_value(&inv, name)?);
            let meta = delivery(&inv);
            let outcome = builds::build_requests(app, &text, &meta).await?;
            out.logs.extend(outcome.log_lines());
            out.return_value = outcome.return_value()?;
        }
        FunctionName::BuildPolls => {
            let text = message_text(trigger_value(&inv, name)?);
            let meta = delivery(&inv);
            let outcome = builds::build_polls(app, &text, &meta).await?;
            out.logs.extend(outcome.log_lines());
        }
        FunctionName::BuildSweeper => {
            trigger_value(&inv, name)?;
            out.logs
                .extend(builds::build_sweeper(app).await?.log_lines());
        }
        FunctionName::Retention => {
            trigger_value(&inv, name)?;
            let run = super::retention_function::run(app, false).await?;
            out.log(format!(
                "retention: run {} applied {} steps ({} failed)",
                run.run_id,
                run.applied.len(),
                run.failures().count()
            ));
            out.return_value = serde_json::to_value(&run).map_err(anyhow::Error::from)?;
        }
        FunctionName::EvidenceRecheck => {
            trigger_value(&inv, name)?;
            let outcome = super::evidence::recheck::recheck(app).await?;
            out.logs.extend(outcome.log_lines());
            out.return_value = serde_json::to_value(&outcome).map_err(anyhow::Error::from)?;
        }
        FunctionName::Api => {
            let req = trigger_value(&inv, name)?;
            let res = super::api::invoke_payload(app, req).await?;
            // Method and path only: a query string may carry a key (`?code=`).
            let decoded = super::wire::decode_value(req);
            let url = decoded.get("Url").and_then(Value::as_str).unwrap_or("/");
            let path = match url.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
                None => url,
            };
            let path = path.split('?').next().unwrap_or(path);
            out.log(format!(
                "api: {} {path} answered {}",
                decoded
                    .get("Method")
                    .and_then(Value::as_str)
                    .unwrap_or("GET"),
                res["statusCode"].as_str().unwrap_or("?")
            ));
            out.outputs.insert("res".into(), res);
        }
    }
    Ok(out)
}
