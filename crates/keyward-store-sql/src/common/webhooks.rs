//! Webhooks in storage (API.md §Webhooks): subscriptions, the outbox (events recorded in
//! the transaction of the change that causes them, one delivery row per subscription),
//! claims of due deliveries, attempts, scan marks and pruning.

use std::collections::HashMap;
use std::time::Duration;

use keyward_core::webhook::EventType;
use keyward_core::{AccountId, EventId, KeyId, WebhookId};
use keyward_store::{
    AuditAction, AuditContext, Delivery, DeliveryAttempt, FinishedAttempt, OutboxEvent, StoreError,
    StoreResult, Webhook,
};
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};
use time::OffsetDateTime;

use super::rows::{self, from_ts, ts};
use super::sql::{Get, PushArg, Statement, Tx, on, push_rows};
use super::{Backend, Dialect, audit, commit};

/// Records `events` for the subscriptions that want them, in the caller's transaction:
/// one pending delivery per event and subscription (the account's own, and every
/// operator's), due at once. The one function every change that makes an event calls,
/// and the one insert into the outbox: a transaction it added deliveries to wakes this
/// process's dispatcher when it commits ([`Tx::enqueued`]).
pub(crate) async fn record<D: Dialect>(tx: &mut Tx<D>, events: &[OutboxEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    // Without subscriptions (the usual case) a change pays one indexed probe, not a
    // statement per event.
    let any = sqlx::query("select 1 as one from webhook limit 1");
    if any.optional(on(tx)).await?.is_none() {
        return Ok(());
    }
    for event in events {
        let pattern = format!("%\"{}\"%", event.kind.as_str());
        let now = ts(event.time);
        let inserted = sqlx::query(
            "insert into webhook_delivery (webhook_id, account_id, event_id, type, payload, \
             status, attempts, next_attempt_at, updated_at) \
             select webhook_id, $1, $2, $3, $4, 'pending', 0, $5, $5 from webhook \
             where (account_id = $1 or account_id is null) and events like $6 \
             returning delivery_id",
        )
        .arg(event.account_id.as_str())
        .arg(event.event_id.as_str())
        .arg(event.kind.as_str())
        .arg(event.payload())
        .arg(now)
        .arg(pattern)
        .all(on(tx))
        .await?;
        if !inserted.is_empty() {
            tx.enqueued();
        }
    }
    Ok(())
}

/// The columns [`webhook`] reads.
const WEBHOOK_COLUMNS: &str =
    "webhook_id, account_id, url, events, description, secret, created_at";

/// A subscription from the [`WEBHOOK_COLUMNS`] of a row.
fn webhook<D: Dialect>(row: &D::Row) -> StoreResult<Webhook> {
    let account: Option<String> = D::get(row, "account_id")?;
    let events: String = D::get(row, "events")?;
    let events: Vec<String> =
        serde_json::from_str(&events).map_err(|_| rows::corrupt("stored webhook events"))?;
    Ok(Webhook {
        webhook_id: WebhookId::from_trusted(D::get(row, "webhook_id")?),
        account_id: account.map(AccountId::from_trusted),
        url: D::get(row, "url")?,
        events: events.iter().filter_map(|e| EventType::parse(e)).collect(),
        description: D::get(row, "description")?,
        secret: D::get(row, "secret")?,
        created_at: from_ts(D::get(row, "created_at")?)?,
    })
}

/// `and account_id = $n`, or `and account_id is null` for the operator's.
fn owned_by(account_id: Option<&AccountId>, n: usize) -> String {
    match account_id {
        Some(_) => format!(" and account_id = ${n}"),
        None => " and account_id is null".to_owned(),
    }
}

/// What an audit event of a subscription says changed.
fn webhook_changes(webhook: &Webhook) -> serde_json::Value {
    let events: Vec<&str> = webhook.events.iter().map(|e| e.as_str()).collect();
    serde_json::json!({
        "webhook_id": webhook.webhook_id.as_str(),
        "url": webhook.url,
        "events": events,
        "description": webhook.description,
    })
}

/// The audit event of a subscription's creation or deletion: in its account's log, or
/// for an operator's subscription in the operator log.
async fn webhook_event<D: Dialect>(
    tx: &mut Tx<D>,
    action: AuditAction,
    webhook: &Webhook,
    context: &AuditContext,
) -> StoreResult<()> {
    match &webhook.account_id {
        Some(account_id) => {
            let event = [(account_id, None, context)];
            audit::insert_events(tx, action, event.into_iter()).await
        }
        None => audit::insert_operator_event(tx, action, None, context).await,
    }
}

/// [`keyward_store::Store::create_webhook`].
pub(crate) async fn create<B: Backend>(
    backend: &B,
    webhook: &Webhook,
    context: &AuditContext,
) -> StoreResult<()> {
    let events: Vec<&str> = webhook.events.iter().map(|e| e.as_str()).collect();
    let events = serde_json::to_string(&events).unwrap_or_else(|_| "[]".to_owned());
    let mut tx = backend.begin().await?;
    sqlx::query(
        "insert into webhook (webhook_id, account_id, url, events, description, secret, \
         created_at) values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .arg(webhook.webhook_id.as_str())
    .arg(webhook.account_id.as_ref().map(AccountId::as_str))
    .arg(webhook.url.as_str())
    .arg(events)
    .arg(webhook.description.as_deref())
    .arg(webhook.secret.as_str())
    .arg(ts(webhook.created_at))
    .run(on(&mut tx))
    .await?;
    let context = AuditContext {
        changes: webhook_changes(webhook),
        ..context.clone()
    };
    webhook_event(&mut tx, AuditAction::WebhookCreated, webhook, &context).await?;
    commit(tx).await
}

/// [`keyward_store::Store::list_webhooks`].
pub(crate) async fn list<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    account_id: Option<&AccountId>,
) -> StoreResult<Vec<Webhook>> {
    let sql = format!(
        "select {WEBHOOK_COLUMNS} from webhook where true{} order by webhook_id",
        owned_by(account_id, 1)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    if let Some(account_id) = account_id {
        query = query.arg(account_id.as_str());
    }
    let rows = query.all(on).await?;
    rows.iter().map(webhook::<D>).collect()
}

/// Reads one of the owner's subscriptions in `tx`.
async fn owned<D: Dialect>(
    tx: &mut Tx<D>,
    account_id: Option<&AccountId>,
    webhook_id: &WebhookId,
) -> StoreResult<Option<Webhook>> {
    let sql = format!(
        "select {WEBHOOK_COLUMNS} from webhook where webhook_id = $1{}",
        owned_by(account_id, 2)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).arg(webhook_id.as_str());
    if let Some(account_id) = account_id {
        query = query.arg(account_id.as_str());
    }
    let row = query.optional(on(tx)).await?;
    row.as_ref().map(webhook::<D>).transpose()
}

/// [`keyward_store::Store::delete_webhook`].
pub(crate) async fn delete<B: Backend>(
    backend: &B,
    account_id: Option<&AccountId>,
    webhook_id: &WebhookId,
    context: &AuditContext,
) -> StoreResult<()> {
    let mut tx = backend.begin().await?;
    let webhook = owned(&mut tx, account_id, webhook_id)
        .await?
        .ok_or(StoreError::NotFound)?;
    for table in ["webhook_delivery", "webhook_attempt", "webhook"] {
        let sql = format!("delete from {table} where webhook_id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .arg(webhook_id.as_str())
            .run(on(&mut tx))
            .await?;
    }
    let context = AuditContext {
        changes: webhook_changes(&webhook),
        ..context.clone()
    };
    webhook_event(&mut tx, AuditAction::WebhookDeleted, &webhook, &context).await?;
    commit(tx).await
}

/// [`keyward_store::Store::webhook_attempts`].
pub(crate) async fn attempts<B: Backend>(
    backend: &B,
    account_id: Option<&AccountId>,
    webhook_id: &WebhookId,
    before: Option<i64>,
    limit: u32,
) -> StoreResult<Option<Vec<(i64, DeliveryAttempt)>>> {
    let mut tx = backend.begin().await?;
    if owned(&mut tx, account_id, webhook_id).await?.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query(
        "select attempt_id, time, event_id, type, status, error, next_attempt_at \
         from webhook_attempt where webhook_id = $1 and attempt_id < $2 \
         order by attempt_id desc limit $3",
    )
    .arg(webhook_id.as_str())
    .arg(before.unwrap_or(i64::MAX))
    .arg(i64::from(limit))
    .all(on(&mut tx))
    .await?;
    commit(tx).await?;
    let attempts = rows
        .iter()
        .map(|row| {
            let status: Option<i64> = <B::Db as Get<Option<i64>>>::get(row, "status")?;
            let next: Option<i64> = <B::Db as Get<Option<i64>>>::get(row, "next_attempt_at")?;
            Ok((
                <B::Db as Get<i64>>::get(row, "attempt_id")?,
                DeliveryAttempt {
                    time: from_ts(<B::Db as Get<i64>>::get(row, "time")?)?,
                    event_id: <B::Db as Get<String>>::get(row, "event_id")?,
                    kind: <B::Db as Get<String>>::get(row, "type")?,
                    status: status.and_then(|s| u16::try_from(s).ok()),
                    error: <B::Db as Get<Option<String>>>::get(row, "error")?,
                    next_attempt_at: next.map(from_ts).transpose()?,
                },
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(attempts))
}

/// [`keyward_store::Store::claim_deliveries`]: one statement claims the rows, one more
/// reads their subscriptions' URLs and secrets.
pub(crate) async fn claim<B: Backend>(
    backend: &B,
    now: OffsetDateTime,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Delivery>> {
    let now_s = ts(now);
    let until = now_s + i64::try_from(lease.as_secs()).unwrap_or(60);
    let skip = <B::Db as Dialect>::CLAIM_LOCK;
    let sql = format!(
        "update webhook_delivery set lease_until = $1 where delivery_id in (\
         select delivery_id from webhook_delivery where status = 'pending' \
         and next_attempt_at <= $2 and (lease_until is null or lease_until <= $2) \
         order by next_attempt_at, delivery_id limit $3{skip}) \
         returning delivery_id, webhook_id, event_id, type, payload, attempts"
    );
    let mut tx = backend.begin().await?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .arg(until)
        .arg(now_s)
        .arg(i64::from(limit))
        .all(on(&mut tx))
        .await?;
    let targets = targets::<B::Db>(&mut tx, &rows).await?;
    commit(tx).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let webhook_id: String = <B::Db as Get<String>>::get(row, "webhook_id")?;
        // A subscription deleted meanwhile took its deliveries with it.
        let Some((url, secret)) = targets.get(&webhook_id) else {
            continue;
        };
        let attempts: i64 = <B::Db as Get<i64>>::get(row, "attempts")?;
        claimed.push(Delivery {
            delivery_id: <B::Db as Get<i64>>::get(row, "delivery_id")?,
            webhook_id: WebhookId::from_trusted(webhook_id),
            url: url.clone(),
            secret: secret.clone(),
            event_id: EventId::from_trusted(<B::Db as Get<String>>::get(row, "event_id")?),
            kind: <B::Db as Get<String>>::get(row, "type")?,
            payload: <B::Db as Get<String>>::get(row, "payload")?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        });
    }
    Ok(claimed)
}

/// The URL and secret of each subscription the claimed `rows` name, in one query.
async fn targets<D: Dialect>(
    tx: &mut Tx<D>,
    rows: &[D::Row],
) -> StoreResult<HashMap<String, (String, String)>> {
    let mut ids = rows
        .iter()
        .map(|row| D::get(row, "webhook_id"))
        .collect::<StoreResult<Vec<String>>>()?;
    ids.sort_unstable();
    ids.dedup();
    let Some((first, others)) = ids.split_first() else {
        return Ok(HashMap::new());
    };
    let mut qb =
        QueryBuilder::<D>::new("select webhook_id, url, secret from webhook where webhook_id in (");
    qb.push_arg(first.as_str());
    for id in others {
        qb.push(", ").push_arg(id.as_str());
    }
    qb.push(")");
    let found = qb.build().all(on(tx)).await?;
    found
        .iter()
        .map(|row| {
            Ok((
                D::get(row, "webhook_id")?,
                (D::get(row, "url")?, D::get(row, "secret")?),
            ))
        })
        .collect()
}

/// Attempt rows per insert: 7 parameters each, well under both databases' limit on a
/// statement's parameters (SQLite's 32,766, PostgreSQL's 65,535).
const ATTEMPTS_PER_INSERT: usize = 1_000;

/// [`keyward_store::Store::record_attempts`]: one update per delivery and one insert of
/// the attempt rows (per [`ATTEMPTS_PER_INSERT`]), in one transaction.
pub(crate) async fn record_attempts<B: Backend>(
    backend: &B,
    finished: &[FinishedAttempt],
) -> StoreResult<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut tx = backend.begin().await?;
    for finished in finished {
        let attempt = &finished.attempt;
        let status = if finished.delivered() {
            "delivered"
        } else if attempt.next_attempt_at.is_some() {
            "pending"
        } else {
            "failed"
        };
        let now = ts(attempt.time);
        sqlx::query(
            "update webhook_delivery set status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, lease_until = null, updated_at = $3 where delivery_id = $4",
        )
        .arg(status)
        .arg(attempt.next_attempt_at.map_or(now, ts))
        .arg(now)
        .arg(finished.delivery_id)
        .run(on(&mut tx))
        .await?;
    }
    for rows in finished.chunks(ATTEMPTS_PER_INSERT) {
        let mut qb = QueryBuilder::<B::Db>::new(
            "insert into webhook_attempt (webhook_id, event_id, type, time, status, error, \
             next_attempt_at) values ",
        );
        push_rows(
            &mut qb,
            rows.iter().map(|finished| {
                let attempt = &finished.attempt;
                [
                    finished.webhook_id.as_str().into(),
                    attempt.event_id.as_str().into(),
                    attempt.kind.as_str().into(),
                    ts(attempt.time).into(),
                    attempt.status.map(i64::from).into(),
                    attempt.error.as_deref().into(),
                    attempt.next_attempt_at.map(ts).into(),
                ]
            }),
        );
        qb.build().run(on(&mut tx)).await?;
    }
    commit(tx).await
}

/// [`keyward_store::Store::record_scanned_events`].
pub(crate) async fn record_scanned<B: Backend>(
    backend: &B,
    events: &[(String, OutboxEvent)],
) -> StoreResult<u64> {
    let mut recorded = 0;
    for (mark, event) in events {
        let mut tx = backend.begin().await?;
        let new = sqlx::query(
            "insert into webhook_scan_mark (mark) values ($1) on conflict (mark) do nothing \
             returning mark",
        )
        .arg(mark.as_str())
        .optional(on(&mut tx))
        .await?;
        if new.is_some() {
            record(&mut tx, std::slice::from_ref(event)).await?;
            recorded += 1;
        }
        commit(tx).await?;
    }
    Ok(recorded)
}

/// [`keyward_store::Store::keys_expiring_between`].
pub(crate) async fn expiring<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> StoreResult<Vec<(AccountId, KeyId, OffsetDateTime)>> {
    let rows = sqlx::query(
        "select account_id, key_id, expires_at from api_key \
         where expires_at > $1 and expires_at <= $2 order by expires_at, key_id",
    )
    .arg(ts(from))
    .arg(ts(to))
    .all(on)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                AccountId::from_trusted(D::get(row, "account_id")?),
                KeyId::from_trusted(D::get(row, "key_id")?),
                from_ts(D::get(row, "expires_at")?)?,
            ))
        })
        .collect()
}

/// [`keyward_store::Store::prune_deliveries`].
pub(crate) async fn prune<B: Backend>(backend: &B, cutoff: OffsetDateTime) -> StoreResult<u64> {
    let cutoff = ts(cutoff);
    let mut tx = backend.begin().await?;
    let finished = sqlx::query(
        "delete from webhook_delivery where status <> 'pending' and updated_at < $1 \
         returning delivery_id",
    )
    .arg(cutoff)
    .all(on(&mut tx))
    .await?;
    let attempts = sqlx::query("delete from webhook_attempt where time < $1 returning attempt_id")
        .arg(cutoff)
        .all(on(&mut tx))
        .await?;
    commit(tx).await?;
    Ok(u64::try_from(finished.len() + attempts.len()).unwrap_or(u64::MAX))
}
