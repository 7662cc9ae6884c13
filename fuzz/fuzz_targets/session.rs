//! Sequences of operations on a dialer and a listener session (sends, frames moved, lost,
//! duplicated, reordered, cut or corrupted, time, timeouts, receives, pause/resume, close),
//! structured with `arbitrary`. The body (and its oracles) is in `common::session`, shared with
//! the stable test suite.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::session::session(data));
