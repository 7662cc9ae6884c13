//! `pipe://` (Windows named pipes) beyond the conformance suite (whose `pipe` instance covers
//! what every transport does): names in use, missing names, many dialers at once (no "pipe
//! busy" failures), the peer vanishing without a CLOSE, a listener restarted under a
//! reconnecting dialer, and the address forms.
//!
//! Off Windows, `pipe://` is `Unsupported`, with a message that names the platform.

mod common;

#[cfg(not(windows))]
#[test]
fn pipe_is_unsupported_off_windows() {
    for err in [
        duct::listen("pipe://game", duct::ListenOptions::default()).unwrap_err(),
        duct::dial("pipe://game", duct::DialOptions::default()).unwrap_err(),
    ] {
        assert_eq!(err.kind(), duct::ErrorKind::Unsupported, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("pipe://game") && text.contains("only available on Windows"),
            "{text}"
        );
        assert!(!err.is_retryable());
    }
}

#[cfg(windows)]
mod windows {
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::{Duration, Instant};

    use duct::{
        dial, listen, Addr, DialOptions, ErrorKind, Heartbeat, ListenOptions, Message, PipeState,
        Reconnect,
    };

    use crate::common::*;

    /// A pipe name no other test in this process uses.
    fn fresh() -> String {
        format!("pipe://duct-pipe-test-{}-{}", std::process::id(), unique())
    }

    /// Small, large and many messages, both ways.
    #[test]
    fn round_trips_small_large_many() {
        let server = EchoServer::start(&fresh(), ListenOptions::default());
        let p = dial(&server.addr, DialOptions::default().timeout(T)).unwrap();
        for (i, size) in [0usize, 1, 300, 70_000, 4 << 20].into_iter().enumerate() {
            let payload = pattern(size, i as u32);
            p.send(Message::new(payload.clone()).with_channel(i as u16))
                .unwrap();
            let m = recv(&p);
            assert_eq!(m.channel(), i as u16);
            assert_payload(m.payload(), &payload, &format!("{size} bytes"));
        }
        // Many: sent ahead of the echoes, received in order.
        const MANY: u32 = 5_000;
        thread::scope(|s| {
            let receiver = s.spawn(|| {
                for i in 0..MANY {
                    let m = recv(&p);
                    assert_eq!(m.payload(), &i.to_be_bytes()[..], "message {i}");
                }
            });
            for i in 0..MANY {
                p.send(i.to_be_bytes().to_vec()).unwrap();
            }
            receiver.join().unwrap();
        });
        p.close().unwrap();
    }

    /// Both ends show the pipe's address.
    #[test]
    fn addresses_are_the_pipe() {
        let addr = fresh();
        let Pair {
            listener,
            dialer,
            accepted,
        } = pair_at(&addr);
        let name = addr.strip_prefix("pipe://").unwrap().to_owned();
        for a in [
            listener.local_addr(),
            dialer.local_addr(),
            dialer.peer_addr(),
            accepted.local_addr(),
            accepted.peer_addr(),
        ] {
            assert_eq!(a, Addr::Pipe(name.clone()));
            assert_eq!(a.to_string(), addr);
        }
    }

    /// A listener and the two ends of one pipe through it, at `addr`.
    fn pair_at(addr: &str) -> Pair {
        let listener = listen(addr, ListenOptions::default()).unwrap();
        let (dialer, accepted) = thread::scope(|s| {
            let acceptor = s.spawn(|| listener.accept_timeout(T));
            let d = dial(addr, DialOptions::default().timeout(T)).unwrap();
            (d, acceptor.join().unwrap().unwrap())
        });
        Pair {
            listener,
            dialer,
            accepted,
        }
    }

