//! `/v1/api-keys`: the seed endpoint and the whole key lifecycle (API.md §Endpoints).

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_core::{
    AllowedIps, Credits, KeyId, KeyName, KeyPolicies, KeySecret, KeyStatus, Limits, Metadata,
    OsRandom, Scope, ScopeSet, StoredStatus, policy, timefmt,
};
use keyward_ratelimit::KeyCharge;
use keyward_store::{ApiKey, AuditContext, KeyPatch, KeyQuery, NewKey, NewSecret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

use crate::auth::{AuthFailure, Caller, CallerAttempt, Demand, Refusal, check_policies};
use crate::cache::listing::{Listing, MAX_CACHED_LISTING};
use crate::dto::{
    ApiKeyList, ApiKeyObject, ApiKeyWithSecret, RateLimitObject, RefillObject, nullable,
};
use crate::error::{ApiError, KeyRejection};
use crate::extract::{JsonBody, KeyIdSegment, QueryParams};
use crate::state::AppState;

/// Longest `expires_in` (and farthest `expires_at`): 100 years.
const MAX_LIFETIME_SECS: i64 = 100 * 365 * 24 * 3600;
/// Longest rotation grace period: one week.
const MAX_GRACE_SECS: u64 = 604_800;

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// Optional label, 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// 1 to 32 distinct scopes, each `^[a-z][a-z0-9_.:-]{0,63}$`, all held by the caller.
    #[schema(value_type = Vec<ScopeName>, min_items = 1, max_items = 32)]
    pub scopes: Vec<String>,
    /// Expiry, in the future (not with `expires_in`).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Lifetime in seconds (not with `expires_at`).
    #[schema(minimum = 1, maximum = 3_153_600_000_i64)]
    pub expires_in: Option<i64>,
    /// A JSON object of at most 4 KiB serialised.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The key's own rate limit, on top of its account's (at least one window set).
    #[schema(value_type = Option<RateLimitObject>)]
    pub rate_limit: Option<Value>,
    /// Credits: the balance, and an optional refill at each UTC day or month start.
    #[schema(value_type = Option<CreditsInput>)]
    pub credits: Option<Value>,
    /// 1 to 100 IPv4/IPv6 addresses or CIDR ranges the key may be used from.
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 100)]
    pub allowed_ips: Option<Value>,
    /// Days without use after which the key shows `expired`, 1 to 3650.
    #[schema(value_type = Option<u16>, minimum = 1, maximum = 3650)]
    pub expire_after_inactive_days: Option<Value>,
}

/// Credits as a caller sets them.
#[derive(Debug, ToSchema)]
pub struct CreditsInput {
    /// The balance, 0 to 1000000000.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub remaining: u64,
    /// The balance becomes `amount` (1 to 1000000000) at each UTC `day` or `month`
    /// start; `null`: never.
    pub refill: Option<RefillObject>,
}

/// Body of `PATCH /v1/api-keys/{key_id}`; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKeyRequest {
    /// New label, or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100)]
    pub name: Option<Option<String>>,
    /// New scopes (not on the caller's own key).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<ScopeName>>, min_items = 1, max_items = 32)]
    pub scopes: Option<Option<Vec<String>>>,
    /// `active` or `inactive` (not `inactive` on the caller's own key).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<SettableStatus>)]
    pub status: Option<Option<String>>,
    /// New expiry in the future, or `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// New metadata object (replaces the old one), or `null` for `{}`.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<Value>>,
    /// New own rate limit, or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<RateLimitObject>)]
    pub rate_limit: Option<Option<Value>>,
    /// New credits (the balance starts over from `remaining`), or `null` to remove them.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<CreditsInput>)]
    pub credits: Option<Option<Value>>,
    /// New allowed addresses, or `null` to allow every address.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 100)]
    pub allowed_ips: Option<Option<Value>>,
    /// New inactivity expiry in days, or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u16>, minimum = 1, maximum = 3650)]
    pub expire_after_inactive_days: Option<Option<Value>>,
}

/// One scope string.
#[derive(Debug, ToSchema)]
#[schema(pattern = "^[a-z][a-z0-9_.:-]{0,63}$", min_length = 1, max_length = 64)]
pub struct ScopeName(pub String);

/// The statuses a caller may set.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SettableStatus {
    /// Authenticates again.
    Active,
    /// Disabled.
    Inactive,
}

/// Body of `POST /v1/api-keys/{key_id}/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateApiKeyRequest {
    /// How long the old secret keeps working, 0 to 604800 seconds (default 0).
    #[schema(minimum = 0, maximum = 604_800)]
    pub grace_period_seconds: Option<u64>,
}

