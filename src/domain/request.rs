//! Build requests: one message schema for Service Bus, the HTTP API and the
//! CLI, and the admission decision that turns a request into a build.
//!
//! ```json
//! { "pipeline": "ubuntu-2204-baseline", "reason": "CVE-2026-1234",
//!   "requestedBy": "ci@contoso", "idempotencyKey": "pr-4711" }
//! ```
//! `trigger` is set by kiln's own functions (`schedule`, `baseImage`);
//! messages from outside leave it out and are manual.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use super::build::Trigger;
use super::pipeline::{VersionScheme, Versioning};
use super::version::ImageVersion;

/// Largest request body accepted, in bytes; anything bigger is dead-lettered.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildRequest {
    pub pipeline: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub requested_by: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub trigger: Option<Trigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("message is {0} bytes; the limit is {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("message is not a build request: {0}")]
    Malformed(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl BuildRequest {
    /// Parses a message body, checking size and fields.
    pub fn parse(body: &[u8]) -> Result<BuildRequest, RequestError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge(body.len()));
        }
        let req: BuildRequest =
            serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
        if req.pipeline.trim().is_empty() {
            return Err(RequestError::Invalid {
                field: "pipeline",
                message: "expected a pipeline name".into(),
            });
        }
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() || k.len() > 200 {
                return Err(RequestError::Invalid {
                    field: "idempotencyKey",
                    message: "expected 1 to 200 characters".into(),
                });
            }
        }
        Ok(req)
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger.clone().unwrap_or(Trigger::Manual)
    }

    /// The idempotency key: the trigger's own (schedule cycle, base-image
    /// version), else the caller's, else the message id.
    pub fn key(&self, message_id: &str) -> String {
        match self.trigger() {
            Trigger::Schedule { cycle } => format!("schedule:{}:{cycle}", self.pipeline),
            Trigger::BaseImage { version } => format!("base:{}:{version}", self.pipeline),
            Trigger::Manual => match &self.idempotency_key {
                Some(k) => format!("manual:{}:{k}", self.pipeline),
                None => format!("message:{message_id}"),
            },
        }
    }
}

/// What admission knows when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionView {
    /// A build already admitted under the same key.
    pub existing_for_key: Option<String>,
    /// The pipeline's oldest build that has not started yet.
    pub queued_build: Option<String>,
    /// The pipeline's automatic triggers are paused by the circuit breaker.
    pub breaker_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Admission {
    /// The key was seen before: the same build answers.
    Existing { build: String },
    /// The pipeline already has a build waiting to start; this request joins it.
    Coalesced { build: String },
    /// A new build is to be created.
    New,
    /// Automatic request refused while the circuit breaker is open.
    Paused { reason: String },
}

pub fn admit(trigger: &Trigger, view: &AdmissionView) -> Admission {
    if let Some(id) = &view.existing_for_key {
        return Admission::Existing { build: id.clone() };
    }
    if view.breaker_open && trigger.is_automatic() {
        return Admission::Paused {
            reason: "automatic builds are paused by the circuit breaker after consecutive failures; a manual build that succeeds re-arms it".into(),
        };
    }
    match &view.queued_build {
        Some(id) => Admission::Coalesced { build: id.clone() },
        None => Admission::New,
    }
}

