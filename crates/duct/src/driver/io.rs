//! Byte movement for stream transports: a read buffer that hands out payloads as `Bytes`
//! views and recycles its allocation, vectored frame writes, and readiness waits with
//! deadlines. Socket calls go through rustix (safe wrappers); nothing here knows the protocol
//! beyond "a frame is a header and a payload".

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use bytes::BytesMut;
use duct_proto::Transmit;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

/// Bytes read per refill of an empty buffer. Larger frames grow the buffer to fit.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Frames gathered into one `sendmsg` call (two iovecs each).
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Receive buffer of one connection.
///
/// `data` holds the received bytes not yet taken by the deframer; `tail` is the initialised,
/// unfilled space after them in the same allocation. Reads land in `tail`; the deframer takes
/// whole frames off the front of `data` as `Bytes` views (no copy). When `tail` runs short, the
/// allocation is reclaimed in place if every view of it has been dropped (the common case:
/// the application consumed its messages), else a new one is made. So in steady state a
/// connection reads without allocating.
pub(crate) struct ReadBuf {
    pub(crate) data: BytesMut,
    tail: BytesMut,
}

impl ReadBuf {
    pub(crate) fn new() -> Self {
        ReadBuf {
            data: BytesMut::new(),
            tail: BytesMut::new(),
        }
    }

    /// Makes room for `needed` bytes in all in `data` (what the next frame needs) and at
    /// least 4 KiB of free space to read into.
    fn prepare(&mut self, needed: usize) {
        let want_free = needed.saturating_sub(self.data.len()).max(4096);
        if self.tail.len() >= want_free {
            return;
        }
        let filled = self.data.len();
        // Rejoin (O(1): `tail` directly follows `data` in one allocation; otherwise bytes
        // copies), then let BytesMut reclaim or reallocate: `reserve` reuses the allocation
        // when this is its only owner.
        let mut buf = std::mem::take(&mut self.data);
        buf.unsplit(std::mem::take(&mut self.tail));
        buf.truncate(filled);
        buf.reserve(want_free.max(READ_CHUNK));
        let cap = buf.capacity();
        buf.resize(cap, 0);
        self.tail = buf.split_off(filled);
        self.data = buf;
    }

    /// One `recv` into the free space. `Ok(0)` is end of stream.
    pub(crate) fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        needed: usize,
        nonblocking: bool,
    ) -> io::Result<usize> {
        self.prepare(needed);
        let flags = if nonblocking {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
        let n = loop {
            match rustix::net::recv(fd, &mut self.tail[..], flags) {
                Ok((n, _)) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let filled = self.tail.split_to(n);
        self.data.unsplit(filled);
        Ok(n)
    }
}

/// Frames taken from the session and not yet fully written, with the offset into the first.
pub(crate) struct WriteQueue {
    frames: VecDeque<Transmit>,
    /// Bytes of `frames[0]` (header then payload) already written.
    offset: usize,
    bytes: usize,
}

impl WriteQueue {
    pub(crate) fn new() -> Self {
        WriteQueue {
            frames: VecDeque::new(),
            offset: 0,
            bytes: 0,
        }
    }

    pub(crate) fn push(&mut self, t: Transmit) {
        self.bytes += t.wire_len();
        self.frames.push_back(t);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes still to write.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes - self.offset
    }

    pub(crate) fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Writes as much as the socket takes without blocking. Returns `Ok(true)` when the queue
    /// is empty, `Ok(false)` when the socket is full.
    pub(crate) fn write_nonblocking(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut iov: [IoSlice<'_>; 2 * MAX_FRAMES_PER_WRITE] =
                [IoSlice::new(&[]); 2 * MAX_FRAMES_PER_WRITE];
            let mut n_iov = 0;
            for (i, t) in self.frames.iter().take(MAX_FRAMES_PER_WRITE).enumerate() {
                let (h, p): (&[u8], &[u8]) = if i == 0 {
                    let off = self.offset;
                    if off < t.header.len() {
                        (&t.header[off..], &t.payload[..])
                    } else {
                        (&[], &t.payload[off - t.header.len()..])
                    }
                } else {
                    (&t.header[..], &t.payload[..])
                };
                if !h.is_empty() {
                    iov[n_iov] = IoSlice::new(h);
                    n_iov += 1;
                }
                if !p.is_empty() {
                    iov[n_iov] = IoSlice::new(p);
                    n_iov += 1;
                }
            }
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            let written = match rustix::net::sendmsg(
                fd,
                &iov[..n_iov],
                &mut SendAncillaryBuffer::default(),
                flags,
            ) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            self.consume(written);
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.wire_len() - self.offset;
            if n >= left {
                n -= left;
                self.bytes -= front.wire_len();
                self.offset = 0;
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

/// What to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
    ReadWrite,
}

/// Readiness after a wait.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Readable, or in an error or hang-up state (the next read reports it).
    pub(crate) readable: bool,
}

/// Waits until `fd` is ready for `interest` or `deadline` passes (`None`: no deadline).
/// Error and hang-up conditions count as readable and writable (the next call reports them).
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<Ready> {
    let flags = match interest {
        Interest::Read => PollFlags::IN,
        Interest::Write => PollFlags::OUT,
        Interest::ReadWrite => PollFlags::IN | PollFlags::OUT,
    };
    loop {
        let timeout = timespec_until(deadline);
        let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return Ok(Ready::default()),
            Ok(_) => {
                let r = fds[0].revents();
                let bad = r.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL);
                return Ok(Ready {
                    readable: bad || r.contains(PollFlags::IN),
                });
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Converts a deadline into a poll timeout for several fds.
pub(crate) fn timespec_until(deadline: Option<Instant>) -> Option<Timespec> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    })
}
