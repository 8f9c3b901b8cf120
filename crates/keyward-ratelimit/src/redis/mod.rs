//! Plan rate limits shared by every keyward node through Redis (API.md §Rate limits).
//!
//! [`RedisRateLimiter`] implements [`RateLimiter`] with the window rule of the crate
//! docs, the same rule [`LocalRateLimiter`] counts in process; only the place where the
//! counts live differs, so that "on several nodes the limit holds across all of them
//! together". The shared test vectors (`vectors.rs`) run against both.
//!
//! # Why a Lua script reading the server's `TIME`
//!
//! Evicting old buckets, summing, deciding and counting must happen as one step, or two
//! nodes racing for the last slot would both get it. A Lua script (`limiter.lua`, sent once
//! and then run by hash with `EVALSHA` through [`redis::Script`]) runs atomically on the
//! server in one round trip, with no `WATCH`/retry loop. The script takes the time from
//! Redis's own `TIME`, not from the caller: every node then agrees on bucket boundaries even
//! when their clocks are skewed, and the `now` argument of the trait is **ignored** by this
//! implementation (it is only used by the local fallback below).
//!
//! # Data layout, memory and expiry
//!
//! Per account and window, two keys: `{prefix}{<account>}:m:b` is a list of the bucket
//! indexes in use, oldest first, and `{prefix}{<account>}:m:c` a hash of bucket index to
//! count plus a field `n` holding their sum (`:d:…` for the day window). The braces make the
//! account id a Redis Cluster hash tag, so all four keys of an account share one slot as a
//! script requires. The list lets the script evict from the front and count at the back in
//! O(1), and `n` spares it from summing 1441 day buckets per request; only a refusal walks the
//! oldest buckets, and it stops as soon as enough requests would have left. An account costs
//! at most 61 + 1441 small entries. Every write sets `PEXPIRE` to when the newest bucket leaves
//! its window, so idle accounts vanish by themselves without a sweeper.
//!
//! The month window is one more hash, `{prefix}{<account>}:mo`: the month's number and its
//! count. The script works the month out from Redis's clock; when the month is limited and
//! the hash holds no count of it, the script answers that, changing nothing, with the
//! month's number, and the limiter runs it again with the account's stored count of that
//! month ([`MonthSeeds`]: read from storage once per account and month on this node), which
//! the script sets only if the count is still absent. Every node then adds to the one count,
//! and the hash expires a second after the month ends.
//!
//! A key's own windows are the same keys under `{prefix}{key:<key_id>}`, and its credits one
//! more hash there (`:cr`), which the same script checks and charges in the same step as the
//! key's windows. The account's windows and the key's are two steps: a request the key's
//! limits refuse has already been counted in its account's windows (never the other way).
//!
//! # Failing open
//!
//! Rate limiting must never take the API down with it. Every Redis call is bounded (a
//! response and connect timeout on the [`redis::aio::ConnectionManager`], which reconnects by
//! itself, plus an overall [`tokio::time::timeout`]); when one fails or times out, the decision
//! comes from an embedded [`LocalRateLimiter`] instead, which enforces the
//! same limits per node. Requests are never refused because Redis is down. The failure is
//! counted in `keyward_ratelimit_redis_failures_total`, each decision answered locally in
//! `keyward_ratelimit_redis_fallback_total`, and the state change is logged once: WARN when
//! Redis goes down, INFO when it is back, never per request. While Redis is down, only one
//! request per probe interval (1 s by default) tries it again, so an outage costs the other
//! requests no latency at all.
//!
//! A call that times out after the script was sent may still be counted by Redis, and the
//! request is then counted locally too; erring towards counting a request twice during an
//! outage is the safe side. The local counts are dropped when Redis is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use async_trait::async_trait;
use keyward_core::{AccountId, Credits, Limits, metric};
use time::OffsetDateTime;

use std::sync::Arc;

use crate::{
    KeyCharge, KeyDecision, LocalRateLimiter, MonthSeeds, RateDecision, RateLimiter, UsageSource,
    Window, secs_until_refill,
};

/// The atomic evict/sum/decide/count step, run on the Redis server.
const SCRIPT: &str = include_str!("limiter.lua");

