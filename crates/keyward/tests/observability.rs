//! Black-box tests of what an operator reads (docs/OPERATIONS.md): `/metrics` in the
//! Prometheus text format with every family described and documented, the alert
//! counters at zero from the start, `--metrics-listen`, the access log without
//! secrets, JSON logs that stay JSON to the last line, no colour on a pipe, and
//! sqlx's notices kept below INFO. Real binary, real databases.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use common::{BIN, Server, client, create_key, eventually, get, post, send};
use keyward_core::KeySecret;
use serde_json::{Value, json};

/// docs/OPERATIONS.md, which must name every family `/metrics` shows.
fn operations_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/OPERATIONS.md");
    std::fs::read_to_string(path).expect("docs/OPERATIONS.md")
}

/// The body of `GET url`.
async fn fetch(url: &str) -> (u16, String) {
    let r = send(client().get(url)).await;
    (r.status, r.text)
}

/// The families of a Prometheus text exposition: name → (type, help).
fn families(text: &str) -> HashMap<String, (String, Option<String>)> {
    let mut out: HashMap<String, (String, Option<String>)> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_owned()).or_default().1 = Some(help.to_owned());
        }
    }
    out
}

/// The value of the sample `name{labels}` (every label given must match).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse")
}

/// The address a JSON or text log line with `message` names in its `address` field.
fn logged_address(logs: &str, message: &str) -> Option<String> {
    logs.lines().find_map(|line| {
        if let Ok(json) = serde_json::from_str::<Value>(line) {
            return (json["fields"]["message"] == message)
                .then(|| json["fields"]["address"].as_str().map(str::to_owned))
                .flatten();
        }
        let (_, after) = line.split_once(&format!(" {message} "))?;
        let address = after
            .split_whitespace()
            .find_map(|f| f.strip_prefix("address="))?;
        Some(address.trim_matches('"').to_owned())
    })
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_every_family_described_and_documented() {
    // Arrange: a server that has answered a few kinds of request.
    let server = Server::start();
    let account = server.create_account("pro");
    assert_eq!(
        get(&server, &account.api_key, "/v1/api-keys").await.status,
        200
    );
    assert_eq!(get(&server, "kw_bogus", "/v1/api-keys").await.status, 401);
    assert_eq!(fetch(&server.url("/nowhere")).await.0, 404);

    // Act
    let (status, text) = fetch(&server.url("/metrics")).await;

    // Assert: valid text, every family typed and described, and listed in the doc.
    assert_eq!(status, 200);
    let scrape = parse(&text);
    assert!(!scrape.samples.is_empty());
    let families = families(&text);
    let doc = operations_doc();
    let mut undocumented = BTreeSet::new();
    for (name, (kind, help)) in &families {
        assert!(!kind.is_empty(), "{name} has no # TYPE");
        assert!(
            help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no # HELP"
        );
        if !doc.contains(&format!("`{name}`")) {
            undocumented.insert(name.clone());
        }
    }
    assert!(
        undocumented.is_empty(),
        "not in docs/OPERATIONS.md: {undocumented:?}"
    );
    for s in &scrape.samples {
        // A histogram's `_sum` and `_count` belong to its family.
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| s.metric.strip_suffix(suffix))
            .filter(|base| {
                families
                    .get(*base)
                    .is_some_and(|(kind, _)| kind == "histogram")
            })
            .unwrap_or(&s.metric);
        assert!(families.contains_key(family), "{} has no # TYPE", s.metric);
    }
    // The build, the process, and labels as Prometheus practice has them.
    let build = scrape
        .samples
        .iter()
        .find(|s| s.metric == "keyward_build_info")
        .expect("keyward_build_info");
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(build.labels.get("commit").is_some_and(|c| !c.is_empty()));
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(families.contains_key(process), "{process} missing");
    }
    assert_eq!(
        sample(
            &scrape,
            "keyward_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/v1/api-keys"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("endpoint="),
        "method and route are separate labels"
    );
    assert!(sample(&scrape, "keyward_cache_misses_total", &[("cache", "key")]).is_some());
    assert!(
        !families
            .keys()
            .any(|f| f.contains("key_cache") || f.contains("listing_cache")),
        "one family per kind, with a cache label"
    );
}

