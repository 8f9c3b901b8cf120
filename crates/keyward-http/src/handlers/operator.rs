//! `/operator/v1/`: the platform's own backend manages accounts and plans, reads the
//! operator log, subscribes to every account's events and reports leaked keys, with an
//! operator key (API.md §Operator API). The work is in [`crate::operator`], which the CLI
//! calls too, and for leaks in [`crate::leaks`], which GitHub secret scanning's endpoint
//! calls too; these handlers read the request and write the answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::leak::{self, MAX_LEAKED_KEYS};
use keyward_core::{AccountId, Limits, timefmt};
use keyward_store::{
    AccountPatch, AccountQuery, AccountSummary, ApiKey, AuditChain, OperatorActor, Plan,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::OperatorCaller;
use crate::dto::{ApiKeyObject, ApiKeyWithSecret, nullable};
use crate::error::ApiError;
use crate::extract::{JsonBody, KeyIdSegment, QueryParams};
use crate::handlers::webhooks;
use crate::leaks::{self, LeakAction, LeakReport, Leaked};
use crate::operator::{
    self, DEFAULT_PLAN, NewAccount, parse_account_name, parse_external_id, parse_limit,
    parse_plan_name,
};
use crate::state::AppState;

/// Limits on the wire: each a positive number, or `null` (unlimited; in `overrides`,
/// the plan's).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct LimitsDto {
    /// Requests per rolling minute.
    pub per_minute: Option<u32>,
    /// Requests per rolling 24 hours.
    pub per_day: Option<u32>,
    /// Requests per calendar month (UTC).
    pub per_month: Option<u32>,
}

impl From<Limits> for LimitsDto {
    fn from(l: Limits) -> Self {
        Self {
            per_minute: l.per_minute,
            per_day: l.per_day,
            per_month: l.per_month,
        }
    }
}

/// Limits as a request gives them: each optional, a positive number or `null`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Requests per rolling minute.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub per_minute: Option<u64>,
    /// Requests per rolling 24 hours.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub per_day: Option<u64>,
    /// Requests per calendar month (UTC).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub per_month: Option<u64>,
}

impl LimitsRequest {
    fn parse(&self, prefix: &str) -> Result<Limits, ApiError> {
        let field = |window: &str| format!("{prefix}{window}");
        Ok(Limits::new(
            parse_limit(&field("per_minute"), self.per_minute)?,
            parse_limit(&field("per_day"), self.per_day)?,
        )
        .with_per_month(parse_limit(&field("per_month"), self.per_month)?))
    }
}

/// An account as the operator API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountObject {
    /// Its id (`acct_01J…`).
    pub account_id: String,
    /// Its name.
    pub name: String,
    /// The platform's own id of it, unique.
    pub external_id: Option<String>,
    /// Its plan.
    pub plan: String,
    /// The limits in force: the plan's, with the overrides applied.
    pub limits: LimitsDto,
    /// Its own numbers, each replacing the plan's where not `null`.
    pub overrides: LimitsDto,
    /// `active` or `suspended`.
    pub status: String,
    /// Operator-defined object.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// How many keys it has.
    pub key_count: u64,
    /// Requests counted this calendar month (UTC).
    pub requests_this_month: u64,
}

impl AccountObject {
    fn new(summary: &AccountSummary, requests_this_month: u64) -> Self {
        let a = &summary.account;
        Self {
            account_id: a.account_id.as_str().to_owned(),
            name: a.name.clone(),
            external_id: a.external_id.as_ref().map(|id| id.as_str().to_owned()),
            plan: a.plan.as_str().to_owned(),
            limits: summary.limits.into(),
            overrides: a.overrides.into(),
            status: a.status.as_str().to_owned(),
            metadata: a.metadata.as_map().clone(),
            created_at: timefmt::format(a.created_at),
            key_count: summary.key_count,
            requests_this_month,
        }
    }
}

