//! Authentication in the order of API.md §Authentication: format and checksum (no
//! storage lookup for garbage), lookup by digest, status, expiry (`expires_at` and
//! inactivity), account suspension; then the key's policies and the limits
//! ([`check_policies`]): the client address against `allowed_ips`, scope, then rate
//! limits, the monthly quota and credits.
//! [`Caller::require`] runs them for keyward's own endpoints, [`Caller::require_route`]
//! for the platform's routes (gateway mode and forward auth).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use keyward_core::{AccountStatus, KeySecret, KeyStatus, metric, policy};
use keyward_ratelimit::{KeyCharge, RateDecision, Window};
use keyward_workers::credits::Exhaustion;
use time::OffsetDateTime;

use crate::cache::key::CachedKey;
use crate::context::RequestContext;
use crate::error::{ApiError, KeyRejection};
use crate::state::AppState;

/// Made once rather than parsed from a `&str` at every lookup.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The proxies' record of the addresses a request came through.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address (API.md §Key policies): the peer, or through trusted proxies the
/// right-most `x-forwarded-for` entry that is not one of them. `None` without a peer (a
/// request that did not come over a socket) or when that entry is not an address.
#[must_use]
pub fn client_address(state: &AppState, parts: &Parts) -> Option<IpAddr> {
    let peer = RequestContext::of(parts).peer?.ip();
    let forwarded = parts
        .headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        // A value that is not text is no address: the client is then unknown.
        .map(|v| v.to_str().unwrap_or("?"));
    policy::client_address(peer, forwarded, &state.trusted_proxies)
}

/// What a request asks of its key beyond authenticating: scopes, from an address, at a
/// cost in credits. The gateway, forward auth, validate and keyward's own endpoints all
/// check it with [`check_policies`].
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a, S = &'a str> {
    /// Scopes the key must all hold.
    pub scopes: &'a [S],
    /// The client's address, if known ([`client_address`]).
    pub client: Option<IpAddr>,
    /// Credits the request takes, 1 unless a route or validate says otherwise.
    pub cost: u32,
}

/// Why [`check_policies`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key's `allowed_ips` do not hold the client's address (`403`).
    IpNotAllowed,
    /// The key lacks these scopes (`403`).
    Scopes(Vec<String>),
    /// A limit, the quota or the credits refused (`429`).
    Limited {
        /// Which.
        window: Window,
        /// When to retry, where known.
        retry_after_secs: Option<u64>,
    },
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::IpNotAllowed => Self::ip_not_allowed(),
            Refusal::Scopes(missing) => Self::forbidden(&missing),
            Refusal::Limited {
                window,
                retry_after_secs,
            } => Self::rate_limited(window, retry_after_secs),
        }
    }
}

/// The checks after authentication, in API.md's order: the client's address against
/// the key's `allowed_ips`, the scopes, then the account's per-minute and per-day limits
/// and its monthly quota (`per_month`, one limiter decision), then the key's own limits
/// and credits. Everything it reads travels with the cached key or lives with the
/// limiter, which reads an account's stored count of a month once per node and month
/// and counts on from it: no storage round trip per request. Sets the request's
/// rate-limit headers. Answers the key's credit balance after the request (`None`
/// without credits).
///
/// # Errors
/// The first check that refuses.
pub async fn check_policies<S: AsRef<str>>(
    state: &AppState,
    caller: &Caller,
    demand: &Demand<'_, S>,
) -> Result<Option<u64>, Refusal> {
    let key = &caller.record.key;
    if let Some(allowed) = &key.policies.allowed_ips
        && !demand.client.is_some_and(|ip| allowed.allows(ip))
    {
        caller.show_rate(state).await;
        return Err(Refusal::IpNotAllowed);
    }
    let missing: Vec<String> = demand
        .scopes
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| !key.scopes.grants(s))
        .map(str::to_owned)
        .collect();
    if !missing.is_empty() {
        caller.show_rate(state).await;
        return Err(Refusal::Scopes(missing));
    }
    let account = caller.rate_decision(state, true).await;
    if let Some(decision) = account
        && !decision.allowed
    {
        caller.ctx.set_rate(decision);
        metrics::counter!(metric::RATE_LIMITED).increment(1);
        return Err(Refusal::Limited {
            window: decision.refused_by.unwrap_or(Window::Minute),
            retry_after_secs: Some(decision.retry_after_secs.unwrap_or(1)),
        });
    }
    let charge = caller.key_charge(demand.cost);
    if charge.is_unlimited() {
        if let Some(decision) = account {
            caller.ctx.set_rate(decision);
        }
        return Ok(None);
    }
    let own = state.limiter.acquire_key(&charge, caller.now()).await;
    if own.credits_remaining == Some(0) {
        caller.report_exhaustion(state);
    }
    // The headers show the account's windows, or the key's where it has only its own
    // or its own refused.
    let key_window_refused = matches!(own.refused_by, Some(Window::Minute | Window::Day));
    match (account, own.windows) {
        (_, Some(windows)) if key_window_refused || account.is_none() => {
            caller.ctx.set_rate(windows);
        }
        (Some(decision), _) => caller.ctx.set_rate(decision),
        _ => {}
    }
    match own.refused_by {
        None => Ok(own.credits_remaining),
        Some(window) => {
            metrics::counter!(metric::RATE_LIMITED).increment(1);
            Err(Refusal::Limited {
                window,
                retry_after_secs: own.retry_after_secs,
            })
        }
    }
}

