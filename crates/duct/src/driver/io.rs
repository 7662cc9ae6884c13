//! Byte movement for stream transports: a read buffer that hands out payloads as `Bytes`
//! views and recycles its allocation, vectored frame writes, and readiness waits with
//! deadlines. Socket calls go through rustix (safe wrappers); nothing here knows the protocol
//! beyond "a frame is a header and a payload".

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use duct_proto::wire::HEADER_LEN;
use duct_proto::Transmit;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::BorrowedFd;

use super::{FrameIo, FrameSide, RawFrame, StreamTransport};

/// Bytes read per refill of an empty buffer. Larger frames grow the buffer to fit.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Spare chunks for a buffer of received bytes that hands its contents out as `Bytes` views
/// (the stream read buffer, shm's copies of small payloads).
///
/// When the buffer runs out of room, its allocation can be taken back only once every view
/// of it is gone; while some are alive (messages queued unread, or kept by the
/// application), `BytesMut::reserve` would allocate a new chunk, over and over in a steady
/// stream. Instead the used chunk is kept here, and a kept chunk whose views are all gone is
/// taken again: in steady state nothing is allocated. At most [`SPARE_CHUNKS`] chunks, each
/// of at most [`SPARE_MAX`] bytes, are kept.
#[derive(Default)]
pub(crate) struct Chunks {
    spare: VecDeque<BytesMut>,
}

/// Chunks kept by [`Chunks`].
const SPARE_CHUNKS: usize = 4;
/// Largest chunk [`Chunks`] keeps (a chunk grown for one large frame is let go).
const SPARE_MAX: usize = 4 * READ_CHUNK;

impl Chunks {
    /// Makes room in `buf` for at least `need` more bytes, keeping its contents: in place,
    /// in its own allocation taken back, in a spare chunk, or else in a new chunk of at least
    /// `chunk` bytes.
    pub(crate) fn make_room(&mut self, buf: &mut BytesMut, need: usize, chunk: usize) {
        if buf.capacity() - buf.len() >= need || buf.try_reclaim(need) {
            return;
        }
        let total = buf.len() + need;
        let reuse = self.spare.iter_mut().position(|c| c.try_reclaim(total));
        let mut next = match reuse.and_then(|i| self.spare.remove(i)) {
            Some(c) => c,
            None => BytesMut::with_capacity(total.max(chunk)),
        };
        next.extend_from_slice(buf);
        let mut used = std::mem::replace(buf, next);
        // (Emptied, the used chunk still holds its allocation: what `try_reclaim` takes back
        // once the views of it are gone.)
        used.clear();
        if used.capacity() <= SPARE_MAX {
            if self.spare.len() == SPARE_CHUNKS {
                self.spare.pop_front();
            }
            self.spare.push_back(used);
        }
    }
}

/// Receive buffer of one connection.
///
/// `data` holds the received bytes not yet taken by the deframer; reads append to it (into its
/// uninitialised spare capacity: nothing is zero-filled), and the deframer takes whole frames
/// off its front as `Bytes` views (no copy). When the spare capacity runs short, `reserve`
/// reclaims the allocation in place if every view of it has been dropped (the common case:
/// the application consumed its messages), else makes a new one. So in steady state a
/// connection reads without allocating.
pub(crate) struct ReadBuf {
    pub(crate) data: BytesMut,
    /// Chunks of `data` for reuse.
    chunks: Chunks,
    /// Frames from a frame transport (shared memory), not yet handed to the session.
    pub(crate) frames: VecDeque<RawFrame>,
    /// The transport this buffer reads from, kept here by the driver (set with the buffer,
    /// under the same lock) so that a read does not clone the pipe's shared handle to it:
    /// see [`with_transport`].
    pub(crate) transport: Option<Arc<dyn StreamTransport>>,
    /// A frame transport's receiving state (see [`FrameSide`]).
    frame_side: FrameSide,
}

/// Frames taken from a frame transport per receive.
const FRAMES_PER_RECV: usize = 256;

impl ReadBuf {
    pub(crate) fn new() -> Self {
        ReadBuf {
            data: BytesMut::new(),
            chunks: Chunks::default(),
            frames: VecDeque::new(),
            transport: None,
            frame_side: FrameSide::default(),
        }
    }

