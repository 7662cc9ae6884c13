//! shm for `duct bench --transport shm` (Linux): the name duct listens on for a run, and the
//! raw baseline — a minimal single-producer single-consumer ring in a shared mapping with
//! futex wake-ups, built from duct-sys's primitives and nothing of duct's protocol.
//!
//! duct listens on `shm://duct-bench-<pid>-<n>` (its rendezvous socket is the abstract
//! `@duct-shm/duct-bench-<pid>-<n>`) and the peer dials it, as for any other transport.
//!
//! **The raw baseline**, exactly:
//! - *Rendezvous.* The measuring end listens on the abstract Unix socket
//!   `@duct-bench-raw-shm/<name>` (not duct's `@duct-shm/` prefix: `duct shm` does not list
//!   it) and hands the peer `shm://<name>`. For the connection it accepts, it creates a
//!   segment with `Segment::create` (a sealed memfd) sized for the run ([`params`]) and
//!   passes its fd to the peer with `send_fd` (and the 8 bytes [`SEG_HELLO`]); the peer
//!   takes it with `recv_fd` and maps it with `Segment::open`. The socket then only serves
//!   to notice that the other process is gone (end of stream).
//! - *Rings.* Direction 0 carries the peer's messages, direction 1 the measuring end's. A
//!   message of up to [`INLINE_MAX`] bytes (256) is a descriptor with its payload copied
//!   into the ring's places after it (`Producer::write_inline`; the 24 header bytes stay
//!   zero: no protocol), as duct sends small payloads; the receiver takes the descriptor,
//!   checks that its length is the run's size and copies the payload out into its buffer
//!   (`Consumer::take_inline`, which checks the length and that the places were published).
//!   A larger message is a payload copied into a pool slot (`PoolTx::alloc`, `TxSlot::fill`,
//!   `TxSlot::send`) and a descriptor written on the ring (`Producer::write`); the receiver
//!   takes the descriptor, checks its length,
//!   takes the slot (`PoolRx::take`, which checks slot and length), copies the payload out
//!   into its buffer and frees the slot (drops the `RxSlot`) at once. An echo copies the
//!   received payload straight into the other direction's ring or a new slot of its pool.
//!   Nothing allocates per message. The sender publishes what it wrote (`Producer::publish`:
//!   one store of the ring's head) once per call: per message in ping-pong, once per batch
//!   in stream (and before it waits for room), as duct does; the receiver gives the places
//!   it took back (`Consumer::release`) once per call too. (Until November 2026 the raw
//!   sender published after every message and the receiver gave each message's places back
//!   at once: in stream the head's cache line then went to the receiver and back for every
//!   message, and the raw ring ran at 8-17 M msg/s where the same ring with batched
//!   publications does ~50 M or more.)
//! - *Waiting* (`duct_sys::shm::wait`). A receiver that finds its ring empty, or a sender
//!   that finds the ring full or no free slot, spins for [`SHM_SPIN_BEFORE_PARK`] (checking
//!   every 64 `spin_loop` hints), then announces itself on its wait word (`prepare`, mode
//!   `PARKED`), checks once more and parks on the futex (`park`, in [`PARK_SLICE`]s, between
//!   which it checks that the peer is still there). A receiver that sent since it last
//!   waited (it waits for an answer: ping-pong) asks the CPU for the lines the next
//!   descriptor will be in while it spins (`Consumer::prefetch_next`), as duct's receive
//!   does; a stream's receiver does not. A sender calls `notify` on the
//!   receiver's word after it publishes: after every message in ping-pong, once per
//!   [`MsgConn::send_many`] call in stream (and before it waits for room itself); a
//!   receiver calls `notify` on the sender's word once per call, after it freed what it
//!   took. `notify` is a fence and a load when nobody sleeps: no syscall.
//! - *`--spin`.* Both ends spin without ever parking (and so never `notify`): the
//!   spinning ring of BENCH.md. duct's runs then use `spin(Duration::MAX)` on both ends
//!   (busy-spin mode); otherwise duct keeps its default `spin`, which [`SHM_SPIN_BEFORE_PARK`]
//!   matches.

use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duct_sys::shm::pool::{Class, PoolRx, PoolTx, TxSlot};
use duct_sys::shm::ring::{
    inline_places, Consumer, Corrupt, Desc, Producer, RingMem, HEADER_LEN, INLINE, INLINE_MAX,
};
use duct_sys::shm::segment::{Params, Segment};
use duct_sys::shm::wait;

