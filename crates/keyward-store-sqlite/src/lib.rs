//! keyward's embedded storage: the [`Store`] trait over one SQLite file.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one
//! connection (no `SQLITE_BUSY` between our own writers, no retry loops) and reads through
//! a separate read-only pool; a third connection checkpoints the WAL. Depends on
//! `keyward-core` and `keyward-store` only.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyward_core::{
    AccountId, KeyDigest, KeyId, KeyName, KeyStatus, Limits, Metadata, Plan, ScopeSet, StoredStatus,
};
use keyward_store::runs::{self, Run};
use keyward_store::{
    Account, AccountSummary, ApiKey, AuditAction, AuditContext, AuditEvent, AuthRecord, Changed,
    KeyPatch, KeyQuery, MeterBatch, NewKey, NewSecret, PageQuery, RequestRecord, Store, StoreError,
    StoreResult,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, SqlSafeStr, Sqlite, Transaction};
use time::OffsetDateTime;

/// The migrations, embedded. Their versions and names match the PostgreSQL tree's.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "history without time index",
        include_str!("../migrations/0002_history_without_time_index.sql"),
    ),
    (
        3,
        "lighter history indexes",
        include_str!("../migrations/0003_lighter_history_indexes.sql"),
    ),
    (
        4,
        "history rows per run",
        include_str!("../migrations/0004_history_rows_per_run.sql"),
    ),
    (
        5,
        "history by runs",
        include_str!("../migrations/0005_history_by_runs.sql"),
    ),
];

/// The versions and names of the embedded migrations, for the check that both
/// backends' trees stay in step.
#[must_use]
pub fn migration_versions() -> Vec<(i64, &'static str)> {
    MIGRATIONS.iter().map(|(v, name, _)| (*v, *name)).collect()
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Rows per multi-row statement of the metering flush. Every statement shape (1 to this
/// many rows) is prepared once and kept in the writer's statement cache (capacity below):
/// with one statement per batch size, a profile showed SQLite re-parsing a new multi-row
/// insert on nearly every flush; and with one statement per row, each a round trip to the
/// writer's thread, a flush of a thousand keys' `last_used` and usage held the writer
/// (and every key creation behind it) for a quarter of a second.
const ROWS_PER_STATEMENT: usize = 64;
const WRITER_STATEMENT_CACHE: usize = 7 * ROWS_PER_STATEMENT;
/// Keys per insert statement of a group commit (8 parameters each).
const CREATES_PER_STATEMENT: usize = 512;
/// The writer connection's page cache, in KiB: more than the few thousand pages a busy
/// flush touches. The 32 MiB it was before cost 25–35 MiB of peak RSS, and commits were
/// slower with it, not faster: SQLite visits the cache's hash table at the end of each
/// transaction (`pcache1TruncateUnsafe`, 4 % of a creation profile at 32 MiB).
const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// WAL pages past which a commit on the writer checkpoints. The checkpoint task copies
/// pages long before that; the writer's own checkpoint lets the WAL start over from its
/// beginning (only a writer can), and bounds the WAL if that task falls behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16 * 1024;
/// How often the checkpoint task copies committed WAL pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// A statement of [`Shapes`] with some of its values bound.
type ShapedQuery = sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments>;

/// A statement whose text depends only on its number of rows, built once per count.
struct Shapes {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
    built: std::sync::OnceLock<Vec<String>>,
}

impl Shapes {
    const fn new(head: &'static str, row: &'static str, tail: &'static str) -> Self {
        Self {
            head,
            row,
            tail,
            built: std::sync::OnceLock::new(),
        }
    }

    /// This statement over `items`, [`ROWS_PER_STATEMENT`] rows per statement, each row's
    /// values bound by `bind`. All are bound before any runs (see [`execute_all`]): the
    /// values are owned copies, so no borrow of `items` lives across an await, which the
    /// `Send` bound of the store's futures would not accept.
    fn bound<T>(
        &'static self,
        items: impl IntoIterator<Item = T>,
        mut bind: impl FnMut(ShapedQuery, T) -> ShapedQuery,
    ) -> Vec<ShapedQuery> {
        let mut items = items.into_iter().peekable();
        let mut statements = Vec::new();
        while items.peek().is_some() {
            let chunk: Vec<T> = items.by_ref().take(ROWS_PER_STATEMENT).collect();
            let mut statement = sqlx::query(self.sql(chunk.len()));
            for item in chunk {
                statement = bind(statement, item);
            }
            statements.push(statement);
        }
        statements
    }

    /// The text for `rows` rows (1 to [`ROWS_PER_STATEMENT`]).
    fn sql(&'static self, rows: usize) -> AssertSqlSafe<&'static str> {
        let built = self.built.get_or_init(|| {
            (0..=ROWS_PER_STATEMENT)
                .map(|n| {
                    let mut sql = String::from(self.head);
                    for i in 0..n {
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push_str(self.row);
                    }
                    sql.push_str(self.tail);
                    sql
                })
                .collect()
        });
        AssertSqlSafe(&built[rows])
    }
}

// The metering statements say `or fail`: a multi-row statement that could abort halfway
// makes SQLite keep a statement journal of every page it touches, so as to undo just
// that statement (a profile of the flush showed 4 % of all CPU there, and the glibc
// allocator churn behind it). `fail` keeps what the statement did before an error; the
// flush then fails as a whole and its transaction rolls back, so nothing is half-written.
static RUN_INSERT: Shapes = Shapes::new(
    "insert or fail into request_log_run (last_id, first_time, last_time, row_count, rows) \
     values ",
    "(?,?,?,?,?)",
    "",
);
static SPAN_INSERT: Shapes = Shapes::new(
    "insert or fail into request_log_span (account_id, first_id, last_id) values ",
    "(?,?,?)",
    "",
);
static KEY_SPAN_INSERT: Shapes = Shapes::new(
    "insert or fail into request_log_key_span (account_id, key_id, first_id, last_id) values ",
    "(?,?,?,?)",
    "",
);
static ENDPOINT_SPAN_INSERT: Shapes = Shapes::new(
    "insert or fail into request_log_endpoint_span (account_id, endpoint, first_id, last_id) \
     values ",
    "(?,?,?,?)",
    "",
);
/// `last_used` only moves forward.
static LAST_USED_UPDATE: Shapes = Shapes::new(
    "update or fail api_key set last_used = max(coalesce(last_used, used.column2), used.column2) \
     from (values ",
    "(?,?)",
    ") as used where api_key.key_id = used.column1",
);
static USAGE_UPSERT: Shapes = Shapes::new(
    "insert or fail into usage_counter (account_id, month, endpoint, key_id, count) values ",
    "(?,?,?,?,?)",
    " on conflict (account_id, month, endpoint, key_id) do update set count = count + excluded.count",
);

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    /// Stops the checkpoint task when sent to, or when the last clone of the store drops.
    stop_checkpoints: Arc<tokio::sync::watch::Sender<()>>,
    creates: Arc<CreateQueue>,
}

/// Group commit of key creations. Every 201 waits for a commit, SQLite has one writer,
/// and each statement is a round trip to the writer connection's thread: one transaction
/// of five statements per key capped creation near 2,000 per second. Creations that
/// arrive while a commit is running queue up, and the next one to take the lead commits
/// them all in one transaction of one insert per table.
#[derive(Default)]
struct CreateQueue {
    waiting: std::sync::Mutex<Vec<QueuedCreate>>,
    leader: tokio::sync::Mutex<()>,
}

struct QueuedCreate {
    key: NewKey,
    audit: AuditContext,
    reply: tokio::sync::oneshot::Sender<StoreResult<ApiKey>>,
}

impl std::fmt::Debug for CreateQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateQueue").finish_non_exhaustive()
    }
}

