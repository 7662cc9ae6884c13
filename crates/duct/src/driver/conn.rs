//! One established connection: the caller's inline fast path, plus the reactor's duties.
//!
//! **Inline fast path.** `send` queues the message in the session and, if no other thread is
//! writing, writes everything queued on the caller's thread (one `sendmsg` for many frames).
//! `recv` returns a delivered message at once, or reads from the socket on the caller's thread
//! (one read can bring many messages). No message is handed between threads when the caller
//! can take it directly. Two flags under the connection's lock (`reading`, `writing`) make
//! sure only one thread reads and one writes at a time; a condition variable wakes the others.
//!
//! **Reactor duties** (see [`super::reactor`]): while no caller is active, the reactor reads
//! ahead into the receive queue up to its high-water mark (answering PINGs on the way), writes
//! output that a caller left queued when the socket was full, and fires the session's timers.
//! So `send` never waits for the socket: a full socket leaves the frames queued for the
//! reactor, and `send` only waits when the bounded send queue is full.
//!
//! **Staying out of the caller's way.** The reactor watches a socket for readability only
//! while no caller has read from it recently. When it sees a caller active (a recv since the
//! reactor armed, or a caller reading now), it stops watching and looks again every
//! [`RECHECK`]: while the application receives, the reactor costs one wake-up per `RECHECK`,
//! not one per message. (Re-arming registers the fd afresh, which reports data that arrived
//! meanwhile, so nothing is missed.)
//!
//! **Async calls** (`recv_async`, `send_async`) never block: a poll does what a blocking call
//! would do without waiting (take a queued message, read or write what the transport takes
//! now, offer the message to its send queue) and, where the blocking call would wait on the
//! condition variable, registers the task's waker in [`WakerSet`] instead. Every place that
//! notifies the condition variable wakes those too (`notify`), except where nothing an async
//! call waits for changed (a read that found nothing, a flush that wrote nothing: waking
//! would only have the woken read or flush again, in turn). While an async receive waits,
//! the reactor reads for it (see "Staying out of the caller's way": an async caller does not
//! count as active then); an async call's timeout is a reactor timer (`reschedule`).
//!
//! **Close** queues CLOSE behind everything already queued, waits up to the linger time for
//! the queue to drain, then shuts the socket down: every thread blocked on the pipe wakes.
//!
//! One lock: `shared`. The read buffer and the write queue have none of their own: a reader
//! (writer) sets `reading` (`writing`) under `shared` and takes the buffer (queue) out of it,
//! and puts it back before clearing the flag, so that it may read (write) while others use
//! the pipe. Nobody else touches them meanwhile: whoever wants to checks the flag first.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::lifecycle::{Change, Ignored, Lifecycle, Next, Phase, Policy};
use duct_proto::qos::{Admission, ChannelMap, DropReason};
use duct_proto::wire::control::caps;
use duct_proto::wire::HEADER_LEN;
use duct_proto::{Delivered, Direct, DirectRun, Event, ReceiveSink, Received, Session, Transmit};
use mio::Interest;

use super::handshake::Handshake;
use super::io::{with_transport, ReadBuf, WriteQueue};
use super::reactor::{self, Reactive, ReactorHandle};
use super::reconnect;
use super::wakers::{WaitFor, WakerSet};
use super::{proto_error, FrameRead, StreamTransport};
use crate::observability;
use crate::{Addr, ChannelStats, Error, ErrorKind, PipeState, PipeStats, StateChange};
use duct_proto::wire::control::close_code;

/// What became of a message offered by the direct path ([`Conn::offer_direct`]).
enum Offer {
    /// Framed at once: to be written first.
    Framed(Transmit),
    /// Accepted by its channel's queue, or dropped by the channel's policy (counted).
    Taken,
    /// The channel's queue is full: the message, handed back.
    Full(Bytes),
}

/// How often the reactor looks again at a pipe whose receiving it left to an active caller.
pub(crate) const RECHECK: Duration = Duration::from_millis(20);
/// The longest a batch's sender waits at a time for a full socket to take bytes again
/// ([`Conn::wait_socket_room`]) before it queues what is left: long enough for a reader on
/// the same CPU to drain a good part of a Unix socket's buffer (~200 KiB at ~1 GB/s), short
/// enough that a reader that stopped costs the call little.
const SOCKET_ROOM_WAIT: Duration = Duration::from_micros(200);

/// A call of `send_batch` (or `send_slices`) that finds the transport full waits for it to
/// take more ([`Conn::wait_socket_room`], [`WriteQueue::wait_room`]) only if it has at least
/// this many messages: a stream's large batch, which would otherwise be copied into the
/// channel's queue (to its last message: a tail that found the transport full and was
/// queued would send the next call the queue's way too). A smaller call is queued and
/// returns at once: a sender serving many pipes in turn (a game server's clients) is not
/// held up by one whose reader is slow. (`duct bench --pattern scale`, 1,000 tcp pipes, 16
/// messages a call: waiting there cut the total rate by about a quarter.)
const ROOM_WAIT_MIN_MSGS: usize = 64;

/// While reading is paused (a receive queue is full), how often the reactor notes how much
/// input waits in the transport, so that time to live counts the wait there (to this
/// precision).
const AGE_SAMPLE: Duration = Duration::from_millis(10);

/// Callbacks and limits of one connection, taken from its options.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    /// Largest message this side sends (checked while no connection is up; the session
    /// checks the peer's limit too).
    pub(crate) max_message_size: usize,
    /// Default deadline of `send` when the caller gives none.
    pub(crate) send_timeout: Duration,
    /// Default linger of `close`.
    pub(crate) linger: Duration,
    /// What the pipe does when its connection breaks.
    pub(crate) policy: Policy,
    pub(crate) on_state_change: Option<crate::options::StateCallback>,
    pub(crate) on_error: Option<crate::options::ErrorCallback>,
    /// How to connect again after a break (dialed pipes with a `Reconnect`).
    pub(crate) redial: Option<Arc<crate::pipe::Redial>>,
    /// The pipe's identity on both ends: the dialer's instance id.
    pub(crate) pipe_id: u64,
    /// Accepted pipes: the listener's count of live pipes (this one counts until dropped).
    pub(crate) live: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

struct Shared {
    session: Session,
    /// Where payloads copied from slices ([`OutPayload`] for `&[u8]`) that must wait in a
    /// channel's queue are kept.
    spill: Spill,
    /// The pipe's state across connections.
    life: Lifecycle,
    /// A caller or the reactor reads (and holds `rbuf`).
    reading: bool,
    /// The read buffer, here while nobody reads: a reader takes it out and puts it back when
    /// it has fed what it read to the session, so the buffer needs no lock of its own.
    rbuf: Option<Box<ReadBuf>>,
    /// The read buffer of the reactor's read whose receive is in its thread's io_uring ring
    /// (its `data` lent out), and whether the pipe was open when that read began (`reading`
    /// stays set until the receive completes: [`Reactive::on_recv`]).
    /// Also the count of readability events when it began (`read_events`).
    #[cfg(duct_uring)]
    ring_read: Option<(Box<ReadBuf>, bool, u64)>,
    /// A writer (who set `writing`) lent the write queue to its reactor thread's io_uring
    /// ring, which sends from it (`wq` is then an empty stand-in): whether
    /// that flush had made progress before (see [`Reactive::on_send`]).
    #[cfg(duct_uring)]
    ring_write: Option<bool>,
    /// The stand-in left in `wq` while the queue is lent, kept between sends.
    #[cfg(duct_uring)]
    spare_wq: Option<Box<WriteQueue>>,
    /// The pipe ended while its write queue was in the ring: when the send completes, write
    /// what is left (the CLOSE saying why) and shut the transport down.
    #[cfg(duct_uring)]
    shutdown_after_send: bool,
    /// A caller or the reactor writes (and holds `wq`, or lent it to its ring).
    writing: bool,
    /// The write queue, here while nobody writes: a writer takes it out (`take_wq`) and puts
    /// it back when done, as a reader does `rbuf`. No lock of its own: taking one cost a
    /// frame transport's send, which writes under this lock anyway, ~23 ns (of a 64 B shm
    /// round trip's 1.2 us, twice).
    wq: Option<Box<WriteQueue>>,
    /// Bytes in the write queue (mirrors `WriteQueue::bytes`, readable while a writer holds
    /// it).
    wq_bytes: usize,
    wq_frames: usize,
    /// Threads waiting on the condition variable.
    waiters: usize,
    /// Pending async calls, woken wherever the condition variable is notified.
    wakers: WakerSet,
    /// Why the connection ended; every later call returns it.
    terminal: Option<Error>,
    /// `close` was called: its code and reason.
    local_closed: Option<(u16, String)>,
    stats: PipeStats,
    channels: ChannelTable,
    /// Callbacks to run once the lock is released.
    pending_callbacks: Vec<StateChange>,
    /// Errors the reactor found while no caller was there (heartbeat loss, the peer gone),
    /// for `on_error` once the lock is released.
    pending_errors: Vec<Error>,
    // Reactor bookkeeping.
    /// What is registered with the reactor's poller now.
    registered: Option<Interest>,
    /// The reactor watches readability.
    read_armed: bool,
    /// Output is queued and nobody is writing: the reactor watches writability.
    write_armed: bool,
    /// How much of the write queue had been written ([`WriteQueue::written`]) when a sender
    /// last waited for the socket to take more and none went ([`Conn::wait_socket_room`]):
    /// until a write takes some, the socket is taken to be stuck (a reader that stopped) and
    /// no sender waits again.
    room_stalled: Option<u64>,
    /// A frame transport signalled room while another thread was writing: that thread tries
    /// again before it leaves the rest to the reactor (the signal is a byte the reactor may
    /// have read already, so nothing else would repeat it).
    write_kick: bool,
    /// Receive calls by the application so far.
    caller_reads: u64,
    /// `caller_reads` when the reactor last armed or looked.
    seen_reads: u64,
    /// Receive calls by the application that may wait (not `try_recv`-like) so far.
    blocking_reads: u64,
    /// `blocking_reads` when the reactor last looked.
    seen_blocking: u64,
    /// Readability events the reactor reported so far.
    read_events: u64,
    /// `read_events` when a caller's poll of a frame transport last read its control socket
    /// (see `FrameRead::Look`): it reads it again once the reactor reports it readable.
    looked_events: u64,
    /// `read_events` before the last read that found the transport empty (`None`: it was
    /// not, or is not known to be). While the reactor watches readability and no event has
    /// come since, the transport is still empty: a receive that does not wait returns at
    /// once, without a system call (an application polling many pipes).
    empty_at: Option<u64>,
    /// The reactor's next read goes on until the transport says `WouldBlock` or ends, even
    /// past a read that left room in the buffer (see `StreamTransport::short_read_drains`):
    /// the event that woke it reported the peer's hang-up, and an end that came with the
    /// last bytes raises no event of its own.
    read_to_end: bool,
    /// When the reactor looks again at a pipe it left to its caller.
    recheck_at: Option<Instant>,
    /// While paused: when to sample again what waits unread in the transport.
    sample_at: Option<Instant>,
    /// The earliest timer scheduled with the reactor and not yet fired.
    timer_at: Option<Instant>,
    /// The last handle was dropped: the reactor writes what is queued until this instant.
    linger_until: Option<Instant>,
    // Reconnecting.
    /// Messages received on an earlier connection, not yet delivered.
    carry: VecDeque<Delivered>,
    /// A receive call's counts of channels other than its current run's (see `Take`).
    runs: Vec<Run>,
    /// What broke the last connection (for the error when the pipe ends while reconnecting).
    break_cause: Option<Error>,
    /// Writes that failed so far: a sender tells its own failure from the pipe ending
    /// otherwise meanwhile.
    write_failures: u64,
    /// When the pipe publishes its figures to the `metrics` recorder next.
    #[cfg(feature = "metrics")]
    publish_at: Option<Instant>,
    /// A publication is due once the lock is released (see `run_callbacks`).
    #[cfg(feature = "metrics")]
    publish_due: bool,
    /// Accepted pipes: the session ids a reconnecting dialer may name to resume this pipe.
    /// The current one, and those before it back to the last one the dialer was seen to use:
    /// a dialer whose connection broke before our WELCOME reached it still names the older
    /// one. Bounded by [`MAX_RESUME_IDS`].
    resume_ids: Vec<u64>,
}

/// Most session ids an accepted pipe keeps for a dialer that resumes (see `resume_ids`).
const MAX_RESUME_IDS: usize = 16;

/// Per-channel counters (traffic comes in runs: see [`ChannelMap`]).
#[derive(Default)]
struct ChannelTable {
    map: ChannelMap<ChannelStats>,
    /// Of each channel's `dropped`: lost with a connection or the end of the pipe (metrics
    /// tell drops apart by reason).
    #[cfg(feature = "metrics")]
    lost: ChannelMap<u64>,
}

impl ChannelTable {
    #[inline]
    fn get(&mut self, channel: u16) -> &mut ChannelStats {
        self.map.get_or_insert_with(channel, ChannelStats::default)
    }

    fn snapshot(&self) -> Vec<(u16, ChannelStats)> {
        self.map.iter().map(|(c, s)| (c, *s)).collect()
    }
}

/// Messages of one channel counted together (traffic comes in runs), so that the counters
/// are touched once per run instead of once per message.
#[derive(Clone, Copy, Default)]
struct Run {
    channel: u16,
    msgs: u64,
    bytes: u64,
}

impl Run {
    fn start(channel: u16, len: usize) -> Run {
        Run {
            channel,
            msgs: 1,
            bytes: len as u64,
        }
    }

    /// Adds a message if it continues the run (or the run is empty).
    #[inline]
    fn add(&mut self, channel: u16, len: usize) -> bool {
        if self.msgs != 0 && self.channel != channel {
            return false;
        }
        self.channel = channel;
        self.msgs += 1;
        self.bytes += len as u64;
        true
    }
}

/// A payload [`Conn::send_batch`] takes: bytes shared with the caller ([`Bytes`]), or a
/// slice it copies (`&[u8]`: into the write queue's buffer when it is framed at once, else
/// into bytes of its own).
pub(crate) trait OutPayload {
    /// The payload is a slice that is copied wherever it goes (never a slot of a shared
    /// memory pool, which moves without a copy).
    const COPIED: bool;
    fn len(&self) -> usize;
    fn as_slice(&self) -> &[u8];
    /// The payload as bytes of its own: itself, or a copy (a small one into `spill`).
    fn into_bytes(self, spill: &mut Spill) -> Bytes;
    /// Records the payload of the reliable message numbered `seq` (framed already) as sent:
    /// itself, or a copy in the outbox's keep ring.
    fn keep(self, session: &mut Session, seq: u64, channel: u16, now: Instant);
}

impl OutPayload for Bytes {
    const COPIED: bool = false;

    #[inline]
    fn len(&self) -> usize {
        Bytes::len(self)
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        self
    }

    #[inline]
    fn into_bytes(self, _: &mut Spill) -> Bytes {
        self
    }

    #[inline]
    fn keep(self, session: &mut Session, seq: u64, channel: u16, now: Instant) {
        session.record_direct(seq, channel, self, now);
    }
}

/// Copies of at most this many bytes share a [`Spill`] buffer; larger ones get their own.
const SPILL_MAX: usize = 4096;
/// The size of a [`Spill`] buffer.
const SPILL_CHUNK: usize = 64 * 1024;
/// [`Spill`] buffers kept for reuse, free or with copies that still wait (a reliable channel
/// keeps its messages until they are acknowledged: 16384 in flight by default, 1 MiB of 64 B
/// ones, 16 buffers). Beyond this many the oldest is let go (its memory goes with its last
/// copy); once no buffer was started for a second, free ones beyond one are
/// ([`Spill::trim_if_idle`]).
const SPILL_SPARES_MAX: usize = 24;
/// Copies larger than [`SPILL_MAX`] and at most this large get a buffer of their own, kept
/// for another copy once this one is gone; larger ones are allocated each time.
const SPILL_BIG_MAX: usize = 1 << 20;
/// Buffers of large copies kept for reuse, free or in use: twice as many as a channel's
/// send queue holds by default ([`duct_proto::qos::DEFAULT_HWM_MSGS`]), since a stream of
/// large slices that waits for the socket has that many copies queued, and more on their
/// way out. A copy made while this many are kept and none is free gets a buffer that is
/// not kept. Free ones go once the pipe is idle for [`SPILL_IDLE`].
const SPILL_BIG_SPARES_MAX: usize = 2 * duct_proto::qos::DEFAULT_HWM_MSGS;

/// How long [`Spill`] goes without starting a buffer before its free spares but one go.
const SPILL_IDLE: Duration = Duration::from_secs(1);

/// Buffers for copies of small payloads that wait in a channel's queue (see
/// [`OutPayload`]): copies share a buffer, and a buffer is reused once every copy made in it
/// was sent, so a sender whose messages often wait for the socket allocates nothing in the
/// steady state.
#[derive(Default)]
pub(crate) struct Spill {
    /// Where the next copy goes (none before the first).
    current: Option<BytesMut>,
    /// Filled buffers, reused when all their copies are gone (at most [`SPILL_SPARES_MAX`]).
    spares: Vec<BytesMut>,
    /// Buffers of single large copies, oldest first, reused when their copy is gone (at most
    /// [`SPILL_BIG_SPARES_MAX`]).
    big: VecDeque<BytesMut>,
    /// Buffers started so far (wrapping).
    rotations: u64,
    /// The count of `rotations` a timer last saw, and when it first saw it.
    idle_since: Option<(u64, Instant)>,
}

