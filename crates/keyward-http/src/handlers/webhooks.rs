//! Webhook subscriptions and their delivery logs (API.md §Webhooks): an account's, and
//! with no account the operators' (`create`, `list`, `delete` and `deliveries`, which
//! `handlers/operator.rs` calls too).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::webhook::{self, EventType, WebhookUrl};
use keyward_core::{AccountId, OsRandom, Scope, WebhookId, timefmt};
use keyward_store::{AuditContext, StoreError, Webhook};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::dto::trim_page;
use crate::error::ApiError;
use crate::extract::{JsonBody, KeyIdSegment, QueryParams};
use crate::state::AppState;

/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 256;

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries go: an `https://` or `http://` URL whose host resolves only to
    /// public addresses.
    #[schema(max_length = 2048)]
    pub url: String,
    /// The event types to receive: `key.created`, `key.updated`, `key.rotated`,
    /// `key.revoked`, `key.leaked`, `key.expiring`, `key.expired`,
    /// `credits.exhausted`; an operator's subscription may also
    /// name `account.created`, `account.updated`, `account.suspended`, `account.resumed`
    /// and `account.deleted`.
    #[schema(min_items = 1)]
    pub events: Vec<String>,
    /// A note, up to 256 characters.
    pub description: Option<String>,
}

/// A subscription, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookObject {
    /// Its id.
    #[schema(example = "wh_01JDQ8W6ZK3T5R2N9V4B7C1XEH")]
    pub webhook_id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// The caller's note.
    pub description: Option<String>,
    /// When it was made.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl WebhookObject {
    fn new(webhook: &Webhook) -> Self {
        Self {
            webhook_id: webhook.webhook_id.to_string(),
            url: webhook.url.clone(),
            events: webhook
                .events
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
            description: webhook.description.clone(),
            created_at: timefmt::format(webhook.created_at),
        }
    }
}

/// Body of `201` to `POST /v1/webhooks`: the subscription and its signing secret, shown
/// this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    /// The subscription.
    #[serde(flatten)]
    pub webhook: WebhookObject,
    /// The signing secret (`whsec_…`): never shown again.
    pub secret: String,
}

/// Body of `GET /v1/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Oldest first.
    pub webhooks: Vec<WebhookObject>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryItem {
    /// When it was made.
    #[schema(format = DateTime)]
    pub time: String,
    /// The event (the `webhook-id` header).
    pub event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The response's status, or `null` when none came.
    pub status: Option<u16>,
    /// Why it failed, or `null`.
    pub error: Option<String>,
    /// When the next attempt is due, or `null` (delivered, or failed for good).
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
}

/// Body of `GET /v1/webhooks/{webhook_id}/deliveries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryItem>,
    /// Cursor for the next (older) page, or `null` at the end.
    pub next_before: Option<String>,
}

fn audit(caller: &Caller) -> AuditContext {
    AuditContext {
        actor_key_id: Some(caller.record.key.key_id.clone()),
        operator: None,
        request_id: caller.request_id().to_owned(),
        time: caller.now(),
        changes: serde_json::Value::Null,
    }
}

/// Subscribe to the account's events; the signing secret is in this response only.
#[utoipa::path(
    post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses((status = 201, description = "The subscription with its secret", body = WebhookWithSecret)),
    security(("api_key" = []))
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::ADMIN).await?;
    let owner = Some(caller.record.key.account_id.clone());
    create(&state, owner, body, &audit(&caller)).await
}