/// Picks the version of a new build.
///
/// `taken` holds every version already published or assigned to another
/// build of the same image definition, failed ones included: a failed
/// build may have published partially, so its number is never reused.
pub fn next_version(
    versioning: &Versioning,
    taken: &[ImageVersion],
    source_version: Option<&str>,
    today: DateTime<Utc>,
) -> Result<ImageVersion, String> {
    match versioning.scheme {
        VersionScheme::Latest => {
            let major = versioning.major;
            Ok(taken
                .iter()
                .filter(|v| v.major == major)
                .max()
                .map(|v| v.next_patch())
                .unwrap_or(ImageVersion::new(major, 0, 0)))
        }
        VersionScheme::Source => {
            let raw = source_version
                .ok_or("the source scheme needs the source's exact version, which is not known")?;
            let v: ImageVersion = raw.parse().map_err(|e| format!("source version: {e}"))?;
            if taken.contains(&v) {
                return Err(format!("version {v} from the source already exists"));
            }
            Ok(v)
        }
        VersionScheme::Date => {
            let major = today.year() as u32;
            let minor = today.month() * 100 + today.day();
            Ok(taken
                .iter()
                .filter(|v| v.major == major && v.minor == minor)
                .max()
                .map(|v| v.next_patch())
                .unwrap_or(ImageVersion::new(major, minor, 0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn v(s: &str) -> ImageVersion {
        s.parse().unwrap()
    }

    #[test]
    fn keys_come_from_the_trigger_then_the_caller_then_the_message() {
        let mut r = BuildRequest::parse(br#"{"pipeline":"p"}"#).unwrap();
        assert_eq!(r.key("m-1"), "message:m-1");
        r.idempotency_key = Some("pr-4711".into());
        assert_eq!(r.key("m-1"), "manual:p:pr-4711");
        r.trigger = Some(Trigger::Schedule {
            cycle: "2026-12".into(),
        });
        assert_eq!(r.key("m-1"), "schedule:p:2026-12");
        r.trigger = Some(Trigger::BaseImage {
            version: "22.04.202612010".into(),
        });
        assert_eq!(r.key("m-1"), "base:p:22.04.202612010");
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert!(matches!(
            BuildRequest::parse(b"not json"),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            BuildRequest::parse(br#"{"pipeline":"p","colour":"red"}"#),
            Err(RequestError::Malformed(m)) if m.contains("colour")
        ));
        assert!(matches!(
            BuildRequest::parse(br#"{"pipeline":" "}"#),
            Err(RequestError::Invalid {
                field: "pipeline",
                ..
            })
        ));
        let big = format!(
            r#"{{"pipeline":"p","reason":"{}"}}"#,
            "x".repeat(MAX_REQUEST_BYTES)
        );
        assert!(matches!(
            BuildRequest::parse(big.as_bytes()),
            Err(RequestError::TooLarge(_))
        ));
    }

    #[test]
    fn a_repeated_key_returns_the_existing_build_even_when_paused() {
        let view = AdmissionView {
            existing_for_key: Some("b1".into()),
            queued_build: Some("b2".into()),
            breaker_open: true,
        };
        let t = Trigger::Schedule { cycle: "c".into() };
        assert_eq!(admit(&t, &view), Admission::Existing { build: "b1".into() });
    }

    #[test]
    fn the_breaker_pauses_automatic_requests_but_not_manual_ones() {
        let view = AdmissionView {
            existing_for_key: None,
            queued_build: None,
            breaker_open: true,
        };
        assert!(matches!(
            admit(
                &Trigger::BaseImage {
                    version: "1".into()
                },
                &view
            ),
            Admission::Paused { .. }
        ));
        assert_eq!(admit(&Trigger::Manual, &view), Admission::New);
    }

    #[test]
    fn requests_coalesce_into_a_queued_build() {
        let view = AdmissionView {
            existing_for_key: None,
            queued_build: Some("b7".into()),
            breaker_open: false,
        };
        assert_eq!(
            admit(&Trigger::Manual, &view),
            Admission::Coalesced { build: "b7".into() }
        );
    }

    #[test]
    fn latest_scheme_takes_the_next_patch_in_numeric_order() {
        let latest = Versioning {
            scheme: VersionScheme::Latest,
            major: 1,
        };
        let today = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        assert_eq!(next_version(&latest, &[], None, today).unwrap(), v("1.0.0"));
        let taken = [v("1.0.9"), v("1.0.10"), v("2.0.0")];
        assert_eq!(
            next_version(&latest, &taken, None, today).unwrap(),
            v("1.0.11")
        );
    }

    #[test]
    fn source_and_date_schemes() {
        let today = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let source = Versioning {
            scheme: VersionScheme::Source,
            major: 1,
        };
        assert_eq!(
            next_version(&source, &[], Some("22.04.202611010"), today).unwrap(),
            v("22.4.202611010")
        );
        assert!(next_version(&source, &[], Some("latest"), today).is_err());
        let date = Versioning {
            scheme: VersionScheme::Date,
            major: 1,
        };
        assert_eq!(
            next_version(&date, &[v("2026.1127.0")], None, today).unwrap(),
            v("2026.1127.1")
        );
    }
}
