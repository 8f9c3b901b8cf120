//! keyward's storage contract: the [`Store`] trait, the records it reads and writes, and
//! [`StoreError`]. The backends (`keyward-store-sql`: SQLite and PostgreSQL) implement it; the
//! HTTP layer and the workers only ever see this crate, never sqlx.
//!
//! Tenancy is in the signatures: every account-scoped method takes an [`AccountId`] and
//! filters on it, so another account's key is exactly as invisible as a missing one.
//!
//! With the `testing` feature, [`contract`] holds the test suite every backend must pass.

use std::borrow::Cow;

use async_trait::async_trait;
use keyward_core::leak::LeakResponse;
use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyDigest, KeyId, KeyName, KeyPolicies, KeyStatus,
    Limits, Metadata, OperatorId, PlanName, RequestId, ScopeSet, StoredStatus, WebhookId,
};
use time::OffsetDateTime;

pub mod audit;
#[cfg(feature = "testing")]
pub mod contract;
pub mod runs;
pub mod webhooks;

pub use audit::{AuditChain, AuditItem, BrokenEvent, ChainBreak, ChainReport, verify_chain};
pub use webhooks::{Delivery, DeliveryAttempt, FinishedAttempt, OutboxEvent, Webhook};

/// What can go wrong in storage, in terms callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (in this account).
    #[error("not found")]
    NotFound,
    /// The change conflicts with the stored state; the text says which rule.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database can't be reached or is overloaded; retrying later may work.
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug or a corrupt row.
    #[error("storage error")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// An account (a tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its id.
    pub account_id: AccountId,
    /// Operator-given name.
    pub name: String,
    /// Its plan (a row of the plan table).
    pub plan: PlanName,
    /// Its own numbers, each replacing the plan's where set.
    pub overrides: Limits,
    /// Whether its keys authenticate.
    pub status: AccountStatus,
    /// The platform's own id of it, unique.
    pub external_id: Option<ExternalId>,
    /// Operator-defined object.
    pub metadata: Metadata,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// An account as read back: with the limits in force and its key count.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    /// The account.
    pub account: Account,
    /// Its plan's limits with its overrides applied.
    pub limits: Limits,
    /// How many keys it has.
    pub key_count: u64,
}

/// A change of an account: each `Some` field is set.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    /// New name.
    pub name: Option<String>,
    /// New plan (it must exist).
    pub plan: Option<PlanName>,
    /// New overrides of the plan's numbers (all three replaced).
    pub overrides: Option<Limits>,
    /// Suspend or resume.
    pub status: Option<AccountStatus>,
    /// New metadata.
    pub metadata: Option<Metadata>,
    /// New external id, or `Some(None)` to remove it.
    pub external_id: Option<Option<ExternalId>>,
}

impl AccountPatch {
    /// What the patch changes, as its audit events say: the fields it sets.
    #[must_use]
    pub fn changes(&self) -> serde_json::Value {
        let mut changes = serde_json::Map::new();
        if let Some(name) = &self.name {
            changes.insert("name".into(), name.as_str().into());
        }
        if let Some(plan) = &self.plan {
            changes.insert("plan".into(), plan.as_str().into());
        }
        if let Some(o) = self.overrides {
            changes.insert(
                "overrides".into(),
                serde_json::json!({
                    "per_minute": o.per_minute,
                    "per_day": o.per_day,
                    "per_month": o.per_month,
                }),
            );
        }
        if let Some(status) = self.status {
            changes.insert("status".into(), status.as_str().into());
        }
        if let Some(metadata) = &self.metadata {
            changes.insert("metadata".into(), metadata.as_map().clone().into());
        }
        if let Some(external_id) = &self.external_id {
            changes.insert(
                "external_id".into(),
                external_id.as_ref().map(ExternalId::as_str).into(),
            );
        }
        serde_json::Value::Object(changes)
    }
}

/// A page of accounts for the operator: after an id, with filters.
#[derive(Debug, Clone, Default)]
pub struct AccountQuery {
    /// At most this many.
    pub limit: u32,
    /// Only accounts whose id sorts after this one.
    pub after: Option<AccountId>,
    /// Only the account with this external id.
    pub external_id: Option<ExternalId>,
    /// Only accounts with this status.
    pub status: Option<AccountStatus>,
}

