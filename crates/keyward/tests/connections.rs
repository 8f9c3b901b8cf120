//! Black-box tests of the connection layer and the answers keyward gives whatever a
//! client sends: timeouts, the connection cap, the drain at SIGTERM, too many headers,
//! ambiguous keys and `cache-control`. Real binary, raw sockets where the exact bytes
//! matter; the timeouts are made short through their flags.

mod common;

use std::time::Duration;

use common::{Server, client, eventually, get, send};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long a test waits for a connection that keyward should close: the short timeouts
/// the tests set, and room for a loaded machine. Without the timeouts these connections
/// stay open, so the wait fails.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

async fn connect(server: &Server) -> TcpStream {
    let addr = server.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the server closes the connection (end of stream or reset), at most
/// `within`; what arrived before. Panics if it is still open then.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0_u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after {within:?}; it sent: {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Raw {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the documented error form with `x-request-id`; returns the code.
    fn error_code(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let id = self.body["request_id"].as_str().expect("request_id");
        assert_eq!(self.header("x-request-id"), Some(id), "{self:?}");
        self.body["error"]["code"].as_str().expect("error.code")
    }
}

/// Sends `request` whole on a fresh connection (which it asks to close) and reads the
/// response to the end.
async fn exchange(server: &Server, request: &str) -> Raw {
    let mut stream = connect(server).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    Raw::parse(&read_until_closed(&mut stream, CLOSE_WAIT).await)
}

/// Reads one response with a `content-length` from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Raw::parse(&seen[..end + 4]);
                let length: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    Raw::parse(&seen)
}

/// A connection whose request is in keyward's hands, its handler waiting for the rest
/// of the body: `expect: 100-continue` makes the server say when the handler first
/// reads the body, so the test knows the request is in flight.
async fn request_in_flight(server: &Server, api_key: &str) -> TcpStream {
    let mut stream = connect(server).await;
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: keyward\r\nx-api-key: {api_key}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let continued = read_response(&mut stream).await;
    assert_eq!(continued.status, 100, "{continued:?}");
    stream.write_all(b"{").await.expect("write");
    stream
}

#[tokio::test]
async fn half_sent_headers_and_a_header_drip_are_closed_after_the_header_timeout() {
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "60s",
    ]);
    let mut half_sent = connect(&server).await;
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n")
        .await
        .unwrap();
    let mut drip = connect(&server).await;
    let dripping = tokio::spawn(async move {
        // A header line that never ends, one byte every 100 ms.
        drip.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        loop {
            if drip.write_all(b"a").await.is_err() {
                return drip;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0_u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), drip.read(&mut probe)).await
            {
                return drip;
            }
        }
    });

    let answered = read_until_closed(&mut half_sent, CLOSE_WAIT).await;
    let drip_closed = tokio::time::timeout(CLOSE_WAIT, dripping).await;

    assert!(
        answered.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&answered)
    );
    assert!(drip_closed.is_ok(), "the dripping connection stayed open");
    // The server itself serves on, and counts what it cut.
    let metrics = send(client().get(server.url("/metrics"))).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("keyward_http_connection_timeouts_total{timeout=\"header\"} 2"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_body_dripping_at_one_byte_a_second_is_cut_off_with_a_json_408() {
    let server = Server::start_with(&["--no-bootstrap", "--body-timeout", "1s"]);
    let acct = server.create_account("enterprise");
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: keyward\r\nx-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        acct.api_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let dripping = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });

    let mut seen = Vec::new();
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        let mut buf = [0_u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    dripping.abort();

    assert!(closed.is_ok(), "the dripping body kept its connection open");
    let r = Raw::parse(&seen);
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.error_code(), "INVALID_REQUEST");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--idle-timeout",
        "1s",
        "--header-timeout",
        "30s",
    ]);
    let mut stream = connect(&server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(first.status, 200);
    // Kept alive: a second request on it is served.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);

    let after = read_until_closed(&mut stream, CLOSE_WAIT).await;

    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--max-connections",
        "2",
        "--header-timeout",
        "60s",
        "--idle-timeout",
        "60s",
    ]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server).await;
        stream.write_all(request).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        held.push(stream);
    }
    let mut third = connect(&server).await;
    third.write_all(request).await.unwrap();

    // Not accepted while both slots are held: no answer comes.
    let mut buf = [0_u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    drop(held.pop());

    assert_eq!(read_response(&mut third).await.status, 200);
}

#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_by_the_drain_timeout_and_flushes_metering() {
    let mut server = Server::start_with(&[
        "--no-bootstrap",
        "--drain-timeout",
        "1s",
        "--header-timeout",
        "60s",
    ]);
    let acct = server.create_account("enterprise");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = get(&server, &acct.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    let _half_sent = request_in_flight(&server, &acct.api_key).await;

    server.send_sigterm();
    let status = server.wait_exit(CLOSE_WAIT);

    assert!(status.success(), "{status:?}; logs:\n{}", server.logs());
    assert!(
        server.logs().contains("the drain timeout passed"),
        "{}",
        server.logs()
    );
    server.restart();
    let history = get(&server, &acct.api_key, "/v1/request-history?limit=100").await;
    let recorded: Vec<&str> = history.body["requests"]
        .as_array()
        .unwrap_or_else(|| panic!("{history:?}"))
        .iter()
        .filter_map(|row| row["request_id"].as_str())
        .collect();
    for id in &ids {
        assert!(
            recorded.contains(&id.as_str()),
            "{id} missing: {recorded:?}"
        );
    }
}

