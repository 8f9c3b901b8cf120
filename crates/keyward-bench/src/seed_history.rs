//! Fills an account's request history and usage counters with `ROWS` generated rows, the
//! way the metering batch writer would have, to measure history and usage queries on a
//! large account.
//!
//! Usage: `seed-history DATABASE_PATH ACCOUNT_ID KEY_ID ROWS`

use std::path::Path;

use keyward_core::{AccountId, KeyId};
use keyward_store::{MeterBatch, RequestRecord, Store, UsageKey};
use keyward_store_sqlite::SqliteStore;
use time::{Duration, OffsetDateTime};

const ENDPOINTS: [&str; 4] = [
    "GET /v1/api-keys",
    "GET /v1/api-keys/{key_id}",
    "POST /v1/api-keys/validate",
    "GET /v1/usage",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, account, key, rows] = args.as_slice() else {
        return Err("usage: seed-history DATABASE_PATH ACCOUNT_ID KEY_ID ROWS".into());
    };
    let account = AccountId::parse(account).map_err(|_| "bad account id")?;
    let key = KeyId::parse(key).map_err(|_| "bad key id")?;
    let rows: u64 = rows.parse()?;
    let store = SqliteStore::open(Path::new(path)).await?;
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
            let endpoint = ENDPOINTS[usize::try_from(seq % 4)?];
            batch.requests.push(RequestRecord {
                account_id: account.clone(),
                time,
                method: endpoint.split(' ').next().unwrap_or("GET").to_owned(),
                endpoint: endpoint.to_owned(),
                status: if seq % 10 == 0 { 404 } else { 200 },
                user_agent: Some("seed-history/1".to_owned()),
                key_id: key.clone(),
                request_id: format!("req_seed{seq:012}"),
                latency_ms: 1,
            });
            let usage_key = UsageKey {
                account_id: account.clone(),
                month: keyward_workers::month_of(time),
                endpoint: endpoint.to_owned(),
                key_id: key.clone(),
            };
            *usage.entry(usage_key).or_insert(0_u64) += 1;
        }
        batch.usage = usage.into_iter().collect();
        store.write_meter_batch(&batch).await?;
        written += n;
    }
    store.close().await;
    eprintln!(
        "wrote {rows} history rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
