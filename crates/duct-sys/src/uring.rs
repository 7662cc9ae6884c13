//! io_uring for duct's reactor (Linux): a ring that watches fds for readiness with multishot
//! polls, and waits for their completions with a timeout.
//!
//! This module owns the `unsafe` operations the reactor's io_uring backend needs:
//! - putting an entry on the submission queue (the `io-uring` crate's `push`, unsafe because
//!   an entry may point at memory that must outlive the operation). The entries made here
//!   (`POLL_ADD`, `POLL_REMOVE`) carry no pointer: an fd number, an event mask and 64-bit tags.
//!   The kernel resolves the fd when it issues the entry (during the submit) and holds its own
//!   reference to the file from then on, so a closed (or never valid) fd fails the operation
//!   with `EBADF`; nothing in user space has to outlive it.
//! - duplicating an fd *number* the caller does not own ([`dup_if_same_file`]), to poll a
//!   source's fd again later only if it still names the file that was registered.
//!
//! What it leaves to its user (`duct`'s `driver/sys/uring.rs`): which fds to watch, the meaning
//! of the tags (`user_data`), re-arming polls that end, and what to do when completions were
//! lost.
//!
//! A `Ring` is used by one thread at a time (`&mut self` everywhere). io_uring runs a request's
//! completion work in the task that submitted it, so the thread that waits for completions
//! should be the one that submits (duct's reactor thread does both).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};

/// One completion: the tag of the request, its result (`>= 0`, or a negated errno) and whether
/// the request stays armed (a multishot request that will post more completions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The `user_data` the request was submitted with.
    pub user_data: u64,
    /// The result: for a poll, the `poll(2)` events that are ready; negative: `-errno`.
    pub result: i32,
    /// The request stays armed and will post more completions (`IORING_CQE_F_MORE`).
    pub more: bool,
}

/// An io_uring instance with a submission queue of `entries` and a completion queue of
/// `cq_entries`.
pub struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.ring.params();
        f.debug_struct("Ring")
            .field("sq_entries", &p.sq_entries())
            .field("cq_entries", &p.cq_entries())
            .finish()
    }
}

impl Ring {
    /// Sets up a ring (`io_uring_setup`): `entries` submission slots, `cq_entries` completion
    /// slots (both rounded up to powers of two, and clamped to the kernel's maxima).
    ///
    /// Fails with the setup's error (`EPERM` when `kernel.io_uring_disabled` forbids it or a
    /// seccomp filter refuses it, `ENOSYS` on a kernel without io_uring, `ENOMEM` over the
    /// locked-memory limit), or with [`io::ErrorKind::Unsupported`] when the kernel lacks what
    /// [`Ring::wait`] needs (a timeout on the wait: `IORING_FEAT_EXT_ARG`, Linux 5.11).
    pub fn new(entries: u32, cq_entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_clamp()
            .build(entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (a wait with a timeout needs Linux 5.11)",
            ));
        }
        Ok(Ring { ring })
    }

    /// Whether the kernel keeps completions that find the completion queue full, instead of
    /// dropping them (`IORING_FEAT_NODROP`, Linux 5.5).
    pub fn keeps_overflow(&self) -> bool {
        self.ring.params().is_feature_nodrop()
    }

    /// The number of completion slots.
    pub fn cq_entries(&self) -> u32 {
        self.ring.params().cq_entries()
    }

    /// Queues a multishot poll of `fd` for `events` (`poll(2)` bits), tagged `user_data`: it
    /// completes once with the readiness already there (if any), then once per wake-up of the
    /// file, until it is removed or the kernel ends it (a completion without `more`).
    /// Returns `false` when the submission queue is full (submit, then try again).
    pub fn push_poll_multishot(&mut self, fd: RawFd, events: u32, user_data: u64) -> bool {
        let entry = opcode::PollAdd::new(types::Fd(fd), events)
            .multi(true)
            .build()
            .user_data(user_data);
        // SAFETY: a POLL_ADD entry holds no pointer into user memory, only the fd number, the
        // event mask and the tag; the kernel takes its own reference to the file when it
        // issues the entry (a bad fd fails it with EBADF), so nothing must outlive it.
        unsafe { self.ring.submission().push(&entry).is_ok() }
    }

    /// Queues the removal of the poll tagged `target`; the removal itself completes tagged
    /// `user_data` (0, or `-ENOENT` when the poll had ended already), and the removed poll
    /// posts a last completion (`-ECANCELED`, without `more`). Returns `false` when the
    /// submission queue is full.
    pub fn push_poll_remove(&mut self, target: u64, user_data: u64) -> bool {
        let entry = opcode::PollRemove::new(target).build().user_data(user_data);
        // SAFETY: a POLL_REMOVE entry holds no pointer into user memory: the target is
        // matched by its tag, a plain number.
        unsafe { self.ring.submission().push(&entry).is_ok() }
    }

    /// Entries queued and not yet submitted.
    pub fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Submits what is queued without waiting (and moves completions the kernel kept aside
    /// after an overflow into the completion queue, as far as there is room).
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Submits what is queued and waits until at least one completion is there, or `timeout`
    /// passes (`None`: no timeout). A timeout that passes is `Ok`; `EINTR` (a signal), `EBUSY`
    /// and `EAGAIN` (the kernel is short of room for completions: reap, then wait again) are
    /// returned as errors for the caller to handle.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TIME.raw_os_error()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes every completion now in the completion queue, in order, into `f`. Returns how
    /// many there were.
    pub fn drain(&mut self, mut f: impl FnMut(Completion)) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            n += 1;
            f(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
            });
        }
        n
    }

    /// Whether the kernel holds completions that found the completion queue full
    /// (`IORING_SQ_CQ_OVERFLOW`): [`Ring::submit`] moves them in once there is room.
    pub fn overflowed(&mut self) -> bool {
        self.ring.submission().cq_overflow()
    }

    /// How many completions the kernel has dropped since the ring was set up because the
    /// completion queue was full (only without `IORING_FEAT_NODROP`, or when the kernel could
    /// not allocate room to keep them).
    pub fn dropped(&mut self) -> u32 {
        self.ring.completion().overflow()
    }
}

