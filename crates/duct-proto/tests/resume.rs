//! Resume in the handshake (PROTOCOL.md §5.5): the listener's deferred decision, the dialer's
//! checks of `resumed`, and [`requeue`], which moves unsent messages to a new connection.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{control_frame, established, feed, frames, pump_frames, welcome};
use duct_proto::session::requeue;
use duct_proto::wire::control::{caps, reject_code};
use duct_proto::wire::{flags, FrameKind, Header};
use duct_proto::{Config, Error, Role, Session, State, Transmit};

fn deferred() -> Config {
    Config {
        defer_welcome: true,
        session_id: 77,
        capabilities: caps::RESUME,
        ..Config::default()
    }
}

fn resuming(session: u64) -> Config {
    Config {
        instance_id: 9,
        resume_session_id: session,
        capabilities: caps::RESUME,
        ..Config::default()
    }
}

#[test]
fn a_deferred_hello_waits_for_the_decision_and_shows_the_request() {
    let now = Instant::now();
    let mut d = Session::new(resuming(41), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    pump_frames(&mut d, &mut l, now).unwrap();
    assert_eq!(l.state(), State::Handshaking);
    let hello = l.pending_hello().expect("HELLO awaits a decision");
    assert_eq!((hello.instance_id, hello.resume_session_id), (9, 41));
    assert_eq!(l.resume_requested(), Some(41));
    assert!(
        frames(&mut l).is_empty(),
        "nothing is sent before the decision"
    );
    // The handshake deadline still runs.
    assert_eq!(
        l.poll_timeout(),
        Some(now + Config::default().handshake_timeout)
    );

    l.welcome(true, now).unwrap();
    assert_eq!(l.state(), State::Established);
    assert!(l.negotiated().unwrap().resumed);
    pump_frames(&mut l, &mut d, now).unwrap();
    let n = d.negotiated().unwrap();
    assert!(n.resumed);
    assert_eq!(n.capabilities & caps::RESUME, caps::RESUME);
    assert_eq!(
        d.session_id(),
        77,
        "a resumed connection gets a new session id"
    );
}

#[test]
fn a_fresh_welcome_answers_a_resume_request_with_resumed_0() {
    let now = Instant::now();
    let mut d = Session::new(resuming(41), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    pump_frames(&mut d, &mut l, now).unwrap();
    l.welcome(false, now).unwrap();
    pump_frames(&mut l, &mut d, now).unwrap();
    assert_eq!(d.state(), State::Established);
    assert!(!d.negotiated().unwrap().resumed);
}

#[test]
fn the_listener_cannot_resume_what_was_not_asked_for() {
    let now = Instant::now();
    // A fresh HELLO.
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    pump_frames(&mut d, &mut l, now).unwrap();
    assert_eq!(l.resume_requested(), None);
    assert!(matches!(l.welcome(true, now), Err(Error::BadParameter(_))));
    assert!(
        l.pending_hello().is_some(),
        "a refused decision leaves the HELLO pending"
    );
    // RESUME not offered by the listener.
    let mut d = Session::new(resuming(3), Role::Dialer, now);
    let mut l = Session::new(
        Config {
            capabilities: 0,
            ..deferred()
        },
        Role::Listener,
        now,
    );
    pump_frames(&mut d, &mut l, now).unwrap();
    assert_eq!(l.resume_requested(), None);
    assert!(l.welcome(true, now).is_err());
    l.welcome(false, now).unwrap();
    // Deciding twice.
    assert!(l.welcome(false, now).is_err());
}

#[test]
fn refusing_a_pending_hello_sends_reject_and_closes() {
    let now = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    pump_frames(&mut d, &mut l, now).unwrap();
    l.refuse(reject_code::UNAVAILABLE, "shutting down");
    assert_eq!(l.state(), State::Closed);
    assert_eq!(l.poll_timeout(), None);
    let err = pump_frames(&mut l, &mut d, now).unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { code, reason } if *code == reject_code::UNAVAILABLE && reason == "shutting down"),
        "{err:?}"
    );
}

#[test]
fn a_second_hello_while_deciding_is_a_protocol_error() {
    let now = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    let hello = common::wire(&mut d);
    let (r, _) = feed(&mut l, &hello, now);
    r.unwrap();
    let (r, _) = feed(&mut l, &hello, now);
    assert!(matches!(r, Err(Error::UnexpectedFrame { .. })), "{r:?}");
    assert_eq!(l.state(), State::Closed);
}

#[test]
fn a_deferred_listener_times_out_like_any_handshake() {
    let now = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let mut l = Session::new(deferred(), Role::Listener, now);
    pump_frames(&mut d, &mut l, now).unwrap();
    let late = now + Config::default().handshake_timeout;
    assert!(matches!(
        l.handle_timeout(late),
        Err(Error::HandshakeTimeout { .. })
    ));
    assert!(l.welcome(false, late).is_err());
}

#[test]
fn the_dialer_fails_on_a_resume_it_did_not_ask_for() {
    let now = Instant::now();
    // Asked for a fresh session, told it was resumed.
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let _ = frames(&mut d);
    let w = duct_proto::wire::control::Welcome {
        capabilities: caps::RESUME,
        resumed: true,
        ..welcome()
    };
    let (r, _) = feed(&mut d, &control_frame(FrameKind::Welcome, &w.encode()), now);
    assert!(matches!(r, Err(Error::BadParameter(_))), "{r:?}");
    // Asked to resume, but RESUME is not in the intersection.
    let mut d = Session::new(resuming(5), Role::Dialer, now);
    let _ = frames(&mut d);
    let w = duct_proto::wire::control::Welcome {
        capabilities: 0,
        resumed: true,
        ..welcome()
    };
    let (r, _) = feed(&mut d, &control_frame(FrameKind::Welcome, &w.encode()), now);
    assert!(matches!(r, Err(Error::BadParameter(_))), "{r:?}");
}

