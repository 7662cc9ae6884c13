//! shm:// between threads of one process: round trips, fragmentation, batches, close with a
//! reason, credentials, names in use, garbage from a peer, and slots returned when
//! payloads drop. (Crash and multi-process tests: tests/shm_process.rs.)
#![cfg(target_os = "linux")]

use std::thread;
use std::time::{Duration, Instant};

use duct::{Addr, CloseOptions, DialOptions, ErrorKind, ListenOptions, Message, RecvOptions};

mod common;
use common::{assert_payload, pattern, unique, T};

fn name() -> String {
    format!("duct-test-{}-{}", std::process::id(), unique())
}

fn recv_t(p: &duct::Pipe) -> duct::Result<Message> {
    p.recv_with(&RecvOptions::default().timeout(T))
}

/// A listener on a fresh name, a pipe dialled to it with the default options, and the pipe
/// it accepted.
fn connected() -> (duct::Listener, duct::Pipe, duct::Pipe) {
    let addr = format!("shm://{}", name());
    let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
    let pipe = duct::dial(&addr, DialOptions::default()).unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    (listener, pipe, accepted)
}

#[test]
fn round_trips_small_large_and_many() {
    let addr = format!("shm://{}", name());
    let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
    assert_eq!(listener.local_addr(), Addr::Shm(addr[6..].to_owned()));
    let server = thread::spawn(move || {
        let pipe = listener.accept_timeout(T).unwrap();
        loop {
            match recv_t(&pipe) {
                Ok(m) => pipe.send(m).unwrap(),
                Err(e) if e.kind() == ErrorKind::Closed => return e,
                Err(e) => panic!("server: {e}"),
            }
        }
    });
    let pipe = duct::dial(&addr, DialOptions::default()).unwrap();
    assert_eq!(pipe.peer_addr().to_string(), addr);
    let creds = pipe.peer_credentials().expect("shm has peer credentials");
    assert_eq!(creds.uid, rustix::process::getuid().as_raw());
    // Sizes around the pool's classes and the 64 KiB frame limit (fragmented above it).
    for (i, len) in [
        0,
        1,
        255,
        256,
        257,
        4096,
        4097,
        65536,
        65537,
        1 << 20,
        5 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let want = pattern(len, i as u32);
        pipe.send(Message::new(want.clone()).with_channel(i as u16))
            .unwrap();
        let got = recv_t(&pipe).unwrap();
        assert_eq!(got.channel(), i as u16);
        assert_payload(got.payload(), &want, &format!("{len} bytes"));
    }
    // Many in flight: more than the ring holds, so senders wait for room.
    let n = 50_000u32;
    let sender = {
        let pipe = pipe.clone();
        thread::spawn(move || {
            for i in 0..n {
                pipe.send(Message::new(i.to_le_bytes().to_vec())).unwrap();
            }
        })
    };
    for i in 0..n {
        let m = recv_t(&pipe).unwrap();
        assert_eq!(m.payload(), &i.to_le_bytes()[..], "in order");
    }
    sender.join().unwrap();
    pipe.close_with(CloseOptions::default().reason(4001, "done"))
        .unwrap();
    let e = server.join().unwrap();
    assert_eq!(e.close_reason(), Some((4001, "done")));
}

/// The sizes of [`bursts_arrive_whole_and_in_order_whatever_the_receive`]'s messages, by
/// index: empty, in the ring (up to 256 bytes), copied out of small pool slots (up to 512),
/// views of pool slots, and now and then one of several fragments.
fn burst_len(i: u32) -> usize {
    match i % 11 {
        0 => 0,
        1 => 300,
        2 => 512,
        3 => 2000,
        4 if i % 44 == 4 => 300_000,
        _ => 1 + (i as usize * 37) % 256,
    }
}

