//! Shared state of the HTTP layer: storage, the caches, the meter and the limiter.
//! Depends on the caches, never on a handler, so every handler can depend on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::leak::{GithubKeys, LeakResponse};
use keyward_core::policy::IpNet;
use keyward_core::{AccountId, KeyDigest, KeyId, KeyPrefix};
use keyward_ratelimit::RateLimiter;
use keyward_store::Store;
use keyward_workers::Meter;
use keyward_workers::credits::ExhaustionReports;
use time::OffsetDateTime;
use ulid::Ulid;

use crate::cache::coherent::CoherentCache;
use crate::cache::key::{KEY_CACHE_TTL, KeyCache};
use crate::cache::listing::{LISTING_CACHE_ACCOUNTS, ListingCache};
use crate::gateway::Gateway;

/// Renders the Prometheus text of `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What handlers share. Cloned several times per request (axum's `State`), so it is one
/// `Arc`: cloning and dropping each field instead costs 5 % of CPU (profiled).
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
    /// How the public `/metrics` renders; `None` when it is not served there
    /// (`--metrics-listen` serves it elsewhere): the route then answers `404`.
    pub(crate) metrics: Option<MetricsRender>,
    /// Whether the last storage readiness check failed (`/readyz` logs only changes).
    pub(crate) storage_failing: AtomicBool,
    /// Whether the envelope writes an access-log line per request.
    pub(crate) access_log: bool,
    /// The platform's routes and upstream (`--routes`, `--upstream`), if any.
    pub(crate) gateway: Option<Gateway>,
    /// Proxies whose `x-forwarded-for` is believed (`--trusted-proxies`).
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Added to the clock a request's time is read from: zero but in tests of what
    /// time does (inactivity, refills), which start a node days ahead.
    pub(crate) clock_offset: time::Duration,
    /// Whether webhook targets may be private or loopback addresses
    /// (`--webhooks-allow-private`).
    pub(crate) webhooks_allow_private: bool,
    /// What a leak report does to a live key (`--on-leak`).
    pub(crate) on_leak: LeakResponse,
    /// GitHub secret scanning's public keys (`--github-scanning-keys`): with them,
    /// `POST /secret-scanning/github` is served.
    pub(crate) github_keys: Option<GithubKeys>,
    /// Where the request path reports a key found with no credits left (`None`: not
    /// reported, and no `credits.exhausted` event is made).
    pub(crate) exhaustions: Option<ExhaustionReports>,
    ids: Mutex<ulid::Generator>,
    /// Set once the server stops accepting connections: `/readyz` then answers `503`.
    draining: AtomicBool,
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
    access_log: bool,
    key_cache_capacity: u64,
    gateway: Option<Gateway>,
    trusted_proxies: Vec<IpNet>,
    clock_offset: time::Duration,
    webhooks_allow_private: bool,
    on_leak: LeakResponse,
    github_keys: Option<GithubKeys>,
    exhaustions: Option<ExhaustionReports>,
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
            access_log: false,
            key_cache_capacity: 100_000,
            gateway: None,
            trusted_proxies: Vec::new(),
            clock_offset: time::Duration::ZERO,
            webhooks_allow_private: false,
            on_leak: LeakResponse::default(),
            github_keys: None,
            exhaustions: None,
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

    /// Whether every request gets an access-log line (target `keyward::access`).
    #[must_use]
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The platform's routes, and in gateway mode its upstream (API.md §Gateway).
    #[must_use]
    pub fn gateway(mut self, gateway: Gateway) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The proxies whose `x-forwarded-for` names the client (none: the peer is the
    /// client).
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: Vec<IpNet>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Shifts the request clock (tests only: `--test-clock-offset`).
    #[must_use]
    pub fn clock_offset(mut self, offset: time::Duration) -> Self {
        self.clock_offset = offset;
        self
    }

    /// Whether webhook targets may be private or loopback addresses.
    #[must_use]
    pub fn webhooks_allow_private(mut self, allow: bool) -> Self {
        self.webhooks_allow_private = allow;
        self
    }

    /// What a leak report does to a live key: revoke it (the default) or disable it.
    #[must_use]
    pub fn on_leak(mut self, response: LeakResponse) -> Self {
        self.on_leak = response;
        self
    }

    /// GitHub secret scanning's public keys: `POST /secret-scanning/github` is served
    /// only with them.
    #[must_use]
    pub fn github_keys(mut self, keys: GithubKeys) -> Self {
        self.github_keys = Some(keys);
        self
    }

    /// Where keys found with no credits left are reported, for `credits.exhausted`.
    #[must_use]
    pub fn exhaustions(mut self, reports: ExhaustionReports) -> Self {
        self.exhaustions = Some(reports);
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
                KEY_CACHE_TTL,
                keyward_core::metric::CACHE_LISTING,
            ),
            store: self.store,
            meter: self.meter,
            limiter: self.limiter,
            prefix: self.prefix,
            body_limit: self.body_limit,
            metrics: self.metrics,
            storage_failing: AtomicBool::new(false),
            access_log: self.access_log,
            gateway: self.gateway,
            trusted_proxies: self.trusted_proxies,
            clock_offset: self.clock_offset,
            webhooks_allow_private: self.webhooks_allow_private,
            on_leak: self.on_leak,
            github_keys: self.github_keys,
            exhaustions: self.exhaustions,
            ids: Mutex::new(ulid::Generator::new()),
            draining: AtomicBool::new(false),
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

    /// Whether keyward serves a routes file (forward auth, and gateway mode if it has
    /// an upstream): the connection layer then gives each request its peer's address.
    #[must_use]
    pub fn has_routes(&self) -> bool {
        self.gateway.is_some()
    }

    /// Whether a request of `method` on `path` is forwarded to the upstream: its body
    /// is then the upstream's to bound, not keyward's body timeout.
    #[must_use]
    pub fn forwards(&self, method: &axum::http::Method, path: &str) -> bool {
        self.gateway
            .as_ref()
            .is_some_and(|g| g.upstream.is_some() && g.routes.find(method, path).is_some())
    }

    /// Marks the node as shutting down: from now on `/readyz` answers `503`, so that a
    /// load balancer still asking sends no new work here.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is shutting down ([`Shared::start_draining`]).
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Turns the caches off while other nodes' changes may be missed, and back on (empty)
    /// once they can't be.
    pub fn set_caches_coherent(&self, coherent: bool) {
        self.keys.set_coherent(coherent);
        self.listings.set_coherent(coherent);
    }
}
