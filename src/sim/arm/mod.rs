//! The ARM side of the simulator. Interface used by the simulator's server:
//!
//! ```ignore
//! let mut options = ArmSimOptions::new(public_url); // + scale, profile, page_size
//! options.scale = Some(scaled_clock);                // Retry-After in wall seconds
//! let world = ArmWorld::new(clock, options);
//! let routes: axum::Router = router(world.clone()); // ARM paths + /blob/... + /_sim/arm/...
//! ```
//!
//! ARM routes (`/subscriptions/…`, `/providers/…`) need a bearer token; the
//! blob routes a bearer token or a SAS; `/_sim/arm/…` nothing. The router has
//! no fallback, so it merges with the other surfaces' routers.
//!
//! | module | what |
//! |---|---|
//! | [`build`] | the scripted build: phase times and outcomes as a pure plan |
//! | [`world`] | the state behind every answer: templates, operations, versions, seeds, faults |
//! | [`image_builder`] | `Microsoft.VirtualMachineImages/imageTemplates` 2025-10-01 (checks in `template_check`, outputs in `distribute`) |
//! | `operations` | the status of every long-running operation, and list paging |
//! | [`gallery`] | Compute Gallery image versions 2025-03-03 |
//! | [`marketplace`] | marketplace image versions 2024-11-01 |
//! | [`resource_graph`] | Resource Graph 2024-04-01 and the KQL subset it evaluates |
//! | [`subscriptions`] | `GET /subscriptions/{id}`, readable or not |
//! | [`storage`] | the staging group's storage account and the blob endpoint; the log is rendered in `customization_log` |
//! | [`control`] | `/_sim/arm/...`: seeds, faults, the build profile, run events |
//!
//! Builds are a scripted fake, not the local provider: a run is a plan of
//! phase start times computed when it starts ([`build::Schedule`]), and every
//! answer is read from that plan at the world's clock. That keeps runs
//! deterministic, needs no root tools, and lets a 30-minute build pass in
//! 30 s at clock factor 60. The local provider already proves that real
//! images get built; this proves the wire: that kiln's adapters read AIB,
//! the gallery, the marketplace and Resource Graph as those services answer.
//!
//! All times are the world's [`Clock`] (sim time). `Retry-After` values are
//! whole seconds of wall time, at least 1: sim time divided by the factor of
//! [`ArmSimOptions::scale`] when the clock is scaled.

pub mod authorization;
pub mod build;
pub mod control;
mod customization_log;
mod distribute;
pub mod gallery;
pub mod image_builder;
mod inventory;
pub mod marketplace;
mod operations;
pub mod resource_graph;
pub mod storage;
pub mod subscriptions;
mod template_check;
pub mod world;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Json;
use serde_json::json;

use crate::ports::{Clock, ScaledClock};
pub use build::{BuildProfile, RunEvent};
use world::World;

#[derive(Debug, Clone)]
pub struct ArmSimOptions {
    /// The sim's own base URL (`http://127.0.0.1:PORT`), for links it hands out
    /// (`Azure-AsyncOperation`, `nextLink`, blob endpoints).
    pub public_url: String,
    /// The clock's scale, when it is a [`ScaledClock`]: `Retry-After` is sent
    /// in wall seconds. `None`: sim seconds are wall seconds.
    pub scale: Option<ScaledClock>,
    /// Phase (`runSubState`) durations of every build, in sim time (also settable through
    /// `PUT /_sim/arm/profile`).
    pub profile: BuildProfile,
    /// Items per page of gallery version lists and run outputs, small so
    /// that kiln's `nextLink` paging is exercised.
    pub page_size: usize,
}

impl ArmSimOptions {
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into().trim_end_matches('/').to_string(),
            scale: None,
            profile: BuildProfile::default(),
            page_size: 2,
        }
    }
}

pub struct ArmWorld {
    pub clock: Arc<dyn Clock>,
    pub options: ArmSimOptions,
    state: Mutex<World>,
}

impl ArmWorld {
    pub fn new(clock: Arc<dyn Clock>, options: ArmSimOptions) -> Arc<Self> {
        let state = Mutex::new(World::new(options.profile));
        Arc::new(Self {
            clock,
            options,
            state,
        })
    }

    /// The world, brought up to the clock's now.
    pub(crate) fn lock(&self) -> (MutexGuard<'_, World>, chrono::DateTime<chrono::Utc>) {
        let now = self.clock.now();
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        w.tick(now);
        (w, now)
    }

    /// Every `runState`/`runSubState` the last run of template `name` (any
    /// resource group) reached, with the sim time it reached it: a benchmark
    /// measures from these how late kiln saw a run end.
    pub fn template_events(&self, name: &str) -> Vec<RunEvent> {
        let (w, now) = self.lock();
        w.template_events(name, now)
    }

    /// Every gallery version a run distributed so far, in order.
    pub fn publications(&self) -> Vec<world::Publication> {
        let (w, _) = self.lock();
        w.publications.clone()
    }

