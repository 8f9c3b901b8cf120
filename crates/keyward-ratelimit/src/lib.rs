//! Plan rate limits (API.md §Rate limits): the [`RateLimiter`] trait the request path
//! asks, [`LocalRateLimiter`] counting in this process, and [`RedisRateLimiter`] counting
//! in Redis for every node together.
//!
//! # The window rule
//!
//! Windows roll: the per-minute window counts requests in one-second buckets and keeps a
//! bucket for 61 of them, the per-day window in one-minute buckets kept for 1441 of them.
//! A request therefore counts for at least a full 60 s (or 24 h) after it was made, so no
//! 60-second span ever holds more than the limit, with no doubled burst at a clock edge.
//! A request is allowed only if every limited window has room; refused requests and
//! peeks consume nothing; an unlimited window is neither read nor counted, and a plan
//! with no limit at all gets no decision. The headers show the tighter window: the one
//! with fewer requests left, the minute on a tie. `reset` is when its oldest counted
//! request stops counting; `retry-after`, when refused, is when every full window has
//! room again.
//!
//! # Per-key windows and credits
//!
//! A key's own `rate_limit` is counted by the same window rule, per key
//! ([`RateLimiter::acquire_key`]), on top of its account's. A key's credits are a balance
//! ([`credit_step`]): it starts at the `remaining` a caller set (again whenever a caller
//! sets it, which the credits' `generation` tells), becomes the refill's `amount` once
//! in each UTC day or month after the one it was set in, and a request is allowed only if the
//! balance covers its cost, which it then takes. A request refused by a window takes no
//! credit, and one refused for credits counts in no window of the key.
//!
//! The rule is written twice, in Rust (`local.rs`) and in Lua (`redis/limiter.lua`, which
//! must run inside Redis to be atomic). One table of test vectors (`vectors.rs`: requests,
//! times, limits and the decisions they must get) runs against both, so they cannot
//! drift apart.
//!
//! Depends on `keyward-core`; never on axum, sqlx or the store.

pub mod local;
pub mod redis;
#[cfg(test)]
mod vectors;

use async_trait::async_trait;
use keyward_core::{AccountId, Credits, KeyId, Limits};
use time::OffsetDateTime;

pub use crate::local::LocalRateLimiter;
pub use crate::redis::{RedisRateLimiter, RedisRateLimiterOptions};

/// What a limiter decided, with what the response headers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The tighter window's limit (`x-ratelimit-limit`).
    pub limit: u32,
    /// Requests left in the tighter window after this one (`x-ratelimit-remaining`).
    pub remaining: u32,
    /// Seconds until the tighter window frees a slot (`x-ratelimit-reset`).
    pub reset_secs: u64,
    /// Seconds until a request would be allowed (`retry-after`), when refused.
    pub retry_after_secs: Option<u64>,
}

/// Which limit refused a request: API.md's `details.window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A per-minute limit.
    Minute,
    /// A per-day limit.
    Day,
    /// The monthly quota.
    Month,
    /// The key's credits.
    Credits,
}

impl Window {
    /// Name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Day => "day",
            Self::Month => "month",
            Self::Credits => "credits",
        }
    }
}

/// One request as charged to its key's own limits and credits.
#[derive(Debug, Clone, Copy)]
pub struct KeyCharge<'a> {
    /// The key.
    pub key: &'a KeyId,
    /// Its own windows (unlimited when it has none).
    pub limits: Limits,
    /// Its credits, if it has any.
    pub credits: Option<&'a Credits>,
    /// What the request costs in credits (1 unless the caller says otherwise).
    pub cost: u32,
}

impl KeyCharge<'_> {
    /// Whether the key has nothing of its own to count.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.limits.is_unlimited() && self.credits.is_none()
    }
}

/// What a limiter decided for a key's own limits and credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDecision {
    /// The key's windows, as the headers would show them (`None` without any).
    pub windows: Option<RateDecision>,
    /// The limit that refused the request, if one did.
    pub refused_by: Option<Window>,
    /// Seconds until the refusing limit has room, where known.
    pub retry_after_secs: Option<u64>,
    /// The balance after this request (`None` without credits).
    pub credits_remaining: Option<u64>,
}

impl KeyDecision {
    /// Whether the request may proceed.
    #[must_use]
    pub const fn allowed(&self) -> bool {
        self.refused_by.is_none()
    }
}

/// A key's balance as a limiter keeps it: the generation of the credits it started
/// from, the refill period it was last refilled in (or started in), and what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditState {
    /// [`Credits::generation`] of the credits this balance started from.
    pub generation: i64,
    /// The refill period of the last refill or start; `-1` without a refill.
    pub period: i64,
    /// What is left.
    pub balance: u64,
}

/// The credit rule of the crate docs, for one request of `cost` at `now`: the state
/// afterwards and whether the balance covered the cost (it is taken only if `consume`).
/// The Lua script `redis/credits.lua` states the same rule; the vectors hold both to it.
#[must_use]
pub fn credit_step(
    state: Option<CreditState>,
    credits: &Credits,
    now: OffsetDateTime,
    cost: u32,
    consume: bool,
) -> (CreditState, bool) {
    let period_of = |t: OffsetDateTime| credits.refill.map_or(-1, |r| r.interval.period_of(t));
    let period = period_of(now);
    let mut state = match state {
        Some(s) if s.generation == credits.generation => s,
        _ => CreditState {
            generation: credits.generation,
            period: period_of(OffsetDateTime::from_unix_timestamp(credits.set_at).unwrap_or(now)),
            balance: credits.remaining,
        },
    };
    if let Some(refill) = credits.refill
        && period > state.period
    {
        state.balance = refill.amount;
        state.period = period;
    }
    let covered = state.balance >= u64::from(cost);
    if covered && consume {
        state.balance -= u64::from(cost);
    }
    (state, covered)
}

/// Seconds until the next refill of `credits` at `now` (`None` without a refill).
#[must_use]
pub fn secs_until_refill(credits: &Credits, now: OffsetDateTime) -> Option<u64> {
    credits.refill.map(|r| {
        let secs = (r.interval.next_start(now) - now).whole_seconds();
        u64::try_from(secs).unwrap_or(0).max(1)
    })
}

impl RateDecision {
    /// The window a refusal under `limits` came from: the shown (tighter) one, which is
    /// a full one; the minute when both limits are equal.
    #[must_use]
    pub fn window(&self, limits: Limits) -> Window {
        if limits.per_day == Some(self.limit) && limits.per_minute != Some(self.limit) {
            Window::Day
        } else {
            Window::Minute
        }
    }
}

/// Counts requests per account against its limits.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request if every window has room; `None` when nothing is limited.
    async fn acquire(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision>;
    /// The current state without counting anything (for responses that never reach the
    /// limiter, such as a 403).
    async fn peek(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision>;

    /// Counts one request against the key's own windows and takes its cost from the
    /// key's credits, if every window has room and the balance covers the cost; refused,
    /// it takes nothing.
    async fn acquire_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision;

    /// [`RateLimiter::acquire_key`]'s answer without taking anything: for a request the
    /// account's limits refused, and for the live balance a key object shows.
    async fn peek_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision;

    /// Frees memory held for accounts with nothing counted; called periodically.
    fn forget_idle(&self, now: OffsetDateTime);
}

/// `now` in whole milliseconds since the Unix epoch, the unit both limiters count in
/// (bucket indexes, and the clock the Lua script is given by tests).
pub(crate) fn unix_ms(now: OffsetDateTime) -> i64 {
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
