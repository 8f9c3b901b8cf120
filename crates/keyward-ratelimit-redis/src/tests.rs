//! Against a real Redis: `KEYWARD_TEST_REDIS_URL` (CI sets `redis://127.0.0.1:6379`).
//! The fail-open tests need no Redis at all; the recovery test starts its own
//! `redis-server` on a free port.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tokio::task::JoinSet;
use ulid::Ulid;

use super::*;

const FREE: Limits = Limits::new(Some(10), Some(100));

fn acct() -> AccountId {
    AccountId::from_ulid(Ulid::generate())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A unique key prefix on the test Redis; its keys are deleted on drop, even when the test
/// panics (and they would expire anyway).
struct Fixture {
    url: String,
    prefix: String,
}

impl Fixture {
    fn new() -> Option<Self> {
        let Ok(url) = std::env::var("KEYWARD_TEST_REDIS_URL") else {
            eprintln!("SKIPPED: KEYWARD_TEST_REDIS_URL is not set; Redis tests did not run");
            return None;
        };
        Some(Self {
            url,
            prefix: format!("keyward:test:{}:", Ulid::generate()),
        })
    }

    async fn limiter(&self) -> RedisRateLimiter {
        RedisRateLimiter::connect_with_prefix(&self.url, self.prefix.clone())
            .await
            .unwrap()
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The keys this test created.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut self.conn())
            .unwrap();
        keys.sort();
        keys
    }

    fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(format!("{}{key}", self.prefix))
            .query(&mut self.conn())
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

#[tokio::test]
async fn free_plan_allows_ten_per_minute_then_refuses() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    assert!(limiter.is_redis_up());
    let a = acct();
    for i in 0..10 {
        let d = limiter.acquire(&a, FREE, now()).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!((d.limit, d.remaining), (10, 9 - i), "request {i}");
        assert!((1..=61).contains(&d.reset_secs), "reset {}", d.reset_secs);
        assert_eq!(d.retry_after_secs, None);
    }
    for _ in 0..3 {
        let refused = limiter.acquire(&a, FREE, now()).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!((refused.limit, refused.remaining), (10, 0));
        let retry = refused.retry_after_secs.unwrap();
        assert!((59..=61).contains(&retry), "retry-after {retry}");
    }
    // Another account is unaffected.
    assert!(limiter.acquire(&acct(), FREE, now()).await.unwrap().allowed);
    // The counts live in Redis: a fresh limiter (another node) sees them.
    let other = fx.limiter().await;
    assert_eq!(other.peek(&a, FREE, now()).await.unwrap().remaining, 0);
    assert!(
        limiter.is_redis_up() && other.is_redis_up(),
        "nothing may have come from the fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_limit_under_concurrency() {
    let Some(fx) = Fixture::new() else { return };
    let nodes = [Arc::new(fx.limiter().await), Arc::new(fx.limiter().await)];
    let a = acct();
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let node = nodes[i % 2].clone();
        let a = a.clone();
        tasks.spawn(async move { node.acquire(&a, FREE, now()).await.unwrap() });
    }
    let decisions = tasks.join_all().await;
    let mut remaining: Vec<u32> = decisions
        .iter()
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    // Exactly ten succeed, each saw a distinct count: the script ran atomically.
    assert_eq!(remaining, (0..10).collect::<Vec<_>>());
    assert!(
        decisions
            .iter()
            .filter(|d| !d.allowed)
            .all(|d| d.retry_after_secs.is_some())
    );
    for node in &nodes {
        assert!(node.is_redis_up());
        assert_eq!(node.peek(&a, FREE, now()).await.unwrap().remaining, 0);
    }
}

#[tokio::test]
async fn peek_consumes_nothing() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    let a = acct();
    let fresh = limiter.peek(&a, FREE, now()).await.unwrap();
    assert_eq!(
        fresh,
        RateDecision {
            allowed: true,
            limit: 10,
            remaining: 10,
            reset_secs: 0,
            retry_after_secs: None
        }
    );
    assert!(fx.keys().is_empty(), "a peek creates no keys");
    assert_eq!(limiter.acquire(&a, FREE, now()).await.unwrap().remaining, 9);
    for _ in 0..5 {
        let d = limiter.peek(&a, FREE, now()).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }
    assert_eq!(limiter.acquire(&a, FREE, now()).await.unwrap().remaining, 8);
}

#[tokio::test]
async fn refusals_consume_nothing() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    // Refused by the minute window: the day window counted only the allowed three.
    let a = acct();
    let limits = Limits::new(Some(3), Some(100));
    for _ in 0..3 {
        assert!(limiter.acquire(&a, limits, now()).await.unwrap().allowed);
    }
    for _ in 0..5 {
        assert!(!limiter.acquire(&a, limits, now()).await.unwrap().allowed);
    }
    let day_only = limiter
        .peek(&a, Limits::new(None, Some(100)), now())
        .await
        .unwrap();
    assert_eq!((day_only.limit, day_only.remaining), (100, 97));
    // Refused by the day window: the minute window counted only the allowed two.
    let b = acct();
    let limits = Limits::new(Some(10), Some(2));
    for _ in 0..2 {
        assert!(limiter.acquire(&b, limits, now()).await.unwrap().allowed);
    }
    for _ in 0..4 {
        assert!(!limiter.acquire(&b, limits, now()).await.unwrap().allowed);
    }
    let minute_only = limiter
        .peek(&b, Limits::new(Some(10), None), now())
        .await
        .unwrap();
    assert_eq!((minute_only.limit, minute_only.remaining), (10, 8));
}

