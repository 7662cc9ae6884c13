//! The send side of QoS: per-channel queues, policies, TTL, rate limits and the scheduler.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Backpressure, ChannelConfig, ChannelMap, Counts, QosConfig, TokenBucket};
use crate::session::Transmit;
use crate::wire::header::fragment_marks;
use crate::wire::{flags, Header, HEADER_LEN};

/// What became of a message offered to [`Outbox::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued for sending (under [`Backpressure::DropOld`], older messages may have been
    /// dropped to make room; they are counted).
    Queued,
    /// Dropped at once and counted: [`Backpressure::DropNew`] at the high-water mark, or a
    /// drop policy over the channel's rate limit.
    Dropped(DropReason),
    /// [`Backpressure::Block`] at the high-water mark: the message (given back) was not
    /// queued; offer it again once there is room.
    Wait(Bytes),
    /// [`Backpressure::FailFast`]: the message (given back) was not queued, and the sender
    /// should fail at once.
    Refused(Bytes, DropReason),
}

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The channel's send queue is at its high-water mark.
    QueueFull,
    /// The channel's rate limit has no tokens left.
    RateLimit,
}

/// One accepted message not yet completely framed.
#[derive(Debug)]
struct Pending {
    payload: Bytes,
    /// Payload bytes already handed out in frames (non-zero: the message is under way and is
    /// no longer dropped by policy or TTL).
    offset: usize,
    deadline: Option<Instant>,
    /// Sent reliably (numbered, acknowledged, sent again until acknowledged).
    reliable: bool,
    /// Its number once its first frame went out (0: not yet): sent again after a break with
    /// the same number; never dropped by a policy or TTL.
    seq: u64,
}

impl Pending {
    /// Goes out whole, in one frame of at most `frame_max` bytes, and has no deadline: a
    /// frame made from the header's template and its length alone.
    fn whole_untimed(&self, frame_max: usize) -> bool {
        self.offset == 0 && self.deadline.is_none() && self.payload.len() <= frame_max
    }
}

/// Reliable messages sent and not yet acknowledged, numbered one after the other: one
/// message, or a run of messages of one channel and one length, sent at the same instant,
/// whose copies lie one after the other in the keep ring (a batch of a stream: one record
/// for all of it, rather than one per message, so that recording a message extends the
/// last record and an ack settles thousands of messages in a few steps).
#[derive(Debug)]
struct Sent {
    /// The number of its first message.
    seq: u64,
    /// How many messages (more than one only with [`Kept::Ring`]).
    n: u32,
    channel: u16,
    /// Where each message's payload is kept: for a run, the first's, the others following
    /// it at intervals of its length.
    payload: Kept,
    /// When its last frame was taken for sending.
    at: Instant,
    /// The peer has it (a selective ack): not sent again; it still counts in the window
    /// until the cumulative ack passes it (the peer holds it out of order till then).
    sacked: bool,
}

impl Sent {
    /// The number of its last message.
    #[inline]
    fn last(&self) -> u64 {
        self.seq + u64::from(self.n) - 1
    }

    /// Its messages' payload bytes.
    #[inline]
    fn bytes(&self) -> usize {
        self.payload.len() * self.n as usize
    }

    /// Message `seq` (after its first) on go into a record of their own, returned; this
    /// one keeps those before.
    fn split_off(&mut self, seq: u64) -> Sent {
        debug_assert!(seq > self.seq && seq <= self.last());
        let k = (seq - self.seq) as u32;
        let payload = match self.payload {
            Kept::Ring { at, len } => Kept::Ring {
                at: nth_copy(at, len, k),
                len,
            },
            Kept::Bytes(_) => unreachable!("a record by handle holds one message"),
        };
        let tail = Sent {
            seq,
            n: self.n - k,
            channel: self.channel,
            payload,
            at: self.at,
            sacked: self.sacked,
        };
        self.n = k;
        tail
    }

    /// Whether message `seq`, of `len` bytes on `channel`, sent at `now` and copied to
    /// `at` in the keep ring, continues this record's run.
    #[inline(always)]
    fn continued_by(&self, seq: u64, channel: u16, at: u64, len: usize, now: Instant) -> bool {
        match self.payload {
            // (Its copy right after the last one's, as long as each of those: the same
            // length.)
            Kept::Ring {
                at: first,
                len: each,
            } => {
                self.seq + u64::from(self.n) == seq
                    && nth_copy(first, each, self.n) == at
                    && each == len
                    && self.channel == channel
                    && !self.sacked
                    && self.n < u32::MAX
                    && self.at == now
            }
            Kept::Bytes(_) => false,
        }
    }
}

/// Where in the keep ring message `k` of a run whose first copy is at `first`, each `len`
/// bytes long, has its copy.
#[inline]
fn nth_copy(first: u64, len: usize, k: u32) -> u64 {
    first + u64::from(k) * len as u64
}

/// Fresh reliable messages a channel may number without a check of the windows or the ack
/// request per message ([`Outbox::quiet`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quiet {
    msgs: usize,
    bytes: usize,
}

/// Fresh reliable messages of one channel numbered, and their payloads copied into the keep
/// ring, one by one, by a driver's framing loop ([`Outbox::keep_run`]; the driver's handle
/// is [`crate::session::ReliableRun`]). Per message only the run's own budget is checked
/// and counted down, in locals: the messages the windows take without an ack request
/// (`quiet`), the room left in the ring before its end or its oldest kept copy. The outbox
/// learns of the run once, when it is dropped: the next number, both windows, `quiet`, the
/// ring's end, and one record per stretch of copies of one length (a run of numbers whose
/// copies lie one after the other: the record [`RelSend::record_kept_n`] makes).
///
/// The ring's buffer is the run's own meanwhile (taken out of the ring, given back on drop):
/// the copy per message is a `memcpy` into a slice the run holds, not through the outbox.
pub(crate) struct KeepRun<'a> {
    outbox: &'a mut Outbox,
    quiet: &'a mut Quiet,
    channel: u16,
    now: Instant,
    /// The number of the run's first message, of the next, and the first it may not take
    /// (the windows' limit, or the frame that asks for an ack).
    first_seq: u64,
    seq: u64,
    seq_end: u64,
    /// The keep ring's buffer; where the run's first copy went in it, where the next goes,
    /// and where the run's copies must end: at the ring's end or its oldest kept copy, or
    /// the windows' payload bytes (each message's bytes are its copy's).
    buf: Vec<u8>,
    first_off: usize,
    off: usize,
    end: usize,
    /// The ring's end when the run began (its position in the stream of kept bytes:
    /// `first_off` in `buf`).
    tail: u64,
    /// The stretch of copies not yet recorded (numbers `rec_seq..seq`): its place in `buf`
    /// and the length of each (`usize::MAX` before the first).
    rec_seq: u64,
    rec_off: usize,
    rec_len: usize,
}

impl KeepRun<'_> {
    /// Numbers the next message, `payload`, and keeps a copy of it: its number, or `None`
    /// (nothing done) when the run cannot take it: the windows would fill or its frame
    /// would ask for an ack, or the ring has no room for it before its end (or its oldest
    /// copy). Number such a one the usual way (`number_direct`, `record_direct_copy`), then
    /// start a new run.
    #[inline(always)]
    pub(crate) fn take(&mut self, payload: &[u8]) -> Option<u64> {
        let len = payload.len();
        if self.seq == self.seq_end || len > self.end - self.off {
            return None;
        }
        if len != self.rec_len {
            self.start_stretch(len);
        }
        self.buf[self.off..self.off + len].copy_from_slice(payload);
        self.off += len;
        let seq = self.seq;
        self.seq += 1;
        Some(seq)
    }

    /// Records the stretch of copies so far and starts one of `len`-byte copies with the
    /// next message. (Once per stretch: out of the per-message path.)
    #[inline(never)]
    fn start_stretch(&mut self, len: usize) {
        self.record_stretch();
        self.rec_off = self.off;
        self.rec_len = len;
    }

    /// Records the stretch of copies not yet recorded, if any, as sent at the run's time.
    fn record_stretch(&mut self) {
        // (At most `u32::MAX`: `seq_end` keeps the run that short.)
        let n = (self.seq - self.rec_seq) as u32;
        if n == 0 {
            return;
        }
        let at = self.tail + (self.rec_off - self.first_off) as u64;
        let kept = Kept::Ring {
            at,
            len: self.rec_len,
        };
        self.outbox
            .rel
            .record_kept_n(self.rec_seq, n, self.channel, kept, self.now);
        self.rec_seq = self.seq;
    }
}

impl Drop for KeepRun<'_> {
    /// Brings the outbox up to date with the run: its copies recorded, the ring's buffer back
    /// with its end past them, the messages counted in both windows and in `quiet`.
    fn drop(&mut self) {
        self.record_stretch();
        let n = (self.seq - self.first_seq) as usize;
        let bytes = self.off - self.first_off;
        let o = &mut *self.outbox;
        let rel = &mut o.rel;
        rel.ring.buf = std::mem::take(&mut self.buf);
        rel.ring.tail = self.tail + bytes as u64;
        rel.next_seq = self.seq;
        rel.inflight_msgs += n;
        rel.inflight_bytes += bytes;
        if let Some(ch) = o.chans.get_mut(self.channel) {
            ch.inflight_msgs += n;
            ch.inflight_bytes += bytes;
        }
        self.quiet.msgs -= n;
        self.quiet.bytes -= bytes;
    }
}

/// Where a sent reliable message's payload is kept until it is acknowledged.
#[derive(Debug)]
enum Kept {
    /// A handle on the message's own bytes.
    Bytes(Bytes),
    /// A copy in the keep ring ([`KeepRing`]): where it starts in the ring's stream of
    /// bytes, and its length.
    Ring { at: u64, len: usize },
}

impl Kept {
    /// The payload's length (of each message of a run).
    fn len(&self) -> usize {
        match self {
            Kept::Bytes(b) => b.len(),
            Kept::Ring { len, .. } => *len,
        }
    }
}

/// Copies of reliable payloads kept for retransmission ([`Outbox::record_direct_copy`]), in
/// the order they were recorded: a ring of bytes, freed from its oldest end as the peer
/// acknowledges, that grows (doubling) when what is kept outgrows it. What is kept is
/// bounded by the reliable window's bytes; the ring keeps the size it grew to. A copy costs
/// a `memcpy` and no handle on shared memory (no reference count to take, and none to drop
/// when the ack comes).
#[derive(Debug, Default)]
struct KeepRing {
    /// A power of two long, or empty.
    buf: Vec<u8>,
    /// The oldest byte still kept, and the next byte to write (offsets in the stream of
    /// everything ever kept: `buf` holds byte `i` at `i % buf.len()`).
    head: u64,
    tail: u64,
}

impl KeepRing {
    /// Keeps a copy of `bytes`; returns where it starts.
    #[inline]
    fn push(&mut self, bytes: &[u8]) -> u64 {
        let need = (self.tail - self.head) as usize + bytes.len();
        if need > self.buf.len() {
            self.grow(need);
        }
        let at = self.tail;
        self.write(at, bytes);
        self.tail += bytes.len() as u64;
        at
    }

    #[inline]
    fn write(&mut self, at: u64, bytes: &[u8]) {
        let cap = self.buf.len();
        if cap == 0 {
            return; // (nothing to write: `bytes` is empty)
        }
        let i = self.index(at);
        let first = (cap - i).min(bytes.len());
        self.buf[i..i + first].copy_from_slice(&bytes[..first]);
        if first < bytes.len() {
            // (Wrapped: rare. Not a `memcpy` call of nothing for every message.)
            self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        }
    }

    /// Where byte `at` of the stream is in `buf` (not empty): a mask, since the length is a
    /// power of two, rather than a 64-bit division for every message kept.
    #[inline]
    fn index(&self, at: u64) -> usize {
        debug_assert!(self.buf.len().is_power_of_two());
        (at & (self.buf.len() as u64 - 1)) as usize
    }

