//! Tests of both backends: the storage contract and the shared behaviour, one test per
//! scenario and backend; the two schemas compared; each backend's own behaviour.
//!
//! SQLite runs on a temporary file per test. PostgreSQL runs in a fresh schema per test
//! of the server at `KEYWARD_TEST_PG_URL` ([`keyward_test_support::service_url`]: skipped
//! with a shown line when it is missing, a failure under `KEYWARD_TEST_REQUIRE_SERVICES=1`),
//! dropped when the test ends; schemas left by a crashed run are swept after an hour.

use std::time::{Duration, SystemTime};

use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr};

use crate::common::{Backend, Get};
use crate::{PgStore, SqlStore, SqliteStore};

/// Stamps one `#[tokio::test]` per named function of module `$module` and per backend
/// (`sqlite::name`, `postgres::name`), each on a fresh store, or on two stores on one
/// fresh database after `two_nodes;`: a failure names its scenario and its backend.
macro_rules! on_both_backends {
    ($($module:ident)::+; $($name:ident),* $(,)?) => {
        on_both_backends!(@stamp one; $($module)::+; $($name),*);
    };
    (two_nodes; $($module:ident)::+; $($name:ident),* $(,)?) => {
        on_both_backends!(@stamp two; $($module)::+; $($name),*);
    };
    (@run one, $scenario:path, $store:ident, $open_other:expr) => {
        $scenario(&$store).await
    };
    (@run two, $scenario:path, $store:ident, $open_other:expr) => {{
        let other = $open_other.await;
        $scenario(&$store, &other).await;
        other.close().await;
    }};
    (@stamp $nodes:ident; $($module:ident)::+; $($name:ident),*) => {
        mod sqlite {
            use $($module)::+ as scenarios;
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = $crate::tests::fresh_sqlite().await;
                    on_both_backends!(@run $nodes, scenarios::$name, store, async {
                        let path = _dir.path().join("test.db");
                        $crate::SqliteStore::open(&path).await.unwrap()
                    });
                    store.close().await;
                }
            )*
        }
        mod postgres {
            use $($module)::+ as scenarios;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::tests::TestDb::connect(stringify!($name)).await else {
                        return;
                    };
                    let (store, _schema) = db.fresh().await;
                    on_both_backends!(@run $nodes, scenarios::$name, store, db.open(&_schema));
                    store.close().await;
                }
            )*
        }
    };
}

mod contract {
    keyward_store::for_each_scenario!(on_both_backends!(keyward_store::contract;));

    mod two_nodes {
        keyward_store::for_each_two_node_scenario!(on_both_backends!(
            two_nodes; keyward_store::contract;
        ));
    }
}

mod postgres;
mod schema;
mod shared;
mod sqlite;
mod tls;

/// A migrated, empty SQLite store in a temporary directory (gone with it).
pub(crate) async fn fresh_sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("test.db")).await;
    (store.unwrap(), dir)
}

/// The test PostgreSQL server, for tests that open stores in schemas of their own.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) admin: PgPool,
}

/// The prefix of every test schema, which [`sweep_stale_schemas`] looks for.
const SCHEMA_PREFIX: &str = "kw_test_";

impl TestDb {
    /// `None` (after the line that says so) when no PostgreSQL server is configured.
    pub(crate) async fn connect(test: &str) -> Option<Self> {
        let url = keyward_test_support::service_url(keyward_test_support::PG_URL_VAR, test)?;
        let admin = PgPool::connect(&url).await.unwrap();
        sweep_stale_schemas(&admin).await;
        Some(Self { url, admin })
    }

    /// A name for a new schema, dropped when the guard drops.
    pub(crate) fn new_schema(&self) -> Schema {
        let ulid = ulid::Ulid::generate().to_string().to_lowercase();
        Schema {
            url: self.url.clone(),
            name: format!("{SCHEMA_PREFIX}{ulid}"),
        }
    }

    /// A migrated, empty store in a schema of its own.
    pub(crate) async fn fresh(&self) -> (PgStore, Schema) {
        let schema = self.new_schema();
        let store = self.open(&schema).await;
        (store, schema)
    }

    /// A store (a node, with its own pool) on `schema`. Its pool waits a minute for a
    /// connection rather than the service's five seconds: the scenarios check what storage
    /// holds, and some put hundreds of concurrent writes on ten connections, which a loaded
    /// machine can keep waiting longer than five seconds.
    pub(crate) async fn open(&self, schema: &Schema) -> PgStore {
        let store = PgStore::open_in_schema(&self.url, &schema.name, Duration::from_secs(60)).await;
        store.unwrap()
    }
}

/// A test's PostgreSQL schema, dropped with everything in it when this drops.
pub(crate) struct Schema {
    url: String,
    pub(crate) name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        // On a runtime of its own thread: `Drop` can't await, and may run inside the
        // test's runtime.
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            runtime.unwrap().block_on(async {
                let admin = PgPool::connect(&url).await.unwrap();
                drop_schema(&admin, &name).await;
                admin.close().await;
            });
        });
        if dropped.join().is_err() && !std::thread::panicking() {
            panic!("could not drop the test schema {}", self.name);
        }
    }
}

async fn drop_schema(admin: &PgPool, schema: &str) {
    assert!(schema.starts_with(SCHEMA_PREFIX), "{schema}");
    let drop = format!("drop schema if exists {schema} cascade");
    sqlx::query(AssertSqlSafe(drop))
        .execute(admin)
        .await
        .unwrap();
}

/// Drops test schemas left over by runs that crashed before their guards dropped, once
/// they are an hour old (the ULID in the name says when it was made), so that a run going
/// on in parallel keeps its own.
async fn sweep_stale_schemas(admin: &PgPool) {
    let test_schemas = r"select nspname::text from pg_namespace where nspname like 'kw\_test\_%'";
    let names: Vec<String> = sqlx::query_scalar(test_schemas)
        .fetch_all(admin)
        .await
        .unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for name in names {
        let made = ulid::Ulid::from_string(&name[SCHEMA_PREFIX.len()..].to_uppercase())
            .map(|u| u.datetime());
        if made.is_ok_and(|t| t < hour_ago) {
            drop_schema(admin, &name).await;
        }
    }
}

/// The first column (`v`) of every row `sql` returns, read through the store's readers.
pub(crate) async fn texts<B: Backend>(store: &SqlStore<B>, sql: impl SqlSafeStr) -> Vec<String> {
    let rows = sqlx::query(sql).fetch_all(store.0.reader()).await.unwrap();
    rows.iter()
        .map(|row| B::Db::get(row, "v").unwrap())
        .collect()
}
