//! A counting global allocator: [`CountingAlloc`] forwards every call to
//! [`std::alloc::System`] and counts allocations, deallocations, reallocations and bytes.
//!
//! It exists for `duct bench`, which reports how many allocations a message costs in the
//! steady state (the goal is zero). A binary opts in with
//!
//! ```
//! use duct_sys::alloc_count::{snapshot, CountingAlloc};
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//!
//! fn main() {
//!     let before = snapshot();
//!     let v = std::hint::black_box(vec![7u8; 100]);
//!     let during = snapshot().since(&before);
//!     assert!(during.allocs >= 1 && during.bytes >= 100);
//!     drop(v);
//! }
//! ```
//!
//! It reads the process-wide counters with [`snapshot`]; the difference of two snapshots
//! ([`AllocStats::since`]) is what happened in between, on every thread of the process.
//!
//! The counters are relaxed atomics: each is exact on its own, but a snapshot taken while
//! other threads allocate is not a consistent cut across the four of them. They count
//! every call made through `CountingAlloc`, whether or not it is the global allocator;
//! when it is not installed they stay at zero unless it is called directly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters, on one cache line of their own so that they do not share a line with
/// unrelated hot data.
#[repr(align(64))]
struct Counters {
    allocs: AtomicU64,
    deallocs: AtomicU64,
    reallocs: AtomicU64,
    bytes: AtomicU64,
}

static COUNTERS: Counters = Counters {
    allocs: AtomicU64::new(0),
    deallocs: AtomicU64::new(0),
    reallocs: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

/// A global allocator that forwards to [`System`] and counts what passes through it.
///
/// It adds one relaxed atomic increment (two for calls that allocate bytes) to each call,
/// and changes nothing else: alignment, zeroing and failure (a null pointer) are
/// [`System`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

/// Counts of allocator calls since the process started (from [`snapshot`]), or between two
/// snapshots (from [`AllocStats::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Calls to `alloc` and `alloc_zeroed` that succeeded.
    pub allocs: u64,
    /// Calls to `dealloc`.
    pub deallocs: u64,
    /// Calls to `realloc` that succeeded.
    pub reallocs: u64,
    /// Bytes requested by successful `alloc`, `alloc_zeroed` and `realloc` calls (for a
    /// `realloc`, the new size). Freed bytes are not subtracted.
    pub bytes: u64,
}

