//! What an operator does to accounts, plans and operators (API.md §Operator interface,
//! §Operator API), written once for both ways in: the handlers of `/operator/v1/` and the
//! `keyward accounts|plans|operators` commands call these functions, so that both check
//! the same things and answer the same errors ([`ApiError`], which the CLI prints).

use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyId, KeyName, KeyPrefix, KeySecret, Limits, Metadata,
    OperatorId, OsRandom, PlanName, ScopeSet, timefmt,
};
use keyward_store::{
    Account, AccountSummary, AuditContext, NewKey, NewSecret, Operator, OperatorActor, Plan, Store,
    StoreError,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::error::ApiError;

/// Longest account name, in characters.
pub const MAX_ACCOUNT_NAME_CHARS: usize = 200;

/// The plan of an account created without one.
pub const DEFAULT_PLAN: &str = "free";

/// An account to create, its fields checked.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Its name.
    pub name: String,
    /// Its plan.
    pub plan: PlanName,
    /// The platform's id of it.
    pub external_id: Option<ExternalId>,
    /// Operator-defined object.
    pub metadata: Metadata,
}

/// A created account, its first key's id and that key's secret (shown once).
#[derive(Debug)]
pub struct CreatedAccount {
    /// The account.
    pub account: Account,
    /// The first key's id.
    pub key_id: KeyId,
    /// The first key's secret.
    pub secret: KeySecret,
}

/// Who makes an operator's change, as the audit events record it: an operator through
/// the API (actor its `op_…` id, the request's id), or the CLI (no actor id, request id
/// `cli`; `bootstrap` for `serve`'s first account).
#[derive(Debug, Clone)]
pub struct Actor {
    /// The operator, or the CLI.
    pub operator: OperatorActor,
    /// The request id the events carry.
    pub request_id: String,
}

impl Actor {
    /// A `keyward` command.
    #[must_use]
    pub fn cli() -> Self {
        Self {
            operator: OperatorActor::Cli,
            request_id: "cli".to_owned(),
        }
    }

    /// `serve`'s bootstrap of the first account.
    #[must_use]
    pub fn bootstrap() -> Self {
        Self {
            operator: OperatorActor::Cli,
            request_id: "bootstrap".to_owned(),
        }
    }

    /// An operator key's request.
    #[must_use]
    pub fn operator(operator_id: OperatorId, request_id: &str) -> Self {
        Self {
            operator: OperatorActor::Api(operator_id),
            request_id: request_id.to_owned(),
        }
    }

    /// The audit context of a change it makes at `now` (no account key acts).
    #[must_use]
    pub fn audit(&self, now: OffsetDateTime, changes: serde_json::Value) -> AuditContext {
        AuditContext {
            actor_key_id: None,
            operator: Some(self.operator.clone()),
            request_id: self.request_id.clone(),
            time: now,
            changes,
        }
    }
}

/// Checks an account name: 1 to 200 characters, not only white space.
///
/// # Errors
/// `VALIDATION_ERROR` on `name`.
pub fn parse_account_name(raw: &str) -> Result<String, ApiError> {
    if raw.trim().is_empty() || raw.chars().count() > MAX_ACCOUNT_NAME_CHARS {
        return Err(ApiError::validation(
            "name",
            "must be 1 to 200 characters, not only white space",
        ));
    }
    Ok(raw.to_owned())
}

/// Checks a plan name.
///
/// # Errors
/// `VALIDATION_ERROR` on `field`.
pub fn parse_plan_name(field: &str, raw: &str) -> Result<PlanName, ApiError> {
    PlanName::parse(raw).map_err(|e| ApiError::validation(field, e.0))
}

/// Checks an external id.
///
/// # Errors
/// `VALIDATION_ERROR` on `external_id`.
pub fn parse_external_id(raw: &str) -> Result<ExternalId, ApiError> {
    ExternalId::parse(raw).map_err(|e| ApiError::validation("external_id", e.0))
}

/// Checks one limit: a positive whole number (`None` is unlimited, or for an override,
/// the plan's).
///
/// # Errors
/// `VALIDATION_ERROR` on `field`.
pub fn parse_limit(field: &str, raw: Option<u64>) -> Result<Option<u32>, ApiError> {
    raw.map(|n| {
        u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::validation(field, "must be a whole number from 1 to 4294967295 or null")
        })
    })
    .transpose()
}

