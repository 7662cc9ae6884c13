//! io_uring for duct's reactor (Linux): a ring that watches fds for readiness with multishot
//! polls, and waits for their completions with a timeout.
//!
//! This module owns the `unsafe` operations the reactor's io_uring backend needs:
//! - putting an entry on the submission queue (the `io-uring` crate's `push`, unsafe because
//!   an entry may point at memory that must outlive the operation). The entries made here
//!   (`POLL_ADD`, `ASYNC_CANCEL`) carry no pointer: an fd number, an event mask and 64-bit tags.
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

use std::cell::UnsafeCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// Sets up a ring with the settings `configure` makes, and cooperative task running
/// (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19) where the kernel has it: completions are then
/// posted when the ring's thread next enters the kernel (every wait of ours does), instead of
/// interrupting it wherever it runs. The rings here are each used by one thread, which both
/// submits and waits, the case the flag is made for. Without it (an older kernel refuses the
/// flag with `EINVAL`), the same ring without the flag.
fn build_ring(entries: u32, configure: impl Fn(&mut io_uring::Builder)) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    configure(&mut builder);
    builder.setup_coop_taskrun();
    match builder.build(entries) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            let mut plain = IoUring::builder();
            configure(&mut plain);
            plain.build(entries)
        }
        ring => ring,
    }
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
        let ring = build_ring(entries, |b| {
            b.setup_cqsize(cq_entries).setup_clamp();
        })?;
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

    /// Queues the cancellation (`IORING_OP_ASYNC_CANCEL`) of the request tagged `target`: a
    /// poll is removed, and with it the kernel's reference to the file. The cancellation
    /// completes tagged `user_data` (0, or `-ENOENT` when the request had ended already), and
    /// a removed poll posts a last completion (`-ECANCELED`, without `more`). Returns `false`
    /// when the submission queue is full.
    ///
    /// Not `IORING_OP_POLL_REMOVE`: that one fails with `-EALREADY` and leaves the poll armed
    /// when a wake-up of the file is being handled (its completion work not yet run, which
    /// on this ring, set up with `COOP_TASKRUN`, waits for the next wait on the ring), and a
    /// poll left armed keeps its file open for the ring's life. A cancellation marks the poll
    /// cancelled whoever handles it. (Older kernels, before Linux 5.18, may answer `-EALREADY`
    /// to a cancellation too: the caller tries again.)
    pub fn push_cancel(&mut self, target: u64, user_data: u64) -> bool {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: an ASYNC_CANCEL entry holds no pointer into user memory: the target is
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

/// A ring for batched socket I/O: the reactor queues one receive ([`IoRing::push_recv`]) or
/// send ([`IoRing::push_send`]) per pipe it serves in a pass, then submits them all with one
/// system call and takes every result ([`IoRing::complete_all`]), instead of one `recv` or
/// `sendmsg` per pipe.
///
/// The ring owns the memory of each request from the push until its completion is taken: a
/// receive's buffer, a send's [`SendBufs`] (boxed, so the slices it lent stay where they
/// are). So no memory the kernel may still read or write can be touched, moved or freed by
/// safe code. Both come back in the completion (a receive's buffer extended by exactly the
/// bytes the kernel wrote).
///
/// Every request is `MSG_DONTWAIT` (sends also `MSG_NOSIGNAL`): an empty socket, or a full
/// one, completes at once with `EAGAIN` (io_uring gives `MSG_DONTWAIT` requests no poll to
/// wait on), so [`IoRing::complete_all`] never waits for a peer, only for the kernel to run
/// the requests.
///
/// The fd is only a number to the ring: the caller keeps the file open until the completion
/// (a number closed and reused before the submit would name another socket). Used by one
/// thread at a time (`&mut self`), which should be the thread that submits.
pub struct IoRing<S: SendBufs = NoSends> {
    ring: IoUring,
    /// The memory lent to each queued request, by tag (the index here).
    lent: Vec<Lent<S>>,
    /// Requests queued or submitted whose completion was not taken.
    outstanding: usize,
    /// Completions taken from the queue, being handed out (kept for its capacity).
    taken: Vec<(u64, i32)>,
    /// Indexes of `lent` that are free.
    free: Vec<usize>,
    /// The send header of each tag (a send's is read by the kernel until its completion is
    /// taken, so it must not move: allocated once, never resized). Zeroed memory the kernel
    /// maps in as headers are first used: a ring that never has many sends at once keeps
    /// only a page or two of it resident.
    headers: Box<[UnsafeCell<SendHeader>]>,
}

/// What a send reads from: memory its value owns, laid out as slices.
pub trait SendBufs {
    /// Lays out the bytes to send, in order, as slices of memory `self` owns into `out`, and
    /// returns how many it filled (at most `out.len()`; 0: nothing to send).
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize;
}

/// The [`SendBufs`] of a ring that only receives.
#[derive(Debug)]
pub enum NoSends {}

impl SendBufs for NoSends {
    fn slices<'a>(&'a self, _: &mut [IoSlice<'a>]) -> usize {
        match *self {}
    }
}

/// Most slices one send takes.
pub const MAX_SEND_SLICES: usize = 64;

/// A request's memory, by tag.
enum Lent<S> {
    Free,
    /// A receive's buffer and the length it had.
    Recv(bytes::BytesMut, usize),
    /// A send's memory (boxed: the addresses of its slices are in the request; its header
    /// is the tag's in `IoRing::headers`).
    Send(Box<S>),
}

/// A send's `msghdr` and iovec array.
struct SendHeader {
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_SEND_SLICES],
}