/// Creates a subscription of `owner` (`None`: an operator's, of every account's events)
/// from a request body, with the checks of both ways in: the URL and the address rule,
/// the event types the owner may name, the description.
///
/// # Errors
/// `VALIDATION_ERROR` naming a field, or the store's.
pub async fn create(
    state: &AppState,
    owner: Option<AccountId>,
    body: JsonBody,
    audit: &AuditContext,
) -> Result<Response, ApiError> {
    let req: CreateWebhookRequest = body.parse()?;
    let url = WebhookUrl::parse(&req.url).map_err(|e| ApiError::validation("url", e.0))?;
    let allowed = match owner {
        Some(_) => EventType::ACCOUNT_TYPES,
        None => EventType::OPERATOR_TYPES,
    };
    let events: Vec<EventType> = webhook::parse_events(&req.events, allowed)
        .map_err(|e| ApiError::validation("events", e.0))?;
    let description = req
        .description
        .map(|d| {
            let chars = d.chars().count();
            if chars > MAX_DESCRIPTION_CHARS || d.chars().any(char::is_control) {
                Err(ApiError::validation(
                    "description",
                    "must be at most 256 characters, without control characters",
                ))
            } else {
                Ok(d)
            }
        })
        .transpose()?;
    keyward_workers::webhooks::resolve_target(&url, state.webhooks_allow_private)
        .await
        .map_err(|refused| ApiError::validation("url", refused.0))?;
    let webhook = Webhook {
        webhook_id: WebhookId::from_ulid(state.next_ulid()),
        account_id: owner,
        url: url.as_str().to_owned(),
        events,
        description,
        secret: webhook::generate_secret(&mut OsRandom),
        created_at: timefmt::truncate(audit.time),
    };
    state.store.create_webhook(&webhook, audit).await?;
    let body = WebhookWithSecret {
        webhook: WebhookObject::new(&webhook),
        secret: webhook.secret,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// List the account's subscriptions (without secrets).
#[utoipa::path(
    get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    responses((status = 200, description = "The account's subscriptions", body = WebhookList)),
    security(("api_key" = []))
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::ADMIN).await?;
    list(&state, Some(&caller.record.key.account_id)).await
}

/// The subscriptions of `owner` (`None`: the operators'), without secrets.
///
/// # Errors
/// The store's.
pub async fn list(state: &AppState, owner: Option<&AccountId>) -> Result<Response, ApiError> {
    let webhooks = state.store.list_webhooks(owner).await?;
    let webhooks = webhooks.iter().map(WebhookObject::new).collect();
    Ok(Json(WebhookList { webhooks }).into_response())
}

/// Delete a subscription: its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{webhook_id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The subscription's id")),
    responses((status = 204, description = "Deleted")),
    security(("api_key" = []))
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    segment: KeyIdSegment,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::ADMIN).await?;
    let account = caller.record.key.account_id.clone();
    delete(&state, Some(&account), &segment, &audit(&caller)).await
}

/// Deletes a subscription of `owner` (`None`: an operator's).
///
/// # Errors
/// `404` if the owner has no such subscription, or the store's.
pub async fn delete(
    state: &AppState,
    owner: Option<&AccountId>,
    segment: &KeyIdSegment,
    audit: &AuditContext,
) -> Result<Response, ApiError> {
    let webhook_id = segment.webhook_id()?;
    match state.store.delete_webhook(owner, &webhook_id, audit).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::webhook_not_found()),
        Err(e) => Err(e.into()),
    }
}

/// A subscription's delivery attempts, newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/{webhook_id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(
        ("webhook_id" = String, Path, description = "The subscription's id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("before" = Option<String>, Query, description = "The next_before cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of attempts", body = DeliveryPage)),
    security(("api_key" = []))
)]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    segment: KeyIdSegment,
    query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::ADMIN).await?;
    let account = caller.record.key.account_id.clone();
    deliveries(&state, Some(&account), &segment, query).await
}

/// A page of the delivery attempts of a subscription of `owner` (`None`: an operator's),
/// newest first.
///
/// # Errors
/// `VALIDATION_ERROR` naming a parameter, `404` if the owner has no such subscription,
/// or the store's.
pub async fn deliveries(
    state: &AppState,
    owner: Option<&AccountId>,
    segment: &KeyIdSegment,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let (read, before) = query.take_page()?;
    query.finish()?;
    let webhook_id = segment.webhook_id()?;
    let mut attempts = state
        .store
        .webhook_attempts(owner, &webhook_id, before, read)
        .await?
        .ok_or_else(ApiError::webhook_not_found)?;
    let next_before = trim_page(&mut attempts, read, |(seq, _)| *seq);
    let deliveries = attempts
        .into_iter()
        .map(|(_, a)| DeliveryItem {
            time: timefmt::format(a.time),
            event_id: a.event_id,
            kind: a.kind,
            status: a.status,
            error: a.error,
            next_attempt_at: a.next_attempt_at.map(timefmt::format),
        })
        .collect();
    Ok(Json(DeliveryPage {
        deliveries,
        next_before,
    })
    .into_response())
}