    /// Copies the kept bytes `at..at + out.len()` into `out`.
    fn read(&self, at: u64, out: &mut [u8]) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        let i = self.index(at);
        let first = (cap - i).min(out.len());
        let n = out.len();
        out[..first].copy_from_slice(&self.buf[i..i + first]);
        out[first..].copy_from_slice(&self.buf[..n - first]);
    }

    /// The kept bytes `at..at + len`, as a message of their own (a retransmission after a
    /// timeout or a break: rare).
    fn get(&self, at: u64, len: usize) -> Bytes {
        let mut out = vec![0u8; len];
        self.read(at, &mut out);
        Bytes::from(out)
    }

    /// Room for `need` kept bytes: a ring four times as large (or more), the kept bytes
    /// copied to their places in it. One allocation: a window's worth of 64 B copies (1 MiB)
    /// takes four growths from the first 4 KiB.
    #[cold]
    fn grow(&mut self, need: usize) {
        let cap = need
            .next_power_of_two()
            .max(self.buf.len().saturating_mul(4))
            .max(4096);
        let old = std::mem::replace(&mut self.buf, vec![0u8; cap]);
        if old.is_empty() {
            return; // (nothing was kept)
        }
        // The kept bytes are at most two runs of the old ring: its end, then its start.
        let len = (self.tail - self.head) as usize;
        let i = (self.head & (old.len() as u64 - 1)) as usize;
        let first = (old.len() - i).min(len);
        self.write(self.head, &old[i..i + first]);
        self.write(self.head + first as u64, &old[..len - first]);
    }

    /// Nothing before `at` is kept any more.
    fn free_to(&mut self, at: u64) {
        debug_assert!(at >= self.head && at <= self.tail);
        self.head = at;
    }
}

/// The sending side of reliable delivery (see [`crate::reliable`]).
#[derive(Debug)]
struct RelSend {
    /// The number the next reliable message gets.
    next_seq: u64,
    /// Every number up to this one was acknowledged.
    acked: u64,
    /// Sent and unacknowledged, by number: single messages and runs (see [`Sent`]).
    unacked: VecDeque<Sent>,
    /// Numbered and unacknowledged messages (sent, or queued again after a break) and their
    /// payload bytes: bounded by the window.
    inflight_msgs: usize,
    inflight_bytes: usize,
    /// Retransmission timeout, and when it fires.
    rto: std::time::Duration,
    rto_at: Option<Instant>,
    /// Timeouts in a row without progress.
    retries: u32,
    /// The copies that records of [`Kept::Ring`] name.
    ring: KeepRing,
    /// The peer acks on request (`ACK_REQUEST` agreed): a fresh message that fills half a
    /// window asks for an ack ([`ask`]).
    asks: bool,
    /// A request went out and no ack came since.
    asked: bool,
}

impl RelSend {
    /// A reliable message's last frame was taken for sending at `now`. A small payload
    /// ([`KEEP_COPY_MAX`]) numbered after every one recorded is copied into the keep ring and
    /// its handle let go at once: the handle would otherwise hold a whole shared buffer (a
    /// read chunk, a batch's spill buffer) until the ack, and drop a reference count on the
    /// thread that takes the ack.
    fn record(&mut self, seq: u64, channel: u16, payload: Bytes, now: Instant) {
        let newest = self.unacked.back().is_none_or(|s| s.last() < seq);
        let kept = if newest && payload.len() <= KEEP_COPY_MAX {
            Kept::Ring {
                at: self.ring.push(&payload),
                len: payload.len(),
            }
        } else {
            Kept::Bytes(payload)
        };
        self.record_kept(seq, channel, kept, now);
    }

    /// As [`RelSend::record`], with the payload kept as `payload` says: the message extends
    /// the last record's run when it continues it ([`Sent::continued_by`]). (Inlined: a new
    /// record is then put together in its slot, not in a local that is copied there.)
    #[inline(always)]
    fn record_kept(&mut self, seq: u64, channel: u16, payload: Kept, now: Instant) {
        self.record_kept_n(seq, 1, channel, payload, now);
    }

    /// As [`RelSend::record_kept`], for `n` messages numbered from `seq` on, each with a
    /// copy as long as the first's right after the one before (`n` > 1: in the keep ring).
    #[inline(always)]
    fn record_kept_n(&mut self, seq: u64, n: u32, channel: u16, payload: Kept, now: Instant) {
        debug_assert!(n == 1 || matches!(payload, Kept::Ring { .. }));
        self.rto_at.get_or_insert_with(|| now + self.rto);
        if let (Kept::Ring { at, len }, Some(last)) = (&payload, self.unacked.back_mut()) {
            if last.continued_by(seq, channel, *at, *len, now) && u32::MAX - last.n >= n {
                last.n += n;
                return;
            }
        }
        let sent = Sent {
            seq,
            n,
            channel,
            payload,
            at: now,
            sacked: false,
        };
        if self.unacked.len() == self.unacked.capacity() {
            // Four times as large, not twice: half as many moves of records on the way to a
            // window's worth (16384 by default), which a fast reader may first reach late.
            self.unacked.reserve(self.unacked.len().max(16) * 3);
        }
        // Usually the newest (messages complete in number order unless fragments interleave;
        // a record's numbers were all recorded, so `seq` falls between records, never in one).
        if self.unacked.back().is_none_or(|s| s.last() < seq) {
            self.unacked.push_back(sent);
        } else {
            let at = self.unacked.partition_point(|s| s.seq < seq);
            self.unacked.insert(at, sent);
        }
    }

    /// Messages sent and not yet acknowledged.
    fn unacked_msgs(&self) -> usize {
        self.unacked.iter().map(|s| s.n as usize).sum()
    }

    /// Message `seq` starts a record: the run holding it and messages before it is split
    /// there (a selective ack's edge).
    fn split_at(&mut self, seq: u64) {
        let i = self.unacked.partition_point(|s| s.last() < seq);
        if let Some(s) = self.unacked.get_mut(i) {
            if s.seq < seq {
                let tail = s.split_off(seq);
                self.unacked.insert(i + 1, tail);
            }
        }
    }

    /// Records were taken off the front (or all of them): the keep ring lets go of what the
    /// oldest remaining copy in it does not need. (Copies in the ring were recorded in
    /// number order, at its end: the first of them left is the oldest.)
    fn release_kept(&mut self) {
        let oldest = self.unacked.iter().find_map(|s| match s.payload {
            Kept::Ring { at, .. } => Some(at),
            Kept::Bytes(_) => None,
        });
        self.ring.free_to(oldest.unwrap_or(self.ring.tail));
    }

    /// The payload of message `i` of a record, as a message of its own.
    fn take_payload(&self, kept: &Kept, i: u32) -> Bytes {
        match kept {
            Kept::Bytes(b) => b.clone(),
            Kept::Ring { at, len } => self.ring.get(nth_copy(*at, *len, i), *len),
        }
    }

    /// `n` numbered messages of `len` bytes in all on `ch` were acknowledged.
    fn settle(&mut self, ch: Option<&mut Chan>, n: usize, len: usize) {
        self.inflight_msgs -= n;
        self.inflight_bytes -= len;
        if let Some(ch) = ch {
            ch.inflight_msgs -= n;
            ch.inflight_bytes -= len;
        }
    }
}

/// Largest reliable payload whose copy for retransmission goes into the keep ring rather
/// than a handle on its bytes (see [`RelSend::record`]).
const KEEP_COPY_MAX: usize = 512;

/// Shortest retransmission timeout.
pub const MIN_RTO: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest retransmission timeout.
pub const MAX_RTO: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
struct Chan {
    cfg: ChannelConfig,
    queue: VecDeque<Pending>,
    /// Payload bytes of the queued messages.
    bytes: usize,
    /// Deficit round robin credit, in wire bytes.
    deficit: usize,
    msgs_bucket: Option<TokenBucket>,
    bytes_bucket: Option<TokenBucket>,
    /// In its priority class's ring.
    active: bool,
    /// The scheduler never holds it back for tokens (no rate limit, or one applied at the
    /// door because the policy is not Block).
    unpaced: bool,
    counts: Counts,
    /// Queued messages that carry a deadline.
    with_ttl: usize,
    /// Its reliable messages numbered and not yet acknowledged, and their bytes.
    inflight_msgs: usize,
    inflight_bytes: usize,
}

impl Chan {
    /// No time to live and no rate limit: its messages need no scheduling of their own.
    #[inline]
    fn untimed_and_unpaced(&self) -> bool {
        self.cfg.ttl.is_none() && self.msgs_bucket.is_none() && self.bytes_bucket.is_none()
    }

    fn new(cfg: ChannelConfig, now: Instant) -> Chan {
        Chan {
            msgs_bucket: cfg.msgs_rate.map(|r| TokenBucket::new(r, now)),
            bytes_bucket: cfg.bytes_rate.map(|r| TokenBucket::new(r, now)),
            unpaced: cfg.backpressure != Backpressure::Block
                || (cfg.msgs_rate.is_none() && cfg.bytes_rate.is_none()),
            cfg,
            queue: VecDeque::new(),
            bytes: 0,
            deficit: 0,
            active: false,
            counts: Counts::default(),
            with_ttl: 0,
            inflight_msgs: 0,
            inflight_bytes: 0,
        }
    }

    fn full(&self, len: usize) -> bool {
        !self.queue.is_empty()
            && (self.queue.len() >= self.cfg.snd_hwm_msgs.max(1)
                || self.bytes + len > self.cfg.snd_hwm_bytes.max(1))
    }

    /// Removes the message at `i` (not under way); returns its length.
    fn remove(&mut self, i: usize) -> usize {
        let p = self.queue.remove(i).expect("index checked by the caller");
        debug_assert_eq!(p.seq, 0, "a numbered message is never dropped");
        self.bytes -= p.payload.len();
        if p.deadline.is_some() {
            self.with_ttl -= 1;
        }
        p.payload.len()
    }

    /// Removes the numbered message at `i` (acknowledged); returns its length.
    fn remove_sent(&mut self, i: usize) -> usize {
        let p = self.queue.remove(i).expect("index checked by the caller");
        self.bytes -= p.payload.len();
        p.payload.len()
    }

    /// Index of the oldest message neither under way nor numbered (sent before).
    fn oldest_droppable(&self) -> Option<usize> {
        self.queue.iter().position(|p| p.offset == 0 && p.seq == 0)
    }
}

/// A class of channels of equal priority, served by deficit round robin.
#[derive(Debug)]
struct Class {
    priority: u8,
    ring: VecDeque<u16>,
    /// The channel at the front of `ring` has had its quantum for this visit.
    topped: bool,
}

/// The messages of one pipe accepted for sending and not yet framed, per channel, and the
/// scheduler that turns them into frames.
///
/// - [`Outbox::offer`] applies the channel's high-water marks, backpressure policy and (for
///   the drop and fail-fast policies) rate limit.
/// - [`Outbox::poll`] picks the next frame: the highest priority class with a channel ready,
///   deficit round robin by weight inside it, messages fragmented lazily at the frame limit
///   it is given (so a message never holds another channel back by more than one frame).
///   Channels under [`Backpressure::Block`] with a rate limit, and the pipe's own limits, are
///   paced here: a channel without tokens waits, and [`Outbox::next_wake`] says until when.
/// - Messages whose time to live ran out before their first frame are dropped (at the head in
///   `poll`, anywhere in [`Outbox::expire`]) and counted.
#[derive(Debug)]
pub struct Outbox {
    config: Arc<QosConfig>,
    chans: ChannelMap<Chan>,
    classes: Vec<Class>,
    pipe_msgs: Option<TokenBucket>,
    pipe_bytes: Option<TokenBucket>,
    /// Messages queued, all channels.
    msgs: usize,
    /// Payload bytes queued, all channels.
    bytes: usize,
    /// When a channel held back by a rate limit may go (set by `poll`).
    rate_wake: Option<Instant>,
    /// No queued message expires before this.
    ttl_wake: Option<Instant>,
    /// Frames carry the remaining TTL (the peer agreed to the TTL capability).
    ttl_on_wire: bool,
    rel: RelSend,
}

impl Outbox {
    /// An empty outbox for channels configured by `config`.
    pub fn new(config: Arc<QosConfig>, now: Instant) -> Outbox {
        Outbox {
            pipe_msgs: config.pipe_msgs_rate.map(|r| TokenBucket::new(r, now)),
            pipe_bytes: config.pipe_bytes_rate.map(|r| TokenBucket::new(r, now)),
            config,
            chans: ChannelMap::default(),
            classes: Vec::new(),
            msgs: 0,
            bytes: 0,
            rate_wake: None,
            ttl_wake: None,
            ttl_on_wire: true,
            rel: RelSend {
                next_seq: 1,
                acked: 0,
                unacked: VecDeque::new(),
                inflight_msgs: 0,
                inflight_bytes: 0,
                rto: MIN_RTO,
                rto_at: None,
                retries: 0,
                ring: KeepRing::default(),
                asks: false,
                asked: false,
            },
        }
    }

    /// Whether frames carry the messages' remaining TTL (`TTL_PRESENT`): only to a peer that
    /// agreed to the TTL capability. Default `true`.
    pub fn set_ttl_on_wire(&mut self, on: bool) {
        self.ttl_on_wire = on;
    }

