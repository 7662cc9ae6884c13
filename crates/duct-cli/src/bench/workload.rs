//! The two workloads, written once for every system: the measuring end's loops
//! ([`drive_pingpong`], [`drive_stream`]) and the peer's ([`serve_echo`],
//! [`serve_stream`]), over the [`MsgConn`] trait that duct and the raw baseline implement.
//!
//! Sharing the loops keeps the measurement identical for both systems: the same clock
//! reads, the same histogram, the same end-of-run signal. That signal is in-band: the
//! first payload byte is 0 on every message but the last, which carries 1, so the peer
//! needs no message count and `--duration` works the same as `--messages`.
//!
//! Allocations are counted between two snapshots of the process-wide counting allocator,
//! taken at the edges of the measured phase; nothing in these loops allocates there.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::spec::Amount;
use crate::error::{bail, Result};

/// The payload byte that marks an ordinary message.
pub const FLAG_MORE: u8 = 0;
/// The payload byte that marks the last message of a run.
pub const FLAG_LAST: u8 = 1;

/// One connection of the system under test, as the workloads see it.
///
/// Every message has the run's fixed size; a message of another size is a protocol error.
/// The connection owns two prebuilt payloads (ordinary and last) and sends those, so
/// sending allocates nothing on the benchmark's side (but for duct with `--alloc`, which
/// builds each message with `Pipe::alloc`: see [`crate::bench::duct_conn`]).
pub trait MsgConn {
    /// Sends one message, flagged last if `last`, and flushes it onto the wire.
    fn send_one(&mut self, last: bool) -> Result<()>;
    /// Receives one message; returns whether it was flagged last.
    fn recv_one(&mut self) -> Result<bool>;
    /// Receives one message and sends it back as it came; returns whether it was flagged
    /// last.
    fn echo_one(&mut self) -> Result<bool>;
    /// Sends `n` messages, the final one flagged last if `last`; may leave them buffered
    /// until [`MsgConn::flush`].
    fn send_many(&mut self, n: usize, last: bool) -> Result<()>;
    /// Pushes out whatever `send_many` left buffered.
    fn flush(&mut self) -> Result<()>;
    /// Receives one message or more (as many as the system hands over in one call);
    /// returns how many, and whether the last of the run was among them.
    fn recv_some(&mut self) -> Result<(u64, bool)>;
    /// Called by the measuring end's loops just before the measured phase starts (before its
    /// allocation snapshot): duct's `--alloc` runs take their `PipeStats` there. Nothing by
    /// default.
    fn measured_phase_starts(&mut self) {}
}

/// What the measuring end of a ping-pong run saw.
#[derive(Debug)]
pub struct PingPongOutcome {
    /// Round-trip times of the measured phase, in ns.
    pub rtt: Histogram<u64>,
    /// Round trips measured.
    pub messages: u64,
    /// From the first measured send to the last reply.
    pub elapsed: Duration,
    /// Allocations in the measured phase (on this process).
    pub allocs: u64,
}

/// What the sending end of a stream run did.
#[derive(Debug, Clone, Copy)]
pub struct StreamSendOutcome {
    /// Messages sent in the measured phase.
    pub messages: u64,
    /// Allocations in the measured phase (on this process).
    pub allocs: u64,
}

/// What the peer measured; travels back to the measuring end as a `done` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerReport {
    /// Messages of the measured phase that reached the peer.
    pub messages: u64,
    /// Stream: messages that arrived after the reference instant, so that
    /// `rate_messages / elapsed_ns` is the receive rate; 0 for ping-pong. Mixed: the bulk
    /// messages received over `elapsed_ns` (see [`crate::bench::mixed::serve`]).
    pub rate_messages: u64,
    /// Stream: from the receipt of the first measured message to the receipt of the last.
    /// Mixed: from the first measured ping to the last.
    pub elapsed_ns: u64,
    /// Allocations in the measured phase (on the peer's process).
    pub allocs: u64,
    /// Scale (Linux): the peer process's `VmRSS`, in bytes, before it dialed its pipes.
    pub rss_before: Option<u64>,
    /// Scale (Linux): the same after its traffic, every pipe still open.
    pub rss_after: Option<u64>,
    /// Scale (Linux): the peer process's threads of duct's own (see
    /// [`crate::bench::scale::ThreadCount`]), after its traffic.
    pub threads_duct: Option<u64>,
}

/// The part of a job that the loops need.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages before the measured phase.
    pub warmup: u64,
    /// How much to measure.
    pub amount: Amount,
    /// Stream: messages per `send_many` call (and so per duct `send_batch`).
    pub batch: usize,
}

