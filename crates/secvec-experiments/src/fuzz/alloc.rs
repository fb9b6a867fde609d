//! A global allocator that measures how much memory a fuzzed parser takes.
//!
//! It forwards to the system allocator (tuned by `secvec_models::kernels::tune_allocator`) and,
//! only on a thread the fuzz driver armed, adds up the bytes requested so that the driver can
//! compare the peak with the input's size. The counters are per thread (tests run beside each
//! other); unarmed, each call costs one thread-local read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

fn grow(by: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + by;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters do not affect it.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if armed() {
            grow(layout.size() as isize);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if armed() {
            grow(layout.size() as isize);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            grow(-(layout.size() as isize));
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if armed() {
            grow(new_size as isize - layout.size() as isize);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts measuring this thread's allocations.
pub fn arm() {
    LIVE.set(0);
    PEAK.set(0);
    ARMED.set(true);
}

/// Stops measuring; returns the peak of bytes held at once since [`arm`] (memory freed that was
/// allocated before arming counts negatively, so this is a bound on the growth).
pub fn disarm() -> usize {
    ARMED.set(false);
    PEAK.get().max(0) as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_counts_what_this_thread_holds_at_once() {
        super::arm();
        let a = vec![1u8; 3 << 20];
        drop(a);
        let b = vec![1u8; 2 << 20];
        let peak = super::disarm();
        drop(b);
        assert!((3 << 20..4 << 20).contains(&peak), "{peak}");
        // Disarmed, nothing is counted.
        super::arm();
        let peak = super::disarm();
        let _c = vec![1u8; 8 << 20];
        assert!(peak < 1 << 20, "{peak}");
    }
}
