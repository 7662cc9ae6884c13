//! The reactor on its io_uring backend (`duct::set_backend(Backend::Uring)`): real exchanges
//! over tcp and uds (10,000 messages each way, close, a reconnect after a cut, 200 pipes at
//! once), and `duct::backend()` says io_uring runs.
//!
//! The backend is chosen once per process, so this file is a test binary of its own: every
//! test first makes sure `set_backend` was called before any pipe exists. The conformance
//! suite runs on the default backend (io_uring where the kernel has it) and again with
//! `DUCT_BACKEND=epoll` (see `.ci/run`); this file checks io_uring by name.
#![cfg(all(target_os = "linux", feature = "io-uring"))]

use std::sync::Once;
use std::thread;
use std::time::Duration;

use duct::{Backend, DialOptions, Heartbeat, ListenOptions, Message, Pipe, Reconnect};
use duct_testkit::ChaosProxy;

mod common;
use common::{pair, recv, state_sink, wait_for_change, Fixture, Kind, Pair, T};

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| duct::set_backend(Backend::Uring).expect("before the first pipe"));
}

/// Whether this kernel lets the process set up an io_uring (otherwise the reactor runs on
/// epoll, and the io_uring assertions are skipped, visibly).
fn kernel_has_io_uring() -> bool {
    match duct_sys::uring::Ring::new(8, 16) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED the io_uring assertions: io_uring cannot start here ({e})");
            false
        }
    }
}

#[test]
fn backend_reports_io_uring() {
    init();
    let _listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let running = duct::backend().expect("the reactor runs after a listen");
    if kernel_has_io_uring() {
        assert_eq!(running, Backend::Uring);
    } else {
        assert_eq!(running, Backend::Epoll);
    }
    // Too late to choose now.
    let e = duct::set_backend(Backend::Epoll).unwrap_err();
    assert_eq!(e.kind(), duct::ErrorKind::Unsupported, "{e}");
}

/// 10,000 numbered messages each way at once, in order, then a close both ends see.
fn ten_thousand_each_way(kind: Kind) {
    const N: u32 = 10_000;
    init();
    let Some(f) = Fixture::new(kind) else { return };
    let Pair {
        listener: _listener,
        dialer,
        accepted,
    } = pair(&f);
    thread::scope(|s| {
        for (side, p) in [(0u32, &dialer), (1u32, &accepted)] {
            s.spawn(move || {
                let sender = s.spawn(move || {
                    for i in 0..N {
                        let mut payload = side.to_be_bytes().to_vec();
                        payload.extend_from_slice(&i.to_be_bytes());
                        payload.resize(16 + (i % 200) as usize, 0xab);
                        p.send(payload).unwrap();
                    }
                });
                for i in 0..N {
                    let m = recv(p);
                    let got = m.payload();
                    assert_eq!(
                        &got[..4],
                        &(1 - side).to_be_bytes(),
                        "{kind:?}: from the peer"
                    );
                    assert_eq!(&got[4..8], &i.to_be_bytes(), "{kind:?}: in order");
                    assert_eq!(got.len(), 16 + (i % 200) as usize);
                }
                sender.join().unwrap();
            });
        }
    });
    let d = dialer.stats();
    assert_eq!(
        (d.msgs_sent, d.msgs_received, d.dropped),
        (N as u64, N as u64, 0)
    );
    dialer.close().unwrap();
    let e = common::recv_t(&accepted).unwrap_err();
    assert_eq!(e.kind(), duct::ErrorKind::Closed, "{kind:?}: {e}");
}

/// After a close, a new dial to the same listener works.
fn close_then_dial_again(kind: Kind) {
    init();
    let Some(f) = Fixture::new(kind) else { return };
    let Pair {
        listener,
        dialer,
        accepted,
    } = pair(&f);
    dialer.send("first").unwrap();
    assert_eq!(recv(&accepted).payload(), b"first");
    dialer.close().unwrap();
    drop(accepted);
    let addr = listener.local_addr().to_string();
    let again = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T).unwrap());
        let dialer = duct::dial(&addr, f.dial_opts(DialOptions::default())).unwrap();
        (dialer, acceptor.join().unwrap())
    });
    again.0.send("second").unwrap();
    assert_eq!(recv(&again.1).payload(), b"second");
    again.1.send("back").unwrap();
    assert_eq!(recv(&again.0).payload(), b"back");
}

