//! Black-box tests of running keyward as an operator does: `--help` without secrets,
//! `migrate`, `serve --no-migrate`, a schema newer than the binary, `backup` while
//! serving, operator commands that never create a database, the key prefix across
//! commands and changes, failing fast when PostgreSQL refuses, and the files of
//! `deploy/`. Real binary, real databases.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory as _;
use common::{BIN, Server, create_key, eventually, get};
use serde_json::json;
use sqlx::Connection as _;

/// Passwords put in the environment of every `--help` run.
const DB_PASSWORD: &str = "db-pw-4a7c1e";
const REDIS_PASSWORD: &str = "redis-pw-9f3b2d";

/// Every subcommand's path (`["accounts", "create"]`, …), the top level included.
fn command_paths(command: &clap::Command, path: &[String], out: &mut Vec<Vec<String>>) {
    out.push(path.to_vec());
    for sub in command.get_subcommands() {
        let mut next = path.to_vec();
        next.push(sub.get_name().to_owned());
        command_paths(sub, &next, out);
    }
}

#[test]
fn help_of_every_command_names_the_variables_but_never_shows_their_passwords() {
    // Arrange
    let mut paths = Vec::new();
    command_paths(&keyward::cli::Cli::command(), &[], &mut paths);
    assert!(paths.len() >= 8, "{paths:?}");
    let mut named_database_variable = false;

    for path in &paths {
        // Act
        let out = Command::new(BIN)
            .args(path)
            .arg("--help")
            .env(
                "KEYWARD_DATABASE_URL",
                format!("postgres://keyward:{DB_PASSWORD}@db.internal:5432/keyward"),
            )
            .env(
                "KEYWARD_REDIS_URL",
                format!("redis://:{REDIS_PASSWORD}@redis.internal:6379"),
            )
            .output()
            .expect("run keyward --help");

        // Assert
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{path:?} --help: {text}");
        for secret in [DB_PASSWORD, REDIS_PASSWORD] {
            assert!(
                !text.contains(secret),
                "{path:?} --help shows {secret}: {text}"
            );
        }
        named_database_variable |= text.contains("[env: KEYWARD_DATABASE_URL]");
    }
    assert!(
        named_database_variable,
        "--help still names KEYWARD_DATABASE_URL"
    );
}

