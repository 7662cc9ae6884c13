//! Auto-reconnect over the chaos proxy: a cut connection heals itself with a new session,
//! sends made while reconnecting go out afterwards, attempts are bounded, close is prompt in
//! the middle of a backoff, and many cuts leak neither threads nor file descriptors.

use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    DialOptions, ErrorKind, Heartbeat, ListenOptions, Pipe, PipeState, Reconnect, RecvOptions,
    StateChange,
};
use duct_testkit::ChaosProxy;

mod common;
use common::{state_sink, wait_for_change, T};

fn dial_through(
    proxy: &ChaosProxy,
    reconnect: Reconnect,
    on_state: impl Fn(StateChange) + Send + Sync + 'static,
) -> Pipe {
    let opts = DialOptions::default()
        .timeout(Duration::from_secs(1))
        .heartbeat(Heartbeat::off())
        .reconnect(reconnect)
        .on_state_change(on_state);
    duct::dial(&format!("tcp://{}", proxy.addr()), opts).unwrap()
}

fn echo_once(p: &Pipe, text: &str) {
    p.send(text.to_owned()).unwrap();
    let m = p.recv_with(&RecvOptions::default().timeout(T)).unwrap();
    assert_eq!(m.payload(), text.as_bytes());
}

/// Waits for the transition `from -> to`, skipping others; returns it.
fn wait_for(rx: &mpsc::Receiver<StateChange>, from: PipeState, to: PipeState) -> StateChange {
    wait_for_change(rx, &format!("{from} -> {to}"), |c| {
        c.from == from && c.to == to
    })
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn cut_connections_heal_with_a_new_session_and_leak_nothing() {
    let echo = common::tcp_echo_server();
    let proxy = ChaosProxy::start(echo.addr).unwrap();
    let (on_state, rx) = state_sink();
    let pipe = dial_through(
        &proxy,
        Reconnect::exponential(Duration::from_millis(5), Duration::from_millis(50)),
        on_state,
    );
    wait_for(&rx, PipeState::Connecting, PipeState::Connected);
    echo_once(&pipe, "before");
    let mut times = Vec::new();
    let mut baseline = None;
    for cut in 0..50 {
        let old = pipe.session_id();
        let start = Instant::now();
        proxy.reset_all();
        let down = wait_for(&rx, PipeState::Connected, PipeState::Reconnecting);
        assert!(down.cause.is_some(), "cut {cut}: a cause for Reconnecting");
        let up = wait_for(&rx, PipeState::Reconnecting, PipeState::Connected);
        times.push(start.elapsed());
        assert_ne!(up.session_id, old, "cut {cut}: a new session");
        assert_eq!(pipe.session_id(), up.session_id);
        echo_once(&pipe, &format!("after cut {cut}"));
        if cut == 4 {
            // Threads and fds after the first few cuts (the reconnect thread exists by now).
            baseline = Some((count("/proc/self/task"), count("/proc/self/fd")));
        }
    }
    let (threads, fds) = baseline.unwrap();
    // The echo server's per-connection threads end with their connections; give them a
    // moment, then compare.
    let settle = Instant::now() + T;
    while (count("/proc/self/task") > threads || count("/proc/self/fd") > fds)
        && Instant::now() < settle
    {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        count("/proc/self/task") <= threads,
        "threads grew over 45 cuts"
    );
    assert!(
        count("/proc/self/fd") <= fds,
        "file descriptors grew over 45 cuts"
    );
    assert_eq!(pipe.stats().reconnects, 50);
    times.sort();
    println!(
        "reconnect after a cut: median {:?} over {} cuts (median of the first 20: {:?}), max {:?}",
        times[times.len() / 2],
        times.len(),
        {
            let mut f = times[..20].to_vec();
            f.sort();
            f[10]
        },
        times.last().unwrap()
    );
}

#[test]
fn sends_while_reconnecting_go_out_afterwards() {
    let echo = common::tcp_echo_server();
    let proxy = ChaosProxy::start(echo.addr).unwrap();
    let (on_state, rx) = state_sink();
    let pipe = dial_through(
        &proxy,
        Reconnect::exponential(Duration::from_millis(20), Duration::from_millis(50)),
        on_state,
    );
    echo_once(&pipe, "hello");
    proxy.refuse(true).unwrap();
    proxy.reset_all();
    wait_for(&rx, PipeState::Connected, PipeState::Reconnecting);
    for i in 0..5 {
        pipe.send(format!("queued {i}")).unwrap();
    }
    assert_eq!(pipe.state(), PipeState::Reconnecting);
    proxy.refuse(false).unwrap();
    wait_for(&rx, PipeState::Reconnecting, PipeState::Connected);
    for i in 0..5 {
        let m = pipe.recv_with(&RecvOptions::default().timeout(T)).unwrap();
        assert_eq!(m.payload(), format!("queued {i}").as_bytes());
    }
}

#[test]
fn attempts_are_bounded_and_each_failure_is_reported() {
    let echo = common::tcp_echo_server();
    let proxy = ChaosProxy::start(echo.addr).unwrap();
    let (errors_tx, errors) = mpsc::channel::<duct::Error>();
    let errors_tx = Mutex::new(errors_tx);
    let opts = DialOptions::default()
        .timeout(Duration::from_secs(1))
        .heartbeat(Heartbeat::off())
        .reconnect(
            Reconnect::exponential(Duration::from_millis(10), Duration::from_millis(20))
                .max_attempts(Some(3)),
        )
        .on_error(move |e| drop(errors_tx.lock().unwrap().send(e.clone())));
    let pipe = duct::dial(&format!("tcp://{}", proxy.addr()), opts).unwrap();
    echo_once(&pipe, "hello");
    proxy.refuse(true).unwrap(); // the address is dead from now on
    proxy.reset_all();
    let e = pipe
        .recv_with(&RecvOptions::default().timeout(T))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    assert_eq!(pipe.state(), PipeState::Closed);
    let seen: Vec<_> = errors.try_iter().collect();
    // The break itself, then the three failed attempts.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0].kind(), ErrorKind::Disconnected, "{}", seen[0]);
    for (i, e) in seen[1..].iter().enumerate() {
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains(&format!("attempt {}", i + 1)), "{e}");
    }
    let e = pipe.send("late").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn close_during_backoff_returns_promptly() {
    let echo = common::tcp_echo_server();
    let proxy = ChaosProxy::start(echo.addr).unwrap();
    let (on_state, rx) = state_sink();
    let pipe = dial_through(
        &proxy,
        Reconnect::exponential(Duration::from_secs(30), Duration::from_secs(30)),
        on_state,
    );
    echo_once(&pipe, "hello");
    let blocked = {
        let p = pipe.clone();
        thread::spawn(move || p.recv())
    };
    proxy.reset_all();
    wait_for(&rx, PipeState::Connected, PipeState::Reconnecting);
    let start = Instant::now();
    pipe.close().unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "close took {:?}",
        start.elapsed()
    );
    let e = blocked.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(pipe.state(), PipeState::Closed);
}

