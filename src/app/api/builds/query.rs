//! The query of `GET /api/builds`: filters and paging, each bad value
//! named with the form expected.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::api::error::ApiError;
use crate::store::port::BuildFilter;

/// Largest page of `GET /api/builds`.
/// (The stores return at most 10 000 a listing; callers count every build with it.)
const MAX_LIMIT: usize = 10_000;
/// Every state a build can be in, as `state` filters name them.
pub const STATES: [&str; 9] = [
    "queued",
    "submitting",
    "running",
    "validating",
    "publishing",
    "succeeded",
    "failed",
    "canceling",
    "canceled",
];

/// Query of `GET /api/builds`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; `parse_filter` reads it.
pub struct BuildsQuery {
    /// Only this pipeline's builds.
    pipeline: Option<String>,
    /// Only builds in this state.
    #[param(
        pattern = "^(queued|submitting|running|validating|publishing|succeeded|failed|canceling|canceled)$"
    )]
    state: Option<String>,
    /// Created at or after (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Created before (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// At most this many (1-10000, default 200).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// Skip this many (the `x-kiln-next-offset` of the previous page).
    #[param(minimum = 0)]
    offset: Option<u64>,
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::parameter(name, "an RFC 3339 time such as 2026-12-08T18:00:00Z", v))
}

/// The filter a query asks for; each bad value is named.
pub fn parse_filter(query: &[(String, String)]) -> Result<BuildFilter, ApiError> {
    let mut f = BuildFilter::default();
    for (k, v) in query {
        match k.as_str() {
            "pipeline" => f.pipeline = Some(v.clone()),
            "state" => {
                if !STATES.contains(&v.as_str()) {
                    return Err(ApiError::parameter(
                        "state",
                        &format!("one of {}", STATES.join(", ")),
                        v,
                    ));
                }
                f.state = Some(v.clone());
            }
            "since" => f.since = Some(parse_time("since", v)?),
            "until" => f.until = Some(parse_time("until", v)?),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => f.limit = Some(n),
                _ => {
                    return Err(ApiError::parameter(
                        "limit",
                        "a whole number from 1 to 10000",
                        v,
                    ))
                }
            },
            "offset" => match v.parse::<usize>() {
                Ok(n) => f.offset = n,
                Err(_) => {
                    return Err(ApiError::parameter(
                        "offset",
                        "a whole number of at least 0",
                        v,
                    ))
                }
            },
            // Unknown parameters are ignored, as HTTP APIs usually do.
            _ => {}
        }
    }
    if let (Some(s), Some(u)) = (f.since, f.until) {
        if u < s {
            return Err(ApiError::parameter(
                "until",
                "a time after `since`",
                &u.to_rfc3339(),
            ));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::api::error::ErrorCode;
    use axum::http::StatusCode;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_bad_filter_is_named_with_the_form_expected() {
        let f = parse_filter(&q(&[
            ("pipeline", "tiny"),
            ("state", "failed"),
            ("since", "2026-12-08T18:00:00+01:00"),
            ("limit", "5"),
            ("offset", "10"),
        ]))
        .unwrap();
        assert_eq!(f.pipeline.as_deref(), Some("tiny"));
        assert_eq!(f.state.as_deref(), Some("failed"));
        assert_eq!(f.since.unwrap().to_rfc3339(), "2026-12-08T17:00:00+00:00");
        assert_eq!((f.limit, f.offset), (Some(5), 10));
        for (pairs, parameter) in [
            (vec![("state", "done")], "state"),
            (vec![("since", "yesterday")], "since"),
            (vec![("until", "2026-13-01T00:00:00Z")], "until"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "10001")], "limit"),
            (vec![("offset", "-1")], "offset"),
            (
                vec![
                    ("since", "2026-12-08T00:00:00Z"),
                    ("until", "2026-12-07T00:00:00Z"),
                ],
                "until",
            ),
        ] {
            let e = parse_filter(&q(&pairs)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.code, ErrorCode::InvalidParameter);
            assert_eq!(e.body.parameter.as_deref(), Some(parameter), "{pairs:?}");
            assert!(
                e.body.error.starts_with(&format!("{parameter}: expected ")),
                "{}",
                e.body.error
            );
        }
    }
}
