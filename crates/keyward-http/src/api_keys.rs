//! `/v1/api-keys`: the seed endpoint and the whole key lifecycle (API.md §Endpoints).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_core::{
    KeyId, KeyName, KeySecret, KeyStatus, Metadata, OsRandom, Scope, ScopeSet, StoredStatus,
    timefmt,
};
use keyward_store::{ApiKey, AuditContext, KeyPatch, KeyQuery, NewKey, NewSecret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::dto::{ApiKeyObject, ApiKeyWithSecret, nullable};
use crate::error::ApiError;
use crate::extract::{JsonBody, KeyIdSegment, QueryParams};
use crate::state::{AppState, MAX_CACHED_LISTING};

/// Longest `expires_in` (and farthest `expires_at`): 100 years.
const MAX_LIFETIME_SECS: i64 = 100 * 365 * 24 * 3600;
/// Longest rotation grace period: one week.
const MAX_GRACE_SECS: u64 = 604_800;

/// Body of `GET /v1/api-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList<'a> {
    /// The account's keys, oldest first.
    pub api_keys: Vec<ApiKeyObject<'a>>,
    /// With `limit`: whether more keys follow the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
}

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
    no_store(StatusCode::OK, (json, Body::from(body)))
}

fn no_store<T: IntoResponse>(status: StatusCode, body: T) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn audit(caller: &Caller, changes: Value) -> AuditContext {
    AuditContext {
        actor_key_id: Some(caller.record.key.key_id.clone()),
        request_id: caller.request_id().to_owned(),
        time: caller.now(),
        changes,
    }
}

/// `403` unless every scope of `scopes` is the caller's too.
fn ensure_within_caller(caller: &Caller, scopes: &ScopeSet) -> Result<(), ApiError> {
    let missing = scopes.missing_from(&caller.record.key.scopes);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(&missing))
    }
}

/// An account's whole key listing as cached, with the JSON of its unfiltered page
/// rendered once per state of the listing: profiling the list endpoint showed
/// serialisation at 11 % of CPU.
#[derive(Debug)]
pub struct Listing {
    keys: Vec<ApiKey>,
    /// Each key's `last_used` in unix seconds (`i64::MIN`: never), moved forward as
    /// metering batches are stored, so that the listing can live longer than the one
    /// second within which a use must show.
    last_used: Vec<AtomicI64>,
    /// Bumped whenever one of `last_used` moves: a rendered page is good for one value.
    uses: AtomicU64,
    whole_page: RwLock<Option<RenderedPage>>,
}

#[derive(Debug)]
struct RenderedPage {
    body: Bytes,
    uses: u64,
    rendered_at: OffsetDateTime,
    /// The first instant at which a key of the page shows another status (it expires).
    stale_from: Option<OffsetDateTime>,
}

const NEVER_USED: i64 = i64::MIN;

impl Listing {
    fn new(keys: Vec<ApiKey>) -> Self {
        let last_used = keys
            .iter()
            .map(|k| AtomicI64::new(k.last_used.map_or(NEVER_USED, |t| t.unix_timestamp())))
            .collect();
        Self {
            keys,
            last_used,
            uses: AtomicU64::new(0),
            whole_page: RwLock::new(None),
        }
    }

