//! Events a platform builds on (API.md §Webhooks, §`GET /v1/audit-log`): signed webhook
//! deliveries to a receiver the test runs, retried, surviving a kill -9, made once by two
//! nodes; `credits.exhausted` once per balance, on one node and on two sharing Redis; target URLs refused by the address rule; and the audit log's hash chain with
//! `keyward audit verify`. Over real HTTP and the real CLI, on SQLite or PostgreSQL
//! (`KEYWARD_TEST_BACKEND`).

#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{
    Account, GENESIS, Server, create_key, delete, eventually, expected_hash, get, patch, post,
    send, tamper, verify,
};
use keyward_test_support::{REDIS_URL_VAR, service_url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long a delivery may take to arrive on a loaded machine.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// What the receiver answers a request with.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// This status at once.
    Status(u16),
    /// Nothing, ever (until the test ends).
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    answered: Option<u16>,
}

/// A webhook receiver on a free local port: it answers with its planned answers in turn
/// (then `200`), and keeps every request.
#[derive(Clone, Default)]
struct Receiver {
    plan: Arc<Mutex<VecDeque<Answer>>>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts one; returns it and its URL.
    async fn start(plan: &[Answer]) -> (Self, String) {
        let receiver = Self {
            plan: Arc::new(Mutex::new(plan.iter().copied().collect())),
            got: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: String| async move {
                    let answer = state.plan.lock().unwrap().pop_front();
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let answered = match answer {
                        Some(Answer::Status(s)) => Some(s),
                        Some(Answer::Hang) => None,
                        None => Some(200),
                    };
                    state.got.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body,
                        answered,
                    });
                    match answered {
                        Some(s) => axum::http::StatusCode::from_u16(s).unwrap(),
                        None => std::future::pending().await,
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests answered `2xx`, by event id.
    fn delivered(&self) -> HashMap<String, Vec<Received>> {
        let mut by_id: HashMap<String, Vec<Received>> = HashMap::new();
        for r in self.got() {
            if r.answered.is_some_and(|s| (200..300).contains(&s)) {
                by_id.entry(r.id.clone()).or_default().push(r);
            }
        }
        by_id
    }
}

/// HMAC-SHA256 written out here (RFC 2104), so that the test checks keyward's signature
/// with code of its own.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Checks a request's Standard Webhooks signature with the subscription's secret.
fn assert_signed(request: &Received, secret: &str) {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!("{}.{}.{}", request.id, request.timestamp, request.body);
    let expected = format!(
        "v1,{}",
        STANDARD.encode(hmac_sha256(&key, signed.as_bytes()))
    );
    assert_eq!(request.signature, expected, "{request:?}");
    let sent: i64 = request.timestamp.parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - sent).abs() < 300,
        "timestamp {sent} is not now ({now})"
    );
}

