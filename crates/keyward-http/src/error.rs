//! The error contract of API.md §Errors: one [`ErrorCode`] enum decides the status, and
//! [`ApiError`] is the only error type that becomes a response.
//!
//! Rendering happens in two steps so that the body carries the request id:
//! [`ApiError::into_response`] sets the status and headers and attaches the error as a
//! response extension; the envelope middleware (`middleware.rs`) writes the JSON body.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::metric;
use keyward_ratelimit::Window;
use keyward_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Every error code of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The body is not JSON at all.
    InvalidRequest,
    /// A field or parameter is missing, unknown, mistyped or out of range.
    ValidationError,
    /// `x-api-key` missing, malformed, unknown, inactive or expired.
    InvalidApiKey,
    /// A signed request's signature is missing, made with an unknown key, or does not
    /// match its body (GitHub secret scanning).
    InvalidSignature,
    /// The key lacks a scope.
    InsufficientPermissions,
    /// Unknown route, or a key not in the caller's account.
    ResourceNotFound,
    /// Known path, wrong method.
    MethodNotAllowed,
    /// The change conflicts with the current state.
    Conflict,
    /// Body over the limit.
    PayloadTooLarge,
    /// Plan limit reached.
    RateLimitExceeded,
    /// A bug.
    ProcessingError,
    /// A dependency is unreachable.
    ServiceUnavailable,
    /// Gateway mode: the upstream could not be reached or broke the response.
    BadGateway,
    /// Gateway mode: the upstream did not answer in time.
    GatewayTimeout,
}

impl ErrorCode {
    /// The one place that maps a code to a status.
    #[must_use]
    pub const fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::ValidationError => StatusCode::BAD_REQUEST,
            Self::InvalidApiKey | Self::InvalidSignature => StatusCode::UNAUTHORIZED,
            Self::InsufficientPermissions => StatusCode::FORBIDDEN,
            Self::ResourceNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::ProcessingError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code a bare status maps to, for responses that were not built from an
    /// [`ApiError`] (axum's own 405, for instance).
    #[must_use]
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::InvalidApiKey,
            StatusCode::FORBIDDEN => Self::InsufficientPermissions,
            StatusCode::NOT_FOUND => Self::ResourceNotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimitExceeded,
            StatusCode::SERVICE_UNAVAILABLE => Self::ServiceUnavailable,
            StatusCode::BAD_GATEWAY => Self::BadGateway,
            StatusCode::GATEWAY_TIMEOUT => Self::GatewayTimeout,
            s if s.is_client_error() => Self::InvalidRequest,
            _ => Self::ProcessingError,
        }
    }
}

/// Why a key did not authenticate: `details.reason` of `INVALID_API_KEY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// No `x-api-key` header.
    Missing,
    /// Wrong shape or checksum.
    Malformed,
    /// No such live secret.
    NotFound,
    /// The key is disabled.
    Inactive,
    /// The key has expired.
    Expired,
    /// The key's account is suspended.
    AccountSuspended,
}