impl Spill {
    /// A copy of `bytes`, larger than [`SPILL_MAX`], in a buffer of its own: the oldest
    /// kept one if its copy is gone and it is large enough (copies wait in queues, first in
    /// first out: a stream of large slices that waits for the socket allocates nothing in
    /// the steady state), else a new one.
    fn copy_big(&mut self, bytes: &[u8]) -> Bytes {
        let len = bytes.len();
        if len > SPILL_BIG_MAX {
            return Bytes::copy_from_slice(bytes);
        }
        // The oldest few, in turn: a copy written at once is gone before older ones that
        // waited in a queue, so the order is only nearly first in, first out.
        let mut reuse = false;
        for _ in 0..self.big.len().min(4) {
            if self.big.front_mut().is_some_and(|b| b.try_reclaim(len)) {
                reuse = true;
                break;
            }
            self.big.rotate_left(1);
        }
        let mut buf = if reuse {
            self.big.pop_front().expect("checked")
        } else if self.big.len() == SPILL_BIG_SPARES_MAX {
            return Bytes::copy_from_slice(bytes);
        } else {
            self.rotations = self.rotations.wrapping_add(1);
            BytesMut::with_capacity(len)
        };
        buf.extend_from_slice(bytes);
        let copy = buf.split().freeze();
        self.big.push_back(buf);
        copy
    }

    /// A copy of `bytes` (at most [`SPILL_MAX`] of them) in a shared buffer.
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        let room = self.current.as_ref().map_or(0, BytesMut::capacity);
        if room < bytes.len() {
            self.rotate();
        }
        let current = self.current.get_or_insert_with(BytesMut::new);
        current.extend_from_slice(bytes);
        current.split().freeze()
    }

    /// Replaces the full current buffer with a free spare (reclaimed whole), or a new one.
    #[cold]
    fn rotate(&mut self) {
        self.rotations = self.rotations.wrapping_add(1);
        let free = self
            .spares
            .iter_mut()
            .position(|b| b.try_reclaim(SPILL_CHUNK));
        let next = match free {
            Some(i) => self.spares.remove(i),
            None => BytesMut::with_capacity(SPILL_CHUNK),
        };
        if let Some(full) = self.current.replace(next) {
            if self.spares.len() == SPILL_SPARES_MAX {
                // (Its memory goes with its last copy.)
                self.spares.remove(0);
            }
            self.spares.push(full);
        }
    }

    /// Lets go of the free spares but one once no buffer was started for [`SPILL_IDLE`]
    /// (called from the pipe's timers, `now` theirs), so that an idle pipe keeps at most two
    /// buffers of its own.
    pub(crate) fn trim_if_idle(&mut self, now: Instant) {
        if self.spares.len() <= 1 && self.big.is_empty() {
            return;
        }
        match self.idle_since {
            Some((rotations, since)) if rotations == self.rotations => {
                if now.saturating_duration_since(since) < SPILL_IDLE {
                    return;
                }
            }
            _ => {
                self.idle_since = Some((self.rotations, now));
                return;
            }
        }
        let mut kept_free = 0;
        self.spares.retain_mut(|b| {
            if !b.try_reclaim(SPILL_CHUNK) {
                return true; // copies in it still wait
            }
            kept_free += 1;
            kept_free <= 1
        });
        // (A free buffer reclaims at least one byte; one in use reclaims nothing.)
        self.big.retain_mut(|b| !b.try_reclaim(1));
    }
}

impl OutPayload for &[u8] {
    const COPIED: bool = true;

    #[inline]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        self
    }

    fn into_bytes(self, spill: &mut Spill) -> Bytes {
        if self.len() > SPILL_MAX {
            spill.copy_big(self)
        } else {
            spill.copy(self)
        }
    }

    #[inline]
    fn keep(self, session: &mut Session, seq: u64, channel: u16, now: Instant) {
        session.record_direct_copy(seq, channel, self, now);
    }
}

/// Where a receive call puts the messages it takes.
pub(crate) trait Sink {
    /// A message with a handle of its own (one carried over from an earlier connection, or
    /// taken alone).
    fn owned(&mut self, d: Delivered);
    /// A message from the session's queue, perhaps a place in bytes it shares.
    fn received(&mut self, r: Received<'_>);
}

/// One message (`recv`, `poll_recv`).
impl Sink for Option<Delivered> {
    #[inline]
    fn owned(&mut self, d: Delivered) {
        *self = Some(d);
    }

    #[inline]
    fn received(&mut self, r: Received<'_>) {
        *self = Some(r.into_delivered());
    }
}

/// The session's loops hand messages straight to a receive call's [`Take`] (inlined there:
/// no call per message).
impl<S: Sink + ?Sized> ReceiveSink for Take<'_, S> {
    #[inline(always)]
    fn deliver(&mut self, r: Received<'_>) {
        self.take(r);
    }
}

/// Hands received messages to a receive call's sink: traces and counts each.
struct Take<'a, S: ?Sized> {
    run: Run,
    /// Runs of one channel counted together; the (rare) others kept for after (in the
    /// pipe's own `Vec`, lent for the call: no allocation once it has grown).
    runs: Vec<Run>,
    span: &'a tracing::Span,
    sink: &'a mut S,
}

impl<'a, S: Sink + ?Sized> Take<'a, S> {
    /// Takes messages for `sink`, counting them in runs kept in the pipe's `Vec` (lent for
    /// the call: no allocation once it has grown); [`Take::count_into`] hands the counts back.
    #[inline]
    fn new(g: &mut Shared, span: &'a tracing::Span, sink: &'a mut S) -> Self {
        Take {
            run: Run::default(),
            runs: std::mem::take(&mut g.runs),
            span,
            sink,
        }
    }

    /// Counts what was taken in the pipe's stats, and gives its `Vec` back. Returns how
    /// many messages were taken.
    // (Inlined: called once per receive, and a `Take` passed by value is copied through
    // memory, a stall on every message.)
    #[inline(always)]
    fn count_into(self, g: &mut Shared) -> usize {
        let mut runs = self.runs;
        let mut taken = self.run.msgs;
        if !runs.is_empty() {
            // (Rare: messages of several channels in one call.)
            for r in runs.drain(..) {
                taken += r.msgs;
                g.count_received(r);
            }
        }
        g.runs = runs;
        g.count_received(self.run);
        taken as usize
    }

    /// Traces and counts a message of `len` bytes on `channel`.
    #[inline(always)]
    fn count(&mut self, channel: u16, len: usize) {
        tracing::trace!(
            name: "message_received",
            target: "duct::message",
            parent: self.span,
            channel,
            len,
            "message received"
        );
        if !self.run.add(channel, len) {
            self.runs.push(self.run);
            self.run = Run::start(channel, len);
        }
    }

    // (Inlined into the session's loop that hands out messages: a call less per message.)
    #[inline(always)]
    fn take(&mut self, r: Received<'_>) {
        self.count(r.channel, r.payload.len());
        self.sink.received(r);
    }

    /// [`Take::take`] for a message with a handle of its own.
    #[inline(always)]
    fn take_owned(&mut self, d: Delivered) {
        self.count(d.channel, d.payload.len());
        self.sink.owned(d);
    }
}

/// The application's name for a lifecycle phase.
fn pipe_state(phase: Phase) -> PipeState {
    match phase {
        Phase::Connecting => PipeState::Connecting,
        Phase::Connected => PipeState::Connected,
        Phase::Disconnected => PipeState::Disconnected,
        Phase::Reconnecting => PipeState::Reconnecting,
        Phase::Closed => PipeState::Closed,
    }
}

/// Whether RESUME was agreed on `session` (the current or last one of a pipe).
pub(crate) fn resumable(session: &Session) -> bool {
    session
        .negotiated()
        .is_some_and(|n| n.capabilities & caps::RESUME != 0)
}

impl Shared {
    fn state(&self) -> PipeState {
        pipe_state(self.life.phase())
    }

    /// Whether a send may take the direct path ([`Session::send_direct`], written at once):
    /// connected, open, nobody else writing, and the write queue empty. (A frame the socket
    /// did not take waits in the write queue; while it does, messages wait in their
    /// channel's queue, under its high-water mark and policy, not in the write queue.)
    #[inline]
    fn may_send_direct(&self) -> bool {
        !self.writing && self.wq_frames == 0 && self.open_and_connected()
    }

    /// Whether `channel` is under [`Backpressure::Block`](crate::Backpressure::Block): a send
    /// on it may wait (for queue room, and for a full transport to take more before it
    /// queues: see [`Conn::wait_socket_room`]); sends on the others never wait.
    fn blocks_when_full(&self, channel: u16) -> bool {
        self.session.outbox().config().channel(channel).backpressure == crate::Backpressure::Block
    }

    /// Neither failed nor closed here, and connected.
    fn open_and_connected(&self) -> bool {
        self.terminal.is_none()
            && self.local_closed.is_none()
            && self.state() == PipeState::Connected
    }

    /// A caller polls this pipe without waiting (`try_recv`), the reactor watches it for
    /// that caller with its recheck set, and nothing else is under way that a readability
    /// event would have to act on (a linger, an async receive, a frame transport's output).
    #[inline]
    fn polled_and_watched(&self, frames: bool) -> bool {
        self.read_armed
            && !frames
            && self.recheck_at.is_some()
            && self.linger_until.is_none()
            && self.caller_polls()
    }

    /// A caller receives without waiting (`try_recv`) since the reactor last looked, nobody
    /// reads right now and no async receive waits for messages.
    #[inline]
    fn caller_polls(&self) -> bool {
        !self.reading
            && self.caller_reads != self.seen_reads
            && self.blocking_reads == self.seen_blocking
            && !self.wakers.wants_messages()
    }

    fn count_sent(&mut self, run: Run) {
        if run.msgs == 0 {
            return;
        }
        self.stats.msgs_sent += run.msgs;
        self.stats.bytes_sent += run.bytes;
        let ch = self.channels.get(run.channel);
        ch.msgs_sent += run.msgs;
        ch.bytes_sent += run.bytes;
    }

    /// Moves the drop counters the session holds (policy, rate limit, TTL, lost,
    /// retransmits) into the pipe's, per channel and in all.
    fn collect_drops(&mut self) {
        let Shared {
            session,
            stats,
            channels,
            ..
        } = self;
        session.take_counts(&mut |channel, c| {
            let dropped = c.dropped + c.rate_limited + c.lost;
            stats.dropped += dropped;
            stats.rate_limited += c.rate_limited;
            stats.expired += c.expired;
            stats.retransmits += c.retransmits;
            let ch = channels.get(channel);
            ch.dropped += dropped;
            ch.rate_limited += c.rate_limited;
            ch.expired += c.expired;
            ch.retransmits += c.retransmits;
            #[cfg(feature = "metrics")]
            if c.lost > 0 {
                *channels.lost.get_or_insert_with(channel, || 0) += c.lost;
            }
        });
    }

    fn count_received(&mut self, run: Run) {
        if run.msgs == 0 {
            return;
        }
        self.stats.msgs_received += run.msgs;
        self.stats.bytes_received += run.bytes;
        let ch = self.channels.get(run.channel);
        ch.msgs_received += run.msgs;
        ch.bytes_received += run.bytes;
    }
}

pub(crate) struct Conn {
    /// The connection's transport; replaced when the pipe reconnects.
    transport: RwLock<Arc<dyn StreamTransport>>,
    /// [`Conn::would_block`]'s error, made with the pipe.
    would_block: Error,
    shared: Mutex<Shared>,
    cv: Condvar,
    local_addr: Addr,
    /// The peer's address on the current connection (a resumed or reconnected pipe's
    /// changes with it).
    peer_addr: RwLock<Addr>,
    /// The peer as error messages name it: its address, or for an unnamed peer (a Unix
    /// socket dialer) the socket it connected to.
    who: String,
    config: ConnConfig,
    /// Set when `pending_callbacks` is not empty, so the hot path skips the lock.
    callbacks_pending: AtomicBool,
    /// The transport carries frames (shm): its readable fd also signals room for output.
    /// Fixed for the pipe's life: a reconnect or resume comes through the same endpoint.
    frames: bool,
    /// The transport writes a frame's header and payload as cheaply as one buffer (see
    /// `StreamTransport::writes_slices`). Fixed for the pipe's life, as `frames`.
    slices: bool,
    /// The transport is a plain socket a reactor's io_uring ring can read (tcp, uds; not TLS
    /// or shm). Fixed for the pipe's life, as `frames`.
    ring: bool,
    reactor: OnceLock<ReactorHandle>,
    me: Weak<Conn>,
    /// The pipe's span: the parent of every event about the pipe (see `crate::observability`).
    span: tracing::Span,
    /// The pipe's handles in the `metrics` recorder (`None`: publication is off).
    #[cfg(feature = "metrics")]
    metrics: Option<crate::observability::PipeMetrics>,
}

/// What a send asks of one message beyond its channel's settings.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    /// Overrides the channel's time to live.
    pub(crate) ttl: Option<Duration>,
    /// Overrides the channel's delivery (reliable or realtime).
    pub(crate) reliable: Option<bool>,
}

/// How `recv` may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Do not block.
    No,
    /// Until the deadline.
    Until(Instant),
    /// Until a message, close or error.
    Forever,
}

/// An async call that may have to wait: the waker to register and the future's slot in the
/// pipe's [`WakerSet`] (allocated on its first wait; the future frees it with
/// [`Conn::forget_waiter`]).
pub(crate) struct Park<'a> {
    pub(crate) waker: &'a Waker,
    pub(crate) key: &'a mut Option<usize>,
    /// When the call times out: a reactor timer wakes it then.
    pub(crate) deadline: Option<Instant>,
}

