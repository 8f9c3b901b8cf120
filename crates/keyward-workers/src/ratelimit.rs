//! Plan rate limits (API.md §Rate limits).
//!
//! Windows roll: the per-minute window counts requests in one-second buckets and keeps a
//! bucket for 61 of them, the per-day window in one-minute buckets kept for 1441 of them.
//! A request therefore counts for at least a full 60 s (or 24 h) after it was made, so no
//! 60-second span ever holds more than the limit, with no doubled burst at a clock edge.
//! Rejected requests consume nothing.
//!
//! [`RateLimiter`] is the seam for a shared store: [`LocalRateLimiter`] counts in this
//! process; a Redis-backed one can implement the same trait without callers changing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use keyward_core::{AccountId, Limits};
use time::OffsetDateTime;

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

    /// Frees memory held for accounts with nothing counted; called periodically.
    fn forget_idle(&self, now: OffsetDateTime);
}

/// One rolling window of buckets.
#[derive(Debug)]
struct Window {
    bucket_ms: i64,
    span: i64,
    buckets: VecDeque<(i64, u32)>,
    total: u64,
}

impl Window {
    fn new(bucket_ms: i64, span: i64) -> Self {
        Self {
            bucket_ms,
            span,
            buckets: VecDeque::new(),
            total: 0,
        }
    }

    fn evict(&mut self, now_ms: i64) -> i64 {
        let current = now_ms.div_euclid(self.bucket_ms);
        while let Some(&(idx, n)) = self.buckets.front() {
            if idx > current - self.span {
                break;
            }
            self.total -= u64::from(n);
            self.buckets.pop_front();
        }
        current
    }

    fn add(&mut self, current: i64) {
        match self.buckets.back_mut() {
            Some((idx, n)) if *idx == current => *n += 1,
            _ => self.buckets.push_back((current, 1)),
        }
        self.total += 1;
    }

    fn ms_until_out(&self, idx: i64, now_ms: i64) -> u64 {
        let leaves = (idx + self.span) * self.bucket_ms;
        u64::try_from(leaves - now_ms).unwrap_or(0)
    }

    /// Seconds until the oldest counted request stops counting.
    fn reset_secs(&self, now_ms: i64) -> u64 {
        self.buckets
            .front()
            .map_or(0, |&(idx, _)| self.ms_until_out(idx, now_ms).div_ceil(1000))
    }

    /// Seconds until the count drops below `limit`.
    fn retry_after_secs(&self, limit: u32, now_ms: i64) -> u64 {
        let mut left = self.total;
        for &(idx, n) in &self.buckets {
            left -= u64::from(n);
            if left < u64::from(limit) {
                return self.ms_until_out(idx, now_ms).div_ceil(1000).max(1);
            }
        }
        1
    }
}

#[derive(Debug)]
struct AccountWindows {
    minute: Window,
    day: Window,
}

impl AccountWindows {
    fn new() -> Self {
        Self {
            minute: Window::new(1_000, 61),
            day: Window::new(60_000, 1_441),
        }
    }

    fn decide(&mut self, limits: Limits, now_ms: i64, consume: bool) -> RateDecision {
        let minute_bucket = self.minute.evict(now_ms);
        let day_bucket = self.day.evict(now_ms);
        let windows = [
            (&self.minute, limits.per_minute),
            (&self.day, limits.per_day),
        ];
        let allowed = windows
            .iter()
            .all(|(w, limit)| limit.is_none_or(|l| w.total < u64::from(l)));
        let retry_after_secs = (!allowed).then(|| {
            windows
                .iter()
                .filter_map(|(w, limit)| {
                    limit
                        .filter(|&l| w.total >= u64::from(l))
                        .map(|l| w.retry_after_secs(l, now_ms))
                })
                .max()
                .unwrap_or(1)
        });
        if allowed && consume {
            if limits.per_minute.is_some() {
                self.minute.add(minute_bucket);
            }
            if limits.per_day.is_some() {
                self.day.add(day_bucket);
            }
        }
        // The tighter window is the one with fewer requests left; ties go to the minute.
        let mut shown: Option<(u32, u32, u64)> = None;
        for (w, limit) in [
            (&self.minute, limits.per_minute),
            (&self.day, limits.per_day),
        ] {
            let Some(limit) = limit else { continue };
            let remaining = u32::try_from(u64::from(limit).saturating_sub(w.total)).unwrap_or(0);
            if shown.is_none_or(|(_, r, _)| remaining < r) {
                shown = Some((limit, remaining, w.reset_secs(now_ms)));
            }
        }
        let (limit, remaining, reset_secs) = shown.unwrap_or((0, 0, 0));
        RateDecision {
            allowed,
            limit,
            remaining,
            reset_secs,
            retry_after_secs,
        }
    }

