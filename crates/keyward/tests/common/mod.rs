//! Black-box harness: starts the real `keyward` binary on a free port against a fresh
//! database, creates accounts through the CLI and speaks HTTP over a real socket.
//!
//! The database is a fresh SQLite file, or, with `KEYWARD_TEST_BACKEND=postgres`, a fresh
//! schema in the PostgreSQL server at `KEYWARD_TEST_PG_URL` (dropped afterwards), so the
//! same black-box suite runs against both backends. Whether PostgreSQL and Redis are
//! there is decided by `keyward_test_support`: a test that needs a missing one is skipped
//! with a `SKIPPED` line, or fails under `KEYWARD_TEST_REQUIRE_SERVICES=1`; the suite
//! asked to run on PostgreSQL fails without it.
//!
//! Nothing here sleeps for a fixed time: [`eventually`] polls for what a test waits for
//! and returns as soon as it holds.

#![expect(
    clippy::unwrap_used,
    reason = "test harness: a failed unwrap is a failed test"
)]
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_core::AccountId;
use keyward_store::PageQuery;
use keyward_test_support::{PG_URL_VAR, required_service_url, service_url};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A running server and the database it owns.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The database URL the server and the CLI share.
    pub database_url: String,
    /// Everything the server wrote on stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// The PostgreSQL schema to drop at the end, if any.
    pg_schema: Option<PgSchema>,
}

/// A PostgreSQL schema made for one test and dropped with it.
pub struct PgSchema {
    admin_url: String,
    /// The schema's name.
    pub name: String,
    /// A database URL whose connections use only this schema.
    pub url: String,
}

impl PgSchema {
    /// A fresh, migrated schema in the PostgreSQL server at `admin_url`.
    pub fn create(admin_url: String) -> Self {
        let name = format!(
            "kw_bb_{}",
            ulid::Ulid::generate().to_string().to_ascii_lowercase()
        );
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
        let (admin, schema) = (admin_url.clone(), name.clone());
        on_own_runtime(async move {
            let store = keyward_store_sql::PgStore::connect_with_schema(&admin, &schema)
                .await
                .expect("create the test schema");
            store.close().await;
        });
        Self {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (admin, schema) = (self.admin_url.clone(), self.name.clone());
        on_own_runtime(async move {
            use sqlx::Executor as _;
            if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                let _ = pool
                    .execute(sqlx::AssertSqlSafe(format!(
                        "drop schema if exists {schema} cascade"
                    )))
                    .await;
                pool.close().await;
            }
        });
    }
}

/// Runs a future to completion on a runtime of its own thread (callable from sync code
/// inside a test's runtime, such as `Drop`).
fn on_own_runtime<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f);
    })
    .join()
    .expect("helper thread");
}