    /// Whether the peer acks on request (capability `ACK_REQUEST`, set for each connection):
    /// then the frame of a fresh reliable message that fills half of the pipe's window or
    /// its channel's (in messages or bytes) carries `ACK_REQUEST`, once until the next ack.
    /// Default `false`.
    pub fn set_ack_requests(&mut self, on: bool) {
        self.rel.asks = on;
        self.rel.asked = false;
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<QosConfig> {
        &self.config
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.msgs
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.msgs == 0
    }

    /// Payload bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages and payload bytes queued on `channel`.
    pub fn queued(&self, channel: u16) -> (usize, usize) {
        self.chans
            .get(channel)
            .map_or((0, 0), |c| (c.queue.len(), c.bytes))
    }

    #[inline]
    fn chan(&mut self, channel: u16, now: Instant) -> &mut Chan {
        let config = &self.config;
        self.chans
            .get_or_insert_with(channel, || Chan::new(config.channel(channel).clone(), now))
    }

    /// Whether a message of `len` bytes on `channel` would find room now.
    pub fn has_room(&self, channel: u16, len: usize) -> bool {
        self.chans.get(channel).is_none_or(|c| !c.full(len))
    }

    /// Offers a message; `ttl` overrides the channel's time to live.
    pub fn offer(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<std::time::Duration>,
        now: Instant,
    ) -> Admission {
        self.offer_with(channel, payload, ttl, None, now)
    }

    /// Offers a message; `ttl` overrides the channel's time to live, `reliable` the channel's
    /// delivery (a reliable message's TTL applies only until it is first sent).
    #[inline]
    pub fn offer_with(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<std::time::Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Admission {
        let len = payload.len();
        let ch = self.chan(channel, now);
        let reliable = reliable.unwrap_or(ch.cfg.reliable);
        let policy = ch.cfg.backpressure;
        if policy != Backpressure::Block {
            // Drop and fail-fast channels are limited at the door: the excess never queues.
            let ok = ch.msgs_bucket.as_mut().is_none_or(|b| b.ready(1.0, now))
                && ch
                    .bytes_bucket
                    .as_mut()
                    .is_none_or(|b| b.ready(len as f64, now));
            if !ok {
                if policy == Backpressure::FailFast {
                    return Admission::Refused(payload, DropReason::RateLimit);
                }
                ch.counts.rate_limited += 1;
                return Admission::Dropped(DropReason::RateLimit);
            }
        }
        let mut dropped_bytes = 0;
        let mut dropped_msgs = 0;
        if ch.full(len) {
            match policy {
                Backpressure::Block => return Admission::Wait(payload),
                Backpressure::FailFast => {
                    return Admission::Refused(payload, DropReason::QueueFull)
                }
                Backpressure::DropNew => {
                    ch.counts.dropped += 1;
                    return Admission::Dropped(DropReason::QueueFull);
                }
                Backpressure::DropOld => {
                    // Newest wins: drop from the front until the new one fits (a message
                    // under way stays; with nothing else left the queue takes the new one
                    // anyway, one over its mark).
                    while ch.full(len) {
                        let Some(i) = ch.oldest_droppable() else {
                            break;
                        };
                        dropped_bytes += ch.remove(i);
                        dropped_msgs += 1;
                    }
                    ch.counts.dropped += dropped_msgs as u64;
                }
            }
        }
        if policy != Backpressure::Block {
            if let Some(b) = ch.msgs_bucket.as_mut() {
                b.take(1.0, now);
            }
            if let Some(b) = ch.bytes_bucket.as_mut() {
                b.take(len as f64, now);
            }
        }
        let deadline = ttl.or(ch.cfg.ttl).map(|t| now + t);
        if deadline.is_some() {
            ch.with_ttl += 1;
        }
        ch.bytes += len;
        ch.queue.push_back(Pending {
            payload,
            offset: 0,
            deadline,
            reliable,
            seq: 0,
        });
        let activate = !ch.active;
        ch.active = true;
        let priority = ch.cfg.priority;
        self.msgs = self.msgs + 1 - dropped_msgs;
        self.bytes = self.bytes + len - dropped_bytes;
        if let Some(d) = deadline {
            self.ttl_wake = Some(self.ttl_wake.map_or(d, |w| w.min(d)));
        }
        if activate {
            self.activate(channel, priority);
        }
        Admission::Queued
    }

    /// Queues messages on `channel` one after the other ([`QueueRun::push`]) as
    /// [`Outbox::offer_with`] with `ttl` and `reliable` would, when that is a room check and
    /// a push per message: the channel blocks when full ([`Backpressure::Block`]) and no
    /// time to live applies (neither `ttl` nor the channel's). `None`: offer them one by one.
    #[inline]
    pub fn queue_run(
        &mut self,
        channel: u16,
        ttl: Option<std::time::Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Option<QueueRun<'_>> {
        if ttl.is_some() {
            return None;
        }
        let config = &self.config;
        let ch = self
            .chans
            .get_or_insert_with(channel, || Chan::new(config.channel(channel).clone(), now));
        if ch.cfg.backpressure != Backpressure::Block || ch.cfg.ttl.is_some() {
            return None;
        }
        let reliable = reliable.unwrap_or(ch.cfg.reliable);
        Some(QueueRun {
            ch,
            classes: &mut self.classes,
            msgs: &mut self.msgs,
            bytes: &mut self.bytes,
            channel,
            reliable,
            message_max: usize::MAX,
        })
    }

    /// Whether a message on `channel` with `ttl` and `reliable` may be framed at once (what
    /// [`Outbox::offer_direct`] does then, its size aside): nothing is queued on any channel,
    /// and neither the pipe nor the channel has a rate limit or a time to live. `Some(false)`:
    /// as plain data; `Some(true)`: reliable, numbered per message ([`Outbox::number_direct`],
    /// then [`Outbox::record_direct`]; its window is checked then); `None`: not at once.
    #[inline]
    pub fn direct_allowed(
        &mut self,
        channel: u16,
        ttl: Option<std::time::Duration>,
        reliable: Option<bool>,
        now: Instant,
    ) -> Option<bool> {
        if !self.unqueued_and_unpaced(ttl) {
            return None;
        }
        let ch = self.chan(channel, now);
        ch.untimed_and_unpaced()
            .then(|| reliable.unwrap_or(ch.cfg.reliable))
    }

    /// Numbers a reliable message of `len` bytes on `channel`, which
    /// [`Outbox::direct_allowed`] allowed, if both reliable windows have room (as
    /// [`Outbox::offer_direct`] would): counts it in them and returns its number, which the
    /// caller frames and then records with [`Outbox::record_direct`] (under the same
    /// borrow of the session, before anything else changes it), and whether its frame asks
    /// for an ack (sets `ACK_REQUEST`: see [`Outbox::set_ack_requests`]). `None`: no room;
    /// the message takes the queued way.
    #[inline]
    pub fn number_direct(&mut self, channel: u16, len: usize) -> Option<(u64, bool)> {
        let ch = self.chans.get_mut(channel)?;
        if !window_room(&self.rel, &self.config, ch, len) {
            return None;
        }
        let seq = number(&mut self.rel, ch, len);
        Some((seq, ask(&mut self.rel, &self.config, ch)))
    }

    /// How many fresh reliable messages, and how many payload bytes in all, `channel` may
    /// number from now on with neither window filling nor a frame asking for an ack: what
    /// [`Outbox::number_quiet`] counts down instead of checking both per message. It holds
    /// while nothing but `number_quiet` changes the outbox; after anything else (an ack,
    /// notably: it lets the next message ask again), ask again.
    pub fn quiet(&self, channel: u16) -> Quiet {
        let Some(ch) = self.chans.get(channel) else {
            return Quiet::default();
        };
        let rel = &self.rel;
        let asks = rel.asks && !rel.asked;
        let mut q = Quiet {
            msgs: usize::MAX,
            bytes: usize::MAX,
        };
        for (n, b, max_n, max_b) in [
            (
                rel.inflight_msgs,
                rel.inflight_bytes,
                self.config.inflight_msgs,
                self.config.inflight_bytes,
            ),
            (
                ch.inflight_msgs,
                ch.inflight_bytes,
                ch.cfg.inflight_msgs,
                ch.cfg.inflight_bytes,
            ),
        ] {
            // The window: the k-th more fits while n + k - 1 < max_n and the bytes within
            // max_b (`window_room`; none while the bytes are over it already, which the
            // first of an empty window may bring about, not even an empty message).
            let (max_n, max_b) = window_of(max_n, max_b);
            q.msgs = q.msgs.min(if b > max_b {
                0
            } else {
                max_n.saturating_sub(n)
            });
            q.bytes = q.bytes.min(max_b.saturating_sub(b));
            if asks {
                // The one that brings n + k to half the window, or the bytes to half theirs,
                // asks (`ask`): stop before it (at once, bytes at half already).
                let (half_n, half_b) = half_of(max_n, max_b);
                q.msgs = q.msgs.min(if b >= half_b {
                    0
                } else {
                    half_n.saturating_sub(n + 1)
                });
                q.bytes = q.bytes.min(half_b.saturating_sub(b + 1));
            }
        }
        q
    }

    /// Numbers a fresh reliable message of `len` bytes on `channel` within `quiet` (from
    /// [`Outbox::quiet`] for the same channel): as [`Outbox::number_direct`] would, without
    /// its checks, which `quiet` answers for: it fits both windows and asks for no ack.
    /// `None` when `quiet` does not cover it: number it with `number_direct`, then ask for
    /// `quiet` again.
    #[inline]
    pub fn number_quiet(&mut self, channel: u16, len: usize, quiet: &mut Quiet) -> Option<u64> {
        if quiet.msgs == 0 || len > quiet.bytes {
            return None;
        }
        let ch = self.chans.get_mut(channel)?;
        quiet.msgs -= 1;
        quiet.bytes -= len;
        Some(number(&mut self.rel, ch, len))
    }

    /// Records the reliable message numbered `seq` by [`Outbox::number_direct`] as sent at
    /// `now`, with its payload, kept until it is acknowledged: a small one (up to 512 bytes)
    /// as a copy in the keep ring, its handle let go at once; a larger one as the handle.
    #[inline]
    pub fn record_direct(&mut self, seq: u64, channel: u16, payload: Bytes, now: Instant) {
        self.rel.record(seq, channel, payload, now);
    }

    /// As [`Outbox::record_direct`], for a payload the caller lends: a copy goes into the
    /// outbox's keep ring (see `KeepRing`).
    #[inline]
    pub fn record_direct_copy(&mut self, seq: u64, channel: u16, payload: &[u8], now: Instant) {
        // (Copies in the ring are recorded in number order: see `RelSend::release_kept`.)
        debug_assert!(self.rel.unacked.back().is_none_or(|s| s.last() < seq));
        let at = self.rel.ring.push(payload);
        let kept = Kept::Ring {
            at,
            len: payload.len(),
        };
        self.rel.record_kept(seq, channel, kept, now);
    }

    /// A run of fresh reliable messages on `channel`, numbered within `quiet` (from
    /// [`Outbox::quiet`] for the same channel) and their payloads copied into the keep ring
    /// by [`KeepRun::take`], one by one, as sent at `now`: for a driver's loop that frames a
    /// batch's messages in place. What `number_quiet` and `record_direct_copy` do per
    /// message is done once for the run, when it is dropped (the windows, the next number,
    /// `quiet`, the records of the copies). The outbox is borrowed meanwhile. Unless
    /// `reliable`, the run takes nothing.
    #[inline]
    pub(crate) fn keep_run<'a>(
        &'a mut self,
        channel: u16,
        reliable: bool,
        quiet: &'a mut Quiet,
        now: Instant,
    ) -> KeepRun<'a> {
        let ring = &mut self.rel.ring;
        let buf = std::mem::take(&mut ring.buf);
        let cap = buf.len();
        let (off, room) = if cap == 0 {
            (0, 0)
        } else {
            let off = (ring.tail & (cap as u64 - 1)) as usize;
            let free = cap - (ring.tail - ring.head) as usize;
            (off, free.min(cap - off))
        };
        let seq = self.rel.next_seq;
        // (Nothing on a channel the outbox does not have: its windows count nothing. At most
        // `u32::MAX` messages: a record counts them in 32 bits.)
        let msgs = match self.chans.get(channel) {
            Some(_) if reliable => quiet.msgs.min(u32::MAX as usize),
            _ => 0,
        };
        let end = off + room.min(quiet.bytes);
        KeepRun {
            channel,
            now,
            first_seq: seq,
            seq,
            seq_end: seq + msgs as u64,
            quiet,
            first_off: off,
            off,
            end,
            tail: self.rel.ring.tail,
            buf,
            rec_seq: seq,
            rec_off: off,
            rec_len: usize::MAX,
            outbox: self,
        }
    }

