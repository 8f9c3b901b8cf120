//! What an account's keys did: request history, monthly usage and the audit log
//! (API.md §Endpoints).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keyward_core::{KeyId, Limits, Scope, timefmt};
use keyward_store::{AuditAction, AuditChain, AuditItem, PageQuery};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::dto::trim_page;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::AppState;

/// One row of the request history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestItem {
    /// When the request arrived.
    #[schema(format = DateTime)]
    pub time: String,
    /// HTTP method.
    pub method: String,
    /// Route template with method, e.g. `GET /v1/api-keys/{key_id}`.
    pub endpoint: String,
    /// Response status.
    pub status: u16,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The key that made it.
    pub key_id: String,
    /// Its request id.
    pub request_id: String,
    /// Time to answer, in milliseconds.
    pub latency_ms: u32,
}

/// Body of `GET /v1/request-history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestHistoryPage {
    /// Newest first.
    pub requests: Vec<RequestItem>,
    /// Cursor for the next (older) page, or `null` at the end.
    pub next_before: Option<String>,
}

/// Body of `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// `YYYY-MM`, UTC.
    #[schema(example = "2026-11")]
    pub month: String,
    /// Authenticated requests in that month.
    pub requests_this_month: u64,
    /// Per route template.
    pub by_endpoint: BTreeMap<String, u64>,
    /// Per key.
    pub by_key: BTreeMap<String, u64>,
    /// Per UTC day (`YYYY-MM-DD`) that had requests.
    pub by_day: BTreeMap<String, u64>,
    /// The account's monthly quota and what is left of it, or `null` without one.
    pub quota: Option<Quota>,
}

/// The monthly quota in `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed in a calendar month (UTC).
    pub per_month: u32,
    /// Requests left in the month asked for: `per_month` less its requests, never
    /// below zero.
    pub remaining: u64,
}

impl Quota {
    /// The quota of `limits` after `used` requests, if they have a monthly number.
    #[must_use]
    pub fn of(limits: Limits, used: u64) -> Option<Self> {
        limits.per_month.map(|per_month| Self {
            per_month,
            remaining: u64::from(per_month).saturating_sub(used),
        })
    }
}

/// Body of `GET /v1/audit-log`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogPage {
    /// Newest first.
    pub events: Vec<AuditItem>,
    /// Cursor for the next (older) page, or `null` at the end.
    pub next_before: Option<String>,
}

/// The parameters both paged endpoints share.
fn page_query(query: &mut QueryParams) -> Result<PageQuery, ApiError> {
    let (limit, before) = query.take_page()?;
    let key_id = query
        .take("key_id")?
        .map(|raw| {
            KeyId::parse(&raw).map_err(|_| ApiError::validation("key_id", "must be a key_id"))
        })
        .transpose()?;
    let since = query.take_time("since")?;
    let until = query.take_time("until")?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(ApiError::validation("until", "must not be before since"));
    }
    Ok(PageQuery {
        before,
        limit,
        key_id,
        since,
        until,
        ..PageQuery::default()
    })
}

/// The query parameters of `GET /v1/request-history`, checked; any other parameter
/// is refused. Public for the fuzz targets (`fuzz/`).
///
/// # Errors
/// `VALIDATION_ERROR` naming the first parameter at fault.
pub fn history_query(mut query: QueryParams) -> Result<PageQuery, ApiError> {
    let mut page = page_query(&mut query)?;
    page.endpoint = query.take("endpoint")?;
    if page.endpoint.as_ref().is_some_and(|e| e.len() > 200) {
        return Err(ApiError::validation(
            "endpoint",
            "must be at most 200 characters",
        ));
    }
    page.status = query
        .take_number("status", 100, 599)?
        .map(|n| u16::try_from(n).unwrap_or(599));
    query.finish()?;
    Ok(page)
}

/// The query parameters of `GET /v1/audit-log`, checked; any other parameter is
/// refused. Public for the fuzz targets (`fuzz/`).
///
/// # Errors
/// `VALIDATION_ERROR` naming the first parameter at fault.
pub fn audit_query(mut query: QueryParams) -> Result<PageQuery, ApiError> {
    let mut page = page_query(&mut query)?;
    page.action = query
        .take("action")?
        .map(|raw| {
            AuditAction::parse(&raw).ok_or_else(|| {
                ApiError::validation(
                    "action",
                    "must be an action of the audit log: key.created, key.updated, \
                     key.rotated, key.revoked, key.leaked, webhook.created, webhook.deleted, \
                     account.created, account.updated, account.suspended, account.resumed, \
                     account.deleted, plan.updated, plan.deleted, operator.created or \
                     operator.revoked",
                )
            })
        })
        .transpose()?;
    query.finish()?;
    Ok(page)
}

/// The month of `GET /v1/usage` (`YYYY-MM`; the month of `now` when not given); any
/// other parameter is refused. Public for the fuzz targets (`fuzz/`).
///
/// # Errors
/// `VALIDATION_ERROR` naming the first parameter at fault.
pub fn usage_month(mut query: QueryParams, now: OffsetDateTime) -> Result<String, ApiError> {
    let month = match query.take("month")? {
        Some(raw) => {
            parse_month(&raw).ok_or_else(|| ApiError::validation("month", "must be YYYY-MM"))?
        }
        None => keyward_workers::month_of(now),
    };
    query.finish()?;
    Ok(month)
}

