//! Each store's content space (live, retained, reclaimable bytes), measured off the
//! request path. A measurement reads every intention on disk, so its cost grows with
//! history: `status` shows the last one and, when it is out of date, starts a new one
//! in the background. The last measurement is kept in the store's directory, so the
//! first `status` after a restart has figures at once. A measurement is dated by the
//! applied count, which a local op moves when it is sealed into an intention.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cas::Space;
use crate::hlc::now_ms;
use crate::ids::StoreId;
use crate::net::peers::write_atomic;
use crate::store::Store;

use super::{store_name, Node, NodeError};

/// File in a store's directory holding its last content space measurement.
const SPACE_FILE: &str = "space";
/// How long a measurement stays current while no intention arrives: versions expire by
/// the day, so a minute-old figure is as good as a new one.
const SPACE_FRESH: Duration = Duration::from_secs(60);
/// After a measurement, the next waits at least this long, and at least
/// [`SPACE_DUTY`] times as long as that one took: a store that keeps changing (a clone,
/// a large copy) is measured now and then, not all the time.
const SPACE_GAP: Duration = Duration::from_secs(2);
/// See [`SPACE_GAP`]: measurements take at most about a tenth of one core.
const SPACE_DUTY: u32 = 10;

/// One measurement of a store's content space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Measured {
    /// Wall ms since the Unix epoch when it was taken.
    at_ms: u64,
    /// The store's applied count it saw.
    applied: u64,
    space: Space,
}

impl Measured {
    /// The line kept in [`SPACE_FILE`].
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.at_ms, self.applied, self.space.live, self.space.retained, self.space.reclaimable
        )
    }

    /// Reads back [`Measured::encode`]; `None` for anything else.
    fn decode(line: &str) -> Option<Measured> {
        let mut n = line.split_whitespace().map(|w| w.parse::<u64>().ok());
        let mut next = || n.next().flatten();
        let m = Measured {
            at_ms: next()?,
            applied: next()?,
            space: Space {
                live: next()?,
                retained: next()?,
                reclaimable: next()?,
            },
        };
        next().is_none().then_some(m)
    }

    /// Whether it still describes a store that has applied `applied` intentions at wall
    /// ms `now`: the same intentions, taken under [`SPACE_FRESH`] ago. One dated after
    /// `now` (a clock set back, a damaged file) is not: it would otherwise pass for
    /// fresh for as long as the clock lags.
    fn is_current(&self, applied: u64, now: u64) -> bool {
        self.applied == applied
            && self.at_ms <= now
            && Duration::from_millis(now - self.at_ms) < SPACE_FRESH
    }
}

/// What a node knows of one store's content space.
#[derive(Default)]
pub(super) struct SpaceSlot {
    /// The last measurement, once loaded or taken.
    last: Option<Measured>,
    /// Whether the kept file was read (it is read once, at the first use).
    loaded: bool,
    /// Why the last measurement failed, when it did.
    error: Option<String>,
    /// A measurement is running or waiting for its turn (see [`SPACE_GAP`]).
    running: bool,
    /// The earliest time the next measurement may start (see [`SPACE_GAP`]).
    next: Option<Instant>,
}

/// Every store's [`SpaceSlot`].
pub(super) type SpaceSlots = HashMap<StoreId, SpaceSlot>;

/// A store's content space as `status` shows it.
#[derive(Clone, Debug, Default)]
pub struct SpaceReading {
    /// The last measurement and how long ago it was taken; `None` before the first.
    pub last: Option<(Space, Duration)>,
    /// The last measurement saw every intention applied now and is fresh.
    pub current: bool,
    /// Why the last measurement failed, when it did.
    pub error: Option<String>,
}