use crate::bench::spec::Job;
use crate::bench::workload::{MsgConn, FLAG_LAST, FLAG_MORE};
use crate::bench::SHM_SPIN_BEFORE_PARK;
use crate::error::{bail, CliError, Context, Result};

/// The bytes that travel with the segment's fd.
pub const SEG_HELLO: &[u8; 8] = b"RAWSHM01";

/// A waiting side checks its ring after every `spin_loop` hint, and the clock (or, with
/// `--spin`, a counter) after this many.
const SPINS_PER_CLOCK_CHECK: u32 = 64;

/// Longest a parked side sleeps before it checks that the peer is still there.
pub const PARK_SLICE: Duration = Duration::from_millis(20);

/// With `--spin`: how often (in rounds of [`SPINS_PER_CLOCK_CHECK`] hints) a spinning side
/// checks that the peer is still there.
const SPIN_ROUNDS_PER_PEER_CHECK: u32 = 1 << 12;

/// Most messages a ring holds (descriptors; a payload in the ring takes places of its own
/// beside its descriptor's).
const RING_SLOTS: usize = 1024;

/// Most bytes of pool slots per direction (large payloads get fewer slots).
const POOL_BYTES: usize = 64 << 20;

/// How long the peer waits for the segment once connected.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a raw shm connection is set up for: a run's payload size, most messages one
/// `recv_some` takes, and whether it spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawShmRun {
    /// Payload bytes per message (at least 1).
    pub size: usize,
    /// Stream: most messages one `recv_some` takes (the run's `--batch`, as duct's
    /// `recv_batch` is given), at most a ring's worth.
    pub batch: usize,
    /// `--spin`: never park.
    pub spin: bool,
}

impl RawShmRun {
    /// The setup for `job`.
    pub fn of(job: &Job) -> RawShmRun {
        RawShmRun {
            size: job.size,
            batch: job.batch,
            spin: job.spin,
        }
    }
}

/// The raw baseline's rendezvous socket for `name` (abstract).
fn rendezvous(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("duct-bench-raw-shm/{name}"))
}

/// The segment's shape for payloads of `size` bytes: one size class of slots of `size`
/// rounded up to 64 bytes; a ring of [`RING_SLOTS`] descriptors (fewer, a power of two, when
/// [`POOL_BYTES`] holds fewer slots; at least 2) and two slots more than that in the pool
/// (so that a free slot waits for every free descriptor while the receiver holds one), or as
/// many as [`POOL_BYTES`] holds (at least 2; then the sender may wait for a slot). A payload
/// of up to [`INLINE_MAX`] bytes goes in the ring: the ring then has room for
/// [`RING_SLOTS`] of them with their descriptors (the next power of two of places), and the
/// pool goes unused.
pub fn params(size: usize) -> Result<Params> {
    let slot = size.max(1).div_ceil(64) * 64;
    let Ok(slot_u32) = u32::try_from(slot) else {
        bail!("raw shm: a payload of {size} bytes is too large for a pool slot");
    };
    let fit = (POOL_BYTES / slot).max(2);
    let ring = prev_power_of_two(fit.min(RING_SLOTS));
    let count = (ring + 2).min(fit);
    let ring = if size <= INLINE_MAX {
        (ring * (1 + inline_places(size) as usize)).next_power_of_two()
    } else {
        ring
    };
    Ok(Params {
        ring_slots: ring as u32,
        classes: vec![Class {
            size: slot_u32,
            count: count as u32,
        }],
    })
}

