//! The answer to a report of leaked keys, the one home of it: `POST /operator/v1/leaked-keys`
//! and `POST /secret-scanning/github` both call [`respond`] (API.md §Operator API).
//!
//! Each string is checked like a presented key: one that fails the shape or checksum is
//! `none` without any storage lookup. A string that is a working secret of a stored key
//! (any account, any prefix it was issued under, any status; a rotated-out secret still in
//! its grace period too) is revoked, or disabled under `--on-leak disable`, with a
//! `key.leaked` audit event and webhook event in the same transaction, and leaves this
//! node's caches at once and every other node's as a revoke does (the store announces it).

use keyward_core::leak::LeakResponse;
use keyward_core::{KeyId, KeyName, KeySecret, StoredStatus, hint_of};
use keyward_store::{ApiKey, AuditContext, AuthRecord, OperatorActor, StoreError};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// Tries at a key that another request changes between the read and the write: each
/// try reads it again.
const TRIES: usize = 5;

/// Who reported the leak.
#[derive(Debug, Clone, Copy)]
pub struct LeakReport<'a> {
    /// Where the strings were found, in the reporter's words.
    pub source: Option<&'a str>,
    /// Who reported it: an operator, or a scanner's signed request. The `key.leaked`
    /// event goes to the operator log too, with this actor.
    pub reporter: &'a OperatorActor,
    /// The request.
    pub request_id: &'a str,
    /// The request's time.
    pub now: OffsetDateTime,
}

/// One reported string, with where it was found if known.
#[derive(Debug, Clone, Copy)]
pub struct Leaked<'a> {
    /// The string.
    pub raw: &'a str,
    /// Where it was found.
    pub url: Option<&'a str>,
}

/// What was done to the key a string is a secret of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Revoked.
    Revoked,
    /// Disabled.
    Disabled,
    /// Nothing: not a key, not a working secret, or already disabled.
    None,
}

impl LeakAction {
    /// Its name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
            Self::None => "none",
        }
    }
}

/// The answer for one string.
#[derive(Debug, Clone)]
pub struct LeakOutcome {
    /// The string's display hint (`kw_AbCd…wxyz`), never the string.
    pub hint: String,
    /// The key the string is a secret of, if one is stored.
    pub key_id: Option<KeyId>,
    /// What was done.
    pub action: LeakAction,
    /// Whether the string was a working secret of a stored key when reported (GitHub's
    /// `true_positive`).
    pub live: bool,
}

impl LeakOutcome {
    fn none(hint: String, key_id: Option<KeyId>, live: bool) -> Self {
        Self {
            hint,
            key_id,
            action: LeakAction::None,
            live,
        }
    }
}

/// Answers a report: one outcome per string, in order. A string given twice is acted on
/// once (the second finds the key revoked or disabled).
///
/// # Errors
/// Storage failing (`503`), or a key that kept changing under the report (`409`). The
/// strings before it have been acted on; a retry of the report finds them done.
pub async fn respond(
    state: &AppState,
    strings: &[Leaked<'_>],
    report: &LeakReport<'_>,
) -> Result<Vec<LeakOutcome>, ApiError> {
    let mut outcomes = Vec::with_capacity(strings.len());
    for leaked in strings {
        outcomes.push(respond_to_one(state, *leaked, report).await?);
    }
    let acted = outcomes
        .iter()
        .filter(|o| o.action != LeakAction::None)
        .count();
    tracing::info!(
        request_id = report.request_id,
        reported = outcomes.len(),
        acted,
        on_leak = state.on_leak.as_str(),
        "answered a report of leaked keys"
    );
    Ok(outcomes)
}

async fn respond_to_one(
    state: &AppState,
    leaked: Leaked<'_>,
    report: &LeakReport<'_>,
) -> Result<LeakOutcome, ApiError> {
    let hint = hint_of(leaked.raw);
    // Shape and checksum first: no storage lookup for garbage.
    let Ok(digest) = KeySecret::digest_of(leaked.raw) else {
        return Ok(LeakOutcome::none(hint, None, false));
    };
    let mut last_conflict = None;
    for _ in 0..TRIES {
        let Some(found) = state.store.auth_by_digest(&digest).await? else {
            return Ok(LeakOutcome::none(hint, None, false));
        };
        let key_id = found.key.key_id.clone();
        if !is_working_secret(&found, report.now) {
            return Ok(LeakOutcome::none(hint, Some(key_id), false));
        }
        if state.on_leak == LeakResponse::Disable && found.key.status == StoredStatus::Inactive {
            return Ok(LeakOutcome::none(hint, Some(key_id), true));
        }
        let key = &found.key;
        let audit = leak_audit(key, &hint, leaked.url, state.on_leak, report);
        let changed = state
            .store
            .leak_key(
                &key.account_id,
                &key.key_id,
                key.version,
                state.on_leak,
                &audit,
            )
            .await;
        match changed {
            Ok(changed) => {
                state.forget_changed_key(Some(&key.account_id), &changed.stale_digests);
                tracing::warn!(
                    request_id = report.request_id,
                    account_id = %key.account_id,
                    key_id = %key.key_id,
                    action = state.on_leak.action(),
                    "a key reported leaked stopped working"
                );
                let action = match state.on_leak {
                    LeakResponse::Revoke => LeakAction::Revoked,
                    LeakResponse::Disable => LeakAction::Disabled,
                };
                return Ok(LeakOutcome {
                    hint,
                    key_id: Some(key_id),
                    action,
                    live: true,
                });
            }
            // Revoked by another request meanwhile.
            Err(StoreError::NotFound) => return Ok(LeakOutcome::none(hint, None, true)),
            Err(e @ StoreError::Conflict(_)) => last_conflict = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_conflict.map_or_else(
        || ApiError::conflict("the key kept changing; retry"),
        ApiError::from,
    ))
}

/// Whether the secret found still authenticates by its own end (a rotated-out secret
/// stops at the end of its grace period); the key's status and expiry aside, since a
/// disabled or expired key can be turned back on.
fn is_working_secret(found: &AuthRecord, now: OffsetDateTime) -> bool {
    found.secret_expires_at.is_none_or(|end| now < end)
}

/// The `key.leaked` event's `changes`: what was done, the leaked secret's hint, the key's
/// name and scopes, and the report's source and URL; never the secret.
fn leak_audit(
    key: &ApiKey,
    hint: &str,
    url: Option<&str>,
    response: LeakResponse,
    report: &LeakReport<'_>,
) -> AuditContext {
    AuditContext {
        actor_key_id: None,
        operator: Some(report.reporter.clone()),
        request_id: report.request_id.to_owned(),
        time: report.now,
        changes: json!({
            "action": response.action(),
            "hint": hint,
            "name": key.name.as_ref().map(KeyName::as_str),
            "scopes": key.scopes.to_strings(),
            "source": report.source,
            "url": url,
        }),
    }
}
