//! [`LocalRateLimiter`]: the window rule of the crate docs, counted in this process.
//! Exact on one node; with several nodes, each counts its own share (the Redis limiter
//! falls back to this one while Redis does not answer).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keyward_core::{AccountId, KeyId, Limits};
use time::OffsetDateTime;

use crate::{
    CreditState, KeyCharge, KeyDecision, MonthSeeds, RateDecision, RateLimiter, UsageSource,
    Window as Refusal, credit_step, month_number, secs_until_month_end, secs_until_refill, unix_ms,
};

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
    /// The month window: a [`month_number`] and the requests counted in it, once started.
    month: Option<(i64, u64)>,
}

/// One limited window as a decision sees it.
struct View {
    window: Refusal,
    limit: u32,
    total: u64,
}

impl AccountWindows {
    fn new() -> Self {
        Self {
            minute: Window::new(1_000, 61),
            day: Window::new(60_000, 1_441),
            month: None,
        }
    }

    /// The month window's count in `month` (nothing counted in an earlier month counts).
    fn month_total(&self, month: i64) -> u64 {
        self.month
            .filter(|&(m, _)| m == month)
            .map_or(0, |(_, n)| n)
    }

    /// The limited windows, narrowest first, with their counts at `month`.
    fn views(&self, limits: Limits, month: i64) -> impl Iterator<Item = View> {
        [
            (Refusal::Minute, limits.per_minute, self.minute.total),
            (Refusal::Day, limits.per_day, self.day.total),
            (Refusal::Month, limits.per_month, self.month_total(month)),
        ]
        .into_iter()
        .filter_map(|(window, limit, total)| {
            limit.map(|limit| View {
                window,
                limit,
                total,
            })
        })
    }

    /// `reset` of a window: when its oldest counted request stops counting.
    fn reset_secs(&self, window: Refusal, now: OffsetDateTime, now_ms: i64, total: u64) -> u64 {
        match window {
            Refusal::Minute => self.minute.reset_secs(now_ms),
            Refusal::Day => self.day.reset_secs(now_ms),
            _ if total == 0 => 0,
            _ => secs_until_month_end(now),
        }
    }

    /// The window rule of the crate docs. A month limit counts from the month's count the
    /// limiter started ([`LocalRateLimiter`] does so before it asks).
    fn decide(&mut self, limits: Limits, now: OffsetDateTime, consume: bool) -> RateDecision {
        self.decide_and(limits, now, consume, |_| true)
    }

    /// [`AccountWindows::decide`] for a request that something else must admit as well (a
    /// key's credits): `also` is asked once, told whether the windows admit the request,
    /// and the request is counted only if both do. The decision is the windows' own.
    fn decide_and(
        &mut self,
        limits: Limits,
        now: OffsetDateTime,
        consume: bool,
        also: impl FnOnce(bool) -> bool,
    ) -> RateDecision {
        let now_ms = unix_ms(now);
        let month = month_number(now);
        let minute_bucket = self.minute.evict(now_ms);
        let day_bucket = self.day.evict(now_ms);
        // The full window that decides retry-after refuses; the wider on a tie.
        let mut refused: Option<(u64, Refusal)> = None;
        for v in self.views(limits, month) {
            if v.total < u64::from(v.limit) {
                continue;
            }
            let retry = match v.window {
                Refusal::Minute => self.minute.retry_after_secs(v.limit, now_ms),
                Refusal::Day => self.day.retry_after_secs(v.limit, now_ms),
                _ => secs_until_month_end(now).max(1),
            };
            if refused.is_none_or(|(r, _)| retry >= r) {
                refused = Some((retry, v.window));
            }
        }
        let allowed = refused.is_none();
        if also(allowed) && allowed && consume {
            if limits.per_minute.is_some() {
                self.minute.add(minute_bucket);
            }
            if limits.per_day.is_some() {
                self.day.add(day_bucket);
            }
            if limits.per_month.is_some() {
                self.month = Some((month, self.month_total(month) + 1));
            }
        }
        // The tighter window is the one with fewer requests left; ties go to the narrower.
        let mut shown: Option<(u32, u32, u64)> = None;
        for v in self.views(limits, month) {
            let remaining = u32::try_from(u64::from(v.limit).saturating_sub(v.total)).unwrap_or(0);
            if shown.is_none_or(|(_, r, _)| remaining < r) {
                let reset = self.reset_secs(v.window, now, now_ms, v.total);
                shown = Some((v.limit, remaining, reset));
            }
        }
        let (limit, remaining, reset_secs) = shown.unwrap_or((0, 0, 0));
        RateDecision {
            allowed,
            limit,
            remaining,
            reset_secs,
            retry_after_secs: refused.map(|(retry, _)| retry),
            refused_by: refused.map(|(_, window)| window),
        }
    }

