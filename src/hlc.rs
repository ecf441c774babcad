//! Hybrid logical clock: wall milliseconds plus a counter, strictly increasing per node.

use std::time::{SystemTime, UNIX_EPOCH};

/// The most nanoseconds a counter adds to its wall millisecond in [`Hlc::as_nanos`]:
/// one less than a millisecond, so a time never passes the next millisecond's.
const MAX_COUNTER_NANOS: u32 = 999_999;

/// A hybrid logical timestamp; ordered by wall time, then counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (or the greatest seen, if ahead).
    pub wall_ms: u64,
    /// Tie-breaker within one millisecond.
    pub counter: u32,
}

impl Hlc {
    /// The zero timestamp.
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        counter: 0,
    };

    /// Nanoseconds since the epoch: the wall time plus the counter as nanoseconds (held
    /// below the next millisecond), so later stamps show as later times even within one
    /// millisecond, as `make` and `rsync -u` need of successive changes.
    pub fn as_nanos(self) -> i64 {
        let within = i64::from(self.counter.min(MAX_COUNTER_NANOS));
        (self.wall_ms as i64)
            .saturating_mul(1_000_000)
            .saturating_add(within)
    }
}

/// Current wall time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`), for printing times without a date library.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A node's clock. Every `tick` returns a timestamp greater than any it returned or
/// observed before; start it from the greatest timestamp persisted so that it never
/// goes backwards across restarts.
#[derive(Debug)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that will only issue timestamps greater than `floor`.
    pub fn new(floor: Hlc) -> Self {
        Self { last: floor }
    }

    /// The next timestamp, given the wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                counter: 0,
            }
        } else if self.last.counter == u32::MAX {
            Hlc {
                wall_ms: self.last.wall_ms + 1,
                counter: 0,
            }
        } else {
            Hlc {
                wall_ms: self.last.wall_ms,
                counter: self.last.counter + 1,
            }
        };
        self.last
    }

    /// Moves the clock past a timestamp received from another node.
    pub fn observe(&mut self, remote: Hlc) {
        self.last = self.last.max(remote);
    }

    /// The greatest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_in_the_same_millisecond_are_distinct_and_increasing() {
        let mut c = Clock::new(Hlc::ZERO);
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(999);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 1000);
    }

    #[test]
    fn clock_restarted_from_its_last_timestamp_never_goes_backwards() {
        let mut c = Clock::new(Hlc::ZERO);
        let last = c.tick(5000);
        let mut restarted = Clock::new(last);
        assert!(restarted.tick(10) > last);
    }

    #[test]
    fn observing_a_future_timestamp_moves_the_clock_past_it() {
        let mut c = Clock::new(Hlc::ZERO);
        let remote = Hlc {
            wall_ms: 9_000,
            counter: 7,
        };
        c.observe(remote);
        assert!(c.tick(100) > remote);
    }

    #[test]
    fn counter_overflow_carries_into_wall_time() {
        let mut c = Clock::new(Hlc {
            wall_ms: 5,
            counter: u32::MAX,
        });
        assert_eq!(
            c.tick(5),
            Hlc {
                wall_ms: 6,
                counter: 0
            }
        );
    }
}
