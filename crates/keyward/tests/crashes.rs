//! Crashes and storage faults under load: `kill -9` and SIGTERM during a flood of
//! requests, a full disk, the database file deleted. What was acknowledged must be there
//! afterwards, and a storage fault is a `503` that heals when the fault goes.
//!
//! The kill and SIGTERM tests run on the suite's backend (SQLite, or PostgreSQL with
//! `KEYWARD_TEST_BACKEND=postgres`); the disk and file tests are SQLite's own. The full
//! disk is a tmpfs the test mounts ([`FULL_DISK_SIZE`]): where mounting is not permitted
//! the test prints a `SKIPPED` line (a failure under `KEYWARD_TEST_REQUIRE_SERVICES=1`).
//! Each test prints what it counted and measured.

#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Account, Reply, Server, eventually, get, patch, post, send};
use keyward_core::AccountId;
use keyward_store::{KeyQuery, PageQuery};
use serde_json::json;

/// Concurrent clients of a flood.
const FLOOD_CLIENTS: usize = 16;
/// Acknowledged requests a flood reaches before the crash.
const FLOOD_BEFORE_CRASH: usize = 300;
/// How long a flood may take to reach that, on a loaded machine.
const FLOOD_WAIT: Duration = Duration::from_secs(120);

/// A client whose requests fail rather than hang once the server is gone.
fn flood_client() -> reqwest::Client {
    common::client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// What a flood's clients were answered: one entry per response, as `answer` maps it.
type Answers = Arc<Mutex<Vec<String>>>;

/// Starts `FLOOD_CLIENTS` clients that send `request` in a loop, each keeping what
/// `answer` takes from a response, until a request gets no response (the server is gone).
fn flood(
    make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Clone + Send + 'static,
    answer: fn(&reqwest::Response) -> Option<String>,
) -> (Answers, Vec<tokio::task::JoinHandle<()>>) {
    let answers = Answers::default();
    let tasks = (0..FLOOD_CLIENTS)
        .map(|_| {
            let (make, answers) = (make.clone(), answers.clone());
            tokio::spawn(async move {
                let client = flood_client();
                while let Ok(response) = make(&client).send().await {
                    if let Some(kept) = answer(&response) {
                        answers.lock().unwrap().push(kept);
                    }
                }
            })
        })
        .collect();
    (answers, tasks)
}

/// Waits until a flood has `n` answers.
async fn answered(answers: &Answers, n: usize) {
    eventually(FLOOD_WAIT, format_args!("{n} answers"), async || {
        answers.lock().unwrap().len() >= n
    })
    .await;
}

/// Every key id of the account, read from storage.
async fn stored_key_ids(server: &Server, account: &Account) -> HashSet<String> {
    let store = server.store().await;
    let query = KeyQuery {
        status: None,
        limit: None,
        after: None,
        now: time::OffsetDateTime::now_utc(),
    };
    let account_id = AccountId::parse(&account.account_id).unwrap();
    let (keys, _) = store.list_keys(&account_id, &query).await.unwrap();
    store.close().await;
    keys.iter().map(|k| k.key_id.as_str().to_owned()).collect()
}

/// Every request id of the account's history, read from storage.
async fn stored_request_ids(server: &Server, account: &Account) -> HashSet<String> {
    let store = server.store().await;
    let account_id = AccountId::parse(&account.account_id).unwrap();
    let mut ids = HashSet::new();
    let mut query = PageQuery {
        limit: 1000,
        ..PageQuery::default()
    };
    loop {
        let rows = store.request_history(&account_id, &query).await.unwrap();
        let Some((last, _)) = rows.last() else { break };
        query.before = Some(*last);
        ids.extend(rows.iter().map(|(_, r)| r.request_id.as_str().to_owned()));
    }
    store.close().await;
    ids
}

/// Prints a result line that `cargo test` shows whether the test passes or not.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn create_key_request(
    base: String,
    key: String,
) -> impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Clone + Send + 'static {
    move |client: &reqwest::Client| {
        client
            .post(format!("{base}/v1/api-keys"))
            .header("x-api-key", &key)
            .json(&json!({ "scopes": ["read"] }))
    }
}