/// A `200` of JSON rendered earlier and kept (a cached listing's page, a cached key's
/// validate answer).
fn rendered_json(body: Bytes) -> Response {
    let json = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    (StatusCode::OK, (json, Body::from(body))).into_response()
}

fn audit(caller: &Caller, changes: Value) -> AuditContext {
    AuditContext {
        actor_key_id: Some(caller.record.key.key_id.clone()),
        operator: None,
        request_id: caller.request_id().to_owned(),
        time: caller.now(),
        changes,
    }
}

/// `403` unless the caller may grant every scope of `scopes` (API.md §Scopes).
fn ensure_within_caller(caller: &Caller, scopes: &ScopeSet) -> Result<(), ApiError> {
    let missing = scopes.not_grantable_by(&caller.record.key.scopes);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(&missing))
    }
}

/// The caller's whole listing from the cache, or `None` for an account too large to
/// cache (which is then listed from storage).
async fn account_listing(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<Arc<Listing>>, ApiError> {
    let account = &caller.record.key.account_id;
    let listing = state
        .listings
        .get_or_load(account, || async {
            let query = KeyQuery {
                status: None,
                limit: Some(MAX_CACHED_LISTING),
                after: None,
                now: caller.now(),
            };
            let (keys, more) = state.store.list_keys(account, &query).await?;
            Ok((!more).then(|| Arc::new(Listing::new(keys))))
        })
        .await?;
    Ok(listing)
}

/// The key in the caller's account, or the `404` a missing one gets.
async fn load_key(state: &AppState, caller: &Caller, key_id: &KeyId) -> Result<ApiKey, ApiError> {
    state
        .store
        .get_key(&caller.record.key.account_id, key_id)
        .await?
        .ok_or_else(ApiError::key_not_found)
}

fn parse_expiry(raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let t = timefmt::parse(raw)
        .map_err(|_| ApiError::validation("expires_at", "must be an RFC 3339 timestamp"))?;
    let t = timefmt::truncate(t);
    if t <= now {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    if t > now + Duration::seconds(MAX_LIFETIME_SECS) {
        return Err(ApiError::validation(
            "expires_at",
            "must be within 100 years",
        ));
    }
    Ok(t)
}

fn parse_scopes(raw: &[String]) -> Result<ScopeSet, ApiError> {
    ScopeSet::parse(raw).map_err(|e| ApiError::validation("scopes", e.to_string()))
}

fn parse_name(raw: &str) -> Result<KeyName, ApiError> {
    KeyName::parse(raw).map_err(|e| ApiError::validation("name", e.0))
}

fn parse_metadata(raw: Value) -> Result<Metadata, ApiError> {
    Metadata::parse(raw).map_err(|e| ApiError::validation("metadata", e.0))
}

fn parse_rate_limit(raw: Value) -> Result<Limits, ApiError> {
    policy::parse_rate_limit(raw).map_err(|e| ApiError::validation("rate_limit", e.0))
}

/// Credits as a caller sets them: their balance starts over at key version `version`.
fn parse_credits(raw: Value, version: i64, now: OffsetDateTime) -> Result<Credits, ApiError> {
    let mut credits = Credits::parse(raw).map_err(|e| ApiError::validation("credits", e.0))?;
    credits.generation = version;
    credits.set_at = now.unix_timestamp();
    Ok(credits)
}

fn parse_allowed_ips(raw: &Value) -> Result<AllowedIps, ApiError> {
    AllowedIps::parse(raw).map_err(|e| ApiError::validation("allowed_ips", e.0))
}

fn parse_inactive_days(raw: &Value) -> Result<u16, ApiError> {
    policy::parse_inactive_days(raw)
        .map_err(|e| ApiError::validation("expire_after_inactive_days", e.0))
}

/// The audit form of a key's policies (the balance as set; never a secret).
fn policies_json(policies: &KeyPolicies, inactive_days: Option<u16>) -> Value {
    json!({
        "rate_limit": policies.rate_limit.map(|l| json!({"per_minute": l.per_minute, "per_day": l.per_day})),
        "credits": policies.credits.as_ref().map(|c| json!({
            "remaining": c.remaining,
            "refill": c.refill.map(|r| json!({"amount": r.amount, "interval": r.interval})),
        })),
        "allowed_ips": policies.allowed_ips.as_ref().map(AllowedIps::to_strings),
        "expire_after_inactive_days": inactive_days,
    })
}

/// The live credit balance of `key` (the limiter's), `None` without credits.
async fn live_balance(state: &AppState, key: &ApiKey, now: OffsetDateTime) -> Option<u64> {
    let credits = key.policies.credits.as_ref()?;
    let charge = KeyCharge {
        key: &key.key_id,
        limits: Limits::default(),
        credits: Some(credits),
        cost: 1,
    };
    state.limiter.peek_key(&charge, now).await.credits_remaining
}

fn new_secret(prefix: &keyward_core::KeyPrefix) -> (KeySecret, NewSecret) {
    let secret = KeySecret::generate(prefix, &mut OsRandom);
    let stored = NewSecret {
        digest: secret.digest(),
        hint: secret.hint(),
    };
    (secret, stored)
}

/// Get all API keys of the account, oldest first.
#[utoipa::path(
    get, path = "/v1/api-keys", operation_id = "list_api_keys", tag = "api-keys",
    params(
        ("status" = Option<String>, Query, description = "Only keys with this status: active, inactive or expired"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many keys; the body then has has_more"),
        ("after" = Option<String>, Query, description = "Start after this key_id (the last one of the previous page)"),
    ),
    responses((status = 200, description = "The account's keys", body = ApiKeyList)),
    security(("api_key" = []))
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::READ).await?;
    let query = list_query(query, caller.now())?;
    let account = &caller.record.key.account_id;
    let listing = account_listing(&state, &caller).await?;
    // A page with credits shows their live balances, so it is rendered per request.
    if let Some(all) = &listing
        && query.status.is_none()
        && query.limit.is_none()
        && query.after.is_none()
        && !all.has_credits()
    {
        return Ok(rendered_json(all.whole_page(caller.now())?));
    }
    let from_storage;
    let body = match &listing {
        // Small accounts: filter and page the cached listing in memory.
        Some(all) => {
            let mut matching = all
                .keys()
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    query
                        .status
                        .is_none_or(|s| all.status_of(*i, caller.now()) == s)
                })
                .filter(|(_, k)| query.after.as_ref().is_none_or(|a| k.key_id > *a));
            let wanted = query.limit.map_or(usize::MAX, |l| l as usize);
            let mut api_keys = Vec::new();
            for (i, key) in matching.by_ref().take(wanted) {
                let balance = live_balance(&state, key, caller.now()).await;
                api_keys.push(all.object(i, caller.now()).with_balance(balance));
            }
            let more = matching.next().is_some();
            ApiKeyList {
                api_keys,
                has_more: query.limit.map(|_| more),
            }
        }
        None => {
            from_storage = state.store.list_keys(account, &query).await?;
            let (keys, more) = &from_storage;
            let mut api_keys = Vec::with_capacity(keys.len());
            for key in keys {
                let balance = live_balance(&state, key, caller.now()).await;
                api_keys.push(ApiKeyObject::new(key, caller.now()).with_balance(balance));
            }
            ApiKeyList {
                api_keys,
                has_more: query.limit.map(|_| *more),
            }
        }
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The query parameters of `GET /v1/api-keys` (`status`, `limit`, `after`), checked,
/// as the listing at `now`; any other parameter is refused. Public for the fuzz targets
/// (`fuzz/`).
///
/// # Errors
/// `VALIDATION_ERROR` naming the first parameter at fault.
pub fn list_query(mut query: QueryParams, now: OffsetDateTime) -> Result<KeyQuery, ApiError> {
    let status = query
        .take("status")?
        .map(|s| {
            s.parse::<KeyStatus>()
                .map_err(|e| ApiError::validation("status", e.0))
        })
        .transpose()?;
    let limit = query
        .take_number("limit", 1, 1000)?
        .map(|n| u32::try_from(n).unwrap_or(1000));
    let after = query
        .take("after")?
        .map(|raw| {
            KeyId::parse(&raw).map_err(|_| ApiError::validation("after", "must be a key_id"))
        })
        .transpose()?;
    query.finish()?;
    Ok(KeyQuery {
        status,
        limit,
        after,
        now,
    })
}

/// Get one API key of the account.
#[utoipa::path(
    get, path = "/v1/api-keys/{key_id}", operation_id = "get_api_key", tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = ApiKeyObject)),
    security(("api_key" = []))
)]
pub async fn get_api_key(
    State(state): State<AppState>,
    caller: Caller,
    key_id: KeyIdSegment,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::READ).await?;
    let key_id = key_id.parse()?;
    let listing = account_listing(&state, &caller).await?;
    let from_storage;
    let key = match &listing {
        Some(all) => {
            let i = all.index_of(&key_id).ok_or_else(ApiError::key_not_found)?;
            let balance = live_balance(&state, &all.keys()[i], caller.now()).await;
            all.object(i, caller.now()).with_balance(balance)
        }
        None => {
            from_storage = load_key(&state, &caller, &key_id).await?;
            let balance = live_balance(&state, &from_storage, caller.now()).await;
            ApiKeyObject::new(&from_storage, caller.now()).with_balance(balance)
        }
    };
    Ok((StatusCode::OK, Json(key)).into_response())
}

