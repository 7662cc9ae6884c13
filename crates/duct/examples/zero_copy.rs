//! 1 MiB messages over `shm://`, written in place with [`Pipe::alloc`]: no copy on either side.
//!
//! Two threads of one process, a listener and a dialer, share one `shm://` pipe (the same
//! code works between two processes). The dialer streams 1 MiB messages to the listener in
//! two phases of equal length:
//!
//! 1. **in place**: `pipe.alloc(1 MiB)` returns a buffer that already lies in the pipe's
//!    shared-memory pool; the sender writes the payload into it, freezes it and sends it.
//!    Only a 32-byte descriptor moves through the ring. The receiver's message is a view of
//!    the same shared bytes, whose pool slot goes back to the sender when the message is
//!    dropped.
//! 2. **copied**: the same payload from an ordinary heap buffer (`Message::new(bytes)`):
//!    duct copies it into the pool once per message.
//!
//! It prints the throughput of each phase and the pipe's copy counters
//! ([`PipeStats::zero_copy_frames`], [`PipeStats::payload_frames_copied`],
//! [`PipeStats::payload_bytes_copied`]), and checks that phase 1 copied nothing.
//!
//! Run: `cargo run --release -p duct --example zero_copy` (the figures of a debug build are
//! not representative). `--fast` or `DUCT_EXAMPLE_FAST=1` shortens each phase from 3 s to
//! 0.3 s. Linux only (shm:// is implemented on Linux).
//!
//! [`Pipe::alloc`]: duct::Pipe::alloc
//! [`PipeStats::zero_copy_frames`]: duct::PipeStats::zero_copy_frames
//! [`PipeStats::payload_frames_copied`]: duct::PipeStats::payload_frames_copied
//! [`PipeStats::payload_bytes_copied`]: duct::PipeStats::payload_bytes_copied
#![cfg_attr(
    not(any(target_os = "linux", target_os = "macos")),
    allow(dead_code, unused_imports)
)]

use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use duct::{DialOptions, ErrorKind, ListenOptions, Message, Pipe, PipeStats};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The message size: one frame on shm (its largest pool slot is 1 MiB), so it moves whole.
const SIZE: usize = 1 << 20;

