//! `VecMap`: a map kept as a sorted vector, for the per-file and per-name maps of the
//! projection that almost always hold one element. A `BTreeMap` allocates a node of 11
//! slots for its first element (over 500 bytes for op ids); this holds exactly what it
//! has while small.

use std::borrow::Borrow;

/// Elements up to which a `VecMap` grows its vector one slot at a time.
const EXACT_UP_TO: usize = 4;

/// A map ordered by key, stored as a sorted vector (a set when `V` is `()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VecMap<K, V> {
    items: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { items: Vec::new() }
    }
}

impl<K, V> VecMap<K, V> {
    /// An empty map.
    pub(crate) const fn new() -> Self {
        VecMap { items: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.items.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value under `key`.
    pub(crate) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.items[i].1)
    }

    /// The value under `key`, mutably.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        Some(&mut self.items[i].1)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.items[i].1, value)),
            Err(i) => {
                if self.items.len() < EXACT_UP_TO {
                    self.items.reserve_exact(1);
                }
                self.items.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let (_, v) = self.items.remove(i);
        if self.items.is_empty() {
            self.items = Vec::new();
        }
        Some(v)
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// True if empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Elements in key order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.items.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub(crate) fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.items.iter().map(|(k, _)| k)
    }

    /// The element with the greatest key.
    pub(crate) fn last_key_value(&self) -> Option<(&K, &V)> {
        self.items.last().map(|(k, v)| (k, v))
    }
}

impl<K: Ord> VecMap<K, ()> {
    /// Adds `key` to the set; false if it was there.
    pub(crate) fn add(&mut self, key: K) -> bool {
        self.insert(key, ()).is_none()
    }
}

impl<'a, K> IntoIterator for &'a VecMap<K, ()> {
    type Item = &'a K;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, ())>, fn(&'a (K, ())) -> &'a K>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vecmap_keeps_keys_sorted_and_holds_one_element_in_one_slot() {
        let mut m = VecMap::default();
        assert_eq!(m.insert(5, "e"), None);
        assert_eq!(m.items.capacity(), 1);
        m.insert(1, "a");
        m.insert(3, "c");
        assert_eq!(m.insert(3, "C"), Some("c"));
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(m.get(&3), Some(&"C"));
        assert_eq!(m.remove(&1), Some("a"));
        assert_eq!(m.last_key_value(), Some((&5, &"e")));
        m.remove(&3);
        m.remove(&5);
        assert!(m.is_empty() && m.items.capacity() == 0);
    }
}
