//! The API's error bodies: `{ "code", "error", "parameter"? }`. `code` is
//! stable (callers branch on it); `error` says what to do; `parameter`
//! names the query or path parameter at fault.
//!
//! Rejections that axum or tower-http produce before a handler runs (an
//! unknown route, a wrong method, an oversize body, a timeout) have no JSON
//! body of their own: [`json_errors`] gives them one, so every error the
//! API answers has the same shape.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// What went wrong, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not what the route takes (see `error`).
    InvalidRequest,
    /// A query or path parameter has the wrong form (see `parameter`).
    InvalidParameter,
    PipelineNotFound,
    BuildNotFound,
    LogNotFound,
    DeadLetterNotFound,
    /// The pipeline has no schedule.
    ScheduleNotFound,
    /// A gallery definition or version (see `error`).
    GalleryNotFound,
    /// A version without evidence (SBOM, findings, provenance) kiln kept.
    EvidenceNotFound,
    /// No such route.
    NotFound,
    MethodNotAllowed,
    /// The build already ended: it cannot be canceled.
    ConflictTerminal,
    /// Only a failed or canceled build can be retried.
    ConflictNotRetryable,
    /// The dead letter was replayed already.
    ConflictReplayed,
    /// The request is well formed but cannot become what it asks for
    /// (admission refused it, a schedule does not parse).
    Refused,
    /// No API key, or a wrong one.
    Unauthorized,
    PayloadTooLarge,
    /// The client took too long to send its request.
    RequestTimeout,
    /// The server took too long to answer.
    Timeout,
    /// A dependency (the queue) is not reachable now; try again.
    Unavailable,
    /// A fault on kiln's side; the kiln log has the detail.
    Internal,
}

/// Every error the API answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub error: String,
    /// The parameter at fault, for `invalid_parameter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code,
                error: error.into(),
                parameter: None,
            },
        }
    }

    pub fn not_found(code: ErrorCode, error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, error)
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, error)
    }

    pub fn conflict(code: ErrorCode, error: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, error)
    }

    /// `parameter`: expected `expected`, got `got`.
    pub fn parameter(parameter: &str, expected: &str, got: &str) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameter,
            format!("{parameter}: expected {expected}, got `{got}`"),
        );
        e.body.parameter = Some(parameter.to_string());
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // Internal detail goes to the log, not to the caller.
        tracing::error!(error = ?e, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; see the kiln log",
        )
    }
}

/// The code and message for an error status that came without a JSON body.
fn for_status(status: StatusCode, text: &str) -> (ErrorCode, String) {
    let said = |fallback: &str| {
        if text.trim().is_empty() {
            fallback.to_string()
        } else {
            text.trim().to_string()
        }
    };
    match status {
        StatusCode::NOT_FOUND => (
            ErrorCode::NotFound,
            "no such route; GET /api/openapi.json lists them".into(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not take that method; GET /api/openapi.json lists them".into(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "the request body is larger than this route accepts".into(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time; send it at once".into(),
        ),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => (
            ErrorCode::Timeout,
            "kiln took too long to answer; try again (see the kiln log)".into(),
        ),
        s if s.is_server_error() => (
            ErrorCode::Internal,
            "internal error; see the kiln log".into(),
        ),
        // Extractor rejections (a body that is not JSON, a bad query string).
        _ => (ErrorCode::InvalidRequest, said("the request is not valid")),
    }
}

/// Gives every error answer without a JSON body one in [`ErrorBody`]'s shape.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is not worth echoing.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let (code, error) = for_status(status, &text);
    let mut out = (
        status,
        Json(ErrorBody {
            code,
            error,
            parameter: None,
        }),
    )
        .into_response();
    // Keep what the layer said beyond the body (`allow` on a 405).
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
