//! The platform's routes (API.md §Gateway): gateway mode, which forwards a matched
//! request to the upstream ([`forward`], the router's fallback), and forward auth, which
//! answers a gateway the platform already runs ([`authorize`]). Both match the same
//! routes and run the same checks (`Caller::require_route`), and both record the request
//! under the route's template (`RequestContext::set_route`).

use std::net::IpAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequestParts as _, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};

use crate::auth::Caller;
use crate::context::{Forwarded, RequestContext};
use crate::error::ApiError;
use crate::gateway::upstream::{prepare_request, strip_hop_by_hop};
use crate::gateway::{Route, UpstreamError, UpstreamOutcome, set_identity};
use crate::state::AppState;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// Authenticates the caller of `route` and runs the route's checks.
async fn check(
    state: &AppState,
    parts: &mut Parts,
    route: &Route,
    method: Method,
) -> Result<Caller, ApiError> {
    // Recorded under the platform's route from here on: history and usage once the key
    // authenticates, metrics whatever happens.
    RequestContext::of(parts).set_route(method, route.template);
    let caller = Caller::from_request_parts(parts, state).await?;
    caller
        .require_route(state, &route.scopes, route.cost)
        .await?;
    Ok(caller)
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    RequestContext::of(parts).peer.map(|addr| addr.ip())
}

/// Forwards a request of a platform's route to the upstream (gateway mode); any other
/// path keyward does not serve is a `404`. The router's fallback, so keyward's own
/// paths never reach it.
pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    let found = state.gateway.as_ref().and_then(|gateway| {
        let upstream = gateway.upstream.as_ref()?;
        let route = gateway.routes.find(req.method(), req.uri().path())?;
        Some((upstream, route))
    });
    let Some((upstream, route)) = found else {
        return ApiError::no_such_route().into_response();
    };
    let (mut parts, body) = req.into_parts();
    let peer = peer(&parts);
    let method = parts.method.clone();
    let caller = match check(&state, &mut parts, route, method).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Some(limit) = upstream.body_limit() {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return ApiError::payload_too_large(limit).into_response();
        }
    }
    prepare_request(&mut parts.headers, caller.request_id(), peer);
    set_identity(&mut parts.headers, &caller.record);
    let target = parts.uri.clone();
    let started = Instant::now();
    let sent = upstream
        .send(&target, Request::from_parts(parts, body))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    match sent {
        Ok(response) => {
            route.record_upstream(
                UpstreamOutcome::of_status(response.status().as_u16()),
                seconds,
            );
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(Forwarded);
            Response::from_parts(parts, Body::new(body))
        }
        Err(UpstreamError::TimedOut(after)) => {
            route.record_upstream(UpstreamOutcome::TimedOut, seconds);
            ApiError::gateway_timeout(after).into_response()
        }
        Err(UpstreamError::Unreachable(e)) => {
            route.record_upstream(UpstreamOutcome::Unreachable, seconds);
            ApiError::bad_gateway(Some(e)).into_response()
        }
        Err(UpstreamError::TooLarge(limit)) => ApiError::payload_too_large(limit).into_response(),
    }
}

/// Whether a request a gateway holds may go on to the platform (forward auth)
///
/// API.md §Gateway: `200` with the identity headers to copy upstream, or the error the
/// gateway should answer instead. Any method, on `/authorize` and `/authorize/{path}`; the request is
/// `x-forwarded-method` + `x-forwarded-uri` (Traefik, Caddy), or `x-original-method` +
/// `x-original-uri` (nginx `auth_request`), else this request's method and its path
/// after `/authorize` (Envoy `ext_authz` with a path prefix).
#[utoipa::path(get, path = "/authorize", operation_id = "authorize", tag = "gateway",
    params(
        ("x-forwarded-method" = Option<String>, Header, description = "The original method (Traefik, Caddy); or x-original-method (nginx)"),
        ("x-forwarded-uri" = Option<String>, Header, description = "The original path and query (Traefik, Caddy); or x-original-uri (nginx)"),
    ),
    responses((status = 200, description = "Allowed. Any method works, on /authorize and on /authorize/{path} (the original path after the prefix, when no header names it). Copy the x-keyward-* headers to the upstream request",
        headers(
            ("x-keyward-account-id" = String, description = "The caller's account"),
            ("x-keyward-key-id" = String, description = "The caller's key"),
            ("x-keyward-scopes" = String, description = "The key's scopes, comma-separated"),
        ))),
    security(("api_key" = [])))]
