//! A work budget for fuzz targets: the global allocator counts the bytes
//! each input makes the code under test allocate, and [`within`] fails the
//! input when that passes a multiple of the input's size. A blow-up that
//! stays under libFuzzer's time and memory limits (expanding 33 MB to
//! refuse a 1 MB request, say) shows as a failure, not as a slow run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts bytes allocated, then hands the work to the system allocator.
pub struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `check` on `input` and panics if it allocated more than
/// `per_byte` bytes per input byte plus `base`.
pub fn within(input: &[u8], per_byte: usize, base: usize, check: impl FnOnce(&[u8])) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    check(input);
    let used = ALLOCATED.load(Ordering::Relaxed) - before;
    let budget = per_byte * input.len() + base;
    assert!(used <= budget, "{used} bytes allocated for {} bytes of input (budget {budget})", input.len());
}
