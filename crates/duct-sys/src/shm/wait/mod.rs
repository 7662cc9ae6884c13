//! Sleeping until the other side has published something, without a syscall on the
//! publishing side unless someone actually sleeps.
//!
//! Each side that may wait has a wait word in the shared segment:
//! - [`RUNNING`]: not waiting (the publisher does nothing);
//! - [`PARKED`]: a thread sleeps on the word with a futex (the publisher wakes it);
//! - [`SOCKET`]: the waiter's reactor waits for a byte on the control socket (the publisher
//!   writes one; futexes cannot be polled with other fds).
//!
//! The protocol is the store-buffer pattern with a `SeqCst` fence on each side. The waiter
//! stores its mode, fences, then checks its condition again (ring empty, pool full) before
//! sleeping; the publisher publishes, fences, then reads the word. Of the two fences one comes
//! first in the single total order of `SeqCst` operations, so either the waiter sees the
//! publication and does not sleep, or the publisher sees the mode and wakes it: a wake-up is
//! never lost. The publisher swaps the word back to `RUNNING` when it wakes, so a sleeper is
//! woken once per sleep however many times the other side publishes.
//!
//! The word lives in memory the peer can write, so any value other than the three is treated
//! as `RUNNING`, and a sleeper always sleeps with a timeout its caller chooses (the peer could
//! leave it parked by never waking it; the control socket's EOF wakes it when the peer dies,
//! through [`wake_local`]).

use std::time::Duration;

use super::sync::{fence, AtomicU32, Ordering};

/// The waiter is not waiting.
pub const RUNNING: u32 = 0;
/// A thread of the waiter sleeps on the word (futex).
pub const PARKED: u32 = 1;
/// The waiter's reactor waits for a byte on the control socket.
pub const SOCKET: u32 = 2;

/// What the publisher must do after [`notify`] found a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nobody waits (or a futex waiter was woken already).
    Done,
    /// The waiter's reactor waits on the control socket: write one byte to it.
    Socket,
}

/// Publisher side, after publishing (a ring's head, a freed pool slot): wakes the waiter if it
/// sleeps on the futex, or says to write the control socket.
#[inline]
pub fn notify(word: &AtomicU32) -> Wake {
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) == RUNNING {
        return Wake::Done;
    }
    match word.swap(RUNNING, Ordering::AcqRel) {
        PARKED => {
            futex_wake(word);
            Wake::Done
        }
        SOCKET => Wake::Socket,
        _ => Wake::Done,
    }
}

/// Waiter side, first step: announce how to be woken. Then check the condition again: if it
/// holds, [`cancel`]; if not, [`park`] (mode `PARKED`) or go back to the reactor (`SOCKET`).
#[inline]
pub fn prepare(word: &AtomicU32, mode: u32) {
    debug_assert!(mode == PARKED || mode == SOCKET);
    word.store(mode, Ordering::Relaxed);
    fence(Ordering::SeqCst);
}

/// Waiter side: no longer waiting.
#[inline]
pub fn cancel(word: &AtomicU32) {
    word.store(RUNNING, Ordering::Relaxed);
}

/// Waiter side: sleeps while the word says `PARKED`, at most `timeout` (`None`: until woken).
/// Returns after a wake-up, the timeout, a signal or a spurious wake: the caller checks its
/// condition again and calls [`cancel`] or parks again.
pub fn park(word: &AtomicU32, timeout: Option<Duration>) {
    futex_wait(word, PARKED, timeout);
}

/// Wakes a thread of this process that sleeps on `word` (for example when the control socket
/// reports that the peer is gone): the word becomes `RUNNING`.
pub fn wake_local(word: &AtomicU32) {
    if word.swap(RUNNING, Ordering::AcqRel) == PARKED {
        futex_wake(word);
    }
}

// The futex itself: one module per OS, each with `futex_wait(word, expected, timeout)` (sleep
// while `word == expected`, at most `timeout`, returning early on a wake, a signal or a
// spurious wake-up) and `futex_wake(word)` (wake one sleeper), both across processes.
#[cfg(all(not(loom), target_os = "linux"))]
#[path = "linux.rs"]
mod os;
#[cfg(all(not(loom), target_os = "macos"))]
#[path = "macos.rs"]
mod os;
#[cfg(all(not(loom), not(target_os = "linux"), not(target_os = "macos")))]
#[path = "other.rs"]
mod os;
#[cfg(not(loom))]
use os::{futex_wait, futex_wake};

/// Loom has no futex: a sleeper yields until the word changes (a lost wake-up shows as a
/// thread that never finishes), and timeouts are not modelled.
#[cfg(loom)]
fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
    while word.load(Ordering::Acquire) == expected {
        loom::thread::yield_now();
    }
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU32) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_parked_thread_is_woken_by_notify() {
        let word = Arc::new(AtomicU32::new(RUNNING));
        let flag = Arc::new(AtomicU32::new(0));
        let (w, f) = (Arc::clone(&word), Arc::clone(&flag));
        let sleeper = std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                prepare(&w, PARKED);
                if f.load(Ordering::Acquire) == 1 {
                    cancel(&w);
                    return start.elapsed();
                }
                park(&w, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        flag.store(1, Ordering::Release);
        assert_eq!(notify(&word), Wake::Done);
        let slept = sleeper.join().unwrap();
        assert!(
            slept < Duration::from_secs(5),
            "woken, not timed out: {slept:?}"
        );
        assert_eq!(word.load(Ordering::Relaxed), RUNNING);
    }

    #[test]
    fn socket_mode_asks_for_a_byte_once() {
        let word = AtomicU32::new(RUNNING);
        assert_eq!(notify(&word), Wake::Done);
        prepare(&word, SOCKET);
        assert_eq!(notify(&word), Wake::Socket);
        assert_eq!(notify(&word), Wake::Done, "once per wait");
        // Garbage from the peer is treated as running.
        word.store(77, Ordering::Relaxed);
        assert_eq!(notify(&word), Wake::Done);
    }

    #[test]
    fn park_times_out() {
        let word = AtomicU32::new(RUNNING);
        prepare(&word, PARKED);
        let start = Instant::now();
        park(&word, Some(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(10));
        wake_local(&word);
        assert_eq!(word.load(Ordering::Relaxed), RUNNING);
    }
}
