//! Observability: what duct tells a [`tracing`] subscriber and, with the cargo feature
//! `metrics` (on by default), a [`metrics`](https://docs.rs/metrics/0.24) recorder.
//!
//! duct never prints. It logs through `tracing` (install any subscriber: `tracing-subscriber`'s
//! `fmt`, a JSON layer, OpenTelemetry, ...) and publishes its figures through the `metrics`
//! facade (install any recorder: `metrics-exporter-prometheus`, StatsD, ...). With neither
//! installed, both cost next to nothing. The same figures are always available without
//! either from [`Pipe::stats`](crate::Pipe::stats).
//!
//! # Logging
//!
//! ## The pipe span
//!
//! Every pipe has one span, named `pipe` (target `duct::pipe`, level INFO), made when the
//! connection is established (for a dialer, when `dial` returns; for a listener, when the
//! handshake completes, before `accept`) and closed when the pipe is dropped. It is a root
//! span: it does not inherit the span current where `dial` was called, since the pipe
//! outlives it. Its fields:
//!
//! | field | type | value |
//! | --- | --- | --- |
//! | `pipe_id` | u64 | [`Pipe::id`](crate::Pipe::id): the same on both ends and across reconnects |
//! | `session_id` | u64 | [`Pipe::session_id`](crate::Pipe::session_id); recorded again on every reconnect |
//! | `local_addr` | string | [`Pipe::local_addr`](crate::Pipe::local_addr) |
//! | `peer_addr` | string | [`Pipe::peer_addr`](crate::Pipe::peer_addr); recorded again on every reconnect |
//! | `transport` | string | `tcp`, `tls`, `uds` or `shm` |
//! | `role` | string | `dialer` or `listener` |
//!
//! Every event about a pipe names this span as its parent explicitly (`parent: &span`), so it
//! is attributed to the right pipe whichever thread emits it: the caller's, a reactor thread
//! that serves many pipes, or the reconnect thread. duct does not enter the span around its
//! own work.
//!
//! ## Events
//!
//! Each event has a fixed name (its `tracing` metadata name) and a message; the fields of the
//! span are not repeated.
//!
//! | target | name | level | when | fields |
//! | --- | --- | --- | --- | --- |
//! | `duct::pipe` | `connected` | INFO | the pipe's first connection is up | `session_id` |
//! | `duct::pipe` | `disconnected` | INFO | the connection broke (EOF, reset, missed heartbeats, the peer closed a pipe that reconnects), or the pipe ended Disconnected | `cause`, `error_kind`, `reconnecting` (bool) |
//! | `duct::pipe` | `reconnecting` | INFO | after a break, the pipe waits for a new connection: a dialer redials, an accepted pipe waits for its dialer | `first_attempt_in_ms` (dialer) or `resume_window_ms` (listener) |
//! | `duct::pipe` | `reconnect_failed` | DEBUG | one reconnect attempt failed; another follows | `attempt`, `error`, `error_kind` |
//! | `duct::pipe` | `reconnected` | INFO | a dialer is connected again on a fresh session | `session_id`, `resent` (reliable messages sent again) |
//! | `duct::pipe` | `resumed` | INFO | the connection is back and the session resumed (both ends) | `session_id`, `resent` |
//! | `duct::pipe` | `session_lost` | INFO | a reconnect found the peer without the session, or the resume window passed with unacknowledged reliable messages | `cause` |
//! | `duct::pipe` | `closed` | INFO | the pipe ended Closed | `initiator` (`local`, `peer` or `error`), `code`, `reason`, `cause` (for `error`) |
//! | `duct::message` | `message_sent` | TRACE | `send` accepted a message (one event per message) | `channel`, `len` |
//! | `duct::message` | `message_received` | TRACE | a message was delivered to the application | `channel`, `len` |
//! | `duct::listener` | `listening` | INFO | a listener is bound | `addr` |
//! | `duct::listener` | `handshake_failed` | DEBUG, or WARN for a refused peer (`PermissionDenied`) | a connection to a listener did not become a pipe | `listener`, `error`, `error_kind` |
//!
//! Per-message events are TRACE only: with TRACE off for `duct::message` (or compiled out
//! with `tracing`'s `max_level_*` features) each costs one check of the callsite's cached
//! interest, nothing is formatted and no field is evaluated. Other DEBUG events (transport
//! details: a connect attempt to one of several resolved addresses, a socket option that
//! could not be set) use the module paths as targets (`duct::transport::tcp`, ...); all targets
//! start with `duct`, so `RUST_LOG=duct=info` (with `tracing-subscriber`'s `EnvFilter`) shows
//! the life of every pipe and nothing per message.
//!
//! # Metrics
//!
//! With the cargo feature `metrics` (on by default; `default-features = false` drops it and
//! the `metrics` dependency), every pipe publishes its figures, the same as
//! [`Pipe::stats`](crate::Pipe::stats) returns, to the `metrics` facade: from a reactor timer
//! every [`set_metrics_interval`] (1 s by default), once more when the pipe ends, and a last
//! time when it is dropped. Nothing is done per message for metrics: `send` and `recv` only
//! keep the counters `stats()` reads anyway, and the publication copies them into handles
//! registered once per pipe and channel (`Counter::absolute`, `Gauge::set`). RTT samples are
//! recorded to a histogram as they are measured (at most one per heartbeat interval).
//!
//! Every series carries the labels `pipe` (the pipe id, decimal), `transport` (`tcp`, `tls`,
//! `uds`, `shm`) and `role` (`dialer`, `listener`); the two ends of a pipe in one process differ
//! by `role`. Message figures are per channel (label `channel`, decimal): sum them over
//! `channel` for a pipe's totals (`sum without (channel) (...)` in PromQL).
//!
//! | name | type | unit | extra labels | meaning (the `PipeStats` / `ChannelStats` field) |
//! | --- | --- | --- | --- | --- |
//! | `duct_messages_sent_total` | counter | count | `channel` | messages accepted by `send` (`msgs_sent`) |
//! | `duct_messages_received_total` | counter | count | `channel` | messages delivered to the application (`msgs_received`) |
//! | `duct_bytes_sent_total` | counter | bytes | `channel` | payload bytes of those sent (`bytes_sent`) |
//! | `duct_bytes_received_total` | counter | bytes | `channel` | payload bytes of those delivered (`bytes_received`) |
//! | `duct_messages_dropped_total` | counter | count | `channel`, `reason` | messages this side dropped (`dropped`), by `reason`: `queue_full` (`DropNew`/`DropOld` at the high-water mark), `rate_limit` (`rate_limited`), `disconnect` (still queued or partly written when a connection broke or the pipe ended) |
//! | `duct_messages_expired_total` | counter | count | `channel` | messages whose time to live ran out on this side (`expired`) |
//! | `duct_retransmits_total` | counter | count | `channel` | reliable messages sent again (`retransmits`) |
//! | `duct_queue_depth_messages` | gauge | count | `channel`, `direction` | messages queued: `send` (waiting to be framed) or `recv` (waiting for the application) |
//! | `duct_queue_depth_bytes` | gauge | bytes | `channel`, `direction` | their payload bytes (`recv` counts partly reassembled messages too) |
//! | `duct_write_queue_bytes` | gauge | bytes | | frames encoded and not yet taken by the transport |
//! | `duct_pipe_connected` | gauge | | | 1 while the pipe is Connected, else 0 (0 at the end) |
//! | `duct_reconnects_total` | counter | count | | successful reconnects (`reconnects`) |
//! | `duct_rtt_seconds` | histogram | seconds | | each round-trip time measured by a heartbeat PING |
//! | `duct_rtt_smoothed_seconds` | gauge | seconds | | the smoothed round-trip time (`rtt`), once measured |
//! | `duct_shm_payload_copies_total` | counter | count | | `shm://` only: frames whose payload was copied into the pool (`payload_frames_copied`) |
//! | `duct_shm_payload_copied_bytes_total` | counter | bytes | | `shm://` only: those bytes (`payload_bytes_copied`) |
//! | `duct_shm_zero_copy_frames_total` | counter | count | | `shm://` only: frames that moved without a copy (`zero_copy_frames`) |
//!
//! Names follow Prometheus conventions already (suffixes `_total`, `_bytes`, `_seconds`): do
//! not ask an exporter to add unit suffixes (`metrics-exporter-prometheus`'s
//! `with_recommended_naming`). Descriptions and units are given once per recorder
//! (`describe_counter!` and friends). A channel's series appear once it carries traffic.
//!
//! **Recorders.** Handles are registered with the recorder installed when the pipe first
//! publishes; a global recorder installed later is picked up at the next periodic
//! publication, so counters, which are published as absolute values, are right from then on.
//! Periodic publications run on duct's reactor thread, so a thread-local recorder
//! (`metrics::with_local_recorder`) does not see them. Series of ended pipes stay in the
//! recorder unless it forgets idle ones (`PrometheusBuilder::idle_timeout`). Count on 13
//! series per channel in use and 5 per pipe (8 on shm).
//!
//! **Cost.** Per pipe and interval, one reactor timer wake-up, one lock of the pipe to copy
//! its counters, and about 13 stores per channel into the recorder's handles (atomics in a
//! typical recorder); never anything on the caller's path. With no recorder installed the
//! handles are no-ops; [`set_metrics_interval`]`(Duration::ZERO)` removes even the timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Addr;

