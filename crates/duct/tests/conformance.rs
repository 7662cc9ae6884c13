//! The transport conformance suite: one set of behavioural tests, written once against a
//! [`Fixture`] (a factory of fresh listen addresses), instantiated for every transport by
//! the `conformance!` macro at the bottom (tcp IPv4 and IPv6, uds path and abstract, TLS
//! over tcp, shm, and Windows named pipes). A failure names the transport and the case, e.g.
//! `uds_abstract::close_wakes_blocked_recv`.
//!
//! Every `listen` and `dial` of a case takes its options through [`Fixture::listen_opts`] and
//! [`Fixture::dial_opts`] ([`pair_with`] does so itself), which add what the transport needs
//! (TLS settings for `tls`); a raw (non-duct) peer comes from the fixture
//! ([`Fixture::raw_listener`], [`Fixture::raw_dial`]), which speaks TLS over `tls`.
//!
//! Over `shm` frames travel through shared-memory rings, not as bytes on a socket, so there
//! is no raw peer: the cases that need one ([`raw_peer_or_skip`]) print
//! `SKIPPED over shm: …` and pass without running. An shm listener's and an accepted pipe's
//! local address, and a dialer's peer address, are `Addr::Shm(name)`; a dialer's local and
//! an accepted pipe's peer address are `Addr::Unknown` (as for Unix sockets).
//!
//! Over `pipe` (Windows only; the instance skips itself elsewhere) every address of both ends
//! is the pipe's `pipe://name`.
//!
//! What every transport must do the same way: deliver messages of every size intact and on
//! their channel, keep per-channel order under concurrent senders and receivers, honour
//! timeouts, close (locally, by the peer, by dropping) with the documented errors, count
//! stats, report addresses, enforce the peer's message limit, and wake blocked calls.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use duct::{
    dial, listen, Addr, ChannelOptions, CloseOptions, DialOptions, ErrorKind, ListenOptions,
    Message, PipeState, RecvOptions, SendOptions, StateChange,
};
use duct_proto::wire::control::close_code;
use duct_proto::Event;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Whether `f`'s transport can carry a raw (byte-level) peer; when it cannot (shm), prints
/// that the case is skipped and `why` it needs one.
fn raw_peer_or_skip(f: &Fixture, why: &str) -> bool {
    if f.has_raw_peer() {
        return true;
    }
    println!("SKIPPED over shm: {why}");
    false
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Every size around the frame boundary and well past it, echoed back intact, on the channel
/// it was sent on.
fn round_trip_all_sizes(f: &Fixture) {
    let server = EchoServer::start(&f.addr(), f.listen_opts(ListenOptions::default()));
    let p = dial(&server.addr, f.dial_opts(DialOptions::default())).unwrap();
    let sizes = [
        0,
        1,
        100,
        64 * KIB - 1,
        64 * KIB,
        64 * KIB + 1,
        MIB,
        16 * MIB,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let payload = pattern(size, i as u32);
        let channel = 1000 + i as u16;
        p.send(Message::new(payload.clone()).with_channel(channel))
            .unwrap();
        let m = recv(&p);
        assert_eq!(m.len(), size, "size {size}");
        assert_eq!(m.channel(), channel, "size {size}");
        assert_payload(m.payload(), &payload, &format!("message of {size} bytes"));
    }
    p.close().unwrap();
}

/// `Message::with_channel` and `SendOptions::channel` (which overrides it) both arrive as the
/// received message's channel, over the whole u16 range.
fn channels_are_preserved(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let cases: [(u16, Option<u16>); 5] = [
        (0, None),
        (1, None),
        (u16::MAX, None),
        (5, Some(6)),
        (7, Some(0)),
    ];
    for (i, &(own, over)) in cases.iter().enumerate() {
        let payload = pattern(10 + i, i as u32);
        let msg = Message::new(payload.clone()).with_channel(own);
        match over {
            None => dialer.send(msg).unwrap(),
            Some(c) => dialer
                .send_with(msg, &SendOptions::default().channel(c))
                .unwrap(),
        }
        let m = recv(&accepted);
        assert_eq!(m.channel(), over.unwrap_or(own), "case {i}");
        assert_payload(m.payload(), &payload, "channel case");
    }
    // And the other way.
    accepted
        .send(Message::from("back").with_channel(42))
        .unwrap();
    let m = recv(&dialer);
    assert_eq!((m.channel(), m.payload()), (42, &b"back"[..]));
}

/// A buffer from `Pipe::alloc` becomes a message that arrives intact.
fn alloc_buffer_round_trip(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let want = pattern(3000, 9);
    let mut buf = dialer.alloc(want.len()).unwrap();
    assert_eq!(buf.len(), want.len());
    assert!(buf.iter().all(|&b| b == 0), "alloc returns a zeroed buffer");
    buf.copy_from_slice(&want);
    dialer.send(buf.freeze()).unwrap();
    assert_payload(recv(&accepted).payload(), &want, "alloc'd message");
}

/// `send_batch` accepts every message and keeps per-channel order; `recv_batch` returns what
/// is available, up to `max`.
fn batch_send_and_recv(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let msgs: Vec<Message> = (0..100u32)
        .map(|i| Message::new(numbered_payload(i, i as usize * 37)).with_channel((i % 3) as u16))
        .collect();
    let out = thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut out = Vec::new();
            let none = accepted.recv_batch(&mut out, 0, &RecvOptions::default());
            assert_eq!(none.unwrap(), 0);
            let deadline = Instant::now() + T;
            while out.len() < 100 {
                assert!(
                    Instant::now() < deadline,
                    "only {} of 100 batched messages arrived",
                    out.len()
                );
                let before = out.len();
                let n = accepted
                    .recv_batch(&mut out, 100 - before, &RecvOptions::default().timeout(T))
                    .unwrap();
                assert!(n >= 1 && n == out.len() - before, "recv_batch returned {n}");
            }
            out
        });
        let sent = dialer.send_batch(msgs.clone(), &SendOptions::default());
        assert_eq!(sent.unwrap(), 100);
        pump_until(&dialer, || receiver.is_finished());
        receiver.join().unwrap()
    });
    let mut next = [0u32, 1, 2];
    for m in &out {
        let i = u32::from_be_bytes(m.payload()[..4].try_into().unwrap());
        let ch = m.channel() as usize;
        assert_eq!(i % 3, ch as u32, "message {i} on channel {ch}");
        assert_eq!(i, next[ch], "channel {ch} out of order");
        next[ch] += 3;
        assert_payload(m.payload(), msgs[i as usize].payload(), "batched message");
    }
    // SendOptions::channel overrides every message's own channel.
    let n = dialer
        .send_batch(
            vec![Message::from("a").with_channel(1), Message::from("b")],
            &SendOptions::default().channel(9),
        )
        .unwrap();
    assert_eq!(n, 2);
    for want in ["a", "b"] {
        let m = recv(&accepted);
        assert_eq!((m.channel(), m.payload()), (9, want.as_bytes()));
    }
}

/// A pipe over `f` whose channel 1 is reliable on both ends (the others realtime).
fn pair_reliable_on_1(f: &Fixture) -> Pair {
    let reliable = ChannelOptions::default().reliable(true);
    pair_with(
        f,
        ListenOptions::default().channel(1, reliable.clone()),
        DialOptions::default().channel(1, reliable),
    )
}

/// A payload that says which it is: `i` (4 bytes, big-endian), then `pattern(len, i)`.
fn numbered_payload(i: u32, len: usize) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend(pattern(len, i));
    p
}

/// The `i`th message of [`batch_runs_keep_order_and_counts`]: runs of one channel (the
/// channel changes from run to run) of lengths 1 to 1,500 (past a write's 1,024 frames and
/// 64 KiB), mostly small payloads (0 to 512 bytes, the largest framed in place) with some
/// just over (513) and some large (5,000) inside a run. The payload starts with `i`.
fn run_message(i: u32) -> (u16, Vec<u8>) {
    const RUNS: [u32; 6] = [1, 7, 300, 1_500, 2, 1_100];
    let (mut start, mut k) = (0, 0usize);
    while i >= start + RUNS[k % RUNS.len()] {
        start += RUNS[k % RUNS.len()];
        k += 1;
    }
    let len = match i % 101 {
        13 => 513,
        57 => 5_000,
        n if n % 10 == 0 => 508, // with `i`: 512 bytes
        n => (n as usize * 29) % 509,
    };
    ((k % 3) as u16, numbered_payload(i, len))
}

