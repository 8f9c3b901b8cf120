//! The history-run decoder: stored runs read back by a history page
//! (`keyward_store::runs::read_history`) and by retention (`rows_since`). Stored data
//! read back, however damaged, must give an error and never a panic; what it gives must
//! keep to the page's filters and bounds.
//!
//! Input: UTF-8 lines. The first holds the page and retention parameters as
//! `name=value` pairs separated by `&` (`last_id`, `gap`, `cutoff`, `before`, `limit`,
//! `status`, `since`, `until`, `key_id`, `endpoint`), each optional; every further line
//! is one stored run's text, newest first: the newest run's `last_id` is `last_id`, each
//! older one's `gap` below the one before.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keyward_core::{AccountId, KeyId};
use keyward_store::runs::{RUNS_PER_READ, read_history, rows_since};
use keyward_store::{PageQuery, RequestRecord};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let params = lines.next().unwrap_or("");
    let texts: Vec<&str> = lines.collect();
    let number = |name: &str| -> Option<i64> {
        params
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let text_param = |name: &str| -> Option<String> {
        params
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let time = |name: &str| number(name).and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());

    // Runs as storage keeps them: `(last_id, text)`, newest first, `last_id` unique.
    let mut last_id = number("last_id").unwrap_or(1_000);
    let gap = number("gap").unwrap_or(256);
    let mut runs: Vec<(i64, String)> = Vec::new();
    for text in &texts {
        if runs.last().is_some_and(|(newer, _)| *newer <= last_id) {
            break;
        }
        runs.push((last_id, (*text).to_owned()));
        let Some(older) = last_id.checked_sub(gap.max(1)) else {
            break;
        };
        last_id = older;
    }

    // Retention: a run cut at `cutoff` keeps exactly its rows at or after it, and
    // cutting again changes nothing.
    let cutoff = number("cutoff").unwrap_or(0);
    for (_, stored) in &runs {
        let Ok((kept, first_time, count)) = rows_since(stored, cutoff) else {
            continue;
        };
        // Kept whole, the rows may not encode again (offsets from a damaged run's first
        // row can overflow): an error, which the cut above need not share.
        if let Ok((_, _, all)) = rows_since(stored, i64::MIN) {
            assert!((0..=all).contains(&count), "{count} of {all} rows kept");
        }
        let again = rows_since(&kept, cutoff).expect("a cut run decodes");
        assert_eq!(again, (kept.clone(), first_time, count), "cutting twice");
        if count == 0 {
            assert_eq!(first_time, cutoff);
        } else {
            assert!(first_time >= cutoff);
        }
    }

    // A page of history over the runs.
    let account = AccountId::from_trusted("acct_fuzz".to_owned());
    let query = PageQuery {
        before: number("before"),
        limit: number("limit").map_or(51, |l| u32::try_from(l.clamp(0, 1001)).unwrap_or(51)),
        key_id: text_param("key_id").map(KeyId::from_trusted),
        endpoint: text_param("endpoint"),
        status: number("status").and_then(|s| u16::try_from(s).ok()),
        action: None,
        since: time("since"),
        until: time("until"),
    };
    let fetches = std::cell::Cell::new(0_usize);
    let page = ready(read_history(
        &account,
        &query,
        |upper| {
            let straddling = runs
                .iter()
                .filter(|(id, _)| *id > upper)
                .map(|(id, _)| *id)
                .min();
            async move { Ok(straddling) }
        },
        |newest| {
            fetches.set(fetches.get() + 1);
            let batch: Vec<(i64, String)> = runs
                .iter()
                .filter(|(id, _)| *id <= newest)
                .take(usize::try_from(RUNS_PER_READ).unwrap_or(16))
                .cloned()
                .collect();
            async move { Ok(batch) }
        },
    ));
    assert!(
        fetches.get() <= runs.len() + 1,
        "{} fetches of {} runs",
        fetches.get(),
        runs.len()
    );
    let Ok(page) = page else {
        return;
    };
    assert!(page.len() <= query.limit as usize);
    let upper = query.before.map_or(i64::MAX, |b| b.saturating_sub(1));
    for (id, row) in &page {
        check_row(*id, row, &query, upper, &account);
    }
});

/// A row of a page is the account's, at or below the cursor, and passes every filter.
fn check_row(id: i64, row: &RequestRecord, query: &PageQuery, upper: i64, account: &AccountId) {
    assert!(id <= upper, "row {id} above the cursor");
    assert_eq!(&row.account_id, account);
    assert!(query.key_id.as_ref().is_none_or(|k| *k == row.key_id));
    assert!(query.endpoint.as_ref().is_none_or(|e| *e == row.endpoint));
    assert!(query.status.is_none_or(|s| s == row.status));
    assert!(query.since.is_none_or(|s| row.time >= s));
    assert!(query.until.is_none_or(|u| row.time < u));
    assert!(!row.request_id.as_str().is_empty());
}

/// The output of a future that never waits (the fetches above answer at once).
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a history read waited on a fetch that answers at once"),
    }
}