    /// Hands what was received to the session: whole frames from a frame transport, bytes
    /// from a stream (the session deframes them).
    pub(crate) fn feed(
        &mut self,
        session: &mut duct_proto::Session,
        now: Instant,
    ) -> Result<(), duct_proto::Error> {
        while let Some(f) = self.frames.pop_front() {
            if let Err(e) = session.handle_raw_frame(&f.header, f.payload, now) {
                self.frames.clear();
                return Err(e);
            }
        }
        if self.data.is_empty() {
            return Ok(());
        }
        session.handle_input(&mut self.data, now)
    }

    /// Bytes (or frames) received and not yet handed to the session.
    pub(crate) fn held(&self) -> usize {
        self.data.len() + self.frames.len()
    }

    /// One `recv` into the free space, sized so that the next frame (`needed` bytes in all)
    /// fits. `Ok(0)` is end of stream.
    pub(crate) fn recv(
        &mut self,
        transport: &dyn StreamTransport,
        needed: usize,
        nonblocking: bool,
    ) -> io::Result<usize> {
        if let Some(f) = transport.frame_io() {
            return f.recv_frames(
                &mut self.frame_side,
                &mut self.frames,
                FRAMES_PER_RECV,
                nonblocking,
            );
        }
        let want_free = needed.saturating_sub(self.data.len()).max(4096);
        self.chunks.make_room(&mut self.data, want_free, READ_CHUNK);
        transport.recv_into(&mut self.data, nonblocking)
    }
}

/// Runs `f` with the transport kept in `slot` (moved out and back: no reference count
/// changes, which cost an atomic operation each on every message), or with `fallback()`'s
/// when the slot is empty, which is then kept.
#[inline]
pub(crate) fn with_transport<T, R>(
    owner: &mut T,
    slot: fn(&mut T) -> &mut Option<Arc<dyn StreamTransport>>,
    fallback: impl FnOnce() -> Arc<dyn StreamTransport>,
    f: impl FnOnce(&mut T, &dyn StreamTransport) -> R,
) -> R {
    let t = slot(owner).take().unwrap_or_else(fallback);
    let r = f(owner, &*t);
    *slot(owner) = Some(t);
    r
}

/// Payloads up to this size are copied into the write buffer beside their headers, so that
/// many small frames leave in one contiguous segment; larger payloads are sent from their
/// own memory as separate iovecs (never copied).
const COALESCE_MAX: usize = 512;
/// Bytes of small frames gathered into one `sendmsg`.
const SCRATCH_CAP: usize = 64 * 1024;
/// Most iovecs in one `sendmsg`.
const MAX_IOV: usize = 64;
/// Bytes of frames taken from the session ahead of the socket: one large frame, or about a
/// `sendmsg` of small ones.
const PULL_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Seg {
    /// A range of the scratch buffer.
    Scratch(usize, usize),
    /// The payload of frame `.0` from byte `.1` on.
    Payload(usize, usize),
}

/// Frames taken from the session and not yet fully written, with the offset into the first.
pub(crate) struct WriteQueue {
    /// The transport this queue writes to, kept here like [`ReadBuf::transport`].
    pub(crate) transport: Option<Arc<dyn StreamTransport>>,
    pub(crate) frames: VecDeque<Transmit>,
    /// Bytes of `frames[0]` (header then payload) already written.
    offset: usize,
    /// Wire bytes of every frame in `frames` (including the written part of the first).
    pub(crate) bytes: usize,
    scratch: Vec<u8>,
    /// Frames in `frames` that carry a TTL deadline (restamped before they are written).
    with_ttl: usize,
    /// The transport holds output of its own that the socket did not take (TLS records).
    backlog: bool,
    /// A frame transport's sending state (see [`FrameSide`]).
    frame_side: FrameSide,
}

impl WriteQueue {
    pub(crate) fn new() -> Self {
        WriteQueue {
            transport: None,
            frames: VecDeque::new(),
            offset: 0,
            bytes: 0,
            scratch: Vec::new(),
            with_ttl: 0,
            backlog: false,
            frame_side: FrameSide::default(),
        }
    }