#[test]
fn bursts_arrive_whole_and_in_order_whatever_the_receive() {
    // A receive that finds many frames copies their payloads into one chunk and hands the
    // messages over as places in it, each chunk under a number of its own: a batch that
    // keeps one handle per chunk tells them apart by it. Bursts of hundreds of messages of
    // every kind of payload (in the ring, copied from the pool, views of the pool, empty,
    // fragmented), taken with `recv_into` (up to 1,000 at once), `recv_batch`, `recv` one by
    // one (the first of a read handed over, the rest queued) and `recv_async` (read by the
    // reactor: all queued), each checked byte by byte and in order.
    const BURST: u32 = 600;
    let (_l, tx, rx) = connected();
    let opts = RecvOptions::default().timeout(T);
    let check = |what: &str, i: u32, got: &[u8]| {
        assert_payload(
            got,
            &pattern(burst_len(i), i),
            &format!("{what}: message {i}"),
        );
    };
    for round in 0..4 {
        for i in 0..BURST {
            tx.send(Message::new(bytes::Bytes::from(pattern(burst_len(i), i))))
                .unwrap();
        }
        let mut i = 0;
        match round {
            0 => {
                let mut batch = duct::MessageBatch::new();
                while i < BURST {
                    rx.recv_into(&mut batch, 1000, &opts).unwrap();
                    for m in batch.iter() {
                        check("recv_into", i, m.payload());
                        i += 1;
                    }
                }
            }
            1 => {
                let mut out = Vec::new();
                while i < BURST {
                    out.clear();
                    rx.recv_batch(&mut out, 1000, &opts).unwrap();
                    for m in &out {
                        check("recv_batch", i, m.payload());
                        i += 1;
                    }
                }
            }
            2 => {
                while i < BURST {
                    check("recv", i, recv_t(&rx).unwrap().payload());
                    i += 1;
                }
            }
            _ => {
                while i < BURST {
                    let m = futures::executor::block_on(rx.recv_async()).unwrap();
                    check("recv_async", i, m.payload());
                    i += 1;
                }
            }
        }
        assert_eq!(i, BURST, "round {round}: exactly the burst");
    }
}

