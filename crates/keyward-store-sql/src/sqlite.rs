//! The embedded backend: one SQLite file.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one
//! connection (no `SQLITE_BUSY` between our own writers, no retry loops) and reads through
//! a separate read-only pool; a third connection checkpoints the WAL. Key creations that
//! arrive together are committed together ([`CreateQueue`]).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyward_core::{AccountId, KeyDigest};
use keyward_store::runs::{self, Run};
use keyward_store::{MeterBatch, RequestRecord, StoreError, StoreResult};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection as _, Executor, Sqlite};
use tokio::sync::{Notify, watch};

use crate::common::{
    Backend, CreateQueue, Dialect, SqlStore, Statement as _, Tx, commit, map_err, on, ts,
};
use crate::migrate::{self, Migrations};

/// The SQLite store.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// The connections of a [`SqliteStore`]: one writer, readers, and the checkpointer.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    checkpointer: SqlitePool,
    /// Stops the checkpoint task when sent to, or when the last clone of the store drops.
    stop_checkpoints: Arc<watch::Sender<()>>,
    creates: Arc<CreateQueue>,
    /// Told after a commit that enqueued webhook deliveries.
    outbox: Arc<Notify>,
    file: Arc<DbFile>,
}

/// The database file as opened: its path, and the device and inode it had then.
#[derive(Debug)]
struct DbFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl DbFile {
    fn opened(path: &Path) -> StoreResult<Self> {
        let meta = std::fs::metadata(path).map_err(|e| StoreError::Other(Box::new(e)))?;
        Ok(Self {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// `Unavailable` unless the path still names the file that was opened. SQLite keeps
    /// writing into a file that was deleted (or moved away, or replaced by another under
    /// the same name): those writes would be answered and then lost at the next start,
    /// which finds no file, or another one.
    fn check(&self) -> StoreResult<()> {
        let found = std::fs::metadata(&self.path).map(|meta| (meta.dev(), meta.ino()));
        match found {
            Ok(identity) if identity == self.identity => Ok(()),
            found => Err(StoreError::Unavailable(Box::new(FileGone {
                path: self.path.clone(),
                cause: found.err(),
            }))),
        }
    }
}

/// Free space on the database's file system below which the store is not ready. A
/// commit may succeed with less (SQLite reuses WAL and free pages), but not for long: a
/// key creation takes a few pages, a busy metering flush hundreds, and the WAL grows
/// until a checkpoint can copy it back.
pub(crate) const READY_MIN_FREE_BYTES: u64 = 1024 * 1024;

impl DbFile {
    /// `Unavailable` if the file system holding the file has less than
    /// [`READY_MIN_FREE_BYTES`] free (for an unprivileged process).
    fn check_space(&self) -> StoreResult<()> {
        let stats = rustix::fs::statvfs(&self.path)
            .map_err(|e| StoreError::Unavailable(Box::new(std::io::Error::from(e))))?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        if free < READY_MIN_FREE_BYTES {
            return Err(StoreError::Unavailable(Box::new(LowSpace {
                path: self.path.clone(),
                free,
            })));
        }
        Ok(())
    }
}

/// Too little space left next to the database file.
#[derive(Debug, thiserror::Error)]
#[error(
    "{free} bytes free on the file system of {}; keyward takes writes with at least {} \
     (free some space: writes go on without a restart)",
    path.display(),
    READY_MIN_FREE_BYTES
)]
struct LowSpace {
    path: PathBuf,
    free: u64,
}

/// The database file at this path is no longer the one the store opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "the SQLite database file {} is no longer the file keyward opened (deleted, moved or \
     replaced); restore it, or restart keyward to open what is there now",
    path.display()
)]
struct FileGone {
    path: PathBuf,
    #[source]
    cause: Option<std::io::Error>,
}