/// Why authentication did not produce a caller.
#[derive(Debug)]
pub enum AuthFailure {
    /// The key was refused for this reason.
    Rejected(KeyRejection),
    /// Storage failed.
    Store(keyward_store::StoreError),
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        match f {
            AuthFailure::Rejected(reason) => Self::invalid_key(reason),
            AuthFailure::Store(e) => e.into(),
        }
    }
}

/// Runs the check order on the `x-api-key` header.
///
/// # Errors
/// The first check that fails.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let result = check_key(state, headers, now).await;
    if let Err(AuthFailure::Rejected(reason)) = &result {
        metrics::counter!(metric::AUTH_FAILURES, "reason" => reason.as_str()).increment(1);
    }
    result
}

/// The digest of the one key in `x-api-key`: shape and checksum checked, no storage
/// touched. The first checks of both account and operator keys.
fn presented_digest(headers: &HeaderMap) -> Result<keyward_core::KeyDigest, AuthFailure> {
    let mut sent = headers.get_all(X_API_KEY).iter();
    let raw = sent
        .next()
        .ok_or(AuthFailure::Rejected(KeyRejection::Missing))?;
    // Two keys are ambiguous: whichever one a proxy or keyward picked, the other party
    // may have picked the other (API.md §Authentication).
    if sent.next().is_some() {
        return Err(AuthFailure::Rejected(KeyRejection::Malformed));
    }
    let raw = raw
        .to_str()
        .map_err(|_| AuthFailure::Rejected(KeyRejection::Malformed))?;
    KeySecret::digest_of(raw).map_err(|_| AuthFailure::Rejected(KeyRejection::Malformed))
}

async fn check_key(
    state: &AppState,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let digest = presented_digest(headers)?;
    let record = state
        .keys
        .lookup(&digest)
        .await
        .map_err(AuthFailure::Store)?
        .ok_or(AuthFailure::Rejected(KeyRejection::NotFound))?;
    // A secret past its rotation grace period is gone for good: it reads as unknown.
    if record.secret_expires_at.is_some_and(|end| end <= now) {
        return Err(AuthFailure::Rejected(KeyRejection::NotFound));
    }
    // Status, then expiry: the order in which `KeyStatus::at` derives what a key shows;
    // then the account's suspension (API.md §Authentication).
    match record.key.status_at(now) {
        KeyStatus::Active if record.account_status == AccountStatus::Suspended => {
            Err(AuthFailure::Rejected(KeyRejection::AccountSuspended))
        }
        KeyStatus::Active => Ok(record),
        KeyStatus::Inactive => Err(AuthFailure::Rejected(KeyRejection::Inactive)),
        KeyStatus::Expired => Err(AuthFailure::Rejected(KeyRejection::Expired)),
    }
}

/// An authenticated caller. Handlers state their scope with [`Caller::require`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's key and account.
    pub record: Arc<CachedKey>,
    /// The client's address, found only for a key with `allowed_ips`.
    pub client: Option<IpAddr>,
    ctx: Arc<RequestContext>,
}

impl Caller {
    /// The request id.
    #[must_use]
    pub fn request_id(&self) -> &str {
        self.ctx.request_id.as_str()
    }

    /// The request's time: its arrival, one clock read for the whole request.
    #[must_use]
    pub fn now(&self) -> OffsetDateTime {
        self.ctx.arrived
    }

    /// Checks the key's policies with `scope` ([`check_policies`]) at a cost of 1.
    ///
    /// # Errors
    /// `403 INSUFFICIENT_PERMISSIONS` or `429 RATE_LIMIT_EXCEEDED`.
    pub async fn require(&self, state: &AppState, scope: &str) -> Result<(), ApiError> {
        let demand = Demand {
            scopes: &[scope],
            client: self.client,
            cost: 1,
        };
        check_policies(state, self, &demand).await?;
        Ok(())
    }

    /// The checks of a platform's route (API.md §Gateway), the same for the gateway and
    /// forward auth: [`check_policies`] with every scope the route names (a `403` lists
    /// those the key lacks) and the route's cost in credits.
    ///
    /// # Errors
    /// `403 INSUFFICIENT_PERMISSIONS` or `429 RATE_LIMIT_EXCEEDED`.
    pub async fn require_route(
        &self,
        state: &AppState,
        scopes: &[String],
        cost: u32,
    ) -> Result<(), ApiError> {
        let demand = Demand {
            scopes,
            client: self.client,
            cost,
        };
        check_policies(state, self, &demand).await?;
        Ok(())
    }

