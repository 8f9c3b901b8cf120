//! The batch writer of metering: request history rows, `last_used` and monthly usage.
//!
//! The request path does one short in-memory update ([`Meter::record`]); a task writes
//! everything in one transaction every `interval` (250 ms in `serve`) and once more at
//! shutdown. Trade-off: a crash (`kill -9`, power loss) loses at most the last interval
//! of history, usage and `last_used`; keys and accounts are never batched, so they are
//! never lost. A batch that can't be stored (a full disk, a database outage) goes back
//! into the meter and is written with the next one; the final flush at shutdown is
//! retried for [`SHUTDOWN_RETRY`]. Memory is bounded: past `capacity` pending history
//! rows, waiting ones included, new rows are dropped and counted in
//! `keyward_meter_dropped_rows_total` (usage counters and `last_used` are bounded by the
//! number of keys and are never dropped while the process lives).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

// foldhash rather than std's SipHash: these maps are keyed by ids keyward made itself
// (accounts, keys, route templates), not by text a caller chooses, and with SipHash
// `Meter::take` cost 1,650 instructions per row instead of 750 (callgrind).
use foldhash::{HashMap, HashMapExt as _};

use keyward_core::{AccountId, KeyId, metric};
use keyward_store::{MeterBatch, RequestRecord, Store, UsageKey};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Pending {
    requests: Vec<RequestRecord>,
    /// Each used key's account and latest use.
    last_used: HashMap<KeyId, (AccountId, OffsetDateTime)>,
    usage: HashMap<UsageKey, u64>,
    /// A batch that could not be stored, older than everything else here: the next batch
    /// takes it in ([`Meter::restore`]).
    returned: Option<MeterBatch>,
}

impl Pending {
    /// History rows held, returned ones included: what the capacity bounds.
    fn rows(&self) -> usize {
        self.requests.len() + self.returned.as_ref().map_or(0, |b| b.requests.len())
    }
}

/// How long the final flush at shutdown keeps retrying a batch that can't be stored
/// (a full disk being cleared, a database failing over) before its rows are given up.
pub const SHUTDOWN_RETRY: Duration = Duration::from_secs(5);

/// The longest wait between two attempts at a batch that can't be stored: once storage
/// is back, metering catches up within this. An attempt costs little (on PostgreSQL,
/// at most the pool's wait for a connection).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Rows of a written batch's buffer that are kept for the next batch (about 6 MB).
const MAX_RECYCLED_ROWS: usize = 32 * 1024;