/// `--fast` or `DUCT_EXAMPLE_FAST=1`: the CI setting.
fn fast() -> bool {
    std::env::args().any(|a| a == "--fast")
        || std::env::var("DUCT_EXAMPLE_FAST").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// What the receiver counted.
#[derive(Debug, Default)]
struct Received {
    messages: u64,
    bytes: u64,
}

/// Receives until the dialer closes; checks each message's sequence number (first 8 bytes)
/// and its last byte (the payload's fill value), without reading the whole megabyte.
fn receive(pipe: &Pipe) -> Result<Received> {
    let mut got = Received::default();
    loop {
        let msg = match pipe.recv() {
            Ok(msg) => msg,
            Err(e) if e.kind() == ErrorKind::Closed => return Ok(got),
            Err(e) => return Err(e.into()),
        };
        let payload = msg.payload();
        let seq = u64::from_le_bytes(payload[..8].try_into()?);
        if payload.len() != SIZE || seq != got.messages || payload[SIZE - 1] != seq as u8 {
            return Err(format!("message {} is wrong (seq {seq})", got.messages).into());
        }
        got.messages += 1;
        got.bytes += payload.len() as u64;
        // `msg` drops here: its pool slot goes back to the sender.
    }
}

/// Writes message `seq` into `buf`: the sequence number, then the fill value everywhere.
fn produce(buf: &mut [u8], seq: u64) {
    buf.fill(seq as u8);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// What one phase did.
struct Phase {
    sent: u64,
    took: Duration,
    /// In place: buffers `alloc` returned on the heap (no pool slot came free in time).
    heap_buffers: u64,
}

/// One phase: sends 1 MiB messages for `length`, from `next_seq` on.
fn phase(pipe: &Pipe, length: Duration, next_seq: &mut u64, in_place: bool) -> Result<Phase> {
    // The copied phase's heap buffer, reused whenever duct has let go of it (it copies the
    // payload into the pool as it sends, usually before `send` returns).
    let mut spare: Option<BytesMut> = None;
    let mut sent = 0u64;
    let mut heap_buffers = 0u64;
    let started = Instant::now();
    while started.elapsed() < length {
        let seq = *next_seq;
        if in_place {
            // A slot of the shared pool (a heap buffer on other transports, or if no slot
            // came free in time: the code stays the same, only the copy counters change).
            let mut buf = pipe.alloc(SIZE)?;
            heap_buffers += u64::from(!buf.is_shared());
            produce(&mut buf, seq);
            pipe.send(buf.freeze())?;
        } else {
            let mut heap = spare.take().unwrap_or_else(|| BytesMut::zeroed(SIZE));
            produce(&mut heap, seq);
            let payload = heap.freeze();
            pipe.send(Message::new(payload.clone()))?;
            spare = payload.try_into_mut().ok();
        }
        *next_seq += 1;
        sent += 1;
    }
    Ok(Phase {
        sent,
        took: started.elapsed(),
        heap_buffers,
    })
}

fn report(name: &str, p: &Phase, before: &PipeStats, after: &PipeStats) {
    let (sent, took) = (p.sent, p.took);
    let bytes = sent as f64 * SIZE as f64;
    println!(
        "{name}: {sent} messages of 1 MiB in {took:.2?}: {:.2} GB/s, {:.0} messages/s",
        bytes / took.as_secs_f64() / 1e9,
        sent as f64 / took.as_secs_f64()
    );
    println!(
        "  frames moved without a copy: {}; frames copied into the pool: {} ({} MiB copied)",
        after.zero_copy_frames - before.zero_copy_frames,
        after.payload_frames_copied - before.payload_frames_copied,
        (after.payload_bytes_copied - before.payload_bytes_copied) >> 20
    );
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn main() -> Result<()> {
    let length = if fast() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(3)
    };
    if cfg!(debug_assertions) {
        println!("(a debug build: run with --release for representative figures)");
    }
    // A unique name: parallel runs do not collide. shm:// leaves nothing behind (the
    // rendezvous socket is abstract, the segment an anonymous memfd).
    let addr = format!("shm://duct-example-zero-copy-{}", std::process::id());
    let listener = duct::listen(&addr, ListenOptions::default())?;
    let pipe = duct::dial(&addr, DialOptions::default())?;
    let accepted = listener.accept_timeout(Duration::from_secs(5))?;
    println!("{addr}: connected; streaming 1 MiB messages, {length:?} per phase");
    let receiver = thread::spawn(move || receive(&accepted));

    let mut seq = 0;
    let start = pipe.stats();
    let in_place = phase(&pipe, length, &mut seq, true)?;
    let middle = pipe.stats();
    report("in place (Pipe::alloc)", &in_place, &start, &middle);
    if in_place.heap_buffers > 0 {
        println!(
            "  ({} of these buffers were heap buffers, copied when sent: no pool slot had come \
             back from the receiver in time)",
            in_place.heap_buffers
        );
    }
    let copied = phase(&pipe, length, &mut seq, false)?;
    let end = pipe.stats();
    report("copied (Message::new)", &copied, &middle, &end);

    pipe.close()?; // flushes what is still queued (default linger 1 s)
    let got = receiver
        .join()
        .map_err(|_| "the receiver thread panicked")??;
    let total = pipe.stats();

    // The checks: everything arrived whole and in order (`receive` checked each message),
    // and only the heap buffers were copied: every pool buffer moved without a copy.
    let sent = in_place.sent + copied.sent;
    if got.messages != sent {
        return Err(format!("sent {sent} messages, received {}", got.messages).into());
    }
    println!(
        "receiver: {} messages ({} MiB), in order and intact",
        got.messages,
        got.bytes >> 20
    );
    let want_zero_copy = in_place.sent - in_place.heap_buffers;
    let want_copied = in_place.heap_buffers + copied.sent;
    if total.zero_copy_frames != want_zero_copy || total.payload_frames_copied != want_copied {
        return Err(format!(
            "copy counters: {} zero-copy frames (want {want_zero_copy}), {} copied frames \
             (want {want_copied})",
            total.zero_copy_frames, total.payload_frames_copied
        )
        .into());
    }
    println!(
        "pipe totals: {} frames moved without a copy, {} copied ({} MiB)",
        total.zero_copy_frames,
        total.payload_frames_copied,
        total.payload_bytes_copied >> 20
    );
    println!("zero_copy example OK");
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn main() {
    eprintln!("shm:// is implemented on Linux and macOS only");
}
