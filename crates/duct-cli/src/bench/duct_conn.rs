//! duct's side of the benchmark: a [`duct::Pipe`] behind the [`MsgConn`] trait.
//!
//! Ping-pong uses `Pipe::send` and `Pipe::recv`, and echoes the received `Message` as it
//! is. Stream uses `Pipe::send_slices` (copies of a prebuilt payload, framed straight into
//! duct's write buffer, as the raw baseline's `BufWriter` copies its slices) and
//! `Pipe::recv_into` (into a reused `MessageBatch`: views of the received bytes, no handle per
//! message) with up to `batch` messages per call (`--batch`), or plain `send`/`recv` of a
//! clone of the prebuilt payload (`Bytes`: no copy) when the batch is 1. The benchmark's own
//! code allocates nothing per message: whatever `allocs_per_msg` shows is duct's.
//!
//! With `--alloc` ([`DuctConn::with_alloc`]), the sending end builds every message the way
//! an application that produces its payload in place would: `Pipe::alloc(size)`, then only
//! the byte the workload needs written (`payload[0]`, the last-message flag), then
//! `MessageBuf::freeze` and `send` (stream: `send_batch` over an iterator that allocs each
//! message as duct takes it, so that no more buffers are held than duct has in hand). On
//! `shm://` the buffer is a slot of the connection's shared pool and the message moves as a
//! descriptor, with no copy of the payload; elsewhere it is a zeroed heap buffer, an
//! allocation per message (which `allocs_per_msg` shows). The receiving end checks and drops
//! as before (dropping a received shm payload frees its slot), and the echo of ping-pong
//! sends back what it received. The sending end's `PipeStats` copy counters over the
//! measured phase come back as [`Copies`] ([`DuctConn::copies`]).
//!
//! Messages go on channel 0, or on the channel given with [`DuctConn::on_channel`] (the
//! realtime channel of the mixed pattern, [`crate::bench::mixed`]). With `--reliable`, the
//! reliable runs configure channel 0 `ChannelOptions::reliable(true)` on both ends
//! ([`listen_options`], [`dial_options`]); the realtime runs keep duct's defaults.
//!
//! tls adds `ListenOptions::tls`/`DialOptions::tls` to whichever options a run uses
//! ([`crate::bench::tls`] has them); `--spin` adds `spin(Duration::MAX)` (shm's busy-spin
//! mode) on both ends of shm runs ([`listen_spin`], [`dial_spin`]), which otherwise keep
//! duct's default.

use std::time::{Duration, Instant};

use bytes::Bytes;
use duct::{
    ChannelOptions, CloseOptions, DialOptions, ListenOptions, Message, MessageBatch, Pipe,
    PipeStats, RecvOptions, SendOptions,
};

use crate::bench::spec::{Job, Transport};
use crate::bench::stats::Copies;
use crate::bench::workload::{MsgConn, FLAG_LAST, FLAG_MORE};
use crate::error::{bail, Context, Result};

/// A duct pipe, ready for the workloads.
pub struct DuctConn {
    pipe: Pipe,
    size: usize,
    payload: Bytes,
    last_payload: Bytes,
    batch: usize,
    channel: u16,
    received: MessageBatch,
    send_options: SendOptions,
    recv_options: RecvOptions,
    /// `--alloc`: build each message with `Pipe::alloc`.
    alloc: bool,
    /// `--alloc`: the pipe's counters when the measured phase started, and messages sent
    /// since.
    measured: Option<(PipeStats, u64)>,
}

/// The channel the pingpong and stream workloads use.
pub const CHANNEL: u16 = 0;

/// The measuring end's listen options for a pingpong or stream run: duct's defaults, with
/// [`CHANNEL`] reliable if `reliable`.
pub fn listen_options(reliable: bool) -> ListenOptions {
    let options = ListenOptions::default();
    if reliable {
        options.channel(CHANNEL, ChannelOptions::default().reliable(true))
    } else {
        options
    }
}

/// The peer's dial options for a pingpong or stream run: as [`listen_options`], the same
/// channel configured alike on this end.
pub fn dial_options(reliable: bool) -> DialOptions {
    let options = DialOptions::default();
    if reliable {
        options.channel(CHANNEL, ChannelOptions::default().reliable(true))
    } else {
        options
    }
}

/// `options` with shm's busy-spin mode (`spin(Duration::MAX)`) if `job` spins (`--spin`,
/// shm only): what the measuring end listens with.
pub fn listen_spin(options: ListenOptions, job: &Job) -> ListenOptions {
    if job.spin {
        options.spin(Duration::MAX)
    } else {
        options
    }
}

/// As [`listen_spin`], for the peer's dial.
pub fn dial_spin(options: DialOptions, job: &Job) -> DialOptions {
    if job.spin {
        options.spin(Duration::MAX)
    } else {
        options
    }
}

