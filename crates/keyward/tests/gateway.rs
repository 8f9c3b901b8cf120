//! Black-box tests of gateway mode and forward auth (API.md §Gateway): the real binary in
//! front of a real upstream that this test starts (an echo server: what it received comes
//! back as JSON), over real sockets; and real nginx in front of `/authorize`.

#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::{BIN, Reply, Server, client, create_key, eventually, get as get_with, send};
use hyper::body::{Bytes, Frame};
use serde_json::json;

// Built-in scopes stand for the platform's own: a key can be given only scopes its
// creator holds, and the accounts the CLI makes hold the built-in ones.
const ROUTES: &str = r#"# The platform's routes, as a test's upstream serves them.
[[route]]
method = "POST"
path = "/v1/videos"
scopes = ["write"]
cost = 5

[[route]]
method = "GET"
path = "/v1/videos/{video_id}"
scopes = ["read"]

[[route]]
method = "POST"
path = "/v1/uploads"

[[route]]
method = "GET"
path = "/v1/downloads/{bytes}"

[[route]]
method = "GET"
path = "/v1/slow"

[[route]]
method = "GET"
path = "/v1/hang"

[[route]]
method = "GET"
path = "/v1/drip/{count}"

[[route]]
method = "GET"
path = "/v1/status/{code}"
"#;

const MIB: usize = 1 << 20;

/// The echo upstream: every request's method, path, query, headers and body as JSON
/// (`200`, or `201` for `POST /v1/videos`), plus streaming, slow and fixed-status routes.
async fn start_upstream() -> String {
    let app = Router::new()
        .route("/v1/uploads", post(count_upload))
        .route("/v1/downloads/{bytes}", get(download))
        .route("/v1/slow", get(slow))
        .route("/v1/hang", get(hang))
        .route("/v1/drip/{count}", get(drip))
        .route("/v1/status/{code}", get(fixed_status))
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = axum::body::to_bytes(body, MIB).await.unwrap();
    let status = if parts.method == "POST" && parts.uri.path() == "/v1/videos" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let echoed = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    (status, axum::Json(echoed)).into_response()
}

/// Reads the body frame by frame and answers how many bytes came: never held whole.
async fn count_upload(req: Request) -> Response {
    let mut body = req.into_body();
    let mut received = 0usize;
    while let Some(frame) =
        std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx)).await
    {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    axum::Json(json!({ "received": received })).into_response()
}

/// A body of `remaining` bytes, made 64 KiB at a time as it is read.
struct Generated {
    remaining: usize,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

/// `count` chunks, one every 300 ms.
async fn drip(UrlPath(count): UrlPath<u32>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for _ in 0..count {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx.send(Bytes::from_static(b"drop.")).await.is_err() {
                return;
            }
        }
    });
    Response::new(Body::new(Dripped { rx }))
}

