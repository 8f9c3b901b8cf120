//! Small accounts' key listings, cached whole: `GET /v1/api-keys` and
//! `GET /v1/api-keys/{key_id}` of an account with at most [`MAX_CACHED_LISTING`] keys are
//! answered from memory, and the unfiltered page's JSON is rendered once per state of the
//! listing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::body::Bytes;
use keyward_core::{AccountId, KeyId, KeyStatus};
use keyward_store::ApiKey;
use time::OffsetDateTime;

use crate::cache::coherent::CoherentCache;
use crate::dto::{ApiKeyList, ApiKeyObject};
use crate::error::ApiError;

/// An account's whole listing, cached for accounts of at most [`MAX_CACHED_LISTING`]
/// keys, invalidated by every change of a key. `last_used` moves forward in it as each
/// metering batch is stored, this node's or (PostgreSQL) another node's
/// (`Shared::note_uses`), so it shows a use within about the meter interval (250 ms) as
/// API.md asks (one second), and a listing lives as long as a cached key.
pub type ListingCache = CoherentCache<AccountId, Arc<Listing>>;
/// Most accounts whose listing is cached.
pub const LISTING_CACHE_ACCOUNTS: u64 = 10_000;
/// Largest listing cached; bigger accounts are always listed from storage.
pub const MAX_CACHED_LISTING: u32 = 1_000;

/// An account's whole key listing as cached, with the JSON of its unfiltered page
/// rendered once per state of the listing: rendered per request, serialisation is 11 %
/// of the list endpoint's CPU.
#[derive(Debug)]
pub struct Listing {
    keys: Vec<ApiKey>,
    /// Each key's `last_used` in unix seconds (`i64::MIN`: never), moved forward as
    /// metering batches are stored, so that the listing can live longer than the one
    /// second within which a use must show.
    last_used: Vec<AtomicI64>,
    /// Bumped whenever one of `last_used` moves: a rendered page is good for one value.
    uses: AtomicU64,
    whole_page: RwLock<Option<RenderedPage>>,
}

#[derive(Debug)]
struct RenderedPage {
    body: Bytes,
    uses: u64,
    rendered_at: OffsetDateTime,
    /// The first instant at which a key of the page shows another status (it expires):
    /// the earliest [`KeyStatus::next_change`] of its keys.
    stale_from: Option<OffsetDateTime>,
}

const NEVER_USED: i64 = i64::MIN;

impl Listing {
    /// A listing of these keys, in the order storage gave them (oldest first).
    pub(crate) fn new(keys: Vec<ApiKey>) -> Self {
        let last_used = keys
            .iter()
            .map(|k| AtomicI64::new(k.last_used.map_or(NEVER_USED, |t| t.unix_timestamp())))
            .collect();
        Self {
            keys,
            last_used,
            uses: AtomicU64::new(0),
            whole_page: RwLock::new(None),
        }
    }

