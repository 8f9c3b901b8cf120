//! The store both backends share: [`SqlStore`] implements [`Store`] once, over a
//! [`Backend`] (its connections, and what it does beyond SQL) whose database has a
//! [`Dialect`] (the SQL that differs, and its error codes).

mod audit;
mod creates;
mod history;
mod keys;
mod rows;
mod sql;
mod webhooks;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use keyward_core::leak::LeakResponse;
use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyDigest, KeyId, Limits, OperatorId, PlanName,
    StoredStatus, WebhookId,
};
use keyward_store::{
    Account, AccountPatch, AccountQuery, AccountSummary, ApiKey, AuditAction, AuditChain,
    AuditContext, AuditEvent, AuthRecord, Changed, Delivery, DeliveryAttempt, FinishedAttempt,
    KeyPatch, KeyQuery, MeterBatch, NewKey, NewSecret, Operator, OutboxEvent, PageQuery, Plan,
    RequestRecord, Store, StoreError, StoreResult, Webhook,
};
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};
use time::OffsetDateTime;
use tokio::sync::Notify;

pub(crate) use creates::CreateQueue;
#[cfg(test)]
pub(crate) use history::SPAN_TABLES;
use keys::insert_new_keys;
pub(crate) use keys::stored_key;
pub(crate) use rows::ts;
pub(crate) use sql::{Get, Sql, Statement, Tx, on};

use rows::{ACCOUNT_SELECT, KEY_COLUMNS};
use sql::PushArg;

/// What differs in the SQL of the two databases, and how each reports a busy or absent
/// server.
pub(crate) trait Dialect: Sql {
    /// Appended to the read that starts a key change, to hold the key's row until commit:
    /// without the lock, two nodes could both pass the version check. Empty where one
    /// writer already runs changes one at a time.
    const LOCK_FOR_CHANGE: &'static str;
    /// Run first by a bootstrap, so that concurrent bootstraps queue and the second sees
    /// the first's account; `None` where the write transaction's start does that.
    const LOCK_FOR_BOOTSTRAP: Option<&'static str>;
    /// Answers `locked`: whether this node prunes history now (`None`: always).
    const LOCK_FOR_PRUNING: Option<&'static str>;
    /// Appended to the read that picks due webhook deliveries to claim: nodes claiming
    /// together skip each other's rows instead of waiting for them. Empty where one writer
    /// already runs claims one at a time.
    const CLAIM_LOCK: &'static str;
    /// How a history read joins a span to its run's row.
    const SPAN_TO_RUN: &'static str;

    /// Whether a database error code means the store is unavailable for now, so that
    /// retrying later may work.
    fn is_unavailable_code(code: &str) -> bool;
}

/// A store's connections, and what it does beyond the shared SQL. [`SqlStore`] holds one
/// and does the rest.
pub(crate) trait Backend: Clone + Debug + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Dialect;

    /// The connections reads go to.
    fn reader(&self) -> impl Executor<'_, Database = Self::Db>;
    /// What readiness checks beyond a write that commits ([`Store::check_ready`]): on
    /// SQLite, the file and the space it can grow into.
    fn check_storage(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Starts a write transaction of the database ([`Backend::begin`] wraps it).
    fn begin_raw(
        &self,
    ) -> impl Future<Output = StoreResult<sqlx::Transaction<'static, Self::Db>>> + Send;
    /// Told after the commit of a transaction that enqueued webhook deliveries
    /// ([`SqlStore::deliveries_enqueued`]).
    fn outbox(&self) -> &Arc<Notify>;
    /// Starts a write transaction, which tells [`Backend::outbox`] when it commits
    /// having enqueued deliveries.
    fn begin(&self) -> impl Future<Output = StoreResult<Tx<Self::Db>>> + Send {
        async { Ok(Tx::new(self.begin_raw().await?, self.outbox())) }
    }
    /// Called in a key change's transaction once the key's row is locked, with the
    /// digests it had: other nodes must drop them from their caches.
    fn key_changed(
        tx: &mut Tx<Self::Db>,
        account_id: &AccountId,
        digests: &[KeyDigest],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The queue of key creations waiting for a commit ([`Store::insert_key`], grouped
    /// by [`creates::insert_key`]).
    fn creates(&self) -> &CreateQueue;
    /// [`Store::write_meter_batch`], for a batch that is not empty.
    fn write_meter_batch(&self, batch: &MeterBatch)
    -> impl Future<Output = StoreResult<()>> + Send;
}

/// keyward's storage on a SQL database: [`crate::SqliteStore`] or [`crate::PgStore`].
/// Cloning is cheap: clones share the connections.
#[derive(Debug, Clone)]
pub struct SqlStore<B>(pub(crate) B);

#[expect(
    private_bounds,
    reason = "`Backend` is the crate's own; its stores are public"
)]
impl<B: Backend> SqlStore<B> {
    /// Told (one stored permit, [`Notify::notify_one`]) after each commit of this store
    /// that enqueued webhook deliveries, so that this process's dispatcher sends them at
    /// once instead of at its next poll. Other nodes' deliveries are not announced here.
    #[must_use]
    pub fn deliveries_enqueued(&self) -> Arc<Notify> {
        self.0.outbox().clone()
    }
}