/// The address to listen on for `transport`; `uds_name` is a fresh abstract name
/// (`@duct-bench-<pid>-<n>`), which shm takes without its `@` as the shm name. tls needs the
/// listener's `ListenOptions::tls` too (see [`crate::bench::tls`]).
pub fn listen_addr(transport: Transport, uds_name: &str) -> Result<String> {
    match transport {
        Transport::Tcp => Ok("tcp://127.0.0.1:0".to_string()),
        Transport::Uds => Ok(format!("uds://{uds_name}")),
        Transport::Tls => Ok("tls://127.0.0.1:0".to_string()),
        Transport::Shm => Ok(format!("shm://{}", uds_name.trim_start_matches('@'))),
    }
}

/// Listens on `addr` with `options`; returns the listener and its bound address (port
/// resolved).
pub fn listen(addr: &str, options: ListenOptions) -> Result<(duct::Listener, String)> {
    let listener = duct::listen(addr, options).with_context(|| format!("duct: listen {addr}"))?;
    let bound = listener.local_addr().to_string();
    Ok((listener, bound))
}

/// Accepts one pipe, waking every 50 ms to run `check` (is the peer still fine?); gives up
/// after `timeout`.
pub fn accept(
    listener: &duct::Listener,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<Pipe> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept_timeout(Duration::from_millis(50)) {
            Ok(pipe) => return Ok(pipe),
            Err(e) if matches!(e.kind(), duct::ErrorKind::TimedOut) => {
                check()?;
                if Instant::now() >= deadline {
                    bail!("duct: no connection from the peer within {timeout:?}");
                }
            }
            Err(e) => return Err(e).context("duct: accept"),
        }
    }
}

/// Dials `addr` with `options`.
pub fn dial(addr: &str, options: DialOptions) -> Result<Pipe> {
    duct::dial(addr, options).with_context(|| format!("duct: dial {addr}"))
}

impl DuctConn {
    /// Wraps `pipe` for messages of `size` bytes (at least 1), `batch` per stream call.
    pub fn new(pipe: Pipe, size: usize, batch: usize) -> DuctConn {
        let mut payload = vec![0xA5u8; size];
        payload[0] = FLAG_MORE;
        let mut last_payload = payload.clone();
        last_payload[0] = FLAG_LAST;
        let batch = batch.max(1);
        DuctConn {
            pipe,
            size,
            payload: Bytes::from(payload),
            last_payload: Bytes::from(last_payload),
            batch,
            channel: CHANNEL,
            received: MessageBatch::with_capacity(batch),
            send_options: SendOptions::default(),
            recv_options: RecvOptions::default(),
            alloc: false,
            measured: None,
        }
    }

    /// The same connection, building every message it sends with `Pipe::alloc` if `alloc`
    /// (`--alloc`; see the module's documentation).
    #[must_use]
    pub fn with_alloc(mut self, alloc: bool) -> DuctConn {
        self.alloc = alloc;
        self
    }

    /// `--alloc`: the sending end's copy counters from the start of the measured phase to
    /// now (`Pipe::stats()` then and now); `None` without `--alloc`, or before the measured
    /// phase. Call it once the peer has received everything (every frame is then out of
    /// duct's queues, where it is counted).
    pub fn copies(&self) -> Option<Copies> {
        let (before, sent) = self.measured.as_ref()?;
        let now = self.pipe.stats();
        Some(Copies {
            sent: *sent,
            zero_copy_frames: now.zero_copy_frames - before.zero_copy_frames,
            copied_frames: now.payload_frames_copied - before.payload_frames_copied,
            copied_bytes: now.payload_bytes_copied - before.payload_bytes_copied,
        })
    }

    /// The same connection, sending on `channel` and expecting every message on it.
    #[must_use]
    pub fn on_channel(mut self, channel: u16) -> DuctConn {
        self.channel = channel;
        self
    }

    /// The pipe, for workloads beyond [`MsgConn`] (the mixed pattern's).
    pub fn pipe(&self) -> &Pipe {
        &self.pipe
    }

    /// Closes the pipe (default linger); errors are of no interest once a run is over.
    pub fn close(self) {
        let _ = self.pipe.close();
    }

    /// Closes the pipe at once, dropping whatever is still queued (the mixed pattern's
    /// bulk backlog, which nobody reads any more).
    pub fn close_now(self) {
        let _ = self
            .pipe
            .close_with(CloseOptions::default().linger(Duration::ZERO));
    }

    /// A message with a clone of the prebuilt payload (no copy, no allocation).
    #[inline]
    fn cloned(&self, last: bool) -> Message {
        Message::new(if last {
            self.last_payload.clone()
        } else {
            self.payload.clone()
        })
        .with_channel(self.channel)
    }

