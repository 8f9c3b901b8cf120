//! keyward's HTTP layer: the axum router, authentication, the error contract, wire
//! types and the OpenAPI document.
//!
//! Depends on `keyward-core`, `keyward-store`, `keyward-workers` (the meter) and
//! `keyward-ratelimit`; never on sqlx. Handlers are thin: extract →
//! `caller.require(scope)` → store → wire type.
//!
//! Modules, from the bottom: `error` and `dto`; `cache` and `gateway` (the routes file
//! and the upstream); `context` and `state`; `auth`,
//! `extract` and `middleware`; `leaks` (the answer to a report of leaked keys);
//! `handlers`; `openapi`; and this root, which assembles the router. Each names only modules below it, so no two modules depend on each other
//! (`tests/module_graph.rs` checks it).

pub mod auth;
pub mod cache;
pub mod context;
pub mod dto;
pub mod error;
pub mod extract;
pub mod gateway;
pub mod handlers;
pub mod leaks;
pub mod middleware;
pub mod openapi;
pub mod operator;
pub mod state;
pub mod usage;

use axum::Router;
use axum::routing::{any, delete, get, post, put};
use utoipa_swagger_ui::SwaggerUi;

use crate::handlers::gateway::{authorize, forward};
use crate::handlers::{console, history, keys, operator as operator_api, ops, scanning, webhooks};

pub use crate::cache::key::KEY_CACHE_TTL;
pub use crate::state::{AppState, AppStateBuilder, MetricsRender};

/// The whole application.
///
/// One layer: [`middleware::EnvelopeLayer`] (request id → header-count check → route,
/// a panic caught as a `500` → error envelope → `x-request-id`, rate-limit headers and
/// `cache-control: no-store` on `/v1/*` → metering → metrics) around the routes. The body limit is applied by our own
/// body extractor, which reads the body (so an oversized one gets the envelope like any
/// other error); a `DefaultBodyLimit` layer would cost every request, bodiless or not,
/// another boxed service (6 % of the instructions of `GET /healthz`, measured with callgrind).
/// No layer logs headers, so `x-api-key` never reaches a log line.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/api-keys",
            get(keys::list_api_keys).post(keys::create_api_key),
        )
        // A static segment wins over `{key_id}`, so `validate` is never taken for an id.
        .route("/v1/api-keys/validate", post(keys::validate_api_key))
        .route(
            "/v1/api-keys/{key_id}",
            get(keys::get_api_key)
                .patch(keys::update_api_key)
                .delete(keys::revoke_api_key),
        )
        .route("/v1/api-keys/{key_id}/rotate", post(keys::rotate_api_key))
        .route("/v1/request-history", get(history::list_request_history))
        .route("/v1/usage", get(history::get_usage))
        .route("/v1/audit-log", get(history::list_audit_log))
        .route(
            "/v1/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route(
            "/v1/webhooks/{webhook_id}",
            delete(webhooks::delete_webhook),
        )
        .route(
            "/v1/webhooks/{webhook_id}/deliveries",
            get(webhooks::list_webhook_deliveries),
        )
        .route(
            "/operator/v1/accounts",
            get(operator_api::list_accounts).post(operator_api::create_account),
        )
        .route(
            "/operator/v1/accounts/{account_id}",
            get(operator_api::get_account)
                .patch(operator_api::update_account)
                .delete(operator_api::delete_account),
        )
        .route(
            "/operator/v1/accounts/{account_id}/api-keys",
            post(operator_api::issue_api_key),
        )
        .route(
            "/operator/v1/api-keys/{key_id}",
            get(operator_api::get_api_key).delete(operator_api::revoke_api_key),
        )
        .route(
            "/operator/v1/leaked-keys",
            post(operator_api::report_leaked_keys),
        )
        .route("/operator/v1/audit-log", get(operator_api::list_audit_log))
        .route(
            "/operator/v1/webhooks",
            get(operator_api::list_webhooks).post(operator_api::create_webhook),
        )
        .route(
            "/operator/v1/webhooks/{webhook_id}",
            delete(operator_api::delete_webhook),
        )
        .route(
            "/operator/v1/webhooks/{webhook_id}/deliveries",
            get(operator_api::list_webhook_deliveries),
        )
        .route("/operator/v1/plans", get(operator_api::list_plans))
        .route(
            "/operator/v1/plans/{name}",
            put(operator_api::put_plan).delete(operator_api::delete_plan),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // Forward auth: any method, the original request named by headers or by the
        // path after the prefix.
        .route("/authorize", any(authorize))
        .route("/authorize/{*path}", any(authorize));
    // GitHub secret scanning's endpoint exists only with its keys file; without it the
    // path is a 404 like any other keyward does not serve.
    let v1 = if state.github_keys.is_some() {
        v1.route("/secret-scanning/github", post(scanning::github))
    } else {
        v1
    };
    // A route that panics, for the tests of the envelope's panic handling.
    #[cfg(test)]
    let v1 = v1.route("/v1/test-panic", get(tests::panics));
    Router::new()
        .merge(v1)
        // Mounted here, not in `handlers::ops`: the page serves the OpenAPI document,
        // which is made from every handler (`ops`'s too).
        .merge(SwaggerUi::new("/docs").url("/openapi.json", crate::openapi::document()))
        // A person who opens the bare address is sent to the reference. Not in the
        // OpenAPI document, like `/docs` itself: the document describes the API.
        .route("/", get(to_docs))
        // The console, a client of the API above; left out of the document too.
        .route("/console", get(console::page))
        .route("/console/{file}", get(console::file))
        // The platform's routes in gateway mode; without them, a 404 like any path
        // keyward does not serve.
        .fallback(forward)
        .layer(crate::middleware::EnvelopeLayer::new(&state))
        .with_state(state)
}

