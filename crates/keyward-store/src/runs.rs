//! Request history stored by runs, the part both backends share.
//!
//! A run is one account's rows of one flush, at most [`ROWS_PER_RUN`], with consecutive
//! ids. It is stored as one row holding its history rows as JSON, oldest first (a
//! `CompactRun`), and is found through span rows (the account's, and one per key and
//! per endpoint that has rows in it) that carry its first and last id. A flush of N
//! requests from A accounts so writes about A run rows instead of N rows and 3N index
//! entries: the metering writer's cost follows the number of active accounts, not of
//! requests. ARCHITECTURE.md tells why; the backends' schemas give the tables.

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

/// A run as stored: a JSON object whose texts that repeat from row to row (the route, the
/// key, the user agent) are written once, in lists the rows index, and whose ids and
/// times are offsets from the run's first. A row of `POST /v1/api-keys/validate` takes
/// about 55 bytes, against 135 as an array of its nine fields, so a flush encodes, writes
/// and logs less than half as many bytes.
#[derive(Serialize, Deserialize)]
struct CompactRun<'a> {
    first_id: i64,
    first_time: i64,
    /// Method and route template (`["GET", "GET /v1/api-keys"]`).
    routes: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    keys: Vec<Cow<'a, str>>,
    agents: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    rows: Vec<CompactRow<'a>>,
}

/// One row of a [`CompactRun`]: id and time as offsets from the run's first, the index
/// of its route, its status, the index of its user agent (if any) and of its key, its
/// request id and its latency.
#[derive(Serialize, Deserialize)]
struct CompactRow<'a>(
    i64,
    i64,
    u32,
    u16,
    Option<u32>,
    u32,
    #[serde(borrow)] Cow<'a, str>,
    u32,
);

/// One history row of a run, borrowed from the run's encoding (or from the records of a
/// flush).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowView<'r> {
    id: i64,
    time: i64,
    method: &'r str,
    endpoint: &'r str,
    status: u16,
    user_agent: Option<&'r str>,
    key_id: &'r str,
    request_id: &'r str,
    latency_ms: u32,
}

impl<'r> RowView<'r> {
    fn of_record(id: i64, r: &'r RequestRecord) -> Self {
        Self {
            id,
            time: r.time.unix_timestamp(),
            method: &r.method,
            endpoint: &r.endpoint,
            status: r.status,
            user_agent: r.user_agent.as_deref(),
            key_id: r.key_id.as_str(),
            request_id: r.request_id.as_str(),
            latency_ms: r.latency_ms,
        }
    }
}

impl<'a> CompactRun<'a> {
    /// Decodes a run's stored text.
    fn decode(json: &'a str) -> StoreResult<Self> {
        serde_json::from_str(json).map_err(|_| corrupt("history run"))
    }

    /// Its rows, oldest first.
    ///
    /// # Errors
    /// `Other` if a row points past its run's lists or its offsets overflow.
    fn rows(&self) -> StoreResult<Vec<RowView<'_>>> {
        self.rows
            .iter()
            .map(|r| {
                let (method, endpoint) = listed(&self.routes, r.2)?;
                Ok(RowView {
                    id: self
                        .first_id
                        .checked_add(r.0)
                        .ok_or_else(|| corrupt("history id"))?,
                    time: self
                        .first_time
                        .checked_add(r.1)
                        .ok_or_else(|| corrupt("history time"))?,
                    method,
                    endpoint,
                    status: r.3,
                    user_agent: r
                        .4
                        .map(|i| listed(&self.agents, i).map(|a| &**a))
                        .transpose()?,
                    key_id: listed(&self.keys, r.5)?,
                    request_id: &r.6,
                    latency_ms: r.7,
                })
            })
            .collect()
    }
}

/// Entry `index` of one of a compact run's lists.
fn listed<T>(list: &[T], index: u32) -> StoreResult<&T> {
    list.get(index as usize)
        .ok_or_else(|| corrupt("history run"))
}

/// Rows encoded as a [`CompactRun`], with what the run's span rows need.
struct EncodedRun<'r> {
    json: String,
    first_time: i64,
    last_time: i64,
    /// The keys with rows in it, sorted.
    key_ids: Vec<&'r str>,
    /// The endpoints with rows in it, sorted.
    endpoints: Vec<&'r str>,
}