/// Buffers metering until the next flush.
pub struct Meter {
    pending: Mutex<Pending>,
    capacity: usize,
    /// The emptied row buffer of the last written batch (see [`Meter::recycle`]).
    spare: Mutex<Vec<RequestRecord>>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Meter {
    /// A meter holding at most `capacity` unflushed history rows.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            capacity,
            spare: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock can only come from an allocation failure;
        // the buffer is still consistent, so keep using it.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_spare(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes back a written batch's row buffer for the next batch. Without it every
    /// batch grew from empty by doubling, copying its rows each time, on the request
    /// path: 2 % of the CPU of a validate benchmark.
    pub fn recycle(&self, batch: MeterBatch) {
        let mut rows = batch.requests;
        rows.clear();
        rows.shrink_to(MAX_RECYCLED_ROWS);
        *self.lock_spare() = rows;
    }

    /// Records one authenticated request: its history row, its key's `last_used` and its
    /// month's usage counter. The hot path only pushes the row; usage and `last_used`
    /// are derived from the rows when the batch is taken (a dropped row still counts).
    pub fn record(&self, request: RequestRecord) {
        let mut guard = self.lock();
        let pending = &mut *guard;
        if pending.rows() < self.capacity {
            pending.requests.push(request);
        } else {
            add_usage(&mut pending.usage, &mut pending.last_used, &request);
            drop(guard);
            metrics::counter!(metric::METER_DROPPED_ROWS).increment(1);
        }
    }

    /// Number of history rows waiting to be written.
    #[must_use]
    pub fn pending_rows(&self) -> usize {
        self.lock().rows()
    }

    /// Gives back a batch that could not be stored: it is written with the next batch,
    /// before the rows recorded since. Its rows count against the capacity; past it the
    /// newest rows are dropped and counted, as [`Meter::record`] drops them, and their
    /// usage and `last_used` are kept.
    pub fn restore(&self, batch: MeterBatch) {
        let mut guard = self.lock();
        let pending = &mut *guard;
        match &mut pending.returned {
            // Only the flush task takes and restores, one batch at a time; should a
            // second come back all the same, both are written, older rows first.
            Some(older) => {
                older.requests.extend(batch.requests);
                older.last_used.extend(batch.last_used);
                older.usage.extend(batch.usage);
            }
            None => pending.returned = Some(batch),
        }
        let mut dropped = 0_u64;
        while pending.rows() > self.capacity {
            let Some(newest) = pending.requests.pop() else {
                break;
            };
            add_usage(&mut pending.usage, &mut pending.last_used, &newest);
            dropped += 1;
        }
        if let Some(returned) = &mut pending.returned
            && returned.requests.len() > self.capacity
        {
            // Their usage and last_used are in the returned batch's own counters.
            dropped += (returned.requests.len() - self.capacity) as u64;
            returned.requests.truncate(self.capacity);
        }
        drop(guard);
        if dropped > 0 {
            metrics::counter!("keyward_meter_dropped_rows_total").increment(dropped);
        }
    }

    /// Sets the `keyward_meter_queue_depth` gauge to the rows waiting now. Called when
    /// metrics are scraped rather than on every request, which would cost a metrics
    /// registry lookup per request.
    pub fn publish_depth(&self) {
        metrics::gauge!(metric::METER_QUEUE_DEPTH).set(self.pending_rows() as f64);
    }

    /// Takes everything pending, sorted so that concurrent writers lock rows in the
    /// same order.
    #[must_use]
    pub fn take(&self) -> MeterBatch {
        let spare = std::mem::take(&mut *self.lock_spare());
        let mut pending = std::mem::replace(
            &mut *self.lock(),
            Pending {
                requests: spare,
                ..Pending::default()
            },
        );
        let returned = pending.returned.take();
        let Pending {
            requests,
            last_used,
            usage,
            returned: _,
        } = &mut pending;
        // Counted under borrowed keys: one owned `UsageKey` per distinct counter rather
        // than four allocations per row (the rows of a busy flush share a few counters).
        // Each counter also keeps its latest time, so that `last_used` is moved once per
        // counter rather than looked up again for every row.
        let mut counts: HashMap<BorrowedUsageKey<'_>, (u64, &RequestRecord, OffsetDateTime)> =
            HashMap::new();
        for request in requests.iter() {
            let utc = request.time.to_offset(time::UtcOffset::UTC);
            let counter = (
                request.account_id.as_str(),
                (utc.year(), u8::from(utc.month()), utc.day()),
                &*request.endpoint,
                request.key_id.as_str(),
            );
            let (n, _, latest) = counts.entry(counter).or_insert((0, request, request.time));
            *n += 1;
            *latest = (*latest).max(request.time);
        }
        for (n, request, latest) in counts.into_values() {
            *usage.entry(usage_key(request)).or_insert(0) += n;
            move_forward(last_used, request, latest);
        }
        if let Some(returned) = returned {
            // Counted already: its counters are added, its rows go first (they are older).
            for (key, n) in returned.usage {
                *usage.entry(key).or_insert(0) += n;
            }
            for (account_id, key_id, at) in returned.last_used {
                match last_used.get_mut(&key_id) {
                    Some((_, last)) => *last = (*last).max(at),
                    None => {
                        last_used.insert(key_id, (account_id, at));
                    }
                }
            }
            let mut rows = returned.requests;
            rows.append(requests);
            *requests = rows;
        }
        let mut last_used: Vec<_> = pending
            .last_used
            .into_iter()
            .map(|(key_id, (account_id, at))| (account_id, key_id, at))
            .collect();
        last_used.sort_by(|a, b| a.1.cmp(&b.1));
        let mut usage: Vec<_> = pending.usage.into_iter().collect();
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        MeterBatch {
            requests: pending.requests,
            last_used,
            usage,
        }
    }
}

/// Account, (year, month, day), endpoint and key of a usage counter, borrowed from a row.
type BorrowedUsageKey<'a> = (&'a str, (i32, u8, u8), &'a str, &'a str);

