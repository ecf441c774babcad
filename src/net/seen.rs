//! When each member of each store was last heard from, remembered across restarts: the
//! time an authenticated connection, sync request or gossip message of a member last
//! arrived, kept per store in `STORE_DIR/seen` (one `key-hex unix-ms` line per member).
//! A peer's time is written at most once per [`SEEN_SAVE_EVERY`], so a busy peer costs
//! one small file write a minute, not one per message; the peer book holds the exact
//! time since this daemon started.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::identity::{hex, unhex, PublicKey};
use crate::ids::StoreId;
use crate::net::peers::write_atomic;

/// Least time between two writes of one peer's last-seen time: fine enough for "last
/// seen 3 min ago", coarse enough that messages do not each cost a write.
pub(crate) const SEEN_SAVE_EVERY: Duration = Duration::from_secs(60);

/// The remembered last-seen times of every store's members.
#[derive(Debug, Default)]
pub(crate) struct LastSeen {
    books: Mutex<HashMap<StoreId, Book>>,
    /// When each peer's time was last written.
    written: Mutex<HashMap<PublicKey, Instant>>,
}

#[derive(Debug)]
struct Book {
    path: PathBuf,
    seen: BTreeMap<PublicKey, u64>,
}

impl Book {
    /// Loads `dir/seen`; a missing file is empty, a bad line is skipped.
    fn load(dir: &Path) -> Book {
        let path = dir.join("seen");
        let mut seen = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                match parse_line(line) {
                    Some((key, ms)) => {
                        seen.insert(key, ms);
                    }
                    None => tracing::debug!("{}: skipping bad line {line:?}", path.display()),
                }
            }
        }
        Book { path, seen }
    }

    fn save(&self) {
        let text: String = self
            .seen
            .iter()
            .map(|(k, ms)| format!("{} {ms}\n", hex(&k.0)))
            .collect();
        if let Err(e) = write_atomic(&self.path, text.as_bytes()) {
            tracing::warn!("cannot save {}: {e}", self.path.display());
        }
    }
}

impl LastSeen {
    /// `key` was heard from at `at_ms` (Unix ms, `now` on the monotonic clock): written
    /// for each of `stores` (id and directory) unless it was written less than
    /// [`SEEN_SAVE_EVERY`] ago (a key in no store is not counted as written). True if
    /// written.
    pub(crate) fn heard(
        &self,
        key: PublicKey,
        at_ms: u64,
        now: Instant,
        stores: impl FnOnce() -> Vec<(StoreId, PathBuf)>,
    ) -> bool {
        {
            let mut written = self.written.lock();
            if written
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) < SEEN_SAVE_EVERY)
            {
                return false;
            }
            written.insert(key, now);
        }
        let stores = stores();
        if stores.is_empty() {
            // Not a member of a visible store yet (a join in progress): the first
            // message after the join is written, not one a minute later.
            self.written.lock().remove(&key);
            return false;
        }
        let mut books = self.books.lock();
        for (id, dir) in stores {
            let book = books.entry(id).or_insert_with(|| Book::load(&dir));
            let ms = book.seen.entry(key).or_insert(at_ms);
            *ms = (*ms).max(at_ms);
            book.save();
        }
        true
    }

    /// When `key` was last written as heard from in store `id` (directory `dir`).
    pub(crate) fn get(&self, id: StoreId, dir: &Path, key: &PublicKey) -> Option<u64> {
        let mut books = self.books.lock();
        let book = books.entry(id).or_insert_with(|| Book::load(dir));
        book.seen.get(key).copied()
    }
}

fn parse_line(line: &str) -> Option<(PublicKey, u64)> {
    let mut words = line.split_whitespace();
    let key: [u8; 32] = unhex(words.next()?)?.try_into().ok()?;
    let ms = words.next()?.parse().ok()?;
    words.next().is_none().then_some((PublicKey(key), ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_times_survive_a_reopen_and_are_written_at_most_once_a_minute_per_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (StoreId([1; 16]), StoreId([2; 16]));
        let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        let stores = || vec![(one, d1.clone()), (two, d2.clone())];
        let (a, b) = (
            crate::identity::Identity::generate().public(),
            crate::identity::Identity::generate().public(),
        );
        let t0 = Instant::now();
        let seen = LastSeen::default();
        assert!(
            !seen.heard(a, 500, t0, Vec::new),
            "joining: in no store yet"
        );
        assert!(seen.heard(a, 1_000, t0, stores));
        assert!(seen.heard(b, 1_500, t0, || vec![(one, d1.clone())]));
        // Within the minute: not written again, the stores are not even asked.
        let soon = t0 + SEEN_SAVE_EVERY / 2;
        assert!(!seen.heard(a, 2_000, soon, || panic!("no stores looked up")));
        assert_eq!(seen.get(one, &d1, &a), Some(1_000));

        let later = t0 + SEEN_SAVE_EVERY;
        assert!(seen.heard(a, 61_000, later, stores));

        // A restart: a fresh book reads what was written.
        let mut text = std::fs::read_to_string(d1.join("seen")).unwrap();
        text.push_str("not a line\n");
        std::fs::write(d1.join("seen"), text).unwrap();
        let reopened = LastSeen::default();
        assert_eq!(reopened.get(one, &d1, &a), Some(61_000));
        assert_eq!(reopened.get(two, &d2, &a), Some(61_000));
        assert_eq!(reopened.get(one, &d1, &b), Some(1_500));
        assert_eq!(reopened.get(two, &d2, &b), None, "b is not a member of two");
        // An older time never replaces a newer one.
        assert!(reopened.heard(a, 5_000, t0, stores));
        assert_eq!(reopened.get(one, &d1, &a), Some(61_000));
    }
}