struct Dripped {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Dripped {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

async fn download(UrlPath(bytes): UrlPath<usize>) -> Response {
    Response::new(Body::new(Generated { remaining: bytes }))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(60)).await;
    "late"
}

/// `GET /v1/hang` requests the upstream has begun, and those dropped before answering
/// (only one test calls it, so the counts are that test's).
static HANG_STARTED: AtomicUsize = AtomicUsize::new(0);
static HANG_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Counts its future being dropped before it answered.
struct DropCount;

impl Drop for DropCount {
    fn drop(&mut self) {
        HANG_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

async fn hang() -> &'static str {
    HANG_STARTED.fetch_add(1, Ordering::SeqCst);
    let dropped = DropCount;
    tokio::time::sleep(Duration::from_secs(60)).await;
    std::mem::forget(dropped);
    "late"
}

async fn fixed_status(UrlPath(code): UrlPath<u16>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", "max-age=60".parse().unwrap());
    headers.insert("content-type", "text/plain".parse().unwrap());
    // A hop-by-hop header of the upstream's connection, named by `connection`.
    headers.insert("connection", "x-upstream-hop".parse().unwrap());
    headers.insert("x-upstream-hop", "1".parse().unwrap());
    headers.insert("x-upstream-own", "kept".parse().unwrap());
    (
        StatusCode::from_u16(code).unwrap(),
        headers,
        format!("the upstream says {code}"),
    )
        .into_response()
}

/// A routes file in a directory that lives as long as the returned guard.
fn routes_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// keyward in gateway mode in front of `upstream`, with `extra` arguments.
fn gateway(upstream: &str, routes: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--no-bootstrap",
        "--routes",
        routes.to_str().unwrap(),
        "--upstream",
        upstream,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// A key of `account` with exactly `scopes`, made through the API.
async fn key_with(server: &Server, admin_key: &str, scopes: &[&str]) -> (String, String) {
    create_key(
        server,
        admin_key,
        &json!({ "name": "gw", "scopes": scopes }),
    )
    .await
}

#[tokio::test]
async fn identity_headers_reach_the_upstream_and_the_clients_key_and_spoofed_ones_do_not() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");
    let (key_id, key) = key_with(&server, &account.api_key, &["write", "read"]).await;

    let reply = send(
        client()
            .post(server.url("/v1/videos?draft=1&tag=a%20b"))
            .header("x-api-key", &key)
            .header("x-keyward-account-id", "acc_spoofed")
            .header("x-keyward-key-id", "key_spoofed")
            .header("x-keyward-scopes", "admin")
            .header("x-keyward-anything", "spoofed")
            .header("x-request-id", "not a valid id!")
            .header("x-forwarded-for", "203.0.113.9")
            .header("keep-alive", "timeout=5")
            .header("user-agent", "gateway-test/1")
            .body("hello upstream"),
    )
    .await;

    assert_eq!(reply.status, 201, "{reply:?}");
    let echoed = &reply.body;
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/v1/videos");
    assert_eq!(echoed["query"], "draft=1&tag=a%20b");
    assert_eq!(echoed["body"], "hello upstream");
    let headers = &echoed["headers"];
    assert_eq!(headers["x-keyward-account-id"], json!([account.account_id]));
    assert_eq!(headers["x-keyward-key-id"], json!([key_id]));
    assert_eq!(headers["x-keyward-scopes"], json!(["write,read"]));
    for gone in ["x-api-key", "x-keyward-anything", "keep-alive"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {headers}"
        );
    }
    let request_id = reply.header("x-request-id").unwrap();
    assert!(request_id.starts_with("req_"), "{request_id}");
    assert_eq!(headers["x-request-id"], json!([request_id]));
    assert_eq!(
        headers["x-forwarded-for"],
        json!(["203.0.113.9, 127.0.0.1"])
    );
    assert_eq!(headers["x-forwarded-proto"], json!(["http"]));
    let host = server.base.trim_start_matches("http://");
    assert_eq!(headers["x-forwarded-host"], json!([host]));
    assert_eq!(headers["user-agent"], json!(["gateway-test/1"]));
    assert!(
        !reply.text.contains(&key),
        "the secret came back from the upstream"
    );
}

#[tokio::test]
async fn each_route_requires_its_own_scopes_and_a_key() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");
    let (_, creator) = key_with(&server, &account.api_key, &["write"]).await;
    let (_, reader) = key_with(&server, &account.api_key, &["read"]).await;

    let post_video = |key: &str| {
        send(
            client()
                .post(server.url("/v1/videos"))
                .header("x-api-key", key)
                .body("{}"),
        )
    };
    assert_eq!(post_video(&creator).await.status, 201);
    let refused = post_video(&reader).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        refused.body["error"]["details"]["required"],
        json!(["write"])
    );

    assert_eq!(
        get_with(&server, &reader, "/v1/videos/v1").await.status,
        200
    );
    let refused = get_with(&server, &creator, "/v1/videos/v1").await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body["error"]["details"]["required"],
        json!(["read"])
    );

    let anonymous = send(client().post(server.url("/v1/videos"))).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "INVALID_API_KEY");
    assert_eq!(anonymous.body["error"]["details"]["reason"], "missing");
    let bad = send(
        client()
            .get(server.url("/v1/videos/v1"))
            .header("x-api-key", "kw_not_a_key"),
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.body["error"]["details"]["reason"], "malformed");
}

#[tokio::test]
async fn a_request_no_route_matches_is_a_404_in_the_error_form_and_never_reaches_the_upstream() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");

    for (method, path) in [
        ("GET", "/v1/unknown"),
        ("DELETE", "/v1/videos/v1"),
        ("GET", "/v1/videos"),
        ("GET", "/v1/videos/v1/extra"),
        ("GET", "/v1/videos/.."),
        ("GET", "/v1/videos/%2e%2e"),
    ] {
        let reply = send(
            client()
                .request(method.parse().unwrap(), server.url(path))
                .header("x-api-key", &account.api_key),
        )
        .await;
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
        assert_eq!(reply.error_code(), "RESOURCE_NOT_FOUND", "{method} {path}");
    }
    // keyward's own endpoints are still keyward's.
    let own = get_with(&server, &account.api_key, "/v1/api-keys").await;
    assert_eq!(own.status, 200);
    assert!(own.body["api_keys"].is_array());
}

