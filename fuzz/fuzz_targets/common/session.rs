//! Target `session`: a dialer and a listener [`Session`] driven through an arbitrary sequence
//! of operations (structured with `arbitrary`) over two simulated links, in virtual time.
//!
//! The input decodes to a [`SessionInput`]: a [`Setup`] (both sides' limits, heartbeats,
//! capabilities and QoS channels: small high-water marks, every backpressure policy, TTLs,
//! rate limits, reliable channels and small in-flight windows; how far the handshake is taken
//! before the operations start) and a list of [`Op`]s: sends on five channels (reliable or
//! not, with or without a TTL, up to 9 KiB), frames taken from a side onto its outgoing link,
//! frames delivered from a link as a byte stream (whole, in chunks, with or without honouring
//! the receiver's backpressure) or as whole frames, the link's frames dropped, duplicated,
//! swapped, truncated or corrupted, raw bytes injected, time advanced (with or without the
//! deadlines firing), messages and events taken, pause/resume receive, PING, close, transport
//! loss, the deferred listener's welcome or refusal.
//!
//! The clock is a base `Instant` plus an offset the operations advance: the sessions read no
//! clock, and nothing here draws a random number, so an input always runs the same way.
//!
//! The oracles, checked after every operation:
//! - nothing panics; a `handle_*` error leaves the session closed, and a closed session stays
//!   closed, returns `Ok` to every further `handle_*`, refuses sends with `Closed`, has no
//!   deadline, holds nothing in reassembly, delivers nothing new and sends nothing after its
//!   CLOSE or REJECT; states only move forward; `Connected` comes once;
//! - every frame a session writes is well-formed (header, control payload, DATA within the
//!   peer's frame limit, capabilities agreed);
//! - queues stay bounded: each channel's send queue within its high-water mark (plus the one
//!   message under way and the numbered reliable messages queued again), the in-flight
//!   window within its limits, at most four control frames, reassembly within its cap, and
//!   — for a receiver whose driver stops reading when [`Session::recv_full`] says so — the
//!   receive queue within the receive marks plus what the last read carried;
//! - a deadline that came due and was handled (and everything ready written) is not due any
//!   more: [`Session::poll_timeout`] never keeps a driver that sleeps until it spinning;
//! - admissions match the channel's policy; drop counters only for the policies that drop;
//! - over a link nobody tampered with: every delivered message is one that was sent and
//!   admitted, on its channel, intact, at most once, in send order per channel; and with both
//!   links clean the only errors are the ones a quiet or slow peer causes (timeouts, silence,
//!   reassembly limits, refusal);
//! - at the end, if both links are clean and both sessions established, the harness drives
//!   the pair as a diligent driver would (deadlines the operations left overdue fire first)
//!   until both outboxes are empty: it must get there without a stall (work left and no
//!   deadline) or an error other than what the configuration allows (silence with one
//!   heartbeat miss allowed, reassembly limits), and every admitted message without a TTL on
//!   a channel that never drops must then have arrived exactly once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use duct_proto::qos::{Admission, Backpressure, ChannelConfig, DropReason, QosConfig, Rate};
use duct_proto::session::{MAX_FRAME_PAYLOAD, MIN_FRAME_PAYLOAD};
use duct_proto::wire::control::{self, caps, Close, Hello, Reject, Welcome, MAX_REASON_LEN};
use duct_proto::wire::{flags, FrameKind, Header, HEADER_LEN};
use duct_proto::{Config, Direct, Error, Event, Received, Role, Session, State, DIRECT_MIN};

/// The channels the harness sends on: the first four are configured per side, the last one
/// takes the side's default channel settings.
pub const CHANNELS: [u16; 5] = [0, 1, 7, 300, 0xffff];
/// Longest message the harness sends (above every side's `max_message_size`).
const MAX_LEN: usize = 9 * 1024;
/// Largest `max_message_size` a side is given.
const MAX_MESSAGE: usize = 8 * 1024;
/// Most control frames a session may hold: handshake frame, PING, PONG, ACK (or a final
/// CLOSE in place of all but the handshake frame).
const MAX_CONTROL: usize = 4;
/// Rounds of the final settling phase before it counts as stuck.
const SETTLE_ROUNDS: usize = 50_000;
/// Ops of one input that are run (the rest is ignored).
const MAX_OPS: usize = 4096;

/// The whole input of the `session` target.
#[derive(Arbitrary, Debug)]
pub struct SessionInput {
    /// Both sides' configuration and the handshake's starting point.
    pub setup: Setup,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

/// Configuration of the pair.
#[derive(Arbitrary, Debug)]
pub struct Setup {
    dialer: SideSetup,
    listener: SideSetup,
    handshake: Handshake,
}

/// How far the handshake is taken before the operations start (cleanly).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Nothing done: HELLO waits in the dialer.
    Fresh,
    /// HELLO delivered to the listener (which welcomed it, or waits if deferred).
    HelloDelivered,
    /// Both sides established (a deferred listener welcomed at once).
    Complete,
}

#[derive(Arbitrary, Debug)]
struct SideSetup {
    frame: u8,
    message: u8,
    /// Small: one maximum-size message (fragments of several channels may exceed it).
    tight_reassembly: bool,
    short_reassembly_timeout: bool,
    /// `100 + 20 * x` ms.
    heartbeat: Option<u8>,
    heartbeat_misses: u8,
    no_ttl: bool,
    no_reliable: bool,
    defer_welcome: bool,
    channels: [ChanSetup; 4],
    default: ChanSetup,
    /// Pipe-wide in-flight window: messages, bytes.
    window: Option<(u8, u16)>,
    max_retries: u8,
    pipe_msgs_rate: Option<u8>,
    pipe_bytes_rate: Option<u8>,
    /// `Config::direct_min` modulo 4097 (`None`: the default, 16 KiB, which frames of at
    /// most 4 KiB never reach).
    direct_min: Option<u16>,
    /// The driver reads the rest of a fragment in place when the session lends its buffer
    /// (`Session::lend_direct`); `Op::Deliver` changes it.
    in_place: bool,
}

#[derive(Arbitrary, Debug)]
struct ChanSetup {
    snd_hwm_msgs: u8,
    /// 0: the default (64 MiB).
    snd_hwm_bytes: u16,
    rcv_hwm_msgs: u8,
    /// 0: the default (64 MiB).
    rcv_hwm_bytes: u16,
    policy: Policy,
    ttl_ms: Option<u16>,
    priority: u8,
    weight: u8,
    msgs_rate: Option<u8>,
    bytes_rate: Option<u8>,
    reliable: bool,
    window: Option<(u8, u16)>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Policy {
    Block,
    DropNew,
    DropOld,
    FailFast,
}

/// One side of the pair, as ops name it.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dialer (index 0).
    Dialer,
    /// The listener (index 1).
    Listener,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Side::Dialer => 0,
            Side::Listener => 1,
        }
    }
}

