//! API keys (`KILN_API_KEYS`): every route but health needs one when keys
//! are set, in `Authorization: Bearer <key>` or `x-kiln-key`. The events
//! webhook is not checked here: Event Grid sends the events key
//! (`KILN_EVENTS_KEY`), which its handler checks.
//!
//! Keys are compared as SHA-256 digests in constant time, so neither the
//! bytes nor the length of a key leak through timing. A refused call is
//! logged with its method and path, never with what it sent.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ErrorCode};
use crate::app::App;
use crate::config::{ApiAccess, Secret};

/// The header a key may come in besides `Authorization`.
pub const KEY_HEADER: &str = "x-kiln-key";

/// Routes open to anyone: a load balancer's probe, and the webhook with its own key.
fn exempt(path: &str) -> bool {
    // The dashboard's page and assets hold no data (a browser opening the
    // page cannot send a key; the page asks for one and sends it on every
    // data call); its data route `/api/ui/in-use` needs the key.
    matches!(
        path,
        "/api/health" | "/api/events/base-image" | "/api/dashboard" | "/api/ui" | "/api/ui/"
    ) || path.starts_with("/api/ui/assets/")
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k.trim())
        });
    bearer.or_else(|| headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()))
}

/// Whether `given` is one of `keys`; every key is compared, so the time
/// taken does not say which one matched.
pub fn matches(keys: &[Secret], given: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    keys.iter()
        .fold(subtle::Choice::from(0), |found, k| {
            found | Sha256::digest(k.expose().as_bytes()).ct_eq(&given)
        })
        .into()
}

pub async fn require_key(State(app): State<App>, req: Request, next: Next) -> Response {
    let keys = match &app.settings.api_access {
        ApiAccess::Keys(keys) => keys,
        ApiAccess::Open | ApiAccess::OpenByChoice => return next.run(req).await,
    };
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let refusal = match presented(req.headers()) {
        Some(given) if matches(keys, given) => return next.run(req).await,
        Some(_) => "wrong API key",
        None => "no API key",
    };
    tracing::warn!(method = %req.method(), path = %req.uri().path(), "API call refused: {refusal}");
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        format!("{refusal}: send one of KILN_API_KEYS as `Authorization: Bearer <key>` or `{KEY_HEADER}: <key>` (the CLI sends KILN_API_KEY)"),
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"kiln\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_key_matches_and_nothing_else_does() {
        let keys = [
            Secret::new("old-key-0123456789"),
            Secret::new("new-key-0123456789"),
        ];
        assert!(matches(&keys, "old-key-0123456789"));
        assert!(matches(&keys, "new-key-0123456789"));
        for wrong in [
            "",
            "old-key-012345678",
            "old-key-01234567890",
            "NEW-KEY-0123456789",
        ] {
            assert!(!matches(&keys, wrong), "{wrong}");
        }
        assert!(!matches(&[], "anything"));
    }

    #[test]
    fn a_key_comes_as_a_bearer_token_or_in_x_kiln_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(KEY_HEADER, "k2".parse().unwrap());
        assert_eq!(presented(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, "bearer k1".parse().unwrap());
        assert_eq!(presented(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(presented(&h), Some("k2"));
    }
}