    /// Moves a key's `last_used` forward to `at` (whole seconds, as stored).
    pub(crate) fn note_use(&self, key_id: &KeyId, at: OffsetDateTime) {
        let Some(i) = self.index_of(key_id) else {
            return;
        };
        let at = at.unix_timestamp();
        if self.last_used[i].fetch_max(at, Ordering::AcqRel) < at {
            self.uses.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn index_of(&self, key_id: &KeyId) -> Option<usize> {
        self.keys.iter().position(|k| k.key_id == *key_id)
    }

    /// The wire object of the `i`-th key at `now`.
    fn object(&self, i: usize, now: OffsetDateTime) -> ApiKeyObject<'_> {
        let last_used = match self.last_used[i].load(Ordering::Acquire) {
            NEVER_USED => None,
            secs => OffsetDateTime::from_unix_timestamp(secs).ok(),
        };
        ApiKeyObject {
            last_used,
            ..ApiKeyObject::new(&self.keys[i], now)
        }
    }

    /// The body of `GET /v1/api-keys` without parameters at `now`: the rendered bytes
    /// while no `last_used` has moved and every key still shows the status it showed,
    /// else a fresh rendering (kept for the next requests).
    fn whole_page(&self, now: OffsetDateTime) -> Result<Bytes, ApiError> {
        let uses = self.uses.load(Ordering::Acquire);
        if let Some(page) = &*self
            .whole_page
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            && page.uses == uses
            && page.rendered_at <= now
            && page.stale_from.is_none_or(|t| now < t)
        {
            return Ok(page.body.clone());
        }
        // `uses` was read first: a use noted while rendering makes the next request
        // render again.
        let page = ApiKeyList {
            api_keys: (0..self.keys.len()).map(|i| self.object(i, now)).collect(),
            has_more: None,
        };
        let mut body = Vec::with_capacity(320 * self.keys.len() + 16);
        serde_json::to_writer(&mut body, &page).map_err(ApiError::internal)?;
        let body = Bytes::from(body);
        let stale_from = self
            .keys
            .iter()
            .filter(|k| k.status == StoredStatus::Active)
            .filter_map(|k| k.expires_at)
            .filter(|&t| t > now)
            .min();
        *self
            .whole_page
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(RenderedPage {
            body: body.clone(),
            uses,
            rendered_at: now,
            stale_from,
        });
        Ok(body)
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

fn new_secret(state: &AppState) -> (KeySecret, NewSecret) {
    let secret = KeySecret::generate(&state.prefix, &mut OsRandom);
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
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::READ).await?;
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
    let account = &caller.record.key.account_id;
    let listing = account_listing(&state, &caller).await?;
    if let Some(all) = &listing
        && status.is_none()
        && limit.is_none()
        && after.is_none()
    {
        return Ok(rendered_json(all.whole_page(caller.now())?));
    }
    let from_storage;
    let body = match &listing {
        // Small accounts: filter and page the cached listing in memory.
        Some(all) => {
            let mut matching = all
                .keys
                .iter()
                .enumerate()
                .filter(|(_, k)| status.is_none_or(|s| k.status_at(caller.now()) == s))
                .filter(|(_, k)| after.as_ref().is_none_or(|a| k.key_id > *a));
            let wanted = limit.map_or(usize::MAX, |l| l as usize);
            let api_keys: Vec<ApiKeyObject> = matching
                .by_ref()
                .take(wanted)
                .map(|(i, _)| all.object(i, caller.now()))
                .collect();
            let more = matching.next().is_some();
            ApiKeyList {
                api_keys,
                has_more: limit.map(|_| more),
            }
        }
        None => {
            from_storage = state
                .store
                .list_keys(
                    account,
                    &KeyQuery {
                        status,
                        limit,
                        after,
                        now: caller.now(),
                    },
                )
                .await?;
            let (keys, more) = &from_storage;
            ApiKeyList {
                api_keys: keys
                    .iter()
                    .map(|k| ApiKeyObject::new(k, caller.now()))
                    .collect(),
                has_more: limit.map(|_| *more),
            }
        }
    };
    Ok(no_store(StatusCode::OK, Json(body)))
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
            all.object(i, caller.now())
        }
        None => {
            from_storage = load_key(&state, &caller, &key_id).await?;
            ApiKeyObject::new(&from_storage, caller.now())
        }
    };
    Ok(no_store(StatusCode::OK, Json(key)))
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
    let name = req.name.as_deref().map(parse_name).transpose()?;
    let scopes = parse_scopes(&req.scopes)?;
    let now = timefmt::truncate(caller.now());
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
    ensure_within_caller(&caller, &scopes)?;

    let (secret, stored_secret) = new_secret(&state);
    let key = NewKey {
        key_id: KeyId::from_ulid(state.next_ulid()),
        account_id: caller.record.key.account_id.clone(),
        name,
        scopes,
        metadata,
        expires_at,
        created_at: now,
        secret: stored_secret,
    };
    let changes = json!({
        "name": key.name.as_ref().map(KeyName::as_str),
        "scopes": key.scopes.to_strings(),
        "expires_at": key.expires_at.map(timefmt::format),
        "metadata": key.metadata.as_map(),
    });
    let stored = state
        .store
        .insert_key(&key, &audit(&caller, changes))
        .await?;
    state.forget_changed_key(Some(&stored.account_id), &[]);
    let body = ApiKeyWithSecret {
        key: ApiKeyObject::new(&stored, caller.now()),
        api_key: secret.expose(),
    };
    Ok(no_store(StatusCode::CREATED, Json(body)))
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
    };

    let current = load_key(&state, &caller, &key_id).await?;
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
    if changes.is_empty() {
        return Ok(no_store(
            StatusCode::OK,
            Json(ApiKeyObject::new(&current, caller.now())),
        ));
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
    Ok(no_store(
        StatusCode::OK,
        Json(ApiKeyObject::new(&key, caller.now())),
    ))
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

    let (secret, stored_secret) = new_secret(&state);
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
    let body = ApiKeyWithSecret {
        key: ApiKeyObject::new(&key, caller.now()),
        api_key: secret.expose(),
    };
    Ok(no_store(StatusCode::OK, Json(body)))
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
    },
    /// The key is well formed but does not authenticate.
    Invalid {
        /// Always `false`.
        valid: bool,
        /// `not_found`, `inactive` or `expired`.
        #[schema(value_type = String)]
        reason: &'static str,
    },
}

