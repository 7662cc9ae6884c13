//! Linux: the futex system call on a word in shared memory (not `FUTEX_PRIVATE_FLAG`, which
//! would key the wait on this process's address space).

use std::time::Duration;

use super::super::sync::AtomicU32;
use rustix::thread::futex;

pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // Errors (EAGAIN: the word changed already; ETIMEDOUT; EINTR) all mean "look again".
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

pub(super) fn futex_wake(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}
