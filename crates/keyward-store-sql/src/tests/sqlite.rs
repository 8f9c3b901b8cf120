//! What only the SQLite backend does: its file, and the checkpoint task.

use keyward_store::{Store, StoreError};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::fresh_sqlite;
use keyward_store::contract;

use super::shared::row;
use crate::common::Backend as _;
use crate::{IfMissing, MigrationName, Migrations, SchemaError, SqliteStore};

#[tokio::test]
async fn reopening_runs_no_migration_twice() {
    let (store, dir) = fresh_sqlite().await;
    store.close().await;
    let again = SqliteStore::open(&dir.path().join("test.db"))
        .await
        .unwrap();
    assert_eq!(again.account_count().await.unwrap(), 0);
    again.close().await;
}

#[tokio::test]
async fn the_checkpoint_task_copies_commits_into_the_database_file() {
    // Arrange: a commit far below the writer's own checkpoint threshold, so only the
    // checkpoint task can move it from the WAL into the database file.
    let (store, dir) = fresh_sqlite().await;
    contract::write_history(&store, vec![row("acc_1", "key_1", 0)]).await;

    // Act: read a copy of the database file alone, without its WAL, until it holds
    // the commit.
    let copy = dir.path().join("copy.db");
    let mut runs_in_file = 0;
    for _ in 0..40 {
        tokio::time::sleep(crate::sqlite::CHECKPOINT_INTERVAL).await;
        std::fs::copy(dir.path().join("test.db"), &copy).unwrap();
        let file = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(&copy).read_only(true))
            .await
            .unwrap();
        // Until the first checkpoint, the file does not even hold the schema.
        runs_in_file = sqlx::query_scalar("select count(*) from request_log_run")
            .fetch_one(&file)
            .await
            .unwrap_or(0);
        file.close().await;
        if runs_in_file == 1 {
            break;
        }
    }

    // Assert
    assert_eq!(
        runs_in_file, 1,
        "the commit never reached the database file in 40 checkpoint intervals"
    );
    store.close().await;
}

#[tokio::test]
async fn opening_a_missing_file_without_create_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let got = SqliteStore::open_with(&path, IfMissing::Fail, Migrations::Apply).await;
    assert!(got.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn require_refuses_pending_migrations_and_every_mode_refuses_unknown_ones() {
    // Arrange: an empty database file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    std::fs::File::create(&path).unwrap();

    // Act, Assert: pending migrations are named under Require, and nothing is applied.
    let schema_error = |got: Result<SqliteStore, StoreError>| match got {
        Err(StoreError::Other(e)) => e.downcast::<SchemaError>().map(|e| *e).unwrap(),
        other => panic!("{other:?}"),
    };
    let pending =
        schema_error(SqliteStore::open_with(&path, IfMissing::Fail, Migrations::Require).await);
    let SchemaError::Pending { pending } = pending else {
        panic!("{pending:?}")
    };
    // Every migration is pending, the first of them the initial schema.
    assert_eq!(
        pending[0],
        MigrationName {
            version: 1,
            name: "initial".into()
        }
    );
    assert_eq!(
        pending.iter().map(|m| m.version).collect::<Vec<_>>(),
        crate::migrate::versions()
    );
    let store = SqliteStore::open_with(&path, IfMissing::Fail, Migrations::Apply)
        .await
        .unwrap();
    store.close().await;
    SqliteStore::open_with(&path, IfMissing::Fail, Migrations::Require)
        .await
        .unwrap()
        .close()
        .await;

    // A migration of a newer keyward.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    let later = crate::migrate::latest_version() + 1;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time) \
         values ($1, 'later', true, x'00', 0)",
    )
    .bind(later)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    for migrations in [Migrations::Apply, Migrations::Require] {
        let newer = schema_error(SqliteStore::open_with(&path, IfMissing::Fail, migrations).await);
        assert_eq!(
            newer,
            SchemaError::Newer {
                unknown: vec![MigrationName {
                    version: later,
                    name: "later".into()
                }],
                latest: crate::migrate::latest_version()
            },
            "{migrations:?}"
        );
    }
}

#[tokio::test]
async fn a_transaction_sqlite_rolled_back_itself_does_not_block_later_writes() {
    // Arrange: what a full disk or an I/O error does mid-transaction: SQLite ends the
    // transaction itself, and the rollback sqlx sends when it is dropped then fails.
    let (store, _dir) = fresh_sqlite().await;
    let mut tx = store.0.begin().await.unwrap();
    sqlx::query("rollback").execute(&mut **tx).await.unwrap();
    drop(tx);

    // Act: the next write transactions, on the one writer connection there is.
    let ready = store.check_ready().await;
    let (account, ..) = contract::seeded(&store, "free").await;

    // Assert
    assert!(ready.is_ok(), "{ready:?}");
    assert!(store.account(&account.account_id).await.unwrap().is_some());
    store.close().await;
}

#[tokio::test]
async fn a_deleted_database_file_makes_writes_and_readiness_unavailable() {
    // Arrange
    let (store, dir) = fresh_sqlite().await;
    assert!(
        store.check_ready().await.is_ok(),
        "ready while the file is there"
    );
    let (account, ..) = contract::seeded(&store, "free").await;

    // Act
    std::fs::remove_file(dir.path().join("test.db")).unwrap();
    let ready = store.check_ready().await;
    let write = store
        .set_plan(
            &account.account_id,
            &keyward_core::PlanName::parse("pro").unwrap(),
            &contract::audit(),
        )
        .await;

    // Assert
    assert!(
        matches!(ready, Err(StoreError::Unavailable(_))),
        "{ready:?}"
    );
    assert!(
        matches!(write, Err(StoreError::Unavailable(_))),
        "a write into the unlinked file would be lost: {write:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_database_file_replaced_under_the_same_name_makes_readiness_unavailable() {
    // Arrange
    let (store, dir) = fresh_sqlite().await;
    let path = dir.path().join("test.db");

    // Act: another file takes the name (a restore copied over by rename, say).
    let other = dir.path().join("other.db");
    std::fs::copy(&path, &other).unwrap();
    std::fs::rename(&other, &path).unwrap();
    let ready = store.check_ready().await;

    // Assert
    let Err(StoreError::Unavailable(why)) = ready else {
        panic!("{ready:?}");
    };
    assert!(why.to_string().contains("test.db"), "names the file: {why}");
    store.close().await;
}

#[test]
fn full_disk_io_cant_open_and_read_only_codes_mean_unavailable() {
    use crate::common::Dialect as _;
    // Primary codes, and extended ones (`primary + 256 * n`).
    for code in [
        "5", "517", "6", "8", "1032", "10", "778", "3850", "13", "14", "270",
    ] {
        assert!(sqlx::Sqlite::is_unavailable_code(code), "{code}");
    }
    // ERROR, CONSTRAINT (and CONSTRAINT_UNIQUE), MISMATCH, something that is no number.
    for code in ["1", "19", "2067", "20", "", "x"] {
        assert!(!sqlx::Sqlite::is_unavailable_code(code), "{code}");
    }
}