/// A batch made of runs on one channel (as a stream of updates is), sent with `send_batch`
/// and with `send_slices` (a run per call), on realtime channels (0 and 2) and a reliable
/// one (1): every message arrives intact and in order, and the pipe counts each once, per
/// channel too.
fn batch_runs_keep_order_and_counts(f: &Fixture) {
    const N: u32 = 4_910; // the run lengths twice, the last run cut short
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_reliable_on_1(f);
    let msgs: Vec<(u16, Vec<u8>)> = (0..N).map(run_message).collect();
    let got = thread::scope(|s| {
        let receiver = s.spawn(|| receive_all(&accepted, 2 * N as usize, 700, None));
        let batch = msgs
            .iter()
            .map(|(c, p)| Message::new(p.clone()).with_channel(*c));
        assert_eq!(
            dialer.send_batch(batch, &SendOptions::default()).unwrap(),
            N as usize
        );
        let mut i = 0;
        while i < msgs.len() {
            let c = msgs[i].0;
            let end = msgs[i..]
                .iter()
                .position(|m| m.0 != c)
                .map_or(msgs.len(), |n| i + n);
            let slices = msgs[i..end].iter().map(|m| m.1.as_slice());
            let opts = SendOptions::default().channel(c);
            assert_eq!(dialer.send_slices(slices, &opts).unwrap(), end - i);
            i = end;
        }
        pump_until(&dialer, || receiver.is_finished());
        receiver.join().unwrap()
    });
    // Per channel, its messages in order, twice (channels may interleave).
    let mut want: [Vec<u32>; 3] = Default::default();
    for _ in 0..2 {
        for (i, (c, _)) in msgs.iter().enumerate() {
            want[*c as usize].push(i as u32);
        }
    }
    let mut next = [0usize; 3];
    for (k, (channel, payload)) in got.iter().enumerate() {
        let i = u32::from_be_bytes(payload[..4].try_into().unwrap());
        let c = *channel as usize;
        assert!(c < 3, "message {k} (number {i}) on channel {c}");
        assert_eq!(
            want[c].get(next[c]),
            Some(&i),
            "message {k} on channel {c} out of order"
        );
        next[c] += 1;
        assert_payload(payload, &msgs[i as usize].1, &format!("message {i}"));
    }
    let bytes: u64 = msgs.iter().map(|m| m.1.len() as u64).sum();
    let d = dialer.stats();
    assert_eq!(
        (d.msgs_sent, d.bytes_sent),
        (2 * N as u64, 2 * bytes),
        "{d:?}"
    );
    for c in 0..3u16 {
        let of_c = msgs.iter().filter(|m| m.0 == c);
        let (n, b) = of_c.fold((0u64, 0u64), |(n, b), m| (n + 1, b + m.1.len() as u64));
        let sent = d.channel(c).expect("channel stats");
        assert_eq!(
            (sent.msgs_sent, sent.bytes_sent),
            (2 * n, 2 * b),
            "channel {c}"
        );
        let received = accepted.stats().channel(c).expect("channel stats");
        assert_eq!(
            (received.msgs_received, received.bytes_received),
            (2 * n, 2 * b),
            "channel {c}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Order and concurrency
// ---------------------------------------------------------------------------------------------

const SENDERS: u16 = 4;
const PER_SENDER: u32 = 300;

/// Sender `t`'s message `seq`: channel 10 + t; payload t, seq, then a pattern of a length
/// that varies with seq.
fn numbered(t: u16, seq: u32) -> Message {
    let mut p = Vec::new();
    p.extend_from_slice(&t.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend(pattern((seq as usize * 7) % 500, seq));
    Message::new(p).with_channel(10 + t)
}

/// Checks a message made by [`numbered`] and returns (channel, seq).
fn check_numbered(m: &Message) -> (u16, u32) {
    let p = m.payload();
    let t = u16::from_be_bytes([p[0], p[1]]);
    let seq = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
    assert_eq!(
        m.channel(),
        10 + t,
        "sender {t} seq {seq} on the wrong channel"
    );
    assert_payload(m.payload(), numbered(t, seq).payload(), "numbered message");
    (m.channel(), seq)
}

/// Spawns the sender threads on clones of `pipe`.
fn spawn_senders<'s>(
    s: &'s thread::Scope<'s, '_>,
    pipe: &duct::Pipe,
) -> Vec<thread::ScopedJoinHandle<'s, ()>> {
    (0..SENDERS)
        .map(|t| {
            let p = pipe.clone();
            s.spawn(move || {
                for seq in 0..PER_SENDER {
                    p.send(numbered(t, seq))
                        .unwrap_or_else(|e| panic!("sender {t} seq {seq}: {e}"));
                }
            })
        })
        .collect()
}

/// Several threads send on one pipe, each on its own channel: every message arrives once,
/// and each channel's messages arrive in the order they were sent.
fn order_under_concurrent_senders(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let got = thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut got: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
            for _ in 0..u32::from(SENDERS) * PER_SENDER {
                let (ch, seq) = check_numbered(&recv(&accepted));
                got.entry(ch).or_default().push(seq);
            }
            got
        });
        for h in spawn_senders(s, &dialer) {
            h.join().unwrap();
        }
        // Whatever the sends left queued is written by close (within its linger).
        dialer
            .close_with(CloseOptions::default().linger(T))
            .unwrap();
        receiver.join().unwrap()
    });
    for t in 0..SENDERS {
        let want: Vec<u32> = (0..PER_SENDER).collect();
        assert_eq!(got.get(&(10 + t)), Some(&want), "channel {}", 10 + t);
    }
    // Nothing more: the close comes next.
    expect_kind(recv_t(&accepted), ErrorKind::Closed);
}

/// Two threads receive on one pipe while several send: together they get every message
/// exactly once, each sees every channel in order, and both then see the peer's close.
fn concurrent_receivers_split_without_loss(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let per_receiver: Vec<Vec<(u16, u32)>> = thread::scope(|s| {
        let receivers: Vec<_> = (0..2)
            .map(|_| {
                let p = accepted.clone();
                s.spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match recv_t(&p) {
                            Ok(m) => got.push(check_numbered(&m)),
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::Closed, "receiver ended by {e}");
                                assert_eq!(e.close_reason(), Some((4000, "done")));
                                return got;
                            }
                        }
                    }
                })
            })
            .collect();
        for h in spawn_senders(s, &dialer) {
            h.join().unwrap();
        }
        dialer
            .close_with(CloseOptions::default().reason(4000, "done").linger(T))
            .unwrap();
        receivers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for (r, got) in per_receiver.iter().enumerate() {
        let mut last: BTreeMap<u16, u32> = BTreeMap::new();
        for &(ch, seq) in got {
            if let Some(&prev) = last.get(&ch) {
                assert!(
                    seq > prev,
                    "receiver {r}: channel {ch} went from {prev} to {seq}"
                );
            }
            last.insert(ch, seq);
            assert!(
                all.insert((ch, seq)),
                "channel {ch} seq {seq} delivered twice"
            );
        }
    }
    assert_eq!(
        all.len(),
        usize::from(SENDERS) * PER_SENDER as usize,
        "messages lost"
    );
}

/// Both ends send large messages and receive at the same time, each from two threads.
fn full_duplex_large_messages(f: &Fixture) {
    const N: u32 = 6;
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    thread::scope(|s| {
        for (side, p) in [(0u32, &dialer), (1, &accepted)] {
            s.spawn(move || {
                let sender = s.spawn(move || {
                    for i in 0..N {
                        p.send(pattern(MIB + i as usize, side * 100 + i)).unwrap();
                    }
                });
                let from = 1 - side;
                for i in 0..N {
                    let m = recv(p);
                    assert_payload(
                        m.payload(),
                        &pattern(MIB + i as usize, from * 100 + i),
                        "duplex",
                    );
                }
                sender.join().unwrap();
                // Whatever the sends left queued is written by close (within its linger).
                p.close_with(CloseOptions::default().linger(T)).unwrap();
            });
        }
    });
}

/// Several dialers at once are each served by an echoing listener.
fn many_clients_echo(f: &Fixture) {
    let server = EchoServer::start(&f.addr(), f.listen_opts(ListenOptions::default()));
    let addr = server.addr.as_str();
    thread::scope(|s| {
        for _ in 0..6 {
            let opts = f.dial_opts(DialOptions::default());
            s.spawn(move || check_echo_with(addr, 20, opts));
        }
    });
}

/// Two threads accepting on one listener each get one of two dialers.
fn concurrent_accepts(f: &Fixture) {
    let listener = listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let addr = listener.local_addr().to_string();
    let (dialers, accepted) = thread::scope(|s| {
        let acceptors: Vec<_> = (0..2)
            .map(|_| s.spawn(|| listener.accept_timeout(T)))
            .collect();
        let dialers: Vec<_> = (0..2)
            .map(|_| dial(&addr, f.dial_opts(DialOptions::default())).unwrap())
            .collect();
        let accepted: Vec<_> = acceptors
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        (dialers, accepted)
    });
    for d in &dialers {
        let a = accepted
            .iter()
            .find(|a| a.session_id() == d.session_id())
            .expect("each dialer has an accepted end with its session id");
        d.send("ping").unwrap();
        assert_eq!(recv(a).payload(), b"ping");
    }
    assert_ne!(dialers[0].session_id(), dialers[1].session_id());
}

