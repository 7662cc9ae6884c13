//! The scale pattern's raw baseline (tcp and uds, Unix): the same traffic as duct's scale
//! case ([`crate::bench::scale`]) on plain sockets, so that what many pipes cost duct can be
//! told from what they cost the kernel and the machine.
//!
//! - The peer connects `--pipes` sockets (or one, for the reference) to a [`RawListener`],
//!   one after another, then sends round-robin: per socket in turn one blocking `write_all`
//!   of a prebuilt buffer of `batch` frames (the 4-byte big-endian length prefix of the raw
//!   baseline, then the payload): what duct's `send_slices` of `batch` messages is to a
//!   pipe. It warms up as duct's sender does ([`scale::warmup_messages`],
//!   [`scale::WARMUP_MIN_TIME`]) and ends with one frame flagged last on every socket.
//! - The measuring end receives as `--scale-receive` says, like duct's:
//!   - `async`: a tokio runtime of [`scale::rx_threads`] workers, one task per socket (a
//!     `tokio::net` stream), which awaits readiness (tokio's own epoll, run by the workers
//!     themselves) and reads what is there into the socket's buffer (64 KiB, or one frame if
//!     larger), then counts the whole frames in it;
//!   - `sweep`: the sockets shared out over the same number of threads, each reading its
//!     sockets without blocking in turn and yielding its CPU once after a sweep that read
//!     nothing.
//!
//! The rate, the thread count and RSS per socket are measured as for duct
//! ([`scale::run`]); no duct code runs in either process's measured phase (a duct reactor
//! left from an earlier run idles in it, counted among `threads`).
//!
//! tls (a raw TLS server of many sessions would be a TLS library's event loop) and shm (a
//! raw ring has no way to wait for any of many rings: that is the bell duct adds) have no
//! raw scale baseline.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::bench::mixed::FLAG_WARMUP;
use crate::bench::peer::Peer;
use crate::bench::raw::{self, RawListener, RawStream};
use crate::bench::scale::{self, Got, Receive, ScaleFigures, Tally};
use crate::bench::spec::{Job, Transport};
use crate::bench::stats::RunResult;
use crate::bench::workload::{PeerReport, FLAG_LAST, FLAG_MORE};
use crate::error::{bail, Context, Result};

/// Bytes of the length prefix before each payload.
const PREFIX: usize = 4;

/// Receive buffer per socket: the raw baseline's `BufReader` capacity, or one whole frame if
/// that is larger.
const RX_BUF: usize = 64 * 1024;

/// Whether the raw scale baseline runs on `transport` (see the module docs).
pub fn supports(transport: Transport) -> bool {
    matches!(transport, Transport::Tcp | Transport::Uds)
}

/// A connected socket of the baseline: TCP (TCP_NODELAY) or Unix.
enum Sock {
    Tcp(std::net::TcpStream),
    Uds(std::os::unix::net::UnixStream),
}

impl Sock {
    fn of(stream: RawStream) -> Result<Sock> {
        match stream {
            RawStream::Tcp(s) => Ok(Sock::Tcp(s)),
            RawStream::Uds(s) => Ok(Sock::Uds(s)),
            RawStream::Tls(_) => bail!("raw scale: no tls baseline"),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_nonblocking(on),
            Sock::Uds(s) => s.set_nonblocking(on),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&mut &*s).read(buf),
            Sock::Uds(s) => (&mut &*s).read(buf),
        }
    }

    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => (&mut &*s).write_all(buf),
            Sock::Uds(s) => (&mut &*s).write_all(buf),
        }
    }
}

/// A [`Sock`] handed to tokio (nonblocking, registered with the runtime's reactor).
enum AsyncSock {
    Tcp(tokio::net::TcpStream),
    Uds(tokio::net::UnixStream),
}

impl AsyncSock {
    /// Registers `sock` (already nonblocking) with the current runtime.
    fn of(sock: Sock) -> io::Result<AsyncSock> {
        Ok(match sock {
            Sock::Tcp(s) => AsyncSock::Tcp(tokio::net::TcpStream::from_std(s)?),
            Sock::Uds(s) => AsyncSock::Uds(tokio::net::UnixStream::from_std(s)?),
        })
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            AsyncSock::Tcp(s) => s.readable().await,
            AsyncSock::Uds(s) => s.readable().await,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AsyncSock::Tcp(s) => s.try_read(buf),
            AsyncSock::Uds(s) => s.try_read(buf),
        }
    }
}

/// `count` frames of `size`-byte payloads, each with its length prefix, every payload's first
/// byte `flag` (the rest 0xA5, as duct's sender has it).
fn frames(count: usize, size: usize, flag: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * (PREFIX + size));
    for _ in 0..count {
        out.extend_from_slice(&(size as u32).to_be_bytes());
        let at = out.len();
        out.resize(at + size, 0xA5);
        if size > 0 {
            out[at] = flag;
        }
    }
    out
}

/// One socket's receive buffer: bytes read and not yet counted, from the start.
struct Framed {
    buf: Box<[u8]>,
    have: usize,
}