/// The account's request history, newest first.
#[utoipa::path(
    get, path = "/v1/request-history", operation_id = "list_request_history", tag = "metering",
    params(
        ("endpoint" = Option<String>, Query, description = "Only this route template, e.g. `GET /v1/api-keys`"),
        ("key_id" = Option<String>, Query, description = "Only this key's requests"),
        ("status" = Option<u16>, Query, minimum = 100, maximum = 599, description = "Only this response status"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only requests at or after this time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only requests before this time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("before" = Option<String>, Query, description = "The next_before cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of history", body = RequestHistoryPage)),
    security(("api_key" = []))
)]
pub async fn list_request_history(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::READ).await?;
    let page = history_query(query)?;
    let mut rows = state
        .store
        .request_history(&caller.record.key.account_id, &page)
        .await?;
    let next_before = trim_page(&mut rows, page.limit, |(seq, _)| *seq);
    let requests = rows
        .into_iter()
        .map(|(_, r)| RequestItem {
            time: timefmt::format(r.time),
            method: r.method.into_owned(),
            endpoint: r.endpoint.into_owned(),
            status: r.status,
            user_agent: r.user_agent,
            key_id: r.key_id.to_string(),
            request_id: r.request_id.as_str().to_owned(),
            latency_ms: r.latency_ms,
        })
        .collect();
    Ok(Json(RequestHistoryPage {
        requests,
        next_before,
    })
    .into_response())
}

fn parse_month(raw: &str) -> Option<String> {
    let (year, month) = raw.split_once('-')?;
    let ok = year.len() == 4
        && month.len() == 2
        && year
            .bytes()
            .chain(month.bytes())
            .all(|b| b.is_ascii_digit())
        && (1..=12).contains(&month.parse::<u8>().ok()?);
    ok.then(|| raw.to_owned())
}

/// Requests of the account in one calendar month (UTC), from counters.
#[utoipa::path(
    get, path = "/v1/usage", operation_id = "get_usage", tag = "metering",
    params(("month" = Option<String>, Query, pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$", description = "YYYY-MM (default: this month)")),
    responses((status = 200, description = "The month's usage", body = UsageReport)),
    security(("api_key" = []))
)]
pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::READ).await?;
    let month = usage_month(query, caller.now())?;
    let account_id = &caller.record.key.account_id;
    let counters = state.store.usage(account_id, &month).await?;
    let by_day = state.store.usage_by_day(account_id, &month).await?;
    let mut report = UsageReport {
        month,
        requests_this_month: 0,
        by_endpoint: BTreeMap::new(),
        by_key: BTreeMap::new(),
        by_day: by_day.into_iter().collect(),
        quota: None,
    };
    for (endpoint, key_id, count) in counters {
        report.requests_this_month += count;
        *report.by_endpoint.entry(endpoint).or_default() += count;
        *report.by_key.entry(key_id.to_string()).or_default() += count;
    }
    report.quota = Quota::of(caller.record.limits, report.requests_this_month);
    Ok(Json(report).into_response())
}

/// Key lifecycle events of the account, newest first.
#[utoipa::path(
    get, path = "/v1/audit-log", operation_id = "list_audit_log", tag = "metering",
    params(
        ("action" = Option<String>, Query, description = "Only key.created, key.updated, key.rotated, key.revoked, key.leaked, webhook.created, webhook.deleted, account.updated, account.suspended, account.resumed or account.deleted"),
        ("key_id" = Option<String>, Query, description = "Only events of this key"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only events before this time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("before" = Option<String>, Query, description = "The next_before cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of events", body = AuditLogPage)),
    security(("api_key" = []))
)]
pub async fn list_audit_log(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryParams,
) -> Result<Response, ApiError> {
    caller.require(&state, Scope::ADMIN).await?;
    let chain = AuditChain::Account(caller.record.key.account_id.clone());
    audit_page(&state, &chain, query).await
}

/// A page of a chain's events as `GET /v1/audit-log` and `GET /operator/v1/audit-log`
/// serve it: the query checked by [`audit_query`], newest first, with the cursor.
///
/// # Errors
/// `VALIDATION_ERROR` naming a parameter, or the store's.
pub async fn audit_page(
    state: &AppState,
    chain: &AuditChain,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = audit_query(query)?;
    let mut events = state.store.audit_log(chain, &page).await?;
    let next_before = trim_page(&mut events, page.limit, |e| e.seq);
    let events = events.into_iter().map(|e| e.item()).collect();
    Ok(Json(AuditLogPage {
        events,
        next_before,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_reported_only_with_a_monthly_number_and_never_below_zero() {
        assert_eq!(Quota::of(Limits::new(Some(10), Some(100)), 5), None);
        let monthly = Limits {
            per_month: Some(100),
            ..Limits::new(None, None)
        };
        assert_eq!(
            Quota::of(monthly, 40),
            Some(Quota {
                per_month: 100,
                remaining: 60
            })
        );
        assert_eq!(
            Quota::of(monthly, 250),
            Some(Quota {
                per_month: 100,
                remaining: 0
            })
        );
    }
}
