//! Drivers: what runs a [`duct_proto::Session`] against a transport.
//!
//! - [`conn`]: an established connection. The caller's thread does the I/O when it is there
//!   (the inline fast path: `send` writes, `recv` reads, no hand-off between threads); the
//!   [`reactor`] does what must happen while nobody calls (read ahead into the receive queue
//!   up to its high-water mark, answer PINGs, flush queued output, fire session timers).
//! - [`handshake`]: a connection whose handshake is under way.
//! - [`io`]: the receive buffer and the write queue.
//! - [`wakers`]: the wakers of pending async calls, beside the condition variables that
//!   blocking calls wait on.
//! - [`sys`]: what the reactor registers for a transport, one module per OS (an fd on Unix; on
//!   Windows a socket's watch, which the socket's own calls re-arm after `WouldBlock`, or a
//!   named pipe registered for life), and on Linux the io_uring backend.
//! - [`backend`]: which poller the reactor threads run on (epoll through mio, or io_uring),
//!   chosen once per process.
//!
//! # The driver contract
//! A stream transport (tcp, uds, tls, Windows named pipes) plugs in by
//! implementing [`StreamTransport`]: a readiness source the reactor can watch, a receive into
//! a buffer's spare capacity, a non-blocking vectored send, a bounded wait for readiness (for
//! callers that block), and shutdown. Nothing in the Session or the public API changes when a
//! transport is added. Transports that carry whole frames (shared memory) will get a sibling
//! contract, [`FrameIo`], that hands the Session frames instead of bytes.
//!
//! The contract is the same on every OS; what differs is below it:
//! - **Unix**: the readiness source is an fd (epoll/kqueue, edge-triggered); single calls are
//!   made non-blocking with `MSG_DONTWAIT` whatever the socket's mode, and blocking calls
//!   block in the kernel. The implementations are in `transport/unix.rs`.
//! - **Windows** (tcp and tls): the readiness source is a socket with its
//!   `sys::SocketWatch`; the socket is non-blocking from the start (Winsock has no
//!   `MSG_DONTWAIT`), a call that returns `WouldBlock` re-arms the watch before it returns,
//!   and a blocking call waits with `WSAPoll` (in short slices, so that a local shutdown wakes
//!   it: Winsock does not promise to). The implementations are in `transport/windows.rs`.
//! - **Windows** (named pipes): the readiness source is the pipe's own reactor source
//!   (`sys::PipeSource`), which moves bytes between mio's `NamedPipe` and two buffers on its
//!   reactor thread and reports readable (bytes, or the end, came in) and writable (room in
//!   the write buffer again) to the source that watches it; a blocking call waits on its
//!   condition variable. The implementation is in `transport/pipe.rs`.
//!
//! Either way the driver sees edge-triggered readiness: one event per new readiness after a
//! call returned `WouldBlock`, and a fresh registration reports what is already there. On
//! Linux the reactor's io_uring backend (a multishot poll per fd) keeps the same contract.

pub(crate) mod backend;
pub(crate) mod conn;
pub(crate) mod handshake;
pub(crate) mod io;
pub(crate) mod reactor;
pub(crate) mod reconnect;
pub(crate) mod sys;
pub(crate) mod wakers;

use std::io::IoSlice;
use std::time::Instant;

use bytes::BytesMut;

use crate::{Addr, Error, ErrorKind};