/// What became of a message offered to its send queue.
enum Admitted<'a> {
    /// Accepted (queued, or dropped by the channel's policy).
    Yes(MutexGuard<'a, Shared>),
    /// Not accepted: an async call must wait for room, and got its message back.
    Parked(MutexGuard<'a, Shared>, Bytes),
}

/// The read buffer, for a reader that has just set `reading` (nobody else reads, so it is
/// there unless a reader panicked while holding it: then an empty one).
fn take_rbuf(g: &mut Shared) -> Box<ReadBuf> {
    debug_assert!(g.reading);
    g.rbuf.take().unwrap_or_else(|| Box::new(ReadBuf::new()))
}

/// The write queue, for a writer that has just set `writing` (nobody else writes, so it is
/// there unless a writer panicked while holding it: then an empty one, which takes the
/// pipe's transport at its first write). A writer gives it back with `g.wq = Some(w)` before clearing `writing`.
fn take_wq(g: &mut Shared) -> Box<WriteQueue> {
    debug_assert!(g.writing);
    debug_assert!(g.wq.is_some(), "a writer kept the write queue");
    g.wq.take().unwrap_or_else(|| Box::new(WriteQueue::new()))
}

impl Conn {
    /// Wraps an established handshake and hands the connection to the reactor.
    pub(crate) fn start(mut hs: Handshake, config: ConnConfig) -> Result<Arc<Conn>, Error> {
        let session_id = hs.take_connected();
        let transport_name = hs.stream.transport_name();
        let role = observability::role_name(hs.session.role());
        let transport: Arc<dyn StreamTransport> = Arc::new(hs.stream);
        let frames = transport.frame_io().is_some();
        let slices = transport.writes_slices();
        #[cfg(duct_uring)]
        let ring = transport.ring_socket().is_some();
        #[cfg(not(duct_uring))]
        let ring = false;
        let local_addr = transport.local_addr();
        let peer_addr = transport.peer_addr();
        let who = match &peer_addr {
            Addr::Unknown => format!("the peer connected to {local_addr}"),
            named => named.to_string(),
        };
        let span = observability::pipe_span(
            config.pipe_id,
            session_id,
            &local_addr,
            &peer_addr,
            transport_name,
            role,
        );
        #[cfg(feature = "metrics")]
        let metrics = observability::PipeMetrics::new(config.pipe_id, transport_name, role);
        let mut wq = hs.wq;
        wq.set_transport(Arc::clone(&transport));
        wq.take_from(&mut hs.session, Instant::now());
        let mut rbuf = hs.rbuf;
        rbuf.transport = Some(Arc::clone(&transport));
        let mut life = Lifecycle::new(config.policy);
        let first = life
            .connected(session_id)
            .expect("a new lifecycle is connecting");
        let first = StateChange::new(
            pipe_state(first.from),
            pipe_state(first.to),
            first.session_id,
            config.pipe_id,
            None,
        );
        let shared = Shared {
            session: hs.session,
            life,
            reading: false,
            rbuf: Some(Box::new(rbuf)),
            #[cfg(duct_uring)]
            ring_read: None,
            #[cfg(duct_uring)]
            ring_write: None,
            #[cfg(duct_uring)]
            spare_wq: None,
            #[cfg(duct_uring)]
            shutdown_after_send: false,
            writing: false,
            wq_bytes: wq.bytes(),
            wq_frames: wq.frames(),
            wq: Some(Box::new(wq)),
            waiters: 0,
            wakers: WakerSet::default(),
            terminal: None,
            local_closed: None,
            stats: PipeStats::default(),
            channels: ChannelTable::default(),
            pending_callbacks: vec![first],
            pending_errors: Vec::new(),
            registered: None,
            read_armed: false,
            write_armed: false,
            room_stalled: None,
            write_kick: false,
            caller_reads: 0,
            seen_reads: 0,
            blocking_reads: 0,
            seen_blocking: 0,
            read_events: 0,
            looked_events: 0,
            empty_at: None,
            read_to_end: false,
            recheck_at: None,
            sample_at: None,
            timer_at: None,
            linger_until: None,
            carry: VecDeque::new(),
            spill: Spill::default(),
            runs: Vec::new(),
            resume_ids: vec![session_id],
            break_cause: None,
            write_failures: 0,
            #[cfg(feature = "metrics")]
            publish_at: metrics
                .as_ref()
                .and_then(|_| observability::next_publication(Instant::now())),
            #[cfg(feature = "metrics")]
            publish_due: false,
        };
        // (Made now, with the pipe's other allocations, rather than at its first empty poll,
        // which may come at any time: with 1,000 pipes received by tasks, many came in the
        // middle of `duct bench`'s measured phase.)
        let would_block = Error::new(
            ErrorKind::WouldBlock,
            format!("no message from {who} is ready"),
        );
        let conn = Arc::new_cyclic(|me| Conn {
            me: me.clone(),
            transport: RwLock::new(transport),
            would_block,
            shared: Mutex::new(shared),
            cv: Condvar::new(),
            local_addr,
            peer_addr: RwLock::new(peer_addr),
            who,
            config,
            callbacks_pending: AtomicBool::new(true),
            frames,
            slices,
            ring,
            reactor: OnceLock::new(),
            span,
            #[cfg(feature = "metrics")]
            metrics,
        });
        tracing::info!(
            name: "connected",
            target: "duct::pipe",
            parent: &conn.span,
            session_id,
            "connected"
        );
        if let Some(live) = &conn.config.live {
            live.fetch_add(1, Ordering::AcqRel);
        }
        let weak: Weak<dyn Reactive> = Arc::downgrade(&conn) as Weak<Conn>;
        let handle =
            reactor::register(weak).map_err(|e| Error::io(e, "starting the duct reactor"))?;
        let _ = conn.reactor.set(handle);
        {
            let mut g = conn.lock();
            // Idle from the start: the reactor reads ahead until a caller shows up.
            g = conn.arm_reads(g);
            if g.wq_frames > 0 || g.session.wants_transmit() {
                g.writing = true;
                g = conn.flush(g);
            }
            conn.reschedule(&mut g);
        }
        conn.run_callbacks();
        Ok(conn)
    }

    /// The current transport.
    fn t(&self) -> Arc<dyn StreamTransport> {
        Arc::clone(&self.transport.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock (a bug, or a panicking callback elsewhere) must not
        // turn every later call into a panic: the state itself stays consistent.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn local_addr(&self) -> Addr {
        self.local_addr.clone()
    }

    pub(crate) fn peer_addr(&self) -> Addr {
        self.peer_addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Frees an async call's waker slot (the future completed or was dropped).
    pub(crate) fn forget_waiter(&self, key: usize) {
        self.lock().wakers.remove(key);
    }

    /// Waker slots held for async calls (tests: they do not outgrow the calls pending at
    /// once).
    pub(crate) fn waiter_slots(&self) -> usize {
        self.lock().wakers.slots()
    }

    /// The largest message this side sends.
    pub(crate) fn max_message_size(&self) -> usize {
        self.config.max_message_size
    }

    /// A buffer in the transport's memory for a payload of `len` bytes (shm), if it has one.
    pub(crate) fn alloc(&self, len: usize) -> Option<crate::MessageBuf> {
        #[cfg(duct_shm)]
        {
            let t = self.t();
            let f = t.frame_io()?;
            f.alloc(len).map(crate::MessageBuf::shm)
        }
        #[cfg(not(duct_shm))]
        {
            let _ = len;
            None
        }
    }

    /// `WouldBlock`: no message is ready (a receive that does not wait). Made once per pipe
    /// and then shared: a receiver polling empty pipes allocates nothing.
    pub(crate) fn would_block(&self) -> Error {
        self.would_block.clone()
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.config.send_timeout
    }

    pub(crate) fn linger(&self) -> Duration {
        self.config.linger
    }

    pub(crate) fn state(&self) -> PipeState {
        self.lock().state()
    }

    /// The peer process's credentials on the current connection (Unix sockets).
    pub(crate) fn peer_credentials(&self) -> Option<crate::PeerCredentials> {
        self.t().peer_credentials()
    }

    pub(crate) fn pipe_id(&self) -> u64 {
        self.config.pipe_id
    }

    pub(crate) fn session_id(&self) -> u64 {
        self.lock().life.session_id()
    }

    pub(crate) fn stats(&self) -> PipeStats {
        let mut g = self.lock();
        g.collect_drops();
        let mut s = g.stats.clone();
        if let Some(f) = self.t().frame_io() {
            f.counts().add_to(&mut s);
        }
        s.rtt = g.session.rtt();
        s.set_channels(g.channels.snapshot());
        s
    }

    /// Brings the poller registration in line with `read_armed` / `write_armed`.
    fn update_interest(&self, g: &mut Shared) {
        let want = match (g.read_armed, g.write_armed) {
            (false, false) => None,
            (true, false) => Some(Interest::READABLE),
            // A frame transport signals room for output on its readable fd.
            (false, true) if self.frames => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (true, true) if self.frames => Some(Interest::READABLE),
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        };
        if want == g.registered {
            return;
        }
        let Some(handle) = self.reactor.get() else {
            return;
        };
        match handle.set_interest(self.t().readiness(), g.registered, want) {
            Ok(()) => g.registered = want,
            Err(e) => {
                // The fd can no longer be polled (it is being torn down): the pipe goes on
                // without background service; callers still do their own I/O.
                tracing::debug!(peer = %self.who, error = %e, "reactor registration failed");
                g.registered = None;
            }
        }
    }

    /// Makes sure the reactor calls `on_timer` by the session's next deadline, the next
    /// recheck, or an async call's timeout, whichever comes first.
    fn reschedule(&self, g: &mut Shared) {
        #[cfg(feature = "metrics")]
        let publish_at = g.publish_at;
        #[cfg(not(feature = "metrics"))]
        let publish_at = None;
        let next = [
            g.session.poll_timeout(),
            g.recheck_at,
            g.linger_until,
            g.sample_at,
            g.wakers.next_deadline(),
            publish_at,
        ]
        .into_iter()
        .flatten()
        .min();
        if let (Some(n), Some(handle)) = (next, self.reactor.get()) {
            if g.timer_at.is_none_or(|t| n < t) {
                g.timer_at = Some(n);
                handle.schedule(n);
            }
        }
    }

    /// Waits on the condition variable until notified or `deadline`; returns the guard and
    /// whether the deadline passed.
    fn wait_cv<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, Shared>, bool) {
        #[cfg(duct_uring)]
        if super::reactor::has_staged() {
            // A reactor thread about to block on a pipe: its staged receives hold their
            // pipes' read sides (perhaps this one's) until they complete. Complete them
            // first, and let the caller look again.
            drop(g);
            super::reactor::complete_staged();
            let past = deadline.is_some_and(|d| Instant::now() >= d);
            return (self.lock(), past);
        }
        if self.callbacks_pending.load(Ordering::Acquire) {
            // Callbacks queued under the lock (a state change this thread just caused) must
            // not wait for our wake-up: run them now, and let the caller look again (callers
            // loop on their condition, as with a spurious wake-up).
            drop(g);
            self.run_callbacks();
            let past = deadline.is_some_and(|d| Instant::now() >= d);
            return (self.lock(), past);
        }
        g.waiters += 1;
        let timed_out = match deadline {
            None => {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                false
            }
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    true
                } else {
                    let (ng, r) = self
                        .cv
                        .wait_timeout(g, left)
                        .unwrap_or_else(|p| p.into_inner());
                    g = ng;
                    r.timed_out() && Instant::now() >= d
                }
            }
        };
        g.waiters -= 1;
        (g, timed_out)
    }

    /// Wakes the callers waiting for the pipe to change: threads on the condition variable
    /// and pending async calls. (One branch each when there are none.)
    #[inline]
    fn notify(&self, g: &mut Shared) {
        if g.waiters > 0 {
            self.cv.notify_all();
        }
        g.wakers.wake_all();
    }

    /// Offers a message to its channel's send queue under the channel's policy (see
    /// `duct_proto::qos::Outbox::offer`); while reconnecting, to the queue kept for the next
    /// connection. Under [`Backpressure::Block`](crate::Backpressure::Block) at the high-water
    /// mark it writes queued output itself when nobody else is, else waits for the writer (a
    /// caller, the reactor, or a rate limit's timer) until `deadline`; `wait == false` (a
    /// zero timeout) fails at once with `WouldBlock`.
    #[allow(clippy::too_many_arguments)]
    fn admit<'a>(
        &'a self,
        g: MutexGuard<'a, Shared>,
        channel: u16,
        payload: Bytes,
        meta: Meta,
        now: Instant,
        deadline: Instant,
        wait: bool,
    ) -> Result<MutexGuard<'a, Shared>, Error> {
        match self.admit_or_park(g, channel, payload, meta, now, deadline, wait, None)? {
            Admitted::Yes(g) => Ok(g),
            Admitted::Parked(..) => unreachable!("only an async call (with a waker) parks"),
        }
    }

    /// [`Conn::admit`], or for an async call (`park`) that would have to wait: registers its
    /// waker (and a timer for `deadline`) and hands the message back, not accepted.
    #[allow(clippy::too_many_arguments)]
    fn admit_or_park<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        channel: u16,
        mut payload: Bytes,
        meta: Meta,
        now: Instant,
        deadline: Instant,
        wait: bool,
        mut park: Option<Park<'_>>,
    ) -> Result<Admitted<'a>, Error> {
        let mut flushed = false;
        let mut expired = false;
        loop {
            if let Some(e) = &g.terminal {
                return Err(e.clone());
            }
            if let Some((code, reason)) = &g.local_closed {
                return Err(Error::closed(*code, reason.as_str(), false));
            }
            let reconnecting = g.state() == PipeState::Reconnecting;
            let admission = if reconnecting {
                let len = payload.len();
                if len > self.config.max_message_size {
                    return Err(self.send_error(
                        duct_proto::Error::MessageTooLarge {
                            size: len as u64,
                            max: self.config.max_message_size as u64,
                        },
                        channel,
                    ));
                }
                g.session
                    .outbox_mut()
                    .offer_with(channel, payload, meta.ttl, meta.reliable, now)
            } else {
                g.session
                    .send_message(channel, payload, meta.ttl, meta.reliable, now)
                    .map_err(|e| self.send_error(e, channel))?
            };
            match admission {
                Admission::Queued | Admission::Dropped(_) => return Ok(Admitted::Yes(g)),
                Admission::Refused(_, why) => return Err(self.refused(&g, channel, why)),
                Admission::Wait(p) => payload = p,
            }
            if expired {
                return Err(self.queue_full(&g, channel, deadline.saturating_duration_since(now)));
            }
            if !flushed && !g.writing && !reconnecting {
                flushed = true;
                g.writing = true;
                g = self.flush(g);
                continue;
            }
            if !wait {
                let (msgs, bytes) = g.session.outbox().queued(channel);
                return Err(Error::new(
                    ErrorKind::WouldBlock,
                    format!(
                        "send to {} on channel {channel}: the channel's send queue is full \
                         ({msgs} messages, {bytes} bytes queued; {}) and the timeout is zero; \
                         the message was not sent",
                        self.who,
                        self.hwm_text(&g, channel)
                    ),
                ));
            }
            if let Some(p) = park.as_mut() {
                if Instant::now() >= deadline {
                    let waited = deadline.saturating_duration_since(now);
                    return Err(self.queue_full(&g, channel, waited));
                }
                g.wakers
                    .register(p.key, p.waker, WaitFor::Other, Some(deadline));
                self.reschedule(&mut g);
                return Ok(Admitted::Parked(g, payload));
            }
            // Woken: look for room again, without flushing again. The output this call could
            // not write waits for the socket to drain, which the reactor watches (it flushes
            // and wakes us then); flushing on every wake-up would have two blocked senders
            // wake each other in a loop, each failed flush notifying the other.
            let (ng, timed_out) = self.wait_cv(g, Some(deadline));
            g = ng;
            expired = timed_out;
        }
    }

    /// Sends one message. `Ok` means the message is accepted: written, queued for the
    /// writer, or dropped by the channel's drop policy (counted). `TimedOut` means the
    /// channel's queue stayed full until the deadline: the message was not accepted and
    /// nothing of it is sent.
    pub(crate) fn send(
        &self,
        channel: u16,
        payload: Bytes,
        meta: Meta,
        now: Option<Instant>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let len = payload.len();
        let mut g = self.lock();
        let mut payload = payload;
        let mut now = now;
        if g.may_send_direct() {
            // A message that involves no time (no TTL, rate limit or reliability) is framed
            // the same whatever the time: the session's own saves a clock reading (about 20
            // ns, a fifth of a shared-memory round trip's own cost).
            let at = match now {
                Some(t) => t,
                None if !g.session.send_uses_time(channel, meta.ttl, meta.reliable) => {
                    g.session.now()
                }
                None => *now.insert(Instant::now()),
            };
            match self.send_direct(g, channel, payload, meta, at)? {
                Ok(()) => return Ok(()),
                Err((ng, p)) => (g, payload) = (ng, p),
            }
        }
        // (Waiting, if it must, counts from now.)
        let now = now.unwrap_or_else(Instant::now);
        let g = self.admit(
            g,
            channel,
            payload,
            meta,
            now,
            now + timeout,
            !timeout.is_zero(),
        )?;
        self.sent(g, channel, len, None)
    }

    /// The async form of [`Conn::send`]: takes the message out of `payload` and accepts it,
    /// or, if it would have to wait for room, puts it back and registers `park`
    /// (`Ok(false)`). `Ok(true)`: accepted. `now` is when the call began.
    pub(crate) fn poll_send(
        &self,
        channel: u16,
        payload: &mut Option<Bytes>,
        meta: Meta,
        now: Instant,
        timeout: Duration,
        park: Park<'_>,
    ) -> Result<bool, Error> {
        let Some(mut msg) = payload.take() else {
            return Ok(true);
        };
        let len = msg.len();
        let mut g = self.lock();
        if g.may_send_direct() {
            match self.send_direct(g, channel, msg, meta, now)? {
                Ok(()) => return Ok(true),
                Err((ng, p)) => (g, msg) = (ng, p),
            }
        }
        let admitted = self.admit_or_park(
            g,
            channel,
            msg,
            meta,
            now,
            now + timeout,
            !timeout.is_zero(),
            Some(park),
        )?;
        match admitted {
            Admitted::Yes(g) => self.sent(g, channel, len, None).map(|()| true),
            Admitted::Parked(g, msg) => {
                *payload = Some(msg);
                drop(g);
                self.run_callbacks();
                Ok(false)
            }
        }
    }

    /// [`Conn::send`]'s and [`Conn::poll_send`]'s direct path (the caller checked
    /// [`Shared::may_send_direct`]): with nothing queued before it, the message is framed at
    /// once and written by this call (no trip through the channel's queue), or taken by its
    /// channel's policy: `Ok(Ok(()))`, accepted. `Ok(Err)`: the channel's queue is full; the
    /// message and the lock come back, to wait for room as any send does.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn send_direct<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        channel: u16,
        payload: Bytes,
        meta: Meta,
        now: Instant,
    ) -> Result<Result<(), (MutexGuard<'a, Shared>, Bytes)>, Error> {
        let len = payload.len();
        match self.offer_direct(&mut g, channel, payload, meta, now)? {
            Offer::Framed(t) => self.sent(g, channel, len, Some(t)).map(Ok),
            Offer::Taken => self.sent(g, channel, len, None).map(Ok),
            Offer::Full(p) => Ok(Err((g, p))),
        }
    }

    /// Offers a message by the direct path ([`Session::send_direct`]; the caller checked
    /// [`Shared::may_send_direct`]).
    // (Inlined: its result, which holds a frame, would come back through memory.)
    #[inline(always)]
    fn offer_direct(
        &self,
        g: &mut Shared,
        channel: u16,
        payload: Bytes,
        meta: Meta,
        now: Instant,
    ) -> Result<Offer, Error> {
        match g
            .session
            .send_direct(channel, payload, meta.ttl, meta.reliable, now)
            .map_err(|e| self.send_error(e, channel))?
        {
            Direct::Frame(t) => Ok(Offer::Framed(t)),
            Direct::Offered(Admission::Queued | Admission::Dropped(_)) => Ok(Offer::Taken),
            Direct::Offered(Admission::Refused(_, why)) => Err(self.refused(g, channel, why)),
            Direct::Offered(Admission::Wait(p)) => Ok(Offer::Full(p)),
        }
    }

    /// After a message of `len` bytes was accepted on `channel`: counts it, and writes it
    /// unless another thread is writing. `frame`: the message, framed by
    /// [`Session::send_direct`] while nobody was writing (it goes out first).
    fn sent<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        channel: u16,
        len: usize,
        frame: Option<Transmit>,
    ) -> Result<(), Error> {
        // Shared memory: the frame goes straight into the ring if it can (and is counted
        // after: the peer, which may be waiting for it, sees it sooner). (By reference: a
        // frame moved in and back out costs two copies of it on the peer's critical path.)
        let pushed = self.frames && frame.as_ref().is_some_and(|t| self.push_frame(&mut g, t));
        g.count_sent(Run::start(channel, len));
        self.trace_sent(channel, len);
        if pushed {
            return Ok(());
        }
        if g.state() == PipeState::Reconnecting {
            debug_assert!(frame.is_none(), "framed only while connected");
            return Ok(());
        }
        // (A direct frame is made only while nobody writes, under this same lock.)
        debug_assert!(
            frame.is_none() || !g.writing,
            "a direct frame while another writes"
        );
        if !g.writing {
            let failures = g.write_failures;
            g.writing = true;
            g = self.flush_with(g, frame);
            if g.write_failures != failures {
                // Our own write failed: say so rather than pretend the message went out. (The
                // pipe ending otherwise meanwhile, say the peer closing after reading it, is
                // not this send's failure: the message was accepted.)
                if let Some(e) = &g.terminal {
                    return Err(e.clone());
                }
            }
        }
        Ok(())
    }

    /// On a frame transport (shared memory), sends `t`, a frame the session handed out
    /// directly, straight into the transport when nothing else is to be written (nothing
    /// queued here or in the session, no wait for room): what [`Conn::flush_with`] would do
    /// with it, without the write queue's round. Under the pipe lock, as `flush_queue` writes
    /// to a frame transport. Whether it sent the frame (not: no room, or a failure, which the
    /// general way then meets again and reports).
    fn push_frame(&self, g: &mut Shared, t: &Transmit) -> bool {
        debug_assert!(!g.writing, "a direct frame while another writes");
        // (A frame with a time to live goes the general way: it is stamped as it goes out.)
        if t.deadline.is_some() || g.write_armed || g.session.wants_transmit() {
            return false;
        }
        // (Nobody writes: the queue is here, and the pipe lock, held, is all it needs.)
        if !g.wq.as_mut().is_some_and(|w| w.send_frame(t)) {
            return false;
        }
        // As a flush that wrote something tells them.
        self.notify(g);
        true
    }

    /// Sends several messages under one lock and one flush: the frames go out in as few
    /// `sendmsg` calls as the socket allows. Returns how many were accepted; an error is
    /// returned only if none was.
    ///
    /// Generic over the iterator (one copy per caller's iterator type), not `dyn`: the
    /// framing loop takes a message per turn, and a virtual call returning it through memory
    /// cost 11 instructions per message (callgrind, tcp 64 B stream, both ends: 239 → 228).
    pub(crate) fn send_batch<P: OutPayload, I: Iterator<Item = (u16, P)> + ?Sized>(
        &self,
        msgs: &mut I,
        meta: Meta,
        timeout: Duration,
    ) -> Result<usize, Error> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut sent = 0usize;
        let mut run = Run::default();
        let mut g = self.lock();
        let mut failure = None;
        // The direct path (see `send`): while nothing is queued before them, messages are
        // framed at once into the write queue, which this call holds (as the writer) until
        // about one `sendmsg`'s worth is there; the rest go through the channels' queues.
        let mut direct = None;
        // A run of messages on one channel that this call frames itself (see
        // `Session::direct_run`), valid while `direct` is held (the session does not change
        // meanwhile: the pipe lock is held too).
        let mut fast: Option<DirectRun> = None;
        // A message the framing loop below took and could not frame: the next to go.
        let mut held = None;
        // A transport found full may be waited for (see below): not by a call that must not
        // wait or a small one, and not again in this call once room did not come in time.
        let mut wait_room = !timeout.is_zero() && msgs.size_hint().0 >= ROOM_WAIT_MIN_MSGS;
        while let Some((channel, payload)) = held.take().or_else(|| msgs.next()) {
            let len = payload.len();
            if let Some(w) = direct.take_if(|w: &mut Box<WriteQueue>| !w.wants_more()) {
                g.wq = Some(w);
                fast = None;
                g = self.flush(g);
            }
            if direct.is_none()
                && wait_room
                && !self.frames
                && g.wq_frames > 0
                && g.blocks_when_full(channel)
            {
                // A socket found full (by this call's flush or an earlier one): rather than
                // copy this message and those after it into its channel's queue, wait for
                // the socket to take the frames queued (see `wait_socket_room`).
                (g, wait_room) = self.wait_socket_room(g, deadline);
            }
            if direct.is_none() && g.may_send_direct() {
                g.writing = true;
                direct = Some(take_wq(&mut g));
            }
            if direct.is_some() && fast.is_none_or(|r| r.channel() != channel) {
                fast = g.session.direct_run(channel, meta.ttl, meta.reliable, now);
            }
            // What still needs the channel's queue (the direct path found it full, or was not
            // taken).
            // A reliable run's message is numbered here (when it fits both windows) and
            // framed from the caller's bytes; its payload is kept once, for retransmission.
            // Headers are written where the frame is encoded (`write_header`).
            // (The run is used where it is, never copied per message: a copy is put together
            // field by field, and the header's wide load from it would wait for those stores.)
            // The pipe lock was let go (a write through): the session may have changed.
            let mut relocked = false;
            let numbered = match (&direct, &mut fast) {
                (Some(_), Some(r)) if r.reliable() => g.session.number_next(r, len),
                _ => None,
            };
            let queued = match (direct.as_mut(), numbered) {
                (None, _) => Some(payload.into_bytes(&mut g.spill)),
                (Some(w), Some((seq, ask))) => {
                    let r = fast.as_ref().expect("numbered in a run");
                    let head = |h: &mut [u8; HEADER_LEN]| {
                        r.write_header(len, seq, h);
                        if ask {
                            DirectRun::ask_for_ack(h);
                        }
                    };
                    if w.push_inline_with(payload.as_slice(), P::COPIED, head)
                        || (P::COPIED && w.push_copy(payload.as_slice(), head))
                    {
                        payload.keep(&mut g.session, seq, channel, now);
                    } else {
                        // (Large, or a frame transport: `push` keeps it whole.)
                        let payload = payload.into_bytes(&mut g.spill);
                        let mut header = [0; HEADER_LEN];
                        head(&mut header);
                        w.push(Transmit {
                            header,
                            payload: payload.clone(),
                            deadline: None,
                        });
                        g.session.record_direct(seq, channel, payload, now);
                    }
                    None
                }
                (Some(w), None) => match fast.as_ref().filter(|r| !r.reliable() && r.fits(len)) {
                    Some(r)
                        if P::COPIED
                            && self.slices
                            && w.is_empty()
                            && msgs.size_hint().1 == Some(0) =>
                    {
                        // The only message of the call (`send_slice`), nothing queued: it
                        // is written from the caller's memory, as `send` writes a message
                        // (see `flush_with`), and copied only if the socket does not take
                        // it whole.
                        g = self.write_message_through(g, w, *r, channel, payload, now);
                        relocked = true;
                        None
                    }
                    Some(r) => {
                        let head = |h: &mut [u8; HEADER_LEN]| r.write_header(len, 0, h);
                        let framed = w.push_inline_with(payload.as_slice(), P::COPIED, head)
                            || (P::COPIED && w.push_copy(payload.as_slice(), head));
                        if !framed
                            && P::COPIED
                            && wait_room
                            && w.is_empty_frames()
                            && g.blocks_when_full(channel)
                        {
                            // A frame transport's ring is full, and the receiver is taking
                            // from it, most likely: on a channel that blocks when full (a
                            // send on the others never waits), wait a little for room (the
                            // pipe's lock let go) rather than copy this message and those
                            // after it into the queue; then the message goes the way it
                            // came. Once per call, if no room came; and a receiver that
                            // stopped costs one such wait, not one per call: the frame is
                            // queued then, and while frames are queued nothing takes the
                            // direct path (so nothing waits here) until the ring has
                            // drained them.
                            drop(g);
                            wait_room = w.wait_room(len, deadline);
                            g = self.relocked(self.lock(), &mut direct);
                            g.stats.room_waits += 1;
                            fast = None;
                            held = Some((channel, payload));
                            continue;
                        }
                        if !framed {
                            if P::COPIED && w.fills_with(len) {
                                // The queue is due to be written: write it and this frame
                                // now, from the caller's memory.
                                g = self.write_message_through(g, w, *r, channel, payload, now);
                                relocked = true;
                            } else {
                                // (Large, or a frame transport: `push` keeps it whole.)
                                let mut header = [0; HEADER_LEN];
                                r.write_header(len, 0, &mut header);
                                w.push(Transmit {
                                    header,
                                    payload: payload.into_bytes(&mut g.spill),
                                    deadline: None,
                                });
                            }
                        }
                        None
                    }
                    None if P::COPIED
                        && fast
                            .is_some_and(|r| r.fragments(len) && w.fills_with(r.frame_max())) =>
                    {
                        // A large message of the caller's, in fragments, each of which fills
                        // a write: from the caller's memory too.
                        let r = fast.expect("checked");
                        g = self.write_message_through(g, w, r, channel, payload, now);
                        relocked = true;
                        None
                    }
                    None => {
                        fast = None;
                        let payload = payload.into_bytes(&mut g.spill);
                        match self.offer_direct(&mut g, channel, payload, meta, now) {
                            Ok(Offer::Framed(t)) => {
                                w.push(t);
                                None
                            }
                            Ok(Offer::Taken) => None,
                            Ok(Offer::Full(p)) => Some(p),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                },
            };
            if relocked {
                fast = None;
                g = self.relocked(g, &mut direct);
            }
            let was_queued = queued.is_some();
            if let Some(payload) = queued {
                if let Some(w) = direct.take() {
                    // Write what was framed (this call is the writer), then go the usual way.
                    g.wq = Some(w);
                    g = self.flush(g);
                }
                g = match self.admit(g, channel, payload, meta, now, deadline, !timeout.is_zero()) {
                    Ok(g) => g,
                    Err(e) => {
                        failure = Some(e);
                        g = self.lock();
                        break;
                    }
                };
            }
            sent += 1;
            self.trace_sent(channel, len);
            if !run.add(channel, len) {
                g.count_sent(run);
                run = Run::start(channel, len);
            }
            // The messages that follow on the same channel, small ones, are framed in place
            // by a loop of their own (the common case of a batch: the general one above
            // carries more state than fits in registers), numbered first on a reliable
            // channel. The first that is not such is kept for the general one.
            let (msgs_in, bytes_in) = if let (Some(w), Some(r)) = (direct.as_mut(), fast.as_mut()) {
                debug_assert_eq!(r.channel(), channel, "the run is of the message just sent");
                if P::COPIED && !r.reliable() && w.is_empty_frames() {
                    // A frame transport (shm) with nothing queued: each message is copied
                    // into its ring by `push_copy`, while there is room (the first that
                    // finds none goes the general way, which may wait for some).
                    let r = *r;
                    self.frame_run(msgs, channel, &mut held, |p| {
                        let len = p.len();
                        if r.fits(len) && w.push_copy(p.as_slice(), |h| r.write_header(len, 0, h)) {
                            Ok(())
                        } else {
                            Err(p)
                        }
                    })
                } else {
                    match w.inline_run(P::COPIED) {
                        // Numbered, and their copies kept, by the run (the session learns of them
                        // once, when it is dropped).
                        Some(mut inline) if r.reliable() => {
                            let mut rel = g.session.reliable_run(r, now);
                            self.frame_run(msgs, channel, &mut held, |p| {
                                let len = p.len();
                                if !inline.takes(len) {
                                    return Err(p);
                                }
                                let Some(seq) = rel.number(p.as_slice()) else {
                                    return Err(p);
                                };
                                inline.encode(p.as_slice(), |h| rel.write_header(len, seq, h));
                                Ok(())
                            })
                        }
                        Some(mut inline) => self.frame_run(msgs, channel, &mut held, |p| {
                            let len = p.len();
                            let framed = r.fits(len)
                                && inline.push(p.as_slice(), |h| r.write_header(len, 0, h));
                            if framed {
                                Ok(())
                            } else {
                                Err(p)
                            }
                        }),
                        None => (0, 0),
                    }
                }
            } else if was_queued && g.open_and_connected() {
                // The message went to its channel's queue (the socket is behind): those that
                // follow on the same channel join it by a loop of their own while they find
                // room, each a room check and a push (rather than `admit`'s round of checks
                // and its session call). The first that does not fit, or is on another
                // channel, goes the general way (which waits for room if it must).
                let s = &mut *g;
                match s.session.queue_run(channel, meta.ttl, meta.reliable, now) {
                    Some(mut q) => {
                        let spill = &mut s.spill;
                        self.frame_run(msgs, channel, &mut held, |p| {
                            if !q.fits(p.len()) {
                                return Err(p);
                            }
                            q.push(p.into_bytes(spill));
                            Ok(())
                        })
                    }
                    None => (0, 0),
                }
            } else {
                (0, 0)
            };
            // (The run counts `channel`'s messages: it added the one above.)
            sent += msgs_in;
            run.msgs += msgs_in as u64;
            run.bytes += bytes_in as u64;
        }
        g.count_sent(run);
        let failures = g.write_failures;
        if let Some(w) = direct.take() {
            g.wq = Some(w);
            g = self.flush(g);
        } else if !g.writing && g.state() != PipeState::Reconnecting {
            g.writing = true;
            g = self.flush(g);
        }
        let write_failed = g.write_failures != failures;
        match (sent, failure, &g.terminal) {
            (0, Some(e), _) => Err(e),
            (0, None, Some(e)) if write_failed => Err(e.clone()),
            _ => Ok(sent),
        }
    }

    /// [`Conn::send_batch`]'s direct path for a message of the caller's (`payload`, of the
    /// realtime or single-frame run `r` on `channel`) too large to encode beside its header,
    /// when the write queue is due to be written anyway: the queue and the message's frames
    /// (one, or its fragments) are written from the caller's memory while the socket takes
    /// each whole and nothing else waits to go out (another channel's message, an ack, a
    /// close: a write is a system call, and the pipe is free meanwhile, as in
    /// `flush_queue`). Then the message is copied once: the frame the socket took in part
    /// (or not at all) goes in the queue as begun, and the session takes the rest
    /// (`Session::send_started`), framed from there on among other channels' frames as
    /// their priorities say. Returns the pipe's lock, taken again.
    fn write_message_through<'a, P: OutPayload>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        w: &mut WriteQueue,
        r: DirectRun,
        channel: u16,
        payload: P,
        now: Instant,
    ) -> MutexGuard<'a, Shared> {
        let len = payload.len();
        let step = if r.fits(len) { len } else { r.frame_max() };
        let bytes = payload.as_slice();
        let mut offset = 0;
        // The frame the socket did not take whole: its header, length and the bytes of it
        // that went.
        let mut cut = None;
        while offset < len {
            let n = step.min(len - offset);
            let mut header = [0; HEADER_LEN];
            r.write_part_header(len, offset, n, &mut header);
            drop(g);
            let went = with_transport(
                w,
                |w| &mut w.transport,
                || self.t(),
                |w, t| w.write_through(t, &header, &bytes[offset..offset + n]),
            );
            g = self.lock();
            if went < HEADER_LEN + n {
                cut = Some((header, n, went));
                break;
            }
            offset += n;
            if g.session.wants_transmit() || !g.open_and_connected() {
                break;
            }
        }
        if offset < len {
            let owned = payload.into_bytes(&mut g.spill);
            let mut rest = offset;
            if let Some((header, n, went)) = cut {
                let t = Transmit {
                    header,
                    payload: owned.slice(offset..offset + n),
                    deadline: None,
                };
                w.push_written(t, went);
                rest += n;
            }
            if rest < len {
                g.session.send_started(channel, owned, rest, now);
            }
        }
        g
    }

    /// [`Conn::send_batch`] found frames queued for a socket (its last write found it full)
    /// with nobody writing them, and the next message, on a channel that blocks when full
    /// ([`Shared::blocks_when_full`]), would go to its channel's queue as a copy, and so
    /// would those after it: waits for the socket to take bytes again (the pipe's lock let
    /// go; at most [`SOCKET_ROOM_WAIT`] at a time, never past `deadline`) and writes the
    /// queue, as a blocking socket writer would, while each wait brings room, until the
    /// queue is written: the batch then goes on framing in place. Returns whether to wait again in this call: `false` once a wait brought no
    /// room, or on a transport a sender does not wait for so (shared memory has its own
    /// wait, [`WriteQueue::wait_room`]). A reader that stopped costs one wait, not one per
    /// call: no sender waits again until a write takes some of the queue (`room_stalled`).
    fn wait_socket_room<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        deadline: Instant,
    ) -> (MutexGuard<'a, Shared>, bool) {
        debug_assert!(!self.frames, "a socket's wait on a frame transport");
        let written = |g: &Shared| g.wq.as_ref().map(|w| w.written());
        while g.wq_frames > 0 && !g.writing && g.open_and_connected() {
            let before = written(&g);
            if before.is_none() || g.room_stalled == before {
                return (g, false);
            }
            let t = self.t();
            drop(g);
            let until = deadline.min(Instant::now() + SOCKET_ROOM_WAIT);
            let waited = t.wait_writable(until);
            g = self.lock();
            if waited.is_err() {
                // Not a transport to wait for so; or a failure, which the write meets again
                // and reports.
                return (g, false);
            }
            g.stats.room_waits += 1;
            // Room or not (the socket is writable again once most of what it holds is read,
            // which a reader on the same CPU may take longer than a wait to do), the write
            // says whether some came. (Another thread, or the reactor, may have written
            // meanwhile.)
            g = self.flush_if_idle(g);
            if written(&g) == before {
                g.room_stalled = before;
                return (g, false);
            }
        }
        (g, true)
    }

    /// [`Conn::send_batch`] took the pipe's lock again after letting it go (for a write or a
    /// wait): if the pipe failed or closed meanwhile, no more frames go into `direct`, and the
    /// flush settles the queue as any write does.
    fn relocked<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        direct: &mut Option<Box<WriteQueue>>,
    ) -> MutexGuard<'a, Shared> {
        if !g.open_and_connected() {
            if let Some(w) = direct.take() {
                g.wq = Some(w);
                g = self.flush(g);
            }
        }
        g
    }

    /// [`Conn::send_batch`]'s loop over a run of messages on `channel`: takes messages from
    /// `msgs` while they are on `channel` and `take` takes them (frames or queues them; it
    /// hands back one it does not take); the first that is not taken is left in `held`.
    /// Returns the messages and payload bytes taken.
    #[inline(always)]
    fn frame_run<P: OutPayload, I: Iterator<Item = (u16, P)> + ?Sized>(
        &self,
        msgs: &mut I,
        channel: u16,
        held: &mut Option<(u16, P)>,
        mut take: impl FnMut(P) -> Result<(), P>,
    ) -> (usize, usize) {
        let (mut n, mut bytes) = (0, 0);
        for (c, p) in msgs {
            let len = p.len();
            let refused = if c == channel { take(p).err() } else { Some(p) };
            if let Some(p) = refused {
                *held = Some((c, p));
                break;
            }
            n += 1;
            bytes += len;
            self.trace_sent(channel, len);
        }
        (n, bytes)
    }

    /// One TRACE event for a message `send` accepted. With TRACE off (the usual case) this is
    /// one comparison with the global level, inlined; the event's own callsite check is a
    /// call of its own, per message.
    #[inline(always)]
    fn trace_sent(&self, channel: u16, len: usize) {
        if tracing::level_enabled!(tracing::Level::TRACE) {
            self.trace_sent_event(channel, len);
        }
    }

    #[cold]
    #[inline(never)]
    fn trace_sent_event(&self, channel: u16, len: usize) {
        tracing::trace!(
            name: "message_sent",
            target: "duct::message",
            parent: &self.span,
            channel,
            len,
            "message sent"
        );
    }

    /// "high-water mark N messages / B bytes" of `channel`.
    fn hwm_text(&self, g: &Shared, channel: u16) -> String {
        let cfg = g.session.outbox().config().channel(channel);
        format!(
            "high-water mark {} messages / {} bytes",
            cfg.snd_hwm_msgs, cfg.snd_hwm_bytes
        )
    }

    fn refused(&self, g: &Shared, channel: u16, why: DropReason) -> Error {
        let text = match why {
            DropReason::QueueFull => {
                let (msgs, bytes) = g.session.outbox().queued(channel);
                format!(
                    "send to {} on channel {channel}: the channel's send queue is full ({msgs} \
                     messages, {bytes} bytes queued; {}) and its policy is FailFast; the \
                     message was not sent",
                    self.who,
                    self.hwm_text(g, channel)
                )
            }
            DropReason::RateLimit => format!(
                "send to {} on channel {channel}: over the channel's rate limit and its policy \
                 is FailFast; the message was not sent",
                self.who
            ),
        };
        Error::new(ErrorKind::WouldBlock, text)
    }

    fn queue_full(&self, g: &Shared, channel: u16, waited: Duration) -> Error {
        let (msgs, bytes) = g.session.outbox().queued(channel);
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "send to {} on channel {channel} timed out after {waited:?}: the channel's send \
                 queue stayed full ({msgs} messages, {bytes} bytes queued; {}) because the \
                 peer is not reading fast enough; the message was not sent",
                self.who,
                self.hwm_text(g, channel)
            ),
        )
    }

    fn send_error(&self, e: duct_proto::Error, channel: u16) -> Error {
        match e {
            duct_proto::Error::MessageTooLarge { size, max } => Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "message of {size} bytes on channel {channel} exceeds the limit of {max} bytes \
                     that {} accepts",
                    self.who
                ),
            ),
            duct_proto::Error::Closed | duct_proto::Error::NotConnected => {
                Error::new(ErrorKind::Closed, format!("pipe to {} is closed", self.who))
            }
            other => proto_error(other, &self.who),
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full; a full socket
    /// leaves the rest to the reactor (it watches writability). The caller has set `writing`;
    /// this clears it and wakes waiters. Transport errors end the connection.
    fn flush<'a>(&'a self, g: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.flush_with(g, None)
    }

    /// [`Conn::flush`], with `first` (a frame the session handed out directly, the next after
    /// those already in the write queue) written first.
    fn flush_with<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        first: Option<Transmit>,
    ) -> MutexGuard<'a, Shared> {
        if g.state() == PipeState::Reconnecting {
            // No connection to write to: the queue waits for the next one.
            debug_assert!(first.is_none(), "framed only while connected");
            g.writing = false;
            return g;
        }
        let mut w = take_wq(&mut g);
        let Some(t) = first else {
            return self.flush_queue(g, w, false, None);
        };
        if !self.slices || !w.is_empty() || t.deadline.is_some() {
            w.push(t);
            return self.flush_queue(g, w, false, None);
        }
        // A plain socket with nothing queued: the frame is written from its own memory, header
        // and payload in one vectored write, as the loop would write it once queued, but
        // without the trip through the queue (encoding, laying out, consuming: ~370
        // instructions a send in callgrind, uds ping-pong). What the socket does not take is queued, and the loop
        // goes on from there. (A system call: other threads may use the pipe meanwhile.)
        drop(g);
        let went = with_transport(
            &mut *w,
            |w| &mut w.transport,
            || self.t(),
            |w, tr| w.write_alone(tr, &t.header, &t.payload),
        );
        g = self.lock();
        let sent = if went == t.wire_len() {
            // (The loop takes what the session has next.)
            Some(Ok(true))
        } else {
            w.push_written(t, went);
            // Part of it went: the socket is full. None: the loop's own write meets why (full,
            // or a failure, which it reports).
            (went > 0).then_some(Ok(false))
        };
        self.flush_queue(g, w, went > 0, sent)
    }

    /// The write loop of [`Conn::flush_with`]: takes frames from the session and writes them
    /// until none is left or the transport is full, then settles the pipe. `progressed`: the
    /// flush moved frames already; `sent`: the result of a write made before the loop (a send
    /// through the ring), taken as the loop's first.
    fn flush_queue<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        mut w: Box<WriteQueue>,
        mut progressed: bool,
        mut sent: Option<io::Result<bool>>,
    ) -> MutexGuard<'a, Shared> {
        // Frames left the send queues or reached the transport (async calls are woken only
        // then: a flush that finds the socket full changes nothing they wait for, and waking
        // them would have them flush again, in turn).
        let result = loop {
            if let Some(res) = sent.take() {
                match res {
                    Ok(true) => continue,
                    other => break other,
                }
            }
            let now = g.session.now();
            let queued = w.frames();
            w.take_from(&mut g.session, now);
            progressed |= w.frames() != queued;
            if w.is_empty() {
                break Ok(true);
            }
            #[cfg(duct_uring)]
            if !self.frames && super::reactor::can_stage() && self.stage_write(&mut g, &mut w) {
                // The queue is the ring's until the send completes (`on_send` goes on); its
                // stand-in waits here.
                g.ring_write = Some(progressed);
                g.wq = Some(w);
                return g;
            }
            let before = (w.frames(), w.bytes());
            let res = if self.frames {
                // Shared memory: a push never blocks and costs a copy into the pool (a wake-up
                // call at most): keep the lock rather than pay for taking it again.
                with_transport(
                    &mut *w,
                    |w| &mut w.transport,
                    || self.t(),
                    |w, t| w.write_nonblocking(t),
                )
            } else {
                // A socket write is a system call: other threads may use the pipe meanwhile.
                drop(g);
                let res = with_transport(
                    &mut *w,
                    |w| &mut w.transport,
                    || self.t(),
                    |w, t| w.write_nonblocking(t),
                );
                g = self.lock();
                res
            };
            progressed |= (w.frames(), w.bytes()) != before;
            match res {
                Ok(true) => continue,
                Ok(false) if std::mem::take(&mut g.write_kick) => continue,
                other => break other,
            }
        };
        g.wq_bytes = w.bytes();
        g.wq_frames = w.frames();
        g.wq = Some(w);
        g.writing = false;
        if !g.session.outbox().is_empty() {
            // Messages wait for a rate limit (or for room in the write queue): make sure a
            // timer comes back for them.
            self.reschedule(&mut g);
        }
        match result {
            Ok(done) => {
                let want = !done && g.terminal.is_none();
                // A socket stays watched for room when all is written: the reactor stops
                // watching at the next event that finds nothing to write (`on_ready`). A
                // stream that fills the socket at every call would otherwise have the watch
                // made and unmade at every call, each time a message to the reactor thread
                // and a wake-up (io_uring).
                let lazy = !self.frames && g.terminal.is_none();
                if want != g.write_armed && (want || !lazy) {
                    g.write_armed = want;
                    self.update_interest(&mut g);
                }
            }
            Err(e) => {
                g.write_failures += 1;
                self.fail_transport(&mut g, e);
                progressed = true;
            }
        }
        // Threads are told in any case: one may wait for `writing` to clear.
        if g.waiters > 0 {
            self.cv.notify_all();
        }
        if progressed {
            g.wakers.wake_all();
        }
        g
    }

    /// Writes pending output now, if any and if nobody else is writing.
    fn flush_if_idle<'a>(&'a self, mut g: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        if !g.writing && (g.wq_frames > 0 || g.session.wants_transmit()) {
            g.writing = true;
            g = self.flush(g);
        }
        g
    }

    /// Receives one message. `Ok(None)` only with `Wait::No`.
    pub(crate) fn recv(&self, wait: Wait) -> Result<Option<Delivered>, Error> {
        let mut out: Option<Delivered> = None;
        self.recv_into(wait, 1, &mut out)?;
        Ok(out)
    }

    /// Receives up to `max` (at least 1) messages, handing each to `sink` in order, under one
    /// lock. Waits as `wait` says for the first; returns how many were delivered (0 only with
    /// `Wait::No`). Once the pipe has ended, messages received before the end are still
    /// delivered; the error comes when there are none left.
    pub(crate) fn recv_into<S: Sink + ?Sized>(
        &self,
        wait: Wait,
        max: usize,
        sink: &mut S,
    ) -> Result<usize, Error> {
        self.recv_or_park(wait, max, sink, None)
    }

    /// The async form of [`Conn::recv`]: a message if one is ready or the transport has one
    /// now (read without blocking, until the transport is empty); else registers `park`,
    /// makes sure the reactor reads for it, and returns `Ok(None)`. `TimedOut` once
    /// `park.deadline` passed with no message.
    pub(crate) fn poll_recv(&self, park: Park<'_>) -> Result<Option<Delivered>, Error> {
        let mut out: Option<Delivered> = None;
        self.recv_or_park(Wait::No, 1, &mut out, Some(park))?;
        Ok(out)
    }

    /// [`Conn::recv_into`]; with `park` (and `Wait::No`), an async call that registers its
    /// waker when it finds nothing (returning 0).
    fn recv_or_park<S: Sink + ?Sized>(
        &self,
        wait: Wait,
        max: usize,
        sink: &mut S,
        mut park: Option<Park<'_>>,
    ) -> Result<usize, Error> {
        // A receive that does not wait (`try_recv`, a zero timeout, an async call's first look).
        let polls = matches!(wait, Wait::No);
        debug_assert!(park.is_none() || polls);
        // (A receive that does not wait never waits on a deadline: no clock read for it, a
        // poller's most frequent call.)
        let deadline = match wait {
            Wait::Until(d) => Some(d),
            Wait::No | Wait::Forever => None,
        };
        let mut g = self.lock();
        g.caller_reads += 1;
        if !polls {
            g.blocking_reads += 1;
        }
        let mut attempted = false;
        // The last read brought bytes: the transport may hold more (an async call reads on
        // until it is empty, so that the reactor's edge-triggered readiness sees what comes
        // next).
        let mut more = false;
        // Messages the last read handed over at once (see `absorb_to`).
        let mut handed = 0;
        loop {
            let mut n = std::mem::take(&mut handed);
            if n + 1 == max && g.carry.is_empty() {
                // One message (recv), none carried over: the plain way is the shortest (and
                // when the session has none, as before a read, nothing is counted).
                if let Some(d) = g.session.poll_message() {
                    let mut take = Take::new(&mut g, &self.span, &mut *sink);
                    take.take_owned(d);
                    take.count_into(&mut g);
                    n += 1;
                }
            } else {
                let mut take = Take::new(&mut g, &self.span, &mut *sink);
                while n < max {
                    // Messages received on an earlier connection first.
                    let Some(d) = g.carry.pop_front() else {
                        break;
                    };
                    take.take_owned(d);
                    n += 1;
                }
                if n < max {
                    let now = g.session.now();
                    n += g.session.poll_received_at(now, max - n, &mut take);
                }
                take.count_into(&mut g);
            }
            if n > 0 {
                return Ok(self.took(g, n));
            }
            if let Some(e) = &g.terminal {
                let e = e.clone();
                drop(g);
                self.run_callbacks();
                return Err(e);
            }
            if let Some((code, reason)) = &g.local_closed {
                return Err(Error::closed(*code, reason.as_str(), false));
            }
            let past = deadline.is_some_and(|d| Instant::now() >= d);
            if let Some(p) = park.as_mut() {
                if attempted && !more {
                    return self.park_recv(g, p);
                }
            } else if (polls && attempted) || (past && !polls) {
                drop(g);
                return match wait {
                    Wait::No => Ok(0),
                    _ => Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("no message from {} before the receive timeout", self.who),
                    )),
                };
            }
            g = self.flush_if_idle(g);
            if g.state() == PipeState::Reconnecting {
                // No connection to read from: wait for the reconnect (or the end).
                if let Some(p) = park.as_mut() {
                    return self.park_recv(g, p);
                }
                if polls {
                    return Ok(0);
                }
                let (ng, _) = self.wait_cv(g, deadline);
                g = ng;
                continue;
            }
            if g.reading {
                // Another caller or the reactor is reading: it will deliver and wake us.
                if let Some(p) = park.as_mut() {
                    return self.park_recv(g, p);
                }
                if polls {
                    return Ok(0);
                }
                let (ng, _) = self.wait_cv(g, deadline);
                g = ng;
                continue;
            }
            // A poll of a frame transport looks at the ring itself (no system call), and
            // has the peer signal nothing (see `FrameRead::Look`): a sweep of many shm pipes
            // does not cost their peers a system call per message batch, nor the reactor a
            // wake-up. The control socket is read only when the reactor reported it readable
            // since the last look (a signal to clear, or the peer's end).
            let looks = self.frames && polls && park.is_none();
            if polls && !looks && g.read_armed && g.empty_at == Some(g.read_events) {
                // The transport was empty at the last read, and the reactor, which watches
                // it, has reported nothing since: still empty. No system call: a receive
                // that does not wait returns, an async one waits (the reactor reads for it
                // at the next event).
                if let Some(p) = park.as_mut() {
                    return self.park_recv(g, p);
                }
                drop(g);
                return Ok(0);
            }
            g.reading = true;
            g.stats.reads += 1;
            let events = g.read_events;
            let look = if looks {
                FrameRead::Look {
                    drain: g.read_to_end || g.looked_events != g.read_events,
                }
            } else {
                FrameRead::Signal
            };
            let mut r = take_rbuf(&mut g);
            let needed = r.prepare(&mut g.session);
            drop(g);
            let res = self.read_once(&mut r, needed, wait, look, deadline);
            attempted = true;
            g = self.lock();
            if look == (FrameRead::Look { drain: true }) {
                g.looked_events = events;
            }
            let found = !matches!(&res, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            g.empty_at = (!found).then_some(events);
            // What the read brought is handed to the caller at once where it may be (nothing
            // was queued for it: it would otherwise be queued now and taken at the loop's
            // next turn).
            let mut take = Take::new(&mut g, &self.span, &mut *sink);
            // (Counted as they go: a failure later in the same input keeps them handed.)
            more = self.absorb_to(&mut g, &mut r, res, max, &mut take);
            handed = take.count_into(&mut g);
            g.rbuf = Some(r);
            g.reading = false;
            if found {
                self.notify(&mut g);
            } else {
                if polls && park.is_none() && !g.read_armed && g.blocking_reads == g.seen_blocking {
                    // A caller that polls: have the reactor watch the transport, so that the
                    // next polls of an empty pipe cost no system call. (A fresh registration
                    // reports input that is there already.)
                    self.read_for_async(&mut g);
                }
                // Nothing came: threads are told (one may take over reading); async receives
                // go on waiting, with the reactor reading for them (waking them would have
                // them read in turn, for nothing).
                if g.waiters > 0 {
                    self.cv.notify_all();
                }
                if g.wakers.wants_messages() {
                    self.read_for_async(&mut g);
                }
            }
            g = self.flush_if_idle(g);
            if handed == max {
                // The read brought all that was asked for (and nothing was left before it).
                return Ok(self.took(g, handed));
            }
        }
    }

    /// A receive took `n` messages (counted): lets the reactor read ahead again if the
    /// receive queue has room now, and returns `n`.
    #[inline]
    fn took(&self, mut g: MutexGuard<'_, Shared>, n: usize) -> usize {
        if g.session.receive_paused() && g.session.recv_low() {
            self.resume_reading(&mut g);
        }
        drop(g);
        self.run_callbacks();
        n
    }

    /// The receive queue has room again after the reactor paused reading: lets it read
    /// ahead once the caller is idle.
    #[inline(never)]
    fn resume_reading(&self, g: &mut Shared) {
        g.sample_at = None;
        g.session.resume_receive(Instant::now());
        g.recheck_at.get_or_insert(Instant::now() + RECHECK);
        self.reschedule(g);
    }

    /// An async receive found nothing: fails with `TimedOut` past its deadline, else
    /// registers its waker (woken by whatever delivers, or by the deadline's timer) and makes
    /// sure someone reads: the reactor watches the transport while an async receive waits.
    fn park_recv(&self, mut g: MutexGuard<'_, Shared>, p: &mut Park<'_>) -> Result<usize, Error> {
        if p.deadline.is_some_and(|d| Instant::now() >= d) {
            drop(g);
            self.run_callbacks();
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("no message from {} before the receive timeout", self.who),
            ));
        }
        g.wakers
            .register(p.key, p.waker, WaitFor::Message, p.deadline);
        if p.deadline.is_some() {
            self.reschedule(&mut g);
        }
        if !g.reading {
            // (A reader at work wakes us when it brings something, or else arms the reactor.)
            self.read_for_async(&mut g);
        }
        drop(g);
        self.run_callbacks();
        Ok(0)
    }

    /// Makes the reactor watch the transport for async receives that wait, unless it does
    /// already (or there is nothing to read: the pipe ended, is between connections, or its
    /// receive queue is full). Registering afresh reports input that arrived meanwhile, so
    /// nothing is missed.
    fn read_for_async(&self, g: &mut Shared) {
        if !g.read_armed
            && g.terminal.is_none()
            && g.local_closed.is_none()
            && g.state() != PipeState::Reconnecting
            && !g.session.receive_paused()
        {
            g.read_armed = true;
            g.seen_reads = g.caller_reads;
            self.update_interest(g);
        }
    }

    /// One read attempt by a caller. `WouldBlock` when nothing arrived before the deadline.
    /// `look`: how a read that does not wait treats an empty frame transport (see
    /// [`FrameRead`]).
    fn read_once(
        &self,
        r: &mut ReadBuf,
        needed: usize,
        wait: Wait,
        look: FrameRead,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        with_transport(
            r,
            |r| &mut r.transport,
            || self.t(),
            |r, t| match wait {
                Wait::No => r.recv(t, needed, look),
                Wait::Forever => r.recv(t, needed, FrameRead::Wait),
                Wait::Until(_) => {
                    if t.wait_readable(deadline)? {
                        r.recv(t, needed, FrameRead::Signal)
                    } else {
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                }
            },
        )
    }

    /// Feeds the result of a read to the session. Returns whether the transport may have
    /// more (the read neither failed nor found it empty).
    fn absorb(&self, g: &mut Shared, r: &mut ReadBuf, res: io::Result<usize>) -> bool {
        self.absorb_to(g, r, res, 0, &mut |_: Received<'_>| {})
    }

    /// [`Conn::absorb`] for a caller that waits for up to `max` messages, with nothing
    /// queued for it: messages the session may hand out at once go to `sink` (see
    /// `Session::handle_input_to`; those handed before a failure of the input stay handed).
    /// Returns whether to read on.
    fn absorb_to(
        &self,
        g: &mut Shared,
        r: &mut ReadBuf,
        res: io::Result<usize>,
        max: usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> bool {
        g.stats.bytes_read_in_place += std::mem::take(&mut r.in_place);
        if !matches!(res, Ok(n) if n > 0) {
            // A buffer lent for a read that brought nothing goes back as it was. (After a read
            // that brought something, `feed_to` gives it back first.)
            let now = g.session.now();
            if let Err(e) = r.give_back(&mut g.session, now) {
                let err = proto_error(e, &self.who);
                self.end(g, err, PipeState::Closed);
                return false;
            }
        }
        match res {
            Ok(0) => {
                self.on_eof(g);
                false
            }
            Ok(_) => {
                if g.resume_ids.len() > 1 {
                    // The dialer speaks on the new session: it saw our WELCOME, and will only
                    // ever name this session again.
                    g.resume_ids = vec![g.session.session_id()];
                }
                if let Err(e) = r.feed_to(&mut g.session, None, max, sink) {
                    let err = proto_error(e, &self.who);
                    self.end(g, err, PipeState::Closed);
                }
                self.drain_events(g);
                if g.session.take_input_timers() {
                    self.reschedule(g);
                }
                g.terminal.is_none()
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                self.fail_transport(g, e);
                false
            }
        }
    }

    /// The reactor reads ahead: until the socket is empty, the pipe ends, or the receive
    /// queue reaches its high-water mark (then reading pauses until the application drains
    /// it). Never while a caller reads.
    /// Hands reading to the reactor (the pipe is idle, or a new connection starts), and
    /// reads now what would raise no readiness event: input the transport holds itself
    /// (decrypted TLS bytes, frames that came with the handshake), and on a frame transport
    /// anything at all, since shm rings the reactor's socket only once a read has found
    /// nothing. Without this a new or resumed connection could go unread by the reactor (a
    /// pipe that only sends would miss its PONGs and acks).
    fn arm_reads<'a>(&'a self, mut g: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        g.read_armed = true;
        self.update_interest(&mut g);
        if self.frames || self.t().buffered_input() {
            g = self.read_ahead(g);
        }
        g
    }

    fn read_ahead<'a>(&'a self, mut g: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        let was_open = g.terminal.is_none();
        g.reading = true;
        let r = take_rbuf(&mut g);
        #[cfg(duct_uring)]
        let r = match self.stage_read(g, r, was_open) {
            Ok(g) => return g,
            Err((g2, r)) => {
                g = g2;
                r
            }
        };
        self.read_on(g, r, was_open)
    }

    /// On an io_uring reactor thread: hands the first receive of a read-ahead to the thread's
    /// ring, to go with those of the other pipes it reads in this pass (one system call for
    /// all); the read goes on in [`Reactive::on_recv`]. `Err`: read here instead.
    #[cfg(duct_uring)]
    #[allow(clippy::type_complexity)]
    fn stage_read<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        mut r: Box<ReadBuf>,
        was_open: bool,
    ) -> Result<MutexGuard<'a, Shared>, (MutexGuard<'a, Shared>, Box<ReadBuf>)> {
        if g.session.recv_full() || g.session.reads_in_place() || !super::reactor::can_stage() {
            // (A fragment under way is read here, in place: see `ReadBuf::prepare`.)
            return Err((g, r));
        }
        let Some(me) = self.me().upgrade() else {
            return Err((g, r));
        };
        let t = r.transport.take().unwrap_or_else(|| self.t());
        let staged = match t.ring_socket() {
            Some(fd) => {
                let needed = g.session.input_needed(&r.data);
                let buf = r.lend(needed);
                super::reactor::stage_recv(fd, buf, me).map_err(|buf| r.data = buf)
            }
            None => Err(()),
        };
        r.transport = Some(t);
        match staged {
            Ok(()) => {
                g.stats.reads += 1;
                g.stats.ring_reads += 1;
                g.ring_read = Some((r, was_open, g.read_events));
                Ok(g)
            }
            Err(()) => Err((g, r)),
        }
    }

    /// On an io_uring reactor thread: lends the write queue (`w`'s, replaced by an empty
    /// stand-in) to the thread's ring, to be sent with the other requests of this pass in one
    /// system call; the flush goes on in [`Reactive::on_send`]. `false`: write here instead.
    #[cfg(duct_uring)]
    fn stage_write(&self, g: &mut Shared, w: &mut Box<WriteQueue>) -> bool {
        let Some(me) = self.me().upgrade() else {
            return false;
        };
        // (The queue keeps its transport, and with it the fd, while the ring holds it.)
        let t = Arc::clone(w.transport.get_or_insert_with(|| self.t()));
        let Some(fd) = t.ring_socket() else {
            return false;
        };
        w.restamp();
        let stand_in = g
            .spare_wq
            .take()
            .unwrap_or_else(|| Box::new(WriteQueue::new()));
        let queue = std::mem::replace(w, stand_in);
        match super::reactor::stage_send(fd, queue, me) {
            Ok(()) => {
                g.stats.ring_writes += 1;
                true
            }
            Err(queue) => {
                g.spare_wq = Some(std::mem::replace(w, queue));
                false
            }
        }
    }

    /// Reads ahead with `r` (see [`Conn::read_ahead`]), then gives it back and clears
    /// `reading`.
    fn read_on<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        mut r: Box<ReadBuf>,
        was_open: bool,
    ) -> MutexGuard<'a, Shared> {
        loop {
            if g.session.recv_full() {
                let now = Instant::now();
                g.session.pause_receive(now);
                // What waits unread from now on ages in the transport: its TTL is charged
                // with the wait when it is read (sampled again every AGE_SAMPLE).
                let backlog = r.held() + self.t().pending_input();
                g.session.age_input(backlog, now);
                g.sample_at = Some(now + AGE_SAMPLE);
                self.reschedule(&mut g);
                g.read_armed = false;
                self.update_interest(&mut g);
                break;
            }
            let needed = r.prepare(&mut g.session);
            g.stats.reads += 1;
            let events = g.read_events;
            let short_drains = !g.read_to_end;
            drop(g);
            // Whether the transport is empty after this read (as of `events`): it said
            // `WouldBlock`, or a plain socket's read left room in the buffer.
            let mut drained = false;
            let res = with_transport(
                &mut *r,
                |r| &mut r.transport,
                || self.t(),
                |r, t| {
                    let res = r.recv(t, needed, FrameRead::Signal);
                    drained =
                        read_drained(&res, r.short_read(), short_drains && t.short_read_drains());
                    res
                },
            );
            g = self.lock();
            if drained {
                // (As a caller's read records it: see `empty_at`.)
                g.empty_at = Some(events);
            }
            if !self.absorb(&mut g, &mut r, res) {
                // Empty, ended or failed.
                g.read_to_end = false;
                break;
            }
            if drained {
                break;
            }
        }
        self.read_on_done(g, r, was_open)
    }

    /// Ends a read: gives `r` back, clears `reading`, reports an end the read found and
    /// wakes the pipe's waiters.
    fn read_on_done<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        r: Box<ReadBuf>,
        was_open: bool,
    ) -> MutexGuard<'a, Shared> {
        g.rbuf = Some(r);
        g.reading = false;
        if was_open && g.local_closed.is_none() {
            if let Some(err) = g.terminal.clone() {
                if err.kind() != ErrorKind::Closed {
                    self.report_later(&mut g, &err);
                }
            }
        }
        self.notify(&mut g);
        g
    }

    /// Queues `err` for `on_error` (run once the lock is released): for errors no call is
    /// there to return.
    fn report_later(&self, g: &mut Shared, err: &Error) {
        if self.config.on_error.is_some() {
            g.pending_errors.push(err.clone());
            self.callbacks_pending.store(true, Ordering::Release);
        }
    }

    /// Handles the events the session raised (a peer's close, a pong, a connection).
    #[inline]
    fn drain_events(&self, g: &mut Shared) {
        // (After every input, and events are rare: the loop is out of line.)
        if g.session.has_event() {
            self.handle_events(g);
        }
    }

    /// [`Conn::drain_events`] when there are some.
    #[inline(never)]
    fn handle_events(&self, g: &mut Shared) {
        while let Some(ev) = g.session.poll_event() {
            match ev {
                Event::PeerClosed(c) => {
                    let err = Error::closed(c.code, c.reason, true);
                    if g.local_closed.is_some() || g.terminal.is_some() {
                        self.end(g, err, PipeState::Closed);
                        continue;
                    }
                    // A dialer that redials connects again (a server restarting closes its
                    // connections first); the peer's code and reason are the cause. Between
                    // connections this is the old one's last word, and changes nothing.
                    let step = g.life.peer_closed(Instant::now(), fastrand::f64());
                    self.follow(g, step, err);
                }
                Event::Pong { .. } => {
                    #[cfg(feature = "metrics")]
                    if let (Some(rtt), Some(m)) = (g.session.take_rtt_sample(), &self.metrics) {
                        m.record_rtt(rtt);
                    }
                }
                Event::Connected { .. } => {}
            }
        }
    }

    fn on_eof(&self, g: &mut Shared) {
        if g.local_closed.is_some() {
            // Our own shutdown of the receiving side: `close` is draining output and ends the
            // pipe itself.
            return;
        }
        g.session.transport_lost(Instant::now());
        if g.terminal.is_none() {
            let err = Error::new(
                ErrorKind::Disconnected,
                format!("{} closed the connection without a CLOSE frame", self.who),
            );
            self.end(g, err, PipeState::Disconnected);
        }
    }

    fn fail_transport(&self, g: &mut Shared, e: io::Error) -> Error {
        if let Some(t) = &g.terminal {
            return t.clone();
        }
        g.session.transport_lost(Instant::now());
        let err = Error::io(e, format_args!("connection to {}", self.who));
        if let Some((code, reason)) = g.local_closed.clone() {
            // Closing anyway: the pipe ends as the user asked; the failed goodbye is reported.
            if let Some(cb) = &self.config.on_error {
                cb(&err);
            }
            self.end(g, Error::closed(code, reason, false), PipeState::Closed);
            return err;
        }
        let state = if err.kind() == ErrorKind::Disconnected {
            PipeState::Disconnected
        } else {
            PipeState::Closed
        };
        self.end(g, err.clone(), state);
        err
    }

    /// Records the end of the connection (first cause wins), stops background service, and
    /// wakes every waiter. Threads blocked in the transport are woken by a shutdown. A break
    /// (`state` Disconnected) of a pipe that reconnects, or whose dialer may come back, leaves
    /// it Reconnecting instead.
    fn end(&self, g: &mut Shared, err: Error, state: PipeState) {
        if g.terminal.is_some()
            || (g.state() == PipeState::Reconnecting && g.local_closed.is_none())
        {
            return;
        }
        if state == PipeState::Disconnected && g.local_closed.is_none() {
            let step = g
                .life
                .broke(Instant::now(), resumable(&g.session), fastrand::f64());
            if self.follow(g, step, err.clone()) {
                return;
            }
        }
        let change = g.life.close();
        self.end_final(g, err, change);
    }

    /// Carries out the lifecycle's answer to a break or a peer's close (`err`): wait for the
    /// next connection, or end the pipe. `false` when the event did not apply.
    fn follow(&self, g: &mut Shared, step: Result<(Change, Next), Ignored>, err: Error) -> bool {
        match step {
            Ok((change, next)) if change.to == Phase::Reconnecting => {
                self.begin_break(g, change, err, next)
            }
            Ok((change, _)) => self.end_final(g, err, Ok(change)),
            Err(_) => return false,
        }
        true
    }

    /// The connection broke and the pipe waits for the next one (it dials, or its dialer
    /// comes back): tear the transport down, keep what was received and queued, and arrange
    /// `next` (the first attempt, or the end of the resume window).
    fn begin_break(&self, g: &mut Shared, change: Change, err: Error, next: Next) {
        tracing::info!(
            name: "disconnected",
            target: "duct::pipe",
            parent: &self.span,
            cause = %err,
            error_kind = ?err.kind(),
            reconnecting = true,
            "disconnected"
        );
        let in_ms = |at: Instant| at.saturating_duration_since(Instant::now()).as_millis() as u64;
        match next {
            Next::AttemptAt(at) => tracing::info!(
                name: "reconnecting",
                target: "duct::pipe",
                parent: &self.span,
                first_attempt_in_ms = in_ms(at),
                "reconnecting"
            ),
            Next::ExpireAt(at) => tracing::info!(
                name: "reconnecting",
                target: "duct::pipe",
                parent: &self.span,
                resume_window_ms = in_ms(at),
                "waiting for the dialer to reconnect and resume"
            ),
            Next::Nothing => {}
        }
        self.apply(g, change, Some(err.clone()));
        self.report_later(g, &err);
        g.break_cause = Some(err);
        g.read_armed = false;
        g.write_armed = false;
        g.recheck_at = None;
        self.update_interest(g);
        self.t().shutdown();
        while let Some(d) = g.session.poll_message() {
            g.carry.push_back(d);
        }
        match next {
            Next::AttemptAt(at) | Next::ExpireAt(at) => reconnect::schedule(self.me(), at),
            Next::Nothing => {}
        }
        self.notify(g);
    }

    fn me(&self) -> Weak<Conn> {
        self.me.clone()
    }

    /// Runs on the reconnect thread when a reconnect attempt is due (dialed pipes) or a
    /// resume window may have passed (accepted pipes).
    pub(crate) fn on_reconnect_timer(self: &Arc<Self>) {
        match self.config.redial.clone() {
            Some(redial) => self.attempt_reconnect(&redial),
            None => self.check_resume_window(),
        }
    }

    /// One reconnect attempt: connect and handshake (asking to resume the last session when
    /// RESUME was agreed on it), then take the new connection over, or schedule the next
    /// attempt, or end the pipe when attempts are used up.
    fn attempt_reconnect(self: &Arc<Self>, redial: &crate::pipe::Redial) {
        let (resume_id, last_received) = {
            let g = self.lock();
            if g.state() != PipeState::Reconnecting || g.local_closed.is_some() {
                return;
            }
            // The new session starts from what arrived so far (nothing arrives meanwhile).
            if resumable(&g.session) {
                (g.life.session_id(), Some(g.session.recv_state().clone()))
            } else {
                (0, None)
            }
        };
        let result = crate::pipe::connect_handshake(
            &redial.addr,
            &redial.ep,
            &redial.opts,
            redial.instance_id,
            resume_id,
            last_received,
        );
        let mut g = self.lock();
        if g.state() != PipeState::Reconnecting || g.local_closed.is_some() {
            return; // closed meanwhile: the new connection (if any) is dropped
        }
        match result {
            Ok(hs) => {
                let resumed = hs.session.negotiated().is_some_and(|n| n.resumed);
                let lost = (resume_id != 0 && !resumed).then(|| {
                    let text = format!(
                        "reconnected to {}, but it no longer had session {resume_id:#x} of this \
                         pipe (its resume window passed, or it restarted): this is a new \
                         session, and messages in flight at the break are lost",
                        redial.addr
                    );
                    Error::new(ErrorKind::SessionLost, text)
                });
                self.attach(g, hs, lost);
            }
            Err(e) => {
                let attempt = g.life.attempts() + 1;
                let e = Error::new(
                    e.kind(),
                    format!("reconnect attempt {attempt} to {}: {e}", redial.addr),
                );
                tracing::debug!(
                    name: "reconnect_failed",
                    target: "duct::pipe",
                    parent: &self.span,
                    attempt,
                    error = %e,
                    error_kind = ?e.kind(),
                    "reconnect attempt failed"
                );
                self.report_later(&mut g, &e);
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::Incompatible | ErrorKind::Tls
                ) {
                    // The listener refuses us (or we refuse its certificate) for good: trying
                    // again would only storm it.
                    let change = g.life.close();
                    self.end_final(&mut g, e, change);
                    drop(g);
                    self.run_callbacks();
                    return;
                }
                match g.life.attempt_failed(Instant::now(), fastrand::f64()) {
                    Ok(Ok(at)) => reconnect::schedule(self.me(), at),
                    Ok(Err(change)) => {
                        let (unacked, _) = g.session.outbox().inflight();
                        let last = if unacked > 0 {
                            Error::new(
                                ErrorKind::SessionLost,
                                format!(
                                    "{e} (gave up after {attempt} attempts); {unacked} reliable \
                                     messages were not acknowledged and may be lost"
                                ),
                            )
                        } else {
                            Error::new(e.kind(), format!("{e} (gave up after {attempt} attempts)"))
                        };
                        self.end_final(&mut g, last, Ok(change));
                    }
                    Err(_) => {}
                }
                drop(g);
                self.run_callbacks();
            }
        }
    }

    /// An accepted pipe's resume window may have passed: end the pipe if its dialer did not
    /// come back.
    fn check_resume_window(&self) {
        let mut g = self.lock();
        if g.local_closed.is_some() || g.terminal.is_some() {
            return;
        }
        let now = Instant::now();
        match g.life.expired(now) {
            Ok(change) => {
                let window = g.life.policy().resume_window.unwrap_or_default();
                let cause = g
                    .break_cause
                    .take()
                    .map_or_else(String::new, |c| format!(" after: {c}"));
                let (unacked, _) = g.session.outbox().inflight();
                let err = if unacked > 0 {
                    Error::new(
                        ErrorKind::SessionLost,
                        format!(
                            "{} did not reconnect within the resume window of {window:?}{cause}; \
                             {unacked} reliable messages sent to it were not acknowledged and \
                             may be lost",
                            self.who
                        ),
                    )
                } else {
                    Error::new(
                        ErrorKind::Disconnected,
                        format!(
                            "{} did not reconnect within the resume window of {window:?}{cause}",
                            self.who
                        ),
                    )
                };
                self.report_later(&mut g, &err);
                self.end_final(&mut g, err, Ok(change));
            }
            Err(_) => {
                // Woken early (the reconnect thread's clock): look again at the deadline.
                if let Some(d) = g.life.resume_deadline().filter(|d| *d > now) {
                    reconnect::schedule(self.me(), d);
                }
            }
        }
        drop(g);
        self.run_callbacks();
    }

    /// Listener side: the dialer of this pipe is back on a new connection (`hs`, whose HELLO
    /// asks to resume session `resume_id`). If this pipe still holds that session, the new
    /// connection takes it over (an old connection not yet known to be broken is dropped) and
    /// the HELLO is welcomed as resumed; otherwise `hs` is handed back untouched.
    pub(crate) fn try_resume(
        &self,
        mut hs: Box<Handshake>,
        resume_id: u64,
    ) -> Result<(), Box<Handshake>> {
        let mut g = self.lock();
        let phase = g.life.phase();
        if g.local_closed.is_some()
            || g.terminal.is_some()
            || !resumable(&g.session)
            || !g.resume_ids.contains(&resume_id)
            || !matches!(phase, Phase::Connected | Phase::Reconnecting)
        {
            return Err(hs);
        }
        let now = Instant::now();
        // The dialer learns which of its reliable messages this pipe has.
        let last = duct_proto::reliable::narrow(g.session.recv_state().cumulative());
        hs.session.set_last_received_seq(last);
        if hs.session.welcome(true, now).is_err() {
            return Err(hs);
        }
        if phase == Phase::Connected {
            // The dialer noticed the break first: drop the old connection now.
            g.session.transport_lost(now);
            let err = Error::new(
                ErrorKind::Disconnected,
                format!(
                    "{} reconnected; its earlier connection was dropped",
                    self.who
                ),
            );
            if let Ok((change, _)) = g.life.broke(now, true, 0.0) {
                self.begin_break(&mut g, change, err, Next::Nothing);
            }
        }
        self.attach(g, *hs, None);
        Ok(())
    }

    /// Takes over a new connection: transport, session and buffers are replaced; messages
    /// received earlier stay deliverable; messages queued earlier but not written (whole, see
    /// `duct_proto::session::requeue`) and messages sent while reconnecting go out on the new
    /// connection. `lost`: the session could not be resumed (reported, and the cause of the
    /// state change).
    fn attach<'a>(&'a self, mut g: MutexGuard<'a, Shared>, mut hs: Handshake, lost: Option<Error>) {
        // A caller may still be returning from the old transport (shut down, so promptly):
        // the read and write buffers are replaced only once nobody uses them.
        while g.reading || g.writing {
            g = self.wait_cv(g, None).0;
        }
        if g.state() != PipeState::Reconnecting || g.local_closed.is_some() {
            return; // closed meanwhile: the new connection is dropped
        }
        let session_id = hs.take_connected();
        let resumed = hs.session.negotiated().is_some_and(|n| n.resumed);
        let now = Instant::now();
        if g.resume_ids.len() >= MAX_RESUME_IDS {
            g.resume_ids.remove(1);
        }
        g.resume_ids.push(session_id);
        let peer_addr = hs.stream.peer_addr();
        self.span.record("session_id", session_id);
        self.span
            .record("peer_addr", tracing::field::display(&peer_addr));
        *self.peer_addr.write().unwrap_or_else(|p| p.into_inner()) = peer_addr;
        let transport = {
            let mut t = self.transport.write().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = t.frame_io() {
                // The old connection's counts stay in the pipe's totals.
                f.counts().add_to(&mut g.stats);
            }
            *t = Arc::new(hs.stream);
            Arc::clone(&t)
        };
        // The old session's counters are the pipe's; its outbox (messages not framed, and
        // those sent while reconnecting) moves to the new session.
        g.collect_drops();
        let mut old = std::mem::replace(&mut g.session, hs.session);
        let mut outbox = old.take_outbox();
        // Messages whose frames were handed to the old transport but not written go back to
        // the front of their channels, whole (a message partly written is lost with the
        // connection, unless its rest was still in the outbox: then it starts again there).
        let unsent = {
            // Nobody reads or writes (checked above, under the lock): the queue is here.
            let w = g.wq.get_or_insert_with(|| Box::new(WriteQueue::new()));
            let old_frames = std::mem::replace(&mut **w, hs.wq);
            // (The new queue counts its writes from 0: a stall seen on the old one is gone.)
            g.room_stalled = None;
            duct_proto::session::requeue(old_frames.into_frames())
        };
        let rewound = outbox.rewind();
        for channel in &unsent.open {
            if !rewound.contains(channel) {
                outbox.count_lost(*channel, 1, now);
            }
        }
        for channel in &unsent.lost_channels {
            outbox.count_lost(*channel, 1, now);
        }
        outbox.requeue_front(unsent.messages, now);
        // Reliable messages the peer lacks go again first (with their numbers after a
        // resume; as new ones to a peer that started afresh, which may then see some twice).
        // (The new session is established: adopting cannot fail.)
        let again = g
            .session
            .adopt(outbox, old.take_recv_state(), now)
            .unwrap_or(0);
        let lost = match lost {
            Some(e) if again > 0 => Some(Error::new(
                e.kind(),
                format!(
                    "{e}; {again} reliable messages unacknowledged at the break are sent again \
                     on the new session (the peer may have had some of them: they may arrive \
                     twice)"
                ),
            )),
            None if again > 0 => Some(Error::new(
                ErrorKind::SessionLost,
                format!(
                    "reconnected to {}, which keeps no session across connections (no resume \
                     window): {again} reliable messages unacknowledged at the break are sent \
                     again on the new session (the peer may have had some of them: they may \
                     arrive twice)",
                    self.who
                ),
            )),
            other => other,
        };
        {
            let mut w = g.wq.take().unwrap_or_else(|| Box::new(WriteQueue::new()));
            w.set_transport(Arc::clone(&transport));
            w.take_from(&mut g.session, now);
            g.wq_bytes = w.bytes();
            g.wq_frames = w.frames();
            g.wq = Some(w);
            let mut rbuf = hs.rbuf;
            rbuf.transport = Some(transport);
            g.rbuf = Some(Box::new(rbuf));
        }
        g.break_cause = None;
        g.stats.reconnects += 1;
        if resumed {
            tracing::info!(
                name: "resumed",
                target: "duct::pipe",
                parent: &self.span,
                session_id,
                resent = again,
                "resumed"
            );
        } else {
            tracing::info!(
                name: "reconnected",
                target: "duct::pipe",
                parent: &self.span,
                session_id,
                resent = again,
                "reconnected"
            );
        }
        if let Some(e) = &lost {
            tracing::info!(
                name: "session_lost",
                target: "duct::pipe",
                parent: &self.span,
                cause = %e,
                "session lost"
            );
            self.report_later(&mut g, e);
        }
        if let Ok(change) = g.life.connected(session_id) {
            self.apply(&mut g, change, lost);
        }
        g.registered = None;
        g.seen_reads = g.caller_reads;
        g.empty_at = None;
        g.timer_at = None;
        g = self.arm_reads(g);
        g = self.flush_if_idle(g);
        self.reschedule(&mut g);
        self.notify(&mut g);
        drop(g);
        self.run_callbacks();
    }

    /// Queues `change` for `on_state_change` (run once the lock is released).
    fn apply(&self, g: &mut Shared, change: Change, cause: Option<Error>) {
        g.pending_callbacks.push(StateChange::new(
            pipe_state(change.from),
            pipe_state(change.to),
            change.session_id,
            self.config.pipe_id,
            cause,
        ));
        self.callbacks_pending.store(true, Ordering::Release);
    }

    /// Ends the pipe for good with `err` (every later call returns it); `change` is the
    /// lifecycle's move into the final state (ignored when it was final already).
    fn end_final(&self, g: &mut Shared, err: Error, change: Result<Change, Ignored>) {
        if g.terminal.is_some() {
            return;
        }
        g.terminal = Some(err.clone());
        // Messages that never left are lost with the pipe: counted (stats `dropped`).
        g.session.outbox_mut().clear();
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            // The last periodic figures are followed by the final ones, published once the
            // lock is released.
            g.publish_at = None;
            g.publish_due = true;
            self.callbacks_pending.store(true, Ordering::Release);
        }
        if let Ok(change) = change {
            self.log_end(g, pipe_state(change.to), &err);
            // A close the user asked for has no cause; anything else does.
            let cause = g.local_closed.is_none().then_some(err);
            self.apply(g, change, cause);
        }
        g.read_armed = false;
        g.write_armed = false;
        g.recheck_at = None;
        self.update_interest(g);
        if g.local_closed.is_none() {
            #[cfg(duct_uring)]
            if g.ring_write.is_some() {
                // The write queue is in the reactor's ring, being sent: the CLOSE goes out
                // behind it when that send completes, then the shutdown (`on_send`).
                g.shutdown_after_send = true;
                self.notify(g);
                return;
            }
            // Tell the peer why (a CLOSE the session queued after a protocol error), then wake
            // any caller blocked in the transport (it would otherwise wait for the peer).
            self.goodbye(g);
            self.t().shutdown();
        }
        self.notify(g);
    }

    /// Logs the end of the pipe in `state` (Closed or Disconnected) because of `err`.
    fn log_end(&self, g: &Shared, state: PipeState, err: &Error) {
        if err.kind() == ErrorKind::SessionLost {
            tracing::info!(
                name: "session_lost",
                target: "duct::pipe",
                parent: &self.span,
                cause = %err,
                "session lost"
            );
        }
        if state == PipeState::Disconnected {
            tracing::info!(
                name: "disconnected",
                target: "duct::pipe",
                parent: &self.span,
                cause = %err,
                error_kind = ?err.kind(),
                reconnecting = false,
                "disconnected"
            );
            return;
        }
        let (initiator, close) = match (&g.local_closed, err.close_reason()) {
            (Some((code, reason)), _) => ("local", Some((*code, reason.as_str()))),
            (None, Some(close)) => ("peer", Some(close)),
            (None, None) => ("error", None),
        };
        tracing::info!(
            name: "closed",
            target: "duct::pipe",
            parent: &self.span,
            initiator,
            code = close.map(|c| c.0),
            reason = close.map(|c| c.1),
            cause = (initiator == "error").then(|| tracing::field::display(err)),
            "closed"
        );
    }

    /// Writes what the session queued last (CLOSE or REJECT), once and without blocking,
    /// unless another thread is writing.
    fn goodbye(&self, g: &mut Shared) {
        if g.writing || g.session.control_len() == 0 {
            return;
        }
        // Nobody writes (`writing` is false): the queue is here.
        debug_assert!(g.wq.is_some(), "a writer kept the write queue");
        let Some(mut w) = g.wq.take() else {
            return;
        };
        let now = g.session.now();
        w.take_from(&mut g.session, now);
        let _ = w.write_nonblocking(&*self.t());
        g.wq_bytes = w.bytes();
        g.wq_frames = w.frames();
        g.wq = Some(w);
    }

    /// Closes the connection: CLOSE with `code` and `reason` goes out behind everything queued,
    /// which is given up to `linger` to drain; then the socket is shut down, which wakes
    /// blocked callers.
    pub(crate) fn close(&self, code: u16, reason: &str, linger: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + linger;
        let mut g = self.lock();
        if g.local_closed.is_some() {
            return Ok(());
        }
        g.local_closed = Some((code, reason.to_owned()));
        g.session.close(code, reason, Instant::now());
        // Wake every blocked call now: receivers blocked in the transport, and senders waiting
        // for room (their messages were not accepted; they get Closed). Sending still works,
        // for the CLOSE and whatever was accepted before it.
        self.t().shutdown_read();
        self.notify(&mut g);
        // Drain: write what we can, and let the reactor write the rest as the socket frees.
        g = self.flush_if_idle(g);
        while g.terminal.is_none()
            && g.state() != PipeState::Reconnecting
            && (g.writing || g.wq_frames > 0 || g.session.wants_transmit())
        {
            let (ng, timed_out) = self.wait_cv(g, Some(deadline));
            g = ng;
            g = self.flush_if_idle(g);
            if timed_out {
                break;
            }
        }
        self.finish_close(g, linger);
        Ok(())
    }

    /// Ends a close: the pipe is Closed, the socket shut down, and bytes that could not be
    /// written within the linger time are reported (never silently dropped).
    fn finish_close(&self, mut g: MutexGuard<'_, Shared>, linger: Duration) {
        let unsent_msgs = g.session.outbox().len();
        let unsent = g.wq_bytes + g.session.outbox().bytes();
        // What never left is lost; counted per channel as dropped.
        g.session.outbox_mut().clear();
        let (code, reason) = g.local_closed.clone().unwrap_or_default();
        self.end(
            &mut g,
            Error::closed(code, reason, false),
            PipeState::Closed,
        );
        self.t().shutdown();
        if g.linger_until.take().is_some() {
            if let Some(h) = self.reactor.get() {
                h.release();
            }
        }
        drop(g);
        self.run_callbacks();
        if unsent > 0 {
            if let Some(cb) = &self.config.on_error {
                cb(&Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "close of the pipe to {}: {unsent_msgs} messages not yet framed and \
                         {unsent} bytes in all still queued when the linger time of {linger:?} \
                         ran out were discarded",
                        self.who
                    ),
                ));
            }
        }
    }

    /// Closes the pipe when its last handle is dropped, without blocking the dropping thread:
    /// CLOSE goes out behind everything queued; what the socket does not take at once, the
    /// reactor writes for up to the default linger, keeping the connection alive meanwhile.
    pub(crate) fn close_on_drop(self: Arc<Self>) {
        let linger = self.config.linger;
        let mut g = self.lock();
        if g.local_closed.is_some() {
            return;
        }
        g.local_closed = Some((close_code::NORMAL, "pipe dropped".to_owned()));
        g.session
            .close(close_code::NORMAL, "pipe dropped", Instant::now());
        self.t().shutdown_read();
        g = self.flush_if_idle(g);
        let pending = g.writing || g.wq_frames > 0 || g.session.wants_transmit();
        let handle = self.reactor.get();
        // Between connections there is nothing to write to: end now (what is queued is
        // reported as discarded) rather than hold the pipe for the linger time.
        let between = g.state() == PipeState::Reconnecting;
        if !pending || between || linger.is_zero() || g.terminal.is_some() || handle.is_none() {
            self.finish_close(g, linger);
            return;
        }
        g.linger_until = Some(Instant::now() + linger);
        self.reschedule(&mut g);
        drop(g);
        if let Some(h) = handle {
            h.hold(Arc::clone(&self) as Arc<dyn Reactive>);
        }
    }

    /// For a lingering pipe: finish the close once the queue drained or the linger ran out.
    fn check_linger<'a>(
        &'a self,
        g: MutexGuard<'a, Shared>,
        now: Instant,
    ) -> Option<MutexGuard<'a, Shared>> {
        let Some(until) = g.linger_until else {
            return Some(g);
        };
        let drained = !g.writing && g.wq_frames == 0 && !g.session.wants_transmit();
        if drained || now >= until || g.terminal.is_some() {
            let linger = self.config.linger;
            self.finish_close(g, linger);
            return None;
        }
        Some(g)
    }

    /// Runs state-change callbacks queued under the lock, without holding it, and publishes
    /// the pipe's figures when that is due.
    // (Inlined, the work out of line: called after every send and receive, and rarely due.)
    #[inline]
    fn run_callbacks(&self) {
        if self.callbacks_pending.load(Ordering::Acquire) {
            self.run_pending_callbacks();
        }
    }

    /// [`Conn::run_callbacks`] when some are pending.
    #[inline(never)]
    fn run_pending_callbacks(&self) {
        let (list, errors) = {
            let mut g = self.lock();
            #[cfg(feature = "metrics")]
            if std::mem::take(&mut g.publish_due) {
                drop(g);
                self.publish_metrics(false);
                g = self.lock();
            }
            if g.pending_callbacks.is_empty() && g.pending_errors.is_empty() {
                // Nothing left (another thread ran them, or only a publication was due):
                // the flag must not stay set, or `wait_cv` would never wait.
                #[cfg(feature = "metrics")]
                let publish_due = g.publish_due;
                #[cfg(not(feature = "metrics"))]
                let publish_due = false;
                if !publish_due {
                    self.callbacks_pending.store(false, Ordering::Release);
                }
                return;
            }
            self.callbacks_pending.store(false, Ordering::Release);
            (
                std::mem::take(&mut g.pending_callbacks),
                std::mem::take(&mut g.pending_errors),
            )
        };
        if let Some(cb) = &self.config.on_state_change {
            for change in list {
                cb(change);
            }
        }
        if let Some(cb) = &self.config.on_error {
            for e in &errors {
                cb(e);
            }
        }
    }
}

