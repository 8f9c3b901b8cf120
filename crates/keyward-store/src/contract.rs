//! The storage contract: behaviour every [`Store`] backend must show, one scenario per
//! function, each on a fresh, empty store. A backend's tests stamp one test per scenario
//! with [`for_each_scenario!`](crate::for_each_scenario), so that a failure names itself.

#![expect(
    clippy::unwrap_used,
    reason = "test suite: a failed unwrap is a failed test"
)]

use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyId, KeyName, KeyPrefix, KeySecret, KeyStatus, Limits,
    Metadata, OsRandom, PlanName, RequestId, ScopeSet, StoredStatus,
};
use std::collections::BTreeMap;

use futures_util::future::join_all;
use time::{Duration, OffsetDateTime};

use crate::{
    Account, AuditAction, AuditChain, AuditContext, KeyPatch, KeyQuery, MeterBatch, NewKey,
    NewSecret, PageQuery, Plan, RequestRecord, Store, StoreError, UsageKey,
};

/// `for_each_scenario!(m!(tokens…))` calls `m!(tokens… name, name, …)` with the name of
/// every scenario of [`crate::contract`] that takes one store: the one list of them.
#[macro_export]
macro_rules! for_each_scenario {
    ($m:ident!($($prefix:tt)*)) => {
        $m! {
            $($prefix)*
            accounts_are_created_listed_and_replanned,
            plans_are_data_and_overrides_apply_on_any_plan,
            only_one_concurrent_bootstrap_creates_an_account,
            keys_are_isolated_by_account,
            listing_is_oldest_first_filtered_and_paged,
            listing_by_status_shows_exactly_the_keys_with_that_status,
            updates_need_the_current_version_and_are_audited,
            rotation_keeps_old_secrets_only_for_the_grace_period,
            revocation_removes_key_and_secrets_but_keeps_audit,
            a_leaked_key_is_revoked_or_disabled_with_its_leak_event,
            imported_keys_authenticate_and_are_audited,
            meter_batches_record_history_usage_and_last_used,
            history_pages_by_cursor_and_filters_and_prunes,
            interleaved_history_reads_back_whole_in_order_page_by_page,
            a_large_batch_reads_back_whole_in_order,
            a_flush_longer_than_a_run_reads_back_whole,
            concurrent_creations_each_commit_and_fail_alone,
            an_account_is_deleted_with_its_keys_history_and_usage_but_not_its_log,
            operator_changes_are_chained_in_the_operator_log_and_the_accounts,
        }
    };
}

/// As [`for_each_scenario!`](crate::for_each_scenario), for the scenarios that take two
/// nodes: two stores on one database, as two processes (two keyward nodes on PostgreSQL;
/// a node and an operator command on SQLite).
#[macro_export]
macro_rules! for_each_two_node_scenario {
    ($m:ident!($($prefix:tt)*)) => {
        $m! {
            $($prefix)*
            only_one_of_two_nodes_passes_the_version_check,
            concurrent_meter_batches_from_two_nodes_lose_no_counts,
            concurrent_history_flushes_from_two_nodes_take_distinct_ids,
            two_nodes_writing_one_account_together_keep_its_audit_chain_whole,
        }
    };
}

/// Ids from one monotonic generator, so that creation order is id order as in the service.
fn next_ulid() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    GENERATOR.lock().unwrap().generate().unwrap()
}

/// The time now, to the second (as stored).
pub fn now() -> OffsetDateTime {
    keyward_core::timefmt::truncate(OffsetDateTime::now_utc())
}

fn account(plan: &str) -> Account {
    Account {
        account_id: AccountId::from_ulid(next_ulid()),
        name: "acme".into(),
        plan: PlanName::parse(plan).unwrap(),
        overrides: Limits::default(),
        status: AccountStatus::Active,
        external_id: None,
        metadata: Metadata::default(),
        created_at: now(),
    }
}

/// A new key of the account, not yet stored, and its secret.
pub fn new_key(account_id: &AccountId, scopes: &[&str]) -> (NewKey, KeySecret) {
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
        policies: keyward_core::KeyPolicies::default(),
        expire_after_inactive_days: None,
    };
    (key, secret)
}

/// The audit context of a change made now by an operator.
pub fn audit() -> AuditContext {
    AuditContext {
        actor_key_id: None,
        operator: None,
        request_id: "req_test".into(),
        time: now(),
        changes: serde_json::json!({}),
    }
}

/// A stored account on `plan`, with its first key (every scope) and that key's secret.
pub async fn seeded<S: Store>(store: &S, plan: &str) -> (Account, NewKey, KeySecret) {
    let acct = account(plan);
    let (key, secret) = new_key(&acct.account_id, &["read", "write", "admin"]);
    store.create_account(&acct, &key, &audit()).await.unwrap();
    (acct, key, secret)
}