    /// Nothing is queued on any channel, the pipe has no rate limit and the message (`ttl`)
    /// no time to live: what every message framed at once needs of the outbox.
    #[inline]
    fn unqueued_and_unpaced(&self, ttl: Option<std::time::Duration>) -> bool {
        self.msgs == 0 && self.pipe_msgs.is_none() && self.pipe_bytes.is_none() && ttl.is_none()
    }

    /// Whether a message sent on `channel` with `ttl` and `reliable` involves time: it has a
    /// time to live (its own or the channel's), is reliable (retransmission timers), or meets
    /// a rate limit (the channel's or the pipe's). One that does not is offered the same
    /// whatever `now` it is given, as long as `now` is not before the outbox's last: its
    /// caller may pass the time it last knew instead of reading a clock.
    #[inline]
    pub fn send_uses_time(
        &self,
        channel: u16,
        ttl: Option<std::time::Duration>,
        reliable: Option<bool>,
    ) -> bool {
        // (A channel in use has its settings at hand, past the last-channel check: the
        // config's map is a tree search, ~28 instructions a message.)
        let cfg = match self.chans.get(channel) {
            Some(ch) => &ch.cfg,
            None => self.config.channel(channel),
        };
        ttl.is_some()
            || cfg.ttl.is_some()
            || reliable.unwrap_or(cfg.reliable)
            || cfg.msgs_rate.is_some()
            || cfg.bytes_rate.is_some()
            || self.pipe_msgs.is_some()
            || self.pipe_bytes.is_some()
    }

    /// A message that can go out at once as one frame, without queueing: nothing is queued
    /// on any channel (so the scheduler has nothing to order it against), the pipe has no
    /// rate limit, the channel no rate limit, and the message no time to live and fits in
    /// one frame of `frame_max` bytes; a reliable one also fits both reliable windows (it is
    /// numbered and recorded as sent). Then it is framed now
    /// (`Ok`), exactly as [`Outbox::offer_with`] followed by [`Outbox::poll`] would frame
    /// it; otherwise it is handed back (`Err`) for [`Outbox::offer_with`], untouched.
    #[inline]
    pub fn offer_direct(
        &mut self,
        channel: u16,
        payload: Bytes,
        ttl: Option<std::time::Duration>,
        reliable: Option<bool>,
        now: Instant,
        frame_max: usize,
    ) -> Result<Transmit, Bytes> {
        let len = payload.len();
        let reliable = match self.direct_allowed(channel, ttl, reliable, now) {
            Some(reliable) if len <= frame_max.max(1) => reliable,
            _ => return Err(payload),
        };
        let mut h = Header::data(channel, len as u32);
        if reliable {
            // Numbered and recorded as sent, as `poll` would, when both windows have room.
            let Some((seq, ask)) = self.number_direct(channel, len) else {
                return Err(payload);
            };
            mark_reliable(&mut h, seq, ask);
            self.rel.record(seq, channel, payload.clone(), now);
        }
        Ok(Transmit {
            header: h.encode(),
            payload,
            deadline: None,
        })
    }

    /// Puts messages recovered from a broken connection back at the front of their
    /// channels, ahead of everything queued (they were older), in the order given per
    /// channel. No policy applies: they were accepted before; they carry no deadline any
    /// more. Messages under way are rewound first (see [`Outbox::rewind`]).
    pub fn requeue_front(&mut self, messages: Vec<(u16, Bytes)>, now: Instant) {
        self.rewind();
        for (channel, payload) in messages.into_iter().rev() {
            self.put_front(channel, payload, 0, now);
        }
    }