    /// Moves a key's `last_used` forward to `at` (whole seconds, as stored).
    pub(crate) fn note_use(&self, key_id: &KeyId, at: OffsetDateTime) {
        let Some(i) = self.index_of(key_id) else {
            return;
        };
        let at = at.unix_timestamp();
        if self.last_used[i].fetch_max(at, Ordering::AcqRel) < at {
            self.uses.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The keys, oldest first.
    pub(crate) fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// Where a key is in the listing, if it is there.
    pub(crate) fn index_of(&self, key_id: &KeyId) -> Option<usize> {
        self.keys.iter().position(|k| k.key_id == *key_id)
    }

    /// The `i`-th key's `last_used` as noted so far.
    fn last_used_of(&self, i: usize) -> Option<OffsetDateTime> {
        match self.last_used[i].load(Ordering::Acquire) {
            NEVER_USED => None,
            secs => OffsetDateTime::from_unix_timestamp(secs).ok(),
        }
    }

    /// When the `i`-th key stops authenticating by itself, counting its inactivity from
    /// the `last_used` noted so far.
    fn expiry_of(&self, i: usize) -> Option<OffsetDateTime> {
        let key = &self.keys[i];
        keyward_core::policy::expiry(
            key.expires_at,
            key.expire_after_inactive_days,
            self.last_used_of(i),
            key.created_at,
        )
    }

    /// The status the `i`-th key shows at `now`.
    pub(crate) fn status_of(&self, i: usize, now: OffsetDateTime) -> KeyStatus {
        KeyStatus::at(self.keys[i].status, self.expiry_of(i), now)
    }

    /// Whether a key of the listing has credits (whose live balance a page shows).
    pub(crate) fn has_credits(&self) -> bool {
        self.keys.iter().any(|k| k.policies.credits.is_some())
    }

    /// The wire object of the `i`-th key at `now`.
    pub(crate) fn object(&self, i: usize, now: OffsetDateTime) -> ApiKeyObject<'_> {
        ApiKeyObject {
            last_used: self.last_used_of(i),
            status: self.status_of(i, now).into(),
            ..ApiKeyObject::new(&self.keys[i], now)
        }
    }

    /// The body of `GET /v1/api-keys` without parameters at `now`: the rendered bytes
    /// while no `last_used` has moved and every key still shows the status it showed,
    /// else a fresh rendering (kept for the next requests).
    pub(crate) fn whole_page(&self, now: OffsetDateTime) -> Result<Bytes, ApiError> {
        let uses = self.uses.load(Ordering::Acquire);
        if let Some(page) = &*self
            .whole_page
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            && page.uses == uses
            && page.rendered_at <= now
            && page.stale_from.is_none_or(|t| now < t)
        {
            return Ok(page.body.clone());
        }
        // `uses` was read first: a use noted while rendering makes the next request
        // render again.
        let page = ApiKeyList {
            api_keys: (0..self.keys.len()).map(|i| self.object(i, now)).collect(),
            has_more: None,
        };
        let mut body = Vec::with_capacity(320 * self.keys.len() + 16);
        serde_json::to_writer(&mut body, &page).map_err(ApiError::internal)?;
        let body = Bytes::from(body);
        let stale_from = self
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| KeyStatus::next_change(k.status, self.expiry_of(i), now))
            .min();
        *self
            .whole_page
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(RenderedPage {
            body: body.clone(),
            uses,
            rendered_at: now,
            stale_from,
        });
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{AccountId, KeyId, Metadata, ScopeSet, StoredStatus};
    use keyward_store::ApiKey;
    use time::{Duration, OffsetDateTime};
    use ulid::Ulid;

    use super::Listing;

    fn key(status: StoredStatus, expires_at: Option<OffsetDateTime>) -> ApiKey {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        ApiKey {
            key_id: KeyId::from_ulid(Ulid::generate()),
            account_id: AccountId::from_ulid(Ulid::from_parts(1, 2)),
            name: None,
            scopes: ScopeSet::parse(&["read"]).unwrap(),
            metadata: Metadata::parse(serde_json::json!({})).unwrap(),
            status,
            expires_at,
            created_at: now,
            last_used: None,
            hint: "kw_AbCd…wxyz".to_owned(),
            version: 1,
            policies: keyward_core::KeyPolicies::default(),
            expire_after_inactive_days: None,
        }
    }

    fn statuses(page: &[u8]) -> Vec<String> {
        let page: serde_json::Value = serde_json::from_slice(page).unwrap();
        page["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["status"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn noted_uses_move_last_used_forward_in_the_rendered_page() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut used = key(StoredStatus::Active, None);
        used.last_used = Some(now - Duration::seconds(60));
        let listing = Listing::new(vec![used.clone(), key(StoredStatus::Active, None)]);
        let last_used = |page: &[u8]| -> Vec<serde_json::Value> {
            let page: serde_json::Value = serde_json::from_slice(page).unwrap();
            page["api_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["last_used"].clone())
                .collect()
        };
        let first = listing.whole_page(now).unwrap();
        assert_eq!(
            last_used(&first),
            [
                serde_json::json!("2027-01-15T07:59:00Z"),
                serde_json::Value::Null
            ]
        );
        listing.note_use(&used.key_id, now + Duration::milliseconds(1500));
        let after_use = listing.whole_page(now + Duration::seconds(2)).unwrap();
        assert_eq!(
            last_used(&after_use),
            [
                serde_json::json!("2027-01-15T08:00:01Z"),
                serde_json::Value::Null
            ]
        );
        // An older use (a late batch) does not move it back, and the page stays rendered.
        listing.note_use(&used.key_id, now);
        let again = listing.whole_page(now + Duration::seconds(3)).unwrap();
        assert_eq!(again.as_ptr(), after_use.as_ptr());
        // A key not in the listing changes nothing.
        listing.note_use(&KeyId::from_ulid(Ulid::from_parts(9, 9)), now);
        assert_eq!(
            listing
                .whole_page(now + Duration::seconds(3))
                .unwrap()
                .as_ptr(),
            after_use.as_ptr()
        );
    }

    #[test]
    fn the_rendered_page_is_not_served_once_a_key_has_expired() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let listing = Listing::new(vec![
            key(StoredStatus::Active, Some(now + Duration::seconds(10))),
            key(StoredStatus::Inactive, Some(now + Duration::seconds(5))),
            key(StoredStatus::Active, None),
        ]);
        let first = listing.whole_page(now).unwrap();
        assert_eq!(statuses(&first), ["active", "inactive", "active"]);
        // Still valid: the same bytes.
        let later = listing.whole_page(now + Duration::seconds(9)).unwrap();
        assert_eq!(later.as_ptr(), first.as_ptr());
        // The first key expires at +10 s: a fresh rendering shows it.
        let expired = listing.whole_page(now + Duration::seconds(10)).unwrap();
        assert_eq!(statuses(&expired), ["expired", "inactive", "active"]);
        // A request stamped before the rendering gets its own rendering too.
        let earlier = listing.whole_page(now - Duration::seconds(1)).unwrap();
        assert_ne!(earlier.as_ptr(), first.as_ptr());
        assert_eq!(statuses(&earlier), ["active", "inactive", "active"]);
    }
}