/// One operation.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// The application sends one message (`len` modulo 9 KiB + 1).
    Send {
        side: Side,
        chan: u8,
        len: u16,
        ttl_ms: Option<u16>,
        reliable: Option<bool>,
    },
    /// The application sends one message as the driver's `send` does: framed at once
    /// when nothing waits before it (`Session::send_direct`), else queued.
    SendDirect {
        side: Side,
        chan: u8,
        len: u16,
        ttl_ms: Option<u16>,
        reliable: Option<bool>,
    },
    /// The application sends `count % 32 + 1` messages of one size as the driver's
    /// `send_slices` does: framed by the driver itself while the session allows a run
    /// (`Session::direct_run`; a reliable one numbered with `Session::number_next`, kept
    /// with `record_direct` or, with `copy`, `record_direct_copy`); the first that does
    /// not fit the run goes by `send_direct` and ends it, the rest too.
    Run {
        side: Side,
        chan: u8,
        count: u8,
        len: u16,
        ttl_ms: Option<u16>,
        reliable: Option<bool>,
        copy: bool,
    },
    /// The application sends `count % 32 + 1` messages of one size. `queued`: as the
    /// driver's `send_slices` does when its first message is queued (the socket is behind):
    /// the next ones join the channel's queue by `Session::queue_run` while they fit; the
    /// first that does not, and the rest, go by `send_message`.
    Burst {
        side: Side,
        chan: u8,
        count: u8,
        len: u16,
        queued: bool,
    },
    /// The driver writes up to `max` frames (0: all) of `side` to its outgoing link;
    /// `plain`: as its write queue takes them, plain runs first (`Session::poll_plain_run`),
    /// then `poll_transmit_at`.
    Pump { side: Side, max: u8, plain: bool },
    /// Up to `frames` frames (0: all) of the link into `to` go into the transport, and the
    /// transport is read: in `chunk`-byte reads (0: one read per frame); with `backpressure`,
    /// reading stops while the receiver is full; `in_place`: from now on the driver reads
    /// into the buffer the session lends, when it lends one.
    Deliver {
        to: Side,
        frames: u8,
        chunk: u16,
        backpressure: bool,
        in_place: bool,
    },
    /// Up to `frames` frames (0: all) of the link into `to` handed over whole
    /// ([`Session::handle_frame`], a message transport).
    DeliverFrames { to: Side, frames: u8 },
    /// Both sides write everything, and both read everything (honouring backpressure).
    Exchange,
    /// The first `n` frames of the link into `to` are lost.
    Drop { to: Side, n: u8 },
    /// A frame of the link into `to` arrives twice.
    Duplicate { to: Side, idx: u8 },
    /// Two frames of the link into `to` swap places.
    Swap { to: Side, a: u8, b: u8 },
    /// A frame of the link into `to` is cut to `keep` bytes.
    Truncate { to: Side, idx: u8, keep: u16 },
    /// A byte of a frame of the link into `to` is changed.
    Flip {
        to: Side,
        idx: u8,
        pos: u16,
        xor: u8,
    },
    /// Raw bytes go into `to`'s transport.
    Inject { to: Side, bytes: Vec<u8> },
    /// Virtual time moves `ms` forward; with `fire`, due deadlines are handled.
    Advance { ms: u16, fire: bool },
    /// [`Session::handle_timeout`] now, due or not.
    Timeout { side: Side },
    /// Time jumps to the earliest deadline of either side, which fires.
    JumpToDeadline,
    /// The application takes up to `max` messages (0: all); `batch`: through
    /// [`Session::poll_messages_at`].
    Recv { side: Side, max: u8, batch: bool },
    /// The driver queues a PING.
    Ping { side: Side, token: u64 },
    /// The application closes the session.
    Close { side: Side, code: u16 },
    /// The transport breaks under `side`.
    TransportLost { side: Side },
    /// The driver stops reading.
    Pause { side: Side },
    /// The driver reads again.
    Resume { side: Side },
    /// The driver reports input waiting in the transport (`exact`: the true amount).
    AgeInput { side: Side, ahead: u16, exact: bool },
    /// The deferred listener welcomes the pending HELLO.
    Welcome { resumed: bool },
    /// The listener refuses the handshake.
    Refuse { code: u16 },
    /// The driver collects the drop counters.
    TakeCounts { side: Side },
}

/// Target `session`: decodes `data` as libFuzzer's `fuzz_target!(|input: SessionInput| ..)`
/// would, and runs it.
pub fn session(data: &[u8]) {
    if data.len() < <SessionInput as Arbitrary>::size_hint(0).0 {
        return;
    }
    let u = Unstructured::new(data);
    let Ok(input) = SessionInput::arbitrary_take_rest(u) else {
        return;
    };
    run(input);
}

