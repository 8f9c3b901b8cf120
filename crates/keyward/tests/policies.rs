//! Key policies, black box (API.md §Key policies, §Plans, rate limits, quotas and
//! credits, §`POST /v1/api-keys/validate`): a key's own rate limit, its credits (on one
//! node, and across two nodes through Redis), its allowed addresses with and without
//! trusted proxies, its expiry after inactivity, validate's body, and every bad input.
//! On SQLite, or PostgreSQL with `KEYWARD_TEST_BACKEND=postgres`; the Redis tests need
//! `KEYWARD_TEST_REDIS_URL` (skipped with a `SKIPPED` line without it).

mod common;

use common::{Server, client, create_key, get, patch, post, send};
use keyward_test_support::{REDIS_URL_VAR, service_url};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const DAY: i64 = 86_400;

async fn validate(server: &Server, key: &str, body: Option<&Value>) -> common::Reply {
    let req = client()
        .post(server.url("/v1/api-keys/validate"))
        .header("x-api-key", key);
    send(match body {
        Some(body) => req.json(body),
        None => req,
    })
    .await
}

/// Sends `n` validate calls at once (cost 1) and counts the valid answers.
async fn concurrent_valid(servers: &[&Server], key: &str, n: usize) -> usize {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let url = servers[i % servers.len()].url("/v1/api-keys/validate");
        let key = key.to_owned();
        tasks.spawn(async move { send(client().post(url).header("x-api-key", key)).await });
    }
    let replies = tasks.join_all().await;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        if r.body["valid"] == false {
            assert_eq!(r.body["reason"], "credits_exhausted", "{r:?}");
        }
    }
    replies.iter().filter(|r| r.body["valid"] == true).count()
}

#[tokio::test]
async fn a_key_limit_of_three_a_minute_refuses_the_fourth_while_a_sibling_goes_on() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({"scopes": ["read"], "rate_limit": {"per_minute": 3}});
    let (limited_id, limited) = create_key(&server, &acct.api_key, &body).await;
    let (_, sibling) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;

    for i in 0..3 {
        let r = get(&server, &limited, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(&*(2 - i).to_string())
        );
    }
    let refused = get(&server, &limited, "/v1/api-keys").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.error_code(), "RATE_LIMIT_EXCEEDED");
    assert_eq!(refused.body["error"]["details"]["window"], "minute");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&retry), "retry-after {retry}");
    // validate reports the same refusal as its answer.
    let v = validate(&server, &limited, None).await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["reason"].clone()),
        (json!(false), json!("rate_limited"))
    );
    assert!(v.body["retry_after"].as_u64().is_some(), "{v:?}");

    // The account is unlimited: a sibling key goes on.
    for _ in 0..10 {
        assert_eq!(get(&server, &sibling, "/v1/api-keys").await.status, 200);
    }
    let shown = get(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{limited_id}"),
    )
    .await;
    assert_eq!(
        shown.body["rate_limit"],
        json!({"per_minute": 3, "per_day": null})
    );
    // Removing the limit lifts it at once.
    let lifted = patch(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{limited_id}"),
        &json!({"rate_limit": null}),
    )
    .await;
    assert_eq!(lifted.status, 200, "{lifted:?}");
    assert!(lifted.body.get("rate_limit").is_none(), "{lifted:?}");
    assert_eq!(get(&server, &limited, "/v1/api-keys").await.status, 200);
}

#[tokio::test]
async fn credits_of_five_give_five_requests_then_429_and_cost_two_takes_two() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({"scopes": ["read"], "credits": {"remaining": 5, "refill": null}});
    let (key_id, secret) = create_key(&server, &acct.api_key, &body).await;
    let path = format!("/v1/api-keys/{key_id}");

    for _ in 0..5 {
        assert_eq!(get(&server, &secret, "/v1/api-keys").await.status, 200);
    }
    let refused = get(&server, &secret, "/v1/api-keys").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.error_code(), "RATE_LIMIT_EXCEEDED");
    assert_eq!(refused.body["error"]["details"]["window"], "credits");
    // No refill: no time to retry at.
    assert_eq!(refused.header("retry-after"), None);
    let shown = get(&server, &acct.api_key, &path).await;
    assert_eq!(
        shown.body["credits"],
        json!({"remaining": 0, "refill": null})
    );

    // A PATCH that sets credits resets the balance; cost 2 on 5 gives two successes.
    let reset = patch(
        &server,
        &acct.api_key,
        &path,
        &json!({"credits": {"remaining": 5}}),
    )
    .await;
    assert_eq!(reset.status, 200, "{reset:?}");
    assert_eq!(reset.body["credits"]["remaining"], 5);
    let cost_two = json!({"cost": 2});
    for left in [3, 1] {
        let v = validate(&server, &secret, Some(&cost_two)).await;
        assert_eq!(v.body["valid"], true, "{v:?}");
        assert_eq!(v.body["credits_remaining"], left);
    }
    let v = validate(&server, &secret, Some(&cost_two)).await;
    assert_eq!(v.body["valid"], false, "{v:?}");
    assert_eq!(v.body["reason"], "credits_exhausted");
    // The one credit left still pays for a request of cost 1.
    let v = validate(&server, &secret, Some(&json!({"cost": 1}))).await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["credits_remaining"].clone()),
        (json!(true), json!(0))
    );
    let shown = get(&server, &acct.api_key, &path).await;
    assert_eq!(shown.body["credits"]["remaining"], 0);
    let listed = get(&server, &acct.api_key, "/v1/api-keys").await;
    let listed_key = listed.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed_key["credits"]["remaining"], 0);
}

