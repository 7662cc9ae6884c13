//! Quality of service per channel: send queues bounded by high-water marks with a
//! backpressure policy, time to live, rate limits (token buckets) and the scheduler that picks
//! the next frame to send (strict priority classes, deficit round robin by weight inside a
//! class).
//!
//! Everything here is deterministic: time comes in as `now`. The [`Outbox`] holds the
//! messages of one pipe that were accepted and not yet framed; it outlives a connection (a
//! driver moves it from a broken session to the next one), so policies keep applying while a
//! pipe reconnects.

mod bucket;
mod map;
mod outbox;

use std::collections::BTreeMap;
use std::time::Duration;

pub use bucket::TokenBucket;
pub use map::{ChannelHasher, ChannelMap};
pub(crate) use outbox::KeepRun;
pub use outbox::{Admission, DropReason, Outbox, QueueRun, Quiet, MAX_RTO, MIN_RTO};

/// What a sender does when a channel's send queue is at its high-water mark (its
/// `snd_hwm_msgs` or `snd_hwm_bytes`). The policy is per channel: a full channel never holds
/// back another. Every message a policy drops is counted (`dropped` in the pipe's stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backpressure {
    /// Wait for room, up to the send's timeout (the send options' timeout, default the pipe's
    /// send timeout), then fail with `TimedOut`; the message is not sent. A zero timeout fails
    /// at once with `WouldBlock`. The default.
    #[default]
    Block,
    /// Drop the new message: the send succeeds and the drop is counted (what arrives is a
    /// contiguous prefix of what was sent).
    DropNew,
    /// Drop the oldest queued message of the channel to make room (newest wins: realtime
    /// state): the send succeeds, the drop is counted. A message already being sent in
    /// fragments is not dropped.
    DropOld,
    /// Fail the send at once with `WouldBlock` (retryable); the message is not sent.
    FailFast,
}

/// A token bucket's parameters: a steady `per_sec` rate (messages or bytes) and a `burst`
/// (the bucket size). Both positive and finite; [`Rate::new`] checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    /// `per_sec` tokens a second, at most `burst` at once. `None` unless `per_sec` is positive
    /// and finite; a `burst` below 1 is taken as 1.
    pub fn new(per_sec: f64, burst: u64) -> Option<Rate> {
        (per_sec.is_finite() && per_sec > 0.0).then_some(Rate {
            per_sec,
            burst: (burst.max(1)) as f64,
        })
    }

    /// Tokens per second.
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// The bucket size.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// Bytes a weight of 1 earns per round of the deficit round robin.
pub const QUANTUM: usize = 16 * 1024;

/// Default high-water marks: messages and bytes (room for one maximum-size message).
pub const DEFAULT_HWM_MSGS: usize = 1024;
/// Default receive high-water mark in bytes (room for one maximum-size message).
pub const DEFAULT_HWM_BYTES: usize = 64 * 1024 * 1024;
/// Default send high-water mark in bytes. Smaller than the receive queue's: a sender that
/// outruns its transport copies what it lends (`Pipe::send_slice`) into the queue, and a
/// queue of many MiB is written from memory the caches no longer hold (measured with
/// 64 KiB and 1 MiB streams: a 64 MiB mark costs up to half the rate on uds and shm, and an
/// allocation every few messages). An empty queue still takes one message, however large.
pub const DEFAULT_SND_HWM_BYTES: usize = 4 * 1024 * 1024;
/// Default priority.
pub const DEFAULT_PRIORITY: u8 = 128;