    pub(crate) fn push(&mut self, t: Transmit) {
        self.bytes += t.wire_len();
        self.with_ttl += usize::from(t.deadline.is_some());
        self.frames.push_back(t);
    }

    /// Takes the frames the session has ready at `now` (in the scheduler's order, behind
    /// those already here) until about one `sendmsg`'s worth is queued: the rest stays in the
    /// session's per-channel queues, where priority, TTL and policies still apply to it.
    #[inline]
    pub(crate) fn take_from(&mut self, session: &mut duct_proto::Session, now: Instant) {
        while self.wants_more() {
            match session.poll_transmit_at(now) {
                Some(t) => self.push(t),
                None => break,
            }
        }
    }

    /// Less than about one `sendmsg`'s worth is queued: more frames may be taken.
    #[inline]
    pub(crate) fn wants_more(&self) -> bool {
        self.bytes - self.offset < PULL_BYTES && self.frames.len() < MAX_IOV
    }

    /// Nothing left to write: no frames, and no output the transport buffered itself.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty() && !self.backlog
    }

    /// The frames not written yet, in order, for a new connection: a partly written first
    /// frame is included (the peer drops a partial frame with the connection).
    pub(crate) fn into_frames(self) -> impl Iterator<Item = Transmit> {
        self.frames.into_iter()
    }

    /// Bytes still to write.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes - self.offset
    }

    /// Frames still to write; output the transport buffered itself counts as one.
    pub(crate) fn frames(&self) -> usize {
        self.frames.len() + usize::from(self.backlog)
    }

    /// Writes as much as the socket takes without blocking. Returns `Ok(true)` when the queue
    /// is empty, `Ok(false)` when the socket is full.
    pub(crate) fn write_nonblocking(
        &mut self,
        transport: &dyn StreamTransport,
    ) -> io::Result<bool> {
        if let Some(f) = transport.frame_io() {
            return self.push_frames(f);
        }
        while !self.frames.is_empty() {
            let mut segs = [Seg::Scratch(0, 0); MAX_IOV];
            let n_seg = self.gather(&mut segs);
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            for (slot, seg) in iov.iter_mut().zip(&segs[..n_seg]) {
                *slot = match *seg {
                    Seg::Scratch(a, b) => IoSlice::new(&self.scratch[a..b]),
                    Seg::Payload(i, from) => IoSlice::new(&self.frames[i].payload[from..]),
                };
            }
            match transport.send_vectored(&iov[..n_seg]) {
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let done = transport.flush_backlog()?;
        self.backlog = !done;
        Ok(done)
    }

    /// Hands the queued frames to a frame transport, in order, until it has no room.
    fn push_frames(&mut self, f: &dyn FrameIo) -> io::Result<bool> {
        if self.with_ttl > 0 {
            let now = Instant::now();
            for t in self.frames.iter_mut() {
                t.restamp(now);
            }
        }
        let (sent, all) = f.push_many(&mut self.frame_side, &mut self.frames.iter())?;
        for t in self.frames.drain(..sent) {
            self.bytes -= t.wire_len();
            self.with_ttl -= usize::from(t.deadline.is_some());
        }
        Ok(all && self.frames.is_empty())
    }

    /// Lays the next frames out as iovec segments: small frames copied into `scratch` back to
    /// back, headers of large frames there too, large payloads by reference. Returns the
    /// number of segments (at least one while frames remain).
    fn gather(&mut self, segs: &mut [Seg; MAX_IOV]) -> usize {
        if self.with_ttl > 0 {
            // The time to live a frame carries is what is left when it goes out, not when it
            // was taken from the session: the wait for the socket counts.
            let now = Instant::now();
            let begun = self.offset > 0;
            for (i, t) in self.frames.iter_mut().enumerate() {
                if !(i == 0 && begun) {
                    t.restamp(now);
                }
            }
        }
        self.scratch.clear();
        let mut n_seg = 0;
        let mut open: Option<usize> = None;
        for (i, t) in self.frames.iter().enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            let hdr = &t.header[skip.min(HEADER_LEN)..];
            let pay_from = skip.saturating_sub(HEADER_LEN);
            let payload = &t.payload[pay_from..];
            let used = n_seg + usize::from(open.is_some());
            if payload.len() <= COALESCE_MAX {
                let extra = usize::from(open.is_none());
                let room = self.scratch.len() + hdr.len() + payload.len() <= SCRATCH_CAP;
                if i > 0 && (used + extra > MAX_IOV || !room) {
                    break;
                }
                open.get_or_insert(self.scratch.len());
                self.scratch.extend_from_slice(hdr);
                self.scratch.extend_from_slice(payload);
            } else {
                let extra = if open.is_none() { 2 } else { 1 };
                if i > 0 && used + extra > MAX_IOV {
                    break;
                }
                let start = *open.get_or_insert(self.scratch.len());
                self.scratch.extend_from_slice(hdr);
                if self.scratch.len() > start {
                    segs[n_seg] = Seg::Scratch(start, self.scratch.len());
                    n_seg += 1;
                }
                open = None;
                segs[n_seg] = Seg::Payload(i, pay_from);
                n_seg += 1;
            }
        }
        if let Some(start) = open {
            segs[n_seg] = Seg::Scratch(start, self.scratch.len());
            n_seg += 1;
        }
        n_seg
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
                self.with_ttl -= usize::from(front.deadline.is_some());
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
    ReadWrite,
}

/// Waits until `fd` is ready for `interest` (error and hang-up count as ready: the next call
/// reports them) or `deadline` passes (`None`: no deadline). Returns whether it is ready.
/// `poll` on Unix, `WSAPoll` on Windows (where `fd` is a socket).
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let flags = match interest {
        Interest::Read => PollFlags::IN,
        Interest::ReadWrite => PollFlags::IN | PollFlags::OUT,
    };
    loop {
        let timeout = timespec_until(deadline);
        let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is readable (or closed) or `deadline` passes. (Windows sockets wait
/// through their own `TcpSock::wait`, which a local shutdown wakes.)
#[cfg(unix)]
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    wait(fd, Interest::Read, deadline)
}

/// Converts a deadline into a poll timeout for several fds.
pub(crate) fn timespec_until(deadline: Option<Instant>) -> Option<Timespec> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: left.as_secs() as i64,
            // (Below 10^9: fits `Nsecs` on every platform, `c_long` on Windows.)
            tv_nsec: left.subsec_nanos() as rustix::event::Nsecs,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_the_contents_and_reuse_chunks_whose_views_are_gone() {
        let mut chunks = Chunks::default();
        let mut buf = BytesMut::new();
        chunks.make_room(&mut buf, 10, 64);
        let first = buf.as_ptr();
        buf.extend_from_slice(&[1; 60]);
        let view = buf.split_to(50).freeze(); // a message still alive
        chunks.make_room(&mut buf, 20, 64); // 10 left: a new chunk, the partial bytes move
        assert_eq!(&buf[..], &[1; 10][..]);
        assert_ne!(buf.as_ptr(), first);
        let second = buf.as_ptr();
        buf.extend_from_slice(&[2; 54]);
        let view2 = buf.split_to(60).freeze();
        drop(view); // the first chunk's views are all gone
        chunks.make_room(&mut buf, 30, 64);
        assert_eq!(
            buf.as_ptr(),
            first,
            "the first chunk is taken again, not a new one"
        );
        assert_eq!(&buf[..], &[2; 4][..]);
        drop(view2);
        buf.clear();
        chunks.make_room(&mut buf, 64, 64);
        assert!(buf.capacity() >= 64);
        assert!(buf.as_ptr() == first || buf.as_ptr() == second);
    }

    #[test]
    fn chunks_keep_a_bounded_number_of_bounded_chunks() {
        let mut chunks = Chunks::default();
        let mut buf = BytesMut::new();
        let mut alive = Vec::new();
        for _ in 0..10 {
            chunks.make_room(&mut buf, 100, 100);
            buf.extend_from_slice(&[0; 100]);
            alive.push(buf.split().freeze());
        }
        assert_eq!(chunks.spare.len(), SPARE_CHUNKS);
        chunks.make_room(&mut buf, SPARE_MAX + 1, 100);
        buf.extend_from_slice(&vec![0; SPARE_MAX + 1]);
        alive.push(buf.split().freeze());
        chunks.make_room(&mut buf, 100, 100);
        assert!(chunks.spare.iter().all(|c| c.capacity() <= SPARE_MAX));
    }
}
