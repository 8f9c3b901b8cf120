//! Keys: listing with its status filter, creation, and the steps of a change (update,
//! rotate, revoke, a leak's revoke or disable), each in one transaction with its audit
//! event.

use keyward_core::{AccountId, KeyDigest, KeyId, KeyName, KeyStatus, StoredStatus, timefmt};
use keyward_store::{
    ApiKey, AuditAction, AuditContext, Changed, KeyPatch, KeyQuery, NewKey, NewSecret, StoreError,
    StoreResult,
};
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};
use time::OffsetDateTime;

use super::rows::{self, KEY_COLUMNS, scopes_json, ts};
use super::sql::{Get, PushArg, Statement, Tx, on, push_rows};
use super::{Backend, Dialect, audit, commit};

/// Keys per insert statement of a batch of creations: 11 parameters each keeps a statement
/// far below SQLite's limit of 32,766, however many keys queued up.
const CREATES_PER_STATEMENT: usize = 512;

/// One key of an account.
pub(crate) async fn get<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    account_id: &AccountId,
    key_id: &KeyId,
) -> StoreResult<Option<ApiKey>> {
    let sql =
        format!("select {KEY_COLUMNS} from api_key k where k.key_id = $1 and k.account_id = $2");
    let query = sqlx::query(AssertSqlSafe(sql)).arg(key_id.as_str());
    let row = query.arg(account_id.as_str()).optional(on).await?;
    row.as_ref().map(rows::key::<D>).transpose()
}

/// A page of an account's keys, oldest first, and whether more follow.
pub(crate) async fn list<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    account_id: &AccountId,
    query: &KeyQuery,
) -> StoreResult<(Vec<ApiKey>, bool)> {
    let mut qb = QueryBuilder::<D>::new(format!(
        "select {KEY_COLUMNS} from api_key k where k.account_id = "
    ));
    qb.push_arg(account_id.as_str());
    if let Some(status) = query.status {
        qb.push(" and ");
        push_showing(&mut qb, status, query.now);
    }
    if let Some(after) = &query.after {
        qb.push(" and k.key_id > ").push_arg(after.as_str());
    }
    qb.push(" order by k.key_id");
    if let Some(limit) = query.limit {
        // One more than asked: its presence says whether more follow.
        qb.push(" limit ").push_arg(i64::from(limit) + 1);
    }
    let rows = qb.build().all(on).await?;
    let mut keys: Vec<ApiKey> = rows.iter().map(rows::key::<D>).collect::<Result<_, _>>()?;
    let more = query.limit.is_some_and(|limit| keys.len() > limit as usize);
    if let Some(limit) = query.limit {
        keys.truncate(limit as usize);
    }
    Ok((keys, more))
}

/// Pushes the condition that key `k` shows `status` at `now`, built from the status rule
/// itself ([`KeyStatus::of`] of every stored status, expired or not) and the SQL form of
/// [`keyward_core::has_expired`]: the one place SQL restates either.
fn push_showing<D: Dialect>(qb: &mut QueryBuilder<D>, status: KeyStatus, now: OffsetDateTime) {
    qb.push("(false");
    for stored in StoredStatus::ALL {
        let expiry = match [false, true].map(|expired| KeyStatus::of(stored, expired) == status) {
            [false, false] => continue,
            [true, true] => "",
            [true, false] => " and not ",
            [false, true] => " and ",
        };
        qb.push(" or (k.status = ")
            .push_arg(stored.as_str())
            .push(expiry);
        if !expiry.is_empty() {
            // has_expired of keyward_core::policy::expiry: an expiry that is set and not
            // after now, or an allowed inactivity (from the last use, else the creation)
            // that has ended.
            qb.push("((k.expires_at is not null and k.expires_at <= ")
                .push_arg(ts(now))
                .push(") or (k.expire_after_inactive_days is not null and ")
                .push("coalesce(k.last_used, k.created_at) + k.expire_after_inactive_days * 86400 <= ")
                .push_arg(ts(now))
                .push("))");
        }
        qb.push(")");
    }
    qb.push(")");
}