// ---------------------------------------------------------------------------------------------
// Timeouts and non-blocking calls
// ---------------------------------------------------------------------------------------------

fn recv_timeout_is_timed_out(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer: _dialer,
        accepted,
    } = pair(f);
    let start = Instant::now();
    let e = expect_kind(
        accepted.recv_with(&RecvOptions::default().timeout(Duration::from_millis(100))),
        ErrorKind::TimedOut,
    );
    let took = start.elapsed();
    assert!(e.is_retryable());
    assert!(
        took >= Duration::from_millis(100),
        "returned before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The pipe is still usable.
    assert_eq!(accepted.state(), PipeState::Connected);
}

fn recv_zero_timeout_would_block(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let zero = RecvOptions::default().timeout(Duration::ZERO);
    let start = Instant::now();
    let e = expect_kind(accepted.recv_with(&zero), ErrorKind::WouldBlock);
    assert!(e.is_retryable());
    assert!(start.elapsed() < Duration::from_secs(2));
    dialer.send("now").unwrap();
    let m = poll_until(|| match accepted.recv_with(&zero) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => panic!("recv with zero timeout: {e}"),
    });
    assert_eq!(m.payload(), b"now");
}

fn try_recv_empty_then_message(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    assert!(accepted.try_recv().unwrap().is_none());
    dialer.send(Message::from("hi").with_channel(3)).unwrap();
    let m = poll_until(|| accepted.try_recv().unwrap());
    assert_eq!((m.channel(), m.payload()), (3, &b"hi"[..]));
    assert!(accepted.try_recv().unwrap().is_none());
}

/// Calls `f` until it returns `Some`, for at most [`T`].
fn poll_until<R>(mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {T:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn accept_timeout_without_dialer(f: &Fixture) {
    let listener = listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let start = Instant::now();
    let e = expect_kind(
        listener.accept_timeout(Duration::from_millis(100)),
        ErrorKind::TimedOut,
    );
    let took = start.elapsed();
    assert!(e.is_retryable());
    assert!(
        took >= Duration::from_millis(100),
        "returned before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Close
// ---------------------------------------------------------------------------------------------

/// The peer's messages sent before its close all arrive, in order; then `Closed` with its
/// code and reason, for good.
fn peer_close_with_reason_after_messages(f: &Fixture) {
    const K: u32 = 40;
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let size = |i: u32| if i == K / 2 { MIB + 3 } else { i as usize * 13 };
    let receiver = thread::spawn(move || {
        // In order per channel (channels are scheduled independently).
        let mut next = [0u32, 1];
        for _ in 0..K {
            let m = recv(&accepted);
            let c = m.channel() as usize;
            let i = next[c];
            next[c] += 2;
            assert_payload(m.payload(), &pattern(size(i), i), &format!("message {i}"));
        }
        assert_eq!(next, [K, K + 1]);
        let e = expect_kind(recv_t(&accepted), ErrorKind::Closed);
        assert_eq!(e.close_reason(), Some((4000, "bye")), "{e}");
        assert!(!e.is_retryable());
        // Closed for good: every later call says so, with the same reason.
        for _ in 0..3 {
            let e = expect_kind(recv_t(&accepted), ErrorKind::Closed);
            assert_eq!(e.close_reason(), Some((4000, "bye")));
        }
        expect_kind(accepted.try_recv(), ErrorKind::Closed);
        expect_kind(accepted.send("late"), ErrorKind::Closed);
        expect_kind(
            accepted.send_batch([Message::from("late")], &SendOptions::default()),
            ErrorKind::Closed,
        );
        assert_eq!(accepted.state(), PipeState::Closed);
        accepted.close().unwrap(); // closing a pipe the peer closed is fine
    });
    for i in 0..K {
        dialer
            .send(Message::new(pattern(size(i), i)).with_channel((i % 2) as u16))
            .unwrap();
    }
    dialer
        .close_with(CloseOptions::default().reason(4000, "bye").linger(T))
        .unwrap();
    assert_eq!(dialer.state(), PipeState::Closed);
    receiver.join().unwrap();
}

/// After `close`: send and recv fail with `Closed`, closing again is fine, the state is
/// `Closed`, and the peer sees a close with code 0 and no reason.
fn local_close(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    dialer.close().unwrap();
    assert_eq!(dialer.state(), PipeState::Closed);
    dialer.close().unwrap();
    dialer
        .close_with(CloseOptions::default().reason(1, "again"))
        .unwrap();
    expect_kind(dialer.send("x"), ErrorKind::Closed);
    expect_kind(
        dialer.send_with("x", &SendOptions::default().channel(2)),
        ErrorKind::Closed,
    );
    expect_kind(recv_t(&dialer), ErrorKind::Closed);
    expect_kind(dialer.recv(), ErrorKind::Closed);
    expect_kind(dialer.try_recv(), ErrorKind::Closed);
    assert_eq!(dialer.state(), PipeState::Closed);

    let e = expect_kind(recv_t(&accepted), ErrorKind::Closed);
    assert_eq!(e.close_reason(), Some((close_code::NORMAL, "")), "{e}");
    assert_eq!(accepted.state(), PipeState::Closed);
}

/// `close` from another thread wakes receivers blocked in every way: without a timeout
/// (which reads the socket itself), with a long timeout, and behind another receiver.
fn close_wakes_blocked_recv(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = [None, Some(Duration::from_secs(60)), None]
        .into_iter()
        .map(|timeout| {
            let (p, tx) = (dialer.clone(), tx.clone());
            thread::spawn(move || {
                let r = match timeout {
                    None => p.recv(),
                    Some(t) => p.recv_with(&RecvOptions::default().timeout(t)),
                };
                let _ = tx.send(r);
            })
        })
        .collect();
    // Not synchronisation: the result must be the same whether or not the receivers are
    // already blocked. This only makes it likely that the test covers the blocked case.
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    dialer.close().unwrap();
    for _ in 0..waiters.len() {
        let r = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_else(|_| {
            panic!(
                "a blocked recv did not return within 2 s of close() (after {:?})",
                start.elapsed()
            )
        });
        let e = expect_kind(r, ErrorKind::Closed);
        assert!(!e.is_retryable());
    }
    for h in waiters {
        h.join().unwrap();
    }
    drop(accepted);
}

/// `close` from another thread wakes a `send` blocked because the send queue is full (the
/// peer does not read): it returns `Closed`, and the peer, whose CLOSE was queued behind
/// megabytes that linger zero dropped, sees the connection end without one.
fn close_wakes_blocked_send(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = small_queue_pair(f);
    fill_send_queue(&dialer);
    let sender = {
        let p = dialer.clone();
        thread::spawn(move || {
            p.send_with(
                "blocked",
                &SendOptions::default().timeout(Duration::from_secs(60)),
            )
        })
    };
    // Not synchronisation: the result must be the same whether or not the sender is already
    // blocked. This only makes it likely that the test covers the blocked case.
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    dialer
        .close_with(CloseOptions::default().linger(Duration::ZERO))
        .unwrap();
    let r = sender.join().unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "blocked send returned {took:?} after close"
    );
    let e = expect_kind(r, ErrorKind::Closed);
    assert!(!e.is_retryable());
    let e = match recv_t(&accepted) {
        Ok(m) => panic!("a partially sent message was delivered ({} bytes)", m.len()),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
}

/// Dropping the last handle of a pipe closes it: the peer sees `Closed` with code 0.
fn dropped_peer_is_seen_as_closed(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    dialer.send("last words").unwrap();
    let clone = dialer.clone();
    drop(dialer);
    // A clone keeps the pipe open.
    clone.send("still here").unwrap();
    drop(clone);
    assert_eq!(recv(&accepted).payload(), b"last words");
    assert_eq!(recv(&accepted).payload(), b"still here");
    let e = expect_kind(recv_t(&accepted), ErrorKind::Closed);
    assert_eq!(
        e.close_reason().map(|(code, _)| code),
        Some(close_code::NORMAL),
        "{e}"
    );
    assert_eq!(accepted.state(), PipeState::Closed);
}

/// A dialer whose connection ends without a CLOSE frame: the accepted end's recv returns
/// what arrived, then `Disconnected` (retryable), and the state is `Disconnected`.
fn vanished_dialer_is_disconnected(f: &Fixture) {
    if !raw_peer_or_skip(
        f,
        "vanished_dialer_is_disconnected needs a raw dialer that ends the connection without \
         a CLOSE frame (shm_process.rs covers a killed shm dialer)",
    ) {
        return;
    }
    let listener = listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let addr = listener.local_addr().to_string();
    let (mut raw, accepted) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let mut raw = f.raw_dial(&addr);
        raw.handshake();
        (raw, acceptor.join().unwrap().unwrap())
    });
    raw.session
        .send(4, bytes::Bytes::from_static(b"raw hello"), Instant::now())
        .unwrap();
    raw.flush().unwrap();
    drop(raw);
    let m = recv(&accepted);
    assert_eq!((m.channel(), m.payload()), (4, &b"raw hello"[..]));
    let e = expect_kind(recv_t(&accepted), ErrorKind::Disconnected);
    assert!(e.is_retryable());
    assert_eq!(e.close_reason(), None);
    assert_eq!(accepted.state(), PipeState::Disconnected);
    expect_kind(recv_t(&accepted), ErrorKind::Disconnected);
    expect_kind(accepted.send("anyone?"), ErrorKind::Disconnected);
}

/// A listener whose connection ends without a CLOSE frame: the dialer sees `Disconnected`.
fn vanished_listener_is_disconnected(f: &Fixture) {
    if !raw_peer_or_skip(
        f,
        "vanished_listener_is_disconnected needs a raw listener that ends the connection \
         without a CLOSE frame (shm_process.rs covers a killed shm listener)",
    ) {
        return;
    }
    let (raw_listener, addr) = f.raw_listener();
    let server = thread::spawn(move || {
        let mut raw = RawPeer::serve(raw_listener.accept().unwrap());
        raw.handshake();
        raw.session
            .send(2, bytes::Bytes::from_static(b"from raw"), Instant::now())
            .unwrap();
        raw.flush().unwrap();
        // Dropped without a CLOSE.
    });
    let p = dial(&addr, f.dial_opts(DialOptions::default())).unwrap();
    server.join().unwrap();
    assert_eq!(p.session_id(), 0xABCD);
    let m = recv(&p);
    assert_eq!((m.channel(), m.payload()), (2, &b"from raw"[..]));
    let e = expect_kind(recv_t(&p), ErrorKind::Disconnected);
    assert!(e.is_retryable());
    assert_eq!(p.state(), PipeState::Disconnected);
}

/// A PING from the peer is answered while the application is in `recv`.
fn ping_answered_during_recv(f: &Fixture) {
    if !raw_peer_or_skip(
        f,
        "ping_answered_during_recv needs a raw dialer that sends a PING by hand and reads \
         the PONG",
    ) {
        return;
    }
    let listener = listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let addr = listener.local_addr().to_string();
    let (mut raw, accepted) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let mut raw = f.raw_dial(&addr);
        raw.handshake();
        (raw, acceptor.join().unwrap().unwrap())
    });
    raw.session.ping(0x1234_5678_9abc).unwrap();
    raw.flush().unwrap();
    expect_kind(
        accepted.recv_with(&RecvOptions::default().timeout(Duration::from_millis(200))),
        ErrorKind::TimedOut,
    );
    assert_eq!(
        raw.read_until_event(T),
        Some(Event::Pong {
            token: 0x1234_5678_9abc
        })
    );
}

