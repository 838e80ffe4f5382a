//! What one request may cost: the body's size and how long the client may
//! take to send it, and how long a handler may run.
//!
//! - Bodies: 64 KiB on the API's own routes (a build request is at most
//!   16 KiB, a pin or promote a few hundred bytes); 1 MiB on the events
//!   webhook, the largest batch Event Grid delivers (1 MB). Bigger is 413
//!   `payload_too_large`, decided from `Content-Length` before anything is
//!   read when the client sends one.
//! - The body must arrive within `KILN_HTTP_READ_TIMEOUT` (408
//!   `request_timeout`); the headers too (the server drops the connection:
//!   [`crate::host::http`]).
//! - A handler gets [`HANDLER_TIMEOUT`]: `POST /api/builds` waits up to 15 s
//!   for admission, so 30 s leaves room; beyond it the answer is 503
//!   `timeout`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::error::{ApiError, ErrorCode};

/// Largest body on the API's own routes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest body on the events webhook: one Event Grid batch.
pub const EVENTS_BODY_LIMIT: usize = 1024 * 1024;
/// Longest a handler may run.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body of at most `LIMIT` bytes, read in full.
pub struct Body<const LIMIT: usize>(pub Bytes);

/// Whether `e` or one of its causes is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for Body<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        match axum::body::to_bytes(req.into_body(), LIMIT).await {
            Ok(b) => Ok(Body(b)),
            Err(e) => {
                let e = e.into_inner();
                if caused_by::<http_body_util::LengthLimitError>(&*e) {
                    Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the request body is larger than this route accepts ({LIMIT} bytes)"
                        ),
                    ))
                } else if caused_by::<tower_http::timeout::TimeoutError>(&*e) {
                    Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorCode::RequestTimeout,
                        "the request body did not arrive in time; send it at once",
                    ))
                } else {
                    Err(ApiError::bad_request(format!(
                        "the request body could not be read: {e}"
                    )))
                }
            }
        }
    }
}