/// Encodes rows, oldest first, as a [`CompactRun`].
fn encode_run<'r>(rows: &[RowView<'r>]) -> StoreResult<EncodedRun<'r>> {
    let first_id = rows.first().map_or(0, |r| r.id);
    let first_time = rows.iter().map(|r| r.time).min().unwrap_or(0);
    let last_time = rows.iter().map(|r| r.time).max().unwrap_or(0);
    let (mut routes, mut keys, mut agents) = (Listed::new(), Listed::new(), Listed::new());
    let mut compact = Vec::with_capacity(rows.len());
    for r in rows {
        compact.push(CompactRow(
            r.id.checked_sub(first_id)
                .ok_or_else(|| corrupt("history id"))?,
            r.time
                .checked_sub(first_time)
                .ok_or_else(|| corrupt("history time"))?,
            routes.index_of((r.method, r.endpoint)),
            r.status,
            r.user_agent.map(|agent| agents.index_of(agent)),
            keys.index_of(r.key_id),
            Cow::Borrowed(r.request_id),
            r.latency_ms,
        ));
    }
    let run = CompactRun {
        first_id,
        first_time,
        routes: routes
            .values
            .iter()
            .map(|&(method, endpoint)| (Cow::Borrowed(method), Cow::Borrowed(endpoint)))
            .collect(),
        keys: keys.values.iter().map(|&k| Cow::Borrowed(k)).collect(),
        agents: agents.values.iter().map(|&a| Cow::Borrowed(a)).collect(),
        rows: compact,
    };
    let json = serde_json::to_string(&run).map_err(|e| StoreError::Other(e.into()))?;
    let mut key_ids = keys.values;
    key_ids.sort_unstable();
    let mut endpoints: Vec<&str> = routes.values.iter().map(|&(_, e)| e).collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    Ok(EncodedRun {
        json,
        first_time,
        last_time,
        key_ids,
        endpoints,
    })
}

/// Distinct values in order of first appearance, and each one's index (a run's routes,
/// keys and user agents; a flush's accounts). Consecutive rows mostly repeat the same
/// value, so the last one is checked before the map.
struct Listed<T> {
    values: Vec<T>,
    index: foldhash::HashMap<T, u32>,
    last: Option<(T, u32)>,
}

impl<T: Copy + Eq + std::hash::Hash> Listed<T> {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            index: foldhash::HashMap::default(),
            last: None,
        }
    }

    fn index_of(&mut self, value: T) -> u32 {
        if let Some((last, i)) = self.last
            && last == value
        {
            return i;
        }
        let next = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        let i = *self.index.entry(value).or_insert_with(|| {
            self.values.push(value);
            next
        });
        self.last = Some((value, i));
        i
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
    /// Its rows, oldest first, encoded for the run's row.
    pub rows: String,
}

impl<'a> Run<'a> {
    /// How many rows it holds.
    #[must_use]
    pub fn row_count(&self) -> i64 {
        self.last_id - self.first_id + 1
    }

    /// The rows of the key spans of `runs`: `(account, key, first id, last id)` for each
    /// run and each key with rows in it.
    pub fn key_spans(runs: &'a [Self]) -> impl Iterator<Item = (&'a str, &'a str, i64, i64)> {
        Self::narrower_spans(runs, |run| &run.key_ids)
    }

    /// The rows of the endpoint spans of `runs`, as [`Run::key_spans`] for endpoints.
    pub fn endpoint_spans(runs: &'a [Self]) -> impl Iterator<Item = (&'a str, &'a str, i64, i64)> {
        Self::narrower_spans(runs, |run| &run.endpoints)
    }

