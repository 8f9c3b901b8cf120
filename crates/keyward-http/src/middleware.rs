//! The one middleware around every route: request id, error envelope, metering and
//! metrics. One layer rather than four keeps the hot path short.
//!
//! Order inside it: assign the request id → refuse more than [`MAX_REQUEST_HEADERS`]
//! headers, or run the route (a panic in it becomes a `500`) → render any error as the
//! documented JSON with that id → add `x-request-id`, rate-limit headers and, on
//! `/v1/*`, `cache-control: no-store` → record the request (history, usage,
//! `last_used`) if its key authenticated → metrics → the access-log line, when
//! `--access-log` asks for one.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use foldhash::HashMap;
use keyward_core::{RequestId, metric};
use keyward_store::RequestRecord;
use keyward_workers::Meter;
use metrics::{Counter, Histogram};
use time::OffsetDateTime;
use tower::{Layer, Service};

use crate::context::{Forwarded, PeerAddr, RequestContext, new_request_id};
use crate::error::{ApiError, ErrorCode, RenderedError};
use crate::state::AppState;

// Header names made once: inserting a name given as a `&str` that is not a standard
// header copies it into a new allocation on every response.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Most request headers keyward answers (API.md §Errors); a request with more gets
/// `431 INVALID_REQUEST`. The server lets through more than this, so that this check,
/// and its JSON, is the one that answers.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// Whether responses to `path` carry `cache-control: no-store`: every answer of the
/// API proper, success or error (API.md §Authentication), since any of them may hold
/// a secret or an account's data.
fn never_cached(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/operator/v1/")
}

/// Longest user agent kept in the request history.
const MAX_USER_AGENT_CHARS: usize = 256;

/// The user agent as the history keeps it: text, at most [`MAX_USER_AGENT_CHARS`]
/// characters, copied once into a string of its own size.
fn kept_user_agent(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX_USER_AGENT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.into_owned(),
    }
}

/// The client's `x-request-id` if well formed (1 to 64 of `[A-Za-z0-9._-]`).
fn client_request_id(value: Option<&HeaderValue>) -> Option<RequestId> {
    RequestId::parse(value?.as_bytes())
}

/// The envelope around every route; see the module docs.
///
/// Written as a tower layer rather than with `axum::middleware::from_fn`, which boxes a
/// clone of the inner service and two futures per request: callgrind counts 7 % fewer
/// instructions per `GET /healthz` for this one. Its future wraps the route's, so the
/// layer itself boxes nothing.
#[derive(Clone)]
pub struct EnvelopeLayer {
    meter: Arc<Meter>,
    access_log: bool,
    clock_offset: time::Duration,
}

impl EnvelopeLayer {
    /// The layer, recording requests into the state's meter and writing the access log
    /// if the state asks for it.
    #[must_use]
    pub fn new(state: &AppState) -> Self {
        Self {
            meter: Arc::clone(&state.meter),
            access_log: state.access_log,
            clock_offset: state.clock_offset,
        }
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            meter: Arc::clone(&self.meter),
            access_log: self.access_log,
            clock_offset: self.clock_offset,
        }
    }
}

/// The service of [`EnvelopeLayer`].
#[derive(Clone)]
pub struct Envelope<S> {
    inner: S,
    meter: Arc<Meter>,
    access_log: bool,
    clock_offset: time::Duration,
}

impl<S> Service<Request> for Envelope<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let arrived = OffsetDateTime::now_utc() + self.clock_offset;
        let request_id =
            client_request_id(req.headers().get(X_REQUEST_ID)).unwrap_or_else(new_request_id);
        let peer = req
            .extensions_mut()
            .remove::<PeerAddr>()
            .map(|PeerAddr(addr)| addr);
        let ctx = Arc::new(RequestContext::new(request_id, arrived, peer));
        req.extensions_mut().insert(ctx.clone());
        let in_flight = InFlight {
            started,
            ctx,
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            // Kept as the header value (a cheap clone); made a string only if it is
            // recorded.
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            no_store: never_cached(req.uri().path()),
            meter: Arc::clone(&self.meter),
            access_log: self.access_log,
        };
        let route = if req.headers().len() > MAX_REQUEST_HEADERS {
            Route::TooManyHeaders
        } else {
            // Called here, not in the future: `poll_ready` was passed on to this service.
            // A panic while making the future is one of the route's too.
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                Ok(future) => Route::Running { future },
                Err(panic) => Route::Panicked {
                    message: Some(panic_message(panic.as_ref())),
                },
            }
        };
        EnvelopeFuture {
            route,
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's future, then the envelope's work on its response.
    pub struct EnvelopeFuture<F> {
        #[pin]
        route: Route<F>,
        in_flight: Option<InFlight>,
    }
}