async fn to_docs() -> axum::response::Redirect {
    axum::response::Redirect::temporary("/docs")
}

/// Counts the server errors of every documented operation from zero
/// ([`middleware::count_server_errors_from_zero`]). Call it once the metrics recorder
/// is installed.
pub fn count_server_errors_from_zero() {
    use axum::http::Method;
    let doc = crate::openapi::document();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PATCH, &item.patch),
            (Method::PUT, &item.put),
            (Method::DELETE, &item.delete),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                routes.push((method, path.as_str()));
            }
        }
    }
    middleware::count_server_errors_from_zero(routes.iter().map(|(m, p)| (m, *p)));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt as _;

    use super::*;

    pub(super) async fn panics() -> axum::response::Response {
        panic!("a test route panicked")
    }

    /// The state of a node on a fresh SQLite store in `dir`.
    async fn state(dir: &std::path::Path) -> AppState {
        let store = keyward_store_sql::SqliteStore::open(&dir.join("k.db"))
            .await
            .unwrap();
        AppStateBuilder::new(
            Arc::new(store),
            Arc::new(keyward_workers::Meter::new(16)),
            Arc::new(keyward_ratelimit::LocalRateLimiter::new()),
        )
        .build()
    }

    async fn app(dir: &std::path::Path) -> Router {
        router(state(dir).await)
    }

    async fn call(
        app: &Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_with_its_request_id_and_the_router_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;

        let panicking = Request::get("/v1/test-panic")
            .header("x-request-id", "panic-1")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = call(&app, panicking).await;

        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "PROCESSING_ERROR");
        assert_eq!(body["request_id"], "panic-1");
        assert_eq!(headers["x-request-id"], "panic-1");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("test route"), "no internals: {message}");

        let (status, _, body) =
            call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }

    #[tokio::test]
    async fn more_than_100_headers_are_a_json_431_and_100_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let with_headers = |count: usize| {
            let mut req = Request::get("/healthz");
            for i in 0..count {
                req = req.header(format!("x-h-{i}"), "1");
            }
            req.body(Body::empty()).unwrap()
        };

        let (status, headers, body) = call(&app, with_headers(101)).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
        assert_eq!(
            headers["x-request-id"],
            body["request_id"].as_str().unwrap()
        );

        let (status, _, _) = call(&app, with_headers(100)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_answers_503_draining_once_the_node_drains() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let app = router(state.clone());
        let readyz = || Request::get("/readyz").body(Body::empty()).unwrap();
        assert_eq!(call(&app, readyz()).await.0, StatusCode::OK);

        state.start_draining();

        let (status, _, body) = call(&app, readyz()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
        assert_eq!(body["error"]["details"]["reason"], "draining");
    }
}