/// Accounts are created with their first key, counted, listed, and take a new plan and limits.
pub async fn accounts_are_created_listed_and_replanned<S: Store>(store: &S) {
    assert_eq!(store.account_count().await.unwrap(), 0);
    let (acct, _, secret) = seeded(store, "free").await;
    assert_eq!(store.account_count().await.unwrap(), 1);
    let listed = store.list_accounts().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].account, acct);
    assert_eq!(listed[0].key_count, 1);

    assert_eq!(listed[0].limits, Limits::new(Some(10), Some(100)));

    store
        .set_plan(&acct.account_id, &PlanName::enterprise(), &audit())
        .await
        .unwrap();
    store
        .set_limits(&acct.account_id, Limits::new(Some(7), None), &audit())
        .await
        .unwrap();
    let auth = store
        .auth_by_digest(&secret.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auth.limits, Limits::new(Some(7), None));
    assert_eq!(auth.account_status, AccountStatus::Active);
    let read = store.account(&acct.account_id).await.unwrap().unwrap();
    assert_eq!(read.account.plan, PlanName::enterprise());
    assert_eq!(read.account.overrides, Limits::new(Some(7), None));

    let missing = AccountId::from_ulid(next_ulid());
    assert!(matches!(
        store
            .set_plan(&missing, &PlanName::parse("pro").unwrap(), &audit())
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.account(&missing).await.unwrap().is_none());
}