    /// Reliable messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.rel.unacked_msgs()
    }

    /// Reliable messages numbered and not yet acknowledged, and their payload bytes (what the
    /// window bounds).
    pub fn inflight(&self) -> (usize, usize) {
        (self.rel.inflight_msgs, self.rel.inflight_bytes)
    }

    /// The number the next reliable message will get.
    pub fn next_seq(&self) -> u64 {
        self.rel.next_seq
    }

    /// The peer acknowledged every reliable message up to `cum` and the `ranges` above it
    /// (wire numbers). Returns whether anything new was acknowledged. An ack for a message
    /// never sent is an error (a broken or hostile peer).
    pub fn on_ack(
        &mut self,
        cum: u32,
        ranges: &[(u32, u32)],
        now: Instant,
    ) -> Result<bool, crate::Error> {
        use crate::reliable::widen;
        let cum = widen(cum, self.rel.acked);
        if cum >= self.rel.next_seq {
            return Err(crate::Error::Reliability(
                "ACK for a reliable message that was never sent",
            ));
        }
        // (A request may go out again with the next message, if half a window is still in
        // flight.)
        self.rel.asked = false;
        // Settled per run of one channel (a stream's thousands of messages at once, in a
        // few records): the counters are written once per run, not once per record, each
        // write waiting for the one before.
        let mut settled = 0usize;
        let mut run: Option<(u16, usize, usize)> = None;
        while let Some(s) = self.rel.unacked.front_mut() {
            if s.seq > cum {
                break;
            }
            let (channel, k, bytes) = if s.last() <= cum {
                let s = self.rel.unacked.pop_front().expect("there");
                (s.channel, s.n as usize, s.bytes())
            } else {
                // Acked up to the middle of a run: the rest stays.
                let rest = s.split_off(cum + 1);
                let done = std::mem::replace(s, rest);
                (done.channel, done.n as usize, done.bytes())
            };
            settled += k;
            match &mut run {
                Some((c, n, b)) if *c == channel => {
                    *n += k;
                    *b += bytes;
                }
                _ => {
                    if let Some((c, n, b)) = run.replace((channel, k, bytes)) {
                        self.rel.settle(self.chans.get_mut(c), n, b);
                    }
                }
            }
        }
        if let Some((c, n, b)) = run {
            self.rel.settle(self.chans.get_mut(c), n, b);
        }
        if settled > 0 {
            self.rel.release_kept();
        }
        self.rel.acked = self.rel.acked.max(cum);
        for &(a, b) in ranges {
            let (a, b) = (widen(a, cum), widen(b, cum));
            if a > b || b >= self.rel.next_seq {
                return Err(crate::Error::Reliability(
                    "ACK range for reliable messages that were never sent",
                ));
            }
            // Runs that the range's edges cut are split there, so that a record is sacked
            // whole.
            self.rel.split_at(a);
            self.rel.split_at(b + 1);
            for s in self.rel.unacked.iter_mut() {
                if s.seq >= a && s.last() <= b {
                    s.sacked = true;
                }
            }
        }
        let progress = settled > 0;
        if progress {
            self.rel.retries = 0;
            self.rel.rto_at = self.rel.unacked.front().map(|_| now + self.rel.rto);
        }
        Ok(progress)
    }

    /// For the next session of the pipe. `resumed`: the peer kept the session and has every
    /// reliable message up to `peer_cum`; the others go again first, with their numbers (the
    /// peer drops any it already has). Not resumed (the peer starts afresh): every
    /// unacknowledged message goes again as a new one, numbered from 1; returns how many (the
    /// peer may have had some of them: they may arrive twice). Messages under way start again
    /// from their first byte.
    pub fn resume(
        &mut self,
        peer_cum: u32,
        resumed: bool,
        now: Instant,
    ) -> Result<usize, crate::Error> {
        self.rewind();
        if resumed {
            self.on_ack(peer_cum, &[], now)?;
            self.requeue_unacked(now, false);
            // Numbered messages go in number order per channel (a retransmission timeout may
            // have queued older ones behind the message then under way, now rewound).
            for (_, ch) in self.chans.iter_mut() {
                let k = ch.queue.iter().take_while(|p| p.seq != 0).count();
                if k > 1 {
                    ch.queue.make_contiguous()[..k].sort_by_key(|p| p.seq);
                }
            }
            // A new connection: the timer starts again with what it sends.
            self.rel.rto_at = None;
            self.rel.retries = 0;
            return Ok(0);
        }
        let n = self.rel.unacked_msgs();
        self.requeue_unacked(now, true);
        // Numbered messages still queued are new to the new peer too.
        let mut renumbered = 0;
        for (_, ch) in self.chans.iter_mut() {
            for p in ch.queue.iter_mut().filter(|p| p.seq != 0) {
                p.seq = 0;
                renumbered += 1;
            }
        }
        self.rel.next_seq = 1;
        self.rel.acked = 0;
        self.rel.inflight_msgs = 0;
        self.rel.inflight_bytes = 0;
        for (_, ch) in self.chans.iter_mut() {
            ch.inflight_msgs = 0;
            ch.inflight_bytes = 0;
        }
        self.rel.retries = 0;
        self.rel.rto_at = None;
        Ok(n + renumbered)
    }

    /// Whether the retransmission timeout has passed at `now` with messages unacknowledged.
    pub fn retransmit_due(&self, now: Instant) -> bool {
        !self.rel.unacked.is_empty() && self.rel.rto_at.is_some_and(|t| now >= t)
    }

    /// When the earliest sent of the unacknowledged messages the peer has not acknowledged
    /// selectively either was sent (its last frame). Not always the lowest-numbered one:
    /// messages are numbered as their first frame goes and complete out of order when
    /// fragments of several channels interleave. (A scan of the records: called when a
    /// retransmission timeout fires.)
    pub fn oldest_unacked_at(&self) -> Option<Instant> {
        self.rel
            .unacked
            .iter()
            .filter(|s| !s.sacked)
            .map(|s| s.at)
            .min()
    }

    /// The timeout passed, but no retry is to be counted (the peer is alive, or the messages
    /// still unacknowledged were sent too recently): the next fires a timeout after `from`.
    pub fn rearm(&mut self, from: Instant) {
        self.rel.rto_at = self.rel.unacked.front().map(|_| from + self.rel.rto);
    }

    /// The retransmission timeout now.
    pub fn rto(&self) -> std::time::Duration {
        self.rel.rto
    }

    /// The timeout passed and the peer said nothing: send every unacknowledged message again
    /// (the peer drops those it has), double the timeout. Returns the retries in a row.
    pub fn retransmit(&mut self, now: Instant) -> u32 {
        self.requeue_unacked(now, false);
        self.rel.retries += 1;
        self.rel.rto = (self.rel.rto * 2).min(MAX_RTO);
        self.rel.rto_at = None;
        self.rel.retries
    }

    /// Retransmission timeouts in a row without progress.
    pub fn retries(&self) -> u32 {
        self.rel.retries
    }

    /// Sets the retransmission timeout from a smoothed round-trip time: twice it, within
    /// [`MIN_RTO`]..=[`MAX_RTO`] (a timeout already backed off stays).
    pub fn set_rtt(&mut self, srtt: std::time::Duration) {
        if self.rel.retries == 0 {
            self.rel.rto = (srtt * 2).clamp(MIN_RTO, MAX_RTO);
        }
    }

    /// Puts every unacknowledged message back at the front of its channel (behind a message
    /// under way on this connection, which must finish first), oldest first; `renumber`:
    /// as new messages.
    fn requeue_unacked(&mut self, now: Instant, renumber: bool) {
        let sent: Vec<Sent> = self.rel.unacked.drain(..).collect();
        let (keep, again): (Vec<Sent>, Vec<Sent>) =
            sent.into_iter().partition(|s| s.sacked && !renumber);
        // What the peer has already (selectively acked) waits for the cumulative ack.
        self.rel.unacked.extend(keep);
        for s in again.into_iter().rev() {
            for i in (0..s.n).rev() {
                // (Read from the keep ring before the ring lets the copies go, below.)
                let payload = self.rel.take_payload(&s.payload, i);
                let len = payload.len();
                let ch = self.chan(s.channel, now);
                let at = usize::from(ch.queue.front().is_some_and(|p| p.offset > 0));
                ch.queue.insert(
                    at,
                    Pending {
                        payload,
                        offset: 0,
                        deadline: None,
                        reliable: true,
                        seq: if renumber { 0 } else { s.seq + u64::from(i) },
                    },
                );
                ch.counts.retransmits += 1;
                self.queued_again(s.channel, len);
            }
        }
        self.rel.release_kept();
    }

    /// For a new connection: messages under way start again from their first byte (the peer
    /// dropped the partial message with the old connection). Returns the channels whose head
    /// message was under way.
    pub fn rewind(&mut self) -> Vec<u16> {
        let mut rewound = Vec::new();
        for (channel, ch) in self.chans.iter_mut() {
            if let Some(head) = ch.queue.front_mut() {
                if head.offset > 0 {
                    head.offset = 0;
                    rewound.push(channel);
                }
            }
        }
        rewound
    }

    /// Puts a realtime message of which the first `offset` bytes went out (as fragments the
    /// driver framed itself) at the front of `channel`'s queue, under way: the next frame of
    /// the channel continues it from `offset` (see [`crate::Session::send_started`]).
    pub fn push_started(&mut self, channel: u16, payload: Bytes, offset: usize, now: Instant) {
        debug_assert!(offset > 0 && offset < payload.len(), "a message under way");
        debug_assert!(
            self.chans
                .get(channel)
                .is_none_or(|ch| ch.queue.front().is_none_or(|p| p.offset == 0)),
            "one message under way per channel"
        );
        self.put_front(channel, payload, offset, now);
    }

    /// Puts a realtime message, accepted before and with no deadline any more, at the front
    /// of `channel`'s queue, its first `offset` bytes already sent, and counts it.
    fn put_front(&mut self, channel: u16, payload: Bytes, offset: usize, now: Instant) {
        let len = payload.len();
        self.chan(channel, now).queue.push_front(Pending {
            payload,
            offset,
            deadline: None,
            reliable: false,
            seq: 0,
        });
        self.queued_again(channel, len);
    }

    /// A message of `len` bytes was put back in `channel`'s queue: the counts, and the
    /// channel back in its ring if it had left it.
    fn queued_again(&mut self, channel: u16, len: usize) {
        let ch = self
            .chans
            .get_mut(channel)
            .expect("the channel was just used");
        ch.bytes += len;
        let activate = !ch.active;
        ch.active = true;
        let priority = ch.cfg.priority;
        self.msgs += 1;
        self.bytes += len;
        if activate {
            self.activate(channel, priority);
        }
    }

    fn activate(&mut self, channel: u16, priority: u8) {
        activate_in(&mut self.classes, channel, priority);
    }

    /// The next frame to send at `now`, its payload at most `frame_max` bytes, or `None`
    /// when nothing is queued or everything queued waits for a rate limit
    /// ([`Outbox::next_wake`]).
    pub fn poll(&mut self, now: Instant, frame_max: usize) -> Option<Transmit> {
        self.rate_wake = None;
        if self.msgs == 0 {
            return None;
        }
        let frame_max = frame_max.max(1);
        if let Some(t) = self.poll_simple(frame_max, now) {
            return Some(t);
        }
        let quantum_unit = frame_max.max(super::QUANTUM) + HEADER_LEN;
        for ci in 0..self.classes.len() {
            let class = &mut self.classes[ci];
            // Every channel of the class gets a fresh quantum within one turn of the ring, so
            // two turns find a sender unless all wait for tokens or are empty.
            let mut tries = 2 * class.ring.len() + 1;
            while tries > 0 {
                tries -= 1;
                let Some(&channel) = class.ring.front() else {
                    break;
                };
                let ch = self
                    .chans
                    .get_mut(channel)
                    .expect("a channel in a ring has an entry");
                // Expired messages at the head go before anything is sent, and so do reliable
                // ones queued again after a timeout and acknowledged meanwhile (here, not as
                // a try of the ring: a run of them must not end the turn with nothing sent).
                while let Some(head) = ch.queue.front() {
                    if head.offset == 0 && head.deadline.is_some_and(|d| now >= d) {
                        let len = ch.remove(0);
                        ch.counts.expired += 1;
                        self.msgs -= 1;
                        self.bytes -= len;
                    } else if head.offset == 0
                        && head.reliable
                        && head.seq != 0
                        && head.seq <= self.rel.acked
                    {
                        let len = ch.remove_sent(0);
                        self.rel.settle(Some(&mut *ch), 1, len);
                        self.msgs -= 1;
                        self.bytes -= len;
                    } else {
                        break;
                    }
                }
                let Some(head) = ch.queue.front() else {
                    ch.active = false;
                    ch.deficit = 0;
                    class.ring.pop_front();
                    class.topped = false;
                    continue;
                };
                let first = head.offset == 0;
                if first && head.reliable {
                    let len = head.payload.len();
                    if head.seq == 0 && !window_room(&self.rel, &self.config, ch, len) {
                        // Waits for acks (their arrival wakes the driver), not for a timer.
                        class.ring.rotate_left(1);
                        class.topped = false;
                        continue;
                    }
                }
                let n = frame_max.min(head.payload.len() - head.offset);
                // Pacing: the channel's own limits (Block channels) and the pipe's.
                let mut wake: Option<Instant> = None;
                let mut check = |b: &mut Option<TokenBucket>, cost: f64| {
                    if let Some(b) = b.as_mut() {
                        let at = b.ready_at(cost, now);
                        if at > now {
                            wake = Some(wake.map_or(at, |w: Instant| w.max(at)));
                        }
                    }
                };
                if ch.cfg.backpressure == Backpressure::Block {
                    if first {
                        check(&mut ch.msgs_bucket, 1.0);
                    }
                    check(&mut ch.bytes_bucket, n as f64);
                }
                if first {
                    check(&mut self.pipe_msgs, 1.0);
                }
                check(&mut self.pipe_bytes, n as f64);
                if let Some(at) = wake {
                    self.rate_wake = Some(self.rate_wake.map_or(at, |w| w.min(at)));
                    class.ring.rotate_left(1);
                    class.topped = false;
                    continue;
                }
                let wire = n + HEADER_LEN;
                if !class.topped {
                    class.topped = true;
                    ch.deficit += quantum_unit * ch.cfg.weight.max(1) as usize;
                }
                if ch.deficit < wire {
                    class.ring.rotate_left(1);
                    class.topped = false;
                    continue;
                }
                ch.deficit -= wire;
                if ch.cfg.backpressure == Backpressure::Block {
                    if first {
                        if let Some(b) = ch.msgs_bucket.as_mut() {
                            b.take(1.0, now);
                        }
                    }
                    if let Some(b) = ch.bytes_bucket.as_mut() {
                        b.take(n as f64, now);
                    }
                }
                if first {
                    if let Some(b) = self.pipe_msgs.as_mut() {
                        b.take(1.0, now);
                    }
                }
                if let Some(b) = self.pipe_bytes.as_mut() {
                    b.take(n as f64, now);
                }
                let head = ch.queue.front().expect("checked above");
                let (total, reliable) = (head.payload.len(), head.reliable);
                let mut asks = false;
                if reliable && head.seq == 0 {
                    // Numbered as it is first sent; from now on it is never dropped, and its
                    // TTL no longer applies.
                    let seq = number(&mut self.rel, ch, total);
                    asks = ask(&mut self.rel, &self.config, ch);
                    let head = ch.queue.front_mut().expect("checked above");
                    head.seq = seq;
                    if head.deadline.take().is_some() {
                        ch.with_ttl -= 1;
                    }
                }
                let head = ch.queue.front_mut().expect("checked above");
                let mut h = Header::data(channel, n as u32);
                let mut deadline = None;
                if reliable {
                    mark_reliable(&mut h, head.seq, asks);
                }
                if first {
                    if let Some(d) = head.deadline.filter(|_| self.ttl_on_wire) {
                        h.flags |= flags::TTL_PRESENT;
                        h.ttl_ms = remaining_ms(d, now);
                        deadline = Some(d);
                    }
                }
                let (marks, aux) = fragment_marks(head.offset, n, total);
                h.flags |= marks;
                if let Some(total) = aux {
                    h.aux = total;
                }
                let part = (!(first && n == total))
                    .then(|| head.payload.slice(head.offset..head.offset + n));
                head.offset += n;
                let payload = if head.offset == total {
                    if head.deadline.is_some() {
                        ch.with_ttl -= 1;
                    }
                    let done = take_head(ch, class);
                    self.msgs -= 1;
                    self.bytes -= total;
                    if done.reliable {
                        self.rel
                            .record(done.seq, channel, done.payload.clone(), now);
                    }
                    // A whole message moves out as it is (no clone of its Bytes).
                    part.unwrap_or(done.payload)
                } else {
                    part.expect("a message not done is sent in slices")
                };
                return Some(Transmit {
                    header: h.encode(),
                    payload,
                    deadline,
                });
            }
        }
        // (Classes stay once made, empty or not: at most 256, and found again at once.)
        None
    }

    /// The frames [`Outbox::poll`] would give next, taken one after the other while they are
    /// its simplest case: whole messages (at most `frame_max` bytes) of the one channel
    /// queued, in the only class, with nothing paced, no deadline and no reliability. `take`
    /// gets each one's header and payload and frames it, or says `false` (it stays queued,
    /// and the run ends). Returns how many were taken (0 when the case does not apply: ask
    /// [`Outbox::poll`]).
    #[inline]
    pub fn poll_plain_run(
        &mut self,
        frame_max: usize,
        mut take: impl FnMut(&[u8; HEADER_LEN], &[u8]) -> bool,
    ) -> usize {
        let pipe_paced = self.pipe_msgs.is_some() || self.pipe_bytes.is_some();
        if self.msgs == 0 {
            return 0;
        }
        let Some((channel, ch, class)) =
            sole_unpaced(&mut self.classes, &mut self.chans, pipe_paced)
        else {
            return 0;
        };
        let template = Header::data(channel, 0).encode();
        let (mut n, mut bytes) = (0, 0);
        while let Some(head) = ch.queue.front() {
            let len = head.payload.len();
            if head.reliable || !head.whole_untimed(frame_max) {
                break;
            }
            let mut h = template;
            crate::wire::header::put_u32(&mut h, 4, len as u32);
            if !take(&h, &head.payload) {
                break;
            }
            ch.queue.pop_front();
            n += 1;
            bytes += len;
        }
        if n == 0 {
            return 0;
        }
        self.rate_wake = None;
        ch.bytes -= bytes;
        leave_ring_if_empty(ch, class);
        self.msgs -= n;
        self.bytes -= bytes;
        n
    }

    /// The common case at full speed: one channel in one class, nothing paced, the next
    /// message whole in one frame and without a deadline. `None` when that is not the case.
    #[inline]
    fn poll_simple(&mut self, frame_max: usize, now: Instant) -> Option<Transmit> {
        let pipe_paced = self.pipe_msgs.is_some() || self.pipe_bytes.is_some();
        let (channel, ch, class) = sole_unpaced(&mut self.classes, &mut self.chans, pipe_paced)?;
        let head = ch.queue.front()?;
        if !head.whole_untimed(frame_max) {
            return None;
        }
        let mut h = Header::data(channel, head.payload.len() as u32);
        if head.reliable {
            // A fresh reliable message inside both windows (anything else: the full path).
            let len = head.payload.len();
            if head.seq != 0 || !window_room(&self.rel, &self.config, ch, len) {
                return None;
            }
            let seq = number(&mut self.rel, ch, len);
            mark_reliable(&mut h, seq, ask(&mut self.rel, &self.config, ch));
            let p = take_head(ch, class);
            self.msgs -= 1;
            self.bytes -= len;
            self.rel.record(seq, channel, p.payload.clone(), now);
            return Some(Transmit {
                header: h.encode(),
                payload: p.payload,
                deadline: None,
            });
        }
        let p = take_head(ch, class);
        let len = p.payload.len();
        self.msgs -= 1;
        self.bytes -= len;
        Some(Transmit {
            header: h.encode(),
            payload: p.payload,
            deadline: None,
        })
    }

    /// Drops every queued message (not under way) whose time to live ran out at `now`.
    pub fn expire(&mut self, now: Instant) {
        if self.ttl_wake.is_none_or(|w| now < w) {
            return;
        }
        let mut next: Option<Instant> = None;
        let (mut msgs, mut bytes) = (0, 0);
        for (_, ch) in self.chans.iter_mut() {
            if ch.with_ttl == 0 {
                continue;
            }
            let mut i = 0;
            while i < ch.queue.len() {
                let p = &ch.queue[i];
                match p.deadline {
                    Some(d) if now >= d && p.offset == 0 => {
                        bytes += ch.remove(i);
                        msgs += 1;
                        ch.counts.expired += 1;
                    }
                    // A message under way is finished whatever its deadline: no wake for it.
                    Some(d) if p.offset == 0 => {
                        next = Some(next.map_or(d, |n| n.min(d)));
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
        }
        self.msgs -= msgs;
        self.bytes -= bytes;
        self.ttl_wake = next;
    }

    /// The next instant at which [`Outbox::poll`] may produce a frame that it could not
    /// before (a rate limit refilled), or [`Outbox::expire`] has work.
    pub fn next_wake(&self) -> Option<Instant> {
        let rto = self.rel.rto_at.filter(|_| !self.rel.unacked.is_empty());
        // Only `poll` clears the rate wake, and nobody polls an empty outbox: once the
        // messages that waited for tokens are gone another way (expired), it is stale, and
        // would keep the session's deadline in the past.
        let rate = self.rate_wake.filter(|_| self.msgs > 0);
        [rate, self.ttl_wake, rto].into_iter().flatten().min()
    }

    /// Hands out the counters of every channel that has non-zero ones, and zeroes them.
    pub fn take_counts(&mut self, f: &mut dyn FnMut(u16, Counts)) {
        for (channel, ch) in self.chans.iter_mut() {
            if !ch.counts.is_zero() {
                f(channel, std::mem::take(&mut ch.counts));
            }
        }
    }

    /// Counts `n` messages of `channel` as lost (with a broken connection).
    pub fn count_lost(&mut self, channel: u16, n: u64, now: Instant) {
        self.chan(channel, now).counts.lost += n;
    }

    /// Empties the outbox (the pipe ended): every message is counted as lost. Returns how
    /// many there were.
    pub fn clear(&mut self) -> usize {
        for s in std::mem::take(&mut self.rel.unacked) {
            if let Some(ch) = self.chans.get_mut(s.channel) {
                ch.counts.lost += u64::from(s.n);
            }
        }
        self.rel.release_kept();
        self.rel.inflight_msgs = 0;
        self.rel.inflight_bytes = 0;
        for (_, ch) in self.chans.iter_mut() {
            ch.inflight_msgs = 0;
            ch.inflight_bytes = 0;
        }
        self.rel.rto_at = None;
        let n = self.msgs;
        for (_, ch) in self.chans.iter_mut() {
            ch.counts.lost += ch.queue.len() as u64;
            ch.queue.clear();
            ch.bytes = 0;
            ch.active = false;
            ch.deficit = 0;
            ch.with_ttl = 0;
        }
        self.classes.clear();
        self.msgs = 0;
        self.bytes = 0;
        self.ttl_wake = None;
        self.rate_wake = None;
        n
    }
}

/// Whether a fresh reliable message of `len` bytes fits the pipe's window (`rel`, sized by
/// `config`) and its channel's (`ch`): each takes one message at least, however large.
#[inline]
fn window_room(rel: &RelSend, config: &QosConfig, ch: &Chan, len: usize) -> bool {
    let room = |n: usize, b: usize, max_n: usize, max_b: usize| {
        let (max_n, max_b) = window_of(max_n, max_b);
        n == 0 || (n < max_n && b + len <= max_b)
    };
    room(
        rel.inflight_msgs,
        rel.inflight_bytes,
        config.inflight_msgs,
        config.inflight_bytes,
    ) && room(
        ch.inflight_msgs,
        ch.inflight_bytes,
        ch.cfg.inflight_msgs,
        ch.cfg.inflight_bytes,
    )
}

/// A window of `max_n` messages and `max_b` bytes as the checks apply it: each at least 1.
#[inline]
fn window_of(max_n: usize, max_b: usize) -> (usize, usize) {
    (max_n.max(1), max_b.max(1))
}

/// Where a window of `max_n` messages and `max_b` bytes counts as half full (a fresh
/// message that brings it there asks for an ack: [`ask`]).
#[inline]
fn half_of(max_n: usize, max_b: usize) -> (usize, usize) {
    (max_n.max(2) / 2, max_b.max(2) / 2)
}

/// Marks `h` as the frame of the reliable message numbered `seq`, asking for an ack if
/// `ask`.
#[inline]
fn mark_reliable(h: &mut Header, seq: u64, ask: bool) {
    h.flags |= flags::RELIABLE;
    if ask {
        h.flags |= flags::ACK_REQUEST;
    }
    h.seq = crate::reliable::narrow(seq);
}

/// After a fresh reliable message was numbered on `ch`: whether its frame asks the peer for
/// an ack. It does when the peer acks on request, no request is out since the last ack, and
/// the pipe's window or the channel's (sized by `config` and `ch.cfg`) is half full, in
/// messages or in bytes: the ack then comes while the other half is sent, and the sender
/// never waits for the peer's delayed ack with a window full.
#[inline]
fn ask(rel: &mut RelSend, config: &QosConfig, ch: &Chan) -> bool {
    if !rel.asks || rel.asked {
        return false;
    }
    let half = |n: usize, b: usize, max_n: usize, max_b: usize| {
        let (half_n, half_b) = half_of(max_n, max_b);
        n >= half_n || b >= half_b
    };
    rel.asked = half(
        rel.inflight_msgs,
        rel.inflight_bytes,
        config.inflight_msgs,
        config.inflight_bytes,
    ) || half(
        ch.inflight_msgs,
        ch.inflight_bytes,
        ch.cfg.inflight_msgs,
        ch.cfg.inflight_bytes,
    );
    rel.asked
}

/// Numbers a fresh reliable message of `len` bytes on `ch` and counts it in both windows.
#[inline]
fn number(rel: &mut RelSend, ch: &mut Chan, len: usize) -> u64 {
    let seq = rel.next_seq;
    rel.next_seq += 1;
    rel.inflight_msgs += 1;
    rel.inflight_bytes += len;
    ch.inflight_msgs += 1;
    ch.inflight_bytes += len;
    seq
}

/// Takes the finished head message of `ch`, the channel at the front of `class`'s ring; a
/// channel left empty leaves the ring.
#[inline]
fn take_head(ch: &mut Chan, class: &mut Class) -> Pending {
    let p = ch.queue.pop_front().expect("the head");
    ch.bytes -= p.payload.len();
    leave_ring_if_empty(ch, class);
    p
}

/// `ch`, at the front of `class`'s ring, leaves it if its queue is empty.
fn leave_ring_if_empty(ch: &mut Chan, class: &mut Class) {
    if ch.queue.is_empty() {
        ch.active = false;
        ch.deficit = 0;
        class.ring.pop_front();
        class.topped = false;
    }
}

/// The one channel queued, with its class, when it is the only one in the only class and
/// nothing paces it (nor the pipe: `pipe_paced`): the case in which the scheduler has no
/// choice to make ([`Outbox::poll_simple`], [`Outbox::poll_plain_run`]).
fn sole_unpaced<'a>(
    classes: &'a mut [Class],
    chans: &'a mut ChannelMap<Chan>,
    pipe_paced: bool,
) -> Option<(u16, &'a mut Chan, &'a mut Class)> {
    let [class] = classes else {
        return None;
    };
    if pipe_paced || class.ring.len() != 1 {
        return None;
    }
    let channel = class.ring[0];
    let ch = chans.get_mut(channel).filter(|ch| ch.unpaced)?;
    Some((channel, ch, class))
}

/// Milliseconds left until `deadline`, rounded up, at least 1 (0 would mean "no time left"
/// to a receiver; the sender has just checked that some is).
fn remaining_ms(deadline: Instant, now: Instant) -> u32 {
    let left = deadline.saturating_duration_since(now);
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.clamp(1, u128::from(u32::MAX)) as u32
}

/// Puts `channel` (of `priority`) at the back of its priority class's ring, making the class
/// if it is new.
fn activate_in(classes: &mut Vec<Class>, channel: u16, priority: u8) {
    let i = match classes.binary_search_by(|c| priority.cmp(&c.priority)) {
        Ok(i) => i,
        Err(i) => {
            classes.insert(
                i,
                Class {
                    priority,
                    ring: VecDeque::new(),
                    topped: false,
                },
            );
            i
        }
    };
    classes[i].ring.push_back(channel);
}

/// Messages queued on one channel one after the other ([`Outbox::queue_run`]): what
/// [`Outbox::offer_with`] does per message, its channel's checks made once for the run. For
/// a sender with many messages in a row that cannot go out at once (the socket is full):
/// each then costs a room check and a push.
pub struct QueueRun<'a> {
    ch: &'a mut Chan,
    classes: &'a mut Vec<Class>,
    msgs: &'a mut usize,
    bytes: &'a mut usize,
    channel: u16,
    reliable: bool,
    /// Longest message the run takes (the session's limit; unlimited from the outbox).
    message_max: usize,
}

