//! Byte movement for stream transports: a read buffer that hands out payloads as `Bytes`
//! views and recycles its allocation, vectored frame writes, and readiness waits with
//! deadlines. Socket calls go through rustix (safe wrappers); nothing here knows the protocol
//! beyond "a frame is a header and a payload".

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use duct_proto::wire::{flags, Header, HEADER_LEN};
use duct_proto::{Received, Transmit};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::BorrowedFd;

use super::{FrameIo, FramePayload, FrameRead, FrameSide, RawFrame, StreamTransport};

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
    /// The bytes the payloads of `frames` that are [`FramePayload::InChunk`] are in.
    frame_chunk: Bytes,
    /// The transport this buffer reads from, kept here by the driver (set with the buffer,
    /// under the same lock) so that a read does not clone the pipe's shared handle to it:
    /// see [`with_transport`].
    pub(crate) transport: Option<Arc<dyn StreamTransport>>,
    /// A frame transport's receiving state (see [`FrameSide`]).
    frame_side: FrameSide,
    /// The buffer of a message whose large fragment is under way, lent by the session for
    /// the next read to put the rest of the fragment in place (see [`ReadBuf::prepare`]).
    direct: Option<duct_proto::DirectRead>,
    /// The last [`ReadBuf::recv`] asked for more than the transport had.
    short: bool,
    /// Bytes reads put in place (see [`ReadBuf::prepare`]) not yet counted in the pipe's
    /// statistics.
    pub(crate) in_place: u64,
}

/// Frames taken from a frame transport per receive.
const FRAMES_PER_RECV: usize = 256;

/// Hands a frame whose payload is its own to `session`: a timeless one the way that may
/// give it to `sink` at once (counted off `left`), any other at `time()`.
#[inline(always)]
fn feed_own(
    session: &mut duct_proto::Session,
    header: &[u8; HEADER_LEN],
    payload: Bytes,
    time: &mut impl FnMut() -> Instant,
    left: &mut usize,
    sink: &mut (impl duct_proto::ReceiveSink + ?Sized),
) -> Result<(), duct_proto::Error> {
    if session.frame_is_timeless(header) {
        session.handle_raw_frame_untimed_to(header, payload, left, sink)
    } else {
        session.handle_raw_frame(header, payload, time())
    }
}

impl ReadBuf {
    pub(crate) fn new() -> Self {
        ReadBuf {
            data: BytesMut::new(),
            chunks: Chunks::default(),
            frames: VecDeque::new(),
            frame_chunk: Bytes::new(),
            transport: None,
            frame_side: FrameSide::default(),
            direct: None,
            short: false,
            in_place: 0,
        }
    }

    /// Readies a read, under the pipe's lock: when the input so far ended inside a large
    /// fragment, borrows its message's buffer from `session` so that the read puts the rest
    /// of the fragment there (no copy: see `Session::lend_direct`). Returns what
    /// [`ReadBuf::recv`] takes as `needed`.
    pub(crate) fn prepare(&mut self, session: &mut duct_proto::Session) -> usize {
        debug_assert!(self.direct.is_none(), "given back after every read");
        if let Some(d) = session.lend_direct() {
            self.direct = Some(d);
            // (The input buffer takes only the header after the fragment.)
            return HEADER_LEN;
        }
        session.input_needed(&self.data)
    }

    /// Gives the buffer [`ReadBuf::prepare`] borrowed back to `session`, with what the read
    /// put in it (see `Session::return_direct`).
    pub(crate) fn give_back(
        &mut self,
        session: &mut duct_proto::Session,
        now: Instant,
    ) -> Result<(), duct_proto::Error> {
        match self.direct.take() {
            Some(d) => session.return_direct(d, now),
            None => Ok(()),
        }
    }

    /// Hands what was received to the session: whole frames from a frame transport, bytes
    /// from a stream (the session deframes them).
    pub(crate) fn feed(
        &mut self,
        session: &mut duct_proto::Session,
        now: Instant,
    ) -> Result<(), duct_proto::Error> {
        self.feed_with(session, Some(now))
    }