/// `POST /operator/v1/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// 1 to 200 characters.
    pub name: String,
    /// A plan's name; `free` if not given.
    #[serde(default)]
    pub plan: Option<String>,
    /// The platform's own id of the customer, 1 to 128 characters, unique.
    #[serde(default)]
    pub external_id: Option<String>,
    /// A JSON object of at most 4 KiB serialised.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The created account and its first key, with the key's secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccountResponse<'a> {
    /// The account.
    pub account: AccountObject,
    /// Its first key (`read`, `write`, `admin`) and secret, shown once.
    pub api_key: ApiKeyWithSecret<'a>,
}

/// Create an account and its first key (sign-up); a retry with the same external id is a 409.
#[utoipa::path(
    post, path = "/operator/v1/accounts", operation_id = "operator_create_account", tag = "operator",
    request_body = CreateAccountRequest,
    responses((status = 201, description = "The account and its first key with its secret", body = CreatedAccountResponse)),
    security(("operator_key" = []))
)]
pub async fn create_account(
    State(state): State<AppState>,
    caller: OperatorCaller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: CreateAccountRequest = body.parse()?;
    let new = NewAccount {
        name: parse_account_name(&req.name)?,
        plan: parse_plan_name("plan", req.plan.as_deref().unwrap_or(DEFAULT_PLAN))?,
        external_id: req
            .external_id
            .as_deref()
            .map(parse_external_id)
            .transpose()?,
        metadata: parse_metadata(req.metadata)?,
    };
    let created = operator::create_account(
        state.store.as_ref(),
        new,
        &state.prefix,
        &actor(&caller),
        caller.now(),
    )
    .await?;
    let account_id = &created.account.account_id;
    let summary = operator::account(state.store.as_ref(), account_id).await?;
    let key = state
        .store
        .get_key(account_id, &created.key_id)
        .await?
        .ok_or_else(|| ApiError::internal("the first key is missing"))?;
    let body = CreatedAccountResponse {
        account: AccountObject::new(&summary, 0),
        api_key: ApiKeyWithSecret {
            key: ApiKeyObject::new(&key, caller.now()),
            api_key: created.secret.expose(),
        },
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn parse_metadata(raw: Option<Value>) -> Result<keyward_core::Metadata, ApiError> {
    raw.map(|v| keyward_core::Metadata::parse(v).map_err(|e| ApiError::validation("metadata", e.0)))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The actor the caller's changes record: its operator, and this request.
fn actor(caller: &OperatorCaller) -> operator::Actor {
    operator::Actor::operator(caller.operator.operator_id.clone(), caller.request_id())
}

/// The account of the path, or the `404` of a missing one.
fn account_id(raw: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(raw).map_err(|_| operator::account_not_found())
}

/// The requests this calendar month (UTC) of an account, from its usage counters.
async fn requests_this_month(
    state: &AppState,
    account_id: &AccountId,
    caller: &OperatorCaller,
) -> Result<u64, ApiError> {
    let now = caller.now();
    let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    Ok(crate::usage::requests_in_month(state.store.as_ref(), account_id, &month).await?)
}

/// Get an account.
#[utoipa::path(
    get, path = "/operator/v1/accounts/{account_id}", operation_id = "operator_get_account", tag = "operator",
    params(("account_id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account", body = AccountObject)),
    security(("operator_key" = []))
)]
pub async fn get_account(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = account_id(&raw)?;
    let summary = operator::account(state.store.as_ref(), &id).await?;
    let requests = requests_this_month(&state, &id, &caller).await?;
    Ok((StatusCode::OK, Json(AccountObject::new(&summary, requests))).into_response())
}

/// A page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    /// The accounts, in id (creation) order.
    pub accounts: Vec<AccountObject>,
    /// Whether more follow: the next page starts `after` the last `account_id`.
    pub has_more: bool,
}

/// Most accounts in one page, and the number when `limit` is not given.
const MAX_ACCOUNT_PAGE: u64 = 1000;
const DEFAULT_ACCOUNT_PAGE: u32 = 100;