/// Maps a database error to what callers can act on.
pub(crate) fn map_err<D: Dialect>(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("unique constraint")
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict("a row it refers to does not exist")
        }
        _ if is_unavailable::<D>(&e) => StoreError::Unavailable(Box::new(e)),
        _ => StoreError::Other(Box::new(e)),
    }
}

/// Whether `e` says the database can't be reached or is too busy for now.
///
/// A protocol error is a conversation with the server that broke off, not a fault of the
/// statement: a connection closed before the server answered PostgreSQL's TLS request (a
/// proxy or load balancer in front of a stopped server accepts, then closes) is one.
pub(crate) fn is_unavailable<D: Dialect>(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| D::is_unavailable_code(&c)),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Commits `tx`; then, if it enqueued webhook deliveries, wakes the dispatcher.
pub(crate) async fn commit<D: Dialect>(tx: Tx<D>) -> StoreResult<()> {
    let (tx, enqueued) = tx.into_parts();
    tx.commit().await.map_err(map_err::<D>)?;
    if let Some(outbox) = enqueued {
        outbox.notify_one();
    }
    Ok(())
}

/// Inserts new keys with their events in one transaction of their own, durable when it
/// commits, which other nodes are told of (with no digests: their cached listings of the
/// accounts must show the new keys).
pub(crate) async fn insert_keys<B: Backend>(
    backend: &B,
    keys: &[(&NewKey, &AuditContext)],
) -> StoreResult<()> {
    let mut tx = backend.begin().await?;
    insert_new_keys(&mut tx, keys).await?;
    let mut accounts: Vec<&AccountId> = keys.iter().map(|(key, _)| &key.account_id).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for account_id in accounts {
        B::key_changed(&mut tx, account_id, &[]).await?;
    }
    commit(tx).await
}

/// Inserts an account with its `account.created` event (operator log), its first key and
/// that key's `key.created` event.
async fn insert_account<D: Dialect>(
    tx: &mut Tx<D>,
    account: &Account,
    first_key: &NewKey,
    audit: &AuditContext,
) -> StoreResult<()> {
    ensure_plan(tx, &account.plan).await?;
    let overrides = account.overrides;
    sqlx::query(
        "insert into account (account_id, name, plan, per_minute, per_day, per_month, \
         status, external_id, metadata, created_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .arg(account.account_id.as_str())
    .arg(account.name.as_str())
    .arg(account.plan.as_str())
    .arg(overrides.per_minute.map(i64::from))
    .arg(overrides.per_day.map(i64::from))
    .arg(overrides.per_month.map(i64::from))
    .arg(account.status.as_str())
    .arg(account.external_id.as_ref().map(ExternalId::as_str))
    .arg(account.metadata.to_json())
    .arg(ts(account.created_at))
    .run(on(tx))
    .await?;
    let created = AuditContext {
        changes: serde_json::json!({
            "name": account.name,
            "plan": account.plan.as_str(),
            "external_id": account.external_id.as_ref().map(ExternalId::as_str),
            "metadata": account.metadata.as_map(),
            "first_key_id": first_key.key_id.as_str(),
        }),
        ..audit.clone()
    };
    audit::insert_operator_event(
        tx,
        AuditAction::AccountCreated,
        Some(&account.account_id),
        &created,
    )
    .await?;
    // The first key is part of the account's creation: its `key.created` goes to the
    // account's log, and the operator log has it in `account.created`.
    let first = AuditContext {
        operator: None,
        ..audit.clone()
    };
    insert_new_keys(tx, &[(first_key, &first)]).await
}

/// `Conflict` unless the plan table holds `plan`.
async fn ensure_plan<D: Dialect>(tx: &mut Tx<D>, plan: &PlanName) -> StoreResult<()> {
    let query = sqlx::query("select name from plan where name = $1").arg(plan.as_str());
    match query.optional(on(tx)).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::Conflict("unknown plan")),
    }
}