    /// [`ReadBuf::feed`] at `now`, or with `None` at a reading of the clock taken only if
    /// something needs it: whole
    /// frames that are handled the same at any time (plain DATA frames from a frame
    /// transport: [`duct_proto::Session::frame_is_timeless`]) go without it. A clock reading
    /// is about a fifth of what a shared-memory message costs duct on each side.
    pub(crate) fn feed_with(
        &mut self,
        session: &mut duct_proto::Session,
        now: Option<Instant>,
    ) -> Result<(), duct_proto::Error> {
        self.feed_to(session, now, 0, &mut |_: Received<'_>| {})
    }

    /// [`ReadBuf::feed_with`] for a caller that waits for up to `max` messages: those the
    /// session may hand out at once go to `sink` (see `Session::handle_input_to`, and
    /// `Session::handle_raw_frame_untimed_to` for whole frames).
    pub(crate) fn feed_to(
        &mut self,
        session: &mut duct_proto::Session,
        mut now: Option<Instant>,
        max: usize,
        sink: &mut (impl duct_proto::ReceiveSink + ?Sized),
    ) -> Result<(), duct_proto::Error> {
        let mut time = || *now.get_or_insert_with(Instant::now);
        if self.direct.is_some() {
            // (First: the bytes read in place come before those in `data`.)
            self.give_back(session, time())?;
        }
        // (Whole frames: up to `max` plain messages go to `sink` while nothing is queued.)
        if !self.frame_chunk.is_empty() {
            let res = self.feed_frames_to(session, &mut time, max, sink);
            self.frames.clear();
            self.frame_chunk = Bytes::new();
            res?;
        }
        // Frames whose payloads are their own (a pool slot's view, or a single frame's copy).
        let mut left = max;
        while let Some(f) = self.frames.pop_front() {
            let payload = match f.payload {
                FramePayload::Own(payload) => payload,
                // (Not made without a chunk: an empty payload, refused unless the header
                // agrees.)
                FramePayload::InChunk { .. } => Bytes::new(),
            };
            if let Err(e) = feed_own(session, &f.header, payload, &mut time, &mut left, sink) {
                self.frames.clear();
                return Err(e);
            }
        }
        if self.data.is_empty() {
            return Ok(());
        }
        session.handle_input_to(&mut self.data, time(), max, sink)?;
        Ok(())
    }

    /// Hands `frames` to the session (see [`ReadBuf::feed_to`]): payloads of their own as
    /// they are, those in the receive's chunk as parts of it, so that messages handed to
    /// `sink` at once share one handle on it. (Not inlined: the plain way in
    /// [`ReadBuf::feed_to`], a ping-pong's, stays as short as it was.)
    #[inline(never)]
    fn feed_frames_to(
        &mut self,
        session: &mut duct_proto::Session,
        time: &mut impl FnMut() -> Instant,
        max: usize,
        sink: &mut (impl duct_proto::ReceiveSink + ?Sized),
    ) -> Result<(), duct_proto::Error> {
        let mut left = max;
        // Frames in the chunk still to come: the last one may hand the chunk's own handle on.
        // (Counted: the order of the frames is not that of their places in the chunk, where
        // a pop's pool copies come after its ring copies.)
        let mut parts = self
            .frames
            .iter()
            .filter(|f| matches!(f.payload, FramePayload::InChunk { .. }))
            .count();
        let id = session.next_chunk_number();
        let mut handed = false;
        let mut res = Ok(());
        while let Some(f) = self.frames.pop_front() {
            res = match f.payload {
                FramePayload::Own(payload) => {
                    feed_own(session, &f.header, payload, time, &mut left, sink)
                }
                FramePayload::InChunk { start, len } => {
                    parts -= 1;
                    let range = start as usize..start as usize + len as usize;
                    if session.frame_is_timeless(&f.header) {
                        let chunk = &mut self.frame_chunk;
                        session
                            .handle_raw_part_untimed_to(
                                &f.header,
                                chunk,
                                id,
                                parts == 0,
                                range,
                                &mut left,
                                sink,
                            )
                            .map(|h| handed |= h)
                    } else {
                        // (A range outside the chunk, which the transport never makes, is
                        // an empty payload: the session refuses it unless the header agrees.)
                        let payload = match self.frame_chunk.get(range.clone()) {
                            Some(_) => self.frame_chunk.slice(range),
                            None => Bytes::new(),
                        };
                        session.handle_raw_frame(&f.header, payload, time())
                    }
                }
            };
            if res.is_err() {
                break;
            }
        }
        if handed {
            // (Even after a failure: the sink holds parts under this number.)
            session.used_chunk_number(id);
        }
        res
    }

    /// Bytes (or frames) received and not yet handed to the session.
    pub(crate) fn held(&self) -> usize {
        self.data.len() + self.frames.len()
    }

    /// One `recv` into the free space, sized so that the next frame (`needed` bytes in all)
    /// fits. `Ok(0)` is end of stream. `how`: whether it waits, and on a frame transport what
    /// an empty one asks of the peer (see [`FrameRead`]); a socket's read is non-blocking
    /// unless it is [`FrameRead::Wait`].
    // (Inline: one call fewer between a caller's receive and the transport. Callgrind, shm
    // 64 B ping-pong: 3,483 -> 3,423 instructions per round trip.)
    #[inline]
    pub(crate) fn recv(
        &mut self,
        transport: &dyn StreamTransport,
        needed: usize,
        how: FrameRead,
    ) -> io::Result<usize> {
        if let Some(f) = transport.frame_io() {
            debug_assert!(
                self.frames.is_empty(),
                "frames are fed before the next receive"
            );
            return f.recv_frames(
                &mut self.frame_side,
                &mut self.frames,
                &mut self.frame_chunk,
                FRAMES_PER_RECV,
                how,
            );
        }
        let nonblocking = how != FrameRead::Wait;
        self.make_room(needed);
        if let Some(d) = self.direct.as_mut() {
            // The rest of the fragment in place, and in the same call the next frame's
            // header into `data` (only the header: the next frame may be a fragment too).
            let room = d.room();
            let tail = HEADER_LEN.min(self.data.capacity() - self.data.len());
            let (a, b) =
                transport.recv_into_direct((d.buf(), room), (&mut self.data, tail), nonblocking)?;
            self.short = a + b < room + tail;
            self.in_place += a as u64;
            return Ok(a + b);
        }
        let n = transport.recv_into(&mut self.data, nonblocking)?;
        self.note_room_left();
        Ok(n)
    }

    /// The last [`ReadBuf::recv`] asked for more than the transport had (a plain socket is
    /// empty after it).
    pub(crate) fn short_read(&self) -> bool {
        self.short
    }

    /// Makes room for a receive: at least what is `needed` for the next frame, at least 4 KiB.
    fn make_room(&mut self, needed: usize) {
        let want_free = needed.saturating_sub(self.data.len()).max(4096);
        rewind_if_empty(&mut self.data);
        self.chunks.make_room(&mut self.data, want_free, READ_CHUNK);
    }

    /// The buffer, with room made for a receive as [`ReadBuf::recv`] makes it, lent out to be
    /// filled elsewhere (a reactor thread's io_uring ring); give it back with
    /// [`ReadBuf::put_back`].
    #[cfg(duct_uring)]
    pub(crate) fn lend(&mut self, needed: usize) -> BytesMut {
        self.make_room(needed);
        std::mem::take(&mut self.data)
    }

    /// Takes back the buffer [`ReadBuf::lend`] lent, filled by a receive (which, as
    /// [`ReadBuf::recv`]'s, was short if it left room).
    #[cfg(duct_uring)]
    pub(crate) fn put_back(&mut self, buf: BytesMut) {
        self.data = buf;
        self.note_room_left();
    }

    /// After a receive into `data`: whether it left room (see [`ReadBuf::short_read`]).
    fn note_room_left(&mut self) {
        self.short = self.data.len() < self.data.capacity();
    }
}

/// Writes a frame of `header` and `payload` with `send` (a vectored write that may take
/// part) as far as it takes it; returns how many bytes went ([`WriteQueue::write_alone`]).
fn write_frame_with(
    mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    header: &[u8; HEADER_LEN],
    payload: &[u8],
) -> usize {
    let total = HEADER_LEN + payload.len();
    let mut went = 0;
    while went < total {
        let mut iov = [IoSlice::new(&[]); 2];
        let n = frame_rest(header, payload, went, &mut iov);
        match send(&iov[..n]) {
            Ok(k) if k > 0 => went += k,
            // Full, a failure, or nothing taken (the next write sees why).
            _ => break,
        }
    }
    went
}

/// The slices of a frame (`header`, `payload`) still to write once `went` bytes of it went,
/// put at the start of `iov` (room for two); returns how many.
#[inline]
fn frame_rest<'a>(
    header: &'a [u8; HEADER_LEN],
    payload: &'a [u8],
    went: usize,
    iov: &mut [IoSlice<'a>],
) -> usize {
    let mut n = 0;
    if went < HEADER_LEN {
        iov[0] = IoSlice::new(&header[went..]);
        n = 1;
    }
    iov[n] = IoSlice::new(&payload[went.saturating_sub(HEADER_LEN)..]);
    n + 1
}

/// When everything read was taken and no view of the chunk is alive, moves `buf` back to
/// the front of its chunk: a pipe that receives a little at a time then reads into the same
/// few cache-hot lines instead of sweeping its whole chunk (with many pipes, a chunk each:
/// the sweep misses the cache on every read). A view still alive leaves it as it is.
fn rewind_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() < READ_CHUNK {
        // (Asking for more than the spare capacity makes `try_reclaim` take back the
        // chunk's start if it can, without allocating.)
        let _ = buf.try_reclaim(READ_CHUNK);
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

/// Payloads up to this size are copied into the write buffer beside their headers when they
/// are queued, so that many small frames leave in one contiguous segment; larger payloads are
/// sent from their own memory as separate iovecs (never copied).
const COALESCE_MAX: usize = 512;
/// As [`COALESCE_MAX`], for payloads the caller lends (`send_slices`), which are copied
/// wherever they go: into the write buffer beside their headers up to this size (one copy,
/// no handle, contiguous frames: a `sendmsg` of 64 KiB as a raw socket writer's, where
/// frames of 1 KiB with an iovec each went 32 to a `sendmsg`), and past it written from the
/// caller's memory when the queue is due ([`WriteQueue::write_through`]) or else copied into
/// a buffer of their own.
const COALESCE_COPY_MAX: usize = 4096;
/// Most iovecs in one `sendmsg`.
const MAX_IOV: usize = 64;
/// Bytes of frames taken from the session ahead of the socket: one large frame, or about a
/// `sendmsg` of small ones. So a frame of a high-priority channel waits, inside duct, at most
/// about one frame of other channels that the socket has not taken.
const PULL_BYTES: usize = 64 * 1024;
/// The most bytes of frames taken ahead of the socket in the middle of a message larger than
/// a frame, while the socket takes all it is given: the limit doubles (from [`PULL_BYTES`])
/// with every write the socket took whole, and falls back to [`PULL_BYTES`] when it is full.
/// A large message then leaves in one `sendmsg`, as a raw socket writer's large write does,
/// instead of one per frame (frames handed to a socket with room wait in its buffer, not in
/// duct's). Whole messages are taken one frame ahead as always, so that beside a stream of
/// them a high-priority message still waits behind about one.
const PULL_MAX: usize = 1024 * 1024;
/// Most frames queued ahead of the socket (small frames share one iovec, so this is not
/// `MAX_IOV`).
const MAX_FRAMES: usize = 1024;

/// [`WriteQueue::inline_run`]'s writer.
pub(crate) struct InlineRun<'a> {
    q: &'a mut WriteQueue,
    /// The largest payload it encodes.
    max_len: usize,
    /// Where its first frame starts in `inline`.
    start: usize,
    /// Frames and bytes the queue takes before it is due to be written (`wants_more`).
    room_frames: usize,
    room_bytes: usize,
    /// Frames encoded.
    frames: usize,
}

impl InlineRun<'_> {
    /// Whether a frame of `len` payload bytes is encoded here: it is small, and the queue
    /// is not yet due to be written.
    #[inline(always)]
    pub(crate) fn takes(&self, len: usize) -> bool {
        len <= self.max_len
            && self.frames < self.room_frames
            && self.q.inline.len() - self.start < self.room_bytes
    }