/// What a stream transport provides to the driver. All methods take `&self`: one thread may
/// read while another writes.
pub(crate) trait StreamTransport: Send + Sync + 'static {
    /// What the reactor watches: the fd (Unix) or socket (Windows) whose readiness stands
    /// for the transport's.
    fn readiness(&self) -> sys::Readiness<'_>;
    /// One receive into the spare capacity of `buf` (the caller reserved room). `Ok(0)` is end
    /// of stream. With `nonblocking`, an empty transport is `WouldBlock`.
    fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> std::io::Result<usize>;
    /// One receive into the spare capacity of `direct`'s buffer, at most its limit, going on
    /// in the same call into that of `buf`'s, at most its limit (the caller reserved room in
    /// both): how many bytes each got, `(0, 0)` at end of stream. Transports that do not
    /// split a receive so (shared memory, which carries frames; Windows sockets) receive
    /// into `buf` only, as [`StreamTransport::recv_into`] does, whatever its limit: the
    /// session then takes what belongs in `direct` from there.
    fn recv_into_direct(
        &self,
        direct: (&mut BytesMut, usize),
        buf: (&mut BytesMut, usize),
        nonblocking: bool,
    ) -> std::io::Result<(usize, usize)> {
        let _ = direct;
        self.recv_into(buf.0, nonblocking).map(|n| (0, n))
    }
    /// One vectored send that never blocks; a full transport is `WouldBlock`.
    fn send_vectored(&self, iov: &[IoSlice<'_>]) -> std::io::Result<usize>;
    /// Waits until readable (or closed) or `deadline` passes (`None`: no deadline).
    /// Returns whether it became readable.
    fn wait_readable(&self, deadline: Option<Instant>) -> std::io::Result<bool>;
    /// Waits until readable or writable (or closed) or `deadline` passes. Returns whether it
    /// became ready. (A dialer's handshake, while its HELLO is not all written.)
    fn wait_io(&self, deadline: Option<Instant>) -> std::io::Result<bool>;
    /// Waits until a socket found full is writable again (or closed) or `deadline` passes:
    /// `Ok(true)` when it became ready (the next write takes bytes or reports why not).
    /// `Unsupported` at once for transports a sender does not wait for this way (shared
    /// memory, which has [`FrameIo::wait_room`]; Windows named pipes, whose writes complete
    /// in the background): the caller queues what it has.
    fn wait_writable(&self, deadline: Instant) -> std::io::Result<bool> {
        let _ = deadline;
        Err(std::io::ErrorKind::Unsupported.into())
    }
    /// Bytes received by the operating system and not yet read (0 if unknown), plus what
    /// the transport buffers itself.
    fn pending_input(&self) -> usize;
    /// Whether input waits in the transport's own buffers (TLS: decrypted or undecrypted
    /// bytes in user space), where the readiness fd cannot show it: a read returns data even
    /// if the fd does not become readable.
    fn buffered_input(&self) -> bool;
    /// Writes output the transport buffered itself (TLS records the socket did not take).
    /// `Ok(true)` when none is left; `Ok(false)` when the socket is full (wait until it is
    /// writable and call again).
    fn flush_backlog(&self) -> std::io::Result<bool>;
    /// The frame interface of a transport that carries frames; `None` for byte streams.
    fn frame_io(&self) -> Option<&dyn FrameIo> {
        None
    }
    /// Whether a receive that returns data without filling the buffer found the transport
    /// empty, so that whatever arrives after it raises a new readiness event: a plain
    /// socket's `recv` copies all it holds up to the buffer's room (tcp, uds). Then the
    /// reactor's read stops there, without a `recv` that only says `WouldBlock`. `false` for
    /// the rest (TLS may hold decrypted bytes the fd cannot show; a frame transport is
    /// watched again only once a receive found nothing; on Windows mio reports readiness
    /// again only after an operation said `WouldBlock`).
    fn short_read_drains(&self) -> bool {
        false
    }
    /// Whether a vectored write of a frame's header and payload, two slices, costs what a
    /// write of one buffer does (tcp, uds, named pipes): then a send with nothing queued
    /// writes the frame from the message's own memory. `false` for the rest (TLS: rustls
    /// gathers the slices of a vectored write into a `Vec` it allocates each time; a frame
    /// transport has no byte writes).
    fn writes_slices(&self) -> bool {
        false
    }
    /// The socket a reactor thread may receive from through its io_uring ring in place of
    /// [`StreamTransport::recv_into`] (batched with other pipes' receives): transports whose
    /// receive is one plain `recv` of the socket (tcp, uds). `None` for the rest (TLS
    /// decrypts what it reads; shared memory carries frames).
    #[cfg(duct_uring)]
    fn ring_socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// The peer process's credentials, where the transport reports them (Unix sockets).
    fn peer_credentials(&self) -> Option<crate::PeerCredentials>;
    /// Shuts both directions down, waking every thread blocked on the transport.
    fn shutdown(&self);
    /// Shuts the receiving direction down, waking threads blocked in a receive; sending
    /// still works.
    fn shutdown_read(&self);
    /// This end's address.
    fn local_addr(&self) -> Addr;
    /// The peer's address.
    fn peer_addr(&self) -> Addr;
}

/// A frame from a transport that carries frames (shared memory): the encoded header and
/// where the payload is.
pub(crate) struct RawFrame {
    pub(crate) header: [u8; duct_proto::wire::HEADER_LEN],
    pub(crate) payload: FramePayload,
}

/// What a frame transport's receive ([`FrameIo::recv_frames`]) does when no frame is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(duct_shm), allow(dead_code))]
pub(crate) enum FrameRead {
    /// Waits (spinning, then parked) until frames come or the peer is gone.
    Wait,
    /// Returns `WouldBlock`, having asked the peer to make the transport's fd readable when
    /// frames come (shm: a byte on the control socket, a system call on the peer's side):
    /// for a reader that waits for the reactor to hear of input (the reactor itself, an
    /// async receive). Reads the control socket first (an end, or signals to clear).
    Signal,
    /// Returns `WouldBlock` and asks for nothing: for a caller that polls, and looks again
    /// by itself (a ring is looked at without a system call). `drain`: read the control
    /// socket first (the reactor reported it readable since the last look: a signal to
    /// clear, or the peer's end).
    Look { drain: bool },
}

/// Where a [`RawFrame`]'s payload is.
#[cfg_attr(not(duct_shm), allow(dead_code))]
pub(crate) enum FramePayload {
    /// In bytes of its own (a view of a pool slot, or nothing).
    Own(bytes::Bytes),
    /// At `start..start + len` of the chunk the frames of one receive share (payloads
    /// copied out of the ring together: see [`FrameIo::recv_frames`]), handed to the
    /// session as parts of it (no reference count per message).
    InChunk { start: u32, len: u32 },
}

/// A frame transport's private state for one direction (its end of a ring, say), kept by
/// the driver in the buffer it reads into or the queue it writes from. The driver already
/// lets one caller at a time read (write), and that caller alone holds the buffer (queue),
/// so the transport needs no lock of its own around the state. Empty until the
/// transport's first call fills it; the transport checks that the state is its own.
#[derive(Default)]
#[cfg_attr(not(duct_shm), allow(dead_code))]
pub(crate) struct FrameSide {
    /// Whose state `state` is, in the transport's own numbering of its connections.
    pub(crate) owner: u64,
    /// (A type of the transport's, not `dyn Any`: a downcast is a virtual call, and sends of
    /// slices reach the state once per message.)
    pub(crate) state: Option<Box<SideState>>,
}

/// What a [`FrameSide`] holds.
#[cfg(duct_shm)]
pub(crate) type SideState = crate::transport::shm::SideState;
/// What a [`FrameSide`] holds (nothing: no frame transport in this build).
#[cfg(not(duct_shm))]
pub(crate) type SideState = std::convert::Infallible;

/// What a frame transport (shared memory) provides beside [`StreamTransport`]: whole frames
/// in and out instead of bytes. Its readiness fd signals both directions (a wake-up byte when
/// frames arrive or room appears), so the driver watches it for readability only.
pub(crate) trait FrameIo {
    /// Sends frames from `frames` without blocking, in order, until one finds no room, and
    /// publishes them together (one wake-up of the peer per call). Returns how many were sent
    /// and whether all were; when not, the readiness fd becomes readable once there is room.
    /// `side` is the sending state, the same on every call for this transport.
    fn push_many(
        &self,
        side: &mut FrameSide,
        frames: &mut dyn Iterator<Item = &duct_proto::Transmit>,
    ) -> std::io::Result<(usize, bool)>;
    /// [`FrameIo::push_many`] for one frame: whether it was sent (`Ok(false)`: no room). (A
    /// send's own frame, on the critical path of a round trip: no iterator to call through.)
    fn push_frame(
        &self,
        side: &mut FrameSide,
        frame: &duct_proto::Transmit,
    ) -> std::io::Result<bool>;
    /// Sends one frame with a copy of `payload`, if there is room now (`Ok(false)`: there is
    /// not), without waking the peer: [`FrameIo::publish`] does, once for a run of them. The
    /// caller sends nothing else meanwhile (frames go in the order they are pushed).
    fn push_copy(
        &self,
        side: &mut FrameSide,
        header: &[u8; duct_proto::wire::HEADER_LEN],
        payload: &[u8],
    ) -> std::io::Result<bool>;
    /// Wakes the peer, if it waits, for the frames [`FrameIo::push_copy`] sent.
    fn publish(&self, side: &mut FrameSide) -> std::io::Result<()>;
    /// After [`FrameIo::push_copy`] found no room: wakes the peer for what was sent and waits
    /// a little (the pipe's spin, not past `deadline`) for room for a frame with `len`
    /// payload bytes. `Ok(false)`: no room came (the caller queues the frame).
    fn wait_room(
        &self,
        side: &mut FrameSide,
        len: usize,
        deadline: std::time::Instant,
    ) -> std::io::Result<bool>;
    /// Takes up to `max` frames into `out`, and into `chunk` the bytes their
    /// [`FramePayload::InChunk`] payloads are in (`out` and `chunk` are empty when called:
    /// the frames of one call are handed to the session before the next). `Ok(0)` is the
    /// end (the peer is gone); unless `how` is [`FrameRead::Wait`], nothing there is
    /// `WouldBlock`. `side` is the receiving state, the same on every call for this
    /// transport.
    fn recv_frames(
        &self,
        side: &mut FrameSide,
        out: &mut std::collections::VecDeque<RawFrame>,
        chunk: &mut bytes::Bytes,
        max: usize,
        how: FrameRead,
    ) -> std::io::Result<usize>;
    /// A pool slot for a payload of `len` bytes written in place (`Pipe::alloc`), if one is
    /// free.
    #[cfg_attr(not(duct_shm), allow(dead_code))]
    fn alloc(&self, len: usize) -> Option<duct_sys::shm::pool::TxSlot>;
    /// What the transport counted so far on this connection (see [`FrameCounts`]).
    fn counts(&self) -> FrameCounts;
}

/// A frame transport's own counters for one connection, added to the pipe's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FrameCounts {
    /// Frames whose payload was copied into the transport's memory.
    pub(crate) copied_frames: u64,
    /// Those frames' payload bytes.
    pub(crate) copied_bytes: u64,
    /// Frames that moved without a copy.
    pub(crate) lent_frames: u64,
    /// Wake-up signals sent to the peer through the transport's own channel (shm: a byte on
    /// the control socket, a system call).
    pub(crate) signals: u64,
}