/// Runs one decoded input.
pub fn run(input: SessionInput) {
    let mut h = Harness::new(&input.setup);
    for op in input.ops.iter().take(MAX_OPS) {
        h.op(op);
        h.check_all();
    }
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// Setup

fn build_rate(r: Option<u8>, bytes: bool) -> Option<Rate> {
    let r = r?;
    if bytes {
        Rate::new(4096.0 * f64::from(1 + r % 64), 1024 * u64::from(r % 16))
    } else {
        Rate::new(4.0 + f64::from(r), u64::from(r % 8))
    }
}

impl ChanSetup {
    fn build(&self) -> ChannelConfig {
        let (inflight_msgs, inflight_bytes) = match self.window {
            Some((m, b)) => (usize::from(m % 16), usize::from(b)),
            None => (usize::MAX, usize::MAX),
        };
        ChannelConfig {
            snd_hwm_msgs: usize::from(self.snd_hwm_msgs % 17),
            snd_hwm_bytes: match self.snd_hwm_bytes {
                0 => ChannelConfig::default().snd_hwm_bytes,
                b => usize::from(b),
            },
            rcv_hwm_msgs: usize::from(self.rcv_hwm_msgs % 33),
            rcv_hwm_bytes: match self.rcv_hwm_bytes {
                0 => ChannelConfig::default().rcv_hwm_bytes,
                b => usize::from(b),
            },
            backpressure: match self.policy {
                Policy::Block => Backpressure::Block,
                Policy::DropNew => Backpressure::DropNew,
                Policy::DropOld => Backpressure::DropOld,
                Policy::FailFast => Backpressure::FailFast,
            },
            ttl: self.ttl_ms.map(|t| Duration::from_millis(u64::from(t))),
            priority: [0, 128, 255][usize::from(self.priority % 3)],
            weight: u32::from(self.weight % 4),
            msgs_rate: build_rate(self.msgs_rate, false),
            bytes_rate: build_rate(self.bytes_rate, true),
            reliable: self.reliable,
            inflight_msgs,
            inflight_bytes,
        }
    }
}

impl SideSetup {
    fn config(&self, role: Role) -> Config {
        let (inflight_msgs, inflight_bytes) = match self.window {
            Some((m, b)) => (usize::from(m % 32), usize::from(b)),
            None => (4096, 16 * 1024 * 1024),
        };
        let qos = QosConfig {
            default: self.default.build(),
            channels: CHANNELS[..4]
                .iter()
                .zip(&self.channels)
                .map(|(&c, s)| (c, s.build()))
                .collect(),
            pipe_msgs_rate: build_rate(self.pipe_msgs_rate, false),
            pipe_bytes_rate: build_rate(self.pipe_bytes_rate, true),
            inflight_msgs,
            inflight_bytes,
            max_retries: u32::from(self.max_retries % 10),
        };
        let max_message = [700, 3000, MAX_MESSAGE as u32][usize::from(self.message % 3)];
        let mut capabilities = caps::TTL | caps::RELIABLE;
        if self.no_ttl {
            capabilities &= !caps::TTL;
        }
        if self.no_reliable {
            capabilities &= !caps::RELIABLE;
        }
        Config {
            max_frame_payload: [1024, 1500, 4096][usize::from(self.frame % 3)],
            max_message_size: max_message,
            reassembly_limit: if self.tight_reassembly {
                max_message as usize
            } else {
                64 * 1024
            },
            reassembly_timeout: if self.short_reassembly_timeout {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(30)
            },
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: self
                .heartbeat
                .map(|x| Duration::from_millis(100 + 20 * u64::from(x))),
            heartbeat_misses: u32::from(self.heartbeat_misses % 5),
            capabilities,
            instance_id: 11,
            session_id: 5,
            defer_welcome: role == Role::Listener && self.defer_welcome,
            qos: Arc::new(qos),
            direct_min: self
                .direct_min
                .map_or(DIRECT_MIN, |x| usize::from(x) % 4097),
            ..Config::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// Messages of at least this many bytes carry a header the receiver checks.
const TRACKED_LEN: usize = 6;

/// Whether a message of `len` bytes sent with `ttl` on a channel configured as `cfg`, and
/// `queued` (accepted into the outbox), must reach the peer's application: tracked, never
/// expiring, never pushed out by a newer one.
fn must_arrive(queued: bool, len: usize, ttl: Option<Duration>, cfg: &ChannelConfig) -> bool {
    queued
        && len >= TRACKED_LEN
        && ttl.is_none()
        && cfg.ttl.is_none()
        && cfg.backpressure != Backpressure::DropOld
}

/// An op's time to live in milliseconds, as a duration.
fn millis(ms: Option<u16>) -> Option<Duration> {
    ms.map(|t| Duration::from_millis(u64::from(t)))
}

/// The channel index and the length an op's `chan` and `len` name.
fn pick(chan: u8, len: usize) -> (usize, usize) {
    (usize::from(chan) % CHANNELS.len(), len % (MAX_LEN + 1))
}

/// The message number `seq` of `dir` (0: dialer to listener) on channel index `ci`, `len`
/// bytes: `[0xD0 | ci << 1 | dir, len as u8, seq (4 bytes), filler]`; shorter ones are all
/// `0xEE`.
fn payload(dir: usize, ci: usize, seq: u32, len: usize) -> Bytes {
    if len < TRACKED_LEN {
        return Bytes::from(vec![0xEE; len]);
    }
    let mut v = Vec::with_capacity(len);
    v.push(0xD0 | (ci as u8) << 1 | dir as u8);
    v.push(len as u8);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend((TRACKED_LEN..len).map(|i| filler(seq, i)));
    Bytes::from(v)
}

fn filler(seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(131) as usize).wrapping_add(i.wrapping_mul(7)) as u8 ^ 0x5a
}

/// One message the application offered.
#[derive(Debug)]
struct SentRec {
    ci: usize,
    len: usize,
    /// Accepted into the outbox (`Admission::Queued`).
    queued: bool,
    /// Must arrive once both links stay clean and the pair settles: queued, no TTL, on a
    /// channel that never drops a queued message.
    must_arrive: bool,
    /// Times it arrived at the peer.
    arrived: u32,
}

// ---------------------------------------------------------------------------------------------
// The harness

/// Frames written by one side and not yet in the peer's transport.
#[derive(Default)]
struct Link {
    frames: VecDeque<Vec<u8>>,
    /// Frames were lost, duplicated, reordered, cut or changed, or bytes injected: the
    /// receiver's view no longer matches what was sent.
    tainted: bool,
}

/// What one side's oracles remember.
struct Peer {
    s: Session,
    role: Role,
    cfg: Config,
    /// Bytes in the transport (written into it, not yet read).
    transport: VecDeque<u8>,
    /// The driver's read buffer.
    inbuf: BytesMut,
    /// Stream offsets where frames end (clean links only), for the receive bound.
    ends: VecDeque<u64>,
    /// Bytes ever put into the transport, and ever read from it.
    put: u64,
    read: u64,
    final_frame_sent: bool,
    connected: bool,
    /// Highest state seen (as a rank).
    rank: u8,
    /// Messages queued when the session was first seen closed (nothing may be added).
    closed_with: Option<usize>,
    /// The driver read while the receiver was full (or garbage came): the receive bound is
    /// off until the queue is empty.
    overfed: bool,
    /// Messages this side offered (numbered from 1).
    sent: Vec<SentRec>,
    /// Per channel: the last tracked number delivered from the peer.
    last_seq: [u32; 5],
    /// An error came back from a `handle_*` call.
    failed: Option<Error>,
    /// The driver reads into a buffer the session lends when it does.
    in_place: bool,
}

/// The two sessions, their links, and the virtual clock.
pub struct Harness {
    peers: [Peer; 2],
    /// links[i]: frames written by side i, to the other.
    links: [Link; 2],
    /// The virtual clock (it starts at the one real reading, and only ops move it).
    now: Instant,
}

fn rank(s: State) -> u8 {
    match s {
        State::Handshaking => 0,
        State::Established => 1,
        State::Closing => 2,
        State::Closed => 3,
    }
}

/// Errors a well-behaved peer over a clean link may still cause: it was slow or quiet, the
/// local limits were tight, or it refused.
fn environmental(e: &Error) -> bool {
    matches!(
        e,
        Error::HandshakeTimeout { .. }
            | Error::PeerSilent { .. }
            | Error::Unacknowledged { .. }
            | Error::ReassemblyTimeout { .. }
            | Error::ReassemblyLimit { .. }
            | Error::Rejected { .. }
    )
}

impl Peer {
    fn new(cfg: Config, role: Role, in_place: bool, now: Instant) -> Peer {
        Peer {
            s: Session::new(cfg.clone(), role, now),
            role,
            cfg,
            transport: VecDeque::new(),
            inbuf: BytesMut::new(),
            ends: VecDeque::new(),
            put: 0,
            read: 0,
            final_frame_sent: false,
            connected: false,
            rank: 0,
            closed_with: None,
            overfed: false,
            sent: Vec::new(),
            last_seq: [0; 5],
            failed: None,
            in_place,
        }
    }

    fn chan_cfg(&self, ci: usize) -> &ChannelConfig {
        self.cfg.qos.channel(CHANNELS[ci])
    }

    /// Frame cap this side uses after the handshake (as `Session::new` clamps it).
    fn frame_cap(&self) -> usize {
        self.cfg
            .max_frame_payload
            .clamp(MIN_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD) as usize
    }
}

impl Harness {
    /// The pair for `setup`, the handshake taken as far as it says.
    pub fn new(setup: &Setup) -> Harness {
        let now = Instant::now();
        let (dc, lc) = (&setup.dialer, &setup.listener);
        let d = Peer::new(dc.config(Role::Dialer), Role::Dialer, dc.in_place, now);
        let l = Peer::new(lc.config(Role::Listener), Role::Listener, lc.in_place, now);
        let mut h = Harness {
            peers: [d, l],
            links: [Link::default(), Link::default()],
            now,
        };
        if setup.handshake != Handshake::Fresh {
            h.pump(0, 0);
            h.deliver(1, 0, 0, false);
            if setup.handshake == Handshake::Complete {
                if h.peers[1].s.pending_hello().is_some() {
                    h.peers[1].s.welcome(false, now).expect("a pending HELLO");
                }
                h.pump(1, 0);
                h.deliver(0, 0, 0, false);
                assert_eq!(h.peers[0].s.state(), State::Established);
                assert_eq!(h.peers[1].s.state(), State::Established);
            }
            h.check_all();
        }
        h
    }

    fn clean(&self) -> bool {
        !self.links[0].tainted && !self.links[1].tainted
    }

    /// Runs one operation.
    pub fn op(&mut self, op: &Op) {
        match *op {
            Op::Send {
                side,
                chan,
                len,
                ttl_ms,
                reliable,
            }
            | Op::SendDirect {
                side,
                chan,
                len,
                ttl_ms,
                reliable,
            } => {
                let direct = matches!(op, Op::SendDirect { .. });
                let len = usize::from(len);
                self.send_way(side.idx(), chan, len, millis(ttl_ms), reliable, direct);
            }
            Op::Run {
                side,
                chan,
                count,
                len,
                ttl_ms,
                reliable,
                copy,
            } => {
                let n = usize::from(count % 32) + 1;
                let len = usize::from(len);
                self.run_direct(side.idx(), chan, n, len, millis(ttl_ms), reliable, copy);
            }
            Op::Burst {
                side,
                chan,
                count,
                len,
                queued,
            } => {
                let n = usize::from(count % 32) + 1;
                if queued {
                    self.burst_queued(side.idx(), chan, n, usize::from(len));
                } else {
                    for _ in 0..n {
                        self.send(side.idx(), chan, usize::from(len), None, None);
                    }
                }
            }
            Op::Pump { side, max, plain } => self.pump_way(side.idx(), usize::from(max), plain),
            Op::Deliver {
                to,
                frames,
                chunk,
                backpressure,
                in_place,
            } => {
                self.peers[to.idx()].in_place = in_place;
                self.deliver(
                    to.idx(),
                    usize::from(frames),
                    usize::from(chunk),
                    backpressure,
                )
            }
            Op::DeliverFrames { to, frames } => self.deliver_frames(to.idx(), usize::from(frames)),
            Op::Exchange => {
                self.pump(0, 0);
                self.pump(1, 0);
                self.deliver(1, 0, 0, true);
                self.deliver(0, 0, 0, true);
            }
            Op::Drop { to, n } => {
                let link = &mut self.links[1 - to.idx()];
                let n = usize::from(n).min(link.frames.len());
                if n > 0 {
                    link.frames.drain(..n);
                    link.tainted = true;
                }
            }
            Op::Duplicate { to, idx } => {
                let link = &mut self.links[1 - to.idx()];
                if !link.frames.is_empty() {
                    let i = usize::from(idx) % link.frames.len();
                    let f = link.frames[i].clone();
                    link.frames.insert(i, f);
                    link.tainted = true;
                }
            }
            Op::Swap { to, a, b } => {
                let link = &mut self.links[1 - to.idx()];
                let n = link.frames.len();
                if n > 1 {
                    let (a, b) = (usize::from(a) % n, usize::from(b) % n);
                    if a != b {
                        link.frames.swap(a, b);
                        link.tainted = true;
                    }
                }
            }
            Op::Truncate { to, idx, keep } => {
                let link = &mut self.links[1 - to.idx()];
                if !link.frames.is_empty() {
                    let i = usize::from(idx) % link.frames.len();
                    let f = &mut link.frames[i];
                    let keep = usize::from(keep) % f.len().max(1);
                    if keep < f.len() {
                        f.truncate(keep);
                        link.tainted = true;
                    }
                }
            }
            Op::Flip { to, idx, pos, xor } => {
                let link = &mut self.links[1 - to.idx()];
                if !link.frames.is_empty() && xor != 0 {
                    let i = usize::from(idx) % link.frames.len();
                    let f = &mut link.frames[i];
                    if !f.is_empty() {
                        // Mostly the header, where the interesting fields are.
                        let p = usize::from(pos);
                        let p = if p % 2 == 0 {
                            (p / 2) % HEADER_LEN.min(f.len())
                        } else {
                            (p / 2) % f.len()
                        };
                        f[p] ^= xor;
                        link.tainted = true;
                    }
                }
            }
            Op::Inject { to, ref bytes } => {
                if !bytes.is_empty() {
                    let t = to.idx();
                    self.links[1 - t].tainted = true;
                    let p = &mut self.peers[t];
                    p.transport.extend(bytes.iter().copied());
                    p.put += bytes.len() as u64;
                    self.read_transport(t, 0, false);
                }
            }
            Op::Advance { ms, fire } => {
                self.now += Duration::from_millis(u64::from(ms));
                if fire {
                    self.fire_due();
                }
            }
            Op::Timeout { side } => {
                let now = self.now;
                let r = self.peers[side.idx()].s.handle_timeout(now);
                self.after_call(side.idx(), r);
            }
            Op::JumpToDeadline => {
                let next = [&self.peers[0], &self.peers[1]]
                    .iter()
                    .filter_map(|p| p.s.poll_timeout())
                    .min();
                if let Some(t) = next {
                    // A deadline already past stays in the past: time never goes back.
                    self.now = self.now.max(t);
                    self.fire_due();
                }
            }
            Op::Recv { side, max, batch } => self.recv(side.idx(), usize::from(max), batch),
            Op::Ping { side, token } => {
                let p = &mut self.peers[side.idx()];
                let state = p.s.state();
                let r = p.s.ping(token);
                match state {
                    State::Established => assert_eq!(r, Ok(())),
                    State::Handshaking => assert_eq!(r, Err(Error::NotConnected)),
                    State::Closing | State::Closed => assert_eq!(r, Err(Error::Closed)),
                }
            }
            Op::Close { side, code } => {
                let now = self.now;
                let p = &mut self.peers[side.idx()];
                let before = p.s.state();
                p.s.close(code, "fuzz", now);
                let expect = match before {
                    State::Established => State::Closing,
                    State::Handshaking => State::Closed,
                    s => s,
                };
                assert_eq!(p.s.state(), expect, "close from {before:?}");
            }
            Op::TransportLost { side } => {
                let now = self.now;
                let p = &mut self.peers[side.idx()];
                p.s.transport_lost(now);
                assert_eq!(p.s.state(), State::Closed);
                // The transport is gone: whatever was in it is too.
                p.transport.clear();
                p.inbuf.clear();
                p.ends.clear();
                p.read = p.put;
                self.links[1 - side.idx()].frames.clear();
            }
            Op::Pause { side } => {
                let now = self.now;
                let p = &mut self.peers[side.idx()];
                p.s.pause_receive(now);
                assert!(p.s.receive_paused());
            }
            Op::Resume { side } => {
                let now = self.now;
                let p = &mut self.peers[side.idx()];
                p.s.resume_receive(now);
                assert!(!p.s.receive_paused());
            }
            Op::AgeInput { side, ahead, exact } => {
                let now = self.now;
                let p = &mut self.peers[side.idx()];
                let ahead = if exact {
                    p.transport.len() + p.inbuf.len()
                } else {
                    usize::from(ahead)
                };
                p.s.age_input(ahead, now);
            }
            Op::Welcome { resumed } => {
                let now = self.now;
                let p = &mut self.peers[1];
                let state = p.s.state();
                let pending = p.s.pending_hello().is_some();
                let can_resume = p.s.resume_requested().is_some();
                let r = p.s.welcome(resumed, now);
                if state != State::Handshaking {
                    assert_eq!(r, Err(Error::Closed));
                } else if !pending || (resumed && !can_resume) {
                    assert!(matches!(r, Err(Error::BadParameter(_))), "{r:?}");
                    assert_eq!(p.s.state(), State::Handshaking);
                } else {
                    assert_eq!(r, Ok(()));
                    assert_eq!(p.s.state(), State::Established);
                }
            }
            Op::Refuse { code } => {
                let p = &mut self.peers[1];
                let state = p.s.state();
                p.s.refuse(code, "fuzz says no");
                if state == State::Handshaking {
                    assert_eq!(p.s.state(), State::Closed);
                } else {
                    assert_eq!(
                        p.s.state(),
                        state,
                        "refuse changes nothing once established"
                    );
                }
            }
            Op::TakeCounts { side } => {
                let p = &mut self.peers[side.idx()];
                let qos = p.cfg.qos.clone();
                let own_caps = p.cfg.capabilities;
                p.s.take_counts(&mut |ch, c| {
                    let cfg = qos.channel(ch);
                    if c.dropped > 0 {
                        assert!(
                            matches!(
                                cfg.backpressure,
                                Backpressure::DropNew | Backpressure::DropOld
                            ),
                            "channel {ch} dropped {} under {:?}",
                            c.dropped,
                            cfg.backpressure
                        );
                    }
                    if c.rate_limited > 0 {
                        assert!(
                            cfg.backpressure != Backpressure::Block
                                && (cfg.msgs_rate.is_some() || cfg.bytes_rate.is_some()),
                            "channel {ch} rate-limited without a door limit"
                        );
                    }
                    if c.retransmits > 0 {
                        assert!(own_caps & caps::RELIABLE != 0);
                    }
                });
            }
        }
    }

    /// The application on side `i` offers a message.
    fn send(
        &mut self,
        i: usize,
        chan: u8,
        len: usize,
        ttl: Option<Duration>,
        reliable: Option<bool>,
    ) {
        self.send_way(i, chan, len, ttl, reliable, false);
    }

    /// [`Harness::send`], by `Session::send_direct` if `direct` (a frame it returns goes to
    /// the link at once, as the driver writes it before anything it polls later).
    fn send_way(
        &mut self,
        i: usize,
        chan: u8,
        len: usize,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        direct: bool,
    ) {
        let now = self.now;
        let (ci, len) = pick(chan, len);
        let p = &mut self.peers[i];
        let seq = p.sent.len() as u32 + 1;
        let msg = payload(i, ci, seq, len);
        let state = p.s.state();
        let cfg = p.chan_cfg(ci).clone();
        let rel = reliable.unwrap_or(cfg.reliable);
        let mut framed = None;
        let r = if direct {
            match p.s.send_direct(CHANNELS[ci], msg, ttl, reliable, now) {
                Ok(Direct::Frame(t)) => {
                    assert_eq!(state, State::Established, "framed in {state:?}");
                    framed = Some(t);
                    Ok(Admission::Queued)
                }
                Ok(Direct::Offered(a)) => Ok(a),
                Err(e) => Err(e),
            }
        } else {
            p.s.send_message(CHANNELS[ci], msg, ttl, reliable, now)
        };
        if let Some(mut t) = framed {
            t.restamp(now);
            self.write_frame(i, &t.header, &t.payload);
        }
        let p = &mut self.peers[i];
        let mut queued = false;
        match (&r, state) {
            (Ok(a), State::Established) => match a {
                Admission::Queued => queued = true,
                Admission::Wait(b) => {
                    assert_eq!(cfg.backpressure, Backpressure::Block, "Wait under {cfg:?}");
                    assert_eq!(b.len(), len);
                }
                Admission::Dropped(DropReason::QueueFull) => {
                    assert_eq!(cfg.backpressure, Backpressure::DropNew)
                }
                Admission::Dropped(DropReason::RateLimit) => assert!(matches!(
                    cfg.backpressure,
                    Backpressure::DropNew | Backpressure::DropOld
                )),
                Admission::Refused(b, _) => {
                    assert_eq!(cfg.backpressure, Backpressure::FailFast);
                    assert_eq!(b.len(), len);
                }
            },
            (Err(Error::NotAgreed(_)), State::Established) => {
                assert!(rel, "NotAgreed for an unreliable message");
            }
            (Err(Error::MessageTooLarge { size, max }), State::Established) => {
                assert_eq!(*size as usize, len);
                assert!(len > *max as usize);
                assert!(*max as usize <= p.cfg.max_message_size as usize);
            }
            (Err(Error::NotConnected), State::Handshaking) => {}
            (Err(Error::Closed), State::Closing | State::Closed) => {}
            (r, state) => panic!("send in {state:?} returned {r:?}"),
        }
        let must_arrive = must_arrive(queued, len, ttl, &cfg);
        p.sent.push(SentRec {
            ci,
            len,
            queued,
            must_arrive,
            arrived: 0,
        });
        self.after_call(i, Ok(()));
    }

    /// Side `i`'s driver writes a frame it has (framed by the session or by itself) to its
    /// link, after the frames before it.
    fn write_frame(&mut self, i: usize, header: &[u8; HEADER_LEN], payload: &Bytes) {
        self.check_transmit(i, header, payload);
        let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
        f.extend_from_slice(header);
        f.extend_from_slice(payload);
        self.links[i].frames.push_back(f);
    }

    /// `n` messages of `len` bytes (modulo [`MAX_LEN`] + 1) sent as the driver's
    /// `send_slices` sends them (see [`Op::Run`]).
    #[allow(clippy::too_many_arguments)]
    fn run_direct(
        &mut self,
        i: usize,
        chan: u8,
        n: usize,
        len: usize,
        ttl: Option<Duration>,
        reliable: Option<bool>,
        copy: bool,
    ) {
        let now = self.now;
        let (ci, len) = pick(chan, len);
        let channel = CHANNELS[ci];
        let mut run = self.peers[i].s.direct_run(channel, ttl, reliable, now);
        for _ in 0..n {
            let Some(r) = run.as_mut() else {
                self.send_way(i, chan, len, ttl, reliable, true);
                continue;
            };
            let p = &mut self.peers[i];
            assert_eq!(
                p.s.state(),
                State::Established,
                "a run while not established"
            );
            assert_eq!(r.channel(), channel);
            let seq = p.sent.len() as u32 + 1;
            let msg = payload(i, ci, seq, len);
            let framed = if r.reliable() {
                p.s.number_next(r, len).map(|(number, ask)| {
                    let mut h = [0; HEADER_LEN];
                    r.write_header(len, number, &mut h);
                    if ask {
                        duct_proto::DirectRun::ask_for_ack(&mut h);
                    }
                    (h, Some(number))
                })
            } else {
                r.header(len).map(|h| (h, None))
            };
            let Some((h, number)) = framed else {
                // Not for the run (too large, or a window full): the way `send` goes, and
                // the run ends (the session changed).
                run = None;
                self.send_way(i, chan, len, ttl, reliable, true);
                continue;
            };
            self.write_frame(i, &h, &msg);
            let p = &mut self.peers[i];
            if let Some(number) = number {
                if copy {
                    p.s.record_direct_copy(number, channel, &msg, now);
                } else {
                    p.s.record_direct(number, channel, msg, now);
                }
            }
            let cfg = p.chan_cfg(ci);
            let must_arrive = len >= TRACKED_LEN
                && ttl.is_none()
                && cfg.ttl.is_none()
                && cfg.backpressure != Backpressure::DropOld;
            p.sent.push(SentRec {
                ci,
                len,
                queued: true,
                must_arrive,
                arrived: 0,
            });
            self.after_call(i, Ok(()));
        }
    }

    /// `n` messages of `len` bytes (modulo [`MAX_LEN`] + 1) on `chan` from side `i`, sent as
    /// the driver's `send_slices` sends them when the first is queued (see [`Op::Burst`]).
    fn burst_queued(&mut self, i: usize, chan: u8, n: usize, len: usize) {
        let now = self.now;
        let (ci, plen) = pick(chan, len);
        self.send(i, chan, len, None, None);
        let mut left = n - 1;
        if self.peers[i].sent.last().is_some_and(|r| r.queued) {
            let p = &mut self.peers[i];
            let cfg = p.chan_cfg(ci).clone();
            let state = p.s.state();
            if let Some(mut run) = p.s.queue_run(CHANNELS[ci], None, None, now) {
                assert_eq!(state, State::Established, "a queue run in {state:?}");
                assert_eq!(cfg.backpressure, Backpressure::Block, "a run under {cfg:?}");
                assert!(cfg.ttl.is_none(), "a run on a channel with a TTL");
                while left > 0 && run.fits(plen) {
                    let seq = p.sent.len() as u32 + 1;
                    run.push(payload(i, ci, seq, plen));
                    p.sent.push(SentRec {
                        ci,
                        len: plen,
                        queued: true,
                        must_arrive: must_arrive(true, plen, None, &cfg),
                        arrived: 0,
                    });
                    left -= 1;
                }
            }
            self.after_call(i, Ok(()));
        }
        for _ in 0..left {
            self.send(i, chan, len, None, None);
        }
    }

    /// The driver of side `i` writes up to `max` frames (0: all) to its link.
    fn pump(&mut self, i: usize, max: usize) {
        self.pump_way(i, max, false);
    }

    /// [`Harness::pump`]; with `plain`, as the driver's write queue takes frames: plain runs
    /// first (`Session::poll_plain_run`), then one frame from `poll_transmit_at`, in turn.
    fn pump_way(&mut self, i: usize, max: usize, plain: bool) {
        let now = self.now;
        let max = if max == 0 { usize::MAX } else { max };
        let mut n = 0;
        while n < max {
            if plain {
                let mut run = Vec::new();
                let room = max - n;
                let taken = self.peers[i].s.poll_plain_run(now, |h, p| {
                    if run.len() == room {
                        return false;
                    }
                    run.push((*h, Bytes::copy_from_slice(p)));
                    true
                });
                assert_eq!(taken, run.len(), "a plain run counts what it gave");
                for (h, p) in run {
                    let head = Header::decode(&h).expect("a plain run's header decodes");
                    assert!(
                        head.kind == FrameKind::Data && head.flags == 0,
                        "a plain run gave {head:?}"
                    );
                    self.write_frame(i, &h, &p);
                    n += 1;
                }
                if taken > 0 {
                    continue;
                }
            }
            let Some(mut t) = self.peers[i].s.poll_transmit_at(now) else {
                break;
            };
            t.restamp(now);
            self.write_frame(i, &t.header, &t.payload);
            n += 1;
        }
        self.after_call(i, Ok(()));
    }

    /// Checks one frame side `i` wrote.
    fn check_transmit(&mut self, i: usize, header: &[u8; HEADER_LEN], payload: &Bytes) {
        let clean = self.clean();
        let peer_cap = self.peers[1 - i].frame_cap();
        let p = &mut self.peers[i];
        assert!(!p.final_frame_sent, "a frame written after CLOSE or REJECT");
        let h = Header::decode(header).expect("a written header decodes");
        assert_eq!(h.payload_len as usize, payload.len());
        match h.kind {
            FrameKind::Close => {
                let c = Close::decode(payload).expect("a written CLOSE decodes");
                assert!(c.reason.len() <= MAX_REASON_LEN);
                p.final_frame_sent = true;
            }
            FrameKind::Reject => {
                assert_eq!(p.role, Role::Listener);
                Reject::decode(payload).expect("a written REJECT decodes");
                p.final_frame_sent = true;
            }
            FrameKind::Welcome => {
                assert_eq!(p.role, Role::Listener);
                let w = Welcome::decode(payload).expect("a written WELCOME decodes");
                assert_ne!(w.session_id, 0);
            }
            FrameKind::Hello => {
                assert_eq!(p.role, Role::Dialer);
                Hello::decode(payload).expect("a written HELLO decodes");
            }
            FrameKind::Ping | FrameKind::Pong => {
                control::decode_ping(payload).expect("a written PING/PONG decodes");
            }
            FrameKind::Ack => {
                assert!(h.has(flags::ACK_PRESENT));
                control::decode_sack(payload).expect("a written ACK decodes");
            }
            FrameKind::Data => {
                let neg =
                    p.s.negotiated()
                        .expect("DATA only from an established session");
                assert!(
                    payload.len() <= neg.send_frame_max as usize,
                    "DATA of {} bytes over the peer's frame limit {}",
                    payload.len(),
                    neg.send_frame_max
                );
                if clean {
                    assert!(payload.len() <= peer_cap);
                }
                if h.has(flags::TTL_PRESENT) {
                    assert!(neg.capabilities & caps::TTL != 0, "TTL without TTL agreed");
                }
                if h.has(flags::RELIABLE) {
                    assert!(neg.capabilities & caps::RELIABLE != 0);
                    assert_ne!(h.seq, 0);
                }
                if h.has(flags::MORE_FRAGMENTS) && !h.has(flags::CONTINUATION) {
                    assert!(h.aux as usize > payload.len(), "{h:?}");
                    assert!(h.aux <= neg.send_message_max);
                }
                if !h.has(flags::MORE_FRAGMENTS) && !h.has(flags::CONTINUATION) {
                    assert!(payload.len() <= neg.send_message_max as usize);
                }
            }
        }
    }

    /// Up to `frames` frames (0: all) of the link into side `t` go into its transport, which
    /// is then read.
    fn deliver(&mut self, t: usize, frames: usize, chunk: usize, backpressure: bool) {
        let link = &mut self.links[1 - t];
        let n = if frames == 0 {
            link.frames.len()
        } else {
            frames.min(link.frames.len())
        };
        let clean = !link.tainted;
        let p = &mut self.peers[t];
        for f in link.frames.drain(..n) {
            p.transport.extend(f.iter().copied());
            p.put += f.len() as u64;
            if clean {
                p.ends.push_back(p.put);
            }
        }
        self.read_transport(t, chunk, backpressure);
    }

    /// The driver of side `t` reads its transport: `chunk` bytes at a time (0: a frame at a
    /// time where frames are known, else everything); with `backpressure` it stops while the
    /// session says its receive queue is full.
    fn read_transport(&mut self, t: usize, chunk: usize, backpressure: bool) {
        let now = self.now;
        let incoming_clean = !self.links[1 - t].tainted;
        let rx_bound = self.rx_bound(t);
        let frame_cap = self.peers[t].frame_cap();
        let mut calls = 0;
        loop {
            let p = &mut self.peers[t];
            if p.transport.is_empty() {
                break;
            }
            calls += 1;
            if calls > 100_000 {
                break;
            }
            if p.s.recv_full() {
                if backpressure {
                    break;
                }
                p.overfed = true;
            }
            if !incoming_clean {
                p.overfed = true;
            }
            let n = if chunk > 0 {
                chunk
            } else if let Some(&end) = p.ends.front() {
                (end - p.read) as usize
            } else {
                p.transport.len()
            };
            let mut n = n.clamp(1, p.transport.len());
            // A buffer lent for the rest of a fragment: the read goes into it, and what follows
            // the fragment (up to a header) into the read buffer, as the driver's vectored
            // read does.
            let mut lent = if p.in_place { p.s.lend_direct() } else { None };
            if let Some(d) = lent.as_mut() {
                let room = d.room();
                assert!(room > 0, "a buffer lent with no room");
                assert!(
                    d.buf().capacity() - d.buf().len() >= room,
                    "a buffer lent with less spare capacity than its room"
                );
                let k = n.min(room);
                d.buf().extend(p.transport.drain(..k));
                p.read += k as u64;
                n = if k == room {
                    (n - k).min(HEADER_LEN)
                } else {
                    0
                };
            }
            let bytes: Vec<u8> = p.transport.drain(..n).collect();
            p.read += n as u64;
            p.inbuf.extend_from_slice(&bytes);
            if let Some(d) = lent {
                // Given back before anything else reaches the session, as the driver does.
                let r = p.s.return_direct(d, now);
                if r.is_err() {
                    self.after_call(t, r);
                    break;
                }
            }
            let p = &mut self.peers[t];
            let mut frames_in = 0;
            while p.ends.front().is_some_and(|&e| e <= p.read) {
                p.ends.pop_front();
                frames_in += 1;
            }
            // An application may be waiting for up to `take` messages (0: none is): those
            // the session hands it at once are checked like messages it takes.
            let take = (calls + chunk) % 4;
            let mut handed = Vec::new();
            let r =
                p.s.handle_input_to(&mut p.inbuf, now, take, &mut |m: Received<'_>| {
                    handed.push(m.into_delivered())
                })
                .map(|n| {
                    assert_eq!(n, handed.len());
                    assert!(n <= take, "{n} handed over to a caller waiting for {take}");
                });
            let failed = r.is_err();
            self.after_call(t, r);
            for d in handed {
                self.check_delivered(t, d.channel, &d.payload);
            }
            let p = &mut self.peers[t];
            if !failed && p.s.state() != State::Closed {
                // A whole frame is never left unread.
                assert!(p.inbuf.len() < p.s.input_needed(&p.inbuf));
            }
            if !p.overfed {
                let (msgs, bytes) = rx_bound;
                assert!(
                    p.s.message_len() <= msgs + frames_in,
                    "receive queue of {} messages over the marks ({msgs}) plus the {frames_in} \
                     frames of the last read",
                    p.s.message_len()
                );
                assert!(
                    p.s.message_bytes() + p.s.reassembly_bytes() <= bytes + frames_in * frame_cap,
                    "receive queue of {} bytes (+{} in reassembly) over the marks ({bytes})",
                    p.s.message_bytes(),
                    p.s.reassembly_bytes()
                );
            }
        }
    }

    /// What side `t` may hold for the application while its driver honours `recv_full`:
    /// just under every channel's marks.
    fn rx_bound(&self, t: usize) -> (usize, usize) {
        let p = &self.peers[t];
        (0..CHANNELS.len())
            .map(|ci| {
                let c = p.chan_cfg(ci);
                (c.rcv_hwm_msgs.max(1) - 1, c.rcv_hwm_bytes.max(1) - 1)
            })
            .fold((0, 0), |(a, b), (m, n)| (a + m, b.saturating_add(n)))
    }

    /// Up to `frames` frames (0: all) of the link into side `t`, whole, through
    /// `handle_frame`.
    fn deliver_frames(&mut self, t: usize, frames: usize) {
        let now = self.now;
        let n = {
            let link = &self.links[1 - t];
            if frames == 0 {
                link.frames.len()
            } else {
                frames.min(link.frames.len())
            }
        };
        if n == 0 {
            return;
        }
        {
            // Ahead of bytes still in the stream: out of order.
            let p = &self.peers[t];
            if !p.transport.is_empty() || !p.inbuf.is_empty() {
                self.links[1 - t].tainted = true;
            }
        }
        let fs: Vec<Vec<u8>> = self.links[1 - t].frames.drain(..n).collect();
        for (k, f) in fs.into_iter().enumerate() {
            let Some((header, payload)) = f.split_first_chunk::<HEADER_LEN>() else {
                // Shorter than a header: a message transport cannot carry it.
                self.links[1 - t].tainted = true;
                continue;
            };
            let payload = Bytes::copy_from_slice(payload);
            // Decoded here (`handle_frame`), by the session (`handle_raw_frame`), or as the
            // shared-memory driver hands over plain data (`handle_raw_frame_untimed_to`: no
            // clock reading, and the message straight to a caller waiting for up to `take`
            // while nothing is queued).
            let s = &mut self.peers[t].s;
            let mut handed = Vec::new();
            let r = match Header::decode(header) {
                Ok(h) if k % 3 == 0 => s.handle_frame(h, payload, now),
                _ if k % 3 == 1 && s.frame_is_timeless(header) => {
                    let take = (k / 3) % 3;
                    let mut left = take;
                    let r = s.handle_raw_frame_untimed_to(
                        header,
                        payload,
                        &mut left,
                        &mut |m: Received<'_>| handed.push(m.into_delivered()),
                    );
                    assert!(left <= take, "a caller waiting for {take} got more");
                    assert_eq!(handed.len(), take - left, "handed over as counted");
                    r
                }
                _ => s.handle_raw_frame(header, payload, now),
            };
            self.after_call(t, r);
            for d in handed {
                self.check_delivered(t, d.channel, &d.payload);
            }
        }
    }

    /// Handles every deadline due at `now` on both sides. A deadline that is still due after
    /// it was handled and everything ready was written would make a driver that sleeps until
    /// [`Session::poll_timeout`] spin.
    fn fire_due(&mut self) {
        let now = self.now;
        for i in 0..2 {
            if self.peers[i].s.poll_timeout().is_some_and(|t| t <= now) {
                let r = self.peers[i].s.handle_timeout(now);
                self.after_call(i, r);
                if self.peers[i].s.poll_timeout().is_some_and(|t| t <= now) {
                    self.pump(i, 0);
                    let p = &self.peers[i];
                    assert!(
                        p.s.poll_timeout().is_none_or(|t| t > now),
                        "{:?} in {:?}: the deadline stays due after handle_timeout (outbox {}, \
                         paused {})",
                        p.role,
                        p.s.state(),
                        p.s.outbox().len(),
                        p.s.receive_paused()
                    );
                }
            }
        }
    }

    /// The application of side `i` takes up to `max` messages (0: all).
    fn recv(&mut self, i: usize, max: usize, batch: bool) {
        let now = self.now;
        let max = if max == 0 { usize::MAX } else { max };
        let mut got = Vec::new();
        let p = &mut self.peers[i];
        let before = p.s.message_len();
        if batch {
            let n = p.s.poll_messages_at(now, max, &mut |d| got.push(d));
            assert_eq!(n, got.len());
        } else {
            while got.len() < max {
                match p.s.poll_message_at(now) {
                    Some(d) => got.push(d),
                    None => break,
                }
            }
        }
        assert!(got.len() <= before);
        if got.len() < max {
            assert_eq!(p.s.message_len(), 0, "poll stopped with messages left");
            assert_eq!(p.s.message_bytes(), 0);
            p.overfed = false;
            if p.s.reassembly_bytes() == 0 && p.s.state() != State::Closed {
                assert!(!p.s.recv_full(), "full with nothing received");
                assert!(p.s.recv_low());
            }
        }
        for d in got {
            self.check_delivered(i, d.channel, &d.payload);
        }
    }

    /// Checks a message side `i` delivered to its application.
    fn check_delivered(&mut self, i: usize, channel: u16, msg: &[u8]) {
        let p = &self.peers[i];
        assert!(msg.len() <= p.cfg.max_message_size as usize);
        if self.links[1 - i].tainted {
            return;
        }
        // A clean link: the message is one the peer sent.
        let ci = CHANNELS
            .iter()
            .position(|&c| c == channel)
            .unwrap_or_else(|| panic!("a message on channel {channel}, never sent on"));
        if msg.len() < TRACKED_LEN {
            assert!(msg.iter().all(|&b| b == 0xEE), "a short message changed");
            return;
        }
        let dir = 1 - i;
        assert_eq!(
            msg[0],
            0xD0 | (ci as u8) << 1 | dir as u8,
            "a message on the wrong channel or from the wrong side"
        );
        assert_eq!(msg[1], msg.len() as u8, "a message of the wrong length");
        let seq = u32::from_be_bytes(msg[2..6].try_into().expect("4 bytes"));
        for (k, &b) in msg.iter().enumerate().skip(TRACKED_LEN) {
            assert_eq!(b, filler(seq, k), "message {seq} changed at byte {k}");
        }
        let last = self.peers[i].last_seq[ci];
        let rec = self.peers[1 - i]
            .sent
            .get_mut(seq as usize - 1)
            .expect("a message never sent");
        assert!(rec.queued, "message {seq} arrived but was not admitted");
        assert_eq!((rec.ci, rec.len), (ci, msg.len()));
        rec.arrived += 1;
        assert_eq!(rec.arrived, 1, "message {seq} arrived twice");
        assert!(
            seq > last,
            "message {seq} on channel {channel} arrived after message {last}"
        );
        self.peers[i].last_seq[ci] = seq;
    }

    /// After a call on side `i` that returned `r`.
    fn after_call(&mut self, i: usize, r: Result<(), Error>) {
        let clean = self.clean();
        let p = &mut self.peers[i];
        if let Err(e) = r {
            assert_eq!(
                p.s.state(),
                State::Closed,
                "failed with {e:?} but not closed"
            );
            assert!(
                !clean || environmental(&e),
                "{:?} failed over clean links: {e:?}",
                p.role
            );
            if p.failed.is_none() {
                p.failed = Some(e);
            }
        }
        self.check(i);
    }

    /// The invariants of side `i` that hold after any call.
    fn check(&mut self, i: usize) {
        let now = self.now;
        let clean = self.clean();
        let p = &mut self.peers[i];
        let chan_cfgs: Vec<ChannelConfig> = CHANNELS
            .iter()
            .map(|&c| p.cfg.qos.channel(c).clone())
            .collect();
        let s = &mut p.s;
        let state = s.state();
        let r = rank(state);
        assert!(r >= p.rank, "state went back to {state:?}");
        p.rank = r;
        if state == State::Established || state == State::Closing {
            assert!(s.negotiated().is_some());
            assert_ne!(s.session_id(), 0);
        }
        assert!(s.reassembly_bytes() <= p.cfg.reassembly_limit);
        assert!(
            s.control_len() <= MAX_CONTROL,
            "{} control frames queued",
            s.control_len()
        );
        assert!(s.control_bytes() <= MAX_CONTROL * HEADER_LEN + 2 * 1024);
        if state == State::Closed {
            assert_eq!(s.reassembly_bytes(), 0);
            assert_eq!(s.poll_timeout(), None);
            match p.closed_with {
                None => p.closed_with = Some(s.message_len()),
                Some(n) => {
                    assert!(s.message_len() <= n, "a closed session delivered more");
                    p.closed_with = Some(s.message_len());
                }
            }
            // Closed stays closed, whatever comes.
            assert_eq!(s.handle_timeout(now), Ok(()));
            let mut junk = BytesMut::from(&b"\x01\x00\x00\x00\x00\x00\x00\x00"[..]);
            assert_eq!(s.handle_input(&mut junk, now), Ok(()));
            assert_eq!(
                s.send(CHANNELS[0], Bytes::from_static(b"late"), now),
                Err(Error::Closed)
            );
            assert_eq!(s.state(), State::Closed);
        } else if let Some(t) = s.poll_timeout() {
            // A deadline is never absurdly far: every timer here is at most minutes long,
            // but a received message's time to live, which garbage on a link may set to
            // anything `ttl_ms` holds (about 50 days).
            let far = if clean {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(u64::from(u32::MAX)) + Duration::from_secs(3600)
            };
            assert!(t <= now + far, "deadline {:?} ahead", t - now);
        }
        // The send queues, within their marks.
        let ob = s.outbox();
        let (inflight_msgs, inflight_bytes) = ob.inflight();
        let qos = ob.config();
        assert!(
            inflight_msgs <= qos.inflight_msgs.max(1),
            "{inflight_msgs} in flight"
        );
        assert!(
            inflight_bytes <= qos.inflight_bytes.max(1).max(MAX_MESSAGE),
            "{inflight_bytes} bytes in flight"
        );
        assert!(ob.unacked() <= inflight_msgs);
        let mut total = (0, 0);
        for (c, &ch) in chan_cfgs.iter().zip(&CHANNELS) {
            let (m, b) = ob.queued(ch);
            total = (total.0 + m, total.1 + b);
            // Over the mark: the message under way, and numbered reliable messages queued
            // again (bounded by the window); one more message under DropOld when nothing is
            // droppable.
            let extra = 2 + inflight_msgs;
            assert!(
                m <= c.snd_hwm_msgs.max(1) + extra,
                "channel {ch}: {m} messages queued, mark {}",
                c.snd_hwm_msgs
            );
            assert!(
                b <= c.snd_hwm_bytes.max(1) + (extra + 1) * MAX_MESSAGE,
                "channel {ch}: {b} bytes queued, mark {}",
                c.snd_hwm_bytes
            );
        }
        assert_eq!(
            total,
            (ob.len(), ob.bytes()),
            "queues outside the harness's channels"
        );
        // Events.
        while let Some(e) = s.poll_event() {
            match e {
                Event::Connected { session_id } => {
                    assert!(!p.connected, "connected twice");
                    assert_ne!(session_id, 0);
                    assert_eq!(session_id, s.session_id());
                    p.connected = true;
                }
                Event::PeerClosed(c) => {
                    assert!(c.reason.len() <= MAX_REASON_LEN);
                    assert_eq!(s.state(), State::Closed);
                }
                Event::Pong { .. } => {}
            }
        }
        if clean && self.peers.iter().all(|p| p.s.negotiated().is_some()) {
            let (d, l) = (&self.peers[0], &self.peers[1]);
            let (dn, ln) = (d.s.negotiated().unwrap(), l.s.negotiated().unwrap());
            assert_eq!(d.s.session_id(), l.s.session_id());
            assert_eq!(dn.capabilities, ln.capabilities);
            assert_eq!(dn.send_frame_max as usize, l.frame_cap());
            assert_eq!(ln.send_frame_max as usize, d.frame_cap());
            assert_eq!(dn.send_message_max, l.cfg.max_message_size);
            assert_eq!(ln.send_message_max, d.cfg.max_message_size);
            assert_eq!(dn.heartbeat_interval, ln.heartbeat_interval);
        }
    }

    fn check_all(&mut self) {
        self.check(0);
        self.check(1);
    }

    /// The end of an input: if the pair can still talk over clean links, it settles and
    /// every message that had to arrive must have; then both transports break.
    pub fn finish(&mut self) {
        if self.clean() && self.peers.iter().all(|p| p.s.state() == State::Established) {
            self.settle();
        }
        let now = self.now;
        for i in 0..2 {
            let p = &mut self.peers[i];
            p.s.transport_lost(now);
            assert_eq!(p.s.state(), State::Closed);
            assert_eq!(p.s.reassembly_bytes(), 0);
            assert_eq!(p.s.poll_timeout(), None);
            self.check(i);
        }
    }

    /// Drives both sides as a diligent driver would (writes everything, reads everything,
    /// takes every message, handles every deadline) until both outboxes are empty.
    fn settle(&mut self) {
        let now = self.now;
        for p in &mut self.peers {
            p.s.resume_receive(now);
        }
        // Deadlines the operations left overdue fire first: what they cause (a peer that
        // looked silent, acks that came too late) is the neglect of the driver before, not a
        // fault; from then on the driver is diligent.
        self.fire_due();
        if self.peers.iter().any(|p| p.s.state() != State::Established) {
            return;
        }
        let mut spins = 0;
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(
                rounds < SETTLE_ROUNDS,
                "the pair never settled (outboxes {:?} / {:?}, in flight {:?} / {:?})",
                (
                    self.peers[0].s.outbox().len(),
                    self.peers[0].s.outbox().bytes()
                ),
                (
                    self.peers[1].s.outbox().len(),
                    self.peers[1].s.outbox().bytes()
                ),
                self.peers[0].s.outbox().inflight(),
                self.peers[1].s.outbox().inflight(),
            );
            // Progress: bytes into a transport, or out of one (a read stopped by backpressure
            // earlier may have left some).
            let progress = |h: &Harness| h.peers.iter().map(|p| p.put + p.read).sum::<u64>();
            let before = progress(self);
            self.pump(0, 0);
            self.pump(1, 0);
            self.deliver(1, 0, 0, false);
            self.deliver(0, 0, 0, false);
            self.recv(0, 0, false);
            self.recv(1, 0, false);
            if let Some(e) = self.peers.iter().find_map(|p| p.failed.clone()) {
                // Only what a quiet or slow peer causes may end a clean pair.
                let tolerated = match e {
                    Error::PeerSilent { .. } => {
                        self.peers.iter().any(|p| p.cfg.heartbeat_misses <= 1)
                    }
                    Error::ReassemblyTimeout { .. } | Error::ReassemblyLimit { .. } => true,
                    _ => false,
                };
                assert!(tolerated, "a clean pair failed while settling: {e:?}");
                return;
            }
            if self.peers.iter().any(|p| p.s.state() != State::Established) {
                panic!("a clean pair closed while settling");
            }
            let moved = progress(self) != before;
            let idle = self.peers.iter().all(|p| {
                p.s.outbox().is_empty()
                    && p.s.outbox().inflight() == (0, 0)
                    && p.s.control_len() == 0
            }) && self.links.iter().all(|l| l.frames.is_empty());
            if idle {
                break;
            }
            if !moved {
                let next = self.peers.iter().filter_map(|p| p.s.poll_timeout()).min();
                let Some(t) = next else {
                    panic!("the pair has work left and no deadline");
                };
                if t <= self.now {
                    spins += 1;
                    assert!(
                        spins < 100,
                        "a deadline stays in the past after handling it"
                    );
                } else {
                    spins = 0;
                }
                self.now = self.now.max(t);
                self.fire_due();
            }
        }
        for p in &self.peers {
            for (k, rec) in p.sent.iter().enumerate() {
                if rec.must_arrive {
                    assert_eq!(
                        rec.arrived,
                        1,
                        "message {} from {:?} on channel {} never arrived",
                        k + 1,
                        p.role,
                        CHANNELS[rec.ci]
                    );
                }
            }
        }
    }
}