impl AllocStats {
    /// What happened between `earlier` and `self` (both from [`snapshot`]).
    ///
    /// Wrapping subtraction, so a counter that overflowed in between still gives the
    /// right difference.
    pub fn since(&self, earlier: &AllocStats) -> AllocStats {
        AllocStats {
            allocs: self.allocs.wrapping_sub(earlier.allocs),
            deallocs: self.deallocs.wrapping_sub(earlier.deallocs),
            reallocs: self.reallocs.wrapping_sub(earlier.reallocs),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }

    /// Calls that obtained memory: `allocs + reallocs` (a `realloc` may move and copy a
    /// block, so it costs what an allocation costs).
    pub fn allocations(&self) -> u64 {
        self.allocs.wrapping_add(self.reallocs)
    }
}

/// The process-wide counters now.
pub fn snapshot() -> AllocStats {
    AllocStats {
        allocs: COUNTERS.allocs.load(Ordering::Relaxed),
        deallocs: COUNTERS.deallocs.load(Ordering::Relaxed),
        reallocs: COUNTERS.reallocs.load(Ordering::Relaxed),
        bytes: COUNTERS.bytes.load(Ordering::Relaxed),
    }
}

fn count_alloc(size: usize) {
    COUNTERS.allocs.fetch_add(1, Ordering::Relaxed);
    COUNTERS.bytes.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `CountingAlloc` upholds exactly the contract `System` upholds (blocks that fit the layout,
// stay valid until freed, and are never handed out twice). Counting touches only atomics,
// never allocates, and so cannot re-enter the allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (a non-zero-size
        // layout), which is `System::alloc`'s contract too.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's non-zero-size layout is passed on unchanged.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        COUNTERS.deallocs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` came from this allocator with `layout`; every
        // block this allocator hands out comes from `System` with the same layout, so it
        // is `System`'s to free.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from `System`)
        // with `layout`, and that `new_size` is non-zero and does not overflow `isize`
        // once rounded to the alignment; `System::realloc` requires the same.
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            COUNTERS.reallocs.fetch_add(1, Ordering::Relaxed);
            COUNTERS.bytes.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The counters are process-wide and the tests of this crate run in parallel, but
    // `CountingAlloc` is not the global allocator here: only direct calls count, and this
    // is the only test that makes them.
    #[test]
    fn counts_each_kind_of_call() {
        let before = snapshot();
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: the layout has a non-zero size; the block is freed below with the same
        // layout (after realloc: the new size), and not used after.
        unsafe {
            let p = CountingAlloc.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, 100);
            let p = CountingAlloc.realloc(p, layout, 300);
            assert!(!p.is_null());
            assert_eq!(*p.add(99), 7, "realloc keeps the contents");
            CountingAlloc.dealloc(p, Layout::from_size_align(300, 8).unwrap());
            let z = CountingAlloc.alloc_zeroed(layout);
            assert!(!z.is_null());
            assert_eq!(*z.add(50), 0);
            CountingAlloc.dealloc(z, layout);
        }
        let d = snapshot().since(&before);
        assert_eq!(
            d,
            AllocStats {
                allocs: 2,
                deallocs: 2,
                reallocs: 1,
                bytes: 100 + 300 + 100
            }
        );
        assert_eq!(d.allocations(), 3);
    }

    #[test]
    fn since_wraps() {
        let earlier = AllocStats {
            allocs: u64::MAX,
            ..AllocStats::default()
        };
        let later = AllocStats {
            allocs: 1,
            ..AllocStats::default()
        };
        assert_eq!(later.since(&earlier).allocs, 2);
    }
}

/// A global allocator that counts, per thread, the bytes the current thread holds and the
/// largest single request it made, so that a test can show that one operation allocated
/// little while other tests run in parallel threads. Install it with
/// `#[global_allocator] static A: ThreadCountingAlloc = ThreadCountingAlloc;` and measure with
/// [`measure_thread`]. Every call is forwarded to [`System`].
pub struct ThreadCountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn thread_on_alloc(size: usize) {
    // `try_with`: allocations during thread teardown find the slots gone; they do not count.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + size as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

fn thread_on_dealloc(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes and
// never allocate (const-initialised thread-locals of `Cell`s).
unsafe impl GlobalAlloc for ThreadCountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        thread_on_alloc(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        thread_on_alloc(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        thread_on_dealloc(layout.size());
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        thread_on_dealloc(layout.size());
        thread_on_alloc(new_size);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What the current thread allocated while a closure ran (see [`measure_thread`]).
#[derive(Debug, Clone, Copy)]
pub struct ThreadUsage {
    /// Most bytes held at once, above what was held when the closure started.
    pub peak: usize,
    /// The largest single allocation (or reallocation target) requested.
    pub largest: usize,
    /// Bytes held when the closure returned, above (or, if negative, below) what was held
    /// when it started: what it kept.
    pub kept: isize,
}

/// Runs `f` and reports what the current thread allocated meanwhile. Meaningful only when
/// [`ThreadCountingAlloc`] is the global allocator (otherwise it reports zeros).
pub fn measure_thread<R>(f: impl FnOnce() -> R) -> (R, ThreadUsage) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    LARGEST.with(|l| l.set(0));
    let r = f();
    let peak = PEAK.with(|p| p.get()) - start;
    let largest = LARGEST.with(|l| l.get());
    let kept = LIVE.with(|l| l.get()) - start;
    (
        r,
        ThreadUsage {
            peak: peak.max(0) as usize,
            largest,
            kept,
        },
    )
}
