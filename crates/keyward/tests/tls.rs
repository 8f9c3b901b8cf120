//! TLS to PostgreSQL and Redis, black box: the real `keyward` binary against servers the
//! test starts for itself with a certificate from a CA it made (keyward-test-support's
//! `tls`), never the machine's own. Where `initdb`/`pg_ctl` or `redis-server` are missing a
//! test prints its `SKIPPED` line, or fails under `KEYWARD_TEST_REQUIRE_SERVICES=1`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, get};
use keyward_test_support::tls::{TestCa, TlsPostgres, TlsRedis};

/// A password the servers never check (trust authentication): it must never be printed.
const PASSWORD: &str = "pw-never-printed-4d1f";

/// How many of keyward's connections the server sees over TLS, and how many without it.
async fn keyward_connections(pg: &TlsPostgres) -> (i64, i64) {
    let pool = sqlx::PgPool::connect(&pg.url(PASSWORD, "sslmode=disable"))
        .await
        .expect("connect to check pg_stat_ssl");
    let counts = sqlx::query_as(
        "select count(*) filter (where s.ssl), count(*) filter (where not s.ssl) \
         from pg_stat_activity a join pg_stat_ssl s using (pid) \
         where a.application_name = 'keyward'",
    )
    .fetch_one(&pool)
    .await
    .expect("read pg_stat_ssl");
    pool.close().await;
    counts
}

/// Starts keyward on `url`, uses it through the CLI and HTTP, and checks that every
/// connection it holds to the server is TLS.
async fn assert_serves_over_tls(pg: &TlsPostgres, url: String) {
    let server = Server::start_with_url(url, &["--no-bootstrap"]);
    let account = server.create_account("enterprise");
    assert_eq!(
        get(&server, &account.api_key, "/v1/api-keys").await.status,
        200
    );
    let (tls, plain) = keyward_connections(pg).await;
    assert!(tls > 0, "no connection of keyward's is TLS");
    assert_eq!(plain, 0, "keyward holds connections without TLS");
    assert!(!server.logs().contains(PASSWORD), "the password was logged");
}

#[tokio::test]
async fn keyward_serves_from_postgresql_over_tls_with_sslmode_require() {
    let Some(pg) =
        TlsPostgres::start("keyward_serves_from_postgresql_over_tls_with_sslmode_require")
    else {
        return;
    };
    assert_serves_over_tls(&pg, pg.url(PASSWORD, "sslmode=require")).await;
}

#[tokio::test]
async fn keyward_serves_from_postgresql_with_verify_full_and_the_servers_ca() {
    let Some(pg) =
        TlsPostgres::start("keyward_serves_from_postgresql_with_verify_full_and_the_servers_ca")
    else {
        return;
    };
    let query = format!("sslmode=verify-full&sslrootcert={}", pg.ca_path().display());
    assert_serves_over_tls(&pg, pg.url(PASSWORD, &query)).await;
}

#[test]
fn verify_full_with_another_ca_stops_keyward_at_start_with_a_clear_error() {
    let Some(pg) =
        TlsPostgres::start("verify_full_with_another_ca_stops_keyward_at_start_with_a_clear_error")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let other = TestCa::new("another CA").write_to(dir.path());
    let url = pg.url(
        PASSWORD,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let mut child = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-bootstrap"])
        .args(["--database-url", &url])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyward serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyward kept running with an untrusted server certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = child.wait_with_output().expect("stderr").stderr;
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot open the PostgreSQL database at postgres://postgres:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password was printed: {stderr}"
    );
}

#[tokio::test]
async fn shared_rate_limits_are_counted_in_redis_over_rediss_with_a_private_ca() {
    let Some(redis) =
        TlsRedis::start("shared_rate_limits_are_counted_in_redis_over_rediss_with_a_private_ca")
    else {
        return;
    };
    let ca = redis.ca_path().display().to_string();
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--redis-url",
        &redis.url(),
        "--redis-ca-cert",
        &ca,
    ]);
    let account = server.create_account("free");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&server, &account.api_key, "/v1/api-keys").await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );

    // The counts are in the TLS-only Redis, not in the node's local fallback.
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(redis.ca().ca_pem.clone().into_bytes()),
        },
    )
    .expect("client");
    let mut conn = client.get_connection().expect("connect over TLS");
    let counted: Option<i64> = redis::cmd("HGET")
        .arg(format!("keyward:rl:{{{}}}:m:c", account.account_id))
        .arg("n")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(counted, Some(10), "{}", server.logs());
}

#[test]
fn a_redis_ca_file_that_cannot_be_read_stops_keyward_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing-ca.pem");
    let out = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-bootstrap"])
        .args(["--redis-url", "rediss://127.0.0.1:1"])
        .arg("--redis-ca-cert")
        .arg(&missing)
        .arg("--database-url")
        .arg(dir.path().join("keyward.db"))
        .current_dir(dir.path())
        .output()
        .expect("run keyward serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot read the Redis CA certificates at")
            && stderr.contains("missing-ca.pem"),
        "{stderr}"
    );
}