#[test]
fn a_second_listener_on_a_live_name_is_address_in_use_and_the_name_frees_on_drop() {
    let addr = format!("shm://{}", name());
    let first = duct::listen(&addr, ListenOptions::default()).unwrap();
    let err = duct::listen(&addr, ListenOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddressInUse, "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    drop(first);
    let again = duct::listen(&addr, ListenOptions::default()).unwrap();
    drop(again);
    let err = duct::dial(
        &addr,
        DialOptions::default().timeout(Duration::from_secs(1)),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn received_payloads_are_views_into_shared_memory_and_free_their_slots() {
    let (_listener, pipe, accepted) = connected();
    // Hold more payloads than a whole class has slots? No: hold a few, check where they are.
    let mut held = Vec::new();
    for i in 0..8u32 {
        pipe.send(Message::new(pattern(1000, i))).unwrap();
        held.push(recv_t(&accepted).unwrap());
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for m in &held {
        let at = m.payload().as_ptr() as usize;
        let line = maps
            .lines()
            .find(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                (a..b).contains(&at)
            })
            .expect("the payload is in a mapping");
        assert!(line.contains("memfd:duct-shm"), "a shared mapping: {line}");
        assert!(
            line.split_whitespace().nth(1).unwrap().ends_with('s'),
            "shared: {line}"
        );
    }
    drop(held);
    // The slots came back: a long stream through the same pool works.
    for i in 0..20_000u32 {
        pipe.send(Message::new(pattern(3000, i))).unwrap();
        let m = recv_t(&accepted).unwrap();
        assert_eq!(m.payload().len(), 3000);
    }
    let started = Instant::now();
    drop(pipe);
    let e = recv_t(&accepted).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A sender whose peer takes (and drops) each message before the next sends each large
/// payload from the same pool slot, warm in the caches, rather than going round the pool;
/// small messages in between (carried in the ring, not the pool) do not change that.
#[test]
fn a_sender_whose_peer_keeps_up_reuses_its_lowest_pool_slot() {
    let (_listener, pipe, accepted) = connected();
    let mut places = Vec::new();
    for i in 0..40u32 {
        pipe.send(Message::new(pattern(1000, i))).unwrap();
        let m = recv_t(&accepted).unwrap();
        assert_payload(m.payload(), &pattern(1000, i), "large");
        assert!(
            in_shared_memfd(m.payload().as_ptr()),
            "a view into the pool"
        );
        places.push(m.payload().as_ptr() as usize);
        drop(m);
        if i % 2 == 0 {
            pipe.send(Message::new(pattern(64, i))).unwrap();
            let small = recv_t(&accepted).unwrap();
            assert_payload(small.payload(), &pattern(64, i), "small");
        }
    }
    // (The first may come from wherever the search started.)
    let settled = places[1];
    assert!(
        places[1..].iter().all(|&p| p == settled),
        "payloads from one slot once the sender knows the peer keeps up: {places:x?}"
    );
}

/// Whether `ptr` lies in a shared memfd mapping of this process (/proc/self/maps).
fn in_shared_memfd(ptr: *const u8) -> bool {
    let at = ptr as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let mut parts = l.split_whitespace();
        let range = parts.next().unwrap();
        let perms = parts.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        (a..b).contains(&at) && perms.ends_with('s') && l.contains("memfd:duct-shm")
    })
}

#[test]
fn a_message_written_in_place_moves_with_zero_copies() {
    let (_listener, pipe, accepted) = connected();
    for round in 0..20u32 {
        let len = 1 << 20;
        let mut buf = pipe.alloc(len).unwrap();
        assert!(buf.is_shared(), "a 1 MiB buffer in the shared pool");
        assert!(in_shared_memfd(buf.as_ptr()));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u32 ^ round) as u8;
        }
        let msg = buf.freeze().with_channel(5);
        pipe.send(msg).unwrap();
        let got = recv_t(&accepted).unwrap();
        assert_eq!(got.channel(), 5);
        assert_eq!(got.len(), len);
        assert!(in_shared_memfd(got.payload().as_ptr()), "received in place");
        assert!(got
            .payload()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i as u32 ^ round) as u8));
    }
    let stats = pipe.stats();
    assert_eq!(stats.payload_bytes_copied, 0, "{stats:?}");
    assert_eq!(stats.payload_frames_copied, 0);
    assert_eq!(stats.zero_copy_frames, 20);
    // An ordinary message is copied once into the pool, and counted.
    pipe.send(Message::new(vec![1u8; 1000])).unwrap();
    recv_t(&accepted).unwrap();
    let stats = pipe.stats();
    assert_eq!(
        (stats.payload_frames_copied, stats.payload_bytes_copied),
        (1, 1000)
    );
    // A buffer the application keeps a clone of still moves without a copy, and the clone
    // keeps its bytes while the slot is in use elsewhere.
    let mut buf = pipe.alloc(300).unwrap();
    buf.fill(9);
    let msg = buf.freeze();
    let kept = msg.clone();
    pipe.send(msg).unwrap();
    let got = recv_t(&accepted).unwrap();
    drop(got);
    for _ in 0..5000 {
        pipe.send(Message::new(vec![2u8; 300])).unwrap();
        recv_t(&accepted).unwrap();
    }
    assert!(
        kept.payload().iter().all(|&b| b == 9),
        "a kept clone never changes"
    );
    // Larger than max_message_size: refused.
    let e = pipe.alloc(65 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MessageTooLarge);
}

#[test]
fn alloc_is_a_heap_buffer_on_sockets() {
    let addr = format!("uds://@{}", name());
    let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
    let pipe = duct::dial(&addr, DialOptions::default()).unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    let mut buf = pipe.alloc(10).unwrap();
    assert!(!buf.is_shared());
    assert!(buf.iter().all(|&b| b == 0), "zeroed");
    buf.copy_from_slice(b"0123456789");
    buf.truncate(4);
    pipe.send(buf.freeze()).unwrap();
    assert_eq!(recv_t(&accepted).unwrap().payload(), b"0123");
    assert_eq!(pipe.stats().zero_copy_frames, 0);
}

