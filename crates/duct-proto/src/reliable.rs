//! Reliable delivery: sequence numbers, the receiver's record of what arrived (dedup, acks),
//! and the sender's record of what is unacknowledged (see [`crate::qos::Outbox`]).
//!
//! Reliable messages are numbered per pipe and direction from 1, in the order their first
//! frame is sent; every frame of a message carries its number in the header's `seq` (the low
//! 32 bits: both ends widen it to 64 bits against what they expect, so the numbers never wrap
//! in practice). The receiver acknowledges cumulatively (every number up to `ack` arrived) and
//! selectively (ranges above it: messages of different channels complete out of order when
//! their fragments interleave). Both records outlive a connection: a resumed session starts
//! from what the peer says it has (`last_received_seq` in HELLO and WELCOME), so nothing is
//! lost and duplicates are dropped by the receiver.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Most received numbers held above the cumulative ack (the sender's inflight window bounds
/// it; a peer that exceeds it is broken or hostile).
pub const MAX_OUT_OF_ORDER: usize = 65_536;
/// Frames received before an ACK goes out at once.
pub const ACK_EVERY: u32 = 256;
/// Frames received before an ACK goes out at once when the peer asks for acks
/// (`ACK_REQUEST` agreed): it asks when half its window is in flight, so the receiver need
/// not ack often on its own. Half the reference sender's window (16384 messages): where it
/// asks anyway.
pub const ACK_EVERY_ON_REQUEST: u32 = 8192;
/// Longest wait before an ACK goes out.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// The 64-bit number closest to `expected` whose low 32 bits are `wire`.
#[inline]
pub fn widen(wire: u32, expected: u64) -> u64 {
    const SPAN: u64 = 1 << 32;
    let cand = (expected & !(SPAN - 1)) | u64::from(wire);
    let mut best = cand;
    let dist = |a: u64| a.abs_diff(expected);
    if cand >= SPAN && dist(cand - SPAN) < dist(best) {
        best = cand - SPAN;
    }
    if let Some(up) = cand.checked_add(SPAN) {
        if dist(up) < dist(best) {
            best = up;
        }
    }
    best
}

/// The low 32 bits that travel on the wire.
#[inline]
pub fn narrow(seq: u64) -> u32 {
    seq as u32
}

/// What the receiving side of a pipe has of the peer's reliable messages.
#[derive(Clone, Debug, Default)]
pub struct RecvState {
    /// Every number up to this one arrived.
    cum: u64,
    /// Numbers above `cum` that arrived.
    above: BTreeSet<u64>,
    /// Duplicates dropped.
    duplicates: u64,
    /// Frames received since the last ack was sent.
    unacked_frames: u32,
    /// An ack is owed (something arrived since the last one).
    owed: bool,
    /// When the owed ack must go at the latest.
    due: Option<Instant>,
    /// The peer asks for acks (`ACK_REQUEST` agreed): ack after [`ACK_EVERY_ON_REQUEST`]
    /// frames rather than [`ACK_EVERY`].
    on_request: bool,
    /// The peer asked for an ack (a frame with `ACK_REQUEST`) since the last one.
    asked: bool,
}

/// Reliable messages that arrived in order, counted by a caller that handles many frames at
/// once ([`RecvState::in_order`]) and recorded together ([`RecvState::arrive_in_order`]):
/// per message a comparison with the next number and a count in locals.
#[derive(Clone, Copy, Debug)]
pub struct InOrder {
    /// The number the next message must have to be taken (0: none is).
    next: u64,
    /// Messages taken and not yet recorded.
    n: u32,
    /// One of them asked for an ack.
    asked: bool,
}

impl InOrder {
    /// Nothing taken since the last record.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Takes the reliable message whose frame has the header flags `frame_flags` and the
    /// number `wire` (the header's `seq`) if it is the next in order: `true`, counted (it is
    /// new); `false`, nothing done: hand it to [`RecvState::arrive`] (after
    /// [`RecvState::arrive_in_order`] for those taken before it).
    #[inline(always)]
    pub fn takes(&mut self, wire: u32, frame_flags: u8) -> bool {
        if self.next == 0 || wire != self.next as u32 || self.n == u32::MAX {
            return false;
        }
        self.next += 1;
        self.n += 1;
        self.asked |= frame_flags & crate::wire::flags::ACK_REQUEST != 0;
        true
    }
}