pub fn authorize(
    State(state): State<AppState>,
    req: Request,
) -> impl Future<Output = Response> + Send {
    // Not an `async fn`: its future would keep room for the request and for its parts (an
    // `async fn` moves its arguments into locals), past 1 KiB, which the router's box of
    // it would then allocate outside the allocator's fast path.
    let (mut parts, _body) = req.into_parts();
    async move {
        let Some(gateway) = state.gateway.as_ref() else {
            return ApiError::no_such_route().into_response();
        };
        let Some((method, path)) = original_request(&parts) else {
            return ApiError::no_such_route().into_response();
        };
        let Some(route) = gateway.routes.find(&method, &path) else {
            return ApiError::no_such_route().into_response();
        };
        let caller = match check(&state, &mut parts, route, method).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        };
        let mut response = StatusCode::OK.into_response();
        set_identity(response.headers_mut(), &caller.record);
        response
    }
}

/// The method and path of the request a gateway asks about, or `None` if its headers
/// do not name a valid one.
fn original_request(parts: &Parts) -> Option<(Method, String)> {
    let headers = &parts.headers;
    let named = |first: &HeaderName, second: &HeaderName| {
        headers.get(first).or_else(|| headers.get(second))
    };
    let method = match named(&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD) {
        Some(value) => Method::from_bytes(value.as_bytes()).ok()?,
        None => parts.method.clone(),
    };
    let path = match named(&X_FORWARDED_URI, &X_ORIGINAL_URI) {
        Some(value) => {
            let uri = value.to_str().ok()?;
            let path = uri.split(['?', '#']).next().unwrap_or_default();
            path.starts_with('/').then(|| path.to_owned())?
        }
        None => match parts.uri.path().strip_prefix("/authorize") {
            Some("") | None => "/".to_owned(),
            Some(rest) => rest.to_owned(),
        },
    };
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;

    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = HttpRequest::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_original_request_comes_from_traefiks_then_nginxs_headers_then_the_path() {
        /// Method, URI and headers of the request to `/authorize`, and the request found.
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case<'_>] = &[
            (
                "GET",
                "/authorize",
                &[
                    ("x-forwarded-method", "POST"),
                    ("x-forwarded-uri", "/v1/videos?draft=1#top"),
                    ("x-original-method", "DELETE"),
                    ("x-original-uri", "/v1/other"),
                ],
                Some(("POST", "/v1/videos")),
            ),
            (
                "GET",
                "/authorize",
                &[
                    ("x-original-method", "PUT"),
                    ("x-original-uri", "/v1/a/b?c"),
                ],
                Some(("PUT", "/v1/a/b")),
            ),
            (
                "PATCH",
                "/authorize/v1/videos/7",
                &[],
                Some(("PATCH", "/v1/videos/7")),
            ),
            ("GET", "/authorize", &[], Some(("GET", "/"))),
            (
                "GET",
                "/authorize",
                &[("x-forwarded-uri", "v1/no-slash")],
                None,
            ),
            (
                "GET",
                "/authorize",
                &[("x-forwarded-method", "BAD METHOD")],
                None,
            ),
        ];
        for (method, uri, headers, expected) in cases {
            let found = original_request(&parts(method, uri, headers));
            let found = found.as_ref().map(|(m, p)| (m.as_str(), p.as_str()));
            assert_eq!(found, *expected, "{method} {uri} {headers:?}");
        }
    }
}
