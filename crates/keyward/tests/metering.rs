//! Black-box tests of metering: request history, monthly usage, plan rate limits,
//! retention and the Prometheus metrics. Real binary, real socket.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{METER_WAIT, Reply, Server, client, create_key, get, patch, post, send};
use keyward_core::{AccountId, KeyId, KeyPrefix, KeySecret, RequestId, timefmt};
use keyward_store::{MeterBatch, RequestRecord, UsageKey};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// A key id that exists in no account.
const MISSING_KEY_ID: &str = "key_01JD00000000000000000000ZZ";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Percent-encodes a query component (everything but the RFC 3986 unreserved set).
fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `?a=1&b=2`, encoded; empty for no parameters.
fn query(params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("?{}", pairs.join("&"))
}

/// `GET /v1/request-history` with these (encoded) parameters.
async fn history(server: &Server, key: &str, params: &[(&str, &str)]) -> Reply {
    get(
        server,
        key,
        &format!("/v1/request-history{}", query(params)),
    )
    .await
}

/// The rows of a history reply, asserting it is a 200.
fn rows(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "history: {reply:?}");
    reply.body["requests"]
        .as_array()
        .expect("requests array")
        .clone()
}

/// The `request_id`s of history rows, in the order given.
fn request_ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["request_id"].as_str().expect("request_id").to_owned())
        .collect()
}

/// The `x-request-id` of a reply.
fn rid(reply: &Reply) -> String {
    reply
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned()
}

/// A numeric response header.
fn num_header(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("{name} missing: {reply:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {reply:?}"))
}

/// Polls the history (limit 1000, with `params`) until every id of `wanted` is in it;
/// returns the last rows read. Only for unlimited accounts: polling costs requests.
async fn history_containing(
    server: &Server,
    key: &str,
    params: &[(&str, &str)],
    wanted: &[String],
) -> Vec<Value> {
    let mut params = params.to_vec();
    params.push(("limit", "1000"));
    common::eventually(
        METER_WAIT,
        format_args!("the history to hold all of {wanted:?}"),
        async || {
            let last = rows(&history(server, key, &params).await);
            let ids: HashSet<String> = request_ids(&last).into_iter().collect();
            if wanted.iter().all(|w| ids.contains(w)) {
                Ok(last)
            } else {
                Err(last)
            }
        },
    )
    .await
}

/// The row of `request_id`.
fn row_of<'a>(rows: &'a [Value], request_id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no row {request_id} in {rows:#?}"))
}

/// `GET /v1/usage` with an optional month.
async fn usage(server: &Server, key: &str, month: Option<&str>) -> Reply {
    let path = match month {
        Some(m) => format!("/v1/usage?month={}", encode(m)),
        None => "/v1/usage".to_owned(),
    };
    get(server, key, &path).await
}

/// A JSON object of counters as a map.
fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .expect("counter object")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
        .collect()
}

/// Builds an expected counter map.
fn expect_counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// The labels of one Prometheus series (`a="x",b="y"`), unescaped.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            return labels;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {name} has no quoted value in {text}"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((name, value));
    }
}

/// The sum of the samples of `name` whose labels include every pair of `labels`, or
/// `None` if there is no such series.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total: Option<f64> = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}').expect("labels end with }")),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have = parse_labels(label_text);
        if labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            let v: f64 = value.parse().expect("sample value");
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The `/metrics` text.
async fn metrics_text(server: &Server) -> Reply {
    send(client().get(server.url("/metrics"))).await
}

/// The whole seconds after `t`: the first instant that storage (whole seconds) puts
/// strictly after every request that arrived by `t`.
fn next_whole_second(t: OffsetDateTime) -> OffsetDateTime {
    timefmt::truncate(t) + time::Duration::seconds(1)
}

/// Sleeps until the wall clock is 150 ms past `t`. Only for waits on a clock boundary
/// (a whole second of storage, a bucket of the rolling minute), where the server does
/// nothing that a test could poll for.
async fn sleep_past(t: OffsetDateTime) {
    let left = t - OffsetDateTime::now_utc() + time::Duration::milliseconds(150);
    if left.is_positive() {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(left.whole_milliseconds()).expect("ms"),
        ))
        .await;
    }
}

/// Lower-case hex of bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_free_account_gets_exactly_ten_successes_then_documented_429s() {
    // Arrange
    let server = Server::start();
    let limited = server.create_account("free");
    let bystander = server.create_account("free");

    // Act
    let mut replies = Vec::new();
    for _ in 0..15 {
        replies.push(get(&server, &limited.api_key, "/v1/api-keys").await);
    }
    let other = get(&server, &bystander.api_key, "/v1/api-keys").await;

    // Assert
    for (i, r) in replies.iter().take(10).enumerate() {
        assert_eq!(
            r.status, 200,
            "request {i} is within the free plan's 10/min: {r:?}"
        );
        assert_eq!(
            num_header(r, "x-ratelimit-limit"),
            10,
            "request {i}: limit of the minute window"
        );
        assert_eq!(
            num_header(r, "x-ratelimit-remaining"),
            9 - i as u64,
            "request {i}: remaining counts down"
        );
        let reset = num_header(r, "x-ratelimit-reset");
        assert!(
            (1..=61).contains(&reset),
            "request {i}: x-ratelimit-reset {reset}"
        );
    }
    for (i, r) in replies.iter().enumerate().skip(10) {
        assert_eq!(r.status, 429, "request {i} is over the limit: {r:?}");
        assert_eq!(r.error_code(), "RATE_LIMIT_EXCEEDED", "request {i}");
        let retry = num_header(r, "retry-after");
        assert!(
            (55..=61).contains(&retry),
            "request {i}: retry-after {retry}"
        );
        assert_eq!(num_header(r, "x-ratelimit-limit"), 10, "request {i}");
        assert_eq!(num_header(r, "x-ratelimit-remaining"), 0, "request {i}");
        assert!(num_header(r, "x-ratelimit-reset") <= 61, "request {i}");
    }
    assert_eq!(
        other.status, 200,
        "another free account is unaffected: {other:?}"
    );
    assert_eq!(num_header(&other, "x-ratelimit-remaining"), 9);
    assert_eq!(num_header(&other, "x-ratelimit-limit"), 10);
}

