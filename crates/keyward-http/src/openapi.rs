//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire
//! types. The error responses every `/v1` operation can give are added here once, so
//! each handler's annotation lists only its own success.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::{api_keys, dto, error, metering};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward",
        description = "Self-hostable API-key service: issue, check, meter and revoke API keys (KonPro-style API).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api_keys::list_api_keys,
        api_keys::create_api_key,
        api_keys::get_api_key,
        api_keys::update_api_key,
        api_keys::revoke_api_key,
        api_keys::rotate_api_key,
        api_keys::validate_api_key,
        metering::list_request_history,
        metering::get_usage,
        metering::list_audit_log,
        metering::healthz,
        metering::readyz,
        metering::metrics,
    ),
    components(schemas(error::ErrorBody, error::ErrorObject, error::ErrorCode, dto::KeyStatusDto)),
    modifiers(&Contract),
    tags(
        (name = "api-keys", description = "The key lifecycle"),
        (name = "metering", description = "Request history, usage and the audit log"),
        (name = "operations", description = "Health, readiness and metrics (no key)"),
    )
)]
pub struct ApiDoc;

struct Contract;

fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".to_owned(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ErrorBody")))),
    );
    RefOr::T(response)
}

impl Modify for Contract {
    fn modify(&self, openapi: &mut Document) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
            );
        }
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.patch, true),
                (&mut item.delete, false),
            ];
            for (operation, has_body) in operations {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                let mut errors = vec![
                    (
                        "400",
                        "Invalid request or parameter (INVALID_REQUEST, VALIDATION_ERROR)",
                    ),
                    (
                        "401",
                        "Missing, malformed, unknown, inactive or expired key (INVALID_API_KEY)",
                    ),
                    ("403", "The key lacks a scope (INSUFFICIENT_PERMISSIONS)"),
                    ("404", "No such key in this account (RESOURCE_NOT_FOUND)"),
                    ("405", "Wrong method (METHOD_NOT_ALLOWED)"),
                    ("409", "Conflicts with the current state (CONFLICT)"),
                    ("429", "Plan rate limit reached (RATE_LIMIT_EXCEEDED)"),
                    (
                        "500",
                        "A bug, logged with the request id (PROCESSING_ERROR)",
                    ),
                    ("503", "Storage unavailable (SERVICE_UNAVAILABLE)"),
                ];
                if has_body {
                    errors.push(("413", "Body over the limit (PAYLOAD_TOO_LARGE)"));
                }
                for (status, description) in errors {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}
