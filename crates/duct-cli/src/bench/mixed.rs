//! The mixed pattern (duct only): what per-channel priority scheduling buys.
//!
//! One pipe carries two channels, configured alike on both ends (`ListenOptions::channel`
//! and `DialOptions::channel`):
//! - channel [`REALTIME_CHANNEL`]: `ChannelOptions::default().priority(REALTIME_PRIORITY)`,
//!   above the default 128; the measuring end drives a ping-pong of `--size` messages on
//!   it, exactly as in the pingpong pattern, and the peer echoes them on the same channel;
//! - channel [`BULK_CHANNEL`]: default options; in a *loaded* run, a second thread of the
//!   measuring end ([`BulkSender`]) sends [`BULK_SIZE`] messages on it as fast as it can,
//!   each send blocking until the channel's queue has room; the peer reads and discards
//!   them. An *idle* run is the same pipe with the bulk sender off.
//!
//! The peer receives both channels with one `recv` loop and dispatches by
//! `Message::channel` ([`serve`]). It also measures the bulk receive rate, over the same
//! window as the measured round trips (from the first measured ping to the last), and
//! hands it back in its report's `rate_messages` and `elapsed_ns`.
//!
//! Roles: as in every pattern of `duct bench`, the measuring end listens and the peer
//! dials. The bulk sender sits with the ping-pong client, so its messages and the pings
//! share one send queue and one socket: that is where a priority scheduler can let a ping
//! pass the bulk backlog.
//!
//! Warmup: up to `--warmup` round trips but for at most [`WARMUP_LIMIT`] ([`warm_up`]),
//! flagged [`FLAG_WARMUP`] in their first byte so that the peer needs no count. Without
//! priority, a loaded ping waits behind the whole bulk backlog (up to the channel's 4 MiB
//! queue), and 2000 warmup round trips could take a minute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct::{ChannelOptions, DialOptions, ErrorKind, ListenOptions, Message, Pipe, SendOptions};

use crate::bench::duct_conn::DuctConn;
use crate::bench::workload::{alloc_count, PeerReport};
use crate::error::{bail, CliError, Result};

/// The channel of the realtime ping-pong.
pub const REALTIME_CHANNEL: u16 = 1;
/// The realtime channel's priority (duct's default is 128).
pub const REALTIME_PRIORITY: u8 = 200;
/// The channel of the bulk traffic (default options).
pub const BULK_CHANNEL: u16 = 2;
/// Payload bytes of each bulk message.
pub const BULK_SIZE: usize = 64 * 1024;
/// The longest a mixed run's warmup may take, whatever `--warmup` says.
pub const WARMUP_LIMIT: Duration = Duration::from_secs(1);
/// First payload byte of a warmup ping (ordinary ones carry
/// [`FLAG_MORE`](crate::bench::workload::FLAG_MORE), the last
/// [`FLAG_LAST`](crate::bench::workload::FLAG_LAST)).
pub const FLAG_WARMUP: u8 = 2;

/// How long one bulk send waits for room before it looks at the stop flag again.
const BULK_SEND_POLL: Duration = Duration::from_millis(50);

/// The realtime channel's options, the same on both ends.
fn realtime_channel() -> ChannelOptions {
    ChannelOptions::default().priority(REALTIME_PRIORITY)
}

/// The bulk channel's options on the sending (measuring) end: paced at `rate` MiB/s by a
/// duct rate limit when given.
fn bulk_channel(rate: Option<f64>) -> ChannelOptions {
    match rate {
        // A burst of 10 ms worth: the rate holds from the start of a short run.
        Some(mib) => ChannelOptions::default().rate_limit(
            duct::RateLimit::bytes_per_sec(mib * 1024.0 * 1024.0)
                .burst((mib * 1024.0 * 1024.0 / 100.0) as u64),
        ),
        None => ChannelOptions::default(),
    }
}

/// The measuring end's listen options: both channels configured; `bulk_rate` (MiB/s) paces
/// the bulk channel it sends on.
pub fn listen_options(bulk_rate: Option<f64>) -> ListenOptions {
    ListenOptions::default()
        .channel(REALTIME_CHANNEL, realtime_channel())
        .channel(BULK_CHANNEL, bulk_channel(bulk_rate))
}

/// The peer's dial options: both channels configured, as on the listening side.
pub fn dial_options() -> DialOptions {
    DialOptions::default()
        .channel(REALTIME_CHANNEL, realtime_channel())
        .channel(BULK_CHANNEL, ChannelOptions::default())
}