/// A new account, its first key (scopes `read`, `write`, `admin`) and the audit context
/// of its creation by `actor`, not yet stored.
///
/// # Errors
/// None in practice: the built-in first key's scopes and name are valid.
pub fn new_account(
    new: NewAccount,
    prefix: &KeyPrefix,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(CreatedAccount, NewKey, AuditContext), ApiError> {
    let now = timefmt::truncate(now);
    let account = Account {
        account_id: AccountId::from_ulid(ulid::Ulid::generate()),
        name: new.name,
        plan: new.plan,
        overrides: Limits::default(),
        status: AccountStatus::Active,
        external_id: new.external_id,
        metadata: new.metadata,
        created_at: now,
    };
    let secret = KeySecret::generate(prefix, &mut OsRandom);
    let scopes = ScopeSet::parse(&["read", "write", "admin"]).map_err(ApiError::internal)?;
    let key = NewKey {
        key_id: KeyId::from_ulid(ulid::Ulid::generate()),
        account_id: account.account_id.clone(),
        name: Some(KeyName::parse("First key").map_err(ApiError::internal)?),
        scopes,
        metadata: Metadata::default(),
        expires_at: None,
        created_at: now,
        secret: NewSecret {
            digest: secret.digest(),
            hint: secret.hint(),
        },
        policies: keyward_core::KeyPolicies::default(),
        expire_after_inactive_days: None,
    };
    let audit = actor.audit(
        now,
        json!({
            "name": "First key",
            "scopes": ["read", "write", "admin"],
            "expires_at": null,
            "metadata": {},
        }),
    );
    let key_id = key.key_id.clone();
    Ok((
        CreatedAccount {
            account,
            key_id,
            secret,
        },
        key,
        audit,
    ))
}

/// Creates an account and its first key. An external id another account has is a
/// `409 CONFLICT` naming that account (`details.account_id`), so a retried sign-up
/// never makes two accounts; an unknown plan is a `VALIDATION_ERROR` on `plan`.
///
/// # Errors
/// As above, or the store's.
pub async fn create_account(
    store: &dyn Store,
    new: NewAccount,
    prefix: &KeyPrefix,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<CreatedAccount, ApiError> {
    if let Some(external_id) = &new.external_id {
        external_id_free(store, external_id).await?;
    }
    let (created, key, audit) = new_account(new, prefix, actor, now)?;
    match store.create_account(&created.account, &key, &audit).await {
        Ok(()) => Ok(created),
        Err(StoreError::Conflict("unknown plan")) => Err(unknown_plan()),
        // Two sign-ups with one external id raced: the loser names the winner.
        Err(StoreError::Conflict(_)) => match &created.account.external_id {
            Some(external_id) => {
                external_id_free(store, external_id).await?;
                Err(ApiError::conflict("the account changed meanwhile; retry"))
            }
            None => Err(ApiError::conflict("the account conflicts with another")),
        },
        Err(other) => Err(other.into()),
    }
}

/// `409` naming the account that has `external_id`, if one has it.
async fn external_id_free(store: &dyn Store, external_id: &ExternalId) -> Result<(), ApiError> {
    match store.account_by_external_id(external_id).await? {
        Some(existing) => Err(external_id_taken(&existing.account.account_id)),
        None => Ok(()),
    }
}

/// The `409` of an external id another account has.
#[must_use]
pub fn external_id_taken(account_id: &AccountId) -> ApiError {
    ApiError::conflict("an account with this external_id exists")
        .with_details(json!({ "account_id": account_id.as_str() }))
}

fn unknown_plan() -> ApiError {
    ApiError::validation("plan", "no such plan")
}

/// The `404` of an account id that names no account.
#[must_use]
pub fn account_not_found() -> ApiError {
    ApiError::not_found("no account with this account_id")
}

/// The `404` of a plan name that names no plan.
#[must_use]
pub fn plan_not_found() -> ApiError {
    ApiError::not_found("no plan with this name")
}

/// Reads an account.
///
/// # Errors
/// `404` if there is none, or the store's.
pub async fn account(
    store: &dyn Store,
    account_id: &AccountId,
) -> Result<AccountSummary, ApiError> {
    store
        .account(account_id)
        .await?
        .ok_or_else(account_not_found)
}

/// Changes an account; the caller drops the returned digests from its caches (other
/// nodes are told by the store).
///
/// # Errors
/// `404` for a missing account, `VALIDATION_ERROR` on `plan` for an unknown plan, `409`
/// naming the account for an external id another account has, or the store's.
pub async fn update_account(
    store: &dyn Store,
    account_id: &AccountId,
    patch: &keyward_store::AccountPatch,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(AccountSummary, Vec<keyward_core::KeyDigest>), ApiError> {
    if let Some(Some(external_id)) = &patch.external_id
        && let Some(existing) = store.account_by_external_id(external_id).await?
        && existing.account.account_id != *account_id
    {
        return Err(external_id_taken(&existing.account.account_id));
    }
    let audit = actor.audit(timefmt::truncate(now), serde_json::Value::Null);
    match store.update_account(account_id, patch, &audit).await {
        Ok(changed) => Ok(changed),
        Err(StoreError::NotFound) => Err(account_not_found()),
        Err(StoreError::Conflict("unknown plan")) => Err(unknown_plan()),
        Err(StoreError::Conflict(_)) => Err(ApiError::conflict(
            "an account with this external_id exists",
        )),
        Err(other) => Err(other.into()),
    }
}

/// Issues a key with any scopes to an account (an operator may grant any scope): for a
/// customer whose keys are lost, or a platform's own provisioning. The body is that of
/// `POST /v1/api-keys`, with its checks.
///
/// # Errors
/// `404` for a missing account, `VALIDATION_ERROR` naming a field, or the store's.
pub async fn issue_key(
    store: &dyn Store,
    account_id: &AccountId,
    req: crate::handlers::keys::CreateApiKeyRequest,
    prefix: &KeyPrefix,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(keyward_store::ApiKey, KeySecret), ApiError> {
    let key_id = KeyId::from_ulid(ulid::Ulid::generate());
    let (secret, key, changes) =
        crate::handlers::keys::new_key(prefix, key_id, req, account_id.clone(), now)?;
    account(store, account_id).await?;
    let audit = actor.audit(key.created_at, changes);
    match store.insert_key(&key, &audit).await {
        Ok(stored) => Ok((stored, secret)),
        // The account went away meanwhile.
        Err(StoreError::Conflict(_)) => Err(account_not_found()),
        Err(other) => Err(other.into()),
    }
}

/// Creates a plan or replaces its limits; the caller drops the returned digests.
///
/// # Errors
/// The store's.
pub async fn put_plan(
    store: &dyn Store,
    plan: &Plan,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Vec<keyward_core::KeyDigest>, ApiError> {
    let audit = actor.audit(timefmt::truncate(now), serde_json::Value::Null);
    Ok(store.put_plan(plan, &audit).await?)
}

/// Deletes a plan no account uses.
///
/// # Errors
/// `404` if there is none of that name, `409` while an account uses it.
pub async fn delete_plan(
    store: &dyn Store,
    name: &PlanName,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let audit = actor.audit(timefmt::truncate(now), serde_json::Value::Null);
    match store.delete_plan(name, &audit).await {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => Err(plan_not_found()),
        Err(StoreError::Conflict(_)) => Err(ApiError::conflict(
            "the plan is in use: move its accounts to another plan first",
        )),
        Err(other) => Err(other.into()),
    }
}

/// Creates an operator and its key (`<prefix>op_…`), whose secret is shown once.
///
/// # Errors
/// `VALIDATION_ERROR` on `name`, or when the key prefix is too long to add `op`; or the
/// store's.
pub async fn create_operator(
    store: &dyn Store,
    name: &str,
    prefix: &KeyPrefix,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(Operator, KeySecret), ApiError> {
    let name = parse_account_name(name)?;
    let prefix = prefix.operator().ok_or_else(|| {
        ApiError::validation(
            "key_prefix",
            "operator keys add `op` to the key prefix: it must be at most 14 characters",
        )
    })?;
    let secret = KeySecret::generate(&prefix, &mut OsRandom);
    let operator = Operator {
        operator_id: OperatorId::from_ulid(ulid::Ulid::generate()),
        name,
        hint: secret.hint(),
        created_at: timefmt::truncate(now),
    };
    let stored = NewSecret {
        digest: secret.digest(),
        hint: secret.hint(),
    };
    let audit = actor.audit(operator.created_at, serde_json::Value::Null);
    store.insert_operator(&operator, &stored, &audit).await?;
    Ok((operator, secret))
}

/// Revokes an operator: its key never works again.
///
/// # Errors
/// `404` if there is none, or the store's.
pub async fn revoke_operator(
    store: &dyn Store,
    operator_id: &OperatorId,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let audit = actor.audit(timefmt::truncate(now), serde_json::Value::Null);
    match store.revoke_operator(operator_id, &audit).await {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound) => Err(ApiError::not_found("no operator with this id")),
        Err(other) => Err(other.into()),
    }
}

/// Revokes a key of any account (incident response), with its `key.revoked` event in the
/// account's log and the operator log; the caller drops the returned digests.
///
/// # Errors
/// `404` for a missing key, `409` if it changed meanwhile, or the store's.
pub async fn revoke_key(
    store: &dyn Store,
    key: &keyward_store::ApiKey,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Vec<keyward_core::KeyDigest>, ApiError> {
    let audit = actor.audit(
        now,
        json!({
            "name": key.name.as_ref().map(KeyName::as_str),
            "scopes": key.scopes.to_strings(),
            "hint": key.hint,
        }),
    );
    let changed = store
        .revoke_key(&key.account_id, &key.key_id, key.version, &audit)
        .await?;
    Ok(changed.stale_digests)
}

/// Deletes an account: revokes every key (every node drops them within a second), deletes
/// its request history, usage and subscriptions, and the account (its `external_id` is
/// free again); its audit log is kept, ending with `account.deleted`. The caller drops the
/// returned digests.
///
/// # Errors
/// `404` for a missing account (a second deletion too), or the store's.
pub async fn delete_account(
    store: &dyn Store,
    account_id: &AccountId,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<Vec<keyward_core::KeyDigest>, ApiError> {
    let audit = actor.audit(timefmt::truncate(now), serde_json::Value::Null);
    match store.delete_account(account_id, &audit).await {
        Ok(digests) => Ok(digests),
        Err(StoreError::NotFound) => Err(account_not_found()),
        Err(other) => Err(other.into()),
    }
}