/// The role of a pipe's end as logs and metrics name it.
pub(crate) fn role_name(role: duct_proto::Role) -> &'static str {
    match role {
        duct_proto::Role::Dialer => "dialer",
        duct_proto::Role::Listener => "listener",
    }
}

/// The span of one pipe (see the module docs): a root span, so that a pipe does not keep the
/// span current at `dial` alive.
pub(crate) fn pipe_span(
    pipe_id: u64,
    session_id: u64,
    local: &Addr,
    peer: &Addr,
    transport: &'static str,
    role: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        target: "duct::pipe",
        parent: None,
        "pipe",
        pipe_id,
        session_id,
        local_addr = %local,
        peer_addr = %peer,
        transport,
        role,
    )
}

#[cfg(feature = "metrics")]
pub(crate) use publish::{next_publication, ChannelFigures, Figures, PipeMetrics};

/// The publication interval in nanoseconds; 0: off.
static INTERVAL_NANOS: AtomicU64 = AtomicU64::new(1_000_000_000);
/// Shortest interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Sets how often every pipe publishes its figures to the `metrics` recorder (default 1 s;
/// see [`crate::observability`]). Process-wide, like the reactor it runs on. Without the
/// cargo feature `metrics` there is nothing to publish and this does nothing.
///
/// `Duration::ZERO` turns publication off: pipes made from then on register nothing and
/// publish nothing (running pipes stop after their next publication, except for the one when
/// they end). Intervals under 10 ms are raised to 10 ms. A change reaches running pipes at
/// their next publication; pipes made while publication was off stay silent.
///
/// ```
/// duct::set_metrics_interval(std::time::Duration::from_secs(5));
/// ```
pub fn set_metrics_interval(interval: Duration) {
    let nanos = if interval.is_zero() {
        0
    } else {
        u64::try_from(interval.max(MIN_INTERVAL).as_nanos()).unwrap_or(u64::MAX)
    };
    INTERVAL_NANOS.store(nanos, Ordering::Relaxed);
}

