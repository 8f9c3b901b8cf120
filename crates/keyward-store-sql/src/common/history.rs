//! Request history: reading an account's runs ([`keyward_store::runs`]) and retention.
//! Each backend's metering flush writes them.

use keyward_core::AccountId;
use keyward_store::runs;
use keyward_store::{PageQuery, RequestRecord, StoreResult};
use sqlx::{AssertSqlSafe, QueryBuilder};
use time::OffsetDateTime;

use super::rows::{self, ts};
use super::sql::{Get, PushArg, Statement, on};
use super::{Backend, Dialect, commit};

/// The tables of spans: the runs of an account, of a key in it, of an endpoint in it.
pub(crate) const SPAN_TABLES: [&str; 3] = [
    "request_log_span",
    "request_log_key_span",
    "request_log_endpoint_span",
];

/// A page of an account's history, newest first: [`runs::read_history`] over the spans
/// that can hold its rows (the key's, else the endpoint's, else all the account's).
pub(crate) async fn read<B: Backend>(
    backend: &B,
    account_id: &AccountId,
    query: &PageQuery,
) -> StoreResult<Vec<(i64, RequestRecord)>> {
    let [all, with_key, with_endpoint] = SPAN_TABLES;
    let (spans, narrowed_by) = match (&query.key_id, &query.endpoint) {
        (Some(key_id), _) => (with_key, Some(("key_id", key_id.as_str()))),
        (None, Some(endpoint)) => (with_endpoint, Some(("endpoint", endpoint.as_str()))),
        (None, None) => (all, None),
    };
    // `from` the spans, each joined to its run's row if `with_rows`.
    let from_spans = |qb: &mut QueryBuilder<B::Db>, with_rows: bool| {
        qb.push(spans).push(" s");
        if with_rows {
            let join = B::Db::SPAN_TO_RUN;
            qb.push(format_args!(
                "{join} request_log_run r on r.last_id = s.last_id"
            ));
        }
        qb.push(" where s.account_id = ")
            .push_arg(account_id.as_str());
        if let Some((column, value)) = narrowed_by {
            qb.push(format_args!(" and s.{column} = ")).push_arg(value);
        }
    };
    let straddling = |upper: i64| {
        let mut qb = QueryBuilder::new("select min(s.last_id) as last_id from ");
        from_spans(&mut qb, false);
        qb.push(" and s.last_id > ").push_arg(upper);
        async move { B::Db::get(&qb.build().one(backend.reader()).await?, "last_id") }
    };
    runs::read_history(account_id, query, straddling, |newest| {
        let mut qb = QueryBuilder::new("select s.last_id, r.rows from ");
        from_spans(&mut qb, true);
        qb.push(" and s.last_id <= ")
            .push_arg(newest)
            .push(" order by s.last_id desc limit ")
            .push_arg(runs::RUNS_PER_READ);
        async move {
            let runs = qb.build().all(backend.reader()).await?;
            let run = |row| Ok((B::Db::get(row, "last_id")?, B::Db::get(row, "rows")?));
            runs.iter().map(run).collect()
        }
    })
    .await
}

// Retention looks only at the oldest runs holding about `batch` rows: ids grow with time,
// so the rows past the cutoff are a prefix, and a sweep with nothing to delete reads a
// few runs instead of the whole table (there is no time index). A run that ends before the
// cutoff goes whole; one that straddles it is rewritten without its old rows.

/// The oldest runs holding about `$2` rows that have rows before `$1`.
const OLDEST_RUNS: &str = "select last_id, last_time, row_count from \
     (select last_id, first_time, last_time, row_count, \
      sum(row_count) over (order by last_id) - row_count as rows_before \
      from (select last_id, first_time, last_time, row_count from request_log_run \
            order by last_id limit $2) oldest) counted \
     where rows_before < $2 and first_time < $1";
/// Deletes the runs up to `$1` that end before `$2`: every run up to the newest one that
/// ends before the cutoff, but for a straddling run among them.
const DELETE_WHOLE_RUNS: &str =
    "delete from request_log_run where last_id <= $1 and last_time < $2";
/// Deletes the spans (from table `{}`) of runs that end before the oldest run left: they
/// have no rows. A run whose rows went while an older run stays is deleted with that run,
/// later; it reads nothing meanwhile (its rows are gone).
const DELETE_EMPTY_SPANS: &str = "delete from {} where last_id < \
     coalesce((select min(last_id) from request_log_run), 9223372036854775807)";

/// Deletes about `batch` of the history rows older than `cutoff`; returns how many.
pub(crate) async fn prune<B: Backend>(
    backend: &B,
    cutoff: OffsetDateTime,
    batch: u32,
) -> StoreResult<u64> {
    let cutoff = ts(cutoff);
    let mut tx = backend.begin().await?;
    if let Some(lock) = B::Db::LOCK_FOR_PRUNING {
        // Another node is pruning: this sweep prunes nothing, rather than rewrite the same
        // straddling runs.
        if !B::Db::get(&sqlx::query(lock).one(on(&mut tx)).await?, "locked")? {
            return Ok(0);
        }
    }
    let oldest = sqlx::query(OLDEST_RUNS).arg(cutoff).arg(i64::from(batch));
    let oldest = oldest.all(on(&mut tx)).await?;
    let (mut pruned, mut newest_whole) = (0, None);
    for run in &oldest {
        let last_id: i64 = B::Db::get(run, "last_id")?;
        let last_time: i64 = B::Db::get(run, "last_time")?;
        let row_count = rows::count::<B::Db>(run, "row_count")?;
        if last_time < cutoff {
            newest_whole = newest_whole.max(Some(last_id));
            pruned += row_count;
            continue;
        }
        let read = sqlx::query("select rows from request_log_run where last_id = $1").arg(last_id);
        let rows: String = B::Db::get(&read.one(on(&mut tx)).await?, "rows")?;
        let (kept, first_time, kept_count) = runs::rows_since(&rows, cutoff)?;
        let rewrite = "update request_log_run set rows = $1, first_time = $2, row_count = $3 \
                       where last_id = $4";
        let rewrite = sqlx::query(rewrite)
            .arg(kept)
            .arg(first_time)
            .arg(kept_count);
        rewrite.arg(last_id).run(on(&mut tx)).await?;
        pruned += row_count.saturating_sub(kept_count.unsigned_abs());
    }
    if let Some(newest_whole) = newest_whole {
        let delete = sqlx::query(DELETE_WHOLE_RUNS).arg(newest_whole).arg(cutoff);
        delete.run(on(&mut tx)).await?;
    }
    for spans in SPAN_TABLES {
        let delete = DELETE_EMPTY_SPANS.replace("{}", spans);
        sqlx::query(AssertSqlSafe(delete)).run(on(&mut tx)).await?;
    }
    commit(tx).await?;
    Ok(pruned)
}