    /// Encodes a frame of `payload` with the header `head` writes, as
    /// [`WriteQueue::push_inline_with`] does; `false` (nothing written) when it does not
    /// [`take`](InlineRun::takes) it.
    #[inline(always)]
    pub(crate) fn push(
        &mut self,
        payload: &[u8],
        head: impl FnOnce(&mut [u8; HEADER_LEN]),
    ) -> bool {
        if !self.takes(payload.len()) {
            return false;
        }
        self.encode(payload, head);
        true
    }

    /// Encodes a frame of `payload` with the header `head` writes, whatever the limits
    /// (for a caller that asked [`InlineRun::takes`] first).
    #[inline(always)]
    pub(crate) fn encode(&mut self, payload: &[u8], head: impl FnOnce(&mut [u8; HEADER_LEN])) {
        let inline = &mut self.q.inline;
        inline.reserve(HEADER_LEN + payload.len());
        inline.extend_from_slice(&[0; HEADER_LEN]);
        if let Some((_, h)) = inline.split_last_chunk_mut::<HEADER_LEN>() {
            head(h);
        }
        inline.extend_from_slice(payload);
        self.frames += 1;
    }
}

impl Drop for InlineRun<'_> {
    /// Brings the queue's entry and counts up to date with the frames encoded.
    #[inline]
    fn drop(&mut self) {
        if self.frames == 0 {
            return;
        }
        let q = &mut *self.q;
        let end = q.inline.len();
        if let Some(Entry::Inline { end: e, frames }) = q.entries.back_mut() {
            *e = end;
            *frames += self.frames;
        } else {
            q.entries.push_back(Entry::Inline {
                end,
                frames: self.frames,
            });
        }
        q.bytes += end - self.start;
        q.frames += self.frames;
    }
}

/// The largest payload encoded into the write buffer: see [`COALESCE_COPY_MAX`].
#[inline(always)]
fn coalesce_max(copied: bool) -> usize {
    if copied {
        COALESCE_COPY_MAX
    } else {
        COALESCE_MAX
    }
}

/// One entry of the write queue.
enum Entry {
    /// Small frames encoded back to back in `WriteQueue::inline`, from the end of the
    /// previous run (or `WriteQueue::inline_pos` for the first) to `end`.
    Inline {
        end: usize,
        /// Frames in the run not yet fully written.
        frames: usize,
    },
    /// A frame kept as the session made it: a large payload (sent from its own memory), a
    /// frame whose TTL is restamped when it goes out, or any frame for a frame transport.
    Frame(Transmit),
}

/// Frames taken from the session and not yet fully written.
///
/// On a byte stream, a small frame without a deadline is encoded into `inline` as it is
/// queued (its payload handle is released then): a run of them leaves as one iovec, and
/// nothing is kept per frame. Other frames stay `Transmit`s, their payloads sent in place.
pub(crate) struct WriteQueue {
    /// The transport this queue writes to, kept here like [`ReadBuf::transport`]; set with
    /// [`WriteQueue::set_transport`].
    pub(crate) transport: Option<Arc<dyn StreamTransport>>,
    entries: VecDeque<Entry>,
    /// Encoded small frames (see [`Entry::Inline`]).
    inline: Vec<u8>,
    /// Bytes of `inline` already written.
    inline_pos: usize,
    /// Where the first frame of `inline` not fully written starts.
    inline_frame: usize,
    /// Bytes of the front entry, when it is a `Frame`, already written.
    offset: usize,
    /// Bytes not yet written.
    bytes: usize,
    /// Frames not yet fully written.
    frames: usize,
    /// `Frame` entries that carry a TTL deadline (restamped before they are written).
    with_ttl: usize,
    /// The transport holds output of its own that the socket did not take (TLS records).
    backlog: bool,
    /// Small frames are encoded into `inline` (a byte-stream transport).
    coalesce: bool,
    /// A frame transport's sending state (see [`FrameSide`]).
    frame_side: FrameSide,
    /// Frames went straight to the frame transport ([`WriteQueue::push_copy`]) and its
    /// peer is still to be woken for them.
    unpublished: bool,
    /// Bytes of frames to take ahead of the socket in the middle of a large message
    /// (between [`PULL_BYTES`] and [`PULL_MAX`]).
    pull: usize,
    /// The last frame queued, if it is still queued, is a fragment with more to come
    /// (`MORE_FRAGMENTS`): set by [`WriteQueue::push`] and [`WriteQueue::push_written`],
    /// the ways fragments enter (a direct run's frames, `push_inline_with` alone, are whole
    /// messages, and come only after the queue emptied), cleared when the queue empties or
    /// changes transport.
    mid_message: bool,
    /// Bytes of queued frames written so far (by every writer of the queue): whether a
    /// write took any since an earlier look.
    written: u64,
}

impl WriteQueue {
    pub(crate) fn new() -> Self {
        WriteQueue {
            transport: None,
            entries: VecDeque::new(),
            inline: Vec::new(),
            inline_pos: 0,
            inline_frame: 0,
            offset: 0,
            bytes: 0,
            frames: 0,
            with_ttl: 0,
            backlog: false,
            coalesce: false,
            frame_side: FrameSide::default(),
            unpublished: false,
            pull: PULL_BYTES,
            written: 0,
            mid_message: false,
        }
    }

    /// Sets the transport to write to. Frames queued from now on are laid out for it: small
    /// ones encoded in place on a byte stream, all kept whole for a frame transport.
    pub(crate) fn set_transport(&mut self, transport: Arc<dyn StreamTransport>) {
        self.coalesce = transport.frame_io().is_none();
        self.transport = Some(transport);
        // (Frames pushed to an earlier connection went with it.)
        self.unpublished = false;
        self.pull = PULL_BYTES;
        self.mid_message = false;
    }

    #[inline]
    pub(crate) fn push(&mut self, t: Transmit) {
        self.mid_message = t.header[1] & flags::MORE_FRAGMENTS != 0;
        if self.coalesce && t.deadline.is_none() && self.push_inline(&t.header, &t.payload) {
            return;
        }
        self.bytes += t.wire_len();
        self.frames += 1;
        self.with_ttl += usize::from(t.deadline.is_some());
        self.entries.push_back(Entry::Frame(t));
    }