/// Create an API key; the secret is in this response only.
#[utoipa::path(
    post, path = "/v1/api-keys", operation_id = "create_api_key", tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses((status = 201, description = "The new key with its secret", body = ApiKeyWithSecret)),
    security(("api_key" = []))
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::WRITE).await?;
    let req: CreateApiKeyRequest = body.parse()?;
    let account_id = caller.record.key.account_id.clone();
    let key_id = KeyId::from_ulid(state.next_ulid());
    let (secret, key, changes) = new_key(&state.prefix, key_id, req, account_id, caller.now())?;
    ensure_within_caller(&caller, &key.scopes)?;
    let stored = state
        .store
        .insert_key(&key, &audit(&caller, changes))
        .await?;
    state.forget_changed_key(Some(&stored.account_id), &[]);
    let body = ApiKeyWithSecret {
        key: ApiKeyObject::new(&stored, caller.now()),
        api_key: secret.expose(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A new key of `account_id` as `req` asks, with its secret and the changes of its
/// `key.created` event: the checks of `POST /v1/api-keys`, which the operator's
/// `POST /operator/v1/accounts/{account_id}/api-keys` shares. Escalation is the
/// caller's to check, after these.
///
/// # Errors
/// `VALIDATION_ERROR` naming the field at fault.
pub fn new_key(
    prefix: &keyward_core::KeyPrefix,
    key_id: KeyId,
    req: CreateApiKeyRequest,
    account_id: keyward_core::AccountId,
    now: OffsetDateTime,
) -> Result<(KeySecret, NewKey, Value), ApiError> {
    let name = req.name.as_deref().map(parse_name).transpose()?;
    let scopes = parse_scopes(&req.scopes)?;
    let now = timefmt::truncate(now);
    let expires_at = match (req.expires_at.as_deref(), req.expires_in) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "expires_in",
                "give expires_at or expires_in, not both",
            ));
        }
        (Some(raw), None) => Some(parse_expiry(raw, now)?),
        (None, Some(secs)) if (1..=MAX_LIFETIME_SECS).contains(&secs) => {
            Some(now + Duration::seconds(secs))
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "expires_in",
                "must be from 1 to 3153600000 seconds",
            ));
        }
        (None, None) => None,
    };
    let metadata = req
        .metadata
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let policies = KeyPolicies {
        rate_limit: req.rate_limit.map(parse_rate_limit).transpose()?,
        // A new key's version is 1.
        credits: req
            .credits
            .map(|raw| parse_credits(raw, 1, now))
            .transpose()?,
        allowed_ips: req
            .allowed_ips
            .as_ref()
            .map(parse_allowed_ips)
            .transpose()?,
    };
    let expire_after_inactive_days = req
        .expire_after_inactive_days
        .as_ref()
        .map(parse_inactive_days)
        .transpose()?;
    let (secret, stored_secret) = new_secret(prefix);
    let key = NewKey {
        key_id,
        account_id,
        name,
        scopes,
        metadata,
        expires_at,
        created_at: now,
        secret: stored_secret,
        policies,
        expire_after_inactive_days,
    };
    let mut changes = json!({
        "name": key.name.as_ref().map(KeyName::as_str),
        "scopes": key.scopes.to_strings(),
        "expires_at": key.expires_at.map(timefmt::format),
        "metadata": key.metadata.as_map(),
    });
    if let (Value::Object(changes), Value::Object(policies)) = (
        &mut changes,
        policies_json(&key.policies, key.expire_after_inactive_days),
    ) {
        changes.extend(policies.into_iter().filter(|(_, v)| !v.is_null()));
    }
    Ok((secret, key, changes))
}