#[test]
fn spinning_and_parking_receivers_both_work_and_notice_the_end() {
    for spin in [Duration::ZERO, Duration::from_micros(50), Duration::MAX] {
        let addr = format!("shm://{}", name());
        let listener = duct::listen(&addr, ListenOptions::default().spin(spin)).unwrap();
        let pipe = duct::dial(&addr, DialOptions::default().spin(spin)).unwrap();
        let accepted = listener.accept_timeout(T).unwrap();
        let echo = thread::spawn(move || {
            while let Ok(m) = accepted.recv() {
                if accepted.send(m).is_err() {
                    break;
                }
            }
        });
        for i in 0..2000u32 {
            pipe.send(Message::new(i.to_le_bytes().to_vec())).unwrap();
            let m = pipe.recv().unwrap(); // blocks: spins, then parks (or spins on)
            assert_eq!(m.payload(), &i.to_le_bytes()[..], "spin {spin:?}");
        }
        // The echo side blocks in recv (spinning with Duration::MAX) and must see the end.
        let started = Instant::now();
        drop(pipe);
        echo.join().unwrap();
        println!("spin {spin:?}: the end seen after {:?}", started.elapsed());
        assert!(started.elapsed() < T);
    }
}

/// A receiver that holds every received payload exhausts the sender's pool: then the
/// channel's backpressure policy decides (DropNew drops and counts, Block waits and times
/// out), nothing deadlocks, and everything flows again once the holder lets go.
#[test]
fn a_receiver_holding_payloads_meets_the_channel_policy_not_a_deadlock() {
    use duct::{Backpressure, ChannelOptions, SendOptions};
    let addr = format!("shm://{}", name());
    let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
    let small_queue = |p| ChannelOptions::default().snd_hwm_msgs(64).backpressure(p);
    let pipe = duct::dial(
        &addr,
        DialOptions::default()
            .channel(1, small_queue(Backpressure::DropNew))
            .channel(2, small_queue(Backpressure::Block)),
    )
    .unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    // 64 KiB payloads: views into the 64 KiB class (128 slots), never copied out.
    let payload = bytes::Bytes::from(vec![3u8; 60_000]);
    let mut held = Vec::new();
    let mut i = 0;
    // Hold what arrives until nothing more can arrive.
    loop {
        pipe.send(Message::new(payload.clone()).with_channel(1))
            .unwrap();
        i += 1;
        match accepted.recv_with(&RecvOptions::default().timeout(Duration::from_millis(200))) {
            Ok(m) => held.push(m),
            Err(e) if e.kind() == ErrorKind::TimedOut => break,
            Err(e) => panic!("{e}"),
        }
        assert!(i < 10_000, "the pool never ran out");
    }
    println!("held {} payloads after {i} sends", held.len());
    // DropNew: sends keep being accepted, the excess is dropped and counted.
    for _ in 0..200 {
        pipe.send(Message::new(payload.clone()).with_channel(1))
            .unwrap();
    }
    let dropped = pipe.stats().channel(1).unwrap().dropped;
    assert!(dropped > 0, "DropNew dropped the excess");
    // Block: a send with a timeout times out instead of hanging.
    let opts = SendOptions::default()
        .channel(2)
        .timeout(Duration::from_millis(100));
    let mut timed_out = false;
    for _ in 0..200 {
        if let Err(e) = pipe.send_with(Message::new(payload.clone()), &opts) {
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            timed_out = true;
            break;
        }
    }
    assert!(timed_out, "Block waits for room and times out");
    // Let go: everything queued flows, and new messages too.
    drop(held);
    let mut got = 0;
    while accepted
        .recv_with(&RecvOptions::default().timeout(Duration::from_millis(500)))
        .is_ok()
    {
        got += 1;
    }
    assert!(got > 0, "queued messages arrive once the holder lets go");
    pipe.send(Message::new(b"after".to_vec()).with_channel(2))
        .unwrap();
    let m = recv_t(&accepted).unwrap();
    assert_eq!(m.payload(), b"after");
    println!("after letting go: {got} queued messages, then new ones");
}