/// `Listener::close` from another thread wakes a blocked `accept` with `Closed`.
fn listener_close_wakes_accept(f: &Fixture) {
    let listener =
        std::sync::Arc::new(listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap());
    let (tx, rx) = mpsc::channel();
    let acceptor = {
        let l = listener.clone();
        thread::spawn(move || {
            let _ = tx.send(l.accept().map(|_| ()));
        })
    };
    thread::sleep(Duration::from_millis(50)); // see close_wakes_blocked_recv
    listener.close();
    let r = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("accept did not return within 2 s of close");
    expect_kind(r, ErrorKind::Closed);
    acceptor.join().unwrap();
    expect_kind(
        listener.accept_timeout(Duration::from_millis(10)),
        ErrorKind::Closed,
    );
    listener.close(); // idempotent
}

/// Once a listener is dropped, dialing its address is refused (the port, name or socket
/// file is released).
fn dropped_listener_refuses_dialers(f: &Fixture) {
    let addr = {
        let listener = listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
        listener.local_addr().to_string()
    };
    let e = expect_kind(
        dial(
            &addr,
            f.dial_opts(DialOptions::default().timeout(Duration::from_secs(2))),
        ),
        ErrorKind::ConnectionRefused,
    );
    assert!(e.to_string().contains(&addr), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Stats, addresses, identity, state
// ---------------------------------------------------------------------------------------------

fn stats_count_messages_and_bytes(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    for (ch, len) in [(0u16, 10usize), (0, 20), (0, 30), (7, 100), (7, 0)] {
        dialer
            .send(Message::new(pattern(len, 0)).with_channel(ch))
            .unwrap();
    }
    for _ in 0..5 {
        recv(&accepted);
    }
    // A message larger than a Unix socket's buffer: receive it while it is sent.
    thread::scope(|s| {
        let receiver = s.spawn(|| recv(&dialer));
        accepted
            .send(Message::new(pattern(MIB + 5, 1)).with_channel(7))
            .unwrap();
        pump_until(&accepted, || receiver.is_finished());
        receiver.join().unwrap();
    });

    let d = dialer.stats();
    assert_eq!((d.msgs_sent, d.bytes_sent), (5, 160), "{d:?}");
    assert_eq!(
        (d.msgs_received, d.bytes_received),
        (1, MIB as u64 + 5),
        "{d:?}"
    );
    assert_eq!(
        (d.dropped, d.expired, d.retransmits, d.reconnects),
        (0, 0, 0, 0),
        "{d:?}"
    );
    let c0 = d.channel(0).expect("channel 0 stats");
    assert_eq!(
        (
            c0.msgs_sent,
            c0.bytes_sent,
            c0.msgs_received,
            c0.bytes_received
        ),
        (3, 60, 0, 0)
    );
    let c7 = d.channel(7).expect("channel 7 stats");
    assert_eq!(
        (
            c7.msgs_sent,
            c7.bytes_sent,
            c7.msgs_received,
            c7.bytes_received
        ),
        (2, 100, 1, MIB as u64 + 5)
    );
    assert_eq!(d.channel(1), None);
    assert_eq!(d.channels().map(|(c, _)| c).collect::<Vec<_>>(), [0, 7]);

    let a = accepted.stats();
    assert_eq!((a.msgs_sent, a.bytes_sent), (1, MIB as u64 + 5), "{a:?}");
    assert_eq!((a.msgs_received, a.bytes_received), (5, 160), "{a:?}");
    let c0 = a.channel(0).unwrap();
    assert_eq!(
        (c0.msgs_received, c0.bytes_received, c0.msgs_sent),
        (3, 60, 0)
    );
    let c7 = a.channel(7).unwrap();
    assert_eq!(
        (c7.msgs_received, c7.bytes_received, c7.msgs_sent),
        (2, 100, 1)
    );
}

/// The `Display` prefix (scheme and IP, up to the port) of every address of an IP transport;
/// `None` for Unix sockets, shm and named pipes.
fn ip_prefix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Tcp4 => Some("tcp://127.0.0.1:"),
        Kind::Tcp6 => Some("tcp://[::1]:"),
        Kind::Tls => Some("tls://127.0.0.1:"),
        Kind::UdsPath | Kind::UdsAbstract | Kind::Shm | Kind::Pipe => None,
    }
}

/// Whether `a` is the `Addr` variant of an address of transport `kind` (a TLS pipe's and
/// listener's addresses are `Addr::Tls`, never `Addr::Tcp`).
fn addr_has_kind(a: &Addr, kind: Kind) -> bool {
    match kind {
        Kind::Tcp4 | Kind::Tcp6 => matches!(a, Addr::Tcp(_)),
        Kind::Tls => matches!(a, Addr::Tls(_)),
        Kind::UdsPath => matches!(a, Addr::Uds(_)),
        Kind::UdsAbstract => matches!(a, Addr::UdsAbstract(_)),
        Kind::Shm => matches!(a, Addr::Shm(_)),
        Kind::Pipe => matches!(a, Addr::Pipe(_)),
    }
}

