//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire
//! types. Each handler's annotation lists only its success; the error responses of every
//! operation come from one table here, [`FAILURES`], which says how each operation can
//! fail, and each [`Failure`] gives its statuses with an example body built by the very
//! [`ApiError`] constructor the server answers with. The `cache-control` header of every
//! `/v1` and `/operator/v1` answer and the guide of `info.description` are added here too.

use std::collections::BTreeMap;

use keyward_core::Scope;
use keyward_core::leak::SignatureError;
use keyward_ratelimit::Window;
use utoipa::openapi::example::Example;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, KeyRejection};
use crate::handlers::{gateway, history, keys, operator as operator_api, ops, scanning, webhooks};
use crate::middleware::MAX_REQUEST_HEADERS;
use crate::operator;
use crate::state::DEFAULT_BODY_LIMIT;
use crate::{dto, error};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        keys::list_api_keys,
        keys::create_api_key,
        keys::get_api_key,
        keys::update_api_key,
        keys::revoke_api_key,
        keys::rotate_api_key,
        keys::validate_api_key,
        history::list_request_history,
        history::get_usage,
        history::list_audit_log,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::delete_webhook,
        webhooks::list_webhook_deliveries,
        operator_api::list_accounts,
        operator_api::create_account,
        operator_api::get_account,
        operator_api::update_account,
        operator_api::delete_account,
        operator_api::issue_api_key,
        operator_api::get_api_key,
        operator_api::revoke_api_key,
        operator_api::report_leaked_keys,
        operator_api::list_plans,
        operator_api::put_plan,
        operator_api::delete_plan,
        operator_api::list_audit_log,
        operator_api::create_webhook,
        operator_api::list_webhooks,
        operator_api::delete_webhook,
        operator_api::list_webhook_deliveries,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        gateway::authorize,
        scanning::github,
    ),
    components(schemas(error::ErrorBody, error::ErrorObject, error::ErrorCode, dto::KeyStatusDto)),
    modifiers(&Contract),
    tags(
        (name = "api-keys", description = "The key lifecycle"),
        (name = "metering", description = "Request history, usage and the audit log"),
        (name = "webhooks", description = "Signed deliveries of the account's events"),
        (name = "operations", description = "Health, readiness and metrics (no key)"),
        (name = "gateway", description = "Forward auth for the platform's own routes (--routes FILE). In gateway mode (--upstream URL) keyward also forwards those routes to the upstream; they are the platform's operations, not keyward's, so this document does not list them"),
        (name = "operator", description = "The operator API: accounts, plans, the operator log, webhooks of every account and leaked keys, with an operator key (kwop_…)"),
        (name = "secret-scanning", description = "GitHub secret scanning's partner endpoint (--github-scanning-keys FILE): GitHub reports tokens found in public places, signed with its keys; without the keys file the path is a 404"),
    )
)]
pub struct ApiDoc;

/// The document, as `/openapi.json` serves it.
#[must_use]
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// The document's `info.description`: how a backend uses keyward (Markdown).
const GUIDE: &str = include_str!("api_guide.md");

/// One way an operation can fail. Besides the ones [`FAILURES`] names, every operation
/// can fail in the two ways of any request ([`EVERY_OPERATION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `401`: `x-api-key` missing, malformed, unknown, inactive or expired.
    Key,
    /// `401`: `x-api-key` missing or malformed; a well-formed key that does not
    /// authenticate is a `200` of its own (validate).
    KeyForm,
    /// `403`: the key lacks this scope (or, for a change, a scope of the key changed).
    Scope(&'static str),
    /// `404`: the `key_id` of the path is not a key of the caller's account.
    KeyInPath,
    /// `404`: the `webhook_id` of the path is not a subscription of the caller's account.
    WebhookInPath,
    /// `409`: the change conflicts with the key's current state.
    Change,
    /// `400`, `408`, `413`: a JSON body is read.
    Body,
    /// `400`: query parameters are read.
    Query,
    /// `429`: the request counts against the plan's rate limits.
    RateLimit,
    /// `503`: storage is read or written.
    Storage,
    /// `503`: the node is draining, or storage does not answer (readiness).
    NotReady,
    /// `404`: the request matches no route of the routes file.
    Unrouted,
    /// `401`: `x-api-key` is not an operator key (an account key is not one).
    OperatorKey,
    /// `404`: the `account_id` of the path names no account.
    AccountInPath,
    /// `404`: the plan of the path does not exist.
    PlanInPath,
    /// `409`: the external id is another account's (`details.account_id`).
    ExternalIdTaken,
    /// `409`: the plan is in use.
    PlanInUse,
    /// `404`: metrics are served on the private address of `--metrics-listen`, not here.
    MetricsElsewhere,
    /// `409`: a key of the report kept changing under it.
    LeakRace,
    /// `401`: the request's signature is missing, by an unknown key, or not over its body.
    Signature,
    /// `404`: the endpoint is not served (no `--github-scanning-keys`).
    ScanningOff,
    /// `431`: more request headers than the server takes (any request).
    Headers,
    /// `500`: a bug (any request).
    Bug,
}