/// Rows per multi-row statement of the metering flush. Every statement shape (1 to this
/// many rows) is prepared once and kept in the writer's statement cache (capacity below).
/// One statement per batch size would make SQLite parse a new multi-row statement on
/// nearly every flush; one statement per row, each a round trip to the writer's thread,
/// holds the writer (and every key creation behind it) for a quarter of a second when a
/// thousand keys were used.
const ROWS_PER_STATEMENT: usize = 64;
const WRITER_STATEMENT_CACHE: usize = 7 * ROWS_PER_STATEMENT;
/// The writer connection's page cache, in KiB: more than the few thousand pages a busy
/// flush touches. A larger one costs peak RSS and slows commits: SQLite visits the
/// cache's hash table at the end of each transaction (`pcache1TruncateUnsafe`, 4 % of a
/// creation profile at 32 MiB).
const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// WAL pages past which a commit on the writer checkpoints. The checkpoint task copies
/// pages long before that; the writer's own checkpoint lets the WAL start over from its
/// beginning (only a writer can), and bounds the WAL if that task falls behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16 * 1024;
/// How often the checkpoint task copies committed WAL pages into the database file.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Whether `_sqlx_migrations` exists, as [`migrate::check`] asks.
const MIGRATIONS_TABLE_EXISTS: &str = "select count(*) as n from sqlite_master \
     where type = 'table' and name = '_sqlx_migrations'";

/// What opening a [`SqliteStore`] does when its file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Creates an empty database there.
    Create,
    /// Fails, creating nothing: what operator commands want, so that a wrong path or
    /// working directory is an error instead of a new, empty database.
    Fail,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and runs migrations.
    ///
    /// # Errors
    /// If the file can't be opened or created, or a migration fails.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, IfMissing::Create, Migrations::Apply).await
    }

    /// Opens the database file at `path`, creating it only under [`IfMissing::Create`],
    /// and applies or only checks its migrations.
    ///
    /// # Errors
    /// If the file can't be opened (or is missing under [`IfMissing::Fail`]), a migration
    /// fails, or the schema does not fit this binary ([`crate::SchemaError`]).
    pub async fn open_with(
        path: &Path,
        if_missing: IfMissing,
        migrations: Migrations,
    ) -> StoreResult<Self> {
        // API.md: the 201 of a new key leaves only once the key is durable, so commits
        // are fsynced (FULL); WAL lets readers go on while the single writer commits.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(if_missing == IfMissing::Create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = |max, options| {
            SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .after_release(|conn, _| Box::pin(replace_if_in_transaction(conn)))
            .connect_with(
                options
                    .clone()
                    .statement_cache_capacity(WRITER_STATEMENT_CACHE)
                    // A busy quarter second's flush touches a few thousand pages. In SQLite's
                    // 2 MB page cache a third of the writer's time goes to spilling them into
                    // the WAL mid-transaction, and to statement journals in a temporary file:
                    // keep both in memory.
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("temp_store", "memory")
                    // SQLite's default (the commit that takes the WAL past 1,000 pages
                    // checkpoints) puts a third or more of the writer thread's time into
                    // copying pages under load, with key creations waiting behind it; the
                    // checkpoint task does that copying instead (see `checkpoint_every`).
                    .pragma(
                        "wal_autocheckpoint",
                        WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                    ),
            )
            .await
            .map_err(map_err::<Sqlite>)?;
        let migrator = migrate::sqlite();
        migrate::check(&writer, MIGRATIONS_TABLE_EXISTS, &migrator, migrations).await?;
        if migrations == Migrations::Apply {
            migrator
                .run(&writer)
                .await
                .map_err(|e| StoreError::Other(Box::new(e)))?;
        }
        let reader = pool(4, options.clone().read_only(true));
        let reader = reader.await.map_err(map_err::<Sqlite>)?;
        let checkpointer = pool(1, options).await.map_err(map_err::<Sqlite>)?;
        let file = DbFile::opened(path)?;
        let (stop_checkpoints, stopped) = watch::channel(());
        tokio::spawn(checkpoint_every(
            CHECKPOINT_INTERVAL,
            checkpointer.clone(),
            stopped,
        ));
        Ok(Self(SqliteBackend {
            writer,
            reader,
            checkpointer,
            stop_checkpoints: Arc::new(stop_checkpoints),
            creates: Arc::default(),
            outbox: Arc::default(),
            file: Arc::new(file),
        }))
    }

    /// Writes a consistent copy of the database at `from` into the new file `to`, while
    /// other connections (a serving keyward) go on writing: `VACUUM INTO` reads one
    /// snapshot in a read transaction, which under WAL blocks no writer. Then checks the
    /// copy with `pragma integrity_check`. Creates nothing at `from`.
    ///
    /// # Errors
    /// `Other` if `to` exists (SQLite never overwrites it either), is not UTF-8, the copy
    /// fails, or the copy's integrity check does not answer `ok`.
    pub async fn backup(from: &Path, to: &Path) -> StoreResult<()> {
        let other = |e: String| StoreError::Other(e.into());
        if to.symlink_metadata().is_ok() {
            return Err(other(format!(
                "{} already exists: a backup never overwrites a file",
                to.display()
            )));
        }
        let target = to
            .to_str()
            .ok_or_else(|| other(format!("{} is not UTF-8", to.display())))?;
        let source = SqliteConnectOptions::new()
            .filename(from)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5));
        let mut conn = sqlx::SqliteConnection::connect_with(&source)
            .await
            .map_err(map_err::<Sqlite>)?;
        let copied = sqlx::query("vacuum into ?")
            .bind(target)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        copied.map_err(map_err::<Sqlite>)?;
        let copy = SqliteConnectOptions::new().filename(to).read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&copy)
            .await
            .map_err(map_err::<Sqlite>)?;
        let verdict: String = sqlx::query_scalar("pragma integrity_check")
            .fetch_one(&mut conn)
            .await
            .map_err(map_err::<Sqlite>)?;
        let _ = conn.close().await;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(other(format!(
                "the copy at {} fails its integrity check: {verdict}",
                to.display()
            )))
        }
    }

    /// Stops the checkpoint task and closes the pools, waiting for running statements.
    pub async fn close(&self) {
        self.0.stop_checkpoints.send_replace(());
        self.0.checkpointer.close().await;
        self.0.writer.close().await;
        self.0.reader.close().await;
    }
}

