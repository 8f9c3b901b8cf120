//! Black-box tests of the web console's files (API.md §Console) and of what it reads
//! from `GET /v1/usage`: `by_day` and `quota`. The console's behaviour in a browser is
//! tested by `scripts/console-tests.sh` (headless Chromium).

mod common;

use common::{METER_WAIT, Server, client, get, send};
use keyward_core::{AccountId, KeyId};
use keyward_store::{MeterBatch, UsageKey};
use serde_json::{Value, json};
use time::OffsetDateTime;

const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[tokio::test]
async fn the_console_is_served_without_a_key_under_a_strict_policy_with_its_content_types() {
    // Arrange
    let server = Server::start();
    let files = [
        ("/console", "text/html; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/api.js", "text/javascript; charset=utf-8"),
        ("/console/chart.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ];

    for (path, content_type) in files {
        // Act
        let reply = send(client().get(server.url(path))).await;

        // Assert
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            reply.header("content-security-policy"),
            Some(POLICY),
            "{path}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert!(!reply.text.is_empty(), "{path}");
    }
    let page = send(client().get(server.url("/console"))).await;
    // Every script and stylesheet the page names is one of its own files: no inline
    // script, no other origin.
    assert!(
        page.text
            .contains(r#"<script type="module" src="/console/console.js">"#)
    );
    assert!(!page.text.contains("<script>"), "no inline script");
    assert!(!page.text.contains("http://") && !page.text.contains("https://"));
}

#[tokio::test]
async fn an_unknown_console_file_is_the_json_404_of_an_unknown_route() {
    let server = Server::start();
    for path in [
        "/console/nope.js",
        "/console/..%2FCargo.toml",
        "/console/a/b",
    ] {
        let reply = send(client().get(server.url(path))).await;

        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.error_code(), "RESOURCE_NOT_FOUND", "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    let wrong_method = send(client().post(server.url("/console"))).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.error_code(), "METHOD_NOT_ALLOWED");
}

/// A JSON object of counters as pairs.
fn counts(v: &Value) -> Vec<(String, u64)> {
    v.as_object()
        .expect("counter object")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
        .collect()
}

#[tokio::test]
async fn usage_counts_each_utc_day_of_the_month_and_has_no_quota_without_a_monthly_limit() {
    // Arrange: requests today, and counters of two days of an older month stored
    // straight into the running server's database.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let other = server.create_account("enterprise");
    for _ in 0..3 {
        assert_eq!(
            get(&server, &acct.api_key, "/v1/api-keys").await.status,
            200
        );
    }
    assert_eq!(
        get(&server, &other.api_key, "/v1/api-keys").await.status,
        200
    );
    let store = server.store().await;
    let account_id = AccountId::parse(&acct.account_id).unwrap();
    let key_id = KeyId::parse(&acct.key_id).unwrap();
    let counter = |day: &str, endpoint: &str, n: u64| {
        (
            UsageKey {
                account_id: account_id.clone(),
                day: day.into(),
                endpoint: endpoint.into(),
                key_id: key_id.clone(),
            },
            n,
        )
    };
    let batch = MeterBatch {
        usage: vec![
            counter("2025-02-03", "GET /v1/api-keys", 2),
            counter("2025-02-03", "POST /v1/api-keys", 5),
            counter("2025-02-28", "GET /v1/api-keys", 7),
            counter("2025-03-01", "GET /v1/api-keys", 11),
        ],
        ..MeterBatch::default()
    };
    store.write_meter_batch(&batch).await.unwrap();
    let today = keyward_workers::day_of(OffsetDateTime::now_utc());

    // Act
    let now = common::eventually(METER_WAIT, "today's three requests", async || {
        let r = get(&server, &acct.api_key, "/v1/usage").await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.body["by_endpoint"]["GET /v1/api-keys"] == 3 {
            Ok(r.body)
        } else {
            Err(r.body)
        }
    })
    .await;
    let february = get(&server, &acct.api_key, "/v1/usage?month=2025-02").await;
    let january = get(&server, &acct.api_key, "/v1/usage?month=2025-01").await;

    // Assert: each day's count, and the days add up to the month.
    let by_day = counts(&now["by_day"]);
    assert_eq!(by_day.len(), 1, "only today: {by_day:?}");
    assert_eq!(by_day[0].0, today);
    assert_eq!(by_day[0].1, now["requests_this_month"].as_u64().unwrap());
    assert_eq!(now["quota"], Value::Null);
    assert_eq!(february.status, 200);
    assert_eq!(
        counts(&february.body["by_day"]),
        vec![("2025-02-03".to_owned(), 7), ("2025-02-28".to_owned(), 7)]
    );
    assert_eq!(february.body["requests_this_month"], 14);
    assert_eq!(february.body["quota"], Value::Null);
    assert_eq!(january.body["by_day"], json!({}));
    assert_eq!(january.body["requests_this_month"], 0);
    // The other account's day holds only its own request.
    let theirs = common::eventually(METER_WAIT, "the other account's request", async || {
        let r = get(&server, &other.api_key, "/v1/usage").await;
        if r.body["by_day"][today.as_str()].as_u64() >= Some(1) {
            Ok(r.body)
        } else {
            Err(r.body)
        }
    })
    .await;
    let theirs_today = theirs["by_day"][today.as_str()].as_u64().unwrap();
    let their_usage_reads = theirs["by_endpoint"]["GET /v1/usage"].as_u64().unwrap_or(0);
    assert_eq!(theirs_today, 1 + their_usage_reads, "{theirs}");
    store.close().await;
}
