//! Shared state of the HTTP layer.

use std::sync::{Arc, Mutex};

use keyward_core::{AccountId, KeyDigest, KeyId, KeyPrefix};
use keyward_store::Store;
use keyward_workers::{Meter, RateLimiter};
use time::OffsetDateTime;
use ulid::Ulid;

use crate::api_keys::Listing;
use crate::auth::KeyCache;
use crate::cache::CoherentCache;

/// An account's whole key listing, cached for accounts of at most
/// [`MAX_CACHED_LISTING`] keys, invalidated by every change of a key. `last_used` moves
/// forward in it as each metering batch is stored, this node's or (PostgreSQL) another
/// node's ([`Shared::note_uses`]), so it shows a use within about the meter interval
/// (250 ms) as API.md asks (one second), and a listing lives as long as a cached key.
pub type ListingCache = CoherentCache<AccountId, Arc<Listing>>;
/// Most accounts whose listing is cached.
pub const LISTING_CACHE_ACCOUNTS: u64 = 10_000;
/// Largest listing cached; bigger accounts are always listed from storage.
pub const MAX_CACHED_LISTING: u32 = 1_000;

/// Renders the Prometheus text of `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What handlers share. Cloned several times per request (axum's `State`), so it is one
/// `Arc`: profiling showed field-by-field clones and drops at 5 % of CPU.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: KeyCache,
    pub(crate) listings: ListingCache,
    pub(crate) meter: Arc<Meter>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) prefix: KeyPrefix,
    pub(crate) body_limit: usize,
    pub(crate) metrics: Option<MetricsRender>,
    ids: Mutex<ulid::Generator>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("prefix", &self.prefix)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// Default request body limit (API.md §Errors: 64 KiB).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Builds an [`AppState`].
pub struct AppStateBuilder {
    store: Arc<dyn Store>,
    meter: Arc<Meter>,
    limiter: Arc<dyn RateLimiter>,
    prefix: KeyPrefix,
    body_limit: usize,
    metrics: Option<MetricsRender>,
    key_cache_capacity: u64,
}

impl AppStateBuilder {
    /// Starts from the three collaborators every deployment has.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, meter: Arc<Meter>, limiter: Arc<dyn RateLimiter>) -> Self {
        Self {
            store,
            meter,
            limiter,
            prefix: KeyPrefix::default(),
            body_limit: DEFAULT_BODY_LIMIT,
            metrics: None,
            key_cache_capacity: 100_000,
        }
    }

    /// The deployment's key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The request body limit in bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How `/metrics` renders.
    #[must_use]
    pub fn metrics(mut self, render: MetricsRender) -> Self {
        self.metrics = Some(render);
        self
    }

    /// Most keys the authentication cache holds.
    #[must_use]
    pub fn key_cache_capacity(mut self, entries: u64) -> Self {
        self.key_cache_capacity = entries;
        self
    }

    /// The state.
    #[must_use]
    pub fn build(self) -> AppState {
        AppState(Arc::new(Shared {
            keys: KeyCache::new(self.store.clone(), self.key_cache_capacity),
            listings: CoherentCache::new(
                LISTING_CACHE_ACCOUNTS,
                crate::auth::KEY_CACHE_TTL,
                "keyward_listing_cache_hits_total",
                "keyward_listing_cache_misses_total",
            ),
            store: self.store,
            meter: self.meter,
            limiter: self.limiter,
            prefix: self.prefix,
            body_limit: self.body_limit,
            metrics: self.metrics,
            ids: Mutex::new(ulid::Generator::new()),
        }))
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Shared {
    /// A new, strictly increasing ULID: key ids sort in creation order on this node.
    pub(crate) fn next_ulid(&self) -> Ulid {
        let mut generator = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Overflow needs 2^80 ids in one millisecond; fall back to a random one then.
        generator.generate().unwrap_or_else(|_| Ulid::generate())
    }

    /// Forgets a changed key: its old digests and its account's listing leave this
    /// node's caches (`None`: every listing, when a change announcement named no valid
    /// account). Called for local changes before answering, and for other nodes' changes
    /// as they are announced.
    pub fn forget_changed_key(&self, account: Option<&AccountId>, digests: &[KeyDigest]) {
        self.keys.invalidate(digests);
        match account {
            Some(account) => self.listings.invalidate([account]),
            None => self.listings.invalidate_all(),
        }
    }

    /// Moves `last_used` forward in cached listings: the uses of a metering batch once
    /// this node has stored it, or (on PostgreSQL) those another node announced once it
    /// had stored them. An account without a cached listing still has its invalidation
    /// epoch bumped, so that a listing being loaded from storage right now, perhaps read
    /// before these uses were stored, is not kept (it would hide them for a listing's
    /// whole life).
    pub fn note_uses(&self, uses: &[(AccountId, KeyId, OffsetDateTime)]) {
        for (account_id, key_id, at) in uses {
            match self.listings.peek(account_id) {
                Some(listing) => listing.note_use(key_id, *at),
                None => self.listings.invalidate([account_id]),
            }
        }
    }

    /// Turns the caches off while other nodes' changes may be missed, and back on (empty)
    /// once they can't be.
    pub fn set_caches_coherent(&self, coherent: bool) {
        self.keys.set_coherent(coherent);
        self.listings.set_coherent(coherent);
    }
}