    fn narrower_spans(
        runs: &'a [Self],
        values: fn(&'a Self) -> &'a [&'a str],
    ) -> impl Iterator<Item = (&'a str, &'a str, i64, i64)> {
        runs.iter().flat_map(move |run| {
            values(run)
                .iter()
                .map(move |value| (run.account_id, *value, run.first_id, run.last_id))
        })
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
    let mut views = Vec::with_capacity(ROWS_PER_RUN);
    for run_rows in runs_of_rows {
        let first_id = next_id;
        views.clear();
        views.extend(
            run_rows
                .iter()
                .zip(first_id..)
                .map(|(r, id)| RowView::of_record(id, r)),
        );
        next_id += i64::try_from(run_rows.len()).unwrap_or(i64::MAX);
        let encoded = encode_run(&views)?;
        runs.push(Run {
            account_id: run_rows[0].account_id.as_str(),
            first_id,
            last_id: next_id - 1,
            first_time: encoded.first_time,
            last_time: encoded.last_time,
            rows: encoded.json,
            key_ids: encoded.key_ids,
            endpoints: encoded.endpoints,
        });
    }
    Ok(runs)
}

/// `rows` grouped by account, each account's rows in the order they were recorded, the
/// accounts in the order of their first row. One hash lookup per row: sorting by account
/// compared ids some fifteen times per row in a flush of 25,000 rows.
fn rows_by_account(rows: &[RequestRecord]) -> Vec<Vec<&RequestRecord>> {
    let mut accounts = Listed::new();
    let mut groups: Vec<Vec<&RequestRecord>> = Vec::new();
    for row in rows {
        let group = accounts.index_of(row.account_id.as_str()) as usize;
        if group == groups.len() {
            groups.push(Vec::new());
        }
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
            let run = CompactRun::decode(rows)?;
            for row in run.rows()?.into_iter().rev() {
                let wanted = row.id <= upper
                    && query
                        .key_id
                        .as_ref()
                        .is_none_or(|k| k.as_str() == row.key_id)
                    && query.endpoint.as_ref().is_none_or(|e| e == row.endpoint)
                    && query.status.is_none_or(|s| s == row.status)
                    && since.is_none_or(|since| row.time >= since)
                    && until.is_none_or(|until| row.time < until);
                if !wanted {
                    continue;
                }
                page.push((
                    row.id,
                    RequestRecord {
                        account_id: account_id.clone(),
                        time: OffsetDateTime::from_unix_timestamp(row.time)
                            .map_err(|_| corrupt("history time"))?,
                        method: Cow::Owned(row.method.to_owned()),
                        endpoint: Cow::Owned(row.endpoint.to_owned()),
                        status: row.status,
                        user_agent: row.user_agent.map(str::to_owned),
                        key_id: KeyId::from_trusted(row.key_id.to_owned()),
                        request_id: RequestId::parse(row.request_id.as_bytes())
                            .ok_or_else(|| corrupt("request id"))?,
                        latency_ms: row.latency_ms,
                    },
                ));
                if page.len() == limit {
                    return Ok(page);
                }
            }
            // A run stored at the smallest id has none older (and `- 1` would overflow).
            let Some(older) = last_id.checked_sub(1) else {
                return Ok(page);
            };
            newest_run = older;
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
    let run = CompactRun::decode(rows)?;
    let mut kept = run.rows()?;
    kept.retain(|row| row.time >= cutoff);
    let encoded = encode_run(&kept)?;
    let first_time = if kept.is_empty() {
        cutoff
    } else {
        encoded.first_time
    };
    Ok((
        encoded.json,
        first_time,
        i64::try_from(kept.len()).unwrap_or(i64::MAX),
    ))
}

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
            let decoded = CompactRun::decode(&run.rows).unwrap();
            let ids: Vec<i64> = decoded.rows().unwrap().iter().map(|r| r.id).collect();
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
                .flat_map(|run| {
                    let decoded = CompactRun::decode(&run.rows).unwrap();
                    let ids: Vec<String> = decoded
                        .rows()
                        .unwrap()
                        .iter()
                        .map(|r| r.request_id.to_owned())
                        .collect();
                    ids
                })
                .collect();
            assert_eq!(stored, recorded, "{account}'s rows in the order recorded");
        }
    }

    fn varied_rows() -> Vec<RequestRecord> {
        (0..300)
            .map(|n| {
                let mut r = row("acct_a", n / 3);
                if n % 2 == 0 {
                    r.method = Cow::Borrowed("POST");
                    r.endpoint = Cow::Borrowed("POST /v1/api-keys/validate");
                    r.status = 401;
                }
                r.user_agent = match n % 4 {
                    0 => None,
                    1 => Some("curl/8.5".to_owned()),
                    2 => Some("quote \" backslash \\ \u{e9}\u{1}".to_owned()),
                    _ => Some(format!("agent {n}")),
                };
                r.key_id = KeyId::from_trusted(format!("key_{}", n % 5));
                r.latency_ms = u32::try_from(n).unwrap();
                r
            })
            .collect()
    }

    #[test]
    fn compact_runs_give_back_every_field_of_every_row() {
        let rows = varied_rows();
        let runs = runs_of(&rows, 41).unwrap();
        assert_eq!(runs.len(), 2);
        let mut read = Vec::new();
        for run in &runs {
            assert!(run.rows.starts_with('{'), "written compact");
            let decoded = CompactRun::decode(&run.rows).unwrap();
            let views = decoded.rows().unwrap();
            assert_eq!(views.first().unwrap().id, run.first_id);
            assert_eq!(views.last().unwrap().id, run.last_id);
            assert_eq!(run.first_time, views.iter().map(|r| r.time).min().unwrap());
            assert_eq!(run.last_time, views.iter().map(|r| r.time).max().unwrap());
            let mut keys: Vec<&str> = views.iter().map(|r| r.key_id).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(run.key_ids, keys);
            let mut endpoints: Vec<&str> = views.iter().map(|r| r.endpoint).collect();
            endpoints.sort_unstable();
            endpoints.dedup();
            assert_eq!(run.endpoints, endpoints);
            read.extend(views.iter().map(|v| format!("{v:?}")));
        }
        let written: Vec<String> = rows
            .iter()
            .zip(41..)
            .map(|(r, id)| format!("{:?}", RowView::of_record(id, r)))
            .collect();
        assert_eq!(read, written);
    }

    #[test]
    fn a_compact_run_holds_a_typical_row_in_well_under_half_the_bytes() {
        // Validate rows as the benchmark makes them: one key, no user agent.
        let rows: Vec<RequestRecord> = (0..256)
            .map(|n| {
                let mut r = row("acct_a", 1_800_000_000 + n);
                r.method = Cow::Borrowed("POST");
                r.endpoint = Cow::Borrowed("POST /v1/api-keys/validate");
                r.key_id = KeyId::from_trusted("key_01KB2D3E4F5G6H7J8K9M0N1P2Q".to_owned());
                r.request_id =
                    RequestId::parse(format!("req_01KB2D3E4F5G6H7J8K9M0N{n:04}").as_bytes())
                        .unwrap();
                r
            })
            .collect();
        let runs = runs_of(&rows, 1).unwrap();
        let views: Vec<RowView<'_>> = rows
            .iter()
            .zip(1..)
            .map(|(r, id)| RowView::of_record(id, r))
            .collect();
        // The same rows as arrays of their nine fields.
        let arrays: Vec<serde_json::Value> = views
            .iter()
            .map(|r| {
                serde_json::json!([
                    r.id,
                    r.time,
                    r.method,
                    r.endpoint,
                    r.status,
                    r.user_agent,
                    r.key_id,
                    r.request_id,
                    r.latency_ms
                ])
            })
            .collect();
        let arrays = serde_json::to_string(&arrays).unwrap();
        assert!(
            runs[0].rows.len() * 2 < arrays.len(),
            "{} bytes against {}",
            runs[0].rows.len(),
            arrays.len()
        );
    }

    #[test]
    fn pruning_a_run_keeps_its_rows_since_the_cutoff() {
        let rows = varied_rows();
        // Ids need not be consecutive within a run: each row's offset is kept.
        let views: Vec<RowView<'_>> = rows
            .iter()
            .zip((7..).step_by(3))
            .map(|(r, id)| RowView::of_record(id, r))
            .collect();
        let stored = encode_run(&views).unwrap().json;
        assert_eq!(CompactRun::decode(&stored).unwrap().rows().unwrap(), views);

        let cutoff = views[150].time;
        let (kept, first_time, count) = rows_since(&stored, cutoff).unwrap();
        let wanted: Vec<RowView<'_>> = views.iter().filter(|r| r.time >= cutoff).copied().collect();
        assert_eq!(CompactRun::decode(&kept).unwrap().rows().unwrap(), wanted);
        assert_eq!(first_time, cutoff);
        assert_eq!(count, i64::try_from(wanted.len()).unwrap());

        let (none_left, time, count) = rows_since(&stored, i64::MAX).unwrap();
        assert_eq!((time, count), (i64::MAX, 0));
        assert!(
            CompactRun::decode(&none_left)
                .unwrap()
                .rows()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_history_read_of_a_run_stored_at_the_smallest_id_ends_without_overflow() {
        // Found with the `history_run` fuzz target: `last_id - 1` overflowed.
        let rows: Vec<RequestRecord> = (0..3).map(|n| row("acct_a", n)).collect();
        let run = runs_of(&rows, 1).unwrap().remove(0).rows;
        let account = AccountId::from_trusted("acct_a".to_owned());
        let query = PageQuery {
            limit: 10,
            ..PageQuery::default()
        };
        let read = read_history(
            &account,
            &query,
            |_| async { Ok(None) },
            // Every `newest` is at least the smallest id: the run is always fetched.
            |_| {
                let runs = vec![(i64::MIN, run.clone())];
                async move { Ok(runs) }
            },
        );
        let mut read = std::pin::pin!(read);
        let std::task::Poll::Ready(page) = read
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            panic!("the fetches answer at once");
        };
        assert_eq!(page.unwrap().len(), 3);
    }

    #[test]
    fn a_compact_row_that_points_outside_its_run_is_refused() {
        let base = r#"{"first_id":1,"first_time":10,"routes":[["GET","GET /v1/api-keys"]],"keys":["key_a"],"agents":["curl"],"rows":[ROW]}"#;
        let good = base.replace("ROW", r#"[0,0,0,200,0,0,"req_1",3]"#);
        let rows = CompactRun::decode(&good).unwrap().rows().unwrap().len();
        assert_eq!(rows, 1);
        for bad in [
            r#"[0,0,1,200,0,0,"req_1",3]"#,
            r#"[0,0,0,200,1,0,"req_1",3]"#,
            r#"[0,0,0,200,0,1,"req_1",3]"#,
            r#"[9223372036854775807,0,0,200,0,0,"req_1",3]"#,
            r#"[0,0,0,200,0,0,"req_1"]"#,
        ] {
            let run = base.replace("ROW", bad);
            let refused = CompactRun::decode(&run).and_then(|run| run.rows().map(|_| ()));
            assert!(refused.is_err(), "{bad}");
        }
    }
}
