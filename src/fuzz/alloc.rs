//! A counting global allocator for fuzz tests: [`peak_bytes`] runs a closure and
//! returns the most bytes it held live at once, counted per thread (a thread-local),
//! so tests running in parallel do not see each other's allocations.
//!
//! While no thread measures, an allocation costs one relaxed atomic load more; while
//! some thread does, one thread-local read. This file uses nothing from its crate: the
//! library's and the daemon's test binaries both include it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the calling thread's live bytes while it measures.
pub(crate) struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

/// Threads measuring now; zero lets every allocation skip the thread-locals.
static MEASURING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// True while this thread runs a measured closure.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed since the measurement started (frees of
    /// older memory can make it negative).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Greatest `LIVE` seen since the measurement started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Counts `bytes` more live bytes (fewer when negative) if this thread is measuring.
/// Inlined even in debug builds, so unmeasured allocations stay cheap.
#[inline(always)]
fn count(bytes: isize) {
    if MEASURING.load(Ordering::Relaxed) == 0 {
        return;
    }
    // `try_with`: allocations during thread teardown find the thread-locals gone.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.get() + bytes;
            LIVE.set(live);
            if live > PEAK.get() {
                PEAK.set(live);
            }
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a new block before the old one is freed: a moving realloc holds both.
        count(new_size as isize);
        count(-(layout.size() as isize));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the most bytes this thread held live at once
/// while it ran (memory allocated before `f` and freed inside it does not count).
pub(crate) fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    /// Stops counting when dropped, also when `f` panics.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            ARMED.set(false);
            MEASURING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    LIVE.set(0);
    PEAK.set(0);
    MEASURING.fetch_add(1, Ordering::Relaxed);
    ARMED.set(true);
    let disarm = Disarm;
    let out = f();
    drop(disarm);
    (out, PEAK.get().max(0) as usize)
}
