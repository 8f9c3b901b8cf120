//! The storage contract: behaviour every [`Store`] backend must show. A backend's tests
//! call [`run_all`] with a factory of fresh, empty stores.

#![expect(
    clippy::unwrap_used,
    reason = "test suite: a failed unwrap is a failed test"
)]

use std::future::Future;

use keyward_core::{
    AccountId, KeyId, KeyName, KeyPrefix, KeySecret, KeyStatus, Limits, Metadata, OsRandom, Plan,
    RequestId, ScopeSet, StoredStatus,
};
use time::{Duration, OffsetDateTime};

use crate::{
    Account, AuditAction, AuditContext, KeyPatch, KeyQuery, MeterBatch, NewKey, NewSecret,
    PageQuery, RequestRecord, Store, StoreError, UsageKey,
};

/// Runs every contract test, each on a fresh store from `make`. `G` is whatever keeps
/// the store's database alive (a temp dir, a schema guard).
pub async fn run_all<S, G, F, Fut>(make: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, G)>,
{
    accounts_are_created_listed_and_replanned(&make().await.0).await;
    only_one_concurrent_bootstrap_creates_an_account(&make().await.0).await;
    keys_are_isolated_by_account(&make().await.0).await;
    listing_is_oldest_first_filtered_and_paged(&make().await.0).await;
    updates_need_the_current_version_and_are_audited(&make().await.0).await;
    rotation_keeps_old_secrets_only_for_the_grace_period(&make().await.0).await;
    revocation_removes_key_and_secrets_but_keeps_audit(&make().await.0).await;
    imported_keys_authenticate_and_are_audited(&make().await.0).await;
    meter_batches_record_history_usage_and_last_used(&make().await.0).await;
    history_pages_by_cursor_and_filters_and_prunes(&make().await.0).await;
    interleaved_history_reads_back_whole_in_order_page_by_page(&make().await.0).await;
    a_large_batch_reads_back_whole_in_order(&make().await.0).await;
    concurrent_creations_each_commit_and_fail_alone(&make().await.0).await;
}

/// Ids from one monotonic generator, so that creation order is id order as in the service.
fn next_ulid() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    GENERATOR.lock().unwrap().generate().unwrap()
}

fn now() -> OffsetDateTime {
    keyward_core::timefmt::truncate(OffsetDateTime::now_utc())
}

fn account(plan: Plan) -> Account {
    Account {
        account_id: AccountId::from_ulid(next_ulid()),
        name: "acme".into(),
        plan,
        custom_limits: Limits::default(),
        created_at: now(),
    }
}

fn new_key(account_id: &AccountId, scopes: &[&str]) -> (NewKey, KeySecret) {
    let secret = KeySecret::generate(&KeyPrefix::default(), &mut OsRandom);
    let key = NewKey {
        key_id: KeyId::from_ulid(next_ulid()),
        account_id: account_id.clone(),
        name: Some(KeyName::parse("test key").unwrap()),
        scopes: ScopeSet::parse(scopes).unwrap(),
        metadata: Metadata::parse(serde_json::json!({"env": "test"})).unwrap(),
        expires_at: None,
        created_at: now(),
        secret: NewSecret {
            digest: secret.digest(),
            hint: secret.hint(),
        },
    };
    (key, secret)
}

fn audit() -> AuditContext {
    AuditContext {
        actor_key_id: None,
        request_id: "req_test".into(),
        time: now(),
        changes: serde_json::json!({}),
    }
}

async fn seeded<S: Store>(store: &S, plan: Plan) -> (Account, NewKey, KeySecret) {
    let acct = account(plan);
    let (key, secret) = new_key(&acct.account_id, &["read", "write", "admin"]);
    store.create_account(&acct, &key, &audit()).await.unwrap();
    (acct, key, secret)
}

async fn accounts_are_created_listed_and_replanned<S: Store>(store: &S) {
    assert_eq!(store.account_count().await.unwrap(), 0);
    let (acct, _, secret) = seeded(store, Plan::Free).await;
    assert_eq!(store.account_count().await.unwrap(), 1);
    let listed = store.list_accounts().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].account, acct);
    assert_eq!(listed[0].key_count, 1);

    store
        .set_plan(&acct.account_id, Plan::Enterprise)
        .await
        .unwrap();
    store
        .set_limits(&acct.account_id, Limits::new(Some(7), None))
        .await
        .unwrap();
    let auth = store
        .auth_by_digest(&secret.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auth.plan, Plan::Enterprise);
    assert_eq!(auth.limits, Limits::new(Some(7), None));

    let missing = AccountId::from_ulid(next_ulid());
    assert!(matches!(
        store.set_plan(&missing, Plan::Pro).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.account(&missing).await.unwrap().is_none());
}