#[tokio::test]
async fn sixty_four_concurrent_requests_on_twenty_credits_give_exactly_twenty() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({"scopes": ["read"], "credits": {"remaining": 20}});
    let (_, secret) = create_key(&server, &acct.api_key, &body).await;
    assert_eq!(concurrent_valid(&[&server], &secret, 64).await, 20);
}

#[tokio::test]
async fn with_redis_two_nodes_spend_twenty_credits_exactly_once_and_a_refill_restores_them() {
    let Some(redis) = service_url(REDIS_URL_VAR, "credits across two nodes") else {
        return;
    };
    let a = Server::start_with(&["--no-bootstrap", "--redis-url", &redis]);
    let b = a.another_node(&["--no-bootstrap", "--redis-url", &redis]);
    let acct = a.create_account("enterprise");
    let body = json!({
        "scopes": ["read"],
        "credits": {"remaining": 20, "refill": {"amount": 7, "interval": "day"}},
    });
    let (key_id, secret) = create_key(&a, &acct.api_key, &body).await;
    assert_eq!(concurrent_valid(&[&a, &b], &secret, 64).await, 20);
    let refused = validate(&b, &secret, None).await;
    assert_eq!(refused.body["reason"], "credits_exhausted", "{refused:?}");
    // Until the next UTC midnight.
    let retry = refused.body["retry_after"].as_u64().unwrap();
    assert!((1..=86_400).contains(&retry), "retry_after {retry}");

    // A node a day ahead is past the refill: the shared balance becomes the amount.
    let ahead = a.another_node(&[
        "--no-bootstrap",
        "--redis-url",
        &redis,
        "--test-clock-offset",
        &DAY.to_string(),
    ]);
    let v = validate(&ahead, &secret, None).await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["credits_remaining"].clone()),
        (json!(true), json!(6)),
        "{v:?}"
    );
    let shown = get(&a, &acct.api_key, &format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(
        shown.body["credits"],
        json!({"remaining": 6, "refill": {"amount": 7, "interval": "day"}})
    );
}

