//! The reactor at work: an idle pipe still serves the peer, and close wakes blocked calls.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct::{
    ChannelOptions, CloseOptions, DialOptions, ErrorKind, ListenOptions, RecvOptions, SendOptions,
};
use duct_proto::Event;

mod common;
use common::RawPeer;

/// The duct side accepts and then makes no call at all for several seconds; the reactor
/// still answers the raw peer's PINGs (and reads its messages ahead).
fn idle_pipe_answers_ping(addr: &str) {
    let listener = duct::listen(addr, ListenOptions::default()).unwrap();
    let bound = listener.local_addr().to_string();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let pipe = listener.accept().unwrap();
        // Idle: no recv, no send, until the test is over.
        done_rx.recv().unwrap();
        let m = pipe
            .try_recv()
            .unwrap()
            .expect("the message sent meanwhile was read ahead");
        assert_eq!(m.payload(), b"while you were idle");
        assert_eq!(pipe.stats().msgs_received, 1);
    });
    let mut peer = RawPeer::dial(&bound);
    peer.handshake();
    for (i, pause) in [Duration::from_millis(50), Duration::from_secs(3)]
        .into_iter()
        .enumerate()
    {
        thread::sleep(pause); // the duct side stays idle all along
        let token = 0xD0C7_0000 + i as u64;
        peer.session.ping(token).unwrap();
        peer.flush().unwrap();
        let ev = peer.read_until_event(Duration::from_secs(2));
        assert_eq!(
            ev,
            Some(Event::Pong { token }),
            "no PONG after {pause:?} of idleness"
        );
    }
    peer.session
        .send(
            0,
            Bytes::from_static(b"while you were idle"),
            Instant::now(),
        )
        .unwrap();
    peer.flush().unwrap();
    // Give the reactor a moment to read it ahead, then let the server look.
    thread::sleep(Duration::from_millis(200));
    done_tx.send(()).unwrap();
    server.join().unwrap();
}

/// tcp loopback and `uds` (tcp only where there are no Unix sockets).
fn tcp_and_uds(uds: &str) -> Vec<&str> {
    if cfg!(unix) {
        vec!["tcp://127.0.0.1:0", uds]
    } else {
        vec!["tcp://127.0.0.1:0"]
    }
}

#[test]
fn idle_tcp_pipe_answers_ping() {
    idle_pipe_answers_ping("tcp://127.0.0.1:0");
}

#[test]
#[cfg(unix)]
fn idle_uds_pipe_answers_ping() {
    idle_pipe_answers_ping(&format!("uds://@duct-reactor-ping-{}", std::process::id()));
}

/// A recv blocked in one thread and a send blocked on a full send queue in another both
/// return `Closed` promptly when a third thread closes the pipe, even with a long linger.
#[test]
fn close_from_another_thread_wakes_blocked_recv_and_send() {
    let uds = format!("uds://@duct-reactor-close-wake-{}", std::process::id());
    for addr in tcp_and_uds(&uds) {
        // The peer reads ahead 1 MiB at most; the dialer queues 8 MiB at most.
        let lopts =
            ListenOptions::default().channel(0, ChannelOptions::default().rcv_hwm_bytes(1 << 20));
        let listener = duct::listen(addr, lopts).unwrap();
        let bound = listener.local_addr().to_string();
        let acceptor = thread::spawn(move || (listener.accept().unwrap(), listener));
        let dopts =
            DialOptions::default().channel(0, ChannelOptions::default().snd_hwm_bytes(8 << 20));
        let pipe = duct::dial(&bound, dopts).unwrap();
        let (_peer, _listener) = acceptor.join().unwrap(); // the peer never reads

        // Fill the send queue: the first message is accepted into an empty queue whatever its
        // size; the peer reads ahead 1 MiB of it, the socket buffers hold a few more.
        pipe.send(vec![7u8; 48 << 20]).unwrap();

        let (tx, rx) = mpsc::channel();
        let receiver = {
            let (p, tx) = (pipe.clone(), tx.clone());
            thread::spawn(move || {
                let r = p.recv();
                tx.send(("recv", Instant::now())).unwrap();
                r
            })
        };
        let sender = {
            let p = pipe.clone();
            thread::spawn(move || {
                let r = p.send_with(
                    "blocked",
                    &SendOptions::default().timeout(Duration::from_secs(30)),
                );
                tx.send(("send", Instant::now())).unwrap();
                r
            })
        };
        thread::sleep(Duration::from_millis(300)); // both are blocked by now
        assert!(
            rx.try_recv().is_err(),
            "{addr}: a call returned before the close"
        );
        let closed_at = Instant::now();
        pipe.close_with(
            CloseOptions::default()
                .linger(Duration::from_secs(2))
                .reason(7, "bye"),
        )
        .unwrap();
        for _ in 0..2 {
            let (what, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let waited = at.saturating_duration_since(closed_at);
            assert!(
                waited < Duration::from_millis(500),
                "{addr}: {what} woke {waited:?} after close"
            );
        }
        let e = receiver.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{addr}: recv: {e}");
        let e = sender.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{addr}: send: {e}");
        let e = pipe
            .recv_with(&RecvOptions::default().timeout(Duration::ZERO))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed);
    }
}

