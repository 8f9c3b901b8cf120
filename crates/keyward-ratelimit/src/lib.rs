//! Plan rate limits and the monthly quota (API.md §Rate limits): the [`RateLimiter`]
//! trait the request path asks, [`LocalRateLimiter`] counting in this process, and
//! [`RedisRateLimiter`] counting in Redis for every node together.
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
//! with fewer requests left, the narrower on a tie (minute, day, month). `reset` is when
//! its oldest counted request stops counting; `retry-after`, when refused, is when every
//! full window has room again, and the refusing window ([`RateDecision::refused_by`]) is
//! the full window that decides it (the wider on a tie).
//!
//! # The monthly quota
//!
//! The month window is the calendar month in UTC ([`month_number`]): every request it
//! allows counts until the next month starts ([`month_end`]), so its `reset` and
//! `retry-after` are the seconds until then. Its count is the same count as the usage
//! counters `GET /v1/usage` reads: the first time a limiter needs an account's count of a
//! month, it asks a [`UsageSource`] (the store) for what is stored, once per account and
//! month and process ([`MonthSeeds`]); from then on the limiter counts the requests it
//! allows itself, which also covers the ones still on their way to storage. The usage
//! counters count every authenticated request, refused ones included, so a count started
//! from them after refusals starts that much higher than the limiter's own would have. In Redis the
//! stored count is set only if the month has no count yet, so every node adds to one
//! count. A month that is not limited is neither read nor counted: a quota set later
//! starts again from what storage holds at that time (on a node that never counted the
//! month), or from the count kept earlier in the month. A storage read that fails leaves
//! the month unlimited for that request (failing open, like Redis) and is not tried again
//! for a second.
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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_core::{AccountId, Credits, KeyId, Limits, RefillInterval};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

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
    /// The window that refused the request (`details.window`): of the full windows, the
    /// one that decides `retry_after_secs`, the wider on a tie. `None` when allowed.
    pub refused_by: Option<Window>,
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
/// The Lua script `redis/limiter.lua` states the same rule; the vectors hold both to it.
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

/// The calendar month of `now` in UTC as one number: year × 12 + month − 1 (the month
/// refill period of credits, and the month window's identity in both limiters).
#[must_use]
pub fn month_number(now: OffsetDateTime) -> i64 {
    RefillInterval::Month.period_of(now)
}

/// The year and month (1 to 12) of a [`month_number`].
#[must_use]
pub fn month_of_number(month: i64) -> (i32, u8) {
    let year = i32::try_from(month.div_euclid(12)).unwrap_or(i32::MAX);
    let month = u8::try_from(month.rem_euclid(12) + 1).unwrap_or(1);
    (year, month)
}

/// The start of the UTC month after `now`'s: when the month window's counts stop counting.
#[must_use]
pub fn month_end(now: OffsetDateTime) -> OffsetDateTime {
    RefillInterval::Month.next_start(now)
}

/// Seconds from `now` until [`month_end`], rounded up: the month window's `reset` and
/// `retry-after`.
#[must_use]
pub fn secs_until_month_end(now: OffsetDateTime) -> u64 {
    let ms = unix_ms(month_end(now)) - unix_ms(now);
    u64::try_from(ms).unwrap_or(0).div_ceil(1000)
}

/// What [`UsageSource::requests_in_month`] answers: the count, or why storage could not.
pub type UsageFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<u64, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'a,
    >,
>;

/// Where a limiter reads an account's stored count of a month: the usage counters the
/// metering writes (the store, through `keyward-http`).
pub trait UsageSource: Send + Sync + 'static {
    /// The account's requests in the UTC month `year`-`month` (1 to 12), as stored; an
    /// error when storage cannot answer.
    fn requests_in_month<'a>(
        &'a self,
        account: &'a AccountId,
        year: i32,
        month: u8,
    ) -> UsageFuture<'a>;
}

/// How long a failed read of a stored count keeps further reads from being tried.
const SEED_RETRY: Duration = Duration::from_secs(1);

/// A [`month_number`] and its stored count, once read.
type SeedCell = (i64, OnceCell<u64>);

/// The stored month counts a process has read: at most one read per account and month,
/// however many requests ask at once; each limiter starts its month window from them.
/// Without a [`UsageSource`] every stored count is 0.
#[derive(Default)]
pub struct MonthSeeds {
    source: Option<Arc<dyn UsageSource>>,
    cells: Mutex<foldhash::HashMap<AccountId, Arc<SeedCell>>>,
    retry_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for MonthSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonthSeeds")
            .field("source", &self.source.is_some())
            .finish_non_exhaustive()
    }
}

