//! Heartbeats end to end: a peer that completes the handshake and then goes silent (as a
//! half-open link or a frozen process looks) is detected within `interval × misses` on both
//! the dialing and the accepting side; blocked calls wake with `Disconnected`; idle pipes
//! with heartbeats stay up and measure their RTT.

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{DialOptions, ErrorKind, Heartbeat, ListenOptions, PipeState, RecvOptions};

mod common;
use common::{RawPeer, RawStream};

const INTERVAL: Duration = Duration::from_millis(100);
const MISSES: u32 = 3;

/// A raw listener (a protocol session without heartbeats) that will complete one handshake
/// and then fall silent: its address, and the thread that hands back the (open, silent) peer.
fn silent_listener() -> (String, thread::JoinHandle<RawPeer>) {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", raw.local_addr().unwrap());
    let peer = thread::spawn(move || {
        let mut peer = RawPeer::serve(RawStream::Tcp(raw.accept().unwrap().0));
        peer.handshake();
        peer
    });
    (addr, peer)
}

fn heartbeat() -> Heartbeat {
    Heartbeat::new(INTERVAL, MISSES)
}

/// One detection by the dialing side: returns how long after the peer fell silent the
/// blocked recv returned.
fn dialer_detects_silent_listener() -> Duration {
    let (addr, peer) = silent_listener();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let opts = DialOptions::default()
        .heartbeat(heartbeat())
        .on_state_change(move |c| {
            let _ = tx.lock().unwrap().send(c);
        });
    let pipe = duct::dial(&addr, opts).unwrap();
    let _silent = peer.join().unwrap(); // open, and silent from now on
    let silent_since = Instant::now();
    let e = pipe.recv().unwrap_err();
    let took = silent_since.elapsed();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("silent"), "{e}");
    assert_eq!(pipe.state(), PipeState::Disconnected);
    let changes: Vec<_> = rx.try_iter().collect();
    let last = changes.last().expect("state changes");
    assert_eq!(
        (last.from, last.to),
        (PipeState::Connected, PipeState::Disconnected)
    );
    assert_eq!(
        last.cause.as_ref().map(|c| c.kind()),
        Some(ErrorKind::Disconnected)
    );
    took
}

/// One detection by the accepting side.
fn listener_detects_silent_dialer() -> Duration {
    let (on_error_tx, _on_error_rx) = mpsc::channel::<String>();
    let on_error_tx = std::sync::Mutex::new(on_error_tx);
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .heartbeat(heartbeat())
            .on_error(move |e| {
                let _ = on_error_tx.lock().unwrap().send(e.to_string());
            }),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    // A dialer without heartbeats that completes the handshake, then says nothing.
    let mut silent = RawPeer::dial(&addr);
    silent.handshake();
    let pipe = listener.accept_timeout(Duration::from_secs(5)).unwrap();
    let silent_since = Instant::now();
    let e = pipe
        .recv_with(&RecvOptions::default().timeout(Duration::from_secs(10)))
        .unwrap_err();
    let took = silent_since.elapsed();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert_eq!(pipe.state(), PipeState::Disconnected);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn silent_peer_is_detected_on_both_sides() {
    let limit = INTERVAL * MISSES;
    let mut dialer = Vec::new();
    let mut listener = Vec::new();
    for _ in 0..20 {
        dialer.push(dialer_detects_silent_listener());
        listener.push(listener_detects_silent_dialer());
    }
    let (d, l) = (median(dialer.clone()), median(listener.clone()));
    println!(
        "silent peer detected after (interval {INTERVAL:?} x {MISSES}): dialer median {d:?} \
         (max {:?}), listener median {l:?} (max {:?})",
        dialer.iter().max().unwrap(),
        listener.iter().max().unwrap()
    );
    for (side, times) in [("dialer", &dialer), ("listener", &listener)] {
        for t in times {
            // Not before the peer could have been silent for `misses` intervals (less a
            // little: the silence may have begun just before we started the clock)...
            assert!(
                *t + INTERVAL >= limit,
                "{side}: declared gone after only {t:?}"
            );
            // ... and not much later (generous slack: a shared 2-core machine).
            assert!(*t < limit + Duration::from_secs(2), "{side}: took {t:?}");
        }
    }
}

#[test]
fn idle_pipes_with_heartbeats_stay_up_and_measure_rtt() {
    let hb = Heartbeat::new(Duration::from_millis(30), 3);
    let listener = duct::listen(
        // (tcp where there are no Unix sockets)
        &if cfg!(unix) {
            format!("uds://@duct-heartbeat-idle-{}", std::process::id())
        } else {
            "tcp://127.0.0.1:0".to_owned()
        },
        ListenOptions::default().heartbeat(hb),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let server = thread::spawn(move || listener.accept().unwrap());
    let pipe = duct::dial(&addr, DialOptions::default().heartbeat(hb)).unwrap();
    let peer = server.join().unwrap();
    // Neither side calls duct for 30 intervals: the reactor's PINGs keep both alive.
    thread::sleep(Duration::from_millis(900));
    assert_eq!(pipe.state(), PipeState::Connected);
    assert_eq!(peer.state(), PipeState::Connected);
    // PONGs measured the round trip: at one end at least (an end PINGs only after an
    // interval of silence, so the end whose peer PINGs first may never need to; see
    // `PipeStats::rtt`).
    let rtts = [pipe.stats().rtt, peer.stats().rtt];
    assert!(rtts.iter().any(Option::is_some), "no round trip measured");
    for rtt in rtts.into_iter().flatten() {
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    }
    pipe.send("still here").unwrap();
    let m = peer
        .recv_with(&RecvOptions::default().timeout(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(m.payload(), b"still here");
}

#[test]
fn heartbeats_off_never_disconnect_an_idle_pipe() {
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().heartbeat(Heartbeat::off()),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let server = thread::spawn(move || listener.accept().unwrap());
    let pipe = duct::dial(&addr, DialOptions::default().heartbeat(Heartbeat::off())).unwrap();
    let peer = server.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(pipe.stats().rtt, None, "no PINGs were sent");
    assert_eq!(pipe.state(), PipeState::Connected);
    pipe.send("hi").unwrap();
    assert_eq!(peer.recv().unwrap().payload(), b"hi");
}

/// With no call in progress, heartbeat loss is reported to `on_error` (and the state change
/// to `on_state_change`) as soon as it is detected; the next call returns the same error.
#[test]
fn heartbeat_loss_reaches_on_error_while_nobody_calls() {
    let (addr, peer) = silent_listener();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let opts = DialOptions::default()
        .heartbeat(heartbeat())
        .on_error(move |e| {
            let _ = tx
                .lock()
                .unwrap()
                .send((e.kind(), e.to_string(), Instant::now()));
        });
    let pipe = duct::dial(&addr, opts).unwrap();
    let _silent = peer.join().unwrap();
    let since = Instant::now();
    let (kind, text, at) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("on_error was called");
    assert_eq!(kind, ErrorKind::Disconnected, "{text}");
    assert!(text.contains("silent"), "{text}");
    assert!(at.duration_since(since) < INTERVAL * MISSES + Duration::from_secs(2));
    assert!(rx.try_recv().is_err(), "reported once");
    assert_eq!(pipe.state(), PipeState::Disconnected);
    let e = pipe.try_recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected);
}