/// How [`RedisRateLimiter`] reaches Redis; [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct RedisRateLimiterOptions {
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    /// Default `keyward:rl:`.
    pub key_prefix: String,
    /// The longest a decision waits for Redis before falling back to the local limiter.
    /// Default 250 ms.
    pub timeout: Duration,
    /// While Redis is down, how often one request tries it again. Default 1 s.
    pub probe_interval: Duration,
    /// For a `rediss://` URL: the certificates (PEM) of the CAs to trust for the server's
    /// certificate, in place of the built-in Mozilla roots (a private CA, as managed Redis
    /// services often use). Default `None`: the built-in roots.
    pub ca_certificates: Option<Vec<u8>>,
}

impl Default for RedisRateLimiterOptions {
    fn default() -> Self {
        Self {
            key_prefix: "keyward:rl:".to_owned(),
            timeout: Duration::from_millis(250),
            probe_interval: Duration::from_secs(1),
            ca_certificates: None,
        }
    }
}

/// Plan limits counted in Redis and shared by every node, failing open to per-node limits.
///
/// Cheap to share behind an `Arc`; it holds one multiplexed, self-reconnecting connection.
#[derive(Debug)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    options: RedisRateLimiterOptions,
    seeds: Arc<MonthSeeds>,
    fallback: LocalRateLimiter,
    health: Health,
    /// Tests only: send the caller's `now` to the script (its optional fourth argument)
    /// instead of letting the server read `TIME`, so that the shared test vectors can
    /// state the times of their requests and a replay can compare with
    /// [`LocalRateLimiter`] over days of traffic. Production never sends it: every node
    /// must count on one clock, Redis's.
    #[cfg(test)]
    caller_clock: bool,
}

/// Whether Redis answers, and when to try it again while it does not.
#[derive(Debug)]
struct Health {
    down: AtomicBool,
    /// While down: milliseconds since `epoch` before which no request tries Redis.
    next_probe_ms: AtomicU64,
    epoch: Instant,
    probe_interval_ms: u64,
}

impl Health {
    fn new(probe_interval: Duration) -> Self {
        Self {
            down: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            probe_interval_ms: u64::try_from(probe_interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request should ask Redis: always while it is up; while it is down, only
    /// the one request that claims the next probe slot, so an outage adds no latency to the
    /// others.
    fn should_try(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_probe_ms.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.probe_interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records a failure; true when Redis was up until now (so the caller logs once).
    fn mark_down(&self) -> bool {
        self.next_probe_ms.store(
            self.now_ms().saturating_add(self.probe_interval_ms),
            Ordering::Release,
        );
        !self.down.swap(true, Ordering::AcqRel)
    }

    /// Records a success; true when Redis was down until now (so the caller logs once).
    fn mark_up(&self) -> bool {
        // A load first keeps the common path free of a contended write.
        self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel)
    }
}

/// `pem` if it holds at least one certificate and nothing unreadable: an empty trust
/// store would make every TLS connection fail, which is better said at start-up.
fn check_pem_certificates(pem: &[u8]) -> Result<&[u8], redis::RedisError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut count = 0_usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unreadable CA certificate",
                e.to_string(),
            ))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the CA certificates",
        )));
    }
    Ok(pem)
}

/// Why a Redis decision could not be used.
#[derive(Debug)]
enum Failure {
    Redis(redis::RedisError),
    Timeout(Duration),
    Malformed(Vec<i64>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(err) => write!(f, "{err}"),
            Self::Timeout(after) => write!(f, "no answer within {} ms", after.as_millis()),
            Self::Malformed(reply) => write!(f, "unexpected script reply {reply:?}"),
        }
    }
}

