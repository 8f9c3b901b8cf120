//! Fills request history and usage counters with `ROWS` generated rows, the way the
//! metering batch writer would have, either for one account (to measure history and usage
//! queries on a large account) or spread round-robin over the callers of a `seed-keys`
//! sample file (lines `SECRET KEY_ID ACCOUNT_ID`), to give a load-test dataset history
//! rows to match its keys.
//!
//! Usage: `seed-history DATABASE_URL ACCOUNT_ID KEY_ID ROWS`
//!    or: `seed-history DATABASE_URL SAMPLE_FILE ROWS`
//!
//! `DATABASE_URL` is anything `keyward --database-url` takes, a plain SQLite path included.

use keyward_core::{AccountId, KeyId, RequestId};
use keyward_store::{MeterBatch, RequestRecord, UsageKey};
use time::{Duration, OffsetDateTime};

const ENDPOINTS: [&str; 4] = [
    "GET /v1/api-keys",
    "GET /v1/api-keys/{key_id}",
    "POST /v1/api-keys/validate",
    "GET /v1/usage",
];

const USAGE: &str = "usage: seed-history DATABASE_URL ACCOUNT_ID KEY_ID ROWS\n   or: seed-history DATABASE_URL SAMPLE_FILE ROWS";

fn callers_from(file: &str) -> Result<Vec<(AccountId, KeyId)>, Box<dyn std::error::Error>> {
    let mut callers = Vec::new();
    for line in std::fs::read_to_string(file)?.lines() {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(key), Some(account)) = (fields.next(), fields.next()) else {
            return Err(format!("{file}: expected `SECRET KEY_ID ACCOUNT_ID` lines").into());
        };
        callers.push((
            AccountId::parse(account).map_err(|_| "bad account id")?,
            KeyId::parse(key).map_err(|_| "bad key id")?,
        ));
    }
    if callers.is_empty() {
        return Err(format!("{file} has no callers").into());
    }
    Ok(callers)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, callers, rows) = match args.as_slice() {
        [url, account, key, rows] => (
            url,
            vec![(
                AccountId::parse(account).map_err(|_| "bad account id")?,
                KeyId::parse(key).map_err(|_| "bad key id")?,
            )],
            rows,
        ),
        [url, file, rows] => (url, callers_from(file)?, rows),
        _ => return Err(USAGE.into()),
    };
    let rows: u64 = rows.parse()?;
    let url = keyward::cli::DatabaseUrl::parse(url)?;
    let backend = keyward::open_store(&url).await?;
    let store = backend.store();
    let now = OffsetDateTime::now_utc();
    let started = std::time::Instant::now();
    let mut written = 0;
    while written < rows {
        let n = (rows - written).min(20_000);
        let mut batch = MeterBatch::default();
        let mut usage = std::collections::BTreeMap::new();
        for i in 0..n {
            let seq = written + i;
            // Oldest first, spread over the last 20 days: the newest rows are this month's.
            let age = Duration::seconds(i64::try_from((rows - seq) * 20 * 86_400 / rows)?);
            let time = now - age;
            let (account, key) = &callers[usize::try_from(seq)? % callers.len()];
            // Counted per caller, so each account gets every endpoint and status mix.
            let nth = seq / u64::try_from(callers.len())?;
            let endpoint = ENDPOINTS[usize::try_from(nth % 4)?];
            batch.requests.push(RequestRecord {
                account_id: account.clone(),
                time,
                method: endpoint.split(' ').next().unwrap_or("GET").into(),
                endpoint: (*endpoint).into(),
                status: if nth % 10 == 0 { 404 } else { 200 },
                user_agent: Some("seed-history/1".to_owned()),
                key_id: key.clone(),
                request_id: RequestId::parse(format!("req_seed{seq:012}").as_bytes())
                    .ok_or("seed request ids are well formed")?,
                latency_ms: 1,
            });
            let usage_key = UsageKey {
                account_id: account.clone(),
                day: keyward_workers::day_of(time),
                endpoint: endpoint.to_owned(),
                key_id: key.clone(),
            };
            *usage.entry(usage_key).or_insert(0_u64) += 1;
        }
        batch.usage = usage.into_iter().collect();
        store.write_meter_batch(&batch).await?;
        written += n;
    }
    backend.close().await;
    eprintln!(
        "wrote {rows} history rows over {} account(s) in {:.1} s",
        callers.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