impl QueueRun<'_> {
    /// Whether a message of `len` bytes is within the run's size limit and finds room in the
    /// channel's queue (its high-water marks). One that does not is offered the usual way,
    /// which says what becomes of it.
    #[inline]
    pub fn fits(&self, len: usize) -> bool {
        len <= self.message_max && !self.ch.full(len)
    }

    /// The run with messages limited to `max` bytes.
    pub(crate) fn limited_to(mut self, max: usize) -> Self {
        self.message_max = max;
        self
    }

    /// Queues `payload`, as [`Outbox::offer_with`] would ([`Admission::Queued`]): only
    /// after [`QueueRun::fits`] said it fits.
    #[inline]
    pub fn push(&mut self, payload: Bytes) {
        debug_assert!(self.fits(payload.len()), "pushed without room");
        let len = payload.len();
        let ch = &mut *self.ch;
        ch.bytes += len;
        ch.queue.push_back(Pending {
            payload,
            offset: 0,
            deadline: None,
            reliable: self.reliable,
            seq: 0,
        });
        *self.msgs += 1;
        *self.bytes += len;
        if !ch.active {
            ch.active = true;
            activate_in(self.classes, self.channel, ch.cfg.priority);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_keep_ring_keeps_bytes_across_its_wrap_and_its_growth() {
        let mut ring = KeepRing::default();
        let msg = |i: u32, len: usize| -> Vec<u8> {
            (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
        };
        // Fill, free the front, fill past the end: the next copies wrap around.
        let mut kept: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        for i in 0..100u32 {
            let m = msg(i, 37 + (i as usize % 50));
            kept.push_back((ring.push(&m), m));
            if kept.len() > 40 {
                kept.pop_front();
                ring.free_to(kept.front().unwrap().0);
            }
            for (at, m) in &kept {
                assert_eq!(&ring.get(*at, m.len())[..], &m[..], "copy {i}");
            }
        }
        let cap = ring.buf.len();
        assert_eq!(
            cap, 4096,
            "bounded by what is kept, not by what went through"
        );
        // Keep far more than fits: the ring grows and every kept copy is intact.
        for i in 100..400u32 {
            let m = msg(i, 90);
            kept.push_back((ring.push(&m), m));
        }
        assert!(ring.buf.len() > cap);
        let held: usize = kept.iter().map(|(_, m)| m.len()).sum();
        assert!(
            ring.buf.len() <= 4 * held.next_power_of_two(),
            "{} bytes for {held} kept",
            ring.buf.len()
        );
        for (at, m) in &kept {
            assert_eq!(&ring.get(*at, m.len())[..], &m[..]);
        }
        // Empty payloads cost nothing and read back empty.
        let at = ring.push(b"");
        assert!(ring.get(at, 0).is_empty());
    }

    /// An outbox whose channel 1 is reliable, ready to frame at once on it.
    fn reliable_outbox(now: Instant) -> Outbox {
        let reliable = ChannelConfig {
            reliable: true,
            ..ChannelConfig::default()
        };
        let config = Arc::new(QosConfig {
            channels: [(1u16, reliable)].into_iter().collect(),
            ..QosConfig::default()
        });
        let mut o = Outbox::new(config, now);
        assert_eq!(o.direct_allowed(1, None, None, now), Some(true));
        o
    }

    /// Messages queued by [`Outbox::queue_run`] (a run per stretch of one channel, pushed
    /// while they fit, the rest offered one by one) leave the outbox as offering each with
    /// [`Outbox::offer_with`] does: the same admissions, counts and frames, in the same
    /// order, across channels of two priorities, marks in messages and bytes, a reliable
    /// channel and polls in between. A channel that drops or has a time to live takes no run.
    #[test]
    fn a_queue_run_queues_as_offering_each_message_does() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            /// A run of messages on a channel, their lengths.
            Run(u16, Vec<usize>),
            Poll(usize),
        }
        let op = prop_oneof![
            3 => (1u16..4, proptest::collection::vec(0usize..300, 1..40))
                .prop_map(|(c, l)| Op::Run(c, l)),
            1 => (1usize..50).prop_map(Op::Poll),
        ];
        proptest!(ProptestConfig::with_cases(200), |(
            hwm in (1usize..30, 1usize..3000),
            ops in proptest::collection::vec(op, 1..40),
        )| {
            let now = Instant::now();
            let make = || {
                let chan = |priority, reliable| ChannelConfig {
                    snd_hwm_msgs: hwm.0,
                    snd_hwm_bytes: hwm.1,
                    priority,
                    reliable,
                    ..ChannelConfig::default()
                };
                let config = Arc::new(QosConfig {
                    channels: [(1u16, chan(10, false)), (2, chan(10, true)), (3, chan(200, false))]
                        .into_iter()
                        .collect(),
                    ..QosConfig::default()
                });
                Outbox::new(config, now)
            };
            let (mut each, mut runs) = (make(), make());
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Run(channel, lens) => {
                        let payloads: Vec<Bytes> = lens
                            .iter()
                            .map(|&len| {
                                n += 1;
                                let mut p = vec![n as u8; len];
                                p.extend(n.to_be_bytes());
                                Bytes::from(p)
                            })
                            .collect();
                        let want: Vec<bool> = payloads
                            .iter()
                            .map(|p| {
                                matches!(
                                    each.offer_with(channel, p.clone(), None, None, now),
                                    Admission::Queued
                                )
                            })
                            .collect();
                        let mut got = Vec::new();
                        let mut rest = payloads.iter();
                        if let Some(mut run) = runs.queue_run(channel, None, None, now) {
                            for p in rest.by_ref() {
                                if !run.fits(p.len()) {
                                    got.push(false);
                                    break;
                                }
                                run.push(p.clone());
                                got.push(true);
                            }
                        }
                        // (The message the run did not take is offered again, as a driver
                        // offers it: a Block channel's queue is still full for it.)
                        for p in rest {
                            let queued = matches!(
                                runs.offer_with(channel, p.clone(), None, None, now),
                                Admission::Queued
                            );
                            got.push(queued);
                        }
                        got.truncate(want.len());
                        prop_assert_eq!(&got, &want);
                    }
                    Op::Poll(k) => {
                        for _ in 0..k {
                            let a = each.poll(now, 256);
                            let b = runs.poll(now, 256);
                            prop_assert_eq!(
                                a.as_ref().map(|t| (t.header, t.payload.clone())),
                                b.as_ref().map(|t| (t.header, t.payload.clone()))
                            );
                        }
                    }
                }
                prop_assert_eq!((each.len(), each.bytes()), (runs.len(), runs.bytes()));
                for c in 1..4 {
                    prop_assert_eq!(each.queued(c), runs.queued(c));
                }
            }
            // Everything left comes out the same too.
            loop {
                let (a, b) = (each.poll(now, 256), runs.poll(now, 256));
                prop_assert_eq!(
                    a.as_ref().map(|t| (t.header, t.payload.clone())),
                    b.as_ref().map(|t| (t.header, t.payload.clone()))
                );
                if a.is_none() {
                    break;
                }
            }
        });
        // No run where each message needs more than a room check.
        let now = Instant::now();
        let chan = |backpressure, ttl| ChannelConfig {
            backpressure,
            ttl,
            ..ChannelConfig::default()
        };
        let config = Arc::new(QosConfig {
            channels: [
                (1u16, chan(Backpressure::DropNew, None)),
                (2, chan(Backpressure::DropOld, None)),
                (3, chan(Backpressure::FailFast, None)),
                (4, chan(Backpressure::Block, Some(Duration::from_secs(1)))),
            ]
            .into_iter()
            .collect(),
            ..QosConfig::default()
        });
        let mut o = Outbox::new(config, now);
        for c in 1..5 {
            assert!(o.queue_run(c, None, None, now).is_none(), "channel {c}");
        }
        assert!(o
            .queue_run(5, Some(Duration::from_secs(1)), None, now)
            .is_none());
        o.queue_run(5, None, Some(true), now)
            .expect("a Block channel")
            .push(Bytes::from_static(b"r"));
        let t = o.poll(now, 256).expect("the message queued by the run");
        let h = Header::decode(&t.header).unwrap();
        assert_ne!(h.flags & flags::RELIABLE, 0, "reliable as asked");
    }

    /// [`Outbox::poll_plain_run`] takes exactly the frames [`Outbox::poll`] would give next,
    /// in its order, with its headers, and leaves the outbox as polling them would: across
    /// channels of two priorities, a reliable one, one with a time to live, messages in
    /// fragments, and runs cut short by the taker.
    #[test]
    fn a_plain_run_takes_what_polling_would() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            Offer(u16, usize),
            Poll(usize),
            /// A plain run that takes at most this many frames.
            Run(usize),
        }
        let op = prop_oneof![
            6 => (1u16..5, 0usize..600).prop_map(|(c, l)| Op::Offer(c, l)),
            1 => (1usize..20).prop_map(Op::Poll),
            2 => (1usize..40).prop_map(Op::Run),
        ];
        const FRAME_MAX: usize = 256;
        proptest!(ProptestConfig::with_cases(300), |(ops in proptest::collection::vec(op, 1..80))| {
            let now = Instant::now();
            let make = || {
                let chan = |priority, reliable, ttl| ChannelConfig {
                    priority,
                    reliable,
                    ttl,
                    ..ChannelConfig::default()
                };
                let config = Arc::new(QosConfig {
                    channels: [
                        (1u16, chan(10, false, None)),
                        (2, chan(10, true, None)),
                        (3, chan(200, false, None)),
                        (4, chan(10, false, Some(Duration::from_secs(60)))),
                    ]
                    .into_iter()
                    .collect(),
                    ..QosConfig::default()
                });
                Outbox::new(config, now)
            };
            let frame = |t: Option<Transmit>| t.map(|t| (t.header, t.payload));
            let (mut each, mut runs) = (make(), make());
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Offer(channel, len) => {
                        n += 1;
                        let mut p = vec![n as u8; len];
                        p.extend(n.to_be_bytes());
                        let p = Bytes::from(p);
                        each.offer_with(channel, p.clone(), None, None, now);
                        runs.offer_with(channel, p, None, None, now);
                    }
                    Op::Poll(k) => {
                        for _ in 0..k {
                            prop_assert_eq!(frame(each.poll(now, FRAME_MAX)), frame(runs.poll(now, FRAME_MAX)));
                        }
                    }
                    Op::Run(k) => {
                        let mut got = Vec::new();
                        let taken = runs.poll_plain_run(FRAME_MAX, |h, p| {
                            if got.len() == k {
                                return false;
                            }
                            got.push((*h, Bytes::copy_from_slice(p)));
                            true
                        });
                        prop_assert_eq!(taken, got.len());
                        for (h, p) in got {
                            prop_assert_eq!(frame(each.poll(now, FRAME_MAX)), Some((h, p)));
                        }
                        for _ in taken..k {
                            prop_assert_eq!(frame(each.poll(now, FRAME_MAX)), frame(runs.poll(now, FRAME_MAX)));
                        }
                    }
                }
                prop_assert_eq!((each.len(), each.bytes()), (runs.len(), runs.bytes()));
                for c in 1..5 {
                    prop_assert_eq!(each.queued(c), runs.queued(c));
                }
            }
            loop {
                let (a, b) = (frame(each.poll(now, FRAME_MAX)), frame(runs.poll(now, FRAME_MAX)));
                prop_assert_eq!(&a, &b);
                if a.is_none() {
                    break;
                }
            }
        });
    }

    /// Numbering within what [`Outbox::quiet`] said (then checked, and asked again, past
    /// it: as `Session::number_next` does) numbers every message as checking each with
    /// [`Outbox::number_direct`] does: the same numbers, the same ack requests, the same
    /// refusals when a window is full, whatever the windows (the pipe's and the channel's,
    /// in messages and bytes), the lengths and the acks in between (after each of which the
    /// room is asked for again, as a driver's run of messages never spans one).
    #[test]
    fn numbering_within_the_quiet_room_numbers_as_checking_each_message() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            Send(usize),
            Ack(usize),
        }
        let op = prop_oneof![
            8 => (0usize..300).prop_map(Op::Send),
            1 => (0usize..64).prop_map(Op::Ack),
        ];
        let window = (1usize..40, prop_oneof![Just(usize::MAX), 1usize..4000]);
        proptest!(ProptestConfig::with_cases(300), |(
            pipe in window.clone(),
            chan in window,
            asks in any::<bool>(),
            ops in proptest::collection::vec(op, 1..200),
        )| {
            let now = Instant::now();
            let make = || {
                let ch = ChannelConfig {
                    reliable: true,
                    inflight_msgs: chan.0,
                    inflight_bytes: chan.1,
                    ..ChannelConfig::default()
                };
                let config = Arc::new(QosConfig {
                    channels: [(1u16, ch)].into_iter().collect(),
                    inflight_msgs: pipe.0,
                    inflight_bytes: pipe.1,
                    ..QosConfig::default()
                });
                let mut o = Outbox::new(config, now);
                o.set_ack_requests(asks);
                assert_eq!(o.direct_allowed(1, None, None, now), Some(true));
                o
            };
            let (mut each, mut quiet) = (make(), make());
            let mut room = quiet.quiet(1);
            let mut sent: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Send(len) => {
                        let want = each.number_direct(1, len);
                        let got = match quiet.number_quiet(1, len, &mut room) {
                            Some(seq) => Some((seq, false)),
                            None => {
                                let n = quiet.number_direct(1, len);
                                room = quiet.quiet(1);
                                n
                            }
                        };
                        prop_assert_eq!(got, want, "a message of {} bytes", len);
                        if let Some((seq, _)) = want {
                            let payload = vec![0u8; len];
                            each.record_direct_copy(seq, 1, &payload, now);
                            quiet.record_direct_copy(seq, 1, &payload, now);
                            sent.push(seq);
                        }
                    }
                    Op::Ack(k) => {
                        if sent.is_empty() {
                            continue;
                        }
                        let cum = crate::reliable::narrow(sent[k % sent.len()]);
                        each.on_ack(cum, &[], now).expect("ack");
                        quiet.on_ack(cum, &[], now).expect("ack");
                        room = quiet.quiet(1);
                    }
                }
                prop_assert_eq!(quiet.inflight(), each.inflight());
            }
        });
    }

    /// An ack settles runs of records channel by channel: the pipe's and every channel's
    /// window count exactly what is still unacknowledged, however the channels interleave.
    #[test]
    fn acks_settle_interleaved_channels_window_by_window() {
        let now = Instant::now();
        let reliable = ChannelConfig {
            reliable: true,
            ..ChannelConfig::default()
        };
        let config = Arc::new(QosConfig {
            channels: [
                (1u16, reliable.clone()),
                (2, reliable.clone()),
                (3, reliable),
            ]
            .into_iter()
            .collect(),
            ..QosConfig::default()
        });
        let mut o = Outbox::new(config, now);
        let order = [1u16, 1, 2, 1, 3, 3, 3, 2, 2, 1, 3, 1];
        for (i, &c) in order.iter().enumerate() {
            assert_eq!(o.direct_allowed(c, None, None, now), Some(true));
            let len = 10 + i;
            let (seq, _) = o.number_direct(c, len).expect("window room");
            o.record_direct_copy(seq, c, &vec![i as u8; len], now);
        }
        // What each channel and the pipe hold after the first `k` are acknowledged.
        let held = |k: usize| {
            let mut per = std::collections::BTreeMap::new();
            let (mut n, mut b) = (0, 0);
            for (i, &c) in order.iter().enumerate().skip(k) {
                let e = per.entry(c).or_insert((0usize, 0usize));
                e.0 += 1;
                e.1 += 10 + i;
                n += 1;
                b += 10 + i;
            }
            (per, (n, b))
        };
        for k in [0usize, 2, 5, 9, 12] {
            if k > 0 {
                o.on_ack(k as u32, &[], now).unwrap();
            }
            let (per, pipe) = held(k);
            assert_eq!(o.inflight(), pipe, "after {k}");
            for c in 1..=3u16 {
                let ch = o.chans.get_mut(c).expect("a channel");
                let want = per.get(&c).copied().unwrap_or((0, 0));
                assert_eq!((ch.inflight_msgs, ch.inflight_bytes), want, "{c} after {k}");
            }
        }
    }

    /// A batch of equal messages (one channel, one length, one instant) is one record, and
    /// an ack in its middle trims it; anything else starts a record of its own.
    #[test]
    fn a_batch_of_equal_copies_is_one_record_that_acks_trim() {
        let now = Instant::now();
        let mut o = reliable_outbox(now);
        let send = |o: &mut Outbox, len: usize, at: Instant| {
            let (seq, _) = o.number_direct(1, len).expect("window room");
            o.record_direct_copy(seq, 1, &vec![seq as u8; len], at);
        };
        for _ in 0..1000 {
            send(&mut o, 64, now);
        }
        assert_eq!((o.rel.unacked.len(), o.unacked()), (1, 1000));
        assert!(o.on_ack(500, &[], now).unwrap());
        assert_eq!((o.rel.unacked.len(), o.unacked()), (1, 500));
        assert_eq!(o.inflight(), (500, 500 * 64));
        assert_eq!(
            o.rel.ring.head,
            500 * 64,
            "the ring lets the acked copies go"
        );
        // Another length, another instant, a handle: new records.
        send(&mut o, 65, now);
        send(&mut o, 65, now + Duration::from_millis(1));
        let (seq, _) = o.number_direct(1, 600).expect("window room");
        o.record_direct(seq, 1, Bytes::from(vec![1; 600]), now);
        send(&mut o, 65, now);
        assert_eq!((o.rel.unacked.len(), o.unacked()), (5, 504));
        assert!(o.on_ack(1004, &[], now).unwrap());
        assert_eq!((o.rel.unacked.len(), o.inflight()), (0, (0, 0)));
    }

    /// Runs of records behave exactly as one record per message would: random batches on two
    /// channels, of equal or mixed lengths, copies and handles, cumulative and selective acks
    /// (cutting runs anywhere) and timeouts, against a model that keeps every message on its
    /// own, and new connections (resumed or not). The windows, the count of unacknowledged
    /// messages and what a timeout or a new connection sends again (numbers and bytes) agree
    /// after every step.
    #[test]
    fn runs_of_records_ack_sack_retransmit_and_resume_as_single_messages_would() {
        use std::collections::BTreeMap;
        let reliable = ChannelConfig {
            reliable: true,
            ..ChannelConfig::default()
        };
        for seed in 0..400u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut now = Instant::now();
            let config = Arc::new(QosConfig {
                channels: [(1u16, reliable.clone()), (2, reliable.clone())]
                    .into_iter()
                    .collect(),
                ..QosConfig::default()
            });
            let mut o = Outbox::new(config, now);
            // Unacknowledged messages: number -> (channel, payload, sacked, sent at).
            let mut model: BTreeMap<u64, (u16, Vec<u8>, bool, Instant)> = BTreeMap::new();
            let payload = |seq: u64, len: usize| -> Vec<u8> {
                (0..len).map(|k| (seq * 31 + k as u64) as u8).collect()
            };
            for step in 0..120 {
                match rng.u8(0..10) {
                    0..=4 => {
                        let c = rng.u16(1..=2);
                        let mixed = rng.u8(0..4) == 0;
                        let mut len = [0, 8, 64, 64, 512, 700][rng.usize(..6)];
                        // A batch's run framed in place (`KeepRun`): numbered and kept a run at
                        // a time; a message the run does not take is numbered on its own, and
                        // a new run starts after it.
                        let runs = rng.u8(0..3) == 0;
                        let mut left = rng.usize(1..40);
                        while left > 0 {
                            assert_eq!(o.direct_allowed(c, None, None, now), Some(true));
                            if runs {
                                let mut quiet = o.quiet(c);
                                let first = o.next_seq();
                                let mut took = Vec::new();
                                let mut run = o.keep_run(c, true, &mut quiet, now);
                                while left > 0 {
                                    if mixed {
                                        len = rng.usize(0..600);
                                    }
                                    let p = payload(first + took.len() as u64, len);
                                    let Some(seq) = run.take(&p) else {
                                        break;
                                    };
                                    assert_eq!(seq, first + took.len() as u64);
                                    took.push(p);
                                    left -= 1;
                                }
                                drop(run);
                                // (What the run counted down is what the outbox now says.)
                                assert_eq!(quiet, o.quiet(c), "seed {seed} step {step}");
                                for (i, p) in took.into_iter().enumerate() {
                                    model.insert(first + i as u64, (c, p, false, now));
                                }
                                if left == 0 {
                                    break;
                                }
                            } else if mixed {
                                len = rng.usize(0..600);
                            }
                            let Some((seq, _)) = o.number_direct(c, len) else {
                                break;
                            };
                            let p = payload(seq, len);
                            if len > KEEP_COPY_MAX || rng.u8(0..8) == 0 {
                                o.record_direct(seq, c, Bytes::from(p.clone()), now);
                            } else {
                                o.record_direct_copy(seq, c, &p, now);
                            }
                            model.insert(seq, (c, p, false, now));
                            left -= 1;
                        }
                    }
                    5..=6 => {
                        let (acked, last) = (o.rel.acked, o.next_seq() - 1);
                        let cum = rng.u64(acked..=last);
                        let mut ranges = Vec::new();
                        for _ in 0..rng.usize(0..4) {
                            if cum < last {
                                let a = rng.u64(cum + 1..=last);
                                let b = rng.u64(a..=last.min(a + 20));
                                ranges.push((a as u32, b as u32));
                            }
                        }
                        let before = model.len();
                        model.retain(|&s, _| s > cum);
                        for &(a, b) in &ranges {
                            for (_, m) in model.range_mut(u64::from(a)..=u64::from(b)) {
                                m.2 = true;
                            }
                        }
                        let progress = o.on_ack(cum as u32, &ranges, now).unwrap();
                        assert_eq!(progress, model.len() < before, "seed {seed} step {step}");
                    }
                    7 => now += Duration::from_millis(rng.u64(0..3)),
                    9 if rng.bool() => {
                        // A new connection on which the peer starts afresh: every message
                        // unacknowledged (selectively acked or not) goes again as a new one,
                        // numbered from 1 in the order they are sent.
                        let n = o.resume(0, false, now).unwrap();
                        assert_eq!(n, model.len(), "seed {seed} step {step}");
                        let mut again = Vec::new();
                        while let Some(t) = o.poll(now, 1 << 20) {
                            let h = crate::wire::Header::decode(&t.header).unwrap();
                            again.push((u64::from(h.seq), h.channel, t.payload.to_vec()));
                        }
                        let seqs: Vec<u64> = again.iter().map(|a| a.0).collect();
                        assert_eq!(seqs, (1..=model.len() as u64).collect::<Vec<_>>());
                        for c in 1..=2u16 {
                            let got = again.iter().filter(|a| a.1 == c).map(|a| &a.2);
                            let want = model.values().filter(|m| m.0 == c).map(|m| &m.1);
                            assert!(got.eq(want), "seed {seed} step {step} channel {c}");
                        }
                        model = again
                            .into_iter()
                            .map(|(s, c, p)| (s, (c, p, false, now)))
                            .collect();
                    }
                    _ => {
                        if rng.bool() {
                            o.retransmit(now);
                        } else {
                            // A new connection on which the peer resumed the session, having
                            // every message up to `cum`: the others go again, with their
                            // numbers, but those it acked selectively.
                            let cum = rng.u64(o.rel.acked..o.next_seq());
                            model.retain(|&s, _| s > cum);
                            o.resume(cum as u32, true, now).unwrap();
                        }
                        let mut again = Vec::new();
                        while let Some(t) = o.poll(now, 1 << 20) {
                            let h = crate::wire::Header::decode(&t.header).unwrap();
                            again.push((u64::from(h.seq), h.channel, t.payload.to_vec()));
                        }
                        again.sort_by_key(|a| a.0);
                        let want: Vec<_> = model
                            .iter()
                            .filter(|(_, m)| !m.2)
                            .map(|(&s, m)| (s, m.0, m.1.clone()))
                            .collect();
                        assert_eq!(again, want, "seed {seed} step {step}: sent again");
                        for m in model.values_mut().filter(|m| !m.2) {
                            m.3 = now;
                        }
                    }
                }
                assert_eq!(o.unacked(), model.len(), "seed {seed} step {step}");
                let oldest = model.values().filter(|m| !m.2).map(|m| m.3).min();
                assert_eq!(o.oldest_unacked_at(), oldest, "seed {seed} step {step}");
                let bytes = |c: Option<u16>| {
                    let mine = model.values().filter(|m| c.is_none_or(|c| m.0 == c));
                    mine.fold((0, 0), |(n, b), m| (n + 1, b + m.1.len()))
                };
                assert_eq!(o.inflight(), bytes(None), "seed {seed} step {step}");
                for c in 1..=2u16 {
                    let got = o
                        .chans
                        .get_mut(c)
                        .map_or((0, 0), |ch| (ch.inflight_msgs, ch.inflight_bytes));
                    assert_eq!(got, bytes(Some(c)), "seed {seed} step {step} channel {c}");
                }
                // Every record's numbers are ascending and apart.
                let recs = &o.rel.unacked;
                assert!(recs
                    .iter()
                    .zip(recs.iter().skip(1))
                    .all(|(a, b)| a.last() < b.seq));
            }
            // The pipe ends: every unacknowledged message is counted lost on its channel.
            o.take_counts(&mut |_, _| {});
            o.clear();
            let mut lost = BTreeMap::new();
            o.take_counts(&mut |c, counts| {
                lost.insert(c, counts.lost);
            });
            for c in 1..=2u16 {
                let want = model.values().filter(|m| m.0 == c).count() as u64;
                let got = lost.get(&c).copied().unwrap_or(0);
                assert_eq!(got, want, "seed {seed}: lost on channel {c}");
            }
        }
    }

    #[test]
    fn copies_kept_for_retransmission_come_back_intact_and_go_with_their_acks() {
        let now = Instant::now();
        let mut o = reliable_outbox(now);
        // Every 7th is larger than KEEP_COPY_MAX: kept as a handle on its bytes.
        let payload = |i: u64| -> Vec<u8> {
            let len = if i % 7 == 0 { 600 } else { 100 } + i as usize;
            (0..len).map(|k| (i + k as u64) as u8).collect()
        };
        // Copies and handles mixed, in number order.
        for i in 1..=300u64 {
            let (seq, _) = o.number_direct(1, payload(i).len()).expect("window room");
            assert_eq!(seq, i);
            if i % 7 == 0 {
                o.record_direct(seq, 1, Bytes::from(payload(i)), now);
            } else {
                o.record_direct_copy(seq, 1, &payload(i), now);
            }
        }
        assert_eq!(o.unacked(), 300);
        // Acks let the ring go up to the oldest copy still unacknowledged.
        assert!(o.on_ack(120, &[], now).unwrap());
        assert_eq!(o.unacked(), 180);
        let oldest = o.rel.unacked.iter().find_map(|s| match s.payload {
            Kept::Ring { at, .. } => Some(at),
            Kept::Bytes(_) => None,
        });
        assert_eq!(Some(o.rel.ring.head), oldest);
        // A timeout: every unacknowledged message goes again, with its own bytes.
        o.retransmit(now);
        assert_eq!(o.unacked(), 0);
        assert_eq!(o.rel.ring.head, o.rel.ring.tail, "nothing kept any more");
        let mut seqs = Vec::new();
        while let Some(t) = o.poll(now, 1 << 20) {
            let h = crate::wire::Header::decode(&t.header).unwrap();
            let i = u64::from(h.seq);
            assert_eq!(&t.payload[..], &payload(i)[..], "message {i}");
            seqs.push(i);
        }
        assert_eq!(seqs, (121..=300).collect::<Vec<_>>());
        // Sent again: recorded again, and acknowledged at last.
        assert_eq!(o.unacked(), 180);
        assert!(o.on_ack(300, &[], now).unwrap());
        assert_eq!((o.unacked(), o.inflight()), (0, (0, 0)));
    }

    #[test]
    fn small_payloads_kept_by_handle_are_copied_and_their_bytes_let_go() {
        let now = Instant::now();
        let mut o = reliable_outbox(now);
        // One shared buffer, as a read chunk or a spill buffer is: a small message's handle
        // on it is let go when the message is recorded; a large one's is kept.
        let shared = Bytes::from((0..=255u8).cycle().take(4096).collect::<Vec<_>>());
        let small = shared.slice(10..74);
        let large = shared.slice(100..100 + KEEP_COPY_MAX + 1);
        for (i, p) in [small.clone(), large.clone(), small.clone()]
            .into_iter()
            .enumerate()
        {
            let (seq, _) = o.number_direct(1, p.len()).expect("window room");
            assert_eq!(seq, i as u64 + 1);
            o.record_direct(seq, 1, p, now);
        }
        let kinds: Vec<bool> = o
            .rel
            .unacked
            .iter()
            .map(|s| matches!(s.payload, Kept::Ring { .. }))
            .collect();
        assert_eq!(
            kinds,
            [true, false, true],
            "copies, and a handle for the large one"
        );
        drop(large);
        assert!(
            !shared.is_unique(),
            "the large message still holds the buffer"
        );
        // Acked: the handle goes, and the buffer is the caller's alone again.
        assert!(o.on_ack(2, &[], now).unwrap());
        drop(small);
        assert!(shared.is_unique());
        // A timeout sends the copy again, intact.
        o.retransmit(now);
        let t = o.poll(now, 1 << 20).expect("the third message again");
        assert_eq!(&t.payload[..], &shared[10..74]);
    }
}
