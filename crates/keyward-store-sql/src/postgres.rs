//! The shared backend: PostgreSQL, for several keyward nodes serving from one database.
//!
//! What many writers need is here: key changes lock the key's row before checking its
//! version, metering writes lock rows in one global order so that nodes never deadlock,
//! migrations run under sqlx's advisory lock so that nodes may start together, and every
//! key change is announced to the other nodes ([`follower`]).

mod fail_fast;
mod follower;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keyward_core::{AccountId, KeyDigest, KeyId};
use keyward_store::runs::{self, Run};
use keyward_store::{MeterBatch, RequestRecord, StoreError, StoreResult, UsageKey};
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor, Postgres};
use time::OffsetDateTime;
use tokio::sync::Notify;

use fail_fast::{FailFast, Probe};
pub use follower::{
    KEY_CHANGES_CHANNEL, KEY_USES_CHANNEL, KeyChange, decode_key_change, decode_key_uses,
};

use crate::common::{
    Backend, CreateQueue, Dialect, SqlStore, Statement as _, Tx, commit, is_unavailable, map_err,
    on, ts,
};
use crate::migrate::{self, Migrations};

/// Whether `_sqlx_migrations` exists on the connection's `search_path`, as
/// [`migrate::check`] asks.
const MIGRATIONS_TABLE_EXISTS: &str = "select count(to_regclass('_sqlx_migrations')) as n";

/// The PostgreSQL store.
pub type PgStore = SqlStore<PgBackend>;

/// The connection pool of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
    /// Key creations waiting for a group commit.
    creates: Arc<CreateQueue>,
    /// Told after a commit that enqueued webhook deliveries.
    outbox: Arc<Notify>,
    /// Ends a wait for a connection as soon as the server refuses connections.
    probe: Arc<Probe>,
}

/// Connections per node: enough for the request path's reads beside the batch writers,
/// small enough that a dozen nodes stay under PostgreSQL's default of 100.
const MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a connection before the store reports `Unavailable`; a
/// server that refuses connections ends the wait at once ([`fail_fast`]).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL), with a pool of 10
    /// connections and a 5 s acquire timeout, and runs pending migrations.
    ///
    /// # Errors
    /// `Unavailable` if the server can't be reached in time, `Other` if the URL is
    /// invalid or a migration fails.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, Migrations::Apply).await
    }

    /// Like [`PgStore::connect`], but applies or only checks the migrations as
    /// `migrations` says.
    ///
    /// # Errors
    /// As [`PgStore::connect`]; `Other` with a [`crate::SchemaError`] too if the schema
    /// does not fit this binary.
    pub async fn connect_with(url: &str, migrations: Migrations) -> StoreResult<Self> {
        Self::open(parse_url(url)?, ACQUIRE_TIMEOUT, None, migrations).await
    }

    /// Like [`PgStore::connect`], but every table lives in `schema` (created if missing):
    /// the schema is the connections' `search_path`. Lets tests, or several deployments,
    /// share one database without seeing each other.
    ///
    /// # Errors
    /// As [`PgStore::connect`]; `Other` too if `schema` is not a plain lower-case
    /// identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub async fn connect_with_schema(url: &str, schema: &str) -> StoreResult<Self> {
        Self::open_in_schema(url, schema, ACQUIRE_TIMEOUT).await
    }

    /// [`PgStore::connect_with_schema`] with a pool that waits up to `acquire_timeout`
    /// for a free connection before answering `Unavailable`.
    pub(crate) async fn open_in_schema(
        url: &str,
        schema: &str,
        acquire_timeout: Duration,
    ) -> StoreResult<Self> {
        if !is_plain_identifier(schema) {
            return Err(StoreError::Other(
                "schema name must match [a-z_][a-z0-9_]* (at most 63 bytes)".into(),
            ));
        }
        let options = parse_url(url)?.options([("search_path", schema)]);
        Self::open(options, acquire_timeout, Some(schema), Migrations::Apply).await
    }

    pub(crate) async fn open(
        options: PgConnectOptions,
        acquire_timeout: Duration,
        schema: Option<&str>,
        migrations: Migrations,
    ) -> StoreResult<Self> {
        let probe = Probe::new(&options);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.application_name("keyward"))
            .await
            .map_err(map_err::<Postgres>)?;
        // Nodes starting together must not apply a migration twice: `locking` (on by
        // default, and left on) takes an advisory lock around the whole run. The schema is
        // created inside that lock too, because `create schema if not exists` is not safe
        // against a concurrent twin (it can fail with a unique violation on pg_namespace).
        let mut migrator = migrate::postgres();
        migrator.set_locking(true);
        if let Some(schema) = schema {
            migrator.create_schema(schema.to_owned());
        }
        if let Err(e) = migrate::check(&pool, MIGRATIONS_TABLE_EXISTS, &migrator, migrations).await
        {
            pool.close().await;
            return Err(e);
        }
        if migrations == Migrations::Apply
            && let Err(e) = migrator.run(&pool).await
        {
            // A failed run can return its connection to the pool still holding the session
            // advisory lock; closing the pool ends that session, so other nodes go on.
            pool.close().await;
            return Err(map_migrate_err(e));
        }
        tracing::debug!(schema, "PostgreSQL store ready");
        Ok(Self(PgBackend {
            pool,
            creates: Arc::default(),
            outbox: Arc::default(),
            probe,
        }))
    }

    /// The connection pool, for what the [`Store`](keyward_store::Store) trait does not
    /// cover (such as `LISTEN`/`NOTIFY` between nodes).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// Closes the pool, waiting for running statements.
    pub async fn close(&self) {
        self.0.pool.close().await;
    }
}