/// Inserts new keys (`last_used` and `version` take their defaults), their secrets and
/// their `key.created` events, one statement per table for up to [`CREATES_PER_STATEMENT`]
/// keys: on SQLite each statement is a round trip to the writer connection's thread, and
/// those, not the fsync, bound creation.
pub(crate) async fn insert_new_keys<D: Dialect>(
    tx: &mut Tx<D>,
    keys: &[(&NewKey, &AuditContext)],
) -> StoreResult<()> {
    for chunk in keys.chunks(CREATES_PER_STATEMENT) {
        let mut insert = QueryBuilder::<D>::new(
            "insert into api_key (key_id, account_id, name, scopes, metadata, status, \
             expires_at, created_at, hint, policies, expire_after_inactive_days) values ",
        );
        push_rows(
            &mut insert,
            chunk.iter().map(|(key, _)| {
                [
                    key.key_id.as_str().into(),
                    key.account_id.as_str().into(),
                    key.name.as_ref().map(KeyName::as_str).into(),
                    scopes_json(&key.scopes).into(),
                    key.metadata.to_json().into(),
                    StoredStatus::Active.as_str().into(),
                    key.expires_at.map(ts).into(),
                    ts(key.created_at).into(),
                    key.secret.hint.as_str().into(),
                    key.policies.to_json().into(),
                    key.expire_after_inactive_days.map(i64::from).into(),
                ]
            }),
        );
        insert.build().run(on(tx)).await?;
        let mut insert =
            QueryBuilder::<D>::new("insert into key_secret (digest, key_id, created_at) values ");
        push_rows(
            &mut insert,
            chunk.iter().map(|(key, _)| {
                [
                    (&key.secret.digest.0[..]).into(),
                    key.key_id.as_str().into(),
                    ts(key.created_at).into(),
                ]
            }),
        );
        insert.build().run(on(tx)).await?;
        let events = chunk
            .iter()
            .map(|(key, audit)| (&key.account_id, Some(&key.key_id), *audit));
        audit::insert_events(tx, AuditAction::Created, events).await?;
    }
    Ok(())
}

/// A key as [`insert_new_keys`] stores it, without reading it back.
pub(crate) fn stored_key(key: &NewKey) -> ApiKey {
    ApiKey {
        key_id: key.key_id.clone(),
        account_id: key.account_id.clone(),
        name: key.name.clone(),
        scopes: key.scopes.clone(),
        metadata: key.metadata.clone(),
        status: StoredStatus::Active,
        // Stored as whole seconds.
        expires_at: key.expires_at.map(timefmt::truncate),
        created_at: timefmt::truncate(key.created_at),
        last_used: None,
        hint: key.secret.hint.clone(),
        version: 1,
        policies: key.policies.clone(),
        expire_after_inactive_days: key.expire_after_inactive_days,
    }
}

/// Starts a key change: reads (and, where the dialect needs it, locks) the key in a new
/// transaction, checks its version and returns its digests, which the backend is told of.
pub(crate) async fn begin_change<B: Backend>(
    backend: &B,
    account_id: &AccountId,
    key_id: &KeyId,
    expected_version: i64,
) -> StoreResult<(Tx<B::Db>, Vec<KeyDigest>)> {
    let mut tx = backend.begin().await?;
    let (id, lock) = (key_id.as_str(), B::Db::LOCK_FOR_CHANGE);
    let sql = format!("select version from api_key where key_id = $1 and account_id = $2{lock}");
    let query = sqlx::query(AssertSqlSafe(sql))
        .arg(id)
        .arg(account_id.as_str());
    let row = query.optional(on(&mut tx)).await?;
    let version: i64 = B::Db::get(&row.ok_or(StoreError::NotFound)?, "version")?;
    if version != expected_version {
        return Err(StoreError::Conflict("the key changed concurrently; retry"));
    }
    let sql = "select digest from key_secret where key_id = $1 order by digest";
    let rows = sqlx::query(sql).arg(id).all(on(&mut tx)).await?;
    let digests: Vec<KeyDigest> = rows
        .iter()
        .map(rows::digest::<B::Db>)
        .collect::<Result<_, _>>()?;
    B::key_changed(&mut tx, account_id, &digests).await?;
    Ok((tx, digests))
}