#[cfg(feature = "metrics")]
mod publish {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use metrics::{Counter, Gauge, Histogram, Label, Unit};

    use super::INTERVAL_NANOS;
    use crate::ChannelStats;

    const SENT: &str = "duct_messages_sent_total";
    const RECEIVED: &str = "duct_messages_received_total";
    const BYTES_SENT: &str = "duct_bytes_sent_total";
    const BYTES_RECEIVED: &str = "duct_bytes_received_total";
    const DROPPED: &str = "duct_messages_dropped_total";
    const EXPIRED: &str = "duct_messages_expired_total";
    const RETRANSMITS: &str = "duct_retransmits_total";
    const QUEUE_MSGS: &str = "duct_queue_depth_messages";
    const QUEUE_BYTES: &str = "duct_queue_depth_bytes";
    const WRITE_QUEUE: &str = "duct_write_queue_bytes";
    const CONNECTED: &str = "duct_pipe_connected";
    const RECONNECTS: &str = "duct_reconnects_total";
    const RTT: &str = "duct_rtt_seconds";
    const RTT_SMOOTHED: &str = "duct_rtt_smoothed_seconds";
    const SHM_COPIES: &str = "duct_shm_payload_copies_total";
    const SHM_COPIED_BYTES: &str = "duct_shm_payload_copied_bytes_total";
    const SHM_ZERO_COPY: &str = "duct_shm_zero_copy_frames_total";

