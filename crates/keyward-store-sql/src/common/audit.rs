//! The audit log's writes and chain reads: every event is written in the transaction of
//! the change it describes, chained to the head of its account's chain, and of the
//! operator log for what operators and the CLI do (API.md
//! §`GET /v1/audit-log`, tamper evidence).

use std::collections::BTreeMap;

use keyward_core::webhook::EventType;
use keyward_core::{AccountId, EventId, KeyId, chain};
use keyward_store::{
    AuditAction, AuditChain, AuditContext, AuditEvent, AuditItem, OperatorActor, OutboxEvent,
    StoreResult,
};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, Executor, QueryBuilder};

use super::rows::{self, ts};
use super::sql::{Statement, Tx, on, push_rows};
use super::{Dialect, webhooks};

/// The columns [`rows::audit_event`] reads.
pub(crate) const AUDIT_COLUMNS: &str =
    "audit_event_id, time, action, actor_key_id, key_id, changes, request_id, prev_hash, hash";

/// Takes the head of each of `chains` for this transaction, creating the ones that have
/// none, and returns their hashes. The heads are taken in the chains' order, so that two
/// transactions taking several never wait for each other in a circle; on PostgreSQL each
/// is locked until commit ([`Dialect::LOCK_FOR_CHANGE`]), which orders one chain's events
/// across nodes; on SQLite the one writer does.
pub(crate) async fn take_heads<D: Dialect>(
    tx: &mut Tx<D>,
    chains: impl IntoIterator<Item = &str>,
) -> StoreResult<BTreeMap<String, String>> {
    let mut heads = BTreeMap::new();
    for chain_id in chains {
        heads.insert(chain_id.to_owned(), String::new());
    }
    let lock = D::LOCK_FOR_CHANGE;
    for (chain_id, head) in &mut heads {
        sqlx::query(
            "insert into audit_chain (chain_id, head_hash) values ($1, $2) \
             on conflict (chain_id) do nothing",
        )
        .arg(chain_id.as_str())
        .arg(chain::GENESIS)
        .run(on(tx))
        .await?;
        let sql = format!("select head_hash from audit_chain where chain_id = $1{lock}");
        let row = sqlx::query(AssertSqlSafe(sql))
            .arg(chain_id.as_str())
            .one(on(tx))
            .await?;
        *head = D::get(&row, "head_hash")?;
    }
    Ok(heads)
}

/// Moves the heads taken by [`take_heads`] to the hashes of the chains' newest events.
pub(crate) async fn set_heads<D: Dialect>(
    tx: &mut Tx<D>,
    heads: &BTreeMap<String, String>,
) -> StoreResult<()> {
    for (chain_id, head) in heads {
        sqlx::query("update audit_chain set head_hash = $1 where chain_id = $2")
            .arg(head.as_str())
            .arg(chain_id.as_str())
            .run(on(tx))
            .await?;
    }
    Ok(())
}

/// The webhook event an audit action also is, if any.
fn event_type(action: AuditAction) -> Option<EventType> {
    match action {
        AuditAction::Created => Some(EventType::KeyCreated),
        AuditAction::Updated => Some(EventType::KeyUpdated),
        AuditAction::Rotated => Some(EventType::KeyRotated),
        AuditAction::Revoked => Some(EventType::KeyRevoked),
        AuditAction::Leaked => Some(EventType::KeyLeaked),
        AuditAction::AccountCreated => Some(EventType::AccountCreated),
        AuditAction::AccountUpdated => Some(EventType::AccountUpdated),
        AuditAction::AccountSuspended => Some(EventType::AccountSuspended),
        AuditAction::AccountResumed => Some(EventType::AccountResumed),
        AuditAction::AccountDeleted => Some(EventType::AccountDeleted),
        AuditAction::WebhookCreated
        | AuditAction::WebhookDeleted
        | AuditAction::PlanUpdated
        | AuditAction::PlanDeleted
        | AuditAction::OperatorCreated
        | AuditAction::OperatorRevoked => None,
    }
}

/// One event of a batch: the account it is about (`None`: a plan, an operator, an
/// operator's subscription), the key, and who made it.
type Entry<'a> = (Option<&'a AccountId>, Option<&'a KeyId>, &'a AuditContext);

/// One row to chain: its chain's id, its actor and what changed.
struct Row<'a> {
    chain_id: &'a str,
    actor: Option<&'a str>,
    key_id: Option<&'a KeyId>,
    changes: Value,
    audit: &'a AuditContext,
}