/// Subscribes the account to `events` at `url`: the subscription's id and secret.
async fn subscribe(
    server: &Server,
    account: &Account,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let r = post(
        server,
        &account.api_key,
        "/v1/webhooks",
        &json!({"url": url, "events": events, "description": "test receiver"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    (
        r.body["webhook_id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

/// Flags of a server whose receivers are local and whose retries come quickly.
const TEST_FLAGS: &[&str] = &[
    "--no-bootstrap",
    "--webhooks-allow-private",
    "--webhooks-fast-retries",
];

#[tokio::test]
async fn every_key_event_arrives_once_signed_with_the_subscription_secret() {
    // Arrange
    let server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("pro");
    let (receiver, url) = Receiver::start(&[]).await;
    let all = [
        "key.created",
        "key.updated",
        "key.rotated",
        "key.revoked",
        "key.expiring",
        "key.expired",
    ];
    let (webhook_id, secret) = subscribe(&server, &account, &url, &all).await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    // Act: a key through its whole life, and one that expires in a few seconds (the
    // scan runs every second under --webhooks-fast-retries).
    make_changes(&server, &account, "events").await;
    let (short_lived, short_secret) = create_key(
        &server,
        &account.api_key,
        &json!({"scopes": ["read"], "expires_in": 6}),
    )
    .await;

    // Assert: each type arrives, each event once, each signed.
    let delivered = eventually(DELIVERY_WAIT, "every event type delivered", async || {
        let delivered = receiver.delivered();
        let mut types: Vec<String> = delivered
            .values()
            .map(|r| {
                let body: Value = serde_json::from_str(&r[0].body).unwrap();
                body["type"].as_str().unwrap().to_owned()
            })
            .collect();
        types.sort();
        let mut wanted: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
        wanted.push("key.created".to_owned());
        wanted.sort();
        if types == wanted {
            Ok(delivered)
        } else {
            Err(types)
        }
    })
    .await;
    for (id, requests) in &delivered {
        assert_eq!(
            requests.len(),
            1,
            "event {id} delivered {} times",
            requests.len()
        );
        let request = &requests[0];
        assert!(id.starts_with("msg_"), "{id}");
        assert_signed(request, &secret);
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        assert_eq!(
            body["data"]["account_id"],
            json!(account.account_id),
            "{body}"
        );
        // Never a secret: neither a key's nor the subscription's.
        for secret in [&short_secret, &secret, &account.api_key] {
            assert!(!request.body.contains(secret.as_str()), "{body}");
        }
    }
    let expiring = delivered
        .values()
        .map(|r| serde_json::from_str::<Value>(&r[0].body).unwrap())
        .find(|b| b["type"] == "key.expiring")
        .unwrap();
    assert_eq!(expiring["data"]["key_id"], json!(short_lived));
    assert_eq!(expiring["data"]["days"], json!(1));

    // The delivery log lists each attempt, newest first, answered 200.
    let log = get(
        &server,
        &account.api_key,
        &format!("/v1/webhooks/{webhook_id}/deliveries"),
    )
    .await;
    assert_eq!(log.status, 200, "{log:?}");
    let attempts = log.body["deliveries"].as_array().unwrap();
    assert_eq!(attempts.len(), 7, "{log:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a["status"] == 200 && a["error"].is_null())
    );
}

#[tokio::test]
async fn a_receiver_answering_500_twice_gets_the_event_on_the_third_try() {
    // Arrange
    let server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("pro");
    let (receiver, url) = Receiver::start(&[Answer::Status(500), Answer::Status(500)]).await;
    let (webhook_id, secret) = subscribe(&server, &account, &url, &["key.created"]).await;

    // Act
    create_key(&server, &account.api_key, &json!({"scopes": ["read"]})).await;

    // Assert
    let got = eventually(DELIVERY_WAIT, "a third attempt answered 200", async || {
        let got = receiver.got();
        if got.len() >= 3 {
            Ok(got)
        } else {
            Err(got.len())
        }
    })
    .await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|r| r.id == got[0].id), "one event: {got:?}");
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(500), Some(500), Some(200)]
    );
    for request in &got {
        assert_signed(request, &secret);
    }
    let log = eventually(DELIVERY_WAIT, "three attempts in the log", async || {
        let log = get(
            &server,
            &account.api_key,
            &format!("/v1/webhooks/{webhook_id}/deliveries?limit=2"),
        )
        .await;
        if log.body["deliveries"]
            .as_array()
            .is_some_and(|d| d[0]["status"] == 200)
        {
            Ok(log)
        } else {
            Err(log.text)
        }
    })
    .await;
    let newest = log.body["deliveries"].as_array().unwrap();
    assert_eq!(newest[0]["next_attempt_at"], Value::Null);
    assert_eq!(newest[1]["status"], 500);
    assert!(newest[1]["next_attempt_at"].is_string(), "{log:?}");
    assert!(newest[1]["error"].is_string(), "{log:?}");
    let cursor = log.body["next_before"].as_str().unwrap();
    let oldest = get(
        &server,
        &account.api_key,
        &format!("/v1/webhooks/{webhook_id}/deliveries?before={cursor}"),
    )
    .await;
    assert_eq!(
        oldest.body["deliveries"].as_array().unwrap().len(),
        1,
        "{oldest:?}"
    );
    assert_eq!(oldest.body["next_before"], Value::Null);
}

#[tokio::test]
async fn an_event_committed_before_a_kill_9_arrives_after_the_restart() {
    // Arrange: the receiver holds the first attempt unanswered.
    let mut server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("pro");
    let (receiver, url) = Receiver::start(&[Answer::Hang]).await;
    let (_, secret) = subscribe(&server, &account, &url, &["key.created"]).await;
    create_key(&server, &account.api_key, &json!({"scopes": ["read"]})).await;
    eventually(DELIVERY_WAIT, "the first attempt under way", async || {
        !receiver.got().is_empty()
    })
    .await;

    // Act: killed mid-attempt, then started again.
    server.kill9();
    server.restart();

    // Assert: the event arrives, once answered, from the restarted node.
    let delivered = eventually(DELIVERY_WAIT, "the event delivered", async || {
        let delivered = receiver.delivered();
        if delivered.is_empty() {
            Err("nothing yet")
        } else {
            Ok(delivered)
        }
    })
    .await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let (id, requests) = delivered.iter().next().unwrap();
    assert_eq!(
        &receiver.got()[0].id,
        id,
        "the same event as the cut-off attempt"
    );
    assert_signed(&requests[0], &secret);
}

#[tokio::test]
async fn two_nodes_on_one_postgresql_deliver_each_event_once() {
    // Arrange
    let Some(first) = Server::start_on_postgres("two nodes deliver once", TEST_FLAGS) else {
        return;
    };
    let second = first.another_node(TEST_FLAGS);
    let account = first.create_account("pro");
    let (receiver, url) = Receiver::start(&[]).await;
    let (webhook_id, _) = subscribe(&first, &account, &url, &["key.created"]).await;

    // Act: creations on both nodes.
    let mut created = Vec::new();
    for i in 0..30 {
        let node = if i % 2 == 0 { &first } else { &second };
        created.push(
            create_key(node, &account.api_key, &json!({"scopes": ["read"]}))
                .await
                .0,
        );
    }

    // Assert: every event delivered, and every attempt recorded, each once.
    eventually(DELIVERY_WAIT, "30 attempts recorded", async || {
        let log = get(
            &first,
            &account.api_key,
            &format!("/v1/webhooks/{webhook_id}/deliveries?limit=1000"),
        )
        .await;
        let n = log.body["deliveries"].as_array().map_or(0, Vec::len);
        if n >= 30 && receiver.delivered().len() == 30 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 30);
    assert!(
        delivered.values().all(|r| r.len() == 1),
        "an event delivered twice: {delivered:?}"
    );
    assert_eq!(receiver.got().len(), 30, "no attempt beyond one per event");
    let mut keys: Vec<String> = delivered
        .values()
        .map(|r| {
            let body: Value = serde_json::from_str(&r[0].body).unwrap();
            body["data"]["key_id"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.sort();
    created.sort();
    assert_eq!(keys, created);
}

/// The `credits.exhausted` bodies delivered, each with its requests, by event id.
fn exhaustions(receiver: &Receiver) -> HashMap<String, (Value, Vec<Received>)> {
    receiver
        .delivered()
        .into_iter()
        .filter_map(|(id, requests)| {
            let body: Value = serde_json::from_str(&requests[0].body).unwrap();
            (body["type"] == "credits.exhausted").then_some((id, (body, requests)))
        })
        .collect()
}

/// Waits until `n` `credits.exhausted` events have arrived; their bodies.
async fn wait_for_exhaustions(receiver: &Receiver, n: usize) -> Vec<Value> {
    eventually(
        DELIVERY_WAIT,
        format!("{n} credits.exhausted events"),
        async || {
            let got = exhaustions(receiver);
            if got.len() >= n {
                Ok(got.into_values().map(|(body, _)| body).collect::<Vec<_>>())
            } else {
                Err(got.len())
            }
        },
    )
    .await
}

#[tokio::test]
async fn credits_run_out_once_per_balance_and_a_patch_that_sets_them_gives_a_second_event() {
    // Arrange: a key with 2 credits, a subscription to credits.exhausted only.
    let server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("enterprise");
    let (receiver, url) = Receiver::start(&[]).await;
    let (_, secret) = subscribe(&server, &account, &url, &["credits.exhausted"]).await;
    let (key_id, key) = create_key(
        &server,
        &account.api_key,
        &json!({"name": "metered", "scopes": ["read"], "credits": {"remaining": 2}}),
    )
    .await;

    // Act: three requests, the third refused; then more refusals at 0.
    let statuses = [
        get(&server, &key, "/v1/api-keys").await.status,
        get(&server, &key, "/v1/api-keys").await.status,
        get(&server, &key, "/v1/api-keys").await.status,
    ];
    for _ in 0..5 {
        assert_eq!(get(&server, &key, "/v1/api-keys").await.status, 429);
    }

    // Assert: one event, signed, naming the key and no secret.
    assert_eq!(statuses, [200, 200, 429]);
    let first = wait_for_exhaustions(&receiver, 1).await;
    assert_eq!(
        first[0]["data"],
        json!({
            "account_id": account.account_id,
            "key_id": key_id,
            "name": "metered",
            "refills_at": null,
        })
    );
    assert!(first[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    // Act: a PATCH sets credits again; they run out again.
    let path = format!("/v1/api-keys/{key_id}");
    let set = patch(
        &server,
        &account.api_key,
        &path,
        &json!({"credits": {"remaining": 1}}),
    )
    .await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(get(&server, &key, "/v1/api-keys").await.status, 200);
    assert_eq!(get(&server, &key, "/v1/api-keys").await.status, 429);

    // Assert: a second event, and each event delivered once, signed.
    wait_for_exhaustions(&receiver, 2).await;
    let events = exhaustions(&receiver);
    assert_eq!(events.len(), 2, "{events:?}");
    for (body, requests) in events.values() {
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_signed(&requests[0], &secret);
        assert_eq!(body["data"]["key_id"], json!(key_id));
        for secret in [&key, &secret, &account.api_key] {
            assert!(!requests[0].body.contains(secret.as_str()), "{body}");
        }
    }
}

/// Sends `n` validate calls at once, spread over `servers`; the number answered valid.
async fn validate_at_once(servers: &[&Server], key: &str, n: usize) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = servers[i % servers.len()].url("/v1/api-keys/validate");
        let key = key.to_owned();
        tasks.spawn(async move { send(common::client().post(url).header("x-api-key", key)).await });
    }
    let replies = tasks.join_all().await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    replies.iter().filter(|r| r.body["valid"] == true).count()
}

#[tokio::test]
async fn two_nodes_sharing_redis_exhausting_one_key_together_make_one_event() {
    // Arrange: two nodes on one PostgreSQL and one Redis.
    let Some(redis) = service_url(REDIS_URL_VAR, "credits.exhausted on two nodes") else {
        return;
    };
    let flags: Vec<&str> = TEST_FLAGS
        .iter()
        .copied()
        .chain(["--redis-url", redis.as_str()])
        .collect();
    let Some(first) = Server::start_on_postgres("credits.exhausted on two nodes", &flags) else {
        return;
    };
    let second = first.another_node(&flags);
    let account = first.create_account("enterprise");
    let (receiver, url) = Receiver::start(&[]).await;
    subscribe(&first, &account, &url, &["credits.exhausted"]).await;
    let credits = json!({"scopes": ["read"], "credits": {"remaining": 20}});
    let (shared_id, shared) = create_key(&first, &account.api_key, &credits).await;
    let one = json!({"scopes": ["read"], "credits": {"remaining": 1}});
    let (_, last_first) = create_key(&first, &account.api_key, &one).await;
    let (_, last_second) = create_key(&first, &account.api_key, &one).await;

    // Act: 64 requests at once on both nodes spend the 20 credits and find them at 0;
    // then each node exhausts a key of its own, reported after the shared key's.
    assert_eq!(validate_at_once(&[&first, &second], &shared, 64).await, 20);
    assert_eq!(validate_at_once(&[&first], &last_first, 2).await, 1);
    assert_eq!(validate_at_once(&[&second], &last_second, 2).await, 1);

    // Assert: three events, one for the shared key.
    wait_for_exhaustions(&receiver, 3).await;
    let events = exhaustions(&receiver);
    let for_shared = events
        .values()
        .filter(|(body, _)| body["data"]["key_id"] == json!(shared_id))
        .count();
    assert_eq!(for_shared, 1, "{events:?}");
    assert_eq!(events.len(), 3, "{events:?}");
}

#[tokio::test]
async fn private_and_loopback_targets_are_refused_without_the_flag_and_nothing_is_stored() {
    // Arrange
    let server = Server::start();
    let account = server.create_account("pro");
    let (_receiver, local) = Receiver::start(&[]).await;

    // Act, Assert
    for url in [
        local.as_str(),
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10:8080/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/",
    ] {
        let r = post(
            &server,
            &account.api_key,
            "/v1/webhooks",
            &json!({"url": url, "events": ["key.created"]}),
        )
        .await;
        assert_eq!(r.status, 400, "{url}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{url}");
        assert_eq!(r.field(), "url", "{url}: {r:?}");
    }
    let list = get(&server, &account.api_key, "/v1/webhooks").await;
    assert_eq!(list.body, json!({"webhooks": []}));
}

#[tokio::test]
async fn bad_subscriptions_get_the_documented_errors_and_change_nothing() {
    // Arrange
    let server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("pro");
    let (_, reader_secret) = create_key(
        &server,
        &account.api_key,
        &json!({"scopes": ["read", "write"]}),
    )
    .await;
    let (_receiver, url) = Receiver::start(&[]).await;

    // Act, Assert: each field's rule.
    let cases = [
        (
            json!({"url": "ftp://example.com/x", "events": ["key.created"]}),
            "url",
        ),
        (
            json!({"url": "not a url", "events": ["key.created"]}),
            "url",
        ),
        (
            json!({"url": "https://u:p@example.com/", "events": ["key.created"]}),
            "url",
        ),
        (json!({"url": url, "events": []}), "events"),
        (json!({"url": url, "events": ["key.nope"]}), "events"),
        (
            json!({"url": url, "events": ["key.created", "key.created"]}),
            "events",
        ),
        (json!({"url": url, "events": ["account.created"]}), "events"),
        (
            json!({"url": url, "events": ["key.created"], "description": "x".repeat(257)}),
            "description",
        ),
        (
            json!({"url": url, "events": ["key.created"], "extra": 1}),
            "extra",
        ),
        (json!({"events": ["key.created"]}), "url"),
    ];
    for (body, field) in &cases {
        let r = post(&server, &account.api_key, "/v1/webhooks", body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{body}");
        assert_eq!(r.field(), *field, "{body}: {r:?}");
    }
    // Without admin: 403, before the body is read.
    let r = post(
        &server,
        &reader_secret,
        "/v1/webhooks",
        &json!({"url": url, "events": ["key.created"]}),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        get(&server, &reader_secret, "/v1/webhooks").await.status,
        403
    );
    let list = get(&server, &account.api_key, "/v1/webhooks").await;
    assert_eq!(list.body, json!({"webhooks": []}));
}

#[tokio::test]
async fn subscriptions_are_listed_without_secrets_deleted_and_audited_and_invisible_to_other_accounts()
 {
    // Arrange
    let server = Server::start_with(TEST_FLAGS);
    let account = server.create_account("pro");
    let other = server.create_account("pro");
    let (_receiver, url) = Receiver::start(&[]).await;
    let (webhook_id, secret) = subscribe(&server, &account, &url, &["key.revoked"]).await;

    // Act
    let listed = get(&server, &account.api_key, "/v1/webhooks").await;
    let others = get(&server, &other.api_key, "/v1/webhooks").await;
    let path = format!("/v1/webhooks/{webhook_id}");
    let foreign_delete = delete(&server, &other.api_key, &path).await;
    let foreign_log = get(&server, &other.api_key, &format!("{path}/deliveries")).await;
    let deleted = delete(&server, &account.api_key, &path).await;
    let again = delete(&server, &account.api_key, &path).await;
    let malformed = delete(&server, &account.api_key, "/v1/webhooks/nope").await;

    // Assert
    assert_eq!(listed.status, 200);
    let hooks = listed.body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["webhook_id"], json!(webhook_id));
    assert_eq!(hooks[0]["events"], json!(["key.revoked"]));
    assert!(!listed.text.contains(&secret), "{listed:?}");
    assert_eq!(others.body, json!({"webhooks": []}));
    for r in [&foreign_delete, &foreign_log, &again, &malformed] {
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(
            r.body["error"]["message"],
            "no webhook with this webhook_id"
        );
    }
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let log = get(
        &server,
        &account.api_key,
        "/v1/audit-log?action=webhook.created",
    )
    .await;
    let created = &log.body["events"][0];
    assert_eq!(
        created["changes"]["webhook_id"],
        json!(webhook_id),
        "{log:?}"
    );
    assert_eq!(created["key_id"], Value::Null);
    assert!(!log.text.contains(&secret));
    let log = get(
        &server,
        &account.api_key,
        "/v1/audit-log?action=webhook.deleted",
    )
    .await;
    assert_eq!(log.body["events"].as_array().unwrap().len(), 1, "{log:?}");
    let (ok, out) = verify(&server, &[]);
    assert!(ok, "{out}");
}

/// A key created, updated, rotated and revoked through the API, each request with its
/// own `x-request-id` (`{tag}-create`, …), so each event can be named.
async fn make_changes(server: &Server, account: &Account, tag: &str) {
    let client = common::client();
    let key = &account.api_key;
    let r = send(
        client
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", key)
            .header("x-request-id", format!("{tag}-create"))
            .json(&json!({"name": "chained", "scopes": ["read"], "metadata": {"n": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key_id = r.body["key_id"].as_str().unwrap().to_owned();
    let path = server.url(&format!("/v1/api-keys/{key_id}"));
    let r = send(
        client
            .patch(&path)
            .header("x-api-key", key)
            .header("x-request-id", format!("{tag}-update"))
            .json(&json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(
        client
            .post(format!("{path}/rotate"))
            .header("x-api-key", key)
            .header("x-request-id", format!("{tag}-rotate"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(
        client
            .delete(&path)
            .header("x-api-key", key)
            .header("x-request-id", format!("{tag}-revoke")),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
}

/// The account's events, oldest first, as served.
async fn events_oldest_first(server: &Server, account: &Account) -> Vec<Value> {
    let r = get(server, &account.api_key, "/v1/audit-log?limit=1000").await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut events = r.body["events"].as_array().unwrap().clone();
    events.reverse();
    events
}

#[tokio::test]
async fn each_served_audit_event_is_chained_to_the_one_before_it_by_the_documented_hash() {
    // Arrange
    let server = Server::start();
    let account = server.create_account("pro");
    make_changes(&server, &account, "chain").await;
    let other = server.create_account("pro");
    create_key(&server, &other.api_key, &json!({"scopes": ["read"]})).await;

    // Act
    let events = events_oldest_first(&server, &account).await;

    // Assert
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.created",
            "key.created",
            "key.updated",
            "key.rotated",
            "key.revoked"
        ]
    );
    let mut prev = GENESIS.to_owned();
    for event in &events {
        assert_eq!(event["prev_hash"], json!(prev), "{event}");
        let hash = event["hash"].as_str().unwrap();
        assert_eq!(hash, expected_hash(event), "{event}");
        prev = hash.to_owned();
    }
    // Each account's log is a chain of its own.
    let others = events_oldest_first(&server, &other).await;
    assert_eq!(others[0]["prev_hash"], json!(GENESIS));
}

#[tokio::test]
async fn audit_verify_passes_on_an_untouched_log_of_several_accounts() {
    // Arrange
    let server = Server::start();
    let a = server.create_account("pro");
    let b = server.create_account("free");
    make_changes(&server, &a, "a").await;
    make_changes(&server, &b, "b").await;

    // Act
    let (all_ok, all) = verify(&server, &[]);
    let (one_ok, one) = verify(&server, &["--account", &a.account_id]);

    // Assert
    assert!(all_ok, "{all}");
    // Two accounts' logs of five events each, and the operator log's two
    // `account.created`.
    assert!(all.contains("3 chain(s), 12 chained event(s)"), "{all}");
    assert!(one_ok, "{one}");
    assert!(one.contains("1 chain(s), 5 chained event(s)"), "{one}");
}

#[tokio::test]
async fn audit_verify_names_the_event_whose_row_was_edited() {
    // Arrange
    let server = Server::start();
    let account = server.create_account("pro");
    make_changes(&server, &account, "edit").await;
    tamper(
        &server,
        "update audit_event set changes = '{\"name\":{\"from\":\"chained\",\"to\":\"other\"}}' \
         where request_id = 'edit-update'",
    )
    .await;

    // Act
    let (ok, out) = verify(&server, &[]);

    // Assert
    assert!(!ok, "{out}");
    assert!(out.contains("request edit-update"), "{out}");
    assert!(out.contains("edited"), "{out}");
    assert!(out.contains(&account.account_id), "{out}");
}

#[tokio::test]
async fn audit_verify_names_the_event_after_a_deleted_row() {
    // Arrange
    let server = Server::start();
    let account = server.create_account("pro");
    make_changes(&server, &account, "del").await;
    tamper(
        &server,
        "delete from audit_event where request_id = 'del-update'",
    )
    .await;

    // Act
    let (ok, out) = verify(&server, &["--account", &account.account_id]);

    // Assert
    assert!(!ok, "{out}");
    assert!(out.contains("request del-rotate"), "{out}");
    assert!(out.contains("deleted or inserted"), "{out}");
}

#[tokio::test]
async fn audit_verify_finds_the_last_event_deleted() {
    // Arrange
    let server = Server::start();
    let account = server.create_account("pro");
    make_changes(&server, &account, "tail").await;
    tamper(
        &server,
        "delete from audit_event where request_id = 'tail-revoke'",
    )
    .await;

    // Act
    let (ok, out) = verify(&server, &[]);

    // Assert
    assert!(!ok, "{out}");
    assert!(out.contains("recorded head"), "{out}");
}

#[tokio::test]
async fn audit_verify_names_a_row_inserted_with_plain_sql() {
    // Arrange: a forged event that even links to the real last hash.
    let server = Server::start();
    let account = server.create_account("pro");
    make_changes(&server, &account, "ins").await;
    let events = events_oldest_first(&server, &account).await;
    let last = events.last().unwrap();
    let forged = format!(
        "insert into audit_event (account_id, time, action, actor_key_id, key_id, changes, \
         request_id, prev_hash, hash) values ('{}', 1700000000, 'key.created', null, '{}', \
         '{{}}', 'forged', '{}', '{}')",
        account.account_id,
        last["key_id"].as_str().unwrap(),
        last["hash"].as_str().unwrap(),
        "a".repeat(64),
    );
    tamper(&server, &forged).await;

    // Act
    let (ok, out) = verify(&server, &[]);

    // Assert
    assert!(!ok, "{out}");
    assert!(out.contains("request forged"), "{out}");
}

/// Subscribes an operator to `events` at `url`: the subscription's id and secret.
async fn subscribe_operator(
    server: &Server,
    operator_key: &str,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let r = post(
        server,
        operator_key,
        "/operator/v1/webhooks",
        &json!({"url": url, "events": events}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    (
        r.body["webhook_id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_operator_subscription_receives_every_accounts_events_and_account_events_signed() {
    // Arrange: an operator subscribed before the accounts exist.
    let server = Server::start_with(TEST_FLAGS);
    let (_, op) = common::create_operator(&server, "platform");
    let (receiver, url) = Receiver::start(&[]).await;
    let events = [
        "account.created",
        "account.updated",
        "account.suspended",
        "account.resumed",
        "account.deleted",
        "key.created",
    ];
    let (webhook_id, secret) = subscribe_operator(&server, &op, &url, &events).await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    // Act: one account made by the operator API and changed, another made by the CLI
    // whose own key makes a key.
    let created = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "acme"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let acme = created.body["account"]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/operator/v1/accounts/{acme}");
    let r = common::patch(&server, &op, &path, &json!({"status": "suspended"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = common::patch(
        &server,
        &op,
        &path,
        &json!({"status": "active", "name": "a"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let other = server.create_account("pro");
    let (key_id, _) = create_key(&server, &other.api_key, &json!({"scopes": ["read"]})).await;
    let r = delete(&server, &op, &path).await;
    assert_eq!(r.status, 204, "{r:?}");

    // Assert: each event once, signed with the operator subscription's secret.
    let wanted: [(&str, &str); 8] = [
        ("account.created", acme.as_str()),
        ("key.created", acme.as_str()),
        ("account.suspended", acme.as_str()),
        ("account.resumed", acme.as_str()),
        ("account.updated", acme.as_str()),
        ("account.created", other.account_id.as_str()),
        ("key.created", other.account_id.as_str()),
        ("account.deleted", acme.as_str()),
    ];
    // And the key the other account made.
    let all = wanted.len() + 1;
    let delivered = eventually(DELIVERY_WAIT, "every event delivered", async || {
        let delivered = receiver.delivered();
        if delivered.len() >= all {
            Ok(delivered)
        } else {
            Err(format!("{} of {all} delivered", delivered.len()))
        }
    })
    .await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut other_key_created = false;
    for copies in delivered.values() {
        assert_eq!(copies.len(), 1, "delivered once: {copies:?}");
        let request = &copies[0];
        assert_signed(request, &secret);
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let account = body["data"]["account_id"].as_str().unwrap().to_owned();
        if body["type"] == "key.created" && body["data"]["key_id"] == key_id.as_str() {
            other_key_created = true;
        }
        seen.push((body["type"].as_str().unwrap().to_owned(), account));
        assert!(!request.body.contains(&other.api_key), "no secret");
    }
    assert!(
        other_key_created,
        "the other account's key.created: {seen:?}"
    );
    for (kind, account) in wanted {
        assert!(
            seen.iter().any(|(k, a)| k == kind && a == account),
            "{kind} of {account} in {seen:?}"
        );
    }
    // The delivery log has each attempt once it is recorded (just after the answer).
    let log = format!("/operator/v1/webhooks/{webhook_id}/deliveries?limit=100");
    eventually(
        DELIVERY_WAIT,
        "every attempt in the delivery log",
        async || {
            let r = get(&server, &op, &log).await;
            assert_eq!(r.status, 200, "{r:?}");
            let attempts = r.body["deliveries"].as_array().unwrap();
            attempts.len() == all && attempts.iter().all(|a| a["status"] == 200)
        },
    )
    .await;
}

#[tokio::test]
async fn operator_subscriptions_are_listed_deleted_audited_and_refused_to_account_keys() {
    // Arrange
    let server = Server::start_with(TEST_FLAGS);
    let (op_id, op) = common::create_operator(&server, "platform");
    let account = server.create_account("pro");
    let (_, url) = Receiver::start(&[]).await;
    let (webhook_id, secret) = subscribe_operator(&server, &op, &url, &["account.created"]).await;
    let own = format!("/operator/v1/webhooks/{webhook_id}");

    // Act
    let listed = get(&server, &op, "/operator/v1/webhooks").await;
    let accounts_view = get(&server, &account.api_key, "/v1/webhooks").await;
    let by_account_key = [
        get(&server, &account.api_key, "/operator/v1/webhooks").await,
        post(
            &server,
            &account.api_key,
            "/operator/v1/webhooks",
            &json!({"url": url, "events": ["key.created"]}),
        )
        .await,
        delete(&server, &account.api_key, &own).await,
        get(&server, &account.api_key, &format!("{own}/deliveries")).await,
    ];
    let from_the_account = delete(
        &server,
        &account.api_key,
        &format!("/v1/webhooks/{webhook_id}"),
    )
    .await;
    let deleted = delete(&server, &op, &own).await;
    let again = delete(&server, &op, &own).await;
    let log = get(&server, &op, "/operator/v1/audit-log?limit=100").await;

    // Assert
    assert_eq!(listed.status, 200, "{listed:?}");
    let hooks = listed.body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{listed:?}");
    assert_eq!(hooks[0]["webhook_id"], webhook_id.as_str());
    assert_eq!(hooks[0]["events"], json!(["account.created"]));
    assert!(!listed.text.contains(&secret), "no secret in a listing");
    assert_eq!(
        accounts_view.body["webhooks"],
        json!([]),
        "{accounts_view:?}"
    );
    for r in &by_account_key {
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.error_code(), "INVALID_API_KEY");
    }
    assert_eq!(from_the_account.status, 404, "{from_the_account:?}");
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(again.status, 404, "{again:?}");
    assert_eq!(again.error_code(), "RESOURCE_NOT_FOUND");
    let actions: Vec<(&str, &str)> = log.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("webhook."))
        .map(|e| {
            assert_eq!(e["actor_key_id"], op_id.as_str(), "{e}");
            assert_eq!(e["changes"]["webhook_id"], webhook_id.as_str(), "{e}");
            (
                e["action"].as_str().unwrap(),
                e["changes"]["url"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("webhook.deleted", url.as_str()),
            ("webhook.created", url.as_str())
        ]
    );
    assert!(!log.text.contains(&secret), "no secret in the log");
}

#[tokio::test]
async fn bad_operator_subscriptions_get_the_documented_errors_and_change_nothing() {
    // Arrange: a server without --webhooks-allow-private, so loopback is refused.
    let server = Server::start();
    let (_, op) = common::create_operator(&server, "platform");
    let account = server.create_account("pro");
    let long = "x".repeat(257);

    // Act
    let cases = [
        (json!({"events": ["account.created"]}), "url"),
        (
            json!({"url": "ftp://example.com/", "events": ["account.created"]}),
            "url",
        ),
        (
            json!({"url": "http://127.0.0.1:9/hook", "events": ["account.created"]}),
            "url",
        ),
        (
            json!({"url": "http://10.1.2.3/hook", "events": ["key.created"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["account.eaten"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["account.created", "account.created"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["key.created"], "description": long}),
            "description",
        ),
        (
            json!({"url": "https://example.com/", "events": ["key.created"], "extra": 1}),
            "extra",
        ),
    ];
    let mut replies = Vec::new();
    for (body, field) in &cases {
        replies.push((
            post(&server, &op, "/operator/v1/webhooks", body).await,
            *field,
        ));
    }
    let not_json = send(
        common::client()
            .post(server.url("/operator/v1/webhooks"))
            .header("x-api-key", &op)
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    // An account may not subscribe to the accounts' events.
    let account_event = post(
        &server,
        &account.api_key,
        "/v1/webhooks",
        &json!({"url": "https://example.com/", "events": ["account.created"]}),
    )
    .await;
    let unknown = [
        delete(
            &server,
            &op,
            "/operator/v1/webhooks/wh_01JD0000000000000000000000",
        )
        .await,
        get(&server, &op, "/operator/v1/webhooks/nope/deliveries").await,
    ];
    let listed = get(&server, &op, "/operator/v1/webhooks").await;
    let log = get(
        &server,
        &op,
        "/operator/v1/audit-log?action=webhook.created",
    )
    .await;

    // Assert
    for (r, field) in &replies {
        assert_eq!(r.status, 400, "{field}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{field}: {r:?}");
        assert_eq!(r.field(), *field, "{r:?}");
    }
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert_eq!(not_json.error_code(), "INVALID_REQUEST");
    assert_eq!(account_event.status, 400, "{account_event:?}");
    assert_eq!(account_event.field(), "events");
    for r in &unknown {
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND");
    }
    assert_eq!(
        listed.body["webhooks"],
        json!([]),
        "nothing stored: {listed:?}"
    );
    assert_eq!(log.body["events"], json!([]), "nothing audited: {log:?}");
}