    /// Encodes a small frame into `inline` on a byte stream (`false`: not here, it stays
    /// whole).
    #[inline]
    pub(crate) fn push_inline(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> bool {
        self.push_inline_with(payload, false, |h| *h = *header)
    }

    /// As [`WriteQueue::push_inline`], with the header written in place by `head` (see
    /// `DirectRun::write_header`: no header assembled elsewhere and copied). `copied`: the
    /// payload is lent by the caller (up to [`COALESCE_COPY_MAX`] bytes are encoded here),
    /// not a handle of its own (up to [`COALESCE_MAX`]).
    #[inline]
    pub(crate) fn push_inline_with(
        &mut self,
        payload: &[u8],
        copied: bool,
        head: impl FnOnce(&mut [u8; HEADER_LEN]),
    ) -> bool {
        if payload.len() > coalesce_max(copied) {
            return false;
        }
        // (The caller looked at `wants_more`: no limit of the run's applies.)
        let Some(mut run) = self.inline_run(copied) else {
            return false;
        };
        run.encode(payload, head);
        true
    }

    /// On a byte stream, a writer of small frames encoded back to back into `inline`, as
    /// [`WriteQueue::push_inline_with`] encodes one, for a caller with many in a row: the
    /// queue's entry and counts are brought up to date once, when the writer is dropped.
    /// `None` on a frame transport. `copied`: as for [`WriteQueue::push_inline_with`].
    #[inline]
    pub(crate) fn inline_run(&mut self, copied: bool) -> Option<InlineRun<'_>> {
        if !self.coalesce {
            return None;
        }
        if self.inline_pos == self.inline.len() {
            // Everything encoded was written: start again at the front.
            self.inline.clear();
            self.inline_pos = 0;
            self.inline_frame = 0;
        }
        // (As `wants_more`, the limits checked before each frame.)
        let max_bytes = self.pull_limit();
        Some(InlineRun {
            max_len: coalesce_max(copied),
            start: self.inline.len(),
            room_frames: MAX_FRAMES.saturating_sub(self.frames),
            room_bytes: max_bytes.saturating_sub(self.bytes),
            frames: 0,
            q: self,
        })
    }

    /// Takes the frames the session has ready at `now` (in the scheduler's order, behind
    /// those already here) until about one `sendmsg`'s worth is queued: the rest stays in the
    /// session's per-channel queues, where priority, TTL and policies still apply to it.
    #[inline]
    pub(crate) fn take_from(&mut self, session: &mut duct_proto::Session, now: Instant) {
        while self.wants_more() {
            // Plain messages of one channel in a row (a backlog of a stream) are encoded in
            // place by a run: no frame handed out and pushed for each. (Looked for only when
            // messages are queued: a ping-pong's flush finds none, and pays one check.)
            if !session.outbox().is_empty() {
                let n = self.inline_run(false).map_or(0, |mut run| {
                    session.poll_plain_run(now, |h, p| run.push(p, |d| *d = *h))
                });
                if n > 0 {
                    self.mid_message = false;
                    continue;
                }
            }
            match session.poll_transmit_at(now) {
                Some(t) => self.push(t),
                None => break,
            }
        }
    }

    /// Less than about one `sendmsg`'s worth is queued: more frames may be taken.
    #[inline]
    pub(crate) fn wants_more(&self) -> bool {
        self.frames < MAX_FRAMES && self.bytes < self.pull_limit()
    }

    /// Bytes of frames taken ahead of the socket before it is written: [`PULL_BYTES`], or
    /// in the middle of a large message as much as `pull` has grown to.
    #[inline]
    fn pull_limit(&self) -> usize {
        if self.mid_message {
            PULL_BYTES.max(self.pull)
        } else {
            PULL_BYTES
        }
    }

    /// On a byte stream, a frame of `len` payload bytes lent by the caller, too large to
    /// encode in place, would bring the queue to about a `sendmsg`'s worth: the point at
    /// which it is written anyway, so it may as well go with the frame, from the caller's
    /// memory ([`WriteQueue::write_through`]).
    #[inline]
    pub(crate) fn fills_with(&self, len: usize) -> bool {
        self.coalesce
            && len > COALESCE_COPY_MAX
            && (self.bytes + HEADER_LEN + len >= PULL_BYTES || self.frames + 1 >= MAX_FRAMES)
    }