#[tokio::test]
async fn unlimited_has_no_decision_and_touches_nothing() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    let a = acct();
    assert_eq!(limiter.acquire(&a, Limits::default(), now()).await, None);
    assert_eq!(limiter.peek(&a, Limits::default(), now()).await, None);
    assert!(fx.keys().is_empty());
    // An unlimited window is not counted at all.
    let d = limiter
        .acquire(&a, Limits::new(None, Some(5)), now())
        .await
        .unwrap();
    assert_eq!((d.limit, d.remaining), (5, 4));
    let keys = fx.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains(":d:")), "{keys:?}");
}

#[tokio::test]
async fn the_tighter_window_is_shown() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    // The day window has fewer left: it is shown, with a reset about a day away.
    let a = acct();
    let limits = Limits::new(Some(10), Some(5));
    let first = limiter.acquire(&a, limits, now()).await.unwrap();
    assert_eq!((first.limit, first.remaining), (5, 4));
    assert!(
        (86_340..=86_460).contains(&first.reset_secs),
        "reset {}",
        first.reset_secs
    );
    for _ in 0..4 {
        assert!(limiter.acquire(&a, limits, now()).await.unwrap().allowed);
    }
    let refused = limiter.acquire(&a, limits, now()).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!((refused.limit, refused.remaining), (5, 0));
    let retry = refused.retry_after_secs.unwrap();
    assert!((86_340..=86_460).contains(&retry), "retry-after {retry}");
    // A tie goes to the minute window, whose reset is at most 61 s away.
    let b = acct();
    let tie = limiter
        .acquire(&b, Limits::new(Some(5), Some(5)), now())
        .await
        .unwrap();
    assert_eq!((tie.limit, tie.remaining), (5, 4));
    assert!(
        (1..=61).contains(&tie.reset_secs),
        "reset {}",
        tie.reset_secs
    );
}

#[tokio::test]
async fn keys_expire_when_their_window_has_passed() {
    let Some(fx) = Fixture::new() else { return };
    let limiter = fx.limiter().await;
    let a = acct();
    limiter.acquire(&a, FREE, now()).await.unwrap();
    let base = format!("{{{a}}}");
    for suffix in [":m:b", ":m:c"] {
        let ttl = fx.pttl(&format!("{base}{suffix}"));
        assert!((60_000..=62_000).contains(&ttl), "{suffix}: {ttl}");
    }
    for suffix in [":d:b", ":d:c"] {
        let ttl = fx.pttl(&format!("{base}{suffix}"));
        assert!((86_399_000..=86_461_000).contains(&ttl), "{suffix}: {ttl}");
    }
}

#[tokio::test]
async fn an_unparseable_url_fails_at_once() {
    let start = Instant::now();
    assert!(RedisRateLimiter::connect("not a redis url").await.is_err());
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn a_dead_redis_fails_open_to_per_node_limits() {
    let start = Instant::now();
    let limiter = RedisRateLimiter::connect("redis://127.0.0.1:1")
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "connect took {:?}",
        start.elapsed()
    );
    assert!(!limiter.is_redis_up());
    let a = acct();
    for i in 0..10 {
        let start = Instant::now();
        let d = limiter.acquire(&a, FREE, now()).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "acquire took {:?}",
            start.elapsed()
        );
        assert!(d.allowed, "request {i}");
        assert_eq!((d.limit, d.remaining), (10, 9 - i));
    }
    let refused = limiter.acquire(&a, FREE, now()).await.unwrap();
    assert!(
        !refused.allowed,
        "the local fallback still enforces the plan"
    );
    let retry = refused.retry_after_secs.unwrap();
    assert!((59..=61).contains(&retry), "retry-after {retry}");
    assert_eq!(limiter.peek(&a, FREE, now()).await.unwrap().remaining, 0);
    assert_eq!(limiter.acquire(&a, Limits::default(), now()).await, None);
}

/// A `redis-server` this test started, killed (by its handle) on drop.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_answers(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

