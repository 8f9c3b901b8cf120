//! Scale-out, black box: several real `keyward serve` processes on one PostgreSQL
//! database (a fresh schema per test), Redis-shared rate limits, and a database outage
//! through a proxy that cuts every connection. These need `KEYWARD_TEST_PG_URL` (and
//! `KEYWARD_TEST_REDIS_URL` for the Redis one): without an answering server a test is
//! skipped with a `SKIPPED` line, or fails under `KEYWARD_TEST_REQUIRE_SERVICES=1`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, create_key, delete, get, patch, post};
use keyward_test_support::{REDIS_URL_VAR, service_url};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// Polls `server` with `secret` until it is refused; returns how long that took.
async fn time_until_refused(server: &Server, secret: &str, since: Instant) -> Duration {
    loop {
        let r = get(server, secret, "/v1/api-keys").await;
        if r.status == 401 {
            return since.elapsed();
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still accepted after 5 s"
        );
    }
}

#[tokio::test]
async fn a_change_made_through_one_node_is_enforced_by_the_other_within_a_second() {
    let Some(a) = Server::start_on_postgres("cross-node coherence", &["--no-bootstrap"]) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap"]);
    let acct = a.create_account("enterprise");
    let mut worst = Duration::ZERO;
    for trial in 0..15 {
        let (key_id, secret) = create_key(&a, &acct.api_key, &json!({"scopes": ["read"]})).await;
        // B has the key cached: the change must reach it, not just miss its cache.
        assert_eq!(get(&b, &secret, "/v1/api-keys").await.status, 200);
        assert_eq!(get(&b, &secret, "/v1/api-keys").await.status, 200);
        let path = format!("/v1/api-keys/{key_id}");
        let (kind, changed) = match trial % 3 {
            0 => ("revoke", delete(&a, &acct.api_key, &path).await),
            1 => (
                "disable",
                patch(&a, &acct.api_key, &path, &json!({"status": "inactive"})).await,
            ),
            _ => (
                "rotate",
                post(
                    &a,
                    &acct.api_key,
                    &format!("{path}/rotate"),
                    &json!({"grace_period_seconds": 0}),
                )
                .await,
            ),
        };
        assert!(
            changed.status == 204 || changed.status == 200,
            "{kind}: {changed:?}"
        );
        let delay = time_until_refused(&b, &secret, Instant::now()).await;
        assert!(
            delay < Duration::from_secs(1),
            "{kind} took {delay:?} to reach node B"
        );
        worst = worst.max(delay);
    }
    eprintln!("worst cross-node enforcement delay over 15 trials: {worst:?}");
}

