//! Per-thread allocation measurement for tests (tests run in parallel threads; per-thread
//! counters keep them apart). The allocator lives in duct-sys, the one crate allowed `unsafe`.
#![allow(dead_code)]

#[global_allocator]
static GLOBAL: duct_sys::alloc_count::ThreadCountingAlloc =
    duct_sys::alloc_count::ThreadCountingAlloc;

pub use duct_sys::alloc_count::measure_thread as measure;