fn usage_key(request: &RequestRecord) -> UsageKey {
    UsageKey {
        account_id: request.account_id.clone(),
        day: day_of(request.time),
        endpoint: request.endpoint.clone().into_owned(),
        key_id: request.key_id.clone(),
    }
}

/// Counts `request` in the usage counters and moves its key's `last_used` forward.
fn add_usage(
    usage: &mut HashMap<UsageKey, u64>,
    last_used: &mut HashMap<KeyId, (AccountId, OffsetDateTime)>,
    request: &RequestRecord,
) {
    *usage.entry(usage_key(request)).or_insert(0) += 1;
    move_forward(last_used, request, request.time);
}

/// Moves the request's key's `last_used` forward to `time` (never back); the ids are
/// cloned only the first time the key is seen.
fn move_forward(
    last_used: &mut HashMap<KeyId, (AccountId, OffsetDateTime)>,
    request: &RequestRecord,
    time: OffsetDateTime,
) {
    match last_used.get_mut(&request.key_id) {
        Some((_, last)) if *last < time => *last = time,
        Some(_) => {}
        None => {
            last_used.insert(request.key_id.clone(), (request.account_id.clone(), time));
        }
    }
}

/// The UTC day of `t` as `YYYY-MM-DD` (the key of an account's daily usage).
#[must_use]
pub fn day_of(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `YYYY-MM` of `t` in UTC: the usage counter's month.
#[must_use]
pub fn month_of(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

/// The second of each key's `last_used` that storage holds (or a later one).
type StoredSeconds = HashMap<KeyId, i64>;

/// Drops from `batch` each `last_used` whose second `stored` already holds: storage keeps
/// seconds, and a key in steady use would otherwise be rewritten by three flushes in
/// four with the value it has. (With 1,000 busy keys among 1,000,000, each rewrite is
/// a page of the key table to write to the WAL and copy back.) Returns what storage
/// holds once `batch` is written, skipped keys included.
fn skip_stored_last_used(batch: &mut MeterBatch, stored: &StoredSeconds) -> StoredSeconds {
    let mut landed = StoredSeconds::with_capacity(batch.last_used.len());
    batch.last_used.retain(|(_, key_id, at)| {
        let second = at.unix_timestamp();
        landed.insert(key_id.clone(), second);
        stored.get(key_id) != Some(&second)
    });
    landed
}

/// Flushes `meter` every `interval` until `cancel`, then a last time, retried for up to
/// [`SHUTDOWN_RETRY`]. A batch that fails goes back into the meter and is written with
/// the next one, tried again after a wait that doubles up to 2 s while it keeps failing.
/// `written` sees every batch once it is stored (the HTTP layer moves `last_used`
/// forward in cached listings).
pub async fn run_meter(
    meter: Arc<Meter>,
    store: Arc<dyn Store>,
    interval: Duration,
    cancel: CancellationToken,
    written: impl Fn(&MeterBatch) + Send + 'static,
) {
    // Only the last written batch's keys: enough for keys in steady use, and bounded.
    let mut stored = StoredSeconds::new();
    let mut wait = interval;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = if flush(&meter, store.as_ref(), &mut stored, &written).await {
            interval
        } else {
            (wait * 2).min(MAX_BACKOFF)
        };
    }
    let give_up = Instant::now() + SHUTDOWN_RETRY;
    let mut wait = interval;
    while !flush(&meter, store.as_ref(), &mut stored, &written).await {
        if Instant::now() + wait > give_up {
            let rows = meter.pending_rows();
            metrics::counter!("keyward_meter_dropped_rows_total").increment(rows as u64);
            tracing::error!(
                rows,
                retried_for = ?SHUTDOWN_RETRY,
                "metering could not be stored before shutdown; its rows are lost"
            );
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// Writes everything the meter holds. Returns whether it is stored (or there was
/// nothing); a batch that fails goes back into the meter.
async fn flush(
    meter: &Meter,
    store: &dyn Store,
    stored: &mut StoredSeconds,
    written: &impl Fn(&MeterBatch),
) -> bool {
    let mut batch = meter.take();
    let landed = skip_stored_last_used(&mut batch, stored);
    if batch.is_empty() {
        return true;
    }
    if write_batch(store, &batch).await {
        written(&batch);
        meter.recycle(batch);
        *stored = landed;
        true
    } else {
        meter.restore(batch);
        false
    }
}

/// Writes one batch; counts its rows when it lands, logs when it does not.
async fn write_batch(store: &dyn Store, batch: &MeterBatch) -> bool {
    let rows = batch.requests.len();
    let started = std::time::Instant::now();
    match store.write_meter_batch(batch).await {
        Ok(()) => {
            // How long the batch held the store's writer (on SQLite, key changes wait).
            metrics::histogram!(metric::METER_FLUSH_DURATION)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(metric::METER_FLUSHED_ROWS).increment(rows as u64);
            true
        }
        Err(e) => {
            metrics::counter!(metric::METER_FLUSH_FAILURES).increment(1);
            tracing::warn!(error = %e, rows, "metering batch write failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::AccountId;

    fn request(key: &KeyId, at: OffsetDateTime) -> RequestRecord {
        RequestRecord {
            account_id: AccountId::from_ulid(ulid::Ulid::generate()),
            time: at,
            method: "GET".into(),
            endpoint: "GET /v1/api-keys".into(),
            status: 200,
            user_agent: None,
            key_id: key.clone(),
            request_id: keyward_core::RequestId::parse(b"req_1").unwrap(),
            latency_ms: 1,
        }
    }

    fn keys_and_times(batch: &MeterBatch) -> Vec<(KeyId, OffsetDateTime)> {
        batch
            .last_used
            .iter()
            .map(|(_, key_id, at)| (key_id.clone(), *at))
            .collect()
    }

    #[test]
    fn capacity_bounds_history_but_not_usage() {
        let meter = Meter::new(2);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        for _ in 0..5 {
            meter.record(request(&key, t));
        }
        let batch = meter.take();
        assert_eq!(batch.requests.len(), 2);
        assert_eq!(batch.usage.len(), 5, "each request had its own account");
        assert!(batch.usage.iter().all(|(_, n)| *n == 1));
        assert_eq!(keys_and_times(&batch), vec![(key, t)]);
        assert!(meter.take().is_empty());
    }

    #[test]
    fn last_used_keeps_the_latest_time() {
        let meter = Meter::new(10);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        meter.record(request(&key, t));
        meter.record(request(&key, t - time::Duration::seconds(5)));
        assert_eq!(keys_and_times(&meter.take()), vec![(key, t)]);
    }

    #[test]
    fn last_used_is_the_latest_of_one_counters_rows_whatever_their_order() {
        let meter = Meter::new(10);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        let account = AccountId::from_ulid(ulid::Ulid::generate());
        for at in [
            t - time::Duration::seconds(5),
            t,
            t - time::Duration::seconds(3),
        ] {
            meter.record(RequestRecord {
                account_id: account.clone(),
                ..request(&key, at)
            });
        }
        let batch = meter.take();
        assert_eq!(batch.usage.len(), 1, "one account, key, endpoint and month");
        assert_eq!(batch.usage[0].1, 3);
        assert_eq!(keys_and_times(&batch), vec![(key, t)]);
    }

    #[test]
    fn a_recycled_buffer_serves_the_next_batch_empty() {
        let meter = Meter::new(10);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        for _ in 0..3 {
            meter.record(request(&key, t));
        }
        let batch = meter.take();
        let buffer = batch.requests.as_ptr();
        meter.recycle(batch);
        assert!(meter.take().is_empty(), "the recycled rows are gone");
        meter.record(request(&key, t));
        let next = meter.take();
        assert_eq!(next.requests.len(), 1);
        assert_eq!(
            next.requests.as_ptr(),
            buffer,
            "the same buffer, not a new one"
        );
    }

    #[test]
    fn a_last_used_second_already_stored_is_not_written_again() {
        let (busy, idle, new) = (
            KeyId::from_ulid(ulid::Ulid::generate()),
            KeyId::from_ulid(ulid::Ulid::generate()),
            KeyId::from_ulid(ulid::Ulid::generate()),
        );
        let second = time::macros::datetime!(2026-11-27 10:00:00 UTC);
        let meter = Meter::new(10);
        meter.record(request(&busy, second));
        meter.record(request(&idle, second));
        let mut first = meter.take();
        let stored = skip_stored_last_used(&mut first, &StoredSeconds::new());
        assert_eq!(first.last_used.len(), 2, "nothing stored yet: both written");

        // The same second again for `busy`, a later one for `idle`, a first use of `new`.
        meter.record(request(&busy, second + time::Duration::milliseconds(900)));
        meter.record(request(&idle, second + time::Duration::seconds(1)));
        meter.record(request(&new, second));
        let mut next = meter.take();
        let landed = skip_stored_last_used(&mut next, &stored);
        let mut written = keys_and_times(&next);
        written.sort();
        let mut expected = vec![
            (idle.clone(), second + time::Duration::seconds(1)),
            (new, second),
        ];
        expected.sort();
        assert_eq!(written, expected);
        assert_eq!(next.requests.len(), 3, "history keeps every row");
        assert_eq!(
            landed.get(&busy),
            Some(&second.unix_timestamp()),
            "a skipped key is still known as stored, so the next flush skips it too"
        );
        assert_eq!(landed.len(), 3);
    }

    #[test]
    fn a_restored_batch_is_written_with_the_next_one_older_rows_first() {
        // Arrange: a batch taken, then given back as a failed write would, while a new
        // row arrived for the same key and counter.
        let meter = Meter::new(10);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let account = AccountId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        let row = |at| RequestRecord {
            account_id: account.clone(),
            ..request(&key, at)
        };
        meter.record(row(t));
        meter.record(row(t + time::Duration::seconds(1)));
        let failed = meter.take();
        meter.record(row(t + time::Duration::seconds(2)));

        // Act
        meter.restore(failed);
        let next = meter.take();

        // Assert
        let times: Vec<_> = next.requests.iter().map(|r| r.time).collect();
        assert_eq!(
            times,
            vec![
                t,
                t + time::Duration::seconds(1),
                t + time::Duration::seconds(2)
            ]
        );
        assert_eq!(next.usage.len(), 1, "one counter");
        assert_eq!(next.usage[0].1, 3, "counted once each");
        assert_eq!(
            keys_and_times(&next),
            vec![(key, t + time::Duration::seconds(2))]
        );
        assert!(meter.take().is_empty());
    }

    #[test]
    fn restored_rows_count_against_the_capacity_and_the_newest_are_dropped() {
        // Arrange: a batch of 3 fails while 2 more arrive, with room for 4.
        let meter = Meter::new(4);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let account = AccountId::from_ulid(ulid::Ulid::generate());
        let t = OffsetDateTime::now_utc();
        let row = |s| RequestRecord {
            account_id: account.clone(),
            ..request(&key, t + time::Duration::seconds(s))
        };
        for s in 0..3 {
            meter.record(row(s));
        }
        let failed = meter.take();
        meter.record(row(3));
        meter.record(row(4));

        // Act
        meter.restore(failed);
        meter.record(row(5));
        let next = meter.take();

        // Assert
        let kept: Vec<_> = next.requests.iter().map(|r| r.time).collect();
        assert_eq!(
            kept,
            (0..4)
                .map(|s| t + time::Duration::seconds(s))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            next.usage[0].1, 6,
            "dropped rows are still counted in usage"
        );
        assert_eq!(
            keys_and_times(&next),
            vec![(key, t + time::Duration::seconds(5))],
            "and in last_used"
        );
    }

    #[test]
    fn months_and_days_are_utc() {
        let t = time::macros::datetime!(2026-11-30 23:30 -02:00);
        assert_eq!(month_of(t), "2026-12");
        assert_eq!(day_of(t), "2026-12-01");
    }

    #[test]
    fn requests_of_two_days_count_in_two_daily_counters_of_one_month() {
        let meter = Meter::new(10);
        let key = KeyId::from_ulid(ulid::Ulid::generate());
        let account = AccountId::from_ulid(ulid::Ulid::generate());
        let first = time::macros::datetime!(2026-11-02 23:59:59 UTC);
        for second in 0..3 {
            meter.record(RequestRecord {
                account_id: account.clone(),
                ..request(&key, first + time::Duration::seconds(second))
            });
        }

        let batch = meter.take();

        let mut days: Vec<_> = batch
            .usage
            .iter()
            .map(|(k, n)| (k.day.as_str(), k.month(), *n))
            .collect();
        days.sort_unstable();
        assert_eq!(
            days,
            vec![("2026-11-02", "2026-11", 1), ("2026-11-03", "2026-11", 2)]
        );
    }
}