    /// On a byte stream: writes the queued frames and then a frame of `header` and `payload`
    /// straight from the caller's memory, in vectored writes, as far as the transport takes
    /// them without blocking. Returns how many bytes of the new frame went: all of them
    /// (`HEADER_LEN + payload.len()`), and nothing of it needs to be kept; fewer, and the
    /// caller queues it with [`WriteQueue::push_written`]. (A raw socket writer's large
    /// write: no copy of the payload when the socket has room.)
    ///
    /// A failure is not returned: it leaves the queue and the frame where they were, and the
    /// next write of the queue meets it again (a broken socket stays broken).
    pub(crate) fn write_through(
        &mut self,
        transport: &dyn StreamTransport,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> usize {
        if self.is_empty() {
            return self.write_alone(transport, header, payload);
        }
        let went = self.write_through_with(|iov| transport.send_vectored(iov), header, payload);
        if self.entries.is_empty() {
            // All that was queued went. (TLS: records the socket did not take stay with the
            // transport.)
            self.backlog = !transport.flush_backlog().unwrap_or(false);
        }
        went
    }

    /// [`WriteQueue::write_through`] for an empty queue (nothing queued, no output the
    /// transport buffered): the frame alone, its two slices in one vectored write, without
    /// laying out the queue's iovecs first (~130 instructions for nothing).
    #[inline]
    pub(crate) fn write_alone(
        &mut self,
        transport: &dyn StreamTransport,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> usize {
        debug_assert!(
            self.coalesce && self.is_empty(),
            "write_alone behind a queue"
        );
        let went = write_frame_with(|iov| transport.send_vectored(iov), header, payload);
        // (TLS: records the socket did not take stay with the transport.)
        self.backlog = !transport.flush_backlog().unwrap_or(false);
        went
    }

    /// [`WriteQueue::write_through`] with `send` (a vectored write that may take part).
    fn write_through_with(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> usize {
        debug_assert!(self.coalesce, "write-through on a frame transport");
        self.restamp();
        let total = HEADER_LEN + payload.len();
        let mut went = 0;
        while went < total {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            // (Room for the frame's two slices behind the queue's.)
            let mut n = self.layout(&mut iov[..MAX_IOV - 2]);
            let laid: usize = iov[..n].iter().map(|s| s.len()).sum();
            if laid == self.bytes {
                // All the queue is laid out: the frame follows it.
                n += frame_rest(header, payload, went, &mut iov[n..]);
            }
            match send(&iov[..n]) {
                Ok(k) if k > 0 => {
                    let queued = k.min(self.bytes);
                    self.consume(queued);
                    went += k - queued;
                }
                // Full, a failure, or nothing taken (the next write sees why).
                _ => break,
            }
        }
        went
    }

    /// Queues a frame of which `written` bytes were written already by
    /// [`WriteQueue::write_through`] (which, when it wrote any, wrote everything queued
    /// before it): it is the front frame, partly written, as a frame the queue began itself.
    pub(crate) fn push_written(&mut self, t: Transmit, written: usize) {
        if written == 0 {
            return self.push(t);
        }
        debug_assert!(self.entries.is_empty() && written < t.wire_len());
        self.mid_message = t.header[1] & flags::MORE_FRAGMENTS != 0;
        self.bytes += t.wire_len() - written;
        self.frames += 1;
        self.with_ttl += usize::from(t.deadline.is_some());
        self.offset = written;
        self.entries.push_back(Entry::Frame(t));
    }

    /// Nothing left to write: no frames, no output the transport buffered itself, and no
    /// frame sent with [`WriteQueue::push_copy`] whose peer is still to be woken.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.backlog && !self.unpublished
    }

    /// On a frame transport with nothing queued here: sends a frame with a copy of `payload`
    /// (its header written by `head`) straight into the transport, keeping nothing per frame
    /// (no `Bytes`, no entry). The peer is woken when the queue is next written (a flush),
    /// once for the run. `false`: not sent (a byte stream, frames queued here, no room in
    /// the transport, or a failure, which the next write meets again): queue it.
    pub(crate) fn push_copy(
        &mut self,
        payload: &[u8],
        head: impl FnOnce(&mut [u8; HEADER_LEN]),
    ) -> bool {
        if !self.is_empty_frames() {
            return false;
        }
        let Some(f) = self.transport.as_ref().and_then(|t| t.frame_io()) else {
            return false;
        };
        let mut header = [0; HEADER_LEN];
        head(&mut header);
        let sent = f
            .push_copy(&mut self.frame_side, &header, payload)
            .unwrap_or(false);
        self.unpublished |= sent;
        sent
    }

    /// A frame transport with nothing queued here: frames may go to it at once
    /// ([`WriteQueue::push_copy`], [`WriteQueue::send_frame`]), and a sender may wait for its
    /// room ([`WriteQueue::wait_room`]).
    #[inline]
    pub(crate) fn is_empty_frames(&self) -> bool {
        !self.coalesce && self.entries.is_empty()
    }

    /// On a frame transport with nothing queued here, after [`WriteQueue::push_copy`] found no
    /// room: waits a little, not past `deadline`, for room for a frame with `len` payload
    /// bytes ([`FrameIo::wait_room`]). `false`: none came (or frames are queued here, or a byte
    /// stream): queue it.
    pub(crate) fn wait_room(&mut self, len: usize, deadline: Instant) -> bool {
        if !self.is_empty_frames() {
            return false;
        }
        let Some(f) = self.transport.as_ref().and_then(|t| t.frame_io()) else {
            return false;
        };
        f.wait_room(&mut self.frame_side, len, deadline)
            .unwrap_or(false)
    }

    /// On a frame transport with nothing queued here: sends `t` at once (its payload moved
    /// without a copy when it is a loan of the transport's pool, else copied) and wakes the
    /// peer if it waits. `false`: not sent (a byte stream, frames queued here, no room in the
    /// transport, or a failure, which the next write meets again): queue it.
    pub(crate) fn send_frame(&mut self, t: &Transmit) -> bool {
        if !self.is_empty_frames() {
            return false;
        }
        let Some(f) = self.transport.as_ref().and_then(|t| t.frame_io()) else {
            return false;
        };
        // (Frames `push_copy` sent before are published with it.)
        let sent = matches!(f.push_frame(&mut self.frame_side, t), Ok(true));
        self.unpublished &= !sent;
        sent
    }

    /// The frames not written yet, in order, for a new connection: a partly written first
    /// frame is included (the peer drops a partial frame with the connection).
    pub(crate) fn into_frames(self) -> impl Iterator<Item = Transmit> {
        let mut out = Vec::with_capacity(self.frames);
        let mut at = self.inline_frame;
        for e in self.entries {
            match e {
                Entry::Frame(t) => out.push(t),
                Entry::Inline { end, .. } => {
                    while let Some((header, len)) = inline_header(&self.inline[..end], at) {
                        let from = at + HEADER_LEN;
                        out.push(Transmit {
                            header,
                            payload: Bytes::copy_from_slice(&self.inline[from..from + len]),
                            deadline: None,
                        });
                        at = from + len;
                    }
                    at = end;
                }
            }
        }
        out.into_iter()
    }

    /// Bytes of queued frames written so far (see `written`).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Bytes still to write.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames still to write; output the transport buffered itself counts as one.
    pub(crate) fn frames(&self) -> usize {
        self.frames + usize::from(self.backlog)
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
        if !self.write_with(|iov| transport.send_vectored(iov))? {
            return Ok(false);
        }
        let done = transport.flush_backlog()?;
        self.backlog = !done;
        Ok(done)
    }

    /// Writes the queue with `send` (a vectored write that may take part) until it is empty
    /// (`Ok(true)`) or `send` reports `WouldBlock` (`Ok(false)`).
    fn write_with(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        self.restamp();
        while !self.entries.is_empty() {
            if let (1, Some(&Entry::Inline { end, .. })) =
                (self.entries.len(), self.entries.front())
            {
                // Only small frames, one run (the usual case): one slice, without laying out
                // the iovec array.
                if !self.sent(send(&[IoSlice::new(&self.inline[self.inline_pos..end])]))? {
                    return Ok(false);
                }
                continue;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.layout(&mut iov);
            if !self.sent(send(&iov[..n]))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives the frames that carry a TTL deadline the time they have left now: what a frame
    /// carries is what is left when it goes out, not when it was taken from the session (the
    /// wait for the socket counts). Not the front frame once it is partly written.
    pub(crate) fn restamp(&mut self) {
        if self.with_ttl > 0 {
            let now = Instant::now();
            let begun = self.offset > 0;
            for (i, e) in self.entries.iter_mut().enumerate() {
                if let Entry::Frame(t) = e {
                    if !(i == 0 && begun) {
                        t.restamp(now);
                    }
                }
            }
        }
    }

    /// Lays the unwritten bytes out as slices, in order, as many as fit in `iov`; returns how
    /// many.
    fn layout<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut from = self.inline_pos;
        for (i, e) in self.entries.iter().enumerate() {
            match e {
                Entry::Inline { end, .. } => {
                    if n == iov.len() {
                        break;
                    }
                    iov[n] = IoSlice::new(&self.inline[from..*end]);
                    n += 1;
                    from = *end;
                }
                Entry::Frame(t) => {
                    if n + 2 > iov.len() {
                        break;
                    }
                    let skip = if i == 0 { self.offset } else { 0 };
                    if skip < HEADER_LEN {
                        iov[n] = IoSlice::new(&t.header[skip..]);
                        n += 1;
                    }
                    let pay_from = skip.saturating_sub(HEADER_LEN);
                    if pay_from < t.payload.len() {
                        iov[n] = IoSlice::new(&t.payload[pay_from..]);
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Takes the result of a send of the queue (a write, or a send through a reactor thread's
    /// io_uring ring): `Ok(true)` when bytes went (the writer goes on), `Ok(false)` when the
    /// transport was full.
    pub(crate) fn sent(&mut self, res: io::Result<usize>) -> io::Result<bool> {
        match res {
            Ok(written) => {
                self.consume(written);
                if self.bytes == 0 {
                    // The socket took it all: it may take more at once next time.
                    self.pull = (2 * written).clamp(self.pull, PULL_MAX);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pull = PULL_BYTES;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Hands the queued frames to a frame transport, in order, until it has no room.
    fn push_frames(&mut self, f: &dyn FrameIo) -> io::Result<bool> {
        if std::mem::take(&mut self.unpublished) {
            f.publish(&mut self.frame_side)?;
        }
        if self.with_ttl > 0 {
            let now = Instant::now();
            for e in self.entries.iter_mut() {
                if let Entry::Frame(t) = e {
                    t.restamp(now);
                }
            }
        }
        // (Only `Frame` entries here: nothing is encoded in place for a frame transport.)
        let mut frames = self.entries.iter().map_while(|e| match e {
            Entry::Frame(t) => Some(t),
            Entry::Inline { .. } => None,
        });
        let (sent, all) = f.push_many(&mut self.frame_side, &mut frames)?;
        for e in self.entries.drain(..sent) {
            if let Entry::Frame(t) = e {
                self.bytes -= t.wire_len();
                self.frames -= 1;
                self.with_ttl -= usize::from(t.deadline.is_some());
            }
        }
        Ok(all && self.entries.is_empty())
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        self.written += n as u64;
        if self.bytes == 0 {
            // (The next fragment of a message under way says so again as it is queued.)
            self.mid_message = false;
        }
        while n > 0 {
            let Some(front) = self.entries.front_mut() else {
                break;
            };
            match front {
                Entry::Inline { end, frames } => {
                    let left = *end - self.inline_pos;
                    if n >= left {
                        n -= left;
                        self.frames -= *frames;
                        self.inline_pos = *end;
                        self.inline_frame = *end;
                        self.entries.pop_front();
                    } else {
                        self.inline_pos += n;
                        n = 0;
                        // Count the frames of the run written whole.
                        let run = &self.inline[..*end];
                        while let Some((_, len)) = inline_header(run, self.inline_frame) {
                            let next = self.inline_frame + HEADER_LEN + len;
                            if next > self.inline_pos {
                                break;
                            }
                            self.inline_frame = next;
                            *frames -= 1;
                            self.frames -= 1;
                        }
                    }
                }
                Entry::Frame(t) => {
                    let left = t.wire_len() - self.offset;
                    if n >= left {
                        n -= left;
                        self.frames -= 1;
                        self.with_ttl -= usize::from(t.deadline.is_some());
                        self.offset = 0;
                        self.entries.pop_front();
                    } else {
                        self.offset += n;
                        n = 0;
                    }
                }
            }
        }
        if self.inline_pos > PULL_BYTES && self.inline_pos < self.inline.len() {
            // A long-lived partial write: move what is left to the front, so that `inline`
            // stays within about two pulls.
            let shift = self.inline_frame;
            self.inline.drain(..shift);
            self.inline_pos -= shift;
            self.inline_frame = 0;
            for e in self.entries.iter_mut() {
                if let Entry::Inline { end, .. } = e {
                    *end -= shift;
                }
            }
        }
    }
}

/// The header and payload length of the frame encoded in `run` at `at`, if a whole one is
/// there.
fn inline_header(run: &[u8], at: usize) -> Option<([u8; HEADER_LEN], usize)> {
    let header: [u8; HEADER_LEN] = run.get(at..at + HEADER_LEN)?.try_into().ok()?;
    let len = Header::payload_len_of(&header) as usize;
    (run.len() >= at + HEADER_LEN + len).then_some((header, len))
}

/// What to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
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
        Interest::Write => PollFlags::OUT,
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

/// A write queue is sent through a reactor thread's io_uring ring as it would be written: its
/// unwritten bytes, in order, from its own memory (the ring owns the queue meanwhile).
#[cfg(duct_uring)]
impl duct_sys::uring::SendBufs for WriteQueue {
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let n = out.len().min(MAX_IOV);
        self.layout(&mut out[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use duct_proto::wire::Header;

    /// A data frame on `channel` whose payload is `len` bytes of `fill`.
    fn frame(channel: u16, len: usize, fill: u8) -> Transmit {
        Transmit {
            header: Header::data(channel, len as u32).encode(),
            payload: Bytes::from(vec![fill; len]),
            deadline: None,
        }
    }

    fn wire(frames: &[Transmit]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in frames {
            out.extend_from_slice(&t.header);
            out.extend_from_slice(&t.payload);
        }
        out
    }

    /// Small and large frames, as a byte stream's queue lays them out.
    fn mixed() -> Vec<Transmit> {
        (0..300u16)
            .map(|i| match i % 7 {
                3 => frame(i, 4000 + usize::from(i), i as u8),
                _ => frame(i, usize::from(i % 100), i as u8),
            })
            .collect()
    }

    /// A socket's partial write: appends up to `room` bytes of `iov` to `out`, returns how
    /// many.
    fn take(iov: &[IoSlice<'_>], mut room: usize, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for s in iov {
            let k = room.min(s.len());
            out.extend_from_slice(&s[..k]);
            n += k;
            room -= k;
        }
        n
    }

    fn stream_queue() -> WriteQueue {
        let mut w = WriteQueue::new();
        w.coalesce = true;
        w
    }

    /// Pushes 64 KiB frames while the queue wants more, fragments of a larger message if
    /// `fragments`; returns how many it took.
    fn pull_large(w: &mut WriteQueue, fragments: bool) -> usize {
        let mut n = 0;
        while w.wants_more() {
            let mut t = frame(1, 64 * 1024, n as u8);
            if fragments {
                t.header[1] |= flags::MORE_FRAGMENTS | flags::CONTINUATION;
            }
            w.push(t);
            n += 1;
        }
        n
    }

    #[test]
    fn a_large_message_goes_ahead_in_more_frames_while_the_socket_takes_all_and_one_once_it_is_full(
    ) {
        let mut w = stream_queue();
        let mut out = Vec::new();
        let mut all = |iov: &[IoSlice<'_>]| -> io::Result<usize> {
            Ok(take(iov, usize::MAX, &mut Vec::new()))
        };
        // Fragments of a large message: one at first; doubling with every write the socket
        // took whole, up to PULL_MAX.
        let mut took = Vec::new();
        for _ in 0..7 {
            took.push(pull_large(&mut w, true));
            assert!(w.write_with(&mut all).unwrap());
        }
        assert_eq!(took, [1, 2, 4, 8, 16, 16, 16]);
        // Whole messages: one frame ahead, whatever the socket takes.
        for _ in 0..3 {
            assert_eq!(pull_large(&mut w, false), 1);
            assert!(w.write_with(&mut all).unwrap());
        }
        // A socket that takes a part and then is full: no frame more ahead while the rest
        // waits; then as much again as the socket took at once (here the last frame: two).
        let frame_len = 64 * 1024 + HEADER_LEN;
        assert_eq!(pull_large(&mut w, true), 16);
        let mut calls = 0;
        let done = w
            .write_with(|iov| {
                calls += 1;
                if calls == 1 {
                    Ok(take(iov, 15 * frame_len, &mut out))
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            })
            .unwrap();
        assert!(!done);
        assert_eq!(w.bytes(), frame_len);
        assert!(!w.wants_more(), "a frame waits: none more ahead");
        assert!(w.write_with(&mut all).unwrap());
        assert_eq!(pull_large(&mut w, true), 2);
    }

    #[test]
    fn a_stream_queue_writes_every_byte_in_order_through_partial_writes() {
        let frames = mixed();
        let expect = wire(&frames);
        let mut w = stream_queue();
        for t in frames.iter().cloned() {
            w.push(t);
        }
        assert_eq!(w.frames(), frames.len());
        assert_eq!(w.bytes(), expect.len());
        let mut out = Vec::new();
        let mut step = 0usize;
        let mut blocked = 0;
        loop {
            // Takes 1, 2, ... 97 bytes, then refuses once (a full socket).
            let done = w
                .write_with(|iov| {
                    step += 1;
                    if step % 13 == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(take(iov, step % 97 + 1, &mut out))
                })
                .unwrap();
            assert_eq!(w.bytes(), expect.len() - out.len());
            // Frames still to write: those not wholly in `out` yet.
            let mut whole = 0;
            let mut at = 0;
            for t in &frames {
                at += t.wire_len();
                if at <= out.len() {
                    whole += 1;
                }
            }
            assert_eq!(
                w.frames(),
                frames.len() - whole,
                "after {} bytes",
                out.len()
            );
            if done {
                break;
            }
            blocked += 1;
        }
        assert!(blocked > 0);
        assert_eq!(out, expect);
        assert!(w.is_empty());
        assert_eq!((w.frames(), w.bytes()), (0, 0));
    }

    /// A socket's vectored write that takes `room` bytes over all its writes into `out`,
    /// `step` at most at a time, then refuses (full) or fails (`fail`).
    fn socket(
        room: usize,
        step: usize,
        fail: bool,
        out: &mut Vec<u8>,
    ) -> impl FnMut(&[IoSlice<'_>]) -> io::Result<usize> + '_ {
        move |iov| match room - out.len() {
            0 if fail => Err(io::ErrorKind::BrokenPipe.into()),
            0 => Err(io::ErrorKind::WouldBlock.into()),
            left => Ok(take(iov, left.min(step), out)),
        }
    }

    #[test]
    fn a_frame_written_through_follows_the_queue_in_order_whatever_the_socket_takes() {
        let frames = mixed();
        let big = frame(9, 70_000, 0xb1);
        let mut expect = wire(&frames);
        expect.extend_from_slice(&wire(std::slice::from_ref(&big)));
        let queued = expect.len() - big.wire_len();
        // The queue after a write-through into a socket that takes `room` bytes over all its
        // writes, `step` at most at a time, then refuses (full) or fails; and what it took.
        let through = |room: usize, step: usize, fail: bool| {
            let mut w = stream_queue();
            for t in frames.iter().cloned() {
                w.push(t);
            }
            let mut out = Vec::new();
            let went = w.write_through_with(
                socket(room, step, fail, &mut out),
                &big.header,
                &big.payload,
            );
            assert_eq!(out.len(), room, "room {room} step {step}");
            assert_eq!(went, room.saturating_sub(queued), "room {room} step {step}");
            if went < big.wire_len() {
                w.push_written(big.clone(), went);
            }
            (w, out)
        };
        let rooms = [0, 1, 5000, queued - 1, queued, queued + 10, queued + 24];
        let rooms = rooms.into_iter().chain([queued + 30_000, expect.len() - 1]);
        for room in rooms.chain([expect.len()]) {
            for (step, fail) in [(usize::MAX, false), (3000, false), (4096, true)] {
                let (mut w, mut out) = through(room, step, fail);
                assert_eq!(w.bytes(), expect.len() - room);
                // Frames not wholly written, the big one included.
                let ends = frames.iter().chain([&big]).scan(0, |at, t| {
                    *at += t.wire_len();
                    Some(*at)
                });
                let left = frames.len() + 1 - ends.filter(|&end| end <= room).count();
                assert_eq!(w.frames(), left, "room {room}");
                // The rest follows in order.
                while !w
                    .write_with(|iov| Ok(take(iov, usize::MAX, &mut out)))
                    .unwrap()
                {}
                assert_eq!(out, expect, "room {room} step {step}");
                assert_eq!((w.frames(), w.bytes()), (0, 0));
                // A broken connection gives the frames not written whole back, whole, the
                // big one last.
                let back: Vec<Transmit> = through(room, step, fail).0.into_frames().collect();
                assert_eq!(back.len(), left, "room {room}");
                if let Some(last) = back.last() {
                    assert_eq!((last.header, &last.payload), (big.header, &big.payload));
                }
            }
        }
    }

    #[test]
    fn a_frame_written_alone_goes_whole_or_is_queued_as_begun_whatever_the_socket_takes() {
        for len in [0, 1, 64, 5000] {
            // (Bytes that differ: a part written twice or skipped shows.)
            let t = Transmit {
                payload: (0..len).map(|i| i as u8).collect::<Vec<u8>>().into(),
                ..frame(3, len, 0)
            };
            let expect = wire(std::slice::from_ref(&t));
            let total = expect.len();
            let rooms = [
                0,
                1,
                HEADER_LEN - 1,
                HEADER_LEN,
                HEADER_LEN + 1,
                total - 1,
                total,
            ];
            for room in rooms.into_iter().filter(|&r| r <= total) {
                for (step, fail) in [(usize::MAX, false), (7, false), (1000, true)] {
                    let mut w = stream_queue();
                    let mut out = Vec::new();
                    let went =
                        write_frame_with(socket(room, step, fail, &mut out), &t.header, &t.payload);
                    let case = format!("len {len} room {room} step {step}");
                    assert_eq!((went, out.len()), (room, room), "{case}");
                    if went < total {
                        w.push_written(t.clone(), went);
                    }
                    assert_eq!(w.bytes(), total - room, "{case}");
                    while !w
                        .write_with(|iov| Ok(take(iov, usize::MAX, &mut out)))
                        .unwrap()
                    {}
                    assert_eq!(out, expect, "{case}");
                    assert!(w.is_empty(), "{case}");
                }
            }
        }
    }

    #[test]
    fn a_broken_stream_queue_gives_back_the_frames_not_written_whole() {
        let frames = mixed();
        for cut in [0, 1, 24, 25, 500, 4100, 9000, 20_000] {
            let mut w = stream_queue();
            for t in frames.iter().cloned() {
                w.push(t);
            }
            let mut left = cut;
            let done = w
                .write_with(|iov| {
                    if left == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    let n = iov.iter().map(|s| s.len()).sum::<usize>().min(left);
                    left -= n;
                    Ok(n)
                })
                .unwrap();
            assert!(!done);
            // Frames wholly written are gone; a partly written one comes back whole.
            let mut at = 0;
            let first = frames
                .iter()
                .position(|t| {
                    at += t.wire_len();
                    at > cut
                })
                .unwrap();
            let back: Vec<Transmit> = w.into_frames().collect();
            assert_eq!(back.len(), frames.len() - first, "cut at {cut}");
            for (a, b) in back.iter().zip(&frames[first..]) {
                assert_eq!(a.header, b.header);
                assert_eq!(a.payload, b.payload);
            }
        }
    }

    #[test]
    fn a_stream_queue_that_never_drains_stays_bounded() {
        // A socket that always takes a little less than was queued: the encoded bytes move
        // to the front instead of piling up.
        let mut w = stream_queue();
        let mut expect = Vec::new();
        let mut out = Vec::new();
        for round in 0..2000u32 {
            while w.wants_more() {
                let t = frame(1, 40, round as u8);
                expect.extend_from_slice(&wire(std::slice::from_ref(&t)));
                w.push(t);
            }
            let _ = w.write_with(|iov| {
                let all: usize = iov.iter().map(|s| s.len()).sum();
                if all < 200 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(take(iov, all - 100, &mut out))
            });
            assert!(
                w.inline.len() <= 2 * PULL_BYTES + 1000,
                "{}",
                w.inline.len()
            );
        }
        while !w
            .write_with(|iov| {
                let mut n = 0;
                for s in iov {
                    out.extend_from_slice(s);
                    n += s.len();
                }
                Ok(n)
            })
            .unwrap()
        {}
        assert_eq!(out, expect);
    }

    #[test]
    fn an_emptied_read_buffer_starts_again_at_the_front_of_its_chunk() {
        let mut chunks = Chunks::default();
        let mut buf = BytesMut::new();
        chunks.make_room(&mut buf, 4096, READ_CHUNK);
        let front = buf.as_ptr();
        buf.extend_from_slice(&[1; 1000]);
        let view = buf.split_to(1000).freeze();
        // A view is alive: the buffer stays where it is.
        rewind_if_empty(&mut buf);
        assert_ne!(buf.as_ptr(), front);
        drop(view);
        rewind_if_empty(&mut buf);
        assert_eq!(buf.as_ptr(), front);
        assert!(buf.capacity() >= READ_CHUNK);
        // Bytes not taken yet are never moved.
        buf.extend_from_slice(&[2; 10]);
        drop(buf.split_to(5));
        let at = buf.as_ptr();
        rewind_if_empty(&mut buf);
        assert_eq!((buf.as_ptr(), &buf[..]), (at, &[2u8; 5][..]));
    }

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

    /// What happens to a byte stream's write queue, in any order.
    #[derive(Clone, Debug)]
    enum QueueOp {
        /// The session hands over a frame of `len` bytes (a fragment of a larger message
        /// with `fragment`), if the queue wants more (`take_from`).
        Push { len: usize, fragment: bool },
        /// As many frames of `len` bytes as the queue wants (a session with a backlog).
        Fill { len: usize },
        /// A frame of a slice the caller lends (`send_slices`): encoded in place up to
        /// [`COALESCE_COPY_MAX`], else queued, if the queue wants more.
        Copy { len: usize },
        /// Up to `n` frames of lent slices of `len` bytes encoded by one
        /// [`WriteQueue::inline_run`], as far as it takes them (a batch's run).
        Run { len: usize, n: usize },
        /// A send of a slice too large to encode in place that fills the queue: written
        /// through with it (`fills_with`, `write_through`), the rest queued (`push_written`).
        Through { len: usize },
        /// The queue is written to a socket that takes `room` bytes, at most `step` at a
        /// time, then is full.
        Write { room: usize, step: usize },
        /// The connection breaks: the frames not written whole come back (`into_frames`)
        /// and go, in order, into the next connection's queue.
        Break,
    }

    /// How many of `frames`, from the first, lie wholly in the first `written` bytes of
    /// their stream.
    fn written_whole(frames: &[Transmit], written: usize) -> usize {
        let mut at = 0;
        frames
            .iter()
            .take_while(|t| {
                at += t.wire_len();
                at <= written
            })
            .count()
    }

    fn queue_op() -> impl proptest::strategy::Strategy<Value = QueueOp> {
        use proptest::prelude::*;
        let len = prop_oneof![
            6 => 0usize..=COALESCE_MAX,
            2 => (COALESCE_MAX + 1)..5000,
            1 => 5000usize..70_000,
        ];
        prop_oneof![
            8 => (len.clone(), any::<bool>())
                .prop_map(|(len, fragment)| QueueOp::Push { len, fragment }),
            1 => (0..=COALESCE_MAX).prop_map(|len| QueueOp::Fill { len }),
            2 => len.clone().prop_map(|len| QueueOp::Copy { len }),
            1 => (len, 1usize..2000).prop_map(|(len, n)| QueueOp::Run { len, n }),
            1 => (COALESCE_COPY_MAX + 1..70_000usize).prop_map(|len| QueueOp::Through { len }),
            4 => (0usize..200_000, 1usize..70_000)
                .prop_map(|(room, step)| QueueOp::Write { room, step }),
            1 => Just(QueueOp::Break),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(128))]

        /// Against a model (the frames queued on this connection, in order, and the bytes
        /// the socket took): whatever mix of frames, partial writes, writes-through and
        /// breaks, the socket gets a prefix of the frames' bytes, in order, each byte once;
        /// the queue counts what is left; a break gives back exactly the frames not written
        /// whole; the encoded small frames stay within about two pulls.
        #[test]
        fn a_stream_queue_under_any_mix_of_pushes_partial_writes_and_breaks_keeps_the_stream_whole(
            ops in proptest::collection::vec(queue_op(), 1..300),
        ) {
            let mut w = stream_queue();
            let mut queued: Vec<Transmit> = Vec::new();
            let mut out: Vec<u8> = Vec::new();
            let mut n = 0u32;
            let mut next = |len: usize, fragment: bool| {
                n += 1;
                let mut t = frame((n % 5) as u16, len, n as u8);
                t.header[8..12].copy_from_slice(&n.to_be_bytes());
                if fragment {
                    t.header[1] |= flags::MORE_FRAGMENTS | flags::CONTINUATION;
                }
                t
            };
            for op in ops {
                match op {
                    QueueOp::Push { len, fragment } => {
                        if w.wants_more() {
                            let t = next(len, fragment);
                            queued.push(t.clone());
                            w.push(t);
                        }
                    }
                    QueueOp::Fill { len } => {
                        while w.wants_more() {
                            let t = next(len, false);
                            queued.push(t.clone());
                            w.push(t);
                        }
                    }
                    QueueOp::Copy { len } => {
                        if w.wants_more() {
                            let t = next(len, false);
                            queued.push(t.clone());
                            if !w.push_inline_with(&t.payload, true, |h| *h = t.header) {
                                proptest::prop_assert!(len > COALESCE_COPY_MAX);
                                w.push(t);
                            }
                        }
                    }
                    QueueOp::Run { len, n } => {
                        let mut run = w.inline_run(true).unwrap();
                        for _ in 0..n {
                            let t = next(len, false);
                            if !run.push(&t.payload, |h| *h = t.header) {
                                break;
                            }
                            queued.push(t);
                        }
                        drop(run);
                    }
                    QueueOp::Through { len } => {
                        if w.fills_with(len) {
                            let t = next(len, false);
                            let went = w.write_through_with(
                                |iov| Ok(take(iov, usize::MAX, &mut out)),
                                &t.header,
                                &t.payload,
                            );
                            queued.push(t.clone());
                            if went < t.wire_len() {
                                w.push_written(t, went);
                            }
                        }
                    }
                    QueueOp::Write { room, step } => {
                        let mut left = room;
                        let done = w
                            .write_with(|iov| {
                                if left == 0 {
                                    return Err(io::ErrorKind::WouldBlock.into());
                                }
                                let k = take(iov, left.min(step), &mut out);
                                left -= k;
                                Ok(k)
                            })
                            .unwrap();
                        proptest::prop_assert_eq!(done, w.bytes() == 0);
                    }
                    QueueOp::Break => {
                        let back: Vec<Transmit> =
                            std::mem::replace(&mut w, stream_queue()).into_frames().collect();
                        let want = &queued[written_whole(&queued, out.len())..];
                        proptest::prop_assert_eq!(back.len(), want.len());
                        for (b, t) in back.iter().zip(want) {
                            proptest::prop_assert_eq!(b.header, t.header);
                            proptest::prop_assert_eq!(&b.payload, &t.payload);
                        }
                        for t in back.iter().cloned() {
                            w.push(t);
                        }
                        queued = back;
                        out.clear();
                    }
                }
                let expect = wire(&queued);
                proptest::prop_assert!(out.len() <= expect.len());
                proptest::prop_assert!(out[..] == expect[..out.len()], "the stream diverged");
                proptest::prop_assert_eq!(w.bytes(), expect.len() - out.len());
                let whole = written_whole(&queued, out.len());
                proptest::prop_assert_eq!(w.frames(), queued.len() - whole);
                proptest::prop_assert!((PULL_BYTES..=PULL_MAX).contains(&w.pull));
                proptest::prop_assert!(
                    w.inline.len() <= 2 * (PULL_BYTES + HEADER_LEN + COALESCE_COPY_MAX),
                    "{} bytes of small frames encoded",
                    w.inline.len()
                );
            }
        }
    }
}