async fn only_one_concurrent_bootstrap_creates_an_account<S: Store>(store: &S) {
    let attempts: Vec<_> = (0..4)
        .map(|_| {
            let acct = account(Plan::Enterprise);
            let (key, _) = new_key(&acct.account_id, &["read", "write", "admin"]);
            (acct, key)
        })
        .collect();
    let context = audit();
    let results = futures_util::future::join_all(
        attempts
            .iter()
            .map(|(acct, key)| store.bootstrap_account(acct, key, &context)),
    )
    .await;
    let created = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|c| *c)
        .count();
    assert_eq!(created, 1, "exactly one bootstrap wins");
    assert_eq!(store.account_count().await.unwrap(), 1);
    let (late, late_key) = (
        account(Plan::Free),
        new_key(&AccountId::from_ulid(next_ulid()), &["read"]).0,
    );
    assert!(
        !store
            .bootstrap_account(&late, &late_key, &audit())
            .await
            .unwrap()
    );
}

async fn keys_are_isolated_by_account<S: Store>(store: &S) {
    let (a, a_key, _) = seeded(store, Plan::Pro).await;
    let (b, _, _) = seeded(store, Plan::Pro).await;
    let got = store
        .get_key(&a.account_id, &a_key.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.scopes, a_key.scopes);
    assert_eq!(got.status, StoredStatus::Active);
    assert_eq!(got.hint, a_key.secret.hint);

    assert!(
        store
            .get_key(&b.account_id, &a_key.key_id)
            .await
            .unwrap()
            .is_none()
    );
    let patch = KeyPatch {
        status: Some(StoredStatus::Inactive),
        ..KeyPatch::default()
    };
    let cross = store
        .update_key(&b.account_id, &a_key.key_id, got.version, &patch, &audit())
        .await;
    assert!(matches!(cross, Err(StoreError::NotFound)));
    let cross = store
        .revoke_key(&b.account_id, &a_key.key_id, got.version, &audit())
        .await;
    assert!(matches!(cross, Err(StoreError::NotFound)));
    let (b_keys, _) = store
        .list_keys(
            &b.account_id,
            &KeyQuery {
                status: None,
                limit: None,
                after: None,
                now: now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(b_keys.len(), 1);
    assert_ne!(b_keys[0].key_id, a_key.key_id);
    let unchanged = store
        .get_key(&a.account_id, &a_key.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged, got);
}

async fn listing_is_oldest_first_filtered_and_paged<S: Store>(store: &S) {
    let (acct, first, _) = seeded(store, Plan::Pro).await;
    let mut ids = vec![first.key_id.clone()];
    for i in 0..4 {
        let (mut key, _) = new_key(&acct.account_id, &["read"]);
        if i == 2 {
            key.expires_at = Some(now() - Duration::seconds(1));
        }
        store.insert_key(&key, &audit()).await.unwrap();
        ids.push(key.key_id);
    }
    let inactive = store
        .get_key(&acct.account_id, &ids[2])
        .await
        .unwrap()
        .unwrap();
    store
        .update_key(
            &acct.account_id,
            &ids[2],
            inactive.version,
            &KeyPatch {
                status: Some(StoredStatus::Inactive),
                ..KeyPatch::default()
            },
            &audit(),
        )
        .await
        .unwrap();
    let q = |status, limit, after| KeyQuery {
        status,
        limit,
        after,
        now: now(),
    };

    let (all, more) = store
        .list_keys(&acct.account_id, &q(None, None, None))
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(
        all.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>(),
        ids
    );

    let (page, more) = store
        .list_keys(&acct.account_id, &q(None, Some(2), None))
        .await
        .unwrap();
    assert!(more);
    assert_eq!(page.len(), 2);
    let (rest, more) = store
        .list_keys(
            &acct.account_id,
            &q(None, Some(3), Some(page[1].key_id.clone())),
        )
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0].key_id, ids[2]);

    for (status, expected) in [
        (KeyStatus::Expired, vec![ids[3].clone()]),
        (KeyStatus::Inactive, vec![ids[2].clone()]),
        (
            KeyStatus::Active,
            vec![ids[0].clone(), ids[1].clone(), ids[4].clone()],
        ),
    ] {
        let (keys, _) = store
            .list_keys(&acct.account_id, &q(Some(status), None, None))
            .await
            .unwrap();
        let got: Vec<_> = keys.into_iter().map(|k| k.key_id).collect();
        assert_eq!(got, expected, "status filter {status:?}");
    }
}

