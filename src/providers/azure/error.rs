//! ARM errors, read into kiln's failure categories.
//!
//! ARM wraps errors as `{"error": {"code", "message", …}}` (Compute still
//! calls it CloudError, same shape). The status and the code decide the
//! category; the message is kept for people. 404 is not mapped here in any
//! special way: every caller decides what "not there" means for it.

use std::fmt;

use serde_json::Value;

use crate::domain::failure::{classify, FailureCategory};
use crate::ports::ProviderError;

/// A failed Azure call. Its text never holds a token: requests are not
/// echoed, only the status, the service's error code and message, and the
/// client request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmError {
    pub category: FailureCategory,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
    pub client_request_id: Option<String>,
}

impl ArmError {
    pub fn new(category: FailureCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            status: None,
            code: None,
            message: message.into(),
            client_request_id: None,
        }
    }

    pub fn with_request_id(mut self, id: &str) -> Self {
        self.client_request_id = Some(id.to_string());
        self
    }

    /// The error an unsuccessful reply stands for (see `ArmResponse::error`).
    pub fn from_reply(status: u16, body: &str, client_request_id: &str) -> Self {
        let doc: Option<Value> = serde_json::from_str(body).ok();
        let err = doc.as_ref().and_then(|d| d.get("error"));
        let code = err
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let message = err
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                // Not an ARM envelope (a gateway page, Service Bus XML): keep a short excerpt.
                let text: String = body.chars().take(300).collect();
                if text.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    text
                }
            });
        Self {
            category: category_for(Some(status), code.as_deref().unwrap_or(""), &message),
            status: Some(status),
            code,
            message,
            client_request_id: Some(client_request_id.to_string()),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.status {
            write!(f, "HTTP {s} ")?;
        }
        if let Some(c) = &self.code {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(id) = &self.client_request_id {
            write!(f, " (client request id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ArmError {}

impl From<ArmError> for ProviderError {
    fn from(e: ArmError) -> Self {
        ProviderError::new(e.category, e.to_string())
    }
}

/// The category of an ARM failure, from its status (when there is one), code and message.
pub fn category_for(status: Option<u16>, code: &str, message: &str) -> FailureCategory {
    let code_l = code.to_ascii_lowercase();
    if code_l == "requestdisallowedbypolicy" {
        return FailureCategory::Policy;
    }
    if code_l.contains("authorizationfailed")
        || code_l.contains("invalidauthenticationtoken")
        || code_l == "authenticationfailed"
    {
        return FailureCategory::Auth;
    }
    if code_l.contains("quotaexceeded") {
        return FailureCategory::Quota;
    }
    let from_text = || classify(&format!("{code} {message}"));
    match status {
        Some(401) => FailureCategory::Auth,
        Some(403) => match from_text() {
            FailureCategory::Internal => FailureCategory::Auth,
            other => other,
        },
        Some(408 | 429) => FailureCategory::Transient,
        Some(s) if s >= 500 => FailureCategory::Transient,
        // A request ARM rejects as malformed will be rejected again: a template or setting to fix.
        Some(400) => match from_text() {
            FailureCategory::Internal => FailureCategory::Validation,
            other => other,
        },
        _ => from_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reply {
        status: u16,
        body: String,
    }

    fn response(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
        }
    }

    impl ArmError {
        fn from_response(r: &Reply) -> Self {
            ArmError::from_reply(r.status, &r.body, "cid-1")
        }
    }

    #[test]
    fn arm_error_codes_become_categories() {
        let cases = [
            (403, "AuthorizationFailed", FailureCategory::Auth),
            (403, "RequestDisallowedByPolicy", FailureCategory::Policy),
            (401, "InvalidAuthenticationToken", FailureCategory::Auth),
            (409, "QuotaExceeded", FailureCategory::Quota),
            (429, "TooManyRequests", FailureCategory::Transient),
            (503, "ServiceUnavailable", FailureCategory::Transient),
            (400, "InvalidParameter", FailureCategory::Validation),
        ];
        for (status, code, want) in cases {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
            let e = ArmError::from_response(&response(status, &body));
            assert_eq!(e.category, want, "{status} {code}");
            assert_eq!(e.code.as_deref(), Some(code));
        }
    }

    #[test]
    fn an_error_names_status_code_message_and_request_id() {
        let e = ArmError::from_response(&response(
            403,
            r#"{"error":{"code":"AuthorizationFailed","message":"The client does not have authorization"}}"#,
        ));
        assert_eq!(
            e.to_string(),
            "HTTP 403 AuthorizationFailed: The client does not have authorization (client request id cid-1)"
        );
        let p: ProviderError = e.into();
        assert_eq!(p.category, FailureCategory::Auth);
    }

    #[test]
    fn a_body_that_is_not_an_arm_envelope_is_kept_short() {
        let e = ArmError::from_response(&response(502, &"x".repeat(1000)));
        assert_eq!(e.category, FailureCategory::Transient);
        assert_eq!(e.message.len(), 300);
        let e = ArmError::from_response(&response(500, ""));
        assert_eq!(e.message, "HTTP 500");
    }
}
