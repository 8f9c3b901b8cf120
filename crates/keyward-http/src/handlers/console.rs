//! The web console (API.md §Console): static files embedded at compile time from
//! `crates/keyward-http/console/`, served at `/console` and `/console/{file}` under a
//! strict content security policy. The console is a client of the public API only; it
//! holds no route or rule of its own.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The console's policy: its own files only, no inline script or style, no `eval`, no
/// frames, no plugins, and requests to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name under `/console/`, its content type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The asset of the file `name` of `crates/keyward-http/console/`, served as
/// `content_type`.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

/// Every file of the console. `index.html` is also `/console` itself.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", CSS),
    asset!("console.js", JS),
    asset!("api.js", JS),
    asset!("chart.js", JS),
    asset!("icon.svg", SVG),
];

fn serve(asset: &Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; a reload asks again.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /console`: the console's page.
pub async fn page() -> Response {
    serve(&ASSETS[0])
}

/// `GET /console/{file}`: one of the console's files; any other name is a `404`.
pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .map(serve)
        .ok_or_else(ApiError::no_such_route)
}
