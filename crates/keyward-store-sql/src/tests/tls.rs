//! TLS to PostgreSQL, against a server of the test's own with `ssl = on` and a certificate
//! from a CA the test made ([`TlsPostgres`]): `sslmode` and `sslrootcert` in the URL are
//! honoured, and the connection the store uses is encrypted (the server says so in
//! `pg_stat_ssl`).

use keyward_store::{Store as _, contract};
use keyward_test_support::tls::{TestCa, TlsPostgres};

use crate::PgStore;

/// Whether the server sees the store's own connection as TLS.
async fn store_connection_is_tls(store: &PgStore) -> bool {
    sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("read pg_stat_ssl")
}

/// Opens a store on `url`, checks that it works and that its connection is TLS.
async fn assert_serves_over_tls(url: &str) {
    let store = PgStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect with {url}: {e}"));
    assert!(store_connection_is_tls(&store).await, "{url}: not TLS");
    let (account, _, _) = contract::seeded(&store, "free").await;
    assert!(store.account(&account.account_id).await.unwrap().is_some());
    store.close().await;
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let Some(pg) = TlsPostgres::start("sslmode_require_connects_over_tls") else {
        return;
    };
    assert_serves_over_tls(&pg.url("unused", "sslmode=require")).await;
}

#[tokio::test]
async fn a_url_without_sslmode_prefers_tls_when_the_server_offers_it() {
    let Some(pg) =
        TlsPostgres::start("a_url_without_sslmode_prefers_tls_when_the_server_offers_it")
    else {
        return;
    };
    assert_serves_over_tls(&pg.url("unused", "")).await;
}

#[tokio::test]
async fn sslmode_verify_full_with_the_servers_ca_connects_over_tls() {
    let Some(pg) = TlsPostgres::start("sslmode_verify_full_with_the_servers_ca_connects_over_tls")
    else {
        return;
    };
    let query = format!("sslmode=verify-full&sslrootcert={}", pg.ca_path().display());
    assert_serves_over_tls(&pg.url("unused", &query)).await;
}

#[tokio::test]
async fn sslmode_verify_full_with_another_ca_is_refused() {
    let Some(pg) = TlsPostgres::start("sslmode_verify_full_with_another_ca_is_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("another CA").write_to(dir.path());
    for mode in ["verify-full", "verify-ca"] {
        let url = pg.url(
            "unused",
            &format!("sslmode={mode}&sslrootcert={}", other.display()),
        );
        let Err(e) = PgStore::connect(&url).await else {
            panic!("{mode}: a server certificate from another CA was trusted");
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            message = format!("{message}: {inner}");
            source = inner.source();
        }
        assert!(message.contains("certificate"), "{mode}: {message}");
    }
}

#[tokio::test]
async fn a_server_that_closes_before_answering_the_tls_request_is_unavailable() {
    // What a proxy or load balancer in front of a stopped PostgreSQL does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            // Reads the 8-byte TLS request, then closes without a word.
            let mut request = [0_u8; 8];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut socket, &mut request).await;
            drop(socket);
        }
    });
    for mode in ["prefer", "require"] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode={mode}");
        match PgStore::connect(&url).await {
            Err(keyward_store::StoreError::Unavailable(_)) => {}
            Err(e) => panic!("{mode}: {e:?}"),
            Ok(_) => panic!("{mode}: connected to nothing"),
        }
    }
}