/// An operator: the holder of an operator key, which belongs to no account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Its id.
    pub operator_id: OperatorId,
    /// Operator-given name.
    pub name: String,
    /// Display hint of its key.
    pub hint: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// A plan: a name and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its name.
    pub name: PlanName,
    /// Its limits; `None` is unlimited.
    pub limits: Limits,
}

/// A stored API key, without any secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id.
    pub key_id: KeyId,
    /// Owner.
    pub account_id: AccountId,
    /// Optional label.
    pub name: Option<KeyName>,
    /// Permissions.
    pub scopes: ScopeSet,
    /// Caller-defined object.
    pub metadata: Metadata,
    /// Status as set by callers (expiry is derived separately).
    pub status: StoredStatus,
    /// When it stops authenticating, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last authenticated use; lags by at most a second.
    pub last_used: Option<OffsetDateTime>,
    /// Display hint of the newest secret (`kw_AbCd…wxyz`).
    pub hint: String,
    /// Bumped by every change; guards read-check-write sequences.
    pub version: i64,
    /// Its own rate limit, credits and allowed addresses.
    pub policies: KeyPolicies,
    /// Days without use after which it shows `expired`.
    pub expire_after_inactive_days: Option<u16>,
}

impl ApiKey {
    /// The status shown at `now`.
    #[must_use]
    pub fn status_at(&self, now: OffsetDateTime) -> KeyStatus {
        KeyStatus::at(self.status, self.expiry(), now)
    }

    /// When it stops authenticating by itself: the earlier of `expires_at` and the end
    /// of its allowed inactivity ([`keyward_core::policy::expiry`]).
    #[must_use]
    pub fn expiry(&self) -> Option<OffsetDateTime> {
        keyward_core::policy::expiry(
            self.expires_at,
            self.expire_after_inactive_days,
            self.last_used,
            self.created_at,
        )
    }
}

/// What authentication needs, found by a secret's digest.
#[derive(Debug, Clone)]
pub struct AuthRecord {
    /// The key the secret belongs to.
    pub key: ApiKey,
    /// When this particular secret stops working (set at rotation with grace).
    pub secret_expires_at: Option<OffsetDateTime>,
    /// The owning account's limits in force.
    pub limits: Limits,
    /// Whether the owning account is suspended.
    pub account_status: AccountStatus,
}

/// A secret to store for a key: its digest and display hint, never the key itself.
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// SHA-256 of the key string.
    pub digest: KeyDigest,
    /// Display hint.
    pub hint: String,
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Public id.
    pub key_id: KeyId,
    /// Owner.
    pub account_id: AccountId,
    /// Optional label.
    pub name: Option<KeyName>,
    /// Permissions.
    pub scopes: ScopeSet,
    /// Caller-defined object.
    pub metadata: Metadata,
    /// Expiry, if any.
    pub expires_at: Option<OffsetDateTime>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Its first secret.
    pub secret: NewSecret,
    /// Its own rate limit, credits and allowed addresses.
    pub policies: KeyPolicies,
    /// Days without use after which it shows `expired`.
    pub expire_after_inactive_days: Option<u16>,
}

/// Fields to change on a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name, or `Some(None)` to clear it.
    pub name: Option<Option<KeyName>>,
    /// New scopes.
    pub scopes: Option<ScopeSet>,
    /// New status.
    pub status: Option<StoredStatus>,
    /// New expiry, or `Some(None)` to remove it.
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// New metadata (replaces the object).
    pub metadata: Option<Metadata>,
    /// New policies (replace the stored object).
    pub policies: Option<KeyPolicies>,
    /// New inactivity expiry, or `Some(None)` to remove it.
    pub expire_after_inactive_days: Option<Option<u16>>,
}

/// Event kinds of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// `key.created`
    Created,
    /// `key.updated`
    Updated,
    /// `key.rotated`
    Rotated,
    /// `key.revoked`
    Revoked,
    /// `key.leaked`: reported leaked, and revoked or disabled.
    Leaked,
    /// `webhook.created`
    WebhookCreated,
    /// `webhook.deleted`
    WebhookDeleted,
    /// `account.created` (operator log)
    AccountCreated,
    /// `account.updated`
    AccountUpdated,
    /// `account.suspended`
    AccountSuspended,
    /// `account.resumed`
    AccountResumed,
    /// `account.deleted`
    AccountDeleted,
    /// `plan.updated` (operator log: a plan created or its limits replaced)
    PlanUpdated,
    /// `plan.deleted` (operator log)
    PlanDeleted,
    /// `operator.created` (operator log)
    OperatorCreated,
    /// `operator.revoked` (operator log)
    OperatorRevoked,
}