fn change(changes: &mut serde_json::Map<String, Value>, field: &str, from: Value, to: Value) {
    if from != to {
        changes.insert(field.to_owned(), json!({ "from": from, "to": to }));
    }
}

/// Update a key's name, scopes, status, expiry or metadata.
#[utoipa::path(
    patch, path = "/v1/api-keys/{key_id}", operation_id = "update_api_key", tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body = UpdateApiKeyRequest,
    responses((status = 200, description = "The updated key", body = ApiKeyObject)),
    security(("api_key" = []))
)]
pub async fn update_api_key(
    State(state): State<AppState>,
    caller: Caller,
    key_id: KeyIdSegment,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::WRITE).await?;
    let key_id = key_id.parse()?;
    let req: UpdateApiKeyRequest = body.parse()?;
    let now = timefmt::truncate(caller.now());
    let patch = KeyPatch {
        name: req
            .name
            .map(|n| n.as_deref().map(parse_name).transpose())
            .transpose()?,
        scopes: match req.scopes {
            None => None,
            Some(None) => return Err(ApiError::validation("scopes", "must not be null")),
            Some(Some(raw)) => Some(parse_scopes(&raw)?),
        },
        status: match req.status {
            None => None,
            Some(None) => return Err(ApiError::validation("status", "must not be null")),
            Some(Some(raw)) => Some(
                raw.parse::<StoredStatus>()
                    .map_err(|e| ApiError::validation("status", e.0))?,
            ),
        },
        expires_at: req
            .expires_at
            .map(|e| e.as_deref().map(|raw| parse_expiry(raw, now)).transpose())
            .transpose()?,
        metadata: req
            .metadata
            .map(|m| {
                m.map(parse_metadata)
                    .transpose()
                    .map(Option::unwrap_or_default)
            })
            .transpose()?,
        policies: None,
        expire_after_inactive_days: req
            .expire_after_inactive_days
            .map(|d| d.as_ref().map(parse_inactive_days).transpose())
            .transpose()?,
    };
    let rate_limit = req
        .rate_limit
        .map(|l| l.map(parse_rate_limit).transpose())
        .transpose()?;
    // The version is the key's after this change, known once it is read.
    let credits = req
        .credits
        .map(|c| c.map(|raw| parse_credits(raw, 0, now)).transpose())
        .transpose()?;
    let allowed_ips = req
        .allowed_ips
        .map(|a| a.as_ref().map(parse_allowed_ips).transpose())
        .transpose()?;

    let current = load_key(&state, &caller, &key_id).await?;
    let mut patch = patch;
    if rate_limit.is_some() || credits.is_some() || allowed_ips.is_some() {
        let mut policies = current.policies.clone();
        if let Some(rate_limit) = rate_limit {
            policies.rate_limit = rate_limit;
        }
        if let Some(credits) = credits {
            policies.credits = credits.map(|c| Credits {
                generation: current.version + 1,
                ..c
            });
        }
        if let Some(allowed_ips) = allowed_ips {
            policies.allowed_ips = allowed_ips;
        }
        patch.policies = Some(policies);
    }
    ensure_within_caller(&caller, &current.scopes)?;
    if let Some(scopes) = &patch.scopes {
        ensure_within_caller(&caller, scopes)?;
    }
    let own_key = current.key_id == caller.record.key.key_id;
    if own_key && patch.status == Some(StoredStatus::Inactive) {
        return Err(ApiError::conflict("a key cannot disable itself"));
    }
    if own_key
        && patch
            .scopes
            .as_ref()
            .is_some_and(|s| !s.same_scopes_as(&current.scopes))
    {
        return Err(ApiError::conflict("a key cannot change its own scopes"));
    }

    let mut changes = serde_json::Map::new();
    if let Some(name) = &patch.name {
        change(
            &mut changes,
            "name",
            json!(current.name.as_ref().map(KeyName::as_str)),
            json!(name.as_ref().map(KeyName::as_str)),
        );
    }
    if let Some(scopes) = &patch.scopes {
        change(
            &mut changes,
            "scopes",
            json!(current.scopes.to_strings()),
            json!(scopes.to_strings()),
        );
    }
    if let Some(status) = patch.status {
        change(
            &mut changes,
            "status",
            json!(current.status.as_str()),
            json!(status.as_str()),
        );
    }
    if let Some(expires_at) = patch.expires_at {
        change(
            &mut changes,
            "expires_at",
            json!(current.expires_at.map(timefmt::format)),
            json!(expires_at.map(timefmt::format)),
        );
    }
    if let Some(metadata) = &patch.metadata {
        change(
            &mut changes,
            "metadata",
            json!(current.metadata.as_map()),
            json!(metadata.as_map()),
        );
    }
    if patch.policies.is_some() || patch.expire_after_inactive_days.is_some() {
        let after_days = patch
            .expire_after_inactive_days
            .unwrap_or(current.expire_after_inactive_days);
        let after = patch.policies.as_ref().unwrap_or(&current.policies);
        if let (Value::Object(from), Value::Object(to)) = (
            policies_json(&current.policies, current.expire_after_inactive_days),
            policies_json(after, after_days),
        ) {
            for (field, to) in to {
                let from = from.get(&field).cloned().unwrap_or(Value::Null);
                change(&mut changes, &field, from, to);
            }
        }
        // Credits set again start over even when equal to the old ones.
        if let Some(Some(credits)) = patch.policies.as_ref().map(|p| p.credits.as_ref())
            && current.policies.credits.as_ref() != Some(credits)
            && !changes.contains_key("credits")
        {
            changes.insert("credits".to_owned(), json!({"reset": true}));
        }
    }
    if changes.is_empty() {
        let balance = live_balance(&state, &current, caller.now()).await;
        return Ok((
            StatusCode::OK,
            Json(ApiKeyObject::new(&current, caller.now()).with_balance(balance)),
        )
            .into_response());
    }
    let changed = state
        .store
        .update_key(
            &current.account_id,
            &key_id,
            current.version,
            &patch,
            &audit(&caller, Value::Object(changes)),
        )
        .await?;
    state.forget_changed_key(Some(&current.account_id), &changed.stale_digests);
    let key = changed.key.ok_or_else(ApiError::key_not_found)?;
    let balance = live_balance(&state, &key, caller.now()).await;
    Ok((
        StatusCode::OK,
        Json(ApiKeyObject::new(&key, caller.now()).with_balance(balance)),
    )
        .into_response())
}