#[test]
fn the_hello_carries_the_session_to_resume() {
    let now = Instant::now();
    let mut d = Session::new(resuming(0xfeed), Role::Dialer, now);
    let (h, p) = frames(&mut d).remove(0);
    assert_eq!(h.kind, FrameKind::Hello);
    let hello = duct_proto::wire::control::Hello::decode(&p).unwrap();
    assert_eq!(hello.resume_session_id, 0xfeed);
    assert_eq!(hello.instance_id, 9);
    assert_eq!(hello.capabilities & caps::RESUME, caps::RESUME);
}

fn transmits(s: &mut Session) -> Vec<Transmit> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

#[test]
fn requeue_keeps_whole_messages_and_drops_control_frames() {
    let now = Instant::now();
    let (mut d, _l) = established(common::small_frames(), common::small_frames(), now);
    let big = common::pattern(3000, 1);
    d.send(1, Bytes::from_static(b"one"), now).unwrap();
    d.ping(5).unwrap();
    d.send(2, big.clone(), now).unwrap();
    d.send(1, Bytes::from_static(b"two"), now).unwrap();
    let t = transmits(&mut d);
    assert_eq!(t.len(), 1 + 1 + 3 + 1);
    let r = requeue(t);
    assert_eq!(r.lost, 0);
    // The scheduler serves channel 1 (first in line, with its quantum) before channel 2;
    // order holds per channel.
    assert_eq!(
        r.messages,
        vec![
            (1, Bytes::from_static(b"one")),
            (1, Bytes::from_static(b"two")),
            (2, big),
        ]
    );
}

#[test]
fn requeue_counts_a_message_whose_start_was_written_as_lost() {
    let now = Instant::now();
    let (mut d, _l) = established(common::small_frames(), common::small_frames(), now);
    d.send(4, common::pattern(2500, 2), now).unwrap();
    d.send(4, Bytes::from_static(b"after"), now).unwrap();
    let mut t = transmits(&mut d);
    t.remove(0); // the first fragment went out on the old connection
    let r = requeue(t);
    assert_eq!(r.lost, 1);
    assert_eq!(r.lost_channels, vec![4]);
    assert_eq!(r.messages, vec![(4, Bytes::from_static(b"after"))]);
    // A message whose last fragment is missing is open: the driver knows whether its rest is
    // still in the outbox (then it goes again whole) or lost.
    d.send(6, common::pattern(2500, 3), now).unwrap();
    let mut t = transmits(&mut d);
    t.pop();
    assert_eq!(
        requeue(t),
        duct_proto::session::Requeued {
            messages: vec![],
            lost: 0,
            lost_channels: vec![],
            open: vec![6],
        }
    );
}

#[test]
fn requeue_joins_interleaved_fragments_per_channel() {
    let a = common::pattern(30, 4);
    let b = common::pattern(20, 5);
    let frag = |channel: u16, flags: u8, aux: u32, payload: Bytes| {
        let mut h = Header::data(channel, payload.len() as u32);
        h.flags = flags;
        h.aux = aux;
        Transmit {
            header: h.encode(),
            payload,
            deadline: None,
        }
    };
    let t = vec![
        frag(1, flags::MORE_FRAGMENTS, 30, a.slice(..10)),
        frag(2, flags::MORE_FRAGMENTS, 20, b.slice(..10)),
        frag(
            1,
            flags::CONTINUATION | flags::MORE_FRAGMENTS,
            0,
            a.slice(10..20),
        ),
        frag(2, flags::CONTINUATION, 0, b.slice(10..)),
        frag(1, flags::CONTINUATION, 0, a.slice(20..)),
    ];
    let r = requeue(t);
    assert_eq!(r.lost, 0);
    assert_eq!(r.messages, vec![(2, b), (1, a)]);
}

#[test]
fn a_failed_session_keeps_its_unsent_messages_for_requeue() {
    let now = Instant::now();
    let hb = Config {
        heartbeat_interval: Some(Duration::from_millis(100)),
        heartbeat_misses: 2,
        ..Config::default()
    };
    let (mut d, _l) = established(hb, Config::default(), now);
    d.send(3, Bytes::from_static(b"queued"), now).unwrap();
    // The peer goes silent: the session fails and queues a CLOSE in place of the data.
    let _ = d.handle_timeout(now + Duration::from_millis(100));
    let err = d.handle_timeout(now + Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, Error::PeerSilent { .. }));
    let left = frames(&mut d);
    assert!(
        left.iter().all(|(h, _)| h.kind == FrameKind::Close),
        "{left:?}"
    );
    // But the message is not gone: it can go out on the next connection.
    let mut outbox = d.take_outbox();
    assert!(d.outbox().is_empty());
    let t = outbox.poll(now, 64 * 1024).expect("the message");
    assert_eq!(&t.payload[..], b"queued");
    assert!(outbox.is_empty());
}

#[test]
fn take_outbox_leaves_control_frames_and_empties_the_outbox() {
    let now = Instant::now();
    let (mut d, _l) = established(Config::default(), Config::default(), now);
    d.ping(1).unwrap();
    d.send(1, Bytes::from_static(b"x"), now).unwrap();
    let outbox = d.take_outbox();
    assert_eq!(outbox.len(), 1);
    assert!(d.outbox().is_empty());
    assert_eq!(d.control_len(), 1, "the PING stays with its session");
}