pin_project_lite::pin_project! {
    /// Where the request is: in its route, or refused (or failed) before it.
    #[project = RouteProj]
    enum Route<F> {
        Running { #[pin] future: F },
        TooManyHeaders,
        Panicked { message: Option<String> },
        Done,
    }
}

impl<F> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = match this.route.as_mut().project() {
            RouteProj::Running { future } => {
                // Unwinding costs nothing until a panic: a bug in one request becomes
                // that request's `500`, and the connection and process carry on.
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(response))) => response,
                    Err(panic) => ApiError::internal(panic_message(panic.as_ref())).into_response(),
                }
            }
            RouteProj::TooManyHeaders => {
                ApiError::too_many_headers(MAX_REQUEST_HEADERS).into_response()
            }
            RouteProj::Panicked { message } => {
                ApiError::internal(message.take().unwrap_or_default()).into_response()
            }
            // Polled again after completing, which futures must not be.
            RouteProj::Done => return Poll::Pending,
        };
        this.route.set(Route::Done);
        let Some(in_flight) = this.in_flight.take() else {
            return Poll::Pending;
        };
        Poll::Ready(Ok(in_flight.finish(response)))
    }
}

/// What a panic said, for the log line of its `500` (never for the client).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    format!("the handler panicked: {said}")
}

/// What the envelope knows of a request while its route runs.
struct InFlight {
    started: Instant,
    ctx: Arc<RequestContext>,
    method: Method,
    route: Option<MatchedPath>,
    user_agent: Option<HeaderValue>,
    no_store: bool,
    meter: Arc<Meter>,
    access_log: bool,
}

impl InFlight {
    fn finish(self, mut response: Response) -> Response {
        let Self {
            started,
            ctx,
            method,
            route,
            user_agent,
            no_store,
            meter,
            access_log,
        } = self;
        let status = response.status();
        // The upstream's answer keeps its own body and caching (gateway mode).
        let forwarded = response.extensions().get::<Forwarded>().is_some();
        // The platform's route, for a request of gateway mode or forward auth; else
        // keyward's own.
        let route_name = match ctx.route() {
            Some((_, template)) => Some(*template),
            None => route.as_ref().map(MatchedPath::as_str),
        };
        if let Some(RenderedError(error)) = response.extensions_mut().remove::<RenderedError>() {
            log_error(&error, ctx.request_id.as_str(), &method, route_name);
            response = with_json_body(response, &error.body(ctx.request_id.as_str()));
        } else if (status.is_client_error() || status.is_server_error())
            && !forwarded
            && !is_json(&response)
        {
            // Safety net for responses axum builds itself (405 with `allow`, a 404
            // without a route): same envelope, headers kept.
            let code = ErrorCode::for_status(status);
            let message = match code {
                ErrorCode::MethodNotAllowed => "this method is not allowed on this path".to_owned(),
                ErrorCode::ResourceNotFound => "no such route".to_owned(),
                _ => status.canonical_reason().unwrap_or("error").to_owned(),
            };
            let error = ApiError::new(code, message);
            response = with_json_body(response, &error.body(ctx.request_id.as_str()));
        }
        if let Ok(value) = HeaderValue::from_str(ctx.request_id.as_str()) {
            response.headers_mut().insert(X_REQUEST_ID, value);
        }
        if no_store && !forwarded {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(rate) = ctx.rate() {
            let headers = response.headers_mut();
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(rate.limit));
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(rate.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(rate.reset_secs));
        }

        let latency = started.elapsed();
        let endpoint = match ctx.route() {
            Some((method, template)) => Endpoint::of(method, template),
            None => route_name.and_then(|r| Endpoint::of(&method, r)),
        };
        // One branch when the access log is off.
        if access_log {
            log_access(
                &ctx,
                &method,
                route_name,
                &response,
                latency,
                user_agent.as_ref(),
            );
        }
        // History and usage: under the platform's endpoint a validate call names (metrics
        // keep validate's own route: the client chose that name), else under the route.
        let recorded = match ctx.recorded_as() {
            Some(r) => Some((
                Cow::Owned(r.method.clone()),
                Cow::Owned(r.endpoint.clone()),
                r.status,
            )),
            None => endpoint.map(|e| {
                (
                    Cow::Borrowed(e.method),
                    Cow::Borrowed(e.name),
                    response.status().as_u16(),
                )
            }),
        };
        if let (Some(caller), Some((method, endpoint, status))) = (ctx.caller(), recorded) {
            meter.record(RequestRecord {
                account_id: caller.key.account_id.clone(),
                time: ctx.arrived,
                method,
                endpoint,
                status,
                user_agent: user_agent.map(|v| kept_user_agent(v.as_bytes())),
                key_id: caller.key.key_id.clone(),
                request_id: ctx.request_id,
                latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
            });
        }
        let endpoint = endpoint.unwrap_or_else(Endpoint::unmatched);
        endpoint.requests(response.status()).increment(1);
        endpoint.duration.record(latency.as_secs_f64());
        response
    }
}

