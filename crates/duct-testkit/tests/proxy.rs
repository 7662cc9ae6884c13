//! The chaos proxy's faults, each checked with plain std sockets on both ends: the client
//! dials the proxy, and the target is an echo server or a socket the test holds itself.
//! Timing is asserted only as a lower bound.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{assert_silent, echo_server, handoff_server, next_conn, read_n};
use duct_testkit::{ChaosProxy, Direction};

/// Polls `cond` until it holds, for at most 5 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn pass_round_trips_data() {
    let proxy = ChaosProxy::start(echo_server()).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let data = pattern(200_000);
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut client, data.len()), data);
    w.join().unwrap();
}

#[test]
fn reset_all_resets_both_ends_and_keeps_accepting() {
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);
    client.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut server, 4), b"ping");

    proxy.reset_all();
    assert_eq!(proxy.connections_open(), 0);
    for (end, s) in [("client", &mut client), ("target", &mut server)] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(0) => {}
            other => panic!("{end}: expected a reset or EOF, got {other:?}"),
        }
    }

    // A new connection goes through as before.
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);
    client.write_all(b"again").unwrap();
    assert_eq!(read_n(&mut server, 5), b"again");
}

#[test]
fn blackhole_swallows_bytes_and_keeps_connections_open() {
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);

    proxy.blackhole();
    client.write_all(b"into the void").unwrap();
    server.write_all(b"and back").unwrap();
    assert_silent(&mut server, Duration::from_millis(300));
    assert_silent(&mut client, Duration::from_millis(10));
    eventually("the proxy read both directions", || {
        proxy.bytes_dropped(Direction::ToTarget) == 13
            && proxy.bytes_dropped(Direction::ToClient) == 8
    });
    assert_eq!(proxy.bytes_forwarded(Direction::ToTarget), 0);
    assert_eq!(proxy.bytes_forwarded(Direction::ToClient), 0);
    assert_eq!(proxy.connections_open(), 1);

    // Open all along: once the blackhole ends, new bytes flow (the swallowed ones are lost).
    proxy.pass();
    client.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut server, 5), b"hello");
    server.write_all(b"hi").unwrap();
    assert_eq!(read_n(&mut client, 2), b"hi");
}

#[test]
fn delay_holds_each_chunk_and_keeps_order() {
    const DELAY: Duration = Duration::from_millis(100);
    let proxy = ChaosProxy::start(echo_server()).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    proxy.delay(DELAY);

    let start = Instant::now();
    client.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut client, 1), b"x");
    let rtt = start.elapsed();
    assert!(
        rtt >= 2 * DELAY,
        "round trip took {rtt:?}, delay {DELAY:?} each way"
    );

    // Chunks written apart arrive in order, each no sooner than its delay.
    let start = Instant::now();
    let mut expected = Vec::new();
    for i in 0..10u8 {
        let chunk = [i; 100];
        client.write_all(&chunk).unwrap();
        expected.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(read_n(&mut client, expected.len()), expected);
    assert!(start.elapsed() >= 2 * DELAY);

    proxy.delay(Duration::ZERO);
    client.write_all(b"y").unwrap();
    assert_eq!(read_n(&mut client, 1), b"y");
}

#[test]
fn throttle_limits_the_rate() {
    const RATE: u64 = 100_000; // bytes per second
    const N: usize = 50_000;
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);
    proxy.throttle(RATE);

    let data = pattern(N);
    let start = Instant::now();
    client.write_all(&data).unwrap();
    assert_eq!(read_n(&mut server, N), data);
    let took = start.elapsed();
    let floor = Duration::from_secs_f64(N as f64 / RATE as f64);
    assert!(took >= floor, "{N} bytes at {RATE} B/s took {took:?}");
    // The counter moves right after each write, so it may trail the reader by a moment.
    eventually("all bytes counted", || {
        proxy.bytes_forwarded(Direction::ToTarget) == N as u64
    });
}

#[test]
fn cut_stops_one_direction_only() {
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);

    proxy.cut(Direction::ToTarget);
    client.write_all(b"lost").unwrap();
    server.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut client, 10), b"still here");
    assert_silent(&mut server, Duration::from_millis(200));
    eventually("the cut bytes were read and dropped", || {
        proxy.bytes_dropped(Direction::ToTarget) == 4
    });

    proxy.pass();
    proxy.cut(Direction::ToClient);
    server.write_all(b"lost").unwrap();
    client.write_all(b"works").unwrap();
    assert_eq!(read_n(&mut server, 5), b"works");
    assert_silent(&mut client, Duration::from_millis(200));
    eventually("the cut bytes were read and dropped", || {
        proxy.bytes_dropped(Direction::ToClient) == 4
    });
}

#[test]
fn refuse_closes_the_port_and_reopens_it() {
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let mut server = next_conn(&conns);

    proxy.refuse(true).unwrap();
    let e = TcpStream::connect(proxy.addr()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // The open connection is not affected.
    client.write_all(b"open").unwrap();
    assert_eq!(read_n(&mut server, 4), b"open");

    proxy.refuse(false).unwrap();
    let mut client2 = TcpStream::connect(proxy.addr()).unwrap();
    let mut server2 = next_conn(&conns);
    client2.write_all(b"back").unwrap();
    assert_eq!(read_n(&mut server2, 4), b"back");
    assert_eq!(proxy.connections_accepted(), 2);
}

#[test]
fn counters_track_connections_and_bytes() {
    let (target, conns) = handoff_server();
    let proxy = ChaosProxy::start(target).unwrap();
    assert_eq!(proxy.target(), target);
    assert_eq!(proxy.connections_accepted(), 0);

    let mut c1 = TcpStream::connect(proxy.addr()).unwrap();
    let mut s1 = next_conn(&conns);
    let c2 = TcpStream::connect(proxy.addr()).unwrap();
    let s2 = next_conn(&conns);
    eventually("two open", || proxy.connections_open() == 2);
    assert_eq!(proxy.connections_accepted(), 2);

    c1.write_all(&[1; 1000]).unwrap();
    read_n(&mut s1, 1000);
    s1.write_all(&[2; 300]).unwrap();
    read_n(&mut c1, 300);
    eventually(
        "1000 bytes counted to the target, 300 to the client",
        || {
            proxy.bytes_forwarded(Direction::ToTarget) == 1000
                && proxy.bytes_forwarded(Direction::ToClient) == 300
        },
    );

    // A connection counts until both ends have closed.
    drop(c2);
    drop(s2);
    eventually("one open", || proxy.connections_open() == 1);
    assert_eq!(proxy.connections_accepted(), 2);
}

#[test]
fn unreachable_target_resets_the_client() {
    // A port that was just free: nothing listens there.
    let target = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = ChaosProxy::start(target).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4];
    match client.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(0) => {}
        other => panic!("expected a reset or EOF, got {other:?}"),
    }
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(proxy.connections_open(), 0);
}
