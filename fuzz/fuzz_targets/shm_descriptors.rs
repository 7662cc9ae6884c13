//! A hostile producer against the shared-memory ring and pool: arbitrary descriptors, counters
//! and slot traffic. The body (and its oracles) is in `shm_common.rs`, shared with the stable
//! test suite of duct-sys.
#![no_main]

mod shm_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_common::shm_descriptors(data));
