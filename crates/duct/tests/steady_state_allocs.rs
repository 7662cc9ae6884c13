//! Zero allocations per message in the steady state: a stream of 64-byte messages over tcp,
//! uds and shm (over tls, none from duct: rustls allocates per TLS record), counted by a
//! counting global allocator across the whole process (sender, receiver and reactor threads
//! alike), sent and received both ways: as `Message`s
//! (`send_batch`, `recv_batch`) and as slices and views (`send_slices`, `recv_into`), where
//! copies that wait in a channel's queue share reused buffers.
//!
//! Polling an empty pipe (`try_recv`, and receives with a zero timeout, whose `WouldBlock`
//! error is made with the pipe) allocates nothing either, from the first poll on, and neither does what every pipe
//! does on its own while idle: heartbeat PINGs and PONGs, and metrics publications (which a
//! thousand pipes make a thousand times a second each).
//!
//! One test in this file, so that no other test allocates in the process while it counts.
//! The bound leaves room for what is not per message (a heartbeat PING, a timer), and is far
//! below one allocation per thousand messages. Before counting, the sender fills the socket
//! and its queues once, so that every buffer has grown to its working size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duct::{
    ChannelOptions, DialOptions, ListenOptions, Message, MessageBatch, RecvOptions, SendOptions,
};
use duct_sys::alloc_count::{snapshot, CountingAlloc};

mod common;
use common::Fixture;
#[cfg(feature = "tls")]
use common::Kind;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const WARMUP: u64 = 50_000;
const MEASURED: u64 = 200_000;
/// Allocations allowed over [`MEASURED`] messages: 1 in 10,000 (a bug that allocates once
/// per buffer of received messages, every ~1,000 of them, shows 200).
const MAX_ALLOCS: u64 = MEASURED / 10_000;
/// Allocations allowed over [`MEASURED`] messages on tls: 1 in 20. rustls allocates twice
/// per record (see the test), and a record here holds one send's 64 messages or more: at
/// most ~3,100 records, ~6,300 allocations (5,562 measured). One per message, from duct or
/// from rustls, would show 200,000 or more.
#[cfg(feature = "tls")]
const MAX_TLS_ALLOCS: u64 = MEASURED / 20;

/// Streams messages from a dialer thread to the listener's side (`slices`: with
/// `send_slices` and `recv_into`; `reliable`: on a reliable channel; with the options
/// `fixture` needs, its TLS settings); returns the allocations of the whole process while
/// [`MEASURED`] messages were received, after a warm-up.
fn allocations_while_streaming(
    addr: &str,
    fixture: Option<&Fixture>,
    slices: bool,
    reliable: bool,
) -> u64 {
    let channel = ChannelOptions::default().reliable(reliable);
    let mut lopts = ListenOptions::default().channel(0, channel.clone());
    let mut dopts = DialOptions::default().channel(0, channel);
    if let Some(f) = fixture {
        lopts = f.listen_opts(lopts);
        dopts = f.dial_opts(dopts);
    }
    let listener = duct::listen(addr, lopts).unwrap();
    let addr = listener.local_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let pipe = duct::dial(&addr, dopts).unwrap();
            let payload = Bytes::from(vec![7u8; 64]);
            let opts = SendOptions::default().timeout(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                let sent = if slices {
                    pipe.send_slices((0..64).map(|_| &payload[..]), &opts)
                } else {
                    pipe.send_batch((0..64).map(|_| Message::new(payload.clone())), &opts)
                };
                match sent {
                    Ok(_) => {}
                    Err(e) if e.kind() == duct::ErrorKind::TimedOut => {}
                    Err(e) => panic!("send_batch: {e}"),
                }
            }
            pipe.close().unwrap();
        })
    };
    let pipe = listener.accept().unwrap();
    let opts = RecvOptions::default().timeout(Duration::from_secs(10));
    let mut out = Vec::with_capacity(64);
    let mut batch = MessageBatch::with_capacity(64);
    let mut receive = |n: u64| {
        let mut got = 0;
        while got < n {
            if slices {
                got += pipe.recv_into(&mut batch, 64, &opts).unwrap() as u64;
                assert!(batch.iter().all(|m| m.payload() == [7u8; 64]));
            } else {
                out.clear();
                got += pipe.recv_batch(&mut out, 64, &opts).unwrap() as u64;
                assert!(out.iter().all(|m| m.len() == 64));
            }
        }
    };
    receive(WARMUP);
    // Buffers grow to their working size the first time they are needed, and keep it: let
    // the sender fill the socket and its queue once (its spill buffers too, with slices), so
    // that the measured messages find them grown whatever the timing of the run.
    std::thread::sleep(Duration::from_millis(200));
    receive(WARMUP);
    let before = snapshot();
    receive(MEASURED);
    let allocs = snapshot().since(&before).allocations();
    stop.store(true, Ordering::Relaxed);
    // The sender may be blocked on a full queue: keep reading until it is done.
    let drain =
        std::thread::spawn(move || while pipe.recv_batch(&mut Vec::new(), 64, &opts).is_ok() {});
    sender.join().unwrap();
    drain.join().unwrap();
    allocs
}

