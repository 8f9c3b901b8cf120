//! The one middleware around every route: request id, error envelope, metering and
//! metrics. One layer rather than four keeps the hot path short.
//!
//! Order inside it: assign the request id → run the route → render any error as the
//! documented JSON with that id → add `x-request-id` and rate-limit headers → record the
//! request (history, usage, `last_used`) if its key authenticated → metrics.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use keyward_store::RequestRecord;
use time::OffsetDateTime;

use crate::auth::RequestContext;
use crate::error::{ApiError, ErrorCode, RenderedError};
use crate::state::AppState;

/// Longest user agent kept in the request history.
const MAX_USER_AGENT_CHARS: usize = 256;

/// A fresh request id.
#[must_use]
pub fn new_request_id() -> String {
    format!("req_{}", ulid::Ulid::generate())
}

/// The client's `x-request-id` if well formed (1 to 64 of `[A-Za-z0-9._-]`).
fn client_request_id(value: Option<&HeaderValue>) -> Option<String> {
    let bytes = value?.as_bytes();
    let ok = (1..=64).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    // The check above admits only ASCII, so this conversion cannot fail.
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The middleware itself; see the module docs.
pub async fn envelope(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let arrived = OffsetDateTime::now_utc();
    let request_id =
        client_request_id(req.headers().get("x-request-id")).unwrap_or_else(new_request_id);
    let ctx = Arc::new(RequestContext::new(request_id));
    req.extensions_mut().insert(ctx.clone());
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    // Kept as the header value (a cheap clone); made a string only if it is recorded.
    let user_agent = req.headers().get(header::USER_AGENT).cloned();

    let mut response = next.run(req).await;
    let status = response.status();
    if let Some(RenderedError(error)) = response.extensions_mut().remove::<RenderedError>() {
        log_error(
            &error,
            &ctx.request_id,
            &method,
            route.as_ref().map(MatchedPath::as_str),
        );
        response = with_json_body(response, &error.body(&ctx.request_id));
    } else if (status.is_client_error() || status.is_server_error()) && !is_json(&response) {
        // Safety net for responses axum builds itself (405 with `allow`, a 404 without a
        // route): same envelope, headers kept.
        let code = ErrorCode::for_status(status);
        let message = match code {
            ErrorCode::MethodNotAllowed => "this method is not allowed on this path".to_owned(),
            ErrorCode::ResourceNotFound => "no such route".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        let error = ApiError::new(code, message);
        response = with_json_body(response, &error.body(&ctx.request_id));
    }
    if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Some(rate) = ctx.rate() {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset_secs));
    }

    let latency = started.elapsed();
    // Only the standard methods name an endpoint: a client inventing methods on a known
    // path (a 405) must not mint new metric labels.
    let standard_method = matches!(
        method,
        Method::GET
            | Method::POST
            | Method::PATCH
            | Method::DELETE
            | Method::PUT
            | Method::HEAD
            | Method::OPTIONS
    );
    let endpoint = route
        .as_ref()
        .filter(|_| standard_method)
        .map(|r| format!("{method} {}", r.as_str()));
    if let (Some(caller), Some(endpoint)) = (ctx.caller(), &endpoint) {
        state.meter.record(RequestRecord {
            account_id: caller.key.account_id.clone(),
            time: arrived,
            method: method.to_string(),
            endpoint: endpoint.clone(),
            status: response.status().as_u16(),
            user_agent: user_agent.map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(MAX_USER_AGENT_CHARS)
                    .collect()
            }),
            key_id: caller.key.key_id.clone(),
            request_id: ctx.request_id.clone(),
            latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
        });
    }
    // Static label strings: no allocation per request for the metrics.
    let endpoint_label = endpoint.as_deref().map_or("unmatched", intern);
    let status_label = status_label(response.status());
    metrics::counter!("keyward_http_requests_total", "endpoint" => endpoint_label, "status" => status_label)
        .increment(1);
    metrics::histogram!("keyward_http_request_duration_seconds", "endpoint" => endpoint_label)
        .record(latency.as_secs_f64());
    response
}

/// The `'static` copy of an endpoint name. Endpoint names are route templates with a
/// standard method, so the set is small and fixed by the router: interning leaks a few
/// dozen short strings once.
fn intern(endpoint: &str) -> &'static str {
    static NAMES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(RwLock::default);
    if let Some(name) = names
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(endpoint)
    {
        return name;
    }
    let mut names = names.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(name) = names.get(endpoint) {
        return name;
    }
    let name: &'static str = Box::leak(endpoint.to_owned().into_boxed_str());
    names.insert(name);
    name
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

fn with_json_body(response: Response, body: &serde_json::Value) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

fn log_error(error: &ApiError, request_id: &str, method: &Method, route: Option<&str>) {
    if error.code.status() == StatusCode::INTERNAL_SERVER_ERROR
        || error.code.status() == StatusCode::SERVICE_UNAVAILABLE
    {
        let chain = error.source.as_ref().map(|s| error_chain(s.as_ref()));
        tracing::error!(
            request.id = request_id,
            http.method = %method,
            http.route = route.unwrap_or("-"),
            error.code = ?error.code,
            error.chain = chain.as_deref().unwrap_or("-"),
            "request failed"
        );
    } else {
        tracing::debug!(request.id = request_id, error.code = ?error.code, "request refused");
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_echoed_only_when_well_formed() {
        let ok = HeaderValue::from_static("abc-123_X.y");
        assert_eq!(client_request_id(Some(&ok)).as_deref(), Some("abc-123_X.y"));
        for bad in ["", "has space", "semi;colon", &"a".repeat(65)] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(client_request_id(Some(&v)).is_none(), "{bad:?}");
        }
        let odd = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(client_request_id(Some(&odd)).is_none());
        assert!(new_request_id().starts_with("req_"));
    }
}