/// List accounts in creation order, by page, with filters.
#[utoipa::path(
    get, path = "/operator/v1/accounts", operation_id = "operator_list_accounts", tag = "operator",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many accounts (default 100)"),
        ("after" = Option<String>, Query, description = "Start after this account_id (the last one of the previous page)"),
        ("external_id" = Option<String>, Query, description = "Only the account with this external_id"),
        ("status" = Option<String>, Query, description = "Only accounts with this status: active or suspended"),
    ),
    responses((status = 200, description = "A page of accounts", body = AccountList)),
    security(("operator_key" = []))
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    caller: OperatorCaller,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query
        .take_number("limit", 1, MAX_ACCOUNT_PAGE)?
        .map_or(DEFAULT_ACCOUNT_PAGE, |n| {
            u32::try_from(n).unwrap_or(DEFAULT_ACCOUNT_PAGE)
        });
    let after = query
        .take("after")?
        .map(|raw| {
            AccountId::parse(&raw)
                .map_err(|_| ApiError::validation("after", "must be an account_id"))
        })
        .transpose()?;
    let external_id = query
        .take("external_id")?
        .map(|raw| parse_external_id(&raw))
        .transpose()?;
    let status = query
        .take("status")?
        .map(|raw| {
            raw.parse()
                .map_err(|e: keyward_core::InvalidValue| ApiError::validation("status", e.0))
        })
        .transpose()?;
    query.finish()?;
    let page = AccountQuery {
        limit,
        after,
        external_id,
        status,
    };
    let (summaries, has_more) = state.store.account_page(&page).await?;
    let mut accounts = Vec::with_capacity(summaries.len());
    for summary in &summaries {
        let requests = requests_this_month(&state, &summary.account.account_id, &caller).await?;
        accounts.push(AccountObject::new(summary, requests));
    }
    let body = AccountList { accounts, has_more };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `PATCH /operator/v1/accounts/{account_id}`: each field given is changed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccountRequest {
    /// New name, 1 to 200 characters.
    #[serde(default)]
    pub name: Option<String>,
    /// A plan's name.
    #[serde(default)]
    pub plan: Option<String>,
    /// New overrides of the plan's numbers (all three replaced; a missing or `null` one
    /// is the plan's).
    #[serde(default, deserialize_with = "crate::extract::object")]
    pub overrides: Option<LimitsRequest>,
    /// `active`, or `suspended`: the account's keys get `401 account_suspended`.
    #[serde(default)]
    pub status: Option<String>,
    /// New metadata (replaces the old).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// New external id, or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub external_id: Option<Option<String>>,
}

/// Change an account's name, plan, overrides, status (suspend, resume), metadata or
/// external id.
#[utoipa::path(
    patch, path = "/operator/v1/accounts/{account_id}", operation_id = "operator_update_account", tag = "operator",
    params(("account_id" = String, Path, description = "The account's id")),
    request_body = UpdateAccountRequest,
    responses((status = 200, description = "The account as changed", body = AccountObject)),
    security(("operator_key" = []))
)]
pub async fn update_account(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: UpdateAccountRequest = body.parse()?;
    let patch = AccountPatch {
        name: req.name.as_deref().map(parse_account_name).transpose()?,
        plan: req
            .plan
            .as_deref()
            .map(|p| parse_plan_name("plan", p))
            .transpose()?,
        overrides: req
            .overrides
            .as_ref()
            .map(|o| o.parse("overrides."))
            .transpose()?,
        status: req
            .status
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: keyward_core::InvalidValue| ApiError::validation("status", e.0))
            })
            .transpose()?,
        metadata: req.metadata.map(|m| parse_metadata(Some(m))).transpose()?,
        external_id: req
            .external_id
            .map(|id| id.as_deref().map(parse_external_id).transpose())
            .transpose()?,
    };
    let id = account_id(&raw)?;
    let (summary, digests) = operator::update_account(
        state.store.as_ref(),
        &id,
        &patch,
        &actor(&caller),
        caller.now(),
    )
    .await?;
    state.forget_changed_key(Some(&id), &digests);
    let requests = requests_this_month(&state, &id, &caller).await?;
    Ok((StatusCode::OK, Json(AccountObject::new(&summary, requests))).into_response())
}

