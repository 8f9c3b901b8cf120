//! Gateway mode and forward auth (API.md §Gateway): the routes of `--routes FILE`
//! ([`routes`]), the upstream of `--upstream URL` ([`upstream`]), and the headers both
//! ways share: what keyward tells the platform about the caller.
//!
//! The handlers that use them are in `handlers/gateway.rs`; the checks a route asks of a
//! caller are `Caller::require_route` (`auth.rs`), the same for both ways.

pub mod routes;
pub mod upstream;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keyward_store::ApiKey;

use crate::cache::key::CachedKey;

pub use routes::{Route, RouteTable, RoutesError, UpstreamOutcome};
pub use upstream::{Upstream, UpstreamError};

/// The caller's account, for the platform.
pub const X_KEYWARD_ACCOUNT_ID: HeaderName = HeaderName::from_static("x-keyward-account-id");
/// The caller's key.
pub const X_KEYWARD_KEY_ID: HeaderName = HeaderName::from_static("x-keyward-key-id");
/// The key's scopes, comma-separated.
pub const X_KEYWARD_SCOPES: HeaderName = HeaderName::from_static("x-keyward-scopes");

/// What a platform gets from keyward: its routes and, in gateway mode, its upstream.
#[derive(Debug)]
pub struct Gateway {
    /// The routes of `--routes FILE` (forward auth and the gateway match the same).
    pub routes: RouteTable,
    /// Where matched requests go; `None` when only forward auth is served.
    pub upstream: Option<Upstream>,
}

/// Sets the identity headers of `key` in `headers`, replacing any of the same name.
/// The caller removes every other `x-keyward-*` header a client sent
/// ([`upstream::prepare_request`]). The values are made once per cached key.
pub fn set_identity(headers: &mut HeaderMap, key: &CachedKey) {
    let values = key.identity(|record| identity_values(&record.key));
    for (name, value) in [X_KEYWARD_ACCOUNT_ID, X_KEYWARD_KEY_ID, X_KEYWARD_SCOPES]
        .into_iter()
        .zip(values)
    {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
}

/// The identity headers' values of `key`: its account, its id, its scopes
/// comma-separated. Ids and scopes are ASCII by their formats, so each is a valid value.
fn identity_values(key: &ApiKey) -> [Option<HeaderValue>; 3] {
    let scopes = key
        .scopes
        .iter()
        .map(keyward_core::Scope::as_str)
        .collect::<Vec<_>>()
        .join(",");
    [
        key.account_id.as_str().to_owned(),
        key.key_id.as_str().to_owned(),
        scopes,
    ]
    .map(|value| HeaderValue::try_from(value).ok())
}