/// The failures every operation has: the envelope refuses too many headers and turns a
/// panic into a `500` before and after any route.
pub const EVERY_OPERATION: &[Failure] = &[Failure::Headers, Failure::Bug];

/// Which failures each operation can have, by `operation_id`: the one place that decides
/// the error statuses an operation documents. A new endpoint declares its own here (a
/// unit test fails for an operation missing from this table).
pub const FAILURES: &[(&str, &[Failure])] = {
    use Failure::{
        AccountInPath, Body, Change, ExternalIdTaken, Key, KeyForm, KeyInPath, LeakRace,
        MetricsElsewhere, NotReady, OperatorKey, PlanInPath, PlanInUse, Query, RateLimit,
        ScanningOff, Signature, Storage, Unrouted, WebhookInPath,
    };
    const READ: Failure = Failure::Scope(Scope::READ);
    const WRITE: Failure = Failure::Scope(Scope::WRITE);
    const ADMIN: Failure = Failure::Scope(Scope::ADMIN);
    &[
        ("list_api_keys", &[Key, READ, Query, RateLimit, Storage]),
        ("create_api_key", &[Key, WRITE, Body, RateLimit, Storage]),
        ("get_api_key", &[Key, READ, KeyInPath, RateLimit, Storage]),
        (
            "update_api_key",
            &[Key, WRITE, KeyInPath, Change, Body, RateLimit, Storage],
        ),
        (
            "revoke_api_key",
            &[Key, WRITE, KeyInPath, Change, RateLimit, Storage],
        ),
        (
            "rotate_api_key",
            &[Key, WRITE, KeyInPath, Change, Body, RateLimit, Storage],
        ),
        ("validate_api_key", &[KeyForm, Body, Storage]),
        (
            "list_request_history",
            &[Key, READ, Query, RateLimit, Storage],
        ),
        ("get_usage", &[Key, READ, Query, RateLimit, Storage]),
        ("list_audit_log", &[Key, ADMIN, Query, RateLimit, Storage]),
        ("create_webhook", &[Key, ADMIN, Body, RateLimit, Storage]),
        ("list_webhooks", &[Key, ADMIN, RateLimit, Storage]),
        (
            "delete_webhook",
            &[Key, ADMIN, WebhookInPath, RateLimit, Storage],
        ),
        (
            "list_webhook_deliveries",
            &[Key, ADMIN, WebhookInPath, Query, RateLimit, Storage],
        ),
        (
            "operator_create_account",
            &[OperatorKey, Body, ExternalIdTaken, Storage],
        ),
        ("operator_list_accounts", &[OperatorKey, Query, Storage]),
        (
            "operator_get_account",
            &[OperatorKey, AccountInPath, Storage],
        ),
        (
            "operator_update_account",
            &[OperatorKey, AccountInPath, Body, ExternalIdTaken, Storage],
        ),
        (
            "operator_delete_account",
            &[OperatorKey, AccountInPath, Storage],
        ),
        ("operator_list_audit_log", &[OperatorKey, Query, Storage]),
        ("operator_create_webhook", &[OperatorKey, Body, Storage]),
        ("operator_list_webhooks", &[OperatorKey, Storage]),
        (
            "operator_delete_webhook",
            &[OperatorKey, WebhookInPath, Storage],
        ),
        (
            "operator_list_webhook_deliveries",
            &[OperatorKey, WebhookInPath, Query, Storage],
        ),
        (
            "operator_issue_api_key",
            &[OperatorKey, AccountInPath, Body, Storage],
        ),
        ("operator_get_api_key", &[OperatorKey, KeyInPath, Storage]),
        (
            "operator_revoke_api_key",
            &[OperatorKey, KeyInPath, Change, Storage],
        ),
        (
            "operator_report_leaked_keys",
            &[OperatorKey, Body, LeakRace, Storage],
        ),
        ("operator_list_plans", &[OperatorKey, Storage]),
        ("operator_put_plan", &[OperatorKey, Body, Storage]),
        (
            "operator_delete_plan",
            &[OperatorKey, PlanInPath, PlanInUse, Storage],
        ),
        ("healthz", &[]),
        ("readyz", &[NotReady]),
        ("metrics", &[MetricsElsewhere]),
        (
            "authorize",
            &[
                Unrouted,
                Key,
                Failure::Scope("videos:create"),
                RateLimit,
                Storage,
            ],
        ),
        (
            "github_secret_scanning",
            &[ScanningOff, Signature, Body, LeakRace, Storage],
        ),
    ]
};

