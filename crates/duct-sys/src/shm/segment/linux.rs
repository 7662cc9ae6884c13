//! Linux: the segment is a memfd (anonymous: nothing in /dev/shm), sealed so that neither
//! side can resize it (a shrunk mapping would fault on access) or unseal it.

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

use super::{bad, SegmentError};

/// The seals a segment must carry: nobody can shrink or grow it, and no seal can be removed.
fn required_seals() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// A sealed memfd of `len` bytes.
pub(super) fn new_fd(len: u64) -> Result<OwnedFd, SegmentError> {
    let fd = rustix::fs::memfd_create("duct-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, required_seals())?;
    Ok(fd)
}

/// The received fd is a memfd sealed against resizing.
pub(super) fn check_fd(fd: BorrowedFd<'_>) -> Result<(), SegmentError> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(required_seals()) {
        return Err(bad("the segment is not sealed against resizing").into());
    }
    Ok(())
}