/// Whether the black-box suite runs against PostgreSQL.
pub fn postgres_backend() -> bool {
    std::env::var("KEYWARD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The store of a server's database, opened directly to check what was persisted.
pub struct TestStore(keyward::Backend);

impl std::ops::Deref for TestStore {
    type Target = dyn keyward_store::Store;
    fn deref(&self) -> &Self::Target {
        match &self.0 {
            keyward::Backend::Sqlite(s) => s.as_ref(),
            keyward::Backend::Postgres(s) => s.as_ref(),
        }
    }
}

impl TestStore {
    /// Closes the pools.
    pub async fn close(&self) {
        self.0.close().await;
    }
}

/// An account made by `keyward accounts create --json`.
#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub key_id: String,
    pub api_key: String,
}

/// The base URL a `serve` stderr line announces: `keyward listening on URL` in text
/// mode, the `listening` line's `address` in JSON mode.
fn listening_address(line: &str) -> Option<String> {
    if let Some(url) = line.strip_prefix("keyward listening on ") {
        return Some(url.to_owned());
    }
    let json: Value = serde_json::from_str(line).ok()?;
    (json["fields"]["message"] == "listening")
        .then(|| {
            json["fields"]["address"]
                .as_str()
                .map(|a| format!("http://{a}"))
        })
        .flatten()
}

impl Server {
    /// A server on a fresh database, without the bootstrap account.
    pub fn start() -> Self {
        Self::start_with(&["--no-bootstrap"])
    }

    /// A server on a fresh database with extra `serve` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg_schema = postgres_backend().then(|| {
            PgSchema::create(required_service_url(
                PG_URL_VAR,
                "KEYWARD_TEST_BACKEND=postgres runs the black-box suite on PostgreSQL",
            ))
        });
        let database_url = match &pg_schema {
            Some(schema) => schema.url.clone(),
            None => format!("sqlite:{}", dir.path().join("keyward.db").display()),
        };
        Self::start_on(database_url, pg_schema, dir, args)
    }

    /// A server on a fresh PostgreSQL schema whatever `KEYWARD_TEST_BACKEND` says, or
    /// `None` when no PostgreSQL answers at `KEYWARD_TEST_PG_URL` (after the `SKIPPED`
    /// line of [`service_url`], which fails the test instead when services are required).
    pub fn start_on_postgres(test: &str, args: &[&str]) -> Option<Self> {
        let schema = PgSchema::create(service_url(PG_URL_VAR, test)?);
        let url = schema.url.clone();
        Some(Self::start_on(
            url,
            Some(schema),
            tempfile::tempdir().expect("temp dir"),
            args,
        ))
    }

    /// A server whose database URL is `url` (a proxy, say) but whose schema is `schema`.
    pub fn start_with_url(url: String, args: &[&str]) -> Self {
        Self::start_on(url, None, tempfile::tempdir().expect("temp dir"), args)
    }

    /// Another server (node) on the same database as `self`.
    pub fn another_node(&self, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_on(self.database_url.clone(), None, dir, args)
    }

    fn start_on(
        database_url: String,
        pg_schema: Option<PgSchema>,
        dir: tempfile::TempDir,
        args: &[&str],
    ) -> Self {
        let mut server = Self {
            pg_schema,
            child: None,
            base: String::new(),
            database_url,
            stderr: Arc::new(Mutex::new(Vec::new())),
            dir,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &self.database_url,
            ])
            .args(&self.extra_args)
            .env("RUST_LOG", "debug")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keyward serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", self.stderr.lock().unwrap()));
        self.base = base;
        self.child = Some(child);
    }

    /// Runs a `keyward` CLI command against this server's database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("KEYWARD_DATABASE_URL", &self.database_url)
            .current_dir(self.dir.path())
            .output()
            .expect("run keyward")
    }

    /// Creates an account through the CLI.
    pub fn create_account(&self, plan: &str) -> Account {
        let out = self.cli(&[
            "accounts", "create", "--name", "test", "--plan", plan, "--json",
        ]);
        assert!(
            out.status.success(),
            "accounts create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        Account {
            account_id: v["account_id"].as_str().unwrap().to_owned(),
            key_id: v["key_id"].as_str().unwrap().to_owned(),
            api_key: v["api_key"].as_str().unwrap().to_owned(),
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGTERM and returns at once; [`Server::wait_exit`] waits for the exit.
    pub fn send_sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits for the server to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_with_timeout(&mut child, within)
    }

    /// SIGKILL: no flush, no drain.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// Starts the server again on the same database (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// The server's stderr so far, joined.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Opens the server's database directly, to check what was persisted.
    pub async fn store(&self) -> TestStore {
        let url = keyward::cli::DatabaseUrl::parse(&self.database_url).expect("database url");
        TestStore(keyward::open_store(&url).await.expect("open store"))
    }

    /// Waits until the request history in storage holds every one of `request_ids` (of
    /// the account `account_id`): metering reaches storage in batches every 250 ms, one
    /// transaction each, so the usage counters of those requests are stored too. Reads
    /// the database directly, so waiting costs the account no request and no rate-limit
    /// slot, and adds no row of its own.
    pub async fn metered(&self, account_id: &str, request_ids: &[String]) {
        let store = self.store().await;
        let account = AccountId::parse(account_id).expect("account id");
        let query = PageQuery {
            limit: 1000,
            ..PageQuery::default()
        };
        eventually(
            METER_WAIT,
            format_args!("the history rows of {request_ids:?} in storage"),
            async || {
                let rows = store
                    .request_history(&account, &query)
                    .await
                    .expect("read request history");
                let stored: HashSet<&str> =
                    rows.iter().map(|(_, r)| r.request_id.as_str()).collect();
                let missing: Vec<&String> = request_ids
                    .iter()
                    .filter(|id| !stored.contains(id.as_str()))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{missing:?} not stored"))
                }
            },
        )
        .await;
        store.close().await;
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() >= timeout {
            // Not left running past the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The schema (if any) goes only once the server is gone.
        self.pg_schema.take();
    }
}