#[tokio::test]
async fn readyz_answers_503_while_the_server_drains() {
    let mut server = Server::start();
    let acct = server.create_account("enterprise");
    // A readiness probe begun before the drain, finished during it.
    let mut probe = connect(&server).await;
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: keyward\r\n")
        .await
        .unwrap();
    // A request in flight keeps the drain going while the probe is observed (and, made
    // after the probe's first bytes were sent, gives the server time to read them).
    let in_flight = request_in_flight(&server, &acct.api_key).await;

    server.send_sigterm();
    eventually(CLOSE_WAIT, "the server to start draining", async || {
        server.logs().contains("shutdown signal received")
    })
    .await;
    probe.write_all(b"\r\n").await.unwrap();
    let r = read_response(&mut probe).await;

    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "SERVICE_UNAVAILABLE");
    assert_eq!(r.body["error"]["details"]["reason"], "draining");
    drop((probe, in_flight));
    assert!(server.wait_exit(CLOSE_WAIT).success());
}

/// A request with exactly `count` headers (`Host` and `connection` among them).
fn with_headers(count: usize) -> String {
    let mut request =
        String::from("GET /healthz HTTP/1.1\r\nHost: keyward\r\nconnection: close\r\n");
    for i in 2..count {
        request.push_str(&format!("x-h-{i}: 1\r\n"));
    }
    request.push_str("\r\n");
    request
}

#[tokio::test]
async fn more_than_100_headers_are_a_json_431_with_a_request_id_up_to_the_http_layers_256_and_100_are_served()
 {
    let server = Server::start();

    let over = exchange(&server, &with_headers(101)).await;
    let at_limit = exchange(&server, &with_headers(100)).await;
    let at_http_limit = exchange(&server, &with_headers(256)).await;
    let past_http_limit = exchange(&server, &with_headers(257)).await;

    assert_eq!(over.status, 431, "{over:?}");
    assert_eq!(over.error_code(), "INVALID_REQUEST");
    assert_eq!(at_limit.status, 200, "{at_limit:?}");
    assert_eq!(at_http_limit.status, 431, "{at_http_limit:?}");
    assert_eq!(at_http_limit.error_code(), "INVALID_REQUEST");
    // Past the HTTP layer's own limit, its bare 431 (documented in API.md §Errors).
    assert_eq!(past_http_limit.status, 431, "{past_http_limit:?}");
}

#[tokio::test]
async fn two_x_api_key_headers_are_refused_as_malformed() {
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let mut headers = HeaderMap::new();
    let key = HeaderValue::from_str(&acct.api_key).unwrap();
    headers.append("x-api-key", key.clone());
    headers.append("x-api-key", key);

    let r = send(client().get(server.url("/v1/api-keys")).headers(headers)).await;

    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "INVALID_API_KEY");
    assert_eq!(r.body["error"]["details"]["reason"], "malformed");
}

#[tokio::test]
async fn every_v1_answer_carries_cache_control_no_store_success_or_error() {
    let server = Server::start_with(&["--no-bootstrap", "--body-limit", "1024"]);
    let acct = server.create_account("enterprise");
    let limited = server.create_account("enterprise");
    let out = server.cli(&[
        "accounts",
        "set-limits",
        &limited.account_id,
        "--per-minute",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = acct.api_key.as_str();
    let mut answers = vec![
        ("history", get(&server, key, "/v1/request-history").await),
        ("usage", get(&server, key, "/v1/usage").await),
        ("audit", get(&server, key, "/v1/audit-log").await),
        ("401", get(&server, "nope", "/v1/usage").await),
        ("404", get(&server, key, "/v1/no-such-route").await),
        (
            "405",
            send(
                client()
                    .put(server.url("/v1/usage"))
                    .header("x-api-key", key),
            )
            .await,
        ),
        (
            "413",
            send(
                client()
                    .post(server.url("/v1/api-keys"))
                    .header("x-api-key", key)
                    .json(&json!({"scopes": ["read"], "name": "x".repeat(2000)})),
            )
            .await,
        ),
    ];
    get(&server, &limited.api_key, "/v1/usage").await;
    answers.push(("429", get(&server, &limited.api_key, "/v1/usage").await));

    for (what, r) in &answers {
        let expected = match *what {
            "history" | "usage" | "audit" => 200,
            code => code.parse().unwrap(),
        };
        assert_eq!(r.status, expected, "{what}: {r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}: {r:?}");
    }
}

#[tokio::test]
async fn a_request_line_over_64_kib_gets_the_http_layers_bare_414_as_documented() {
    let server = Server::start();
    let path = format!("/healthz?{}", "a".repeat(65 * 1024));

    let r = exchange(
        &server,
        &format!("GET {path} HTTP/1.1\r\nHost: keyward\r\nconnection: close\r\n\r\n"),
    )
    .await;

    assert_eq!(r.status, 414, "{:?}", r.headers);
    assert_eq!(
        r.header("x-request-id"),
        None,
        "answered by hyper, not keyward"
    );
}

#[tokio::test]
async fn a_later_request_half_sent_on_a_kept_alive_connection_is_closed_by_the_header_timeout() {
    // The idle timeout is far longer than the wait: only the header timeout, started by
    // the second request's first bytes, can close the connection in time.
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "60s",
    ]);
    let mut stream = connect(&server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);

    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyward\r\n")
        .await
        .unwrap();
    let after = read_until_closed(&mut stream, CLOSE_WAIT).await;

    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}