impl CreateQueue {
    fn push(&self, create: QueuedCreate) {
        self.lock().push(create);
    }

    fn take(&self) -> Vec<QueuedCreate> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<QueuedCreate>> {
        // Pushing and taking can't leave the vector half-changed: a poisoned lock is
        // still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and runs migrations.
    ///
    /// # Errors
    /// If the file can't be opened or created, or a migration fails.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        // API.md: the 201 of a new key leaves only once the key is durable, so commits
        // are fsynced (FULL); WAL lets readers go on while the single writer commits.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(
                options
                    .clone()
                    .statement_cache_capacity(WRITER_STATEMENT_CACHE)
                    // A profile of the metering flush: a third of the writer's time went to
                    // spilling its 2 MB page cache into the WAL mid-transaction and to
                    // statement journals written to a temporary file. The flush of a busy
                    // quarter second touches a few thousand pages; keep them in memory.
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("temp_store", "memory")
                    // SQLite's default, a checkpoint by the commit that takes the WAL
                    // past 1,000 pages, put 36–44 % of the writer thread's time into
                    // copying pages with 1,000 callers at 1,000,000 keys, and key
                    // creations waited behind it. The checkpoint task does that copying
                    // now (see `checkpoint_every`).
                    .pragma(
                        "wal_autocheckpoint",
                        WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                    ),
            )
            .await
            .map_err(map_err)?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(map_err)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        let (stop_checkpoints, stopped) = tokio::sync::watch::channel(());
        tokio::spawn(checkpoint_every(
            CHECKPOINT_INTERVAL,
            checkpointer.clone(),
            stopped,
        ));
        Ok(Self {
            writer,
            reader,
            checkpointer,
            stop_checkpoints: Arc::new(stop_checkpoints),
            creates: Arc::default(),
        })
    }

    /// Stops the checkpoint task and closes the pools, waiting for running statements.
    pub async fn close(&self) {
        self.stop_checkpoints.send_replace(());
        self.checkpointer.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Commits queued creations in one transaction and answers each of them. If the
    /// batch fails, each key is retried in its own transaction, so that a failing key
    /// fails alone.
    async fn commit_creates(&self, batch: Vec<QueuedCreate>) {
        let outcomes: Vec<StoreResult<()>> = match self.insert_keys(&batch).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(_) => {
                let mut one_by_one = Vec::with_capacity(batch.len());
                for create in &batch {
                    one_by_one.push(self.insert_keys(std::slice::from_ref(create)).await);
                }
                one_by_one
            }
        };
        for (create, outcome) in batch.into_iter().zip(outcomes) {
            let stored = outcome.map(|()| stored_key(&create.key));
            let _ = create.reply.send(stored);
        }
    }

    /// Inserts a batch of keys in one transaction.
    async fn insert_keys(&self, creates: &[QueuedCreate]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let keys: Vec<_> = creates.iter().map(|c| (&c.key, &c.audit)).collect();
        insert_new_keys(&mut tx, &keys).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        // One writer connection: IMMEDIATE takes the write lock up front, so another
        // process (an operator command) makes us wait in busy_timeout, not fail.
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

/// Copies committed WAL pages into the database file every `interval`, on a connection
/// of its own, until `stop` is sent to or its sender drops. PASSIVE waits for no reader
/// and no writer, so the writer goes on committing while pages are copied. Measured with
/// 1,000 callers at 1,000,000 keys: the metering flush's commit took 70 ms on average
/// instead of 110 ms (writer checkpointing at 16,384 pages alone) or 160 ms (at 4,096).
async fn checkpoint_every(
    interval: Duration,
    pool: SqlitePool,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = sqlx::query("pragma wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            // Until a checkpoint succeeds, the writer's own checkpoints bound the WAL.
            tracing::warn!(error = %e, "SQLite checkpoint failed; will retry");
        }
    }
}

/// Runs `statements` in order on `conn`.
async fn execute_all(
    conn: &mut sqlx::SqliteConnection,
    statements: Vec<ShapedQuery>,
) -> StoreResult<()> {
    for statement in statements {
        statement.execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("unique constraint")
        }
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("5" | "6" | "261" | "262" | "517" | "773")
            ) =>
        {
            // SQLITE_BUSY / SQLITE_LOCKED and their extended codes past busy_timeout.
            StoreError::Unavailable(Box::new(e))
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(e)),
        _ => StoreError::Other(Box::new(e)),
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Other(what.into())
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(secs: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| corrupt("timestamp out of range"))
}

fn opt_from_ts(secs: Option<i64>) -> StoreResult<Option<OffsetDateTime>> {
    secs.map(from_ts).transpose()
}

fn scopes_json(scopes: &ScopeSet) -> String {
    serde_json::Value::from(scopes.to_strings()).to_string()
}