/// The access-log line of one request (target `keyward::access`; docs/OPERATIONS.md
/// shows one). Only what identifies the request: never a header but the user agent,
/// never a body, a secret, a digest or a metadata value.
fn log_access(
    ctx: &RequestContext,
    method: &Method,
    route: Option<&str>,
    response: &Response,
    latency: std::time::Duration,
    user_agent: Option<&HeaderValue>,
) {
    let key_id = ctx.caller().map(|caller| caller.key.key_id.clone());
    tracing::info!(
        target: "keyward::access",
        request_id = ctx.request_id.as_str(),
        method = method.as_str(),
        route = route.unwrap_or("-"),
        status = response.status().as_u16(),
        // Milliseconds to the microsecond.
        latency_ms = latency.as_micros() as f64 / 1000.0,
        key_id = key_id.as_ref().map_or("-", |k| k.as_str()),
        user_agent = user_agent.map_or_else(|| "-".into(), |v| kept_user_agent(v.as_bytes())),
        "request"
    );
}

/// Counts the server errors of every route in `routes` from zero, so that an alert on
/// the rate of `5xx` has a series to work on before the first one (a counter that
/// appears at 1 shows no increase to `rate()`).
pub fn count_server_errors_from_zero<'a>(routes: impl IntoIterator<Item = (&'a Method, &'a str)>) {
    for (method, route) in routes {
        if let Some(endpoint) = Endpoint::of(method, route) {
            for status in [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::SERVICE_UNAVAILABLE,
            ] {
                endpoint.requests(status).increment(0);
            }
        }
    }
}

/// A route template with a standard method, e.g. `GET /v1/api-keys/{key_id}`: its name
/// and its metric handles, made once and kept for the life of the process. The router
/// fixes the set (a few dozen), so leaking them is bounded; a metrics registry lookup
/// per request (label vectors built and hashed) and the formatting of the name would be
/// among the middleware's largest costs (profiled).
struct Endpoint {
    method: &'static str,
    /// The route template, e.g. `/v1/api-keys/{key_id}`.
    route: &'static str,
    /// Method and route, as the request history names them.
    name: &'static str,
    duration: Histogram,
    /// The request counter of each status label, made on first use.
    by_status: [OnceLock<Counter>; ANSWERED.len() + CLASSES.len()],
}