/// Delete an account: its keys are revoked, its history, usage and subscriptions deleted;
/// its audit log is kept.
#[utoipa::path(
    delete, path = "/operator/v1/accounts/{account_id}", operation_id = "operator_delete_account", tag = "operator",
    params(("account_id" = String, Path, description = "The account's id")),
    responses((status = 204, description = "Deleted")),
    security(("operator_key" = []))
)]
pub async fn delete_account(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = account_id(&raw)?;
    let digests =
        operator::delete_account(state.store.as_ref(), &id, &actor(&caller), caller.now()).await?;
    state.forget_changed_key(Some(&id), &digests);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The operator log: what operators and the CLI did, newest first, chained like an
/// account's log.
#[utoipa::path(
    get, path = "/operator/v1/audit-log", operation_id = "operator_list_audit_log", tag = "operator",
    params(
        ("action" = Option<String>, Query, description = "Only this action, e.g. account.created, plan.updated or key.revoked"),
        ("key_id" = Option<String>, Query, description = "Only events of this key"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only events before this time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("before" = Option<String>, Query, description = "The next_before cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of events", body = crate::handlers::history::AuditLogPage)),
    security(("operator_key" = []))
)]
pub async fn list_audit_log(
    State(state): State<AppState>,
    _caller: OperatorCaller,
    query: QueryParams,
) -> Result<Response, ApiError> {
    crate::handlers::history::audit_page(&state, &AuditChain::Operator, query).await
}

/// Subscribe to the events of every account, and to accounts' own events; the signing
/// secret is in this response only.
#[utoipa::path(
    post, path = "/operator/v1/webhooks", operation_id = "operator_create_webhook", tag = "operator",
    request_body = webhooks::CreateWebhookRequest,
    responses((status = 201, description = "The subscription with its secret", body = webhooks::WebhookWithSecret)),
    security(("operator_key" = []))
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: OperatorCaller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let audit = actor(&caller).audit(caller.now(), Value::Null);
    webhooks::create(&state, None, body, &audit).await
}

/// List the operators' subscriptions (without secrets).
#[utoipa::path(
    get, path = "/operator/v1/webhooks", operation_id = "operator_list_webhooks", tag = "operator",
    responses((status = 200, description = "The operators' subscriptions", body = webhooks::WebhookList)),
    security(("operator_key" = []))
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    _caller: OperatorCaller,
) -> Result<Response, ApiError> {
    webhooks::list(&state, None).await
}

/// Delete an operators' subscription: its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/operator/v1/webhooks/{webhook_id}", operation_id = "operator_delete_webhook", tag = "operator",
    params(("webhook_id" = String, Path, description = "The subscription's id")),
    responses((status = 204, description = "Deleted")),
    security(("operator_key" = []))
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: OperatorCaller,
    segment: KeyIdSegment,
) -> Result<Response, ApiError> {
    let audit = actor(&caller).audit(caller.now(), Value::Null);
    webhooks::delete(&state, None, &segment, &audit).await
}

/// An operators' subscription's delivery attempts, newest first.
#[utoipa::path(
    get, path = "/operator/v1/webhooks/{webhook_id}/deliveries", operation_id = "operator_list_webhook_deliveries", tag = "operator",
    params(
        ("webhook_id" = String, Path, description = "The subscription's id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("before" = Option<String>, Query, description = "The next_before cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of attempts", body = webhooks::DeliveryPage)),
    security(("operator_key" = []))
)]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    _caller: OperatorCaller,
    segment: KeyIdSegment,
    query: QueryParams,
) -> Result<Response, ApiError> {
    webhooks::deliveries(&state, None, &segment, query).await
}