const KEY_COLUMNS: &str = "k.key_id, k.account_id, k.name, k.scopes, k.metadata, k.status, \
     k.expires_at, k.created_at, k.last_used, k.hint, k.version";

fn key_from_row(row: &SqliteRow) -> StoreResult<ApiKey> {
    let get_err = |e: sqlx::Error| StoreError::Other(Box::new(e));
    let scopes: String = row.try_get("scopes").map_err(get_err)?;
    let scopes: Vec<String> =
        serde_json::from_str(&scopes).map_err(|_| corrupt("scopes are not a JSON array"))?;
    let name: Option<String> = row.try_get("name").map_err(get_err)?;
    let status: String = row.try_get("status").map_err(get_err)?;
    let metadata: String = row.try_get("metadata").map_err(get_err)?;
    Ok(ApiKey {
        key_id: KeyId::from_trusted(row.try_get("key_id").map_err(get_err)?),
        account_id: AccountId::from_trusted(row.try_get("account_id").map_err(get_err)?),
        name: name
            .map(|n| KeyName::parse(&n))
            .transpose()
            .map_err(|_| corrupt("stored name is invalid"))?,
        scopes: ScopeSet::parse(&scopes).map_err(|_| corrupt("stored scopes are invalid"))?,
        metadata: Metadata::from_stored(&metadata),
        status: StoredStatus::from_str(&status).map_err(|_| corrupt("stored status"))?,
        expires_at: opt_from_ts(row.try_get("expires_at").map_err(get_err)?)?,
        created_at: from_ts(row.try_get("created_at").map_err(get_err)?)?,
        last_used: opt_from_ts(row.try_get("last_used").map_err(get_err)?)?,
        hint: row.try_get("hint").map_err(get_err)?,
        version: row.try_get("version").map_err(get_err)?,
    })
}

fn account_from_row(row: &SqliteRow) -> StoreResult<Account> {
    let get_err = |e: sqlx::Error| StoreError::Other(Box::new(e));
    let plan: String = row.try_get("plan").map_err(get_err)?;
    let per_minute: Option<i64> = row.try_get("per_minute").map_err(get_err)?;
    let per_day: Option<i64> = row.try_get("per_day").map_err(get_err)?;
    Ok(Account {
        account_id: AccountId::from_trusted(row.try_get("account_id").map_err(get_err)?),
        name: row.try_get("name").map_err(get_err)?,
        plan: Plan::from_str(&plan).map_err(|_| corrupt("stored plan"))?,
        custom_limits: Limits::new(
            per_minute.and_then(|n| u32::try_from(n).ok()),
            per_day.and_then(|n| u32::try_from(n).ok()),
        ),
        created_at: from_ts(row.try_get("created_at").map_err(get_err)?)?,
    })
}

/// Writes a batch's history rows as runs ([`keyward_store::runs`], migrations 3 and 4),
/// with their spans: one span row per account (and one per key and per endpoint in it)
/// replaces three index entries per row.
async fn write_history(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[RequestRecord],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // A counter of its own, so that ids are never reused, even after retention has
    // emptied the history (migration 4).
    let next_id: i64 = sqlx::query_scalar("select next_id from request_log_next_id")
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    let mut spans = runs::runs_of(rows, next_id)?;
    let next_id = spans.last().map_or(next_id, |run| run.last_id + 1);
    sqlx::query("update request_log_next_id set next_id = ?")
        .bind(next_id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    let runs = RUN_INSERT.bound(spans.iter_mut(), |insert, span| {
        insert
            .bind(span.last_id)
            .bind(span.first_time)
            .bind(span.last_time)
            .bind(span.row_count())
            .bind(std::mem::take(&mut span.rows))
    });
    let account_spans = SPAN_INSERT.bound(&spans, |insert, span| {
        insert
            .bind(span.account_id)
            .bind(span.first_id)
            .bind(span.last_id)
    });
    let key_spans = narrower_spans(&KEY_SPAN_INSERT, &spans, |span| &span.key_ids);
    let endpoint_spans = narrower_spans(&ENDPOINT_SPAN_INSERT, &spans, |span| &span.endpoints);
    for statements in [runs, account_spans, key_spans, endpoint_spans] {
        execute_all(tx, statements).await?;
    }
    Ok(())
}

/// One row per span and key (or endpoint) that has rows in it.
fn narrower_spans<'a>(
    insert: &'static Shapes,
    spans: &'a [Run<'a>],
    values: impl Fn(&'a Run<'a>) -> &'a [&'a str],
) -> Vec<ShapedQuery> {
    let rows = spans
        .iter()
        .flat_map(|span| values(span).iter().map(move |value| (span, *value)));
    insert.bound(rows, |statement, (span, value)| {
        statement
            .bind(span.account_id)
            .bind(value)
            .bind(span.first_id)
            .bind(span.last_id)
    })
}