#[tokio::test]
async fn refused_requests_consume_nothing_yet_are_recorded_with_status_429() {
    // Arrange: ten successes, then five refusals at least two one-second buckets of the
    // rolling minute later: once the successes have left the window, the refusals would
    // still be in it, for a second or more, had they been counted.
    let server = Server::start();
    let acct = server.create_account("free");
    let mut ok_ids = Vec::new();
    for i in 0..10 {
        let r = get(&server, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "success {i}: {r:?}");
        ok_ids.push(rid(&r));
    }
    // The server read its clock for the last success before this line did.
    let successes_bucket_ends = next_whole_second(OffsetDateTime::now_utc());
    sleep_past(successes_bucket_ends + time::Duration::seconds(1)).await;
    let mut refused_ids = Vec::new();
    for i in 0..5 {
        let r = get(&server, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 429, "refusal {i}: {r:?}");
        refused_ids.push(rid(&r));
    }

    // Act: wait until every success has left the rolling minute, which keeps a one-second
    // bucket for 61 s, but not long enough for the refusals to have left it had they been
    // counted. The window is the contract's 60 s and nothing outside the server can move
    // its clock, so this waits on the real one, until the bucket's end and not past it.
    sleep_past(successes_bucket_ends + time::Duration::seconds(60)).await;
    let after = get(&server, &acct.api_key, "/v1/api-keys").await;
    let after_id = rid(&after);
    server
        .metered(&acct.account_id, std::slice::from_ref(&after_id))
        .await;
    let report = usage(&server, &acct.api_key, None).await;
    let hist = history(
        &server,
        &acct.api_key,
        &[("endpoint", "GET /v1/api-keys"), ("limit", "100")],
    )
    .await;
    let refused_rows = history(&server, &acct.api_key, &[("status", "429")]).await;

    // Assert
    assert_eq!(after.status, 200, "the window rolled: {after:?}");
    assert_eq!(
        num_header(&after, "x-ratelimit-remaining"),
        9,
        "only this request counts: the five 429s consumed nothing"
    );
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(num_header(&report, "x-ratelimit-remaining"), 8);
    assert_eq!(
        counts(&report.body["by_endpoint"]),
        expect_counts(&[("GET /v1/api-keys", 16)]),
        "usage counts every recorded request: 10 + 5 refused + 1 after the roll"
    );
    assert_eq!(report.body["requests_this_month"], 16);
    let hist = rows(&hist);
    let statuses: BTreeMap<String, u64> = hist
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(hist.len(), 16, "history: {hist:#?}");
    for id in &ok_ids {
        assert_eq!(statuses.get(id), Some(&200), "success {id}");
    }
    for id in &refused_ids {
        assert_eq!(
            statuses.get(id),
            Some(&429),
            "refusal {id} is recorded with its status"
        );
    }
    assert_eq!(statuses.get(&after_id), Some(&200));
    let mut newest_first = refused_ids.clone();
    newest_first.reverse();
    assert_eq!(
        request_ids(&rows(&refused_rows)),
        newest_first,
        "status=429 finds exactly the refusals"
    );
}

