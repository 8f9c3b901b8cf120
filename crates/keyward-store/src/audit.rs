//! The audit log as it is served and chained (API.md §`GET /v1/audit-log`, tamper
//! evidence): the wire form of an event ([`AuditItem`], which the HTTP layer serves and
//! the chain hashes, so the two can't drift apart), the chains ([`AuditChain`]) and their
//! verification ([`verify_chain`], behind `keyward audit verify`).

use std::fmt;

use keyward_core::{AccountId, KeyId, chain, timefmt};
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{AuditAction, AuditEvent, Store, StoreResult};

/// One audit event as `GET /v1/audit-log` serves it. Its hash covers every field but
/// `hash` itself, so a field added here is covered by the chain too.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditItem {
    /// When.
    #[schema(format = DateTime)]
    pub time: String,
    /// `key.created`, `key.updated`, `key.rotated`, `key.revoked`, `key.leaked`,
    /// `webhook.created`, `webhook.deleted`, `account.updated`, `account.suspended`, `account.resumed` or
    /// `account.deleted`; in the operator log also `account.created`, `plan.updated`,
    /// `plan.deleted`, `operator.created` and `operator.revoked`.
    pub action: String,
    /// The key that made the change; in the operator log the operator (`op_…`). `null`
    /// for the CLI (its `request_id` is `cli`), and in an account's log for an operator.
    pub actor_key_id: Option<String>,
    /// The key changed (`null` for an event about a subscription).
    pub key_id: Option<String>,
    /// What changed; never a secret.
    #[schema(value_type = Object)]
    pub changes: Value,
    /// The request that made the change.
    pub request_id: String,
    /// The `hash` of the event before it in the account's log (64 zeros for the first;
    /// `null` for an event stored before the log was chained).
    pub prev_hash: Option<String>,
    /// Lowercase hex SHA-256 of `prev_hash` followed by this event's canonical JSON
    /// (RFC 8785) without `hash`.
    pub hash: Option<String>,
}

impl AuditItem {
    /// A new event, chained to `prev_hash`, with its hash computed.
    #[must_use]
    pub fn sealed(
        time: OffsetDateTime,
        action: AuditAction,
        actor_key_id: Option<&str>,
        key_id: Option<&KeyId>,
        changes: &Value,
        request_id: &str,
        prev_hash: &str,
    ) -> Self {
        let mut item = Self {
            time: timefmt::format(time),
            action: action.as_str().to_owned(),
            actor_key_id: actor_key_id.map(ToOwned::to_owned),
            key_id: key_id.map(ToString::to_string),
            changes: changes.clone(),
            request_id: request_id.to_owned(),
            prev_hash: Some(prev_hash.to_owned()),
            hash: None,
        };
        item.hash = item.computed_hash();
        item
    }

    /// The hash its fields (other than `hash`) and `prev_hash` give, or `None` for an
    /// event without `prev_hash`.
    #[must_use]
    pub fn computed_hash(&self) -> Option<String> {
        let prev_hash = self.prev_hash.as_deref()?;
        // A struct of strings and JSON values always serialises to an object.
        let Ok(Value::Object(wire)) = serde_json::to_value(self) else {
            return Some(String::new());
        };
        Some(chain::link(prev_hash, &wire))
    }

    /// Its wire object, as served.
    #[must_use]
    pub fn to_wire(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }
}

impl AuditEvent {
    /// The event as it is served and hashed.
    #[must_use]
    pub fn item(&self) -> AuditItem {
        AuditItem {
            time: timefmt::format(self.time),
            action: self.action.as_str().to_owned(),
            actor_key_id: self.actor_key_id.clone(),
            key_id: self.key_id.as_ref().map(ToString::to_string),
            changes: self.changes.clone(),
            request_id: self.request_id.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

/// A hash chain of audit events: each account's log is one, and the operator log one
/// more, with its own head.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditChain {
    /// The account's events.
    Account(AccountId),
    /// The operator log: what operators and the CLI did.
    Operator,
}

impl AuditChain {
    /// The operator log's id in storage (account ids start with `acct_`).
    pub const OPERATOR_ID: &'static str = "operator";

    /// The chain's id in storage (the row that holds its head, and its events'
    /// `account_id` column).
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Account(account_id) => account_id.as_str(),
            Self::Operator => Self::OPERATOR_ID,
        }
    }