/// Ends a key change: writes its audit event, reads the key back (unless the change
/// deleted it: `gone`) and commits.
pub(crate) async fn finish_change<D: Dialect>(
    mut tx: Tx<D>,
    account_id: &AccountId,
    key_id: &KeyId,
    action: AuditAction,
    audit: &AuditContext,
    stale_digests: Vec<KeyDigest>,
    gone: bool,
) -> StoreResult<Changed> {
    audit::insert_events(
        &mut tx,
        action,
        [(account_id, Some(key_id), audit)].into_iter(),
    )
    .await?;
    let key = if gone {
        None
    } else {
        let key = get(on(&mut tx), account_id, key_id).await?;
        Some(key.ok_or(StoreError::NotFound)?)
    };
    commit(tx).await?;
    Ok(Changed { key, stale_digests })
}

/// Applies `patch` to the key and bumps its version.
pub(crate) async fn patch<D: Dialect>(
    tx: &mut Tx<D>,
    key_id: &KeyId,
    patch: &KeyPatch,
) -> StoreResult<()> {
    let mut qb = QueryBuilder::<D>::new("update api_key set version = version + 1");
    if let Some(name) = &patch.name {
        let name = name.as_ref().map(KeyName::as_str);
        qb.push(", name = ").push_arg(name);
    }
    if let Some(scopes) = &patch.scopes {
        qb.push(", scopes = ").push_arg(scopes_json(scopes));
    }
    if let Some(status) = patch.status {
        qb.push(", status = ").push_arg(status.as_str());
    }
    if let Some(expires_at) = patch.expires_at {
        qb.push(", expires_at = ").push_arg(expires_at.map(ts));
    }
    if let Some(metadata) = &patch.metadata {
        qb.push(", metadata = ").push_arg(metadata.to_json());
    }
    if let Some(policies) = &patch.policies {
        qb.push(", policies = ").push_arg(policies.to_json());
    }
    if let Some(days) = patch.expire_after_inactive_days {
        qb.push(", expire_after_inactive_days = ")
            .push_arg(days.map(i64::from));
    }
    qb.push(" where key_id = ").push_arg(key_id.as_str());
    qb.build().run(on(tx)).await
}

/// Gives the key a new secret; its older secrets end at `old_secrets_end`.
pub(crate) async fn rotate<D: Dialect>(
    tx: &mut Tx<D>,
    key_id: &KeyId,
    secret: &NewSecret,
    old_secrets_end: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let (id, end, now) = (key_id.as_str(), ts(old_secrets_end), ts(now));
    // Older secrets end at the earlier of their own end and this rotation's; those whose
    // end has come (all of them, without grace) are gone for good.
    let shorten = "update key_secret set expires_at = \
                   case when expires_at < $2 then expires_at else $2 end where key_id = $1";
    sqlx::query(shorten).arg(id).arg(end).run(on(tx)).await?;
    let ended = "delete from key_secret where key_id = $1 and expires_at <= $2";
    sqlx::query(ended).arg(id).arg(now).run(on(tx)).await?;
    let add = "insert into key_secret (digest, key_id, created_at) values ($1, $2, $3)";
    let digest = &secret.digest.0[..];
    sqlx::query(add)
        .arg(digest)
        .arg(id)
        .arg(now)
        .run(on(tx))
        .await?;
    let hint = "update api_key set hint = $1, version = version + 1 where key_id = $2";
    let hint = sqlx::query(hint).arg(secret.hint.as_str()).arg(id);
    hint.run(on(tx)).await
}