impl Framed {
    fn new(size: usize) -> Framed {
        Framed {
            buf: vec![0; RX_BUF.max(PREFIX + size)].into_boxed_slice(),
            have: 0,
        }
    }

    /// The free space to read into.
    fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.have..]
    }

    /// Takes the outcome of a nonblocking read into [`Framed::room`]: counts what it
    /// brought (see [`Framed::filled`]); whether it brought anything. Nothing to read is
    /// not an error; end of stream before the last frame is.
    fn after_read(&mut self, read: io::Result<usize>, size: usize, got: &mut Got) -> Result<bool> {
        match read {
            Ok(0) => bail!("raw: the peer closed a socket before its last frame"),
            Ok(n) => self.filled(n, size, got).map(|()| true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e).context("raw: read"),
        }
    }

    /// Counts into `got` the whole frames among the `n` bytes just read into [`Framed::room`]
    /// and what was there before; keeps the rest (a partial frame) at the start. A frame
    /// whose length is not `size` is an error.
    fn filled(&mut self, n: usize, size: usize, got: &mut Got) -> Result<()> {
        self.have += n;
        let mut at = 0;
        while self.have - at >= PREFIX {
            let len =
                u32::from_be_bytes(self.buf[at..at + PREFIX].try_into().expect("PREFIX bytes"))
                    as usize;
            if len != size {
                bail!("raw: protocol error: frame of {len} bytes, expected {size}");
            }
            if self.have - at < PREFIX + len {
                break;
            }
            got.count(&self.buf[at + PREFIX..at + PREFIX + len]);
            at += PREFIX + len;
        }
        self.buf.copy_within(at..self.have, 0);
        self.have -= at;
        Ok(())
    }
}

/// One raw scale run on the measuring end: listen, start the peer on `job`, accept
/// `job.pipes` sockets, receive `how` until each has brought its last frame, then collect
/// the peer's report.
pub fn run(peer: &mut Peer, job: &mut Job, how: Receive) -> Result<(RunResult, ScaleFigures)> {
    let rss_before = scale::rss_bytes();
    let (listener, addr) = RawListener::bind(job.transport, &super::uds_name())?;
    job.addr = addr;
    peer.start(job)?;
    let mut socks = Vec::with_capacity(job.pipes);
    while socks.len() < job.pipes {
        let stream = listener
            .accept(super::CONNECT_TIMEOUT, || peer.check())
            .with_context(|| format!("after {} of {} sockets", socks.len(), job.pipes))?;
        socks.push(Sock::of(stream)?);
    }
    let received =
        receive(socks, job.size, how, peer.pid()).map_err(|e| super::with_peer_error(e, peer));
    let rss_after = scale::rss_bytes();
    let outcome = received.and_then(|rx| Ok((rx, peer.wait(scale::REPORT_TIMEOUT)?)));
    drop(listener);
    let (rx, report) = outcome?;
    // (The peer's count of duct's threads, if any, is not the baseline's.)
    let report = PeerReport {
        threads_duct: None,
        ..report
    };
    Ok(scale::results(
        &rx,
        &report,
        job.pipes,
        (rss_before, rss_after),
    ))
}

/// Receives on `socks` (which it closes when done) as `how` says.
fn receive(
    socks: Vec<Sock>,
    size: usize,
    how: Receive,
    peer: Option<u32>,
) -> Result<scale::Received> {
    let tally = Tally::new(socks.len(), peer);
    for s in &socks {
        s.set_nonblocking(true).context("raw: set_nonblocking")?;
    }
    let ends = match how {
        Receive::Async => receive_async(socks, size, tally)?,
        Receive::Sweep => sweep(socks, size, tally)?,
    };
    scale::received(ends)
}

/// `Receive::Async`: a task per socket on a tokio runtime of [`scale::rx_threads`] workers.
fn receive_async(socks: Vec<Sock>, size: usize, tally: Tally) -> Result<(Tally, Vec<Instant>)> {
    scale::on_runtime(socks.len(), true, tally, |tasks, tally| {
        for sock in socks {
            let tally = Arc::clone(tally);
            let sock = AsyncSock::of(sock).context("raw: registering a socket with tokio")?;
            tasks.spawn(async move { receive_task(sock, size, &tally).await });
        }
        Ok(())
    })
}

/// One socket's task: reads until the socket brings its last frame.
async fn receive_task(sock: AsyncSock, size: usize, tally: &Tally) -> Result<Instant> {
    let mut framed = Framed::new(size);
    loop {
        sock.readable().await.context("raw: readable")?;
        let mut got = Got::default();
        let read = sock.try_read(framed.room());
        framed.after_read(read, size, &mut got)?;
        if let Some(at) = tally.took(&got) {
            return Ok(at);
        }
    }
}

/// `Receive::Sweep`: the sockets shared out over [`scale::rx_threads`] threads, each reading
/// its own without blocking in turn.
fn sweep(socks: Vec<Sock>, size: usize, tally: Tally) -> Result<(Tally, Vec<Instant>)> {
    let threads = scale::rx_threads(socks.len());
    let mut groups: Vec<Vec<(Sock, Framed)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, sock) in socks.into_iter().enumerate() {
        groups[i % threads].push((sock, Framed::new(size)));
    }
    let ends = scale::on_threads(groups, &tally, |group| sweep_on(group, size, &tally))?;
    Ok((tally, ends))
}