/// `send` returns once a message is queued, so dropping the last handle right after sending
/// must not throw the queue away: the reactor writes it (for up to the linger time), then the
/// CLOSE. The dropping thread does not wait.
#[test]
fn dropping_a_pipe_delivers_what_it_queued() {
    let uds = format!("uds://@duct-reactor-drop-linger-{}", std::process::id());
    for addr in tcp_and_uds(&uds) {
        let listener = duct::listen(addr, ListenOptions::default()).unwrap();
        let bound = listener.local_addr().to_string();
        let acceptor = thread::spawn(move || listener.accept().unwrap());
        let pipe = duct::dial(&bound, DialOptions::default()).unwrap();
        let peer = acceptor.join().unwrap();
        // 2,000 × 4 KiB: more than the socket buffers and the peer's read-ahead take while
        // its application is not reading.
        let chunk = Bytes::from(vec![0xA5u8; 4096]);
        for i in 0..2000u32 {
            let mut m = chunk.to_vec();
            m[..4].copy_from_slice(&i.to_be_bytes());
            pipe.send(m).unwrap();
        }
        let queued = Instant::now();
        drop(pipe);
        assert!(
            queued.elapsed() < Duration::from_millis(200),
            "drop waited for the peer"
        );
        thread::sleep(Duration::from_millis(300)); // the peer's application is busy
        for i in 0..2000u32 {
            let m = peer.recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)));
            let m = m.unwrap_or_else(|e| panic!("{addr}: message {i}: {e}"));
            assert_eq!(&m.payload()[..4], i.to_be_bytes(), "{addr}: order");
            assert_eq!(m.len(), 4096);
        }
        let e = peer
            .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{addr}: {e}");
        assert_eq!(e.close_reason(), Some((0, "pipe dropped")), "{addr}");
    }
}

/// 2,000 × 4 KiB queued behind a slow reader, then `close_with(linger 10 s)`: close waits
/// while the queue drains (not the whole linger), every message arrives in order, then the
/// reason.
#[test]
fn close_with_linger_delivers_everything_to_a_slow_reader() {
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let bound = listener.local_addr().to_string();
    let acceptor = thread::spawn(move || listener.accept().unwrap());
    let pipe = duct::dial(&bound, DialOptions::default()).unwrap();
    let peer = acceptor.join().unwrap();
    let reader = thread::spawn(move || {
        for i in 0..2000u32 {
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(5)); // a slow consumer
            }
            let m = peer.recv_with(&RecvOptions::default().timeout(Duration::from_secs(10)));
            let m = m.unwrap_or_else(|e| panic!("message {i}: {e}"));
            assert_eq!(&m.payload()[..4], i.to_be_bytes());
        }
        let e = peer.recv_with(&RecvOptions::default().timeout(Duration::from_secs(10)));
        e.unwrap_err()
    });
    for i in 0..2000u32 {
        let mut m = vec![0x5Au8; 4096];
        m[..4].copy_from_slice(&i.to_be_bytes());
        pipe.send(m).unwrap();
    }
    let start = Instant::now();
    pipe.close_with(
        CloseOptions::default()
            .linger(Duration::from_secs(10))
            .reason(4242, "round over"),
    )
    .unwrap();
    let took = start.elapsed();
    let e = reader.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(e.close_reason(), Some((4242, "round over")));
    assert!(
        took < Duration::from_secs(9),
        "close waited {took:?}: longer than the drain needs"
    );
}

