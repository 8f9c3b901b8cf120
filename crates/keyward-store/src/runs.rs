//! Request history stored by runs, the part both backends share; each keeps its own SQL.
//!
//! A run is one account's rows of one flush, at most [`ROWS_PER_RUN`], with consecutive
//! ids. It is stored as one row holding its history rows as a JSON array, oldest first,
//! and is found through span rows (the account's, and one per key and per endpoint that
//! has rows in it) that carry its first and last id. A flush of N requests from A
//! accounts so writes about A run rows instead of N rows and 3N index entries: the
//! metering writer's cost follows the number of active accounts, not of requests.
//! ARCHITECTURE.md tells why; the backends' migrations give the tables.

use std::borrow::Cow;
use std::future::Future;

use keyward_core::{AccountId, KeyId, RequestId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{PageQuery, RequestRecord, StoreError, StoreResult};

/// History rows per run at most: one account's rows of a flush are split into runs of this
/// many, so that a page of history decodes a few hundred rows at most.
pub const ROWS_PER_RUN: usize = 256;

/// Runs a history read fetches at a time, newest first, until its page is full.
pub const RUNS_PER_READ: i64 = 16;

/// One history row as a run stores it: a JSON array of id, time, method, endpoint,
/// status, user agent, key id, request id and latency (a tuple struct, which serde writes
/// as an array). The account is the run's. Texts are borrowed from the stored JSON when
/// they have no escapes.
#[derive(Serialize, Deserialize)]
struct StoredRow<'a>(
    i64,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    u16,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    u32,
);

impl StoredRow<'_> {
    fn time(&self) -> i64 {
        self.1
    }
}

/// One account's rows of a flush: ids `first_id..=last_id`, their times, the keys and
/// endpoints that have rows in it (sorted, once each), and the rows encoded for the run's
/// row.
#[derive(Debug)]
pub struct Run<'a> {
    /// The account whose rows these are.
    pub account_id: &'a str,
    /// The id of its oldest row.
    pub first_id: i64,
    /// The id of its newest row; a run's row is keyed by it.
    pub last_id: i64,
    /// The earliest time of its rows.
    pub first_time: i64,
    /// The latest time of its rows.
    pub last_time: i64,
    /// The keys with rows in it.
    pub key_ids: Vec<&'a str>,
    /// The endpoints with rows in it.
    pub endpoints: Vec<&'a str>,
    /// A JSON array of its rows, oldest first.
    pub rows: String,
}

impl Run<'_> {
    /// How many rows it holds.
    #[must_use]
    pub fn row_count(&self) -> i64 {
        self.last_id - self.first_id + 1
    }
}

/// Splits a flush's rows into runs, numbering them from `next_id`: each account's rows
/// get consecutive ids in the order they were recorded. The next free id is the last
/// run's `last_id + 1` (`next_id` if `rows` is empty).
///
/// # Errors
/// `Other` if a row can't be encoded (it can't: every field is a plain value).
pub fn runs_of(rows: &[RequestRecord], mut next_id: i64) -> StoreResult<Vec<Run<'_>>> {
    let by_account = rows_by_account(rows);
    let runs_of_rows = by_account
        .iter()
        .flat_map(|account_rows| account_rows.chunks(ROWS_PER_RUN));
    let mut runs = Vec::new();
    for run_rows in runs_of_rows {
        let first_id = next_id;
        let mut stored = Vec::with_capacity(run_rows.len());
        let (mut key_ids, mut endpoints) = (Vec::new(), Vec::new());
        for r in run_rows {
            stored.push(StoredRow(
                next_id,
                r.time.unix_timestamp(),
                Cow::Borrowed(&r.method),
                Cow::Borrowed(&r.endpoint),
                r.status,
                r.user_agent.as_deref().map(Cow::Borrowed),
                Cow::Borrowed(r.key_id.as_str()),
                Cow::Borrowed(r.request_id.as_str()),
                r.latency_ms,
            ));
            // Rows of one key and endpoint often follow each other: skipping repeats here
            // leaves little for the sort below.
            if key_ids.last() != Some(&r.key_id.as_str()) {
                key_ids.push(r.key_id.as_str());
            }
            if endpoints.last() != Some(&&*r.endpoint) {
                endpoints.push(&*r.endpoint);
            }
            next_id += 1;
        }
        for values in [&mut key_ids, &mut endpoints] {
            values.sort_unstable();
            values.dedup();
        }
        runs.push(Run {
            account_id: run_rows[0].account_id.as_str(),
            first_id,
            last_id: next_id - 1,
            first_time: stored.iter().map(StoredRow::time).min().unwrap_or(0),
            last_time: stored.iter().map(StoredRow::time).max().unwrap_or(0),
            rows: serde_json::to_string(&stored).map_err(|e| StoreError::Other(e.into()))?,
            key_ids,
            endpoints,
        });
    }
    Ok(runs)
}

