//! keyward's shared storage: the [`Store`] trait over PostgreSQL, for several keyward
//! nodes serving from one database.
//!
//! It mirrors `keyward-store-sqlite` behaviour for behaviour (both pass the same contract
//! suite); what differs is what many writers need: key changes lock the key row
//! (`select ... for update`) before checking its version, metering writes lock rows in one
//! global order so nodes never deadlock, and migrations run under sqlx's advisory lock so
//! nodes may start together. Depends on `keyward-core` and `keyward-store` only; it must
//! not depend on axum or anything else of the HTTP layer.

use std::borrow::Cow;
use std::str::FromStr;
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
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection as _, Postgres, QueryBuilder, Row, SqlSafeStr, Transaction};
use time::OffsetDateTime;

/// The migrations, embedded. Their versions and names match the SQLite tree's.
/// The channel on which every key change is announced, so that all nodes drop the key
/// and its account's listing from their caches. Payload: `<account_id>:<digest hex>,…`
/// (the key's digests before the change; none for a new key).
pub const KEY_CHANGES_CHANNEL: &str = "keyward_key_changes";

/// The channel on which each node announces the uses of keys it has just stored, so
/// that the others move `last_used` forward in their cached listings, which can then
/// live as long as a cached key. Payload: `<account_id> <key_id> <unix seconds>,…`.
pub const KEY_USES_CHANNEL: &str = "keyward_key_uses";

/// The longest payload sent on [`KEY_USES_CHANNEL`] (PostgreSQL refuses 8,000 bytes).
const MAX_USES_PAYLOAD: usize = 7_000;
/// The advisory lock a node holds while it prunes history (an arbitrary constant: "kwprune").
const PRUNE_LOCK: i64 = 0x006b_7770_7275_6e65;

/// What a node hears from [`PgStore::follow_key_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A key of this account changed; these were its digests before the change.
    Changed {
        /// The key's account (`None` if the payload did not carry a valid one).
        account_id: Option<AccountId>,
        /// The key's digests before the change.
        digests: Vec<KeyDigest>,
    },
    /// Keys used through some node: account, key, latest use.
    Used(Vec<(AccountId, KeyId, OffsetDateTime)>),
    /// The listening connection is gone; changes may be missed until [`KeyChange::Resynced`],
    /// so nothing cached may be trusted meanwhile.
    Lost,
    /// Listening again (or for the first time): drop everything cached before this point.
    Resynced,
}

/// Reads a [`KEY_CHANGES_CHANNEL`] payload; malformed entries are skipped.
#[must_use]
pub fn decode_key_change(payload: &str) -> KeyChange {
    let (account, digests) = payload.split_once(':').unwrap_or(("", payload));
    KeyChange::Changed {
        account_id: AccountId::parse(account).ok(),
        digests: digests.split(',').filter_map(KeyDigest::from_hex).collect(),
    }
}

/// Reads a [`KEY_USES_CHANNEL`] payload; malformed entries are skipped.
#[must_use]
pub fn decode_key_uses(payload: &str) -> KeyChange {
    let uses = payload
        .split(',')
        .filter_map(|entry| {
            let mut fields = entry.split(' ');
            let account_id = AccountId::parse(fields.next()?).ok()?;
            let key_id = KeyId::parse(fields.next()?).ok()?;
            let at = OffsetDateTime::from_unix_timestamp(fields.next()?.parse().ok()?).ok()?;
            Some((account_id, key_id, at))
        })
        .collect();
    KeyChange::Used(uses)
}

/// The [`KEY_USES_CHANNEL`] payloads announcing a batch's uses, each of at most
/// [`MAX_USES_PAYLOAD`] bytes.
fn uses_payloads(batch: &MeterBatch) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for (account_id, key_id, at) in &batch.last_used {
        let entry = format!("{account_id} {key_id} {}", at.unix_timestamp());
        match payloads.last_mut() {
            Some(current) if current.len() + 1 + entry.len() <= MAX_USES_PAYLOAD => {
                current.push(',');
                current.push_str(&entry);
            }
            _ => payloads.push(entry),
        }
    }
    payloads
}