    /// Records the request in history and usage as `endpoint` with `status`, instead of
    /// under its own route.
    pub fn record_as(&self, method: String, endpoint: String, status: u16) {
        self.ctx.set_recorded_as(crate::context::RecordedAs {
            method,
            endpoint,
            status,
        });
    }

    /// The key's own limits and credits, for a request of `cost`.
    #[must_use]
    pub fn key_charge(&self, cost: u32) -> KeyCharge<'_> {
        let key = &self.record.key;
        KeyCharge {
            key: &key.key_id,
            limits: key.policies.rate_limit.unwrap_or_default(),
            credits: key.policies.credits.as_ref(),
            cost,
        }
    }

    /// Reports the key's credits at 0 (taken to 0 by this request, or found there) for
    /// `credits.exhausted`: a send on a bounded channel, never a wait or a storage call.
    fn report_exhaustion(&self, state: &AppState) {
        let key = &self.record.key;
        if let (Some(reports), Some(credits)) = (&state.exhaustions, key.policies.credits) {
            reports.report(Exhaustion {
                account_id: key.account_id.clone(),
                key_id: key.key_id.clone(),
                name: key.name.as_ref().map(|n| n.as_str().to_owned()),
                credits,
                time: self.now(),
            });
        }
    }

    /// Sets the headers of a request refused before it was counted.
    async fn show_rate(&self, state: &AppState) {
        if let Some(decision) = self.rate_decision(state, false).await {
            self.ctx.set_rate(decision);
        }
    }

    /// The limiter's decision, counting this request if `consume`. An unlimited plan has
    /// none (the limiter's contract), so the limiter is not asked: that spares the boxed
    /// future of its trait method on every request of such a plan.
    async fn rate_decision(&self, state: &AppState, consume: bool) -> Option<RateDecision> {
        let limits = self.record.limits;
        if limits.is_unlimited() {
            return None;
        }
        let account = &self.record.key.account_id;
        if consume {
            state.limiter.acquire(account, limits, self.now()).await
        } else {
            state.limiter.peek(account, limits, self.now()).await
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(CallerAttempt(attempt)) = CallerAttempt::from_request_parts(parts, state).await;
        attempt.map_err(ApiError::from)
    }
}

/// Authentication whose failure is the handler's to answer (validate turns some of them
/// into `200 {"valid": false}`).
#[derive(Debug)]
pub struct CallerAttempt(pub Result<Caller, AuthFailure>);

impl FromRequestParts<AppState> for CallerAttempt {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ctx = RequestContext::of(parts);
        Ok(Self(
            authenticate(state, &parts.headers, ctx.arrived)
                .await
                .map(|record| {
                    ctx.set_caller(record.clone());
                    // Only a key with an allowlist needs the address.
                    let client = record
                        .key
                        .policies
                        .allowed_ips
                        .as_ref()
                        .and_then(|_| client_address(state, parts));
                    Caller {
                        record,
                        client,
                        ctx,
                    }
                }),
        ))
    }
}

/// An authenticated operator (API.md §Operator API): an operator key in `x-api-key`.
/// Account keys are unknown here (`401 not_found`), as operator keys are under `/v1/`:
/// each is looked up only among its own kind. Not cached, so a revoked operator key
/// fails on the very next request on every node; not rate limited, not metered.
#[derive(Debug, Clone)]
pub struct OperatorCaller {
    /// The operator.
    pub operator: keyward_store::Operator,
    ctx: Arc<RequestContext>,
}

impl OperatorCaller {
    /// The request id.
    #[must_use]
    pub fn request_id(&self) -> &str {
        self.ctx.request_id.as_str()
    }

    /// The request's time.
    #[must_use]
    pub fn now(&self) -> OffsetDateTime {
        self.ctx.arrived
    }
}

impl FromRequestParts<AppState> for OperatorCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ctx = RequestContext::of(parts);
        let found = check_operator(state, &parts.headers).await;
        if let Err(AuthFailure::Rejected(reason)) = &found {
            metrics::counter!(metric::AUTH_FAILURES, "reason" => reason.as_str()).increment(1);
        }
        let operator = found.map_err(ApiError::from)?;
        Ok(Self { operator, ctx })
    }
}

async fn check_operator(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<keyward_store::Operator, AuthFailure> {
    let digest = presented_digest(headers)?;
    state
        .store
        .operator_by_digest(&digest)
        .await
        .map_err(AuthFailure::Store)?
        .ok_or(AuthFailure::Rejected(KeyRejection::NotFound))
}