/// `rows` grouped by account, each account's rows in the order they were recorded, the
/// accounts in the order of their first row. One hash lookup per row: sorting by account
/// compared ids some fifteen times per row in a flush of 25,000 rows.
fn rows_by_account(rows: &[RequestRecord]) -> Vec<Vec<&RequestRecord>> {
    let mut group_of: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
    let mut groups: Vec<Vec<&RequestRecord>> = Vec::new();
    for row in rows {
        let group = *group_of.entry(row.account_id.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(row);
    }
    groups
}

/// The newest id a page may hold: one below its cursor, if it has one.
fn newest_wanted_id(query: &PageQuery) -> i64 {
    query
        .before
        .map_or(i64::MAX, |before| before.saturating_sub(1))
}

/// Reads a page of an account's history from its runs. `fetch(newest)` returns up to
/// [`RUNS_PER_READ`] of the runs the query can use (the account's, or those with rows of
/// its key or endpoint) whose `last_id` is at most `newest`, newest first, as
/// `(last_id, rows)`. `straddling(upper)` returns the smallest `last_id` of those runs
/// above `upper`: with a cursor, the page starts in that run (a cursor usually falls
/// inside a run), and only its rows up to `upper` count.
///
/// Runs and each run's rows both come in order, so there is no sort. Filters the runs
/// cannot narrow (status, time, the key or endpoint within a run) are applied to the
/// decoded rows.
///
/// # Errors
/// What `straddling` or `fetch` returns, or `Other` for a run or row that does not
/// decode.
pub async fn read_history<S, StraddlingFut, F, Fut>(
    account_id: &AccountId,
    query: &PageQuery,
    straddling: S,
    mut fetch: F,
) -> StoreResult<Vec<(i64, RequestRecord)>>
where
    S: FnOnce(i64) -> StraddlingFut,
    StraddlingFut: Future<Output = StoreResult<Option<i64>>>,
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = StoreResult<Vec<(i64, String)>>>,
{
    let upper = newest_wanted_id(query);
    let (since, until) = (
        query.since.map(OffsetDateTime::unix_timestamp),
        query.until.map(OffsetDateTime::unix_timestamp),
    );
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    let mut page = Vec::new();
    // The API asks for 1 to 1,000 rows; an empty page must not read every run.
    if limit == 0 {
        return Ok(page);
    }
    let mut newest_run = match query.before {
        Some(_) => straddling(upper).await?.unwrap_or(upper),
        None => upper,
    };
    loop {
        let runs = fetch(newest_run).await?;
        for (last_id, rows) in &runs {
            let rows: Vec<StoredRow<'_>> =
                serde_json::from_str(rows).map_err(|_| corrupt("history run"))?;
            for StoredRow(
                id,
                time,
                method,
                endpoint,
                status,
                user_agent,
                key_id,
                request_id,
                latency_ms,
            ) in rows.into_iter().rev()
            {
                let wanted = id <= upper
                    && query.key_id.as_ref().is_none_or(|k| k.as_str() == key_id)
                    && query.endpoint.as_ref().is_none_or(|e| *e == endpoint)
                    && query.status.is_none_or(|s| s == status)
                    && since.is_none_or(|since| time >= since)
                    && until.is_none_or(|until| time < until);
                if !wanted {
                    continue;
                }
                page.push((
                    id,
                    RequestRecord {
                        account_id: account_id.clone(),
                        time: OffsetDateTime::from_unix_timestamp(time)
                            .map_err(|_| corrupt("history time"))?,
                        method: Cow::Owned(method.into_owned()),
                        endpoint: Cow::Owned(endpoint.into_owned()),
                        status,
                        user_agent: user_agent.map(Cow::into_owned),
                        key_id: KeyId::from_trusted(key_id.into_owned()),
                        request_id: RequestId::parse(request_id.as_bytes())
                            .ok_or_else(|| corrupt("request id"))?,
                        latency_ms,
                    },
                ));
                if page.len() == limit {
                    return Ok(page);
                }
            }
            newest_run = last_id - 1;
        }
        if i64::try_from(runs.len()).unwrap_or(i64::MAX) < RUNS_PER_READ {
            return Ok(page);
        }
    }
}

/// A run that straddles a retention cutoff, without its rows older than the cutoff: the
/// new rows JSON, the earliest time left and the number of rows left. A straddling run
/// keeps its newest row at least, so the time is the cutoff only if none is left.
///
/// # Errors
/// `Other` if the stored rows do not decode.
pub fn rows_since(rows: &str, cutoff: i64) -> StoreResult<(String, i64, i64)> {
    let rows: Vec<StoredRow<'_>> =
        serde_json::from_str(rows).map_err(|_| corrupt("history run"))?;
    let kept: Vec<&StoredRow<'_>> = rows.iter().filter(|row| row.time() >= cutoff).collect();
    let first_time = kept.iter().map(|row| row.time()).min().unwrap_or(cutoff);
    let kept_json = serde_json::to_string(&kept).map_err(|e| StoreError::Other(e.into()))?;
    Ok((
        kept_json,
        first_time,
        i64::try_from(kept.len()).unwrap_or(i64::MAX),
    ))
}

/// The span table a history query walks, and the column and value that narrow it: the
/// runs with the key's rows, else those with the endpoint's, else all the account's.
#[must_use]
pub fn spans_for(query: &PageQuery) -> (&'static str, Option<(&'static str, &str)>) {
    match (&query.key_id, &query.endpoint) {
        (Some(key_id), _) => ("request_log_key_span", Some(("key_id", key_id.as_str()))),
        (None, Some(endpoint)) => ("request_log_endpoint_span", Some(("endpoint", endpoint))),
        (None, None) => ("request_log_span", None),
    }
}