/// What became of an arrived reliable message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// New: deliver it.
    New,
    /// Already received: drop it (counted).
    Duplicate,
}

impl RecvState {
    /// Every number up to this one arrived (0: none).
    pub fn cumulative(&self) -> u64 {
        self.cum
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Records the arrival of message `wire` (the header's `seq`).
    #[inline]
    pub fn arrive(&mut self, wire: u32, now: Instant) -> Result<Arrival, crate::Error> {
        self.owe(now);
        let next = self.cum + 1;
        if wire == next as u32 && self.above.is_empty() {
            // The next in order (its low bits are the next number's: `widen` would give that
            // number) with nothing held above (a stream's every message): no set to look
            // into.
            self.cum = next;
            return Ok(Arrival::New);
        }
        self.arrive_out_of_order(widen(wire, next))
    }

    /// A run of messages arriving in order, numbered on from the cumulative one, for a
    /// caller that handles many frames at once ([`InOrder::takes`], then
    /// [`RecvState::arrive_in_order`]); one that takes nothing while numbers are held
    /// above the cumulative one.
    #[inline]
    pub fn in_order(&self) -> InOrder {
        InOrder {
            next: if self.above.is_empty() {
                self.cum + 1
            } else {
                0
            },
            n: 0,
            asked: false,
        }
    }

    /// The messages `run` took arrived at `now` (each a frame of its own), as
    /// [`RecvState::arrive`] and [`RecvState::note_request`] would have recorded them one by
    /// one; `run` is left empty, ready to take the messages that follow.
    #[inline]
    pub fn arrive_in_order(&mut self, run: &mut InOrder, now: Instant) {
        if run.n == 0 {
            return;
        }
        debug_assert!(self.above.is_empty() && run.next == self.cum + 1 + u64::from(run.n));
        self.cum += u64::from(run.n);
        self.owe_n(run.n, now);
        if run.asked {
            self.note_request(crate::wire::flags::ACK_REQUEST);
        }
        run.n = 0;
        run.asked = false;
    }

    /// [`RecvState::arrive`] for a message that is not the next in order, or arrives while
    /// others are held above the cumulative number.
    #[inline(never)]
    fn arrive_out_of_order(&mut self, seq: u64) -> Result<Arrival, crate::Error> {
        if seq == 0 || seq <= self.cum || self.above.contains(&seq) {
            self.duplicates += 1;
            return Ok(Arrival::Duplicate);
        }
        if seq == self.cum + 1 {
            self.cum = seq;
            while self.above.remove(&(self.cum + 1)) {
                self.cum += 1;
            }
        } else {
            if self.above.len() >= MAX_OUT_OF_ORDER {
                return Err(crate::Error::Reliability(
                    "too many reliable messages out of order (the peer ignores its window)",
                ));
            }
            self.above.insert(seq);
        }
        Ok(Arrival::New)
    }

    /// A frame arrived (a fragment): an ack is owed after [`ACK_EVERY`] of them or
    /// [`ACK_DELAY`].
    #[inline]
    pub fn owe(&mut self, now: Instant) {
        self.owe_n(1, now);
    }

    /// [`RecvState::owe`] for `n` frames.
    #[inline]
    fn owe_n(&mut self, n: u32, now: Instant) {
        self.unacked_frames = self.unacked_frames.saturating_add(n);
        if !self.owed {
            self.owed = true;
            self.due = Some(now + ACK_DELAY);
        }
    }

    /// The peer asks for acks when it needs them (`ACK_REQUEST` agreed for this connection):
    /// acks go at once when asked, and otherwise after [`ACK_EVERY_ON_REQUEST`] frames.
    pub fn set_on_request(&mut self, on_request: bool) {
        self.on_request = on_request;
    }

    /// A reliable frame with the header flags `frame_flags` arrived: if it asks for an ack
    /// (`ACK_REQUEST`) and the peer was agreed to ask ([`RecvState::set_on_request`]), one
    /// goes at once.
    #[inline]
    pub fn note_request(&mut self, frame_flags: u8) {
        if self.on_request && frame_flags & crate::wire::flags::ACK_REQUEST != 0 {
            self.asked = true;
        }
    }

    /// Whether an ACK frame should go now: asked for, enough frames arrived since the last
    /// one ([`ACK_EVERY`], or [`ACK_EVERY_ON_REQUEST`] when the peer asks for acks), or the
    /// owed ack is due.
    #[inline]
    pub fn ack_now(&self, now: Instant) -> bool {
        let every = if self.on_request {
            ACK_EVERY_ON_REQUEST
        } else {
            ACK_EVERY
        };
        self.owed
            && (self.asked || self.unacked_frames >= every || self.due.is_some_and(|d| now >= d))
    }

    /// When an owed ACK is due.
    pub fn ack_due(&self) -> Option<Instant> {
        self.due.filter(|_| self.owed)
    }

    /// Whether an ack is owed.
    pub fn owed(&self) -> bool {
        self.owed
    }

    /// The ack went out (piggybacked or in an ACK frame). A piggybacked cumulative ack
    /// settles the debt only when nothing arrived out of order.
    pub fn acked(&mut self, with_ranges: bool) {
        if with_ranges || self.above.is_empty() {
            self.owed = false;
            self.due = None;
            self.unacked_frames = 0;
            self.asked = false;
        }
    }

    /// The selective ranges above the cumulative ack (at most `max`, lowest first), as wire
    /// numbers.
    pub fn ranges(&self, max: usize) -> Vec<(u32, u32)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &s in &self.above {
            match out.last_mut() {
                Some((_, last)) if *last + 1 == s => *last = s,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push((s, s));
                }
            }
        }
        out.into_iter()
            .map(|(a, b)| (narrow(a), narrow(b)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_picks_the_nearest() {
        assert_eq!(widen(5, 1), 5);
        assert_eq!(widen(0xffff_fffe, 1 << 32), 0xffff_fffe);
        assert_eq!(widen(2, (1 << 32) - 3), (1 << 32) + 2);
        assert_eq!(widen(7, 0), 7);
        for s in [1u64, 1000, (1 << 32) - 1, 1 << 32, (1 << 33) + 17] {
            assert_eq!(widen(narrow(s), s), s);
            assert_eq!(widen(narrow(s), s.saturating_sub(1000)), s);
            assert_eq!(widen(narrow(s), s + 1000), s);
        }
    }

    /// Messages taken by an `InOrder` run and recorded together leave the receiving state
    /// exactly as arriving one by one does: random streams of in-order messages, duplicates,
    /// gaps and gap fills, some asking for acks, with the run recorded at random points (as
    /// a data run records it before a frame that goes the general way) and acks sent.
    #[test]
    fn in_order_runs_record_what_single_arrivals_would() {
        use crate::wire::flags::{ACK_REQUEST, RELIABLE};
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut now = Instant::now();
            let (mut one, mut runs) = (RecvState::default(), RecvState::default());
            let on_request = rng.bool();
            one.set_on_request(on_request);
            runs.set_on_request(on_request);
            let mut run = runs.in_order();
            let mut next = 1u64;
            let mut missing = Vec::new();
            let mut taken = 0;
            for step in 0..400 {
                let seq = match rng.u8(0..20) {
                    0 | 1 if next > 1 => rng.u64(1..next), // a duplicate (or a gap's fill)
                    2 => {
                        // Ahead: a gap.
                        let skip = rng.u64(1..4);
                        missing.extend(next..next + skip);
                        next + skip
                    }
                    3..=6 if !missing.is_empty() => missing.swap_remove(rng.usize(..missing.len())),
                    _ => next,
                };
                missing.retain(|&m| m != seq);
                next = next.max(seq + 1);
                let flags = RELIABLE | if rng.u8(0..20) == 0 { ACK_REQUEST } else { 0 };
                let fresh = one.arrive(narrow(seq), now).unwrap() == Arrival::New;
                one.note_request(flags);
                if run.takes(narrow(seq), flags) {
                    assert!(fresh, "seed {seed} step {step}: a duplicate taken");
                    taken += 1;
                } else {
                    runs.arrive_in_order(&mut run, now);
                    let again = runs.arrive(narrow(seq), now).unwrap() == Arrival::New;
                    runs.note_request(flags);
                    assert_eq!(again, fresh, "seed {seed} step {step}");
                    run = runs.in_order();
                }
                if rng.u8(0..8) == 0 {
                    runs.arrive_in_order(&mut run, now);
                    run = runs.in_order();
                    assert_eq!(
                        format!("{one:?}"),
                        format!("{runs:?}"),
                        "seed {seed} step {step}"
                    );
                    if one.ack_now(now) {
                        assert!(runs.ack_now(now));
                        one.acked(true);
                        runs.acked(true);
                    }
                }
                if rng.u8(0..30) == 0 {
                    // (A run's messages arrived at one time: a data run's, recorded in it.)
                    runs.arrive_in_order(&mut run, now);
                    run = runs.in_order();
                    now += ACK_DELAY;
                }
            }
            runs.arrive_in_order(&mut run, now);
            assert_eq!(format!("{one:?}"), format!("{runs:?}"), "seed {seed}");
            assert!(taken > 0, "seed {seed}: the run took nothing");
        }
    }

    #[test]
    fn out_of_order_arrivals_close_the_gap() {
        let now = Instant::now();
        let mut r = RecvState::default();
        assert_eq!(r.arrive(1, now).unwrap(), Arrival::New);
        assert_eq!(r.arrive(3, now).unwrap(), Arrival::New);
        assert_eq!(r.arrive(4, now).unwrap(), Arrival::New);
        assert_eq!(r.arrive(6, now).unwrap(), Arrival::New);
        assert_eq!(r.cumulative(), 1);
        assert_eq!(r.ranges(32), vec![(3, 4), (6, 6)]);
        assert_eq!(r.ranges(1), vec![(3, 4)]);
        assert_eq!(r.arrive(3, now).unwrap(), Arrival::Duplicate);
        assert_eq!(r.arrive(1, now).unwrap(), Arrival::Duplicate);
        assert_eq!(r.arrive(2, now).unwrap(), Arrival::New);
        assert_eq!(r.cumulative(), 4);
        assert_eq!(r.ranges(32), vec![(6, 6)]);
        assert_eq!(r.duplicates(), 2);
    }

    #[test]
    fn arrivals_in_order_and_duplicates_across_the_32_bit_wrap() {
        let now = Instant::now();
        let mut r = RecvState {
            cum: (1 << 32) - 3,
            ..RecvState::default()
        };
        for n in (1u64 << 32) - 2..(1 << 32) + 3 {
            assert_eq!(r.arrive(narrow(n), now).unwrap(), Arrival::New, "{n}");
            assert_eq!(r.cumulative(), n);
        }
        // Numbers just below, by their low bits: duplicates; above a gap: held.
        for n in [(1u64 << 32) - 1, 1 << 32, (1 << 32) + 2] {
            assert_eq!(r.arrive(narrow(n), now).unwrap(), Arrival::Duplicate, "{n}");
        }
        assert_eq!(r.arrive(narrow((1 << 32) + 5), now).unwrap(), Arrival::New);
        assert_eq!(r.ranges(4), vec![(5, 5)]); // (on the wire: the low bits)
        assert_eq!(r.arrive(narrow((1 << 32) + 4), now).unwrap(), Arrival::New);
        assert_eq!(r.arrive(narrow((1 << 32) + 3), now).unwrap(), Arrival::New);
        assert_eq!(r.cumulative(), (1 << 32) + 5);
        assert!(r.ranges(4).is_empty());
        assert_eq!(r.duplicates(), 3);
    }

    #[test]
    fn acks_are_owed_after_a_count_or_a_delay() {
        let now = Instant::now();
        let mut r = RecvState::default();
        r.arrive(1, now).unwrap();
        assert!(r.owed() && !r.ack_now(now));
        assert_eq!(r.ack_due(), Some(now + ACK_DELAY));
        assert!(r.ack_now(now + ACK_DELAY));
        r.acked(false);
        assert!(!r.owed());
        for i in 0..ACK_EVERY {
            r.arrive(2 + i, now).unwrap();
        }
        assert!(r.ack_now(now));
        // A gap: a piggybacked cumulative ack does not settle it; ranges do.
        r.acked(true);
        r.arrive(ACK_EVERY + 100, now).unwrap();
        r.acked(false);
        assert!(r.owed());
        r.acked(true);
        assert!(!r.owed());
    }
}