    /// The next message to send: produced in place with `--alloc`, else [`Self::cloned`].
    #[inline]
    fn message(&self, last: bool) -> Result<Message> {
        if self.alloc {
            alloc_message(&self.pipe, self.size, self.channel, last)
        } else {
            Ok(self.cloned(last))
        }
    }

    /// Counts `n` messages sent, when the measured phase is on.
    #[inline]
    fn count_sent(&mut self, n: usize) {
        if let Some((_, sent)) = &mut self.measured {
            *sent += n as u64;
        }
    }

    /// Checks a received message (size and channel); returns its last-message flag.
    #[inline]
    pub fn check(&self, msg: &Message) -> Result<bool> {
        self.check_payload(msg.channel(), msg.payload())
    }

    /// [`DuctConn::check`] for a message's channel and payload.
    #[inline]
    fn check_payload(&self, channel: u16, payload: &[u8]) -> Result<bool> {
        if channel != self.channel {
            bail!(
                "duct: protocol error: message on channel {}, expected {}",
                channel,
                self.channel
            );
        }
        if payload.len() != self.size {
            bail!(
                "duct: protocol error: message of {} bytes, expected {}",
                payload.len(),
                self.size
            );
        }
        Ok(payload[0] == FLAG_LAST)
    }
}

/// `--alloc`: a message produced in place: a buffer from `pipe.alloc(size)` (a slot of the
/// shared pool on shm, a heap buffer elsewhere), of which only the flag byte is written (on
/// shm the rest holds whatever an earlier message left there; the receiver reads only the
/// flag and the length), frozen without a copy.
#[inline]
fn alloc_message(pipe: &Pipe, size: usize, channel: u16, last: bool) -> Result<Message> {
    let mut buf = pipe.alloc(size).context("duct: Pipe::alloc")?;
    buf[0] = if last { FLAG_LAST } else { FLAG_MORE };
    Ok(buf.freeze().with_channel(channel))
}

impl MsgConn for DuctConn {
    fn send_one(&mut self, last: bool) -> Result<()> {
        self.pipe.send(self.message(last)?)?;
        self.count_sent(1);
        Ok(())
    }

    fn recv_one(&mut self) -> Result<bool> {
        let msg = self.pipe.recv()?;
        self.check(&msg)
    }

    fn echo_one(&mut self) -> Result<bool> {
        let msg = self.pipe.recv()?;
        let last = self.check(&msg)?;
        self.pipe.send(msg)?;
        Ok(last)
    }

    fn send_many(&mut self, n: usize, last: bool) -> Result<()> {
        if self.batch == 1 {
            for i in 0..n {
                self.pipe.send(self.message(last && i + 1 == n)?)?;
            }
            self.count_sent(n);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let chunk = left;
            let sent = if self.alloc {
                // Each buffer is allocated as send_batch takes its message: a batch never
                // holds more pool slots than duct has taken (an alloc error ends the batch).
                let (pipe, size, channel) = (&self.pipe, self.size, self.channel);
                let mut failed = None;
                let msgs = (0..chunk).map_while(|i| {
                    alloc_message(pipe, size, channel, last && i + 1 == chunk)
                        .map_err(|e| failed = Some(e))
                        .ok()
                });
                let sent = self.pipe.send_batch(msgs, &self.send_options);
                if let Some(e) = failed {
                    return Err(e);
                }
                sent?
            } else {
                // Copies of the prebuilt payloads, framed straight into duct's write buffer
                // (what the raw baseline's `BufWriter` does with its slices).
                let opts = self.send_options.clone().channel(self.channel);
                let (payload, last_payload) = (&self.payload[..], &self.last_payload[..]);
                let msgs = (0..chunk).map(|i| {
                    if last && i + 1 == chunk {
                        last_payload
                    } else {
                        payload
                    }
                });
                self.pipe.send_slices(msgs, &opts)?
            };
            if sent == 0 {
                bail!("duct: send_batch accepted none of {chunk} messages");
            }
            left -= sent.min(left);
            self.count_sent(sent.min(chunk));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn recv_some(&mut self) -> Result<(u64, bool)> {
        if self.batch == 1 {
            return Ok((1, self.recv_one()?));
        }
        let n = self
            .pipe
            .recv_into(&mut self.received, self.batch, &self.recv_options)?;
        let mut last = false;
        for msg in &self.received {
            last |= self.check_payload(msg.channel(), msg.payload())?;
        }
        self.received.clear();
        Ok((n as u64, last))
    }

    fn measured_phase_starts(&mut self) {
        if self.alloc {
            self.measured = Some((self.pipe.stats(), 0));
        }
    }
}