impl RedisRateLimiter {
    /// Connects with the default options (key prefix `keyward:rl:`).
    ///
    /// `rediss://` URLs connect over TLS (rustls), checking the server's certificate and
    /// host name against the built-in roots or [`RedisRateLimiterOptions::ca_certificates`].
    ///
    /// # Errors
    /// Only when `url` is not a valid Redis URL, or CA certificates are given for a URL that
    /// is not `rediss://` or are not PEM. An unreachable server is not an error, nor is one
    /// whose certificate is not trusted: the limiter starts failing open (logged once) and
    /// uses Redis as soon as it answers.
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        Self::connect_with_options(url, RedisRateLimiterOptions::default()).await
    }

    /// Connects with keys under `key_prefix` instead of `keyward:rl:` (tests isolate
    /// themselves this way).
    ///
    /// # Errors
    /// As [`RedisRateLimiter::connect`].
    pub async fn connect_with_prefix(
        url: &str,
        key_prefix: impl Into<String>,
    ) -> Result<Self, redis::RedisError> {
        let options = RedisRateLimiterOptions {
            key_prefix: key_prefix.into(),
            ..RedisRateLimiterOptions::default()
        };
        Self::connect_with_options(url, options).await
    }

    /// Connects with explicit options, then checks once (within `options.timeout`) that
    /// Redis answers, loading the script on the way.
    ///
    /// # Errors
    /// As [`RedisRateLimiter::connect`].
    pub async fn connect_with_options(
        url: &str,
        options: RedisRateLimiterOptions,
    ) -> Result<Self, redis::RedisError> {
        let client = match &options.ca_certificates {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(check_pem_certificates(pem)?.to_vec()),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout))
            // Few, short retries: the overall timeout bounds every call anyway, and a
            // connection attempt that gives up soon lets the next probe start a fresh one.
            .set_number_of_retries(2)
            .set_max_delay(options.timeout);
        // Lazy, so that a server that is down at start does not hold the node's start-up.
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let seeds = Arc::new(MonthSeeds::default());
        let limiter = Self {
            conn,
            script: redis::Script::new(SCRIPT),
            health: Health::new(options.probe_interval),
            options,
            fallback: LocalRateLimiter::with_seeds(Arc::clone(&seeds)),
            seeds,
            #[cfg(test)]
            caller_clock: false,
        };
        let mut conn = limiter.conn.clone();
        let loaded = tokio::time::timeout(
            limiter.options.timeout,
            limiter.script.prepare_invoke().load_async(&mut conn),
        )
        .await;
        match loaded {
            Ok(Ok(_)) => tracing::debug!("Redis rate limiter connected"),
            Ok(Err(err)) => limiter.failed(&Failure::Redis(err)),
            Err(_) => limiter.failed(&Failure::Timeout(limiter.options.timeout)),
        }
        Ok(limiter)
    }

    /// The limiter with month windows starting from the counts `source` holds (without
    /// it, from nothing stored).
    #[must_use]
    pub fn with_usage(mut self, source: Arc<dyn UsageSource>) -> Self {
        self.seeds = Arc::new(MonthSeeds::new(source));
        self.fallback = LocalRateLimiter::with_seeds(Arc::clone(&self.seeds));
        self
    }

    /// Whether the last call to Redis succeeded, i.e. limits currently hold across nodes
    /// (for health checks and dashboards).
    #[must_use]
    pub fn is_redis_up(&self) -> bool {
        !self.health.down.load(Ordering::Acquire)
    }

    fn keys(&self, owner: &str) -> [String; 5] {
        let prefix = &self.options.key_prefix;
        // `{…}` is a Redis Cluster hash tag: an account's keys land in one slot.
        let base = format!("{prefix}{{{owner}}}");
        [
            format!("{base}:m:b"),
            format!("{base}:m:c"),
            format!("{base}:d:b"),
            format!("{base}:d:c"),
            format!("{base}:mo"),
        ]
    }

    /// The account's decision; when Redis has no count of the month yet, a second run
    /// with the stored count.
    async fn ask_redis(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
        consume: bool,
    ) -> Result<Option<RateDecision>, Failure> {
        let owner = account.as_str();
        let reply = match self
            .run_script(owner, limits, None, None, now, consume)
            .await?
        {
            Reply::NeedsMonth(month) => match self.seeds.get(account, month).await {
                Some(stored) => {
                    self.run_script(owner, limits, Some((month, stored)), None, now, consume)
                        .await?
                }
                // Storage did not answer: the month is not enforced for this request.
                None => {
                    let limits = Limits {
                        per_month: None,
                        ..limits
                    };
                    if limits.is_unlimited() {
                        return Ok(None);
                    }
                    self.run_script(owner, limits, None, None, now, consume)
                        .await?
                }
            },
            reply => reply,
        };
        match reply {
            Reply::Decided(decision, _) => Ok(Some(decision)),
            Reply::NeedsMonth(month) => Err(Failure::Malformed(vec![-1, month])),
        }
    }

    /// Runs the script for `owner`'s windows (an account id, or `key:<key_id>`), with the
    /// stored count of a month if given, and its credits if given with the request's cost.
    async fn run_script(
        &self,
        owner: &str,
        limits: Limits,
        stored_month: Option<(i64, u64)>,
        credits: Option<(&Credits, u32)>,
        now: OffsetDateTime,
        consume: bool,
    ) -> Result<Reply, Failure> {
        let [
            minute_buckets,
            minute_counts,
            day_buckets,
            day_counts,
            month,
        ] = self.keys(owner);
        let limit_arg = |limit: Option<u32>| limit.map_or(-1, i64::from);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(minute_buckets)
            .key(minute_counts)
            .key(day_buckets)
            .key(day_counts)
            .key(month)
            .arg(limit_arg(limits.per_minute))
            .arg(limit_arg(limits.per_day))
            .arg(limit_arg(limits.per_month))
            .arg(u8::from(consume));
        #[cfg(test)]
        let caller_clock = self.caller_clock;
        #[cfg(not(test))]
        let caller_clock = false;
        if caller_clock {
            invocation.arg(crate::unix_ms(now));
        } else {
            invocation.arg("");
        }
        match stored_month {
            Some((month, count)) => invocation.arg(month).arg(count),
            None => invocation.arg("").arg(0),
        };
        if let Some((credits, cost)) = credits {
            let period_of = |t| credits.refill.map_or(-1, |r| r.interval.period_of(t));
            let set_at = OffsetDateTime::from_unix_timestamp(credits.set_at).unwrap_or(now);
            invocation
                .key(format!("{}{{{owner}}}:cr", self.options.key_prefix))
                .arg(cost)
                .arg(credits.generation)
                .arg(credits.remaining)
                .arg(
                    credits
                        .refill
                        .map_or(-1, |r| i64::try_from(r.amount).unwrap_or(-1)),
                )
                .arg(period_of(now))
                .arg(period_of(set_at));
        }
        // The manager is a cheap handle on one shared multiplexed connection.
        let mut conn = self.conn.clone();
        let reply: Vec<i64> =
            tokio::time::timeout(self.options.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| Failure::Timeout(self.options.timeout))?
                .map_err(Failure::Redis)?;
        if let &[-1, month] = reply.as_slice() {
            return Ok(Reply::NeedsMonth(month));
        }
        let credit = match reply.get(6..) {
            Some(&[refused, balance]) => Some((refused == 1, u64::try_from(balance).unwrap_or(0))),
            _ => None,
        };
        let decision = parse_reply(reply.get(..6).unwrap_or_default());
        match (decision, credit.is_some() == credits.is_some()) {
            (Some(decision), true) => Ok(Reply::Decided(decision, credit)),
            _ => Err(Failure::Malformed(reply)),
        }
    }

    async fn decide_key(
        &self,
        charge: &KeyCharge<'_>,
        now: OffsetDateTime,
        consume: bool,
    ) -> KeyDecision {
        if self.health.should_try() {
            let owner = format!("key:{}", charge.key);
            let credits = charge.credits.map(|c| (c, charge.cost));
            match self
                .run_script(&owner, charge.limits, None, credits, now, consume)
                .await
            {
                // A key's own limits have no month.
                Ok(Reply::NeedsMonth(month)) => self.failed(&Failure::Malformed(vec![-1, month])),
                Ok(Reply::Decided(mut windows, credit)) => {
                    self.recovered(now);
                    let limited = !charge.limits.is_unlimited();
                    let credits_refused = credit.is_some_and(|(refused, _)| refused);
                    let refused_by = if windows.allowed {
                        None
                    } else if credits_refused {
                        Some(Window::Credits)
                    } else {
                        windows.refused_by
                    };
                    windows.refused_by = refused_by;
                    let retry_after_secs = match refused_by {
                        Some(Window::Credits) => {
                            charge.credits.and_then(|c| secs_until_refill(c, now))
                        }
                        Some(_) => windows.retry_after_secs,
                        None => None,
                    };
                    return KeyDecision {
                        windows: limited.then_some(windows),
                        refused_by,
                        retry_after_secs,
                        credits_remaining: credit.map(|(_, balance)| balance),
                    };
                }
                Err(failure) => self.failed(&failure),
            }
        }
        metrics::counter!(metric::RATELIMIT_REDIS_FALLBACK).increment(1);
        self.fallback.decide_key(charge, now, consume)
    }

    fn failed(&self, failure: &Failure) {
        metrics::counter!(metric::RATELIMIT_REDIS_FAILURES).increment(1);
        if self.health.mark_down() {
            tracing::warn!(
                error = %failure,
                "Redis rate limiter unavailable; limits are counted per node until it is back"
            );
        } else {
            tracing::debug!(error = %failure, "Redis rate limiter still unavailable");
        }
    }

    fn recovered(&self, now: OffsetDateTime) {
        if self.health.mark_up() {
            tracing::info!("Redis rate limiter is back; limits are shared across nodes again");
            // Redis has the authoritative counts again: drop the outage's local ones, so
            // memory returns and a later outage starts from a clean slate.
            self.fallback
                .forget_idle_accounts(now + time::Duration::days(2), true);
        }
    }

    async fn decide(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
        consume: bool,
    ) -> Option<RateDecision> {
        if limits.is_unlimited() {
            return None;
        }
        if self.health.should_try() {
            match self.ask_redis(account, limits, now, consume).await {
                Ok(decision) => {
                    self.recovered(now);
                    return decision;
                }
                Err(failure) => self.failed(&failure),
            }
        }
        metrics::counter!(metric::RATELIMIT_REDIS_FALLBACK).increment(1);
        if consume {
            self.fallback.acquire(account, limits, now).await
        } else {
            self.fallback.peek(account, limits, now).await
        }
    }
}