/// A client builder. reqwest's TLS has no crypto provider of its own (the binary's
/// webhook client uses the process's ring provider, which `main` installs), so the test
/// process installs ring too before any client is built. The tests speak plain HTTP, so
/// a client trusts no root: loading the system's for each of hundreds of clients made on
/// a loaded machine would only slow them.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().tls_certs_only([])
}

/// A plain HTTP client.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the documented error form and returns the code.
    pub fn error_code(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let request_id = self.body["request_id"].as_str().expect("request_id");
        assert_eq!(
            self.header("x-request-id"),
            Some(request_id),
            "x-request-id equals request_id"
        );
        assert!(self.body["error"]["message"].is_string(), "{self:?}");
        self.body["error"]["code"].as_str().expect("error.code")
    }

    pub fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or("")
    }
}

/// Sends a request and reads the reply. Every reply is checked against the OpenAPI
/// document: a status the document does not list for the operation fails the test
/// ([`undocumented`]), so every black-box test is also a check of the reference.
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let (client, request) = req.build_split();
    let request = request.expect("a well-formed request");
    let method = request.method().as_str().to_owned();
    let path = request.url().path().to_owned();
    let resp = client.execute(request).await.expect("request");
    let status = resp.status().as_u16();
    if let Some(complaint) = undocumented(&method, &path, status) {
        panic!("{complaint}");
    }
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// The OpenAPI document the server serves at `/openapi.json` (the same binary's, so
/// made once per test process rather than fetched from each server).
fn openapi_document() -> &'static Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_value(keyward_http::openapi::document()).expect("the document as JSON")
    })
}

/// The operation of the document that a request of `method` on `path` reaches, as its
/// path template and operation: the template the router prefers (at each segment a
/// static one over a `{parameter}`), then its `method`. `None` when the request reaches
/// no operation (an unknown path, a method the path does not have, the docs pages).
pub fn operation_of(method: &str, path: &str) -> Option<(String, &'static Value)> {
    let paths = openapi_document()["paths"].as_object()?;
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(Vec<bool>, &String)> = None;
    for template in paths.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut statics = Vec::with_capacity(parts.len());
        let fits = parts.iter().zip(&segments).all(|(part, segment)| {
            let param = part.starts_with('{');
            statics.push(!param);
            if param {
                !segment.is_empty()
            } else {
                part == segment
            }
        });
        if fits && best.as_ref().is_none_or(|(s, _)| statics > *s) {
            best = Some((statics, template));
        }
    }
    let (_, template) = best?;
    let operation = paths[template].get(method.to_ascii_lowercase())?;
    Some((template.clone(), operation))
}

/// Why a reply of `status` to `method` on `path` breaks the OpenAPI document (the
/// operation and status named), or `None` when the document lists that status for the
/// operation, or the request reaches no operation.
pub fn undocumented(method: &str, path: &str, status: u16) -> Option<String> {
    let (template, operation) = operation_of(method, path)?;
    let responses = operation["responses"].as_object()?;
    if responses.contains_key(&status.to_string()) || responses.contains_key("default") {
        return None;
    }
    Some(format!(
        "{method} {template} ({}) answered {status}, which its OpenAPI operation does not \
         document (it documents {:?})",
        operation["operationId"].as_str().unwrap_or("?"),
        responses.keys().collect::<Vec<_>>()
    ))
}