    /// A second listener on a name in use fails with `AddressInUse`, naming it; the first
    /// goes on serving.
    #[test]
    fn second_listener_is_address_in_use() {
        let addr = fresh();
        let first = listen(&addr, ListenOptions::default()).unwrap();
        let e = expect_kind(
            listen(&addr, ListenOptions::default()),
            ErrorKind::AddressInUse,
        );
        assert!(e.to_string().contains(&addr), "{e}");
        let (d, a) = thread::scope(|s| {
            let acceptor = s.spawn(|| first.accept_timeout(T));
            let d = dial(&addr, DialOptions::default().timeout(T)).unwrap();
            (d, acceptor.join().unwrap().unwrap())
        });
        d.send("still served").unwrap();
        assert_eq!(recv(&a).payload(), b"still served");
        // Once the listener and its pipes are gone, the name is free again.
        drop((d, a, first));
        let again = retry_listen(&addr);
        assert_eq!(again.local_addr().to_string(), addr);
    }

    /// Listens on `addr`, trying again while the name is still in use by pipes that are
    /// closing (their handles close on the reactor thread, a moment after they are dropped).
    fn retry_listen(addr: &str) -> duct::Listener {
        let deadline = Instant::now() + T;
        loop {
            match listen(addr, ListenOptions::default()) {
                Ok(l) => return l,
                Err(e) if e.kind() == ErrorKind::AddressInUse && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("listen {addr}: {e}"),
            }
        }
    }

    /// Dialing a name nobody serves is `ConnectionRefused` (retryable), at once, naming the
    /// address.
    #[test]
    fn dial_to_missing_name_is_refused() {
        let addr = fresh();
        let start = Instant::now();
        let e = expect_kind(
            dial(&addr, DialOptions::default().timeout(T)),
            ErrorKind::ConnectionRefused,
        );
        assert!(start.elapsed() < T / 2, "took {:?}", start.elapsed());
        assert!(e.is_retryable());
        assert!(e.to_string().contains(&addr), "{e}");
    }

    /// Malformed names are refused as addresses.
    #[test]
    fn invalid_names() {
        let long = format!("pipe://{}", "x".repeat(300));
        for addr in [r"pipe://a\b", long.as_str()] {
            expect_kind(
                listen(addr, ListenOptions::default()),
                ErrorKind::InvalidAddress,
            );
            expect_kind(
                dial(addr, DialOptions::default()),
                ErrorKind::InvalidAddress,
            );
        }
    }

    /// Twenty dialers at once: each connects (none fails with "pipe busy": a busy pipe is
    /// waited for) and is echoed.
    #[test]
    fn many_dialers_at_once() {
        const DIALERS: usize = 20;
        let server = EchoServer::start(&fresh(), ListenOptions::default());
        let start = Arc::new(Barrier::new(DIALERS));
        thread::scope(|s| {
            for i in 0..DIALERS {
                let (addr, start) = (server.addr.clone(), Arc::clone(&start));
                s.spawn(move || {
                    start.wait();
                    let p = dial(&addr, DialOptions::default().timeout(T))
                        .unwrap_or_else(|e| panic!("dialer {i}: {e}"));
                    for j in 0..5u32 {
                        let payload = pattern(50 + j as usize, i as u32);
                        p.send(payload.clone()).unwrap();
                        assert_payload(recv(&p).payload(), &payload, "echo");
                    }
                    p.close().unwrap();
                });
            }
        });
    }