impl FrameCounts {
    /// Adds these to `stats` (the current connection's to a snapshot, or an old
    /// connection's to the pipe's totals when it is replaced).
    pub(crate) fn add_to(&self, stats: &mut crate::PipeStats) {
        stats.payload_frames_copied += self.copied_frames;
        stats.payload_bytes_copied += self.copied_bytes;
        stats.zero_copy_frames += self.lent_frames;
        stats.wake_signals += self.signals;
    }
}

/// Turns a protocol error into the public error, naming the peer.
pub(crate) fn proto_error(e: duct_proto::Error, peer: &dyn std::fmt::Display) -> Error {
    use duct_proto::Category;
    let kind = match e.category() {
        Category::Protocol => ErrorKind::Protocol,
        Category::Incompatible => ErrorKind::Incompatible,
        Category::MessageTooLarge => ErrorKind::MessageTooLarge,
        Category::PermissionDenied => ErrorKind::PermissionDenied,
        Category::Unavailable => ErrorKind::ConnectionRefused,
        Category::TimedOut => ErrorKind::TimedOut,
        Category::Closed => ErrorKind::Closed,
        Category::Disconnected => ErrorKind::Disconnected,
        Category::Unsupported => ErrorKind::Unsupported,
    };
    Error::new(kind, format!("{peer}: {e}"))
}
