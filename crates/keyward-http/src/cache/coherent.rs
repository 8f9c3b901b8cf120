//! The mechanism of every in-process cache, coherent with storage: explicit
//! invalidation on every change (local, or announced by another node), an epoch check so
//! that a fill racing a change never leaves the old value behind, and a switch that
//! bypasses the cache while this node may be missing other nodes' announcements.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// foldhash rather than std's SipHash, which hashed a 32-byte digest at every lookup: the
// keys are SHA-256 digests and account ids that keyward made, which no caller can steer
// into collisions.
use foldhash::fast::RandomState;
use keyward_core::metric;
use keyward_store::StoreResult;
use metrics::Counter;
use quick_cache::UnitWeighter;
use quick_cache::sync::DefaultLifecycle;

/// Shards of the invalidation epoch.
const EPOCH_SHARDS: usize = 64;
/// Entries a cache makes room for when created; it grows from there up to its capacity,
/// so an idle node does not hold the memory of a full one.
const INITIAL_ENTRIES: usize = 4_096;

/// A cached value and the end of its life.
#[derive(Clone)]
struct Entry<V> {
    value: V,
    expires: Instant,
}

/// A bounded cache with a time to live, invalidated explicitly.
///
/// Built on `quick_cache` rather than `moka`: a hit is one shard's read lock and a hash
/// lookup, where moka also logs the read for its eviction policy and runs that log's
/// upkeep on request threads (about 2 % of keyward's CPU under a validate load,
/// `docs/BENCHMARKS.md`). `quick_cache` has no time to live, so each entry carries its
/// deadline and an expired one reads as a miss.
pub struct CoherentCache<K, V> {
    cache: quick_cache::sync::Cache<K, Entry<V>, UnitWeighter, RandomState>,
    ttl: Duration,
    /// Bumped by every invalidation of a key of the shard: a fill that read storage
    /// before the bump removes what it inserted. Sharded so that a change undoes only
    /// the fills of its own shard: with one epoch for the whole cache, every fill that
    /// overlaps any change (a key created anywhere) would throw its value away, and
    /// under a mix with creations listings would be read from storage again and again.
    epochs: [AtomicU64; EPOCH_SHARDS],
    shard_hasher: RandomState,
    /// False while changes may be missed: every read then goes to storage.
    coherent: AtomicBool,
    // Handles made once: a `counter!` per lookup costs a metrics registry lookup.
    hits: Counter,
    misses: Counter,
    bypassed: Counter,
}

