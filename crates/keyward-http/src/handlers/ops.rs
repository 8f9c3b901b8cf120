//! Operations endpoints, answered without a key: liveness, readiness and metrics.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::middleware::error_chain;
use crate::state::AppState;

/// Liveness: the process is alive.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Object)))]
pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Readiness: the node takes work (it is not shutting down) and storage takes writes.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.draining() {
        return Err(ApiError::draining());
    }
    storage_ready(&state).await?;
    Ok(Json(serde_json::json!({ "status": "ready" })).into_response())
}

/// Whether storage takes writes ([`keyward_store::Store::check_ready`]: a write commits;
/// on SQLite, the file on disk is still the one open). A load balancer probes every few
/// seconds, so a failure is logged when it starts and a recovery when it ends, not once
/// per probe.
async fn storage_ready(state: &AppState) -> Result<(), ApiError> {
    let outcome = state.store.check_ready().await;
    let was_failing = state
        .storage_failing
        .swap(outcome.is_err(), Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            if was_failing {
                tracing::info!("storage is ready again");
            }
            Ok(())
        }
        Err(e) => {
            if !was_failing {
                tracing::error!(error.chain = %error_chain(&e), "storage is not ready");
            }
            Err(ApiError::storage_unreachable(Box::new(e)).logged())
        }
    }
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Served on a private address instead (`--metrics-listen`): no such route here.
    let render = state.metrics.as_ref().ok_or_else(ApiError::no_such_route)?;
    Ok(metrics_text(render()))
}

/// A Prometheus text exposition as a response, wherever `/metrics` is served.
#[must_use]
pub fn metrics_text(text: String) -> Response {
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