/// What one run of the script answered.
#[derive(Debug)]
enum Reply {
    /// The decision, and with credits whether they refused and the balance after.
    Decided(RateDecision, Option<(bool, u64)>),
    /// The month is limited and Redis has no count of it: run again with the stored
    /// count of this month (its number).
    NeedsMonth(i64),
}

/// Reads the script's `{allowed, limit, remaining, reset_secs, retry_after_secs or -1,
/// refusing window}`.
fn parse_reply(reply: &[i64]) -> Option<RateDecision> {
    let &[
        allowed,
        limit,
        remaining,
        reset_secs,
        retry_after,
        refused_by,
    ] = reply
    else {
        return None;
    };
    let refused_by = match refused_by {
        0 => None,
        1 => Some(Window::Minute),
        2 => Some(Window::Day),
        3 => Some(Window::Month),
        _ => return None,
    };
    if allowed == 1 && refused_by.is_some() {
        return None;
    }
    Some(RateDecision {
        refused_by,
        allowed: allowed == 1,
        limit: u32::try_from(limit).ok()?,
        remaining: u32::try_from(remaining).ok()?,
        reset_secs: u64::try_from(reset_secs).ok()?,
        retry_after_secs: (retry_after >= 0)
            .then(|| u64::try_from(retry_after))
            .transpose()
            .ok()?,
    })
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    /// Counts one request in Redis if every window has room. `now` is ignored while Redis
    /// answers (the server's clock decides) and used only by the local fallback.
    async fn acquire(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision> {
        self.decide(account, limits, now, true).await
    }

    /// The current state without counting anything; `now` as for
    /// [`RateLimiter::acquire`].
    async fn peek(
        &self,
        account: &AccountId,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Option<RateDecision> {
        self.decide(account, limits, now, false).await
    }

    /// Counts and charges in Redis, in one script run; `now` decides only the refill
    /// period (and, as for [`RateLimiter::acquire`], the local fallback).
    async fn acquire_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision {
        self.decide_key(charge, now, true).await
    }

    async fn peek_key(&self, charge: &KeyCharge<'_>, now: OffsetDateTime) -> KeyDecision {
        self.decide_key(charge, now, false).await
    }

    /// Forgets idle accounts in the local fallback. Redis itself needs no sweeping: its
    /// keys expire.
    fn forget_idle(&self, now: OffsetDateTime) {
        self.fallback.forget_idle(now);
    }
}

#[cfg(test)]
pub(crate) mod tests;