fn prev_power_of_two(n: usize) -> usize {
    debug_assert!(n >= 1);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

fn corrupt(e: Corrupt) -> CliError {
    CliError::msg(format!("raw shm: {e}"))
}

/// The measuring end's rendezvous socket.
pub struct RawShmListener {
    listener: UnixListener,
}

impl RawShmListener {
    /// Listens for the peer of a run named `name` (fresh); returns the listener and the
    /// address to hand the peer, `shm://NAME`.
    pub fn bind(name: &str) -> Result<(RawShmListener, String)> {
        let listener = UnixListener::bind_addr(&rendezvous(name)?)
            .with_context(|| format!("raw shm: bind @duct-bench-raw-shm/{name}"))?;
        Ok((RawShmListener { listener }, format!("shm://{name}")))
    }

    /// Accepts the peer (polling every millisecond so that `check` runs while waiting, up to
    /// `timeout`), creates a segment for `run`'s payloads and passes it over.
    pub fn accept(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<()>,
        run: RawShmRun,
    ) -> Result<RawShmConn> {
        let deadline = Instant::now() + timeout;
        self.listener.set_nonblocking(true)?;
        let ctl = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    check()?;
                    if Instant::now() >= deadline {
                        bail!("raw shm: no connection from the peer within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("raw shm: accept"),
            }
        };
        ctl.set_nonblocking(false)?;
        let (segment, fd) =
            Segment::create(params(run.size)?).context("raw shm: creating the segment")?;
        duct_sys::shm::fdpass::send_fd(ctl.as_fd(), fd.as_fd(), SEG_HELLO)
            .context("raw shm: passing the segment")?;
        RawShmConn::new(ctl, &segment, 1, run)
    }
}

/// The peer's side: connects to `addr` (`shm://NAME`, from [`RawShmListener::bind`]),
/// receives the segment and maps it.
pub fn connect(addr: &str, run: RawShmRun) -> Result<RawShmConn> {
    let Some(name) = addr.strip_prefix("shm://") else {
        bail!("raw shm: {addr:?} is not a shm:// address");
    };
    let ctl = UnixStream::connect_addr(&rendezvous(name)?)
        .with_context(|| format!("raw shm: connect {addr}"))?;
    ctl.set_read_timeout(Some(SEGMENT_TIMEOUT))?;
    let mut buf = [0u8; 16];
    let (n, fd) = duct_sys::shm::fdpass::recv_fd(ctl.as_fd(), &mut buf)
        .with_context(|| format!("raw shm: {addr}: receiving the segment"))?;
    ctl.set_read_timeout(None)?;
    let Some(fd) = fd.filter(|_| &buf[..n] == SEG_HELLO) else {
        bail!("raw shm: {addr}: the measuring end did not send a segment");
    };
    let segment = Segment::open(fd.as_fd()).context("raw shm: mapping the segment")?;
    RawShmConn::new(ctl, &segment, 0, run)
}

/// Whether the other process is gone: end of stream (or an error) on the socket, which it
/// never writes.
fn peer_gone(ctl: &UnixStream) -> bool {
    use rustix::net::RecvFlags;
    let mut byte = [0u8; 1];
    loop {
        match rustix::net::recv(ctl, &mut byte[..], RecvFlags::DONTWAIT | RecvFlags::PEEK) {
            Ok((0, _)) => return true,
            Ok(_) | Err(rustix::io::Errno::AGAIN) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Waits until `ready` says so: spins (checking it between `spin_loop` hints), and unless
/// `spin`, after [`SHM_SPIN_BEFORE_PARK`], parks on `word` in [`PARK_SLICE`]s. Fails when the
/// peer goes away while this side waits.
fn wait_until(
    ctl: &UnixStream,
    word: &AtomicU32,
    spin: bool,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    if ready()? {
        return Ok(());
    }
    let budget = SHM_SPIN_BEFORE_PARK;
    let start = Instant::now();
    let mut rounds = 0u32;
    loop {
        if spin {
            if rounds > 0 && rounds % SPIN_ROUNDS_PER_PEER_CHECK == 0 && peer_gone(ctl) {
                bail!("raw shm: the peer is gone");
            }
        } else if budget.is_zero() || start.elapsed() >= budget {
            break;
        }
        for _ in 0..SPINS_PER_CLOCK_CHECK {
            std::hint::spin_loop();
            if ready()? {
                return Ok(());
            }
        }
        rounds = rounds.wrapping_add(1);
    }
    loop {
        wait::prepare(word, wait::PARKED);
        if ready()? {
            wait::cancel(word);
            return Ok(());
        }
        wait::park(word, Some(PARK_SLICE));
        wait::cancel(word);
        if ready()? {
            return Ok(());
        }
        if peer_gone(ctl) {
            bail!("raw shm: the peer is gone");
        }
    }
}

/// Which of its buffers a raw shm connection sends ([`RawShmConn::push_inline`]).
#[derive(Clone, Copy)]
enum Payload {
    /// The ordinary payload.
    Ordinary,
    /// The last message's.
    Last,
    /// The payload just received (an echo).
    Received,
}

/// One side of a raw shm connection, ready for the workloads.
pub struct RawShmConn {
    /// The rendezvous connection: only watched for the peer's end.
    ctl: UnixStream,
    producer: Producer,
    tx_pool: Arc<PoolTx>,
    /// The ring we send on (for its wait words).
    tx_ring: RingMem,
    consumer: Consumer,
    rx_pool: Arc<PoolRx>,
    /// The ring we receive on (for its wait words).
    rx_ring: RingMem,
    size: usize,
    spin: bool,
    /// Ordinary payload (first byte [`FLAG_MORE`]).
    payload: Vec<u8>,
    /// Payload of the last message (first byte [`FLAG_LAST`]).
    last_payload: Vec<u8>,
    /// Where received payloads are copied out to.
    frame: Vec<u8>,
    /// Payloads go in the ring, after their descriptors, not in pool slots (up to
    /// [`INLINE_MAX`] bytes, as duct sends them).
    inline: bool,
    /// Where received payloads in the ring are copied out to.
    inbuf: bytes::BytesMut,
    /// Messages pushed since the receiver was last notified.
    unnotified: bool,
    /// Messages pushed since this side last waited for one: the next is an answer, whose
    /// lines a wait fetches early (as duct's: see `ShmStream::spin_for_input`).
    sent_since_wait: bool,
    /// Most messages one `recv_some` takes ([`RawShmRun::batch`], at most the ring's
    /// capacity).
    max_take: usize,
}

impl RawShmConn {
    /// `tx_dir`: the direction this side sends on (peer 0, measuring end 1).
    fn new(
        ctl: UnixStream,
        segment: &Segment,
        tx_dir: usize,
        run: RawShmRun,
    ) -> Result<RawShmConn> {
        let RawShmRun { size, batch, spin } = run;
        if size == 0 {
            bail!("raw shm: payloads are at least 1 byte");
        }
        let tx = segment.direction(tx_dir);
        let rx = segment.direction(1 - tx_dir);
        if tx.pool.max_len() < size {
            bail!(
                "raw shm: the segment's slots take {} bytes, the run sends {size}",
                tx.pool.max_len()
            );
        }
        let mut payload = vec![0xA5u8; size];
        payload[0] = FLAG_MORE;
        let mut last_payload = payload.clone();
        last_payload[0] = FLAG_LAST;
        let max_take = batch.clamp(1, rx.ring.capacity() as usize);
        Ok(RawShmConn {
            ctl,
            producer: tx.ring.producer(),
            tx_pool: PoolTx::new(tx.pool),
            tx_ring: tx.ring,
            consumer: rx.ring.consumer(),
            // The receiver notifies the sender once per call instead (see `freed`).
            rx_pool: PoolRx::new(rx.pool, || {}),
            rx_ring: rx.ring,
            size,
            spin,
            payload,
            last_payload,
            frame: vec![0u8; size],
            inline: size <= INLINE_MAX,
            inbuf: bytes::BytesMut::with_capacity(size),
            unnotified: false,
            sent_since_wait: false,
            max_take,
        })
    }

    /// Publishes what was written since the last call (once for a batch: a store of the
    /// ring's head per message would move its cache line to the receiver and back for
    /// each) and wakes the receiver if it sleeps (never with `--spin`).
    #[inline]
    fn publish_and_wake(&mut self) {
        self.producer.publish();
        if self.unnotified && !self.spin {
            wait::notify(self.tx_ring.ctl().consumer_word());
        }
        self.unnotified = false;
    }

    /// After taking messages and freeing their slots: gives the places taken back (once for
    /// all taken in the call) and wakes the sender if it sleeps for room (never with
    /// `--spin`).
    #[inline]
    fn freed(&mut self) {
        self.consumer.release();
        if !self.spin {
            wait::notify(self.rx_ring.ctl().producer_word());
        }
    }

    /// Room in the ring and a free slot, waiting for them if need be (after publishing
    /// what is written and waking the receiver: it makes room only by taking what it sees).
    fn slot(&mut self) -> Result<TxSlot> {
        self.room(1)?;
        if let Some(slot) = self.tx_pool.alloc(self.size) {
            return Ok(slot);
        }
        self.publish_and_wake();
        let (pool, size) = (&self.tx_pool, self.size);
        let mut got = None;
        wait_until(
            &self.ctl,
            self.tx_ring.ctl().producer_word(),
            self.spin,
            || {
                got = pool.alloc(size);
                Ok(got.is_some())
            },
        )?;
        Ok(got.expect("ready once a slot was taken"))
    }

    /// `places` free places in the ring, waiting for them if need be (after publishing
    /// what is written and waking the receiver: it makes room only by taking what it sees).
    fn room(&mut self, places: u64) -> Result<()> {
        if !self.producer.has_room_for(places).map_err(corrupt)? {
            self.publish_and_wake();
            let producer = &mut self.producer;
            wait_until(
                &self.ctl,
                self.tx_ring.ctl().producer_word(),
                self.spin,
                || producer.has_room_for(places).map_err(corrupt),
            )?;
        }
        Ok(())
    }

    /// Writes a payload of the run's size into the ring after its descriptor, waiting for
    /// room if need be.
    #[inline]
    fn push_inline(&mut self, which: Payload) -> Result<()> {
        self.room(1 + inline_places(self.size))?;
        let payload = match which {
            Payload::Ordinary => &self.payload[..],
            Payload::Last => &self.last_payload[..],
            Payload::Received => &self.inbuf[..],
        };
        if !self
            .producer
            .write_inline(&[0; HEADER_LEN], payload)
            .map_err(corrupt)?
        {
            bail!("raw shm: the ring was full after room was found");
        }
        self.unnotified = true;
        self.sent_since_wait = true;
        Ok(())
    }

    /// Publishes a filled slot (the ring has room: [`RawShmConn::slot`] checked).
    #[inline]
    fn push(&mut self, slot: TxSlot) -> Result<()> {
        let (index, len) = slot.send();
        let pushed = self
            .producer
            .write(Desc {
                header: [0; HEADER_LEN],
                slot: index,
                len,
            })
            .map_err(corrupt)?;
        if !pushed {
            bail!("raw shm: the ring was full after room was found");
        }
        self.unnotified = true;
        self.sent_since_wait = true;
        Ok(())
    }

    fn send(&mut self, last: bool) -> Result<()> {
        if self.inline {
            return self.push_inline(if last {
                Payload::Last
            } else {
                Payload::Ordinary
            });
        }
        let mut slot = self.slot()?;
        slot.fill(if last {
            &self.last_payload
        } else {
            &self.payload
        });
        self.push(slot)
    }

    /// Waits until a descriptor is there.
    fn wait_readable(&mut self) -> Result<()> {
        let consumer = &mut self.consumer;
        // As duct's receive: a side that sent since it last waited waits for an answer, and
        // fetches its lines while nothing is there (see `RingMem::prefetch_from`).
        let answer = std::mem::take(&mut self.sent_since_wait);
        wait_until(
            &self.ctl,
            self.rx_ring.ctl().consumer_word(),
            self.spin,
            || {
                let empty = consumer.is_empty().map_err(corrupt)?;
                if empty && answer {
                    consumer.prefetch_next();
                }
                Ok(!empty)
            },
        )
    }

    /// Takes the next descriptor (one is there: [`RawShmConn::wait_readable`]) and checks its
    /// length.
    #[inline]
    fn pop(&mut self) -> Result<Option<Desc>> {
        let Some(d) = self.consumer.take().map_err(corrupt)? else {
            return Ok(None);
        };
        if d.len as usize != self.size {
            bail!(
                "raw shm: protocol error: message of {} bytes, expected {}",
                d.len,
                self.size
            );
        }
        Ok(Some(d))
    }

    /// Copies the payload of `d` out and frees its slot; returns its last-message flag.
    #[inline]
    fn copy_out(&mut self, d: Desc) -> Result<bool> {
        if d.slot == INLINE {
            self.take_inline(d)?;
            return Ok(self.inbuf[0] == FLAG_LAST);
        }
        let slot = self.rx_pool.take(d.slot, d.len).map_err(corrupt)?;
        self.frame.copy_from_slice(&slot);
        drop(slot);
        Ok(self.frame[0] == FLAG_LAST)
    }

    /// Copies the payload of `d`, in the ring after it, out to `inbuf`, and gives their
    /// places back.
    #[inline]
    fn take_inline(&mut self, d: Desc) -> Result<()> {
        self.inbuf.clear();
        self.consumer
            .take_inline(&d, &mut self.inbuf)
            .map_err(corrupt)?;
        Ok(())
    }
}

impl MsgConn for RawShmConn {
    fn send_one(&mut self, last: bool) -> Result<()> {
        self.send(last)?;
        self.publish_and_wake();
        Ok(())
    }

    fn recv_one(&mut self) -> Result<bool> {
        self.wait_readable()?;
        let d = self.pop()?.expect("a descriptor is there");
        let last = self.copy_out(d)?;
        self.freed();
        Ok(last)
    }

    fn echo_one(&mut self) -> Result<bool> {
        self.wait_readable()?;
        let d = self.pop()?.expect("a descriptor is there");
        if d.slot == INLINE {
            self.take_inline(d)?;
            self.push_inline(Payload::Received)?;
            self.publish_and_wake();
            self.freed();
            return Ok(self.inbuf[0] == FLAG_LAST);
        }
        let mut out = self.slot()?;
        let received = self.rx_pool.take(d.slot, d.len).map_err(corrupt)?;
        let last = received[0] == FLAG_LAST;
        out.fill(&received);
        drop(received);
        self.push(out)?;
        self.publish_and_wake();
        self.freed();
        Ok(last)
    }

    fn send_many(&mut self, n: usize, last: bool) -> Result<()> {
        for i in 0..n {
            self.send(last && i + 1 == n)?;
        }
        self.publish_and_wake();
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.publish_and_wake();
        Ok(())
    }

    fn recv_some(&mut self) -> Result<(u64, bool)> {
        self.wait_readable()?;
        let mut n = 0;
        let mut last = false;
        while n < self.max_take {
            let Some(d) = self.pop()? else { break };
            last |= self.copy_out(d)?;
            n += 1;
        }
        self.freed();
        Ok((n as u64, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::Amount;
    use crate::bench::workload::{drive_pingpong, drive_stream, serve_echo, serve_stream, Plan};

    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    fn name() -> String {
        format!(
            "duct-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    #[test]
    fn params_fit_the_size() {
        let p = params(64).unwrap();
        // 1024 messages of a descriptor and 64 bytes in the ring: 3072 places.
        assert_eq!(p.ring_slots, 4096);
        assert_eq!(params(INLINE_MAX).unwrap().ring_slots, 16384);
        assert_eq!(params(INLINE_MAX + 1).unwrap().ring_slots, 1024);
        assert_eq!(
            p.classes,
            vec![Class {
                size: 64,
                count: 1026
            }]
        );
        assert_eq!(params(65).unwrap().classes[0].size, 128);
        assert_eq!(params(1).unwrap().classes[0].size, 64);
        let big = params(1 << 20).unwrap();
        assert_eq!(big.ring_slots, 64);
        assert_eq!(big.classes[0].count, 64, "64 MiB of slots, no more");
        let huge = params(1 << 30).unwrap();
        assert_eq!(huge.ring_slots, 2);
        assert_eq!(huge.classes[0].count, 2);
        let odd = params(3 << 20).unwrap(); // 21 slots fit: a ring of 16, 18 slots
        assert_eq!((odd.ring_slots, odd.classes[0].count), (16, 18));
        for size in [1, 64, 1000, 4096, 65536, 1 << 20, 3 << 20, 1 << 30] {
            duct_sys::shm::segment::Layout::new(params(size).unwrap()).unwrap();
        }
    }

    /// A measuring end and a peer thread over a fresh rendezvous.
    fn run(size: usize, spin: bool) -> RawShmRun {
        RawShmRun {
            size,
            batch: 64,
            spin,
        }
    }

    fn pair(size: usize, spin: bool) -> (RawShmConn, std::thread::JoinHandle<RawShmConn>) {
        let (listener, addr) = RawShmListener::bind(&name()).unwrap();
        assert!(addr.starts_with("shm://duct-cli-test-"), "{addr}");
        let t = std::thread::spawn(move || connect(&addr, run(size, spin)).unwrap());
        let conn = listener
            .accept(Duration::from_secs(10), || Ok(()), run(size, spin))
            .unwrap();
        (conn, t)
    }

    fn pingpong_and_stream(size: usize, spin: bool) {
        let (mut conn, t) = pair(size, spin);
        let peer = std::thread::spawn(move || {
            let mut c = t.join().unwrap();
            let echo = serve_echo(&mut c, 10).unwrap();
            let stream = serve_stream(&mut c, 100).unwrap();
            (echo, stream)
        });
        let plan = Plan {
            warmup: 10,
            amount: Amount::Messages(500),
            batch: 64,
        };
        let out = drive_pingpong(&mut conn, &plan).unwrap();
        assert_eq!(out.messages, 500);
        assert_eq!(out.rtt.len(), 500);
        let plan = Plan {
            warmup: 100,
            amount: Amount::Messages(20_000),
            batch: 64,
        };
        let sent = drive_stream(&mut conn, &plan).unwrap();
        assert_eq!(sent.messages, 20_000);
        let (echo, stream) = peer.join().unwrap();
        assert_eq!(echo.messages, 500);
        assert_eq!(stream.messages, 20_000);
        assert!(stream.rate_messages > 0 && stream.elapsed_ns > 0);
    }

    #[test]
    fn threads_park() {
        pingpong_and_stream(64, false);
    }

    #[test]
    fn threads_spin() {
        pingpong_and_stream(64, true);
    }

    #[test]
    fn payloads_in_the_ring_and_in_pool_slots() {
        // The ring's largest, and the smallest and a common size that go in pool slots.
        for size in [1, INLINE_MAX, INLINE_MAX + 1, 1000] {
            pingpong_and_stream(size, false);
        }
    }

    /// The peer's side in a process of its own: this test binary run again on
    /// [`peer_process`] with [`PEER_ENV`] set to `ADDR SPIN`. Prints what it received.
    const PEER_ENV: &str = "DUCT_CLI_TEST_RAW_SHM_PEER";

    #[test]
    fn peer_process() {
        let Ok(spec) = std::env::var(PEER_ENV) else {
            return; // Only as the child of `two_processes`.
        };
        let (addr, spin) = spec.split_once(' ').unwrap();
        let mut c = connect(addr, run(64, spin == "1")).unwrap();
        let echo = serve_echo(&mut c, 10).unwrap();
        let stream = serve_stream(&mut c, 100).unwrap();
        println!("peer: echo={} stream={}", echo.messages, stream.messages);
    }

    #[test]
    fn two_processes() {
        use std::process::{Command, Stdio};
        for spin in [false, true] {
            let (listener, addr) = RawShmListener::bind(&name()).unwrap();
            let child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "bench::shm::tests::peer_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(PEER_ENV, format!("{addr} {}", u8::from(spin)))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut conn = listener
                .accept(Duration::from_secs(20), || Ok(()), run(64, spin))
                .unwrap();
            let plan = Plan {
                warmup: 10,
                amount: Amount::Messages(500),
                batch: 64,
            };
            assert_eq!(drive_pingpong(&mut conn, &plan).unwrap().messages, 500);
            let plan = Plan {
                warmup: 100,
                amount: Amount::Messages(20_000),
                batch: 64,
            };
            assert_eq!(drive_stream(&mut conn, &plan).unwrap().messages, 20_000);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "spin={spin}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("peer: echo=500 stream=20000"),
                "spin={spin}: {stdout}"
            );
        }
    }

    #[test]
    fn large_payloads_and_few_slots() {
        // 3 MiB: a ring of 16 and 18 slots; the stream fills them.
        let (mut conn, t) = pair(3 << 20, false);
        let peer = std::thread::spawn(move || serve_stream(&mut t.join().unwrap(), 5).unwrap());
        let plan = Plan {
            warmup: 5,
            amount: Amount::Messages(60),
            batch: 4,
        };
        drive_stream(&mut conn, &plan).unwrap();
        assert_eq!(peer.join().unwrap().messages, 60);
    }

    #[test]
    fn a_wrong_size_is_a_protocol_error() {
        let (mut conn, t) = pair(64, false);
        let mut peer = t.join().unwrap();
        peer.size = 32; // sends 32-byte messages
        peer.payload.truncate(32);
        peer.send_one(false).unwrap();
        let err = conn.recv_one().unwrap_err();
        assert!(err.to_string().contains("protocol error"), "{err}");
    }

    #[test]
    fn a_waiting_side_notices_that_the_peer_is_gone() {
        for spin in [false, true] {
            let (mut conn, t) = pair(64, spin);
            drop(t.join().unwrap());
            let started = Instant::now();
            let err = conn.recv_one().unwrap_err();
            assert!(err.to_string().contains("peer is gone"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn a_bad_address_or_nobody_listening_is_an_error() {
        assert!(connect("uds://@x", run(64, false)).is_err());
        let err = connect(&format!("shm://{}", name()), run(64, false))
            .err()
            .unwrap();
        assert!(err.to_string().contains("raw shm: connect"), "{err}");
    }
}
