//! What one request carries from the envelope middleware to the handler and back: its
//! id, its arrival time, its peer, and once known its caller and rate-limit decision. Its own
//! module because both the middleware (which makes and reads it) and authentication
//! (which fills it) need it, and neither may depend on the other.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::http::Method;
use axum::http::request::Parts;
use keyward_core::RequestId;
use keyward_ratelimit::RateDecision;
use time::OffsetDateTime;

use crate::cache::key::CachedKey;

/// The TCP peer of a request's connection, put in its extensions by the server. The
/// envelope moves it into the request's [`RequestContext`] (`peer`), where every later
/// step reads it: taken out, it leaves the extensions' table at three entries, which fit
/// the table's first allocation.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A fresh request id: `req_` and a ULID.
#[must_use]
pub fn new_request_id() -> RequestId {
    RequestId::generated(ulid::Ulid::generate())
}

/// Per-request facts that the metering middleware reads after the handler: who the
/// caller was (set only once the key authenticated) and the rate-limit decision.
#[derive(Debug)]
pub struct RequestContext {
    /// The request id (echoed or generated).
    pub request_id: RequestId,
    /// When the request arrived: the one clock read of its handling and its history row.
    pub arrived: OffsetDateTime,
    /// The TCP peer of its connection, where it came over a socket ([`PeerAddr`]).
    pub peer: Option<SocketAddr>,
    caller: OnceLock<Arc<CachedKey>>,
    rate: OnceLock<RateDecision>,
    route: OnceLock<(Method, &'static str)>,
    recorded_as: OnceLock<RecordedAs>,
}

/// How a request is recorded in history and usage when not under its route: a validate
/// call naming the platform's endpoint (history and usage only: metrics keep validate's
/// route, since the client chose the name) (API.md §`POST /v1/api-keys/validate`).
#[derive(Debug, Clone)]
pub struct RecordedAs {
    /// The method.
    pub method: String,
    /// The route template with its method, `POST /v1/videos`.
    pub endpoint: String,
    /// The status the outcome maps to.
    pub status: u16,
}

/// Marks a response as the upstream's (gateway mode): the envelope leaves its body and
/// its `cache-control` as the upstream sent them.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

impl RequestContext {
    /// A context for a request id, arrived at `arrived` from `peer`.
    #[must_use]
    pub fn new(request_id: RequestId, arrived: OffsetDateTime, peer: Option<SocketAddr>) -> Self {
        Self {
            request_id,
            arrived,
            peer,
            caller: OnceLock::new(),
            rate: OnceLock::new(),
            route: OnceLock::new(),
            recorded_as: OnceLock::new(),
        }
    }

    /// The authenticated caller, if any.
    #[must_use]
    pub fn caller(&self) -> Option<&Arc<CachedKey>> {
        self.caller.get()
    }

    /// The rate-limit decision, if the limiter was asked.
    #[must_use]
    pub fn rate(&self) -> Option<RateDecision> {
        self.rate.get().copied()
    }

    /// The platform's route the request was for (gateway mode and forward auth): its
    /// method and template, under which history, usage and metrics record it instead of
    /// keyward's own route.
    #[must_use]
    pub fn route(&self) -> Option<&(Method, &'static str)> {
        self.route.get()
    }

    pub(crate) fn set_route(&self, method: Method, template: &'static str) {
        let _ = self.route.set((method, template));
    }

    /// How the request is recorded instead of under its route, if so.
    #[must_use]
    pub fn recorded_as(&self) -> Option<&RecordedAs> {
        self.recorded_as.get()
    }

    pub(crate) fn set_recorded_as(&self, recorded: RecordedAs) {
        let _ = self.recorded_as.set(recorded);
    }

    pub(crate) fn set_caller(&self, record: Arc<CachedKey>) {
        let _ = self.caller.set(record);
    }

    pub(crate) fn set_rate(&self, decision: RateDecision) {
        let _ = self.rate.set(decision);
    }

    /// The request's context, put there by the envelope middleware (a fresh one for a
    /// request that did not pass through it).
    pub(crate) fn of(parts: &Parts) -> Arc<Self> {
        Self::in_extensions(&parts.extensions)
    }

    /// [`RequestContext::of`] a whole request, for a handler that reads the body itself.
    pub(crate) fn of_request<B>(req: &axum::http::Request<B>) -> Arc<Self> {
        Self::in_extensions(req.extensions())
    }

    fn in_extensions(extensions: &axum::http::Extensions) -> Arc<Self> {
        extensions.get::<Arc<Self>>().cloned().unwrap_or_else(|| {
            let peer = extensions.get::<PeerAddr>().map(|PeerAddr(addr)| *addr);
            Arc::new(Self::new(new_request_id(), OffsetDateTime::now_utc(), peer))
        })
    }
}