/// Runs `keyward serve` on `url` (with `args`) and expects it to refuse to start:
/// returns its standard error.
fn serve_refuses(url: &str, args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyward serve");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("keyward serve on {url} did not refuse to start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "serve started on {url}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Runs a `keyward` command with `url` in `KEYWARD_DATABASE_URL`, from `dir`.
fn keyward_in(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("KEYWARD_DATABASE_URL", url)
        .current_dir(dir)
        .output()
        .expect("run keyward")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn serve_no_migrate_refuses_pending_migrations_until_keyward_migrate_applies_them() {
    // Arrange: a SQLite database that exists but has no schema yet.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let url = format!("sqlite:{}", path.display());
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("create table unrelated (x integer)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // Act, Assert
    let refused = serve_refuses(&url, &["--no-migrate", "--no-bootstrap"]);
    assert!(refused.contains("keyward migrate"), "{refused}");
    assert!(refused.contains("1 (initial)"), "{refused}");

    let migrated = keyward_in(dir.path(), &url, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(
        text(&migrated.stdout).contains(&format!(
            "schema at version {}",
            keyward_store_sql::latest_version()
        )),
        "{}",
        text(&migrated.stdout)
    );

    let server = Server::start_with_url(url.clone(), &["--no-migrate", "--no-bootstrap"]);
    let acct = server.create_account("pro");
    assert_eq!(
        get(&server, &acct.api_key, "/v1/api-keys").await.status,
        200
    );
}

#[tokio::test]
async fn keyward_migrate_alone_creates_and_migrates_a_new_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite:fresh.db";
    let out = keyward_in(dir.path(), url, &["migrate", "--key-prefix", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("fresh.db").exists());
    let list = keyward_in(dir.path(), url, &["accounts", "list", "--json"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(
        text(&list.stdout),
        "",
        "no account yet, no bootstrap by migrate"
    );
}

/// Inserts a successful migration row this binary does not know into the server's
/// database, as a newer keyward would have.
async fn add_future_migration(database_url: &str) {
    const INSERT: &str = "insert into _sqlx_migrations \
        (version, description, success, checksum, execution_time) \
        values (9999, 'from the future', true, $1, 0)";
    let checksum = vec![0u8];
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .expect("connect");
        sqlx::query(INSERT)
            .bind(checksum)
            .execute(&mut conn)
            .await
            .expect("insert");
        conn.close().await.expect("close");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("connect");
        sqlx::query(INSERT)
            .bind(checksum)
            .execute(&mut conn)
            .await
            .expect("insert");
        conn.close().await.expect("close");
    }
}

#[tokio::test]
async fn an_older_binary_refuses_a_schema_migrated_by_a_newer_one_naming_the_versions() {
    // Arrange
    let mut server = Server::start();
    let acct = server.create_account("pro");
    assert_eq!(server.sigterm().code(), Some(0));
    add_future_migration(&server.database_url).await;

    // Act, Assert: serve (with or without --no-migrate), migrate and operator commands
    // all refuse, and say which versions they do not know.
    for args in [&["--no-bootstrap"][..], &["--no-bootstrap", "--no-migrate"]] {
        let refused = serve_refuses(&server.database_url, args);
        assert!(refused.contains("newer than this keyward"), "{refused}");
        assert!(refused.contains("9999 (from the future)"), "{refused}");
        let latest = format!("knows up to {}", keyward_store_sql::latest_version());
        assert!(refused.contains(&latest), "{refused}");
    }
    for command in [
        &["migrate"][..],
        &["accounts", "list"],
        &["accounts", "set-plan", &acct.account_id, "free"],
        &["accounts", "create", "--name", "n"],
    ] {
        let out = server.cli(command);
        assert!(!out.status.success(), "{command:?} ran on a newer schema");
        assert!(
            text(&out.stderr).contains("9999 (from the future)"),
            "{command:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn operator_commands_on_a_missing_sqlite_file_fail_naming_it_and_create_nothing() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let account = "acct_01JD0000000000000000000000";
    let commands: [&[&str]; 5] = [
        &["accounts", "list"],
        &["accounts", "list", "--json"],
        &["accounts", "set-plan", account, "pro"],
        &["accounts", "set-limits", account, "--per-day", "5"],
        &["backup", "--to", "copy.db"],
    ];

    for command in commands {
        // Act
        let out = keyward_in(dir.path(), "sqlite:missing.db", command);

        // Assert
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{command:?} succeeded");
        assert!(
            stderr.contains("no SQLite database at missing.db"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&dir.path().join("missing.db").display().to_string()),
            "{command:?} names the absolute path it looked at: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{command:?} created {left:?}");
    }
    let serve_no_migrate = serve_refuses(
        &format!("sqlite:{}", dir.path().join("missing.db").display()),
        &["--no-migrate"],
    );
    assert!(
        serve_no_migrate.contains("no SQLite database at"),
        "{serve_no_migrate}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // `accounts create` makes the database it is pointed at.
    let created = keyward_in(
        dir.path(),
        "sqlite:missing.db",
        &["accounts", "create", "--name", "first", "--json"],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(dir.path().join("missing.db").exists());
}

#[tokio::test]
async fn no_account_errors_name_the_database_they_searched() {
    let server = Server::start();
    let missing = "acct_01JD0000000000000000000000";
    let redacted = keyward::cli::DatabaseUrl::parse(&server.database_url)
        .unwrap()
        .redacted();
    for command in [
        &["accounts", "set-plan", missing, "pro"][..],
        &["accounts", "set-limits", missing, "--per-day", "5"],
    ] {
        let out = server.cli(command);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("no account {missing} in {redacted}")),
            "{command:?}: {stderr}"
        );
    }
}

#[test]
fn no_account_messages_never_show_a_database_password() {
    let url = keyward::cli::DatabaseUrl::parse("postgres://keyward:s3cret@db:5432/k").unwrap();
    assert!(!url.redacted().contains("s3cret"));
}

#[tokio::test]
async fn keys_issued_under_an_earlier_prefix_keep_working_after_the_prefix_changes() {
    // Arrange: keys made under the default prefix, by the CLI and by the API.
    let mut first = Server::start();
    let acct = first.create_account("enterprise");
    assert!(acct.api_key.starts_with("kw_"), "{}", acct.api_key);
    let (_, api_made) =
        create_key(&first, &acct.api_key, &json!({"scopes": ["read", "write"]})).await;
    assert_eq!(first.sigterm().code(), Some(0));

    // Act: the same database served under another prefix.
    let second = first.another_node(&["--no-bootstrap", "--key-prefix", "acme"]);

    // Assert: old keys work, new ones get the new prefix, from the API and the CLI.
    for old in [&acct.api_key, &api_made] {
        let r = get(&second, old, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "{old}: {r:?}");
    }
    let (_, new_key) = create_key(&second, &acct.api_key, &json!({"scopes": ["read"]})).await;
    assert!(new_key.starts_with("acme_"), "{new_key}");
    assert_eq!(get(&second, &new_key, "/v1/api-keys").await.status, 200);

    let out = second.cli(&[
        "accounts",
        "create",
        "--name",
        "acme",
        "--key-prefix",
        "acme",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_key = printed["api_key"].as_str().unwrap();
    assert!(cli_key.starts_with("acme_"), "{cli_key}");
    assert_eq!(get(&second, cli_key, "/v1/api-keys").await.status, 200);

    // The variable works as well as the flag, before or after the subcommand.
    let by_env = Command::new(BIN)
        .args(["accounts", "create", "--name", "env", "--json"])
        .env("KEYWARD_DATABASE_URL", &second.database_url)
        .env("KEYWARD_KEY_PREFIX", "acme")
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", text(&by_env.stderr));
    assert!(text(&by_env.stdout).contains("\"acme_"));
    let before = second.cli(&[
        "accounts",
        "--key-prefix",
        "acme",
        "create",
        "--name",
        "n",
        "--json",
    ]);
    assert!(
        text(&before.stdout).contains("\"acme_"),
        "{}",
        text(&before.stderr)
    );

    // A malformed prefix is still malformed, whatever the checksum.
    let bad = format!("Acme_{}", &cli_key[5..]);
    let r = get(&second, &bad, "/v1/api-keys").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["details"]["reason"], "malformed");
}

#[tokio::test]
async fn a_backup_taken_while_the_server_writes_restores_with_every_acknowledged_key() {
    // Arrange: a SQLite server (whatever the suite's backend) taking key creations.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("live.db").display());
    let server = Server::start_with_url(url.clone(), &["--no-bootstrap"]);
    let acct = server.create_account("enterprise");
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(
            create_key(&server, &acct.api_key, &json!({"scopes": ["read"]}))
                .await
                .1,
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (base, key, stop) = (server.base.clone(), acct.api_key.clone(), stop.clone());
        async move {
            let client = common::client();
            let mut made = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(format!("{base}/v1/api-keys"))
                    .header("x-api-key", &key)
                    .json(&json!({"scopes": ["read"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                made += 1;
            }
            made
        }
    });
    // Let the writer get going before the copy starts.
    let before_len = before.len();
    eventually(
        Duration::from_secs(10),
        "writes during the backup",
        async || {
            let store = server.store().await;
            let count = store
                .list_accounts()
                .await
                .map(|accounts| accounts.iter().map(|a| a.key_count).sum::<u64>());
            store.close().await;
            count.is_ok_and(|n| n > u64::try_from(before_len).unwrap() + 5)
        },
    )
    .await;

    // Act
    let copy = dir.path().join("copy.db");
    let out = server.cli(&["backup", "--to", copy.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made_meanwhile = writer.await.unwrap();

    // Assert
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(made_meanwhile > 0);
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&copy)
            .read_only(true),
    )
    .await
    .unwrap();
    let integrity: String = sqlx::query_scalar("pragma integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_eq!(integrity, "ok");

    let again = server.cli(&["backup", "--to", copy.to_str().unwrap()]);
    assert!(!again.status.success(), "a backup never overwrites");
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    drop(server);
    let restored = Server::start_with_url(
        format!("sqlite:{}", copy.display()),
        &["--no-bootstrap", "--no-migrate"],
    );
    for key in before.iter().chain([&acct.api_key]) {
        let r = get(&restored, key, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "{key} after restore: {r:?}");
    }
}

#[test]
fn backup_of_a_postgresql_database_points_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward_in(
        dir.path(),
        "postgres://keyward:s3cret@127.0.0.1:1/keyward",
        &["backup", "--to", "copy.sql"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A TCP proxy to PostgreSQL that the test can cut: after [`Proxy::cut`], its port
/// refuses new connections and the connections it carried are closed, as when the
/// database goes down, while the machine's PostgreSQL keeps running.
struct Proxy {
    port: u16,
    stop: tokio_util::sync::CancellationToken,
}

impl Proxy {
    async fn to(upstream: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let (mut client, _) = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                    };
                    let upstream = upstream.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            () = stop.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            }
        });
        Self { port, stop }
    }

    /// Closes the listening socket and every carried connection.
    fn cut(&self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_their_503_within_a_second_when_postgresql_refuses_connections() {
    // Arrange: a node whose every connection to PostgreSQL goes through a proxy.
    let test = "requests_get_their_503_within_a_second_when_postgresql_refuses_connections";
    let Some(admin) = keyward_test_support::service_url(keyward_test_support::PG_URL_VAR, test)
    else {
        return;
    };
    let schema = common::PgSchema::create(admin.clone());
    let options: sqlx::postgres::PgConnectOptions = admin.parse().expect("PostgreSQL URL");
    let proxy = Proxy::to((options.get_host().to_owned(), options.get_port())).await;
    let (before_host, after_host) = schema.url.split_once("://").expect("scheme");
    let (user, rest) = after_host.split_once('@').unwrap_or(("", after_host));
    let path = &rest[rest.find('/').expect("a database name")..];
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let proxied = format!("{before_host}://{user}127.0.0.1:{}{path}", proxy.port);
    let server = Server::start_with_url(proxied, &["--no-bootstrap"]);
    let acct = server.create_account("enterprise");
    assert_eq!(
        get(&server, &acct.api_key, "/v1/api-keys").await.status,
        200
    );

    // Act: PostgreSQL now refuses every new connection.
    proxy.cut();

    // Assert: once the node has noticed, reads and writes each get their 503 in the
    // error form within a second, not after the pool's 5 s acquire timeout.
    let cut_at = Instant::now();
    eventually(Duration::from_secs(10), "a first 503", async || {
        get(&server, &acct.api_key, "/v1/api-keys").await.status == 503
    })
    .await;
    let first_503_after = cut_at.elapsed();
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for (what, request) in [
            ("list", common::client().get(server.url("/v1/api-keys"))),
            (
                "create",
                common::client()
                    .post(server.url("/v1/api-keys"))
                    .json(&json!({"scopes": ["read"]})),
            ),
        ] {
            let started = Instant::now();
            let r = common::send(request.header("x-api-key", &acct.api_key)).await;
            let took = started.elapsed();
            assert_eq!(r.status, 503, "{what} #{round}: {r:?}");
            assert_eq!(r.error_code(), "SERVICE_UNAVAILABLE");
            assert!(
                took < Duration::from_secs(1),
                "{what} #{round} waited {took:?} for its 503"
            );
            slowest = slowest.max(took);
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "PostgreSQL refusing: first 503 {first_503_after:?} after the cut, slowest of six {slowest:?}\n"
        )
        .as_bytes(),
    );
    drop(server);
    drop(schema);
}

/// The repository's `deploy/` folder.
fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The first of `names` that runs (`NAME ARG` exits 0), as a command.
fn program(names: &[&str], arg: &str) -> Option<String> {
    names
        .iter()
        .find(|name| {
            Command::new(name)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|name| (*name).to_owned())
}

#[test]
fn the_nginx_load_balancer_example_passes_nginx_t() {
    // Arrange: the example with its system paths (certificate, logs) moved into a
    // directory of the test's own, in a main file whose pid and logs are there too, so
    // that the machine's nginx and its files are never touched.
    let test = "the_nginx_load_balancer_example_passes_nginx_t";
    let nginx = program(&["nginx", "/usr/sbin/nginx"], "-v");
    if !keyward_test_support::require(
        nginx.is_some(),
        test,
        "nginx is not installed (Debian package nginx-core; .ci/run installs it)",
    ) {
        return;
    }
    let nginx = nginx.expect("checked");
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().display().to_string();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=keys.example.com", "-keyout"])
        .arg(dir.path().join("privkey.pem"))
        .arg("-out")
        .arg(dir.path().join("fullchain.pem"))
        .output()
        .expect("run openssl to make a test certificate");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let example = std::fs::read_to_string(deploy_dir().join("nginx-load-balancer.conf")).unwrap();
    let site = example
        .replace("/etc/keyward/tls/", &format!("{tmp}/"))
        .replace("/var/log/nginx/", &format!("{tmp}/"));
    for line in site.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for system in ["/etc/", "/var/", "/run/", "/usr/"] {
            assert!(
                !line.contains(system),
                "the example's {line:?} names a system path the test does not move: update this test"
            );
        }
    }
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    let main = format!(
        "pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\nevents {{}}\nhttp {{\n\
         access_log {tmp}/access.log;\nclient_body_temp_path {tmp}/body;\n\
         proxy_temp_path {tmp}/proxy;\nfastcgi_temp_path {tmp}/fastcgi;\n\
         uwsgi_temp_path {tmp}/uwsgi;\nscgi_temp_path {tmp}/scgi;\n\
         include {tmp}/site.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();

    // Act
    let out = Command::new(&nginx)
        .arg("-t")
        .arg("-p")
        .arg(format!("{tmp}/"))
        .arg("-e")
        .arg(format!("{tmp}/error.log"))
        .arg("-c")
        .arg(format!("{tmp}/nginx.conf"))
        .output()
        .expect("run nginx -t");

    // Assert
    let said = text(&out.stderr);
    assert!(out.status.success(), "nginx -t: {said}");
    assert!(said.contains("test is successful"), "{said}");
    assert!(!said.contains("[warn]"), "nginx -t warns: {said}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_and_outlasts_the_drain() {
    let unit = std::fs::read_to_string(deploy_dir().join("keyward.service")).unwrap();

    // What the unit promises, checked whether or not systemd is here.
    let setting = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("keyward.service has no {key}="))
    };
    assert_eq!(setting("KillSignal"), "SIGTERM");
    let stop: u64 = setting("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > 30,
        "TimeoutStopSec={stop}s must outlast the 30 s drain"
    );
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == hardening),
            "keyward.service lacks {hardening}"
        );
    }
    assert!(
        unit.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("KEYWARD_DATABASE_URL") && !l.contains("KEYWARD_REDIS_URL")),
        "URLs with passwords belong in the EnvironmentFile, not the unit"
    );

    let Some(analyze) = program(&["systemd-analyze"], "--version") else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED systemd-analyze verify of deploy/keyward.service: systemd-analyze is not installed; that part did not run\n",
        );
        return;
    };
    // `verify` needs ExecStart's program to exist: the binary under test stands in for
    // /usr/local/bin/keyward.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("keyward.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/keyward", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // Unknown keys and bad values are only warnings there: none may name the unit.
    assert!(
        !said.contains("keyward.service"),
        "systemd-analyze verify warns: {said}"
    );
}