/// Issue a new secret for the same key; the old one works until the grace period ends.
#[utoipa::path(
    post, path = "/v1/api-keys/{key_id}/rotate", operation_id = "rotate_api_key", tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body(content = Option<RotateApiKeyRequest>, description = "Optional"),
    responses((status = 200, description = "The key with its new secret", body = ApiKeyWithSecret)),
    security(("api_key" = []))
)]
pub async fn rotate_api_key(
    State(state): State<AppState>,
    caller: Caller,
    key_id: KeyIdSegment,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::WRITE).await?;
    let key_id = key_id.parse()?;
    let req: RotateApiKeyRequest = body.parse_optional()?.unwrap_or_default();
    let grace = req.grace_period_seconds.unwrap_or(0);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::validation(
            "grace_period_seconds",
            "must be from 0 to 604800",
        ));
    }
    let current = load_key(&state, &caller, &key_id).await?;
    ensure_within_caller(&caller, &current.scopes)?;

    let (secret, stored_secret) = new_secret(&state.prefix);
    // Storage keeps whole seconds: a grace period is rounded up to the next second so
    // the old secret never stops working before the promised end (0 means at once).
    let old_end = match i64::try_from(grace).unwrap_or(0) {
        0 => caller.now(),
        secs => timefmt::truncate(caller.now()) + Duration::seconds(secs + 1),
    };
    let changes = json!({
        "grace_period_seconds": grace,
        "previous_secret_valid_until": timefmt::format(old_end),
        "hint": { "from": current.hint, "to": stored_secret.hint },
    });
    let changed = state
        .store
        .rotate_key(
            &current.account_id,
            &key_id,
            current.version,
            &stored_secret,
            old_end,
            &audit(&caller, changes),
        )
        .await?;
    state.forget_changed_key(Some(&current.account_id), &changed.stale_digests);
    let key = changed.key.ok_or_else(ApiError::key_not_found)?;
    let balance = live_balance(&state, &key, caller.now()).await;
    let body = ApiKeyWithSecret {
        key: ApiKeyObject::new(&key, caller.now()).with_balance(balance),
        api_key: secret.expose(),
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Revoke a key: it never authenticates again and leaves every listing.
#[utoipa::path(
    delete, path = "/v1/api-keys/{key_id}", operation_id = "revoke_api_key", tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Revoked")),
    security(("api_key" = []))
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    key_id: KeyIdSegment,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::WRITE).await?;
    let key_id = key_id.parse()?;
    let current = load_key(&state, &caller, &key_id).await?;
    ensure_within_caller(&caller, &current.scopes)?;
    if current.key_id == caller.record.key.key_id {
        return Err(ApiError::conflict("a key cannot revoke itself"));
    }
    let changes = json!({
        "name": current.name.as_ref().map(KeyName::as_str),
        "scopes": current.scopes.to_strings(),
        "hint": current.hint,
    });
    let changed = state
        .store
        .revoke_key(
            &current.account_id,
            &key_id,
            current.version,
            &audit(&caller, changes),
        )
        .await?;
    state.forget_changed_key(Some(&current.account_id), &changed.stale_digests);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Optional body of `POST /v1/api-keys/validate`: what the platform's own endpoint asks