impl KeyRejection {
    /// The reason string on the wire and in metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::NotFound => "not_found",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
            Self::AccountSuspended => "account_suspended",
        }
    }
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    /// The contract's code.
    pub code: ErrorCode,
    /// The status: the code's ([`ErrorCode::status`]), except for the two refusals of
    /// a request's framing that API.md §Errors answers as `INVALID_REQUEST` with a
    /// status of their own (`408` for a body that stops arriving, `431` for too many
    /// headers).
    pub status: StatusCode,
    /// Human-readable text; never internals.
    pub message: String,
    /// Optional context (`field`, `reason`, `required`).
    pub details: Option<Value>,
    /// Seconds for the `retry-after` header of a `429`.
    pub retry_after_secs: Option<u64>,
    /// The cause, logged for 5xx, never sent.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Logged where it was found, so the envelope logs nothing more ([`ApiError::logged`]).
    pub logged: bool,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            message: message.into(),
            details: None,
            retry_after_secs: None,
            source: None,
            logged: false,
        }
    }

    /// Marks a 5xx as logged already: a failing readiness probe, repeated every few
    /// seconds for as long as the failure lasts, is logged once when it starts failing.
    #[must_use]
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    /// Adds `details`.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `400 INVALID_REQUEST`: the body is not JSON.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `431 INVALID_REQUEST`: more request headers than `limit`.
    #[must_use]
    pub fn too_many_headers(limit: usize) -> Self {
        let mut e = Self::invalid_request(format!("more than {limit} request headers"));
        e.status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        e
    }

    /// `408 INVALID_REQUEST`: the body did not arrive within the server's body timeout.
    #[must_use]
    pub fn body_timed_out() -> Self {
        let mut e = Self::invalid_request("the request body did not arrive in time");
        e.status = StatusCode::REQUEST_TIMEOUT;
        e
    }

    /// `400 VALIDATION_ERROR` naming the field.
    pub fn validation(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(ErrorCode::ValidationError, format!("{field}: {reason}"))
            .with_details(json!({ "field": field, "reason": reason }))
    }

    /// `401 INVALID_API_KEY` with its reason.
    #[must_use]
    pub fn invalid_key(reason: KeyRejection) -> Self {
        let message = match reason {
            KeyRejection::Missing => "the x-api-key header is missing",
            KeyRejection::Malformed => "the API key is malformed",
            KeyRejection::NotFound => "the API key is not valid",
            KeyRejection::Inactive => "the API key is inactive",
            KeyRejection::Expired => "the API key has expired",
            KeyRejection::AccountSuspended => "the API key's account is suspended",
        };
        Self::new(ErrorCode::InvalidApiKey, message)
            .with_details(json!({ "reason": reason.as_str() }))
    }

    /// `403 INSUFFICIENT_PERMISSIONS` listing the scopes that are lacking.
    #[must_use]
    pub fn forbidden(required: &[String]) -> Self {
        Self::new(
            ErrorCode::InsufficientPermissions,
            format!("this key lacks the scope(s): {}", required.join(", ")),
        )
        .with_details(json!({ "required": required }))
    }

    /// `404 RESOURCE_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceNotFound, message)
    }

    /// `404` for a path keyward does not serve.
    #[must_use]
    pub fn no_such_route() -> Self {
        Self::not_found("no such route")
    }

    /// `401 INVALID_SIGNATURE`: a signed request whose signature does not verify;
    /// `details.reason` says which check failed.
    pub fn bad_signature(message: impl Into<String>, reason: &str) -> Self {
        Self::new(ErrorCode::InvalidSignature, message).with_details(json!({ "reason": reason }))
    }

    /// `404` for a key that is missing or in another account: the same words either way.
    #[must_use]
    pub fn key_not_found() -> Self {
        Self::not_found("no API key with this key_id")
    }

    /// `404` for a subscription that is missing or another account's: the same words.
    #[must_use]
    pub fn webhook_not_found() -> Self {
        Self::not_found("no webhook with this webhook_id")
    }

    /// `409 CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `413 PAYLOAD_TOO_LARGE`.
    #[must_use]
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// `429 RATE_LIMIT_EXCEEDED` naming the `window` that refused (`minute`, `day`,
    /// `month` or `credits`), with `retry-after` where a time is known.
    #[must_use]
    pub fn rate_limited(window: Window, retry_after_secs: Option<u64>) -> Self {
        let message = match window {
            Window::Credits => "this key's credits are spent; retry after the refill",
            Window::Month => "the monthly quota is reached",
            Window::Minute | Window::Day => "a rate limit is reached; retry later",
        };
        let mut details = json!({ "window": window.as_str() });
        if let Some(secs) = retry_after_secs {
            details["retry_after_seconds"] = json!(secs);
        }
        let mut e = Self::new(ErrorCode::RateLimitExceeded, message).with_details(details);
        e.retry_after_secs = retry_after_secs;
        e
    }

    /// `403 INSUFFICIENT_PERMISSIONS` with `details.reason: ip_not_allowed`: the key may
    /// not be used from the client's address.
    #[must_use]
    pub fn ip_not_allowed() -> Self {
        Self::new(
            ErrorCode::InsufficientPermissions,
            "this key may not be used from this address",
        )
        .with_details(json!({ "reason": "ip_not_allowed" }))
    }

    /// `500 PROCESSING_ERROR`: the cause is logged, never sent.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut e = Self::new(
            ErrorCode::ProcessingError,
            "an internal error occurred; it has been logged with this request id",
        );
        e.source = Some(source.into());
        e
    }

    /// `503 SERVICE_UNAVAILABLE`.
    pub fn unavailable(source: Option<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut e = Self::new(
            ErrorCode::ServiceUnavailable,
            "a dependency is unavailable; retry later",
        );
        e.source = source;
        e
    }

    /// `502 BAD_GATEWAY`: the upstream could not be reached or broke the response; the
    /// cause is logged, never sent.
    pub fn bad_gateway(source: Option<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut e = Self::new(
            ErrorCode::BadGateway,
            "the upstream could not be reached or broke its response",
        );
        e.source = source;
        e
    }

    /// `504 GATEWAY_TIMEOUT`: no response head from the upstream within `timeout`
    /// (`--upstream-timeout`).
    #[must_use]
    pub fn gateway_timeout(timeout: std::time::Duration) -> Self {
        let seconds = timeout.as_secs_f64();
        Self::new(
            ErrorCode::GatewayTimeout,
            format!("the upstream sent no response within {seconds} s"),
        )
        .with_details(json!({ "timeout_seconds": seconds }))
    }

    /// `503 SERVICE_UNAVAILABLE` with `details.reason: draining`: the node is shutting down.
    #[must_use]
    pub fn draining() -> Self {
        Self::new(
            ErrorCode::ServiceUnavailable,
            "this node is shutting down; send requests to another",
        )
        .with_details(json!({ "reason": "draining" }))
    }

    /// `503 SERVICE_UNAVAILABLE` for storage that does not answer, counted in
    /// `keyward_storage_errors_total{kind="unavailable"}`.
    pub fn storage_unreachable(source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        metrics::counter!(metric::STORAGE_ERRORS, "kind" => metric::STORAGE_UNAVAILABLE)
            .increment(1);
        Self::unavailable(Some(source))
    }

    /// The JSON body of this error for a request id.
    #[must_use]
    pub fn body(&self, request_id: &str) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        json!({ "error": error, "request_id": request_id })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::key_not_found(),
            StoreError::Conflict(why) => Self::conflict(why),
            StoreError::Unavailable(source) => Self::storage_unreachable(source),
            e @ StoreError::Other(_) => {
                metrics::counter!(metric::STORAGE_ERRORS, "kind" => metric::STORAGE_OTHER)
                    .increment(1);
                Self::internal(e)
            }
        }
    }
}

/// The rendered error, carried from handler to envelope middleware.
#[derive(Debug, Clone)]
pub struct RenderedError(pub Arc<ApiError>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
            .extensions_mut()
            .insert(RenderedError(Arc::new(self)));
        response
    }
}

/// The documented error body, for OpenAPI.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
    /// The request's id; equals the `x-request-id` header.
    pub request_id: String,
}

/// The `error` member of [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Context such as `field`, `reason` or `required`.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}
