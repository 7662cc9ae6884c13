//! POSIX shared memory (`shm_open`), unlinked the moment it is opened, for systems without
//! memfd (macOS).
//!
//! The object has a name for the few microseconds between `shm_open` and `shm_unlink` in
//! [`new_fd`], in this process, before anything is mapped or passed; from then on it is
//! reachable only through the fd (passed to the peer over the rendezvous socket) and the
//! mappings, so it disappears with them however the processes end. A process killed inside
//! that window leaves one empty object named `/duct.<pid>.<n>` behind.
//!
//! macOS lets a POSIX shm object be sized once: a second `ftruncate` fails, so a peer cannot
//! shrink a segment under our mapping (the guarantee seals give on Linux). The fd a dialer
//! receives is not checked for being such an object (macOS has no call that says so); the
//! rendezvous socket lives in a directory only its user can enter (see the shm transport),
//! so only a process that could already debug the dialer can hand it a segment.
//!
//! On Linux, where shm objects can be resized, this module serves only this crate's tests.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::Mode;
use rustix::shm::OFlags;

use super::SegmentError;

/// A name no other object has (checked by `O_EXCL`): the pid, a counter and the clock.
fn candidate_name(attempt: u32) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // At most 6 + 8 + 1 + 8 = 23 bytes: macOS allows 31.
    format!(
        "/duct.{:x}.{:x}",
        std::process::id(),
        n.wrapping_mul(0x9e37_79b9) ^ nanos ^ attempt
    )
}

/// A nameless shared-memory object of `len` bytes (close-on-exec).
pub fn new_fd(len: u64) -> Result<OwnedFd, SegmentError> {
    let mut last = None;
    for attempt in 0..16 {
        let name = candidate_name(attempt);
        match rustix::shm::open(
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => {
                rustix::shm::unlink(name.as_str())?;
                rustix::fs::ftruncate(&fd, len)?;
                return Ok(fd);
            }
            Err(e @ rustix::io::Errno::EXIST) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or(rustix::io::Errno::EXIST).into())
}

/// Nothing to check beyond size and header (see the module's docs).
pub fn check_fd(_fd: BorrowedFd<'_>) -> Result<(), SegmentError> {
    Ok(())
}