/// One sweeping thread: reads its sockets in turn until each has brought its last frame.
fn sweep_on(socks: Vec<(Sock, Framed)>, size: usize, tally: &Tally) -> Result<Instant> {
    scale::sweep_until_last(socks, tally, |(sock, framed)| {
        let mut got = Got::default();
        let read = sock.read(framed.room());
        Ok(framed.after_read(read, size, &mut got)?.then_some(got))
    })
}

/// The peer's half of a raw scale job: connect `job.pipes` sockets, send on all of them,
/// hand the report to `deliver`, then close them.
pub fn serve(job: &Job, deliver: impl FnOnce(Result<PeerReport>)) {
    let rss_before = scale::rss_bytes();
    let mut socks = Vec::with_capacity(job.pipes);
    while socks.len() < job.pipes {
        match raw::connect(job.transport, &job.addr).and_then(Sock::of) {
            Ok(sock) => socks.push(sock),
            Err(e) => {
                let n = socks.len();
                deliver(Err(e.context(format!("after {n} of {} sockets", job.pipes))));
                return;
            }
        }
    }
    let outcome = send_all(&socks, job).map(|report| PeerReport {
        rss_before,
        rss_after: scale::rss_bytes(),
        ..report
    });
    deliver(outcome);
}

/// The sender: round-robin over `socks`, one blocking `write_all` of `job.batch` frames per
/// socket in turn: the warmup, the measured phase, then one frame flagged last on each.
fn send_all(socks: &[Sock], job: &Job) -> Result<PeerReport> {
    let batch = job.batch.max(1);
    let warmup_frames = frames(batch, job.size, FLAG_WARMUP);
    let measured_frames = frames(batch, job.size, FLAG_MORE);
    let last_frame = frames(1, job.size, FLAG_LAST);
    scale::send_rounds(
        socks,
        job,
        |sock, warmup| {
            let buf = if warmup {
                &warmup_frames
            } else {
                &measured_frames
            };
            sock.write_all(buf).context("raw: write")?;
            Ok(batch as u64)
        },
        |sock| sock.write_all(&last_frame).context("raw: write"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::{Amount, Pattern, System};

    #[test]
    fn frames_are_prefixed_and_flagged() {
        let f = frames(2, 3, FLAG_LAST);
        assert_eq!(
            f,
            [0, 0, 0, 3, FLAG_LAST, 0xA5, 0xA5, 0, 0, 0, 3, FLAG_LAST, 0xA5, 0xA5]
        );
    }

    #[test]
    fn whole_frames_are_counted_and_the_rest_kept() {
        let mut framed = Framed::new(3);
        let mut bytes = frames(2, 3, FLAG_MORE);
        bytes.extend_from_slice(&frames(1, 3, FLAG_WARMUP));
        bytes.extend_from_slice(&frames(1, 3, FLAG_LAST));
        let mut got = Got::default();
        // All but the last two bytes, then those.
        let split = bytes.len() - 2;
        framed.room()[..split].copy_from_slice(&bytes[..split]);
        framed.filled(split, 3, &mut got).unwrap();
        assert_eq!((got.measured, got.last), (2, false));
        assert_eq!(framed.have, PREFIX + 1);
        framed.room()[..2].copy_from_slice(&bytes[split..]);
        framed.filled(2, 3, &mut got).unwrap();
        assert_eq!((got.measured, got.last), (3, true));
        assert_eq!(framed.have, 0);
        // A frame of the wrong length is an error, whole or not.
        let mut framed = Framed::new(3);
        framed.room()[..4].copy_from_slice(&7u32.to_be_bytes());
        assert!(framed.filled(4, 3, &mut Got::default()).is_err());
    }

    /// Raw scale runs and their references through the bench's own path, both ways of
    /// receiving, on both transports: every message counted.
    #[test]
    fn raw_scale_runs_through_a_thread_peer() {
        let mut peer = Peer::threads(None);
        for transport in [Transport::Uds, Transport::Tcp] {
            for (pipes, how) in [
                (20, Receive::Async),
                (1, Receive::Async),
                (20, Receive::Sweep),
                (1, Receive::Sweep),
            ] {
                let mut job = Job {
                    system: System::Raw,
                    transport,
                    pattern: Pattern::Scale,
                    size: 64,
                    warmup: 100,
                    batch: scale::send_batch(64),
                    amount: Amount::Messages(5000),
                    reliable: false,
                    spin: false,
                    alloc: false,
                    tls_ca: None,
                    pipes,
                    addr: String::new(),
                };
                let (run, figures) = run(&mut peer, &mut job, how).unwrap();
                assert!(run.msgs_per_sec > 0.0, "{run:?}");
                assert!(
                    run.messages >= 5000 - scale::MAX_SEND_BATCH as u64,
                    "{run:?}"
                );
                assert_eq!(figures.pipes, pipes);
            }
        }
        peer.finish();
    }
}
