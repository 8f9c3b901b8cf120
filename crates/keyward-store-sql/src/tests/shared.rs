//! Behaviour of the shared code that the contract can't see from outside: how history is
//! split into runs and spans, and what retention leaves of them.

use keyward_core::{AccountId, KeyId};
use keyward_store::runs::ROWS_PER_RUN;
use keyward_store::{PageQuery, RequestRecord, Store, contract};
use sqlx::AssertSqlSafe;
use time::OffsetDateTime;

use super::texts;
use crate::SqlStore;
use crate::common::{Backend, SPAN_TABLES};

on_both_backends!(
    crate::tests::shared;
    pruning_deletes_runs_with_no_rows_left,
    a_long_flush_is_split_into_runs,
);

/// Retention deletes the runs that end before the oldest row left, and keeps a run
/// that still has rows.
pub(super) async fn pruning_deletes_runs_with_no_rows_left<B: Backend>(store: &SqlStore<B>) {
    let at = |unix| OffsetDateTime::from_unix_timestamp(unix).unwrap();
    // One batch: a's rows at 100 and 300 make one run; b's at 100 another.
    let old_and_new = vec![
        row("acct_a", "key_a", 100),
        row("acct_b", "key_b", 100),
        row("acct_a", "key_a", 300),
    ];
    // A later batch, all old: its runs must go.
    let old = vec![row("acct_c", "key_c", 150)];
    contract::write_history(store, old_and_new).await;
    contract::write_history(store, old).await;
    let accounts_in = |table| {
        let sql = format!("select account_id as v from {table} order by account_id");
        texts(store, AssertSqlSafe(sql))
    };
    let all = ["acct_a", "acct_b", "acct_c"];
    assert_eq!(accounts_in("request_log_span").await, all);

    // Rows by id: a@100 and a@300 (run 1..=2), b@100 (run 3..=3), c@150 (run 4..=4).
    let pruned = store.prune_history(at(200), 100).await.unwrap();
    assert_eq!(pruned, 3);
    // a's run still holds a@300. b's and c's runs have no rows left, but end after
    // the oldest row left (2): they go with it, and read nothing meanwhile.
    let page = PageQuery {
        limit: 10,
        ..PageQuery::default()
    };
    let b = AccountId::from_trusted("acct_b".to_owned());
    assert!(store.request_history(&b, &page).await.unwrap().is_empty());
    for table in SPAN_TABLES {
        assert_eq!(accounts_in(table).await, all, "{table}");
    }
    store.prune_history(at(400), 100).await.unwrap();
    for table in SPAN_TABLES {
        assert!(accounts_in(table).await.is_empty(), "{table}");
    }
}

/// One account's flush longer than a run is stored as runs of at most
/// [`ROWS_PER_RUN`] rows (the contract's `a_flush_longer_than_a_run_reads_back_whole`
/// reads such a flush back).
pub(super) async fn a_long_flush_is_split_into_runs<B: Backend>(store: &SqlStore<B>) {
    let rows = (0..ROWS_PER_RUN * 2 + 17).map(|_| row("acct_a", "key_a", 0));
    contract::write_history(store, rows.collect()).await;
    let sql = "select cast(row_count as text) as v from request_log_run order by last_id";
    assert_eq!(texts(store, sql).await, ["256", "256", "17"]);
}

/// A history row of `account`'s `key` at `unix` seconds.
pub(crate) fn row(account: &str, key: &str, unix: i64) -> RequestRecord {
    let (account, key) = (
        AccountId::from_trusted(account.into()),
        KeyId::from_trusted(key.into()),
    );
    let time = OffsetDateTime::from_unix_timestamp(unix).unwrap();
    contract::record(&account, &key, "GET /v1/usage", 200, time)
}
