//! The session: one connection's protocol state machine (handshake, framing, fragmentation,
//! ping/pong, close), driven by a driver that owns the transport and the clock.

mod inbox;
mod reassembly;
mod requeue;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::qos::{Admission, ChannelMap, Counts, KeepRun, Outbox, QosConfig, QueueRun, Quiet};
use crate::reliable::{Arrival, InOrder, RecvState};
use crate::wire::control::{
    self, caps, close_code, reject_code, Close, Hello, Reject, Welcome, VERSION_MAJOR,
    VERSION_MINOR,
};
use crate::wire::{flags, Deframer, FrameKind, Header, HANDSHAKE_MAX_PAYLOAD, HEADER_LEN};
use crate::Error;
use inbox::Inbox;
pub use inbox::{Part, Payload, ReceiveSink, Received};
use reassembly::ReassemblyBuffer;
pub use requeue::{requeue, Requeued};

/// The default of [`Config::direct_min`]: a fragment's payload shorter than this still to
/// come when its header is there is taken from the input buffer once whole (copied into its
/// message); a longer one as it comes, and it may be read in place
/// ([`Session::lend_direct`]).
pub const DIRECT_MIN: usize = 16 * 1024;

/// A fragment whose header came while the rest of its payload had not (see
/// [`Session::begin_pending`]).
#[derive(Debug)]
struct Pending {
    channel: u16,
    /// Payload bytes still to come.
    left: usize,
    /// Its header's flags and number (for the message's delivery, if it is the last).
    flags: u8,
    seq: u32,
    /// Lent out ([`Session::lend_direct`]): the buffer's length then.
    lent: Option<usize>,
}

/// A message's buffer lent to the driver to read the rest of a fragment into, in place
/// ([`Session::lend_direct`]).
#[derive(Debug)]
pub struct DirectRead {
    buf: BytesMut,
    room: usize,
}

impl DirectRead {
    /// The buffer: read into its spare capacity (which holds at least [`DirectRead::room`]
    /// bytes) and extend its length by what was read. Its bytes before that are the
    /// message's so far: leave them as they are.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The most bytes to read into it: the rest of the fragment (what follows in the input
    /// is the next frame's).
    pub fn room(&self) -> usize {
        self.room
    }
}

/// Smallest max frame payload a peer may announce.
pub const MIN_FRAME_PAYLOAD: u32 = 1024;
/// Largest max frame payload a peer may announce (and this side will use).
pub const MAX_FRAME_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Most samples of input waiting in the transport kept at once (see
/// [`Session::age_input`]); later ones are ignored until these are handled.
pub const MAX_AGE_SAMPLES: usize = 4096;
/// Shortest heartbeat interval used, whatever was agreed (1 ms on the wire is allowed, but
/// a PING storm is not).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Bytes of the buffer PING tokens are cut from (512 tokens).
const PING_SCRATCH: usize = 4096;

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens the connection and sends HELLO.
    Dialer,
    /// Accepts the connection and answers with WELCOME or REJECT.
    Listener,
}

/// Session parameters. Every limit has a default; see each field.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest frame payload this side accepts; the peer fragments above it. Default 64 KiB.
    /// Clamped to [`MIN_FRAME_PAYLOAD`]..=[`MAX_FRAME_PAYLOAD`].
    pub max_frame_payload: u32,
    /// Largest message (after reassembly) this side accepts, and sends. Default 64 MiB.
    pub max_message_size: u32,
    /// Most bytes held in partially reassembled messages at once. Default 64 MiB + 64 KiB.
    pub reassembly_limit: usize,
    /// How long a fragmented message may take to complete. Default 30 s.
    pub reassembly_timeout: Duration,
    /// A fragment whose header is in the input while at least this many bytes of its payload
    /// are not yet is taken as it comes: its header and the bytes there at once, the rest as
    /// it arrives, from the input buffer or read in place ([`Session::lend_direct`]). Default
    /// [`DIRECT_MIN`] (16 KiB). Fuzzers and tests lower it to reach that way with small
    /// frames.
    pub direct_min: usize,
    /// How long the handshake may take. Default 5 s.
    pub handshake_timeout: Duration,
    /// Heartbeat interval to propose (`None`: no heartbeats from this side). Default `None`.
    ///
    /// With heartbeats, this side sends a PING whenever it has received nothing for the agreed
    /// interval (the smaller non-zero proposal of the two sides), and fails with
    /// [`Error::PeerSilent`] when it has received nothing for `heartbeat_misses` intervals. A
    /// side without heartbeats still answers PINGs.
    pub heartbeat_interval: Option<Duration>,
    /// Silent intervals before the peer is declared gone (0 counts as 1). Default 5.
    pub heartbeat_misses: u32,
    /// Capability bits to offer (intersected with what this implementation supports,
    /// [`caps::SUPPORTED`]). Default [`caps::TTL`]: offer [`caps::RESUME`] only when the
    /// driver will use it (a dialer that reconnects, a listener that keeps broken sessions).
    /// Without TTL agreed, frames carry no TTL and a received `TTL_PRESENT` is ignored.
    pub capabilities: u64,
    /// The dialing pipe's identity, stable across its reconnects (dialer only).
    pub instance_id: u64,
    /// The id the listener gives the new session (listener only; 0 is replaced by 1).
    pub session_id: u64,
    /// The session this dialer asks to resume (dialer only; 0: a fresh session). Only a
    /// session on which [`caps::RESUME`] was agreed can be resumed.
    pub resume_session_id: u64,
    /// Listener only: stop after a valid HELLO until the driver decides. The session then
    /// stays [`State::Handshaking`] with [`Session::pending_hello`] set, and waits for
    /// [`Session::welcome`] or [`Session::refuse`] (the handshake deadline still runs).
    /// Default `false`: a valid HELLO is welcomed at once as a fresh session.
    pub defer_welcome: bool,
    /// Dialer only: the last reliable message number received on the session to resume
    /// (HELLO's `last_received_seq`; the low 32 bits of [`RecvState::cumulative`]).
    pub last_received_seq: u32,
    /// Dialer resuming a session: what arrived of the peer's reliable messages so far, so
    /// that messages the peer sends again right after WELCOME are recognised (its
    /// cumulative number goes in HELLO, overriding `last_received_seq`).
    pub recv_state: Option<RecvState>,
    /// Dialer only: typed extensions HELLO carries (a token for the listener's
    /// authentication: [`control::EXT_TOKEN`]).
    pub hello_extensions: Vec<control::Extension>,
    /// Protocol version announced. Only tests change it.
    pub version: (u8, u8),
    /// Per-channel queue limits, policies, TTL, priorities and rate limits. Default: every
    /// channel with [`crate::qos::ChannelConfig::default`].
    pub qos: Arc<QosConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_payload: 64 * 1024,
            max_message_size: 64 * 1024 * 1024,
            reassembly_limit: 64 * 1024 * 1024 + 64 * 1024,
            reassembly_timeout: Duration::from_secs(30),
            direct_min: DIRECT_MIN,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: None,
            heartbeat_misses: 5,
            capabilities: caps::TTL | caps::RELIABLE | caps::ACK_REQUEST,
            instance_id: 0,
            session_id: 0,
            resume_session_id: 0,
            defer_welcome: false,
            last_received_seq: 0,
            recv_state: None,
            hello_extensions: Vec::new(),
            version: (VERSION_MAJOR, VERSION_MINOR),
            qos: Arc::default(),
        }
    }
}

/// Where the session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// HELLO sent (dialer) or awaited (listener).
    Handshaking,
    /// Messages flow both ways.
    Established,
    /// We queued CLOSE: no more sends; received messages are still delivered.
    Closing,
    /// Closed by either side or failed. Nothing more is sent or delivered.
    Closed,
}

/// Parameters in force once the handshake completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's protocol version.
    pub peer_version: (u8, u8),
    /// Capabilities both sides have.
    pub capabilities: u64,
    /// Largest frame payload we send (the peer's limit).
    pub send_frame_max: u32,
    /// Largest message we may send (the peer's limit).
    pub send_message_max: u32,
    /// Heartbeat interval agreed (`None`: none).
    pub heartbeat_interval: Option<Duration>,
    /// The dialer's instance id.
    pub instance_id: u64,
    /// The listener re-attached the dialer to the session it asked to resume.
    pub resumed: bool,
    /// The last reliable message number the peer had received from us (resume).
    pub peer_last_received_seq: u32,
}

/// Something the driver should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected {
        /// The new session's id.
        session_id: u64,
    },
    /// The peer closed the session with a CLOSE frame. Messages it sent before are delivered
    /// first (they are in the message queue ahead of this event).
    PeerClosed(Close),
    /// A PONG arrived for the PING with this token.
    Pong {
        /// The token the PING carried.
        token: u64,
    },
}

/// The longest message either side allows: the peer's limit and our own (`own_max`).
#[inline]
fn message_max(neg: &Negotiated, own_max: u32) -> u32 {
    neg.send_message_max.min(own_max)
}

/// Whether a message of `len` bytes may be sent: the peer's limit, and our own
/// (`max_message_size` bounds both directions).
#[inline]
fn check_size(neg: &Negotiated, own_max: u32, len: usize) -> Result<(), Error> {
    let max = message_max(neg, own_max);
    if len > max as usize {
        return Err(Error::MessageTooLarge {
            size: len as u64,
            max: u64::from(max),
        });
    }
    Ok(())
}

/// What [`Session::send_direct`] did with a message.
#[derive(Debug)]
pub enum Direct {
    /// Framed at once: write it before anything polled later.
    Frame(Transmit),
    /// Offered to the outbox, with this outcome.
    Offered(Admission),
}

/// A run of messages on one channel that the driver frames itself (see
/// [`Session::direct_run`]).
#[derive(Clone, Copy, Debug)]
pub struct DirectRun {
    channel: u16,
    /// Longest frame payload the peer takes.
    frame_max: usize,
    /// Longest message either side allows.
    message_max: usize,
    /// The run's messages are reliable: each is numbered ([`Session::direct_reliable`]).
    reliable: bool,
    /// The header of the run's frames with a zero length (and number): only those differ.
    template: [u8; HEADER_LEN],
    /// A reliable run: what its messages may take of the windows without a check each
    /// ([`Session::number_next`]).
    quiet: Quiet,
}

impl DirectRun {
    /// The channel of the run.
    pub fn channel(&self) -> u16 {
        self.channel
    }

    /// Whether the run's messages are reliable: then [`Session::direct_reliable`] frames
    /// each, and [`DirectRun::header`] none.
    #[inline]
    pub fn reliable(&self) -> bool {
        self.reliable
    }

    /// Whether a `len`-byte message goes out as one frame of the run, within the message
    /// limits. (When it does not, [`Session::send_direct`] says what becomes of it.)
    #[inline]
    pub fn fits(&self, len: usize) -> bool {
        len <= self.frame_max.min(self.message_max)
    }

    /// Writes the header of the run's `len`-byte message into `dst`, numbered `seq` if the
    /// run is reliable (the number [`Session::number_direct`] gave it; ignored otherwise).
    ///
    /// Meant for the place the frame is encoded in: a header put together in a local and
    /// then copied makes the copy's wide loads wait for the narrow stores that set its
    /// length and number (they cannot be forwarded), a stall on every message.
    ///
    /// Each 8-byte word is put together in a register and stored whole, so a wide load of
    /// the header soon after (a shared-memory ring copies it from where it was written)
    /// finds its bytes in one store and is forwarded from it. A load that spans two stores
    /// instead waits until every earlier store has reached the cache: on a ring, the
    /// previous frame's, whose cache lines must first come back from the other process's
    /// core (perf, shm 64 B stream: three quarters of the sender's time in its ring write
    /// went to that wait).
    #[inline]
    pub fn write_header(&self, len: usize, seq: u64, dst: &mut [u8; HEADER_LEN]) {
        // (Set in a local, which lives in registers, and stored whole.)
        let mut h = self.template;
        crate::wire::header::put_u32(&mut h, 4, len as u32);
        if self.reliable {
            crate::wire::header::put_u32(&mut h, 8, crate::reliable::narrow(seq));
        }
        *dst = h;
    }

    /// Whether a `len`-byte message of the run goes out in fragments that the driver may
    /// write itself ([`DirectRun::write_part_header`]): longer than a frame, within the
    /// message limit, and the run is not reliable (a reliable message is numbered and kept
    /// whole: [`Session::send_direct`] queues it).
    #[inline]
    pub fn fragments(&self, len: usize) -> bool {
        !self.reliable && len > self.frame_max && len <= self.message_max
    }