/// Inserts new keys, their secrets and their `key.created` events, one statement per
/// table for up to [`CREATES_PER_STATEMENT`] keys: the writer connection answers each
/// statement on its own thread, and those round trips, not the fsync, bounded key
/// creation when each key took five statements.
async fn insert_new_keys(
    tx: &mut Transaction<'static, Sqlite>,
    keys: &[(&NewKey, &AuditContext)],
) -> StoreResult<()> {
    // However many queued up, each statement stays far below SQLite's 32,766 parameters.
    for chunk in keys.chunks(CREATES_PER_STATEMENT) {
        let mut rows = QueryBuilder::<Sqlite>::new(
            "insert into api_key (key_id, account_id, name, scopes, metadata, status, \
             expires_at, created_at, last_used, hint, version) ",
        );
        rows.push_values(chunk, |mut row, (key, _)| {
            row.push_bind(key.key_id.as_str())
                .push_bind(key.account_id.as_str())
                .push_bind(key.name.as_ref().map(KeyName::as_str))
                .push_bind(scopes_json(&key.scopes))
                .push_bind(key.metadata.to_json())
                .push("'active'")
                .push_bind(key.expires_at.map(ts))
                .push_bind(ts(key.created_at))
                .push("null")
                .push_bind(key.secret.hint.as_str())
                .push("1");
        });
        rows.build().execute(&mut **tx).await.map_err(map_err)?;
        let mut secrets = QueryBuilder::<Sqlite>::new(
            "insert into key_secret (digest, key_id, expires_at, created_at) ",
        );
        secrets.push_values(chunk, |mut row, (key, _)| {
            row.push_bind(key.secret.digest.0.to_vec())
                .push_bind(key.key_id.as_str())
                .push("null")
                .push_bind(ts(key.created_at));
        });
        secrets.build().execute(&mut **tx).await.map_err(map_err)?;
        let mut events = QueryBuilder::<Sqlite>::new(
            "insert into audit_event (account_id, time, action, actor_key_id, key_id, \
             changes, request_id) ",
        );
        events.push_values(chunk, |mut row, (key, audit)| {
            row.push_bind(key.account_id.as_str())
                .push_bind(ts(audit.time))
                .push_bind(AuditAction::Created.as_str())
                .push_bind(audit.actor_key_id.as_ref().map(KeyId::as_str))
                .push_bind(key.key_id.as_str())
                .push_bind(audit.changes.to_string())
                .push_bind(audit.request_id.as_str());
        });
        events.build().execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(())
}

fn abandoned() -> StoreError {
    StoreError::Other("the key creation was abandoned".into())
}

/// A key as stored by [`SqliteStore::insert_keys`], without reading it back.
fn stored_key(key: &NewKey) -> ApiKey {
    ApiKey {
        key_id: key.key_id.clone(),
        account_id: key.account_id.clone(),
        name: key.name.clone(),
        scopes: key.scopes.clone(),
        metadata: key.metadata.clone(),
        status: StoredStatus::Active,
        // Stored as whole seconds.
        expires_at: key.expires_at.map(keyward_core::timefmt::truncate),
        created_at: keyward_core::timefmt::truncate(key.created_at),
        last_used: None,
        hint: key.secret.hint.clone(),
        version: 1,
    }
}

async fn insert_secret(
    tx: &mut Transaction<'static, Sqlite>,
    key_id: &KeyId,
    secret: &NewSecret,
    now: OffsetDateTime,
) -> StoreResult<()> {
    sqlx::query(
        "insert into key_secret (digest, key_id, expires_at, created_at) values ($1, $2, null, $3)",
    )
    .bind(&secret.digest.0[..])
    .bind(key_id.as_str())
    .bind(ts(now))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn insert_audit(
    tx: &mut Transaction<'static, Sqlite>,
    account_id: &AccountId,
    key_id: &KeyId,
    action: AuditAction,
    audit: &AuditContext,
) -> StoreResult<()> {
    sqlx::query(
        "insert into audit_event (account_id, time, action, actor_key_id, key_id, changes, request_id) \
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(account_id.as_str())
    .bind(ts(audit.time))
    .bind(action.as_str())
    .bind(audit.actor_key_id.as_ref().map(KeyId::as_str))
    .bind(key_id.as_str())
    .bind(audit.changes.to_string())
    .bind(&audit.request_id)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Loads the key inside the write transaction, checks its version and returns its
/// digests: the common first step of every key change.
async fn lock_key(
    tx: &mut Transaction<'static, Sqlite>,
    account_id: &AccountId,
    key_id: &KeyId,
    expected_version: i64,
) -> StoreResult<Vec<KeyDigest>> {
    let version: Option<i64> =
        sqlx::query_scalar("select version from api_key where key_id = $1 and account_id = $2")
            .bind(key_id.as_str())
            .bind(account_id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
    match version {
        None => return Err(StoreError::NotFound),
        Some(v) if v != expected_version => {
            return Err(StoreError::Conflict("the key changed concurrently; retry"));
        }
        Some(_) => {}
    }
    let rows = sqlx::query("select digest from key_secret where key_id = $1")
        .bind(key_id.as_str())
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get(0).map_err(|e| StoreError::Other(Box::new(e)))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map(KeyDigest)
                .map_err(|_| corrupt("digest is not 32 bytes"))
        })
        .collect()
}

async fn key_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    account_id: &AccountId,
    key_id: &KeyId,
) -> StoreResult<ApiKey> {
    let sql =
        format!("select {KEY_COLUMNS} from api_key k where k.key_id = $1 and k.account_id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(key_id.as_str())
        .bind(account_id.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    key_from_row(&row)
}

/// Inserts an account, its first key and that key's `key.created` event.
async fn insert_account_rows(
    tx: &mut Transaction<'static, Sqlite>,
    account: &Account,
    first_key: &NewKey,
    audit: &AuditContext,
) -> StoreResult<()> {
    sqlx::query(
        "insert into account (account_id, name, plan, per_minute, per_day, created_at) \
             values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account.account_id.as_str())
    .bind(&account.name)
    .bind(account.plan.as_str())
    .bind(account.custom_limits.per_minute.map(i64::from))
    .bind(account.custom_limits.per_day.map(i64::from))
    .bind(ts(account.created_at))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    insert_new_keys(tx, &[(first_key, audit)]).await
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1")
            .execute(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn account_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("select count(*) from account")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(n.unsigned_abs())
    }

    async fn create_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        insert_account_rows(&mut tx, account, first_key, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn bootstrap_account(
        &self,
        account: &Account,
        first_key: &NewKey,
        audit: &AuditContext,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // `BEGIN IMMEDIATE` holds SQLite's write lock: the check and the insert are one step.
        let exists: bool = sqlx::query_scalar("select exists (select 1 from account)")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists {
            return Ok(false);
        }
        insert_account_rows(&mut tx, account, first_key, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn list_accounts(&self) -> StoreResult<Vec<AccountSummary>> {
        let rows = sqlx::query(
            "select a.*, (select count(*) from api_key k where k.account_id = a.account_id) as key_count \
             from account a order by a.created_at, a.account_id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let key_count: i64 = row
                    .try_get("key_count")
                    .map_err(|e| StoreError::Other(Box::new(e)))?;
                Ok(AccountSummary {
                    account: account_from_row(row)?,
                    key_count: key_count.unsigned_abs(),
                })
            })
            .collect()
    }

    async fn account(&self, account_id: &AccountId) -> StoreResult<Option<Account>> {
        let row = sqlx::query("select * from account where account_id = $1")
            .bind(account_id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn set_plan(&self, account_id: &AccountId, plan: Plan) -> StoreResult<()> {
        let done = sqlx::query("update account set plan = $1 where account_id = $2")
            .bind(plan.as_str())
            .bind(account_id.as_str())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_limits(&self, account_id: &AccountId, limits: Limits) -> StoreResult<()> {
        let done =
            sqlx::query("update account set per_minute = $1, per_day = $2 where account_id = $3")
                .bind(limits.per_minute.map(i64::from))
                .bind(limits.per_day.map(i64::from))
                .bind(account_id.as_str())
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn auth_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<AuthRecord>> {
        let sql = format!(
            "select {KEY_COLUMNS}, s.expires_at as secret_expires_at, a.plan, a.per_minute, a.per_day \
             from key_secret s join api_key k on k.key_id = s.key_id \
             join account a on a.account_id = k.account_id where s.digest = $1"
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(&digest.0[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let get_err = |e: sqlx::Error| StoreError::Other(Box::new(e));
        let plan: String = row.try_get("plan").map_err(get_err)?;
        let plan = Plan::from_str(&plan).map_err(|_| corrupt("stored plan"))?;
        let per_minute: Option<i64> = row.try_get("per_minute").map_err(get_err)?;
        let per_day: Option<i64> = row.try_get("per_day").map_err(get_err)?;
        let custom = Limits::new(
            per_minute.and_then(|n| u32::try_from(n).ok()),
            per_day.and_then(|n| u32::try_from(n).ok()),
        );
        Ok(Some(AuthRecord {
            key: key_from_row(&row)?,
            secret_expires_at: opt_from_ts(row.try_get("secret_expires_at").map_err(get_err)?)?,
            plan,
            limits: plan.limits(custom),
        }))
    }

    async fn list_keys(
        &self,
        account_id: &AccountId,
        query: &KeyQuery,
    ) -> StoreResult<(Vec<ApiKey>, bool)> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "select {KEY_COLUMNS} from api_key k where k.account_id = "
        ));
        qb.push_bind(account_id.as_str());
        let now = ts(query.now);
        match query.status {
            None => {}
            Some(KeyStatus::Active) => {
                qb.push(" and k.status = 'active' and (k.expires_at is null or k.expires_at > ");
                qb.push_bind(now).push(")");
            }
            Some(KeyStatus::Inactive) => {
                qb.push(" and k.status = 'inactive'");
            }
            Some(KeyStatus::Expired) => {
                qb.push(" and k.status = 'active' and k.expires_at <= ");
                qb.push_bind(now);
            }
        }
        if let Some(after) = &query.after {
            qb.push(" and k.key_id > ").push_bind(after.as_str());
        }
        qb.push(" order by k.key_id");
        if let Some(limit) = query.limit {
            qb.push(" limit ").push_bind(i64::from(limit) + 1);
        }
        let rows = qb.build().fetch_all(&self.reader).await.map_err(map_err)?;
        let mut keys = rows
            .iter()
            .map(key_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let more = query.limit.is_some_and(|limit| keys.len() > limit as usize);
        if let Some(limit) = query.limit {
            keys.truncate(limit as usize);
        }
        Ok((keys, more))
    }

    async fn get_key(&self, account_id: &AccountId, key_id: &KeyId) -> StoreResult<Option<ApiKey>> {
        let sql = format!(
            "select {KEY_COLUMNS} from api_key k where k.key_id = $1 and k.account_id = $2"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key_id.as_str())
            .bind(account_id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn insert_key(&self, key: &NewKey, audit: &AuditContext) -> StoreResult<ApiKey> {
        let (reply, mut outcome) = tokio::sync::oneshot::channel();
        self.creates.push(QueuedCreate {
            key: key.clone(),
            audit: audit.clone(),
            reply,
        });
        // Either another leader's batch answers this key first, or this request leads:
        // it commits everything queued, its own key included unless already taken.
        tokio::select! {
            biased;
            answered = &mut outcome => return answered.unwrap_or_else(|_| Err(abandoned())),
            _leader = self.creates.leader.lock() => {
                let batch = self.creates.take();
                if !batch.is_empty() {
                    // Spawned so that the batch completes and every waiter hears back even
                    // if this request goes away mid-commit.
                    let store = self.clone();
                    let _ = tokio::spawn(async move { store.commit_creates(batch).await }).await;
                }
            }
        }
        outcome.await.unwrap_or_else(|_| Err(abandoned()))
    }

    async fn import_keys(&self, keys: &[NewKey], audit: &AuditContext) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let keys: Vec<_> = keys.iter().map(|key| (key, audit)).collect();
        insert_new_keys(&mut tx, &keys).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn update_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        patch: &KeyPatch,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let mut tx = self.begin().await?;
        let stale_digests = lock_key(&mut tx, account_id, key_id, expected_version).await?;
        let mut qb = QueryBuilder::<Sqlite>::new("update api_key set version = version + 1");
        if let Some(name) = &patch.name {
            qb.push(", name = ")
                .push_bind(name.as_ref().map(|n| n.as_str().to_owned()));
        }
        if let Some(scopes) = &patch.scopes {
            qb.push(", scopes = ").push_bind(scopes_json(scopes));
        }
        if let Some(status) = patch.status {
            qb.push(", status = ").push_bind(status.as_str());
        }
        if let Some(expires_at) = patch.expires_at {
            qb.push(", expires_at = ").push_bind(expires_at.map(ts));
        }
        if let Some(metadata) = &patch.metadata {
            qb.push(", metadata = ").push_bind(metadata.to_json());
        }
        qb.push(" where key_id = ").push_bind(key_id.as_str());
        qb.build().execute(&mut *tx).await.map_err(map_err)?;
        insert_audit(&mut tx, account_id, key_id, AuditAction::Updated, audit).await?;
        let key = key_in_tx(&mut tx, account_id, key_id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Changed {
            key: Some(key),
            stale_digests,
        })
    }

    async fn rotate_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        secret: &NewSecret,
        old_secrets_end: OffsetDateTime,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let mut tx = self.begin().await?;
        let stale_digests = lock_key(&mut tx, account_id, key_id, expected_version).await?;
        let end = ts(old_secrets_end);
        // Secrets already past their end are gone for good (all of them when there is no
        // grace); the rest end at the earlier of their own end and this rotation's.
        sqlx::query("delete from key_secret where key_id = $1 and (expires_at <= $3 or $2 <= $3)")
            .bind(key_id.as_str())
            .bind(end)
            .bind(ts(audit.time))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "update key_secret set expires_at = min(coalesce(expires_at, $2), $2) where key_id = $1",
        )
        .bind(key_id.as_str())
        .bind(end)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_secret(&mut tx, key_id, secret, audit.time).await?;
        sqlx::query("update api_key set hint = $1, version = version + 1 where key_id = $2")
            .bind(&secret.hint)
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(&mut tx, account_id, key_id, AuditAction::Rotated, audit).await?;
        let key = key_in_tx(&mut tx, account_id, key_id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Changed {
            key: Some(key),
            stale_digests,
        })
    }

    async fn revoke_key(
        &self,
        account_id: &AccountId,
        key_id: &KeyId,
        expected_version: i64,
        audit: &AuditContext,
    ) -> StoreResult<Changed> {
        let mut tx = self.begin().await?;
        let stale_digests = lock_key(&mut tx, account_id, key_id, expected_version).await?;
        sqlx::query("delete from key_secret where key_id = $1")
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("delete from api_key where key_id = $1")
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(&mut tx, account_id, key_id, AuditAction::Revoked, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Changed {
            key: None,
            stale_digests,
        })
    }

    async fn write_meter_batch(&self, batch: &MeterBatch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        write_history(&mut tx, &batch.requests).await?;
        let last_used = LAST_USED_UPDATE.bound(&batch.last_used, |update, (_, key_id, at)| {
            update.bind(key_id.as_str()).bind(ts(*at))
        });
        execute_all(&mut tx, last_used).await?;
        let usage = USAGE_UPSERT.bound(&batch.usage, |upsert, (usage, count)| {
            upsert
                .bind(usage.account_id.as_str())
                .bind(usage.month.as_str())
                .bind(usage.endpoint.as_str())
                .bind(usage.key_id.as_str())
                .bind(i64::try_from(*count).unwrap_or(i64::MAX))
        });
        execute_all(&mut tx, usage).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn request_history(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<(i64, RequestRecord)>> {
        let (spans, narrowed_by) = runs::spans_for(query);
        // `from` the runs, each joined to its rows if `with_rows`.
        let push_runs_of = |qb: &mut QueryBuilder<Sqlite>, with_rows: bool| {
            qb.push(spans).push(" s");
            if with_rows {
                // CROSS JOIN keeps the runs outside (SQLite's way to fix the join order).
                qb.push(" cross join request_log_run r on r.last_id = s.last_id");
            }
            qb.push(" where s.account_id = ")
                .push_bind(account_id.as_str().to_owned());
            if let Some((column, value)) = narrowed_by {
                qb.push(format_args!(" and s.{column} = "))
                    .push_bind(value.to_owned());
            }
        };
        let reader = &self.reader;
        let straddling = |upper: i64| {
            let mut qb = QueryBuilder::<Sqlite>::new("select min(s.last_id) from ");
            push_runs_of(&mut qb, false);
            qb.push(" and s.last_id > ").push_bind(upper);
            async move {
                qb.build_query_scalar()
                    .fetch_one(reader)
                    .await
                    .map_err(map_err)
            }
        };
        runs::read_history(account_id, query, straddling, |newest| {
            let mut qb = QueryBuilder::<Sqlite>::new("select s.last_id, r.rows from ");
            push_runs_of(&mut qb, true);
            qb.push(" and s.last_id <= ")
                .push_bind(newest)
                .push(" order by s.last_id desc limit ")
                .push_bind(runs::RUNS_PER_READ);
            async move { qb.build_query_as().fetch_all(reader).await.map_err(map_err) }
        })
        .await
    }

    async fn usage(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, KeyId, u64)>> {
        let rows = sqlx::query(
            "select endpoint, key_id, count from usage_counter where account_id = $1 and month = $2",
        )
        .bind(account_id.as_str())
        .bind(month)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let get_err = |e: sqlx::Error| StoreError::Other(Box::new(e));
                let count: i64 = row.try_get("count").map_err(get_err)?;
                Ok((
                    row.try_get("endpoint").map_err(get_err)?,
                    KeyId::from_trusted(row.try_get("key_id").map_err(get_err)?),
                    count.unsigned_abs(),
                ))
            })
            .collect()
    }

    async fn audit_log(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<AuditEvent>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "select audit_event_id, time, action, actor_key_id, key_id, changes, request_id \
             from audit_event where account_id = ",
        );
        qb.push_bind(account_id.as_str());
        push_page_filters(&mut qb, query, "audit_event_id");
        if let Some(action) = query.action {
            qb.push(" and action = ").push_bind(action.as_str());
        }
        qb.push(" order by audit_event_id desc limit ")
            .push_bind(i64::from(query.limit));
        let rows = qb.build().fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let get_err = |e: sqlx::Error| StoreError::Other(Box::new(e));
                let action: String = row.try_get("action").map_err(get_err)?;
                let changes: String = row.try_get("changes").map_err(get_err)?;
                let actor: Option<String> = row.try_get("actor_key_id").map_err(get_err)?;
                Ok(AuditEvent {
                    seq: row.try_get("audit_event_id").map_err(get_err)?,
                    time: from_ts(row.try_get("time").map_err(get_err)?)?,
                    action: AuditAction::parse(&action).ok_or_else(|| corrupt("stored action"))?,
                    actor_key_id: actor.map(KeyId::from_trusted),
                    key_id: KeyId::from_trusted(row.try_get("key_id").map_err(get_err)?),
                    changes: serde_json::from_str(&changes)
                        .map_err(|_| corrupt("stored changes are not JSON"))?,
                    request_id: row.try_get("request_id").map_err(get_err)?,
                })
            })
            .collect()
    }

    async fn prune_history(&self, cutoff: OffsetDateTime, batch: u32) -> StoreResult<u64> {
        // How, and why only the oldest runs: [`runs::PRUNE_OLDEST_RUNS`].
        let cutoff = ts(cutoff);
        let mut tx = self.begin().await?;
        let oldest: Vec<(i64, i64, i64)> = sqlx::query_as(runs::PRUNE_OLDEST_RUNS)
            .bind(cutoff)
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let (whole, straddling): (Vec<_>, Vec<_>) = oldest
            .into_iter()
            .partition(|(_, last_time, _)| *last_time < cutoff);
        let mut pruned: u64 = whole.iter().map(|(_, _, n)| n.unsigned_abs()).sum();
        if let Some(newest_whole) = whole.iter().map(|(last_id, _, _)| *last_id).max() {
            sqlx::query(runs::PRUNE_WHOLE_RUNS)
                .bind(newest_whole)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        for (last_id, _, row_count) in straddling {
            let rows: String = sqlx::query_scalar(runs::PRUNE_READ_RUN)
                .bind(last_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
            let (kept, first_time, kept_count) = runs::rows_since(&rows, cutoff)?;
            sqlx::query(runs::PRUNE_REWRITE_RUN)
                .bind(kept)
                .bind(first_time)
                .bind(kept_count)
                .bind(last_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            pruned += (row_count - kept_count).unsigned_abs();
        }
        for delete in runs::PRUNE_EMPTY_SPANS {
            sqlx::query(delete)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(pruned)
    }
}

fn push_page_filters(qb: &mut QueryBuilder<Sqlite>, query: &PageQuery, id_column: &'static str) {
    if let Some(before) = query.before {
        qb.push(" and ")
            .push(id_column)
            .push(" < ")
            .push_bind(before);
    }
    if let Some(key_id) = &query.key_id {
        qb.push(" and key_id = ")
            .push_bind(key_id.as_str().to_owned());
    }
    push_time_filters(qb, query, "time");
}

/// The `since` and `until` filters of a page, on `time_column`.
fn push_time_filters(qb: &mut QueryBuilder<Sqlite>, query: &PageQuery, time_column: &'static str) {
    if let Some(since) = query.since {
        qb.push(format_args!(" and {time_column} >= "))
            .push_bind(ts(since));
    }
    if let Some(until) = query.until {
        qb.push(format_args!(" and {time_column} < "))
            .push_bind(ts(until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::RequestId;

    /// The tables of history runs (migration 3): an account's, its keys', its endpoints'.
    const HISTORY_RUN_TABLES: [&str; 3] = [
        "request_log_span",
        "request_log_key_span",
        "request_log_endpoint_span",
    ];

    async fn fresh() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn sqlite_passes_the_storage_contract() {
        keyward_store::contract::run_all(|| async { fresh().await }).await;
    }

    #[tokio::test]
    async fn reopening_runs_no_migration_twice() {
        let (store, dir) = fresh().await;
        store.close().await;
        let again = SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        assert_eq!(again.account_count().await.unwrap(), 0);
    }

    /// Rows written before migration 3, interleaving accounts and keys, are found through
    /// the runs it derives and the run rows migration 4 encodes them into, and the ids of
    /// new rows carry on after them.
    #[tokio::test]
    async fn migrations_3_and_4_find_the_rows_written_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut before_spans = migrator();
        before_spans.migrations = before_spans
            .migrations
            .iter()
            .filter(|m| m.version < 3)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before_spans.run(&pool).await.unwrap();
        // Account, key, endpoint: a run of a, a run of b, a again with two keys, c, a.
        let usage = "GET /v1/usage";
        let list = "GET /v1/api-keys";
        let rows = [
            ("acct_a", "key_a1", usage),
            ("acct_a", "key_a1", list),
            ("acct_b", "key_b1", usage),
            ("acct_a", "key_a2", usage),
            ("acct_a", "key_a1", list),
            ("acct_c", "key_c1", list),
            ("acct_a", "key_a2", usage),
        ];
        for (i, (account, key, endpoint)) in rows.iter().enumerate() {
            sqlx::query(
                "insert into request_log (account_id, time, method, endpoint, status, \
                 user_agent, key_id, request_id, latency_ms) \
                 values ($1, $2, 'GET', $3, 200, null, $4, $5, 1)",
            )
            .bind(*account)
            .bind(1_790_000_000 + i as i64)
            .bind(*endpoint)
            .bind(*key)
            .bind(format!("req_{i}"))
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let account = AccountId::from_trusted("acct_a".to_owned());
        let read = |key_id: Option<&str>, endpoint: Option<&str>, before: Option<i64>| {
            let query = PageQuery {
                limit: 100,
                before,
                key_id: key_id.map(|k| KeyId::from_trusted(k.to_owned())),
                endpoint: endpoint.map(str::to_owned),
                ..PageQuery::default()
            };
            let store = store.clone();
            let account = account.clone();
            async move {
                let page = store.request_history(&account, &query).await.unwrap();
                page.into_iter()
                    .map(|(_, r)| r.request_id.to_string())
                    .collect::<Vec<_>>()
            }
        };
        let all = ["req_6", "req_4", "req_3", "req_1", "req_0"];
        assert_eq!(read(None, None, None).await, all);
        assert_eq!(
            read(Some("key_a1"), None, None).await,
            ["req_4", "req_1", "req_0"]
        );
        assert_eq!(read(Some("key_a2"), None, None).await, ["req_6", "req_3"]);
        assert_eq!(
            read(None, Some(usage), None).await,
            ["req_6", "req_3", "req_0"]
        );
        assert_eq!(read(None, Some(list), None).await, ["req_4", "req_1"]);
        assert!(read(Some("key_b1"), None, None).await.is_empty());
        // Row ids start at 1: before row 5 (req_4) falls inside the run 4..=5.
        assert_eq!(read(None, None, Some(5)).await, ["req_3", "req_1", "req_0"]);
        assert_eq!(read(None, Some(list), Some(5)).await, ["req_1"]);

        let mut new_row = new_history_row("acct_a", "key_a2");
        new_row.time = OffsetDateTime::from_unix_timestamp(1_790_000_100).unwrap();
        write_rows(&store, vec![new_row]).await;
        let newest = store
            .request_history(
                &account,
                &PageQuery {
                    limit: 1,
                    ..PageQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(newest[0].0, 8, "ids carry on after the migrated rows");
        assert_eq!(newest[0].1.request_id.as_str(), "req_new");
    }

    /// Retention deletes the runs that end before the oldest row left, and keeps a run
    /// that still has rows.
    #[tokio::test]
    async fn pruning_deletes_runs_with_no_rows_left() {
        let (store, _dir) = fresh().await;
        let at = |unix| OffsetDateTime::from_unix_timestamp(unix).unwrap();
        let row = |account, key, time| RequestRecord {
            time,
            ..new_history_row(account, key)
        };
        // One batch: a's rows at 100 and 300 make one run; b's at 100 another.
        let old_and_new = vec![
            row("acct_a", "key_a", at(100)),
            row("acct_b", "key_b", at(100)),
            row("acct_a", "key_a", at(300)),
        ];
        // A later batch, all old: its runs must go.
        let old = vec![row("acct_c", "key_c", at(150))];
        write_rows(&store, old_and_new).await;
        write_rows(&store, old).await;
        let runs = |table: &'static str| {
            let store = store.clone();
            async move {
                sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
                    "select account_id from {table} order by account_id"
                )))
                .fetch_all(&store.reader)
                .await
                .unwrap()
            }
        };
        assert_eq!(
            runs("request_log_span").await,
            ["acct_a", "acct_b", "acct_c"]
        );

        // Rows by id: a@100 and a@300 (run 1..=2), b@100 (run 3..=3), c@150 (run 4..=4).
        let pruned = store.prune_history(at(200), 100).await.unwrap();
        assert_eq!(pruned, 3);
        // a's run still holds a@300. b's and c's runs have no rows left, but end after
        // the oldest row left (2): they go with it, and read nothing meanwhile.
        let left = store
            .request_history(
                &AccountId::from_trusted("acct_b".to_owned()),
                &PageQuery {
                    limit: 10,
                    ..PageQuery::default()
                },
            )
            .await
            .unwrap();
        assert!(left.is_empty());
        for table in HISTORY_RUN_TABLES {
            assert_eq!(runs(table).await, ["acct_a", "acct_b", "acct_c"], "{table}");
        }
        store.prune_history(at(400), 100).await.unwrap();
        for table in HISTORY_RUN_TABLES {
            assert!(runs(table).await.is_empty(), "{table}");
        }
    }

    /// One account's flush longer than a run is split into runs; every row reads back
    /// exactly (texts that JSON must escape included), newest first, page by page, with
    /// and without a key filter, and a cursor that falls inside any run.
    #[tokio::test]
    async fn a_long_flush_splits_into_runs_that_read_back_whole() {
        let (store, _dir) = fresh().await;
        let odd_agents = [
            "say \"hi\"",
            "back\\slash",
            "tab\tand\u{1}",
            "ünïcode ✓",
            "</script>",
        ];
        let rows: Vec<RequestRecord> = (0..runs::ROWS_PER_RUN * 2 + 17)
            .map(|i| RequestRecord {
                time: OffsetDateTime::from_unix_timestamp(1_790_000_000 + i as i64).unwrap(),
                status: if i % 7 == 0 { 404 } else { 200 },
                user_agent: (i % 3 != 0).then(|| odd_agents[i % odd_agents.len()].to_owned()),
                request_id: RequestId::parse(format!("req_{i}").as_bytes()).unwrap(),
                latency_ms: u32::try_from(i).unwrap(),
                ..new_history_row("acct_a", if i % 2 == 0 { "key_even" } else { "key_odd" })
            })
            .collect();
        write_rows(&store, rows.clone()).await;
        let runs: i64 = sqlx::query_scalar("select count(*) from request_log_run")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(runs, 3);

        let account = AccountId::from_trusted("acct_a".to_owned());
        for (key, limit) in [
            (None, 1),
            (None, 100),
            (Some("key_odd"), 7),
            (Some("key_even"), 300),
        ] {
            let mut read: Vec<(i64, RequestRecord)> = Vec::new();
            loop {
                let query = PageQuery {
                    limit,
                    before: read.last().map(|(id, _)| *id),
                    key_id: key.map(|k| KeyId::from_trusted(k.to_owned())),
                    ..PageQuery::default()
                };
                let page = store.request_history(&account, &query).await.unwrap();
                if page.is_empty() {
                    break;
                }
                read.extend(page);
            }
            let expected: Vec<&RequestRecord> = rows
                .iter()
                .rev()
                .filter(|r| key.is_none_or(|k| r.key_id.as_str() == k))
                .collect();
            let read: Vec<&RequestRecord> = read.iter().map(|(_, r)| r).collect();
            assert_eq!(read, expected, "{key:?}, {limit} per page");
        }
        let not_found = store
            .request_history(
                &account,
                &PageQuery {
                    limit: 1000,
                    status: Some(404),
                    ..PageQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            not_found.len(),
            rows.iter().filter(|r| r.status == 404).count()
        );
    }

    #[tokio::test]
    async fn the_checkpoint_task_copies_commits_into_the_database_file() {
        // Arrange: a commit far below the writer's own checkpoint threshold, so only the
        // checkpoint task can move it from the WAL into the database file.
        let (store, dir) = fresh().await;
        write_rows(&store, vec![new_history_row("acc_1", "key_1")]).await;

        // Act: read a copy of the database file alone, without its WAL, until it holds
        // the commit.
        let copy = dir.path().join("copy.db");
        let mut runs_in_file = 0;
        for _ in 0..40 {
            tokio::time::sleep(CHECKPOINT_INTERVAL).await;
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

    /// Stores `requests` as one metering batch.
    async fn write_rows(store: &SqliteStore, requests: Vec<RequestRecord>) {
        store
            .write_meter_batch(&MeterBatch {
                requests,
                ..MeterBatch::default()
            })
            .await
            .unwrap();
    }

    fn new_history_row(account: &str, key: &str) -> RequestRecord {
        RequestRecord {
            account_id: AccountId::from_trusted(account.to_owned()),
            time: OffsetDateTime::UNIX_EPOCH,
            method: Cow::Borrowed("GET"),
            endpoint: Cow::Borrowed("GET /v1/usage"),
            status: 200,
            user_agent: None,
            key_id: KeyId::from_trusted(key.to_owned()),
            request_id: RequestId::parse(b"req_new").unwrap(),
            latency_ms: 1,
        }
    }

    #[test]
    fn migration_versions_are_numbered_from_one_without_gaps() {
        for (i, (version, _)) in migration_versions().iter().enumerate() {
            assert_eq!(*version, i as i64 + 1);
        }
    }
}