#[tokio::test]
async fn the_counters_alerts_name_are_at_zero_right_after_start() {
    // Arrange: Redis configured, so its counters are the ones an alert would watch.
    let redis = keyward_test_support::service_url(
        keyward_test_support::REDIS_URL_VAR,
        "the Redis counters are checked on a server with --redis-url",
    );
    let mut args = vec!["--no-bootstrap"];
    if let Some(url) = &redis {
        args.extend(["--redis-url", url]);
    }
    let server = Server::start_with(&args);

    // Act
    let (_, text) = fetch(&server.url("/metrics")).await;

    // Assert
    let scrape = parse(&text);
    let zero: &[(&str, &[(&str, &str)])] = &[
        ("keyward_ratelimit_redis_failures_total", &[]),
        ("keyward_ratelimit_redis_fallback_total", &[]),
        ("keyward_meter_dropped_rows_total", &[]),
        ("keyward_meter_flush_failures_total", &[]),
        ("keyward_storage_errors_total", &[("kind", "unavailable")]),
        ("keyward_storage_errors_total", &[("kind", "other")]),
        (
            "keyward_http_connection_timeouts_total",
            &[("timeout", "header")],
        ),
        (
            "keyward_http_connection_timeouts_total",
            &[("timeout", "body")],
        ),
        (
            "keyward_http_connection_timeouts_total",
            &[("timeout", "idle")],
        ),
        (
            "keyward_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/api-keys/validate"),
                ("status", "500"),
            ],
        ),
        (
            "keyward_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/v1/api-keys"),
                ("status", "503"),
            ],
        ),
    ];
    for (name, labels) in zero {
        assert_eq!(
            sample(&scrape, name, labels),
            Some(0.0),
            "{name}{labels:?}\n{text}"
        );
    }
}

#[tokio::test]
async fn metrics_listen_serves_metrics_there_and_the_public_port_answers_404() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap", "--metrics-listen", "127.0.0.1:0"]);
    let private = logged_address(&server.logs(), "serving /metrics")
        .unwrap_or_else(|| panic!("no `serving /metrics` line: {}", server.logs()));

    // Act
    let (private_status, private_text) = fetch(&format!("http://{private}/metrics")).await;
    let public = send(client().get(server.url("/metrics"))).await;

    // Assert
    assert_eq!(private_status, 200);
    assert!(
        private_text.contains("# HELP keyward_build_info "),
        "{private_text}"
    );
    assert_eq!(public.status, 404, "{public:?}");
    assert_eq!(public.error_code(), "RESOURCE_NOT_FOUND");
    assert!(!public.text.contains("keyward_"));
}