#[cfg(feature = "metrics")]
impl Conn {
    /// Copies the pipe's figures into its `metrics` handles (see `crate::observability`).
    /// Takes the pipe's lock only to copy them. `periodic`: a publication on the reactor
    /// thread, which registers the handles again if the recorder changed; others (the final
    /// ones, on whatever thread ended or dropped the pipe) keep the handles they find.
    fn publish_metrics(&self, periodic: bool) {
        if let Some(m) = &self.metrics {
            let mut figures = m.scratch.lock().unwrap_or_else(|p| p.into_inner());
            self.figures(&mut figures);
            m.publish(&figures, periodic);
        }
    }

    /// Fills `f` with the figures `stats()` gives, per channel (in channel order), with the
    /// queues and the reasons for drops. `f.channels` keeps its capacity.
    fn figures(&self, f: &mut observability::Figures) {
        let counts = self.t().frame_io().map(|f| f.counts());
        let mut g = self.lock();
        g.collect_drops();
        let channels = &mut f.channels;
        channels.clear();
        fn entry(
            channels: &mut Vec<observability::ChannelFigures>,
            channel: u16,
        ) -> &mut observability::ChannelFigures {
            let at = match channels.binary_search_by_key(&channel, |c| c.channel) {
                Ok(at) => at,
                Err(at) => {
                    channels.insert(
                        at,
                        observability::ChannelFigures {
                            channel,
                            ..Default::default()
                        },
                    );
                    at
                }
            };
            &mut channels[at]
        }
        for (channel, stats) in g.channels.map.iter() {
            let c = entry(channels, channel);
            c.stats = *stats;
            c.lost = g.channels.lost.get(channel).copied().unwrap_or(0);
            c.send_queue = g.session.outbox().queued(channel);
        }
        for (channel, msgs, bytes) in g.session.recv_queues() {
            entry(channels, channel).recv_queue = (msgs, bytes);
        }
        for d in &g.carry {
            // Received on an earlier connection, not yet delivered.
            let c = entry(channels, d.channel);
            c.recv_queue.0 += 1;
            c.recv_queue.1 += d.payload.len();
        }
        let c = counts.unwrap_or_default();
        f.connected = g.state() == PipeState::Connected;
        f.reconnects = g.stats.reconnects;
        f.rtt = g.session.rtt();
        f.copies = (
            g.stats.payload_frames_copied + c.copied_frames,
            g.stats.payload_bytes_copied + c.copied_bytes,
            g.stats.zero_copy_frames + c.lent_frames,
        );
        f.write_queue_bytes = g.wq_bytes;
    }
}