#[test]
fn tcp_ten_thousand_messages_each_way() {
    ten_thousand_each_way(Kind::Tcp4);
}

#[test]
fn uds_ten_thousand_messages_each_way() {
    ten_thousand_each_way(Kind::UdsPath);
}

#[test]
fn tcp_close_then_dial_again() {
    close_then_dial_again(Kind::Tcp4);
}

#[test]
fn uds_close_then_dial_again() {
    close_then_dial_again(Kind::UdsAbstract);
}

/// A connection cut under a pipe heals by itself (a reconnect on the reactor), and traffic
/// flows again.
#[test]
fn tcp_reconnect_after_a_cut() {
    init();
    let echo = common::tcp_echo_server();
    let proxy = ChaosProxy::start(echo.addr).unwrap();
    let (on_state, rx) = state_sink();
    let pipe = duct::dial(
        &format!("tcp://{}", proxy.addr()),
        DialOptions::default()
            .timeout(T)
            .heartbeat(Heartbeat::off())
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            ))
            .on_state_change(on_state),
    )
    .unwrap();
    let echo_once = |text: &str| {
        pipe.send(text.to_owned()).unwrap();
        assert_eq!(recv(&pipe).payload(), text.as_bytes());
    };
    echo_once("before");
    for cut in 0..3 {
        proxy.reset_all();
        wait_for_change(&rx, "reconnecting", |c| {
            c.to == duct::PipeState::Reconnecting
        });
        wait_for_change(&rx, "connected again", |c| {
            c.to == duct::PipeState::Connected
        });
        echo_once(&format!("after cut {cut}"));
    }
    assert_eq!(pipe.stats().reconnects, 3);
}

/// 200 pipes at once on each transport, each carrying a message each way.
fn two_hundred_pipes(kind: Kind) {
    const PIPES: usize = 200;
    init();
    let Some(f) = Fixture::new(kind) else { return };
    let listener = duct::listen(&f.addr(), f.listen_opts(ListenOptions::default())).unwrap();
    let addr = listener.local_addr().to_string();
    let (dialed, accepted): (Vec<Pipe>, Vec<Pipe>) = thread::scope(|s| {
        let acceptor = s.spawn(|| {
            (0..PIPES)
                .map(|_| listener.accept_timeout(T).unwrap())
                .collect::<Vec<_>>()
        });
        let dialed = (0..PIPES)
            .map(|_| duct::dial(&addr, f.dial_opts(DialOptions::default())).unwrap())
            .collect::<Vec<_>>();
        (dialed, acceptor.join().unwrap())
    });
    for (i, p) in dialed.iter().enumerate() {
        p.send(Message::new(format!("to {i}"))).unwrap();
    }
    // The accepted pipes' order is the order of the dials; each answers what it got.
    for p in &accepted {
        let m = recv(p);
        let text = String::from_utf8(m.payload().to_vec()).unwrap();
        p.send(text.replace("to", "from")).unwrap();
    }
    let mut seen: Vec<String> = dialed
        .iter()
        .map(|p| String::from_utf8(recv(p).payload().to_vec()).unwrap())
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..PIPES).map(|i| format!("from {i}")).collect();
    want.sort();
    assert_eq!(seen, want, "{kind:?}");
    for p in &dialed {
        p.close().unwrap();
    }
}

#[test]
fn tcp_two_hundred_pipes_at_once() {
    two_hundred_pipes(Kind::Tcp4);
}

#[test]
fn uds_two_hundred_pipes_at_once() {
    two_hundred_pipes(Kind::UdsAbstract);
}