/// Which file an fd names: its device and inode (every socket has an inode of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

/// The file `fd` names.
pub fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let st = rustix::fs::fstat(fd)?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Duplicates the fd *number* `fd`, which the caller does not own and which its owner may
/// have closed (and the number may name another file since), and returns the duplicate if it
/// names the file `expected`; `Ok(None)` if the number names no file or another one.
///
/// This is how the reactor polls a source's fd again later without the source lending it: the
/// duplicate is a reference of its own to the file the source registered, or nothing.
pub fn dup_if_same_file(fd: RawFd, expected: FileId) -> io::Result<Option<OwnedFd>> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes a plain integer and touches no memory of ours: a
    // number that names no open file fails with EBADF, and one that names some other file
    // gets a new descriptor of its own, dropped below. No descriptor of anyone else is
    // closed or changed, whatever the number names now.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EBADF) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `new` is the descriptor fcntl just made for this call; nothing else owns it.
    let dup = unsafe { OwnedFd::from_raw_fd(new) };
    Ok((file_id(dup.as_fd())? == expected).then_some(dup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn ring() -> Option<Ring> {
        match Ring::new(8, 16) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here ({e})");
                None
            }
        }
    }

    #[test]
    fn multishot_poll_reports_existing_readiness_then_each_new_one_and_ends_on_removal() {
        let Some(mut ring) = ring() else { return };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        rustix::io::write(&b, b"x").unwrap();
        let pollin = rustix::event::PollFlags::IN.bits() as u32;
        assert!(ring.push_poll_multishot(a.as_raw_fd(), pollin, 7));
        ring.wait(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        ring.drain(|c| got.push(c));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].user_data, 7);
        assert!(got[0].result as u32 & pollin != 0);
        assert!(got[0].more);
        // Nothing new: no completion.
        ring.wait(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(ring.drain(|c| panic!("unexpected {c:?}")), 0);
        // New data: one more.
        rustix::io::write(&b, b"y").unwrap();
        ring.wait(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            ring.drain(|c| assert_eq!((c.user_data, c.more), (7, true))),
            1
        );
        // Removal: the removal's own completion and the poll's last one.
        assert!(ring.push_poll_remove(7, 8));
        ring.submit().unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            ring.wait(Some(Duration::from_secs(5))).unwrap();
            ring.drain(|c| got.push(c));
        }
        got.sort_by_key(|c| c.user_data);
        assert_eq!(got[0].user_data, 7);
        assert!(!got[0].more);
        assert_eq!(got[0].result, -rustix::io::Errno::CANCELED.raw_os_error());
        assert_eq!((got[1].user_data, got[1].result), (8, 0));
        assert_eq!(ring.dropped(), 0);
        assert!(!ring.overflowed());
    }

    /// The kernel holds a reference to a polled file: a listening socket closed while its poll
    /// is armed keeps its address until the poll is removed, and is released by the time the
    /// submit of the removal returns (the removal's completion work runs on the way out of
    /// that system call, in the submitting thread).
    #[test]
    fn a_polled_file_lives_until_its_poll_is_removed() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        let Some(mut ring) = ring() else { return };
        let name = format!("duct-sys-uring-pin-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let pollin = rustix::event::PollFlags::IN.bits() as u32;
        assert!(ring.push_poll_multishot(listener.as_raw_fd(), pollin, 1));
        ring.submit().unwrap();
        drop(listener);
        // Still there: the poll holds the file.
        assert!(UnixStream::connect_addr(&addr).is_ok());
        assert!(ring.push_poll_remove(1, 2));
        ring.submit().unwrap();
        let e = UnixStream::connect_addr(&addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn dup_if_same_file_tells_a_reused_number_from_the_file_it_named() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let id = file_id(a.as_fd()).unwrap();
        let number = a.as_raw_fd();
        let dup = dup_if_same_file(number, id)
            .unwrap()
            .expect("the same file");
        assert_eq!(file_id(dup.as_fd()).unwrap(), id);
        // Closed: nothing.
        drop(a);
        assert!(dup_if_same_file(number, id).unwrap().is_none());
        // The number taken by another socket (the lowest free number is reused, unless a
        // test running beside this one took it first): nothing either.
        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        if c.as_raw_fd() == number {
            assert!(dup_if_same_file(number, id).unwrap().is_none());
        }
        // The duplicate still names the first socket.
        assert_eq!(file_id(dup.as_fd()).unwrap(), id);
    }

    #[test]
    fn a_bad_fd_fails_the_poll_not_the_process() {
        let Some(mut ring) = ring() else { return };
        assert!(ring.push_poll_multishot(-1, 1, 3));
        ring.wait(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        ring.drain(|c| got.push(c));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].result, -rustix::io::Errno::BADF.raw_os_error());
        assert!(!got[0].more);
    }

    #[test]
    fn a_full_submission_queue_refuses_then_takes_entries_after_a_submit() {
        let Some(mut ring) = ring() else { return };
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut pushed = 0;
        while ring.push_poll_multishot(a.as_raw_fd(), 1, pushed) {
            pushed += 1;
        }
        assert!(pushed >= 8, "{pushed}");
        assert_eq!(ring.unsubmitted(), pushed as usize);
        ring.submit().unwrap();
        assert_eq!(ring.unsubmitted(), 0);
        assert!(ring.push_poll_multishot(a.as_raw_fd(), 1, 100));
    }
}
