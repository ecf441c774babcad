//! Small caches: a least-recently-used one bounded by total weight (bytes or chunk
//! count), and a two-generation map bounded by entry count.

use std::collections::HashMap;
use std::hash::Hash as StdHash;

/// LRU map whose entries each weigh something; the total weight stays within `capacity`.
pub(crate) struct Lru<K, V> {
    map: HashMap<K, Entry<V>>,
    capacity: u64,
    weight: u64,
    tick: u64,
}

struct Entry<V> {
    value: V,
    weight: u64,
    used: u64,
}

impl<K: StdHash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty cache holding at most `capacity` total weight.
    pub(crate) fn new(capacity: u64) -> Self {
        Lru {
            map: HashMap::new(),
            capacity,
            weight: 0,
            tick: 0,
        }
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let e = self.map.get_mut(key)?;
        e.used = self.tick;
        Some(e.value.clone())
    }

    /// Whether `key` is cached (without marking it used).
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Drops `key` if cached.
    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(e) = self.map.remove(key) {
            self.weight -= e.weight;
        }
    }

    /// Inserts `value`, evicting least recently used entries to stay within capacity.
    /// A value heavier than the whole capacity is not cached.
    pub(crate) fn insert(&mut self, key: K, value: V, weight: u64) {
        if weight > self.capacity {
            return;
        }
        self.tick += 1;
        let entry = Entry {
            value,
            weight,
            used: self.tick,
        };
        if let Some(old) = self.map.insert(key, entry) {
            self.weight -= old.weight;
        }
        self.weight += weight;
        while self.weight > self.capacity {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
                .expect("weight > 0 implies an entry");
            let e = self.map.remove(&oldest).expect("key was just found");
            self.weight -= e.weight;
        }
        debug_assert!(self.weight <= self.capacity);
    }
}

/// A map of at most `capacity` entries that forgets its older half at once when full:
/// an entry inserted or read lately survives, as in an LRU, at a constant cost per call.
pub(crate) struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
}

impl<K: StdHash + Eq, V: Copy> Generations<K, V> {
    /// An empty map holding at most `capacity` entries (at least two).
    pub(crate) fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    /// The value for `key`, kept in the young generation from now on.
    pub(crate) fn get(&mut self, key: K) -> Option<V> {
        if let Some(v) = self.young.get(&key) {
            return Some(*v);
        }
        let v = self.old.remove(&key)?;
        self.insert(key, v);
        Some(v)
    }

    /// Sets `key` to `value`; the older generation is dropped when the young one is full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.old.remove(&key);
        self.young.insert(key, value);
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
    }

    /// Drops `key` if present.
    pub(crate) fn remove(&mut self, key: &K) {
        self.young.remove(key);
        self.old.remove(key);
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{Generations, Lru};

    #[test]
    fn least_recently_used_entry_is_evicted_first() {
        let mut lru = Lru::new(3);
        lru.insert(1, "a", 1);
        lru.insert(2, "b", 1);
        lru.insert(3, "c", 1);
        assert_eq!(lru.get(&1), Some("a"));
        lru.insert(4, "d", 1);
        assert_eq!(lru.get(&2), None);
        assert_eq!(lru.get(&1), Some("a"));
        assert_eq!(lru.get(&3), Some("c"));
        assert_eq!(lru.get(&4), Some("d"));
    }

    #[test]
    fn heavy_entry_evicts_enough_and_oversized_entry_is_not_cached() {
        let mut lru = Lru::new(10);
        lru.insert(1, 1, 4);
        lru.insert(2, 2, 4);
        lru.insert(3, 3, 6);
        assert_eq!(lru.get(&1), None);
        assert_eq!(lru.get(&2), Some(2));
        lru.insert(4, 4, 11);
        assert_eq!(lru.get(&4), None);
        assert_eq!(lru.get(&3), Some(3));
    }

    #[test]
    fn generations_keep_at_most_their_capacity_and_what_was_used_lately() {
        let mut g = Generations::new(8);
        for k in 0..4 {
            g.insert(k, k * 10);
        }
        assert_eq!(g.len(), 4);
        for k in 4..8 {
            assert_eq!(g.get(0), Some(0), "read before each insert, 0 stays");
            g.insert(k, k * 10);
            assert!(g.len() <= 8, "{} entries", g.len());
        }
        assert_eq!(g.get(0), Some(0));
        assert_eq!(
            g.get(1),
            None,
            "1 was neither read nor set since two turnovers"
        );
        assert_eq!(g.get(7), Some(70));
        g.insert(7, 71);
        assert_eq!(g.get(7), Some(71));
        g.remove(&7);
        assert_eq!(g.get(7), None);
        for k in 100..1_000 {
            g.insert(k, k);
            assert!(g.len() <= 8, "{} entries", g.len());
        }
    }
}