fn addresses_display(f: &Fixture) {
    let requested = f.addr();
    let listener = listen(&requested, f.listen_opts(ListenOptions::default())).unwrap();
    let laddr = listener.local_addr().to_string();
    assert!(
        addr_has_kind(&listener.local_addr(), f.kind),
        "{:?}: listener address {:?}",
        f.kind,
        listener.local_addr()
    );
    match ip_prefix(f.kind) {
        Some(prefix) => {
            let port: u16 = laddr
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{laddr} does not start with {prefix}"))
                .parse()
                .unwrap_or_else(|_| panic!("{laddr}: no port"));
            assert_ne!(port, 0, "port 0 was not resolved");
        }
        None => assert_eq!(laddr, requested),
    }
    let (dialer, accepted) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let d = dial(&laddr, f.dial_opts(DialOptions::default())).unwrap();
        (d, acceptor.join().unwrap().unwrap())
    });
    assert_eq!(dialer.peer_addr().to_string(), laddr);
    assert_eq!(accepted.local_addr().to_string(), laddr);
    assert!(
        addr_has_kind(&dialer.peer_addr(), f.kind),
        "{:?}",
        dialer.peer_addr()
    );
    assert!(
        addr_has_kind(&accepted.local_addr(), f.kind),
        "{:?}",
        accepted.local_addr()
    );
    match ip_prefix(f.kind) {
        Some(prefix) => {
            let local = dialer.local_addr().to_string();
            assert!(local.starts_with(prefix), "{local}");
            assert_ne!(local, laddr);
            assert_eq!(accepted.peer_addr().to_string(), local);
            assert!(
                addr_has_kind(&dialer.local_addr(), f.kind),
                "{:?}",
                dialer.local_addr()
            );
            assert!(
                addr_has_kind(&accepted.peer_addr(), f.kind),
                "{:?}",
                accepted.peer_addr()
            );
        }
        None if f.kind == Kind::Pipe => {
            // Both ends of a named pipe are the pipe.
            assert_eq!(dialer.local_addr().to_string(), laddr);
            assert_eq!(accepted.peer_addr().to_string(), laddr);
        }
        None => {
            // A dialing Unix socket is unnamed; so are an shm dialer and an accepted shm
            // pipe's peer.
            assert_eq!(dialer.local_addr(), Addr::Unknown);
            assert_eq!(accepted.peer_addr(), Addr::Unknown);
            assert_eq!(dialer.local_addr().to_string(), "unknown");
            assert_eq!(accepted.peer_addr().to_string(), "unknown");
        }
    }
}

fn session_id_and_state(f: &Fixture) {
    let Pair {
        listener,
        dialer,
        accepted,
    } = pair(f);
    assert_ne!(dialer.session_id(), 0);
    assert_eq!(dialer.session_id(), accepted.session_id());
    assert_eq!(dialer.state(), PipeState::Connected);
    assert_eq!(accepted.state(), PipeState::Connected);
    // A second connection gets a new session id.
    let addr = listener.local_addr().to_string();
    let second = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let d = dial(&addr, f.dial_opts(DialOptions::default())).unwrap();
        acceptor.join().unwrap().unwrap();
        d
    });
    assert_ne!(second.session_id(), 0);
    assert_ne!(second.session_id(), dialer.session_id());
}

/// `on_state_change` reports Connecting → Connected on dial and Connected → Closed, with the
/// peer's close as the cause, when the peer closes.
fn state_changes_on_dial_and_peer_close(f: &Fixture) {
    let (tx, rx) = mpsc::channel::<StateChange>();
    let tx = std::sync::Mutex::new(tx);
    let opts = DialOptions::default().on_state_change(move |c| {
        let _ = tx.lock().unwrap().send(c);
    });
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_with(f, ListenOptions::default(), opts);
    let c = rx.recv_timeout(T).expect("a state change on dial");
    assert_eq!(
        (c.from, c.to, c.session_id),
        (
            PipeState::Connecting,
            PipeState::Connected,
            dialer.session_id()
        )
    );
    assert!(c.cause.is_none(), "{c:?}");
    accepted
        .close_with(CloseOptions::default().reason(4001, "later"))
        .unwrap();
    expect_kind(recv_t(&dialer), ErrorKind::Closed);
    let c = rx
        .recv_timeout(T)
        .expect("a state change on the peer's close");
    assert_eq!((c.from, c.to), (PipeState::Connected, PipeState::Closed));
    let cause = c.cause.expect("the peer's close is the cause");
    assert_eq!(cause.kind(), ErrorKind::Closed);
    assert_eq!(cause.close_reason(), Some((4001, "later")));
    dialer.close().unwrap();
    assert!(
        rx.try_recv().is_err(),
        "no further state change after Closed"
    );
}

/// A local `close` is a change the user asked for: `StateChange::cause` is documented as
/// `None` for those.
fn state_change_on_local_close_has_no_cause(f: &Fixture) {
    let (tx, rx) = mpsc::channel::<StateChange>();
    let tx = std::sync::Mutex::new(tx);
    let opts = DialOptions::default().on_state_change(move |c| {
        let _ = tx.lock().unwrap().send(c);
    });
    let Pair {
        listener: _listener,
        dialer,
        accepted: _accepted,
    } = pair_with(f, ListenOptions::default(), opts);
    rx.recv_timeout(T).expect("Connecting -> Connected");
    dialer.close().unwrap();
    let c = rx.recv_timeout(T).expect("a state change on close");
    assert_eq!((c.from, c.to), (PipeState::Connected, PipeState::Closed));
    assert!(c.cause.is_none(), "cause of a local close: {:?}", c.cause);
}

// ---------------------------------------------------------------------------------------------
// Limits and queues
// ---------------------------------------------------------------------------------------------

/// The dialer's `max_message_size` travels in the handshake: the listener's end refuses to
/// send it anything larger, at `send`, sending nothing; up to the limit works.
fn message_too_large_limit_travels_in_handshake(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_with(
        f,
        ListenOptions::default(),
        DialOptions::default().max_message_size(MIB),
    );
    let e = expect_kind(
        accepted.send(pattern(2 * MIB, 0)),
        ErrorKind::MessageTooLarge,
    );
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains(&(2 * MIB).to_string()) && text.contains(&MIB.to_string()),
        "{text}"
    );
    let e = expect_kind(
        accepted.send_with(pattern(MIB + 1, 0), &SendOptions::default().channel(3)),
        ErrorKind::MessageTooLarge,
    );
    assert!(e.to_string().contains("channel 3"), "{e}");
    assert_eq!(
        accepted.stats().msgs_sent,
        0,
        "a refused message is not counted"
    );
    // Exactly the limit is fine, and nothing of the refused ones was sent.
    let want = pattern(MIB, 5);
    thread::scope(|s| {
        let receiver = s.spawn(|| recv(&dialer));
        accepted.send(want.clone()).unwrap();
        pump_until(&accepted, || receiver.is_finished());
        assert_payload(
            receiver.join().unwrap().payload(),
            &want,
            "message at the limit",
        );
    });
    assert!(dialer.try_recv().unwrap().is_none());
    assert_eq!(accepted.state(), PipeState::Connected);
}

/// `max_message_size` is documented as "the largest message that a pipe sends or accepts":
/// a `send` above this side's own limit fails with `MessageTooLarge`, whatever the peer's.
fn own_max_message_size_limits_send(f: &Fixture) {
    // Each side limits itself to 1 MiB; the peer keeps the default (64 MiB). The peer does
    // not read: should the send be accepted after all, it must not wait long for it.
    let quick = Duration::from_millis(500);
    let Pair {
        listener: _listener,
        dialer,
        accepted: _accepted,
    } = pair_with(
        f,
        ListenOptions::default(),
        DialOptions::default()
            .max_message_size(MIB)
            .send_timeout(quick),
    );
    let r = dialer.send(pattern(2 * MIB, 0));
    assert_eq!(
        r.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::MessageTooLarge),
        "the dialer sent a message above its own max_message_size: {r:?}"
    );
    let Pair {
        listener: _listener,
        dialer: _dialer,
        accepted,
    } = pair_with(
        f,
        ListenOptions::default()
            .max_message_size(MIB)
            .send_timeout(quick),
        DialOptions::default(),
    );
    let r = accepted.send(pattern(2 * MIB, 0));
    assert_eq!(
        r.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::MessageTooLarge),
        "an accepted pipe sent a message above its listener's max_message_size: {r:?}"
    );
}

/// `send` waits for room in the send queue (8 MiB), not for the peer to read: a message that
/// fits in an empty queue is accepted at once even though the peer is not reading (Pipe docs:
/// "it waits up to its timeout for room in the pipe's bounded send queue (8 MiB); Ok means the
/// message was accepted"), and the remainder is written by the next call on the pipe.
fn send_returns_once_accepted(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_with(
        f,
        ListenOptions::default(),
        DialOptions::default().send_timeout(Duration::from_secs(4)),
    );
    let big = pattern(7 * MIB, 3);
    let start = Instant::now();
    dialer.send(big.clone()).unwrap();
    let took = start.elapsed();
    let reader = thread::spawn(move || {
        assert_payload(recv(&accepted).payload(), &big, "7 MiB message");
        accepted.send("got it").unwrap();
        accepted
    });
    // This recv is the "next call" that writes what the send left queued.
    assert_eq!(recv(&dialer).payload(), b"got it");
    let _accepted = reader.join().unwrap();
    assert!(
        took < Duration::from_secs(2),
        "send of 7 MiB into an empty queue waited {took:?} for the peer to read \
         (the send timeout is 4 s)"
    );
}