/// Announces a change of every key of an account (its limits or status changed) to
/// every node, inside the change's transaction; returns the digests of their secrets.
async fn forget_account<B: Backend>(
    tx: &mut Tx<B::Db>,
    account_id: &AccountId,
) -> StoreResult<Vec<KeyDigest>> {
    let rows = sqlx::query(
        "select s.digest from key_secret s join api_key k on k.key_id = s.key_id \
         where k.account_id = $1",
    )
    .arg(account_id.as_str())
    .all(on(tx))
    .await?;
    let digests = rows
        .iter()
        .map(rows::digest::<B::Db>)
        .collect::<StoreResult<Vec<_>>>()?;
    B::key_changed(tx, account_id, &digests).await?;
    Ok(digests)
}

/// The events of an account's change (API.md: `account.suspended` or `account.resumed`
/// for a status it did not have, `account.updated` for the other fields), in its log and
/// the operator log.
async fn account_events<D: Dialect>(
    tx: &mut Tx<D>,
    account_id: &AccountId,
    patch: &AccountPatch,
    changed_status: Option<AccountStatus>,
    audit: &AuditContext,
) -> StoreResult<()> {
    if let Some(status) = changed_status {
        let action = match status {
            AccountStatus::Suspended => AuditAction::AccountSuspended,
            AccountStatus::Active => AuditAction::AccountResumed,
        };
        let context = AuditContext {
            changes: serde_json::json!({ "status": status.as_str() }),
            ..audit.clone()
        };
        audit::insert_operator_event(tx, action, Some(account_id), &context).await?;
    }
    let others = AccountPatch {
        status: None,
        ..patch.clone()
    };
    let changes = others.changes();
    if changes.as_object().is_some_and(|c| !c.is_empty()) {
        let context = AuditContext {
            changes,
            ..audit.clone()
        };
        audit::insert_operator_event(tx, AuditAction::AccountUpdated, Some(account_id), &context)
            .await?;
    }
    Ok(())
}