#[tokio::test]
async fn redis_going_away_and_coming_back() {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed; the recovery test did not run");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let options = RedisRateLimiterOptions {
        probe_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let limiter = RedisRateLimiter::connect_with_options(&url, options)
        .await
        .unwrap();
    assert!(!limiter.is_redis_up());
    let a = acct();
    let limits = Limits::new(Some(3), None);
    for _ in 0..3 {
        assert!(limiter.acquire(&a, limits, now()).await.unwrap().allowed);
    }
    assert!(!limiter.acquire(&a, limits, now()).await.unwrap().allowed);

    let port_arg = port.to_string();
    let server = OwnRedis(
        Command::new("redis-server")
            .args([
                "--port",
                &port_arg,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/tmp",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_answers(&url) {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Peeks until a probe reaches Redis; from then on the shared (empty) counts answer.
    let mut shared = None;
    while Instant::now() < deadline {
        let d = limiter.peek(&a, limits, now()).await.unwrap();
        if limiter.is_redis_up() {
            shared = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shared.expect("the limiter never reconnected").remaining, 3);
    assert_eq!(
        limiter.acquire(&a, limits, now()).await.unwrap().remaining,
        2
    );

    drop(server);
    let start = Instant::now();
    let d = limiter.acquire(&a, limits, now()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "acquire took {:?}",
        start.elapsed()
    );
    assert!(d.allowed, "never refused because Redis is down");
    // The outage before was forgotten on recovery: the fallback starts from zero.
    assert_eq!(d.remaining, 2);
    assert!(!limiter.is_redis_up());
}

#[test]
fn malformed_replies_are_rejected() {
    assert_eq!(
        parse_reply(&[1, 10, 9, 61, -1]),
        Some(RateDecision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset_secs: 61,
            retry_after_secs: None
        })
    );
    assert_eq!(
        parse_reply(&[0, 10, 0, 61, 60]).unwrap().retry_after_secs,
        Some(60)
    );
    assert_eq!(parse_reply(&[1, 10, 9, 61]), None);
    assert_eq!(parse_reply(&[1, -10, 9, 61, -1]), None);
}

/// A small deterministic generator, so a failing replay can be reproduced.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn matches_the_local_limiter_step_for_step() {
    let Some(fx) = Fixture::new() else { return };
    let mut shared = fx.limiter().await;
    shared.caller_clock = true;
    let local = LocalRateLimiter::new();
    let accounts = [acct(), acct(), acct()];
    let limit_sets = [
        Limits::new(Some(5), Some(20)),
        Limits::new(Some(3), None),
        Limits::new(None, Some(7)),
        Limits::new(Some(10), Some(100)),
        Limits::new(Some(0), Some(5)),
        Limits::new(Some(4), Some(4)),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut t = time::macros::datetime!(2026-11-26 12:00:00.5 UTC);
    // Mostly sub-second gaps, some of about a minute, a few of hours: every window rolls,
    // the day window included (about two simulated days in all).
    for step in 0..4000 {
        let gap_ms = match rng.below(100) {
            0 => rng.below(3 * 3_600_000),
            1..=8 => rng.below(70_000),
            _ => rng.below(1_500),
        };
        t += time::Duration::milliseconds(i64::try_from(gap_ms).unwrap());
        let which = usize::try_from(rng.below(3)).unwrap();
        let account = &accounts[which];
        // Each account has its plan; now and then the plan changes under it.
        let limits = if rng.below(20) == 0 {
            limit_sets[usize::try_from(rng.below(6)).unwrap()]
        } else {
            limit_sets[which]
        };
        let consume = rng.below(5) != 0;
        let (expected, got) = if consume {
            (
                local.acquire(account, limits, t).await,
                shared.acquire(account, limits, t).await,
            )
        } else {
            (
                local.peek(account, limits, t).await,
                shared.peek(account, limits, t).await,
            )
        };
        assert_eq!(
            got, expected,
            "step {step} at {t}, {limits:?}, consume {consume}"
        );
    }
    assert!(shared.is_redis_up());
}

#[tokio::test]
async fn no_sixty_second_span_holds_more_than_the_limit() {
    let Some(fx) = Fixture::new() else { return };
    let mut limiter = fx.limiter().await;
    limiter.caller_clock = true;
    let a = acct();
    let limits = Limits::new(Some(5), None);
    let t0 = time::macros::datetime!(2026-11-26 12:00:00.5 UTC);
    // Requests every 100 ms for three minutes; count successes in every span.
    let mut successes = Vec::new();
    for step in 0..1800 {
        let t = t0 + time::Duration::milliseconds(step * 100);
        if limiter.acquire(&a, limits, t).await.unwrap().allowed {
            successes.push(t);
        }
    }
    for (i, start) in successes.iter().enumerate() {
        let in_span = successes[i..]
            .iter()
            .take_while(|t| **t < *start + time::Duration::seconds(60))
            .count();
        assert!(in_span <= 5, "{in_span} successes in the 60 s from {start}");
    }
    assert!(
        successes.len() >= 10,
        "the window must roll: {}",
        successes.len()
    );
}

#[test]
fn state_changes_are_reported_once() {
    let health = Health::new(Duration::from_secs(3600));
    assert!(health.should_try());
    assert!(!health.mark_up(), "already up: nothing to log");
    assert!(health.mark_down(), "up -> down logs");
    assert!(!health.mark_down(), "still down: no second log");
    // While down, nobody tries before the next probe slot.
    assert!(!health.should_try());
    assert!(health.mark_up(), "down -> up logs");
    assert!(!health.mark_up());
    assert!(health.should_try());

    let health = Health::new(Duration::ZERO);
    health.mark_down();
    assert!(health.should_try(), "a due probe is tried");
}