/// A pair whose dialer's channel 0 queues at most 8 MiB (so that one huge message fills it)
/// and whose accepted end reads ahead at most 1 MiB of it.
fn small_queue_pair(f: &Fixture) -> Pair {
    let send = ChannelOptions::default().snd_hwm_bytes(8 * MIB);
    let recv = ChannelOptions::default().rcv_hwm_bytes(MIB);
    pair_with(
        f,
        ListenOptions::default().channel(0, recv),
        DialOptions::default().channel(0, send),
    )
}

/// Fills the send queue of channel 0 of `p`, made by [`small_queue_pair`] (the peer does not
/// read): one huge message, accepted at once.
fn fill_send_queue(p: &duct::Pipe) -> Vec<u8> {
    let big = pattern(32 * MIB, 77);
    p.send_with(big.clone(), &SendOptions::default().timeout(Duration::ZERO))
        .expect("the first message is accepted into an empty queue");
    big
}

/// With the send queue full and the peer not reading, a send with a timeout fails with
/// `TimedOut` and sends nothing; the queued message is completed by the next call.
fn send_queue_full_times_out_and_sends_nothing(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = small_queue_pair(f);
    let big = fill_send_queue(&dialer);
    let start = Instant::now();
    let e = expect_kind(
        dialer.send_with(
            "refused",
            &SendOptions::default().timeout(Duration::from_millis(200)),
        ),
        ErrorKind::TimedOut,
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(e.is_retryable());
    assert_eq!(
        dialer.stats().msgs_sent,
        1,
        "the refused message is not counted"
    );
    let reader = thread::spawn(move || {
        let m = recv(&accepted);
        assert_payload(m.payload(), &big, "queued 32 MiB message");
        let m = recv(&accepted);
        assert_eq!(
            m.payload(),
            b"after",
            "the refused message must not be sent"
        );
        assert!(accepted.try_recv().unwrap().is_none());
        accepted // kept open until the pump has stopped
    });
    dialer.send("after").unwrap();
    pump_until(&dialer, || reader.is_finished());
    let _accepted = reader.join().unwrap();
}

/// `SendOptions::timeout(Duration::ZERO)` is documented: "a full queue fails at once with
/// `ErrorKind::WouldBlock`".
fn send_zero_timeout_on_full_queue_would_block(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = small_queue_pair(f);
    let big = fill_send_queue(&dialer);
    let r = dialer.send_with("refused", &SendOptions::default().timeout(Duration::ZERO));
    let reader = thread::spawn(move || {
        assert_payload(recv(&accepted).payload(), &big, "queued 32 MiB message");
        assert_eq!(recv(&accepted).payload(), b"after");
        accepted // kept open until the pump has stopped
    });
    dialer.send("after").unwrap();
    pump_until(&dialer, || reader.is_finished());
    let _accepted = reader.join().unwrap();
    let e = expect_kind(r, ErrorKind::WouldBlock);
    assert!(e.is_retryable());
}

// ---------------------------------------------------------------------------------------------
// Instantiation: one module per transport, one #[test] per case.
// ---------------------------------------------------------------------------------------------

/// The payload of message `i` of [`slices_and_views_round_trip`]: its number, then a pattern
/// of a length that varies (empty to 2 KiB, and every 97th 100 KiB: fragmented on sockets).
fn view_payload(i: u32) -> Vec<u8> {
    let len = if i % 97 == 50 {
        100 * KIB
    } else {
        (i as usize * 53) % 2048
    };
    numbered_payload(i, len)
}

/// Takes `n` messages with `recv_into` (up to `max` a call, into one reused batch): each
/// message's channel and payload go to `seen`; every 10th is kept as a `Message`, which must
/// outlive the batch it came in.
fn take_views(p: &duct::Pipe, n: usize, max: usize) -> (Vec<(u16, Vec<u8>)>, Vec<Message>) {
    let mut batch = duct::MessageBatch::with_capacity(max);
    let (mut seen, mut kept) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + T;
    while seen.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived",
            seen.len()
        );
        let got = p
            .recv_into(&mut batch, max, &RecvOptions::default().timeout(T))
            .unwrap();
        assert!(
            got >= 1 && got <= max && got == batch.len(),
            "recv_into returned {got}"
        );
        assert_eq!(batch.iter().len(), got);
        for m in &batch {
            assert_eq!(m.len(), m.payload().len());
            if seen.len() % 10 == 0 {
                let own = m.to_message();
                assert_eq!((own.channel(), own.payload()), (m.channel(), m.payload()));
                kept.push(own);
            }
            seen.push((m.channel(), m.payload().to_vec()));
        }
        // The last message, looked at from the end.
        let last = batch.iter().next_back().unwrap();
        assert_eq!(last.payload(), batch.get(got - 1).unwrap().payload());
        assert!(batch.get(got).is_none());
    }
    (seen, kept)
}

/// Checks what [`take_views`] saw of messages `0..n` sent on channel `i % 3`: each channel's
/// messages whole and in order, and the kept ones intact.
fn check_views(seen: &[(u16, Vec<u8>)], kept: &[Message], n: u32) {
    assert_eq!(seen.len(), n as usize);
    let mut next = [0u32, 1, 2];
    for (channel, payload) in seen {
        let i = u32::from_be_bytes(payload[..4].try_into().unwrap());
        assert_eq!(*channel as u32, i % 3, "message {i} on channel {channel}");
        assert_eq!(i, next[*channel as usize], "channel {channel} out of order");
        next[*channel as usize] += 3;
        assert_payload(payload, &view_payload(i), &format!("message {i}"));
    }
    for m in kept {
        let i = u32::from_be_bytes(m.payload()[..4].try_into().unwrap());
        assert_payload(m.payload(), &view_payload(i), &format!("kept message {i}"));
    }
}

fn slices_and_views_round_trip(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    const N: u32 = 600;
    let (seen, kept) = thread::scope(|s| {
        let receiver = s.spawn(|| take_views(&accepted, N as usize, 64));
        // One scratch buffer, rewritten for every message: what was sent is a copy.
        let mut scratch = Vec::new();
        for i in 0..N / 2 {
            scratch.clear();
            scratch.extend(view_payload(i));
            let on = SendOptions::default().channel((i % 3) as u16);
            dialer.send_slice(&scratch, &on).unwrap();
            scratch.fill(0xEE);
        }
        // The rest in runs of one channel.
        let mut i = N / 2;
        while i < N {
            let channel = i % 3;
            let run: Vec<Vec<u8>> = (i..N).step_by(3).take(7).map(view_payload).collect();
            let on = SendOptions::default().channel(channel as u16);
            let sent = dialer
                .send_slices(run.iter().map(Vec::as_slice), &on)
                .unwrap();
            assert_eq!(sent, run.len());
            // The messages of the other channels in between, one by one, as above.
            for j in (i..N).step_by(3).take(7) {
                for k in j + 1..(j + 3).min(N) {
                    let on = SendOptions::default().channel((k % 3) as u16);
                    dialer.send_slice(&view_payload(k), &on).unwrap();
                }
            }
            i += 21;
        }
        pump_until(&dialer, || receiver.is_finished());
        receiver.join().unwrap()
    });
    check_views(&seen, &kept, N);
    // An empty run sends nothing; `max == 0` takes nothing and empties the batch.
    assert_eq!(
        dialer
            .send_slices(std::iter::empty(), &SendOptions::default())
            .unwrap(),
        0
    );
    dialer.send_slice(b"x", &SendOptions::default()).unwrap();
    let mut batch = duct::MessageBatch::new();
    let n = accepted
        .recv_into(&mut batch, 1, &RecvOptions::default().timeout(T))
        .unwrap();
    assert_eq!((n, batch.len()), (1, 1));
    assert_eq!(batch.get(0).unwrap().payload(), b"x");
    assert_eq!(
        accepted
            .recv_into(&mut batch, 0, &RecvOptions::default())
            .unwrap(),
        0
    );
    assert!(batch.is_empty());
    let zero = RecvOptions::default().timeout(Duration::ZERO);
    expect_kind(
        accepted.recv_into(&mut batch, 8, &zero),
        ErrorKind::WouldBlock,
    );
    assert!(batch.is_empty());
}

/// Writes `payloads` one after the other into `scratch` (emptied first); returns where each
/// ends, for [`run_slices`].
fn write_run(scratch: &mut Vec<u8>, payloads: impl Iterator<Item = Vec<u8>>) -> Vec<usize> {
    scratch.clear();
    payloads
        .map(|p| {
            scratch.extend(p);
            scratch.len()
        })
        .collect()
}

