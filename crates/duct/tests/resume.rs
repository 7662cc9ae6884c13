//! Resume over the chaos proxy: a reconnecting dialer is re-attached to the same accepted
//! pipe (no new `accept`), both ends' callbacks show the break and the return, messages sent
//! meanwhile go out afterwards, and after the resume window a reconnect is a new pipe that
//! the dialer reports as `SessionLost`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct_proto::wire::control::caps;
use duct_proto::Config;

use duct::{
    DialOptions, Error, ErrorKind, Heartbeat, ListenOptions, Listener, Pipe, PipeState, Reconnect,
    RecvOptions, StateChange,
};
use duct_testkit::ChaosProxy;

mod common;
use common::{error_sink, proxy_in_front, recv, state_sink, wait_for_change, RawPeer, T};

/// The next change into `to`, skipping others; panics after `T`.
fn wait_for(rx: &mpsc::Receiver<StateChange>, to: PipeState) -> StateChange {
    wait_for_change(rx, &format!("change to {to}"), |c| c.to == to)
}

struct Setup {
    listener: Listener,
    proxy: ChaosProxy,
    server: Pipe,
    server_changes: mpsc::Receiver<StateChange>,
    client: Pipe,
    client_changes: mpsc::Receiver<StateChange>,
    client_errors: mpsc::Receiver<Error>,
}