#[tokio::test]
async fn the_upstreams_own_status_body_caching_and_headers_pass_through_but_its_hop_by_hop_ones() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");

    for code in [200u16, 404, 418, 500] {
        let reply = get_with(&server, &account.api_key, &format!("/v1/status/{code}")).await;
        assert_eq!(reply.status, code);
        assert_eq!(reply.text, format!("the upstream says {code}"));
        assert_eq!(reply.header("cache-control"), Some("max-age=60"));
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.header("x-upstream-own"), Some("kept"));
        assert_eq!(reply.header("x-upstream-hop"), None, "{reply:?}");
        assert!(reply.header("x-request-id").is_some());
    }
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_502_and_one_that_is_slow_a_504() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (_dir, routes) = routes_file(ROUTES);
    let down = gateway(&format!("http://{closed}"), &routes, &[]);
    let account = down.create_account("enterprise");
    let reply = get_with(&down, &account.api_key, "/v1/videos/v1").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.error_code(), "BAD_GATEWAY");
    assert!(
        !reply.text.contains(&closed.to_string()),
        "no internals: {}",
        reply.text
    );

    let upstream = start_upstream().await;
    let slow = gateway(&upstream, &routes, &["--upstream-timeout", "500ms"]);
    let account = slow.create_account("enterprise");
    let reply = get_with(&slow, &account.api_key, "/v1/slow").await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.error_code(), "GATEWAY_TIMEOUT");
    assert_eq!(reply.body["error"]["details"]["timeout_seconds"], 0.5);
    // The gateway serves on after both.
    assert_eq!(
        get_with(&slow, &account.api_key, "/v1/videos/v1")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn history_and_usage_record_the_route_template_with_the_upstreams_status() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");
    let (_, key) = key_with(&server, &account.api_key, &["write", "read"]).await;

    let created = send(
        client()
            .post(server.url("/v1/videos"))
            .header("x-api-key", &key)
            .header("user-agent", "platform-client/2.0")
            .body("{}"),
    )
    .await;
    assert_eq!(created.status, 201);
    let missing = get_with(&server, &key, "/v1/status/404").await;
    assert_eq!(missing.status, 404);
    let ids = [rid(&created), rid(&missing)];
    server.metered(&account.account_id, &ids).await;

    let history = get_with(&server, &account.api_key, "/v1/request-history?limit=100").await;
    assert_eq!(history.status, 200, "{history:?}");
    let rows = history.body["requests"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["request_id"] == id).unwrap().clone();
    let video = row(&ids[0]);
    assert_eq!(video["endpoint"], "POST /v1/videos");
    assert_eq!(video["status"], 201);
    assert_eq!(video["user_agent"], "platform-client/2.0");
    assert!(video["latency_ms"].is_u64());
    let status = row(&ids[1]);
    assert_eq!(status["endpoint"], "GET /v1/status/{code}");
    assert_eq!(status["status"], 404);

    let filtered = get_with(
        &server,
        &account.api_key,
        "/v1/request-history?endpoint=POST%20%2Fv1%2Fvideos",
    )
    .await;
    let filtered = filtered.body["requests"].as_array().unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");

    let usage = get_with(&server, &account.api_key, "/v1/usage").await;
    assert_eq!(usage.status, 200);
    assert_eq!(usage.body["by_endpoint"]["POST /v1/videos"], 1, "{usage:?}");
    assert_eq!(usage.body["by_endpoint"]["GET /v1/status/{code}"], 1);

    let metrics = client().get(server.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(
            r#"keyward_upstream_responses_total{method="POST",route="/v1/videos",class="2xx"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"keyward_upstream_responses_total{method="GET",route="/v1/status/{code}",class="4xx"} 1"#
    ));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_upstream_request() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");
    let (started, dropped) = (
        HANG_STARTED.load(Ordering::SeqCst),
        HANG_DROPPED.load(Ordering::SeqCst),
    );

    let request = client()
        .get(server.url("/v1/hang"))
        .header("x-api-key", &account.api_key)
        .send();
    let waiting = tokio::spawn(request);
    eventually(
        Duration::from_secs(20),
        "the upstream to get the request",
        async || HANG_STARTED.load(Ordering::SeqCst) > started,
    )
    .await;
    // The client goes away: its connection to keyward closes.
    waiting.abort();

    eventually(
        Duration::from_secs(20),
        "the upstream request to be dropped",
        async || HANG_DROPPED.load(Ordering::SeqCst) > dropped,
    )
    .await;
}

