//! keyward's storage contract: the [`Store`] trait, the records it reads and writes, and
//! [`StoreError`]. Backends (`keyward-store-sqlite`, later PostgreSQL) implement it; the
//! HTTP layer and the workers only ever see this crate, never sqlx.
//!
//! Tenancy is in the signatures: every account-scoped method takes an [`AccountId`] and
//! filters on it, so another account's key is exactly as invisible as a missing one.
//!
//! With the `testing` feature, [`contract`] holds the test suite every backend must pass.

use std::borrow::Cow;

use async_trait::async_trait;
use keyward_core::{
    AccountId, KeyDigest, KeyId, KeyName, KeyStatus, Limits, Metadata, Plan, RequestId, ScopeSet,
    StoredStatus,
};
use time::OffsetDateTime;

#[cfg(feature = "testing")]
pub mod contract;
pub mod runs;

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
    /// Its plan.
    pub plan: Plan,
    /// Limits that apply when the plan is enterprise.
    pub custom_limits: Limits,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

impl Account {
    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.plan.limits(self.custom_limits)
    }
}

/// An account with its key count, for `accounts list`.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    /// The account.
    pub account: Account,
    /// How many keys it has.
    pub key_count: u64,
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
}

impl ApiKey {
    /// The status shown at `now`.
    #[must_use]
    pub fn status_at(&self, now: OffsetDateTime) -> KeyStatus {
        KeyStatus::at(self.status, self.expires_at, now)
    }
}

/// What authentication needs, found by a secret's digest.
#[derive(Debug, Clone)]
pub struct AuthRecord {
    /// The key the secret belongs to.
    pub key: ApiKey,
    /// When this particular secret stops working (set at rotation with grace).
    pub secret_expires_at: Option<OffsetDateTime>,
    /// The owning account's plan.
    pub plan: Plan,
    /// The owning account's limits in force.
    pub limits: Limits,
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
}

/// Key lifecycle event kinds of the audit log.
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
}

impl AuditAction {
    /// Name on the wire and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "key.created",
            Self::Updated => "key.updated",
            Self::Rotated => "key.rotated",
            Self::Revoked => "key.revoked",
        }
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Created, Self::Updated, Self::Rotated, Self::Revoked]
            .into_iter()
            .find(|a| a.as_str() == raw)
    }
}

/// Who made a change, for the audit event written in the same transaction.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// The caller's key (`None` for operator commands).
    pub actor_key_id: Option<KeyId>,
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
    /// Who did it.
    pub actor_key_id: Option<KeyId>,
    /// To which key.
    pub key_id: KeyId,
    /// What changed.
    pub changes: serde_json::Value,
    /// The request that did it.
    pub request_id: String,
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

/// Counts added to the monthly usage counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// Owner.
    pub account_id: AccountId,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// Route template with method.
    pub endpoint: String,
    /// The key.
    pub key_id: KeyId,
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

    /// Number of accounts (bootstrap happens only at zero).
    async fn account_count(&self) -> StoreResult<u64>;
    /// Creates an account and its first key (with its `key.created` event) in one
    /// transaction.
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
    /// One account.
    async fn account(&self, account_id: &AccountId) -> StoreResult<Option<Account>>;
    /// Changes an account's plan.
    async fn set_plan(&self, account_id: &AccountId, plan: Plan) -> StoreResult<()>;
    /// Changes an account's custom (enterprise) limits.
    async fn set_limits(&self, account_id: &AccountId, limits: Limits) -> StoreResult<()>;

    /// Finds a live secret by digest, with its key and account. A secret whose grace
    /// period has ended may still be returned; the caller checks `secret_expires_at`.
    async fn auth_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<AuthRecord>>;
    /// Keys of an account, oldest first; the `bool` says whether more follow.
    async fn list_keys(
        &self,
        account_id: &AccountId,
        query: &KeyQuery,
    ) -> StoreResult<(Vec<ApiKey>, bool)>;
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
    /// A page of the account's audit log, newest first.
    async fn audit_log(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<AuditEvent>>;
    /// Deletes at most `batch` history rows older than `cutoff`; returns how many.
    async fn prune_history(&self, cutoff: OffsetDateTime, batch: u32) -> StoreResult<u64>;
}