/// of the key (every field optional; no body is the KonPro form).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The platform's route template, `METHOD /path` (for example `POST /v1/videos`):
    /// the request is recorded in history and usage under it.
    #[schema(example = "POST /v1/videos", max_length = 200)]
    pub endpoint: Option<String>,
    /// Scopes the key must all hold (else `valid: false`, `insufficient_scopes`).
    #[schema(value_type = Option<Vec<ScopeName>>, max_items = 32)]
    pub required_scopes: Option<Vec<String>>,
    /// The address of the platform's client, checked against the key's `allowed_ips`
    /// (without it, the address of this request's client).
    #[schema(example = "203.0.113.7")]
    pub client_ip: Option<String>,
    /// Credits the request takes from the key, 1 to 1000 (default 1).
    #[schema(minimum = 1, maximum = 1000)]
    pub cost: Option<i64>,
}

/// Longest `endpoint` of a validate body.
const MAX_ENDPOINT_LEN: usize = 200;

/// A validate body's `endpoint`: `METHOD /path`, the method 1 to 16 capital letters, the
/// path printable ASCII without spaces; answers the method and the whole.
fn parse_endpoint(raw: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::validation(
            "endpoint",
            "must be a route template such as \"POST /v1/videos\", at most 200 characters",
        )
    };
    if raw.len() > MAX_ENDPOINT_LEN {
        return Err(bad());
    }
    let (method, path) = raw.split_once(' ').ok_or_else(bad)?;
    let method_ok =
        (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase());
    let path_ok = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
    if !method_ok || !path_ok {
        return Err(bad());
    }
    Ok((method.to_owned(), raw.to_owned()))
}