/// Issue a key with any scopes to an account, such as one whose keys are lost.
#[utoipa::path(
    post, path = "/operator/v1/accounts/{account_id}/api-keys", operation_id = "operator_issue_api_key", tag = "operator",
    params(("account_id" = String, Path, description = "The account's id")),
    request_body = crate::handlers::keys::CreateApiKeyRequest,
    responses((status = 201, description = "The new key with its secret", body = ApiKeyWithSecret)),
    security(("operator_key" = []))
)]
pub async fn issue_api_key(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req = body.parse()?;
    let id = account_id(&raw)?;
    let (key, secret) = operator::issue_key(
        state.store.as_ref(),
        &id,
        req,
        &state.prefix,
        &actor(&caller),
        caller.now(),
    )
    .await?;
    state.forget_changed_key(Some(&id), &[]);
    let body = ApiKeyWithSecret {
        key: ApiKeyObject::new(&key, caller.now()),
        api_key: secret.expose(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A key of any account, with the account it belongs to (never a secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorKeyObject<'a> {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyObject<'a>,
    /// Its account.
    pub account_id: &'a str,
}

/// Get any account's key by its id.
#[utoipa::path(
    get, path = "/operator/v1/api-keys/{key_id}", operation_id = "operator_get_api_key", tag = "operator",
    params(("key_id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key and its account_id", body = OperatorKeyObject)),
    security(("operator_key" = []))
)]
pub async fn get_api_key(
    State(state): State<AppState>,
    caller: OperatorCaller,
    key_id: KeyIdSegment,
) -> Result<Response, ApiError> {
    let key = any_key(&state, &key_id).await?;
    let body = OperatorKeyObject {
        key: ApiKeyObject::new(&key, caller.now()),
        account_id: key.account_id.as_str(),
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

async fn any_key(state: &AppState, key_id: &KeyIdSegment) -> Result<ApiKey, ApiError> {
    let key_id = key_id.parse()?;
    state
        .store
        .any_key(&key_id)
        .await?
        .ok_or_else(ApiError::key_not_found)
}

/// Revoke any account's key by its id (incident response).
#[utoipa::path(
    delete, path = "/operator/v1/api-keys/{key_id}", operation_id = "operator_revoke_api_key", tag = "operator",
    params(("key_id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Revoked")),
    security(("operator_key" = []))
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    caller: OperatorCaller,
    key_id: KeyIdSegment,
) -> Result<Response, ApiError> {
    let current = any_key(&state, &key_id).await?;
    let digests = operator::revoke_key(
        state.store.as_ref(),
        &current,
        &actor(&caller),
        caller.now(),
    )
    .await?;
    state.forget_changed_key(Some(&current.account_id), &digests);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /operator/v1/leaked-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakedKeysRequest {
    /// The strings found, 1 to 1000 (more is a `400`, or a `413` once the body passes the
    /// body limit): each that is a working secret of a key of any account stops working.
    #[schema(min_items = 1)]
    pub keys: Vec<String>,
    /// Where they were found, in the reporter's words: 1 to 200 characters, no control
    /// characters. Kept in each `key.leaked` event.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub source: Option<String>,
    /// Where they were found: an absolute http:// or https:// URL of at most 2048
    /// characters. Kept in each `key.leaked` event.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2048)]
    pub url: Option<String>,
}

/// The answer for one reported string.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakedKeyResult {
    /// The string's display hint (`kw_AbCd…wxyz`); never the string.
    pub hint: String,
    /// The key the string is a secret of, if it is a stored key's; `null` for a string
    /// that is not a key, or whose key is revoked (its secrets go with it).
    pub key_id: Option<String>,
    /// `revoked` or `disabled` (per `--on-leak`) for a working secret; `none` for anything
    /// else: not a key (no lookup for a string that fails the checksum), unknown, revoked,
    /// a rotated-out secret past its grace period, or a key already disabled under
    /// `--on-leak disable`.
    pub action: LeakAction,
}

/// The answers, in the order of the strings.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakedKeysResponse {
    /// One per string given.
    pub results: Vec<LeakedKeyResult>,
}

/// Report leaked keys: each that still works is revoked (or disabled) at once on every node.
#[utoipa::path(
    post, path = "/operator/v1/leaked-keys", operation_id = "operator_report_leaked_keys", tag = "operator",
    request_body = LeakedKeysRequest,
    responses((status = 200, description = "What was done for each string, in order", body = LeakedKeysResponse)),
    security(("operator_key" = []))
)]
pub async fn report_leaked_keys(
    State(state): State<AppState>,
    caller: OperatorCaller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: LeakedKeysRequest = body.parse()?;
    if req.keys.is_empty() || req.keys.len() > MAX_LEAKED_KEYS {
        return Err(ApiError::validation(
            "keys",
            format!("must hold 1 to {MAX_LEAKED_KEYS} strings"),
        ));
    }
    let source = req
        .source
        .as_deref()
        .map(|raw| leak::parse_source(raw).map_err(|e| ApiError::validation("source", e.0)))
        .transpose()?;
    let url = req
        .url
        .as_deref()
        .map(|raw| leak::parse_url(raw).map_err(|e| ApiError::validation("url", e.0)))
        .transpose()?;
    let reporter = OperatorActor::Api(caller.operator.operator_id.clone());
    let report = LeakReport {
        source: source.as_deref(),
        reporter: &reporter,
        request_id: caller.request_id(),
        now: caller.now(),
    };
    let strings: Vec<Leaked<'_>> = req
        .keys
        .iter()
        .map(|raw| Leaked {
            raw,
            url: url.as_deref(),
        })
        .collect();
    let outcomes = leaks::respond(&state, &strings, &report).await?;
    let results = outcomes
        .into_iter()
        .map(|o| LeakedKeyResult {
            hint: o.hint,
            key_id: o.key_id.map(|id| id.as_str().to_owned()),
            action: o.action,
        })
        .collect();
    Ok((StatusCode::OK, Json(LeakedKeysResponse { results })).into_response())
}