/// Announces the uses a metering batch stores; delivered when the transaction commits.
async fn announce_uses(
    tx: &mut Transaction<'static, Postgres>,
    batch: &MeterBatch,
) -> StoreResult<()> {
    for payload in uses_payloads(batch) {
        sqlx::query("select pg_notify($1, $2)")
            .bind(KEY_USES_CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Announces a change of one of `account_id`'s keys; delivered when the transaction
/// commits, and only then.
async fn announce_change(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &AccountId,
    digests: &[KeyDigest],
) -> StoreResult<()> {
    let hexes = digests
        .iter()
        .map(KeyDigest::to_hex)
        .collect::<Vec<_>>()
        .join(",");
    sqlx::query("select pg_notify($1, $2)")
        .bind(KEY_CHANGES_CHANNEL)
        .bind(format!("{account_id}:{hexes}"))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

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

/// Connections per node: enough for the request path's reads beside the batch writers,
/// small enough that a dozen nodes stay under PostgreSQL's default of 100.
const MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a connection before the store reports `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The versions and names of the embedded migrations, for the check that both
/// backends' trees stay in step.
#[must_use]
pub fn migration_versions() -> Vec<(i64, &'static str)> {
    MIGRATIONS.iter().map(|(v, name, _)| (*v, *name)).collect()
}

fn migrator(schema: Option<&str>) -> Migrator {
    let mut migrator = Migrator::with_migrations(
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
    );
    // Nodes starting together must not apply a migration twice: `locking` (on by default,
    // and left on) takes a PostgreSQL advisory lock around the whole run. The schema is
    // created inside that lock too, because `create schema if not exists` is not safe
    // against a concurrent twin (it can fail with a unique violation on pg_namespace).
    migrator.set_locking(true);
    if let Some(schema) = schema {
        migrator.create_schema(schema.to_owned());
    }
    migrator
}

/// The PostgreSQL store. Cloning is cheap: clones share the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL), with a pool of 10
    /// connections and a 5 s acquire timeout, and runs pending migrations.
    ///
    /// # Errors
    /// `Unavailable` if the server can't be reached in time, `Other` if the URL is
    /// invalid or a migration fails.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = parse_url(url)?;
        Self::open(options, ACQUIRE_TIMEOUT, None).await
    }

    /// Like [`PgStore::connect`], but every table lives in `schema` (created if missing):
    /// the schema is the connections' `search_path`. Lets tests, or several deployments,
    /// share one database without seeing each other.
    ///
    /// # Errors
    /// As [`PgStore::connect`]; `Other` too if `schema` is not a plain lower-case
    /// identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub async fn connect_with_schema(url: &str, schema: &str) -> StoreResult<Self> {
        if !is_plain_identifier(schema) {
            return Err(corrupt(
                "schema name must match [a-z_][a-z0-9_]* (at most 63 bytes)",
            ));
        }
        let options = parse_url(url)?.options([("search_path", schema)]);
        Self::open(options, ACQUIRE_TIMEOUT, Some(schema)).await
    }

    async fn open(
        options: PgConnectOptions,
        acquire_timeout: Duration,
        schema: Option<&str>,
    ) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.application_name("keyward"))
            .await
            .map_err(map_err)?;
        if let Err(e) = migrator(schema).run(&pool).await {
            // A failed run can return its connection to the pool still holding the session
            // advisory lock; closing the pool ends that session, so other nodes go on.
            pool.close().await;
            return Err(map_migrate_err(e));
        }
        tracing::debug!(schema, "PostgreSQL store ready");
        Ok(Self { pool })
    }

    /// The connection pool, for what the [`Store`] trait does not cover (such as
    /// `LISTEN`/`NOTIFY` between nodes).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for running statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Follows key changes and key uses announced by any node until `shutdown`
    /// completes, calling `on_change` for each. When the listening connection drops it
    /// reports [`KeyChange::Lost`], reconnects (retrying every 200 ms) and reports
    /// [`KeyChange::Resynced`] once listening again: a node that may have missed
    /// notifications resyncs instead of serving stale keys.
    pub async fn follow_key_changes<F, S>(&self, mut on_change: F, shutdown: S)
    where
        F: FnMut(KeyChange) + Send,
        S: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut logged_down = false;
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                listener
                    .listen_all([KEY_CHANGES_CHANNEL, KEY_USES_CHANNEL])
                    .await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                () = &mut shutdown => return,
                result = listener => match result {
                    Ok(listener) => listener,
                    Err(e) => {
                        on_change(KeyChange::Lost);
                        if !logged_down {
                            tracing::warn!(error = %e, "cannot listen for key changes; the key cache is bypassed until it can");
                            logged_down = true;
                        }
                        tokio::select! {
                            () = &mut shutdown => return,
                            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                },
            };
            if logged_down {
                tracing::info!("listening for key changes again; the key cache is back");
                logged_down = false;
            }
            on_change(KeyChange::Resynced);
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    message = listener.try_recv() => match message {
                        Ok(Some(notification)) => {
                            on_change(if notification.channel() == KEY_USES_CHANNEL {
                                decode_key_uses(notification.payload())
                            } else {
                                decode_key_change(notification.payload())
                            });
                        }
                        // `None`: the connection was lost; `Err`: it broke. Either way
                        // notifications may have been missed.
                        Ok(None) | Err(_) => {
                            on_change(KeyChange::Lost);
                            break;
                        }
                    },
                }
            }
        }
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }
}

fn parse_url(url: &str) -> StoreResult<PgConnectOptions> {
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

/// SQLSTATEs after which retrying later may work: the PostgreSQL counterparts of the
/// SQLite backend's `SQLITE_BUSY`/`SQLITE_LOCKED`.
fn is_unavailable_code(code: &str) -> bool {
    // 08: connection exception. 53: insufficient resources (too many connections, out of
    // memory, disk full). 57P01-57P03: the server is shutting down or starting up.
    // 57014: statement timeout. 40001/40P01: serialization failure or deadlock victim.
    // 55P03: lock timeout.
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03"
        )
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| is_unavailable_code(&c)),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("unique constraint")
        }
        _ if is_unavailable(&e) => StoreError::Unavailable(Box::new(e)),
        _ => StoreError::Other(Box::new(e)),
    }
}

fn map_migrate_err(e: MigrateError) -> StoreError {
    match &e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)
            if is_unavailable(inner) =>
        {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Other(what.into())
}

fn get_err(e: sqlx::Error) -> StoreError {
    StoreError::Other(Box::new(e))
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

/// Counts are `u64` in Rust and `bigint` in SQL; a count past `i64::MAX` saturates.
fn count_to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const KEY_COLUMNS: &str = "k.key_id, k.account_id, k.name, k.scopes, k.metadata, k.status, \
     k.expires_at, k.created_at, k.last_used, k.hint, k.version";

fn key_from_row(row: &PgRow) -> StoreResult<ApiKey> {
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

fn limits_from_row(row: &PgRow) -> StoreResult<Limits> {
    let per_minute: Option<i64> = row.try_get("per_minute").map_err(get_err)?;
    let per_day: Option<i64> = row.try_get("per_day").map_err(get_err)?;
    Ok(Limits::new(
        per_minute.and_then(|n| u32::try_from(n).ok()),
        per_day.and_then(|n| u32::try_from(n).ok()),
    ))
}

fn account_from_row(row: &PgRow) -> StoreResult<Account> {
    let plan: String = row.try_get("plan").map_err(get_err)?;
    Ok(Account {
        account_id: AccountId::from_trusted(row.try_get("account_id").map_err(get_err)?),
        name: row.try_get("name").map_err(get_err)?,
        plan: Plan::from_str(&plan).map_err(|_| corrupt("stored plan"))?,
        custom_limits: limits_from_row(row)?,
        created_at: from_ts(row.try_get("created_at").map_err(get_err)?)?,
    })
}

fn audit_from_row(row: &PgRow) -> StoreResult<AuditEvent> {
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
}

async fn insert_key_rows(tx: &mut Transaction<'static, Postgres>, key: &NewKey) -> StoreResult<()> {
    sqlx::query(
        "insert into api_key (key_id, account_id, name, scopes, metadata, status, expires_at, \
         created_at, last_used, hint, version) \
         values ($1, $2, $3, $4, $5, 'active', $6, $7, null, $8, 1)",
    )
    .bind(key.key_id.as_str())
    .bind(key.account_id.as_str())
    .bind(key.name.as_ref().map(KeyName::as_str))
    .bind(scopes_json(&key.scopes))
    .bind(key.metadata.to_json())
    .bind(key.expires_at.map(ts))
    .bind(ts(key.created_at))
    .bind(&key.secret.hint)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    insert_secret(tx, &key.key_id, &key.secret, key.created_at).await
}

async fn insert_secret(
    tx: &mut Transaction<'static, Postgres>,
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
    tx: &mut Transaction<'static, Postgres>,
    account_id: &AccountId,
    key_id: &KeyId,
    action: AuditAction,
    audit: &AuditContext,
) -> StoreResult<()> {
    sqlx::query(
        "insert into audit_event (account_id, time, action, actor_key_id, key_id, changes, \
         request_id) values ($1, $2, $3, $4, $5, $6, $7)",
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

/// Locks the key row, checks its version and returns its digests: the common first step
/// of every key change.
///
/// The row lock (`for update`) is what makes the version check sound across nodes: a
/// second transaction changing the same key waits here until the first commits, then
/// reads the bumped version and fails with `Conflict`, instead of both passing the check
/// under READ COMMITTED.
async fn lock_key(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &AccountId,
    key_id: &KeyId,
    expected_version: i64,
) -> StoreResult<Vec<KeyDigest>> {
    let version: Option<i64> = sqlx::query_scalar(
        "select version from api_key where key_id = $1 and account_id = $2 for update",
    )
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
    // Ordered by digest: the order SQLite's `without rowid` table yields them in.
    let rows = sqlx::query("select digest from key_secret where key_id = $1 order by digest")
        .bind(key_id.as_str())
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    let digests = rows
        .iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get(0).map_err(get_err)?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map(KeyDigest)
                .map_err(|_| corrupt("digest is not 32 bytes"))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    // Every node drops these digests from its cache. PostgreSQL delivers the
    // notification only if and when this transaction commits, so no node hears of a
    // change that did not happen, and none can miss one while it stays connected.
    announce_change(tx, account_id, &digests).await?;
    Ok(digests)
}

async fn key_in_tx(
    tx: &mut Transaction<'static, Postgres>,
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

/// Writes a batch's history rows as runs ([`keyward_store::runs`], migration 5), with
/// their spans, each table in one statement over arrays.
///
/// The ids come from `request_log_next_id`, moved forward by the batch's row count. Its
/// row lock is held until the flush commits, so the flushes of several nodes commit one
/// after another in id order, and a reader paging by cursor never misses rows committed
/// later below it. It is the first lock a flush takes, so flushes can't deadlock on the
/// keys and counters they lock after it.
async fn write_history(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[RequestRecord],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let first_id: i64 = sqlx::query_scalar(
        "update request_log_next_id set next_id = next_id + $1 returning next_id - $1",
    )
    .bind(count)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
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
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    sqlx::query(
        "insert into request_log_span (account_id, first_id, last_id) \
         select * from unnest($1::text[], $2::bigint[], $3::bigint[])",
    )
    .bind(runs.iter().map(|run| run.account_id).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.first_id).collect::<Vec<_>>())
    .bind(runs.iter().map(|run| run.last_id).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let narrower: [(&str, NarrowingValues); 2] = [
        (
            "insert into request_log_key_span (account_id, key_id, first_id, last_id) \
             select * from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
            |run| &run.key_ids,
        ),
        (
            "insert into request_log_endpoint_span (account_id, endpoint, first_id, last_id) \
             select * from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
            |run| &run.endpoints,
        ),
    ];
    for (insert, values_of) in narrower {
        // One row per run and key (or endpoint) that has rows in it.
        let (mut account_ids, mut values, mut first_ids, mut last_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in &runs {
            for value in values_of(run) {
                account_ids.push(run.account_id);
                values.push(*value);
                first_ids.push(run.first_id);
                last_ids.push(run.last_id);
            }
        }
        sqlx::query(insert)
            .bind(account_ids)
            .bind(values)
            .bind(first_ids)
            .bind(last_ids)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// The keys or the endpoints with rows in a run.
type NarrowingValues = for<'r> fn(&'r Run<'r>) -> &'r [&'r str];

/// Moves `last_used` forward.
///
/// Several nodes flush at once and their batches share keys, so the rows are first locked
/// in one global order (key id, byte order: the column is `collate "C"`, the order the
/// meter sorts in). An `update ... from` alone would lock in whatever order its join plan
/// visits rows, and two batches could deadlock.
async fn touch_last_used(
    tx: &mut Transaction<'static, Postgres>,
    last_used: &[(AccountId, KeyId, OffsetDateTime)],
) -> StoreResult<()> {
    if last_used.is_empty() {
        return Ok(());
    }
    let key_ids: Vec<&str> = last_used.iter().map(|(_, k, _)| k.as_str()).collect();
    let times: Vec<i64> = last_used.iter().map(|(_, _, t)| ts(*t)).collect();
    sqlx::query("select 1 from api_key where key_id = any($1::text[]) order by key_id for update")
        .bind(&key_ids)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    // A key given twice keeps its latest time (`max`), as the per-row updates of SQLite do.
    sqlx::query(
        "update api_key k set last_used = greatest(coalesce(k.last_used, v.t), v.t) \
         from (select key_id, max(t) as t from unnest($1::text[], $2::bigint[]) as u(key_id, t) \
         group by key_id) v \
         where k.key_id = v.key_id",
    )
    .bind(&key_ids)
    .bind(times)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Adds to the monthly counters.
///
/// One upsert whose rows are sorted by the full key in byte order (`collate "C"`, the
/// order of `UsageKey`'s derived `Ord`), so concurrent batches lock counters in the same
/// order and can't deadlock, even if a caller did not sort. Duplicates in a batch are
/// summed first: `on conflict do update` may not touch one row twice in a statement.
async fn add_usage(
    tx: &mut Transaction<'static, Postgres>,
    usage: &[(keyward_store::UsageKey, u64)],
) -> StoreResult<()> {
    if usage.is_empty() {
        return Ok(());
    }
    let account_ids: Vec<&str> = usage.iter().map(|(u, _)| u.account_id.as_str()).collect();
    let months: Vec<&str> = usage.iter().map(|(u, _)| u.month.as_str()).collect();
    let endpoints: Vec<&str> = usage.iter().map(|(u, _)| u.endpoint.as_str()).collect();
    let key_ids: Vec<&str> = usage.iter().map(|(u, _)| u.key_id.as_str()).collect();
    let counts: Vec<i64> = usage.iter().map(|(_, n)| count_to_sql(*n)).collect();
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
    .bind(account_ids)
    .bind(months)
    .bind(endpoints)
    .bind(key_ids)
    .bind(counts)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Inserts an account, its first key and that key's `key.created` event.
async fn insert_account_rows(
    tx: &mut Transaction<'static, Postgres>,
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
    insert_key_rows(tx, first_key).await?;
    insert_audit(
        tx,
        &account.account_id,
        &first_key.key_id,
        AuditAction::Created,
        audit,
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn account_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("select count(*) from account")
            .fetch_one(&self.pool)
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
        // Concurrent bootstraps queue here; the second sees the first's account.
        sqlx::query("lock table account in exclusive mode")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
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
            "select a.*, (select count(*) from api_key k where k.account_id = a.account_id) \
             as key_count from account a order by a.created_at, a.account_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let key_count: i64 = row.try_get("key_count").map_err(get_err)?;
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
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn set_plan(&self, account_id: &AccountId, plan: Plan) -> StoreResult<()> {
        let done = sqlx::query("update account set plan = $1 where account_id = $2")
            .bind(plan.as_str())
            .bind(account_id.as_str())
            .execute(&self.pool)
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
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn auth_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<AuthRecord>> {
        let sql = format!(
            "select {KEY_COLUMNS}, s.expires_at as secret_expires_at, a.plan, a.per_minute, \
             a.per_day from key_secret s join api_key k on k.key_id = s.key_id \
             join account a on a.account_id = k.account_id where s.digest = $1"
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(&digest.0[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let plan: String = row.try_get("plan").map_err(get_err)?;
        let plan = Plan::from_str(&plan).map_err(|_| corrupt("stored plan"))?;
        Ok(Some(AuthRecord {
            key: key_from_row(&row)?,
            secret_expires_at: opt_from_ts(row.try_get("secret_expires_at").map_err(get_err)?)?,
            plan,
            limits: plan.limits(limits_from_row(&row)?),
        }))
    }

    async fn list_keys(
        &self,
        account_id: &AccountId,
        query: &KeyQuery,
    ) -> StoreResult<(Vec<ApiKey>, bool)> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
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
            // One more than asked: its presence says whether more follow.
            qb.push(" limit ").push_bind(i64::from(limit) + 1);
        }
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
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
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn insert_key(&self, key: &NewKey, audit: &AuditContext) -> StoreResult<ApiKey> {
        let mut tx = self.begin().await?;
        insert_key_rows(&mut tx, key).await?;
        insert_audit(
            &mut tx,
            &key.account_id,
            &key.key_id,
            AuditAction::Created,
            audit,
        )
        .await?;
        let stored = key_in_tx(&mut tx, &key.account_id, &key.key_id).await?;
        // Durable on return: commit waits for the WAL flush (synchronous_commit defaults
        // to on).
        // Other nodes' cached listings of this account must show the new key.
        announce_change(&mut tx, &key.account_id, &[]).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(stored)
    }

    async fn import_keys(&self, keys: &[NewKey], audit: &AuditContext) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for key in keys {
            insert_key_rows(&mut tx, key).await?;
            insert_audit(
                &mut tx,
                &key.account_id,
                &key.key_id,
                AuditAction::Created,
                audit,
            )
            .await?;
        }
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
        let mut qb = QueryBuilder::<Postgres>::new("update api_key set version = version + 1");
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
            "update key_secret set expires_at = least(coalesce(expires_at, $2), $2) \
             where key_id = $1",
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
        // The audit event has no foreign key to the key, so it outlives it.
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
        touch_last_used(&mut tx, &batch.last_used).await?;
        add_usage(&mut tx, &batch.usage).await?;
        announce_uses(&mut tx, batch).await?;
        // A busy flush sends messages of several megabytes, and sqlx keeps a
        // connection's buffers at their largest. Flushes land on any of the pool's
        // connections, so without this each one would keep its own.
        tx.shrink_buffers();
        tx.commit().await.map_err(map_err)
    }

    async fn request_history(
        &self,
        account_id: &AccountId,
        query: &PageQuery,
    ) -> StoreResult<Vec<(i64, RequestRecord)>> {
        let (spans, narrowed_by) = runs::spans_for(query);
        // `from` the runs, each joined to its rows if `with_rows`.
        let push_runs_of = |qb: &mut QueryBuilder<Postgres>, with_rows: bool| {
            qb.push(spans).push(" s");
            if with_rows {
                qb.push(" join request_log_run r on r.last_id = s.last_id");
            }
            qb.push(" where s.account_id = ")
                .push_bind(account_id.as_str().to_owned());
            if let Some((column, value)) = narrowed_by {
                qb.push(format_args!(" and s.{column} = "))
                    .push_bind(value.to_owned());
            }
        };
        let pool = &self.pool;
        let straddling = |upper: i64| {
            let mut qb = QueryBuilder::<Postgres>::new("select min(s.last_id) from ");
            push_runs_of(&mut qb, false);
            qb.push(" and s.last_id > ").push_bind(upper);
            async move {
                qb.build_query_scalar()
                    .fetch_one(pool)
                    .await
                    .map_err(map_err)
            }
        };
        runs::read_history(account_id, query, straddling, |newest| {
            let mut qb = QueryBuilder::<Postgres>::new("select s.last_id, r.rows from ");
            push_runs_of(&mut qb, true);
            qb.push(" and s.last_id <= ")
                .push_bind(newest)
                .push(" order by s.last_id desc limit ")
                .push_bind(runs::RUNS_PER_READ);
            async move { qb.build_query_as().fetch_all(pool).await.map_err(map_err) }
        })
        .await
    }

    async fn usage(
        &self,
        account_id: &AccountId,
        month: &str,
    ) -> StoreResult<Vec<(String, KeyId, u64)>> {
        // Ordered (by the primary key's tail) so that every call lists the same way; the
        // SQLite backend happens to return this order from its `without rowid` table.
        let rows = sqlx::query(
            "select endpoint, key_id, count from usage_counter \
             where account_id = $1 and month = $2 order by endpoint, key_id",
        )
        .bind(account_id.as_str())
        .bind(month)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
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
        let mut qb = QueryBuilder::<Postgres>::new(
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
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn prune_history(&self, cutoff: OffsetDateTime, batch: u32) -> StoreResult<u64> {
        // How, and why only the oldest runs: [`runs::PRUNE_OLDEST_RUNS`]. One node prunes
        // at a time: the others' sweeps find the lock taken and prune nothing this time,
        // instead of rewriting the same straddling runs.
        let cutoff = ts(cutoff);
        let mut tx = self.begin().await?;
        let pruning: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if !pruning {
            return Ok(0);
        }
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

fn push_page_filters(qb: &mut QueryBuilder<Postgres>, query: &PageQuery, id_column: &'static str) {
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
    if let Some(since) = query.since {
        qb.push(" and time >= ").push_bind(ts(since));
    }
    if let Some(until) = query.until {
        qb.push(" and time < ").push_bind(ts(until));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Mutex;
    use std::time::{Instant, SystemTime};

    use keyward_store::{NewKey, UsageKey};
    use tokio::task::JoinSet;

    use super::*;
    use keyward_core::RequestId;

    const URL_VAR: &str = "KEYWARD_TEST_PG_URL";
    const SCHEMA_PREFIX: &str = "kw_test_";

    /// The test database: its URL, an admin pool, and every schema handed out, which
    /// [`TestDb::cleanup`] drops (async work can't run in a `Drop`).
    struct TestDb {
        url: String,
        admin: PgPool,
        schemas: Mutex<Vec<String>>,
    }

    impl TestDb {
        /// `None`, after a loud line on stderr, when no PostgreSQL is configured: the
        /// test then passes without having run, and the line says so.
        async fn from_env(test: &str) -> Option<Self> {
            let url = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty());
            let Some(url) = url else {
                // Straight to the process's stderr: libtest captures `eprintln!` of
                // passing tests, and this line must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {URL_VAR} is not set; PostgreSQL tests did not run ({test})"
                );
                return None;
            };
            let admin = PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .unwrap();
            sweep_stale_schemas(&admin).await;
            Some(Self {
                url,
                admin,
                schemas: Mutex::new(Vec::new()),
            })
        }

        fn new_schema(&self) -> String {
            let ulid = ulid::Ulid::generate().to_string().to_lowercase();
            let name = format!("{SCHEMA_PREFIX}{ulid}");
            self.schemas.lock().unwrap().push(name.clone());
            name
        }

        /// A migrated, empty store in a schema of its own; the guard is the schema name.
        async fn fresh(&self) -> (PgStore, String) {
            let schema = self.new_schema();
            let store = PgStore::connect_with_schema(&self.url, &schema)
                .await
                .unwrap();
            (store, schema)
        }

        /// Two nodes on one migrated, empty schema: each its own pool, as two processes.
        async fn two_nodes(&self) -> (PgStore, PgStore) {
            let (node_a, schema) = self.fresh().await;
            let node_b = PgStore::connect_with_schema(&self.url, &schema)
                .await
                .unwrap();
            (node_a, node_b)
        }

        async fn cleanup(self) {
            let schemas = std::mem::take(&mut *self.schemas.lock().unwrap());
            for schema in schemas {
                drop_schema(&self.admin, &schema).await;
            }
            self.admin.close().await;
        }
    }

    async fn drop_schema(admin: &PgPool, schema: &str) {
        assert!(is_plain_identifier(schema));
        sqlx::query(AssertSqlSafe(format!(
            "drop schema if exists {schema} cascade"
        )))
        .execute(admin)
        .await
        .unwrap();
    }

    /// Drops test schemas left over by runs that panicked before their cleanup, once they
    /// are an hour old (the ULID in the name says when it was made), so that a run going
    /// on in parallel keeps its own.
    async fn sweep_stale_schemas(admin: &PgPool) {
        let names: Vec<String> = sqlx::query_scalar(
            r"select nspname::text from pg_namespace where nspname like 'kw\_test\_%'",
        )
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

    #[tokio::test]
    async fn postgres_passes_the_storage_contract() {
        let Some(db) = TestDb::from_env("contract").await else {
            return;
        };
        let db_ref = &db;
        keyward_store::contract::run_all(move || async move { db_ref.fresh().await }).await;
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_together_on_a_fresh_schema_all_migrate() {
        let Some(db) = TestDb::from_env("concurrent migrations").await else {
            return;
        };
        let schema = db.new_schema();
        let open = || PgStore::connect_with_schema(&db.url, &schema);
        let (a, b, c, d) = tokio::join!(open(), open(), open(), open());
        let stores = [a, b, c, d].map(Result::unwrap);
        for store in &stores {
            assert_eq!(store.account_count().await.unwrap(), 0);
        }
        let applied: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "select version from {schema}._sqlx_migrations where success order by version"
        )))
        .fetch_all(&db.admin)
        .await
        .unwrap();
        let expected: Vec<i64> = migration_versions().iter().map(|(v, _)| *v).collect();
        assert_eq!(applied, expected, "each migration applied exactly once");
        for store in &stores {
            store.close().await;
        }
        db.cleanup().await;
    }

    #[tokio::test]
    async fn a_dead_server_is_unavailable_not_a_panic() {
        let options = parse_url("postgres://postgres@127.0.0.1:1/test").unwrap();
        let started = Instant::now();
        let got = PgStore::open(options, Duration::from_millis(500), None).await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn bad_schema_names_are_refused_before_any_sql() {
        for name in ["", "Public", "a-b", "x; drop table account", "1abc"] {
            let got = PgStore::connect_with_schema("postgres://127.0.0.1:1/test", name).await;
            assert!(
                matches!(got, Err(StoreError::Other(_))),
                "{name:?}: {got:?}"
            );
        }
    }

    #[test]
    fn uses_travel_in_bounded_payloads_and_decode_whole() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut batch = MeterBatch::default();
        let mut sent = Vec::new();
        for _ in 0..500 {
            let account_id = AccountId::from_ulid(ulid::Ulid::generate());
            let key_id = KeyId::from_ulid(ulid::Ulid::generate());
            batch
                .last_used
                .push((account_id.clone(), key_id.clone(), at));
            batch.usage.push((
                UsageKey {
                    account_id: account_id.clone(),
                    month: "2027-01".into(),
                    endpoint: "GET /v1/api-keys".into(),
                    key_id: key_id.clone(),
                },
                1,
            ));
            sent.push((account_id, key_id, at));
        }
        let payloads = uses_payloads(&batch);
        assert!(payloads.len() > 1, "500 uses need several payloads");
        assert!(payloads.iter().all(|p| p.len() <= MAX_USES_PAYLOAD));
        let mut heard = Vec::new();
        for payload in &payloads {
            let KeyChange::Used(uses) = decode_key_uses(payload) else {
                unreachable!("decode_key_uses only returns uses");
            };
            heard.extend(uses);
        }
        assert_eq!(heard, sent);
        assert!(uses_payloads(&MeterBatch::default()).is_empty());
        assert_eq!(
            decode_key_uses("garbage,acct_x key_y 1"),
            KeyChange::Used(Vec::new())
        );
    }

    #[test]
    fn migration_trees_match_the_sqlite_backend() {
        assert_eq!(
            migration_versions(),
            keyward_store_sqlite::migration_versions()
        );
    }

    #[test]
    fn unique_and_connection_errors_map_to_conflict_and_unavailable() {
        assert!(is_unavailable_code("08006"));
        assert!(is_unavailable_code("53300"));
        assert!(is_unavailable_code("40P01"));
        assert!(!is_unavailable_code("23505"));
        assert!(!is_unavailable_code("42P01"));
        assert!(matches!(
            map_err(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            map_err(sqlx::Error::RowNotFound),
            StoreError::NotFound
        ));
    }

    fn audit() -> AuditContext {
        AuditContext {
            actor_key_id: None,
            request_id: "req_test".into(),
            time: keyward_core::timefmt::truncate(OffsetDateTime::now_utc()),
            changes: serde_json::json!({}),
        }
    }

    /// An account with `keys` keys, written through `store`; digests are made up (the
    /// store never sees a key string).
    async fn seed(store: &PgStore, keys: u8) -> (AccountId, Vec<KeyId>) {
        let now = keyward_core::timefmt::truncate(OffsetDateTime::now_utc());
        let account_id = AccountId::from_ulid(ulid::Ulid::generate());
        let new_key = |i: u8| NewKey {
            key_id: KeyId::from_ulid(ulid::Ulid::generate()),
            account_id: account_id.clone(),
            name: None,
            scopes: ScopeSet::parse(&["read"]).unwrap(),
            metadata: Metadata::default(),
            expires_at: None,
            created_at: now,
            secret: NewSecret {
                digest: KeyDigest([i; 32]),
                hint: format!("kw_test…{i}"),
            },
        };
        let account = Account {
            account_id: account_id.clone(),
            name: "acme".into(),
            plan: Plan::Pro,
            custom_limits: Limits::default(),
            created_at: now,
        };
        let first = new_key(0);
        store
            .create_account(&account, &first, &audit())
            .await
            .unwrap();
        let mut ids = vec![first.key_id];
        for i in 1..keys {
            ids.push(
                store
                    .insert_key(&new_key(i), &audit())
                    .await
                    .unwrap()
                    .key_id,
            );
        }
        (account_id, ids)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_one_of_two_nodes_passes_the_version_check() {
        let Some(db) = TestDb::from_env("optimistic concurrency").await else {
            return;
        };
        let (node_a, node_b) = db.two_nodes().await;
        let (account_id, keys) = seed(&node_a, 1).await;
        // Several rounds: a lost race shows up only when two checks interleave.
        for round in 0..6 {
            let version = node_a
                .get_key(&account_id, &keys[0])
                .await
                .unwrap()
                .unwrap()
                .version;
            let mut tasks = JoinSet::new();
            for i in 0..8 {
                let store = if i % 2 == 0 {
                    node_a.clone()
                } else {
                    node_b.clone()
                };
                let (account_id, key_id) = (account_id.clone(), keys[0].clone());
                tasks.spawn(async move {
                    let status = if round % 2 == 0 {
                        StoredStatus::Inactive
                    } else {
                        StoredStatus::Active
                    };
                    let patch = KeyPatch {
                        status: Some(status),
                        ..KeyPatch::default()
                    };
                    store
                        .update_key(&account_id, &key_id, version, &patch, &audit())
                        .await
                });
            }
            let results = tasks.join_all().await;
            let won = results.iter().filter(|r| r.is_ok()).count();
            let conflicts = results
                .iter()
                .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
                .count();
            assert_eq!((won, conflicts), (1, 7), "round {round}: {results:?}");
            let after = node_b
                .get_key(&account_id, &keys[0])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(after.version, version + 1, "round {round}");
        }
        node_a.close().await;
        node_b.close().await;
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_meter_batches_from_two_nodes_lose_no_counts() {
        let Some(db) = TestDb::from_env("concurrent metering").await else {
            return;
        };
        let (node_a, node_b) = db.two_nodes().await;
        let (account_id, keys) = seed(&node_a, 16).await;
        let base = keyward_core::timefmt::truncate(OffsetDateTime::now_utc());
        let endpoints = [
            "DELETE /v1/api-keys/{key_id}",
            "GET /v1/api-keys",
            "GET /v1/usage",
            "PATCH /v1/api-keys/{key_id}",
            "POST /v1/api-keys",
        ];
        const BATCHES: u64 = 48;
        let mut tasks = JoinSet::new();
        for i in 0..BATCHES {
            let mut usage: Vec<(UsageKey, u64)> = Vec::new();
            for key_id in &keys {
                for endpoint in endpoints {
                    let usage_key = UsageKey {
                        account_id: account_id.clone(),
                        month: "2026-11".into(),
                        endpoint: endpoint.into(),
                        key_id: key_id.clone(),
                    };
                    usage.push((usage_key, i + 1));
                }
            }
            usage.sort_by(|a, b| a.0.cmp(&b.0));
            let at = base + time::Duration::seconds(i64::try_from(i).unwrap());
            let mut last_used: Vec<_> = keys
                .iter()
                .map(|k| (account_id.clone(), k.clone(), at))
                .collect();
            // Odd batches break the sorting rule on purpose: the store's own ordering
            // must still keep writers from deadlocking.
            if i % 2 == 1 {
                usage.reverse();
                last_used.reverse();
            }
            let batch = MeterBatch {
                requests: Vec::new(),
                last_used,
                usage,
            };
            let store = if i % 2 == 0 {
                node_a.clone()
            } else {
                node_b.clone()
            };
            tasks.spawn(async move { store.write_meter_batch(&batch).await });
        }
        for result in tasks.join_all().await {
            result.unwrap();
        }
        let expected: u64 = (1..=BATCHES).sum();
        let usage = node_a.usage(&account_id, "2026-11").await.unwrap();
        assert_eq!(usage.len(), keys.len() * endpoints.len());
        assert!(usage.iter().all(|(_, _, n)| *n == expected), "{usage:?}");
        let latest = base + time::Duration::seconds(i64::try_from(BATCHES - 1).unwrap());
        for key_id in &keys {
            let key = node_b.get_key(&account_id, key_id).await.unwrap().unwrap();
            assert_eq!(key.last_used, Some(latest));
        }
        node_a.close().await;
        node_b.close().await;
        db.cleanup().await;
    }

    /// Two nodes flushing history at once each take their own ids: every row is stored
    /// once, each account's history reads back whole and newest first, and each flush's
    /// rows of one account keep consecutive ids.
    #[tokio::test]
    async fn concurrent_history_flushes_from_two_nodes_take_distinct_ids() {
        let Some(db) = TestDb::from_env("concurrent history").await else {
            return;
        };
        let (node_a, node_b) = db.two_nodes().await;
        // History has no foreign keys: accounts and keys need not exist for it.
        let accounts: Vec<(AccountId, Vec<KeyId>)> = (0..3)
            .map(|_| {
                (
                    AccountId::from_ulid(ulid::Ulid::generate()),
                    vec![KeyId::from_ulid(ulid::Ulid::generate())],
                )
            })
            .collect();
        let t = keyward_core::timefmt::truncate(OffsetDateTime::now_utc());
        const BATCHES: usize = 32;
        const ROWS: usize = 60;
        let mut tasks = JoinSet::new();
        for batch_no in 0..BATCHES {
            // Accounts interleaved within the batch, as requests arrive.
            let requests: Vec<RequestRecord> = (0..ROWS)
                .map(|i| {
                    let (account_id, keys) = &accounts[i % accounts.len()];
                    RequestRecord {
                        account_id: account_id.clone(),
                        time: t,
                        method: "GET".into(),
                        endpoint: "GET /v1/usage".into(),
                        status: 200,
                        user_agent: None,
                        key_id: keys[0].clone(),
                        request_id: RequestId::parse(format!("req_{batch_no}_{i}").as_bytes())
                            .unwrap(),
                        latency_ms: 1,
                    }
                })
                .collect();
            let store = if batch_no % 2 == 0 {
                node_a.clone()
            } else {
                node_b.clone()
            };
            tasks.spawn(async move {
                store
                    .write_meter_batch(&MeterBatch {
                        requests,
                        ..MeterBatch::default()
                    })
                    .await
            });
        }
        for result in tasks.join_all().await {
            result.unwrap();
        }
        let mut all_ids = Vec::new();
        for (account_id, _) in &accounts {
            let page = PageQuery {
                limit: 1_000,
                ..PageQuery::default()
            };
            let rows = node_b.request_history(account_id, &page).await.unwrap();
            assert_eq!(rows.len(), BATCHES * ROWS / accounts.len());
            assert!(rows.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
            // A flush's rows of this account: consecutive ids, in the order recorded.
            let mut by_batch: std::collections::BTreeMap<&str, Vec<(i64, usize)>> =
                std::collections::BTreeMap::new();
            for (id, row) in &rows {
                let (batch_no, i) = row.request_id.as_str()[4..].split_once('_').unwrap();
                by_batch
                    .entry(batch_no)
                    .or_default()
                    .push((*id, i.parse().unwrap()));
            }
            assert_eq!(by_batch.len(), BATCHES);
            for mut flush in by_batch.into_values() {
                flush.sort_unstable();
                assert!(
                    flush
                        .windows(2)
                        .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1),
                    "{flush:?}"
                );
            }
            all_ids.extend(rows.iter().map(|(id, _)| *id));
        }
        all_ids.sort_unstable();
        all_ids.dedup();
        assert_eq!(all_ids.len(), BATCHES * ROWS);
        node_a.close().await;
        node_b.close().await;
        db.cleanup().await;
    }

    /// Rows stored one per request before migration 5 read back the same afterwards, by
    /// account, key, endpoint and cursor, with their ids; ids go on after the last one
    /// handed out, even one whose row is gone.
    #[tokio::test]
    async fn migration_5_turns_the_rows_written_before_it_into_runs() {
        let Some(db) = TestDb::from_env("migration 5").await else {
            return;
        };
        let schema = db.new_schema();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(
                parse_url(&db.url)
                    .unwrap()
                    .options([("search_path", &schema)]),
            )
            .await
            .unwrap();
        let mut before_runs = migrator(Some(&schema));
        before_runs.migrations = before_runs
            .migrations
            .iter()
            .filter(|m| m.version < 5)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before_runs.run(&pool).await.unwrap();
        // Interleaved accounts, then one account's 300 rows in a row (more than a run
        // holds), with an odd user agent and a missing one among them.
        let (usage, list) = ("GET /v1/usage", "GET /v1/api-keys");
        let mut shape: Vec<(&str, &str, &str)> = vec![
            ("acct_a", "key_a1", usage),
            ("acct_b", "key_b1", list),
            ("acct_a", "key_a2", list),
            ("acct_a", "key_a1", usage),
            ("acct_b", "key_b1", usage),
        ];
        shape.extend(
            (0..300).map(|i| ("acct_a", if i % 3 == 0 { "key_a2" } else { "key_a1" }, list)),
        );
        let t0 = 1_790_000_000_i64;
        let mut written: Vec<(i64, RequestRecord)> = Vec::new();
        for (i, (account, key, endpoint)) in shape.into_iter().enumerate() {
            let n = i64::try_from(i).unwrap();
            let user_agent = match i {
                2 => None,
                3 => Some("tab\t \"quoted\" \\N é 🦀".to_owned()),
                _ => Some(format!("agent/{i}")),
            };
            let record = RequestRecord {
                account_id: AccountId::from_trusted(account.to_owned()),
                time: OffsetDateTime::from_unix_timestamp(t0 + n).unwrap(),
                method: endpoint.split(' ').next().unwrap().to_owned().into(),
                endpoint: endpoint.to_owned().into(),
                status: if i % 4 == 0 { 404 } else { 200 },
                user_agent,
                key_id: KeyId::from_trusted(key.to_owned()),
                request_id: RequestId::parse(format!("req_{i}").as_bytes()).unwrap(),
                latency_ms: u32::try_from(i).unwrap(),
            };
            let id: i64 = sqlx::query_scalar(
                "insert into request_log (account_id, time, method, endpoint, status, \
                 user_agent, key_id, request_id, latency_ms) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning request_log_id",
            )
            .bind(record.account_id.as_str())
            .bind(ts(record.time))
            .bind(&*record.method)
            .bind(&*record.endpoint)
            .bind(i64::from(record.status))
            .bind(record.user_agent.as_deref())
            .bind(record.key_id.as_str())
            .bind(record.request_id.as_str())
            .bind(i64::from(record.latency_ms))
            .fetch_one(&pool)
            .await
            .unwrap();
            written.push((id, record));
        }
        // The newest row is gone (retention, say), but its id was handed out.
        let (gone_id, _) = written.pop().unwrap();
        sqlx::query("delete from request_log where request_log_id = $1")
            .bind(gone_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = PgStore::connect_with_schema(&db.url, &schema)
            .await
            .unwrap();
        let largest_run: i64 = sqlx::query_scalar("select max(row_count) from request_log_run")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(largest_run, i64::try_from(runs::ROWS_PER_RUN).unwrap());
        let expect = |account: &str, wanted: &dyn Fn(&RequestRecord) -> bool| {
            let mut rows: Vec<(i64, RequestRecord)> = written
                .iter()
                .filter(|(_, r)| r.account_id.as_str() == account && wanted(r))
                .cloned()
                .collect();
            rows.reverse();
            rows
        };
        let read = |account: &str, query: PageQuery| {
            let store = store.clone();
            let account = AccountId::from_trusted(account.to_owned());
            async move { store.request_history(&account, &query).await.unwrap() }
        };
        let all = PageQuery {
            limit: 1_000,
            ..PageQuery::default()
        };
        assert_eq!(
            read("acct_a", all.clone()).await,
            expect("acct_a", &|_| true)
        );
        assert_eq!(
            read("acct_b", all.clone()).await,
            expect("acct_b", &|_| true)
        );
        let by_key = PageQuery {
            key_id: Some(KeyId::from_trusted("key_a2".to_owned())),
            ..all.clone()
        };
        assert_eq!(
            read("acct_a", by_key).await,
            expect("acct_a", &|r| r.key_id.as_str() == "key_a2")
        );
        let by_endpoint = PageQuery {
            endpoint: Some(usage.to_owned()),
            ..all.clone()
        };
        assert_eq!(
            read("acct_a", by_endpoint).await,
            expect("acct_a", &|r| r.endpoint == usage)
        );
        // A cursor inside a run, and a page that ends inside another.
        let everything = expect("acct_a", &|_| true);
        let cursor = everything[20].0;
        let page = read(
            "acct_a",
            PageQuery {
                before: Some(cursor),
                limit: 200,
                ..PageQuery::default()
            },
        )
        .await;
        assert_eq!(page, everything[21..221]);

        let (account_id, keys) = seed(&store, 1).await;
        let batch = MeterBatch {
            requests: vec![RequestRecord {
                account_id: account_id.clone(),
                key_id: keys[0].clone(),
                ..written[0].1.clone()
            }],
            ..MeterBatch::default()
        };
        store.write_meter_batch(&batch).await.unwrap();
        let new = store.request_history(&account_id, &all).await.unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].0, gone_id + 1);
        store.close().await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn duplicates_within_a_batch_add_up_and_big_batches_keep_their_order() {
        let Some(db) = TestDb::from_env("batch shapes").await else {
            return;
        };
        let (store, _) = db.fresh().await;
        let (account_id, keys) = seed(&store, 1).await;
        let t = keyward_core::timefmt::truncate(OffsetDateTime::now_utc());
        let usage_key = UsageKey {
            account_id: account_id.clone(),
            month: "2026-12".into(),
            endpoint: "GET /v1/usage".into(),
            key_id: keys[0].clone(),
        };
        // More rows than 65535 / 9 bind parameters would allow in one VALUES insert.
        let requests: Vec<RequestRecord> = (0..10_000_u32)
            .map(|i| RequestRecord {
                account_id: account_id.clone(),
                time: t,
                method: "GET".into(),
                endpoint: "GET /v1/usage".into(),
                status: 200,
                user_agent: (i % 2 == 0).then(|| "ua/1".to_owned()),
                key_id: keys[0].clone(),
                request_id: RequestId::parse(format!("req_{i}").as_bytes()).unwrap(),
                latency_ms: i,
            })
            .collect();
        let batch = MeterBatch {
            requests,
            last_used: vec![
                (
                    account_id.clone(),
                    keys[0].clone(),
                    t - time::Duration::hours(1),
                ),
                (account_id.clone(), keys[0].clone(), t),
            ],
            usage: vec![(usage_key.clone(), 2), (usage_key, 3)],
        };
        store.write_meter_batch(&batch).await.unwrap();
        let usage = store.usage(&account_id, "2026-12").await.unwrap();
        assert_eq!(
            usage,
            vec![("GET /v1/usage".to_owned(), keys[0].clone(), 5)]
        );
        let key = store.get_key(&account_id, &keys[0]).await.unwrap().unwrap();
        assert_eq!(key.last_used, Some(t));
        let page = store
            .request_history(
                &account_id,
                &PageQuery {
                    limit: 3,
                    ..PageQuery::default()
                },
            )
            .await
            .unwrap();
        let newest: Vec<_> = page.iter().map(|(_, r)| r.request_id.as_str()).collect();
        assert_eq!(newest, ["req_9999", "req_9998", "req_9997"]);
        assert_eq!(page[1].1.user_agent, Some("ua/1".to_owned()));
        assert_eq!(page[0].1.user_agent, None);
        store.close().await;
        db.cleanup().await;
    }
}