/// What the operator log says changed: the account the event is about, then the changes.
fn operator_changes(account_id: Option<&AccountId>, changes: &Value) -> Value {
    let Some(account_id) = account_id else {
        return changes.clone();
    };
    let mut out = Map::new();
    out.insert("account_id".into(), account_id.as_str().into());
    match changes {
        Value::Object(fields) => {
            for (name, value) in fields {
                out.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        Value::Null => {}
        other => {
            out.insert("changes".into(), other.clone());
        }
    }
    Value::Object(out)
}

/// Inserts one `action` event per `(account, key, context)`, in one statement, in the
/// transaction of the change it describes, each chained to the one before it in its
/// account's chain; a key's change is recorded for webhook subscribers too (its `data`:
/// the account, the key, the actor, the request and what changed, as in the audit log).
/// A change an operator or the CLI made (`AuditContext::operator`) is chained in the
/// operator log too.
pub(crate) async fn insert_events<'a, D: Dialect>(
    tx: &mut Tx<D>,
    action: AuditAction,
    events: impl Iterator<Item = (&'a AccountId, Option<&'a KeyId>, &'a AuditContext)>,
) -> StoreResult<()> {
    let events: Vec<Entry<'a>> = events
        .map(|(account_id, key_id, audit)| (Some(account_id), key_id, audit))
        .collect();
    insert(tx, action, &events).await
}

/// Inserts one event of the operator log (and of the account's log, if it is about an
/// account and the action belongs there), with its webhook event if it is one.
pub(crate) async fn insert_operator_event<D: Dialect>(
    tx: &mut Tx<D>,
    action: AuditAction,
    account_id: Option<&AccountId>,
    audit: &AuditContext,
) -> StoreResult<()> {
    let audit = AuditContext {
        operator: Some(audit.operator.clone().unwrap_or(OperatorActor::Cli)),
        ..audit.clone()
    };
    insert(tx, action, &[(account_id, None, &audit)]).await
}

async fn insert<D: Dialect>(
    tx: &mut Tx<D>,
    action: AuditAction,
    events: &[Entry<'_>],
) -> StoreResult<()> {
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(events.len());
    for (account_id, key_id, audit) in events {
        if let Some(account_id) = account_id
            && action.in_account_log()
        {
            rows.push(Row {
                chain_id: account_id.as_str(),
                actor: audit.actor_key_id.as_ref().map(KeyId::as_str),
                key_id: *key_id,
                changes: audit.changes.clone(),
                audit,
            });
        }
        if let Some(operator) = &audit.operator {
            rows.push(Row {
                chain_id: AuditChain::OPERATOR_ID,
                actor: operator.id(),
                key_id: *key_id,
                changes: operator_changes(*account_id, &audit.changes),
                audit,
            });
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut heads = take_heads(tx, rows.iter().map(|row| row.chain_id)).await?;
    let sealed: Vec<AuditItem> = rows
        .iter()
        .map(|row| {
            let head = heads.entry(row.chain_id.to_owned()).or_default();
            let item = AuditItem::sealed(
                row.audit.time,
                action,
                row.actor,
                row.key_id,
                &row.changes,
                &row.audit.request_id,
                head,
            );
            if let Some(hash) = &item.hash {
                head.clone_from(hash);
            }
            item
        })
        .collect();
    let mut insert = QueryBuilder::<D>::new(
        "insert into audit_event (account_id, time, action, actor_key_id, key_id, changes, \
         request_id, prev_hash, hash) values ",
    );
    push_rows(
        &mut insert,
        rows.iter().zip(&sealed).map(|(row, item)| {
            [
                row.chain_id.into(),
                ts(row.audit.time).into(),
                action.as_str().into(),
                row.actor.into(),
                row.key_id.map(KeyId::as_str).into(),
                row.changes.to_string().into(),
                row.audit.request_id.as_str().into(),
                item.prev_hash.as_deref().into(),
                item.hash.as_deref().into(),
            ]
        }),
    );
    insert.build().run(on(tx)).await?;
    set_heads(tx, &heads).await?;
    if let Some(kind) = event_type(action) {
        let outbox: Vec<OutboxEvent> = events
            .iter()
            .filter_map(|(account_id, key_id, audit)| {
                let account_id = (*account_id)?;
                Some(OutboxEvent {
                    event_id: EventId::from_ulid(ulid::Ulid::generate()),
                    account_id: account_id.clone(),
                    kind,
                    time: audit.time,
                    data: serde_json::json!({
                        "account_id": account_id.as_str(),
                        "key_id": key_id.map(KeyId::as_str),
                        "actor_key_id": audit.actor_key_id.as_ref().map(KeyId::as_str),
                        "request_id": audit.request_id,
                        "changes": audit.changes,
                    }),
                })
            })
            .collect();
        webhooks::record(tx, &outbox).await?;
    }
    Ok(())
}

/// Every chain with events or a head, in chain id order.
pub(crate) async fn chains<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
) -> StoreResult<Vec<AuditChain>> {
    let sql = "select account_id from audit_event union select chain_id from audit_chain \
               order by 1";
    let rows = sqlx::query(sql).all(on).await?;
    rows.iter()
        .map(|row| {
            let id: String = D::get(row, "account_id")?;
            Ok(AuditChain::from_id(id))
        })
        .collect()
}

/// A page of a chain's events, oldest first.
pub(crate) async fn chain_page<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    chain: &AuditChain,
    after: Option<i64>,
    limit: u32,
) -> StoreResult<Vec<AuditEvent>> {
    let sql = format!(
        "select {AUDIT_COLUMNS} from audit_event where account_id = $1 \
         and audit_event_id > $2 order by audit_event_id limit $3"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .arg(chain.id())
        .arg(after.unwrap_or(0))
        .arg(i64::from(limit))
        .all(on)
        .await?;
    rows.iter().map(rows::audit_event::<D>).collect()
}

/// The recorded head of a chain.
pub(crate) async fn chain_head<'c, D: Dialect>(
    on: impl Executor<'c, Database = D>,
    chain: &AuditChain,
) -> StoreResult<Option<String>> {
    let row = sqlx::query("select head_hash from audit_chain where chain_id = $1")
        .arg(chain.id())
        .optional(on)
        .await?;
    row.map(|row| D::get(&row, "head_hash")).transpose()
}