/// The access-log lines (JSON mode) so far.
fn access_lines(server: &Server) -> Vec<Value> {
    server
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "keyward::access")
        .collect()
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_no_secret_digest_or_metadata() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap", "--access-log", "--log-format", "json"]);
    let account = server.create_account("pro");
    let metadata_value = "metadata-value-5e1d0c";
    let (key_id, secret) = create_key(
        &server,
        &account.api_key,
        &json!({ "name": "logged", "scopes": ["read"], "metadata": { "team": metadata_value } }),
    )
    .await;

    // Act
    let requests = [
        get(&server, &secret, &format!("/v1/api-keys/{key_id}")).await,
        post(&server, &secret, "/v1/api-keys/validate", &json!({})).await,
        get(&server, "kw_not_a_key", "/v1/api-keys").await,
        send(
            client()
                .get(server.url("/no/such/route"))
                .header("user-agent", "probe/1.0"),
        )
        .await,
    ];

    // Assert: a line per request, with its fields.
    let ids: Vec<String> = requests
        .iter()
        .map(|r| r.header("x-request-id").expect("x-request-id").to_owned())
        .collect();
    eventually(
        Duration::from_secs(10),
        "an access line per request",
        async || {
            let lines = access_lines(&server);
            ids.iter().all(|id| {
                lines
                    .iter()
                    .filter(|l| l["fields"]["request_id"] == id.as_str())
                    .count()
                    == 1
            })
        },
    )
    .await;
    let lines = access_lines(&server);
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["request_id"] == id)
            .expect("line")["fields"]
            .clone()
    };
    let first = line(&ids[0]);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["route"], "/v1/api-keys/{key_id}");
    assert_eq!(first["status"], 200);
    assert_eq!(first["key_id"], key_id.as_str());
    assert!(
        first["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{first}"
    );
    assert!(lines[0]["timestamp"].is_string());
    assert_eq!(line(&ids[2])["status"], 401);
    assert_eq!(line(&ids[2])["key_id"], "-");
    let unmatched = line(&ids[3]);
    assert_eq!(unmatched["route"], "-");
    assert_eq!(unmatched["status"], 404);
    assert_eq!(unmatched["user_agent"], "probe/1.0");
    // No secret anywhere on stderr: the keys, their digests, a metadata value.
    let logs = server.logs();
    for secret in [&account.api_key, &secret] {
        let digest = KeySecret::digest_of(secret).expect("digest").to_hex();
        assert!(!logs.contains(secret.as_str()), "a key is in the logs");
        assert!(!logs.contains(&digest), "a key's digest is in the logs");
    }
    assert!(
        !logs.contains(metadata_value),
        "a metadata value is in the logs"
    );
}

#[tokio::test]
async fn without_access_log_no_request_gets_an_access_line() {
    let server = Server::start_with(&["--no-bootstrap", "--log-format", "json"]);
    let r = send(client().get(server.url("/healthz"))).await;
    assert_eq!(r.status, 200);
    let healthz = send(client().get(server.url("/readyz"))).await;
    assert_eq!(healthz.status, 200);
    assert!(access_lines(&server).is_empty(), "{}", server.logs());
}

#[tokio::test]
async fn every_stderr_line_of_a_json_server_is_json_from_the_first_start_to_the_stop() {
    // Arrange: the first start (its bootstrap notice) and the access log.
    let mut server = Server::start_with(&["--access-log", "--log-format", "json"]);
    assert_eq!(send(client().get(server.url("/healthz"))).await.status, 200);

    // Act
    assert!(server.sigterm().success());

    // Assert
    let logs = server.logs();
    assert!(logs.contains("\"stopped\""), "{logs}");
    for line in logs.lines() {
        let json: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(json["level"].is_string(), "{line}");
    }
}

#[test]
fn a_json_server_that_cannot_start_says_why_in_json_on_its_last_line() {
    // Arrange: a SQLite file in a directory that does not exist.
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("missing/dir/k.db").display());

    // Act
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--database-url", &url])
        .output()
        .expect("run keyward");

    // Assert
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    let error = last["fields"]["error"].as_str().expect("error field");
    assert!(error.contains("cannot open the SQLite database"), "{error}");
}

#[tokio::test]
async fn stderr_has_no_colour_codes_when_it_is_a_pipe() {
    let mut server = Server::start_with(&["--no-bootstrap", "--access-log"]);
    assert_eq!(send(client().get(server.url("/healthz"))).await.status, 200);
    assert!(server.sigterm().success());
    let logs = server.logs();
    assert!(logs.contains("keyward::access"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "ANSI escape on a pipe: {logs:?}");
}

#[tokio::test]
async fn sqlx_notices_stay_below_info_on_a_second_postgresql_node() {
    let Some(first) = Server::start_on_postgres(
        "a second node on one PostgreSQL schema logs no sqlx notice",
        &["--no-bootstrap"],
    ) else {
        return;
    };
    // The second start finds the migrations table there: PostgreSQL sends a notice.
    let second = first.another_node(&["--no-bootstrap"]);
    assert_eq!(send(client().get(second.url("/healthz"))).await.status, 200);
    let logs = second.logs();
    assert!(!logs.contains("already exists, skipping"), "{logs}");
}