/// The poller of `rx` stops; a message arrives; well after the reactor's recheck, it is
/// there without a read by the application.
fn read_ahead_while_the_poller_is_away(tx: &duct::Pipe, rx: &duct::Pipe) {
    tx.send("while away").unwrap();
    thread::sleep(Duration::from_millis(200));
    let before = rx.stats().reads;
    let m = rx.try_recv().unwrap().expect("read ahead by the reactor");
    assert_eq!(m.payload(), b"while away");
    assert_eq!(rx.stats().reads, before, "no read by the poll itself");
}

/// A receiver that polls (`try_recv`) an empty pipe asks the transport once, not on every
/// poll: the reactor watches the transport for it and counts what it reports. Whatever
/// arrives then still reaches the poller, and, if it stops polling, the reactor reads it
/// ahead.
fn polling_an_empty_pipe_reads_once(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    let p = common::pair(&f);
    let (tx, rx) = (&p.dialer, &p.accepted);
    tx.send("hello").unwrap();
    let first = loop {
        if let Some(m) = rx.try_recv().unwrap() {
            break m;
        }
        thread::sleep(Duration::from_micros(200));
    };
    assert_eq!(first.payload(), b"hello");
    for round in 0..3 {
        let before = rx.stats().reads;
        for _ in 0..1000 {
            assert!(rx.try_recv().unwrap().is_none());
        }
        let reads = rx.stats().reads - before;
        assert!(
            reads <= 2,
            "{kind:?} round {round}: {reads} reads for 1000 polls of an empty pipe"
        );
        // Something arrives: a poll finds it.
        tx.send(format!("m{round}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            if let Some(m) = rx.try_recv().unwrap() {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?}: the message never came"
            );
            thread::sleep(Duration::from_micros(100));
        };
        assert_eq!(got.payload(), format!("m{round}").as_bytes());
    }
    read_ahead_while_the_poller_is_away(tx, rx);
}

/// An async receive that waits costs one read per message that arrives on a plain socket:
/// it waits without a read of its own while the reactor, which watches the transport, has
/// reported nothing since a read found it empty; and the reactor's read ends where the
/// socket's read left room in the buffer (tcp, uds), without a read that only finds nothing.
/// TLS, shared memory and sockets on Windows read until a read finds nothing: two per
/// arrival.
fn a_waiting_async_receive_costs_one_read_per_arrival(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    const ROUNDS: u64 = 100;
    let p = common::pair(&f);
    let (tx, rx) = (&p.dialer, &p.accepted);
    let wait = RecvOptions::default().timeout(Duration::from_secs(10));
    // (The connection's first reads are behind us once a message went through.)
    tx.send("first").unwrap();
    assert_eq!(rx.recv_with(&wait).unwrap().payload(), b"first");
    let before = rx.stats().reads;
    let (got_tx, got_rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            futures::executor::block_on(async {
                for _ in 0..ROUNDS {
                    let m = rx.recv_with_async(&wait).await.unwrap();
                    got_tx.send(m.payload().to_vec()).unwrap();
                }
            })
        });
        for i in 0..ROUNDS {
            // The receive waits by then.
            thread::sleep(Duration::from_millis(2));
            tx.send(format!("m{i}")).unwrap();
            let got = got_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{kind:?}: message {i} never came"));
            assert_eq!(got, format!("m{i}").as_bytes());
        }
    });
    let reads = rx.stats().reads - before;
    // (Windows: mio reports readiness again only after a read said `WouldBlock`.)
    let per_arrival = match kind {
        common::Kind::Tls | common::Kind::Shm => 2,
        _ if cfg!(windows) => 2,
        _ => 1,
    };
    // (A few more: a message that comes before the receive waits again is read by it.)
    assert!(
        reads <= ROUNDS * per_arrival + ROUNDS / 4,
        "{kind:?}: {reads} reads for {ROUNDS} messages, each awaited (at most {per_arrival} \
         each expected)"
    );
}