/// The payloads [`write_run`] wrote into `scratch`, as slices of it.
fn run_slices<'a>(scratch: &'a [u8], ends: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts
        .zip(ends)
        .map(move |(start, &end)| &scratch[start..end])
}

/// Sends messages `range` (`payload(i)`) with one `send_slices` call, written into `scratch`
/// first (one buffer, rewritten for each call: what was sent is a copy).
fn send_numbered_run(
    dialer: &duct::Pipe,
    scratch: &mut Vec<u8>,
    range: std::ops::Range<u32>,
    payload: impl Fn(u32) -> Vec<u8>,
    on: &SendOptions,
) -> duct::Result<usize> {
    let ends = write_run(scratch, range.map(payload));
    dialer.send_slices(run_slices(scratch, &ends), on)
}

/// Every message of `got` is on channel 0, the `k`th of them `payload(k)`: all arrived
/// intact, once, in order.
fn assert_numbered_in_order(got: &[(u16, Vec<u8>)], payload: impl Fn(u32) -> Vec<u8>) {
    for (k, (channel, p)) in got.iter().enumerate() {
        assert_eq!(*channel, 0, "message {k}");
        let i = u32::from_be_bytes(p[..4].try_into().unwrap());
        assert_eq!(i, k as u32, "message {k} out of order");
        assert_payload(p, &payload(i), &format!("message {i}"));
    }
}

/// Receives `n` messages with `recv_into` (up to `max` a call) as (channel, payload);
/// `pause`: after every `k` messages, sleeps that long.
fn receive_all(
    p: &duct::Pipe,
    n: usize,
    max: usize,
    pause: Option<(usize, Duration)>,
) -> Vec<(u16, Vec<u8>)> {
    let mut batch = duct::MessageBatch::new();
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} arrived",
            got.len()
        );
        let before = got.len();
        p.recv_into(&mut batch, max, &RecvOptions::default().timeout(T))
            .unwrap();
        got.extend(batch.iter().map(|m| (m.channel(), m.payload().to_vec())));
        if let Some((_, nap)) = pause.filter(|&(k, _)| before / k != got.len() / k) {
            thread::sleep(nap);
        }
    }
    got
}

/// Slices sent while the peer does not read wait in the channels' queues as copies (in the
/// pipe's reused spill buffers); when the peer reads, every one arrives intact, in order,
/// on a realtime and on a reliable channel alike.
fn slices_wait_in_full_queues_intact(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_reliable_on_1(f);
    const N: u32 = 40_000;
    let payload = |i: u32| numbered_payload(i, 60 + (i as usize % 80));
    let (got, sender_done_first) = thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut scratch = Vec::new();
            let mut i = 0;
            while i < N {
                // Runs of 100 on channel `run % 2`, from one scratch buffer rewritten per run.
                let on = SendOptions::default()
                    .channel(((i / 100) % 2) as u16)
                    .timeout(T);
                let sent = send_numbered_run(&dialer, &mut scratch, i..i + 100, payload, &on);
                assert_eq!(sent.unwrap(), 100);
                i += 100;
            }
        });
        // Let the sender fill the socket and the queues before reading.
        thread::sleep(Duration::from_millis(300));
        let sender_done_first = sender.is_finished();
        let got = receive_all(&accepted, N as usize, 256, None);
        sender.join().unwrap();
        (got, sender_done_first)
    });
    assert!(
        !sender_done_first,
        "the sender never had to wait: the queues were not filled"
    );
    let mut next = [0u32, 100];
    for (channel, p) in &got {
        let i = u32::from_be_bytes(p[..4].try_into().unwrap());
        let c = *channel as usize;
        assert_eq!(i, next[c], "channel {channel} out of order");
        next[c] += if (i + 1) % 100 == 0 { 101 } else { 1 };
        assert_payload(p, &payload(i), &format!("message {i}"));
    }
    let sent = dialer.stats();
    assert_eq!(sent.msgs_sent, u64::from(N), "{sent:?}");
}

/// Long runs of small slices, each far more than the transport holds (a shm ring takes
/// ~1,300 of them), sent while the reader takes them as fast as it can: the sender finds the
/// transport full again and again in the middle of a call (on shm it waits there a little
/// for room: `FrameIo::wait_room`), and every message arrives intact, once, in order.
fn long_slice_runs_arrive_in_order_while_the_reader_keeps_up(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    const RUN: u32 = 4_096;
    const N: u32 = 10 * RUN;
    let payload = |i: u32| numbered_payload(i, 60);
    let got = thread::scope(|s| {
        let receiver = s.spawn(|| receive_all(&accepted, N as usize, 1024, None));
        let mut scratch = Vec::new();
        let on = SendOptions::default().timeout(T);
        for run in 0..N / RUN {
            let range = run * RUN..(run + 1) * RUN;
            let sent = send_numbered_run(&dialer, &mut scratch, range, payload, &on);
            assert_eq!(sent.unwrap(), RUN as usize);
        }
        pump_until(&dialer, || receiver.is_finished());
        receiver.join().unwrap()
    });
    assert_eq!(got.len(), N as usize);
    assert_numbered_in_order(&got, payload);
    assert_eq!(dialer.stats().msgs_sent, u64::from(N));
}

/// A large call of `send_slices` (256 messages) that finds the transport full waits for it
/// to take more before it queues the rest (`PipeStats::room_waits`); a small call never
/// waits so (a sender serving many pipes in turn is not held up by one); and a reader that
/// stopped costs one wait, not one a call: once a wait brought no room, calls queue at once
/// until the transport takes something. When the reader starts, every message accepted
/// arrives intact, once, in order.
fn a_full_transport_is_waited_for_once_while_the_reader_is_stopped(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    let payload = |i: u32| numbered_payload(i, 1000);
    let mut scratch = Vec::new();
    // Short timeouts: calls that find the channel's queue full give up quickly.
    let on = SendOptions::default().timeout(Duration::from_millis(20));
    let mut send_run = |from: u32, run: u32| match send_numbered_run(
        &dialer,
        &mut scratch,
        from..from + run,
        payload,
        &on,
    ) {
        Ok(n) => n as u32,
        Err(e) if e.kind() == duct::ErrorKind::TimedOut => 0,
        Err(e) => panic!("send_slices: {e}"),
    };
    // Fill the transport, the reader's read-ahead and the channel's queue with small calls,
    // until one is not taken whole: none of them waits for the transport.
    let fill = |send_run: &mut dyn FnMut(u32, u32) -> u32, sent: &mut u32, run: u32| loop {
        assert!(*sent < 1_000_000, "the transport never filled");
        let n = send_run(*sent, run);
        *sent += n;
        if n < run {
            break;
        }
    };
    const SMALL: u32 = 16;
    let mut sent = 0;
    fill(&mut send_run, &mut sent, SMALL);
    assert_eq!(dialer.stats().room_waits, 0, "a call of {SMALL} waited");
    let mut got = receive_all(&accepted, sent as usize, 1024, None);
    // Again with large calls: they wait for the transport as it fills.
    const LARGE: u32 = 256;
    fill(&mut send_run, &mut sent, LARGE);
    if f.kind != Kind::Pipe {
        assert!(
            dialer.stats().room_waits >= 1,
            "calls of {LARGE} never waited for the full transport"
        );
    }
    // (The reader's side has stopped reading ahead by now.)
    thread::sleep(Duration::from_millis(100));
    let waits = dialer.stats().room_waits;
    // Nothing moves: more calls queue (or time out) without waiting again.
    const CALLS: u64 = 10;
    for _ in 0..CALLS {
        sent += send_run(sent, LARGE);
    }
    // (tcp may take a few more bytes meanwhile, once: the receiving kernel compacts what it
    // holds and opens its window a little (tcp_ipv6 does so in every run here), and a send
    // that follows room that came may wait again. Without the stall's memory every call
    // waits.)
    let again = dialer.stats().room_waits - waits;
    assert!(
        again <= 2,
        "a sender waited {again} more times in {CALLS} calls for a transport whose reader stopped"
    );
    got.extend(receive_all(
        &accepted,
        sent as usize - got.len(),
        1024,
        None,
    ));
    assert_numbered_in_order(&got, payload);
    assert_eq!(dialer.stats().msgs_sent, u64::from(sent));
}

