//! Systems without a cross-process wait on an address that duct supports yet: the sleeper
//! naps in short steps and checks the word again, and a wake is a no-op. Correct (a wake-up
//! is late by at most one step, never lost) but slower to wake than a futex; shm:// is not
//! offered on these systems today, so only tests of this crate run it.

use std::time::Duration;

use super::super::sync::{AtomicU32, Ordering};

/// The longest nap before the word is checked again.
const STEP: Duration = Duration::from_micros(50);

pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let t = timeout.map_or(STEP, |t| t.min(STEP));
    if word.load(Ordering::Acquire) == expected {
        std::thread::sleep(t);
    }
}

pub(super) fn futex_wake(_word: &AtomicU32) {}
