//! Results of panels and SQL statements, keyed by the statement and the versions of the tables
//! it read. A commit (ingest, rollup, purge) changes a version, so the next request misses and
//! nothing stale is served; old entries age out of the byte budget, oldest first.
//!
//! Keys are SHA-256 digests of the statement and versions (a 1 MB statement costs 32 bytes),
//! and everything an entry holds (its batches, schema, key and bookkeeping) counts against
//! the budget. What may be cached at all is the caller's decision: only answers whose every
//! input is a versioned table and whose functions are deterministic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;

#[derive(Debug)]
pub struct CachedResult {
    pub schema: SchemaRef,
    pub batches: Arc<Vec<RecordBatch>>,
    /// A panel answer that came from its fallback statement.
    pub fallback: bool,
    bytes: usize,
}

impl CachedResult {
    pub fn new(schema: SchemaRef, batches: Arc<Vec<RecordBatch>>) -> Self {
        let bytes = batches
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>()
            + schema
                .fields()
                .iter()
                .map(|f| f.name().len() + 64)
                .sum::<usize>()
            + ENTRY_OVERHEAD;
        Self {
            schema,
            batches,
            fallback: false,
            bytes,
        }
    }

    pub fn with_fallback(mut self, yes: bool) -> Self {
        self.fallback = yes;
        self
    }
}

/// What one entry costs besides its batches and schema: its key in the map and in the
/// eviction order, the `Arc`, the map slot.
const ENTRY_OVERHEAD: usize = 256;

type Key = [u8; 32];

fn key_of(key: &str) -> Key {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// A byte-bounded map from keys to results.
pub struct ResultCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Arc<CachedResult>>,
    order: VecDeque<Key>,
    bytes: usize,
}

impl ResultCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResult>> {
        let hit = self.inner.lock().map.get(&key_of(key)).cloned();
        match hit {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        hit
    }

    pub fn insert(&self, key: String, value: CachedResult) {
        if value.bytes > self.max_bytes / 4 {
            return; // one huge result must not flush everything else
        }
        let key = key_of(&key);
        let mut inner = self.inner.lock();
        inner.bytes += value.bytes;
        if let Some(old) = inner.map.insert(key, Arc::new(value)) {
            inner.bytes -= old.bytes;
            inner.order.retain(|k| k != &key);
        }
        inner.order.push_back(key);
        while inner.bytes > self.max_bytes {
            let Some(k) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&k) {
                inner.bytes -= old.bytes;
            }
        }
    }

    /// Drops everything (a purge does this, on top of the version change, so that no result
    /// holding a purged subject stays in memory).
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        *inner = Inner::default();
    }

    pub fn stats(&self) -> (u64, u64, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.inner.lock().bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn result(n: usize) -> CachedResult {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..n as i64))],
        )
        .unwrap();
        CachedResult::new(schema, Arc::new(vec![batch]))
    }

    #[test]
    fn evicts_oldest_within_budget() {
        let one = result(1000).bytes;
        let cache = ResultCache::new(one * 5);
        for i in 0..10 {
            cache.insert(format!("k{i}"), result(1000));
        }
        assert!(cache.get("k0").is_none());
        assert!(cache.get("k9").is_some());
        assert!(cache.stats().2 <= one * 5);
        // Keys cost their digest, not their text: a huge statement does not grow the cache.
        let huge = "x".repeat(1 << 20);
        cache.insert(huge.clone(), result(1));
        assert!(cache.get(&huge).is_some());
        assert!(cache.stats().2 <= one * 5);
        cache.clear();
        assert!(cache.get("k9").is_none());
    }
}
