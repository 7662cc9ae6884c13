//! Micro-benchmarks of the protocol core, to justify hot-path changes (run with
//! `cargo bench -p duct-proto --bench proto`; compare two versions on one machine, in one
//! sitting). Each measures one layer in isolation, in virtual time (`now` is fixed), with
//! no I/O:
//!
//! - `header_encode` / `header_decode`: the 24-byte frame header.
//! - `deframe_64`: cutting 64 frames of `size` bytes out of one receive buffer.
//! - `session_one_way`: `send` → `poll_transmit` → `handle_input` → `poll_message` between
//!   two established sessions, per message, realtime and reliable (with the acks).
//! - `scheduler`: 4 channels of 2 priority classes and different weights: `offer` 64
//!   messages, then `poll` them all out.
//! - `reassembly_1mib`: a 1 MiB message in 16 fragments of 64 KiB, sent and put back
//!   together.
//! - `backlog`: 1,024 messages of 64 B queued on one channel (the socket is behind), then
//!   encoded back to back into a write buffer, as a driver does: `each` offers and polls
//!   one message at a time (`send_message`, `poll_transmit_at`), `runs` queues them with
//!   `queue_run` and takes them with `poll_plain_run`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use duct_proto::qos::{ChannelConfig, Outbox, QosConfig};
use duct_proto::wire::{Deframer, FrameKind, Header, HEADER_LEN};
use duct_proto::{Config, Role, Session};

fn main() {
    divan::main();
}

#[divan::bench]
fn header_encode(b: Bencher) {
    let h = Header::data(3, 64);
    b.bench(|| black_box(black_box(&h).encode()));
}

#[divan::bench]
fn header_decode(b: Bencher) {
    let bytes = Header::data(3, 64).encode();
    b.bench(|| Header::decode(black_box(&bytes[..])).unwrap());
}

#[divan::bench(args = [64, 1024])]
fn deframe_64(b: Bencher, size: usize) {
    let mut wire = BytesMut::new();
    for _ in 0..64 {
        wire.extend_from_slice(&Header::data(1, size as u32).encode());
        wire.extend_from_slice(&vec![7u8; size]);
    }
    let wire = wire.freeze();
    let d = Deframer::new(64 * 1024);
    b.counter(divan::counter::ItemsCount::new(64usize))
        .with_inputs(|| BytesMut::from(&wire[..]))
        .bench_local_values(|mut buf| {
            let mut n = 0;
            while let Some((h, p)) = d.decode(&mut buf).unwrap() {
                debug_assert_eq!(h.kind, FrameKind::Data);
                n += p.len();
            }
            n
        });
}

/// Moves every frame `from` has to send into `to`.
fn pump(from: &mut Session, to: &mut Session, wire: &mut BytesMut, now: Instant) {
    while let Some(t) = from.poll_transmit_at(now) {
        wire.extend_from_slice(&t.header);
        wire.extend_from_slice(&t.payload);
    }
    if !wire.is_empty() {
        to.handle_input(wire, now).unwrap();
    }
}

/// Two established sessions whose channel 1 is `reliable`.
fn pair(reliable: bool, now: Instant) -> (Session, Session) {
    let mut qos = QosConfig::default();
    qos.channels.insert(
        1,
        ChannelConfig {
            reliable,
            ..ChannelConfig::default()
        },
    );
    let config = Config {
        qos: Arc::new(qos),
        ..Config::default()
    };
    let mut a = Session::new(config.clone(), Role::Dialer, now);
    let mut b = Session::new(
        Config {
            session_id: 7,
            ..config
        },
        Role::Listener,
        now,
    );
    let mut wire = BytesMut::new();
    pump(&mut a, &mut b, &mut wire, now);
    pump(&mut b, &mut a, &mut wire, now);
    (a, b)
}