/// Whether the writer connection, just given back to its pool, may serve again. A
/// transaction that failed in SQLite (`SQLITE_FULL`, an I/O error) is rolled back by
/// SQLite itself; the rollback sqlx then sends on the dropped transaction fails ("no
/// transaction is active"), and sqlx goes on counting the connection as inside a
/// transaction, so that every later `BEGIN IMMEDIATE` on it is refused (`attempted to
/// call begin_with at non-zero transaction depth`). Such a connection is closed, and the
/// pool of one opens a fresh one for the next write.
async fn replace_if_in_transaction(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<bool> {
    // Commands run in order on the connection's thread: once this answers, the rollback
    // the dropped transaction queued has run.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("SQLite writer connection left inside a failed transaction; replacing it");
        return Ok(false);
    }
    Ok(true)
}

/// Copies committed WAL pages into the database file every `interval`, on a connection
/// of its own, until `stop` is sent to or its sender drops. PASSIVE waits for no reader
/// and no writer, so the writer goes on committing while pages are copied. With 1,000
/// callers at 1,000,000 keys, the metering flush's commit takes 70 ms on average with
/// this task, against 110 ms with the writer checkpointing at 16,384 pages alone, or
/// 160 ms at 4,096.
async fn checkpoint_every(interval: Duration, pool: SqlitePool, mut stop: watch::Receiver<()>) {
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

impl Dialect for Sqlite {
    /// One writer: a claim's read and update run alone.
    const CLAIM_LOCK: &'static str = "";
    /// The one writer connection runs changes one at a time.
    const LOCK_FOR_CHANGE: &'static str = "";
    /// `BEGIN IMMEDIATE` holds SQLite's write lock: the check and the insert are one step.
    const LOCK_FOR_BOOTSTRAP: Option<&'static str> = None;
    /// A second pruner waits for the write lock, then prunes what is left.
    const LOCK_FOR_PRUNING: Option<&'static str> = None;
    /// `cross join` keeps the spans outside: SQLite's way to fix the join order.
    const SPAN_TO_RUN: &'static str = " cross join";

    fn is_unavailable_code(code: &str) -> bool {
        // sqlx reports SQLite's extended code, `primary + 256 * n`: the low byte is the
        // primary code. BUSY (5) and LOCKED (6) past busy_timeout; READONLY (8, also
        // when the file was moved or deleted), IOERR (10), FULL (13) and CANTOPEN (14):
        // the disk or the file, which an operator can fix while keyward runs.
        code.parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
    }
}

impl Backend for SqliteBackend {
    type Db = Sqlite;

    fn reader(&self) -> impl Executor<'_, Database = Sqlite> {
        &self.reader
    }

    fn check_storage(&self) -> StoreResult<()> {
        self.file.check()?;
        self.file.check_space()
    }

    async fn begin_raw(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        self.file.check()?;
        // One writer connection: IMMEDIATE takes the write lock up front, so another
        // process (an operator command) makes us wait in busy_timeout, not fail.
        let begin = self.writer.begin_with("BEGIN IMMEDIATE").await;
        begin.map_err(map_err::<Sqlite>)
    }

    fn outbox(&self) -> &Arc<Notify> {
        &self.outbox
    }

    /// Nothing to tell: this process's caches are the only ones.
    async fn key_changed(_: &mut Tx<Sqlite>, _: &AccountId, _: &[KeyDigest]) -> StoreResult<()> {
        Ok(())
    }

    fn creates(&self) -> &CreateQueue {
        &self.creates
    }

    async fn write_meter_batch(&self, batch: &MeterBatch) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        write_history(&mut tx, &batch.requests).await?;
        let last_used = LAST_USED_UPDATE.bound(&batch.last_used, |update, (_, key_id, at)| {
            update.bind(key_id.as_str()).bind(ts(*at))
        });
        execute_all(&mut tx, last_used).await?;
        let usage = USAGE_UPSERT.bound(&batch.usage, |upsert, (usage, count)| {
            upsert
                .bind(usage.account_id.as_str())
                .bind(usage.month())
                .bind(usage.endpoint.as_str())
                .bind(usage.key_id.as_str())
                .bind(i64::try_from(*count).unwrap_or(i64::MAX))
        });
        execute_all(&mut tx, usage).await?;
        let days = USAGE_DAY_UPSERT.bound(&batch.usage, |upsert, (usage, count)| {
            upsert
                .bind(usage.account_id.as_str())
                .bind(usage.day.as_str())
                .bind(i64::try_from(*count).unwrap_or(i64::MAX))
        });
        execute_all(&mut tx, days).await?;
        commit(tx).await
    }
}