impl AuditAction {
    /// Every action.
    pub const ALL: [Self; 16] = [
        Self::Created,
        Self::Updated,
        Self::Rotated,
        Self::Revoked,
        Self::Leaked,
        Self::WebhookCreated,
        Self::WebhookDeleted,
        Self::AccountCreated,
        Self::AccountUpdated,
        Self::AccountSuspended,
        Self::AccountResumed,
        Self::AccountDeleted,
        Self::PlanUpdated,
        Self::PlanDeleted,
        Self::OperatorCreated,
        Self::OperatorRevoked,
    ];

    /// Name on the wire and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "key.created",
            Self::Updated => "key.updated",
            Self::Rotated => "key.rotated",
            Self::Revoked => "key.revoked",
            Self::Leaked => "key.leaked",
            Self::WebhookCreated => "webhook.created",
            Self::WebhookDeleted => "webhook.deleted",
            Self::AccountCreated => "account.created",
            Self::AccountUpdated => "account.updated",
            Self::AccountSuspended => "account.suspended",
            Self::AccountResumed => "account.resumed",
            Self::AccountDeleted => "account.deleted",
            Self::PlanUpdated => "plan.updated",
            Self::PlanDeleted => "plan.deleted",
            Self::OperatorCreated => "operator.created",
            Self::OperatorRevoked => "operator.revoked",
        }
    }

    /// Whether the account's own log records it, when it is about an account (the
    /// others are the operator log's only).
    #[must_use]
    pub const fn in_account_log(self) -> bool {
        !matches!(
            self,
            Self::AccountCreated
                | Self::PlanUpdated
                | Self::PlanDeleted
                | Self::OperatorCreated
                | Self::OperatorRevoked
        )
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
    }
}

/// Who, on the operator's side, made a change: it is recorded in the operator log too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorActor {
    /// An operator key, through the operator API.
    Api(OperatorId),
    /// A `keyward` command (or `serve`'s bootstrap).
    Cli,
    /// A report signed by a secret scanning partner (GitHub), acted on by keyward itself.
    Scanner,
}

impl OperatorActor {
    /// The operator's id (`op_…`), or `None` for the CLI and a scanner.
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Api(id) => Some(id.as_str()),
            Self::Cli | Self::Scanner => None,
        }
    }
}

/// Who made a change, for the audit event written in the same transaction.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// The caller's key (`None` for operator commands).
    pub actor_key_id: Option<KeyId>,
    /// The operator or CLI that made the change (`None`: an account's key did): the
    /// change is recorded in the operator log too, with the operator as its actor.
    pub operator: Option<OperatorActor>,
    /// The request that made the change.
    pub request_id: String,
    /// When.
    pub time: OffsetDateTime,
    /// What changed: field names to values, never a secret.
    pub changes: serde_json::Value,
}

/// A stored audit event.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Position, for cursors: larger is newer.
    pub seq: i64,
    /// When.
    pub time: OffsetDateTime,
    /// What happened.
    pub action: AuditAction,
    /// Who did it: a key's id, or in the operator log an operator's (`op_…`).
    pub actor_key_id: Option<String>,
    /// To which key (`None` for an event about a subscription).
    pub key_id: Option<KeyId>,
    /// What changed.
    pub changes: serde_json::Value,
    /// The request that did it.
    pub request_id: String,
    /// The hash of the event before it in its chain (`None` for an event stored before
    /// the audit log was chained).
    pub prev_hash: Option<String>,
    /// Its own hash ([`keyward_core::chain::link`] of [`AuditEvent::item`]).
    pub hash: Option<String>,
}

/// After a change: the key as it now is, and every digest it had before, so that
/// caches can drop them.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The key after the change (`None` after revocation).
    pub key: Option<ApiKey>,
    /// Digests of the secrets the key had before the change.
    pub stale_digests: Vec<KeyDigest>,
}

