//! Arbitrary bytes into the deframer, the header decoder and every control-payload decoder.
//! The body (and its oracles) is in `common`, shared with the stable test suite.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::frame_decoder(data));