/// The measuring end's warmup: up to `rounds` round trips of `size`-byte pings flagged
/// [`FLAG_WARMUP`] on `conn`'s channel, for at most [`WARMUP_LIMIT`]. Returns how many
/// were made.
pub fn warm_up(conn: &DuctConn, size: usize, rounds: u64) -> Result<u64> {
    let mut payload = vec![0xA5u8; size];
    payload[0] = FLAG_WARMUP;
    let payload = Bytes::from(payload);
    let pipe = conn.pipe();
    let start = Instant::now();
    let mut done = 0;
    while done < rounds && start.elapsed() < WARMUP_LIMIT {
        pipe.send(Message::new(payload.clone()).with_channel(REALTIME_CHANNEL))?;
        let reply = pipe.recv()?;
        conn.check(&reply)?;
        if reply.payload()[0] != FLAG_WARMUP {
            bail!("duct: the peer's reply to a warmup ping is not flagged warmup");
        }
        done += 1;
    }
    Ok(done)
}

/// The second thread of a loaded run: sends [`BULK_SIZE`] messages on [`BULK_CHANNEL`]
/// until stopped.
pub struct BulkSender {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

impl BulkSender {
    /// Starts sending on `pipe` (a clone of the measured pipe). Each send blocks until the
    /// channel's queue has room, waking every [`BULK_SEND_POLL`] to see whether to stop.
    pub fn start(pipe: Pipe) -> Result<BulkSender> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let payload = Bytes::from(vec![0x5Au8; BULK_SIZE]);
        let thread = std::thread::Builder::new()
            .name("duct-bench-bulk".into())
            .spawn(move || {
                let options = SendOptions::default().timeout(BULK_SEND_POLL);
                let mut sent = 0u64;
                while !stopped.load(Ordering::Relaxed) {
                    let msg = Message::new(payload.clone()).with_channel(BULK_CHANNEL);
                    match pipe.send_with(msg, &options) {
                        Ok(()) => sent += 1,
                        Err(e) if matches!(e.kind(), ErrorKind::TimedOut) => {}
                        Err(_) if stopped.load(Ordering::Relaxed) => break,
                        Err(e) => return Err(CliError::from(e).context("duct: bulk sender")),
                    }
                }
                Ok(sent)
            })?;
        Ok(BulkSender { stop, thread })
    }

    /// Stops the sender; returns how many messages it sent, or its error.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(outcome) => outcome,
            Err(_) => bail!("duct: the bulk sender thread panicked"),
        }
    }
}

/// The peer of a mixed run: one `recv` loop over both channels, echoing realtime pings on
/// their channel and discarding bulk messages, until the ping flagged last.
///
/// The report: `messages`, measured round trips; `rate_messages`, bulk messages received
/// from the first measured ping to the last, and `elapsed_ns`, that window; `allocs`, the
/// allocations in that window (for pings and bulk messages alike).
pub fn serve(conn: &DuctConn) -> Result<PeerReport> {
    let pipe = conn.pipe();
    let mut measured = 0u64;
    let mut bulk = 0u64;
    // From the first measured ping: its receipt, the bulk count, the allocation count.
    let mut window: Option<(Instant, u64, u64)> = None;
    loop {
        let msg = pipe.recv()?;
        match msg.channel() {
            REALTIME_CHANNEL => {
                let last = conn.check(&msg)?;
                if msg.payload()[0] == FLAG_WARMUP {
                    if window.is_some() {
                        bail!("duct: protocol error: a warmup ping after the measured ones");
                    }
                } else {
                    if window.is_none() {
                        window = Some((Instant::now(), bulk, alloc_count()));
                    }
                    measured += 1;
                }
                pipe.send(msg)?; // Back on the realtime channel, the message's own.
                if last {
                    break;
                }
            }
            BULK_CHANNEL => {
                if msg.len() != BULK_SIZE {
                    bail!(
                        "duct: protocol error: bulk message of {} bytes, expected {BULK_SIZE}",
                        msg.len()
                    );
                }
                bulk += 1;
            }
            other => bail!(
                "duct: protocol error: message on channel {other}, expected \
                 {REALTIME_CHANNEL} or {BULK_CHANNEL}"
            ),
        }
    }
    let Some((start, bulk_at_start, allocs_at_start)) = window else {
        bail!("duct: protocol error: the last ping arrived before any measured one");
    };
    let elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Ok(PeerReport {
        messages: measured,
        rate_messages: bulk - bulk_at_start,
        elapsed_ns,
        allocs: alloc_count().wrapping_sub(allocs_at_start),
        ..PeerReport::default()
    })
}
