//! A small least-recently-used cache bounded by total weight (bytes or chunk count).

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

#[cfg(test)]
mod tests {
    use super::Lru;

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
}
