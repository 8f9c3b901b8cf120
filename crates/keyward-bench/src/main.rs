//! The ceiling for keyward's load tests: a bare axum server that answers the same paths
//! with fixed bytes and does nothing else (no auth, no storage, no metering).
//!
//! Usage: `bare-server ADDR LIST_BODY_FILE VALIDATE_BODY_FILE`; prints
//! `bare-server listening on http://ADDR` once bound.

use axum::Router;
use axum::http::header;
use axum::routing::{get, post};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: bare-server ADDR LIST_BODY VALIDATE_BODY")?;
    let list: &'static [u8] = std::fs::read(args.next().ok_or("missing LIST_BODY")?)?.leak();
    let validate: &'static [u8] =
        std::fs::read(args.next().ok_or("missing VALIDATE_BODY")?)?.leak();
    const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];
    let app = Router::new()
        .route("/v1/api-keys", get(move || async move { (JSON, list) }))
        .route(
            "/v1/api-keys/validate",
            post(move || async move { (JSON, validate) }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare-server listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