    /// The longest frame payload: a message the driver fragments itself is cut at this
    /// many bytes (the last fragment shorter).
    #[inline]
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// Writes into `dst` the header of the frame of a `total`-byte message of a run that is
    /// not reliable which carries the `len` bytes from `offset`, as the outbox would frame
    /// it: the message's only frame when it [`fits`](DirectRun::fits) (then as
    /// [`DirectRun::write_header`]), else one of its fragments (one that
    /// [`DirectRun::fragments`]; docs/PROTOCOL.md §6): the first carries the message's
    /// length in `aux` and `MORE_FRAGMENTS`, the middle ones `MORE_FRAGMENTS |
    /// CONTINUATION`, the last `CONTINUATION`; every fragment but the last carries exactly
    /// [`DirectRun::frame_max`] bytes. When the driver cannot write them all, it hands the
    /// message to [`Session::send_started`] once a frame of it has gone out.
    pub fn write_part_header(
        &self,
        total: usize,
        offset: usize,
        len: usize,
        dst: &mut [u8; HEADER_LEN],
    ) {
        debug_assert!(!self.reliable && offset + len <= total);
        self.write_header(len, 0, dst);
        if len == total {
            debug_assert!(self.fits(total), "a whole message in one frame");
            return;
        }
        debug_assert!(self.fragments(total) && len > 0);
        let (marks, aux) = crate::wire::header::fragment_marks(offset, len, total);
        if let Some(total) = aux {
            crate::wire::header::put_u32(dst, 20, total);
        }
        crate::wire::header::set_flag(dst, marks);
    }

    /// Marks the reliable frame header `dst` (written by [`DirectRun::write_header`]) as
    /// asking the peer for an ack at once (`ACK_REQUEST`), as [`Session::number_direct`]
    /// says.
    #[inline]
    pub fn ask_for_ack(dst: &mut [u8; HEADER_LEN]) {
        crate::wire::header::set_flag(dst, flags::ACK_REQUEST);
    }

    /// The header of a `len`-byte message of a run that is not reliable, or `None` when it
    /// does not fit one frame (or the message limit), or the run is reliable:
    /// [`Session::send_direct`] then says what becomes of it. (A driver encoding frames
    /// in place uses [`DirectRun::write_header`].)
    #[inline]
    pub fn header(&self, len: usize) -> Option<[u8; HEADER_LEN]> {
        (self.fits(len) && !self.reliable).then(|| {
            let mut h = [0; HEADER_LEN];
            self.write_header(len, 0, &mut h);
            h
        })
    }
}

/// Fresh reliable messages of a [`DirectRun`] that a driver frames in place, one after the
/// other ([`Session::reliable_run`]): [`ReliableRun::number`] numbers each and keeps a copy
/// of its payload for retransmission, [`ReliableRun::write_header`] writes its frame's
/// header. What the session counts per message (the next number, both windows, the record
/// of each copy) is counted once, when the run is dropped.
pub struct ReliableRun<'a> {
    /// The run's header template and limits (a copy: the run's window budget is `keep`'s).
    head: DirectRun,
    keep: KeepRun<'a>,
}

impl ReliableRun<'_> {
    /// Numbers the next message of the run, `payload`, and keeps a copy of it: its number,
    /// or `None` (nothing done) when the run cannot take it: too large for one frame, a
    /// window would fill or its frame would ask for an ack, or the copies' ring has no room
    /// for it in one piece. Such a message is numbered the usual way
    /// ([`Session::number_next`]), after this run is dropped.
    #[inline(always)]
    pub fn number(&mut self, payload: &[u8]) -> Option<u64> {
        if !self.head.fits(payload.len()) {
            return None;
        }
        self.keep.take(payload)
    }

    /// Writes the header of the run's `len`-byte message numbered `seq` into `dst` (see
    /// [`DirectRun::write_header`]; the run's frames never ask for an ack).
    #[inline(always)]
    pub fn write_header(&self, len: usize, seq: u64, dst: &mut [u8; HEADER_LEN]) {
        self.head.write_header(len, seq, dst);
    }
}

/// A frame to write: the 24 header bytes, then the payload. The payload is a view of the
/// message's own `Bytes` (never a copy).
#[derive(Clone, Debug)]
pub struct Transmit {
    /// Encoded header.
    pub header: [u8; HEADER_LEN],
    /// Payload bytes.
    pub payload: Bytes,
    /// The message's deadline, on a first frame that carries its time to live
    /// (`TTL_PRESENT`): a driver that writes the frame later than it took it calls
    /// [`Transmit::restamp`] first, so that the time spent waiting for the transport counts.
    pub deadline: Option<Instant>,
}

impl Transmit {
    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Rewrites `ttl_ms` with the time left at `now` (0 once it ran out: the receiver then
    /// drops the message, counted). Does nothing for a frame without a deadline.
    #[inline]
    pub fn restamp(&mut self, now: Instant) {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(now);
            let ms = left
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(u32::MAX)) as u32;
            crate::wire::header::put_u32(&mut self.header, 16, ms);
        }
    }

    /// Whether this is a DATA frame (a message or a fragment of one).
    pub fn is_data(&self) -> bool {
        self.header[0] == FrameKind::Data as u8
    }
}

/// A message delivered to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The channel it arrived on.
    pub channel: u16,
    /// The whole message.
    pub payload: Bytes,
}

/// One connection's protocol state machine.
///
/// `Session` does no I/O and reads no clock: the driver hands it bytes and the time, and takes
/// frames to write, messages and events out of it. The calls, in the order a driver makes them:
///
/// 1. [`Session::new`] (a dialer's HELLO is queued at once).
/// 2. Whenever bytes arrive: [`Session::handle_input`] (stream transports) or
///    [`Session::handle_frame`] (transports that carry whole frames).
/// 3. Whenever the application sends: [`Session::send`]; to close: [`Session::close`].
/// 4. After any of the above: drain [`Session::poll_transmit`] to the transport in order,
///    [`Session::poll_message`] to the application and [`Session::poll_event`].
/// 5. Sleep no longer than [`Session::poll_timeout`]; at that instant call
///    [`Session::handle_timeout`] (a spurious call is harmless).
/// 6. When the transport breaks: [`Session::transport_lost`].
///
/// An `Err` from a `handle_*` call is fatal: the session is [`State::Closed`], and a CLOSE or
/// REJECT telling the peer why may be queued: flush [`Session::poll_transmit`] (best effort)
/// before dropping the transport.
pub struct Session {
    config: Config,
    role: Role,
    state: State,
    deframer: Deframer,
    session_id: u64,
    negotiated: Option<Negotiated>,
    handshake_deadline: Option<Instant>,
    /// Control frames to write (they go ahead of data).
    control: VecDeque<Transmit>,
    control_bytes: usize,
    /// Where PING tokens are cut from: one allocation per [`PING_SCRATCH`] bytes of them
    /// rather than one per PING (a thousand pipes send a thousand a second).
    ping_scratch: BytesMut,
    /// Messages accepted for sending, per channel, and the scheduler.
    outbox: Outbox,
    /// Our CLOSE, written once the outbox has drained.
    close_frame: Option<Transmit>,
    /// The latest `now` any call brought.
    now: Instant,
    messages: Inbox,
    /// Payload bytes in `messages`.
    message_bytes: usize,
    /// Received messages waiting for the application, per channel.
    rx: ChannelMap<RxChan>,
    /// Channels at their receive high-water mark.
    rx_full: usize,
    /// Channels above half their receive high-water mark.
    rx_high: usize,
    /// Messages in `messages` that carry a deadline.
    rx_with_ttl: usize,
    /// No message in `messages` expires before this.
    rx_ttl_wake: Option<Instant>,
    /// Input since [`Session::take_input_timers`] may have moved [`Session::poll_timeout`]
    /// earlier: anything but plain data frames.
    input_timers: bool,
    /// TTL was agreed: frames carry it both ways.
    ttl_agreed: bool,
    /// RELIABLE was agreed.
    rel_agreed: bool,
    /// Every channel's received messages have the same priority (see
    /// [`Session::handle_input_to`]).
    one_rx_priority: bool,
    /// What arrived of the peer's reliable messages (moves to the next session on resume).
    rx_rel: RecvState,
    /// Listener: WELCOME's `last_received_seq` (see `set_last_received_seq`).
    welcome_last_received: u32,
    /// A resuming dialer's session until [`Session::adopt`]: acks that arrive before it
    /// (the peer acks at once) wait for the outbox they are about.
    adopt_pending: bool,
    /// The latest cumulative ack that arrived before `adopt`.
    early_ack: Option<u32>,
    /// The receive record came with the config (`Config::recv_state`): `adopt` keeps it.
    rx_preloaded: bool,
    /// Deadline of the fragmented message being reassembled, per channel.
    rx_frag_deadline: ChannelMap<Option<Instant>>,
    events: VecDeque<Event>,
    reassembly: ReassemblyBuffer,
    /// A fragment whose header came while the rest of its payload had not: its bytes go
    /// straight into its message (see [`Session::lend_direct`]).
    pending: Option<Pending>,
    /// When the last bytes from the peer arrived.
    last_recv: Instant,
    /// Frames were handled without a time since the last new time a call brought (see
    /// [`Session::handle_raw_frame_untimed`]): the next new time counts as heard.
    heard_untimed: bool,
    /// Heartbeats, when this side has them and the session is established.
    heartbeat: Option<HeartbeatState>,
    /// Smoothed round-trip time from our PINGs.
    srtt: Option<Duration>,
    /// The last round-trip sample not yet taken by [`Session::take_rtt_sample`].
    rtt_sample: Option<Duration>,
    next_ping_token: u64,
    /// The driver stopped reading (receive high-water mark) since then.
    recv_paused: Option<Paused>,
    /// Input that waited in the transport (see `age_input`): (end offset, when it was there),
    /// offsets counted in `aged_pos`'s terms.
    aged: VecDeque<(usize, Instant)>,
    /// Bytes of input handled since `aged` began.
    aged_pos: usize,
    /// The frame being handled waited in the transport since this instant.
    aged_frame: Option<Instant>,
    /// Listener with `defer_welcome`: a valid HELLO awaiting the driver's decision.
    pending_hello: Option<PendingHello>,
}

/// Messages of one channel queued by the fast path and not yet accounted in its [`RxChan`].
#[derive(Default)]
struct RxRun {
    channel: u16,
    /// The channel's queue in the [`Inbox`] (see [`Inbox::class`]).
    class: usize,
    msgs: usize,
    bytes: usize,
}

/// One channel's share of the receive queue, with its settings at hand.
struct RxChan {
    msgs: usize,
    bytes: usize,
    counts: Counts,
    hwm_msgs: usize,
    hwm_bytes: usize,
    priority: u8,
    /// At the high-water mark (counted in `rx_full`).
    full: bool,
    /// Above half the mark (counted in `rx_high`).
    high: bool,
}

impl RxChan {
    fn new(cfg: &crate::qos::ChannelConfig) -> RxChan {
        RxChan {
            msgs: 0,
            bytes: 0,
            counts: Counts::default(),
            hwm_msgs: cfg.rcv_hwm_msgs.max(1),
            hwm_bytes: cfg.rcv_hwm_bytes.max(1),
            priority: cfg.priority,
            full: false,
            high: false,
        }
    }
}

/// A HELLO accepted by the protocol checks, before the listener's decision.
struct PendingHello {
    hello: Hello,
    peer_version: (u8, u8),
    capabilities: u64,
    heartbeat_ms: u32,
}

/// While the driver does not read: PINGs at the agreed interval (if any) prove to the peer
/// that this side lives, and no silence is held against the peer.
#[derive(Clone, Copy)]
struct Paused {
    interval: Option<Duration>,
    last_ping: Instant,
}

/// This side's heartbeat schedule.
struct HeartbeatState {
    interval: Duration,
    /// How long the peer may stay silent.
    silence: Duration,
    last_ping: Option<Instant>,
    /// Our PING awaiting its PONG: token and when it was queued.
    outstanding: Option<(u64, Instant)>,
}

impl HeartbeatState {
    fn ping_due(&self, last_recv: Instant) -> Instant {
        self.last_ping.map_or(last_recv, |p| p.max(last_recv)) + self.interval
    }
}

impl Session {
    /// A new session for `role`, started at `now`.
    pub fn new(mut config: Config, role: Role, now: Instant) -> Session {
        config.max_frame_payload = config
            .max_frame_payload
            .clamp(MIN_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD);
        let reassembly = ReassemblyBuffer::new(
            config.reassembly_limit,
            config.max_message_size as usize,
            config.reassembly_timeout,
        );
        let mut s = Session {
            deframer: Deframer::new(HANDSHAKE_MAX_PAYLOAD),
            role,
            state: State::Handshaking,
            session_id: 0,
            negotiated: None,
            handshake_deadline: Some(now + config.handshake_timeout),
            control: VecDeque::new(),
            ping_scratch: BytesMut::new(),
            control_bytes: 0,
            outbox: Outbox::new(config.qos.clone(), now),
            close_frame: None,
            now,
            messages: Inbox::default(),
            message_bytes: 0,
            rx: ChannelMap::default(),
            rx_full: 0,
            rx_high: 0,
            rx_with_ttl: 0,
            rx_ttl_wake: None,
            input_timers: true,
            rx_frag_deadline: ChannelMap::default(),
            ttl_agreed: false,
            rel_agreed: false,
            one_rx_priority: config
                .qos
                .channels
                .values()
                .all(|c| c.priority == config.qos.default.priority),
            rx_rel: RecvState::default(),
            welcome_last_received: 0,
            adopt_pending: false,
            early_ack: None,
            rx_preloaded: false,
            events: VecDeque::new(),
            reassembly,
            pending: None,
            config,
            last_recv: now,
            heard_untimed: false,
            heartbeat: None,
            srtt: None,
            rtt_sample: None,
            next_ping_token: 1,
            pending_hello: None,
            recv_paused: None,
            aged: VecDeque::new(),
            aged_pos: 0,
            aged_frame: None,
        };
        if role == Role::Dialer {
            if let Some(r) = s.config.recv_state.take() {
                s.config.last_received_seq = crate::reliable::narrow(r.cumulative());
                s.rx_rel = r;
                s.rx_preloaded = true;
            }
            s.adopt_pending = s.config.resume_session_id != 0;
            let hello = Hello {
                version: s.config.version,
                capabilities: s.config.capabilities & caps::SUPPORTED,
                max_frame_payload: s.config.max_frame_payload,
                heartbeat_ms: duration_ms(s.config.heartbeat_interval),
                max_message_size: s.config.max_message_size,
                last_received_seq: s.config.last_received_seq,
                instance_id: s.config.instance_id,
                resume_session_id: s.config.resume_session_id,
                extensions: s.config.hello_extensions.clone(),
            };
            s.queue_control(FrameKind::Hello, hello.encode());
        }
        s
    }