async fn updates_need_the_current_version_and_are_audited<S: Store>(store: &S) {
    let (acct, key, secret) = seeded(store, Plan::Pro).await;
    let before = store
        .get_key(&acct.account_id, &key.key_id)
        .await
        .unwrap()
        .unwrap();
    let patch = KeyPatch {
        name: Some(None),
        scopes: Some(ScopeSet::parse(&["read"]).unwrap()),
        expires_at: Some(Some(now() + Duration::hours(1))),
        metadata: Some(Metadata::default()),
        status: None,
    };
    let changed = store
        .update_key(
            &acct.account_id,
            &key.key_id,
            before.version,
            &patch,
            &audit(),
        )
        .await
        .unwrap();
    let after = changed.key.unwrap();
    assert_eq!(after.name, None);
    assert_eq!(after.scopes.to_strings(), ["read"]);
    assert!(after.version > before.version);
    assert_eq!(changed.stale_digests, vec![secret.digest()]);

    let stale = store
        .update_key(
            &acct.account_id,
            &key.key_id,
            before.version,
            &patch,
            &audit(),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))));

    let events = store
        .audit_log(
            &acct.account_id,
            &PageQuery {
                limit: 10,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    let actions: Vec<_> = events
        .iter()
        .map(|e| (e.action, e.key_id.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            (AuditAction::Updated, key.key_id.clone()),
            (AuditAction::Created, key.key_id.clone())
        ],
        "newest first; the first key's creation is an event too"
    );
}

async fn rotation_keeps_old_secrets_only_for_the_grace_period<S: Store>(store: &S) {
    let (acct, key, old) = seeded(store, Plan::Pro).await;
    let v = store
        .get_key(&acct.account_id, &key.key_id)
        .await
        .unwrap()
        .unwrap()
        .version;
    let fresh = KeySecret::generate(&KeyPrefix::default(), &mut OsRandom);
    let end = now() + Duration::minutes(5);
    let changed = store
        .rotate_key(
            &acct.account_id,
            &key.key_id,
            v,
            &NewSecret {
                digest: fresh.digest(),
                hint: fresh.hint(),
            },
            end,
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(changed.key.as_ref().unwrap().hint, fresh.hint());
    let old_auth = store.auth_by_digest(&old.digest()).await.unwrap().unwrap();
    assert_eq!(old_auth.secret_expires_at, Some(end));
    let new_auth = store
        .auth_by_digest(&fresh.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new_auth.secret_expires_at, None);
    assert_eq!(new_auth.key.key_id, key.key_id);

    // A rotation without grace ends every older secret at once.
    let v = changed.key.unwrap().version;
    let third = KeySecret::generate(&KeyPrefix::default(), &mut OsRandom);
    let changed = store
        .rotate_key(
            &acct.account_id,
            &key.key_id,
            v,
            &NewSecret {
                digest: third.digest(),
                hint: third.hint(),
            },
            now(),
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(changed.stale_digests.len(), 2);
    assert!(store.auth_by_digest(&old.digest()).await.unwrap().is_none());
    assert!(
        store
            .auth_by_digest(&fresh.digest())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .auth_by_digest(&third.digest())
            .await
            .unwrap()
            .is_some()
    );
}

async fn revocation_removes_key_and_secrets_but_keeps_audit<S: Store>(store: &S) {
    let (acct, _, _) = seeded(store, Plan::Pro).await;
    let (key, secret) = new_key(&acct.account_id, &["read"]);
    let inserted = store.insert_key(&key, &audit()).await.unwrap();
    let changed = store
        .revoke_key(&acct.account_id, &key.key_id, inserted.version, &audit())
        .await
        .unwrap();
    assert_eq!(changed.stale_digests, vec![secret.digest()]);
    assert!(
        store
            .get_key(&acct.account_id, &key.key_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .auth_by_digest(&secret.digest())
            .await
            .unwrap()
            .is_none()
    );
    let events = store
        .audit_log(
            &acct.account_id,
            &PageQuery {
                limit: 10,
                key_id: Some(key.key_id.clone()),
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action).collect();
    assert_eq!(actions, [AuditAction::Revoked, AuditAction::Created]);
}

async fn imported_keys_authenticate_and_are_audited<S: Store>(store: &S) {
    let (acct, _, _) = seeded(store, Plan::Pro).await;
    let (keys, secrets): (Vec<_>, Vec<_>) = (0..50)
        .map(|_| new_key(&acct.account_id, &["read"]))
        .unzip();
    store.import_keys(&keys, &audit()).await.unwrap();
    for (key, secret) in keys.iter().zip(&secrets) {
        let auth = store
            .auth_by_digest(&secret.digest())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(auth.key.key_id, key.key_id);
    }
    let (listed, _) = store
        .list_keys(
            &acct.account_id,
            &KeyQuery {
                status: None,
                limit: None,
                after: None,
                now: now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 51);
    let events = store
        .audit_log(
            &acct.account_id,
            &PageQuery {
                limit: 100,
                action: Some(AuditAction::Created),
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        51,
        "every imported key has its key.created event"
    );
    // All or nothing: a batch with a duplicate id stores none of its keys.
    let (fresh, fresh_secret) = new_key(&acct.account_id, &["read"]);
    let duplicate = keys[0].clone();
    assert!(
        store
            .import_keys(&[fresh, duplicate], &audit())
            .await
            .is_err()
    );
    assert!(
        store
            .auth_by_digest(&fresh_secret.digest())
            .await
            .unwrap()
            .is_none()
    );
}

fn record(
    acct: &AccountId,
    key: &KeyId,
    endpoint: &str,
    status: u16,
    time: OffsetDateTime,
) -> RequestRecord {
    RequestRecord {
        account_id: acct.clone(),
        time,
        method: "GET".into(),
        endpoint: endpoint.to_owned().into(),
        status,
        user_agent: Some("contract/1".into()),
        key_id: key.clone(),
        request_id: RequestId::generated(ulid::Ulid::generate()),
        latency_ms: 3,
    }
}

/// Stores these history rows as one metering batch (no usage, no `last_used`) and hands
/// them back.
async fn write_history<S: Store>(store: &S, requests: Vec<RequestRecord>) -> Vec<RequestRecord> {
    let batch = MeterBatch {
        requests,
        ..MeterBatch::default()
    };
    store.write_meter_batch(&batch).await.unwrap();
    batch.requests
}

async fn meter_batches_record_history_usage_and_last_used<S: Store>(store: &S) {
    let (acct, key, _) = seeded(store, Plan::Pro).await;
    let t = now();
    let usage_key = UsageKey {
        account_id: acct.account_id.clone(),
        month: "2026-11".into(),
        endpoint: "GET /v1/api-keys".into(),
        key_id: key.key_id.clone(),
    };
    let plain = record(&acct.account_id, &key.key_id, "GET /v1/api-keys", 200, t);
    // Bytes that text encodings of a row must escape (PostgreSQL's COPY text format, CSV,
    // JSON) come back as they went in, and so does a missing user agent.
    let odd_agent = RequestRecord {
        user_agent: Some("tab\there\nline \\N \"quoted\" \r é 🔑 \u{7f}".into()),
        ..record(&acct.account_id, &key.key_id, "GET /v1/api-keys", 200, t)
    };
    let no_agent = RequestRecord {
        user_agent: None,
        ..record(&acct.account_id, &key.key_id, "GET /v1/api-keys", 200, t)
    };
    let batch = MeterBatch {
        requests: vec![plain, odd_agent, no_agent],
        last_used: vec![(acct.account_id.clone(), key.key_id.clone(), t)],
        usage: vec![(usage_key.clone(), 3)],
    };
    store.write_meter_batch(&batch).await.unwrap();
    // An older last_used never moves it back; counts add up.
    let older = MeterBatch {
        requests: vec![],
        last_used: vec![(
            acct.account_id.clone(),
            key.key_id.clone(),
            t - Duration::hours(1),
        )],
        usage: vec![(usage_key, 2)],
    };
    store.write_meter_batch(&older).await.unwrap();
    let got = store
        .get_key(&acct.account_id, &key.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.last_used, Some(t));
    let usage = store.usage(&acct.account_id, "2026-11").await.unwrap();
    assert_eq!(
        usage,
        vec![("GET /v1/api-keys".to_owned(), key.key_id.clone(), 5)]
    );
    assert!(
        store
            .usage(&acct.account_id, "2026-10")
            .await
            .unwrap()
            .is_empty()
    );
    let history = store
        .request_history(
            &acct.account_id,
            &PageQuery {
                limit: 10,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    // Newest first: the batch's rows in reverse.
    let read_back: Vec<RequestRecord> = history.into_iter().rev().map(|(_, r)| r).collect();
    assert_eq!(read_back, batch.requests);
}

async fn history_pages_by_cursor_and_filters_and_prunes<S: Store>(store: &S) {
    let (acct, key, _) = seeded(store, Plan::Pro).await;
    let (other, other_key, _) = seeded(store, Plan::Pro).await;
    let t = now();
    let mut requests = Vec::new();
    for i in 0..10_i64 {
        let status = if i % 2 == 0 { 200 } else { 404 };
        requests.push(record(
            &acct.account_id,
            &key.key_id,
            "GET /v1/api-keys",
            status,
            t - Duration::days(100 - i),
        ));
    }
    requests.push(record(
        &other.account_id,
        &other_key.key_id,
        "GET /v1/usage",
        200,
        t,
    ));
    write_history(store, requests).await;

    let page = |before, status| PageQuery {
        limit: 4,
        before,
        status,
        ..PageQuery::default()
    };
    let first = store
        .request_history(&acct.account_id, &page(None, None))
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    assert!(first.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
    let second = store
        .request_history(&acct.account_id, &page(Some(first[3].0), None))
        .await
        .unwrap();
    assert!(second.iter().all(|(seq, _)| *seq < first[3].0));
    let not_found = store
        .request_history(
            &acct.account_id,
            &PageQuery {
                limit: 100,
                status: Some(404),
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(not_found.len(), 5);
    assert!(
        not_found
            .iter()
            .all(|(_, r)| r.status == 404 && r.account_id == acct.account_id)
    );

    let cutoff = t - Duration::days(95);
    let mut pruned = 0;
    loop {
        let n = store.prune_history(cutoff, 2).await.unwrap();
        if n == 0 {
            break;
        }
        pruned += n;
    }
    assert_eq!(pruned, 5);
    let left = store
        .request_history(
            &acct.account_id,
            &PageQuery {
                limit: 100,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|(_, r)| r.time >= cutoff));
    let others = store
        .request_history(
            &other.account_id,
            &PageQuery {
                limit: 100,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(others.len(), 1);
}

/// Batches that interleave two accounts and three keys: each account reads back exactly
/// its own rows, newest first, whole and in order, page by page at any page size, with and
/// without filters. (SQLite stores each account's rows of a batch as one run; this is
/// where a cursor falls inside a run.)
async fn interleaved_history_reads_back_whole_in_order_page_by_page<S: Store>(store: &S) {
    let (a, a_key, _) = seeded(store, Plan::Pro).await;
    let (b, b_key, _) = seeded(store, Plan::Pro).await;
    let a_other_key = KeyId::from_ulid(next_ulid());
    let t = now();
    let mut written: Vec<RequestRecord> = Vec::new();
    for batch in 0..3_i64 {
        let mut requests = Vec::new();
        for i in 0..12_i64 {
            let (acct, key) = match i % 4 {
                0 | 2 => (&a.account_id, &a_key.key_id),
                1 => (&b.account_id, &b_key.key_id),
                _ => (&a.account_id, &a_other_key),
            };
            let endpoint = if i % 3 == 0 {
                "GET /v1/usage"
            } else {
                "GET /v1/api-keys"
            };
            let time = t - Duration::minutes(100 - batch * 12 - i);
            requests.push(record(acct, key, endpoint, 200, time));
        }
        written.extend(write_history(store, requests).await);
    }

    let queries = [
        (&a.account_id, None, None),
        (&a.account_id, Some(&a_key.key_id), None),
        (&a.account_id, Some(&a_other_key), None),
        (&a.account_id, None, Some("GET /v1/usage")),
        (&a.account_id, Some(&a_key.key_id), Some("GET /v1/usage")),
        (&b.account_id, None, None),
        // Another account's key: nothing, as if it did not exist.
        (&b.account_id, Some(&a_key.key_id), None),
    ];
    for (account_id, key_id, endpoint) in queries {
        let expected: Vec<&RequestRecord> = written
            .iter()
            .rev()
            .filter(|r| {
                r.account_id == *account_id
                    && key_id.is_none_or(|k| r.key_id == *k)
                    && endpoint.is_none_or(|e| r.endpoint == e)
            })
            .collect();
        for limit in [1, 2, 5, 100] {
            let mut read: Vec<(i64, RequestRecord)> = Vec::new();
            loop {
                let query = PageQuery {
                    limit,
                    before: read.last().map(|(seq, _)| *seq),
                    key_id: key_id.cloned(),
                    endpoint: endpoint.map(str::to_owned),
                    ..PageQuery::default()
                };
                let page = store.request_history(account_id, &query).await.unwrap();
                assert!(page.len() <= limit as usize);
                if page.is_empty() {
                    break;
                }
                read.extend(page);
            }
            assert!(
                read.windows(2).all(|w| w[0].0 > w[1].0),
                "cursor positions fall, {key_id:?} {endpoint:?} limit {limit}"
            );
            let read: Vec<&RequestRecord> = read.iter().map(|(_, r)| r).collect();
            assert_eq!(read, expected, "{key_id:?} {endpoint:?} limit {limit}");
        }
    }
}

/// One batch far larger than any piece a backend writes at a time (PostgreSQL's `COPY`
/// chunks of 4,096 rows, SQLite's runs of 256 rows and statements of 64), as a flush that
/// fell behind under load carries: every row is stored once, in batch order.
async fn a_large_batch_reads_back_whole_in_order<S: Store>(store: &S) {
    const ROWS: i64 = 10_000;
    let (acct, key, _) = seeded(store, Plan::Pro).await;
    let t = now() - Duration::days(1);
    let requests: Vec<RequestRecord> = (0..ROWS)
        .map(|i| {
            let status = if i % 7 == 0 { 404 } else { 200 };
            let mut row = record(&acct.account_id, &key.key_id, "GET /v1/api-keys", status, t);
            row.latency_ms = u32::try_from(i).unwrap();
            row
        })
        .collect();
    let requests = write_history(store, requests).await;
    let mut read: Vec<(i64, RequestRecord)> = Vec::new();
    loop {
        let query = PageQuery {
            limit: 1_000,
            before: read.last().map(|(seq, _)| *seq),
            ..PageQuery::default()
        };
        let page = store
            .request_history(&acct.account_id, &query)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        read.extend(page);
    }
    let read_back: Vec<RequestRecord> = read.into_iter().rev().map(|(_, r)| r).collect();
    assert_eq!(read_back.len(), requests.len());
    assert!(read_back == requests, "rows differ or are out of order");
}

/// Creations arriving together (which a backend may commit in one transaction) each get
/// their own answer: a key that can't be inserted fails alone, the others are stored.
async fn concurrent_creations_each_commit_and_fail_alone<S: Store>(store: &S) {
    let (acct, first, _) = seeded(store, Plan::Pro).await;
    // More than one group-commit statement holds (512 keys), on backends that batch.
    let mut keys: Vec<NewKey> = (0..700_u32)
        .map(|i| {
            let mut key = new_key(&acct.account_id, &["read"]).0;
            if i % 3 == 0 {
                key.name = None;
                key.expires_at = Some(now() + Duration::days(30));
            }
            key
        })
        .collect();
    // The secret of an existing key: refused by the unique constraint on digests after
    // its key row went in, which must then be gone too.
    let mut duplicate = new_key(&acct.account_id, &["read"]).0;
    duplicate.secret = first.secret.clone();
    keys.insert(20, duplicate);
    let audit = audit();
    let outcomes =
        futures_util::future::join_all(keys.iter().map(|k| store.insert_key(k, &audit))).await;
    for (i, (key, outcome)) in keys.iter().zip(&outcomes).enumerate() {
        if i == 20 {
            assert!(
                matches!(outcome, Err(StoreError::Conflict(_))),
                "duplicate: {outcome:?}"
            );
        } else {
            // What insert_key answers is what storage holds.
            let stored = store
                .get_key(&acct.account_id, &key.key_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(outcome.as_ref().unwrap(), &stored);
        }
    }
    let query = KeyQuery {
        status: None,
        limit: None,
        after: None,
        now: now(),
    };
    let (listed, _) = store.list_keys(&acct.account_id, &query).await.unwrap();
    assert_eq!(listed.len(), 701, "the first key and the 700 new ones");
    assert!(listed.iter().all(|k| k.key_id != keys[20].key_id));
    for key in keys
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 20)
        .map(|(_, k)| k)
    {
        assert!(
            store
                .auth_by_digest(&key.secret.digest)
                .await
                .unwrap()
                .is_some()
        );
    }
    let log = store
        .audit_log(
            &acct.account_id,
            &PageQuery {
                limit: 1000,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        log.len(),
        701,
        "one audit event per stored key, none for the refused one"
    );
}