#[tokio::test]
async fn a_concurrent_burst_never_gets_more_than_the_limit() {
    // Arrange
    let server = Arc::new(Server::start());
    let acct = server.create_account("free");

    // Act: 30 requests at once.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (server, key) = (server.clone(), acct.api_key.clone());
        tasks.push(tokio::spawn(async move {
            get(&server, &key, "/v1/api-keys").await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }

    // Assert
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        (ok.len(), refused),
        (10, 20),
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let mut remaining: Vec<u64> = ok
        .iter()
        .map(|r| num_header(r, "x-ratelimit-remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<u64>>(),
        "each success saw its own count"
    );
}

#[tokio::test]
async fn an_oversized_body_from_a_valid_key_is_recorded_and_rate_limited_like_any_request() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let before = get(&server, &acct.api_key, "/v1/api-keys").await;
    let remaining = num_header(&before, "x-ratelimit-remaining");
    let big = "x".repeat(70 * 1024);

    // Act
    let oversized = send(
        client()
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", &acct.api_key)
            .header("content-type", "application/json")
            .body(format!(r#"{{"scopes":["read"],"name":"{big}"}}"#)),
    )
    .await;
    let after = get(&server, &acct.api_key, "/v1/api-keys").await;
    server.metered(&acct.account_id, &[rid(&oversized)]).await;
    let hist = history(&server, &acct.api_key, &[("status", "413")]).await;

    // Assert
    assert_eq!(oversized.status, 413, "{oversized:?}");
    assert_eq!(oversized.error_code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(
        request_ids(&rows(&hist)),
        [rid(&oversized)],
        "the key authenticated, so the 413 is recorded"
    );
    assert_eq!(
        oversized.header("x-ratelimit-limit"),
        Some("60"),
        "every authenticated response of a limited account carries the rate-limit headers: {oversized:?}"
    );
    assert_eq!(
        num_header(&after, "x-ratelimit-remaining"),
        remaining - 2,
        "an authenticated request that is not a 429 or 403 counts against the limit"
    );
}

#[tokio::test]
async fn scope_is_checked_before_the_limit_so_an_exhausted_account_gets_403_not_429() {
    // Arrange: a free account spends its whole minute.
    let server = Server::start();
    let acct = server.create_account("free");
    let (_, read_only) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    for i in 0..9 {
        assert_eq!(
            get(&server, &acct.api_key, "/v1/api-keys").await.status,
            200,
            "request {i}"
        );
    }

    // Act
    let forbidden = post(
        &server,
        &read_only,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    let limited = get(&server, &read_only, "/v1/api-keys").await;

    // Assert
    assert_eq!(
        forbidden.status, 403,
        "scope comes before the rate limit: {forbidden:?}"
    );
    assert_eq!(forbidden.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(num_header(&forbidden, "x-ratelimit-limit"), 10);
    assert_eq!(num_header(&forbidden, "x-ratelimit-remaining"), 0);
    assert!(
        forbidden.header("retry-after").is_none(),
        "a 403 is not a 429"
    );
    assert_eq!(
        limited.status, 429,
        "the account's limit covers all its keys: {limited:?}"
    );
    assert_eq!(limited.error_code(), "RATE_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn a_plan_changed_by_the_operator_applies_within_the_key_cache_ttl() {
    // Arrange: a free account whose key is already cached.
    let server = Server::start();
    let acct = server.create_account("free");
    let first_sent = Instant::now();
    let first = get(&server, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(num_header(&first, "x-ratelimit-limit"), 10);
    let out = server.cli(&["accounts", "set-plan", &acct.account_id, "pro"]);
    assert!(
        out.status.success(),
        "set-plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Act: the cache may keep the old plan for up to 10 s after it loaded the key (one
    // second more is room for a loaded machine). Every success until then counts under
    // the old plan; its refusals count nothing.
    let mut under_old_plan = 0;
    let upgraded = common::eventually(
        Duration::from_secs(11).saturating_sub(first_sent.elapsed()),
        "the pro plan's limit within the key cache's 10 s",
        async || {
            let r = get(&server, &acct.api_key, "/v1/api-keys").await;
            if r.header("x-ratelimit-limit") == Some("60") {
                return Ok(r);
            }
            if r.status == 200 {
                under_old_plan += 1;
            }
            Err(r)
        },
    )
    .await;

    // Assert
    assert_eq!(upgraded.status, 200, "{upgraded:?}");
    assert_eq!(
        num_header(&upgraded, "x-ratelimit-limit"),
        60,
        "the pro plan is in force"
    );
    assert_eq!(
        num_header(&upgraded, "x-ratelimit-remaining"),
        58 - under_old_plan,
        "requests made under the old plan still count: the first and {under_old_plan} more"
    );
}

#[tokio::test]
async fn a_403_carries_rate_limit_headers_and_consumes_nothing() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let (_, read_only) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let before = get(&server, &acct.api_key, "/v1/api-keys").await;
    let remaining = num_header(&before, "x-ratelimit-remaining");

    // Act
    let forbidden = post(
        &server,
        &read_only,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    let forbidden_again = post(
        &server,
        &read_only,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    let after = get(&server, &acct.api_key, "/v1/api-keys").await;

    // Assert
    assert_eq!(before.status, 200);
    assert_eq!(
        remaining, 58,
        "60/min, minus the key creation and this request"
    );
    for (case, r) in [("first 403", &forbidden), ("second 403", &forbidden_again)] {
        assert_eq!(r.status, 403, "{case}: {r:?}");
        assert_eq!(r.error_code(), "INSUFFICIENT_PERMISSIONS", "{case}");
        assert_eq!(
            r.body["error"]["details"]["required"],
            json!(["write"]),
            "{case}"
        );
        assert_eq!(num_header(r, "x-ratelimit-limit"), 60, "{case}");
        assert_eq!(
            num_header(r, "x-ratelimit-remaining"),
            remaining,
            "{case}: a 403 consumes nothing"
        );
        assert!(num_header(r, "x-ratelimit-reset") <= 61, "{case}");
        assert!(r.header("retry-after").is_none(), "{case}: not a 429");
    }
    assert_eq!(
        num_header(&after, "x-ratelimit-remaining"),
        remaining - 1,
        "the next success counts as one"
    );
}

#[tokio::test]
async fn enterprise_limits_set_by_the_operator_apply_and_unlimited_accounts_show_no_headers() {
    // Arrange: limits set before the first request, so no cached plan is in the way.
    let server = Server::start();
    let limited = server.create_account("enterprise");
    let unlimited = server.create_account("enterprise");
    let daily = server.create_account("enterprise");
    let out = server.cli(&[
        "accounts",
        "set-limits",
        &daily.account_id,
        "--per-minute",
        "100",
        "--per-day",
        "4",
    ]);
    assert!(
        out.status.success(),
        "set-limits: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&[
        "accounts",
        "set-limits",
        &limited.account_id,
        "--per-minute",
        "3",
    ]);
    assert!(
        out.status.success(),
        "set-limits: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let validate = |key: &str| {
        send(
            client()
                .post(server.url("/v1/api-keys/validate"))
                .header("x-api-key", key),
        )
    };

    // Act: validate calls by valid keys count like any other request.
    let first = get(&server, &limited.api_key, "/v1/api-keys").await;
    let second = validate(&limited.api_key).await;
    let third = get(&server, &limited.api_key, "/v1/api-keys").await;
    let fourth = get(&server, &limited.api_key, "/v1/api-keys").await;
    let fifth = validate(&limited.api_key).await;
    let mut daily_replies = Vec::new();
    for _ in 0..5 {
        daily_replies.push(get(&server, &daily.api_key, "/v1/api-keys").await);
    }
    let mut free_flowing = Vec::new();
    for _ in 0..5 {
        free_flowing.push(get(&server, &unlimited.api_key, "/v1/api-keys").await);
    }

    // Assert
    for (case, r, remaining) in [
        ("GET 1", &first, 2),
        ("validate", &second, 1),
        ("GET 2", &third, 0),
    ] {
        assert_eq!(r.status, 200, "{case}: {r:?}");
        assert_eq!(num_header(r, "x-ratelimit-limit"), 3, "{case}");
        assert_eq!(num_header(r, "x-ratelimit-remaining"), remaining, "{case}");
    }
    assert_eq!(second.body["valid"], true);
    assert_eq!(fourth.status, 429, "GET over the limit: {fourth:?}");
    assert_eq!(fourth.error_code(), "RATE_LIMIT_EXCEEDED");
    assert_eq!(fourth.body["error"]["details"]["window"], "minute");
    let retry = num_header(&fourth, "retry-after");
    assert!((55..=61).contains(&retry), "GET: retry-after {retry}");
    // validate answers the refusal (API.md): valid false, rate_limited, retry_after.
    assert_eq!(fifth.status, 200, "validate over the limit: {fifth:?}");
    assert_eq!(fifth.body["reason"], "rate_limited", "{fifth:?}");
    let retry = fifth.body["retry_after"].as_u64().unwrap();
    assert!((55..=61).contains(&retry), "validate: retry_after {retry}");
    for (i, r) in daily_replies.iter().take(4).enumerate() {
        assert_eq!(r.status, 200, "daily request {i}: {r:?}");
        assert_eq!(
            num_header(r, "x-ratelimit-limit"),
            4,
            "daily request {i}: the day window is tighter"
        );
        assert_eq!(
            num_header(r, "x-ratelimit-remaining"),
            3 - i as u64,
            "daily request {i}"
        );
    }
    let over_day = &daily_replies[4];
    assert_eq!(over_day.status, 429, "{over_day:?}");
    assert_eq!(over_day.error_code(), "RATE_LIMIT_EXCEEDED");
    assert_eq!(num_header(over_day, "x-ratelimit-limit"), 4);
    let retry = num_header(over_day, "retry-after");
    assert!(
        (86_340..=86_460).contains(&retry),
        "a full day's wait: retry-after {retry}"
    );
    for (i, r) in free_flowing.iter().enumerate() {
        assert_eq!(r.status, 200, "unlimited request {i}");
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(
                r.header(h).is_none(),
                "unlimited request {i} carries {h}: {r:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request history
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn history_rows_carry_route_templates_agents_statuses_and_request_ids_newest_first() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let (read_id, read_only) = create_key(&server, key, &json!({"scopes": ["read"]})).await;
    let (inactive_id, inactive) = create_key(&server, key, &json!({"scopes": ["read"]})).await;
    assert_eq!(
        patch(
            &server,
            key,
            &format!("/v1/api-keys/{inactive_id}"),
            &json!({"status": "inactive"})
        )
        .await
        .status,
        200
    );
    let with_agent = |path: &str, agent: &str| {
        client()
            .get(server.url(path))
            .header("x-api-key", key)
            .header("user-agent", agent)
    };

    let long_agent = "a".repeat(300);

    // Act
    let started = timefmt::truncate(OffsetDateTime::now_utc());
    let long = send(with_agent("/v1/api-keys", &long_agent)).await;
    let found = send(with_agent(
        &format!("/v1/api-keys/{}", acct.key_id),
        "metering-test/found",
    ))
    .await;
    let missing = send(with_agent(
        &format!("/v1/api-keys/{MISSING_KEY_ID}"),
        "metering-test/missing",
    ))
    .await;
    let conflict = patch(
        &server,
        key,
        &format!("/v1/api-keys/{}", acct.key_id),
        &json!({"status": "inactive"}),
    )
    .await;
    let forbidden = post(
        &server,
        &read_only,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    let echoed = send(
        client()
            .get(server.url("/v1/api-keys"))
            .header("x-api-key", key)
            .header("x-request-id", "trace-metering.4"),
    )
    .await;
    let unauthenticated = get(&server, &inactive, "/v1/api-keys").await;
    let inactive_validate = send(
        client()
            .post(server.url("/v1/api-keys/validate"))
            .header("x-api-key", &inactive),
    )
    .await;
    let unknown_route = get(&server, key, "/v1/nothing-here").await;
    let finished = OffsetDateTime::now_utc();
    let sent = [
        rid(&long),
        rid(&found),
        rid(&missing),
        rid(&conflict),
        rid(&forbidden),
        rid(&echoed),
    ];
    let hist = history_containing(&server, key, &[], &sent).await;

    // Assert
    assert_eq!(
        (
            found.status,
            missing.status,
            conflict.status,
            forbidden.status
        ),
        (200, 404, 409, 403)
    );
    assert_eq!(
        (echoed.status, unauthenticated.status, unknown_route.status),
        (200, 401, 404)
    );
    assert_eq!(rid(&echoed), "trace-metering.4");
    assert_eq!(
        inactive_validate.body["valid"], false,
        "{inactive_validate:?}"
    );
    let long_row = row_of(&hist, &rid(&long));
    let kept = long_row["user_agent"].as_str().unwrap();
    assert!(
        kept.len() == 256 && long_agent.starts_with(kept),
        "a long user-agent is truncated to 256 characters: {} kept",
        kept.len()
    );
    let cases = [
        (
            "found",
            &found,
            "GET /v1/api-keys/{key_id}",
            200,
            Some("metering-test/found"),
            acct.key_id.as_str(),
        ),
        (
            "missing",
            &missing,
            "GET /v1/api-keys/{key_id}",
            404,
            Some("metering-test/missing"),
            acct.key_id.as_str(),
        ),
        (
            "conflict",
            &conflict,
            "PATCH /v1/api-keys/{key_id}",
            409,
            None,
            acct.key_id.as_str(),
        ),
        (
            "forbidden",
            &forbidden,
            "POST /v1/api-keys",
            403,
            None,
            read_id.as_str(),
        ),
        (
            "echoed id",
            &echoed,
            "GET /v1/api-keys",
            200,
            None,
            acct.key_id.as_str(),
        ),
    ];
    for (case, reply, endpoint, status, agent, key_id) in cases {
        let row = row_of(&hist, &rid(reply));
        assert_eq!(
            row["endpoint"], endpoint,
            "{case}: the route template, never a raw path"
        );
        assert_eq!(row["method"], endpoint.split(' ').next().unwrap(), "{case}");
        assert_eq!(row["status"], status, "{case}");
        assert_eq!(
            row["user_agent"].as_str(),
            agent,
            "{case}: the client's user-agent"
        );
        assert_eq!(row["key_id"], key_id, "{case}: the key that authenticated");
        assert!(row["latency_ms"].is_u64(), "{case}: {row}");
        let time = row["time"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && timefmt::parse(time).is_ok(),
            "{case}: time {time}"
        );
        let at = timefmt::parse(time).unwrap();
        assert!(
            started <= at && at <= finished,
            "{case}: time {time} is when the request arrived"
        );
        let fields: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for f in [
            "time",
            "method",
            "endpoint",
            "status",
            "user_agent",
            "key_id",
            "request_id",
            "latency_ms",
        ] {
            assert!(fields.contains(&f), "{case}: {f} missing from {row}");
        }
    }
    for row in &hist {
        assert!(
            !row["endpoint"].as_str().unwrap().contains("key_0"),
            "a raw id in an endpoint: {row}"
        );
        assert_ne!(
            row["key_id"], inactive_id,
            "a request whose key did not authenticate is not recorded: {row}"
        );
    }
    assert!(
        !request_ids(&hist).contains(&rid(&unknown_route)),
        "an unknown route is not recorded"
    );
    let ours: Vec<String> = request_ids(&hist)
        .into_iter()
        .filter(|id| sent.contains(id))
        .collect();
    let mut newest_first = sent.to_vec();
    newest_first.reverse();
    assert_eq!(ours, newest_first, "newest first");
    assert!(
        hist.len() >= 9,
        "key creations and the patch are recorded too: {hist:#?}"
    );
}

#[tokio::test]
async fn history_filters_narrow_by_endpoint_key_status_and_time() {
    // Arrange: a worker key makes requests on both sides of a whole-second boundary.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let owner = acct.api_key.as_str();
    let (worker_id, worker) = create_key(&server, owner, &json!({"scopes": ["read"]})).await;
    let mut before_ids = Vec::new();
    for _ in 0..3 {
        before_ids.push(rid(&get(&server, &worker, "/v1/api-keys").await));
    }
    let mut not_found_ids = Vec::new();
    for _ in 0..2 {
        let r = get(&server, &worker, &format!("/v1/api-keys/{MISSING_KEY_ID}")).await;
        assert_eq!(r.status, 404);
        not_found_ids.push(rid(&r));
    }
    before_ids.extend(not_found_ids.iter().cloned());
    // Storage keeps whole seconds: the filters' boundary is the next one, and the
    // requests after it must arrive once it has passed on the real clock (a wait of at
    // most a second; there is no event to poll for).
    let boundary = next_whole_second(OffsetDateTime::now_utc());
    sleep_past(boundary).await;
    let mut after_ids = Vec::new();
    for _ in 0..2 {
        after_ids.push(rid(&get(&server, &worker, "/v1/api-keys").await));
    }
    let own = get(&server, &worker, &format!("/v1/api-keys/{worker_id}")).await;
    assert_eq!(own.status, 200);
    after_ids.push(rid(&own));
    let all_worker: Vec<String> = before_ids.iter().chain(&after_ids).cloned().collect();
    history_containing(
        &server,
        owner,
        &[("key_id", worker_id.as_str())],
        &all_worker,
    )
    .await;
    let boundary_text = timefmt::format(boundary);
    let boundary_plus_two = boundary
        .to_offset(time::macros::offset!(+2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<String>>();
    let rev = |v: &[String]| v.iter().rev().cloned().collect::<Vec<String>>();

    // Act
    let by_endpoint =
        rows(&history(&server, owner, &[("endpoint", "GET /v1/api-keys/{key_id}")]).await);
    let by_key = rows(&history(&server, owner, &[("key_id", worker_id.as_str())]).await);
    let by_status = rows(&history(&server, owner, &[("status", "404")]).await);
    let since = rows(&history(&server, owner, &[("since", boundary_text.as_str())]).await);
    let since_offset = rows(
        &history(
            &server,
            owner,
            &[
                ("since", boundary_plus_two.as_str()),
                ("key_id", worker_id.as_str()),
            ],
        )
        .await,
    );
    let until = rows(&history(&server, owner, &[("until", boundary_text.as_str())]).await);
    let until_worker = rows(
        &history(
            &server,
            owner,
            &[
                ("until", boundary_text.as_str()),
                ("key_id", worker_id.as_str()),
            ],
        )
        .await,
    );
    let combined = rows(
        &history(
            &server,
            owner,
            &[
                ("key_id", worker_id.as_str()),
                ("status", "200"),
                ("endpoint", "GET /v1/api-keys"),
            ],
        )
        .await,
    );
    let empty_window = rows(
        &history(
            &server,
            owner,
            &[
                ("since", boundary_text.as_str()),
                ("until", boundary_text.as_str()),
            ],
        )
        .await,
    );
    // Filtered pages of 3 over the worker's 8 rows: 3 + 3 + 2, the cursor keeping the filter.
    let mut paged = Vec::new();
    let mut page_sizes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut params = vec![("key_id", worker_id.as_str()), ("limit", "3")];
        if let Some(c) = &cursor {
            params.push(("before", c.as_str()));
        }
        let page = history(&server, owner, &params).await;
        let page_rows = rows(&page);
        page_sizes.push(page_rows.len());
        paged.extend(request_ids(&page_rows));
        cursor = page.body["next_before"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let exact = history(
        &server,
        owner,
        &[("key_id", worker_id.as_str()), ("limit", "8")],
    )
    .await;

    // Assert
    let mut endpoint_expected = not_found_ids.clone();
    endpoint_expected.push(rid(&own));
    assert_eq!(
        request_ids(&by_endpoint),
        rev(&endpoint_expected),
        "endpoint filter"
    );
    assert!(
        by_endpoint
            .iter()
            .all(|r| r["endpoint"] == "GET /v1/api-keys/{key_id}"),
        "endpoint filter"
    );
    assert_eq!(
        request_ids(&by_key),
        rev(&all_worker),
        "key_id filter: exactly the worker's rows, newest first"
    );
    assert_eq!(
        request_ids(&by_status),
        rev(&not_found_ids),
        "status filter"
    );
    assert_eq!(page_sizes, [3, 3, 2], "filtered pages");
    assert_eq!(
        paged,
        rev(&all_worker),
        "filtered pages hold exactly the filtered rows"
    );
    assert_eq!(rows(&exact).len(), 8);
    assert!(
        exact.body["next_before"].is_null(),
        "a page that ends exactly at the last row has no cursor: {exact:?}"
    );
    assert!(
        since
            .iter()
            .all(|r| timefmt::parse(r["time"].as_str().unwrap()).unwrap() >= boundary),
        "since: times"
    );
    let since_set = set(&request_ids(&since));
    assert!(
        set(&after_ids).is_subset(&since_set),
        "since keeps every later row"
    );
    assert!(
        since_set.is_disjoint(&set(&before_ids)),
        "since drops every earlier row"
    );
    assert_eq!(
        request_ids(&since_offset),
        rev(&after_ids),
        "since with a +02:00 offset is the same instant"
    );
    assert!(
        until
            .iter()
            .all(|r| timefmt::parse(r["time"].as_str().unwrap()).unwrap() < boundary),
        "until: times"
    );
    let until_set = set(&request_ids(&until));
    assert!(
        set(&before_ids).is_subset(&until_set),
        "until keeps every earlier row"
    );
    assert!(
        until_set.is_disjoint(&set(&after_ids)),
        "until drops every later row"
    );
    assert_eq!(
        request_ids(&until_worker),
        rev(&before_ids),
        "until with key_id"
    );
    let mut combined_expected: Vec<String> = before_ids[..3].to_vec();
    combined_expected.extend(after_ids[..2].iter().cloned());
    assert_eq!(
        request_ids(&combined),
        rev(&combined_expected),
        "key_id + status + endpoint"
    );
    assert!(
        empty_window.is_empty(),
        "since == until is an empty window: {empty_window:#?}"
    );
}

#[tokio::test]
async fn paging_with_next_before_yields_every_row_once_under_concurrent_traffic() {
    // Arrange
    let server = Arc::new(Server::start());
    let acct = server.create_account("enterprise");
    let owner = acct.api_key.clone();
    let (_, worker) = create_key(&server, &owner, &json!({"scopes": ["read"]})).await;
    let mut sent = Vec::new();
    for chunk in 0..12 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let url = server.url("/v1/api-keys");
            let worker = worker.clone();
            tasks.push(tokio::spawn(async move {
                send(
                    client()
                        .get(url)
                        .header("x-api-key", worker)
                        .header("user-agent", format!("pager/{chunk}.{i}")),
                )
                .await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            sent.push(rid(&r));
        }
    }
    history_containing(&server, &owner, &[], &sent).await;
    let stop = Arc::new(AtomicBool::new(false));
    let background_sent = Arc::new(AtomicUsize::new(0));
    let background = tokio::spawn({
        let (server, stop, count, worker) = (
            server.clone(),
            stop.clone(),
            background_sent.clone(),
            worker.clone(),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(get(&server, &worker, "/v1/api-keys").await.status, 200);
                count.fetch_add(1, Ordering::Relaxed);
                // Paces the traffic (it is not a wait for anything).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // Act: pages of 7, slowly enough that several flushes land between them.
    let mut seen = Vec::new();
    let mut times = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("limit", "7")];
        if let Some(cursor) = &before {
            params.push(("before", cursor.as_str()));
        }
        let page = history(&server, &owner, &params).await;
        let page_rows = rows(&page);
        assert!(
            page_rows.len() <= 7,
            "page {pages} has {} rows",
            page_rows.len()
        );
        seen.extend(request_ids(&page_rows));
        times.extend(
            page_rows
                .iter()
                .map(|r| timefmt::parse(r["time"].as_str().unwrap()).unwrap()),
        );
        pages += 1;
        match page.body["next_before"].as_str() {
            Some(cursor) => {
                assert_eq!(page_rows.len(), 7, "a page with a cursor after it is full");
                before = Some(cursor.to_owned());
            }
            None => {
                assert!(
                    page.body["next_before"].is_null(),
                    "next_before is a string or null: {page:?}"
                );
                break;
            }
        }
        assert!(pages < 200, "paging does not end");
        // Paces the pages so that flushes (every 250 ms) land between them: the point
        // of the test, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();

    // Assert
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no row is returned twice across pages"
    );
    let missing: Vec<&String> = sent.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "rows written before paging began were skipped: {missing:?}"
    );
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first across pages"
    );
    assert!(pages >= 18, "at least 121 rows in pages of 7: {pages}");
    assert!(
        background_sent.load(Ordering::Relaxed) > 10,
        "traffic kept flowing while paging"
    );
}

// ---------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn usage_counts_match_the_requests_made_and_each_account_sees_only_its_own() {
    // Arrange
    let server = Server::start();
    let a = server.create_account("enterprise");
    let b = server.create_account("enterprise");
    let (second_id, second) = create_key(&server, &a.api_key, &json!({"scopes": ["read"]})).await;
    let (observer_id, observer) =
        create_key(&server, &a.api_key, &json!({"scopes": ["read"]})).await;
    for _ in 0..3 {
        assert_eq!(get(&server, &a.api_key, "/v1/api-keys").await.status, 200);
    }
    assert_eq!(
        get(&server, &second, &format!("/v1/api-keys/{second_id}"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&server, &second, &format!("/v1/api-keys/{second_id}"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&server, &second, &format!("/v1/api-keys/{MISSING_KEY_ID}"))
            .await
            .status,
        404
    );
    let validated = send(
        client()
            .post(server.url("/v1/api-keys/validate"))
            .header("x-api-key", &second),
    )
    .await;
    assert_eq!(validated.body["valid"], true);
    let b_req = get(&server, &b.api_key, "/v1/api-keys").await;
    assert_eq!(b_req.status, 200);
    let month = keyward_workers::month_of(OffsetDateTime::now_utc());

    // Act: the observer key reads usage until the second key's requests are counted.
    let mut polls = 0u64;
    let report = common::eventually(
        METER_WAIT,
        "usage to count the second key's requests",
        async || {
            polls += 1;
            let r = usage(&server, &observer, None).await;
            assert_eq!(r.status, 200, "{r:?}");
            if r.body["by_key"][second_id.as_str()] == 4 {
                Ok(r.body)
            } else {
                Err(r.body)
            }
        },
    )
    .await;
    let old_month = usage(&server, &observer, Some("2001-01")).await;
    let b_usage = usage(&server, &b.api_key, None).await;
    let b_sent = [rid(&b_req)];
    let b_history = history_containing(&server, &b.api_key, &[], &b_sent).await;
    let a_history = rows(&history(&server, &a.api_key, &[("limit", "1000")]).await);
    let a_filtered_by_b_key = history(&server, &a.api_key, &[("key_id", b.key_id.as_str())]).await;

    // Assert
    assert_eq!(report["month"], month.as_str());
    let mut by_endpoint = counts(&report["by_endpoint"]);
    let usage_calls = by_endpoint.remove("GET /v1/usage").unwrap_or(0);
    assert!(
        usage_calls < polls,
        "only earlier usage reads can be counted: {usage_calls} of {polls}"
    );
    assert_eq!(
        by_endpoint,
        expect_counts(&[
            ("POST /v1/api-keys", 2),
            ("GET /v1/api-keys", 3),
            ("GET /v1/api-keys/{key_id}", 3),
            ("POST /v1/api-keys/validate", 1),
        ]),
        "by_endpoint"
    );
    let mut by_key = counts(&report["by_key"]);
    assert_eq!(
        by_key.remove(&observer_id).unwrap_or(0),
        usage_calls,
        "the observer made only usage reads"
    );
    assert_eq!(
        by_key,
        expect_counts(&[(a.key_id.as_str(), 5), (second_id.as_str(), 4)]),
        "by_key"
    );
    assert_eq!(
        report["requests_this_month"],
        5 + 4 + usage_calls,
        "the total is the sum"
    );

    assert_eq!(old_month.status, 200);
    assert_eq!(
        old_month.body,
        json!({"month": "2001-01", "requests_this_month": 0, "by_endpoint": {}, "by_key": {},
               "by_day": {}, "quota": null}),
        "a month without traffic is all zeros"
    );

    assert_eq!(b_usage.status, 200);
    let b_keys = counts(&b_usage.body["by_key"]);
    assert!(
        b_keys.keys().all(|k| *k == b.key_id),
        "b's usage holds only b's key: {b_keys:?}"
    );
    let a_keys = [a.key_id.as_str(), second_id.as_str(), observer_id.as_str()];
    assert!(
        b_history.iter().all(|r| r["key_id"] == b.key_id.as_str()),
        "b sees only its rows: {b_history:#?}"
    );
    assert!(
        a_history
            .iter()
            .all(|r| a_keys.contains(&r["key_id"].as_str().unwrap())),
        "a sees only its rows"
    );
    assert!(
        !request_ids(&a_history).contains(&rid(&b_req)),
        "b's request is not in a's history"
    );
    assert_eq!(a_filtered_by_b_key.status, 200, "{a_filtered_by_b_key:?}");
    assert_eq!(
        rows(&a_filtered_by_b_key),
        Vec::<Value>::new(),
        "another account's key_id matches nothing"
    );
}

#[tokio::test]
async fn a_revoked_keys_requests_stay_in_history_and_usage() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let owner = acct.api_key.as_str();
    let (gone_id, gone) = create_key(&server, owner, &json!({"scopes": ["read"]})).await;
    let mut made = Vec::new();
    for _ in 0..2 {
        made.push(rid(&get(&server, &gone, "/v1/api-keys").await));
    }
    history_containing(&server, owner, &[], &made).await;

    // Act
    let revoked = common::delete(&server, owner, &format!("/v1/api-keys/{gone_id}")).await;
    let refused = get(&server, &gone, "/v1/api-keys").await;
    // A request answered after the refusal: once its row is stored, a row the refusal
    // had left would be stored too (metering keeps the order of answers).
    let marker = get(&server, owner, "/v1/api-keys").await;
    server.metered(&acct.account_id, &[rid(&marker)]).await;
    let hist = history(&server, owner, &[("key_id", gone_id.as_str())]).await;
    let report = usage(&server, owner, None).await;

    // Assert
    assert_eq!((revoked.status, refused.status), (204, 401));
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(
        request_ids(&rows(&hist)),
        newest_first,
        "the history of a revoked key is kept, and its refused request is not added"
    );
    assert_eq!(report.body["by_key"][gone_id.as_str()], 2, "{report:?}");
}

// ---------------------------------------------------------------------------------------
// Input validation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_history_and_usage_parameters_are_validation_errors_naming_the_field() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let long_endpoint = format!("endpoint={}", "x".repeat(201));
    let history_cases: Vec<(&str, &str)> = vec![
        ("since=yesterday", "since"),
        ("since=2024-13-01T00:00:00Z", "since"),
        ("since=", "since"),
        ("until=2024-01-01", "until"),
        ("until=2024-01-01T25:00:00Z", "until"),
        (
            "since=2024-02-01T00:00:00Z&until=2024-01-01T00:00:00Z",
            "until",
        ),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=1&limit=2", "limit"),
        ("before=abc", "before"),
        ("before=cur_", "before"),
        ("before=cur_-1", "before"),
        ("before=123", "before"),
        ("before=cur_99999999999999999999", "before"),
        ("status=99", "status"),
        ("status=600", "status"),
        ("status=ok", "status"),
        ("key_id=nope", "key_id"),
        ("key_id=key_01jd00000000000000000000zz", "key_id"),
        ("key_id=key_01JD%27%20OR%201%3D1--", "key_id"),
        ("endpoint=", "endpoint"),
        (long_endpoint.as_str(), "endpoint"),
        ("colour=blue", "colour"),
        ("limit=5&sort=asc", "sort"),
    ];
    let usage_cases = [
        ("month=2024-13", "month"),
        ("month=2024-00", "month"),
        ("month=2024-1", "month"),
        ("month=24-01", "month"),
        ("month=2024-01-01", "month"),
        ("month=abcd-ef", "month"),
        ("month=", "month"),
        ("month=2024-01&month=2024-02", "month"),
        ("since=2024-01-01T00:00:00Z", "since"),
    ];
    let good_history = [
        "limit=1",
        "limit=1000",
        "status=100",
        "status=599",
        "before=cur_1",
        "endpoint=GET%20%2Fv1%2Fusage",
    ];

    // Act + Assert
    for (q, field) in history_cases {
        let r = get(&server, key, &format!("/v1/request-history?{q}")).await;
        assert_eq!(r.status, 400, "history ?{q}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "history ?{q}");
        assert_eq!(r.field(), field, "history ?{q}");
    }
    for (q, field) in usage_cases {
        let r = get(&server, key, &format!("/v1/usage?{q}")).await;
        assert_eq!(r.status, 400, "usage ?{q}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "usage ?{q}");
        assert_eq!(r.field(), field, "usage ?{q}");
    }
    for q in good_history {
        let r = get(&server, key, &format!("/v1/request-history?{q}")).await;
        assert_eq!(r.status, 200, "history ?{q} is valid: {r:?}");
    }
    let month = get(&server, key, "/v1/usage?month=2024-12").await;
    assert_eq!(
        (month.status, month.body["month"].as_str()),
        (200, Some("2024-12")),
        "a valid month"
    );
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pruning_removes_only_old_history_and_keeps_usage_counters() {
    // Arrange: rows written straight into the running server's database.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let live = get(&server, &acct.api_key, "/v1/api-keys").await;
    let live_id = rid(&live);
    history_containing(&server, &acct.api_key, &[], std::slice::from_ref(&live_id)).await;
    let store = server.store().await;
    let account = AccountId::parse(&acct.account_id).unwrap();
    let key_id = KeyId::parse(&acct.key_id).unwrap();
    let now = OffsetDateTime::now_utc();
    let days = |n: i64| now - time::Duration::days(n);
    let aged: [(&str, i64); 7] = [
        ("req_old_100a", 100),
        ("req_old_100b", 100),
        ("req_old_100c", 100),
        ("req_old_91", 91),
        ("req_recent_89", 89),
        ("req_recent_1a", 1),
        ("req_recent_1b", 1),
    ];
    let mut batch = MeterBatch::default();
    let mut old_months: BTreeMap<String, u64> = BTreeMap::new();
    for (id, age) in aged {
        batch.requests.push(RequestRecord {
            account_id: account.clone(),
            time: days(age),
            method: "GET".into(),
            endpoint: "GET /v1/api-keys".into(),
            status: 200,
            user_agent: Some("retention-test".into()),
            key_id: key_id.clone(),
            request_id: RequestId::parse(id.as_bytes()).unwrap(),
            latency_ms: 3,
        });
        if age > 90 {
            *old_months
                .entry(keyward_workers::month_of(days(age)))
                .or_default() += 1;
        }
    }
    for (month, n) in &old_months {
        let usage_key = UsageKey {
            account_id: account.clone(),
            day: format!("{month}-01"),
            endpoint: "GET /v1/api-keys".into(),
            key_id: key_id.clone(),
        };
        batch.usage.push((usage_key, *n));
    }
    store.write_meter_batch(&batch).await.unwrap();
    let all_ids = |rows: &[Value]| request_ids(rows).into_iter().collect::<HashSet<String>>();
    let before = all_ids(&rows(
        &history(&server, &acct.api_key, &[("limit", "1000")]).await,
    ));
    assert!(
        aged.iter().all(|(id, _)| before.contains(*id)),
        "the written rows are visible: {before:?}"
    );

    // Act
    let pruned = keyward_workers::prune_once(
        &*store,
        Duration::from_secs(90 * 86_400),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();

    // Assert
    assert_eq!(pruned, 4, "the three 100-day rows and the 91-day row");
    let after = all_ids(&rows(
        &history(&server, &acct.api_key, &[("limit", "1000")]).await,
    ));
    for (id, age) in aged {
        assert_eq!(after.contains(id), age < 90, "{id} ({age} days old)");
    }
    assert!(after.contains(&live_id), "today's traffic is kept");
    let old_window = rows(
        &history(
            &server,
            &acct.api_key,
            &[
                ("until", timefmt::format(days(50)).as_str()),
                ("limit", "1000"),
            ],
        )
        .await,
    );
    assert_eq!(
        request_ids(&old_window),
        ["req_recent_89"],
        "only the 89-day row is older than 50 days"
    );
    let stored = store
        .request_history(
            &account,
            &keyward_store::PageQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        stored.iter().all(|(_, r)| r.time > days(90)),
        "nothing older than 90 days is left"
    );
    for (month, n) in &old_months {
        let r = usage(&server, &acct.api_key, Some(month)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body["requests_this_month"], *n,
            "usage of {month} survives pruning"
        );
        assert_eq!(
            counts(&r.body["by_key"]),
            expect_counts(&[(acct.key_id.as_str(), *n)]),
            "usage of {month}"
        );
    }
    let again = keyward_workers::prune_once(
        &*store,
        Duration::from_secs(90 * 86_400),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    assert_eq!(again, 0, "a second prune finds nothing");
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_traffic_failures_and_limits_without_leaking_secrets() {
    // Arrange
    let server = Server::start();
    let pro = server.create_account("pro");
    let free = server.create_account("free");
    let (noted_id, noted) = create_key(
        &server,
        &pro.api_key,
        &json!({"scopes": ["read"], "metadata": {"secret_note": "zebra-42"}}),
    )
    .await;

    // Act
    for _ in 0..3 {
        assert_eq!(get(&server, &pro.api_key, "/v1/api-keys").await.status, 200);
    }
    assert_eq!(
        get(&server, &noted, &format!("/v1/api-keys/{noted_id}"))
            .await
            .status,
        200
    );
    for _ in 0..10 {
        assert_eq!(
            get(&server, &free.api_key, "/v1/api-keys").await.status,
            200
        );
    }
    let limited = get(&server, &free.api_key, "/v1/api-keys").await;
    let malformed = get(&server, "garbage", "/v1/api-keys").await;
    let unknown_secret = KeySecret::generate(&KeyPrefix::default(), &mut keyward_core::OsRandom);
    let unknown = get(&server, unknown_secret.expose(), "/v1/api-keys").await;
    // 16 authenticated requests: the key creation, 3 + 1 + 10 successes, one 429.
    let (content_type, text) = common::eventually(
        METER_WAIT,
        "keyward_meter_flushed_rows_total to reach 16",
        async || {
            let m = metrics_text(&server).await;
            assert_eq!(m.status, 200);
            let content_type = m.header("content-type").unwrap_or_default().to_owned();
            if sample(&m.text, "keyward_meter_flushed_rows_total", &[]) == Some(16.0) {
                Ok((content_type, m.text))
            } else {
                Err(m.text)
            }
        },
    )
    .await;

    // Assert
    assert_eq!(
        (limited.status, malformed.status, unknown.status),
        (429, 401, 401)
    );
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type}"
    );
    let requests = |endpoint: &str, status: &str| {
        let (method, route) = endpoint.split_once(' ').expect("METHOD route");
        sample(
            &text,
            "keyward_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    let cases = [
        (
            "200s on the list",
            requests("GET /v1/api-keys", "200"),
            Some(13.0),
        ),
        ("the 429", requests("GET /v1/api-keys", "429"), Some(1.0)),
        (
            "the two 401s",
            requests("GET /v1/api-keys", "401"),
            Some(2.0),
        ),
        (
            "the creation",
            requests("POST /v1/api-keys", "201"),
            Some(1.0),
        ),
        (
            "one key by template",
            requests("GET /v1/api-keys/{key_id}", "200"),
            Some(1.0),
        ),
        (
            "latency count",
            sample(
                &text,
                "keyward_http_request_duration_seconds_count",
                &[("method", "GET"), ("route", "/v1/api-keys")],
            ),
            Some(16.0),
        ),
        (
            "latency +Inf bucket",
            sample(
                &text,
                "keyward_http_request_duration_seconds_bucket",
                &[("method", "GET"), ("route", "/v1/api-keys"), ("le", "+Inf")],
            ),
            Some(16.0),
        ),
        (
            "malformed key",
            sample(
                &text,
                "keyward_auth_failures_total",
                &[("reason", "malformed")],
            ),
            Some(1.0),
        ),
        (
            "unknown key",
            sample(
                &text,
                "keyward_auth_failures_total",
                &[("reason", "not_found")],
            ),
            Some(1.0),
        ),
        (
            "rate limited",
            sample(&text, "keyward_rate_limited_total", &[]),
            Some(1.0),
        ),
        (
            "queue drained",
            sample(&text, "keyward_meter_queue_depth", &[]),
            Some(0.0),
        ),
    ];
    for (case, got, expected) in cases {
        assert_eq!(got, expected, "{case}:\n{text}");
    }
    let latency_sum = sample(
        &text,
        "keyward_http_request_duration_seconds_sum",
        &[("method", "GET"), ("route", "/v1/api-keys")],
    );
    assert!(
        latency_sum.is_some_and(|s| s > 0.0 && s < 60.0),
        "latency sum {latency_sum:?}"
    );
    let hits = sample(&text, "keyward_cache_hits_total", &[("cache", "key")]).unwrap_or(0.0);
    let misses = sample(&text, "keyward_cache_misses_total", &[("cache", "key")]).unwrap_or(0.0);
    assert!(
        misses >= 4.0,
        "three distinct keys and one unknown one were looked up: {misses}"
    );
    assert!(hits >= 10.0, "repeat requests hit the cache: {hits}");
    assert_eq!(
        hits + misses,
        17.0,
        "every well-formed key is looked up once per request"
    );
    assert!(
        sample(&text, "keyward_meter_dropped_rows_total", &[]).is_none_or(|d| d == 0.0),
        "nothing was dropped"
    );

    let mut forbidden: Vec<String> = vec!["zebra-42".into(), noted_id.clone()];
    for secret in [
        pro.api_key.as_str(),
        free.api_key.as_str(),
        noted.as_str(),
        unknown_secret.expose(),
    ] {
        forbidden.push(secret.to_owned());
        forbidden.push(secret[3..].to_owned());
        forbidden.push(secret[3..19].to_owned());
        let digest = KeySecret::parse(secret).unwrap().digest();
        forbidden.push(hex(&digest.0));
        forbidden.push(hex(&digest.0).to_uppercase());
    }
    for needle in &forbidden {
        assert!(
            !text.contains(needle.as_str()),
            "{needle} appears in /metrics"
        );
    }
}

#[tokio::test]
async fn metric_labels_stay_bounded_whatever_paths_and_methods_clients_send() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");

    // Act: made-up paths and made-up methods, with and without a key.
    for i in 0..5 {
        let path = format!("/v1/made-up-path-{i}");
        assert_eq!(
            send(client().get(server.url(&path))).await.status,
            404,
            "{path}"
        );
        let method = reqwest::Method::from_bytes(format!("XMETHOD{i}").as_bytes()).unwrap();
        let r = send(
            client()
                .request(method, server.url("/v1/api-keys"))
                .header("x-api-key", &acct.api_key),
        )
        .await;
        assert_eq!(r.status, 405, "XMETHOD{i}: {r:?}");
        assert_eq!(r.error_code(), "METHOD_NOT_ALLOWED", "XMETHOD{i}");
    }
    let text = metrics_text(&server).await.text;

    // Assert: one series per route template and known method, however clients behave;
    // otherwise any client can grow the exporter's memory without bound.
    assert!(
        !text.contains("made-up-path"),
        "a raw path became a label:\n{text}"
    );
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains("XMETHOD")).collect();
    assert!(
        leaked.is_empty(),
        "client-chosen methods became label values: {leaked:#?}"
    );
    assert_eq!(
        sample(
            &text,
            "keyward_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(5.0),
        "unknown paths share one series"
    );
}

#[tokio::test]
async fn a_full_meter_buffer_drops_history_rows_but_never_usage() {
    // Arrange: at most 5 unflushed history rows.
    let server = Arc::new(Server::start_with(&[
        "--no-bootstrap",
        "--meter-capacity",
        "5",
    ]));
    let acct = server.create_account("enterprise");
    let created = post(
        &server,
        &acct.api_key,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let observer = created.body["api_key"].as_str().unwrap().to_owned();
    // The buffer starts the burst empty: the creation's row is in storage.
    server.metered(&acct.account_id, &[rid(&created)]).await;

    // Act: 40 requests at once, well within one or two flush intervals.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (server, key) = (server.clone(), acct.api_key.clone());
        tasks.push(tokio::spawn(async move {
            get(&server, &key, "/v1/api-keys").await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    common::eventually(
        METER_WAIT,
        "usage to count all 40 requests, even with history rows dropped",
        async || {
            let report = usage(&server, &observer, None).await.body;
            if report["by_endpoint"]["GET /v1/api-keys"] == 40 {
                Ok(())
            } else {
                Err(report)
            }
        },
    )
    .await;
    // Usage and the history rows kept are written in one transaction per flush: with
    // all 40 counted, every kept row is stored.
    let kept = rows(
        &history(
            &server,
            &observer,
            &[("endpoint", "GET /v1/api-keys"), ("limit", "100")],
        )
        .await,
    )
    .len();
    let text = metrics_text(&server).await.text;

    // Assert
    assert!((5..40).contains(&kept), "history kept {kept} of 40 rows");
    let dropped = sample(&text, "keyward_meter_dropped_rows_total", &[]).unwrap_or(0.0);
    assert!(
        dropped >= f64::from(u32::try_from(40 - kept).unwrap()),
        "dropped {dropped}, kept {kept}:\n{text}"
    );
    let depth = sample(&text, "keyward_meter_queue_depth", &[]).unwrap_or(-1.0);
    assert!((0.0..=5.0).contains(&depth), "queue depth {depth}");
}
