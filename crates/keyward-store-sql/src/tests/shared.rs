//! Behaviour of the shared code that the contract can't see from outside: how history is
//! split into runs and spans, and what retention leaves of them; the rows a batch of
//! webhook attempts leaves, and which commits wake the dispatcher.

use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use keyward_core::webhook::EventType;
use keyward_core::{AccountId, KeyId, WebhookId};
use keyward_store::runs::ROWS_PER_RUN;
use keyward_store::{
    DeliveryAttempt, FinishedAttempt, PageQuery, RequestRecord, Store, Webhook, contract,
};
use sqlx::AssertSqlSafe;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::texts;
use crate::SqlStore;
use crate::common::{Backend, SPAN_TABLES};

on_both_backends!(
    crate::tests::shared;
    pruning_deletes_runs_with_no_rows_left,
    a_long_flush_is_split_into_runs,
    a_batch_of_attempts_is_recorded_whole,
    only_commits_that_enqueue_deliveries_wake_the_dispatcher,
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

/// A subscription of `account` (`None`: an operator's) to `key.created`, stored.
async fn subscribe<B: Backend>(store: &SqlStore<B>, account: Option<&AccountId>) -> WebhookId {
    let webhook = Webhook {
        webhook_id: WebhookId::from_ulid(ulid::Ulid::generate()),
        account_id: account.cloned(),
        url: "https://hooks.example/in".to_owned(),
        events: vec![EventType::KeyCreated],
        description: None,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        created_at: contract::now(),
    };
    store
        .create_webhook(&webhook, &contract::audit())
        .await
        .unwrap();
    webhook.webhook_id
}

/// Creates a key of `account`, which makes a `key.created` event.
async fn create_key<B: Backend>(store: &SqlStore<B>, account: &AccountId) {
    let (key, _) = contract::new_key(account, &["read"]);
    store.insert_key(&key, &contract::audit()).await.unwrap();
}

/// Attempts recorded in one batch are each recorded whole: every delivery has the status
/// its attempt gave it (delivered, due again, failed), one more attempt counted and its
/// lease released, and every attempt is in its subscription's log.
pub(super) async fn a_batch_of_attempts_is_recorded_whole<B: Backend>(store: &SqlStore<B>) {
    // Arrange: two subscriptions (the account's and an operator's), three key creations:
    // six deliveries, claimed together.
    let (account, ..) = contract::seeded(store, "free").await;
    let own = subscribe(store, Some(&account.account_id)).await;
    let operators = subscribe(store, None).await;
    for _ in 0..3 {
        create_key(store, &account.account_id).await;
    }
    let now = contract::now();
    let claimed = store
        .claim_deliveries(now, Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 6);
    let retry_at = now + time::Duration::seconds(5);
    let finished: Vec<FinishedAttempt> = claimed
        .iter()
        .enumerate()
        .map(|(i, delivery)| {
            let (status, error, next_attempt_at) = match i % 3 {
                0 => (Some(204), None, None),
                1 => (
                    Some(503),
                    Some("the response's status was 503"),
                    Some(retry_at),
                ),
                _ => (None, Some("could not connect"), None),
            };
            FinishedAttempt {
                delivery_id: delivery.delivery_id,
                webhook_id: delivery.webhook_id.clone(),
                attempt: DeliveryAttempt {
                    time: now,
                    event_id: delivery.event_id.to_string(),
                    kind: delivery.kind.clone(),
                    status,
                    error: error.map(str::to_owned),
                    next_attempt_at,
                },
            }
        })
        .collect();

    // Act
    store.record_attempts(&finished).await.unwrap();
    store.record_attempts(&[]).await.unwrap();

    // Assert: each delivery's row.
    for (i, attempt) in finished.iter().enumerate() {
        let sql = format!(
            "select status || ' ' || cast(attempts as text) || ' ' || \
             cast(next_attempt_at as text) || ' ' || coalesce(cast(lease_until as text), '-') \
             as v from webhook_delivery where delivery_id = {}",
            attempt.delivery_id
        );
        let (now, retry_at) = (now.unix_timestamp(), retry_at.unix_timestamp());
        let expected = match i % 3 {
            0 => format!("delivered 1 {now} -"),
            1 => format!("pending 1 {retry_at} -"),
            _ => format!("failed 1 {now} -"),
        };
        assert_eq!(texts(store, AssertSqlSafe(sql)).await, [expected]);
    }
    // Each subscription's log: its attempts, newest (last given) first.
    for (account_id, webhook_id) in [(Some(&account.account_id), &own), (None, &operators)] {
        let log = store
            .webhook_attempts(account_id, webhook_id, None, 100)
            .await
            .unwrap()
            .unwrap();
        let logged: Vec<DeliveryAttempt> = log.into_iter().map(|(_, a)| a).collect();
        let expected: Vec<DeliveryAttempt> = finished
            .iter()
            .rev()
            .filter(|f| &f.webhook_id == webhook_id)
            .map(|f| f.attempt.clone())
            .collect();
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert_eq!(logged, expected);
    }
    // Only the deliveries due again are claimed again, once they are due.
    let again = store
        .claim_deliveries(retry_at, Duration::from_secs(60), 100)
        .await
        .unwrap();
    let mut again: Vec<(i64, u32)> = again.iter().map(|d| (d.delivery_id, d.attempts)).collect();
    again.sort_unstable();
    let mut due: Vec<(i64, u32)> = finished
        .iter()
        .filter(|f| f.attempt.next_attempt_at.is_some())
        .map(|f| (f.delivery_id, 1))
        .collect();
    due.sort_unstable();
    assert_eq!(again, due);
}

/// Whether `notify` holds a permit (taking it).
fn told(notify: &Notify) -> bool {
    let notified = pin!(notify.notified());
    notified
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

/// A commit that enqueued deliveries tells [`SqlStore::deliveries_enqueued`]; a commit
/// that made an event no subscription wants, or no event, does not.
pub(super) async fn only_commits_that_enqueue_deliveries_wake_the_dispatcher<B: Backend>(
    store: &SqlStore<B>,
) {
    let enqueued = store.deliveries_enqueued();
    let (account, ..) = contract::seeded(store, "free").await;
    let (other, ..) = contract::seeded(store, "free").await;
    assert!(!told(&enqueued), "no subscription yet");

    subscribe(store, Some(&account.account_id)).await;
    assert!(
        !told(&enqueued),
        "a subscription's creation enqueues nothing"
    );

    create_key(store, &other.account_id).await;
    assert!(
        !told(&enqueued),
        "another account's key is no event of the subscription's"
    );

    create_key(store, &account.account_id).await;
    assert!(told(&enqueued), "a key of the subscribed account");
    assert!(!told(&enqueued), "one permit per wake-up");

    store
        .claim_deliveries(contract::now(), Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert!(!told(&enqueued), "a claim enqueues nothing");
}