/// What validate checks, from its body, parsed (every field's rules) before the key's
/// state is looked at.
struct ValidateDemand {
    recorded_as: Option<(String, String)>,
    scopes: Option<ScopeSet>,
    client_ip: Option<std::net::IpAddr>,
    cost: u32,
}

impl Default for ValidateDemand {
    /// An empty body's: no scopes, the request's own client, a cost of 1.
    fn default() -> Self {
        Self {
            recorded_as: None,
            scopes: None,
            client_ip: None,
            cost: 1,
        }
    }
}

fn validate_demand(req: ValidateRequest) -> Result<ValidateDemand, ApiError> {
    let recorded_as = req.endpoint.as_deref().map(parse_endpoint).transpose()?;
    let scopes = match req.required_scopes {
        Some(raw) if !raw.is_empty() => Some(
            ScopeSet::parse(&raw)
                .map_err(|e| ApiError::validation("required_scopes", e.to_string()))?,
        ),
        _ => None,
    };
    let client_ip = req
        .client_ip
        .map(|raw| {
            raw.parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::validation("client_ip", "must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let cost = match req.cost {
        None => 1,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=policy::MAX_COST).contains(n))
            .ok_or_else(|| ApiError::validation("cost", "must be a whole number from 1 to 1000"))?,
    };
    Ok(ValidateDemand {
        recorded_as,
        scopes,
        client_ip,
        cost,
    })
}

/// Body of `POST /v1/api-keys/validate`: what a valid key carries, or why a
/// well-formed key is not valid.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ValidateResponse<'a> {
    /// The key authenticates.
    Valid {
        /// Always `true`.
        valid: bool,
        /// The key's id.
        #[schema(value_type = String)]
        key_id: &'a str,
        /// The key's account.
        #[schema(value_type = String)]
        account_id: &'a str,
        /// Its scopes.
        #[schema(value_type = Vec<String>)]
        #[serde(serialize_with = "crate::dto::serialize_scope_set")]
        scopes: &'a ScopeSet,
        /// Its metadata.
        #[schema(value_type = Object)]
        metadata: &'a serde_json::Map<String, Value>,
        /// Its expiry, or `null`.
        #[schema(value_type = Option<String>, format = DateTime)]
        #[serde(serialize_with = "crate::dto::serialize_optional_time")]
        expires_at: Option<OffsetDateTime>,
        /// The key's credit balance after this request, where it has credits.
        #[serde(skip_serializing_if = "Option::is_none")]
        credits_remaining: Option<u64>,
    },
    /// The key is well formed but does not authenticate, or a check failed.
    Invalid {
        /// Always `false`.
        valid: bool,
        /// `not_found`, `inactive`, `expired`, `insufficient_scopes`, `ip_not_allowed`,
        /// `rate_limited` or `credits_exhausted`.
        #[schema(value_type = String)]
        reason: &'static str,
        /// With `rate_limited` and `credits_exhausted`: seconds until a retry can
        /// succeed, where known.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

/// Check the key sent in the x-api-key header (the KonPro validate endpoint).
///
/// A backend forwards its client's key in `x-api-key`: `200` with `valid: true` carries
/// the key's id, scopes, metadata and expiry; `200` with `valid: false` and a `reason`
/// means a well-formed key that does not authenticate; `401` means no key or one that is
/// not a keyward key at all. Needs no scope.
#[utoipa::path(
    post, path = "/v1/api-keys/validate", operation_id = "validate_api_key", tag = "api-keys",
    request_body(content = Option<ValidateRequest>, description = "Optional: what the platform's endpoint asks of the key"),
    responses((status = 200, description = "Whether the key is valid, and what it carries", body = ValidateResponse)),
    security(("api_key" = []))
)]
pub async fn validate_api_key(
    State(state): State<AppState>,
    attempt: CallerAttempt,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = match attempt.0 {
        Ok(caller) => Ok(caller),
        Err(AuthFailure::Rejected(
            reason @ (KeyRejection::NotFound
            | KeyRejection::Inactive
            | KeyRejection::Expired
            | KeyRejection::AccountSuspended),
        )) => Err(reason),
        Err(other) => return Err(other.into()),
    };
    // Without a body (the KonPro form), the key's own checks at a cost of 1.
    let demand = match body.parse_optional::<ValidateRequest>()? {
        Some(req) => validate_demand(req)?,
        None => ValidateDemand::default(),
    };
    // Not held across the wait below: the handler's future stays small.
    drop(body);
    let caller = match caller {
        Ok(caller) => caller,
        Err(reason) => return Ok(invalid_answer(reason.as_str(), None)),
    };
    let scopes: Vec<&str> = demand
        .scopes
        .as_ref()
        .map(|s| s.iter().map(Scope::as_str).collect())
        .unwrap_or_default();
    let checked = Demand {
        scopes: &scopes,
        client: demand.client_ip.or(caller.client),
        cost: demand.cost,
    };
    let outcome = check_policies(&state, &caller, &checked).await;
    if let Some((method, endpoint)) = demand.recorded_as {
        let status = match &outcome {
            Ok(_) => StatusCode::OK,
            Err(refusal) => ApiError::from(refusal.clone()).code.status(),
        };
        caller.record_as(method, endpoint, status.as_u16());
    }
    match outcome {
        Ok(balance) => valid_body(&caller, balance),
        Err(refusal) => {
            let (reason, retry_after) = validate_reason(&refusal);
            Ok(invalid_answer(reason, retry_after))
        }
    }
}