/// A completed request of an [`IoRing`].
#[derive(Debug)]
pub enum Done<S> {
    /// A receive: its buffer back, extended by what arrived, and the result (`Ok(0)`: end of
    /// stream; `WouldBlock`: nothing to read).
    Recv(bytes::BytesMut, io::Result<usize>),
    /// A send: its memory back and the bytes the socket took (`WouldBlock`: none, it is full).
    Send(Box<S>, io::Result<usize>),
}

impl<S: SendBufs> std::fmt::Debug for IoRing<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoRing")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl<S: SendBufs> IoRing<S> {
    /// Sets up a ring of `entries` submission slots (rounded up to a power of two): that
    /// many requests fit in one batch, and that many may be outstanding. Fails with the
    /// setup's error (`EPERM`, `ENOSYS`, `ENOMEM`).
    ///
    /// Everything a request needs is allocated here, for as many requests as fit: pushing,
    /// submitting and completing allocate nothing, however many requests a batch has.
    pub fn new(entries: u32) -> io::Result<IoRing<S>> {
        let ring = build_ring(entries, |b| {
            b.setup_clamp();
        })?;
        // (At least 1: the kernel refuses an empty ring.)
        let slots = (ring.params().sq_entries() as usize).max(1);
        let layout = std::alloc::Layout::array::<UnsafeCell<SendHeader>>(slots)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: `layout` has a non-zero size (`slots >= 1` headers of over 1 KiB).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<UnsafeCell<SendHeader>>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `ptr` is a block of the global allocator with the layout of `slots` headers
        // (`Layout::array`), which is what a `Box<[_]>` of them frees. It is all zeroes, and a
        // `SendHeader` (a `msghdr` and `iovec`s: plain C structs of integers and pointers) is
        // valid as all zeroes (no name, no iovecs, no control data, no flags; null, empty
        // slices); `UnsafeCell` has its contents' layout and validity.
        let headers = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, slots)) };
        Ok(IoRing {
            ring,
            lent: Vec::with_capacity(slots),
            outstanding: 0,
            taken: Vec::with_capacity(slots),
            free: Vec::with_capacity(slots),
            headers,
        })
    }

    /// Requests queued and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// A free tag, if fewer than the ring's slots are outstanding.
    fn slot(&mut self) -> Option<usize> {
        match self.free.pop() {
            Some(i) => Some(i),
            None if self.lent.len() < self.headers.len() => {
                self.lent.push(Lent::Free);
                Some(self.lent.len() - 1)
            }
            None => None,
        }
    }

    /// Queues a receive from the socket `fd` into the spare capacity of `buf` (at most
    /// `u32::MAX` bytes of it). Returns the request's tag, or gives `buf` back when the
    /// submission queue is full or every slot is outstanding (complete what is queued
    /// first).
    pub fn push_recv(
        &mut self,
        fd: BorrowedFd<'_>,
        mut buf: bytes::BytesMut,
    ) -> Result<usize, bytes::BytesMut> {
        let Some(index) = self.slot() else {
            return Err(buf);
        };
        let start = buf.len();
        let spare = buf.spare_capacity_mut();
        let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
        let entry = opcode::Recv::new(types::Fd(fd.as_raw_fd()), spare.as_mut_ptr().cast(), len)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(index as u64);
        // SAFETY: the entry points at the spare capacity of `buf` (`len` bytes, within it).
        // `buf` moves into `self.lent` below (moving a `BytesMut` does not move its heap
        // memory) and stays there, untouched, until this entry's completion is taken in
        // `complete_all`, or, if it never is, until `Drop` has waited for the completion or
        // leaked the buffer. Nothing else can reach it meanwhile.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(index);
            return Err(buf);
        }
        self.lent[index] = Lent::Recv(buf, start);
        self.outstanding += 1;
        Ok(index)
    }

    /// Queues a send to the socket `fd` of what `bufs` lays out (up to [`MAX_SEND_SLICES`]
    /// slices). Returns the request's tag, or gives `bufs` back when the submission queue is
    /// full or every slot is outstanding.
    pub fn push_send(&mut self, fd: BorrowedFd<'_>, bufs: Box<S>) -> Result<usize, Box<S>> {
        let Some(index) = self.slot() else {
            return Err(bufs);
        };
        // SAFETY: `index` is a free tag: no request of the ring holds its header (the kernel
        // reads a tag's header only between the push of its send and the completion
        // `complete_all` takes, which freed the tag), and nothing else refers to it, so this
        // is the only reference to it while it lives. Other tags' headers, which the kernel
        // may be reading, are not touched (`UnsafeCell`: no reference to them is made).
        let header = unsafe { &mut *self.headers[index].get() };
        {
            let mut slices = [IoSlice::new(&[]); MAX_SEND_SLICES];
            let n = bufs.slices(&mut slices).min(MAX_SEND_SLICES);
            for (iov, s) in header.iov.iter_mut().zip(&slices[..n]) {
                iov.iov_base = s.as_ptr() as *mut libc::c_void;
                iov.iov_len = s.len();
            }
            header.msg.msg_iovlen = n as _;
        }
        header.msg.msg_iov = header.iov.as_mut_ptr();
        let entry = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &header.msg)
            .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(index as u64);
        // SAFETY: the entry points at `header.msg`, which points at `header.iov`, whose
        // entries point at slices `bufs` lent from memory it owns (`SendBufs::slices` borrows
        // `&self`). The header is the tag's, in `self.headers`, which is never moved or
        // resized and is not written again until the tag is free. `bufs` is a box: it moves
        // into `self.lent` below without its contents moving, and stays there, untouched
        // (nothing else can reach it), until this entry's completion is taken in
        // `complete_all`, or, if it never is, until `Drop` has waited for the completion or
        // leaked it and the headers.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(index);
            return Err(bufs);
        }
        self.lent[index] = Lent::Send(bufs);
        self.outstanding += 1;
        Ok(index)
    }

    /// Submits what is queued, waits until every request has completed, and hands each to
    /// `done` with its tag. Fails only if the submission itself does (then the requests stay
    /// outstanding and a later call finishes them).
    pub fn complete_all(&mut self, mut done: impl FnMut(usize, Done<S>)) -> io::Result<()> {
        while self.outstanding > 0 {
            match self.ring.submit_and_wait(self.outstanding) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The kernel is short of room for completions: take those there, then wait
                // again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            let mut taken = std::mem::take(&mut self.taken);
            taken.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for (tag, result) in taken.drain(..) {
                let lent = usize::try_from(tag)
                    .ok()
                    .and_then(|i| self.lent.get_mut(i))
                    .map_or(Lent::Free, |l| std::mem::replace(l, Lent::Free));
                let index = tag as usize;
                let res = if result >= 0 {
                    Ok(result as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-result))
                };
                let d = match lent {
                    Lent::Free => continue, // (not one of ours: nothing else is submitted here)
                    Lent::Recv(mut buf, start) => {
                        let room = buf.capacity() - start;
                        let res = res.map(|n| {
                            debug_assert!(n <= room);
                            let n = n.min(room);
                            // SAFETY: the receive wrote `n` bytes to the start of the spare
                            // capacity as it was when queued (`buf.len()` was `start` then and
                            // has not changed: the buffer was ours alone since), so `start + n`
                            // bytes are initialised; `n` is at most the spare length the kernel
                            // was given (`min` guards against a kernel that claims more).
                            unsafe { buf.set_len(start + n) };
                            n
                        });
                        Done::Recv(buf, res)
                    }
                    Lent::Send(bufs) => Done::Send(bufs, res),
                };
                self.free.push(index);
                self.outstanding -= 1;
                done(index, d);
            }
            self.taken = taken;
        }
        Ok(())
    }
}

