//! `GET /api/builds/{id}/log`: a build attempt's customization log, and
//! the tail a build's detail shows.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;

use super::find;
use crate::app::api::error::{ApiError, ErrorBody, ErrorCode};
use crate::app::api::ApiResult;
use crate::app::App;
use crate::domain::build::Build;

/// Lines of the customization log in a build's detail.
pub const LOG_TAIL_LINES: usize = 20;

/// The end of `text`: its last `lines` lines.
pub fn tail(text: &str, lines: usize) -> String {
    let start = text
        .trim_end_matches('\n')
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    text[start..].to_string()
}

/// The log of `attempt` from `offset`: the copy kept when the attempt's
/// template was retired, else the provider's.
pub async fn read_log(
    app: &App,
    b: &Build,
    attempt: u32,
    offset: u64,
) -> Result<Vec<u8>, ApiError> {
    let template = crate::domain::build::template_name(&b.id, attempt);
    // The kept copy outlives the provider's (in Azure it goes with the
    // staging resource group).
    let kept = app.store.log(&template).await?.map(|all| {
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        all[from..].to_vec()
    });
    match kept {
        Some(bytes) => Ok(bytes),
        None => app
            .builder
            .customization_log(&template, offset)
            .await
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| {
                ApiError::not_found(
                    ErrorCode::LogNotFound,
                    format!("no customization log for attempt {attempt} of build {} (not started yet, or the provider keeps it elsewhere)", b.id),
                )
            }),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; `log` reads it by hand to name a bad value.
pub struct LogQuery {
    /// Attempt (default: the current one).
    #[param(minimum = 1)]
    attempt: Option<u32>,
    /// Byte offset to read from (`x-kiln-log-offset` of the previous read).
    offset: Option<u64>,
}

/// The customization log of a build's attempt, as text from `offset`;
/// `x-kiln-log-offset` says where to continue, so a client can follow a
/// running build.
#[utoipa::path(get, path = "/api/builds/{id}/log", tag = "builds",
    params(("id" = String, Path, description = "Build id"), LogQuery),
    responses(
        (status = 200, description = "Log text", content_type = "text/plain", body = String,
            headers(
                ("x-kiln-log-offset" = String, description = "The offset to continue from"),
                ("x-kiln-build-state" = String, description = "The build's state now"))),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 404, description = "No such build, attempt or log", body = ErrorBody),
    ))]
pub async fn log(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let b = find(&app, &id).await?;
    let mut attempt = b.attempt;
    let mut offset = 0u64;
    for (k, v) in &q {
        match k.as_str() {
            "attempt" => {
                attempt = v.parse().map_err(|_| {
                    ApiError::parameter("attempt", "a whole number of at least 1", v)
                })?
            }
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::parameter("offset", "a whole number of bytes", v))?
            }
            _ => {}
        }
    }
    if attempt == 0 || attempt > b.attempt {
        return Err(ApiError::not_found(
            ErrorCode::LogNotFound,
            format!("build {id} has attempts 1 to {}", b.attempt),
        ));
    }
    let text = read_log(&app, &b, attempt, offset).await?;
    // Offsets count bytes: a client continues exactly where this read ended.
    let next = offset + text.len() as u64;
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8".to_string()),
            ("x-kiln-log-offset", next.to_string()),
            ("x-kiln-build-state", b.state.name().to_string()),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_is_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }
}