    fn is_idle(&self) -> bool {
        self.minute.total == 0 && self.day.total == 0
    }
}

/// Limits counted in this process: exact on one node; per node when there are several.
#[derive(Debug, Default)]
pub struct LocalRateLimiter {
    accounts: Mutex<HashMap<AccountId, AccountWindows>>,
}

impl LocalRateLimiter {
    /// An empty limiter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn decide(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
        consume: bool,
    ) -> Option<RateDecision> {
        if limits.is_unlimited() {
            return None;
        }
        let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !consume && !accounts.contains_key(account) {
            return Some(AccountWindows::new().decide(limits, now_ms, false));
        }
        let windows = accounts
            .entry(account.clone())
            .or_insert_with(AccountWindows::new);
        Some(windows.decide(limits, now_ms, consume))
    }

    fn forget_idle_accounts(&self, now: OffsetDateTime) {
        let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        accounts.retain(|_, w| {
            w.minute.evict(now_ms);
            w.day.evict(now_ms);
            !w.is_idle()
        });
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision> {
        self.decide(account, limits, now, true)
    }

    async fn peek(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision> {
        self.decide(account, limits, now, false)
    }

    /// Forgets accounts with nothing counted, so memory follows active accounts only.
    fn forget_idle(&self, now: OffsetDateTime) {
        self.forget_idle_accounts(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn acct() -> AccountId {
        AccountId::from_ulid(ulid::Ulid::generate())
    }

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-11-26 12:00:00.5 UTC)
    }

    #[tokio::test]
    async fn free_plan_allows_ten_per_minute_then_refuses() {
        let limiter = LocalRateLimiter::new();
        let a = acct();
        let limits = Limits::new(Some(10), Some(100));
        for i in 0..10 {
            let d = limiter.acquire(&a, limits, t0()).await.unwrap();
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.limit, 10);
        }
        let refused = limiter.acquire(&a, limits, t0()).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        let retry = refused.retry_after_secs.unwrap();
        assert!((60..=61).contains(&retry), "retry-after {retry}");
        // Refusals consume nothing: once the window rolls, ten more go through.
        let later = t0() + Duration::seconds(i64::try_from(retry).unwrap());
        assert!(limiter.acquire(&a, limits, later).await.unwrap().allowed);
        // Another account is unaffected.
        assert!(
            limiter
                .acquire(&acct(), limits, t0())
                .await
                .unwrap()
                .allowed
        );
    }

    #[tokio::test]
    async fn no_sixty_second_span_holds_more_than_the_limit() {
        let limiter = LocalRateLimiter::new();
        let a = acct();
        let limits = Limits::new(Some(5), None);
        // Requests every 100 ms for three minutes; count successes in every span.
        let mut successes = Vec::new();
        for step in 0..1800 {
            let t = t0() + Duration::milliseconds(step * 100);
            if limiter.acquire(&a, limits, t).await.unwrap().allowed {
                successes.push(t);
            }
        }
        for (i, start) in successes.iter().enumerate() {
            let in_span = successes[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::seconds(60))
                .count();
            assert!(in_span <= 5, "{in_span} successes in the 60 s from {start}");
        }
        assert!(
            successes.len() >= 10,
            "the window must roll: {}",
            successes.len()
        );
    }

    #[tokio::test]
    async fn the_tighter_window_is_shown_and_day_limits_hold() {
        let limiter = LocalRateLimiter::new();
        let a = acct();
        let limits = Limits::new(Some(10), Some(12));
        for _ in 0..10 {
            limiter.acquire(&a, limits, t0()).await.unwrap();
        }
        let next_minute = t0() + Duration::seconds(62);
        let d = limiter.acquire(&a, limits, next_minute).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (12, 1), "day window is tighter now");
        limiter.acquire(&a, limits, next_minute).await.unwrap();
        let refused = limiter.acquire(&a, limits, next_minute).await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after_secs.unwrap() > 80_000);
    }

    #[tokio::test]
    async fn peek_counts_nothing_and_unlimited_has_no_decision() {
        let limiter = LocalRateLimiter::new();
        let a = acct();
        let limits = Limits::new(Some(1), None);
        assert_eq!(limiter.peek(&a, limits, t0()).await.unwrap().remaining, 1);
        assert!(limiter.acquire(&a, limits, t0()).await.unwrap().allowed);
        assert!(limiter.acquire(&a, Limits::default(), t0()).await.is_none());
        limiter.forget_idle(t0() + Duration::days(2));
        assert!(limiter.accounts.lock().unwrap().is_empty());
    }
}
