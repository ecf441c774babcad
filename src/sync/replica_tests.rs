//! Replica tests of the pass schedule (tests with real stores are in
//! `store/replica_tests.rs`, where `Store` is visible).

use super::*;

#[test]
fn idle_passes_back_off_to_the_longest_interval() {
    let t = 0;
    let mut s = Schedule::new(t);
    assert_eq!(s.due, t + ANTI_ENTROPY_MIN);
    let mut gaps = Vec::new();
    let mut now = s.due;
    for _ in 0..6 {
        s.passed(now, false);
        gaps.push((s.due - now) / 1000);
        now = s.due;
    }
    assert_eq!(gaps, [4, 8, 16, 30, 30, 30]);
    s.passed(now, true);
    assert_eq!(s.due, now + ANTI_ENTROPY_MIN);
}

#[test]
fn a_local_change_after_a_long_idle_is_confirmed_within_the_shortest_interval() {
    let t = 0;
    let mut s = Schedule::new(t);
    let mut now = t;
    for _ in 0..5 {
        now = s.due;
        s.passed(now, false);
    }
    assert_eq!(s.due, now + ANTI_ENTROPY_MAX);
    let change = now + 1000;
    s.local_change(change);
    assert_eq!(s.due, change + ANTI_ENTROPY_MIN);
}

#[test]
fn a_steady_writer_does_not_put_the_next_pass_off() {
    let t = 0;
    let mut s = Schedule::new(t);
    for ms in (0..5_000).step_by(100) {
        s.local_change(t + ms);
    }
    assert_eq!(s.due, t + ANTI_ENTROPY_MIN);
}

#[test]
fn a_clock_stepped_back_does_not_put_the_next_pass_off_further_than_its_interval() {
    let mut s = Schedule::new(1_000_000);
    assert_eq!(s.due(0), ANTI_ENTROPY_MIN);
}