/// Gives the calling thread the lowest CPU priority (nice 19), so a measurement takes
/// only the time that requests, the mount and sync leave: on a start, it would
/// otherwise slow the first `status` and `ls` by as much as it costs.
fn yield_to_requests() {
    // SAFETY: gettid and setpriority only read and set this thread's scheduling value.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(
            "cannot lower the space measurement's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Node {
    /// The last content space measured for `store`. When it is out of date (intentions
    /// arrived since, or it is older than a minute) a measurement starts in the
    /// background once [`SPACE_GAP`] allows; it never runs on the caller's thread.
    pub fn space(&self, store: &Store) -> SpaceReading {
        let now = now_ms();
        let applied = store.applied();
        let mut slots = self.inner.space.lock();
        let slot = slots.entry(store.id()).or_default();
        if !slot.loaded {
            slot.loaded = true;
            let path = self.store_dir(store.id()).join(SPACE_FILE);
            let kept = std::fs::read_to_string(path).ok();
            slot.last = slot.last.or(kept.as_deref().and_then(Measured::decode));
        }
        let age = |m: &Measured| Duration::from_millis(now.saturating_sub(m.at_ms));
        let current = slot.last.is_some_and(|m| m.is_current(applied, now));
        if !current && !slot.running {
            slot.running = true;
            let wait = slot.next.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            });
            let (node, store) = (self.clone(), store.clone());
            let spawned = std::thread::Builder::new()
                .name("lattice-space".into())
                .spawn(move || {
                    std::thread::sleep(wait);
                    yield_to_requests();
                    let started = Instant::now();
                    let measured = node.measure_space(&store);
                    // The scan freed what it decoded in this thread's allocator arena.
                    crate::budget::release_freed();
                    let took = started.elapsed();
                    let mut slots = node.inner.space.lock();
                    let slot = slots.entry(store.id()).or_default();
                    slot.running = false;
                    slot.next = Some(Instant::now() + SPACE_GAP.max(took * SPACE_DUTY));
                    match measured {
                        // The node stopped while it measured: nothing is wrong.
                        Err(e) if store.is_shut_down() => {
                            tracing::debug!("content space not measured: {e}")
                        }
                        Err(e) => {
                            tracing::warn!("content space unavailable: {e}");
                            slot.error = Some(e.to_string());
                        }
                        Ok(_) => {}
                    }
                });
            if let Err(e) = spawned {
                slot.running = false;
                slot.error = Some(format!("cannot start measuring: {e}"));
            }
        }
        SpaceReading {
            last: slot.last.map(|m| (m.space, age(&m))),
            current,
            error: slot.error.clone(),
        }
    }

    /// Measures the content space of `store` now and keeps the result (it reads every
    /// intention on disk).
    pub fn measure_space(&self, store: &Store) -> Result<Space, NodeError> {
        let applied = store.applied();
        let plan = store.content_plan().map_err(|source| NodeError::Store {
            store: store_name(store),
            source,
        })?;
        let space = self
            .inner
            .cas
            .space(store.id(), &plan.current, &plan.retained)?;
        self.keep_space(store, applied, space);
        Ok(space)
    }

    /// Keeps `space`, measured when `store` had applied `applied` intentions, in memory
    /// and in the store's directory.
    pub(super) fn keep_space(&self, store: &Store, applied: u64, space: Space) {
        let measured = Measured {
            at_ms: now_ms(),
            applied,
            space,
        };
        let path = self.store_dir(store.id()).join(SPACE_FILE);
        if let Err(e) = write_atomic(&path, measured.encode().as_bytes()) {
            tracing::debug!("cannot keep the content space in {}: {e}", path.display());
        }
        let mut slots = self.inner.space.lock();
        let slot = slots.entry(store.id()).or_default();
        slot.loaded = true;
        slot.last = Some(measured);
        slot.error = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_measurement_reads_back_and_anything_else_is_refused() {
        let m = Measured {
            at_ms: 1_700_000_000_000,
            applied: 42,
            space: Space {
                live: 1,
                retained: 2,
                reclaimable: 3,
            },
        };
        assert_eq!(Measured::decode(&m.encode()), Some(m));
        for bad in ["", "1 2 3 4", "1 2 3 4 5 6", "1 2 x 4 5", "-1 2 3 4 5"] {
            assert_eq!(Measured::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_measurement_is_current_for_the_same_intentions_within_the_minute_and_never_from_the_future(
    ) {
        let m = Measured {
            at_ms: 1_000_000,
            applied: 7,
            space: Space::default(),
        };
        let fresh = SPACE_FRESH.as_millis() as u64;
        assert!(m.is_current(7, 1_000_000));
        assert!(m.is_current(7, 1_000_000 + fresh - 1));
        assert!(!m.is_current(7, 1_000_000 + fresh));
        assert!(!m.is_current(8, 1_000_000));
        assert!(!m.is_current(7, 999_999), "dated after now");
    }
}