/// One authenticated request, as recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Owner.
    pub account_id: AccountId,
    /// When it arrived.
    pub time: OffsetDateTime,
    /// HTTP method. Both names are borrowed from `'static` strings on the request path
    /// (no allocation per request) and owned when read back from storage.
    pub method: Cow<'static, str>,
    /// Route template with method, e.g. `GET /v1/api-keys/{key_id}`.
    pub endpoint: Cow<'static, str>,
    /// Response status.
    pub status: u16,
    /// The client's `user-agent`, if any (truncated).
    pub user_agent: Option<String>,
    /// The key that authenticated.
    pub key_id: KeyId,
    /// The request id.
    pub request_id: RequestId,
    /// Time to answer, in milliseconds.
    pub latency_ms: u32,
}

/// Filters and cursor of a history or audit page.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    /// Only rows older than this position (the cursor).
    pub before: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
    /// Only this key's rows.
    pub key_id: Option<KeyId>,
    /// Only this endpoint (request history).
    pub endpoint: Option<String>,
    /// Only this status (request history).
    pub status: Option<u16>,
    /// Only this action (audit log).
    pub action: Option<AuditAction>,
    /// Only rows at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only rows before this time.
    pub until: Option<OffsetDateTime>,
}

/// Filters and cursor of a key listing.
#[derive(Debug, Clone)]
pub struct KeyQuery {
    /// Only keys showing this status at `now`.
    pub status: Option<KeyStatus>,
    /// At most this many keys (`None`: all of them).
    pub limit: Option<u32>,
    /// Only keys after this id.
    pub after: Option<KeyId>,
    /// The time that decides `expired`.
    pub now: OffsetDateTime,
}

/// Counts added to the usage counters: the monthly one of the endpoint and key, and
/// the account's count of the day.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// Owner.
    pub account_id: AccountId,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Route template with method.
    pub endpoint: String,
    /// The key.
    pub key_id: KeyId,
}

impl UsageKey {
    /// The day's month, `YYYY-MM`.
    #[must_use]
    pub fn month(&self) -> &str {
        self.day.get(..7).unwrap_or(&self.day)
    }
}

/// Everything a batch writer flushes in one transaction.
#[derive(Debug, Default, Clone)]
pub struct MeterBatch {
    /// New request history rows.
    pub requests: Vec<RequestRecord>,
    /// Latest use per key, with the key's account (which the caches of listings are
    /// keyed by); `last_used` only moves forward.
    pub last_used: Vec<(AccountId, KeyId, OffsetDateTime)>,
    /// Increments of the monthly counters, sorted by key to keep concurrent writers
    /// from deadlocking.
    pub usage: Vec<(UsageKey, u64)>,
}

impl MeterBatch {
    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.last_used.is_empty() && self.usage.is_empty()
    }
}