/// Validate's `200 {"valid": false, ...}`.
fn invalid_answer(reason: &'static str, retry_after: Option<u64>) -> Response {
    let body = ValidateResponse::Invalid {
        valid: false,
        reason,
        retry_after,
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// Validate's `reason` (and `retry_after`) for a refused check.
fn validate_reason(refusal: &Refusal) -> (&'static str, Option<u64>) {
    match refusal {
        Refusal::IpNotAllowed => ("ip_not_allowed", None),
        Refusal::Scopes(_) => ("insufficient_scopes", None),
        Refusal::Limited {
            window: keyward_ratelimit::Window::Credits,
            retry_after_secs,
        } => ("credits_exhausted", *retry_after_secs),
        Refusal::Limited {
            retry_after_secs, ..
        } => ("rate_limited", *retry_after_secs),
    }
}

fn valid_response(caller: &Caller) -> ValidateResponse<'_> {
    let key = &caller.record.key;
    ValidateResponse::Valid {
        valid: true,
        key_id: key.key_id.as_str(),
        account_id: key.account_id.as_str(),
        scopes: &key.scopes,
        metadata: key.metadata.as_map(),
        expires_at: key.expires_at,
        credits_remaining: None,
    }
}

/// A valid answer: the key's answer rendered once per cached key, with the balance after
/// this request appended where the key has credits. `credits_remaining` is the answer's
/// last field and absent from the cached bytes, so the balance goes before their closing
/// brace, and no request renders the key again.
fn valid_body(caller: &Caller, credits_remaining: Option<u64>) -> Result<Response, ApiError> {
    let body = caller.record.validate_body(|_| {
        serde_json::to_vec(&valid_response(caller))
            .map(Bytes::from)
            .map_err(ApiError::internal)
    })?;
    Ok(rendered_json(match credits_remaining {
        None => body,
        Some(balance) => with_balance(&body, balance),
    }))
}

/// `body`, a JSON object, with `"credits_remaining": balance` as its last member.
fn with_balance(body: &[u8], balance: u64) -> Bytes {
    let open = body.strip_suffix(b"}").unwrap_or(body);
    let mut spliced = Vec::with_capacity(open.len() + 48);
    spliced.extend_from_slice(open);
    spliced.extend_from_slice(b",\"credits_remaining\":");
    // Writing a number into a vector cannot fail.
    let _ = serde_json::to_writer(&mut spliced, &balance);
    spliced.push(b'}');
    Bytes::from(spliced)
}

#[cfg(test)]
mod tests {
    use keyward_core::ScopeSet;

    use super::*;

    #[test]
    fn a_balance_spliced_into_the_cached_answer_is_what_serde_renders_with_it() {
        let scopes = ScopeSet::parse(&["read", "videos:create"]).unwrap();
        let metadata = serde_json::json!({"tier": "gold", "n": {"}": 1}});
        let answer = |credits_remaining| ValidateResponse::Valid {
            valid: true,
            key_id: "key_01",
            account_id: "acct_01",
            scopes: &scopes,
            metadata: metadata.as_object().unwrap(),
            expires_at: None,
            credits_remaining,
        };
        let cached = serde_json::to_vec(&answer(None)).unwrap();
        for balance in [0, 7, u64::MAX] {
            let rendered = serde_json::to_vec(&answer(Some(balance))).unwrap();
            assert_eq!(with_balance(&cached, balance), rendered);
        }
    }
}