fn setup(listen: ListenOptions, heartbeat: Heartbeat) -> Setup {
    let (on_server_change, server_changes) = state_sink();
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        listen
            .heartbeat(heartbeat)
            .on_state_change(on_server_change),
    )
    .unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let (on_client_change, client_changes) = state_sink();
    let (on_client_error, client_errors) = error_sink();
    let client = duct::dial(
        &proxied,
        DialOptions::default()
            .timeout(Duration::from_secs(1))
            .heartbeat(heartbeat)
            .reconnect(Reconnect::exponential(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .on_state_change(on_client_change)
            .on_error(on_client_error),
    )
    .unwrap();
    let server = listener.accept_timeout(T).unwrap();
    assert_eq!(
        wait_for(&server_changes, PipeState::Connected).from,
        PipeState::Connecting
    );
    assert_eq!(
        wait_for(&client_changes, PipeState::Connected).from,
        PipeState::Connecting
    );
    assert_eq!(server.id(), client.id(), "both ends name the pipe alike");
    Setup {
        listener,
        proxy,
        server,
        server_changes,
        client,
        client_changes,
        client_errors,
    }
}

#[test]
fn a_cut_while_idle_resumes_the_same_accepted_pipe() {
    let s = setup(ListenOptions::default(), Heartbeat::default());
    s.client.send("before").unwrap();
    assert_eq!(recv(&s.server).payload(), b"before");
    let (client_session, server_session) = (s.client.session_id(), s.server.session_id());
    assert_eq!(client_session, server_session);

    s.proxy.reset_all();
    // Both ends see the break, and both come back: the accepted pipe with it.
    let c = wait_for(&s.server_changes, PipeState::Reconnecting);
    assert_eq!(c.from, PipeState::Connected);
    assert_eq!(c.pipe_id, s.server.id());
    assert!(c.cause.is_some());
    wait_for(&s.client_changes, PipeState::Reconnecting);
    let back = wait_for(&s.client_changes, PipeState::Connected);
    assert!(back.cause.is_none(), "resumed, not lost: {:?}", back.cause);
    let server_back = wait_for(&s.server_changes, PipeState::Connected);
    assert_eq!(server_back.from, PipeState::Reconnecting);

    // A new session id on the same pipes; no new accept.
    assert_ne!(s.client.session_id(), client_session);
    assert_eq!(s.server.session_id(), s.client.session_id());
    assert_eq!(s.server.state(), PipeState::Connected);
    assert_eq!(
        s.listener
            .accept_timeout(Duration::from_millis(300))
            .unwrap_err()
            .kind(),
        ErrorKind::TimedOut,
        "a resumed dialer is not a new pipe"
    );
    // Traffic goes on both ways on the same pipe.
    s.client.send("after").unwrap();
    assert_eq!(recv(&s.server).payload(), b"after");
    s.server.send("reply").unwrap();
    assert_eq!(recv(&s.client).payload(), b"reply");
    assert_eq!(s.server.stats().reconnects, 1);
    assert!(s
        .client_errors
        .try_iter()
        .all(|e| e.kind() != ErrorKind::SessionLost));
}

#[test]
fn a_cut_while_streaming_resumes_and_the_stream_goes_on_in_order() {
    let s = setup(ListenOptions::default(), Heartbeat::default());
    let sender = {
        let client = s.client.clone();
        std::thread::spawn(move || {
            for i in 0u32..4000 {
                client.send(i.to_be_bytes().to_vec()).unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    let mut last = None;
    let mut got = 0usize;
    let mut cut = false;
    while last != Some(3999) {
        let m = recv(&s.server);
        let i = u32::from_be_bytes(m.payload().try_into().unwrap());
        // Messages the broken connection took but did not deliver are lost (no reliability
        // here); what arrives is in order and never twice.
        assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
        last = Some(i);
        got += 1;
        if !cut && got == 500 {
            s.proxy.reset_all();
            cut = true;
        }
    }
    sender.join().unwrap();
    assert!(cut);
    wait_for(&s.server_changes, PipeState::Reconnecting);
    wait_for(&s.server_changes, PipeState::Connected);
    println!("streamed through a cut: {got} of 4000 arrived on the same accepted pipe");
    assert!(s
        .listener
        .accept_timeout(Duration::from_millis(100))
        .is_err());
}

#[test]
fn messages_sent_to_a_resuming_dialer_go_out_when_it_is_back() {
    let s = setup(ListenOptions::default(), Heartbeat::default());
    s.proxy.refuse(true).unwrap();
    s.proxy.reset_all();
    wait_for(&s.server_changes, PipeState::Reconnecting);
    assert_eq!(s.server.state(), PipeState::Reconnecting);
    // The accepted pipe queues while its dialer is away.
    for i in 0..10 {
        s.server.send(format!("queued {i}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    s.proxy.refuse(false).unwrap();
    wait_for(&s.server_changes, PipeState::Connected);
    for i in 0..10 {
        assert_eq!(recv(&s.client).payload(), format!("queued {i}").as_bytes());
    }
}

#[test]
fn after_the_window_the_pipe_ends_and_a_reconnect_is_a_new_pipe_reported_as_session_lost() {
    let window = Duration::from_millis(300);
    let s = setup(
        ListenOptions::default().resume_window(window),
        Heartbeat::default(),
    );
    s.proxy.refuse(true).unwrap();
    s.proxy.reset_all();
    let broke = Instant::now();
    wait_for(&s.server_changes, PipeState::Reconnecting);
    // The dialer does not come back in time: the accepted pipe ends.
    let e = s
        .server
        .recv_with(&RecvOptions::default().timeout(T))
        .unwrap_err();
    let waited = broke.elapsed();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert!(e.to_string().contains("resume window"), "{e}");
    assert!(waited >= window, "ended after {waited:?}");
    assert_eq!(s.server.state(), PipeState::Disconnected);
    let end = wait_for(&s.server_changes, PipeState::Disconnected);
    assert_eq!(end.from, PipeState::Reconnecting);

    s.proxy.refuse(false).unwrap();
    // The dialer's reconnect is a fresh pipe on the listener...
    let fresh = s.listener.accept_timeout(T).unwrap();
    assert_eq!(fresh.id(), s.client.id());
    // ... and the dialer says so: in the state change and to on_error.
    let back = wait_for(&s.client_changes, PipeState::Connected);
    let cause = back.cause.expect("a lost session is never silent");
    assert_eq!(cause.kind(), ErrorKind::SessionLost, "{cause}");
    // on_error runs after the state-change callback, and failed attempts came first: wait
    // for it among them.
    let deadline = Instant::now() + T;
    let reported = std::iter::from_fn(|| {
        s.client_errors
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })
    .any(|e| e.kind() == ErrorKind::SessionLost);
    assert!(reported, "SessionLost reported to on_error");
    s.client.send("to the new pipe").unwrap();
    assert_eq!(recv(&fresh).payload(), b"to the new pipe");
}

/// A dialer speaking the protocol by hand: HELLO from instance 7 with RESUME offered, asking
/// to resume `resume`; returned once WELCOME arrived.
fn raw_dialer(addr: &str, resume: u64) -> RawPeer {
    let config = Config {
        instance_id: 7,
        resume_session_id: resume,
        capabilities: caps::RESUME,
        ..Config::default()
    };
    let mut peer = RawPeer::dial_with(addr, config);
    peer.handshake();
    peer
}

#[test]
fn a_dialer_back_before_the_listener_noticed_takes_over_the_pipe() {
    // The dialer noticed a break the listener did not (a half-open link): its new connection
    // asks to resume while the old one still looks fine to the listener.
    let (on_server_change, server_changes) = state_sink();
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .heartbeat(Heartbeat::off())
            .on_state_change(on_server_change),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let mut first = raw_dialer(&addr, 0);
    let s1 = first.session.session_id();
    let server = listener.accept_timeout(T).unwrap();
    assert_eq!(server.id(), 7);
    assert_eq!(server.session_id(), s1);
    wait_for(&server_changes, PipeState::Connected);

    let mut second = raw_dialer(&addr, s1);
    let s2 = second.session.session_id();
    assert!(
        second.session.negotiated().unwrap().resumed,
        "the listener still held the session"
    );
    assert_ne!(s2, s1);
    let c = wait_for(&server_changes, PipeState::Reconnecting);
    let cause = c.cause.unwrap().to_string();
    assert!(cause.contains("reconnected"), "{cause}");
    let c = wait_for(&server_changes, PipeState::Connected);
    assert_eq!(c.session_id, s2);
    assert_eq!(server.session_id(), s2);
    assert_eq!(
        server.peer_addr().to_string(),
        second.stream.local_addr_string(),
        "the pipe names its peer on the connection it now uses"
    );
    // The listener drops the old connection; the new one carries the pipe.
    first
        .stream
        .read_until_closed(T)
        .expect("the old connection is closed");
    second
        .session
        .send(
            0,
            Bytes::from_static(b"via the new connection"),
            Instant::now(),
        )
        .unwrap();
    second.flush().unwrap();
    assert_eq!(recv(&server).payload(), b"via the new connection");
    assert!(listener.accept_timeout(Duration::from_millis(100)).is_err());

    // A HELLO naming a session the pipe no longer has is a fresh pipe.
    let third = raw_dialer(&addr, s1);
    assert!(!third.session.negotiated().unwrap().resumed);
    assert_eq!(listener.accept_timeout(T).unwrap().id(), 7);
}

#[test]
fn a_dialer_that_does_not_reconnect_is_not_waited_for() {
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let _client = duct::dial(&proxied, DialOptions::default()).unwrap();
    let server = listener.accept_timeout(T).unwrap();
    proxy.reset_all();
    let started = Instant::now();
    let e = server
        .recv_with(&RecvOptions::default().timeout(T))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.state(), PipeState::Disconnected);
}

#[test]
fn close_of_a_pipe_waiting_for_its_dialer_is_prompt() {
    let s = setup(ListenOptions::default(), Heartbeat::default());
    s.proxy.refuse(true).unwrap();
    s.proxy.reset_all();
    wait_for(&s.server_changes, PipeState::Reconnecting);
    let blocked = {
        let server = s.server.clone();
        std::thread::spawn(move || server.recv().unwrap_err().kind())
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    s.server.close().unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(blocked.join().unwrap(), ErrorKind::Closed);
    let end = wait_for(&s.server_changes, PipeState::Closed);
    assert_eq!(end.from, PipeState::Reconnecting);
}

#[test]
fn dropping_a_pipe_waiting_for_its_dialer_ends_it_and_the_dialer_gets_a_new_one() {
    let s = setup(ListenOptions::default(), Heartbeat::default());
    s.proxy.refuse(true).unwrap();
    s.proxy.reset_all();
    wait_for(&s.server_changes, PipeState::Reconnecting);
    s.server.send("never delivered").unwrap();
    drop(s.server);
    let end = wait_for(&s.server_changes, PipeState::Closed);
    assert_eq!(end.from, PipeState::Reconnecting);
    s.proxy.refuse(false).unwrap();
    let fresh = s.listener.accept_timeout(T).unwrap();
    let back = wait_for(&s.client_changes, PipeState::Connected);
    assert_eq!(back.cause.map(|e| e.kind()), Some(ErrorKind::SessionLost));
    s.client.send("hello again").unwrap();
    assert_eq!(recv(&fresh).payload(), b"hello again");
}
