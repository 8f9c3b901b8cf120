//! Keys by digest, for authentication: every authenticated request reads this cache
//! before it reads storage.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderValue;
use keyward_core::{KeyDigest, metric};
use keyward_store::{AuthRecord, Store, StoreResult};

use crate::cache::coherent::CoherentCache;

/// How long a cached key may go unchecked against storage. Changes made through the API
/// invalidate at once; this only bounds how stale a change made behind the server's back
/// (an operator's `accounts set-plan`) can be.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);

/// Keys by digest, in memory, invalidated explicitly whenever a key changes.
pub struct KeyCache {
    store: Arc<dyn Store>,
    cache: CoherentCache<KeyDigest, Arc<CachedKey>>,
}

/// A key as cached: its record and, once made, its answer to `POST
/// /v1/api-keys/validate` and the values of the identity headers the gateway sends
/// (`gateway::set_identity`). Neither holds anything that changes while the entry lives
/// (any change of the key drops the entry; expiry and the end of a grace period refuse
/// the key before they are used), and rendering the answer is a tenth of validate's
/// instructions.
#[derive(Debug)]
pub struct CachedKey {
    record: AuthRecord,
    validate_body: OnceLock<Bytes>,
    identity: OnceLock<[Option<HeaderValue>; 3]>,
}

impl CachedKey {
    /// A record not yet answered for.
    pub(crate) fn new(record: AuthRecord) -> Self {
        Self {
            record,
            validate_body: OnceLock::new(),
            identity: OnceLock::new(),
        }
    }

    /// The validate answer, rendered by `render` the first time it succeeds.
    pub(crate) fn validate_body<E>(
        &self,
        render: impl FnOnce(&AuthRecord) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        if let Some(body) = self.validate_body.get() {
            return Ok(body.clone());
        }
        let body = render(&self.record)?;
        // A concurrent first request may have set it: both rendered the same bytes.
        let _ = self.validate_body.set(body.clone());
        Ok(body)
    }

    /// The identity headers' values, made by `make` the first time they are asked for.
    pub(crate) fn identity(
        &self,
        make: impl FnOnce(&AuthRecord) -> [Option<HeaderValue>; 3],
    ) -> &[Option<HeaderValue>; 3] {
        self.identity.get_or_init(|| make(&self.record))
    }
}

impl std::ops::Deref for CachedKey {
    type Target = AuthRecord;
    fn deref(&self) -> &AuthRecord {
        &self.record
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, capacity: u64) -> Self {
        Self {
            store,
            cache: CoherentCache::new(capacity, KEY_CACHE_TTL, metric::CACHE_KEY),
        }
    }

    /// The record of a digest, from memory or storage.
    ///
    /// # Errors
    /// The store's error on a miss.
    pub async fn lookup(&self, digest: &KeyDigest) -> StoreResult<Option<Arc<CachedKey>>> {
        self.cache
            .get_or_load(digest, || async {
                Ok(self
                    .store
                    .auth_by_digest(digest)
                    .await?
                    .map(|record| Arc::new(CachedKey::new(record))))
            })
            .await
    }

    /// Drops these digests; the very next request reads storage.
    pub fn invalidate(&self, digests: &[KeyDigest]) {
        self.cache.invalidate(digests);
    }

    /// Turns the cache on or off; see [`CoherentCache::set_coherent`].
    pub fn set_coherent(&self, coherent: bool) {
        self.cache.set_coherent(coherent);
    }
}