/// Check the key in `x-api-key` itself (the KonPro validate endpoint).
#[utoipa::path(
    post, path = "/v1/api-keys/validate", operation_id = "validate_api_key", tag = "api-keys",
    responses((status = 200, description = "Whether the key is valid, and what it carries", body = ValidateResponse)),
    security(("api_key" = []))
)]
pub async fn validate_api_key(
    State(state): State<AppState>,
    attempt: crate::auth::CallerAttempt,
) -> Result<Response, ApiError> {
    use crate::auth::AuthFailure;
    use crate::error::KeyRejection;
    let caller = match attempt.0 {
        Ok(caller) => caller,
        Err(AuthFailure::Rejected(
            reason @ (KeyRejection::NotFound | KeyRejection::Inactive | KeyRejection::Expired),
        )) => {
            let body = ValidateResponse::Invalid {
                valid: false,
                reason: reason.as_str(),
            };
            return Ok(no_store(StatusCode::OK, Json(body)));
        }
        Err(other) => return Err(other.into()),
    };
    caller.count(&state).await?;
    let body = caller.record.validate_body(|record| {
        let key = &record.key;
        let body = ValidateResponse::Valid {
            valid: true,
            key_id: key.key_id.as_str(),
            scopes: &key.scopes,
            metadata: key.metadata.as_map(),
            expires_at: key.expires_at,
        };
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(ApiError::internal)
    })?;
    Ok(rendered_json(body))
}

#[cfg(test)]
mod tests {
    use keyward_core::{AccountId, KeyId, Metadata, ScopeSet, StoredStatus};
    use keyward_store::ApiKey;
    use time::{Duration, OffsetDateTime};
    use ulid::Ulid;

    use super::Listing;

    fn key(status: StoredStatus, expires_at: Option<OffsetDateTime>) -> ApiKey {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        ApiKey {
            key_id: KeyId::from_ulid(Ulid::generate()),
            account_id: AccountId::from_ulid(Ulid::from_parts(1, 2)),
            name: None,
            scopes: ScopeSet::parse(&["read"]).unwrap(),
            metadata: Metadata::parse(serde_json::json!({})).unwrap(),
            status,
            expires_at,
            created_at: now,
            last_used: None,
            hint: "kw_AbCd…wxyz".to_owned(),
            version: 1,
        }
    }

    fn statuses(page: &[u8]) -> Vec<String> {
        let page: serde_json::Value = serde_json::from_slice(page).unwrap();
        page["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["status"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn noted_uses_move_last_used_forward_in_the_rendered_page() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut used = key(StoredStatus::Active, None);
        used.last_used = Some(now - Duration::seconds(60));
        let listing = Listing::new(vec![used.clone(), key(StoredStatus::Active, None)]);
        let last_used = |page: &[u8]| -> Vec<serde_json::Value> {
            let page: serde_json::Value = serde_json::from_slice(page).unwrap();
            page["api_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["last_used"].clone())
                .collect()
        };
        let first = listing.whole_page(now).unwrap();
        assert_eq!(
            last_used(&first),
            [
                serde_json::json!("2027-01-15T07:59:00Z"),
                serde_json::Value::Null
            ]
        );
        listing.note_use(&used.key_id, now + Duration::milliseconds(1500));
        let after_use = listing.whole_page(now + Duration::seconds(2)).unwrap();
        assert_eq!(
            last_used(&after_use),
            [
                serde_json::json!("2027-01-15T08:00:01Z"),
                serde_json::Value::Null
            ]
        );
        // An older use (a late batch) does not move it back, and the page stays rendered.
        listing.note_use(&used.key_id, now);
        let again = listing.whole_page(now + Duration::seconds(3)).unwrap();
        assert_eq!(again.as_ptr(), after_use.as_ptr());
        // A key not in the listing changes nothing.
        listing.note_use(&KeyId::from_ulid(Ulid::from_parts(9, 9)), now);
        assert_eq!(
            listing
                .whole_page(now + Duration::seconds(3))
                .unwrap()
                .as_ptr(),
            after_use.as_ptr()
        );
    }

    #[test]
    fn the_rendered_page_is_not_served_once_a_key_has_expired() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let listing = Listing::new(vec![
            key(StoredStatus::Active, Some(now + Duration::seconds(10))),
            key(StoredStatus::Inactive, Some(now + Duration::seconds(5))),
            key(StoredStatus::Active, None),
        ]);
        let first = listing.whole_page(now).unwrap();
        assert_eq!(statuses(&first), ["active", "inactive", "active"]);
        // Still valid: the same bytes.
        let later = listing.whole_page(now + Duration::seconds(9)).unwrap();
        assert_eq!(later.as_ptr(), first.as_ptr());
        // The first key expires at +10 s: a fresh rendering shows it.
        let expired = listing.whole_page(now + Duration::seconds(10)).unwrap();
        assert_eq!(statuses(&expired), ["expired", "inactive", "active"]);
        // A request stamped before the rendering gets its own rendering too.
        let earlier = listing.whole_page(now - Duration::seconds(1)).unwrap();
        assert_ne!(earlier.as_ptr(), first.as_ptr());
        assert_eq!(statuses(&earlier), ["active", "inactive", "active"]);
    }
}