#[test]
fn a_waiting_async_receive_costs_one_read_per_arrival_tcp() {
    a_waiting_async_receive_costs_one_read_per_arrival(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn a_waiting_async_receive_costs_one_read_per_arrival_uds() {
    a_waiting_async_receive_costs_one_read_per_arrival(common::Kind::UdsAbstract);
}

#[cfg(target_os = "linux")]
#[test]
fn a_waiting_async_receive_costs_one_read_per_arrival_shm() {
    a_waiting_async_receive_costs_one_read_per_arrival(common::Kind::Shm);
}

#[cfg(feature = "tls")]
#[test]
fn a_waiting_async_receive_costs_one_read_per_arrival_tls() {
    a_waiting_async_receive_costs_one_read_per_arrival(common::Kind::Tls);
}

/// A peer that sends its last message and hangs up at once: the message and the end reach
/// the reactor in one event (readable with the peer's half closed), and the read the reactor
/// makes for a waiting async receive must go on to the end, past a read that left room in
/// the buffer. The receive after the message reports the end at once (within 500 ms, well
/// before the heartbeat's first PING, 1 s, would find the connection gone), each of many
/// rounds.
fn an_end_that_comes_with_the_last_message_is_seen(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    let listener = duct::listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let addr = listener.local_addr().to_string();
    let wait = RecvOptions::default().timeout(Duration::from_secs(2));
    for round in 0..30 {
        let mut raw = f.raw_dial(&addr);
        raw.handshake();
        let accepted = listener.accept_timeout(common::T).expect("accept");
        thread::scope(|s| {
            let receiver = s.spawn(|| {
                futures::executor::block_on(async {
                    let m = accepted
                        .recv_with_async(&wait)
                        .await
                        .expect("the last message");
                    assert_eq!(m.payload(), b"last words");
                    let soon = RecvOptions::default().timeout(Duration::from_millis(500));
                    accepted.recv_with_async(&soon).await.expect_err("the end")
                })
            });
            // The receive waits by then.
            thread::sleep(Duration::from_millis(5));
            raw.session
                .send(0, Bytes::from_static(b"last words"), Instant::now())
                .expect("raw send");
            raw.flush().expect("raw flush");
            drop(raw); // no CLOSE: the end of the stream right behind the message
            let e = receiver.join().expect("receiver");
            assert_eq!(
                e.kind(),
                ErrorKind::Disconnected,
                "{kind:?} round {round}: {e}"
            );
        });
    }
}

#[test]
fn an_end_that_comes_with_the_last_message_is_seen_tcp() {
    an_end_that_comes_with_the_last_message_is_seen(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn an_end_that_comes_with_the_last_message_is_seen_uds() {
    an_end_that_comes_with_the_last_message_is_seen(common::Kind::UdsAbstract);
}

/// Many pipes polled by one thread: on the io_uring backend the reactor reads them through
/// its ring (every pipe that became readable in a pass, in one system call) and the poller
/// finds the messages queued; on epoll every read is a `recv` of its own. Either way
/// everything arrives, in order.
fn many_polled_pipes_are_read_through_the_ring_on_io_uring(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    const PIPES: usize = 16;
    const ROUNDS: usize = 50;
    let pairs: Vec<_> = (0..PIPES).map(|_| common::pair(&f)).collect();
    let uring = duct::backend() == Some(duct::Backend::Uring);
    let sender = thread::scope(|s| {
        let sender = s.spawn(|| {
            for round in 0..ROUNDS {
                for p in &pairs {
                    p.dialer.send(format!("{round}")).unwrap();
                }
                thread::sleep(Duration::from_micros(200));
            }
        });
        let mut next = [0usize; PIPES];
        let deadline = Instant::now() + Duration::from_secs(20);
        while next.iter().any(|&n| n < ROUNDS) {
            for (i, p) in pairs.iter().enumerate() {
                while let Some(m) = p.accepted.try_recv().unwrap() {
                    assert_eq!(m.payload(), format!("{}", next[i]).as_bytes(), "pipe {i}");
                    next[i] += 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?}: still waiting: {next:?}"
            );
            thread::sleep(Duration::from_micros(50));
        }
        sender.join()
    });
    sender.unwrap();
    let (reads, ring): (u64, u64) = pairs
        .iter()
        .map(|p| p.accepted.stats())
        .map(|s| (s.reads, s.ring_reads))
        .fold((0, 0), |(a, b), (r, g)| (a + r, b + g));
    eprintln!(
        "{kind:?} on {:?}: {ring} of {reads} reads through the ring",
        duct::backend()
    );
    if uring {
        // (How many depends on timing: the reactor reads for a poller only when several
        // pipes are ready in one pass, and a poller may come first; most of them here.)
        assert!(
            ring > 0,
            "{kind:?}: {ring} of {reads} reads through the ring"
        );
    } else {
        assert_eq!(ring, 0, "{kind:?}: no ring on {:?}", duct::backend());
    }
}

/// Output left queued when the socket filled is flushed by the reactor once the peer reads:
/// on the io_uring backend through its ring (one system call for every pipe it writes in a
/// pass), on epoll with `sendmsg`. Either way every message arrives, in order.
fn queued_output_is_written_through_the_ring_on_io_uring(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    const MSGS: usize = 20_000;
    const LEN: usize = 1024;
    let dopts = duct::DialOptions::default().channel(
        0,
        duct::ChannelOptions::default()
            .snd_hwm_msgs(MSGS)
            .snd_hwm_bytes(MSGS * LEN),
    );
    let p = common::pair_with(&f, duct::ListenOptions::default(), dopts);
    // 20 MiB: more than the socket buffers take, so most of it waits in the send queue, and
    // the sender leaves it there.
    for i in 0..MSGS {
        let mut m = vec![0u8; LEN];
        m[..8].copy_from_slice(&(i as u64).to_le_bytes());
        p.dialer.send(m).unwrap();
    }
    for i in 0..MSGS {
        let m = common::recv(&p.accepted);
        assert_eq!(m.payload().len(), LEN);
        assert_eq!(
            u64::from_le_bytes(m.payload()[..8].try_into().unwrap()),
            i as u64,
            "{kind:?}: message {i}"
        );
    }
    let ring = p.dialer.stats().ring_writes;
    if duct::backend() == Some(duct::Backend::Uring) {
        assert!(ring > 0, "{kind:?}: no write through the ring");
    } else {
        assert_eq!(ring, 0, "{kind:?}: no ring on {:?}", duct::backend());
    }
}

#[test]
fn queued_output_is_written_through_the_ring_on_io_uring_tcp() {
    queued_output_is_written_through_the_ring_on_io_uring(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn queued_output_is_written_through_the_ring_on_io_uring_uds() {
    queued_output_is_written_through_the_ring_on_io_uring(common::Kind::UdsAbstract);
}

#[test]
fn many_polled_pipes_are_read_through_the_ring_on_io_uring_tcp() {
    many_polled_pipes_are_read_through_the_ring_on_io_uring(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn many_polled_pipes_are_read_through_the_ring_on_io_uring_uds() {
    many_polled_pipes_are_read_through_the_ring_on_io_uring(common::Kind::UdsAbstract);
}

#[test]
fn polling_an_empty_pipe_reads_once_tcp() {
    polling_an_empty_pipe_reads_once(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn polling_an_empty_pipe_reads_once_uds() {
    polling_an_empty_pipe_reads_once(common::Kind::UdsAbstract);
}

/// A receiver that polls (`try_recv`) a shared-memory pipe looks at the ring itself each
/// time (no system call), and asks its sender for no wake-up signal: whatever the sender
/// writes meanwhile, and however often the poll finds the ring empty, the sender makes no
/// system call for it (`PipeStats::wake_signals`), nor does the receiving reactor wake up.
/// Before, every poll that found the ring empty had the sender signal its next batch: a
/// sweep of 1,000 pipes cost a system call on each side per batch. What arrives still
/// reaches the poller; if it stops polling, the reactor reads it ahead; the sender's end
/// reaches it.
#[cfg(target_os = "linux")]
#[test]
fn polling_a_shm_pipe_costs_its_sender_no_signal() {
    let Some(f) = common::Fixture::new(common::Kind::Shm) else {
        return;
    };
    let p = common::pair(&f);
    let (tx, rx) = (&p.dialer, &p.accepted);
    let poll = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(m) = rx.try_recv().unwrap() {
                return m;
            }
            assert!(Instant::now() < deadline, "{what} never came");
            thread::yield_now();
        }
    };
    tx.send("hello").unwrap();
    assert_eq!(poll("hello").payload(), b"hello");
    // (The reactor's read-ahead before the first poll may have asked for one signal.)
    let signals = tx.stats().wake_signals;
    for round in 0..10 {
        for _ in 0..1000 {
            assert!(rx.try_recv().unwrap().is_none());
        }
        tx.send(format!("m{round}")).unwrap();
        assert_eq!(
            poll("a round's message").payload(),
            format!("m{round}").as_bytes()
        );
    }
    // Batches while the poller sweeps, finding the ring empty between them.
    let sent = thread::scope(|s| {
        let sender = s.spawn(|| {
            for batch in 0u32..200 {
                let payloads: Vec<[u8; 4]> =
                    (0..16u32).map(|i| (batch * 16 + i).to_be_bytes()).collect();
                let n = tx
                    .send_slices(payloads.iter().map(|p| &p[..]), &Default::default())
                    .unwrap();
                assert_eq!(n, 16);
                thread::sleep(Duration::from_micros(50));
            }
        });
        for i in 0u32..200 * 16 {
            assert_eq!(poll("a batch's message").payload(), i.to_be_bytes());
        }
        sender.join().unwrap();
        200 * 16
    });
    let signalled = tx.stats().wake_signals - signals;
    assert!(
        signalled <= 1,
        "{signalled} wake-up signals for 10 messages and {sent} in batches to a poller"
    );
    read_ahead_while_the_poller_is_away(tx, rx);
    // The sender goes: a poller hears of it.
    p.dialer.close().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match rx.try_recv() {
            Ok(None) => {}
            Ok(Some(m)) => panic!("a message after the end: {:?}", m.payload()),
            Err(e) => break e,
        }
        assert!(
            Instant::now() < deadline,
            "the poller never heard of the end"
        );
        thread::yield_now();
    };
    assert_eq!(err.kind(), duct::ErrorKind::Closed, "{err}");
}

/// Messages larger than a frame arrive intact whether the application's receive or the
/// reactor reads them, and their fragments are read in place: all but what the first read
/// of each fragment brought goes straight into the message's buffer
/// (`PipeStats::bytes_read_in_place`), on tcp, uds and TLS (decrypted straight there; on
/// Windows only TLS: its plain sockets read into the read buffer).
fn large_messages_are_read_in_place(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    const N: usize = 8;
    const LEN: usize = 1 << 20;
    let p = common::pair(&f);
    let (tx, rx) = (&p.dialer, &p.accepted);
    let wait = RecvOptions::default().timeout(Duration::from_secs(10));
    let payload = |i: usize| -> Vec<u8> { (0..LEN + i).map(|j| (j * 7 + i) as u8).collect() };
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                tx.send(payload(i)).unwrap();
                if i == N / 2 {
                    // The second half waits for the reactor to read it ahead.
                    thread::sleep(Duration::from_millis(50));
                }
            }
        });
        for i in 0..N {
            let m = rx.recv_with(&wait).unwrap();
            assert!(
                m.payload() == &payload(i)[..],
                "{kind:?}: message {i} intact"
            );
        }
    });
    let in_place = rx.stats().bytes_read_in_place;
    let total = (N * LEN) as u64;
    if cfg!(windows) && kind != common::Kind::Tls {
        assert_eq!(in_place, 0, "{kind:?}");
    } else {
        // Each 64 KiB fragment: at most one 64 KiB read into the read buffer before its
        // rest is read in place; most go in place whole after a read of their header.
        assert!(
            in_place >= total / 2,
            "{kind:?}: {in_place} of {total} bytes read in place"
        );
        assert!(in_place <= total);
    }
}

#[test]
fn large_messages_are_read_in_place_tcp() {
    large_messages_are_read_in_place(common::Kind::Tcp4);
}

#[cfg(unix)]
#[test]
fn large_messages_are_read_in_place_uds() {
    large_messages_are_read_in_place(common::Kind::UdsAbstract);
}

#[cfg(feature = "tls")]
#[test]
fn large_messages_are_read_in_place_tls() {
    large_messages_are_read_in_place(common::Kind::Tls);
}