#[tokio::test]
async fn a_key_pinned_to_a_range_is_refused_elsewhere_and_accepted_through_a_trusted_proxy() {
    let server = Server::start();
    let behind_proxy =
        server.another_node(&["--no-bootstrap", "--trusted-proxies", "127.0.0.1/32, ::1"]);
    let acct = server.create_account("enterprise");
    let body = json!({"scopes": ["read"], "allowed_ips": ["10.0.0.0/8"]});
    let (key_id, secret) = create_key(&server, &acct.api_key, &body).await;
    let from = |node: &Server, forwarded: Option<&str>| {
        let mut req = client()
            .get(node.url("/v1/api-keys"))
            .header("x-api-key", &secret);
        if let Some(forwarded) = forwarded {
            req = req.header("x-forwarded-for", forwarded);
        }
        send(req)
    };

    let refused = from(&server, None).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(refused.body["error"]["details"]["reason"], "ip_not_allowed");
    // An untrusted peer's x-forwarded-for is the client's own word: ignored.
    assert_eq!(from(&server, Some("10.1.2.3")).await.status, 403);
    // Through a trusted proxy, the right-most untrusted entry is the client.
    assert_eq!(from(&behind_proxy, Some("10.1.2.3")).await.status, 200);
    assert_eq!(
        from(&behind_proxy, Some("10.9.9.9, 127.0.0.1"))
            .await
            .status,
        200
    );
    assert_eq!(
        from(&behind_proxy, Some("10.1.2.3, 192.0.2.1"))
            .await
            .status,
        403
    );
    assert_eq!(from(&behind_proxy, None).await.status, 403);
    assert_eq!(
        from(&behind_proxy, Some("not-an-address")).await.status,
        403
    );

    // validate checks the platform's client_ip.
    let ok = validate(&server, &secret, Some(&json!({"client_ip": "10.1.2.3"}))).await;
    assert_eq!(ok.body["valid"], true, "{ok:?}");
    let no = validate(&server, &secret, Some(&json!({"client_ip": "192.0.2.1"}))).await;
    assert_eq!(
        (no.body["valid"].clone(), no.body["reason"].clone()),
        (json!(false), json!("ip_not_allowed"))
    );
    let shown = get(&server, &acct.api_key, &format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(shown.body["allowed_ips"], json!(["10.0.0.0/8"]));
}

#[tokio::test]
async fn inactivity_expiry_shows_expired_and_active_again_once_raised() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({"scopes": ["read"], "expire_after_inactive_days": 2});
    let (key_id, secret) = create_key(&server, &acct.api_key, &body).await;
    let path = format!("/v1/api-keys/{key_id}");
    assert_eq!(
        get(&server, &acct.api_key, &path).await.body["status"],
        "active"
    );

    // Three days on, unused since its creation: expired, on every path.
    let later = server.another_node(&[
        "--no-bootstrap",
        "--test-clock-offset",
        &(3 * DAY).to_string(),
    ]);
    let shown = get(&later, &acct.api_key, &path).await;
    assert_eq!(shown.body["status"], "expired", "{shown:?}");
    assert_eq!(shown.body["expire_after_inactive_days"], 2);
    let refused = get(&later, &secret, "/v1/api-keys").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["details"]["reason"], "expired");
    assert_eq!(
        validate(&later, &secret, None).await.body["reason"],
        "expired"
    );
    let expired = get(&later, &acct.api_key, "/v1/api-keys?status=expired").await;
    let ids: Vec<&str> = expired.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [key_id.as_str()]);

    let raised = patch(
        &later,
        &acct.api_key,
        &path,
        &json!({"expire_after_inactive_days": 10}),
    )
    .await;
    assert_eq!(raised.status, 200, "{raised:?}");
    assert_eq!(raised.body["status"], "active");
    assert_eq!(get(&later, &secret, "/v1/api-keys").await.status, 200);
    let removed = patch(
        &later,
        &acct.api_key,
        &path,
        &json!({"expire_after_inactive_days": null}),
    )
    .await;
    assert!(
        removed.body.get("expire_after_inactive_days").is_none(),
        "{removed:?}"
    );
}

#[tokio::test]
async fn validate_records_the_platforms_endpoint_and_checks_required_scopes() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (key_id, secret) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let body = json!({"endpoint": "POST /v1/videos", "required_scopes": ["read", "write"]});
    let refused = validate(&server, &secret, Some(&body)).await;
    assert_eq!(refused.body["reason"], "insufficient_scopes", "{refused:?}");
    let body = json!({"endpoint": "GET /v1/videos/{id}", "required_scopes": ["read"]});
    let ok = validate(&server, &secret, Some(&body)).await;
    assert_eq!(ok.body["valid"], true, "{ok:?}");
    assert_eq!(ok.body["key_id"], key_id.as_str());
    assert_eq!(ok.body["account_id"], acct.account_id.as_str());

    let ids: Vec<String> = [&refused, &ok]
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_owned())
        .collect();
    server.metered(&acct.account_id, &ids).await;
    let history = get(
        &server,
        &acct.api_key,
        &format!("/v1/request-history?key_id={key_id}"),
    )
    .await;
    let rows: Vec<(Value, Value)> = history.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["endpoint"].clone(), r["status"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (json!("GET /v1/videos/{id}"), json!(200)),
            (json!("POST /v1/videos"), json!(403)),
        ]
    );
}