/// The `x-request-id` of a 201: the key it created is looked up by listing afterwards.
fn acknowledged_creation(response: &reqwest::Response) -> Option<String> {
    (response.status() == 201)
        .then(|| response.headers().get("x-request-id"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `x-request-id` of any response.
fn any_response(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_answered_201_before_a_kill_9_is_stored_after_restart() {
    // Arrange: a flood of creations; each 201 is counted by its request id, whose
    // `key.created` audit event names the key.
    let mut server = Server::start();
    let account = server.create_account("enterprise");
    let (acked, tasks) = flood(
        create_key_request(server.base.clone(), account.api_key.clone()),
        acknowledged_creation,
    );
    answered(&acked, FLOOD_BEFORE_CRASH).await;

    // Act: kill -9 mid-flood, then start again on the same database.
    server.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    server.restart();

    // Assert: every acknowledged creation's key is stored. A 201's key is found through
    // the audit event its request wrote in the same transaction.
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let store = server.store().await;
    let chain = keyward_store::AuditChain::Account(AccountId::parse(&account.account_id).unwrap());
    let mut created = std::collections::HashMap::new();
    let mut query = PageQuery {
        limit: 1000,
        ..PageQuery::default()
    };
    loop {
        let events = store.audit_log(&chain, &query).await.unwrap();
        let Some(last) = events.last() else { break };
        query.before = Some(last.seq);
        for event in &events {
            if let Some(key_id) = &event.key_id {
                created.insert(event.request_id.clone(), key_id.as_str().to_owned());
            }
        }
    }
    store.close().await;
    let keys = stored_key_ids(&server, &account).await;
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| created.get(*id).is_none_or(|key| !keys.contains(key)))
        .collect();
    report(&format!(
        "kill -9 during creations: {} keys answered 201, {} stored in all, {} of the 201s missing",
        acked.len(),
        keys.len(),
        missing.len()
    ));
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answered_before_a_sigterm_has_its_history_row_after_restart() {
    // Arrange: a flood of validations, each response's request id kept.
    let mut server = Server::start();
    let account = server.create_account("enterprise");
    let (base, key) = (server.base.clone(), account.api_key.clone());
    let (answers, tasks) = flood(
        move |client| {
            client
                .post(format!("{base}/v1/api-keys/validate"))
                .header("x-api-key", &key)
        },
        any_response,
    );
    answered(&answers, FLOOD_BEFORE_CRASH).await;

    // Act: SIGTERM mid-flood; the clients go on until the server stops answering.
    server.send_sigterm();
    for task in tasks {
        task.await.unwrap();
    }
    let status = server.wait_exit(Duration::from_secs(60));
    server.restart();

    // Assert
    let answered: HashSet<String> = answers.lock().unwrap().iter().cloned().collect();
    let stored = stored_request_ids(&server, &account).await;
    let missing = answered.difference(&stored).count();
    report(&format!(
        "SIGTERM during requests: {} requests answered, {} history rows stored, {missing} answered requests without a row",
        answered.len(),
        stored.len()
    ));
    assert!(status.success(), "{status:?}");
    assert_eq!(missing, 0, "answered requests whose history row was lost");
}

/// The size of the tmpfs a full-disk test fills. Once the filler is gone, readiness
/// wants 1 MiB free beside the database, which its file and WAL, grown by the test's
/// writes, must still leave.
const FULL_DISK_SIZE: &str = "8m";

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (such as `2m`), or `None` after the `SKIPPED` line where
    /// mounting is not permitted.
    fn mount(size: &str, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match &mounted {
            Ok(out) if out.status.success() => return Some(Self { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        let what = format!("mounting a {size} tmpfs is not permitted here ({why})");
        assert!(!keyward_test_support::require(false, test, &what));
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of the file system with a file, and returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let bytes = vec![0_u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A server on a SQLite file on `dir`.
fn sqlite_server_in(dir: &Path) -> Server {
    let url = format!("sqlite:{}", dir.join("keyward.db").display());
    Server::start_with_url(url, &["--no-bootstrap"])
}

async fn create(server: &Server, account: &Account) -> Reply {
    post(
        server,
        &account.api_key,
        "/v1/api-keys",
        &json!({ "scopes": ["read"] }),
    )
    .await
}

async fn readyz(server: &Server) -> Reply {
    send(common::client().get(server.url("/readyz"))).await
}

/// Creates keys until one is refused; returns the 201s' key ids and the refusal.
async fn create_until_refused(server: &Server, account: &Account) -> (Vec<String>, Reply) {
    let mut created = Vec::new();
    for _ in 0..5000 {
        let reply = create(server, account).await;
        if reply.status != 201 {
            return (created, reply);
        }
        created.push(reply.body["key_id"].as_str().unwrap().to_owned());
    }
    panic!("5000 keys fitted on a full disk");
}

#[tokio::test]
async fn a_full_disk_is_503_and_writes_succeed_again_once_space_returns() {
    let test = "a_full_disk_is_503_and_writes_succeed_again_once_space_returns";
    let Some(disk) = Tmpfs::mount(FULL_DISK_SIZE, test) else {
        return;
    };
    // Arrange: keys to change later, then the disk filled.
    let server = sqlite_server_in(disk.path());
    let account = server.create_account("enterprise");
    let (to_change, _) =
        common::create_key(&server, &account.api_key, &json!({"scopes": ["read"]})).await;
    let (to_revoke, _) =
        common::create_key(&server, &account.api_key, &json!({"scopes": ["read"]})).await;
    let mut acknowledged = vec![to_change.clone()];
    for _ in 0..20 {
        let reply = create(&server, &account).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        acknowledged.push(reply.body["key_id"].as_str().unwrap().to_owned());
    }
    let filler = disk.fill();

    // Act: creations until one is refused, then the other writes, readiness, and
    // metered requests.
    let (created_while_full, refused) = create_until_refused(&server, &account).await;
    acknowledged.extend(created_while_full);
    let changed_while_full = patch(
        &server,
        &account.api_key,
        &format!("/v1/api-keys/{to_change}"),
        &json!({ "name": "full" }),
    )
    .await;
    let mut ready_while_full = Vec::new();
    for _ in 0..3 {
        ready_while_full.push(readyz(&server).await);
    }
    let mut metered_while_full = Vec::new();
    for _ in 0..5 {
        let r = post(
            &server,
            &account.api_key,
            "/v1/api-keys/validate",
            &json!({}),
        )
        .await;
        metered_while_full.push(r.header("x-request-id").unwrap().to_owned());
    }

    // Assert: the refusal is the documented 503, and so is readiness.
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code(), "SERVICE_UNAVAILABLE");
    assert!(
        server.logs().contains("disk is full"),
        "SQLite's SQLITE_FULL"
    );
    assert!(
        [200, 503].contains(&changed_while_full.status),
        "{changed_while_full:?}"
    );
    for ready in &ready_while_full {
        assert_eq!(ready.status, 503, "{ready:?}");
        assert_eq!(ready.error_code(), "SERVICE_UNAVAILABLE");
    }
    let not_ready_lines = server.logs().matches("storage is not ready").count();
    assert_eq!(not_ready_lines, 1, "logged once, not per probe");

    // Act: space returns; creations are tried until one succeeds.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let first = loop {
        let reply = create(&server, &account).await;
        if reply.status == 201 {
            break reply;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "no write succeeded within 30 s of the space returning"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let recovered_in = freed.elapsed();
    acknowledged.push(first.body["key_id"].as_str().unwrap().to_owned());

    // Assert: every kind of write works again, without a restart, and nothing
    // acknowledged is missing.
    let renamed = patch(
        &server,
        &account.api_key,
        &format!("/v1/api-keys/{to_change}"),
        &json!({ "name": "after" }),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let rotated = post(
        &server,
        &account.api_key,
        &format!("/v1/api-keys/{to_change}/rotate"),
        &json!({}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let revoked = common::delete(
        &server,
        &account.api_key,
        &format!("/v1/api-keys/{to_revoke}"),
    )
    .await;
    assert_eq!(revoked.status, 204, "{revoked:?}");
    // Readiness asks for free space, which the file system reports once every holder
    // of the filler has let go of it.
    eventually(Duration::from_secs(10), "ready again", async || {
        let ready = readyz(&server).await;
        if ready.status == 200 {
            return Ok(());
        }
        let df = Command::new("df")
            .arg("-k")
            .arg(disk.path())
            .output()
            .unwrap();
        Err(format!(
            "{ready:?}; {}",
            String::from_utf8_lossy(&df.stdout)
        ))
    })
    .await;
    let stored = stored_key_ids(&server, &account).await;
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    server
        .metered(&account.account_id, &metered_while_full)
        .await;
    report(&format!(
        "full disk: {} keys answered 201 (before the disk filled, while full, and once space returned), {} of them missing; first successful write {:?} after the space returned",
        acknowledged.len(),
        lost.len(),
        recovered_in
    ));
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(server.logs().contains("storage is ready again"));
}

#[tokio::test]
async fn metering_that_cannot_be_stored_at_shutdown_is_retried_until_space_returns() {
    let test = "metering_that_cannot_be_stored_at_shutdown_is_retried_until_space_returns";
    let Some(disk) = Tmpfs::mount(FULL_DISK_SIZE, test) else {
        return;
    };
    // Arrange: a full disk, and requests whose history can't be stored.
    let mut server = sqlite_server_in(disk.path());
    let account = server.create_account("enterprise");
    let filler = disk.fill();
    let _ = create_until_refused(&server, &account).await;
    // Requests until a metering write fails: SQLite fits the first batches into WAL pages
    // a checkpoint has freed, so how many requests that takes varies from run to run.
    let failed = "metering batch write failed";
    let mut requests = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.logs().contains(failed) {
        assert!(
            Instant::now() < deadline,
            "no metering write failed within 60 s on a full disk, after {} requests",
            requests.len()
        );
        for _ in 0..20 {
            let r = post(
                &server,
                &account.api_key,
                "/v1/api-keys/validate",
                &json!({}),
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            requests.push(r.header("x-request-id").unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Act: SIGTERM; once the final flush has failed too, the space returns.
    server.send_sigterm();
    eventually(
        Duration::from_secs(30),
        "a failed final flush",
        async || {
            let logs = server.logs();
            logs.find("flushing metering")
                .is_some_and(|at| logs[at..].contains(failed))
        },
    )
    .await;
    std::fs::remove_file(&filler).unwrap();
    let status = server.wait_exit(Duration::from_secs(30));
    server.restart();

    // Assert
    assert!(status.success(), "{status:?}");
    let stored = stored_request_ids(&server, &account).await;
    let lost = requests.iter().filter(|id| !stored.contains(*id)).count();
    report(&format!(
        "full disk at shutdown: {} requests answered, {lost} history rows lost",
        requests.len()
    ));
    assert_eq!(lost, 0, "{}", server.logs());
}

#[tokio::test]
async fn a_deleted_database_file_makes_readiness_and_writes_503() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server_in(dir.path());
    let account = server.create_account("enterprise");
    assert_eq!(readyz(&server).await.status, 200);

    // Act
    std::fs::remove_file(dir.path().join("keyward.db")).unwrap();
    let mut ready = Vec::new();
    for _ in 0..3 {
        ready.push(readyz(&server).await);
    }
    let created = create(&server, &account).await;
    let listed = get(&server, &account.api_key, "/v1/api-keys").await;

    // Assert: not ready, and a write is refused rather than acknowledged into a file
    // that the next start would not find; reads go on from the open file.
    for ready in &ready {
        assert_eq!(ready.status, 503, "{ready:?}");
        assert_eq!(ready.error_code(), "SERVICE_UNAVAILABLE");
    }
    assert_eq!(created.status, 503, "{created:?}");
    assert_eq!(created.error_code(), "SERVICE_UNAVAILABLE");
    assert_eq!(listed.status, 200, "{listed:?}");
    let logs = server.logs();
    assert_eq!(logs.matches("storage is not ready").count(), 1, "{logs}");
    assert!(logs.contains("keyward.db"), "the log names the file");
}