#[tokio::test]
async fn a_use_through_one_node_reaches_the_other_nodes_cached_listing_within_two_seconds() {
    let Some(a) = Server::start_on_postgres("cross-node last_used", &["--no-bootstrap"]) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap"]);
    let acct = a.create_account("enterprise");
    let (key_id, secret) = create_key(&a, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let last_used_on_b = async || {
        let listed = get(&b, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(listed.status, 200, "{listed:?}");
        listed.body["api_keys"]
            .as_array()
            .expect("api_keys")
            .iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .expect("the new key is listed")["last_used"]
            .clone()
    };
    // B caches the listing with the key unused; a listing lives 10 s.
    assert!(last_used_on_b().await.is_null());
    assert_eq!(get(&a, &secret, "/v1/api-keys").await.status, 200);
    common::eventually(
        Duration::from_secs(2),
        "node B to list the key as used within 2 s",
        async || last_used_on_b().await.is_string(),
    )
    .await;
}

#[tokio::test]
async fn redis_holds_the_free_plan_limit_across_two_nodes() {
    let Some(redis) = service_url(REDIS_URL_VAR, "shared rate limits") else {
        return;
    };
    let Some(a) = Server::start_on_postgres(
        "shared rate limits",
        &["--no-bootstrap", "--redis-url", &redis],
    ) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap", "--redis-url", &redis]);
    let acct = a.create_account("free");
    let mut successes = 0;
    let mut refused = 0;
    for i in 0..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        match get(node, &acct.api_key, "/v1/api-keys").await.status {
            200 => successes += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        successes, 10,
        "exactly the plan's 10 per minute across both nodes"
    );
    assert_eq!(refused, 20);
}

#[tokio::test]
async fn redis_holds_the_monthly_quota_across_two_nodes() {
    let Some(redis) = service_url(REDIS_URL_VAR, "shared monthly quota") else {
        return;
    };
    let Some(a) = Server::start_on_postgres(
        "shared monthly quota",
        &["--no-bootstrap", "--redis-url", &redis],
    ) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap", "--redis-url", &redis]);
    let plan = a.cli(&["plans", "set", "metered", "--per-month", "5"]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let acct = a.create_account("metered");

    // Three requests on node A and two on node B use the month's five.
    for (node, name) in [(&a, "A"), (&a, "A"), (&a, "A"), (&b, "B"), (&b, "B")] {
        let r = get(node, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "node {name}: {r:?}");
    }
    // Then both refuse, for the month.
    for (node, name) in [(&a, "A"), (&b, "B"), (&a, "A"), (&b, "B")] {
        let r = get(node, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 429, "node {name}: {r:?}");
        assert_eq!(r.body["error"]["details"]["window"], "month", "node {name}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "node {name}");
    }
    // A third node joining later counts on from the same shared count.
    let c = a.another_node(&["--no-bootstrap", "--redis-url", &redis]);
    let r = get(&c, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(r.status, 429, "node C: {r:?}");
    assert_eq!(r.body["error"]["details"]["window"], "month");
}

#[tokio::test]
async fn without_redis_each_node_starts_the_month_from_storage() {
    let Some(mut a) = Server::start_on_postgres("per-node monthly quota", &["--no-bootstrap"])
    else {
        return;
    };
    let plan = a.cli(&["plans", "set", "metered", "--per-month", "3"]);
    assert!(plan.status.success());
    let acct = a.create_account("metered");
    for _ in 0..3 {
        assert_eq!(get(&a, &acct.api_key, "/v1/api-keys").await.status, 200);
    }
    assert_eq!(get(&a, &acct.api_key, "/v1/api-keys").await.status, 429);
    // Node A stops (its last metering flush stores its uses); node B, which starts
    // counting the month now, starts from the usage counters, not from nothing.
    assert!(a.sigterm().success());
    let b = a.another_node(&["--no-bootstrap"]);
    let r = get(&b, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(r.status, 429, "node B: {r:?}");
    assert_eq!(r.body["error"]["details"]["window"], "month");
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new ones.
struct CuttableProxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl CuttableProxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0_u64);
        let generation = Arc::new(generation);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen2.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

// Multi-threaded: starting the node blocks one thread while the proxy must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503_then_service_resumes_with_nothing_lost() {
    let Some(direct) = Server::start_on_postgres("database outage", &["--no-bootstrap"]) else {
        return;
    };
    // The node under test reaches the same schema through the proxy.
    let url = direct.database_url.clone();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = CuttableProxy::start(host_port.clone()).await;
    let proxied_url = url.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    let node = Server::start_with_url(proxied_url, &["--no-bootstrap"]);

    let acct = direct.create_account("enterprise");
    let (_, before) = create_key(
        &node,
        &acct.api_key,
        &json!({"scopes": ["read"], "name": "made before the outage"}),
    )
    .await;
    assert_eq!(get(&node, &before, "/v1/api-keys").await.status, 200);

    proxy.cut();
    let started = Instant::now();
    // A write needs the database at once.
    let write = post(
        &node,
        &acct.api_key,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(write.status, 503, "{write:?}");
    assert_eq!(write.error_code(), "SERVICE_UNAVAILABLE");
    // Reads may be answered from the caches only until the node notices the lost
    // connection (its change feed breaks with it); from then on they are 503 too.
    let down = common::eventually(
        Duration::from_secs(2),
        "reads to turn to 503 within 2 s of the cut",
        async || {
            let r = get(&node, &acct.api_key, "/v1/api-keys").await;
            if r.status == 200 {
                Err(r.status)
            } else {
                Ok(r)
            }
        },
    )
    .await;
    eprintln!("reads turned to 503 {:?} after the cut", started.elapsed());
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(down.error_code(), "SERVICE_UNAVAILABLE");
    assert!(
        !down.text.contains("127.0.0.1"),
        "no internals in the body: {}",
        down.text
    );
    let ready = common::send(common::client().get(node.url("/readyz"))).await;
    assert_eq!(ready.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "503s come in bounded time"
    );

    proxy.restore();
    common::eventually(
        Duration::from_secs(15),
        "the node to recover by itself once the database is back",
        async || get(&node, &acct.api_key, "/v1/api-keys").await.status == 200,
    )
    .await;
    let list = get(&node, &acct.api_key, "/v1/api-keys").await;
    let names: Vec<&str> = list.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(
        names.contains(&"made before the outage"),
        "no acknowledged write lost: {names:?}"
    );
    assert_eq!(get(&node, &before, "/v1/api-keys").await.status, 200);
    let ready = common::send(common::client().get(node.url("/readyz"))).await;
    assert_eq!(ready.status, 200);
}