fn rid(reply: &Reply) -> String {
    reply.header("x-request-id").unwrap().to_owned()
}

/// The process's peak resident memory, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn fifty_mib_stream_up_and_down_through_the_gateway_without_keyward_holding_them() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let account = server.create_account("enterprise");
    let size = 50 * MIB;
    // Warm up: connections, pools and buffers exist before the baseline.
    let warm = send(
        client()
            .post(server.url("/v1/uploads"))
            .header("x-api-key", &account.api_key)
            .body(vec![1u8; MIB]),
    )
    .await;
    assert_eq!(warm.body["received"], MIB);
    let warm = send(
        client()
            .get(server.url(&format!("/v1/downloads/{}", 4 * MIB)))
            .header("x-api-key", &account.api_key),
    )
    .await;
    assert_eq!(warm.text.len(), 4 * MIB);
    let before = peak_rss(server.pid());

    let up = send(
        client()
            .post(server.url("/v1/uploads"))
            .header("x-api-key", &account.api_key)
            .body(vec![7u8; size]),
    )
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(up.body["received"], size);

    let mut down = client()
        .get(server.url(&format!("/v1/downloads/{size}")))
        .header("x-api-key", &account.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    let mut received = 0usize;
    while let Some(chunk) = down.chunk().await.unwrap() {
        assert!(chunk.iter().all(|b| *b == b'x'));
        received += chunk.len();
    }
    assert_eq!(received, size);

    // Held whole, either body alone would add 50 MiB; streamed, what grows is buffers and
    // the allocator's caches (2 to 16 MiB in a debug build here).
    let growth = peak_rss(server.pid()).saturating_sub(before);
    eprintln!("peak memory growth: {} KiB", growth / 1024);
    assert!(
        growth < 25 * MIB as u64,
        "keyward's peak memory grew by {} MiB while 2 x 50 MiB went through",
        growth / MIB as u64
    );
}

#[tokio::test]
async fn a_forwarded_body_over_the_upstream_body_limit_is_a_413_and_keywards_own_limit_does_not_apply()
 {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &["--upstream-body-limit", "200000"]);
    let account = server.create_account("enterprise");
    let upload = |bytes: usize| {
        send(
            client()
                .post(server.url("/v1/uploads"))
                .header("x-api-key", &account.api_key)
                .body(vec![3u8; bytes]),
        )
    };
    // Above keyward's own --body-limit (64 KiB), within the upstream's.
    let within = upload(200_000).await;
    assert_eq!(within.status, 200, "{within:?}");
    assert_eq!(within.body["received"], 200_000);
    let over = upload(200_001).await;
    assert_eq!(over.status, 413, "{over:?}");
    assert_eq!(over.error_code(), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn an_upstream_response_longer_than_the_idle_timeout_streams_whole_and_the_connection_serves_on()
 {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    // Ten chunks 300 ms apart: three seconds, three idle timeouts.
    let server = gateway(&upstream, &routes, &["--idle-timeout", "1s"]);
    let account = server.create_account("enterprise");
    let keep_alive = client();
    let reply = send(
        keep_alive
            .get(server.url("/v1/drip/10"))
            .header("x-api-key", &account.api_key),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, "drop.".repeat(10));
    let next = send(
        keep_alive
            .get(server.url("/v1/videos/v1"))
            .header("x-api-key", &account.api_key),
    )
    .await;
    assert_eq!(next.status, 200);
}

/// Runs `keyward serve` with `routes_text` and returns its exit success and stderr.
fn serve_with_routes(routes_text: &str, extra: &[&str]) -> (bool, String) {
    let (dir, routes) = routes_file(routes_text);
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-bootstrap",
            "--database-url",
        ])
        .arg(format!("sqlite:{}", dir.path().join("k.db").display()))
        .arg("--routes")
        .arg(&routes)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn wait(child: &mut Child, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_a_bad_routes_file_naming_the_line_at_fault() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/v1/a\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/v1/api-keys/{id}\"\n",
            "line 7",
            "keyward serves itself",
        ),
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/v1/a/{id}\"\n[[route]]\nmethod = \"GET\"\npath = \"/v1/a/{other}\"\n",
            "line 6",
            "duplicates",
        ),
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/v1/a\"\nscopes = [\"read\"\n",
            "line 4",
            "",
        ),
        (
            "[[route]]\nmethod = \"FETCH\"\npath = \"/v1/a\"\n",
            "line 2",
            "method",
        ),
    ];
    for (text, line, words) in cases {
        let (ok, stderr) = serve_with_routes(text, &[]);
        assert!(!ok, "serve started with {text:?}");
        assert!(stderr.contains(line), "{text:?}: {stderr}");
        assert!(stderr.contains(words), "{text:?}: {stderr}");
        assert!(stderr.contains("--routes"), "{stderr}");
    }
    let (ok, stderr) = serve_with_routes(ROUTES, &["--upstream", "https://example.com"]);
    assert!(!ok);
    assert!(stderr.contains("--upstream"), "{stderr}");
}

