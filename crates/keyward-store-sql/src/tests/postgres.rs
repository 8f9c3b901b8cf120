//! What only the PostgreSQL backend does: migrations of nodes starting together, its
//! error codes and connection settings, and its metering flush's own shape.

use std::time::{Duration, Instant};

use keyward_core::RequestId;
use keyward_store::contract;
use keyward_store::{MeterBatch, PageQuery, RequestRecord, Store, StoreError, UsageKey};
use sqlx::{AssertSqlSafe, Postgres};

use super::TestDb;
use crate::PgStore;
use crate::common::{Dialect, map_err};
use crate::postgres::parse_url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_fresh_schema_all_migrate() {
    let Some(db) = TestDb::connect("nodes_starting_together_on_a_fresh_schema_all_migrate").await
    else {
        return;
    };
    let schema = db.new_schema();
    let (a, b, c, d) = tokio::join!(
        db.open(&schema),
        db.open(&schema),
        db.open(&schema),
        db.open(&schema)
    );
    let stores = [a, b, c, d];
    for store in &stores {
        assert_eq!(store.account_count().await.unwrap(), 0);
    }
    let applied: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "select version from {}._sqlx_migrations where success order by version",
        schema.name
    )))
    .fetch_all(&db.admin)
    .await
    .unwrap();
    assert_eq!(
        applied,
        crate::migrate::versions(),
        "each migration applied exactly once"
    );
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test]
async fn a_dead_server_is_unavailable_not_a_panic() {
    let options = parse_url("postgres://postgres@127.0.0.1:1/test").unwrap();
    let started = Instant::now();
    let got = PgStore::open(
        options,
        Duration::from_millis(500),
        None,
        crate::Migrations::Apply,
    )
    .await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn bad_schema_names_are_refused_before_any_sql() {
    for name in ["", "Public", "a-b", "x; drop table account", "1abc"] {
        let got = PgStore::connect_with_schema("postgres://127.0.0.1:1/test", name).await;
        assert!(
            matches!(got, Err(StoreError::Other(_))),
            "{name:?}: {got:?}"
        );
    }
}

#[test]
fn unique_and_connection_errors_map_to_conflict_and_unavailable() {
    assert!(Postgres::is_unavailable_code("08006"));
    assert!(Postgres::is_unavailable_code("53300"));
    assert!(Postgres::is_unavailable_code("40P01"));
    assert!(!Postgres::is_unavailable_code("23505"));
    assert!(!Postgres::is_unavailable_code("42P01"));
    assert!(matches!(
        map_err::<Postgres>(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        map_err::<Postgres>(sqlx::Error::RowNotFound),
        StoreError::NotFound
    ));
}

#[tokio::test]
async fn duplicates_within_a_batch_add_up_and_big_batches_keep_their_order() {
    let Some(db) =
        TestDb::connect("duplicates_within_a_batch_add_up_and_big_batches_keep_their_order").await
    else {
        return;
    };
    let (store, _schema) = db.fresh().await;
    let (account, first, _) = contract::seeded(&store, "pro").await;
    let (account_id, key_id) = (account.account_id, first.key_id);
    let t = contract::now();
    let usage_key = UsageKey {
        account_id: account_id.clone(),
        day: "2026-12-01".into(),
        endpoint: "GET /v1/usage".into(),
        key_id: key_id.clone(),
    };
    // More rows than 65535 / 9 bind parameters would allow in one VALUES insert.
    let requests: Vec<RequestRecord> = (0..10_000_u32)
        .map(|i| RequestRecord {
            user_agent: (i % 2 == 0).then(|| "ua/1".to_owned()),
            request_id: RequestId::parse(format!("req_{i}").as_bytes()).unwrap(),
            latency_ms: i,
            ..contract::record(&account_id, &key_id, "GET /v1/usage", 200, t)
        })
        .collect();
    let an_hour_before = (
        account_id.clone(),
        key_id.clone(),
        t - time::Duration::hours(1),
    );
    let batch = MeterBatch {
        requests,
        last_used: vec![an_hour_before, (account_id.clone(), key_id.clone(), t)],
        usage: vec![(usage_key.clone(), 2), (usage_key, 3)],
    };
    store.write_meter_batch(&batch).await.unwrap();
    let usage = store.usage(&account_id, "2026-12").await.unwrap();
    assert_eq!(usage, vec![("GET /v1/usage".to_owned(), key_id.clone(), 5)]);
    let key = store.get_key(&account_id, &key_id).await.unwrap().unwrap();
    assert_eq!(key.last_used, Some(t));
    let newest_three = PageQuery {
        limit: 3,
        ..PageQuery::default()
    };
    let page = store.request_history(&account_id, &newest_three).await;
    let page = page.unwrap();
    let newest: Vec<_> = page.iter().map(|(_, r)| r.request_id.as_str()).collect();
    assert_eq!(newest, ["req_9999", "req_9998", "req_9997"]);
    assert_eq!(page[1].1.user_agent, Some("ua/1".to_owned()));
    assert_eq!(page[0].1.user_agent, None);
    store.close().await;
}

#[tokio::test]
async fn readiness_commits_a_write_that_changes_nothing() {
    // Arrange
    let Some(db) = TestDb::connect("readiness_commits_a_write_that_changes_nothing").await else {
        return;
    };
    let (store, _schema) = db.fresh().await;
    contract::write_history(&store, vec![super::shared::row("acc_1", "key_1", 0)]).await;
    let next_id = || {
        sqlx::query_scalar::<_, i64>("select next_id from request_log_next_id")
            .fetch_one(store.pool())
    };
    let before = next_id().await.unwrap();

    // Act
    let ready = store.check_ready().await;

    // Assert
    assert!(ready.is_ok(), "{ready:?}");
    assert_eq!(
        next_id().await.unwrap(),
        before,
        "the next history id is unchanged"
    );
    store.close().await;
}