/// After a reconnect, the reactor reads the new shm connection by itself: a pipe that only
/// sends still takes its peer's heartbeat answers and stays connected (it used to go silent
/// whenever its handshake had parked: shm rings the reactor only after a read has found
/// nothing, and nothing read first). Three restarts of the listener, each followed by more
/// than two silence timeouts of sending and never receiving. Each restart also listens again
/// on the name right after dropping the old listener while the dialer is already
/// reconnecting to it: the name must be free at once.
#[test]
fn a_reconnected_pipe_that_only_sends_keeps_hearing_its_peer() {
    let addr = format!("shm://{}", name());
    let hb = duct::Heartbeat::new(Duration::from_millis(50), 5);
    let mut listener = duct::listen(&addr, ListenOptions::default().heartbeat(hb)).unwrap();
    let (errors, seen) = common::error_sink();
    let pipe = duct::dial(
        &addr,
        DialOptions::default()
            .heartbeat(hb)
            .reconnect(duct::Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .on_error(errors),
    )
    .unwrap();
    let mut served = listener.accept_timeout(T).unwrap();
    for round in 1..=3u64 {
        drop(served);
        drop(listener);
        listener = duct::listen(&addr, ListenOptions::default().heartbeat(hb)).unwrap();
        served = listener.accept_timeout(T).unwrap();
        let deadline = Instant::now() + T;
        while pipe.state() != duct::PipeState::Connected || pipe.stats().reconnects < round {
            assert!(Instant::now() < deadline, "reconnected in time");
            thread::sleep(Duration::from_millis(5));
        }
        let until = Instant::now() + Duration::from_millis(600);
        let mut sent = 0u32;
        while Instant::now() < until {
            pipe.send(Message::new(sent.to_le_bytes().to_vec()))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            sent += 1;
            thread::sleep(Duration::from_millis(5));
        }
        let silent: Vec<String> = seen
            .try_iter()
            .filter(|e| e.kind() == ErrorKind::Disconnected)
            .map(|e| e.to_string())
            .collect();
        assert!(silent.is_empty(), "round {round}: {silent:?}");
        assert_eq!(pipe.stats().reconnects, round);
        assert_eq!(pipe.state(), duct::PipeState::Connected);
        let mut got = 0;
        while served.try_recv().unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, sent, "round {round}: all arrived");
    }
}

/// Dropping a listener frees its address when `drop` returns, while pipes it accepted live
/// on. (The address used to stay bound while the reactor was still busy with the listener,
/// for example with a handshake of a dialer reconnecting at that moment: the test above
/// met AddressInUse that way.)
#[test]
fn a_dropped_listener_frees_its_name_at_once_while_its_pipes_live() {
    let hb = duct::Heartbeat::new(Duration::from_millis(50), 5);
    for scheme in ["shm://", "uds://@"] {
        let addr = format!("{scheme}{}", name());
        let mut kept = Vec::new();
        for round in 0..20 {
            let listener = duct::listen(&addr, ListenOptions::default().heartbeat(hb))
                .unwrap_or_else(|e| panic!("{addr} round {round}: {e}"));
            // A reconnecting dialer (whose pipe the listener would resume) every other time.
            let opts = if round % 4 < 2 {
                DialOptions::default().heartbeat(hb)
            } else {
                DialOptions::default()
                    .heartbeat(hb)
                    .reconnect(duct::Reconnect::exponential(
                        Duration::from_millis(10),
                        Duration::from_millis(50),
                    ))
            };
            let dialer = duct::dial(&addr, opts).unwrap();
            let served = listener.accept_timeout(T).unwrap();
            if round % 2 == 0 {
                drop(listener);
                kept.push((dialer, served));
            } else {
                // The pipe first (its close runs on the reactor), then the listener.
                drop(served);
                drop(listener);
                drop(dialer);
            }
        }
        for (dialer, served) in &kept {
            dialer.send("still here").unwrap();
            assert_eq!(recv_t(served).unwrap().payload(), b"still here");
        }
    }
}