/// Plans are rows: KonPro's four to start with, put and deleted (not while used); an
/// account's overrides replace its plan's numbers on any plan, and its external id and
/// metadata read back.
pub async fn plans_are_data_and_overrides_apply_on_any_plan<S: Store>(store: &S) {
    let initial = store.plans().await.unwrap();
    let named = |name: &str, minute, day| Plan {
        name: PlanName::parse(name).unwrap(),
        limits: Limits::new(minute, day),
    };
    assert_eq!(
        initial,
        [
            named("enterprise", None, None),
            named("free", Some(10), Some(100)),
            named("pro", Some(60), Some(1000)),
            named("scale", Some(300), Some(10_000)),
        ]
    );

    let gold = Plan {
        name: PlanName::parse("gold").unwrap(),
        limits: Limits::new(None, Some(50)).with_per_month(Some(5)),
    };
    store.put_plan(&gold, &audit()).await.unwrap();
    let mut acct = account("gold");
    acct.external_id = Some(ExternalId::parse("cus_42").unwrap());
    acct.metadata = Metadata::parse(serde_json::json!({"tier": "gold"})).unwrap();
    let (key, secret) = new_key(&acct.account_id, &["read"]);
    store.create_account(&acct, &key, &audit()).await.unwrap();
    let read = store.account(&acct.account_id).await.unwrap().unwrap();
    assert_eq!(read.account, acct);
    assert_eq!(read.limits, gold.limits);

    store
        .set_limits(
            &acct.account_id,
            Limits::new(Some(3), None).with_per_month(Some(9)),
            &audit(),
        )
        .await
        .unwrap();
    let changed = Plan {
        limits: Limits::new(Some(100), Some(500)),
        ..gold.clone()
    };
    store.put_plan(&changed, &audit()).await.unwrap();
    let auth = store
        .auth_by_digest(&secret.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        auth.limits,
        Limits::new(Some(3), Some(500)).with_per_month(Some(9)),
        "overrides win, the rest is the plan's current numbers"
    );

    assert!(matches!(
        store.delete_plan(&gold.name, &audit()).await,
        Err(StoreError::Conflict(_))
    ));
    let unknown = PlanName::parse("platinum").unwrap();
    assert!(matches!(
        store.set_plan(&acct.account_id, &unknown, &audit()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_account(
                &account("platinum"),
                &new_key(&acct.account_id, &["read"]).0,
                &audit()
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_plan(&unknown, &audit()).await,
        Err(StoreError::NotFound)
    ));
    let mut twin = account("free");
    twin.external_id = acct.external_id.clone();
    let (twin_key, _) = new_key(&twin.account_id, &["read"]);
    assert!(matches!(
        store.create_account(&twin, &twin_key, &audit()).await,
        Err(StoreError::Conflict(_))
    ));

    store
        .set_plan(
            &acct.account_id,
            &PlanName::parse("free").unwrap(),
            &audit(),
        )
        .await
        .unwrap();
    store.delete_plan(&gold.name, &audit()).await.unwrap();
    assert_eq!(store.plans().await.unwrap(), initial);
    assert_eq!(
        store.account_count().await.unwrap(),
        1,
        "nothing else was stored"
    );
}

/// Of bootstraps racing on an empty database, exactly one creates an account.
pub async fn only_one_concurrent_bootstrap_creates_an_account<S: Store>(store: &S) {
    let attempts: Vec<_> = (0..4)
        .map(|_| {
            let acct = account("enterprise");
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
        account("free"),
        new_key(&AccountId::from_ulid(next_ulid()), &["read"]).0,
    );
    assert!(
        !store
            .bootstrap_account(&late, &late_key, &audit())
            .await
            .unwrap()
    );
}

/// Another account's key is exactly a missing one: not read, changed, revoked or listed.
pub async fn keys_are_isolated_by_account<S: Store>(store: &S) {
    let (a, a_key, _) = seeded(store, "pro").await;
    let (b, _, _) = seeded(store, "pro").await;
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

/// Keys list oldest first, by page, and filtered by the status they show.
pub async fn listing_is_oldest_first_filtered_and_paged<S: Store>(store: &S) {
    let (acct, first, _) = seeded(store, "pro").await;
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

/// For keys of every stored status with no expiry and one before, at and after `now`,
/// by date or by inactivity, listing by status gives exactly the keys that show it
/// ([`KeyStatus::at`]).
pub async fn listing_by_status_shows_exactly_the_keys_with_that_status<S: Store>(store: &S) {
    let (acct, first, _) = seeded(store, "pro").await;
    let now = now();
    let first = store.get_key(&acct.account_id, &first.key_id).await;
    let mut keys = vec![first.unwrap().unwrap()];
    let second = Duration::seconds(1);
    let day = Duration::days(1);
    // Expiry by date, and by a day of inactivity since creation (never used).
    let cases = [
        (None, None),
        (Some(now - second), None),
        (Some(now), None),
        (Some(now + second), None),
        (None, Some(now - day - second)),
        (None, Some(now - day)),
        (None, Some(now - day + second)),
    ];
    for stored in StoredStatus::ALL {
        for (expires_at, created_at) in cases {
            let (mut key, _) = new_key(&acct.account_id, &["read"]);
            key.expires_at = expires_at;
            if let Some(created_at) = created_at {
                key.created_at = created_at;
                key.expire_after_inactive_days = Some(1);
            }
            let mut stored_key = store.insert_key(&key, &audit()).await.unwrap();
            if stored == StoredStatus::Inactive {
                let patch = KeyPatch {
                    status: Some(stored),
                    ..KeyPatch::default()
                };
                let changed = store
                    .update_key(&acct.account_id, &key.key_id, 1, &patch, &audit())
                    .await
                    .unwrap();
                stored_key = changed.key.unwrap();
            }
            keys.push(stored_key);
        }
    }
    for status in KeyStatus::ALL {
        let query = KeyQuery {
            status: Some(status),
            limit: None,
            after: None,
            now,
        };
        let (listed, _) = store.list_keys(&acct.account_id, &query).await.unwrap();
        let listed: Vec<_> = listed.into_iter().map(|k| k.key_id).collect();
        let showing: Vec<_> = keys
            .iter()
            .filter(|k| k.status_at(now) == status)
            .map(|k| k.key_id.clone())
            .collect();
        assert_eq!(listed, showing, "{status:?} at {now}");
    }
}

/// An update applies only at the version read, and leaves its audit event.
pub async fn updates_need_the_current_version_and_are_audited<S: Store>(store: &S) {
    let (acct, key, secret) = seeded(store, "pro").await;
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
        policies: Some(keyward_core::KeyPolicies {
            rate_limit: Some(keyward_core::Limits::new(Some(3), None)),
            credits: Some(keyward_core::Credits {
                remaining: 5,
                refill: None,
                generation: before.version + 1,
                set_at: 1_700_000_000,
            }),
            allowed_ips: Some(
                keyward_core::AllowedIps::parse(&serde_json::json!(["10.0.0.0/8"])).unwrap(),
            ),
        }),
        expire_after_inactive_days: Some(Some(30)),
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
    assert_eq!(Some(&after.policies), patch.policies.as_ref());
    assert_eq!(after.expire_after_inactive_days, Some(30));
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
            &AuditChain::Account(acct.account_id.clone()),
            &PageQuery {
                limit: 10,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    let actions: Vec<_> = events
        .iter()
        .map(|e| (e.action, e.key_id.clone().unwrap()))
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

/// After a rotation the old secrets end at the grace end, or at once without grace.
pub async fn rotation_keeps_old_secrets_only_for_the_grace_period<S: Store>(store: &S) {
    let (acct, key, old) = seeded(store, "pro").await;
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

/// A revoked key and its secrets are gone; its audit events stay.
pub async fn revocation_removes_key_and_secrets_but_keeps_audit<S: Store>(store: &S) {
    let (acct, _, _) = seeded(store, "pro").await;
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
            &AuditChain::Account(acct.account_id.clone()),
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

/// A leaked key is revoked, or disabled, with a `key.leaked` event in place of the
/// change's own; a stale version is a conflict that changes nothing.
pub async fn a_leaked_key_is_revoked_or_disabled_with_its_leak_event<S: Store>(store: &S) {
    use keyward_core::leak::LeakResponse;
    let (acct, _, _) = seeded(store, "pro").await;
    let (revoked, revoked_secret) = new_key(&acct.account_id, &["read"]);
    let (disabled, disabled_secret) = new_key(&acct.account_id, &["read"]);
    let revoked_v = store.insert_key(&revoked, &audit()).await.unwrap().version;
    let disabled_v = store.insert_key(&disabled, &audit()).await.unwrap().version;
    let stale = store
        .leak_key(
            &acct.account_id,
            &disabled.key_id,
            disabled_v + 1,
            LeakResponse::Disable,
            &audit(),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");

    let changed = store
        .leak_key(
            &acct.account_id,
            &revoked.key_id,
            revoked_v,
            LeakResponse::Revoke,
            &audit(),
        )
        .await
        .unwrap();
    assert!(changed.key.is_none());
    assert_eq!(changed.stale_digests, vec![revoked_secret.digest()]);
    let gone = store
        .auth_by_digest(&revoked_secret.digest())
        .await
        .unwrap();
    assert!(gone.is_none());

    let changed = store
        .leak_key(
            &acct.account_id,
            &disabled.key_id,
            disabled_v,
            LeakResponse::Disable,
            &audit(),
        )
        .await
        .unwrap();
    let key = changed.key.unwrap();
    assert_eq!(key.status, keyward_core::StoredStatus::Inactive);
    assert_eq!(key.version, disabled_v + 1);
    assert_eq!(changed.stale_digests, vec![disabled_secret.digest()]);
    let found = store
        .auth_by_digest(&disabled_secret.digest())
        .await
        .unwrap();
    assert_eq!(
        found.unwrap().key.status,
        keyward_core::StoredStatus::Inactive
    );

    for key_id in [&revoked.key_id, &disabled.key_id] {
        let page = PageQuery {
            limit: 10,
            key_id: Some(key_id.clone()),
            ..PageQuery::default()
        };
        let events = store
            .audit_log(&AuditChain::Account(acct.account_id.clone()), &page)
            .await
            .unwrap();
        let actions: Vec<_> = events.iter().map(|e| e.action).collect();
        assert_eq!(actions, [AuditAction::Leaked, AuditAction::Created]);
    }
    let missing = store
        .leak_key(
            &acct.account_id,
            &revoked.key_id,
            revoked_v,
            LeakResponse::Revoke,
            &audit(),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

/// Imported keys authenticate and have their events; an import is all or nothing.
pub async fn imported_keys_authenticate_and_are_audited<S: Store>(store: &S) {
    let (acct, _, _) = seeded(store, "pro").await;
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
            &AuditChain::Account(acct.account_id.clone()),
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

/// A history row of `acct`'s `key` (a `GET` with a user agent and a fresh request id).
pub fn record(
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
pub async fn write_history<S: Store>(
    store: &S,
    requests: Vec<RequestRecord>,
) -> Vec<RequestRecord> {
    let batch = MeterBatch {
        requests,
        ..MeterBatch::default()
    };
    store.write_meter_batch(&batch).await.unwrap();
    batch.requests
}

/// A metering batch stores history rows exactly, adds usage and moves `last_used` forward only.
pub async fn meter_batches_record_history_usage_and_last_used<S: Store>(store: &S) {
    let (acct, key, _) = seeded(store, "pro").await;
    let t = now();
    let usage_key = UsageKey {
        account_id: acct.account_id.clone(),
        day: "2026-11-02".into(),
        endpoint: "GET /v1/api-keys".into(),
        key_id: key.key_id.clone(),
    };
    let plain = record(&acct.account_id, &key.key_id, "GET /v1/api-keys", 200, t);
    // Bytes that text encodings of a row must escape (JSON, and text formats such as CSV)
    // come back as they went in, and so does a missing user agent.
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
        // Two days of one month: one monthly counter, two daily ones.
        usage: vec![
            (usage_key.clone(), 3),
            (
                UsageKey {
                    day: "2026-11-05".into(),
                    ..usage_key.clone()
                },
                4,
            ),
        ],
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
        vec![("GET /v1/api-keys".to_owned(), key.key_id.clone(), 9)]
    );
    let by_day = store
        .usage_by_day(&acct.account_id, "2026-11")
        .await
        .unwrap();
    assert_eq!(
        by_day,
        vec![("2026-11-02".to_owned(), 5), ("2026-11-05".to_owned(), 4)]
    );
    assert!(
        store
            .usage_by_day(&acct.account_id, "2026-10")
            .await
            .unwrap()
            .is_empty()
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

/// History pages by cursor and status; retention prunes exactly the rows before the cutoff.
pub async fn history_pages_by_cursor_and_filters_and_prunes<S: Store>(store: &S) {
    let (acct, key, _) = seeded(store, "pro").await;
    let (other, other_key, _) = seeded(store, "pro").await;
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
/// without filters. (Each account's rows of a batch are stored as one run; this is where
/// a cursor falls inside a run.)
pub async fn interleaved_history_reads_back_whole_in_order_page_by_page<S: Store>(store: &S) {
    let (a, a_key, _) = seeded(store, "pro").await;
    let (b, b_key, _) = seeded(store, "pro").await;
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

/// One batch far larger than any piece a backend writes at a time (runs of 256 rows,
/// SQLite's statements of 64), as a flush that fell behind under load carries: every row
/// is stored once, in batch order.
pub async fn a_large_batch_reads_back_whole_in_order<S: Store>(store: &S) {
    const ROWS: i64 = 10_000;
    let (acct, key, _) = seeded(store, "pro").await;
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

/// One account's flush longer than a run (256 rows) reads back exactly (texts that JSON
/// must escape included), newest first, page by page, with and without a key filter, and
/// with cursors that fall inside runs.
pub async fn a_flush_longer_than_a_run_reads_back_whole<S: Store>(store: &S) {
    let (acct, even, _) = seeded(store, "pro").await;
    let odd = new_key(&acct.account_id, &["read"]).0.key_id;
    let odd_agents = [
        "say \"hi\"",
        "back\\slash",
        "tab\tand\u{1}",
        "ünïcode ✓",
        "</script>",
    ];
    let rows: Vec<RequestRecord> = (0..256 * 2 + 17)
        .map(|i| RequestRecord {
            user_agent: (i % 3 != 0).then(|| odd_agents[i % odd_agents.len()].to_owned()),
            latency_ms: u32::try_from(i).unwrap(),
            ..record(
                &acct.account_id,
                if i % 2 == 0 { &even.key_id } else { &odd },
                "GET /v1/usage",
                if i % 7 == 0 { 404 } else { 200 },
                OffsetDateTime::from_unix_timestamp(1_790_000_000 + i as i64).unwrap(),
            )
        })
        .collect();
    let rows = write_history(store, rows).await;
    for (key, limit) in [
        (None, 1),
        (None, 100),
        (Some(&odd), 7),
        (Some(&even.key_id), 300),
    ] {
        let mut read: Vec<(i64, RequestRecord)> = Vec::new();
        loop {
            let query = PageQuery {
                limit,
                before: read.last().map(|(id, _)| *id),
                key_id: key.cloned(),
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
        let expected: Vec<&RequestRecord> = rows
            .iter()
            .rev()
            .filter(|r| key.is_none_or(|k| r.key_id == *k))
            .collect();
        let read: Vec<&RequestRecord> = read.iter().map(|(_, r)| r).collect();
        assert_eq!(read, expected, "{key:?}, {limit} per page");
    }
    let not_found = store
        .request_history(
            &acct.account_id,
            &PageQuery {
                limit: 1000,
                status: Some(404),
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        not_found.len(),
        rows.iter().filter(|r| r.status == 404).count()
    );
}

/// Creations arriving together (which a backend may commit in one transaction) each get
/// their own answer: a key that can't be inserted fails alone, the others are stored.
pub async fn concurrent_creations_each_commit_and_fail_alone<S: Store>(store: &S) {
    let (acct, first, _) = seeded(store, "pro").await;
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
            &AuditChain::Account(acct.account_id.clone()),
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

/// An account with `keys` keys (its first one included), stored through `store`.
async fn seeded_with_keys<S: Store>(store: &S, keys: usize) -> (AccountId, Vec<KeyId>) {
    let (account, first, _) = seeded(store, "pro").await;
    let mut ids = vec![first.key_id];
    for _ in 1..keys {
        let (key, _) = new_key(&account.account_id, &["read"]);
        ids.push(store.insert_key(&key, &audit()).await.unwrap().key_id);
    }
    (account.account_id, ids)
}

/// Of eight changes of one key racing from two nodes at the same version, exactly one
/// passes the version check; the others are `Conflict`.
pub async fn only_one_of_two_nodes_passes_the_version_check<S: Store>(node_a: &S, node_b: &S) {
    let (account_id, keys) = seeded_with_keys(node_a, 1).await;
    // Several rounds: a lost race shows up only when two checks interleave.
    for round in 0..6 {
        let version = node_a
            .get_key(&account_id, &keys[0])
            .await
            .unwrap()
            .unwrap()
            .version;
        let status = if round % 2 == 0 {
            StoredStatus::Inactive
        } else {
            StoredStatus::Active
        };
        let patch = KeyPatch {
            status: Some(status),
            ..KeyPatch::default()
        };
        let context = audit();
        let results = join_all((0..8).map(|i| {
            let store = if i % 2 == 0 { node_a } else { node_b };
            store.update_key(&account_id, &keys[0], version, &patch, &context)
        }))
        .await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((won, conflicts), (1, 7), "round {round}: {results:?}");
        let after = node_b
            .get_key(&account_id, &keys[0])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.version, version + 1, "round {round}");
    }
}

/// Metering batches flushed at once from two nodes, sharing keys and counters (half of
/// them in the wrong order), lose no count and leave each key's latest use.
pub async fn concurrent_meter_batches_from_two_nodes_lose_no_counts<S: Store>(
    node_a: &S,
    node_b: &S,
) {
    let (account_id, keys) = seeded_with_keys(node_a, 16).await;
    let base = now();
    let endpoints = [
        "DELETE /v1/api-keys/{key_id}",
        "GET /v1/api-keys",
        "GET /v1/usage",
        "PATCH /v1/api-keys/{key_id}",
        "POST /v1/api-keys",
    ];
    const BATCHES: u64 = 48;
    let mut batches = Vec::new();
    for i in 0..BATCHES {
        let mut usage: Vec<(UsageKey, u64)> = Vec::new();
        for key_id in &keys {
            for endpoint in endpoints {
                let usage_key = UsageKey {
                    account_id: account_id.clone(),
                    day: "2026-11-02".into(),
                    endpoint: endpoint.into(),
                    key_id: key_id.clone(),
                };
                usage.push((usage_key, i + 1));
            }
        }
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        let at = base + Duration::seconds(i64::try_from(i).unwrap());
        let mut last_used: Vec<_> = keys
            .iter()
            .map(|k| (account_id.clone(), k.clone(), at))
            .collect();
        // Odd batches break the sorting rule on purpose: the store's own ordering
        // must still keep writers from deadlocking.
        if i % 2 == 1 {
            usage.reverse();
            last_used.reverse();
        }
        batches.push(MeterBatch {
            requests: Vec::new(),
            last_used,
            usage,
        });
    }
    let writes = batches.iter().enumerate().map(|(i, batch)| {
        let store = if i % 2 == 0 { node_a } else { node_b };
        store.write_meter_batch(batch)
    });
    for result in join_all(writes).await {
        result.unwrap();
    }
    let expected: u64 = (1..=BATCHES).sum();
    let usage = node_a.usage(&account_id, "2026-11").await.unwrap();
    assert_eq!(usage.len(), keys.len() * endpoints.len());
    assert!(usage.iter().all(|(_, _, n)| *n == expected), "{usage:?}");
    let per_day = expected * u64::try_from(keys.len() * endpoints.len()).unwrap();
    let by_day = node_b.usage_by_day(&account_id, "2026-11").await.unwrap();
    assert_eq!(by_day, vec![("2026-11-02".to_owned(), per_day)]);
    let latest = base + Duration::seconds(i64::try_from(BATCHES - 1).unwrap());
    for key_id in &keys {
        let key = node_b.get_key(&account_id, key_id).await.unwrap().unwrap();
        assert_eq!(key.last_used, Some(latest));
    }
}

/// Two nodes flushing history at once each take their own ids: every row is stored
/// once, each account's history reads back whole and newest first, and each flush's
/// rows of one account keep consecutive ids.
pub async fn concurrent_history_flushes_from_two_nodes_take_distinct_ids<S: Store>(
    node_a: &S,
    node_b: &S,
) {
    // History has no foreign keys: accounts and keys need not exist for it.
    let accounts: Vec<(AccountId, KeyId)> = (0..3)
        .map(|_| {
            (
                AccountId::from_ulid(next_ulid()),
                KeyId::from_ulid(next_ulid()),
            )
        })
        .collect();
    let t = now();
    const BATCHES: usize = 32;
    const ROWS: usize = 60;
    let batches: Vec<MeterBatch> = (0..BATCHES)
        .map(|batch_no| {
            // Accounts interleaved within the batch, as requests arrive.
            let requests = (0..ROWS)
                .map(|i| {
                    let (account_id, key_id) = &accounts[i % accounts.len()];
                    RequestRecord {
                        request_id: RequestId::parse(format!("req_{batch_no}_{i}").as_bytes())
                            .unwrap(),
                        user_agent: None,
                        latency_ms: 1,
                        ..record(account_id, key_id, "GET /v1/usage", 200, t)
                    }
                })
                .collect();
            MeterBatch {
                requests,
                ..MeterBatch::default()
            }
        })
        .collect();
    let writes = batches.iter().enumerate().map(|(i, batch)| {
        let store = if i % 2 == 0 { node_a } else { node_b };
        store.write_meter_batch(batch)
    });
    for result in join_all(writes).await {
        result.unwrap();
    }
    let mut all_ids = Vec::new();
    for (account_id, _) in &accounts {
        let page = PageQuery {
            limit: 1_000,
            ..PageQuery::default()
        };
        let rows = node_b.request_history(account_id, &page).await.unwrap();
        assert_eq!(rows.len(), BATCHES * ROWS / accounts.len());
        assert!(rows.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
        // A flush's rows of this account: consecutive ids, in the order recorded.
        let mut by_batch: BTreeMap<&str, Vec<(i64, usize)>> = BTreeMap::new();
        for (id, row) in &rows {
            let (batch_no, i) = row.request_id.as_str()[4..].split_once('_').unwrap();
            by_batch
                .entry(batch_no)
                .or_default()
                .push((*id, i.parse().unwrap()));
        }
        assert_eq!(by_batch.len(), BATCHES);
        for mut flush in by_batch.into_values() {
            flush.sort_unstable();
            assert!(
                flush
                    .windows(2)
                    .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1),
                "{flush:?}"
            );
        }
        all_ids.extend(rows.iter().map(|(id, _)| *id));
    }
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), BATCHES * ROWS);
}

/// Two nodes creating and updating one account's keys at the same time hash its events one
/// after the other: the chain verifies, every event in it.
pub async fn two_nodes_writing_one_account_together_keep_its_audit_chain_whole<S: Store>(
    store: &S,
    other: &S,
) {
    let (acct, _, _) = seeded(store, "pro").await;
    let keys: Vec<NewKey> = (0..40)
        .map(|_| new_key(&acct.account_id, &["read"]).0)
        .collect();
    let context = audit();
    let created = join_all(keys.iter().enumerate().map(|(i, key)| {
        let node = if i % 2 == 0 { store } else { other };
        node.insert_key(key, &context)
    }))
    .await;
    let patch = KeyPatch {
        name: Some(None),
        ..KeyPatch::default()
    };
    let updated = join_all(created.iter().enumerate().map(|(i, key)| {
        let node = if i % 2 == 0 { other } else { store };
        let key = key.as_ref().unwrap();
        node.update_key(&acct.account_id, &key.key_id, key.version, &patch, &context)
    }))
    .await;
    assert!(updated.iter().all(Result::is_ok), "{updated:?}");

    let chain = crate::AuditChain::Account(acct.account_id.clone());
    let report = crate::verify_chain(store, &chain).await.unwrap();
    assert_eq!(
        report,
        Ok(crate::ChainReport {
            chained: 81,
            unchained: 0
        })
    );
}

/// The audit context of a change an operator made through the API.
fn by_operator(request_id: &str) -> AuditContext {
    AuditContext {
        operator: Some(crate::OperatorActor::Api(
            keyward_core::OperatorId::from_trusted("op_01JD0000000000000000000000".into()),
        )),
        request_id: request_id.into(),
        ..audit()
    }
}

/// The actions of a chain, oldest first.
async fn actions_of<S: Store>(store: &S, chain: &AuditChain) -> Vec<(&'static str, String)> {
    let query = PageQuery {
        limit: 1000,
        ..PageQuery::default()
    };
    let events = store.audit_log(chain, &query).await.unwrap();
    events
        .iter()
        .rev()
        .map(|e| (e.action.as_str(), e.request_id.clone()))
        .collect()
}

/// Deleting an account revokes its keys and deletes its history, usage and subscriptions
/// and the account; its log stays, chained, ending with `account.deleted`; a second
/// deletion finds nothing; another account is untouched.
pub async fn an_account_is_deleted_with_its_keys_history_and_usage_but_not_its_log<S: Store>(
    store: &S,
) {
    let (acct, key, secret) = seeded(store, "pro").await;
    let (other, other_key, other_secret) = seeded(store, "pro").await;
    let t = now();
    let month = month_of(t);
    let mut batch = MeterBatch::default();
    for (a, k) in [(&acct, &key), (&other, &other_key)] {
        batch
            .requests
            .push(record(&a.account_id, &k.key_id, "GET /v1/api-keys", 200, t));
        batch.usage.push((
            UsageKey {
                account_id: a.account_id.clone(),
                day: format!("{month}-01"),
                endpoint: "GET /v1/api-keys".into(),
                key_id: k.key_id.clone(),
            },
            1,
        ));
    }
    store.write_meter_batch(&batch).await.unwrap();

    let digests = store
        .delete_account(&acct.account_id, &by_operator("req_delete"))
        .await
        .unwrap();

    assert_eq!(digests, vec![secret.digest()]);
    assert!(store.account(&acct.account_id).await.unwrap().is_none());
    assert!(
        store
            .auth_by_digest(&secret.digest())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.any_key(&key.key_id).await.unwrap().is_none());
    let page = PageQuery {
        limit: 100,
        ..PageQuery::default()
    };
    assert!(
        store
            .request_history(&acct.account_id, &page)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .usage(&acct.account_id, &month)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .usage_by_day(&acct.account_id, &month)
            .await
            .unwrap()
            .is_empty()
    );
    let chain = AuditChain::Account(acct.account_id.clone());
    assert_eq!(
        actions_of(store, &chain).await,
        [
            ("key.created", "req_test".to_owned()),
            ("account.deleted", "req_delete".to_owned())
        ]
    );
    assert!(crate::verify_chain(store, &chain).await.unwrap().is_ok());
    assert!(matches!(
        store
            .delete_account(&acct.account_id, &by_operator("req_again"))
            .await,
        Err(StoreError::NotFound)
    ));
    // The other account keeps everything.
    assert!(
        store
            .auth_by_digest(&other_secret.digest())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .request_history(&other.account_id, &page)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.usage(&other.account_id, &month).await.unwrap().len(),
        1
    );
    assert!(
        crate::verify_chain(store, &AuditChain::Operator)
            .await
            .unwrap()
            .is_ok()
    );
}

/// `YYYY-MM` of a time (as the metering writer names months).
fn month_of(t: OffsetDateTime) -> String {
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

/// Operators' changes are chained in the operator log (actor: the operator's id; the
/// account in `changes`) and, for an account's, in its log too (actor `null`); a status
/// set to the one the account has is no event; every chain verifies.
pub async fn operator_changes_are_chained_in_the_operator_log_and_the_accounts<S: Store>(
    store: &S,
) {
    let acct = account("free");
    let (key, _) = new_key(&acct.account_id, &["read", "write", "admin"]);
    store
        .create_account(&acct, &key, &by_operator("req_create"))
        .await
        .unwrap();
    let suspend = crate::AccountPatch {
        status: Some(AccountStatus::Suspended),
        name: Some("renamed".into()),
        ..crate::AccountPatch::default()
    };
    store
        .update_account(&acct.account_id, &suspend, &by_operator("req_suspend"))
        .await
        .unwrap();
    let again = crate::AccountPatch {
        status: Some(AccountStatus::Suspended),
        ..crate::AccountPatch::default()
    };
    store
        .update_account(&acct.account_id, &again, &by_operator("req_again"))
        .await
        .unwrap();
    let gold = Plan {
        name: PlanName::parse("gold").unwrap(),
        limits: Limits::new(Some(5), None),
    };
    store
        .put_plan(&gold, &by_operator("req_plan"))
        .await
        .unwrap();
    store
        .delete_plan(&gold.name, &by_operator("req_plan_delete"))
        .await
        .unwrap();

    let operator_log = actions_of(store, &AuditChain::Operator).await;
    let own = actions_of(store, &AuditChain::Account(acct.account_id.clone())).await;

    assert_eq!(
        operator_log,
        [
            ("account.created", "req_create".to_owned()),
            ("account.suspended", "req_suspend".to_owned()),
            ("account.updated", "req_suspend".to_owned()),
            ("plan.updated", "req_plan".to_owned()),
            ("plan.deleted", "req_plan_delete".to_owned()),
        ]
    );
    assert_eq!(
        own,
        [
            ("key.created", "req_create".to_owned()),
            ("account.suspended", "req_suspend".to_owned()),
            ("account.updated", "req_suspend".to_owned()),
        ]
    );
    let query = PageQuery {
        limit: 100,
        ..PageQuery::default()
    };
    let events = store
        .audit_log(&AuditChain::Operator, &query)
        .await
        .unwrap();
    for event in &events {
        assert_eq!(
            event.actor_key_id.as_deref(),
            Some("op_01JD0000000000000000000000")
        );
    }
    let created = events.last().unwrap();
    assert_eq!(created.changes["account_id"], acct.account_id.as_str());
    assert_eq!(created.changes["first_key_id"], key.key_id.as_str());
    let own_events = store
        .audit_log(&AuditChain::Account(acct.account_id.clone()), &query)
        .await
        .unwrap();
    assert!(own_events.iter().all(|e| e.actor_key_id.is_none()));
    let chains = store.audit_chains().await.unwrap();
    assert!(chains.contains(&AuditChain::Operator), "{chains:?}");
    for chain in &chains {
        let report = crate::verify_chain(store, chain).await.unwrap();
        assert!(report.is_ok(), "{chain}: {report:?}");
    }
}
