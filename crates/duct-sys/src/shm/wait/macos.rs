//! macOS: `__ulock_wait` / `__ulock_wake` with `UL_COMPARE_AND_WAIT_SHARED`, the kernel's
//! compare-and-wait on an address, keyed by the physical page so that two processes mapping
//! one segment wait on one word.
//!
//! Why this and not the alternatives:
//! - `os_sync_wait_on_address` (with `OS_SYNC_WAIT_ON_ADDRESS_SHARED`) is the public wrapper of
//!   the same kernel call, but only from macOS 14.4; a binary that links it does not load on
//!   older systems. `__ulock_*` exists since macOS 10.12 and is what libc++'s
//!   `std::atomic::wait`, Chromium and Zig's standard library use.
//! - Process-shared POSIX semaphores are not implemented on macOS (`sem_init` fails), and
//!   named ones would put names in the system namespace that a crash can leak.
//! - kqueue's `EVFILT_USER` does not cross processes.
//! - The control socket works everywhere (the reactor already uses it, mode `SOCKET`), but a
//!   byte per wake-up costs a write and a read where a futex costs one wake.
//!
//! The reactor side of a shm pipe waits on the control socket on every system; only a thread
//! blocked in `recv` or `send` sleeps here.

use std::ffi::c_void;
use std::time::Duration;

use super::super::sync::AtomicU32;

/// Compare the 32-bit word at the address and wait while it holds the value; shared between
/// processes (xnu `bsd/sys/ulock.h`).
const UL_COMPARE_AND_WAIT_SHARED: u32 = 3;
/// Return `-errno` instead of setting `errno`.
const ULF_NO_ERRNO: u32 = 0x0100_0000;

extern "C" {
    // int __ulock_wait(uint32_t operation, void *addr, uint64_t value, uint32_t timeout_us);
    // timeout 0 waits without a limit.
    fn __ulock_wait(operation: u32, addr: *mut c_void, value: u64, timeout_us: u32) -> i32;
    // int __ulock_wake(uint32_t operation, void *addr, uint64_t wake_value);
    fn __ulock_wake(operation: u32, addr: *mut c_void, wake_value: u64) -> i32;
}

/// The timeout argument for `__ulock_wait`: microseconds, at least 1 (0 would mean "no
/// limit"), at most `u32::MAX` (about 71 minutes; a longer wait returns early and the
/// caller, which loops, waits again).
fn timeout_us(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => 0,
        Some(t) => u32::try_from(t.as_micros()).unwrap_or(u32::MAX).max(1),
    }
}

pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    // SAFETY: `word` is a live, 4-byte aligned atomic (in the shared mapping, which outlives
    // this call because the caller borrows it); the kernel only reads it to compare with
    // `expected`. Errors (the word changed, timeout, interruption) all mean "look again".
    unsafe {
        __ulock_wait(
            UL_COMPARE_AND_WAIT_SHARED | ULF_NO_ERRNO,
            word.as_ptr().cast(),
            u64::from(expected),
            timeout_us(timeout),
        );
    }
}

pub(super) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; the kernel uses the address only as the key of the wait
    // queue. Without `ULF_WAKE_ALL` one sleeper is woken (there is at most one per word).
    // `-ENOENT` (nobody waits) is fine.
    unsafe {
        __ulock_wake(
            UL_COMPARE_AND_WAIT_SHARED | ULF_NO_ERRNO,
            word.as_ptr().cast(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_never_mean_forever() {
        assert_eq!(timeout_us(None), 0);
        assert_eq!(timeout_us(Some(Duration::ZERO)), 1);
        assert_eq!(timeout_us(Some(Duration::from_nanos(10))), 1);
        assert_eq!(timeout_us(Some(Duration::from_millis(20))), 20_000);
        assert_eq!(timeout_us(Some(Duration::from_secs(1 << 40))), u32::MAX);
    }
}
