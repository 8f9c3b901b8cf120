//! Against a real Redis at `KEYWARD_TEST_REDIS_URL` (skipped with a shown line when it is
//! missing, failed under `KEYWARD_TEST_REQUIRE_SERVICES=1`). The fail-open tests need no
//! Redis at all; the recovery test starts its own `redis-server` on a free port.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use keyward_test_support::{REDIS_URL_VAR, require, service_url};
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
pub(crate) struct Fixture {
    url: String,
    prefix: String,
}

impl Fixture {
    /// The fixture of the test named `test`, or `None` (after the skip line) without a
    /// test Redis.
    pub(crate) fn new(test: &str) -> Option<Self> {
        let url = service_url(REDIS_URL_VAR, test)?;
        Some(Self {
            url,
            prefix: format!("keyward:test:{}:", Ulid::generate()),
        })
    }

    /// A limiter on the fixture's keys.
    pub(crate) async fn limiter(&self) -> RedisRateLimiter {
        RedisRateLimiter::connect_with_prefix(&self.url, self.prefix.clone())
            .await
            .unwrap()
    }

    /// A limiter on the fixture's keys that sends the caller's clock to the script.
    pub(crate) async fn limiter_on_caller_clock(&self) -> RedisRateLimiter {
        let mut limiter = self.limiter().await;
        limiter.caller_clock = true;
        limiter
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
    let Some(fx) = Fixture::new("free_plan_allows_ten_per_minute_then_refuses") else {
        return;
    };
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
    let Some(fx) = Fixture::new("two_nodes_share_the_limit_under_concurrency") else {
        return;
    };
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
    let Some(fx) = Fixture::new("peek_consumes_nothing") else {
        return;
    };
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
            retry_after_secs: None,
            refused_by: None,
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
    let Some(fx) = Fixture::new("refusals_consume_nothing") else {
        return;
    };
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
    let Some(fx) = Fixture::new("unlimited_has_no_decision_and_touches_nothing") else {
        return;
    };
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
    let Some(fx) = Fixture::new("the_tighter_window_is_shown") else {
        return;
    };
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
    let Some(fx) = Fixture::new("keys_expire_when_their_window_has_passed") else {
        return;
    };
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
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !require(
        installed,
        "redis_going_away_and_coming_back",
        "redis-server is not installed",
    ) {
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
        parse_reply(&[1, 10, 9, 61, -1, 0]),
        Some(RateDecision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset_secs: 61,
            retry_after_secs: None,
            refused_by: None,
        })
    );
    let refused = parse_reply(&[0, 10, 0, 61, 60, 3]).unwrap();
    assert_eq!(
        (refused.retry_after_secs, refused.refused_by),
        (Some(60), Some(Window::Month))
    );
    assert_eq!(parse_reply(&[1, 10, 9, 61, -1]), None);
    assert_eq!(parse_reply(&[1, -10, 9, 61, -1, 0]), None);
    assert_eq!(parse_reply(&[0, 10, 0, 61, 60, 4]), None);
    assert_eq!(
        parse_reply(&[1, 10, 9, 61, -1, 1]),
        None,
        "allowed, yet refused"
    );
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
    let Some(fx) = Fixture::new("matches_the_local_limiter_step_for_step") else {
        return;
    };
    let accounts = [acct(), acct(), acct()];
    // The same stored counts for each, read by each on its own.
    let stored = [(); 2].map(|()| {
        let stored = Arc::new(crate::vectors::StoredCounts::default());
        let november = time::macros::datetime!(2026-11-01 0:00 UTC);
        stored.set_at(&accounts[0], november, 3);
        stored.set_at(&accounts[1], november, 40);
        stored
    });
    let shared = fx
        .limiter_on_caller_clock()
        .await
        .with_usage(stored[0].clone());
    let local = LocalRateLimiter::with_usage(stored[1].clone());
    let limit_sets = [
        Limits::new(Some(5), Some(20)).with_per_month(Some(30)),
        Limits::new(Some(3), None).with_per_month(Some(200)),
        Limits::new(None, Some(7)),
        Limits::new(Some(10), Some(100)),
        Limits::new(Some(0), Some(5)),
        Limits::new(Some(4), Some(4)),
        Limits::default().with_per_month(Some(45)),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut t = time::macros::datetime!(2026-11-26 12:00:00.5 UTC);
    let mut month_refusals = 0;
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
            limit_sets[usize::try_from(rng.below(7)).unwrap()]
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
        if got.is_some_and(|d| d.refused_by == Some(Window::Month)) {
            month_refusals += 1;
        }
    }
    assert!(shared.is_redis_up());
    assert!(month_refusals > 0, "the replay reaches a monthly quota");
    assert!(stored.iter().all(|s| s.most_reads() == 1));
}

