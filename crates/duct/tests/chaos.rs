//! duct through the chaos proxy (duct-testkit): faults on a real loopback link between a
//! dialer and a listener.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use duct::{Addr, DialOptions, ErrorKind, Heartbeat, ListenOptions, RecvOptions};
use duct_testkit::ChaosProxy;

const INTERVAL: Duration = Duration::from_millis(100);
const MISSES: u32 = 3;

/// One blackhole: a fresh pipe through `proxy`, traffic both ways, then the link goes dead.
/// Returns how long the dialer and the accepted pipe took to notice.
fn one_blackhole(listener: &duct::Listener, proxy: &ChaosProxy) -> (Duration, Duration) {
    let heartbeat = Heartbeat::new(INTERVAL, MISSES);
    proxy.pass();
    let via_proxy: SocketAddr = proxy.addr();
    let dialer = duct::dial(
        &format!("tcp://{via_proxy}"),
        DialOptions::default().heartbeat(heartbeat),
    )
    .unwrap();
    let accepted = listener.accept_timeout(Duration::from_secs(5)).unwrap();

    dialer.send("hello").unwrap();
    let wait = RecvOptions::default().timeout(Duration::from_secs(5));
    assert_eq!(accepted.recv_with(&wait).unwrap().payload(), b"hello");
    accepted.send("hi").unwrap();
    assert_eq!(dialer.recv_with(&wait).unwrap().payload(), b"hi");

    proxy.blackhole();
    let dead_since = Instant::now();
    let listener_side = thread::spawn(move || {
        let e = accepted.recv().unwrap_err();
        (e, dead_since.elapsed())
    });
    let dialer_err = dialer.recv().unwrap_err();
    let dialer_took = dead_since.elapsed();
    let (listener_err, listener_took) = listener_side.join().unwrap();

    let silence = INTERVAL * MISSES;
    for (end, e, took) in [
        ("dialer", &dialer_err, dialer_took),
        ("accepted pipe", &listener_err, listener_took),
    ] {
        assert_eq!(e.kind(), ErrorKind::Disconnected, "{end}: {e}");
        // The last frame heard may predate the blackhole by up to one interval.
        assert!(
            took >= silence - INTERVAL,
            "{end}: detected after {took:?}, before the peer could have been silent for {silence:?}"
        );
        assert!(
            took <= silence + Duration::from_secs(2),
            "{end}: detected only after {took:?}"
        );
    }
    assert!(proxy.bytes_dropped(duct_testkit::Direction::ToTarget) > 0);
    assert!(proxy.bytes_dropped(duct_testkit::Direction::ToClient) > 0);
    proxy.reset_all();
    (dialer_took, listener_took)
}

/// A blackholed link (bytes acknowledged by TCP, never delivered: a half-open link or a
/// frozen host) is noticed by heartbeats on both ends: the dialer's and the accepted pipe's
/// blocked `recv` each return `Disconnected` about `interval × misses` after the link died.
/// Twenty times, for the median.
#[test]
fn blackhole_is_detected_by_heartbeat_on_both_ends() {
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().heartbeat(Heartbeat::new(INTERVAL, MISSES)),
    )
    .unwrap();
    let Addr::Tcp(target) = listener.local_addr() else {
        panic!("a tcp listener has a tcp address");
    };
    let proxy = ChaosProxy::start(target).unwrap();
    let (mut dialer, mut accepted): (Vec<_>, Vec<_>) =
        (0..20).map(|_| one_blackhole(&listener, &proxy)).unzip();
    dialer.sort();
    accepted.sort();
    println!(
        "heartbeat {INTERVAL:?} x {MISSES}, blackhole detected (median of 20): dialer {:?} \
         (max {:?}), accepted pipe {:?} (max {:?})",
        dialer[10], dialer[19], accepted[10], accepted[19]
    );
}
