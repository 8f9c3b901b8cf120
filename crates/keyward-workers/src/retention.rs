//! Pruning of old request history (usage counters are kept).

use std::sync::Arc;
use std::time::Duration;

use keyward_store::Store;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement: small enough that the single SQLite writer is never held
/// for long, so request metering never waits behind a prune.
pub const PRUNE_BATCH: u32 = 1_000;

/// Deletes history older than `max_age`, batch by batch, yielding between batches.
/// Returns how many rows it deleted.
///
/// # Errors
/// The store's error, after which the next run tries again.
pub async fn prune_once(
    store: &dyn Store,
    max_age: Duration,
    now: OffsetDateTime,
) -> keyward_store::StoreResult<u64> {
    let cutoff = now - max_age;
    // Finished webhook deliveries and their attempts go with the history of their time.
    let mut total = store.prune_deliveries(cutoff).await?;
    loop {
        let n = store.prune_history(cutoff, PRUNE_BATCH).await?;
        total += n;
        if n < u64::from(PRUNE_BATCH) {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs [`prune_once`] every `every` until cancelled.
pub async fn run_retention(
    store: Arc<dyn Store>,
    max_age: Duration,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        match prune_once(store.as_ref(), max_age, OffsetDateTime::now_utc()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old request history"),
            Err(e) => tracing::warn!(error = %e, "pruning request history failed; will retry"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