/// The request id of the example bodies.
const EXAMPLE_REQUEST_ID: &str = "req_01JDQ8W6ZK3T5R2N9V4B7C1XEH";

impl Failure {
    /// What this failure means, for the response's description.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::Key => {
                "The x-api-key header is missing, malformed, sent twice, unknown, inactive or expired (INVALID_API_KEY)"
            }
            Self::KeyForm => {
                "The x-api-key header is missing, malformed or sent twice (INVALID_API_KEY); a well-formed key that does not authenticate is a 200 with valid: false"
            }
            Self::Scope(_) => {
                "The key lacks the scope this needs, or a scope of the key it changes; or the key's allowed_ips do not hold the client's address, details.reason: ip_not_allowed (INSUFFICIENT_PERMISSIONS)"
            }
            Self::KeyInPath => {
                "No key with this key_id in the caller's account (RESOURCE_NOT_FOUND)"
            }
            Self::WebhookInPath => {
                "No webhook with this webhook_id in the caller's account (RESOURCE_NOT_FOUND)"
            }
            Self::Change => {
                "The change conflicts with the key's state: a key changing its own status or scopes, revoking itself, or a concurrent change (CONFLICT)"
            }
            Self::Body => {
                "The body is not JSON (INVALID_REQUEST) or a field is missing, unknown or out of range (VALIDATION_ERROR); over the body limit (PAYLOAD_TOO_LARGE); or it did not arrive within the body timeout, and the connection is closed (INVALID_REQUEST)"
            }
            Self::Query => {
                "A query parameter is unknown, repeated or out of range (VALIDATION_ERROR)"
            }
            Self::RateLimit => {
                "A rate limit of the plan or the key, the monthly quota, or the key's credits is reached (RATE_LIMIT_EXCEEDED); details.window says which (minute, day, month, credits), retry-after when to retry where a time is known"
            }
            Self::Storage => "Storage is unavailable (SERVICE_UNAVAILABLE); retry later",
            Self::NotReady => {
                "The node is shutting down (details.reason: draining), or storage does not answer (SERVICE_UNAVAILABLE)"
            }
            Self::Unrouted => {
                "The request matches no route of the routes file, or keyward serves none (RESOURCE_NOT_FOUND)"
            }
            Self::MetricsElsewhere => {
                "Metrics are served on the private address given by --metrics-listen, not on this one (RESOURCE_NOT_FOUND)"
            }
            Self::OperatorKey => {
                "The x-api-key header is missing, malformed, sent twice, or not an operator key (INVALID_API_KEY)"
            }
            Self::AccountInPath => "No account with this account_id (RESOURCE_NOT_FOUND)",
            Self::PlanInPath => "No plan with this name (RESOURCE_NOT_FOUND)",
            Self::ExternalIdTaken => {
                "Another account has this external_id; details.account_id names it (CONFLICT)"
            }
            Self::PlanInUse => "An account uses the plan (CONFLICT)",
            Self::LeakRace => {
                "A reported key kept changing under the report (CONFLICT); the strings before it were acted on, and a retry finds them done"
            }
            Self::Signature => {
                "The Github-Public-Key-Identifier or Github-Public-Key-Signature header is missing, names no key of the keys file, or the signature is not over this body (INVALID_SIGNATURE; details.reason: missing, unknown_key or bad_signature); nothing changed"
            }
            Self::ScanningOff => {
                "keyward was started without --github-scanning-keys, so it does not serve this endpoint (RESOURCE_NOT_FOUND)"
            }
            Self::Headers => "More than 100 request headers (INVALID_REQUEST)",
            Self::Bug => "A bug, logged with the request id (PROCESSING_ERROR)",
        }
    }

    /// The errors of this failure, each named for the document's examples: the very
    /// values the server answers with, so each example's status is the one it gets.
    #[must_use]
    pub fn errors(self) -> Vec<(&'static str, ApiError)> {
        match self {
            Self::Key => vec![
                ("missing", ApiError::invalid_key(KeyRejection::Missing)),
                ("not_found", ApiError::invalid_key(KeyRejection::NotFound)),
                ("expired", ApiError::invalid_key(KeyRejection::Expired)),
            ],
            Self::KeyForm => vec![
                ("missing", ApiError::invalid_key(KeyRejection::Missing)),
                ("malformed", ApiError::invalid_key(KeyRejection::Malformed)),
            ],
            Self::Scope(scope) => vec![
                ("lacks_scope", ApiError::forbidden(&[scope.to_owned()])),
                ("ip_not_allowed", ApiError::ip_not_allowed()),
            ],
            Self::KeyInPath => vec![("no_such_key", ApiError::key_not_found())],
            Self::WebhookInPath => vec![("no_such_webhook", ApiError::webhook_not_found())],
            Self::Change => vec![(
                "conflict",
                ApiError::conflict("a key cannot change its own scopes"),
            )],
            Self::Body => vec![
                (
                    "not_json",
                    ApiError::invalid_request(
                        "the request body is not valid JSON: expected value at line 1 column 1",
                    ),
                ),
                (
                    "invalid_field",
                    ApiError::validation("scopes", "must not be empty"),
                ),
                ("too_large", ApiError::payload_too_large(DEFAULT_BODY_LIMIT)),
                ("body_timed_out", ApiError::body_timed_out()),
            ],
            Self::Query => vec![(
                "invalid_parameter",
                ApiError::validation("limit", "must be a whole number from 1 to 1000"),
            )],
            Self::RateLimit => vec![
                (
                    "rate_limited",
                    ApiError::rate_limited(Window::Minute, Some(12)),
                ),
                (
                    "credits_spent",
                    ApiError::rate_limited(Window::Credits, Some(3600)),
                ),
            ],
            Self::Storage => vec![("storage_unavailable", ApiError::unavailable(None))],
            Self::NotReady => vec![
                ("draining", ApiError::draining()),
                ("storage_unavailable", ApiError::unavailable(None)),
            ],
            Self::Headers => vec![(
                "too_many_headers",
                ApiError::too_many_headers(MAX_REQUEST_HEADERS),
            )],
            Self::OperatorKey => vec![
                ("missing", ApiError::invalid_key(KeyRejection::Missing)),
                ("not_found", ApiError::invalid_key(KeyRejection::NotFound)),
            ],
            Self::AccountInPath => vec![("no_such_account", operator::account_not_found())],
            Self::PlanInPath => vec![("no_such_plan", operator::plan_not_found())],
            Self::ExternalIdTaken => vec![(
                "external_id_taken",
                operator::external_id_taken(&keyward_core::AccountId::from_trusted(
                    "acct_01JD8X4ZQ5V7W0000000000000".to_owned(),
                )),
            )],
            Self::PlanInUse => vec![(
                "plan_in_use",
                ApiError::conflict("the plan is in use: move its accounts to another plan first"),
            )],
            Self::MetricsElsewhere => vec![("served_elsewhere", ApiError::no_such_route())],
            Self::LeakRace => vec![(
                "key_kept_changing",
                ApiError::conflict("the key changed concurrently; retry"),
            )],
            Self::Signature => vec![
                (
                    "missing",
                    ApiError::bad_signature(
                        SignatureError::Missing.to_string(),
                        SignatureError::Missing.as_str(),
                    ),
                ),
                (
                    "bad_signature",
                    ApiError::bad_signature(
                        SignatureError::Mismatch.to_string(),
                        SignatureError::Mismatch.as_str(),
                    ),
                ),
            ],
            Self::ScanningOff => vec![("not_served", ApiError::no_such_route())],
            Self::Unrouted => vec![("no_such_route", ApiError::no_such_route())],
            Self::Bug => vec![(
                "bug",
                ApiError::internal("a bug; its cause is logged, never sent"),
            )],
        }
    }
}