/// The server process restarts: its listener goes away (dialers are refused meanwhile), then
/// a new one binds the same address; the reconnecting dialer finds it again.
#[test]
fn a_listener_restarted_on_the_same_address_is_found_again() {
    let first = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = first.local_addr().to_string();
    let server = thread::spawn(move || {
        let p = first.accept().unwrap();
        let m = p.recv().unwrap();
        p.send(m).unwrap();
        (first, p)
    });
    let (on_state, rx) = state_sink();
    let opts = DialOptions::default()
        .timeout(Duration::from_secs(1))
        .reconnect(Reconnect::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .on_state_change(on_state);
    let pipe = duct::dial(&addr, opts).unwrap();
    echo_once(&pipe, "first life");
    let (first, accepted) = server.join().unwrap();
    drop(accepted); // the server goes down
    drop(first);
    wait_for(&rx, PipeState::Connected, PipeState::Reconnecting);
    thread::sleep(Duration::from_millis(200)); // refused attempts meanwhile
    let second = duct::listen(&addr, ListenOptions::default()).unwrap();
    let server = thread::spawn(move || {
        let p = second.accept().unwrap();
        let m = p.recv().unwrap();
        p.send(m).unwrap();
        p
    });
    wait_for(&rx, PipeState::Reconnecting, PipeState::Connected);
    echo_once(&pipe, "second life");
    drop(server.join().unwrap());
}