    /// Whether nothing counts any more at `month`.
    fn is_idle(&self, month: i64) -> bool {
        self.minute.total == 0 && self.day.total == 0 && self.month.is_none_or(|(m, _)| m != month)
    }
}

/// A key's own windows and balance.
#[derive(Debug, Default)]
struct KeyState {
    windows: Option<AccountWindows>,
    credits: Option<CreditState>,
}

/// Limits counted in this process: exact on one node; per node when there are several.
#[derive(Debug, Default)]
pub struct LocalRateLimiter {
    // foldhash rather than std's SipHash: the ids are keyward's own, which no caller
    // can steer into collisions.
    accounts: Mutex<foldhash::HashMap<AccountId, AccountWindows>>,
    keys: Mutex<foldhash::HashMap<KeyId, KeyState>>,
    seeds: Arc<MonthSeeds>,
}

impl LocalRateLimiter {
    /// An empty limiter whose month windows start from nothing stored (for tests and
    /// tools; `serve` gives it the store with [`LocalRateLimiter::with_usage`]).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty limiter whose month windows start from the counts `source` holds.
    #[must_use]
    pub fn with_usage(source: Arc<dyn UsageSource>) -> Self {
        Self::with_seeds(Arc::new(MonthSeeds::new(source)))
    }

    /// An empty limiter starting its month windows from `seeds` (shared with the Redis
    /// limiter it stands in for).
    pub(crate) fn with_seeds(seeds: Arc<MonthSeeds>) -> Self {
        Self {
            seeds,
            ..Self::default()
        }
    }

    /// Whether `account`'s month window has its count of `month`.
    fn counts_month(&self, account: &AccountId, month: i64) -> bool {
        self.accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(account)
            .is_some_and(|w| w.month.is_some_and(|(m, _)| m == month))
    }

    async fn decide(
        &self,
        account: &AccountId,
        mut limits: Limits,
        now: OffsetDateTime,
        consume: bool,
    ) -> Option<RateDecision> {
        if limits.is_unlimited() {
            return None;
        }
        let month = month_number(now);
        if limits.per_month.is_some() && !self.counts_month(account, month) {
            match self.seeds.get(account, month).await {
                Some(stored) => {
                    let mut accounts = self
                        .accounts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let windows = accounts
                        .entry(account.clone())
                        .or_insert_with(AccountWindows::new);
                    // Only if absent: another request may have started it meanwhile.
                    if windows.month.is_none_or(|(m, _)| m != month) {
                        windows.month = Some((month, stored));
                    }
                }
                // Storage did not answer: the month is not enforced for this request.
                None => limits.per_month = None,
            }
            if limits.is_unlimited() {
                return None;
            }
        }
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !consume && !accounts.contains_key(account) {
            return Some(AccountWindows::new().decide(limits, now, false));
        }
        let windows = accounts
            .entry(account.clone())
            .or_insert_with(AccountWindows::new);
        Some(windows.decide(limits, now, consume))
    }

    /// The key rule of the crate docs, in one critical section: the windows are checked,
    /// then the balance, and only a request both admit is counted and charged.
    pub(crate) fn decide_key(
        &self,
        charge: &KeyCharge<'_>,
        now: OffsetDateTime,
        consume: bool,
    ) -> KeyDecision {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut scratch = KeyState::default();
        let state = if consume {
            keys.entry(charge.key.clone()).or_default()
        } else {
            keys.get_mut(charge.key).unwrap_or(&mut scratch)
        };
        let KeyState {
            windows: key_windows,
            credits: balance,
        } = state;
        let mut credits_remaining = None;
        // The balance is shown always and taken only from a request the windows admit.
        let mut take_credits = |windows_admit: bool| {
            let Some(credits) = charge.credits else {
                return true;
            };
            let take = consume && windows_admit;
            let (after, covered) = credit_step(*balance, credits, now, charge.cost, take);
            if take || balance.is_some() {
                *balance = Some(after);
            }
            credits_remaining = Some(after.balance);
            covered
        };
        let (windows, covered) = if charge.limits.is_unlimited() {
            (None, take_credits(true))
        } else {
            let mut covered = true;
            let windows = key_windows.get_or_insert_with(AccountWindows::new);
            let decision = windows.decide_and(charge.limits, now, consume, |admit| {
                covered = take_credits(admit);
                covered
            });
            (Some(decision), covered)
        };
        let mut refused_by = windows.and_then(|w| w.refused_by);
        let mut retry_after_secs = None;
        if refused_by.is_none()
            && !covered
            && let Some(credits) = charge.credits
        {
            refused_by = Some(Refusal::Credits);
            retry_after_secs = secs_until_refill(credits, now);
        }
        let windows = windows.map(|mut shown| {
            // The windows' own verdict is the request's: the credits' refusal included.
            shown.allowed = refused_by.is_none();
            shown.refused_by = refused_by;
            shown
        });
        if matches!(
            refused_by,
            Some(Refusal::Minute | Refusal::Day | Refusal::Month)
        ) {
            retry_after_secs = windows.and_then(|w| w.retry_after_secs);
        }
        KeyDecision {
            windows,
            refused_by,
            retry_after_secs,
            credits_remaining,
        }
    }

