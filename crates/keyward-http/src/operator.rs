//! What an operator does to accounts, plans and operators (API.md §Operator interface,
//! §Operator API), written once for both ways in: the handlers of `/operator/v1/` and the
//! `keyward accounts|plans|operators` commands call these functions, so that both check
//! the same things and answer the same errors ([`ApiError`], which the CLI prints).

use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyId, KeyName, KeyPrefix, KeySecret, Limits, Metadata,
    OperatorId, OsRandom, PlanName, ScopeSet, timefmt,
};
use keyward_store::{
    Account, AccountSummary, AuditContext, NewKey, NewSecret, Operator, Plan, Store, StoreError,
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

/// A new account, its first key (scopes `read`, `write`, `admin`) and that key's
/// `key.created` event, not yet stored. `actor` is the audit event's request id
/// (`cli`, `bootstrap`, or an operator request's id).
///
/// # Errors
/// None in practice: the built-in first key's scopes and name are valid.
pub fn new_account(
    new: NewAccount,
    prefix: &KeyPrefix,
    actor: &str,
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
    let audit = AuditContext {
        actor_key_id: None,
        request_id: actor.to_owned(),
        time: now,
        changes: json!({
            "name": "First key",
            "scopes": ["read", "write", "admin"],
            "expires_at": null,
            "metadata": {},
        }),
    };
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
    actor: &str,
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
) -> Result<(AccountSummary, Vec<keyward_core::KeyDigest>), ApiError> {
    if let Some(Some(external_id)) = &patch.external_id
        && let Some(existing) = store.account_by_external_id(external_id).await?
        && existing.account.account_id != *account_id
    {
        return Err(external_id_taken(&existing.account.account_id));
    }
    match store.update_account(account_id, patch).await {
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
    actor: &str,
    now: OffsetDateTime,
) -> Result<(keyward_store::ApiKey, KeySecret), ApiError> {
    let key_id = KeyId::from_ulid(ulid::Ulid::generate());
    let (secret, key, changes) =
        crate::handlers::keys::new_key(prefix, key_id, req, account_id.clone(), now)?;
    account(store, account_id).await?;
    let audit = AuditContext {
        actor_key_id: None,
        request_id: actor.to_owned(),
        time: key.created_at,
        changes,
    };
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
) -> Result<Vec<keyward_core::KeyDigest>, ApiError> {
    Ok(store.put_plan(plan).await?)
}

/// Deletes a plan no account uses.
///
/// # Errors
/// `404` if there is none of that name, `409` while an account uses it.
pub async fn delete_plan(store: &dyn Store, name: &PlanName) -> Result<(), ApiError> {
    match store.delete_plan(name).await {
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
    store.insert_operator(&operator, &stored).await?;
    Ok((operator, secret))
}