/// The persistence behind keyward. One method per use case.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Checks that the store takes writes now (readiness): a write commits through the
    /// connection writes go to, and on SQLite the database file on disk is still the
    /// one opened and its file system has room to grow. `Unavailable` says why not.
    async fn check_ready(&self) -> StoreResult<()>;

    /// Number of accounts (bootstrap happens only at zero).
    async fn account_count(&self) -> StoreResult<u64>;
    /// Creates an account and its first key (with its `key.created` event) in one
    /// transaction, with `account.created` in the operator log (actor: `audit.operator`)
    /// and for operator webhooks.
    async fn create_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// Creates the account and its first key only if the database has no account yet,
    /// atomically, so that nodes starting together on an empty database bootstrap once.
    /// Returns whether it created them.
    async fn bootstrap_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<bool>;
    /// Every account, oldest first.
    async fn list_accounts(&self) -> StoreResult<Vec<AccountSummary>>;
    /// A page of accounts in id order (creation order), and whether more follow.
    async fn account_page(&self, query: &AccountQuery) -> StoreResult<(Vec<AccountSummary>, bool)>;
    /// One account.
    async fn account(&self, account_id: &AccountId) -> StoreResult<Option<AccountSummary>>;
    /// The account with this external id.
    async fn account_by_external_id(
        &self,
        external_id: &ExternalId,
    ) -> StoreResult<Option<AccountSummary>>;
    /// Changes an account, and tells every node to drop its keys from their caches (a key
    /// change of each, as for a revoke), since their limits or status may have changed.
    /// Returns the account as changed and the digests of its keys, which the caller drops
    /// from its own caches. `NotFound` for a missing account; `Conflict("unknown plan")`
    /// for a plan the plan table does not hold, `Conflict("unique constraint")` for an
    /// external id another account has.
    /// Its events (`account.updated`, and `account.suspended` or `account.resumed` for a
    /// status) go to the account's log and the operator log, and to operator webhooks.
    async fn update_account(
        &self,
        account_id: &AccountId,
        patch: &AccountPatch,
        audit: &AuditContext,
    ) -> StoreResult<(AccountSummary, Vec<KeyDigest>)>;
    /// Deletes an account: revokes every key (every node drops them, as for a revoke),
    /// deletes its request history, usage counters and webhook subscriptions, and the
    /// account itself, with its `account.deleted` event in its own log (which is kept)
    /// and the operator log. `NotFound` for a missing account. Returns the digests its
    /// keys had, which the caller drops from its own caches.
    async fn delete_account(
        &self,
        account_id: &AccountId,
        audit: &AuditContext,
    ) -> StoreResult<Vec<KeyDigest>>;
    /// Changes an account's plan ([`Store::update_account`] with only the plan).
    async fn set_plan(
        &self,
        account_id: &AccountId,
        plan: &PlanName,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// Replaces an account's overrides of its plan's numbers ([`Store::update_account`]
    /// with only the overrides).
    async fn set_limits(
        &self,
        account_id: &AccountId,
        overrides: Limits,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// Every plan, by name.
    async fn plans(&self) -> StoreResult<Vec<Plan>>;
    /// Creates a plan or replaces its limits, and tells every node to drop the keys of
    /// the plan's accounts from their caches; returns their digests. `plan.updated` goes
    /// to the operator log.
    async fn put_plan(&self, plan: &Plan, audit: &AuditContext) -> StoreResult<Vec<KeyDigest>>;
    /// Deletes a plan: `NotFound` if there is none of that name, `Conflict` while an
    /// account uses it; `plan.deleted` goes to the operator log.
    async fn delete_plan(&self, name: &PlanName, audit: &AuditContext) -> StoreResult<()>;

    /// Stores an operator and the digest of its key, with `operator.created` in the
    /// operator log.
    async fn insert_operator(
        &self,
        operator: &Operator,
        secret: &NewSecret,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// Every operator, oldest first.
    async fn list_operators(&self) -> StoreResult<Vec<Operator>>;
    /// Deletes an operator, so that its key never works again, with `operator.revoked` in
    /// the operator log. `NotFound` if none.
    async fn revoke_operator(
        &self,
        operator_id: &OperatorId,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// The operator whose key has this digest.
    async fn operator_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<Operator>>;

    /// Finds a live secret by digest, with its key and account. A secret whose grace
    /// period has ended may still be returned; the caller checks `secret_expires_at`.
    async fn auth_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<AuthRecord>>;
    /// Keys of an account, oldest first; the `bool` says whether more follow.
    async fn list_keys(
        &self,
        account_id: &AccountId,
        query: &KeyQuery,
    ) -> StoreResult<(Vec<ApiKey>, bool)>;
    /// A key of any account, for the operator (API.md §Operator API).
    async fn any_key(&self, key_id: &KeyId) -> StoreResult<Option<ApiKey>>;
    /// One key of an account.
    async fn get_key(&self, account_id: &AccountId, key_id: &KeyId) -> StoreResult<Option<ApiKey>>;
    /// Inserts a key and its `key.created` event; durable when it returns.
    async fn insert_key(&self, key: &NewKey, audit: &AuditContext) -> StoreResult<ApiKey>;
    /// Inserts many keys, each with its `key.created` event, in one transaction: for
    /// imports and benchmark datasets, where one commit per key would take hours.
    async fn import_keys(&self, keys: &[NewKey], audit: &AuditContext) -> StoreResult<()>;
    /// Applies a patch if the key still has `expected_version`, with its `key.updated`
    /// event. `Conflict` if the key changed meanwhile, `NotFound` if it is gone.
    async fn update_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        patch: &KeyPatch,
        audit: &AuditContext,
    ) -> StoreResult<Changed>;
    /// Adds a new secret; older secrets stop working at `old_secrets_end` (now: at once).
    async fn rotate_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        secret: &NewSecret,
        old_secrets_end: OffsetDateTime,
        audit: &AuditContext,
    ) -> StoreResult<Changed>;
    /// Deletes a key and its secrets, with its `key.revoked` event.
    async fn revoke_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        audit: &AuditContext,
    ) -> StoreResult<Changed>;

    /// Answers a leak of one of the key's secrets: revokes it (as [`Store::revoke_key`]) or
    /// disables it (status `inactive`, as [`Store::update_key`]), with its `key.leaked`
    /// event (and webhook event) instead of `key.revoked` or `key.updated`. `Conflict` if
    /// the key changed meanwhile, `NotFound` if it is gone.
    async fn leak_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        response: LeakResponse,
        audit: &AuditContext,
    ) -> StoreResult<Changed>;

    /// Writes one batch of metering in one transaction.
    async fn write_meter_batch(&self, batch: &MeterBatch) -> StoreResult<()>;
    /// A page of the account's request history, newest first, with each row's position.
    async fn request_history(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<(i64, RequestRecord)>>;
    /// The account's usage counters of one month: `(endpoint, key_id, count)`.
    async fn usage(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, KeyId, u64)>>;
    /// The account's requests on each day of one month (`YYYY-MM`) that had any:
    /// `(YYYY-MM-DD, count)`, in day order.
    async fn usage_by_day(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, u64)>>;
    /// A page of a chain's events (an account's log, or the operator log), newest first.
    async fn audit_log(
        &self,
        chain: &AuditChain,
        query: &PageQuery,
    ) -> StoreResult<Vec<AuditEvent>>;
    /// Every audit chain that has events, in a stable order.
    async fn audit_chains(&self) -> StoreResult<Vec<AuditChain>>;
    /// A page of one chain's events, oldest first, after position `after` (`None`: from
    /// the start).
    async fn audit_chain_page(
        &self,
        chain: &AuditChain,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEvent>>;
    /// The hash of the chain's newest event as recorded when it was written (`None` if it
    /// has none).
    async fn audit_chain_head(&self, chain: &AuditChain) -> StoreResult<Option<String>>;

    /// Stores a subscription, with its `webhook.created` audit event in its account's log
    /// (an operator's subscription: in the operator log).
    async fn create_webhook(&self, webhook: &Webhook, audit: &AuditContext) -> StoreResult<()>;
    /// The subscriptions of an account (`None`: the operator's, of every account), oldest
    /// first.
    async fn list_webhooks(&self, account_id: Option<&AccountId>) -> StoreResult<Vec<Webhook>>;
    /// Deletes a subscription and its pending deliveries, with its `webhook.deleted` audit
    /// event; `NotFound` if the account (or the operator) has no such subscription.
    async fn delete_webhook(
        &self,
        account_id: Option<&AccountId>,
        webhook_id: &WebhookId,
        audit: &AuditContext,
    ) -> StoreResult<()>;
    /// A page of a subscription's attempts, newest first, each with its position; `None`
    /// if the account (or the operator) has no such subscription.
    async fn webhook_attempts(
        &self,
        account_id: Option<&AccountId>,
        webhook_id: &WebhookId,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Option<Vec<(i64, DeliveryAttempt)>>>;
    /// Claims up to `limit` deliveries due at `now` that no node holds, for `lease`: until
    /// then no other claim returns them, and after it (a crash) they are due again.
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records finished attempts of claimed deliveries in one transaction: on an error,
    /// none of them. Each delivery counts one more attempt, loses its lease, and is
    /// delivered ([`FinishedAttempt::delivered`]), due again at its attempt's
    /// `next_attempt_at`, or else failed for good; each attempt goes into its
    /// subscription's log, in the order given.
    async fn record_attempts(&self, attempts: &[FinishedAttempt]) -> StoreResult<()>;
    /// Records events for subscribers now, each in a transaction with the mark that makes
    /// it once (`once_key`, e.g. the key, its expiry and the kind): an event whose mark
    /// exists is skipped, so nodes scanning together make it once. Returns how many it
    /// recorded.
    async fn record_scanned_events(&self, events: &[(String, OutboxEvent)]) -> StoreResult<u64>;
    /// Keys whose `expires_at` lies in `(from, to]`: `(account, key, expires_at)`.
    async fn keys_expiring_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> StoreResult<Vec<(AccountId, KeyId, OffsetDateTime)>>;
    /// Deletes deliveries finished (delivered or failed) before `cutoff`, and attempts
    /// made before it; returns how many rows.
    async fn prune_deliveries(&self, cutoff: OffsetDateTime) -> StoreResult<u64>;

    /// Deletes at most `batch` history rows older than `cutoff`; returns how many.
    async fn prune_history(&self, cutoff: OffsetDateTime, batch: u32) -> StoreResult<u64>;
}