/// The settings of one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    /// Messages queued for sending at which the backpressure policy applies (at least 1).
    pub snd_hwm_msgs: usize,
    /// Payload bytes queued for sending at which the policy applies. An empty queue always
    /// takes one message, however large.
    pub snd_hwm_bytes: usize,
    /// Messages received and not yet taken by the application at which the channel counts as
    /// full ([`crate::Session::recv_full`]): the driver stops reading.
    pub rcv_hwm_msgs: usize,
    /// Payload bytes received and not yet taken at which the channel counts as full.
    pub rcv_hwm_bytes: usize,
    /// What a send does at the send high-water mark.
    pub backpressure: Backpressure,
    /// Time to live of each message from its send (`None`: no expiry).
    pub ttl: Option<Duration>,
    /// Strict priority class: higher is sent first.
    pub priority: u8,
    /// Share of the link inside the priority class (deficit round robin, [`QUANTUM`] bytes
    /// per unit of weight and round). At least 1.
    pub weight: u32,
    /// Message rate limit.
    pub msgs_rate: Option<Rate>,
    /// Payload byte rate limit.
    pub bytes_rate: Option<Rate>,
    /// Messages are sent reliably by default (see [`crate::reliable`]).
    pub reliable: bool,
    /// The channel's own window: most of its reliable messages, and payload bytes, sent and
    /// not yet acknowledged (within the pipe's, [`QosConfig::inflight_msgs`]). Default:
    /// unlimited (the pipe's window only).
    pub inflight_msgs: usize,
    /// See `inflight_msgs`.
    pub inflight_bytes: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            snd_hwm_msgs: DEFAULT_HWM_MSGS,
            snd_hwm_bytes: DEFAULT_SND_HWM_BYTES,
            rcv_hwm_msgs: DEFAULT_HWM_MSGS,
            rcv_hwm_bytes: DEFAULT_HWM_BYTES,
            backpressure: Backpressure::Block,
            ttl: None,
            priority: DEFAULT_PRIORITY,
            weight: 1,
            msgs_rate: None,
            bytes_rate: None,
            reliable: false,
            inflight_msgs: usize::MAX,
            inflight_bytes: usize::MAX,
        }
    }
}

/// The channel settings of a pipe, plus its pipe-wide rate limits.
#[derive(Clone, Debug, PartialEq)]
pub struct QosConfig {
    /// Settings of every channel not listed in `channels`.
    pub default: ChannelConfig,
    /// Per-channel settings.
    pub channels: BTreeMap<u16, ChannelConfig>,
    /// Message rate limit of the whole pipe (shapes every channel's sending).
    pub pipe_msgs_rate: Option<Rate>,
    /// Byte rate limit of the whole pipe.
    pub pipe_bytes_rate: Option<Rate>,
    /// Most reliable messages sent and not yet acknowledged (the window). Default 16384
    /// (at 4096, a stream of small messages waited for acks: 64 B ones filled it in about
    /// 0.3 ms, less than an ack takes to come back through two busy processes).
    pub inflight_msgs: usize,
    /// Most payload bytes of reliable messages sent and not yet acknowledged (a single message
    /// larger than this still goes when nothing else is in flight). Default 16 MiB.
    pub inflight_bytes: usize,
    /// Retransmission timeouts in a row, without any sign of the peer, before the session
    /// fails. Default 8.
    pub max_retries: u32,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            default: ChannelConfig::default(),
            channels: BTreeMap::new(),
            pipe_msgs_rate: None,
            pipe_bytes_rate: None,
            inflight_msgs: 16384,
            inflight_bytes: 16 * 1024 * 1024,
            max_retries: 8,
        }
    }
}

impl QosConfig {
    /// The settings of `channel`.
    #[inline]
    pub fn channel(&self, channel: u16) -> &ChannelConfig {
        self.channels.get(&channel).unwrap_or(&self.default)
    }
}

/// Counters of one channel kept by the protocol core (the driver counts what it sees itself:
/// messages and bytes in and out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Dropped by a backpressure policy at the high-water mark (DropNew, DropOld).
    pub dropped: u64,
    /// Dropped because their time to live ran out (at the sender or the receiver).
    pub expired: u64,
    /// Dropped because they exceeded the channel's rate limit (drop policies).
    pub rate_limited: u64,
    /// Lost with a broken connection (realtime messages whose frames were partly written).
    pub lost: u64,
    /// Reliable messages sent again (after a break or a retransmission timeout).
    pub retransmits: u64,
}

impl Counts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Counts) {
        self.dropped += other.dropped;
        self.expired += other.expired;
        self.rate_limited += other.rate_limited;
        self.lost += other.lost;
        self.retransmits += other.retransmits;
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}