    /// The chain a stored id names.
    #[must_use]
    pub fn from_id(id: String) -> Self {
        if id == Self::OPERATOR_ID {
            Self::Operator
        } else {
            Self::Account(AccountId::from_trusted(id))
        }
    }
}

impl fmt::Display for AuditChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Account(account_id) => write!(f, "account {account_id}"),
            Self::Operator => f.write_str("operator log"),
        }
    }
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events whose hashes were checked.
    pub chained: u64,
    /// Events at the start of the log stored before it was chained (no hashes).
    pub unchained: u64,
}

/// Where a chain stops matching its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The chain.
    pub chain: AuditChain,
    /// The first event that does not match (`None`: the events end before the chain's
    /// recorded head).
    pub event: Option<BrokenEvent>,
    /// What does not match, in words.
    pub reason: &'static str,
}

/// The event a [`ChainBreak`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEvent {
    /// Its position in storage (`audit_event_id`).
    pub seq: i64,
    /// Its time as served.
    pub time: String,
    /// Its action as served.
    pub action: String,
    /// Its request id.
    pub request_id: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            Some(e) => write!(
                f,
                "{}: event {} ({} at {}, request {}): {}",
                self.chain, e.seq, e.action, e.time, e.request_id, self.reason
            ),
            None => write!(f, "{}: {}", self.chain, self.reason),
        }
    }
}

/// Events read per page while verifying.
const VERIFY_PAGE: u32 = 1000;

/// Recomputes every hash of `chain`, oldest first: the first event whose `prev_hash` is
/// not the hash before it (an event deleted or inserted before it), whose hash does not
/// match its fields (an edited row), or a last hash that is not the recorded head (events
/// deleted at the end) is the break.
///
/// # Errors
/// A storage error while reading.
pub async fn verify_chain(
    store: &dyn Store,
    chain: &AuditChain,
) -> StoreResult<Result<ChainReport, ChainBreak>> {
    let mut report = ChainReport {
        chained: 0,
        unchained: 0,
    };
    let mut expected: String = chain::GENESIS.to_owned();
    let mut after = None;
    loop {
        let page = store.audit_chain_page(chain, after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for event in &page {
            let item = event.item();
            let broken = |reason| ChainBreak {
                chain: chain.clone(),
                event: Some(BrokenEvent {
                    seq: event.seq,
                    time: item.time.clone(),
                    action: item.action.clone(),
                    request_id: item.request_id.clone(),
                }),
                reason,
            };
            match (&item.prev_hash, &item.hash) {
                // Events stored before the log was chained, ahead of its first chained one.
                (None, None) if report.chained == 0 => {
                    report.unchained += 1;
                    continue;
                }
                (Some(prev), Some(hash)) => {
                    if *prev != expected {
                        return Ok(Err(broken(
                            "its prev_hash is not the hash of the event before it \
                             (an event was deleted or inserted before it, or it was edited)",
                        )));
                    }
                    if item.computed_hash().as_ref() != Some(hash) {
                        return Ok(Err(broken(
                            "its hash does not match its contents (the row was edited)",
                        )));
                    }
                    expected.clone_from(hash);
                    report.chained += 1;
                }
                _ => {
                    return Ok(Err(broken(
                        "it has no hash inside the chain (the row was edited or inserted)",
                    )));
                }
            }
        }
    }
    let head = store.audit_chain_head(chain).await?;
    let ends_at_head = match head {
        Some(head) => head == expected,
        None => report.chained == 0,
    };
    if !ends_at_head {
        return Ok(Err(ChainBreak {
            chain: chain.clone(),
            event: None,
            reason: "its last event is not the chain's recorded head \
                     (events were deleted at its end, or the head was edited)",
        }));
    }
    Ok(Ok(report))
}
