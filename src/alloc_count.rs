//! Heap allocations counted per thread: a global allocator that forwards to
//! the system's and adds one to a thread-local counter per allocation (and
//! reallocation). Workers publish their thread's count as the metric
//! `ringmux_worker_allocations_total`, which is how the test suite checks the
//! steady-state request path for allocations (issue #13) on the real binary.
//!
//! The binary installs it (`src/main.rs`); where it is not installed the
//! count stays 0 (the test checks that the count moves during its warm-up).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // `const` initialisation: no lazy set-up and no destructor, so touching
    // it from inside the allocator can never allocate or recurse.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// The counting allocator (`#[global_allocator] static A: Counting = Counting;`).
pub struct Counting;

fn bump() {
    // `try_with`: during thread teardown the slot may be gone; then the
    // allocation is simply not counted.
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees (and the caller's obligations) carry
// over as they are; the counter is a thread-local `Cell` that does not
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is (see above).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is: `ptr` was allocated by `System` through
        // this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (and reallocations) made by the calling thread so far.
pub fn this_thread() -> u64 {
    COUNT.try_with(Cell::get).unwrap_or(0)
}