/// Polls an empty pipe without waiting, every way there is; returns the allocations of the
/// whole process during its first round of polls, and during 10,000 rounds after it.
fn allocations_while_polling_an_empty_pipe(addr: &str) -> (u64, u64) {
    let listener = duct::listen(addr, ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    let dialer = duct::dial(&addr, DialOptions::default()).unwrap();
    let pipe = listener.accept().unwrap();
    let now = RecvOptions::default().timeout(Duration::ZERO);
    let mut out = Vec::with_capacity(64);
    let mut poll = || {
        assert!(pipe.try_recv().unwrap().is_none());
        let e = pipe.recv_batch(&mut out, 64, &now).unwrap_err();
        assert_eq!(e.kind(), duct::ErrorKind::WouldBlock);
        let e = pipe.recv_with(&now).unwrap_err();
        assert_eq!(e.kind(), duct::ErrorKind::WouldBlock);
    };
    // (The pipes' setup done on both reactors before the first poll is counted.)
    std::thread::sleep(Duration::from_millis(50));
    let before = snapshot();
    poll();
    let first = snapshot().since(&before).allocations();
    let before = snapshot();
    for _ in 0..10_000 {
        poll();
    }
    let allocs = snapshot().since(&before).allocations();
    drop(dialer);
    (first, allocs)
}

/// Opens `pipes` pipes to `addr` with heartbeats every 10 ms (the shortest) on both ends,
/// lets them run idle (their first metrics publications register their handles), then
/// returns the allocations of the whole process over `window`. Checks that heartbeats ran
/// on every pipe: one end of each has a round-trip sample at least (an end PINGs only after
/// an interval of silence, so the end whose peer PINGs first may never need to).
fn allocations_of_idle_pipes(addr: &str, pipes: usize, window: Duration) -> u64 {
    let hb = duct::Heartbeat::new(Duration::from_millis(10), 50);
    let listener = duct::listen(addr, ListenOptions::default().heartbeat(hb)).unwrap();
    let addr = listener.local_addr().to_string();
    let dialers: Vec<_> = (0..pipes)
        .map(|_| duct::dial(&addr, DialOptions::default().heartbeat(hb)).unwrap())
        .collect();
    // Pairs each accepted pipe with its dialer: the dialer's index, sent before counting.
    for (i, d) in dialers.iter().enumerate() {
        d.send(Message::new(Bytes::from(i.to_le_bytes().to_vec())))
            .unwrap();
    }
    let accepted: Vec<_> = (0..pipes)
        .map(|_| {
            let p = listener.accept().unwrap();
            let m = p.recv().unwrap();
            let i = usize::from_le_bytes(m.payload()[..].try_into().unwrap());
            (i, p)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = snapshot();
    std::thread::sleep(window);
    let allocs = snapshot().since(&before).allocations();
    for (i, a) in &accepted {
        let rtts = [a.stats().rtt, dialers[*i].stats().rtt];
        assert!(
            rtts.iter().any(Option::is_some),
            "pipe {i}: no heartbeat was answered at either end (round trips {rtts:?})"
        );
    }
    drop((dialers, accepted));
    allocs
}

#[test]
fn a_stream_allocates_nothing_per_message() {
    // Metrics go out once a second per pipe, whatever the traffic, and allocate as they
    // register: off here, so that a slow run (a debug build on a busy machine) counts only
    // what its messages cost.
    duct::set_metrics_interval(Duration::ZERO);
    let pid = std::process::id();
    let addrs = [
        Some("tcp://127.0.0.1:0".to_owned()),
        cfg!(target_os = "linux").then(|| format!("uds://@duct-allocs-{pid}")),
        cfg!(target_os = "linux").then(|| format!("shm://duct-allocs-{pid}")),
    ];
    let addrs: Vec<String> = addrs.into_iter().flatten().collect();
    for addr in &addrs {
        let (first, allocs) = allocations_while_polling_an_empty_pipe(addr);
        println!(
            "{addr}: {first} allocations in a first round of polls of an empty pipe, {allocs} \
             over 10,000 rounds after it"
        );
        // A pipe's `WouldBlock` is made with the pipe, not at its first empty poll (which
        // may come in the middle of anything; it made 2-3 allocations). Room for one of the
        // reactor's own.
        assert!(
            first <= 1,
            "{addr}: {first} allocations in the first round of polls of an empty pipe"
        );
        assert!(
            allocs <= 5,
            "{addr}: {allocs} allocations while polling an empty pipe 30,000 times"
        );
    }
    for addr in addrs {
        for (slices, reliable) in [(false, false), (true, false), (true, true)] {
            let api = match (slices, reliable) {
                (false, _) => "send_batch/recv_batch",
                (true, false) => "send_slices/recv_into",
                (true, true) => "send_slices/recv_into, reliable channel",
            };
            let allocs = allocations_while_streaming(&addr, None, slices, reliable);
            println!("{addr}, {api}: {allocs} allocations over {MEASURED} messages received");
            assert!(
                allocs <= MAX_ALLOCS,
                "{addr}, {api}: {allocs} allocations while {MEASURED} messages were streamed \
                 (at most {MAX_ALLOCS} allowed)"
            );
        }
    }
    // tls: rustls 0.23 allocates per TLS record, whatever its API: encrypting makes a
    // buffer for each record (`PrefixedPayload`), and each decrypted record's plaintext is
    // moved into a `Vec` of its own (`take_received_plaintext`). A record carries what one
    // send hands over (up to 16 KiB: here 64 messages, or a queue's worth), so a stream
    // costs a few allocations per record, none per message from duct itself.
    #[cfg(feature = "tls")]
    if let Some(f) = Fixture::new(Kind::Tls) {
        let allocs = allocations_while_streaming(&f.addr(), Some(&f), true, false);
        println!("tls, send_slices/recv_into: {allocs} allocations over {MEASURED} messages");
        assert!(
            allocs <= MAX_TLS_ALLOCS,
            "tls: {allocs} allocations while {MEASURED} messages were streamed (at most \
             {MAX_TLS_ALLOCS} allowed: rustls's per record, none per message)"
        );
    }
    // Last (publication stays on from here): 20 idle pipes, each end sending a PING every
    // 10 ms and publishing its figures every 10 ms, for 1 s: about 4,000 PINGs, 4,000 PONGs
    // and 4,000 publications. One allocation each would be 12,000; a PING token buffer is
    // cut into 512 tokens, so a handful is all there may be.
    duct::set_metrics_interval(Duration::from_millis(10));
    let addr = if cfg!(target_os = "linux") {
        format!("uds://@duct-allocs-idle-{pid}")
    } else {
        "tcp://127.0.0.1:0".to_owned()
    };
    let allocs = allocations_of_idle_pipes(&addr, 20, Duration::from_secs(1));
    println!("{addr}: {allocs} allocations in 1 s of 20 idle pipes (heartbeats, metrics)");
    assert!(
        allocs <= 40,
        "{addr}: {allocs} allocations in 1 s of 20 idle pipes with heartbeats and metrics \
         publications every 10 ms"
    );
}
