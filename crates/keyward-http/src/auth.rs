//! Authentication in the order of API.md §Authentication: format and checksum (no
//! storage lookup for garbage), lookup by digest, status, expiry; then scope, then rate
//! limit ([`Caller::require`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use keyward_core::{KeyDigest, KeySecret, RequestId, StoredStatus};
use keyward_store::{AuthRecord, Store, StoreResult};
use keyward_workers::RateDecision;
use time::OffsetDateTime;

use crate::cache::CoherentCache;
use crate::error::{ApiError, KeyRejection};
use crate::state::AppState;

/// Made once rather than parsed from a `&str` at every lookup.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// How long a cached key may go unchecked against storage. Changes made through the API
/// invalidate at once; this only bounds how stale a change made behind the server's back
/// (an operator's `accounts set-plan`) can be.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);

/// Keys by digest, in memory, invalidated explicitly whenever a key changes.
pub struct KeyCache {
    store: Arc<dyn Store>,
    cache: CoherentCache<KeyDigest, Arc<CachedKey>>,
}

/// A key as cached: its record, and its answer to `POST /v1/api-keys/validate` once
/// rendered. That answer holds nothing that changes while the entry lives (any change
/// of the key drops the entry; expiry and the end of a grace period refuse the key
/// before the answer is used), and rendering it was a tenth of validate's instructions.
#[derive(Debug)]
pub struct CachedKey {
    record: AuthRecord,
    validate_body: OnceLock<Bytes>,
}

impl CachedKey {
    /// A record not yet answered for.
    pub(crate) fn new(record: AuthRecord) -> Self {
        Self {
            record,
            validate_body: OnceLock::new(),
        }
    }

    /// The validate answer, rendered by `render` the first time it succeeds.
    pub(crate) fn validate_body<E>(
        &self,
        render: impl FnOnce(&AuthRecord) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        if let Some(body) = self.validate_body.get() {
            return Ok(body.clone());
        }
        let body = render(&self.record)?;
        // A concurrent first request may have set it: both rendered the same bytes.
        let _ = self.validate_body.set(body.clone());
        Ok(body)
    }
}

impl std::ops::Deref for CachedKey {
    type Target = AuthRecord;
    fn deref(&self) -> &AuthRecord {
        &self.record
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, capacity: u64) -> Self {
        Self {
            store,
            cache: CoherentCache::new(
                capacity,
                KEY_CACHE_TTL,
                "keyward_key_cache_hits_total",
                "keyward_key_cache_misses_total",
            ),
        }
    }

    /// The record of a digest, from memory or storage.
    ///
    /// # Errors
    /// The store's error on a miss.
    pub async fn lookup(&self, digest: &KeyDigest) -> StoreResult<Option<Arc<CachedKey>>> {
        self.cache
            .get_or_load(digest, || async {
                Ok(self
                    .store
                    .auth_by_digest(digest)
                    .await?
                    .map(|record| Arc::new(CachedKey::new(record))))
            })
            .await
    }

    /// Drops these digests; the very next request reads storage.
    pub fn invalidate(&self, digests: &[KeyDigest]) {
        self.cache.invalidate(digests);
    }

    /// Turns the cache on or off; see [`CoherentCache::set_coherent`].
    pub fn set_coherent(&self, coherent: bool) {
        self.cache.set_coherent(coherent);
    }
}

/// Per-request facts that the metering middleware reads after the handler: who the
/// caller was (set only once the key authenticated) and the rate-limit decision.
#[derive(Debug)]
pub struct RequestContext {
    /// The request id (echoed or generated).
    pub request_id: RequestId,
    /// When the request arrived: the one clock read of its handling and its history row.
    pub arrived: OffsetDateTime,
    caller: OnceLock<Arc<CachedKey>>,
    rate: OnceLock<RateDecision>,
}

impl RequestContext {
    /// A context for a request id, arrived at `arrived`.
    #[must_use]
    pub fn new(request_id: RequestId, arrived: OffsetDateTime) -> Self {
        Self {
            request_id,
            arrived,
            caller: OnceLock::new(),
            rate: OnceLock::new(),
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

    pub(crate) fn set_caller(&self, record: Arc<CachedKey>) {
        let _ = self.caller.set(record);
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
        metrics::counter!("keyward_auth_failures_total", "reason" => reason.as_str()).increment(1);
    }
    result
}

async fn check_key(
    state: &AppState,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let raw = headers
        .get(X_API_KEY)
        .ok_or(AuthFailure::Rejected(KeyRejection::Missing))?;
    let raw = raw
        .to_str()
        .map_err(|_| AuthFailure::Rejected(KeyRejection::Malformed))?;
    let digest = KeySecret::digest_of(raw, &state.prefix)
        .map_err(|_| AuthFailure::Rejected(KeyRejection::Malformed))?;
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
    if record.key.status == StoredStatus::Inactive {
        return Err(AuthFailure::Rejected(KeyRejection::Inactive));
    }
    if record.key.expires_at.is_some_and(|t| t <= now) {
        return Err(AuthFailure::Rejected(KeyRejection::Expired));
    }
    Ok(record)
}

/// An authenticated caller. Handlers state their scope with [`Caller::require`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's key and account.
    pub record: Arc<CachedKey>,
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

    /// Checks the scope, then counts the request against the plan's limits.
    ///
    /// # Errors
    /// `403 INSUFFICIENT_PERMISSIONS` or `429 RATE_LIMIT_EXCEEDED`.
    pub async fn require(&self, state: &AppState, scope: &str) -> Result<(), ApiError> {
        if !self.record.key.scopes.grants(scope) {
            if let Some(decision) = self.rate_decision(state, false).await {
                let _ = self.ctx.rate.set(decision);
            }
            return Err(ApiError::forbidden(&[scope.to_owned()]));
        }
        self.count(state).await
    }

    /// Counts the request against the plan's limits (validate needs no scope).
    ///
    /// # Errors
    /// `429 RATE_LIMIT_EXCEEDED`.
    pub async fn count(&self, state: &AppState) -> Result<(), ApiError> {
        let Some(decision) = self.rate_decision(state, true).await else {
            return Ok(());
        };
        let _ = self.ctx.rate.set(decision);
        if decision.allowed {
            Ok(())
        } else {
            metrics::counter!("keyward_rate_limited_total").increment(1);
            Err(ApiError::rate_limited(
                decision.retry_after_secs.unwrap_or(1),
            ))
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

/// The request's context, put there by the envelope middleware.
pub(crate) fn context(parts: &Parts) -> Arc<RequestContext> {
    parts
        .extensions
        .get::<Arc<RequestContext>>()
        .cloned()
        .unwrap_or_else(|| {
            Arc::new(RequestContext::new(
                crate::middleware::new_request_id(),
                OffsetDateTime::now_utc(),
            ))
        })
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
        let ctx = context(parts);
        Ok(Self(
            authenticate(state, &parts.headers, ctx.arrived)
                .await
                .map(|record| {
                    ctx.set_caller(record.clone());
                    Caller { record, ctx }
                }),
        ))
    }
}