impl<K, V> CoherentCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries, each living at most `ttl`, counted in the
    /// cache metrics under the label `cache="{name}"`.
    #[must_use]
    pub fn new(capacity: u64, ttl: Duration, name: &'static str) -> Self {
        Self {
            cache: quick_cache::sync::Cache::with(
                usize::try_from(capacity).map_or(INITIAL_ENTRIES, |c| c.min(INITIAL_ENTRIES)),
                capacity,
                UnitWeighter,
                RandomState::default(),
                DefaultLifecycle::default(),
            ),
            ttl,
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            shard_hasher: RandomState::default(),
            coherent: AtomicBool::new(true),
            hits: metrics::counter!(metric::CACHE_HITS, "cache" => name),
            misses: metrics::counter!(metric::CACHE_MISSES, "cache" => name),
            bypassed: metrics::counter!(metric::CACHE_BYPASSED, "cache" => name),
        }
    }

    /// The cached value, or `load`'s (cached when `Some`).
    ///
    /// # Errors
    /// `load`'s error.
    pub async fn get_or_load<F, Fut>(&self, key: &K, load: F) -> StoreResult<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<V>>>,
    {
        if !self.coherent.load(Ordering::Acquire) {
            self.bypassed.increment(1);
            return load().await;
        }
        if let Some(hit) = self.live(key) {
            self.hits.increment(1);
            return Ok(Some(hit));
        }
        self.misses.increment(1);
        let shard = self.epoch_of(key);
        let epoch = shard.load(Ordering::Acquire);
        let Some(value) = load().await? else {
            return Ok(None);
        };
        self.cache.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        // Checked after the insert: an invalidation since the read either removed this
        // entry or bumped the epoch before this check.
        if shard.load(Ordering::Acquire) != epoch {
            self.cache.remove(key);
        }
        Ok(Some(value))
    }

    /// The cached value, if any, without loading or counting a hit or miss.
    pub fn peek(&self, key: &K) -> Option<V> {
        if self.coherent.load(Ordering::Acquire) {
            self.live(key)
        } else {
            None
        }
    }

    /// The entry's value unless it has expired.
    fn live(&self, key: &K) -> Option<V> {
        self.cache
            .get(key)
            .filter(|entry| entry.expires > Instant::now())
            .map(|entry| entry.value)
    }

    /// Drops these entries; the next read goes to storage.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a K>) {
        for key in keys {
            self.epoch_of(key).fetch_add(1, Ordering::AcqRel);
            self.cache.remove(key);
        }
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.cache.clear();
    }

    fn epoch_of(&self, key: &K) -> &AtomicU64 {
        let hash = self.shard_hasher.hash_one(key);
        // The remainder is below EPOCH_SHARDS, so it fits any usize.
        #[expect(clippy::cast_possible_truncation, reason = "remainder < EPOCH_SHARDS")]
        &self.epochs[(hash % EPOCH_SHARDS as u64) as usize]
    }

    /// Turns the cache on (after a resync) or off (while changes may be missed); either
    /// way everything cached so far is dropped.
    pub fn set_coherent(&self, coherent: bool) {
        if !coherent {
            self.coherent.store(false, Ordering::Release);
        }
        self.invalidate_all();
        if coherent {
            self.coherent.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> CoherentCache<u32, u32> {
        CoherentCache::new(10, Duration::from_secs(60), "test")
    }

    #[tokio::test]
    async fn hits_do_not_load_and_invalidation_reloads() {
        let c = cache();
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(10)) }).await.unwrap(),
            Some(10)
        );
        assert_eq!(
            c.get_or_load(&1, || async { panic!("loaded on a hit") })
                .await
                .unwrap(),
            Some(10)
        );
        c.invalidate([&1]);
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(11)) }).await.unwrap(),
            Some(11)
        );
        assert_eq!(
            c.get_or_load(&2, || async { Ok(None) }).await.unwrap(),
            None
        );
        assert_eq!(
            c.get_or_load(&2, || async { Ok(Some(20)) }).await.unwrap(),
            Some(20),
            "None is not cached"
        );
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_change_is_not_kept() {
        let c = cache();
        // The change lands while the loader is reading storage.
        let got = c
            .get_or_load(&1, || async {
                c.invalidate([&1]);
                Ok(Some(10))
            })
            .await
            .unwrap();
        assert_eq!(got, Some(10));
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(11)) }).await.unwrap(),
            Some(11),
            "the stale fill was dropped"
        );
    }

    #[tokio::test]
    async fn a_fill_is_kept_when_another_key_changed() {
        let c = cache();
        let other = (2..)
            .find(|k| !std::ptr::eq(c.epoch_of(k), c.epoch_of(&1)))
            .unwrap();
        let got = c
            .get_or_load(&1, || async {
                c.invalidate([&other]);
                Ok(Some(10))
            })
            .await
            .unwrap();
        assert_eq!(got, Some(10));
        assert_eq!(
            c.get_or_load(&1, || async { panic!("the fill was dropped") })
                .await
                .unwrap(),
            Some(10)
        );
    }

    #[tokio::test]
    async fn an_expired_entry_is_loaded_again() {
        let c: CoherentCache<u32, u32> = CoherentCache::new(10, Duration::ZERO, "test");
        c.get_or_load(&1, || async { Ok(Some(10)) }).await.unwrap();
        assert_eq!(c.peek(&1), None);
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(11)) }).await.unwrap(),
            Some(11)
        );
    }

    #[tokio::test]
    async fn it_holds_at_most_its_capacity() {
        let c = cache();
        for k in 0..1_000 {
            c.get_or_load(&k, || async move { Ok(Some(k)) })
                .await
                .unwrap();
        }
        assert!(c.cache.len() <= 10, "{} entries", c.cache.len());
        assert!(!c.cache.is_empty());
    }

    #[tokio::test]
    async fn an_incoherent_cache_always_reads_storage() {
        let c = cache();
        c.get_or_load(&1, || async { Ok(Some(10)) }).await.unwrap();
        c.set_coherent(false);
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(11)) }).await.unwrap(),
            Some(11)
        );
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(12)) }).await.unwrap(),
            Some(12)
        );
        c.set_coherent(true);
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(13)) }).await.unwrap(),
            Some(13)
        );
        assert_eq!(
            c.get_or_load(&1, || async { Ok(Some(14)) }).await.unwrap(),
            Some(13)
        );
    }
}
