//! An account's requests of a month as its usage counters hold them (API.md §Plans: the
//! monthly quota is the same count as `GET /v1/usage`): one sum for the operator's account
//! objects and for the limiter's month windows, which start from it ([`StoredUsage`]).

use std::sync::Arc;

use keyward_core::AccountId;
use keyward_ratelimit::{UsageFuture, UsageSource};
use keyward_store::{Store, StoreResult};

/// The account's requests in `month` (`YYYY-MM`, UTC), summed over its usage counters.
///
/// # Errors
/// When storage fails.
pub async fn requests_in_month(
    store: &dyn Store,
    account: &AccountId,
    month: &str,
) -> StoreResult<u64> {
    let usage = store.usage(account, month).await?;
    Ok(usage.iter().map(|(_, _, n)| n).sum())
}

/// The store as the rate limiter's source of stored month counts.
#[derive(Clone)]
pub struct StoredUsage(pub Arc<dyn Store>);

impl UsageSource for StoredUsage {
    fn requests_in_month<'a>(
        &'a self,
        account: &'a AccountId,
        year: i32,
        month: u8,
    ) -> UsageFuture<'a> {
        Box::pin(async move {
            let month = format!("{year:04}-{month:02}");
            Ok(requests_in_month(self.0.as_ref(), account, &month).await?)
        })
    }
}