/// GET with a key.
pub async fn get(server: &Server, key: &str, path: &str) -> Reply {
    send(client().get(server.url(path)).header("x-api-key", key)).await
}

/// POST JSON with a key.
pub async fn post(server: &Server, key: &str, path: &str, body: &Value) -> Reply {
    send(
        client()
            .post(server.url(path))
            .header("x-api-key", key)
            .json(body),
    )
    .await
}

/// PATCH JSON with a key.
pub async fn patch(server: &Server, key: &str, path: &str, body: &Value) -> Reply {
    send(
        client()
            .patch(server.url(path))
            .header("x-api-key", key)
            .json(body),
    )
    .await
}

/// DELETE with a key.
pub async fn delete(server: &Server, key: &str, path: &str) -> Reply {
    send(client().delete(server.url(path)).header("x-api-key", key)).await
}

/// Creates a key through the API and returns (`key_id`, secret).
pub async fn create_key(server: &Server, key: &str, body: &Value) -> (String, String) {
    let r = post(server, key, "/v1/api-keys", body).await;
    assert_eq!(r.status, 201, "{r:?}");
    (
        r.body["key_id"].as_str().unwrap().to_owned(),
        r.body["api_key"].as_str().unwrap().to_owned(),
    )
}

/// How long metering may take to reach storage: it is flushed every 250 ms; the rest is
/// room for a loaded machine.
pub const METER_WAIT: Duration = Duration::from_secs(3);

/// How often [`eventually`] checks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a check of [`eventually`] returns: `true`, or `Ok(value)`, when what it awaits
/// holds; `false`, or `Err(what it saw instead)`, when not yet.
pub trait Check {
    /// What [`eventually`] returns once the check holds.
    type Value;
    /// The value, or what was seen instead.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Check for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("the check did not hold".to_owned())
        }
    }
}

impl<T, E: Debug> Check for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// Runs `check` until it holds, every 50 ms, and returns as soon as it does (with the
/// check's value). Once `within` has passed it panics, naming what was `awaited` and what
/// the last check saw instead.
pub async fn eventually<C: Check>(
    within: Duration,
    awaited: impl Display,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let start = Instant::now();
    loop {
        let seen = match check().await.outcome() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < within,
            "waited {within:?} for {awaited}, in vain; the last check saw: {seen}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// 64 zeros: the `prev_hash` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash API.md defines, computed here without keyward's code: SHA-256 of
/// `prev_hash` and the event's fields other than `hash`, keys sorted, no whitespace.
/// (`serde_json`'s `Value` keeps objects sorted, and every value of these events is a
/// string, an integer or `null`, whose compact JSON is already RFC 8785's.)
pub fn expected_hash(event: &Value) -> String {
    let mut fields = event.as_object().unwrap().clone();
    fields.remove("hash");
    let canonical = serde_json::to_string(&Value::Object(fields)).unwrap();
    let prev = event["prev_hash"].as_str().unwrap();
    hex(&Sha256::digest(format!("{prev}{canonical}").as_bytes()))
}

/// Runs `keyward audit verify` with `args`: whether it succeeded, and its output.
pub fn verify(server: &Server, args: &[&str]) -> (bool, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs one statement of plain SQL on the server's database, as someone with access to
/// it (not through keyward) would.
pub async fn tamper(server: &Server, sql: &str) {
    use sqlx::Executor as _;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if server.database_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&server.database_url).await.unwrap();
        pool.execute(sql).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&server.database_url)
            .await
            .unwrap();
        pool.execute(sql).await.unwrap();
        pool.close().await;
    }
}

/// Makes an operator through the CLI: its id and key.
pub fn create_operator(server: &Server, name: &str) -> (String, String) {
    let out = server.cli(&["operators", "create", "--name", name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["operator_id"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}