/// Deletes an account's keys (and their secrets), request history, usage counters,
/// subscriptions with their deliveries, and its row; its audit events and chain stay.
/// Returns the ids of the keys it revoked.
async fn delete_account_rows<D: Dialect>(
    tx: &mut Tx<D>,
    account_id: &AccountId,
) -> StoreResult<Vec<String>> {
    let keys = sqlx::query("delete from api_key where account_id = $1 returning key_id")
        .arg(account_id.as_str())
        .all(on(tx))
        .await?;
    let mut key_ids = keys
        .iter()
        .map(|row| D::get(row, "key_id"))
        .collect::<StoreResult<Vec<String>>>()?;
    key_ids.sort_unstable();
    let statements = [
        "delete from request_log_run where last_id in \
         (select last_id from request_log_span where account_id = $1)",
        "delete from request_log_span where account_id = $1",
        "delete from request_log_key_span where account_id = $1",
        "delete from request_log_endpoint_span where account_id = $1",
        "delete from usage_counter where account_id = $1",
        "delete from usage_day where account_id = $1",
        "delete from webhook_attempt where webhook_id in \
         (select webhook_id from webhook where account_id = $1)",
        "delete from webhook_delivery where webhook_id in \
         (select webhook_id from webhook where account_id = $1)",
        "delete from webhook where account_id = $1",
        "delete from account where account_id = $1",
    ];
    for sql in statements {
        sqlx::query(sql)
            .arg(account_id.as_str())
            .run(on(tx))
            .await?;
    }
    Ok(key_ids)
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").run(self.0.reader()).await
    }

    async fn check_ready(&self) -> StoreResult<()> {
        // A write that commits, not one rolled back: only a commit reaches the disk (the
        // WAL, fsynced), so only it finds a full disk or a failing device. The row is one
        // that always exists; writing its own value back changes nothing.
        self.0.check_storage()?;
        let mut tx = self.0.begin().await?;
        sqlx::query("update request_log_next_id set next_id = next_id")
            .run(on(&mut tx))
            .await?;
        commit(tx).await
    }

    async fn account_count(&self) -> StoreResult<u64> {
        let count = sqlx::query("select count(*) as n from account");
        rows::count::<B::Db>(&count.one(self.0.reader()).await?, "n")
    }

    async fn create_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let mut tx = self.0.begin().await?;
        insert_account(&mut tx, account, first_key, audit).await?;
        commit(tx).await
    }

    async fn bootstrap_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<bool> {
        let mut tx = self.0.begin().await?;
        if let Some(lock) = B::Db::LOCK_FOR_BOOTSTRAP {
            sqlx::query(lock).run(on(&mut tx)).await?;
        }
        let exists = sqlx::query("select exists (select 1 from account) as found");
        if B::Db::get(&exists.one(on(&mut tx)).await?, "found")? {
            return Ok(false);
        }
        insert_account(&mut tx, account, first_key, audit).await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn list_accounts(&self) -> StoreResult<Vec<AccountSummary>> {
        let sql = format!("{ACCOUNT_SELECT} order by a.created_at, a.account_id");
        let rows = sqlx::query(AssertSqlSafe(sql)).all(self.0.reader()).await?;
        rows.iter().map(rows::account::<B::Db>).collect()
    }

    async fn account_page(&self, query: &AccountQuery) -> StoreResult<(Vec<AccountSummary>, bool)> {
        let mut qb = QueryBuilder::<B::Db>::new(format!("{ACCOUNT_SELECT} where true"));
        if let Some(after) = &query.after {
            qb.push(" and a.account_id > ")
                .push_arg(after.as_str().to_owned());
        }
        if let Some(external_id) = &query.external_id {
            qb.push(" and a.external_id = ")
                .push_arg(external_id.as_str().to_owned());
        }
        if let Some(status) = query.status {
            qb.push(" and a.status = ").push_arg(status.as_str());
        }
        qb.push(" order by a.account_id limit ")
            .push_arg(i64::from(query.limit) + 1);
        let rows = qb.build().all(self.0.reader()).await?;
        let mut accounts = rows
            .iter()
            .map(rows::account::<B::Db>)
            .collect::<StoreResult<Vec<_>>>()?;
        let more = accounts.len() > query.limit as usize;
        accounts.truncate(query.limit as usize);
        Ok((accounts, more))
    }

    async fn account(&self, account_id: &AccountId) -> StoreResult<Option<AccountSummary>> {
        let sql = format!("{ACCOUNT_SELECT} where a.account_id = $1");
        let query = sqlx::query(AssertSqlSafe(sql)).arg(account_id.as_str());
        let row = query.optional(self.0.reader()).await?;
        row.as_ref().map(rows::account::<B::Db>).transpose()
    }

    async fn account_by_external_id(
        &self,
        external_id: &ExternalId,
    ) -> StoreResult<Option<AccountSummary>> {
        let sql = format!("{ACCOUNT_SELECT} where a.external_id = $1");
        let query = sqlx::query(AssertSqlSafe(sql)).arg(external_id.as_str());
        let row = query.optional(self.0.reader()).await?;
        row.as_ref().map(rows::account::<B::Db>).transpose()
    }

    async fn update_account(
        &self,
        account_id: &AccountId,
        patch: &AccountPatch,
        audit: &AuditContext,
    ) -> StoreResult<(AccountSummary, Vec<KeyDigest>)> {
        let mut tx = self.0.begin().await?;
        // The status before the change, its row held to commit: a status set to the one
        // the account has is no suspension or resumption.
        let sql = format!(
            "select status from account where account_id = $1{}",
            B::Db::LOCK_FOR_CHANGE
        );
        let before: String = match sqlx::query(AssertSqlSafe(sql))
            .arg(account_id.as_str())
            .optional(on(&mut tx))
            .await?
        {
            Some(row) => B::Db::get(&row, "status")?,
            None => return Err(StoreError::NotFound),
        };
        if let Some(plan) = &patch.plan {
            ensure_plan(&mut tx, plan).await?;
        }
        let mut update = QueryBuilder::<B::Db>::new("update account set account_id = account_id");
        if let Some(name) = &patch.name {
            update.push(", name = ").push_arg(name.clone());
        }
        if let Some(plan) = &patch.plan {
            update.push(", plan = ").push_arg(plan.as_str().to_owned());
        }
        if let Some(limits) = patch.overrides {
            update
                .push(", per_minute = ")
                .push_arg(limits.per_minute.map(i64::from));
            update
                .push(", per_day = ")
                .push_arg(limits.per_day.map(i64::from));
            update
                .push(", per_month = ")
                .push_arg(limits.per_month.map(i64::from));
        }
        if let Some(status) = patch.status {
            update.push(", status = ").push_arg(status.as_str());
        }
        if let Some(metadata) = &patch.metadata {
            update.push(", metadata = ").push_arg(metadata.to_json());
        }
        if let Some(external_id) = &patch.external_id {
            let id = external_id.as_ref().map(ExternalId::as_str);
            update.push(", external_id = ").push_arg(id);
        }
        update
            .push(" where account_id = ")
            .push_arg(account_id.as_str().to_owned())
            .push(" returning account_id");
        update
            .build()
            .optional(on(&mut tx))
            .await?
            .ok_or(StoreError::NotFound)?;
        let digests = forget_account::<B>(&mut tx, account_id).await?;
        let sql = format!("{ACCOUNT_SELECT} where a.account_id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .arg(account_id.as_str())
            .one(on(&mut tx))
            .await?;
        let account = rows::account::<B::Db>(&row)?;
        let changed_status = patch.status.filter(|s| s.as_str() != before);
        account_events(&mut tx, account_id, patch, changed_status, audit).await?;
        commit(tx).await?;
        Ok((account, digests))
    }

    async fn delete_account(
        &self,
        account_id: &AccountId,
        audit: &AuditContext,
    ) -> StoreResult<Vec<KeyDigest>> {
        let mut tx = self.0.begin().await?;
        // The account's row is held to commit, so that two deletions (or a deletion and a
        // change) of one account on two nodes go one after the other.
        let lock = format!(
            "select account_id from account where account_id = $1{}",
            B::Db::LOCK_FOR_CHANGE
        );
        sqlx::query(AssertSqlSafe(lock))
            .arg(account_id.as_str())
            .optional(on(&mut tx))
            .await?
            .ok_or(StoreError::NotFound)?;
        let sql = format!("{ACCOUNT_SELECT} where a.account_id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .arg(account_id.as_str())
            .one(on(&mut tx))
            .await?;
        let summary = rows::account::<B::Db>(&row)?;
        let digests = forget_account::<B>(&mut tx, account_id).await?;
        let revoked = delete_account_rows(&mut tx, account_id).await?;
        let account = &summary.account;
        let deleted = AuditContext {
            changes: serde_json::json!({
                "name": account.name,
                "external_id": account.external_id.as_ref().map(ExternalId::as_str),
                "revoked_key_ids": revoked,
            }),
            ..audit.clone()
        };
        audit::insert_operator_event(
            &mut tx,
            AuditAction::AccountDeleted,
            Some(account_id),
            &deleted,
        )
        .await?;
        commit(tx).await?;
        Ok(digests)
    }

    async fn set_plan(
        &self,
        account_id: &AccountId,
        plan: &PlanName,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let patch = AccountPatch {
            plan: Some(plan.clone()),
            ..AccountPatch::default()
        };
        self.update_account(account_id, &patch, audit)
            .await
            .map(drop)
    }

    async fn set_limits(
        &self,
        account_id: &AccountId,
        overrides: Limits,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let patch = AccountPatch {
            overrides: Some(overrides),
            ..AccountPatch::default()
        };
        self.update_account(account_id, &patch, audit)
            .await
            .map(drop)
    }

    async fn plans(&self) -> StoreResult<Vec<Plan>> {
        let query = sqlx::query("select * from plan order by name");
        let rows = query.all(self.0.reader()).await?;
        rows.iter().map(rows::plan::<B::Db>).collect()
    }

    async fn put_plan(&self, plan: &Plan, audit: &AuditContext) -> StoreResult<Vec<KeyDigest>> {
        let sql = "insert into plan (name, per_minute, per_day, per_month) \
                   values ($1, $2, $3, $4) on conflict (name) do update set \
                   per_minute = excluded.per_minute, per_day = excluded.per_day, \
                   per_month = excluded.per_month";
        let limits = plan.limits;
        let mut tx = self.0.begin().await?;
        sqlx::query(sql)
            .arg(plan.name.as_str())
            .arg(limits.per_minute.map(i64::from))
            .arg(limits.per_day.map(i64::from))
            .arg(limits.per_month.map(i64::from))
            .run(on(&mut tx))
            .await?;
        let on_plan = sqlx::query("select account_id from account where plan = $1")
            .arg(plan.name.as_str())
            .all(on(&mut tx))
            .await?;
        let mut digests = Vec::new();
        for row in &on_plan {
            let account_id = AccountId::from_trusted(B::Db::get(row, "account_id")?);
            digests.extend(forget_account::<B>(&mut tx, &account_id).await?);
        }
        let updated = AuditContext {
            changes: serde_json::json!({
                "name": plan.name.as_str(),
                "per_minute": limits.per_minute,
                "per_day": limits.per_day,
                "per_month": limits.per_month,
            }),
            ..audit.clone()
        };
        audit::insert_operator_event(&mut tx, AuditAction::PlanUpdated, None, &updated).await?;
        commit(tx).await?;
        Ok(digests)
    }

    async fn delete_plan(&self, name: &PlanName, audit: &AuditContext) -> StoreResult<()> {
        let mut tx = self.0.begin().await?;
        let used = sqlx::query("select account_id from account where plan = $1 limit 1");
        if used
            .arg(name.as_str())
            .optional(on(&mut tx))
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict("plan in use"));
        }
        let delete = sqlx::query("delete from plan where name = $1 returning name");
        delete
            .arg(name.as_str())
            .optional(on(&mut tx))
            .await?
            .ok_or(StoreError::NotFound)?;
        let deleted = AuditContext {
            changes: serde_json::json!({ "name": name.as_str() }),
            ..audit.clone()
        };
        audit::insert_operator_event(&mut tx, AuditAction::PlanDeleted, None, &deleted).await?;
        commit(tx).await
    }

    async fn insert_operator(
        &self,
        operator: &Operator,
        secret: &NewSecret,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let mut tx = self.0.begin().await?;
        sqlx::query(
            "insert into operator (operator_id, name, digest, hint, created_at) \
             values ($1, $2, $3, $4, $5)",
        )
        .arg(operator.operator_id.as_str())
        .arg(operator.name.as_str())
        .arg(&secret.digest.0[..])
        .arg(secret.hint.as_str())
        .arg(ts(operator.created_at))
        .run(on(&mut tx))
        .await?;
        let created = AuditContext {
            changes: serde_json::json!({
                "operator_id": operator.operator_id.as_str(),
                "name": operator.name,
                "hint": secret.hint,
            }),
            ..audit.clone()
        };
        audit::insert_operator_event(&mut tx, AuditAction::OperatorCreated, None, &created).await?;
        commit(tx).await
    }

    async fn list_operators(&self) -> StoreResult<Vec<Operator>> {
        let query = sqlx::query("select * from operator order by created_at, operator_id");
        let rows = query.all(self.0.reader()).await?;
        rows.iter().map(rows::operator::<B::Db>).collect()
    }

    async fn revoke_operator(
        &self,
        operator_id: &OperatorId,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let mut tx = self.0.begin().await?;
        let sql = "delete from operator where operator_id = $1 returning name";
        let row = sqlx::query(sql)
            .arg(operator_id.as_str())
            .optional(on(&mut tx))
            .await?
            .ok_or(StoreError::NotFound)?;
        let name: String = B::Db::get(&row, "name")?;
        let revoked = AuditContext {
            changes: serde_json::json!({ "operator_id": operator_id.as_str(), "name": name }),
            ..audit.clone()
        };
        audit::insert_operator_event(&mut tx, AuditAction::OperatorRevoked, None, &revoked).await?;
        commit(tx).await
    }

    async fn operator_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<Operator>> {
        let query = sqlx::query("select * from operator where digest = $1").arg(&digest.0[..]);
        let row = query.optional(self.0.reader()).await?;
        row.as_ref().map(rows::operator::<B::Db>).transpose()
    }

    async fn auth_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<AuthRecord>> {
        let sql = format!(
            "select {KEY_COLUMNS}, s.expires_at as secret_expires_at, a.status as account_status, \
             a.per_minute, a.per_day, a.per_month, p.per_minute as plan_per_minute, \
             p.per_day as plan_per_day, p.per_month as plan_per_month \
             from key_secret s join api_key k on k.key_id = s.key_id \
             join account a on a.account_id = k.account_id join plan p on p.name = a.plan \
             where s.digest = $1"
        );
        let query = sqlx::query(AssertSqlSafe(sql)).arg(&digest.0[..]);
        let Some(row) = query.optional(self.0.reader()).await? else {
            return Ok(None);
        };
        let status: String = B::Db::get(&row, "account_status")?;
        Ok(Some(AuthRecord {
            key: rows::key::<B::Db>(&row)?,
            secret_expires_at: rows::time::<B::Db>(&row, "secret_expires_at")?,
            limits: rows::limits::<B::Db>(&row, "plan_")?
                .overridden_by(rows::limits::<B::Db>(&row, "")?),
            account_status: status
                .parse()
                .map_err(|_| rows::corrupt("stored account status"))?,
        }))
    }

    async fn list_keys(
        &self,
        account_id: &AccountId,
        query: &KeyQuery,
    ) -> StoreResult<(Vec<ApiKey>, bool)> {
        keys::list(self.0.reader(), account_id, query).await
    }

    async fn any_key(&self, key_id: &KeyId) -> StoreResult<Option<ApiKey>> {
        let sql = format!("select {KEY_COLUMNS} from api_key k where k.key_id = $1");
        let query = sqlx::query(AssertSqlSafe(sql)).arg(key_id.as_str());
        let row = query.optional(self.0.reader()).await?;
        row.as_ref().map(rows::key::<B::Db>).transpose()
    }

    async fn get_key(&self, account_id: &AccountId, key_id: &KeyId) -> StoreResult<Option<ApiKey>> {
        keys::get(self.0.reader(), account_id, key_id).await
    }

    async fn insert_key(&self, key: &NewKey, audit: &AuditContext) -> StoreResult<ApiKey> {
        creates::insert_key(&self.0, key, audit).await
    }

    async fn import_keys(&self, keys: &[NewKey], audit: &AuditContext) -> StoreResult<()> {
        let keys: Vec<_> = keys.iter().map(|key| (key, audit)).collect();
        insert_keys(&self.0, &keys).await
    }

    async fn update_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        patch: &KeyPatch,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let (mut tx, stale) =
            keys::begin_change(&self.0, account_id, key_id, expected_version).await?;
        keys::patch(&mut tx, key_id, patch).await?;
        keys::finish_change(
            tx,
            account_id,
            key_id,
            AuditAction::Updated,
            audit,
            stale,
            false,
        )
        .await
    }

    async fn rotate_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        secret: &NewSecret,
        old_secrets_end: OffsetDateTime,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let (mut tx, stale) =
            keys::begin_change(&self.0, account_id, key_id, expected_version).await?;
        keys::rotate(&mut tx, key_id, secret, old_secrets_end, audit.time).await?;
        keys::finish_change(
            tx,
            account_id,
            key_id,
            AuditAction::Rotated,
            audit,
            stale,
            false,
        )
        .await
    }

    async fn revoke_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let (mut tx, stale) =
            keys::begin_change(&self.0, account_id, key_id, expected_version).await?;
        // Its secrets go with it (`on delete cascade`); its audit events stay (no foreign
        // key).
        let delete = sqlx::query("delete from api_key where key_id = $1").arg(key_id.as_str());
        delete.run(on(&mut tx)).await?;
        keys::finish_change(
            tx,
            account_id,
            key_id,
            AuditAction::Revoked,
            audit,
            stale,
            true,
        )
        .await
    }

    async fn leak_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        response: LeakResponse,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let (mut tx, stale) =
            keys::begin_change(&self.0, account_id, key_id, expected_version).await?;
        let gone = match response {
            LeakResponse::Revoke => {
                let delete =
                    sqlx::query("delete from api_key where key_id = $1").arg(key_id.as_str());
                delete.run(on(&mut tx)).await?;
                true
            }
            LeakResponse::Disable => {
                let patch = KeyPatch {
                    status: Some(StoredStatus::Inactive),
                    ..KeyPatch::default()
                };
                keys::patch(&mut tx, key_id, &patch).await?;
                false
            }
        };
        let action = AuditAction::Leaked;
        keys::finish_change(tx, account_id, key_id, action, audit, stale, gone).await
    }

    async fn write_meter_batch(&self, batch: &MeterBatch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.0.write_meter_batch(batch).await
    }

    async fn request_history(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<(i64, RequestRecord)>> {
        history::read(&self.0, account_id, query).await
    }

    async fn usage(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, KeyId, u64)>> {
        // In the order of the counters' primary key, so that every call lists alike.
        let sql = "select endpoint, key_id, count from usage_counter \
                   where account_id = $1 and month = $2 order by endpoint, key_id";
        let query = sqlx::query(sql).arg(account_id.as_str()).arg(month);
        let rows = query.all(self.0.reader()).await?;
        rows.iter()
            .map(|row| {
                let endpoint = B::Db::get(row, "endpoint")?;
                let key_id = KeyId::from_trusted(B::Db::get(row, "key_id")?);
                Ok((endpoint, key_id, rows::count::<B::Db>(row, "count")?))
            })
            .collect()
    }

    async fn usage_by_day(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, u64)>> {
        // `YYYY-MM-DD` sorts by date, and the month's days share its prefix.
        let sql = "select day, count from usage_day \
                   where account_id = $1 and day >= $2 and day < $3 order by day";
        let query = sqlx::query(sql)
            .arg(account_id.as_str())
            .arg(format!("{month}-01"))
            .arg(format!("{month}-99"));
        let rows = query.all(self.0.reader()).await?;
        rows.iter()
            .map(|row| Ok((B::Db::get(row, "day")?, rows::count::<B::Db>(row, "count")?)))
            .collect()
    }

    async fn audit_log(
        &self,
        chain: &AuditChain,
        query: &PageQuery,
    ) -> StoreResult<Vec<AuditEvent>> {
        let mut qb = QueryBuilder::<B::Db>::new(format!(
            "select {} from audit_event where account_id = ",
            audit::AUDIT_COLUMNS
        ));
        qb.push_arg(chain.id().to_owned());
        if let Some(before) = query.before {
            qb.push(" and audit_event_id < ").push_arg(before);
        }
        if let Some(key_id) = &query.key_id {
            qb.push(" and key_id = ").push_arg(key_id.as_str());
        }
        if let Some(since) = query.since {
            qb.push(" and time >= ").push_arg(ts(since));
        }
        if let Some(until) = query.until {
            qb.push(" and time < ").push_arg(ts(until));
        }
        if let Some(action) = query.action {
            qb.push(" and action = ").push_arg(action.as_str());
        }
        qb.push(" order by audit_event_id desc limit ")
            .push_arg(i64::from(query.limit));
        let rows = qb.build().all(self.0.reader()).await?;
        rows.iter().map(rows::audit_event::<B::Db>).collect()
    }

    async fn create_webhook(&self, webhook: &Webhook, audit: &AuditContext) -> StoreResult<()> {
        webhooks::create(&self.0, webhook, audit).await
    }

    async fn list_webhooks(&self, account_id: Option<&AccountId>) -> StoreResult<Vec<Webhook>> {
        webhooks::list(self.0.reader(), account_id).await
    }

    async fn delete_webhook(
        &self,
        account_id: Option<&AccountId>,
        webhook_id: &WebhookId,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        webhooks::delete(&self.0, account_id, webhook_id, audit).await
    }

    async fn webhook_attempts(
        &self,
        account_id: Option<&AccountId>,
        webhook_id: &WebhookId,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Option<Vec<(i64, DeliveryAttempt)>>> {
        webhooks::attempts(&self.0, account_id, webhook_id, before, limit).await
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        webhooks::claim(&self.0, now, lease, limit).await
    }

    async fn record_attempts(&self, attempts: &[FinishedAttempt]) -> StoreResult<()> {
        webhooks::record_attempts(&self.0, attempts).await
    }

    async fn record_scanned_events(&self, events: &[(String, OutboxEvent)]) -> StoreResult<u64> {
        webhooks::record_scanned(&self.0, events).await
    }

    async fn keys_expiring_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> StoreResult<Vec<(AccountId, KeyId, OffsetDateTime)>> {
        webhooks::expiring(self.0.reader(), from, to).await
    }

    async fn prune_deliveries(&self, cutoff: OffsetDateTime) -> StoreResult<u64> {
        webhooks::prune(&self.0, cutoff).await
    }

    async fn audit_chains(&self) -> StoreResult<Vec<AuditChain>> {
        audit::chains(self.0.reader()).await
    }

    async fn audit_chain_page(
        &self,
        chain: &AuditChain,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>> {
        audit::chain_page(self.0.reader(), chain, after, limit).await
    }

    async fn audit_chain_head(&self, chain: &AuditChain) -> StoreResult<Option<String>> {
        audit::chain_head(self.0.reader(), chain).await
    }

    async fn prune_history(&self, cutoff: OffsetDateTime, batch: u32) -> StoreResult<u64> {
        history::prune(&self.0, cutoff, batch).await
    }
}