impl MonthSeeds {
    /// Stored counts read from `source`.
    #[must_use]
    pub fn new(source: Arc<dyn UsageSource>) -> Self {
        Self {
            source: Some(source),
            ..Self::default()
        }
    }

    /// The account's stored count of `month` (a [`month_number`]), read once; `None`
    /// when storage failed (now or within the last second).
    pub(crate) async fn get(&self, account: &AccountId, month: i64) -> Option<u64> {
        let Some(source) = &self.source else {
            return Some(0);
        };
        let cell = {
            let mut cells = self
                .cells
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cell = cells
                .entry(account.clone())
                .or_insert_with(|| Arc::new((month, OnceCell::new())));
            if cell.0 != month {
                *cell = Arc::new((month, OnceCell::new()));
            }
            Arc::clone(cell)
        };
        if let Some(&n) = cell.1.get() {
            return Some(n);
        }
        if self
            .retry_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| Instant::now() < at)
        {
            return None;
        }
        let (year, month_of_year) = month_of_number(month);
        let read = cell
            .1
            .get_or_try_init(|| source.requests_in_month(account, year, month_of_year))
            .await;
        match read {
            Ok(&n) => Some(n),
            Err(err) => {
                tracing::warn!(error = %err, "could not read an account's stored requests of the month; its quota is not enforced for a second");
                *self
                    .retry_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + SEED_RETRY);
                None
            }
        }
    }

    /// Forgets the counts of months other than `month`.
    pub(crate) fn keep_only(&self, month: i64) {
        self.cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, cell| cell.0 == month);
    }
}

/// `now` in whole milliseconds since the Unix epoch, the unit both limiters count in
/// (bucket indexes, and the clock the Lua script is given by tests).
pub(crate) fn unix_ms(now: OffsetDateTime) -> i64 {
    // Seconds and the millisecond apart: no 128-bit division on the request path.
    now.unix_timestamp()
        .saturating_mul(1000)
        .saturating_add(i64::from(now.millisecond()))
}

#[cfg(test)]
mod month_tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_MS: i64 = 86_400_000;

    /// The simple model: walk month by month from 1970-01-01 with the Gregorian month
    /// lengths until the month holding `ms`; its number and where it ends.
    fn days_in(y: i64, m: i64) -> i64 {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    fn model(ms: i64) -> (i64, i64) {
        let (mut year, mut month, mut start) = (1970, 1, 0);
        loop {
            let end = start + days_in(year, month) * DAY_MS;
            if ms < end {
                return (year * 12 + month - 1, end);
            }
            start = end;
            month += 1;
            if month == 13 {
                year += 1;
                month = 1;
            }
        }
    }

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    }

    proptest! {
        #[test]
        fn months_follow_the_calendar_model(ms in 0i64..7_300_000_000_000) {
            let t = at(ms);
            prop_assert_eq!(unix_ms(t), ms);
            let (number, end_ms) = model(ms);
            prop_assert_eq!(month_number(t), number);
            let (year, month) = month_of_number(number);
            prop_assert_eq!((year, month), (t.year(), u8::from(t.month())));
            prop_assert_eq!(unix_ms(month_end(t)), end_ms);
            let secs = secs_until_month_end(t);
            // Rounded up: a retry after that many seconds is in the next month.
            prop_assert!(ms + i64::try_from(secs).unwrap() * 1000 >= end_ms);
            prop_assert!(ms + (i64::try_from(secs).unwrap() - 1) * 1000 < end_ms);
        }

        #[test]
        fn the_last_and_first_millisecond_of_a_month(month in 0i64..2_400) {
            // The model's month starts, from 1970 on.
            let mut start = 0;
            for n in 0..month {
                start += days_in(1970 + n / 12, n % 12 + 1) * DAY_MS;
            }
            let (number, end_ms) = model(start);
            prop_assert_eq!(month_number(at(start)), number);
            prop_assert_eq!(month_number(at(end_ms - 1)), number);
            prop_assert_eq!(month_number(at(end_ms)), number + 1);
            prop_assert_eq!(secs_until_month_end(at(end_ms - 1)), 1);
            prop_assert_eq!(
                secs_until_month_end(at(start)),
                u64::try_from((end_ms - start) / 1000).unwrap()
            );
        }
    }
}