#[tokio::test]
async fn forward_auth_reads_the_original_request_from_each_gateways_headers() {
    let (_dir, routes) = routes_file(ROUTES);
    // Forward auth alone: routes without an upstream.
    let server = Server::start_with(&["--no-bootstrap", "--routes", routes.to_str().unwrap()]);
    let account = server.create_account("enterprise");
    let (key_id, key) = key_with(&server, &account.api_key, &["write"]).await;

    let authorize = |method: &str, path: &str, headers: &[(&str, &str)], key: Option<&str>| {
        let mut req = client().request(method.parse().unwrap(), server.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        send(req)
    };
    let traefik = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/v1/videos?x=1"),
    ];
    let nginx = [
        ("x-original-method", "POST"),
        ("x-original-uri", "/v1/videos"),
    ];
    let allowed = [
        authorize("GET", "/authorize", &traefik, Some(&key)).await,
        authorize("GET", "/authorize", &nginx, Some(&key)).await,
        // Envoy with a path prefix: the method and path are the request's own.
        authorize("POST", "/authorize/v1/videos", &[], Some(&key)).await,
    ];
    for reply in &allowed {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-keyward-key-id"), Some(key_id.as_str()));
        assert_eq!(
            reply.header("x-keyward-account-id"),
            Some(account.account_id.as_str())
        );
        assert_eq!(reply.header("x-keyward-scopes"), Some("write"));
    }

    let lacking = authorize(
        "GET",
        "/authorize",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/v1/videos/v1"),
        ],
        Some(&key),
    )
    .await;
    assert_eq!(lacking.status, 403);
    assert_eq!(
        lacking.body["error"]["details"]["required"],
        json!(["read"])
    );
    let anonymous = authorize("GET", "/authorize", &traefik, None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "INVALID_API_KEY");
    let unrouted = authorize(
        "GET",
        "/authorize",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/v1/elsewhere"),
        ],
        Some(&key),
    )
    .await;
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.error_code(), "RESOURCE_NOT_FOUND");
    // Without an upstream nothing is forwarded: the route itself is not served.
    let direct = send(
        client()
            .post(server.url("/v1/videos"))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(direct.status, 404);

    // The decisions are recorded under the platform's route, with their status.
    let mut ids: Vec<String> = allowed.iter().map(rid).collect();
    ids.push(rid(&lacking));
    server.metered(&account.account_id, &ids).await;
    let history = get_with(&server, &account.api_key, "/v1/request-history?limit=100").await;
    let rows = history.body["requests"].as_array().unwrap();
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .unwrap();
        let expected = if *id == rid(&lacking) {
            ("GET /v1/videos/{video_id}", 403)
        } else {
            ("POST /v1/videos", 200)
        };
        assert_eq!(
            (
                row["endpoint"].as_str().unwrap(),
                row["status"].as_u64().unwrap()
            ),
            (expected.0, expected.1)
        );
    }
}

