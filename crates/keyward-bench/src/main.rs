//! The ceiling for keyward's load tests: a bare axum server that answers the same paths
//! with fixed bytes and does nothing else (no auth, no storage, no metering).
//!
//! Usage: `bare-server ADDR LIST_BODY_FILE VALIDATE_BODY_FILE CREATE_BODY_FILE [GET_BODY_FILE]`;
//! prints `bare-server listening on http://ADDR` once bound. With `GET_BODY_FILE`,
//! `GET /v1/api-keys/{key_id}` answers its bytes for any key id, as keyward answers a
//! caller's own key.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

fn body(arg: Option<String>, what: &str) -> Result<&'static [u8], Box<dyn std::error::Error>> {
    let path = arg.ok_or_else(|| format!("missing {what}"))?;
    Ok(std::fs::read(path)?.leak())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: bare-server ADDR LIST_BODY VALIDATE_BODY CREATE_BODY [GET_BODY]")?;
    let list = body(args.next(), "LIST_BODY")?;
    let validate = body(args.next(), "VALIDATE_BODY")?;
    let create = body(args.next(), "CREATE_BODY")?;
    let one_key = args
        .next()
        .map(|path| body(Some(path), "GET_BODY"))
        .transpose()?;
    let mut app = Router::new()
        .route(
            "/v1/api-keys",
            get(move || async move { (JSON, list) })
                .post(move || async move { (StatusCode::CREATED, JSON, create) }),
        )
        .route(
            "/v1/api-keys/validate",
            post(move || async move { (JSON, validate) }),
        );
    if let Some(one_key) = one_key {
        app = app.route(
            "/v1/api-keys/{key_id}",
            get(move || async move { (JSON, one_key) }),
        );
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare-server listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
