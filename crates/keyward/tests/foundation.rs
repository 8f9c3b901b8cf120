//! Black-box tests of the foundation: the seed endpoint, authentication, the error
//! contract, request recording, shutdown and durability. Real binary, real socket.

mod common;

use std::time::Duration;

use common::{Server, client, create_key, delete, get, patch, post, send};
use keyward_core::AccountId;
use keyward_store::PageQuery;
use serde_json::{Value, json};

fn is_second_precision_utc(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && keyward_core::timefmt::parse(s).is_ok()
}

#[tokio::test]
async fn seed_endpoint_returns_every_documented_field_oldest_first() {
    let server = Server::start();
    let acct = server.create_account("pro");
    let (second, _) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "Production Key", "scopes": ["read", "write"], "expires_at": "2099-12-31T23:59:59.900+00:00"}),
    )
    .await;
    let (third, _) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;

    let r = get(&server, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("x-request-id")
            .is_some_and(|id| id.starts_with("req_"))
    );
    let object = r.body.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["api_keys"],
        "no has_more without limit"
    );
    let keys = r.body["api_keys"].as_array().unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [acct.key_id.as_str(), second.as_str(), third.as_str()],
        "oldest first"
    );

    let prod = &keys[1];
    assert_eq!(prod["name"], "Production Key");
    assert_eq!(prod["scopes"], json!(["read", "write"]));
    assert_eq!(
        prod["expires_at"], "2099-12-31T23:59:59Z",
        "second precision, UTC, Z"
    );
    assert_eq!(prod["status"], "active");
    assert!(prod["last_used"].is_null());
    assert!(is_second_precision_utc(&prod["created_at"]), "{prod}");
    assert!(prod["hint"].as_str().unwrap().starts_with("kw_"));
    assert!(prod["metadata"].is_object());
    for key in keys {
        let fields: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for f in [
            "key_id",
            "name",
            "scopes",
            "last_used",
            "created_at",
            "expires_at",
            "status",
        ] {
            assert!(fields.contains(&f), "{f} missing from {key}");
        }
        assert!(key["key_id"].as_str().unwrap().starts_with("key_"));
        assert!(key.get("api_key").is_none(), "the secret is never listed");
        assert!(
            !key.to_string().contains(&acct.api_key[3..]),
            "no secret material in listings"
        );
    }
    assert!(keys[2]["name"].is_null());
    assert!(keys[2]["expires_at"].is_null());
}