    /// Forgets what counts no more at `now`; `month_too` forgets this month's counts as
    /// well (the Redis limiter's fallback, once Redis holds the counts again).
    pub(crate) fn forget_idle_accounts(&self, now: OffsetDateTime, month_too: bool) {
        let now_ms = unix_ms(now);
        let month = if month_too {
            i64::MIN
        } else {
            // The stored counts of past months are needed no more.
            self.seeds.keep_only(month_number(now));
            month_number(now)
        };
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        accounts.retain(|_, w| {
            w.minute.evict(now_ms);
            w.day.evict(now_ms);
            !w.is_idle(month)
        });
        drop(accounts);
        // A balance is never forgotten: it is the only record of what was spent.
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.retain(|_, k| {
            if let Some(w) = &mut k.windows {
                w.minute.evict(now_ms);
                w.day.evict(now_ms);
                if w.is_idle(month) {
                    k.windows = None;
                }
            }
            k.windows.is_some() || k.credits.is_some()
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
        self.decide(account, limits, now, true).await
    }

    async fn peek(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision> {
        self.decide(account, limits, now, false).await
    }

    async fn acquire_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision {
        self.decide_key(charge, now, true)
    }

    async fn peek_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision {
        self.decide_key(charge, now, false)
    }

    /// Forgets accounts with nothing counted (a month's count lasts until the month ends),
    /// so memory follows active accounts only.
    fn forget_idle(&self, now: OffsetDateTime) {
        self.forget_idle_accounts(now, false);
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
        crate::vectors::no_sixty_second_span_holds_more_than_the_limit(&LocalRateLimiter::new())
            .await;
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

#[cfg(test)]
mod key_tests {
    use super::*;
    use keyward_core::{Credits, Refill, RefillInterval};
    use proptest::prelude::*;
    use time::Duration;

    fn key() -> KeyId {
        KeyId::from_ulid(ulid::Ulid::generate())
    }

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-11-26 12:00:00.5 UTC)
    }

    fn credits(remaining: u64, refill: Option<(u64, RefillInterval)>) -> Credits {
        Credits {
            remaining,
            refill: refill.map(|(amount, interval)| Refill { amount, interval }),
            generation: 1,
            set_at: t0().unix_timestamp(),
        }
    }

    #[test]
    fn a_key_window_refuses_past_its_limit_and_takes_no_credit_then() {
        let limiter = LocalRateLimiter::new();
        let k = key();
        let c = credits(10, None);
        let charge = KeyCharge {
            key: &k,
            limits: Limits::new(Some(3), None),
            credits: Some(&c),
            cost: 1,
        };
        for left in [9, 8, 7] {
            let d = limiter.decide_key(&charge, t0(), true);
            assert!(d.allowed());
            assert_eq!(d.credits_remaining, Some(left));
        }
        let d = limiter.decide_key(&charge, t0(), true);
        assert_eq!(d.refused_by, Some(Refusal::Minute));
        assert_eq!(d.credits_remaining, Some(7));
        assert!(d.retry_after_secs.is_some_and(|s| (60..=61).contains(&s)));
        // Another key is untouched.
        let other = key();
        let sibling = KeyCharge {
            key: &other,
            ..charge
        };
        assert!(limiter.decide_key(&sibling, t0(), true).allowed());
    }

    #[test]
    fn credits_refuse_a_cost_they_cannot_cover_and_count_no_window_then() {
        let limiter = LocalRateLimiter::new();
        let k = key();
        let c = credits(5, Some((5, RefillInterval::Day)));
        let charge = KeyCharge {
            key: &k,
            limits: Limits::new(Some(100), None),
            credits: Some(&c),
            cost: 2,
        };
        assert_eq!(
            limiter.decide_key(&charge, t0(), true).credits_remaining,
            Some(3)
        );
        assert_eq!(
            limiter.decide_key(&charge, t0(), true).credits_remaining,
            Some(1)
        );
        let refused = limiter.decide_key(&charge, t0(), true);
        assert_eq!(refused.refused_by, Some(Refusal::Credits));
        assert_eq!(refused.credits_remaining, Some(1));
        // Until the next UTC midnight, 11 h 59 min 59.5 s away.
        assert_eq!(refused.retry_after_secs, Some(43_199));
        assert_eq!(refused.windows.map(|w| w.remaining), Some(98));
        // A cost the balance covers still goes through.
        let one = KeyCharge { cost: 1, ..charge };
        assert!(limiter.decide_key(&one, t0(), true).allowed());
        // The next UTC day refills to the amount.
        let tomorrow = t0() + Duration::hours(12);
        assert_eq!(
            limiter
                .decide_key(&charge, tomorrow, false)
                .credits_remaining,
            Some(5)
        );
        assert_eq!(
            limiter
                .decide_key(&charge, tomorrow, true)
                .credits_remaining,
            Some(3)
        );
        // Credits set again (a new generation) start over from their balance.
        let reset = Credits {
            generation: 2,
            remaining: 1,
            set_at: tomorrow.unix_timestamp(),
            ..c
        };
        let again = KeyCharge {
            credits: Some(&reset),
            ..charge
        };
        let d = limiter.decide_key(&again, tomorrow, true);
        assert_eq!(d.refused_by, Some(Refusal::Credits));
        assert_eq!(d.credits_remaining, Some(1));
    }

    #[test]
    fn a_balance_set_in_an_earlier_period_is_refilled_at_its_first_use() {
        let limiter = LocalRateLimiter::new();
        let k = key();
        let c = credits(0, Some((7, RefillInterval::Month)));
        let charge = KeyCharge {
            key: &k,
            limits: Limits::default(),
            credits: Some(&c),
            cost: 1,
        };
        assert!(!limiter.decide_key(&charge, t0(), true).allowed());
        let next_month = time::macros::datetime!(2026-12-01 0:00 UTC);
        let d = limiter.decide_key(&charge, next_month, true);
        assert_eq!((d.allowed(), d.credits_remaining), (true, Some(6)));
        assert!(d.windows.is_none());
    }

    /// The simple model: replays every request from the balance a caller set, refilling
    /// whenever a refill period starts between two requests (or since the balance was set).
    fn model(c: &Credits, requests: &[(OffsetDateTime, u32)]) -> Vec<(bool, u64)> {
        let mut balance = c.remaining;
        let mut since = OffsetDateTime::from_unix_timestamp(c.set_at).unwrap();
        requests
            .iter()
            .map(|&(at, cost)| {
                if let Some(refill) = c.refill
                    && refill.interval.next_start(since) <= at
                {
                    balance = refill.amount;
                    since = at;
                }
                let ok = balance >= u64::from(cost);
                if ok {
                    balance -= u64::from(cost);
                }
                (ok, balance)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn credits_follow_the_simple_model(
            remaining in 0u64..20,
            refill in proptest::option::of((1u64..20, prop_oneof![Just(RefillInterval::Day), Just(RefillInterval::Month)])),
            steps in proptest::collection::vec((0i64..40_000, 1u32..5), 1..60),
        ) {
            let c = credits(remaining, refill);
            let mut at = t0();
            let requests: Vec<(OffsetDateTime, u32)> = steps
                .iter()
                .map(|&(gap_secs, cost)| {
                    at += Duration::seconds(gap_secs * 3);
                    (at, cost)
                })
                .collect();
            let limiter = LocalRateLimiter::new();
            let k = key();
            let got: Vec<(bool, u64)> = requests
                .iter()
                .map(|&(at, cost)| {
                    let charge = KeyCharge { key: &k, limits: Limits::default(), credits: Some(&c), cost };
                    let d = limiter.decide_key(&charge, at, true);
                    (d.allowed(), d.credits_remaining.unwrap())
                })
                .collect();
            prop_assert_eq!(got, model(&c, &requests));
        }

        #[test]
        fn no_sixty_second_span_of_a_key_holds_more_than_its_limit(
            limit in 1u32..6,
            gaps_ms in proptest::collection::vec(0i64..30_000, 1..80),
        ) {
            let limiter = LocalRateLimiter::new();
            let k = key();
            let charge = KeyCharge { key: &k, limits: Limits::new(Some(limit), None), credits: None, cost: 1 };
            let mut at = t0();
            let mut allowed: Vec<OffsetDateTime> = Vec::new();
            for gap in gaps_ms {
                at += Duration::milliseconds(gap);
                let d = limiter.decide_key(&charge, at, true);
                let recent = allowed.iter().filter(|&&t| at - t < Duration::seconds(60)).count();
                if d.allowed() {
                    allowed.push(at);
                    prop_assert!(recent < limit as usize, "{} allowed within 60 s", recent + 1);
                } else {
                    // Refused only while the last 61 s hold the limit's worth.
                    let within = allowed.iter().filter(|&&t| at - t < Duration::seconds(62)).count();
                    prop_assert!(within >= limit as usize);
                    prop_assert_eq!(d.refused_by, Some(Refusal::Minute));
                }
            }
        }
    }
}