    /// A dialer that vanishes without a CLOSE (a raw pipe client dropped after its
    /// handshake): the accepted end gets what it sent, then `Disconnected`, promptly.
    #[test]
    fn vanished_dialer_is_seen_promptly() {
        let addr = fresh();
        let listener = listen(&addr, ListenOptions::default()).unwrap();
        let (raw, accepted) = thread::scope(|s| {
            let acceptor = s.spawn(|| listener.accept_timeout(T));
            let mut raw = RawPeer::dial(&addr);
            raw.handshake();
            (raw, acceptor.join().unwrap().unwrap())
        });
        let mut raw = raw;
        raw.session
            .send(3, bytes::Bytes::from_static(b"last words"), Instant::now())
            .unwrap();
        raw.flush().unwrap();
        drop(raw);
        assert_eq!(recv(&accepted).payload(), b"last words");
        let start = Instant::now();
        expect_kind(recv_t(&accepted), ErrorKind::Disconnected);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the end was seen after {:?}",
            start.elapsed()
        );
        assert_eq!(accepted.state(), PipeState::Disconnected);
    }

    /// Dropping one end: the other's blocked `recv` returns `Closed` promptly, and so does
    /// every later one.
    #[test]
    fn dropped_end_is_seen_promptly() {
        for drop_dialer in [true, false] {
            let Pair {
                listener: _listener,
                dialer,
                accepted,
            } = pair_at(&fresh());
            let (gone, left) = if drop_dialer {
                (dialer, accepted)
            } else {
                (accepted, dialer)
            };
            let waiter = thread::spawn(move || {
                let start = Instant::now();
                let r = recv_t(&left);
                (r.map(|_| ()), start.elapsed(), left)
            });
            thread::sleep(Duration::from_millis(100));
            drop(gone);
            let (r, took, left) = waiter.join().unwrap();
            expect_kind(r, ErrorKind::Closed);
            assert!(
                took < Duration::from_secs(3),
                "recv returned after {took:?}"
            );
            expect_kind(recv_t(&left), ErrorKind::Closed);
        }
    }

    /// A reconnecting dialer comes back to a listener restarted on the same name (the old
    /// listener and its pipe dropped, as when a server process restarts), and messages flow
    /// again.
    #[test]
    fn reconnecting_dialer_comes_back_to_a_restarted_listener() {
        let addr = fresh();
        let listener = listen(&addr, ListenOptions::default()).unwrap();
        let (on_state, states) = state_sink();
        let opts = DialOptions::default()
            .timeout(Duration::from_secs(1))
            .heartbeat(Heartbeat::off())
            .reconnect(Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .on_state_change(on_state);
        let (dialer, accepted) = thread::scope(|s| {
            let acceptor = s.spawn(|| listener.accept_timeout(T));
            let d = dial(&addr, opts).unwrap();
            (d, acceptor.join().unwrap().unwrap())
        });
        wait_for_change(&states, "Connected", |c| c.to == PipeState::Connected);
        dialer.send("before").unwrap();
        assert_eq!(recv(&accepted).payload(), b"before");
        let first_session = dialer.session_id();

        // The server goes away: listener and pipe.
        drop(listener);
        drop(accepted);
        wait_for_change(&states, "Reconnecting", |c| c.to == PipeState::Reconnecting);
        // Sent while the server is away: goes out after the reconnect.
        dialer.send("during").unwrap();

        // And comes back on the same name.
        let listener = retry_listen(&addr);
        let accepted = listener.accept_timeout(T).unwrap();
        wait_for_change(&states, "Connected again", |c| {
            c.from == PipeState::Reconnecting && c.to == PipeState::Connected
        });
        assert_ne!(dialer.session_id(), first_session);
        assert_eq!(recv(&accepted).payload(), b"during");
        dialer.send("after").unwrap();
        assert_eq!(recv(&accepted).payload(), b"after");
        accepted.send("back").unwrap();
        assert_eq!(recv(&dialer).payload(), b"back");
        assert_eq!(dialer.stats().reconnects, 1);
    }

    /// A dial that finds the name but no free instance for its whole timeout (every
    /// instance connected, the listener not accepting: here a raw server with one instance
    /// and its client) fails with `TimedOut`, not at once with "pipe busy".
    #[test]
    fn busy_pipe_is_waited_for_until_the_timeout() {
        let (raw_listener, addr) = Fixture::new(Kind::Pipe).unwrap().raw_listener();
        let first = thread::scope(|s| {
            let acceptor = s.spawn(|| raw_listener.accept().unwrap());
            let client = RawStream::connect(&addr).unwrap();
            let _server = acceptor.join().unwrap();
            let start = Instant::now();
            let e = expect_kind(
                dial(
                    &addr,
                    DialOptions::default().timeout(Duration::from_millis(300)),
                ),
                ErrorKind::TimedOut,
            );
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(5),
                "gave up after {took:?}: {e}"
            );
            assert!(e.to_string().contains("busy"), "{e}");
            client
        });
        drop(first);
    }
}