/// Whether a read that gave `res` found the transport empty: it said `WouldBlock`, or it
/// brought bytes and `left_room` in the buffer where a short read drains the transport
/// (`short_drains`: see `StreamTransport::short_read_drains` and `Shared::read_to_end`).
#[inline]
fn read_drained(res: &io::Result<usize>, left_room: bool, short_drains: bool) -> bool {
    match res {
        Ok(n) => *n > 0 && left_room && short_drains,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Whether the reactor reads for callers that poll (`try_recv`) instead of leaving the
/// socket to them: where its reads go through its io_uring ring and several pipes are ready
/// at once (one system call for all of them, where each poller would make one `recv` of its
/// own; see `reactor::reads_for_pollers`). A poller then finds the messages queued. `ring`:
/// the pipe's reads can go through the ring (a tcp or uds socket).
#[inline]
fn ring_reads_for_pollers(ring: bool) -> bool {
    #[cfg(duct_uring)]
    return ring && super::reactor::reads_for_pollers();
    #[cfg(not(duct_uring))]
    {
        let _ = ring;
        false
    }
}

impl Reactive for Conn {
    #[cfg(duct_uring)]
    fn on_recv(&self, buf: bytes::BytesMut, result: io::Result<usize>) {
        let mut g = self.lock();
        let Some((mut r, was_open, events)) = g.ring_read.take() else {
            debug_assert!(
                false,
                "a ring receive completed for a pipe that staged none"
            );
            return;
        };
        debug_assert!(g.reading);
        r.put_back(buf);
        // (A socket the ring reads is one whose short reads drain it.)
        let drained = read_drained(&result, r.short_read(), !g.read_to_end);
        if drained {
            // Empty as of the events counted when the read began: a caller that polls needs
            // no system call until the reactor reports more.
            g.empty_at = Some(events);
        }
        let more = self.absorb(&mut g, &mut r, result);
        if !more {
            g.read_to_end = false;
        }
        // A receive that left room found the socket empty: the poll reports what comes next,
        // so the read is over without another receive to see `WouldBlock` (unless the
        // receive queue just filled: the loop pauses reading first; or the event may have
        // been the peer's hang-up: see `read_to_end`).
        g = if more && (!drained || g.session.recv_full()) {
            self.read_on(g, r, was_open)
        } else {
            self.read_on_done(g, r, was_open)
        };
        g = self.flush_if_idle(g); // PONGs, CLOSE after a protocol error
        self.reschedule(&mut g);
        drop(g);
        self.run_callbacks();
    }

    #[cfg(duct_uring)]
    fn on_send(&self, queue: Box<WriteQueue>, result: io::Result<usize>) {
        let mut g = self.lock();
        let Some(progressed) = g.ring_write.take() else {
            debug_assert!(false, "a ring send completed for a pipe that staged none");
            return;
        };
        debug_assert!(g.writing);
        let mut w = take_wq(&mut g);
        g.spare_wq = Some(std::mem::replace(&mut w, queue));
        let moved = matches!(result, Ok(n) if n > 0);
        let sent = w.sent(result);
        g = self.flush_queue(g, w, progressed || moved, Some(sent));
        if std::mem::take(&mut g.shutdown_after_send) {
            // The pipe ended meanwhile (`end_final`): what it queued to say why goes now.
            self.goodbye(&mut g);
            self.t().shutdown();
        }
        drop(g);
        self.run_callbacks();
    }

    fn on_ready(&self, readable: bool, writable: bool, closed: bool) {
        let mut g = self.lock();
        if g.terminal.is_some() {
            return;
        }
        if readable {
            g.read_events = g.read_events.wrapping_add(1);
            if closed {
                g.read_to_end = true;
            }
            if !writable && g.polled_and_watched(self.frames) && !ring_reads_for_pollers(self.ring)
            {
                // A caller polls this pipe and the recheck is already set: the event just
                // counted is all its next poll needs (the general path below would do
                // nothing else). With many busy polled pipes this is most events.
                g.seen_reads = g.caller_reads;
                drop(g);
                self.run_callbacks();
                return;
            }
        }
        // A frame transport's readable fd also says that room for output appeared.
        let frames = self.frames;
        let writable = writable || (readable && frames);
        if frames && readable && g.writing {
            g.write_kick = true;
        }
        if writable && (g.write_armed || (frames && g.wq_frames > 0)) {
            // Rate limits and TTL judge by the session's clock.
            g.session.advance(Instant::now());
            if !frames && !g.writing && g.wq_frames == 0 && !g.session.wants_transmit() {
                // Watched for room with nothing left to write (see `flush_queue`): stop
                // watching (what `flush_if_idle` would do is nothing).
                g.write_armed = false;
                self.update_interest(&mut g);
            } else {
                g = self.flush_if_idle(g);
            }
        }
        let Some(mut g) = self.check_linger(g, Instant::now()) else {
            return;
        };
        if readable && g.read_armed {
            // A caller that polls `recv_async` does not read while it waits: the reactor
            // reads for it (it would otherwise wait for the next RECHECK).
            let polled = g.caller_polls() && ring_reads_for_pollers(self.ring);
            if g.reading
                || (!polled && g.caller_reads != g.seen_reads && !g.wakers.wants_messages())
            {
                // A caller is receiving: leave the socket to it and look again later.
                let polling = g.caller_polls();
                g.seen_reads = g.caller_reads;
                g.seen_blocking = g.blocking_reads;
                if polling {
                    // It polls without waiting (`try_recv`): the event just counted tells
                    // its next poll to read. Keep watching for it; if it stops polling, the
                    // recheck reads what came.
                    let at = Instant::now() + RECHECK;
                    g.recheck_at.get_or_insert(at);
                } else {
                    g.read_armed = false;
                    self.update_interest(&mut g);
                    g.recheck_at = Some(Instant::now() + RECHECK);
                }
                self.reschedule(&mut g);
            } else {
                g = self.read_ahead(g);
                g = self.flush_if_idle(g); // PONGs, CLOSE after a protocol error
            }
        }
        drop(g);
        self.run_callbacks();
    }

    fn on_timer(&self, now: Instant) {
        let mut g = self.lock();
        if g.terminal.is_some() {
            return;
        }
        if let Some(t) = g.timer_at.filter(|&t| t > now) {
            // Asked for after an earlier deadline that has since been dropped (a new
            // connection's): the reactor fired that one, and keeps one timer per source.
            if let Some(handle) = self.reactor.get() {
                handle.schedule(t);
            }
            return;
        }
        g.timer_at = None;
        // Async calls whose timeout passed poll again, and fail with TimedOut.
        g.wakers.wake_expired(now);
        g.session.advance(now);
        if g.state() == PipeState::Reconnecting {
            // Messages queued for the next connection still expire on time.
            g.session.outbox_mut().expire(now);
        }
        g = self.flush_if_idle(g);
        let Some(mut g) = self.check_linger(g, now) else {
            return;
        };
        if let Err(e) = g.session.handle_timeout(now) {
            let err = proto_error(e, &self.who);
            let state = if err.kind() == ErrorKind::Disconnected {
                PipeState::Disconnected
            } else {
                PipeState::Closed
            };
            self.end(&mut g, err.clone(), state);
            if g.state() != PipeState::Reconnecting {
                // (A break the pipe recovers from was reported by `begin_break`.)
                self.report_later(&mut g, &err);
            }
        }
        if !g.session.receive_paused() {
            g.sample_at = None; // (a new connection reads again)
        }
        if g.session.receive_paused() && !g.reading && g.sample_at.is_some_and(|t| t <= now) {
            // Nobody reads (checked under the lock), so the read buffer is here.
            let held = g.rbuf.as_ref().map_or(0, |r| r.held());
            let ahead = held + self.t().pending_input();
            g.session.age_input(ahead, now);
            g.sample_at = Some(now + AGE_SAMPLE);
        }
        if g.recheck_at.is_some_and(|t| t <= now) {
            g.recheck_at = None;
            // Left to the caller: not watched, or watched for a caller that polls with input
            // perhaps unread (on a frame transport always: a caller's poll asks the peer for
            // no signal, so input may have come without an event).
            let left = !g.read_armed || g.empty_at != Some(g.read_events) || self.frames;
            if left && !g.session.receive_paused() && g.terminal.is_none() {
                if g.caller_reads == g.seen_reads && !g.reading {
                    // The caller has been away for a whole RECHECK: read ahead for it.
                    g = if g.read_armed {
                        self.read_ahead(g)
                    } else {
                        self.arm_reads(g)
                    };
                } else {
                    g.seen_reads = g.caller_reads;
                    g.recheck_at = Some(now + RECHECK);
                }
            }
        }
        // Spill buffers a burst left free go once a second has passed without a new one.
        g.spill.trim_if_idle(now);
        #[cfg(feature = "metrics")]
        let publish = g.publish_at.is_some_and(|t| t <= now) && self.metrics.is_some();
        #[cfg(feature = "metrics")]
        if publish {
            g.publish_at = observability::next_publication(now);
        }
        g = self.flush_if_idle(g);
        self.reschedule(&mut g);
        drop(g);
        self.run_callbacks();
        // Periodic publications run here, on the reactor thread, so that they go to the
        // process's (global) recorder, whatever recorder a caller's thread has set.
        #[cfg(feature = "metrics")]
        if publish {
            self.publish_metrics(true);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(live) = &self.config.live {
            live.fetch_sub(1, Ordering::AcqRel);
        }
        // Normally closed already (close, or close_on_drop when the last handle went); this
        // covers connections that never got a handle.
        let _ = self.close(close_code::NORMAL, "pipe dropped", Duration::ZERO);
        // The last word: messages delivered after the end are counted too.
        #[cfg(feature = "metrics")]
        self.publish_metrics(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address range of the buffer `b` is a view into.
    fn within(b: &Bytes, buf: &std::ops::Range<usize>) -> bool {
        let at = b.as_ptr() as usize;
        buf.contains(&at)
    }

    #[test]
    fn spill_copies_reuse_a_buffer_once_its_copies_are_gone() {
        let mut spill = Spill::default();
        let payload = [7u8; 64];
        // Fill one buffer and hold its copies.
        let first: Vec<Bytes> = (0..SPILL_CHUNK / 64)
            .map(|_| spill.copy(&payload))
            .collect();
        let start = first[0].as_ptr() as usize;
        let range = start..start + SPILL_CHUNK;
        assert!(first.iter().all(|b| within(b, &range) && b[..] == payload));
        // The next copy needs a buffer: the first is held, so a new one.
        let second = spill.copy(&payload);
        assert!(!within(&second, &range));
        drop(first);
        // Filling the second buffer, the next copy goes back to the first: free again.
        let rest: Vec<Bytes> = (1..SPILL_CHUNK / 64)
            .map(|_| spill.copy(&payload))
            .collect();
        let again = spill.copy(&payload);
        assert!(within(&again, &range), "the free buffer was not reused");
        assert_eq!(spill.rotations, 3);
        drop((second, rest, again));
    }

    #[test]
    fn spill_keeps_at_most_its_spares_and_lets_free_ones_go_when_idle() {
        let mut spill = Spill::default();
        let payload = [1u8; 4096];
        // Hold copies across many buffers: spares stay bounded.
        let held: Vec<Bytes> = (0..40 * SPILL_CHUNK / 4096)
            .map(|_| spill.copy(&payload))
            .collect();
        assert!(spill.spares.len() <= SPILL_SPARES_MAX);
        drop(held);
        let t0 = Instant::now();
        // A timer sees the count, then one a second later with no new buffer trims.
        spill.trim_if_idle(t0);
        assert_eq!(spill.spares.len(), SPILL_SPARES_MAX);
        spill.trim_if_idle(t0 + Duration::from_millis(500));
        assert_eq!(spill.spares.len(), SPILL_SPARES_MAX, "trimmed before idle");
        spill.trim_if_idle(t0 + SPILL_IDLE);
        assert_eq!(spill.spares.len(), 1);
        // Larger copies get bytes of their own.
        let big = [2u8; SPILL_MAX + 1];
        assert_eq!(
            <&[u8] as OutPayload>::into_bytes(&big[..], &mut spill)[..],
            big[..]
        );
    }

    #[test]
    fn large_copies_reuse_their_buffers_once_gone_and_stay_bounded() {
        let mut spill = Spill::default();
        let payload = vec![3u8; 64 * 1024];
        let first = spill.copy_big(&payload);
        let at = first.as_ptr();
        assert_eq!(first[..], payload[..]);
        // Held: the next copy needs another buffer.
        let second = spill.copy_big(&payload);
        assert_ne!(second.as_ptr(), at);
        drop(first);
        // The oldest is gone: its buffer takes the next copy (and later a smaller one), no
        // allocation.
        let third = spill.copy_big(&payload);
        assert_eq!(third.as_ptr(), at, "the free buffer was not reused");
        drop((second, third));
        let _ = spill.copy_big(&payload); // (the second's buffer, oldest now)
        let smaller = spill.copy_big(&payload[..5000]);
        assert_eq!((smaller.as_ptr(), smaller.len()), (at, 5000));
        assert_eq!(smaller[..], payload[..5000]);
        drop(smaller);
        // Many held at once: at most SPILL_BIG_SPARES_MAX kept.
        let held: Vec<Bytes> = (0..SPILL_BIG_SPARES_MAX + 20)
            .map(|_| spill.copy_big(&payload))
            .collect();
        assert!(held.iter().all(|b| b[..] == payload[..]));
        assert_eq!(spill.big.len(), SPILL_BIG_SPARES_MAX);
        drop(held);
        // Larger than SPILL_BIG_MAX: not kept.
        let huge = vec![4u8; SPILL_BIG_MAX + 1];
        assert_eq!(spill.copy_big(&huge)[..], huge[..]);
        assert_eq!(spill.big.len(), SPILL_BIG_SPARES_MAX);
        // Idle for SPILL_IDLE: the free ones go.
        let t0 = Instant::now();
        spill.trim_if_idle(t0);
        spill.trim_if_idle(t0 + SPILL_IDLE);
        assert!(spill.big.is_empty());
    }
}