pub(crate) fn parse_url(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| StoreError::Other(Box::new(e)))
}

/// Whether `name` can be spliced into SQL unquoted: the schema name ends up in
/// `create schema` and in the `search_path` startup option, neither of which takes a bind.
fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn map_migrate_err(e: MigrateError) -> StoreError {
    match &e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)
            if is_unavailable::<Postgres>(inner) =>
        {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

impl Dialect for Postgres {
    /// Nodes claiming together take different rows, and never wait for each other's.
    const CLAIM_LOCK: &'static str = " for update skip locked";
    /// The row lock makes the version check sound across nodes: a second transaction
    /// changing the same key waits here until the first commits, then reads the bumped
    /// version and fails with `Conflict`, instead of both passing the check under READ
    /// COMMITTED.
    const LOCK_FOR_CHANGE: &'static str = " for update";
    /// Concurrent bootstraps queue here; the second sees the first's account.
    const LOCK_FOR_BOOTSTRAP: Option<&'static str> = Some("lock table account in exclusive mode");
    /// One node prunes at a time (the lock's key is an arbitrary constant, "kwprune").
    const LOCK_FOR_PRUNING: Option<&'static str> =
        Some("select pg_try_advisory_xact_lock(30249147348381285) as locked");
    const SPAN_TO_RUN: &'static str = " join";

    fn is_unavailable_code(code: &str) -> bool {
        // 08: connection exception. 53: insufficient resources (too many connections, out
        // of memory, disk full). 57P01-57P03: the server is shutting down or starting up.
        // 57014: statement timeout. 40001/40P01: serialization failure or deadlock victim.
        // 55P03: lock timeout.
        code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03"
            )
    }
}

impl Backend for PgBackend {
    type Db = Postgres;

    fn reader(&self) -> impl Executor<'_, Database = Postgres> {
        FailFast {
            pool: &self.pool,
            probe: &self.probe,
        }
    }

    async fn begin_raw(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let begin = self.probe.race(&self.pool, self.pool.begin()).await;
        begin.map_err(map_err::<Postgres>)
    }

    fn outbox(&self) -> &Arc<Notify> {
        &self.outbox
    }

    async fn key_changed(
        tx: &mut Tx<Postgres>,
        account_id: &AccountId,
        digests: &[KeyDigest],
    ) -> StoreResult<()> {
        follower::announce_change(tx, account_id, digests).await
    }

    fn creates(&self) -> &CreateQueue {
        &self.creates
    }

    async fn write_meter_batch(&self, batch: &MeterBatch) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        write_history(&mut tx, &batch.requests).await?;
        touch_last_used(&mut tx, &batch.last_used).await?;
        add_usage(&mut tx, &batch.usage).await?;
        follower::announce_uses(&mut tx, batch).await?;
        // A busy flush sends messages of several megabytes, and sqlx keeps a
        // connection's buffers at their largest. Flushes land on any of the pool's
        // connections, so without this each one would keep its own.
        tx.shrink_buffers();
        commit(tx).await
    }
}

/// Writes a batch's history rows as runs ([`keyward_store::runs`]), with their spans,
/// each table in one statement over arrays.
///
/// The ids come from `request_log_next_id`, moved forward by the batch's row count. Its
/// row lock is held until the flush commits, so the flushes of several nodes commit one
/// after another in id order, and a reader paging by cursor never misses rows committed
/// later below it. It is the first lock a flush takes, so flushes can't deadlock on the
/// keys and counters they lock after it.
async fn write_history(tx: &mut Tx<Postgres>, rows: &[RequestRecord]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let first_id: i64 = sqlx::query_scalar(
        "update request_log_next_id set next_id = next_id + $1 returning next_id - $1",
    )
    .bind(count)
    .fetch_one(on(tx))
    .await
    .map_err(map_err::<Postgres>)?;
    let mut runs = runs::runs_of(rows, first_id)?;
    sqlx::query(
        "insert into request_log_run (last_id, first_time, last_time, row_count, rows) \
         select * from unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])",
    )
    .bind(runs.iter().map(|run| run.last_id).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.first_time).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.last_time).collect::<Vec<_>>())
    .bind(runs.iter().map(Run::row_count).collect::<Vec<_>>())
    .bind(
        runs.iter_mut()
            .map(|run| std::mem::take(&mut run.rows))
            .collect::<Vec<_>>(),
    )
    .run(on(tx))
    .await?;
    sqlx::query(
        "insert into request_log_span (account_id, first_id, last_id) \
         select * from unnest($1::text[], $2::bigint[], $3::bigint[])",
    )
    .bind(runs.iter().map(|run| run.account_id).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.first_id).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.last_id).collect::<Vec<_>>())
    .run(on(tx))
    .await?;
    let narrower = [
        (
            "insert into request_log_key_span (account_id, key_id, first_id, last_id) \
             select * from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
            Run::key_spans(&runs).collect::<Vec<_>>(),
        ),
        (
            "insert into request_log_endpoint_span (account_id, endpoint, first_id, last_id) \
             select * from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
            Run::endpoint_spans(&runs).collect(),
        ),
    ];
    for (insert, spans) in narrower {
        let (mut accounts, mut values, mut firsts, mut lasts) = (vec![], vec![], vec![], vec![]);
        for (account_id, value, first_id, last_id) in spans {
            accounts.push(account_id);
            values.push(value);
            firsts.push(first_id);
            lasts.push(last_id);
        }
        let insert = sqlx::query(insert)
            .bind(accounts)
            .bind(values)
            .bind(firsts)
            .bind(lasts);
        insert.run(on(tx)).await?;
    }
    Ok(())
}