    /// The session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The session's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The session id (0 until the handshake completed).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Parameters agreed in the handshake (`None` before it completed).
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Bytes held in partially reassembled messages.
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembly.held()
    }

    /// Offers `payload` as one message on `channel` with the channel's time to live: see
    /// [`Session::send_with`].
    pub fn send(&mut self, channel: u16, payload: Bytes, now: Instant) -> Result<Admission, Error> {
        self.send_with(channel, payload, None, now)
    }

    /// Offers `payload` as one message on `channel` to the channel's send queue, under its
    /// high-water marks and backpressure policy ([`Admission`] says what became of it); `ttl`
    /// overrides the channel's time to live. Queued messages are framed by
    /// [`Session::poll_transmit_at`], fragmented above the peer's frame limit, as `Bytes`
    /// views of `payload`: nothing is copied.
    pub fn send_with(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<Admission, Error> {
        self.send_message(channel, payload, ttl, None, now)
    }

    /// [`Session::send_with`], and `reliable` overrides the channel's delivery: reliable
    /// messages are numbered, acknowledged, and sent again after a break or a timeout until
    /// acknowledged (see [`crate::reliable`]). Fails with [`Error::NotAgreed`] when the peer
    /// did not agree to reliable delivery.
    #[inline]
    pub fn send_message(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Result<Admission, Error> {
        if !self.rel_agreed
            && reliable.unwrap_or_else(|| self.config.qos.channel(channel).reliable)
            && self.state == State::Established
        {
            return Err(Error::NotAgreed("reliable channels (protocol 1.2)"));
        }
        let neg = match self.state {
            State::Established => self.negotiated.as_ref().ok_or(Error::NotConnected)?,
            State::Handshaking => return Err(Error::NotConnected),
            State::Closing | State::Closed => return Err(Error::Closed),
        };
        check_size(neg, self.config.max_message_size, payload.len())?;
        self.tick(now);
        Ok(self.outbox.offer_with(channel, payload, ttl, reliable, now))
    }

    /// Queues messages on `channel` one after the other, as [`Session::send_message`] with
    /// `ttl` and `reliable` would queue each ([`Admission::Queued`]), for a driver with many
    /// in a row that cannot be framed at once: `Some` when that is a size and room check
    /// and a push per message ([`QueueRun::fits`], [`QueueRun::push`]): the session is
    /// established, the channel blocks when full and no time to live applies (see
    /// [`Outbox::queue_run`]). A message the run does not take, and every message when it
    /// is `None`, goes by [`Session::send_message`], which says what becomes of it.
    #[inline]
    pub fn queue_run(
        &mut self,
        channel: u16,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Option<QueueRun<'_>> {
        if self.state != State::Established
            || (!self.rel_agreed
                && reliable.unwrap_or_else(|| self.config.qos.channel(channel).reliable))
        {
            return None;
        }
        let neg = self.negotiated.as_ref()?;
        let max = message_max(neg, self.config.max_message_size) as usize;
        self.tick(now);
        self.outbox
            .queue_run(channel, ttl, reliable, now)
            .map(|r| r.limited_to(max))
    }

    /// [`Session::send_message`] for a message that may go out at once: when nothing else
    /// waits to be written (no control frame, nothing queued) and the message needs no
    /// scheduling (see [`Outbox::offer_direct`]), it is framed now and returned as
    /// [`Direct::Frame`], the frame [`Session::poll_transmit_at`] would have returned next;
    /// the caller writes it before anything it polls later. Otherwise the message is offered
    /// to the outbox as [`Session::send_message`] does ([`Direct::Offered`]).
    #[inline]
    pub fn send_direct(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Result<Direct, Error> {
        // (Without RELIABLE agreed, the way that refuses a reliable message: a peer that does
        // not speak it is a rare one.)
        let direct = self.frames_next() && self.rel_agreed;
        let Some(neg) = self.negotiated.as_ref().filter(|_| direct) else {
            return self
                .send_message(channel, payload, ttl, reliable, now)
                .map(Direct::Offered);
        };
        check_size(neg, self.config.max_message_size, payload.len())?;
        let frame_max = neg.send_frame_max as usize;
        self.tick(now);
        match self
            .outbox
            .offer_direct(channel, payload, ttl, reliable, now, frame_max)
        {
            Ok(mut t) => {
                // An owed ack rides on the data (cumulative only), as in poll_transmit.
                self.carry_ack(&mut t);
                Ok(Direct::Frame(t))
            }
            Err(payload) => self
                .send_message(channel, payload, ttl, reliable, now)
                .map(Direct::Offered),
        }
    }

    /// Lets the driver frame a run of messages on `channel` itself, exactly as
    /// [`Session::send_direct`] would frame each: `Some` when every condition of the direct
    /// path holds for the channel (and no ack is owed, which the next frame would carry).
    /// The answer stands until the session next changes otherwise: input handled, a message
    /// queued, a timer, a close. A driver asks again after any of those.
    #[inline]
    pub fn direct_run(
        &mut self,
        channel: u16,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Option<DirectRun> {
        if !self.frames_next() || self.rx_rel.owed() {
            return None;
        }
        let neg = self.negotiated.as_ref()?;
        let frame_max = (neg.send_frame_max as usize).max(1);
        let message_max = message_max(neg, self.config.max_message_size) as usize;
        let reliable = self.outbox.direct_allowed(channel, ttl, reliable, now)?;
        if reliable && !self.rel_agreed {
            // (`send_direct` refuses these: the peer does not speak RELIABLE.)
            return None;
        }
        let mut header = Header::data(channel, 0);
        let mut quiet = Quiet::default();
        if reliable {
            header.flags |= flags::RELIABLE;
            quiet = self.outbox.quiet(channel);
        }
        self.tick(now);
        Some(DirectRun {
            channel,
            frame_max,
            message_max,
            reliable,
            template: header.encode(),
            quiet,
        })
    }

    /// Frames a `len`-byte message of a reliable `run` ([`DirectRun::reliable`]) exactly as
    /// [`Session::send_direct`] would: numbered, when it fits one frame and both reliable
    /// windows. Returns its header and number; the driver writes the frame and then hands
    /// the payload to [`Session::record_direct`] with the number, before anything else
    /// changes the session. `None`: the message takes [`Session::send_direct`]'s way
    /// (which queues it when a window is full).
    #[inline]
    pub fn direct_reliable(
        &mut self,
        run: &DirectRun,
        len: usize,
    ) -> Option<([u8; HEADER_LEN], u64)> {
        let (seq, ask) = self.number_direct(run, len)?;
        let mut h = [0; HEADER_LEN];
        run.write_header(len, seq, &mut h);
        if ask {
            DirectRun::ask_for_ack(&mut h);
        }
        Some((h, seq))
    }

    /// [`Session::direct_reliable`] without the header: numbers the message and returns its
    /// number, and whether its frame asks the peer for an ack, for a driver that writes the
    /// header in place ([`DirectRun::write_header`], then [`DirectRun::ask_for_ack`] if so).
    #[inline]
    pub fn number_direct(&mut self, run: &DirectRun, len: usize) -> Option<(u64, bool)> {
        if !run.reliable || !run.fits(len) {
            return None;
        }
        self.outbox.number_direct(run.channel, len)
    }

    /// [`Session::number_direct`] for the next message of `run`, cheaper while the run's
    /// messages stay clear of both windows' limits and of the next ack request (what the
    /// run learnt of them when it began, or at its last message that was not): then nothing
    /// is checked per message. Nothing but this numbers messages while the run is used.
    #[inline]
    pub fn number_next(&mut self, run: &mut DirectRun, len: usize) -> Option<(u64, bool)> {
        // (`number_direct`'s guard, here once for both ways: checked again in
        // `number_checked`, the per-message path costs more instructions.)
        if !run.reliable || !run.fits(len) {
            return None;
        }
        if let Some(seq) = self.outbox.number_quiet(run.channel, len, &mut run.quiet) {
            return Some((seq, false));
        }
        self.number_checked(run, len)
    }

    /// [`Session::number_next`] past what the run knew to be clear (a reliable run, the
    /// message within its limit): checked, and the run learns anew. (Kept out of line: the
    /// per-message path is the lines above.)
    #[inline(never)]
    fn number_checked(&mut self, run: &mut DirectRun, len: usize) -> Option<(u64, bool)> {
        let numbered = self.outbox.number_direct(run.channel, len);
        run.quiet = self.outbox.quiet(run.channel);
        numbered
    }

    /// Takes back a message of a [`DirectRun`] whose first `offset` bytes (one or more whole
    /// fragments, `0 < offset < payload.len()`) the driver wrote itself
    /// ([`DirectRun::write_part_header`]) and the rest of which it could not: the rest
    /// goes out from `offset` on, as the outbox's own fragments (it was accepted: no
    /// high-water mark applies, and it goes before anything queued on its channel since).
    /// On a new connection it starts again from its first byte, as any message under way.
    pub fn send_started(&mut self, channel: u16, payload: Bytes, offset: usize, now: Instant) {
        self.outbox.push_started(channel, payload, offset, now);
    }

    /// Records the reliable message numbered `seq` by [`Session::direct_reliable`] as sent
    /// at `now`: its payload is kept until the peer acknowledges it.
    #[inline]
    pub fn record_direct(&mut self, seq: u64, channel: u16, payload: Bytes, now: Instant) {
        self.outbox.record_direct(seq, channel, payload, now);
    }

    /// As [`Session::record_direct`], for a payload the caller lends: a copy of it is kept
    /// (in a ring of the outbox's, with no handle per message).
    #[inline]
    pub fn record_direct_copy(&mut self, seq: u64, channel: u16, payload: &[u8], now: Instant) {
        self.outbox.record_direct_copy(seq, channel, payload, now);
    }

    /// The messages that follow on `run`'s channel, numbered and their payloads kept by the
    /// caller's framing loop ([`ReliableRun::number`]) while the run's windows take them
    /// without a check per message (as [`Session::number_next`] numbers them within what
    /// the run learnt of the windows), as sent at `now`; one that takes nothing if `run` is
    /// not reliable. The session is borrowed until the `ReliableRun` is dropped, which
    /// brings it up to date (do not `mem::forget` it: the session would lose its copies'
    /// buffer).
    #[inline]
    pub fn reliable_run<'a>(&'a mut self, run: &'a mut DirectRun, now: Instant) -> ReliableRun<'a> {
        let head = *run;
        ReliableRun {
            head,
            keep: self
                .outbox
                .keep_run(head.channel, head.reliable, &mut run.quiet, now),
        }
    }

    /// A message framed now would be the next frame out: established, and no control frame
    /// or CLOSE waits (the direct path's condition on the session's side).
    #[inline]
    fn frames_next(&self) -> bool {
        self.state == State::Established && self.control.is_empty() && self.close_frame.is_none()
    }

    /// The messages accepted for sending and not yet framed.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The outbox, for a driver that queues messages while no connection is up (the
    /// session is closed) and moves them to the next session with [`Session::take_outbox`]
    /// and [`Session::set_outbox`].
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Takes the outbox (leaving an empty one): the messages this session accepted and did
    /// not frame, also after it failed.
    pub fn take_outbox(&mut self) -> Outbox {
        let empty = Outbox::new(self.config.qos.clone(), self.now);
        std::mem::replace(&mut self.outbox, empty)
    }

    /// Replaces the outbox with `outbox` (from an earlier session of the same pipe): its
    /// messages under way start again from their first byte (see [`Outbox::rewind`]).
    /// Returns the channels whose message under way was rewound.
    pub fn set_outbox(&mut self, mut outbox: Outbox) -> Vec<u16> {
        let rewound = outbox.rewind();
        outbox.set_ttl_on_wire(self.ttl_agreed);
        self.outbox = outbox;
        rewound
    }

    /// Queues a PING carrying `token`; the peer's PONG surfaces as [`Event::Pong`]. Fails with
    /// [`Error::Closed`] once [`Session::close`] was called: nothing follows a CLOSE.
    pub fn ping(&mut self, token: u64) -> Result<(), Error> {
        match self.state {
            State::Established => {
                self.queue_ping(token);
                Ok(())
            }
            State::Handshaking => Err(Error::NotConnected),
            State::Closing | State::Closed => Err(Error::Closed),
        }
    }

    /// Closes the session: a CLOSE with `code` and `reason` is queued behind everything already
    /// queued, so the peer receives those messages first. Further sends fail with
    /// [`Error::Closed`]; received messages are still delivered. Closing twice does nothing.
    pub fn close(&mut self, code: u16, reason: &str, _now: Instant) {
        match self.state {
            State::Established => {
                let close = Close {
                    code,
                    reason: control::clamp_reason(reason).to_owned(),
                };
                let payload = close.encode();
                let mut h = Header::new(FrameKind::Close);
                h.payload_len = payload.len() as u32;
                // Behind every message already accepted: written once the outbox drains.
                self.close_frame = Some(Transmit {
                    header: h.encode(),
                    payload,
                    deadline: None,
                });
                self.state = State::Closing;
            }
            State::Handshaking => self.state = State::Closed,
            State::Closing | State::Closed => {}
        }
    }

    /// The transport broke (EOF, reset). The session is closed; partial messages are dropped.
    pub fn transport_lost(&mut self, _now: Instant) {
        self.state = State::Closed;
        self.drop_partials();
        self.handshake_deadline = None;
    }

    /// Feeds bytes from a stream transport: takes every whole frame off the front of `buf` and
    /// handles it; a partial frame stays in `buf` for the next call.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), Error> {
        self.handle_input_to(buf, now, 0, &mut |_: Received<'_>| {})
            .map(|_| ())
    }

    /// [`Session::handle_input`] for an application that waits for up to `max` messages:
    /// while nothing waits for it in the receive queue, whole messages that need nothing
    /// more (plain or reliable DATA frames, no fragments, no time to live) go straight to
    /// `sink` as [`Session::poll_received_at`] would hand them, without
    /// being queued and taken again; returns how many. The first that cannot, and every
    /// message after it (and after the `max`th), is queued as usual. Only on a pipe whose
    /// channels all have the same receive priority: otherwise a message queued in the same
    /// read would be handed out before those of lower priority ahead of it. Messages handed
    /// out before an error (bad input further on) stay handed out: the caller has them, as
    /// it would have them queued.
    pub fn handle_input_to(
        &mut self,
        buf: &mut BytesMut,
        now: Instant,
        max: usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> Result<usize, Error> {
        let mut left = if self.one_rx_priority { max } else { 0 };
        let offered = left;
        // Bytes arrived: the peer is alive, whatever they turn out to be.
        self.last_recv = now;
        self.tick(now);
        while self.state != State::Closed {
            if self.pending.is_some() {
                // The rest of a fragment whose header came before.
                if buf.is_empty() {
                    break;
                }
                self.pending_input(buf, now).map_err(|e| self.fail(e))?;
                continue;
            }
            if self.aged.is_empty() && matches!(self.state, State::Established | State::Closing) {
                // Whole DATA frames in a row come off `buf` as one piece: one split of the
                // shared buffer for all of them instead of two per frame.
                let run = self.deframer.data_run(buf);
                if run > 0 {
                    self.handle_data_run(buf.split_to(run).freeze(), now, &mut left, sink)?;
                    continue;
                }
            }
            match self.deframer.decode(buf) {
                Ok(Some((header, payload))) => {
                    if !self.aged.is_empty() {
                        // Which sample first saw this frame's first byte?
                        let pos = self.aged_pos;
                        self.aged_pos += HEADER_LEN + payload.len();
                        while self.aged.front().is_some_and(|&(end, _)| end <= pos) {
                            self.aged.pop_front();
                        }
                        let since = self.aged.front().map(|&(_, at)| at);
                        if self.aged.is_empty() {
                            self.aged_pos = 0;
                        }
                        if let Some(since) = since.filter(|_| header.has(flags::TTL_PRESENT)) {
                            // It waited unread since `since` at least: go the slow way, where
                            // the wait is charged.
                            self.aged_frame = Some(since);
                            let r = self.handle_frame(header, payload, now);
                            self.aged_frame = None;
                            r?;
                            continue;
                        }
                    }
                    self.handle_frame(header, payload, now)?
                }
                Ok(None) => {
                    // A large fragment still arriving: its header is handled now, and the
                    // rest of its payload goes into its message as it comes.
                    if self.begin_pending(buf, now).map_err(|e| self.fail(e))? {
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        Ok(offered - left)
    }

    /// Handles `run`, whole DATA frames (see [`Deframer::data_run`]) that arrived while
    /// established or closing. A whole message on a channel with no reassembly under way
    /// takes the fast path: queued with its channel's accounting done once per run of that
    /// channel (done before anything else may look at it: before another frame goes the
    /// general way, and before returning). Frames not handled when an error ends the session
    /// are dropped with it.
    ///
    /// While the receive queue is empty, up to `left` such messages go to `sink` instead
    /// (see [`Session::handle_input_to`]), counted off `left`, until one cannot.
    fn handle_data_run(
        &mut self,
        mut run: Bytes,
        now: Instant,
        left: &mut usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> Result<(), Error> {
        let mut acct = RxRun::default();
        let mut result = Ok(());
        // Whole messages are queued as places in `run` (see `inbox`), added as a chunk at
        // the end; those handed out at once are places in it too, under the same number.
        let id = self.messages.next_chunk();
        let offered = *left;
        let mut direct = *left > 0 && self.messages.is_idle();
        // Reliable messages arriving in order are counted here and recorded together (before
        // anything else looks at what arrived: before a frame goes the general way, and
        // before returning).
        let mut in_order = self.rx_rel.in_order();
        let mut pos = 0;
        while let Some(b) = run[pos..].first_chunk::<HEADER_LEN>() {
            // Plain data (no flag: unreliable, whole, no TTL, no ack) needs only these fields
            // of the header.
            let plain = b[1] & flags::KNOWN == 0;
            let channel = Header::channel_of(b);
            let len = Header::payload_len_of(b) as usize;
            if len > run.len() - pos - HEADER_LEN {
                // (Not reached: the deframer checked the length.)
                result = Err(self.fail(crate::wire::WireError::Truncated.into()));
                break;
            }
            let body = pos + HEADER_LEN..pos + HEADER_LEN + len;
            pos = body.end;
            let whole = self.takes_whole(channel, len);
            if !(plain && whole) {
                const NOT_WHOLE: u8 = flags::MORE_FRAGMENTS
                    | flags::CONTINUATION
                    | flags::TTL_PRESENT
                    | flags::ACK_PRESENT;
                let frame_flags = b[1];
                if !(whole && self.rel_agreed && frame_flags & NOT_WHOLE == 0) {
                    let header = match Header::decode(b) {
                        Ok(h) => h,
                        Err(e) => {
                            // (Not reached: the deframer checked the kind.)
                            result = Err(self.fail(e.into()));
                            break;
                        }
                    };
                    self.rx_account(&mut acct);
                    self.arrived_in_order(&mut in_order, now);
                    // (The general way may queue a message: none may overtake it.)
                    direct = false;
                    let handled = self.handle_frame(header, run.slice(body), now);
                    in_order = self.rx_rel.in_order();
                    if let Err(e) = handled {
                        result = Err(e);
                        break;
                    }
                    continue;
                }
                // A whole message, reliable (or asking for acks on a plain channel): only
                // its flags and number matter, read in place (no header decoded).
                let seq = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let next_in_order = self.rel_agreed
                    && frame_flags & flags::RELIABLE != 0
                    && in_order.takes(seq, frame_flags);
                if !next_in_order {
                    self.arrived_in_order(&mut in_order, now);
                    // A reliable message owes an ack, a deadline.
                    self.input_timers = true;
                    let arrived = self.arrived(frame_flags, seq, now);
                    in_order = self.rx_rel.in_order();
                    match arrived {
                        Ok(true) => {}
                        Ok(false) => continue, // a duplicate
                        Err(e) => {
                            result = Err(self.fail(e));
                            break;
                        }
                    }
                }
            }
            // A whole message, plain or reliable and new: to the waiting caller, or queued.
            if !direct {
                self.queue_part(&mut acct, channel, &run, body);
                continue;
            }
            let last = pos == run.len();
            direct = hand_direct(&mut run, id, last, channel, body, left, sink);
            if last {
                break; // (`sink` may have taken `run`)
            }
        }
        self.rx_account(&mut acct);
        self.arrived_in_order(&mut in_order, now);
        // (Nothing took a message off the inbox meanwhile: the parts are still queued.)
        self.messages.add_chunk(run);
        if *left < offered {
            // The number named the chunk for the sink: the next chunk gets another.
            self.messages.used_chunk_number(id);
        }
        result
    }

    /// Queues the whole message at `range` of `run` (without TTL) for the application, as
    /// a place in `run`, its accounting left in `acct` (see [`Session::rx_account`]).
    #[inline(always)]
    fn queue_part(
        &mut self,
        acct: &mut RxRun,
        channel: u16,
        run: &Bytes,
        range: std::ops::Range<usize>,
    ) {
        if acct.msgs == 0 || acct.channel != channel {
            self.rx_account(acct);
            acct.channel = channel;
            let priority = self.rx_priority(channel);
            acct.class = self.messages.class(priority);
        }
        acct.msgs += 1;
        acct.bytes += range.len();
        self.messages.push_part(acct.class, channel, run, range);
    }

    /// How many bytes `buf` must hold before [`Session::handle_input`] can make progress.
    pub fn input_needed(&self, buf: &[u8]) -> usize {
        match &self.pending {
            // The rest of the fragment under way, then a header.
            Some(p) => p.left + HEADER_LEN,
            None => self.deframer.needed(buf),
        }
    }

    /// The largest frame payload accepted right now (small until the handshake completed).
    pub fn max_input_payload(&self) -> u32 {
        self.deframer.max_payload()
    }

    /// Handles one whole frame from a transport that carries frames rather than bytes
    /// (shared memory): its encoded header and its payload. A header that does not decode
    /// fails the session like bad bytes on a stream would.
    pub fn handle_raw_frame(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: Bytes,
        now: Instant,
    ) -> Result<(), Error> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.tick(now);
        match Header::decode(header) {
            Ok(h) => self.handle_frame(h, payload, now),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// Whether the frame whose header is `header` is handled the same at any time: a DATA
    /// frame without flags (no time to live, reliability, ack or fragments) on an established
    /// session. Such a frame may go to [`Session::handle_raw_frame_untimed`], which needs no
    /// reading of the clock.
    #[inline]
    pub fn frame_is_timeless(&self, header: &[u8; HEADER_LEN]) -> bool {
        self.state == State::Established && header[0] == FrameKind::Data as u8 && header[1] == 0
    }

    /// Handles a frame for which [`Session::frame_is_timeless`] holds, without a time: as
    /// [`Session::handle_raw_frame`] at [`Session::now`], except that the peer counts as heard
    /// at the next new time a call brings (input, [`Session::advance`],
    /// [`Session::handle_timeout`]). So a silence is never counted longer than it was, and one
    /// that begins now is noticed at most one such call late.
    pub fn handle_raw_frame_untimed(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: Bytes,
    ) -> Result<(), Error> {
        if self.state == State::Closed {
            return Ok(());
        }
        debug_assert!(self.frame_is_timeless(header), "a frame that needs a time");
        let heard = self.last_recv;
        // (As `handle_raw_frame` at the session's own time, its clock not moving: without
        // the call and the tick, on the path of every shared-memory message.)
        let res = match Header::decode(header) {
            Ok(h) => self.handle_frame(h, payload, self.now),
            Err(e) => Err(self.fail(e.into())),
        };
        self.last_recv = heard;
        self.heard_untimed = true;
        res
    }

    /// [`Session::handle_raw_frame_untimed`] for a caller that waits for up to `*left`
    /// messages: while the receive queue is empty (and the channels share one receive
    /// priority), the message goes to `sink` instead of the queue and is counted off `left`,
    /// as [`Session::handle_input_to`] hands out messages from a stream. It is checked as
    /// the queue's way checks it (length, size limits, no reassembly under way on its
    /// channel); anything else goes that way.
    // (Always inlined: the per-message path of every shared-memory receive; a call here was
    // ~10 instructions per message more, callgrind, shm 64 B ping-pong.)
    #[inline(always)]
    pub fn handle_raw_frame_untimed_to(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: Bytes,
        left: &mut usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> Result<(), Error> {
        debug_assert!(self.frame_is_timeless(header), "a frame that needs a time");
        if let Some(channel) = self.hand_over_at_once(header, payload.len(), left) {
            sink.deliver(Received {
                channel,
                payload: Payload::Whole(payload),
            });
            return Ok(());
        }
        self.handle_raw_frame_untimed(header, payload)
    }

    /// [`Session::handle_raw_frame_untimed_to`] for a frame whose payload is the bytes at
    /// `range` of `chunk`, a buffer the payloads of several frames share (a frame
    /// transport's payloads copied out together): a message handed to `sink` at once is a
    /// [`Payload::Part`] of the chunk numbered `id` ([`Session::next_chunk_number`]; `last`:
    /// no later frame of the caller's is in `chunk`, so the sink may take its handle), and
    /// then `Ok(true)`: the caller owes [`Session::used_chunk_number`]`(id)` once it has
    /// handed over the chunk's frames. So a sink that keeps one handle per chunk makes no
    /// reference count per message, as with a stream's reads. Anything else goes the
    /// queue's way with a handle of its own on its bytes (`Ok(false)`). A range outside the
    /// chunk fails the session.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn handle_raw_part_untimed_to(
        &mut self,
        header: &[u8; HEADER_LEN],
        chunk: &mut Bytes,
        id: u32,
        last: bool,
        range: std::ops::Range<usize>,
        left: &mut usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> Result<bool, Error> {
        debug_assert!(self.frame_is_timeless(header), "a frame that needs a time");
        if range.start > range.end || range.end > chunk.len() {
            let e = crate::wire::WireError::Malformed("payload outside its chunk");
            return Err(self.fail(e.into()));
        }
        if let Some(channel) = self.hand_over_at_once(header, range.len(), left) {
            sink.deliver(Received {
                channel,
                payload: Payload::Part(Part::new(chunk, id, last, range)),
            });
            return Ok(true);
        }
        self.handle_raw_frame_untimed(header, chunk.slice(range))
            .map(|()| false)
    }

    /// Whether the timeless frame `header`, its payload `len` bytes, goes to a caller that
    /// waits for up to `*left` messages at once, and if so on which channel (counted off
    /// `left`, the peer heard): while the receive queue is empty and the channels share one
    /// receive priority, a whole message checked as the queue's way checks it (length, size
    /// limits, no reassembly under way on its channel).
    #[inline(always)]
    fn hand_over_at_once(
        &mut self,
        header: &[u8; HEADER_LEN],
        len: usize,
        left: &mut usize,
    ) -> Option<u16> {
        if *left == 0 || !self.one_rx_priority || !self.messages.is_idle() {
            return None;
        }
        let channel = Header::channel_of(header);
        let claimed = Header::payload_len_of(header);
        if len as u64 != u64::from(claimed)
            || claimed > self.deframer.max_payload()
            || !self.takes_whole(channel, len)
        {
            return None;
        }
        // (As the untimed way: heard, at the next time a call brings.)
        self.heard_untimed = true;
        *left -= 1;
        Some(channel)
    }

    /// The number the next chunk of received bytes handed out in parts gets (see
    /// [`Session::handle_raw_part_untimed_to`]).
    #[inline]
    pub fn next_chunk_number(&self) -> u32 {
        self.messages.next_chunk()
    }

    /// Messages of the chunk numbered `id` were handed out in parts
    /// ([`Session::handle_raw_part_untimed_to`] said so): a later chunk gets another number,
    /// so that a sink tells the chunks apart.
    #[inline]
    pub fn used_chunk_number(&mut self, id: u32) {
        self.messages.used_chunk_number(id);
    }

    /// Whether a frame of `len` bytes on `channel` that carries no fragment flag is a whole
    /// message the receive side takes as it is: within the message size limit, and no
    /// fragmented message under reassembly on the channel (which it would break into). The
    /// general way (`on_data`) fails what this refuses.
    #[inline]
    fn takes_whole(&self, channel: u16, len: usize) -> bool {
        len <= self.config.max_message_size as usize && !self.reassembly.in_progress(channel)
    }

    /// Handles one whole frame. Frames after the session closed are ignored.
    pub fn handle_frame(&mut self, h: Header, payload: Bytes, now: Instant) -> Result<(), Error> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.last_recv = now;
        if payload.len() as u64 != u64::from(h.payload_len) {
            let e = crate::wire::WireError::Malformed("payload length differs from the header");
            return Err(self.fail(e.into()));
        }
        if h.payload_len > self.deframer.max_payload() {
            let e = crate::wire::WireError::FrameTooLarge {
                len: h.payload_len,
                max: self.deframer.max_payload(),
            };
            return Err(self.fail(e.into()));
        }
        // Plain data (one whole, unreliable frame without TTL or ack) only moves the
        // heartbeat's deadlines later; anything else may bring one nearer.
        const TIMED: u8 = flags::RELIABLE
            | flags::ACK_PRESENT
            | flags::MORE_FRAGMENTS
            | flags::CONTINUATION
            | flags::TTL_PRESENT;
        let plain =
            h.kind == FrameKind::Data && h.flags & TIMED == 0 && self.state == State::Established;
        let r = match self.state {
            State::Handshaking => self.handle_handshake(h, payload, now),
            _ => self.handle_established(h, payload, now),
        };
        self.input_timers |= !plain || r.is_err();
        r.map_err(|e| self.fail(e))
    }

    /// Whether input handled since the last call may have moved [`Session::poll_timeout`]
    /// earlier (and clears it). A driver that re-reads `poll_timeout` after every read can
    /// skip that when this is `false`: plain data frames only push the heartbeat's deadlines
    /// later, so a timer set for the earlier ones at worst fires early, finds nothing due
    /// and is set again.
    pub fn take_input_timers(&mut self) -> bool {
        std::mem::take(&mut self.input_timers)
    }

    /// The next frame to write, at the latest time a call brought: see
    /// [`Session::poll_transmit_at`].
    #[inline]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit_at(self.now)
    }

    /// The next frame to write at `now`: control frames first (handshake, PONG, acks), then
    /// data as the scheduler picks it (priority, weight, rate limits, TTL: see [`Outbox`]),
    /// then, after a local close, the CLOSE once every queued message is out. `None` when
    /// nothing can go now; [`Session::poll_timeout`] covers data waiting for a rate limit.
    #[inline]
    pub fn poll_transmit_at(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.control.pop_front() {
            self.control_bytes -= t.wire_len();
            return Some(t);
        }
        if !matches!(self.state, State::Established | State::Closing) {
            return None;
        }
        self.tick(now);
        if !self.outbox.is_empty() {
            let frame_max = self.negotiated.as_ref()?.send_frame_max as usize;
            if let Some(mut t) = self.outbox.poll(now, frame_max) {
                // An owed ack rides on the data (cumulative only).
                self.carry_ack(&mut t);
                return Some(t);
            }
        }
        if self.outbox.is_empty() {
            return self.close_frame.take();
        }
        None
    }

    /// The frames [`Session::poll_transmit_at`] would give next at `now`, taken one after the
    /// other while they are plain data: whole unreliable messages of one channel, nothing
    /// else to send first (no control frame, no ack owed) and nothing to schedule (see
    /// [`Outbox::poll_plain_run`]). `take` gets each one's header and payload and frames it,
    /// or says `false` (it stays queued, and the run ends). Returns how many were taken; 0:
    /// ask [`Session::poll_transmit_at`].
    #[inline]
    pub fn poll_plain_run(
        &mut self,
        now: Instant,
        take: impl FnMut(&[u8; HEADER_LEN], &[u8]) -> bool,
    ) -> usize {
        if !self.control.is_empty()
            || !matches!(self.state, State::Established | State::Closing)
            || self.rx_rel.owed()
        {
            return 0;
        }
        let Some(neg) = self.negotiated.as_ref() else {
            return 0;
        };
        let frame_max = (neg.send_frame_max as usize).max(1);
        self.tick(now);
        self.outbox.poll_plain_run(frame_max, take)
    }

    /// Our CLOSE has been written: nothing may follow it.
    fn close_written(&self) -> bool {
        self.state == State::Closing && self.close_frame.is_none()
    }

    /// Whether [`Session::poll_transmit_at`] may have something: control frames, queued
    /// messages (perhaps waiting for a rate limit), or a CLOSE.
    #[inline]
    pub fn wants_transmit(&self) -> bool {
        !self.control.is_empty()
            || (matches!(self.state, State::Established | State::Closing)
                && (!self.outbox.is_empty() || self.close_frame.is_some()))
    }

    /// Control frames queued for writing.
    pub fn control_len(&self) -> usize {
        self.control.len()
    }

    /// Bytes (headers included) of the control frames queued for writing.
    pub fn control_bytes(&self) -> usize {
        self.control_bytes
    }

    /// The next message for the application, at the latest time a call brought: see
    /// [`Session::poll_message_at`].
    #[inline]
    pub fn poll_message(&mut self) -> Option<Delivered> {
        self.poll_message_at(self.now)
    }

    /// The next message for the application at `now`. Messages whose time to live (from the
    /// sender's frame) ran out while they waited are dropped here and counted.
    #[inline]
    pub fn poll_message_at(&mut self, now: Instant) -> Option<Delivered> {
        loop {
            let (d, expires) = self.messages.pop()?;
            let len = d.payload.len();
            self.message_bytes -= len;
            self.rx_adjust(d.channel, -1, -(len as isize));
            if let Some(e) = expires {
                self.rx_with_ttl -= 1;
                if now >= e {
                    self.count_rx_expired(d.channel);
                    continue;
                }
            }
            return Some(d);
        }
    }

    /// Hands up to `max` messages to `sink`, in order, as [`Session::poll_message_at`] would
    /// one by one (expired ones dropped and counted), with the per-channel accounting done
    /// once per run of one channel. Returns how many `sink` got.
    pub fn poll_messages_at(
        &mut self,
        now: Instant,
        max: usize,
        sink: &mut (impl FnMut(Delivered) + ?Sized),
    ) -> usize {
        self.poll_received_at(now, max, &mut |r: Received<'_>| sink(r.into_delivered()))
    }

    /// [`Session::poll_messages_at`], each message handed out as a [`Received`]: the
    /// messages of one read of a stream transport share one handle on their bytes (a
    /// [`Payload::Part`]), so a sink that only looks at them, or keeps one handle per
    /// chunk ([`Part::take_chunk`]), makes no reference count per message.
    pub fn poll_received_at(
        &mut self,
        now: Instant,
        max: usize,
        sink: &mut (impl ReceiveSink + ?Sized),
    ) -> usize {
        let mut n = 0;
        // (channel, messages, bytes) taken from the queue and not yet accounted.
        let mut run: Option<(u16, isize, isize)> = None;
        while n < max {
            let Some(p) = self.messages.pop_next() else {
                break;
            };
            let (channel, len) = (p.channel(), p.len());
            self.message_bytes -= len;
            match &mut run {
                Some((c, k, b)) if *c == channel => {
                    *k -= 1;
                    *b -= len as isize;
                }
                _ => {
                    if let Some((c, k, b)) = run.take() {
                        self.rx_adjust(c, k, b);
                    }
                    run = Some((channel, -1, -(len as isize)));
                }
            }
            if let Some(e) = p.expires() {
                self.rx_with_ttl -= 1;
                if now >= e {
                    self.count_rx_expired(channel);
                    self.messages.discard(p);
                    continue;
                }
            }
            self.messages.hand(p, sink);
            n += 1;
        }
        if let Some((c, k, b)) = run {
            self.rx_adjust(c, k, b);
        }
        n
    }

    /// Payload bytes of the messages waiting for the application.
    pub fn message_bytes(&self) -> usize {
        self.message_bytes
    }

    /// Messages waiting for the application.
    pub fn message_len(&self) -> usize {
        self.messages.len()
    }

    /// What each channel that has received anything holds for the application: `(channel,
    /// messages, bytes)`, bytes counting whole messages and those partly reassembled.
    pub fn recv_queues(&self) -> impl Iterator<Item = (u16, usize, usize)> + '_ {
        self.rx.iter().map(|(c, rx)| (c, rx.msgs, rx.bytes))
    }

    /// The driver stops reading from the transport (a receive queue is full): until
    /// [`Session::resume_receive`], the peer's silence is not held against it (we are not
    /// listening), and PINGs go out at the agreed heartbeat interval (whether or not this side
    /// proposed heartbeats), so that the peer, whose PINGs and data we leave unread, knows we
    /// are alive. A full receive queue never ends the connection.
    pub fn pause_receive(&mut self, now: Instant) {
        if self.recv_paused.is_none() {
            let interval = self
                .negotiated
                .as_ref()
                .and_then(|n| n.heartbeat_interval)
                .map(|i| i.max(MIN_HEARTBEAT));
            self.recv_paused = Some(Paused {
                interval,
                last_ping: now,
            });
        }
    }

    /// Records that `ahead` bytes of input not yet handed to [`Session::handle_input`] (what
    /// its buffer holds plus what waits in the transport) had arrived by `at`. A driver that
    /// stops reading calls it then, and again now and then while it does not read: when the
    /// bytes are finally handled, the time to live of the messages they carry is charged
    /// with the wait since the sample that first saw them, so a message that expired while it
    /// sat unread in the transport is not delivered. (The receiver has no other way to know
    /// how long a message waited there: there is no shared clock.) Samples are few (one per
    /// call), and forgotten once their bytes are handled.
    pub fn age_input(&mut self, ahead: usize, at: Instant) {
        let end = self.aged_pos + ahead;
        if self.aged.back().is_none_or(|&(e, _)| end > e) && self.aged.len() < MAX_AGE_SAMPLES {
            self.aged.push_back((end, at));
        }
    }

    /// Whether the driver stopped reading ([`Session::pause_receive`]) and has not resumed.
    #[inline]
    pub fn receive_paused(&self) -> bool {
        self.recv_paused.is_some()
    }

    /// The driver reads again: silence counts from `now`.
    pub fn resume_receive(&mut self, now: Instant) {
        if self.recv_paused.take().is_some() {
            self.last_recv = self.last_recv.max(now);
        }
    }

    /// Whether some channel's receive queue is at its high-water mark: the driver should stop
    /// reading from the transport until the application takes messages.
    #[inline]
    pub fn recv_full(&self) -> bool {
        self.rx_full > 0
    }

    /// Whether every channel's receive queue is at or below half its high-water mark: a
    /// driver that stopped reading may start again.
    #[inline]
    pub fn recv_low(&self) -> bool {
        self.rx_high == 0
    }

    /// Hands out the drop counters (policy, rate limit, TTL at either end, lost with a
    /// connection) of every channel with non-zero ones, and zeroes them.
    pub fn take_counts(&mut self, f: &mut dyn FnMut(u16, Counts)) {
        self.outbox.take_counts(f);
        for (channel, rx) in self.rx.iter_mut() {
            if !rx.counts.is_zero() {
                f(channel, std::mem::take(&mut rx.counts));
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether an event waits for [`Session::poll_event`] (a check cheap enough to make
    /// after every input, where events are rare).
    #[inline]
    pub fn has_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next instant at which [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let hb = match self.recv_paused {
            // Not reading: no silence to judge; PINGs keep telling the peer we are alive.
            Some(p) => p.interval.map(|i| p.last_ping + i),
            None => self.heartbeat.as_ref().map(|hb| {
                let dead = self.last_recv + hb.silence;
                dead.min(hb.ping_due(self.last_recv))
            }),
        };
        let qos = if matches!(self.state, State::Established | State::Closing) {
            // An owed ack has a deadline only while an ACK frame may still go (not after our
            // CLOSE: `queue_ack`); it still rides on the data written before the CLOSE.
            let ack = self
                .rx_rel
                .ack_due()
                .filter(|_| self.state == State::Established);
            // Once our CLOSE is written nothing more is: the outbox's timers (retransmission,
            // rate limits, TTL) mean nothing any more.
            let outbox = self.outbox.next_wake().filter(|_| !self.close_written());
            [outbox, ack].into_iter().flatten().min()
        } else {
            None
        };
        [
            self.handshake_deadline,
            self.reassembly.next_deadline(),
            hb,
            qos,
            self.rx_ttl_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Smoothed round-trip time measured with heartbeat PINGs (`None` until a PONG came).
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The round-trip time of the last PING answered since the previous call (unsmoothed),
    /// if one was: for a driver that records each sample (a histogram). One per heartbeat at
    /// most, and only when this side PINGs.
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.rtt_sample.take()
    }

    /// Handles the deadlines that have passed at `now`. A spurious call is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.tick(now);
        if let Some(d) = self.handshake_deadline {
            if now >= d {
                let e = Error::HandshakeTimeout {
                    after: self.config.handshake_timeout,
                };
                return Err(self.fail(e));
            }
        }
        self.reassembly
            .check_timeouts(now)
            .map_err(|e| self.fail(e))?;
        // (Buffers of large messages the application has let go of since the last one.)
        self.reassembly.trim();
        self.tick(now);
        self.outbox.expire(now);
        self.expire_received(now);
        if matches!(self.state, State::Established | State::Closing) {
            if self.rx_rel.ack_now(now) {
                self.queue_ack();
            }
            // After our CLOSE was written nothing is sent again (nothing follows a CLOSE).
            if !self.close_written() && self.outbox.retransmit_due(now) {
                let oldest = self.outbox.oldest_unacked_at().unwrap_or(now);
                if now < oldest + self.outbox.rto() {
                    // The timer ran for messages acked since (or selectively acked): those
                    // left went out later (a fragmented message completes when its last
                    // fragment goes, which a rate limit or a busier channel may hold back).
                    // Their timeout counts from their own send.
                    self.outbox.rearm(oldest);
                } else if self.last_recv > oldest || self.recv_paused.is_some() {
                    // (While we do not read, the peer's acks wait unread: no verdict.)
                    // The peer is alive (it is only slow to ack): no retry counted.
                    self.outbox.rearm(now);
                } else {
                    let retries = self.outbox.retransmit(now);
                    if retries > self.config.qos.max_retries {
                        let e = Error::Unacknowledged {
                            messages: self.outbox.inflight().0,
                            retries,
                        };
                        return Err(self.fail(e));
                    }
                }
            }
        }
        if let Some(p) = self.recv_paused.as_mut() {
            if let Some(i) = p.interval {
                if now >= p.last_ping + i {
                    // The schedule moves on even when no PING may go (after our CLOSE), or
                    // the deadline would stay in the past.
                    p.last_ping = now;
                    if self.state == State::Established {
                        let token = self.next_ping_token;
                        self.next_ping_token += 1;
                        self.queue_ping(token);
                    }
                }
            }
            return Ok(());
        }
        let Some(hb) = self.heartbeat.as_mut() else {
            return Ok(());
        };
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= hb.silence {
            return Err(self.fail(Error::PeerSilent { after: silent }));
        }
        if now >= hb.ping_due(self.last_recv) {
            // As above: after our CLOSE no PING goes, but the schedule moves on.
            hb.last_ping = Some(now);
            if self.state == State::Established {
                let token = self.next_ping_token;
                self.next_ping_token += 1;
                hb.outstanding = Some((token, now));
                self.queue_ping(token);
            }
        }
        Ok(())
    }

    fn handle_handshake(&mut self, h: Header, payload: Bytes, now: Instant) -> Result<(), Error> {
        match (self.role, h.kind) {
            (Role::Listener, FrameKind::Hello) if self.pending_hello.is_none() => {
                self.on_hello(&payload, now)
            }
            (Role::Dialer, FrameKind::Welcome) => self.on_welcome(&payload, now),
            (Role::Dialer, FrameKind::Reject) => {
                let reject = Reject::decode(&payload)?;
                if reject.code == reject_code::INCOMPATIBLE_VERSION {
                    return Err(Error::Incompatible {
                        local: self.config.version,
                        peer: reject.version,
                    });
                }
                Err(Error::Rejected {
                    code: reject.code,
                    reason: reject.reason,
                })
            }
            (_, kind) => Err(Error::UnexpectedFrame {
                kind,
                state: "handshaking",
            }),
        }
    }

    fn on_hello(&mut self, payload: &[u8], now: Instant) -> Result<(), Error> {
        let peer_version = control::decode_preamble(payload)?;
        if peer_version.0 != self.config.version.0 {
            self.reject(
                reject_code::INCOMPATIBLE_VERSION,
                &format!(
                    "protocol version {}.{} is not supported; this listener speaks {}.{}",
                    peer_version.0, peer_version.1, self.config.version.0, self.config.version.1
                ),
            );
            return Err(Error::Incompatible {
                local: self.config.version,
                peer: peer_version,
            });
        }
        let hello = match Hello::decode(payload).map_err(Error::from).and_then(|h| {
            check_limits(h.max_frame_payload, h.max_message_size)?;
            Ok(h)
        }) {
            Ok(h) => h,
            Err(e) => {
                self.reject(reject_code::PROTOCOL_ERROR, &e.to_string());
                return Err(e);
            }
        };
        let heartbeat_ms = match (
            hello.heartbeat_ms,
            duration_ms(self.config.heartbeat_interval),
        ) {
            (0, ours) => ours,
            (theirs, 0) => theirs,
            (theirs, ours) => theirs.min(ours),
        };
        let capabilities = hello.capabilities & self.config.capabilities & caps::SUPPORTED;
        let pending = PendingHello {
            hello,
            peer_version,
            capabilities,
            heartbeat_ms,
        };
        if self.config.defer_welcome {
            self.pending_hello = Some(pending);
        } else {
            self.send_welcome(pending, false, now);
        }
        Ok(())
    }

    /// The HELLO awaiting the driver's decision (listener with [`Config::defer_welcome`]):
    /// answer with [`Session::welcome`] or [`Session::refuse`].
    pub fn pending_hello(&self) -> Option<&Hello> {
        self.pending_hello.as_ref().map(|p| &p.hello)
    }

    /// Whether a pending HELLO may be answered with `resumed = true`: the dialer asked to
    /// resume a session and both sides offered [`caps::RESUME`].
    pub fn resume_requested(&self) -> Option<u64> {
        let p = self.pending_hello.as_ref()?;
        (p.capabilities & caps::RESUME != 0 && p.hello.resume_session_id != 0)
            .then_some(p.hello.resume_session_id)
    }

    /// Accepts the pending HELLO: WELCOME is queued and the session is established with id
    /// [`Config::session_id`]. `resumed` tells the dialer its earlier session continues (only
    /// when [`Session::resume_requested`]); `false` makes it a fresh session.
    pub fn welcome(&mut self, resumed: bool, now: Instant) -> Result<(), Error> {
        if self.state != State::Handshaking {
            return Err(Error::Closed);
        }
        if self.pending_hello.is_none() {
            return Err(Error::BadParameter("no HELLO awaits a decision"));
        }
        if resumed && self.resume_requested().is_none() {
            return Err(Error::BadParameter(
                "cannot resume: the dialer asked for a fresh session or RESUME was not agreed",
            ));
        }
        let pending = self.pending_hello.take().expect("checked above");
        self.send_welcome(pending, resumed, now);
        Ok(())
    }

    /// Refuses the pending HELLO (or a handshake under way): REJECT with `code` (one of
    /// [`reject_code`]) and `reason` is queued and the session is closed. Does nothing once
    /// the session is established.
    pub fn refuse(&mut self, code: u16, reason: &str) {
        if self.role != Role::Listener || self.state != State::Handshaking {
            return;
        }
        self.reject(code, control::clamp_reason(reason));
        self.pending_hello = None;
        self.state = State::Closed;
        self.handshake_deadline = None;
    }

    fn send_welcome(&mut self, p: PendingHello, resumed: bool, now: Instant) {
        self.session_id = self.config.session_id.max(1);
        let welcome = Welcome {
            version: self.config.version,
            capabilities: p.capabilities,
            max_frame_payload: self.config.max_frame_payload,
            heartbeat_ms: p.heartbeat_ms,
            max_message_size: self.config.max_message_size,
            last_received_seq: self.welcome_last_received,
            session_id: self.session_id,
            resumed,
            extensions: Vec::new(),
        };
        self.queue_control(FrameKind::Welcome, welcome.encode());
        self.establish(
            Negotiated {
                peer_version: p.peer_version,
                capabilities: p.capabilities,
                send_frame_max: p.hello.max_frame_payload.min(MAX_FRAME_PAYLOAD),
                send_message_max: p.hello.max_message_size,
                heartbeat_interval: ms_duration(p.heartbeat_ms),
                instance_id: p.hello.instance_id,
                resumed,
                peer_last_received_seq: p.hello.last_received_seq,
            },
            now,
        );
    }

    fn on_welcome(&mut self, payload: &[u8], now: Instant) -> Result<(), Error> {
        let peer_version = control::decode_preamble(payload)?;
        if peer_version.0 != self.config.version.0 {
            return Err(Error::Incompatible {
                local: self.config.version,
                peer: peer_version,
            });
        }
        let w = Welcome::decode(payload)?;
        check_limits(w.max_frame_payload, w.max_message_size)?;
        if w.session_id == 0 {
            return Err(Error::BadParameter("WELCOME session_id is 0"));
        }
        let capabilities = w.capabilities & self.config.capabilities & caps::SUPPORTED;
        if !w.resumed {
            // A fresh session at the peer: what we had of the old one means nothing to it
            // (from here on the session keeps its own record; `adopt` leaves it).
            self.rx_rel = RecvState::default();
            self.rx_preloaded = true;
        }
        if w.resumed && (self.config.resume_session_id == 0 || capabilities & caps::RESUME == 0) {
            return Err(Error::BadParameter(
                "WELCOME resumed a session this dialer did not ask to resume",
            ));
        }
        self.session_id = w.session_id;
        self.establish(
            Negotiated {
                peer_version,
                capabilities,
                send_frame_max: w.max_frame_payload.min(MAX_FRAME_PAYLOAD),
                send_message_max: w.max_message_size,
                heartbeat_interval: ms_duration(w.heartbeat_ms),
                instance_id: self.config.instance_id,
                resumed: w.resumed,
                peer_last_received_seq: w.last_received_seq,
            },
            now,
        );
        Ok(())
    }

    fn establish(&mut self, negotiated: Negotiated, now: Instant) {
        if let Some(ours) = self.config.heartbeat_interval.filter(|d| !d.is_zero()) {
            // The agreed interval is the smaller proposal; a peer that agreed to none leaves
            // ours in force.
            let interval = negotiated
                .heartbeat_interval
                .unwrap_or(ours)
                .max(MIN_HEARTBEAT);
            self.heartbeat = Some(HeartbeatState {
                interval,
                silence: interval.saturating_mul(self.config.heartbeat_misses.max(1)),
                last_ping: None,
                outstanding: None,
            });
        }
        self.last_recv = now;
        self.ttl_agreed = negotiated.capabilities & caps::TTL != 0;
        self.rel_agreed = negotiated.capabilities & caps::RELIABLE != 0;
        // ACK_REQUEST (with RELIABLE): our reliable frames ask for acks when half a window is
        // in flight, and the peer's are acked when they ask (and less often otherwise).
        let ack_requests = self.rel_agreed && negotiated.capabilities & caps::ACK_REQUEST != 0;
        self.rx_rel.set_on_request(ack_requests);
        self.outbox.set_ack_requests(ack_requests);
        self.outbox.set_ttl_on_wire(self.ttl_agreed);
        self.negotiated = Some(negotiated);
        self.state = State::Established;
        self.handshake_deadline = None;
        self.deframer.set_max_payload(self.config.max_frame_payload);
        self.events.push_back(Event::Connected {
            session_id: self.session_id,
        });
    }

    fn handle_established(&mut self, h: Header, payload: Bytes, now: Instant) -> Result<(), Error> {
        match h.kind {
            FrameKind::Data => {
                self.header_ack_in(&h, &[], now)?;
                self.on_data(h, payload, now)
            }
            FrameKind::Ack => {
                let ranges = control::decode_sack(&payload)?;
                self.header_ack_in(&h, &ranges, now)
            }
            FrameKind::Ping => {
                // (Checked: an 8-byte token.)
                control::decode_ping(&payload)?;
                // Once our CLOSE is queued nothing follows it, not even a PONG.
                if self.state == State::Established {
                    // The PING's own token bytes are the PONG's payload (a view of the
                    // input: no copy, no allocation).
                    self.queue_control(FrameKind::Pong, payload);
                }
                Ok(())
            }
            FrameKind::Pong => {
                let token = control::decode_ping(&payload)?;
                if let Some(hb) = self.heartbeat.as_mut() {
                    if let Some((t, sent)) = hb.outstanding {
                        if t == token {
                            hb.outstanding = None;
                            let sample = now.saturating_duration_since(sent);
                            // RFC 6298's smoothing: srtt = 7/8 srtt + 1/8 sample.
                            let srtt = match self.srtt {
                                None => sample,
                                Some(s) => (s * 7 + sample) / 8,
                            };
                            self.srtt = Some(srtt);
                            self.rtt_sample = Some(sample);
                            self.outbox.set_rtt(srtt);
                        }
                    }
                }
                self.events.push_back(Event::Pong { token });
                Ok(())
            }
            FrameKind::Close => {
                let close = Close::decode(&payload)?;
                self.state = State::Closed;
                self.drop_partials();
                self.events.push_back(Event::PeerClosed(close));
                Ok(())
            }
            kind => Err(Error::UnexpectedFrame {
                kind,
                state: "established",
            }),
        }
    }

    #[inline]
    fn on_data(&mut self, h: Header, payload: Bytes, now: Instant) -> Result<(), Error> {
        let channel = h.channel;
        let more = h.has(flags::MORE_FRAGMENTS);
        let cont = h.has(flags::CONTINUATION);
        if !more && !cont {
            if self.reassembly.in_progress(channel) {
                return Err(Error::Fragment {
                    channel,
                    what: "a new message began before the previous fragmented message finished",
                });
            }
            // The frame cap may be above the message cap: hold single frames to it too.
            if payload.len() > self.config.max_message_size as usize {
                return Err(Error::MessageTooLarge {
                    size: payload.len() as u64,
                    max: u64::from(self.config.max_message_size),
                });
            }
            if !self.arrived(h.flags, h.seq, now)? {
                return Ok(()); // a duplicate of a reliable message
            }
            let expires = self.expires(&h, now);
            self.deliver(Delivered { channel, payload }, expires);
            return Ok(());
        }
        self.fragment_header(&h, now)?;
        self.fragment_bytes(channel, &payload)?;
        if more {
            return Ok(());
        }
        self.fragment_done(channel, h.flags, h.seq, now)
    }

    /// The header of a fragment (first or continuation), before its bytes: counts a
    /// reliable one toward the next ack, and checks it against the message under way (or
    /// starts one).
    fn fragment_header(&mut self, h: &Header, now: Instant) -> Result<(), Error> {
        let channel = h.channel;
        if self.rel_agreed && h.has(flags::RELIABLE) {
            // Every fragment counts toward the next ack.
            self.rx_rel.owe(now);
            self.rx_rel.note_request(h.flags);
        }
        let len = h.payload_len as usize;
        if h.has(flags::CONTINUATION) {
            return self
                .reassembly
                .next_frame(channel, len, !h.has(flags::MORE_FRAGMENTS));
        }
        self.reassembly
            .start_frame(channel, h.aux as usize, len, now)?;
        let expires = self.expires(h, now);
        *self.rx_frag_deadline.get_or_insert_with(channel, || None) = expires;
        Ok(())
    }

    /// Bytes of the current fragment of `channel`'s message.
    fn fragment_bytes(&mut self, channel: u16, data: &[u8]) -> Result<(), Error> {
        self.reassembly.extend(channel, data)?;
        // A message under reassembly counts against its channel's receive mark as its
        // fragments arrive.
        self.rx_adjust(channel, 0, data.len() as isize);
        Ok(())
    }

    /// The last fragment of `channel`'s message came whole (`flags` and `seq` from its
    /// header): the message is delivered.
    fn fragment_done(
        &mut self,
        channel: u16,
        flags: u8,
        seq: u32,
        now: Instant,
    ) -> Result<(), Error> {
        let whole = self.reassembly.finish(channel);
        self.rx_adjust(channel, 0, -(whole.len() as isize));
        let deadline = self
            .rx_frag_deadline
            .get_mut(channel)
            .and_then(|d| d.take());
        if !self.arrived(flags, seq, now)? {
            return Ok(()); // a duplicate of a reliable message
        }
        self.deliver(
            Delivered {
                channel,
                payload: whole,
            },
            deadline,
        );
        Ok(())
    }

    /// At the front of `buf`, which ends before it does, a large fragment (see
    /// [`Config::direct_min`]): handles its header and the part of its payload that is there, and
    /// notes the rest as pending (it goes into the message as it comes: from `buf` on the
    /// next call, or read in place, [`Session::lend_direct`]). `false`: `buf` does not start
    /// with such a fragment, and nothing was taken.
    fn begin_pending(&mut self, buf: &mut BytesMut, now: Instant) -> Result<bool, Error> {
        if !self.aged.is_empty() || !matches!(self.state, State::Established | State::Closing) {
            return Ok(false);
        }
        let Some(bytes) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(false);
        };
        // (Called where `Deframer::decode` found a valid header and too few bytes.)
        let Ok(h) = Header::decode(bytes) else {
            return Ok(false);
        };
        let frame = HEADER_LEN + h.payload_len as usize;
        if h.kind != FrameKind::Data
            || !h.has(flags::MORE_FRAGMENTS | flags::CONTINUATION)
            || h.has(flags::TTL_PRESENT)
            || h.payload_len > self.deframer.max_payload()
            || frame < buf.len() + self.config.direct_min
        {
            return Ok(false);
        }
        // As `handle_frame` and `handle_established` take a fragment.
        self.input_timers = true;
        self.header_ack_in(&h, &[], now)?;
        self.fragment_header(&h, now)?;
        buf.advance(HEADER_LEN);
        let part = buf.split();
        self.fragment_bytes(h.channel, &part)?;
        self.pending = Some(Pending {
            channel: h.channel,
            left: frame - HEADER_LEN - part.len(),
            flags: h.flags,
            seq: h.seq,
            lent: None,
        });
        Ok(true)
    }

    /// Takes what `buf` holds of the pending fragment's payload (see
    /// [`Session::begin_pending`]).
    fn pending_input(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), Error> {
        let p = self.pending.as_ref().expect("a fragment pending");
        if p.lent.is_some() {
            // (A driver's mistake: the fragment's bytes would go past its buffer, which is
            // out. The message cannot be trusted.)
            return Err(Error::Fragment {
                channel: p.channel,
                what: "input came while the fragment's buffer was lent",
            });
        }
        let (channel, n) = (p.channel, p.left.min(buf.len()));
        let part = buf.split_to(n);
        if !self.aged.is_empty() {
            // (The fragment's bytes count as input handled: see `age_input`.)
            self.aged_pos += n;
        }
        self.fragment_bytes(channel, &part)?;
        self.pending_came(n, now)
    }

    /// `n` more bytes of the pending fragment came: when it is complete, so is its message
    /// if it was the last fragment.
    fn pending_came(&mut self, n: usize, now: Instant) -> Result<(), Error> {
        let p = self.pending.as_mut().expect("a fragment pending");
        p.left -= n;
        if p.left > 0 {
            return Ok(());
        }
        let p = self.pending.take().expect("a fragment pending");
        if p.flags & flags::MORE_FRAGMENTS == 0 {
            self.fragment_done(p.channel, p.flags, p.seq, now)?;
        }
        Ok(())
    }

    /// Drops the messages under reassembly (the session ended).
    fn drop_partials(&mut self) {
        self.reassembly.clear();
        self.pending = None;
    }

    /// When the input so far ended inside a large fragment (a part of a message too large
    /// for one frame, its payload at least [`Config::direct_min`] bytes short): the message's own
    /// buffer, with room for the rest of that fragment, to read it into in place instead
    /// of into the input buffer (whose bytes the session would copy into the message). A
    /// driver reads at most [`DirectRead::room`] bytes into its spare capacity and gives it
    /// back with [`Session::return_direct`] before it hands the session anything else;
    /// meanwhile the session takes no input. `None`: nothing to read in place (the driver
    /// reads into its input buffer as always; the session takes the fragment's bytes from
    /// there).
    pub fn lend_direct(&mut self) -> Option<DirectRead> {
        if !self.reads_in_place() {
            return None;
        }
        let p = self.pending.as_mut()?;
        let buf = self.reassembly.lend(p.channel, p.left)?;
        p.lent = Some(buf.len());
        Some(DirectRead { buf, room: p.left })
    }

    /// Whether [`Session::lend_direct`] has a buffer to lend now (a driver that reads
    /// elsewhere, into a buffer of its own, reads here instead). Not while the input is being
    /// aged (`age_input`): its bytes must pass through the input buffer, where they are
    /// counted.
    pub fn reads_in_place(&self) -> bool {
        self.aged.is_empty() && self.pending.as_ref().is_some_and(|p| p.lent.is_none())
    }

    /// Takes back what [`Session::lend_direct`] lent, with the bytes read into it at `now`:
    /// they count as input (the peer was heard), and a fragment they complete completes its
    /// message. Errors as input does (the session has failed then); a buffer lent before
    /// the session ended is dropped.
    pub fn return_direct(&mut self, d: DirectRead, now: Instant) -> Result<(), Error> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        let Some(start) = p.lent.take() else {
            return Ok(());
        };
        let channel = p.channel;
        let filled = d.buf.len().saturating_sub(start);
        if d.buf.len() < start || filled > p.left {
            // (A driver's mistake, not the peer's: the message cannot be trusted.)
            let e = Error::Fragment {
                channel,
                what: "more bytes were read into a fragment than it holds",
            };
            return Err(self.fail(e));
        }
        let r = self
            .reassembly
            .give_back(channel, d.buf, filled)
            .and_then(|()| {
                if filled == 0 {
                    return Ok(());
                }
                self.last_recv = now;
                self.tick(now);
                self.rx_adjust(channel, 0, filled as isize);
                self.pending_came(filled, now)
            });
        r.map_err(|e| self.fail(e))
    }

    /// Records a fatal error: the session closes and, where it helps the peer, a frame saying
    /// why is queued (ahead of nothing: pending data is dropped).
    fn fail(&mut self, e: Error) -> Error {
        let was = self.state;
        self.state = State::Closed;
        self.input_timers = true;
        self.handshake_deadline = None;
        self.drop_partials();
        if matches!(was, State::Established) {
            // Messages not framed yet stay in the outbox for a driver that sends them again on
            // a new connection (see `take_outbox`); control frames are void with this session,
            // except a listener's WELCOME not yet written: without it the CLOSE would be the
            // listener's first frame, which the dialer must take for a protocol error.
            self.control
                .retain(|t| t.header[0] == FrameKind::Welcome as u8);
            self.control_bytes = self.control.iter().map(Transmit::wire_len).sum();
            let close = Close {
                code: e.close_code(),
                reason: e.to_string(),
            };
            self.queue_control(FrameKind::Close, close.encode());
        }
        e
    }

    /// Queues a received message for the application; `expires` from the frame's TTL.
    #[inline]
    fn deliver(&mut self, d: Delivered, expires: Option<Instant>) {
        if expires.is_some_and(|e| e <= self.now) {
            // Expired before it could be queued (it waited unread in the transport).
            self.count_rx_expired(d.channel);
            return;
        }
        let len = d.payload.len();
        self.message_bytes += len;
        let priority = self.rx_adjust(d.channel, 1, len as isize);
        if let Some(e) = expires {
            self.rx_with_ttl += 1;
            self.rx_ttl_wake = Some(self.rx_ttl_wake.map_or(e, |w| w.min(e)));
        }
        self.messages.push(priority, d, expires);
    }

    /// Accounts what `run` brought (messages queued by [`Session::handle_data_run`]) and
    /// empties it.
    #[inline]
    fn rx_account(&mut self, run: &mut RxRun) {
        if run.msgs != 0 {
            self.message_bytes += run.bytes;
            self.rx_adjust(run.channel, run.msgs as isize, run.bytes as isize);
            run.msgs = 0;
            run.bytes = 0;
        }
    }

    /// The priority of `channel`'s messages in the receive queue.
    #[inline]
    fn rx_priority(&mut self, channel: u16) -> u8 {
        let qos = &self.config.qos;
        self.rx
            .get_or_insert_with(channel, || RxChan::new(qos.channel(channel)))
            .priority
    }

    fn count_rx_expired(&mut self, channel: u16) {
        let qos = &self.config.qos;
        self.rx
            .get_or_insert_with(channel, || RxChan::new(qos.channel(channel)))
            .counts
            .expired += 1;
    }

    /// Changes what `channel` holds for the application (messages, and bytes of whole and
    /// partly reassembled messages) and keeps the count of full and high channels. Returns
    /// the channel's priority.
    #[inline]
    fn rx_adjust(&mut self, channel: u16, msgs: isize, bytes: isize) -> u8 {
        let qos = &self.config.qos;
        let rx = self
            .rx
            .get_or_insert_with(channel, || RxChan::new(qos.channel(channel)));
        rx.msgs = rx.msgs.wrapping_add_signed(msgs);
        rx.bytes = rx.bytes.wrapping_add_signed(bytes);
        let full = rx.msgs >= rx.hwm_msgs || rx.bytes >= rx.hwm_bytes;
        let high = rx.msgs * 2 > rx.hwm_msgs || rx.bytes * 2 > rx.hwm_bytes;
        flip(&mut rx.full, full, &mut self.rx_full);
        flip(&mut rx.high, high, &mut self.rx_high);
        rx.priority
    }

    /// Records a whole message's arrival for reliable delivery, from its last frame's header
    /// flags and number (`seq`, the header's field); `false` for a duplicate, which is
    /// dropped. Owed acks due by count go out at once.
    #[inline(always)]
    fn arrived(&mut self, frame_flags: u8, seq: u32, now: Instant) -> Result<bool, Error> {
        if !(self.rel_agreed && frame_flags & flags::RELIABLE != 0) {
            return Ok(true);
        }
        let fresh = self.rx_rel.arrive(seq, now)? == Arrival::New;
        self.rx_rel.note_request(frame_flags);
        self.ack_if_due(now);
        Ok(fresh)
    }

    /// Records the reliable messages `run` took as arrived (see [`Session::arrived`]): an
    /// ack is owed, and goes at once if due by count or asked for.
    #[inline]
    fn arrived_in_order(&mut self, run: &mut InOrder, now: Instant) {
        if run.is_empty() {
            return;
        }
        self.input_timers = true;
        self.rx_rel.arrive_in_order(run, now);
        self.ack_if_due(now);
    }

    /// Queues an ACK frame if one is due now (by count, asked for, or its delay passed).
    #[inline]
    fn ack_if_due(&mut self, now: Instant) {
        if self.rx_rel.ack_now(now) {
            self.queue_ack();
        }
    }

    /// Queues an ACK frame (cumulative ack and selective ranges), replacing one not yet
    /// written.
    fn queue_ack(&mut self) {
        if self.state != State::Established {
            // Once our CLOSE is queued nothing follows it, not even an ACK (the peer learns
            // nothing more from us; what we received is delivered all the same).
            return;
        }
        let mut h = Header::new(FrameKind::Ack);
        h.flags = flags::ACK_PRESENT;
        h.ack = crate::reliable::narrow(self.rx_rel.cumulative());
        let payload = control::encode_sack(&self.rx_rel.ranges(control::MAX_SACK_RANGES));
        h.payload_len = payload.len() as u32;
        self.rx_rel.acked(true);
        let t = Transmit {
            header: h.encode(),
            payload,
            deadline: None,
        };
        if let Some(old) = self
            .control
            .iter_mut()
            .find(|t| t.header[0] == FrameKind::Ack as u8)
        {
            self.control_bytes = self.control_bytes - old.wire_len() + t.wire_len();
            *old = t;
            return;
        }
        self.control_bytes += t.wire_len();
        self.control.push_back(t);
    }

    /// An ack from the peer; before `adopt` (a resuming dialer) it waits.
    /// The ack a frame's header carries (`ACK_PRESENT`, with `ranges` from an ACK frame's
    /// payload), if reliable delivery was agreed.
    #[inline]
    fn header_ack_in(
        &mut self,
        h: &Header,
        ranges: &[(u32, u32)],
        now: Instant,
    ) -> Result<(), Error> {
        if self.rel_agreed && h.has(flags::ACK_PRESENT) {
            self.ack_in(h.ack, ranges, now)?;
        }
        Ok(())
    }

    fn ack_in(&mut self, cum: u32, ranges: &[(u32, u32)], now: Instant) -> Result<(), Error> {
        if self.adopt_pending {
            self.early_ack = Some(cum);
            return Ok(());
        }
        self.outbox.on_ack(cum, ranges, now)?;
        Ok(())
    }

    /// What arrived of the peer's reliable messages, for the next session of the pipe
    /// (leaving an empty record).
    pub fn take_recv_state(&mut self) -> RecvState {
        std::mem::take(&mut self.rx_rel)
    }

    /// Listener: WELCOME's `last_received_seq`, the last reliable message number the pipe
    /// being resumed received (call before [`Session::welcome`]).
    pub fn set_last_received_seq(&mut self, seq: u32) {
        self.welcome_last_received = seq;
    }

    /// Takes over the state of an earlier session of the same pipe, once this one is
    /// established: `outbox` (messages queued, and reliable ones unacknowledged) and `recv`
    /// (what arrived of the peer's reliable messages). If the peer resumed the session, the
    /// messages it lacks (above the `last_received_seq` it announced) go again first, with
    /// their numbers, and `recv` carries on. Otherwise the peer starts afresh: `recv` is
    /// dropped, and unacknowledged messages go again as new ones; the count returned is of
    /// those the peer may have had (they may arrive twice) — 0 after a resume.
    pub fn adopt(
        &mut self,
        mut outbox: Outbox,
        recv: RecvState,
        now: Instant,
    ) -> Result<usize, Error> {
        let neg = self.negotiated.as_ref().ok_or(Error::NotConnected)?;
        let (resumed, peer) = (neg.resumed, neg.peer_last_received_seq);
        outbox.set_ttl_on_wire(self.ttl_agreed);
        // A peer that claims messages never sent is treated as a fresh one: everything
        // unacknowledged goes again.
        let n = match outbox.resume(peer, resumed, now) {
            Ok(n) => n,
            Err(_) => outbox.resume(0, false, now)?,
        };
        self.outbox = outbox;
        self.adopt_pending = false;
        if let Some(cum) = self.early_ack.take() {
            if resumed {
                // Cumulative: a stale or bogus one changes nothing worth failing for.
                let _ = self.outbox.on_ack(cum, &[], now);
            }
        }
        // The record is the session's own when it came with the config or the session is
        // fresh (reset at WELCOME: frames read right behind it are already in it); a resumed
        // listener's comes from the pipe.
        if resumed && !self.rx_preloaded {
            self.rx_rel = recv;
        }
        Ok(n)
    }

    /// What arrived of the peer's reliable messages.
    pub fn recv_state(&self) -> &RecvState {
        &self.rx_rel
    }

    /// When a received frame's message expires (its TTL counts from its arrival); `None`
    /// without TTL agreed.
    fn expires(&self, h: &Header, now: Instant) -> Option<Instant> {
        (self.ttl_agreed && h.has(flags::TTL_PRESENT)).then(|| {
            // Charged with the time it waited unread in the transport, when known.
            let start = self.aged_frame.map_or(now, |since| since.min(now));
            start + Duration::from_millis(u64::from(h.ttl_ms))
        })
    }

    /// Drops the received messages whose time to live ran out at `now` (counted).
    fn expire_received(&mut self, now: Instant) {
        if self.rx_ttl_wake.is_none_or(|w| now < w) {
            return;
        }
        let mut gone = Vec::new();
        let next = self.messages.expire(now, &mut gone);
        for (channel, len) in gone {
            self.message_bytes -= len;
            self.rx_with_ttl -= 1;
            self.rx_adjust(channel, -1, -(len as isize));
            self.count_rx_expired(channel);
        }
        self.rx_ttl_wake = next;
    }

    /// Whether sending a message on `channel` with `ttl` and `reliable` involves time (see
    /// [`Outbox::send_uses_time`](crate::qos::Outbox::send_uses_time)). When it does
    /// not, [`Session::send_direct`] and [`Session::send_message`] may be given
    /// [`Session::now`] instead of a fresh reading of the clock: what they do is the same.
    #[inline]
    pub fn send_uses_time(
        &self,
        channel: u16,
        ttl: Option<Duration>,
        reliable: Option<bool>,
    ) -> bool {
        self.outbox.send_uses_time(channel, ttl, reliable)
    }

    /// The latest time any call brought (what [`Session::poll_transmit`] and
    /// [`Session::poll_message`] use).
    #[inline]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Moves the session's notion of the current time forward to `now` (never back).
    pub fn advance(&mut self, now: Instant) {
        self.tick(now);
    }

    /// Marks DATA frame `t` as carrying the cumulative ack, when one is owed (and then no
    /// longer owes it).
    #[inline]
    fn carry_ack(&mut self, t: &mut Transmit) {
        if self.rx_rel.owed() {
            let ack = crate::reliable::narrow(self.rx_rel.cumulative());
            crate::wire::header::set_flag(&mut t.header, flags::ACK_PRESENT);
            crate::wire::header::put_u32(&mut t.header, 12, ack);
            self.rx_rel.acked(false);
        }
    }

    #[inline]
    fn tick(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
            if self.heard_untimed {
                // Frames came without a time since the last new one: the peer was heard
                // before `now` (a silence is never counted longer than it was).
                self.heard_untimed = false;
                self.last_recv = self.last_recv.max(now);
            }
        }
    }

    fn reject(&mut self, code: u16, reason: &str) {
        let r = Reject {
            version: self.config.version,
            code,
            reason: reason.to_owned(),
        };
        self.queue_control(FrameKind::Reject, r.encode());
    }

    /// Queues a PING with `token`, its payload (what [`control::encode_ping`] makes) cut
    /// from `ping_scratch`.
    fn queue_ping(&mut self, token: u64) {
        let bytes = token.to_be_bytes();
        if self.ping_scratch.capacity() < bytes.len() {
            self.ping_scratch = BytesMut::with_capacity(PING_SCRATCH);
        }
        self.ping_scratch.extend_from_slice(&bytes);
        let payload = self.ping_scratch.split().freeze();
        self.queue_control(FrameKind::Ping, payload);
    }

    fn queue_control(&mut self, kind: FrameKind, payload: Bytes) {
        if matches!(kind, FrameKind::Ping | FrameKind::Pong) {
            // While the transport takes nothing (the peer does not read), PINGs and PONGs
            // must not pile up: one of each kind waits, with the latest token (the only one
            // the other side still matches).
            if let Some(t) = self.control.iter_mut().find(|t| t.header[0] == kind as u8) {
                t.payload = payload;
                return;
            }
        }
        let mut h = Header::new(kind);
        h.payload_len = payload.len() as u32;
        self.push(h, payload);
    }

    fn push(&mut self, h: Header, payload: Bytes) {
        let t = Transmit {
            header: h.encode(),
            payload,
            deadline: None,
        };
        self.control_bytes += t.wire_len();
        self.control.push_back(t);
    }
}

/// Hands the whole message at `body` of `run` (the chunk numbered `id`; `last`: its last
/// frame) to `sink`, counted off `left`; whether the next may go the same way.
#[inline(always)]
fn hand_direct(
    run: &mut Bytes,
    id: u32,
    last: bool,
    channel: u16,
    body: std::ops::Range<usize>,
    left: &mut usize,
    sink: &mut (impl ReceiveSink + ?Sized),
) -> bool {
    *left -= 1;
    sink.deliver(Received {
        channel,
        payload: Payload::Part(Part::new(run, id, last, body)),
    });
    *left > 0
}

/// Sets `flag` to `now`, keeping `count` (of flags set) in step.
#[inline]
fn flip(flag: &mut bool, now: bool, count: &mut usize) {
    if *flag != now {
        *flag = now;
        if now {
            *count += 1;
        } else {
            *count -= 1;
        }
    }
}

fn check_limits(max_frame_payload: u32, max_message_size: u32) -> Result<(), Error> {
    if max_frame_payload < MIN_FRAME_PAYLOAD {
        return Err(Error::BadParameter("max frame payload below 1024 bytes"));
    }
    if max_message_size == 0 {
        return Err(Error::BadParameter("max message size is 0"));
    }
    Ok(())
}

fn duration_ms(d: Option<Duration>) -> u32 {
    d.map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

fn ms_duration(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// Close code used for an ordinary local close without a reason.
pub const DEFAULT_CLOSE_CODE: u16 = close_code::NORMAL;