    /// Adds a semantic fault (see [`world::Fault`]).
    pub fn add_fault(&self, fault: world::Fault) {
        let (mut w, _) = self.lock();
        w.faults.push(fault);
    }

    /// `Retry-After` for something `sim` away: whole seconds of sim time, at
    /// least 1. A kiln on the same scaled clock waits them in sim time too
    /// (its pauses are scaled), as it would wait ARM's seconds in Azure.
    pub(crate) fn retry_after(&self, sim: Duration) -> HeaderValue {
        let secs = sim.as_secs() + u64::from(sim.subsec_nanos() > 0);
        HeaderValue::from(secs.max(1))
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.options.public_url)
    }
}

/// ARM refuses an api-version the resource provider does not have. The sim
/// has exactly the one it implements for each surface, so a kiln adapter
/// that drifts to another is caught here, not in Azure.
pub(crate) fn api_version(req: &ArmRequest, supported: &str) -> Option<Answer> {
    let asked = req.query("api-version").unwrap_or("");
    (asked != supported).then(|| {
        arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{asked}' is invalid. The supported versions are '{supported}'."
            ),
        )
        .into()
    })
}

/// ARM's error envelope.
pub(crate) fn arm_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

/// ARM refuses a request without a bearer token. The token's value is
/// neither checked nor kept.
async fn require_bearer(request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    if !bearer {
        return arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        );
    }
    let mut r = next.run(request).await;
    // ARM's own id of the request, as kiln logs it next to its client id.
    if let Ok(v) = uuid::Uuid::new_v4().to_string().parse() {
        r.headers_mut().insert("x-ms-request-id", v);
    }
    r
}

pub fn router(world: Arc<ArmWorld>) -> axum::Router {
    let arm = axum::Router::new()
        .route("/subscriptions/{*rest}", any(dispatch))
        .route("/providers/{*rest}", any(dispatch))
        .layer(axum::middleware::from_fn(require_bearer))
        .with_state(world.clone());
    arm.merge(storage::blob_router(world.clone()))
        .merge(control::router(world))
}

/// One request as the ARM handlers see it: method, path segments (ARM paths
/// are case-insensitive, so handlers match them lower-cased), query, body.
pub(crate) struct ArmRequest {
    pub method: axum::http::Method,
    pub path: String,
    pub segments: Vec<String>,
    /// The segments as sent, for names.
    pub raw: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ArmRequest {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Segment `i` as sent.
    pub fn raw(&self, i: usize) -> &str {
        self.raw.get(i).map(String::as_str).unwrap_or("")
    }

    /// The lower-cased segment `i`.
    pub fn seg(&self, i: usize) -> &str {
        self.segments.get(i).map(String::as_str).unwrap_or("")
    }
}

async fn dispatch(State(world): State<Arc<ArmWorld>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 4 << 20).await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                format!("unreadable body: {e}"),
            )
        }
    };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let raw: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments = raw.iter().map(|s| s.to_ascii_lowercase()).collect();
    let query = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let req = ArmRequest {
        method: parts.method,
        path,
        segments,
        raw,
        query,
        body,
    };
    if req.query("api-version").is_none() {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let answer = image_builder::handle(&world, &req)
        .or_else(|| gallery::handle(&world, &req))
        .or_else(|| marketplace::handle(&world, &req))
        .or_else(|| resource_graph::handle(&world, &req))
        .or_else(|| storage::handle_arm(&world, &req))
        .or_else(|| subscriptions::handle(&world, &req))
        .or_else(|| authorization::handle(&world, &req));
    match answer {
        Some(Answer::Now(r)) => r,
        Some(Answer::Never) => std::future::pending().await,
        None => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("The simulator does not serve {} {}", req.method, req.path),
        ),
    }
}

/// A handler's answer: a response, or none ever (the lost-answer fault:
/// the work is done, the client times out).
pub(crate) enum Answer {
    Now(Response),
    Never,
}

impl<T: IntoResponse> From<T> for Answer {
    fn from(r: T) -> Self {
        Answer::Now(r.into_response())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod retry_after_tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::ports::ManualClock;

    fn world(factor: Option<u32>) -> Arc<ArmWorld> {
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let mut o = ArmSimOptions::new("http://127.0.0.1:1/");
        o.scale = factor.map(|factor| ScaledClock {
            start: t,
            anchor: t,
            factor,
        });
        ArmWorld::new(Arc::new(ManualClock::new(t)), o)
    }

    #[test]
    fn retry_after_is_whole_sim_seconds_and_never_zero() {
        // kiln on the same scaled clock waits these in sim time.
        let scaled = world(Some(60));
        let secs = |w: &ArmWorld, s: u64| w.retry_after(Duration::from_millis(s));
        assert_eq!(secs(&scaled, 1_800_000), "1800");
        assert_eq!(secs(&scaled, 1_500), "2", "1.5 s rounds up");
        assert_eq!(secs(&scaled, 0), "1");
        let unscaled = world(None);
        assert_eq!(secs(&unscaled, 90_000), "90");
        assert_eq!(unscaled.options.public_url, "http://127.0.0.1:1");
    }
}
