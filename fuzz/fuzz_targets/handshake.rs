//! Arbitrary bytes into listener and dialer sessions, before and after the handshake. The body
//! (and its oracles) is in `common`, shared with the stable test suite.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::handshake(data));