#[divan::bench(args = ["realtime", "reliable"])]
fn session_one_way(b: Bencher, mode: &str) {
    let now = Instant::now();
    let (mut tx, mut rx) = pair(mode == "reliable", now);
    let payload = Bytes::from(vec![7u8; 64]);
    let mut wire = BytesMut::with_capacity(1 << 16);
    let mut back = BytesMut::with_capacity(1 << 16);
    let mut n = 0u32;
    b.bench_local(|| {
        tx.send(1, payload.clone(), now).unwrap();
        pump(&mut tx, &mut rx, &mut wire, now);
        let m = rx.poll_message_at(now).unwrap();
        n = n.wrapping_add(1);
        if n % 32 == 0 {
            // Acks (reliable) go back now and then, as a peer's would.
            rx.handle_timeout(now).unwrap();
            pump(&mut rx, &mut tx, &mut back, now);
        }
        m
    });
}

#[divan::bench]
fn scheduler(b: Bencher) {
    let now = Instant::now();
    let mut qos = QosConfig::default();
    for (ch, priority, weight) in [(1u16, 200u8, 1u32), (2, 128, 1), (3, 128, 3), (4, 128, 4)] {
        qos.channels.insert(
            ch,
            ChannelConfig {
                priority,
                weight,
                ..ChannelConfig::default()
            },
        );
    }
    let qos = Arc::new(qos);
    let payload = Bytes::from(vec![7u8; 64]);
    b.counter(divan::counter::ItemsCount::new(64usize))
        .with_inputs(|| Outbox::new(Arc::clone(&qos), now))
        .bench_local_values(|mut outbox| {
            for i in 0..64u16 {
                outbox.offer(1 + i % 4, payload.clone(), None, now);
            }
            let mut bytes = 0;
            while let Some(t) = outbox.poll(now, 64 * 1024) {
                bytes += t.payload.len() + HEADER_LEN;
            }
            bytes
        });
}

#[divan::bench]
fn reassembly_1mib(b: Bencher) {
    let now = Instant::now();
    let payload = Bytes::from(vec![7u8; 1 << 20]);
    b.counter(divan::counter::BytesCount::new(1usize << 20))
        .with_inputs(|| pair(false, now))
        .bench_local_values(|(mut tx, mut rx)| {
            let mut wire = BytesMut::with_capacity((1 << 20) + 4096);
            tx.send(1, payload.clone(), now).unwrap();
            pump(&mut tx, &mut rx, &mut wire, now);
            rx.poll_message_at(now).unwrap().payload.len()
        });
}

#[divan::bench(args = ["each", "runs"])]
fn backlog(b: Bencher, way: &str) {
    const N: usize = 1024;
    let now = Instant::now();
    let payload = [7u8; 64];
    let (mut tx, _rx) = pair(false, now);
    let mut out: Vec<u8> = Vec::with_capacity(N * (HEADER_LEN + 64));
    let runs = way == "runs";
    // Copies of the payload as the driver makes them: back to back in one buffer.
    let mut spill = BytesMut::with_capacity(N * payload.len());
    let mut copy = || {
        if spill.capacity() < payload.len() {
            spill = BytesMut::with_capacity(N * payload.len());
        }
        spill.extend_from_slice(&payload);
        spill.split().freeze()
    };
    b.counter(divan::counter::ItemsCount::new(N))
        .bench_local(|| {
            out.clear();
            if runs {
                let mut run = tx.queue_run(1, None, None, now).unwrap();
                for _ in 0..N {
                    debug_assert!(run.fits(payload.len()));
                    run.push(copy());
                }
                let taken = tx.poll_plain_run(now, |h, p| {
                    out.extend_from_slice(h);
                    out.extend_from_slice(p);
                    true
                });
                debug_assert_eq!(taken, N);
            } else {
                for _ in 0..N {
                    tx.send_message(1, copy(), None, None, now).unwrap();
                }
                while let Some(t) = tx.poll_transmit_at(now) {
                    out.extend_from_slice(&t.header);
                    out.extend_from_slice(&t.payload);
                }
            }
            out.len()
        });
}