/// A statement of [`Shapes`] with some of its values bound.
type ShapedQuery = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// A statement whose text depends only on its number of rows, built once per count.
struct Shapes {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
    built: OnceLock<Vec<String>>,
}

impl Shapes {
    const fn new(head: &'static str, row: &'static str, tail: &'static str) -> Self {
        Self {
            head,
            row,
            tail,
            built: OnceLock::new(),
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
                    let rows = vec![self.row; n].join(",");
                    format!("{}{rows}{}", self.head, self.tail)
                })
                .collect()
        });
        AssertSqlSafe(&built[rows])
    }
}

// The metering statements say `or fail`: a multi-row statement that could abort halfway
// makes SQLite keep a statement journal of every page it touches, so as to undo just
// that statement (4 % of all CPU of a flush, with the allocator churn behind it). `fail`
// keeps what the statement did before an error; the flush then fails as a whole and its
// transaction rolls back, so nothing is half-written.
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

/// A batch holds one counter per endpoint and key of a day; SQLite's upsert adds each
/// row in turn, so the day's row takes them all.
static USAGE_DAY_UPSERT: Shapes = Shapes::new(
    "insert or fail into usage_day (account_id, day, count) values ",
    "(?,?,?)",
    " on conflict (account_id, day) do update set count = count + excluded.count",
);

/// Runs `statements` in order in `tx`.
async fn execute_all(tx: &mut Tx<Sqlite>, statements: Vec<ShapedQuery>) -> StoreResult<()> {
    for statement in statements {
        statement.run(on(tx)).await?;
    }
    Ok(())
}

/// Writes a batch's history rows as runs ([`keyward_store::runs`]), with their spans:
/// one span row per account (and one per key and per endpoint in it) replaces three
/// index entries per row.
async fn write_history(tx: &mut Tx<Sqlite>, rows: &[RequestRecord]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let next_id: i64 = sqlx::query_scalar("select next_id from request_log_next_id")
        .fetch_one(on(tx))
        .await
        .map_err(map_err::<Sqlite>)?;
    let mut spans = runs::runs_of(rows, next_id)?;
    let next_id = spans.last().map_or(next_id, |run| run.last_id + 1);
    sqlx::query("update request_log_next_id set next_id = ?")
        .bind(next_id)
        .run(on(tx))
        .await?;
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
    let bind_span = |statement: ShapedQuery, (account_id, value, first_id, last_id)| {
        statement
            .bind(account_id)
            .bind(value)
            .bind(first_id)
            .bind(last_id)
    };
    let key_spans = KEY_SPAN_INSERT.bound(Run::key_spans(&spans), bind_span);
    let endpoint_spans = ENDPOINT_SPAN_INSERT.bound(Run::endpoint_spans(&spans), bind_span);
    for statements in [runs, account_spans, key_spans, endpoint_spans] {
        execute_all(tx, statements).await?;
    }
    Ok(())
}