#[tokio::test]
async fn no_sixty_second_span_holds_more_than_the_limit() {
    let Some(fx) = Fixture::new("no_sixty_second_span_holds_more_than_the_limit") else {
        return;
    };
    let limiter = fx.limiter_on_caller_clock().await;
    crate::vectors::no_sixty_second_span_holds_more_than_the_limit(&limiter).await;
    assert!(limiter.is_redis_up());
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

/// TLS (`rediss://`), against a Redis of the test's own that speaks only TLS, with a
/// certificate from a CA the test made.
mod tls {
    use keyward_test_support::tls::{TestCa, TlsRedis};

    use super::*;

    fn options(ca: Option<&TestCa>) -> RedisRateLimiterOptions {
        RedisRateLimiterOptions {
            ca_certificates: ca.map(|ca| ca.ca_pem.clone().into_bytes()),
            ..Default::default()
        }
    }

    /// The count of the minute window of `account` as the TLS server holds it.
    fn minute_count(redis: &TlsRedis, account: &AccountId) -> Option<i64> {
        let client = redis::Client::build_with_tls(
            redis.url(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(redis.ca().ca_pem.clone().into_bytes()),
            },
        )
        .unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("HGET")
            .arg(format!("keyward:rl:{{{account}}}:m:c"))
            .arg("n")
            .query(&mut conn)
            .unwrap()
    }

    #[tokio::test]
    async fn rediss_with_the_servers_ca_counts_in_redis() {
        let Some(redis) = TlsRedis::start("rediss_with_the_servers_ca_counts_in_redis") else {
            return;
        };
        let limiter =
            RedisRateLimiter::connect_with_options(&redis.url(), options(Some(redis.ca())))
                .await
                .unwrap();
        assert!(limiter.is_redis_up(), "the TLS connection was not made");
        let a = acct();
        let limits = Limits::new(Some(3), None);
        for _ in 0..3 {
            assert!(limiter.acquire(&a, limits, now()).await.unwrap().allowed);
        }
        assert!(!limiter.acquire(&a, limits, now()).await.unwrap().allowed);
        assert!(limiter.is_redis_up());
        assert_eq!(minute_count(&redis, &a), Some(3));
    }

    #[tokio::test]
    async fn rediss_does_not_trust_a_private_ca_it_was_not_given() {
        let Some(redis) = TlsRedis::start("rediss_does_not_trust_a_private_ca_it_was_not_given")
        else {
            return;
        };
        let elsewhere = TestCa::new("another CA");
        for ca in [None, Some(&elsewhere)] {
            let limiter = RedisRateLimiter::connect_with_options(&redis.url(), options(ca))
                .await
                .unwrap();
            let a = acct();
            // Fails open: allowed, counted locally, nothing reaches the server.
            let d = limiter.acquire(&a, FREE, now()).await.unwrap();
            assert!(d.allowed);
            assert!(!limiter.is_redis_up(), "trusted with {ca:?}");
            assert_eq!(minute_count(&redis, &a), None);
        }
    }

    #[tokio::test]
    async fn ca_certificates_need_a_rediss_url_and_pem() {
        let ca = TestCa::new("a CA");
        let plain =
            RedisRateLimiter::connect_with_options("redis://127.0.0.1:1", options(Some(&ca)))
                .await
                .unwrap_err();
        assert!(plain.to_string().contains("rediss://"), "{plain}");
        let not_pem = RedisRateLimiterOptions {
            ca_certificates: Some(b"not a certificate".to_vec()),
            ..Default::default()
        };
        let err = RedisRateLimiter::connect_with_options("rediss://127.0.0.1:1", not_pem)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}

fn key_id() -> keyward_core::KeyId {
    keyward_core::KeyId::from_ulid(Ulid::generate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_spent_exactly_once_across_two_nodes() {
    let Some(fx) = Fixture::new("credits_are_spent_exactly_once_across_two_nodes") else {
        return;
    };
    let nodes = [Arc::new(fx.limiter().await), Arc::new(fx.limiter().await)];
    let key = Arc::new(key_id());
    let credits = Arc::new(Credits {
        remaining: 20,
        refill: None,
        generation: 1,
        set_at: now().unix_timestamp(),
    });
    let mut tasks = JoinSet::new();
    for i in 0..64 {
        let (node, key, credits) = (nodes[i % 2].clone(), key.clone(), credits.clone());
        tasks.spawn(async move {
            let charge = KeyCharge {
                key: &key,
                limits: Limits::default(),
                credits: Some(&credits),
                cost: 1,
            };
            node.acquire_key(&charge, now()).await
        });
    }
    let decisions = tasks.join_all().await;
    let mut left: Vec<u64> = decisions
        .iter()
        .filter(|d| d.allowed())
        .map(|d| d.credits_remaining.unwrap())
        .collect();
    left.sort_unstable();
    assert_eq!(left, (0..20).collect::<Vec<_>>());
    assert!(
        decisions
            .iter()
            .filter(|d| !d.allowed())
            .all(|d| d.refused_by == Some(Window::Credits) && d.credits_remaining == Some(0))
    );
    assert!(nodes.iter().all(|n| n.is_redis_up()));
}

#[tokio::test]
async fn key_limits_and_credits_match_the_local_limiter_step_for_step() {
    let Some(fx) = Fixture::new("key_limits_and_credits_match_the_local_limiter_step_for_step")
    else {
        return;
    };
    let shared = fx.limiter_on_caller_clock().await;
    let local = LocalRateLimiter::new();
    let keys = [key_id(), key_id(), key_id()];
    let limit_sets = [
        Limits::new(Some(5), Some(20)),
        Limits::new(Some(3), None),
        Limits::default(),
    ];
    let start = time::macros::datetime!(2026-11-26 12:00:00.5 UTC);
    let credit_sets = [
        Some(Credits {
            remaining: 30,
            refill: Some(keyward_core::Refill {
                amount: 12,
                interval: keyward_core::RefillInterval::Day,
            }),
            generation: 1,
            set_at: start.unix_timestamp(),
        }),
        None,
        Some(Credits {
            remaining: 8,
            refill: None,
            generation: 1,
            set_at: start.unix_timestamp(),
        }),
    ];
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut t = start;
    for step in 0..3000 {
        let gap_ms = match rng.below(100) {
            0 => rng.below(6 * 3_600_000),
            1..=8 => rng.below(70_000),
            _ => rng.below(1_500),
        };
        t += time::Duration::milliseconds(i64::try_from(gap_ms).unwrap());
        let which = usize::try_from(rng.below(3)).unwrap();
        let mut credits = credit_sets[which];
        // Now and then a caller sets the balance again.
        if let Some(c) = &mut credits
            && rng.below(200) == 0
        {
            c.generation = i64::from(step) + 2;
            c.remaining = rng.below(10);
            c.set_at = t.unix_timestamp();
        }
        let charge = KeyCharge {
            key: &keys[which],
            limits: limit_sets[which],
            credits: credits.as_ref(),
            cost: u32::try_from(rng.below(3)).unwrap() + 1,
        };
        if charge.is_unlimited() {
            continue;
        }
        let consume = rng.below(5) != 0;
        let (expected, got) = if consume {
            (
                local.acquire_key(&charge, t).await,
                shared.acquire_key(&charge, t).await,
            )
        } else {
            (
                local.peek_key(&charge, t).await,
                shared.peek_key(&charge, t).await,
            )
        };
        assert_eq!(got, expected, "step {step} at {t}, consume {consume}");
    }
    assert!(shared.is_redis_up());
}

/// One count of the month for every node: seeded once from storage (set only if absent),
/// never more successes than the quota across two nodes racing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_month_count_seeded_once() {
    let Some(fx) = Fixture::new("two_nodes_share_one_month_count_seeded_once") else {
        return;
    };
    let a = acct();
    // Each node's own view of storage, to count each node's reads.
    let stored = [(); 2].map(|()| {
        let stored = Arc::new(crate::vectors::StoredCounts::default());
        stored.set_at(&a, now(), 10);
        stored
    });
    let one = Arc::new(fx.limiter().await.with_usage(stored[0].clone()));
    let two = Arc::new(fx.limiter().await.with_usage(stored[1].clone()));
    let limits = Limits::default().with_per_month(Some(40));
    let mut tasks = JoinSet::new();
    for i in 0..60 {
        let limiter = if i % 2 == 0 { one.clone() } else { two.clone() };
        let a = a.clone();
        tasks.spawn(async move { limiter.acquire(&a, limits, now()).await.unwrap() });
    }
    let mut allowed = 0;
    while let Some(d) = tasks.join_next().await {
        let d = d.unwrap();
        if d.allowed {
            allowed += 1;
        } else {
            assert_eq!(d.refused_by, Some(Window::Month));
            let to_month_end = crate::secs_until_month_end(now());
            let retry = d.retry_after_secs.unwrap();
            assert!(retry.abs_diff(to_month_end) <= 2, "retry-after {retry}");
        }
    }
    assert_eq!(allowed, 30, "10 stored and 30 counted make the quota of 40");
    assert!(
        stored.iter().all(|s| s.most_reads() <= 1),
        "each node reads the month's stored count at most once"
    );
    assert!(one.is_redis_up() && two.is_redis_up());
    // The month's count expires a second after the month ends.
    let ttl = fx.pttl(&format!("{{{a}}}:mo"));
    let to_month_end = i64::try_from(crate::secs_until_month_end(now())).unwrap() * 1000;
    assert!(
        (to_month_end - 5_000..=to_month_end + 2_000).contains(&ttl),
        "ttl {ttl} ms, month ends in {to_month_end} ms"
    );
}

/// The script's calendar (days to year and month and back, in Lua) against the `time`
/// crate's, at times spread over centuries: a stored count makes `reset` the seconds until
/// the month ends.
#[tokio::test]
async fn the_scripts_calendar_is_the_rust_one() {
    let Some(fx) = Fixture::new("the_scripts_calendar_is_the_rust_one") else {
        return;
    };
    let limiter = fx.limiter_on_caller_clock().await;
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let limits = Limits::default().with_per_month(Some(1_000));
    for _ in 0..300 {
        // 1970 to about 2300, to the millisecond.
        let ms = i64::try_from(rng.below(10_400_000_000_000)).unwrap();
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
        let a = acct();
        let reply = limiter
            .run_script(
                a.as_str(),
                limits,
                Some((crate::month_number(t), 1)),
                None,
                t,
                false,
            )
            .await
            .unwrap();
        let d = match reply {
            Reply::Decided(d, None) => d,
            other => panic!("at {t}: {other:?}"),
        };
        assert_eq!(
            (d.remaining, d.reset_secs),
            (999, crate::secs_until_month_end(t)),
            "at {t}"
        );
    }
}