impl<S: SendBufs> Drop for IoRing<S> {
    fn drop(&mut self) {
        if self.outstanding > 0 && self.complete_all(|_, _| {}).is_err() {
            // The kernel may still use the memory of requests whose completion never came:
            // never free it.
            for lent in self.lent.drain(..) {
                std::mem::forget(lent);
            }
            std::mem::forget(std::mem::take(&mut self.headers));
        }
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
        // Removal: the cancellation's own completion and the poll's last one.
        assert!(ring.push_cancel(7, 8));
        wait_cancelled(&mut ring, 7, 8);
        assert_eq!(ring.dropped(), 0);
        assert!(!ring.overflowed());
    }

    /// Waits (up to 5 s) until the last completion of poll `poll` and the completion of its
    /// cancellation `cancel` are there, and checks them: the poll ended cancelled, the
    /// cancellation succeeded. Returns every completion seen, in order.
    fn wait_cancelled(ring: &mut Ring, poll: u64, cancel: u64) -> Vec<Completion> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got: Vec<Completion> = Vec::new();
        let ended = |got: &[Completion]| got.iter().any(|c| c.user_data == poll && !c.more);
        let answered = |got: &[Completion]| got.iter().any(|c| c.user_data == cancel);
        while !(ended(&got) && answered(&got)) {
            assert!(std::time::Instant::now() < deadline, "only {got:?}");
            ring.wait(Some(Duration::from_millis(100))).unwrap();
            ring.drain(|c| got.push(c));
        }
        let last = got.iter().find(|c| c.user_data == poll && !c.more).unwrap();
        assert_eq!(
            last.result,
            -rustix::io::Errno::CANCELED.raw_os_error(),
            "{got:?}"
        );
        let done = got.iter().find(|c| c.user_data == cancel).unwrap();
        assert_eq!(done.result, 0, "{got:?}");
        got
    }

    /// A poll whose file woke it just before it is removed (the wake-up's completion work not
    /// yet run: on this ring it waits for the next wait) is removed all the same, and lets
    /// its file go. (`POLL_REMOVE` fails here with `-EALREADY` and leaves the poll armed: a
    /// reactor that removed polls that way kept the sockets of closed connections open.)
    #[test]
    fn a_poll_woken_just_before_its_removal_is_removed_and_lets_its_file_go() {
        let Some(mut ring) = ring() else { return };
        let pollin = rustix::event::PollFlags::IN.bits() as u32;
        for round in 0..20u64 {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let (poll, cancel) = (100 + 2 * round, 101 + 2 * round);
            assert!(ring.push_poll_multishot(a.as_raw_fd(), pollin, poll));
            ring.submit().unwrap();
            // Idle: the poll is armed and nothing is pending.
            ring.wait(Some(Duration::from_millis(5))).unwrap();
            assert_eq!(ring.drain(|c| panic!("unexpected {c:?}")), 0);
            // The wake-up and the removal in one submit: a write to the peer, issued inline,
            // wakes the poll (its completion work queued, to run when the thread next waits
            // or enters the kernel), then the cancellation finds it being handled.
            static BYTE: [u8; 1] = *b"x";
            let write = opcode::Write::new(types::Fd(b.as_raw_fd()), BYTE.as_ptr(), 1)
                .build()
                .user_data(cancel + 1000);
            // SAFETY: the entry points at a static buffer, which outlives the write.
            unsafe { ring.ring.submission().push(&write).unwrap() };
            assert!(ring.push_cancel(poll, cancel));
            ring.submit().unwrap();
            let got = wait_cancelled(&mut ring, poll, cancel);
            // The file is gone with the last fd: the peer sees the end.
            use std::io::Read;
            let mut buf = [0u8; 1];
            assert_eq!((&a).read(&mut buf).unwrap(), 1);
            drop(a);
            b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!((&b).read(&mut buf).unwrap(), 0, "round {round}: {got:?}");
        }
    }

    /// The kernel holds a reference to a polled file: a listening socket closed while its poll
    /// is armed keeps its address until the poll is removed, and is released once the
    /// cancellation's completion work has run (in the submitting thread, when it next waits
    /// on the ring).
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
        assert!(ring.push_cancel(1, 2));
        wait_cancelled(&mut ring, 1, 2);
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

    /// A receive's completion: its buffer and the bytes received.
    fn recv_done<S: std::fmt::Debug>(d: Done<S>) -> (bytes::BytesMut, usize) {
        match d {
            Done::Recv(buf, res) => (buf, res.unwrap()),
            other => panic!("not a receive: {other:?}"),
        }
    }

    /// Slices of owned vectors, to send.
    #[derive(Debug)]
    struct Parts(Vec<Vec<u8>>);

    impl SendBufs for Parts {
        fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
            let n = self.0.len().min(out.len());
            for (o, p) in out.iter_mut().zip(&self.0) {
                *o = IoSlice::new(p);
            }
            n
        }
    }

    #[test]
    fn batched_sends_write_every_slice_in_order_and_give_the_memory_back() {
        use std::io::Read;
        let Some(mut ring) = io_ring::<Parts>() else {
            return;
        };
        let pairs: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            let parts = Parts(vec![format!("<{i}").into_bytes(), vec![], b"-x>".to_vec()]);
            ring.push_send(a.as_fd(), Box::new(parts)).unwrap();
        }
        let mut sent = Vec::new();
        ring.complete_all(|tag, d| match d {
            Done::Send(parts, res) => sent.push((tag, parts.0.len(), res.unwrap())),
            other => panic!("not a send: {other:?}"),
        })
        .unwrap();
        assert_eq!(sent.len(), 3);
        assert!(
            sent.iter().all(|&(_, parts, n)| parts == 3 && n == 5),
            "{sent:?}"
        );
        for (i, (_, b)) in pairs.iter().enumerate() {
            let mut got = [0u8; 5];
            (&*b).read_exact(&mut got).unwrap();
            assert_eq!(&got, format!("<{i}-x>").as_bytes());
        }
        // More slices than one send takes: the first MAX_SEND_SLICES go.
        let many = Parts((0..MAX_SEND_SLICES + 5).map(|_| vec![7u8]).collect());
        ring.push_send(pairs[0].0.as_fd(), Box::new(many)).unwrap();
        let mut n = 0;
        ring.complete_all(|_, d| {
            if let Done::Send(_, res) = d {
                n = res.unwrap();
            }
        })
        .unwrap();
        assert_eq!(n, MAX_SEND_SLICES);
    }

    #[test]
    fn a_send_to_a_full_socket_never_waits() {
        let Some(mut ring) = io_ring::<Parts>() else {
            return;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        while rustix::io::write(&a, &chunk).is_ok() {}
        // Should the send wait for room (it must not), this makes room after a while, and the
        // test fails on what it then got.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let mut buf = [0u8; 65536];
            let _ = rustix::io::read(&b, &mut buf);
            b
        });
        ring.push_send(a.as_fd(), Box::new(Parts(vec![b"more".to_vec()])))
            .unwrap();
        let mut result = None;
        ring.complete_all(|_, d| {
            if let Done::Send(parts, res) = d {
                assert_eq!(parts.0, vec![b"more".to_vec()]);
                result = Some(res.map_err(|e| e.kind()));
            }
        })
        .unwrap();
        assert_eq!(result, Some(Err(io::ErrorKind::WouldBlock)));
        drop(reader.join().unwrap());
        // The peer is gone: an error, and no SIGPIPE (which would end the test process).
        ring.push_send(a.as_fd(), Box::new(Parts(vec![b"x".to_vec()])))
            .unwrap();
        let mut result = None;
        ring.complete_all(|_, d| {
            if let Done::Send(_, res) = d {
                result = Some(res.map_err(|e| e.raw_os_error()));
            }
        })
        .unwrap();
        assert_eq!(result, Some(Err(Some(libc::EPIPE))));
    }

    fn io_ring<S: SendBufs>() -> Option<IoRing<S>> {
        match IoRing::new(4) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here ({e})");
                None
            }
        }
    }

    #[test]
    fn batched_receives_append_what_each_socket_had_and_give_every_buffer_back() {
        use std::io::Write;
        let Some(mut ring) = io_ring::<NoSends>() else {
            return;
        };
        let pairs: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            (&*a).write_all(format!("pipe {i}").as_bytes()).unwrap();
        }
        let mut tags = Vec::new();
        for (i, (_, b)) in pairs.iter().enumerate() {
            let mut buf = bytes::BytesMut::with_capacity(64);
            buf.extend_from_slice(format!("[{i}]").as_bytes());
            tags.push(ring.push_recv(b.as_fd(), buf).unwrap());
        }
        assert_eq!(ring.outstanding(), 3);
        let mut got = Vec::new();
        ring.complete_all(|tag, d| got.push((tag, recv_done(d))))
            .unwrap();
        assert_eq!(ring.outstanding(), 0);
        got.sort_by_key(|g| g.0);
        for (i, (tag, (buf, n))) in got.iter().enumerate() {
            assert_eq!(*tag, tags[i]);
            assert_eq!(*n, 6);
            assert_eq!(&buf[..], format!("[{i}]pipe {i}").as_bytes());
        }
        // The tags are reused, and a second batch works the same.
        (&pairs[0].0).write_all(b"again").unwrap();
        let tag = ring
            .push_recv(pairs[0].1.as_fd(), bytes::BytesMut::with_capacity(8))
            .unwrap();
        assert!(tags.contains(&tag));
        let mut n = 0;
        ring.complete_all(|_, d| {
            let (buf, k) = recv_done(d);
            n = k;
            assert_eq!(&buf[..], b"again");
        })
        .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn a_receive_never_waits_for_data_and_sees_the_end() {
        let Some(mut ring) = io_ring::<NoSends>() else {
            return;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Should the receive wait for data (it must not), this unblocks it after a while, and
        // the test fails on what it then got.
        let late = std::thread::spawn({
            let a = a.try_clone().unwrap();
            move || {
                std::thread::sleep(Duration::from_secs(1));
                let _ = rustix::io::write(&a, b"late");
            }
        });
        ring.push_recv(b.as_fd(), bytes::BytesMut::with_capacity(16))
            .unwrap();
        let mut result = None;
        ring.complete_all(|_, d| {
            let Done::Recv(buf, res) = d else {
                panic!("not a receive")
            };
            assert!(buf.is_empty());
            result = Some(res.map_err(|e| e.kind()));
        })
        .unwrap();
        assert_eq!(result, Some(Err(io::ErrorKind::WouldBlock)));
        late.join().unwrap();
        drop(a);
        let mut buf = bytes::BytesMut::with_capacity(16);
        // What came late, then the end.
        for expected in [4, 0] {
            ring.push_recv(b.as_fd(), buf).unwrap();
            let mut got = None;
            ring.complete_all(|_, d| got = Some(recv_done(d))).unwrap();
            let (back, n) = got.unwrap();
            assert_eq!(n, expected);
            buf = back;
        }
        assert_eq!(&buf[..], b"late");
    }

    #[test]
    fn a_full_submission_queue_gives_the_buffer_back_and_dropping_finishes_the_rest() {
        let Some(mut ring) = io_ring::<NoSends>() else {
            return;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        rustix::io::write(&a, b"x").unwrap();
        let mut queued = 0;
        let refused = loop {
            match ring.push_recv(b.as_fd(), bytes::BytesMut::with_capacity(4)) {
                Ok(_) => queued += 1,
                Err(buf) => break buf,
            }
            assert!(queued <= 64, "the queue never filled");
        };
        assert_eq!(refused.capacity(), 4);
        assert_eq!(ring.outstanding(), queued);
        // Dropped with receives queued: they are submitted and completed first.
        drop(ring);
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