impl Endpoint {
    /// The endpoint of a matched route. Only the standard methods name one: a client
    /// inventing methods on a known path (a 405) must not mint new names or labels.
    fn of(method: &Method, route: &str) -> Option<&'static Self> {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::PUT => "PUT",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => return None,
        };
        type Routes = HashMap<&'static str, Vec<&'static Endpoint>>;
        static ROUTES: OnceLock<RwLock<Routes>> = OnceLock::new();
        let routes = ROUTES.get_or_init(RwLock::default);
        let find = |routes: &Routes| {
            routes
                .get(route)
                .and_then(|endpoints| endpoints.iter().find(|e| e.method == method).copied())
        };
        if let Some(endpoint) = find(&routes.read().unwrap_or_else(PoisonError::into_inner)) {
            return Some(endpoint);
        }
        let mut routes = routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(endpoint) = find(&routes) {
            return Some(endpoint);
        }
        let name: &'static str = Box::leak(format!("{method} {route}").into_boxed_str());
        let route: &'static str = &name[method.len() + 1..];
        let endpoint: &'static Self = Box::leak(Box::new(Self::named(method, route, name)));
        routes.entry(route).or_default().push(endpoint);
        Some(endpoint)
    }

    /// Requests that matched no route.
    fn unmatched() -> &'static Self {
        static UNMATCHED: OnceLock<Endpoint> = OnceLock::new();
        UNMATCHED.get_or_init(|| Self::named("other", "unmatched", "unmatched"))
    }

    fn named(method: &'static str, route: &'static str, name: &'static str) -> Self {
        Self {
            method,
            route,
            name,
            duration: metrics::histogram!(
                metric::HTTP_REQUEST_DURATION, "method" => method, "route" => route
            ),
            by_status: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The request counter of this endpoint and `status`, registered on first use.
    fn requests(&self, status: StatusCode) -> &Counter {
        let (slot, label) = status_label(status);
        self.by_status[slot].get_or_init(|| {
            metrics::counter!(
                metric::HTTP_REQUESTS,
                "method" => self.method, "route" => self.route, "status" => label
            )
        })
    }
}

/// The statuses keyward answers, each counted under its own `status` label.
const ANSWERED: [(u16, &str); 19] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];
/// The label of any other status: its class.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The slot of `status`'s counter in [`Endpoint::by_status`], and its `status` label.
fn status_label(status: StatusCode) -> (usize, &'static str) {
    let code = status.as_u16();
    if let Some(slot) = ANSWERED.iter().position(|(answered, _)| *answered == code) {
        return (slot, ANSWERED[slot].1);
    }
    // 1xx (never answered) counts as 2xx.
    let class = usize::from(code / 100)
        .saturating_sub(2)
        .min(CLASSES.len() - 1);
    (ANSWERED.len() + class, CLASSES[class])
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

/// A failure (a 5xx with a cause) is an ERROR line with the cause; a refusal, the
/// client's 4xx or a 5xx keyward chose without a failure (`/readyz` while draining),
/// is DEBUG.
fn log_error(error: &ApiError, request_id: &str, method: &Method, route: Option<&str>) {
    if error.logged {
        return;
    }
    if let (true, Some(source)) = (error.status.is_server_error(), error.source.as_ref()) {
        tracing::error!(
            request.id = request_id,
            http.method = %method,
            http.route = route.unwrap_or("-"),
            error.code = ?error.code,
            error.chain = error_chain(source.as_ref()),
            "request failed"
        );
    } else {
        tracing::debug!(request.id = request_id, error.code = ?error.code, "request refused");
    }
}

/// `e` and its sources, joined by `: `, for a log line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
    fn user_agents_are_kept_up_to_their_limit_in_characters() {
        assert_eq!(kept_user_agent(b"curl/8.5"), "curl/8.5");
        let long = "\u{e9}".repeat(MAX_USER_AGENT_CHARS + 10);
        let kept = kept_user_agent(long.as_bytes());
        assert_eq!(kept.chars().count(), MAX_USER_AGENT_CHARS);
        assert!(long.starts_with(&kept));
        let exact = "a".repeat(MAX_USER_AGENT_CHARS);
        assert_eq!(kept_user_agent(exact.as_bytes()), exact);
        assert_eq!(kept_user_agent(b"bad \xff byte"), "bad \u{fffd} byte");
    }

    #[test]
    fn request_ids_are_echoed_only_when_well_formed() {
        let ok = HeaderValue::from_static("abc-123_X.y");
        assert_eq!(
            client_request_id(Some(&ok)).as_ref().map(RequestId::as_str),
            Some("abc-123_X.y")
        );
        for bad in ["", "has space", "semi;colon", &"a".repeat(65)] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(client_request_id(Some(&v)).is_none(), "{bad:?}");
        }
        let odd = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(client_request_id(Some(&odd)).is_none());
        assert!(new_request_id().as_str().starts_with("req_"));
    }

    #[test]
    fn each_answered_status_has_its_own_label_and_others_their_class() {
        for (i, (code, label)) in ANSWERED.iter().enumerate() {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(status_label(status).1, status.as_str());
            assert_eq!(status_label(status), (i, *label));
        }
        for (code, label) in [
            (100, "2xx"),
            (206, "2xx"),
            (302, "3xx"),
            (418, "4xx"),
            (501, "5xx"),
            (999, "5xx"),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_label(status).1, label, "{code}");
        }
    }
}