/// A plan on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanObject {
    /// Its name.
    pub name: String,
    /// Requests per rolling minute; `null` is unlimited.
    pub per_minute: Option<u32>,
    /// Requests per rolling 24 hours; `null` is unlimited.
    pub per_day: Option<u32>,
    /// Requests per calendar month (UTC); `null` is unlimited.
    pub per_month: Option<u32>,
}

impl From<&Plan> for PlanObject {
    fn from(p: &Plan) -> Self {
        Self {
            name: p.name.as_str().to_owned(),
            per_minute: p.limits.per_minute,
            per_day: p.limits.per_day,
            per_month: p.limits.per_month,
        }
    }
}

/// Every plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    /// The plans, by name.
    pub plans: Vec<PlanObject>,
}

/// List the plans and their limits.
#[utoipa::path(
    get, path = "/operator/v1/plans", operation_id = "operator_list_plans", tag = "operator",
    responses((status = 200, description = "Every plan", body = PlanList)),
    security(("operator_key" = []))
)]
pub async fn list_plans(
    State(state): State<AppState>,
    _caller: OperatorCaller,
) -> Result<Response, ApiError> {
    let plans = state.store.plans().await?;
    let body = PlanList {
        plans: plans.iter().map(PlanObject::from).collect(),
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Create a plan or replace its limits; every node applies it within a second.
#[utoipa::path(
    put, path = "/operator/v1/plans/{name}", operation_id = "operator_put_plan", tag = "operator",
    params(("name" = String, Path, description = "The plan's name: 1 to 32 of a-z, 0-9, _ and -, starting with a letter")),
    request_body = LimitsRequest,
    responses((status = 200, description = "The plan", body = PlanObject)),
    security(("operator_key" = []))
)]
pub async fn put_plan(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: LimitsRequest = body.parse()?;
    let limits = req.parse("")?;
    let name = parse_plan_name("name", &raw)?;
    let plan = Plan { name, limits };
    let digests =
        operator::put_plan(state.store.as_ref(), &plan, &actor(&caller), caller.now()).await?;
    state.forget_changed_key(None, &digests);
    Ok((StatusCode::OK, Json(PlanObject::from(&plan))).into_response())
}

/// Delete a plan; 409 while an account uses it.
#[utoipa::path(
    delete, path = "/operator/v1/plans/{name}", operation_id = "operator_delete_plan", tag = "operator",
    params(("name" = String, Path, description = "The plan's name")),
    responses((status = 204, description = "Deleted")),
    security(("operator_key" = []))
)]
pub async fn delete_plan(
    State(state): State<AppState>,
    caller: OperatorCaller,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = plan_in_path(&raw)?;
    operator::delete_plan(state.store.as_ref(), &name, &actor(&caller), caller.now()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The plan of the path, or the `404` of a missing one.
fn plan_in_path(raw: &str) -> Result<keyward_core::PlanName, ApiError> {
    keyward_core::PlanName::parse(raw).map_err(|_| operator::plan_not_found())
}