/// Sends messages `0..n` (`payload(i)`) with `send_slices` from one scratch buffer, rewritten
/// after every call, in runs that `run(i)` gives (channel, length) for the run starting at
/// `i`, while the reader waits 300 ms first and then pauses 20 ms after every `pause.0`
/// messages, taking at most `pause.1` at a time; returns what it received. Asserts that the
/// sender had to wait (the socket and the queue filled).
fn slices_while_the_reader_pauses(
    dialer: &duct::Pipe,
    accepted: &duct::Pipe,
    n: u32,
    run: impl Fn(u32) -> (u16, u32) + Sync,
    payload: &(impl Fn(u32) -> Vec<u8> + Sync),
    pause: (usize, usize),
) -> Vec<(u16, Vec<u8>)> {
    let (got, sender_done_first) = thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut scratch = Vec::new();
            let mut i = 0;
            while i < n {
                let (channel, len) = run(i);
                let on = SendOptions::default().channel(channel).timeout(T);
                let sent = send_numbered_run(dialer, &mut scratch, i..i + len, payload, &on);
                assert_eq!(sent.unwrap(), len as usize);
                // Nothing of the caller's memory may be used after the call.
                scratch.fill(0xEE);
                i += len;
            }
        });
        // Let the sender fill the socket and the queue before reading.
        thread::sleep(Duration::from_millis(300));
        let sender_done_first = sender.is_finished();
        // And stop now and then, so that the socket fills again.
        let every = (pause.0, Duration::from_millis(20));
        let got = receive_all(accepted, n as usize, pause.1, Some(every));
        sender.join().unwrap();
        (got, sender_done_first)
    });
    assert!(
        !sender_done_first,
        "the sender never had to wait: the socket and queue were not filled"
    );
    got
}

/// Large slices (513 B to one whole frame, with small ones between) sent in runs from one
/// scratch buffer, rewritten after every call, while the reader stops now and then: on a
/// byte stream a large one is written straight from the caller's memory when the socket has
/// room, and copied only when it has not (or not for all of it). Every message arrives
/// intact and in order, whatever the socket took.
fn large_slices_arrive_intact_while_the_socket_fills(f: &Fixture) {
    // Queues far smaller than the run on both sides (the receiving side's reactor reads
    // ahead into its own): the sender has to wait for the reader, however fast it is.
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_with(
        f,
        ListenOptions::default().channel(0, ChannelOptions::default().rcv_hwm_msgs(64)),
        DialOptions::default().channel(0, ChannelOptions::default().snd_hwm_msgs(64)),
    );
    const N: u32 = 1500;
    let payload = |i: u32| {
        let len = match i % 11 {
            0 | 5 => 12,
            3 => 64 * KIB - 4, // with its number: one whole frame
            _ => 509 + (i as usize * 7919) % (60 * KIB),
        };
        numbered_payload(i, len)
    };
    let run = |i: u32| (0, (i % 8 + 1).min(N - i));
    let got = slices_while_the_reader_pauses(&dialer, &accepted, N, run, &payload, (200, 16));
    for (i, (_, p)) in got.iter().enumerate() {
        assert_payload(p, &payload(i as u32), &format!("message {i}"));
    }
}

/// Large slices that take several frames (64 KiB + 1 to about 1 MiB), with small messages on
/// another channel between them, sent from one scratch buffer rewritten after every call
/// while the reader stops now and then: on a byte stream the fragments of a large one are
/// written straight from the caller's memory while the socket takes them whole, and the rest
/// of the message is copied and framed by the session once it does not. Every message
/// arrives intact and in order on its channel, wherever the socket filled.
fn fragmented_slices_arrive_intact_while_the_socket_fills(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair_with(
        f,
        ListenOptions::default().channel(0, ChannelOptions::default().rcv_hwm_msgs(4)),
        DialOptions::default().channel(0, ChannelOptions::default().snd_hwm_msgs(4)),
    );
    const N: u32 = 90;
    // Every third message small, on channel 1; the others large, on channel 0.
    let channel = |i: u32| u16::from(i % 3 == 2);
    let payload = |i: u32| {
        let len = if channel(i) == 1 {
            12
        } else {
            64 * KIB + 1 + (i as usize * 7919 * 37) % (960 * KIB)
        };
        numbered_payload(i, len)
    };
    // A run of one channel's messages per call: up to two large ones, or a small one.
    let run = |i: u32| {
        let same = (i..N).take(2).take_while(|&j| channel(j) == channel(i));
        (channel(i), same.count() as u32)
    };
    let got = slices_while_the_reader_pauses(&dialer, &accepted, N, run, &payload, (7, 4));
    let mut next = [0u32, 2];
    for (c, p) in &got {
        let i = u32::from_be_bytes(p[..4].try_into().unwrap());
        assert_eq!(channel(i), *c, "message {i} on channel {c}");
        let k = *c as usize;
        assert_eq!(i, next[k], "channel {c} out of order");
        next[k] = (next[k] + 1..).find(|&j| channel(j) == *c).unwrap();
        assert_payload(p, &payload(i), &format!("message {i}"));
    }
    assert_eq!(got.len(), N as usize);
}

/// Large slices on channel 0 from one thread (fragments written from its memory while the
/// socket takes them and nothing else waits) and small ones on channel 1 from another, at
/// once: a large message whose writer stops for the other's (the session sends its rest
/// between their frames) arrives whole, and every message arrives intact and in order on
/// its channel.
fn fragmented_slices_beside_a_concurrent_sender(f: &Fixture) {
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(f);
    const LARGE: u32 = 24;
    const SMALL: u32 = 300;
    let large = |i: u32| numbered_payload(i, 64 * KIB + 1 + (i as usize * 7919 * 37) % (960 * KIB));
    let small = |i: u32| numbered_payload(i, 20);
    let got = thread::scope(|s| {
        s.spawn(|| {
            let mut scratch = Vec::new();
            for i in 0..LARGE {
                scratch.clear();
                scratch.extend(large(i));
                dialer
                    .send_slice(&scratch, &SendOptions::default())
                    .unwrap();
                scratch.fill(0xEE);
            }
        });
        s.spawn(|| {
            let on = SendOptions::default().channel(1);
            for i in 0..SMALL {
                dialer.send_slice(&small(i), &on).unwrap();
                if i % 10 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        receive_all(&accepted, (LARGE + SMALL) as usize, 16, None)
    });
    let mut next = [0u32, 0];
    for (c, p) in &got {
        let i = u32::from_be_bytes(p[..4].try_into().unwrap());
        assert_eq!(i, next[*c as usize], "channel {c} out of order");
        next[*c as usize] += 1;
        let want = if *c == 0 { large(i) } else { small(i) };
        assert_payload(p, &want, &format!("message {i} on channel {c}"));
    }
    assert_eq!(next, [LARGE, SMALL]);
}

macro_rules! transport_suite {
    ($module:ident, $kind:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    if let Some(fixture) = crate::common::Fixture::new($kind) {
                        super::$case(&fixture);
                    }
                }
            )*
        }
    };
}

macro_rules! conformance {
    ($cases:tt) => {
        transport_suite!(tcp_ipv4, crate::common::Kind::Tcp4, $cases);
        transport_suite!(tcp_ipv6, crate::common::Kind::Tcp6, $cases);
        transport_suite!(uds_path, crate::common::Kind::UdsPath, $cases);
        transport_suite!(uds_abstract, crate::common::Kind::UdsAbstract, $cases);
        transport_suite!(tls, crate::common::Kind::Tls, $cases);
        transport_suite!(shm, crate::common::Kind::Shm, $cases);
        transport_suite!(pipe, crate::common::Kind::Pipe, $cases);
    };
}

conformance!([
    round_trip_all_sizes,
    channels_are_preserved,
    alloc_buffer_round_trip,
    batch_send_and_recv,
    batch_runs_keep_order_and_counts,
    order_under_concurrent_senders,
    concurrent_receivers_split_without_loss,
    full_duplex_large_messages,
    many_clients_echo,
    concurrent_accepts,
    recv_timeout_is_timed_out,
    recv_zero_timeout_would_block,
    try_recv_empty_then_message,
    accept_timeout_without_dialer,
    peer_close_with_reason_after_messages,
    local_close,
    close_wakes_blocked_recv,
    close_wakes_blocked_send,
    dropped_peer_is_seen_as_closed,
    vanished_dialer_is_disconnected,
    vanished_listener_is_disconnected,
    ping_answered_during_recv,
    listener_close_wakes_accept,
    dropped_listener_refuses_dialers,
    stats_count_messages_and_bytes,
    addresses_display,
    session_id_and_state,
    state_changes_on_dial_and_peer_close,
    state_change_on_local_close_has_no_cause,
    message_too_large_limit_travels_in_handshake,
    own_max_message_size_limits_send,
    send_returns_once_accepted,
    send_queue_full_times_out_and_sends_nothing,
    send_zero_timeout_on_full_queue_would_block,
    slices_and_views_round_trip,
    slices_wait_in_full_queues_intact,
    long_slice_runs_arrive_in_order_while_the_reader_keeps_up,
    a_full_transport_is_waited_for_once_while_the_reader_is_stopped,
    large_slices_arrive_intact_while_the_socket_fills,
    fragmented_slices_arrive_intact_while_the_socket_fills,
    fragmented_slices_beside_a_concurrent_sender,
]);