#[tokio::test]
async fn every_bad_policy_is_a_validation_error_that_changes_nothing() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (key_id, secret) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let path = format!("/v1/api-keys/{key_id}");
    let before = get(&server, &acct.api_key, &path).await.body;
    // The caller's own key's last_used moves with every request: compare the rest.
    let listing = async || {
        let mut listed = get(&server, &acct.api_key, "/v1/api-keys").await.body;
        for key in listed["api_keys"].as_array_mut().unwrap() {
            key.as_object_mut().unwrap().remove("last_used");
        }
        listed
    };
    let listed_before = listing().await;
    let too_many: Vec<String> = (0..101).map(|i| format!("10.0.0.{i}")).collect();
    let bad: Vec<(&str, Value)> = vec![
        ("rate_limit", json!({})),
        ("rate_limit", json!({"per_minute": 0})),
        ("rate_limit", json!({"per_minute": -3})),
        ("rate_limit", json!({"per_minute": 1.5})),
        ("rate_limit", json!({"per_hour": 3})),
        ("rate_limit", json!({"per_minute": null, "per_day": null})),
        ("rate_limit", json!("3/min")),
        ("credits", json!({"remaining": -1})),
        ("credits", json!({"remaining": 1_000_000_001_u64})),
        (
            "credits",
            json!({"refill": {"amount": 1, "interval": "day"}}),
        ),
        (
            "credits",
            json!({"remaining": 5, "refill": {"amount": 0, "interval": "day"}}),
        ),
        (
            "credits",
            json!({"remaining": 5, "refill": {"amount": 5, "interval": "week"}}),
        ),
        ("credits", json!({"remaining": 5, "generation": 9})),
        ("credits", json!(5)),
        ("allowed_ips", json!([])),
        ("allowed_ips", json!(too_many)),
        ("allowed_ips", json!(["10.0.0.0/33"])),
        ("allowed_ips", json!(["example.com"])),
        ("allowed_ips", json!("10.0.0.0/8")),
        ("expire_after_inactive_days", json!(0)),
        ("expire_after_inactive_days", json!(3651)),
        ("expire_after_inactive_days", json!("30")),
        ("expire_after_inactive_days", json!(1.5)),
    ];
    for (field, value) in &bad {
        let mut create = json!({"scopes": ["read"]});
        create[*field] = value.clone();
        let r = post(&server, &acct.api_key, "/v1/api-keys", &create).await;
        assert_eq!(r.status, 400, "create {field}={value}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), *field, "create {field}={value}: {r:?}");
        let mut change = json!({});
        change[*field] = value.clone();
        let r = patch(&server, &acct.api_key, &path, &change).await;
        assert_eq!(r.status, 400, "patch {field}={value}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), *field, "patch {field}={value}: {r:?}");
    }
    assert_eq!(get(&server, &acct.api_key, &path).await.body, before);
    assert_eq!(listing().await, listed_before);

    let bad_validate: Vec<(&str, Value)> = vec![
        ("endpoint", json!({"endpoint": "/v1/videos"})),
        ("endpoint", json!({"endpoint": "post /v1/videos"})),
        ("endpoint", json!({"endpoint": "POST v1"})),
        (
            "endpoint",
            json!({"endpoint": format!("GET /{}", "a".repeat(200))}),
        ),
        ("required_scopes", json!({"required_scopes": ["Bad Scope"]})),
        ("required_scopes", json!({"required_scopes": ["a", "a"]})),
        ("client_ip", json!({"client_ip": "10.0.0.0/8"})),
        ("client_ip", json!({"client_ip": "nowhere"})),
        ("cost", json!({"cost": 0})),
        ("cost", json!({"cost": 1001})),
        ("cost", json!({"cost": -1})),
        ("cost", json!({"cost": 1.5})),
        ("nonsense", json!({"nonsense": 1})),
    ];
    for (field, body) in &bad_validate {
        let r = validate(&server, &secret, Some(body)).await;
        assert_eq!(r.status, 400, "validate {body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), *field, "validate {body}: {r:?}");
    }
    // The KonPro form is unchanged: no body, a valid key.
    let v = validate(&server, &secret, None).await;
    assert_eq!(v.body["valid"], true, "{v:?}");
    assert!(v.body.get("credits_remaining").is_none());
}

#[tokio::test]
async fn policies_show_on_create_and_a_patch_changes_only_what_it_names() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({
        "scopes": ["read"],
        "rate_limit": {"per_day": 1000},
        "credits": {"remaining": 10, "refill": {"amount": 100, "interval": "month"}},
        "allowed_ips": ["192.0.2.7", "2001:db8::/32"],
        "expire_after_inactive_days": 30,
    });
    let created = post(&server, &acct.api_key, "/v1/api-keys", &body).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.body["rate_limit"],
        json!({"per_minute": null, "per_day": 1000})
    );
    assert_eq!(
        created.body["credits"],
        json!({"remaining": 10, "refill": {"amount": 100, "interval": "month"}})
    );
    assert_eq!(
        created.body["allowed_ips"],
        json!(["192.0.2.7/32", "2001:db8::/32"])
    );
    assert_eq!(created.body["expire_after_inactive_days"], 30);
    let path = format!("/v1/api-keys/{}", created.body["key_id"].as_str().unwrap());
    let changed = patch(&server, &acct.api_key, &path, &json!({"allowed_ips": null})).await;
    assert_eq!(changed.status, 200, "{changed:?}");
    assert!(changed.body.get("allowed_ips").is_none());
    assert_eq!(changed.body["credits"]["remaining"], 10);
    assert_eq!(changed.body["rate_limit"]["per_day"], 1000);
    let audit = get(&server, &acct.api_key, "/v1/audit-log?action=key.updated").await;
    assert_eq!(
        audit.body["events"][0]["changes"]["allowed_ips"],
        json!({"from": ["192.0.2.7/32", "2001:db8::/32"], "to": null})
    );
}