    /// The publication interval; `None`: off.
    pub(crate) fn interval() -> Option<Duration> {
        match INTERVAL_NANOS.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// When a pipe publishes next, from `now`; `None`: not periodically any more.
    pub(crate) fn next_publication(now: Instant) -> Option<Instant> {
        interval().map(|i| now + i)
    }

    /// Identifies the recorder `metrics` hands out now (the thread's, the global one, or
    /// the no-op one), so that handles registered with another one are registered again.
    fn current_recorder() -> usize {
        metrics::with_recorder(|r| r as *const dyn metrics::Recorder as *const () as usize)
    }

    /// The recorder the descriptions were last given to (0: none yet).
    static DESCRIBED: AtomicUsize = AtomicUsize::new(0);

    /// Gives the recorder `recorder` every description and unit, once.
    fn describe(recorder: usize) {
        if DESCRIBED.swap(recorder, Ordering::AcqRel) == recorder {
            return;
        }
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(SENT, Unit::Count, "Messages accepted by send, per channel.");
        describe_counter!(
            RECEIVED,
            Unit::Count,
            "Messages delivered to the application, per channel."
        );
        describe_counter!(BYTES_SENT, Unit::Bytes, "Payload bytes accepted by send.");
        describe_counter!(
            BYTES_RECEIVED,
            Unit::Bytes,
            "Payload bytes delivered to the application."
        );
        describe_counter!(
            DROPPED,
            Unit::Count,
            "Messages this side dropped, by reason: queue_full (DropNew/DropOld at the \
             high-water mark), rate_limit, disconnect (queued when a connection broke or the \
             pipe ended)."
        );
        describe_counter!(
            EXPIRED,
            Unit::Count,
            "Messages whose time to live ran out on this side."
        );
        describe_counter!(RETRANSMITS, Unit::Count, "Reliable messages sent again.");
        describe_gauge!(
            QUEUE_MSGS,
            Unit::Count,
            "Messages queued: direction=send waiting to be framed, direction=recv waiting for \
             the application."
        );
        describe_gauge!(
            QUEUE_BYTES,
            Unit::Bytes,
            "Payload bytes queued, by direction (recv includes partly reassembled messages)."
        );
        describe_gauge!(
            WRITE_QUEUE,
            Unit::Bytes,
            "Bytes of frames encoded and not yet taken by the transport."
        );
        describe_gauge!(CONNECTED, "1 while the pipe is connected, else 0.");
        describe_counter!(RECONNECTS, Unit::Count, "Successful reconnects.");
        describe_histogram!(
            RTT,
            Unit::Seconds,
            "Round-trip times measured by heartbeat PINGs."
        );
        describe_gauge!(
            RTT_SMOOTHED,
            Unit::Seconds,
            "Smoothed round-trip time (as Pipe::stats().rtt)."
        );
        describe_counter!(
            SHM_COPIES,
            Unit::Count,
            "shm: frames whose payload was copied into the shared pool."
        );
        describe_counter!(
            SHM_COPIED_BYTES,
            Unit::Bytes,
            "shm: payload bytes copied into the shared pool."
        );
        describe_counter!(
            SHM_ZERO_COPY,
            Unit::Count,
            "shm: frames whose payload moved without a copy."
        );
    }

    /// What a pipe publishes: its counters as `Pipe::stats` gives them, and its queues.
    #[derive(Default)]
    pub(crate) struct Figures {
        pub(crate) connected: bool,
        pub(crate) reconnects: u64,
        pub(crate) rtt: Option<Duration>,
        /// `shm://`: frames copied, bytes copied, frames sent without a copy.
        pub(crate) copies: (u64, u64, u64),
        pub(crate) write_queue_bytes: usize,
        pub(crate) channels: Vec<ChannelFigures>,
    }

    /// One channel's figures.
    #[derive(Default)]
    pub(crate) struct ChannelFigures {
        pub(crate) channel: u16,
        pub(crate) stats: ChannelStats,
        /// Of `stats.dropped`: lost with a connection or the end of the pipe.
        pub(crate) lost: u64,
        /// Messages and bytes in the send queue.
        pub(crate) send_queue: (usize, usize),
        /// Messages and bytes in the receive queue.
        pub(crate) recv_queue: (usize, usize),
    }

    /// A pipe's handles in the `metrics` recorder, registered once (again only if the
    /// recorder changes).
    pub(crate) struct PipeMetrics {
        /// `pipe`, `transport`, `role`.
        labels: Vec<Label>,
        shm: bool,
        handles: Mutex<Option<Handles>>,
        /// The figures of the last publication, refilled by the next: a publication
        /// allocates nothing once the pipe's channels are known.
        pub(crate) scratch: Mutex<Figures>,
    }

    struct Handles {
        recorder: usize,
        connected: Gauge,
        reconnects: Counter,
        rtt: Histogram,
        rtt_smoothed: Gauge,
        write_queue: Gauge,
        /// `shm://` only.
        copies: Option<[Counter; 3]>,
        channels: BTreeMap<u16, ChannelHandles>,
    }

    struct ChannelHandles {
        sent: Counter,
        received: Counter,
        bytes_sent: Counter,
        bytes_received: Counter,
        dropped_queue_full: Counter,
        dropped_rate_limit: Counter,
        dropped_disconnect: Counter,
        expired: Counter,
        retransmits: Counter,
        send_msgs: Gauge,
        send_bytes: Gauge,
        recv_msgs: Gauge,
        recv_bytes: Gauge,
    }

    impl PipeMetrics {
        /// The handles of a new pipe, or `None` when publication is off.
        pub(crate) fn new(
            pipe_id: u64,
            transport: &'static str,
            role: &'static str,
        ) -> Option<Self> {
            interval()?;
            Some(PipeMetrics {
                labels: vec![
                    Label::new("pipe", pipe_id.to_string()),
                    Label::new("transport", transport),
                    Label::new("role", role),
                ],
                shm: transport == "shm",
                handles: Mutex::new(None),
                scratch: Mutex::new(Figures::default()),
            })
        }

        fn labels(&self, extra: &[(&'static str, String)]) -> Vec<Label> {
            let mut labels = self.labels.clone();
            labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
            labels
        }

        fn counter(&self, name: &'static str, extra: &[(&'static str, String)]) -> Counter {
            metrics::counter!(name, self.labels(extra))
        }

        fn gauge(&self, name: &'static str, extra: &[(&'static str, String)]) -> Gauge {
            metrics::gauge!(name, self.labels(extra))
        }