// Retention's statements, in the SQL both backends read alike. Only the oldest runs
// holding about `batch` rows are looked at: ids grow with time, so the rows past the
// cutoff are a prefix, and a sweep with nothing to delete reads a few runs instead of the
// whole table (there is no time index). A run that ends before the cutoff goes whole;
// one that straddles it is rewritten without its old rows.

/// The oldest runs holding about `$2` rows that have rows before `$1`: `(last_id,
/// last_time, row_count)`.
pub const PRUNE_OLDEST_RUNS: &str = "select last_id, last_time, row_count from \
     (select last_id, first_time, last_time, row_count, \
      sum(row_count) over (order by last_id) - row_count as rows_before \
      from (select last_id, first_time, last_time, row_count from request_log_run \
            order by last_id limit $2) oldest) counted \
     where rows_before < $2 and first_time < $1";
/// Deletes the runs up to `$1` that end before `$2`: every run up to the newest one that
/// ends before the cutoff, but for a straddling run among them.
pub const PRUNE_WHOLE_RUNS: &str =
    "delete from request_log_run where last_id <= $1 and last_time < $2";
/// The rows of run `$1`.
pub const PRUNE_READ_RUN: &str = "select rows from request_log_run where last_id = $1";
/// Rewrites run `$4` with the rows, first time and count [`rows_since`] gives.
pub const PRUNE_REWRITE_RUN: &str =
    "update request_log_run set rows = $1, first_time = $2, row_count = $3 where last_id = $4";
/// Deletes the spans of runs that end before the oldest run left: they have no rows. A
/// run whose rows went while an older run stays is deleted with that run, later; it reads
/// nothing meanwhile (its rows are gone).
pub const PRUNE_EMPTY_SPANS: [&str; 3] = [
    "delete from request_log_span where last_id < \
     coalesce((select min(last_id) from request_log_run), 9223372036854775807)",
    "delete from request_log_key_span where last_id < \
     coalesce((select min(last_id) from request_log_run), 9223372036854775807)",
    "delete from request_log_endpoint_span where last_id < \
     coalesce((select min(last_id) from request_log_run), 9223372036854775807)",
];

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Other(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(account: &str, n: usize) -> RequestRecord {
        RequestRecord {
            account_id: AccountId::from_trusted(account.to_owned()),
            time: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(i64::try_from(n).unwrap()),
            method: Cow::Borrowed("GET"),
            endpoint: Cow::Borrowed("GET /v1/api-keys"),
            status: 200,
            user_agent: None,
            key_id: KeyId::from_trusted(format!("key_{account}")),
            request_id: RequestId::parse(format!("req_{n}").as_bytes()).unwrap(),
            latency_ms: 1,
        }
    }

    #[test]
    fn each_accounts_rows_get_consecutive_ids_in_the_order_they_were_recorded() {
        // Three accounts interleaved; `c` comes first, then `b`, then `a`. `a` and `b`
        // have more rows than a run holds.
        let rows: Vec<RequestRecord> = (0..700)
            .map(|n| match n {
                _ if n % 7 == 0 => row("acct_c", n),
                _ if n % 2 == 0 => row("acct_a", n),
                _ => row("acct_b", n),
            })
            .collect();
        let runs = runs_of(&rows, 1_000).unwrap();

        let mut order: Vec<&str> = runs.iter().map(|run| run.account_id).collect();
        order.dedup();
        assert_eq!(
            order,
            ["acct_c", "acct_b", "acct_a"],
            "each account's runs together, accounts by their first row"
        );
        let mut next = 1_000;
        for run in &runs {
            assert_eq!(run.first_id, next, "runs number the rows without a gap");
            assert!(run.row_count() <= ROWS_PER_RUN as i64);
            let stored: Vec<StoredRow<'_>> = serde_json::from_str(&run.rows).unwrap();
            let ids: Vec<i64> = stored.iter().map(|r| r.0).collect();
            assert_eq!(ids, (run.first_id..=run.last_id).collect::<Vec<_>>());
            next = run.last_id + 1;
        }
        assert_eq!(next, 1_700);
        assert_eq!(
            runs.len(),
            5,
            "c: 100 rows; a and b: 300 each, two runs each"
        );

        for account in ["acct_a", "acct_b", "acct_c"] {
            let recorded: Vec<&str> = rows
                .iter()
                .filter(|r| r.account_id.as_str() == account)
                .map(|r| r.request_id.as_str())
                .collect();
            let stored: Vec<String> = runs
                .iter()
                .filter(|run| run.account_id == account)
                .flat_map(|run| serde_json::from_str::<Vec<StoredRow<'_>>>(&run.rows).unwrap())
                .map(|r| r.7.into_owned())
                .collect();
            assert_eq!(stored, recorded, "{account}'s rows in the order recorded");
        }
    }
}