/// The failures of the operation `operation_id`, the universal ones included; `None` for
/// an operation [`FAILURES`] does not name.
#[must_use]
pub fn failures_of(operation_id: &str) -> Option<Vec<Failure>> {
    FAILURES
        .iter()
        .find(|(id, _)| *id == operation_id)
        .map(|(_, own)| own.iter().chain(EVERY_OPERATION).copied().collect())
}

/// What the failures of one status say: their descriptions and examples.
#[derive(Default)]
struct OfStatus {
    descriptions: Vec<&'static str>,
    examples: BTreeMap<String, RefOr<Example>>,
}

/// The error responses of these failures, by status.
fn error_responses(failures: &[Failure]) -> BTreeMap<u16, Response> {
    let mut by_status: BTreeMap<u16, OfStatus> = BTreeMap::new();
    for failure in failures {
        for (name, error) in failure.errors() {
            let of_status = by_status.entry(error.status.as_u16()).or_default();
            if !of_status.descriptions.contains(&failure.description()) {
                of_status.descriptions.push(failure.description());
            }
            let mut example = Example::new();
            example.summary = error.message.clone();
            example.value = Some(error.body(EXAMPLE_REQUEST_ID));
            of_status
                .examples
                .insert(name.to_owned(), RefOr::T(example));
        }
    }
    by_status
        .into_iter()
        .map(
            |(
                status,
                OfStatus {
                    descriptions,
                    examples,
                },
            )| {
                let mut content = Content::new(Some(Ref::from_schema_name("ErrorBody")));
                content.examples = examples;
                let mut response = Response::new(descriptions.join(". "));
                response
                    .content
                    .insert("application/json".to_owned(), RefOr::T(content));
                if status == 429 {
                    let mut retry_after = Header::default();
                    retry_after.description =
                        Some("Seconds to wait before the request can succeed".to_owned());
                    response
                        .headers
                        .insert("retry-after".to_owned(), RefOr::T(retry_after));
                }
                (status, response)
            },
        )
        .collect()
}

struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut Document) {
        openapi.info.description = Some(GUIDE.to_owned());
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
            );
            components.add_security_scheme(
                "operator_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "x-api-key",
                    "An operator key (kwop_…), made by `keyward operators create`",
                ))),
            );
            components.add_security_scheme(
                "github_signature",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "Github-Public-Key-Signature",
                    "GitHub's signature: base64 of the DER ECDSA P-256 / SHA-256 signature over the raw body, by the key that Github-Public-Key-Identifier names in the file of --github-scanning-keys",
                ))),
            );
        }
        for (path, item) in &mut openapi.paths.paths {
            let no_store = path.starts_with("/v1/") || path.starts_with("/operator/v1/");
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                add_errors(operation);
                if no_store {
                    add_no_store(operation);
                }
            }
        }
    }
}

fn add_errors(operation: &mut Operation) {
    let failures = operation
        .operation_id
        .as_deref()
        .and_then(failures_of)
        .unwrap_or_else(|| EVERY_OPERATION.to_vec());
    for (status, response) in error_responses(&failures) {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert(RefOr::T(response));
    }
}

fn add_no_store(operation: &mut Operation) {
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            let mut no_store = Header::default();
            no_store.description =
                Some("`no-store`: no answer of the API may be cached".to_owned());
            response
                .headers
                .insert("cache-control".to_owned(), RefOr::T(no_store));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::error::ErrorCode;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    /// `(method, path, operation)` of every operation of the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if operation.get("responses").is_some() {
                    found.push((method.clone(), path.clone(), operation.clone()));
                }
            }
        }
        found
    }

    fn statuses(operation: &Value) -> BTreeSet<String> {
        operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn validate_documents_its_body_and_no_403_404_409_or_429() {
        // A failed check (scopes, address, limits, credits) is a 200 with valid: false.
        let doc = document();
        let validate = &doc["paths"]["/v1/api-keys/validate"]["post"];
        let documented = statuses(validate);
        for status in ["403", "404", "409", "429"] {
            assert!(
                !documented.contains(status),
                "validate documents {status}: {documented:?}"
            );
        }
        for status in ["200", "400", "401", "408", "413", "503"] {
            assert!(documented.contains(status), "{documented:?}");
        }
    }

    #[test]
    fn only_operations_with_an_id_in_the_path_document_404_and_only_changes_409() {
        for (method, path, operation) in operations(&document()) {
            let documented = statuses(&operation);
            // `/metrics` is a 404 on the public address when `--metrics-listen` serves it.
            // A PUT creates what its path names; `/authorize` is a 404 for a request
            // that matches no route.
            let named = ["{key_id}", "{account_id}", "{name}", "{webhook_id}"];
            let finds = method != "put" && named.iter().any(|id| path.contains(id));
            // GitHub's endpoint is a 404 where it is not served.
            assert_eq!(
                documented.contains("404"),
                finds
                    || ["/metrics", "/authorize", "/secret-scanning/github"]
                        .contains(&path.as_str()),
                "{method} {path}: {documented:?}"
            );
            // A key's change; an account's creation or change (its external id), not its
            // deletion; a plan's deletion (while in use).
            let account = path.starts_with("/operator/v1/accounts")
                && !path.ends_with("/api-keys")
                && method != "delete";
            // A leak report's key that keeps changing under it.
            let leaks = path == "/operator/v1/leaked-keys" || path == "/secret-scanning/github";
            let changes = (method != "get" && (path.contains("{key_id}") || account))
                || (method == "delete" && path.starts_with("/operator/v1/plans/"))
                || leaks;
            assert_eq!(
                documented.contains("409"),
                changes,
                "{method} {path}: {documented:?}"
            );
            let bodied = operation.get("requestBody").is_some();
            assert_eq!(
                documented.contains("413"),
                bodied,
                "{method} {path}: {documented:?}"
            );
        }
    }

    #[test]
    fn every_documented_error_has_an_example_whose_code_gives_its_status() {
        for (method, path, operation) in operations(&document()) {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let status: u16 = status.parse().unwrap();
                if status < 400 {
                    continue;
                }
                let examples = response["content"]["application/json"]["examples"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: no example"));
                assert!(!examples.is_empty(), "{method} {path} {status}");
                for (name, example) in examples {
                    let body = &example["value"];
                    assert_eq!(body["request_id"], EXAMPLE_REQUEST_ID);
                    assert!(body["error"]["message"].is_string(), "{body}");
                    let code: ErrorCode =
                        serde_json::from_value(body["error"]["code"].clone()).unwrap();
                    // API.md §Errors: the two refusals of a request's framing are
                    // INVALID_REQUEST with a status of their own.
                    let framing = code == ErrorCode::InvalidRequest && [408, 431].contains(&status);
                    assert!(
                        code.status().as_u16() == status || framing,
                        "{method} {path} {status} example {name}: code {code:?} gives {}",
                        code.status()
                    );
                }
            }
        }
    }

    #[test]
    fn every_operation_declares_its_failures_in_the_table_and_the_table_names_no_other() {
        let doc = document();
        let ids: BTreeSet<String> = operations(&doc)
            .iter()
            .map(|(_, _, op)| op["operationId"].as_str().unwrap().to_owned())
            .collect();
        let table: BTreeSet<String> = FAILURES.iter().map(|(id, _)| (*id).to_owned()).collect();
        assert_eq!(ids, table);
    }

    #[test]
    fn every_path_of_keywards_own_document_is_refused_as_a_route() {
        use crate::gateway::RouteTable;
        for path in ApiDoc::openapi().paths.paths.keys() {
            let text = format!("[[route]]\nmethod = \"GET\"\npath = \"{path}\"\n");
            let e = RouteTable::parse(&text).expect_err(path);
            assert!(e.message.contains("keyward serves itself"), "{path}: {e}");
        }
        for path in ["/", "/docs/index.html", "/console"] {
            let text = format!("[[route]]\nmethod = \"GET\"\npath = \"{path}\"\n");
            assert!(RouteTable::parse(&text).is_err(), "{path}");
        }
    }

    #[test]
    fn summaries_are_plain_words_and_the_description_guides_a_backend() {
        let doc = document();
        for (method, path, operation) in operations(&doc) {
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty(), "{method} {path} has no summary");
            assert!(!summary.contains('`'), "{method} {path}: {summary}");
        }
        let guide = doc["info"]["description"].as_str().unwrap();
        for needed in [
            "x-api-key",
            "valid: false",
            "x-ratelimit-remaining",
            "retry-after",
            "next_before",
            "request_id",
        ] {
            assert!(
                guide.contains(needed),
                "the guide does not mention {needed}"
            );
        }
    }
}