        fn register(&self, recorder: usize) -> Handles {
            describe(recorder);
            Handles {
                recorder,
                connected: self.gauge(CONNECTED, &[]),
                reconnects: self.counter(RECONNECTS, &[]),
                rtt: metrics::histogram!(RTT, self.labels.clone()),
                rtt_smoothed: self.gauge(RTT_SMOOTHED, &[]),
                write_queue: self.gauge(WRITE_QUEUE, &[]),
                copies: self.shm.then(|| {
                    [
                        self.counter(SHM_COPIES, &[]),
                        self.counter(SHM_COPIED_BYTES, &[]),
                        self.counter(SHM_ZERO_COPY, &[]),
                    ]
                }),
                channels: BTreeMap::new(),
            }
        }

        fn register_channel(&self, channel: u16) -> ChannelHandles {
            let ch = || ("channel", channel.to_string());
            let reason = |r: &str| [ch(), ("reason", r.to_owned())];
            let dir = |d: &str| [ch(), ("direction", d.to_owned())];
            ChannelHandles {
                sent: self.counter(SENT, &[ch()]),
                received: self.counter(RECEIVED, &[ch()]),
                bytes_sent: self.counter(BYTES_SENT, &[ch()]),
                bytes_received: self.counter(BYTES_RECEIVED, &[ch()]),
                dropped_queue_full: self.counter(DROPPED, &reason("queue_full")),
                dropped_rate_limit: self.counter(DROPPED, &reason("rate_limit")),
                dropped_disconnect: self.counter(DROPPED, &reason("disconnect")),
                expired: self.counter(EXPIRED, &[ch()]),
                retransmits: self.counter(RETRANSMITS, &[ch()]),
                send_msgs: self.gauge(QUEUE_MSGS, &dir("send")),
                send_bytes: self.gauge(QUEUE_BYTES, &dir("send")),
                recv_msgs: self.gauge(QUEUE_MSGS, &dir("recv")),
                recv_bytes: self.gauge(QUEUE_BYTES, &dir("recv")),
            }
        }