/// Moves `last_used` forward.
///
/// Several nodes flush at once and their batches share keys, so the rows are first locked
/// in one global order (key id, byte order: the column is `collate "C"`, the order the
/// meter sorts in). An `update ... from` alone would lock in whatever order its join plan
/// visits rows, and two batches could deadlock.
async fn touch_last_used(
    tx: &mut Tx<Postgres>,
    last_used: &[(AccountId, KeyId, OffsetDateTime)],
) -> StoreResult<()> {
    if last_used.is_empty() {
        return Ok(());
    }
    let key_ids: Vec<&str> = last_used.iter().map(|(_, k, _)| k.as_str()).collect();
    let times: Vec<i64> = last_used.iter().map(|(_, _, t)| ts(*t)).collect();
    sqlx::query("select 1 from api_key where key_id = any($1::text[]) order by key_id for update")
        .bind(&key_ids)
        .run(on(tx))
        .await?;
    // A key given twice keeps its latest time (`max`).
    sqlx::query(
        "update api_key k set last_used = greatest(coalesce(k.last_used, v.t), v.t) \
         from (select key_id, max(t) as t from unnest($1::text[], $2::bigint[]) as u(key_id, t) \
         group by key_id) v \
         where k.key_id = v.key_id",
    )
    .bind(&key_ids)
    .bind(times)
    .run(on(tx))
    .await?;
    Ok(())
}

/// Adds to the monthly counters and the accounts' daily ones.
///
/// One upsert per table whose rows are sorted by the full key in byte order (`collate
/// "C"`), so concurrent batches lock counters in the same order and can't deadlock, even
/// if a caller did not sort. Duplicates in a batch are
/// summed first: `on conflict do update` may not touch one row twice in a statement.
async fn add_usage(tx: &mut Tx<Postgres>, usage: &[(UsageKey, u64)]) -> StoreResult<()> {
    if usage.is_empty() {
        return Ok(());
    }
    let account_ids: Vec<&str> = usage.iter().map(|(u, _)| u.account_id.as_str()).collect();
    let months: Vec<&str> = usage.iter().map(|(u, _)| u.month()).collect();
    let days: Vec<&str> = usage.iter().map(|(u, _)| u.day.as_str()).collect();
    let endpoints: Vec<&str> = usage.iter().map(|(u, _)| u.endpoint.as_str()).collect();
    let key_ids: Vec<&str> = usage.iter().map(|(u, _)| u.key_id.as_str()).collect();
    // A count past `i64::MAX` saturates.
    let counts: Vec<i64> = usage
        .iter()
        .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
        .collect();
    sqlx::query(
        "insert into usage_counter (account_id, month, endpoint, key_id, count) \
         select account_id, month, endpoint, key_id, sum(count)::bigint \
         from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         as u(account_id, month, endpoint, key_id, count) \
         group by account_id, month, endpoint, key_id \
         order by account_id collate \"C\", month collate \"C\", endpoint collate \"C\", \
         key_id collate \"C\" \
         on conflict (account_id, month, endpoint, key_id) \
         do update set count = usage_counter.count + excluded.count",
    )
    .bind(&account_ids)
    .bind(months)
    .bind(endpoints)
    .bind(key_ids)
    .bind(&counts)
    .run(on(tx))
    .await?;
    // The account's daily counts, summed and ordered the same way.
    sqlx::query(
        "insert into usage_day (account_id, day, count) \
         select account_id, day, sum(count)::bigint \
         from unnest($1::text[], $2::text[], $3::bigint[]) as u(account_id, day, count) \
         group by account_id, day \
         order by account_id collate \"C\", day collate \"C\" \
         on conflict (account_id, day) do update set count = usage_day.count + excluded.count",
    )
    .bind(account_ids)
    .bind(days)
    .bind(counts)
    .run(on(tx))
    .await?;
    Ok(())
}