#[tokio::test]
async fn listing_filters_by_status_and_pages_with_limit_and_after() {
    let server = Server::start();
    let acct = server.create_account("pro");
    let mut ids = vec![acct.key_id.clone()];
    for i in 0..4 {
        let (id, _) = create_key(
            &server,
            &acct.api_key,
            &json!({"name": format!("k{i}"), "scopes": ["read"]}),
        )
        .await;
        ids.push(id);
    }
    let r = patch(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{}", ids[2]),
        &json!({"status": "inactive"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let page1 = get(&server, &acct.api_key, "/v1/api-keys?limit=2").await;
    assert_eq!(page1.body["has_more"], true);
    let last = page1.body["api_keys"][1]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page2 = get(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys?limit=2&after={last}"),
    )
    .await;
    let page3_after = page2.body["api_keys"][1]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page3 = get(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys?limit=2&after={page3_after}"),
    )
    .await;
    assert_eq!(page3.body["has_more"], false);
    let all: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p.body["api_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["key_id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(all, ids, "pages neither skip nor repeat");

    let inactive = get(&server, &acct.api_key, "/v1/api-keys?status=inactive").await;
    let got: Vec<&str> = inactive.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str()]);
    let active = get(&server, &acct.api_key, "/v1/api-keys?status=active").await;
    assert_eq!(active.body["api_keys"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn two_accounts_never_see_each_others_keys() {
    let server = Server::start();
    let a = server.create_account("pro");
    let b = server.create_account("pro");
    let (a_second, _) = create_key(&server, &a.api_key, &json!({"scopes": ["read"]})).await;

    let b_list = get(&server, &b.api_key, "/v1/api-keys").await;
    let b_ids: Vec<&str> = b_list.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(b_ids, [b.key_id.as_str()]);

    let foreign = get(&server, &b.api_key, &format!("/v1/api-keys/{a_second}")).await;
    let missing = get(
        &server,
        &b.api_key,
        "/v1/api-keys/key_01JD00000000000000000000ZZ",
    )
    .await;
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.error_code(), "RESOURCE_NOT_FOUND");
    assert_eq!(
        foreign.body["error"], missing.body["error"],
        "another account's key reads exactly like a missing one"
    );
}

#[tokio::test]
async fn rejected_keys_name_their_reason() {
    let server = Server::start();
    let acct = server.create_account("pro");
    let (disabled_id, disabled) =
        create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    patch(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{disabled_id}"),
        &json!({"status": "inactive"}),
    )
    .await;
    let (_, expiring) = create_key(
        &server,
        &acct.api_key,
        &json!({"scopes": ["read"], "expires_in": 1}),
    )
    .await;

    // One character changed keeps the shape but breaks the checksum.
    let mut tampered = acct.api_key.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let unknown = keyward_core::KeySecret::generate(
        &keyward_core::KeyPrefix::default(),
        &mut keyward_core::OsRandom,
    );

    let missing = send(client().get(server.url("/v1/api-keys"))).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (401, "INVALID_API_KEY")
    );
    assert_eq!(missing.body["error"]["details"]["reason"], "missing");
    for (key, reason) in [
        ("garbage", "malformed"),
        ("kw_short", "malformed"),
        (tampered.as_str(), "malformed"),
        (unknown.expose(), "not_found"),
        (disabled.as_str(), "inactive"),
    ] {
        let r = get(&server, key, "/v1/api-keys").await;
        assert_eq!(r.status, 401, "{reason}: {r:?}");
        assert_eq!(r.error_code(), "INVALID_API_KEY");
        assert_eq!(r.body["error"]["details"]["reason"], reason, "key {key:?}");
    }
    // Odd bytes in the header are malformed, not a crash.
    let odd = send(client().get(server.url("/v1/api-keys")).header(
        "x-api-key",
        reqwest::header::HeaderValue::from_bytes(b"kw_\xff\xfe").unwrap(),
    ))
    .await;
    assert_eq!(odd.body["error"]["details"]["reason"], "malformed");

    // The key expires on the whole second after its creation (`expires_in: 1`), well
    // within 2 s: poll until it is refused, then check why.
    let expired = common::eventually(
        Duration::from_secs(2),
        "the key made with expires_in 1 to be refused",
        async || {
            let r = get(&server, &expiring, "/v1/api-keys").await;
            if r.status == 200 { Err(r) } else { Ok(r) }
        },
    )
    .await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["error"]["details"]["reason"], "expired");
}

#[tokio::test]
async fn every_failure_is_the_documented_json_error() {
    let server = Server::start();
    let acct = server.create_account("pro");
    let key = acct.api_key.as_str();

    let unknown_route = send(client().get(server.url("/v2/nothing"))).await;
    assert_eq!(
        (unknown_route.status, unknown_route.error_code()),
        (404, "RESOURCE_NOT_FOUND")
    );

    let wrong_method = send(
        client()
            .put(server.url("/v1/api-keys"))
            .header("x-api-key", key),
    )
    .await;
    assert_eq!(
        (wrong_method.status, wrong_method.error_code()),
        (405, "METHOD_NOT_ALLOWED")
    );
    let allow = wrong_method.header("allow").unwrap();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "allow: {allow}"
    );

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?status=gone", "status"),
        ("?after=../../etc", "after"),
        ("?limit=1&limit=2", "limit"),
        ("?colour=blue", "colour"),
    ] {
        let r = get(&server, key, &format!("/v1/api-keys{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{query}");
        assert_eq!(r.field(), field, "{query}");
    }

    let big = "x".repeat(70 * 1024);
    let oversized = send(
        client()
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(format!(r#"{{"scopes":["read"],"name":"{big}"}}"#)),
    )
    .await;
    assert_eq!(
        (oversized.status, oversized.error_code()),
        (413, "PAYLOAD_TOO_LARGE")
    );

    let malformed = send(
        client()
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body("{\"scopes\": [\"read\""),
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.error_code()),
        (400, "INVALID_REQUEST")
    );
    let not_json = send(
        client()
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", key)
            .header("content-type", "text/plain")
            .body("scopes=read"),
    )
    .await;
    assert_eq!(
        (not_json.status, not_json.error_code()),
        (400, "INVALID_REQUEST")
    );

    // Nothing was created by any of that.
    let list = get(&server, key, "/v1/api-keys").await;
    assert_eq!(list.body["api_keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn request_ids_are_echoed_only_when_well_formed() {
    let server = Server::start();
    let echoed = send(
        client()
            .get(server.url("/healthz"))
            .header("x-request-id", "trace-123.abc_X"),
    )
    .await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-123.abc_X"));
    let replaced = send(
        client()
            .get(server.url("/v1/api-keys"))
            .header("x-request-id", "bad id; drop table"),
    )
    .await;
    let id = replaced.header("x-request-id").unwrap();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(replaced.body["request_id"], id);
    let too_long = send(
        client()
            .get(server.url("/healthz"))
            .header("x-request-id", "a".repeat(65)),
    )
    .await;
    assert!(too_long.header("x-request-id").unwrap().starts_with("req_"));
}

#[tokio::test]
async fn last_used_appears_within_two_seconds_of_use() {
    let server = Server::start();
    let acct = server.create_account("pro");
    let (id, secret) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let before = get(&server, &acct.api_key, &format!("/v1/api-keys/{id}")).await;
    assert!(before.body["last_used"].is_null());
    assert_eq!(get(&server, &secret, "/v1/api-keys").await.status, 200);
    common::eventually(
        Duration::from_secs(2),
        "last_used to appear within 2 s of the use",
        async || {
            let r = get(&server, &acct.api_key, &format!("/v1/api-keys/{id}")).await;
            if is_second_precision_utc(&r.body["last_used"]) {
                Ok(())
            } else {
                Err(r.body["last_used"].clone())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_and_flushes_every_recorded_request() {
    let mut server = Server::start();
    let acct = server.create_account("enterprise");
    let n = 200;
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = server.url("/v1/api-keys");
        let key = acct.api_key.clone();
        tasks.push(tokio::spawn(async move {
            send(
                client()
                    .get(url)
                    .header("x-api-key", key)
                    .header("user-agent", format!("drain-test/{i}")),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Straight after the last answer, before any periodic flush could be relied upon.
    let status = server.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        server.logs()
    );

    let store = server.store().await;
    let account = AccountId::parse(&acct.account_id).unwrap();
    let rows = store
        .request_history(
            &account,
            &PageQuery {
                limit: 1000,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        n,
        "every answered request is in the history after SIGTERM"
    );
    assert!(
        rows.iter()
            .all(|(_, r)| r.endpoint == "GET /v1/api-keys" && r.status == 200)
    );
    let usage = store
        .usage(
            &account,
            &keyward_workers::month_of(time::OffsetDateTime::now_utc()),
        )
        .await
        .unwrap();
    assert_eq!(usage.iter().map(|(_, _, c)| c).sum::<u64>(), n as u64);
}

#[tokio::test]
async fn acknowledged_accounts_and_keys_survive_kill_9() {
    let mut server = Server::start();
    let acct = server.create_account("pro");
    let mut secrets = Vec::new();
    for i in 0..20 {
        let (_, secret) = create_key(
            &server,
            &acct.api_key,
            &json!({"name": format!("k{i}"), "scopes": ["read"]}),
        )
        .await;
        secrets.push(secret);
    }
    server.kill9();
    server.restart();
    for secret in secrets.iter().chain([&acct.api_key]) {
        let r = get(&server, secret, "/v1/api-keys").await;
        assert_eq!(
            r.status, 200,
            "a key acknowledged before kill -9 must still work: {r:?}"
        );
    }
    let list = get(&server, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(list.body["api_keys"].as_array().unwrap().len(), 21);
}

#[tokio::test]
async fn first_start_bootstraps_one_account_and_prints_its_key_once() {
    let mut server = Server::start_with(&[]);
    let logs = server.logs();
    let key = logs
        .split_whitespace()
        .find(|w| w.starts_with("kw_") && w.len() == 41)
        .unwrap_or_else(|| panic!("no key printed:\n{logs}"))
        .to_owned();
    assert!(logs.contains(&format!(
        "curl -s {}/v1/api-keys -H \"x-api-key: {key}\"",
        server.base
    )));
    let r = get(&server, &key, "/v1/api-keys").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["api_keys"][0]["scopes"],
        json!(["read", "write", "admin"])
    );

    server.sigterm();
    server.stderr.lock().unwrap().clear();
    server.restart();
    let again = server.logs();
    let printed_key = again
        .split_whitespace()
        .any(|w| w.starts_with("kw_") && w.len() == 41);
    assert!(
        !printed_key,
        "a database with an account is never bootstrapped again:\n{again}"
    );
    let list = server.cli(&["accounts", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1);
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let mut server = Server::start();
    let acct = server.create_account("pro");
    let (id, secret) = create_key(
        &server,
        &acct.api_key,
        &json!({"scopes": ["read"], "metadata": {"token_hint": "do-not-log-me"}}),
    )
    .await;
    get(&server, &secret, "/v1/api-keys").await;
    get(
        &server,
        "kw_definitelyNotAValidKeyButLong0000000000",
        "/v1/api-keys",
    )
    .await;
    post(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{id}/rotate"),
        &json!({}),
    )
    .await;
    delete(&server, &acct.api_key, &format!("/v1/api-keys/{id}")).await;
    server.sigterm();
    let logs = server.logs();
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "logging was on"
    );
    for needle in [
        &acct.api_key[3..],
        &secret[3..],
        "do-not-log-me",
        "kw_definitelyNot",
    ] {
        assert!(!logs.contains(needle), "{needle} appeared in the logs");
    }
}

#[tokio::test]
async fn operational_endpoints_answer_without_a_key() {
    let server = Server::start();
    assert_eq!(send(client().get(server.url("/healthz"))).await.status, 200);
    let ready = send(client().get(server.url("/readyz"))).await;
    assert_eq!(ready.status, 200);
    let metrics = send(client().get(server.url("/metrics"))).await;
    assert_eq!(metrics.status, 200);
    let openapi = send(client().get(server.url("/openapi.json"))).await;
    assert_eq!(openapi.body["openapi"], "3.1.0");
    let redirect = common::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/docs"))
        .send()
        .await
        .unwrap();
    assert!(
        redirect.status().is_redirection(),
        "/docs redirects: {}",
        redirect.status()
    );
    assert!(
        !redirect.text().await.unwrap().contains("PROCESSING_ERROR"),
        "a redirect is not an error"
    );
    let docs = client().get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "docs page renders"
    );
}

#[tokio::test]
async fn the_bare_address_redirects_to_the_docs_and_openapi_json_is_the_checked_document() {
    let server = Server::start();
    let no_follow = common::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_follow.get(server.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 307);
    assert_eq!(root.headers()["location"], "/docs");
    assert!(root.headers().contains_key("x-request-id"));

    // The document every reply of the harness is checked against is the served one.
    let served = send(client().get(server.url("/openapi.json"))).await;
    assert_eq!(
        served.body,
        serde_json::to_value(keyward_http::openapi::document()).unwrap()
    );
}

#[test]
fn the_harness_fails_a_reply_whose_status_its_operation_does_not_document() {
    let complaint = common::undocumented("POST", "/v1/api-keys/validate", 404)
        .expect("validate documents no 404");
    assert!(
        complaint.contains("validate_api_key") && complaint.contains("404"),
        "{complaint}"
    );
    assert!(
        common::undocumented("GET", "/v1/api-keys/key_01JDQ8W6ZK3T5R2N9V4B7C1XEH", 404).is_none()
    );
    assert!(common::undocumented("DELETE", "/v1/api-keys/validate", 409).is_none());
    let (template, _) = common::operation_of("POST", "/v1/api-keys/validate").unwrap();
    assert_eq!(template, "/v1/api-keys/validate");
    // No operation: GET on validate (a 405), the bare address, unknown paths.
    assert!(common::operation_of("GET", "/v1/api-keys/validate").is_none());
    assert!(common::operation_of("GET", "/").is_none());
    assert!(common::operation_of("GET", "/v1/api-keys/").is_none());
    assert!(common::undocumented("GET", "/healthz", 409).is_some());
}

#[test]
fn wrong_database_urls_are_clear_startup_errors() {
    for (url, expected) in [
        (
            "mysql://root@localhost/keyward",
            "unsupported database URL scheme",
        ),
        (
            "sqlite:/proc/definitely/not/here/keyward.db",
            "cannot open the SQLite database",
        ),
    ] {
        let out = std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert!(!stderr.contains("panicked"), "{url}: {stderr}");
    }
}

#[test]
fn operator_commands_manage_plans_and_limits() {
    let server = Server::start();
    let acct = server.create_account("free");
    let row = |server: &Server| -> Value {
        let list = server.cli(&["accounts", "list", "--json"]);
        serde_json::from_slice(&list.stdout).unwrap()
    };

    // Overrides apply on any plan, window by window; `none` goes back to the plan's.
    let id = acct.account_id.as_str();
    let set = |args: &[&str]| {
        let mut all = vec!["accounts", "set-limits", id];
        all.extend_from_slice(args);
        let out = server.cli(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set(&["--per-minute", "5", "--per-month", "1000"]);
    let limited = row(&server);
    assert_eq!(limited["plan"], "free");
    assert_eq!(limited["per_minute"], 5);
    assert_eq!(limited["per_day"], 100, "the plan's, not overridden");
    assert_eq!(limited["per_month"], 1000);
    set(&["--per-minute", "none"]);
    let back = row(&server);
    assert_eq!(back["per_minute"], 10, "back to the plan's");
    assert_eq!(
        back["per_month"], 1000,
        "an omitted window keeps its override"
    );

    // Plans are data: a new plan, an account on it, and its numbers in force.
    let gold = server.cli(&[
        "plans",
        "set",
        "gold",
        "--per-day",
        "50",
        "--per-month",
        "7",
    ]);
    assert!(
        gold.status.success(),
        "{}",
        String::from_utf8_lossy(&gold.stderr)
    );
    assert!(
        server
            .cli(&["accounts", "set-plan", id, "gold"])
            .status
            .success()
    );
    let on_gold = row(&server);
    assert_eq!(on_gold["plan"], "gold");
    assert!(on_gold["per_minute"].is_null(), "gold has no minute limit");
    assert_eq!(on_gold["per_day"], 50);
    assert_eq!(on_gold["per_month"], 1000, "the override still wins");
    let plans = server.cli(&["plans", "list", "--json"]);
    let names: Vec<Value> = String::from_utf8_lossy(&plans.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["name"].clone())
        .collect();
    assert_eq!(names, ["enterprise", "free", "gold", "pro", "scale"]);

    // A plan in use is not deleted, an unknown plan is not assigned, bad input is refused.
    let in_use = server.cli(&["plans", "delete", "gold"]);
    assert!(!in_use.status.success());
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("in use"));
    let unknown = server.cli(&["accounts", "set-plan", id, "platinum"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("plan: no such plan"));
    for bad in [
        &["plans", "set", "Gold"][..],
        &["plans", "set", "silver", "--per-day", "0"],
        &["plans", "set", "silver", "--per-day", "-1"],
        &["accounts", "set-limits", id, "--per-month", "lots"],
    ] {
        assert!(!server.cli(bad).status.success(), "{bad:?}");
    }
    assert_eq!(row(&server), on_gold, "nothing changed");
    let after = server.cli(&["plans", "list", "--json"]);
    assert_eq!(after.stdout, plans.stdout, "no plan added");
    assert!(
        server
            .cli(&["accounts", "set-plan", id, "pro"])
            .status
            .success()
    );
    assert!(server.cli(&["plans", "delete", "gold"]).status.success());

    let missing = server.cli(&[
        "accounts",
        "set-plan",
        "acct_01JD0000000000000000000000",
        "pro",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account"));
}