        /// The handles: those registered already, or (none yet, or `check` and the recorder
        /// changed) registered now with the current recorder.
        fn handles<'a>(&self, slot: &'a mut Option<Handles>, check: bool) -> &'a mut Handles {
            let stale = match slot.as_ref() {
                None => true,
                Some(h) => check && h.recorder != current_recorder(),
            };
            if stale {
                *slot = Some(self.register(current_recorder()));
            }
            slot.as_mut().expect("registered above")
        }

        /// Copies `f` into the recorder. Never called with the pipe's lock held. `periodic`:
        /// a publication on the reactor thread, which looks whether the recorder changed.
        pub(crate) fn publish(&self, f: &Figures, periodic: bool) {
            let mut slot = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let h = self.handles(&mut slot, periodic);
            h.connected.set(if f.connected { 1.0 } else { 0.0 });
            h.reconnects.absolute(f.reconnects);
            if let Some(rtt) = f.rtt {
                h.rtt_smoothed.set(rtt.as_secs_f64());
            }
            h.write_queue.set(f.write_queue_bytes as f64);
            if let Some([copies, bytes, lent]) = &h.copies {
                copies.absolute(f.copies.0);
                bytes.absolute(f.copies.1);
                lent.absolute(f.copies.2);
            }
            for (channel, ch) in h.channels.iter() {
                // A channel whose queues are gone (a new connection's session) holds nothing.
                if !f.channels.iter().any(|c| c.channel == *channel) {
                    for g in [&ch.send_msgs, &ch.send_bytes, &ch.recv_msgs, &ch.recv_bytes] {
                        g.set(0.0);
                    }
                }
            }
            for c in &f.channels {
                let ch = h
                    .channels
                    .entry(c.channel)
                    .or_insert_with(|| self.register_channel(c.channel));
                let s = &c.stats;
                ch.sent.absolute(s.msgs_sent);
                ch.received.absolute(s.msgs_received);
                ch.bytes_sent.absolute(s.bytes_sent);
                ch.bytes_received.absolute(s.bytes_received);
                let queue_full = s.dropped.saturating_sub(s.rate_limited + c.lost);
                ch.dropped_queue_full.absolute(queue_full);
                ch.dropped_rate_limit.absolute(s.rate_limited);
                ch.dropped_disconnect.absolute(c.lost);
                ch.expired.absolute(s.expired);
                ch.retransmits.absolute(s.retransmits);
                ch.send_msgs.set(c.send_queue.0 as f64);
                ch.send_bytes.set(c.send_queue.1 as f64);
                ch.recv_msgs.set(c.recv_queue.0 as f64);
                ch.recv_bytes.set(c.recv_queue.1 as f64);
            }
        }

        /// Records one measured round-trip time.
        pub(crate) fn record_rtt(&self, rtt: Duration) {
            let mut slot = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            self.handles(&mut slot, false).rtt.record(rtt.as_secs_f64());
        }
    }
}