/// A histogram for round-trip times: 1 ns to 60 s, 3 significant figures, preallocated so
/// that recording never allocates.
pub fn new_rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Allocations of the whole process so far (the counting global allocator's).
pub fn alloc_count() -> u64 {
    duct_sys::alloc_count::snapshot().allocations()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The measuring end of ping-pong: `warmup` round trips unrecorded, then the measured
/// ones, each timed from just before the send to just after the reply.
pub fn drive_pingpong<C: MsgConn>(conn: &mut C, plan: &Plan) -> Result<PingPongOutcome> {
    // Allocated before the warmup: the peer's measured phase starts when the warmup ends
    // and, with both ends in one process, would count this allocation.
    let mut rtt = new_rtt_histogram();
    for _ in 0..plan.warmup {
        conn.send_one(false)?;
        if conn.recv_one()? {
            bail!("the peer flagged a warmup reply as the last message");
        }
    }
    let mut messages = 0u64;
    conn.measured_phase_starts();
    let allocs_before = alloc_count();
    let start = Instant::now();
    loop {
        let sent_at = Instant::now();
        let last = match plan.amount {
            Amount::Messages(n) => messages + 1 >= n,
            Amount::Duration(d) => sent_at.duration_since(start) >= d,
        };
        conn.send_one(last)?;
        let echoed_last = conn.recv_one()?;
        let rtt_ns = nanos(sent_at.elapsed());
        rtt.saturating_record(rtt_ns.max(1));
        messages += 1;
        if echoed_last != last {
            bail!("the reply's last-message flag differs from the request's");
        }
        if last {
            break;
        }
    }
    let elapsed = start.elapsed();
    let allocs = alloc_count().wrapping_sub(allocs_before);
    Ok(PingPongOutcome {
        rtt,
        messages,
        elapsed,
        allocs,
    })
}

/// The peer of ping-pong: sends every message back until the one flagged last.
pub fn serve_echo<C: MsgConn>(conn: &mut C, warmup: u64) -> Result<PeerReport> {
    let mut count = 0u64;
    let mut allocs_before = alloc_count();
    loop {
        if count == warmup {
            allocs_before = alloc_count();
        }
        let last = conn.echo_one()?;
        count += 1;
        if last {
            break;
        }
    }
    let allocs = alloc_count().wrapping_sub(allocs_before);
    Ok(PeerReport {
        messages: count.saturating_sub(warmup),
        rate_messages: 0,
        elapsed_ns: 0,
        allocs,
        ..PeerReport::default()
    })
}

/// The sending end of stream: `warmup` messages, then the measured ones, in calls of
/// `plan.batch` messages; flushes at the end. The receive rate is the peer's to measure.
pub fn drive_stream<C: MsgConn>(conn: &mut C, plan: &Plan) -> Result<StreamSendOutcome> {
    let batch = plan.batch.max(1) as u64;
    let mut sent = 0u64;
    while sent < plan.warmup {
        let n = batch.min(plan.warmup - sent);
        conn.send_many(n as usize, false)?;
        sent += n;
    }
    conn.measured_phase_starts();
    let allocs_before = alloc_count();
    let start = Instant::now();
    let mut messages = 0u64;
    loop {
        let (n, last) = match plan.amount {
            Amount::Messages(total) => {
                let n = batch.min(total.saturating_sub(messages)).max(1);
                (n, messages + n >= total)
            }
            Amount::Duration(d) => (batch, start.elapsed() >= d),
        };
        conn.send_many(n as usize, last)?;
        messages += n;
        if last {
            break;
        }
    }
    conn.flush()?;
    let allocs = alloc_count().wrapping_sub(allocs_before);
    Ok(StreamSendOutcome { messages, allocs })
}

/// The receiving end of stream, which measures the rate.
///
/// The reference instant is the receipt of the call that brings in the first measured
/// message (the one after `warmup`); the rate counts the messages received after it, up to
/// and including the last, over the time from the reference to the receipt of the last.
/// So a batch that straddles the warmup boundary does not inflate the rate.
pub fn serve_stream<C: MsgConn>(conn: &mut C, warmup: u64) -> Result<PeerReport> {
    let mut count = 0u64;
    let mut last;
    loop {
        let (n, l) = conn.recv_some()?;
        count += n;
        last = l;
        if count > warmup || last {
            break;
        }
    }
    let reference = Instant::now();
    let allocs_before = alloc_count();
    let counted_at_reference = count;
    while !last {
        let (n, l) = conn.recv_some()?;
        count += n;
        last = l;
    }
    let elapsed_ns = nanos(reference.elapsed());
    let allocs = alloc_count().wrapping_sub(allocs_before);
    Ok(PeerReport {
        messages: count.saturating_sub(warmup),
        rate_messages: count - counted_at_reference,
        elapsed_ns,
        allocs,
        ..PeerReport::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory loopback: what is sent comes back (for ping-pong), or a scripted
    /// inbox (for stream).
    struct Loopback {
        inbox: VecDeque<bool>,
        sent: Vec<bool>,
        chunk: usize,
    }

    impl MsgConn for Loopback {
        fn send_one(&mut self, last: bool) -> Result<()> {
            self.sent.push(last);
            self.inbox.push_back(last);
            Ok(())
        }
        fn recv_one(&mut self) -> Result<bool> {
            Ok(self.inbox.pop_front().expect("message"))
        }
        fn echo_one(&mut self) -> Result<bool> {
            let m = self.recv_one()?;
            self.sent.push(m);
            Ok(m)
        }
        fn send_many(&mut self, n: usize, last: bool) -> Result<()> {
            for i in 0..n {
                self.sent.push(last && i + 1 == n);
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn recv_some(&mut self) -> Result<(u64, bool)> {
            let mut n = 0;
            let mut last = false;
            while n < self.chunk {
                let Some(m) = self.inbox.pop_front() else {
                    break;
                };
                n += 1;
                last |= m;
            }
            Ok((n as u64, last))
        }
    }

    fn conn(inbox: impl IntoIterator<Item = bool>, chunk: usize) -> Loopback {
        Loopback {
            inbox: inbox.into_iter().collect(),
            sent: Vec::new(),
            chunk,
        }
    }

    #[test]
    fn pingpong_counts_measured_round_trips_only() {
        let mut c = conn([], 1);
        let plan = Plan {
            warmup: 5,
            amount: Amount::Messages(10),
            batch: 1,
        };
        let out = drive_pingpong(&mut c, &plan).unwrap();
        assert_eq!(out.messages, 10);
        assert_eq!(out.rtt.len(), 10);
        assert_eq!(c.sent.len(), 15);
        assert_eq!(c.sent.iter().filter(|&&l| l).count(), 1);
        assert!(*c.sent.last().unwrap());
    }

    #[test]
    fn pingpong_by_duration_stops() {
        let mut c = conn([], 1);
        let plan = Plan {
            warmup: 0,
            amount: Amount::Duration(Duration::from_millis(5)),
            batch: 1,
        };
        let out = drive_pingpong(&mut c, &plan).unwrap();
        assert!(out.messages >= 1);
        assert!(out.elapsed >= Duration::from_millis(5));
    }

    #[test]
    fn echo_reports_messages_after_warmup() {
        let mut inbox = vec![false; 9];
        inbox.push(true);
        let mut c = conn(inbox, 1);
        let report = serve_echo(&mut c, 4).unwrap();
        assert_eq!(report.messages, 6);
        assert_eq!(c.sent.len(), 10);
    }

    #[test]
    fn stream_send_splits_into_batches_and_flags_the_end() {
        let mut c = conn([], 1);
        let plan = Plan {
            warmup: 100,
            amount: Amount::Messages(1000),
            batch: 64,
        };
        let out = drive_stream(&mut c, &plan).unwrap();
        assert_eq!(out.messages, 1000);
        assert_eq!(c.sent.len(), 1100);
        assert_eq!(c.sent.iter().filter(|&&l| l).count(), 1);
        assert!(*c.sent.last().unwrap());
    }

    #[test]
    fn stream_receive_excludes_the_straddling_batch_from_the_rate() {
        // 10 warmup + 100 measured, received 8 at a time: the batch that completes the
        // warmup holds messages 8..16, so the rate counts the 94 after it.
        let mut inbox = vec![false; 109];
        inbox.push(true);
        let mut c = conn(inbox, 8);
        let report = serve_stream(&mut c, 10).unwrap();
        assert_eq!(report.messages, 100);
        assert_eq!(report.rate_messages, 110 - 16);
    }

    #[test]
    fn stream_receive_with_no_warmup() {
        let mut c = conn([false, false, true], 1);
        let report = serve_stream(&mut c, 0).unwrap();
        assert_eq!(report.messages, 3);
        assert_eq!(report.rate_messages, 2);
    }
}