/// Where nginx is, if installed.
fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A free local port (bound and released; nginx binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx as a child of the test, with its own prefix, configuration and port.
struct Nginx {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    async fn start(binary: &Path, keyward: &str, upstream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The documented file, with this test's addresses.
        let conf = include_str!("../../../deploy/nginx-auth-request.conf")
            .replace("127.0.0.1:8080", keyward.trim_start_matches("http://"))
            .replace("10.0.0.21:9000", upstream.trim_start_matches("http://"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        let prefix = dir.path().display().to_string();
        let full = format!(
            "daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n{conf}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, full).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.path().join("error.log");
        eventually(Duration::from_secs(20), "nginx to listen", async || {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("{e}; {}", std::fs::read_to_string(&log).unwrap_or_default()))
        })
        .await;
        Self {
            child,
            base,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_keyward_passes_allowed_401_403_and_429() {
    let test = "nginx_auth_request_in_front_of_keyward_passes_allowed_401_403_and_429";
    let binary = nginx_binary();
    if !keyward_test_support::require(binary.is_some(), test, "nginx is not installed") {
        return;
    }
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = Server::start_with(&["--no-bootstrap", "--routes", routes.to_str().unwrap()]);
    let nginx = Nginx::start(&binary.unwrap(), &server.base, &upstream).await;
    let account = server.create_account("enterprise");
    let (key_id, reader) = key_with(&server, &account.api_key, &["read"]).await;
    let (_, creator) = key_with(&server, &account.api_key, &["write"]).await;

    let through = |path: &str, key: Option<&str>| {
        let mut req = client().get(nginx.url(path));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        send(req)
    };
    let allowed = through("/v1/videos/v1?full=1", Some(&reader)).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let headers = &allowed.body["headers"];
    assert_eq!(allowed.body["path"], "/v1/videos/v1");
    assert_eq!(headers["x-keyward-key-id"], json!([key_id]));
    assert_eq!(headers["x-keyward-account-id"], json!([account.account_id]));
    assert!(headers.get("x-api-key").is_none(), "{headers}");

    for (key, status, code) in [
        (None, 401, "INVALID_API_KEY"),
        (Some(creator.as_str()), 403, "INSUFFICIENT_PERMISSIONS"),
    ] {
        let refused = through("/v1/videos/v1", key).await;
        assert_eq!(refused.status, status, "{refused:?}");
        assert_eq!(refused.error_code(), code);
        assert!(
            refused.body["request_id"]
                .as_str()
                .unwrap()
                .starts_with("req_")
        );
    }
    // A client naming another route in the headers keyward reads is not believed.
    let spoofed = send(
        client()
            .get(nginx.url("/v1/videos/v1"))
            .header("x-api-key", &creator)
            .header("x-forwarded-method", "POST")
            .header("x-forwarded-uri", "/v1/videos"),
    )
    .await;
    assert_eq!(spoofed.status, 403, "{spoofed:?}");
    let unrouted = through("/v1/elsewhere", Some(&reader)).await;
    assert_eq!(unrouted.status, 404, "{unrouted:?}");

    // A free plan allows 10 requests a minute.
    let free = server.create_account("free");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let reply = through("/v1/videos/v1", Some(&free.api_key)).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.error_code(), "RATE_LIMIT_EXCEEDED", "{reply:?}");
            assert!(reply.header("retry-after").is_some(), "{reply:?}");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_gateway_forward_auth_validate_and_keywards_own_endpoints_share_the_monthly_quota() {
    let upstream = start_upstream().await;
    let (_dir, routes) = routes_file(ROUTES);
    let server = gateway(&upstream, &routes, &[]);
    let plan = server.cli(&["plans", "set", "metered", "--per-month", "4"]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let account = server.create_account("metered");
    let key = account.api_key.as_str();
    let forwarded = || {
        send(
            client()
                .get(server.url("/v1/videos/7"))
                .header("x-api-key", key),
        )
    };
    let authorize = || {
        send(
            client()
                .get(server.url("/authorize"))
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-uri", "/v1/videos/7")
                .header("x-api-key", key),
        )
    };
    let validate = || {
        send(
            client()
                .post(server.url("/v1/api-keys/validate"))
                .header("x-api-key", key),
        )
    };

    // One each of the four kinds of counted request uses the month's four.
    let used = [
        ("gateway", forwarded().await),
        ("forward auth", authorize().await),
        ("validate", validate().await),
        (
            "own endpoint",
            common::get(&server, key, "/v1/api-keys").await,
        ),
    ];
    for (what, reply) in &used {
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
    }
    assert_eq!(used[2].1.body["valid"], true);

    // Then every kind is refused for the month; validate answers it in its own form.
    for (what, reply) in [
        ("gateway", forwarded().await),
        ("forward auth", authorize().await),
        (
            "own endpoint",
            common::get(&server, key, "/v1/api-keys").await,
        ),
    ] {
        assert_eq!(reply.status, 429, "{what}: {reply:?}");
        assert_eq!(reply.body["error"]["details"]["window"], "month", "{what}");
        assert!(reply.header("retry-after").is_some(), "{what}");
    }
    let refused = validate().await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.body["valid"], false);
    assert_eq!(refused.body["reason"], "rate_limited");
    assert!(refused.body["retry_after"].as_u64().unwrap() > 0);
}
