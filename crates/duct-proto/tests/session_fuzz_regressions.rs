//! Regressions found by the `session` fuzz target (`fuzz/fuzz_targets/common/session.rs`),
//! each reduced to the few calls that show it.
//!
//! Most are about [`Session::poll_timeout`]: after [`Session::handle_timeout`] at a deadline,
//! and once everything ready has been written, the next deadline must lie in the future, or a
//! driver that sleeps until it spins.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::qos::{Admission, ChannelConfig, Outbox, QosConfig, Rate};
use duct_proto::reliable::ACK_DELAY;
use duct_proto::wire::{FrameKind, Header};
use duct_proto::{Config, Direct, Error, Event, Role, Session, State, Transmit};

use common::{established, pump_frames};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Handles the deadline due at `now` as a driver does (handle it, then write everything
/// ready), and checks that the next one is not due any more.
fn handle_due(s: &mut Session, now: Instant) {
    assert!(
        s.poll_timeout().is_some_and(|t| t <= now),
        "a deadline is due at {now:?}"
    );
    s.handle_timeout(now).expect("nothing fails here");
    while s.poll_transmit_at(now).is_some() {}
    let next = s.poll_timeout();
    assert!(
        next.is_none_or(|t| t > now),
        "the deadline stays due after it was handled ({:?} in the past): the driver spins",
        next.map(|t| now - t)
    );
}

/// A listener that fails after it accepted the HELLO but before its WELCOME was written (here:
/// its heartbeat finds the dialer silent) still writes the WELCOME ahead of its CLOSE: a CLOSE
/// as the listener's first frame would be a protocol error to the dialer ("no CLOSE before the
/// handshake"), which would never learn why the listener gave up.
#[test]
fn a_listener_failing_before_its_welcome_is_written_sends_the_welcome_first() {
    let t0 = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, t0);
    let mut l = Session::new(
        Config {
            session_id: 5,
            heartbeat_interval: Some(ms(100)),
            heartbeat_misses: 1,
            ..Config::default()
        },
        Role::Listener,
        t0,
    );
    pump_frames(&mut d, &mut l, t0).expect("HELLO accepted");
    assert_eq!(l.state(), State::Established);
    // The driver did not get to write the WELCOME before the deadline.
    let at = l.poll_timeout().expect("the heartbeat deadline");
    assert!(matches!(
        l.handle_timeout(at),
        Err(Error::PeerSilent { .. })
    ));
    let written: Vec<Transmit> = std::iter::from_fn(|| l.poll_transmit()).collect();
    let kinds: Vec<FrameKind> = written
        .iter()
        .map(|t| Header::decode(&t.header).unwrap().kind)
        .collect();
    assert_eq!(kinds, [FrameKind::Welcome, FrameKind::Close]);

    // They tell the dialer that the session began, and why it ended.
    let mut bytes = BytesMut::new();
    for t in &written {
        bytes.extend_from_slice(&t.header);
        bytes.extend_from_slice(&t.payload);
    }
    d.handle_input(&mut bytes, at).expect("WELCOME then CLOSE");
    let events: Vec<Event> = std::iter::from_fn(|| d.poll_event()).collect();
    assert!(matches!(events[0], Event::Connected { session_id: 5 }));
    assert!(matches!(&events[1], Event::PeerClosed(c) if c.code != 0));
    assert_eq!(d.state(), State::Closed);
}

/// Messages that waited for a rate limit and then expired leave the outbox empty; the
/// instant the rate limit would have let them go must not stay the session's deadline.
#[test]
fn messages_that_expire_while_waiting_for_tokens_leave_no_deadline_behind() {
    let t0 = Instant::now();
    let qos = Arc::new(QosConfig {
        default: ChannelConfig {
            ttl: Some(ms(50)),
            ..ChannelConfig::default()
        },
        pipe_msgs_rate: Rate::new(1.0, 1),
        ..QosConfig::default()
    });
    let (mut d, _l) = established(
        Config {
            qos,
            ..Config::default()
        },
        Config::default(),
        t0,
    );
    for _ in 0..2 {
        let a = d.send(1, Bytes::from_static(b"state"), t0).unwrap();
        assert_eq!(a, Admission::Queued);
    }
    assert!(d.poll_transmit_at(t0).is_some(), "the first one goes");
    assert!(
        d.poll_transmit_at(t0).is_none(),
        "the second waits a second"
    );
    // It expires first.
    handle_due(&mut d, t0 + ms(50));
    assert!(d.outbox().is_empty());
    assert_eq!(d.poll_timeout(), None, "nothing is left to wake for");
}

/// After our CLOSE no PING may go; a heartbeat that comes due meanwhile must not leave its
/// deadline in the past (until the peer's silence ends the session).
#[test]
fn a_closing_session_with_heartbeats_does_not_spin() {
    let t0 = Instant::now();
    let hb = Config {
        heartbeat_interval: Some(ms(100)),
        heartbeat_misses: 5,
        ..Config::default()
    };
    let (mut d, _l) = established(hb, Config::default(), t0);
    d.close(0, "done", t0);
    let close = d.poll_transmit_at(t0).expect("the CLOSE");
    assert_eq!(close.header[0], FrameKind::Close as u8);
    assert_eq!(d.state(), State::Closing);
    let at = d.poll_timeout().expect("the heartbeat");
    assert_eq!(at, t0 + ms(100));
    handle_due(&mut d, at);
    assert!(d.poll_transmit_at(at).is_none(), "no PING after CLOSE");
    // The silence still ends it.
    let mut now = at;
    while d.state() != State::Closed {
        now = d.poll_timeout().expect("a deadline while closing");
        match d.handle_timeout(now) {
            Ok(()) => handle_due_after(&mut d, now),
            Err(e) => assert!(matches!(e, Error::PeerSilent { .. }), "{e:?}"),
        }
    }
    assert_eq!(now, t0 + ms(500));
}

fn handle_due_after(s: &mut Session, now: Instant) {
    while s.poll_transmit_at(now).is_some() {}
    assert!(
        s.poll_timeout().is_none_or(|t| t > now),
        "the deadline stays due"
    );
}

/// The same while the driver does not read: nothing would ever end the spin.
#[test]
fn a_closing_session_that_does_not_read_does_not_spin() {
    let t0 = Instant::now();
    let hb = Config {
        heartbeat_interval: Some(ms(100)),
        ..Config::default()
    };
    let (mut d, _l) = established(hb.clone(), hb, t0);
    d.pause_receive(t0);
    d.close(0, "done", t0);
    while d.poll_transmit_at(t0).is_some() {}
    let at = d.poll_timeout().expect("the paused PING schedule");
    handle_due(&mut d, at);
    assert!(d.poll_transmit_at(at).is_none(), "no PING after CLOSE");
}

/// A reliable message that arrives after our CLOSE was queued is owed an ack that no ACK frame
/// may carry any more: its due time must not stay the deadline.
#[test]
fn a_closing_session_owing_an_ack_does_not_spin() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), t0);
    let a = l
        .send_message(2, Bytes::from_static(b"sure"), None, Some(true), t0)
        .unwrap();
    assert_eq!(a, Admission::Queued);
    d.close(0, "done", t0);
    while d.poll_transmit_at(t0).is_some() {}
    pump_frames(&mut l, &mut d, t0).expect("the reliable message arrives");
    assert_eq!(
        d.poll_message().map(|m| m.payload),
        Some(Bytes::from_static(b"sure"))
    );
    // When the ack would have been due: nothing is, and nothing may go.
    let at = t0 + ACK_DELAY;
    d.handle_timeout(at).expect("nothing fails here");
    assert!(d.poll_transmit_at(at).is_none(), "no ACK after CLOSE");
    assert!(d.poll_timeout().is_none_or(|t| t > at), "the ack stays due");
}

/// A reliable message written before our CLOSE and never acknowledged is not sent again after
/// the CLOSE went out (nothing follows a CLOSE), and its retransmission timer does not stay
/// due either.
#[test]
fn nothing_is_retransmitted_after_our_close() {
    let t0 = Instant::now();
    let (mut d, _l) = established(Config::default(), Config::default(), t0);
    let a = d
        .send_message(2, Bytes::from(vec![7; 3000]), None, Some(true), t0)
        .unwrap();
    assert_eq!(a, Admission::Queued);
    d.close(0, "done", t0);
    let written: Vec<u8> = std::iter::from_fn(|| d.poll_transmit_at(t0))
        .map(|t| t.header[0])
        .collect();
    assert_eq!(written.last(), Some(&(FrameKind::Close as u8)));
    assert_eq!(d.outbox().unacked(), 1, "the peer never acked");
    // The retransmission timeout passes without a word from the peer.
    let at = t0 + Duration::from_secs(60);
    d.handle_timeout(at).expect("nothing fails here");
    assert!(
        d.poll_transmit_at(at).is_none(),
        "a frame written after our CLOSE"
    );
    assert!(
        d.poll_timeout().is_none_or(|t| t > at),
        "a deadline stays due"
    );
    assert!(!d.wants_transmit());
}

/// Reliable messages queued again by a retransmission timeout and acknowledged before they
/// went again are dropped from the queue by `poll`; however many there are, `poll` goes on to
/// the message behind them instead of returning `None` (with no wake-up set, nothing would
/// call it again: the message would stall).
#[test]
fn acknowledged_retransmissions_do_not_stall_the_message_behind_them() {
    let t0 = Instant::now();
    let qos = Arc::new(QosConfig {
        default: ChannelConfig {
            reliable: true,
            ..ChannelConfig::default()
        },
        ..QosConfig::default()
    });
    let mut o = Outbox::new(qos, t0);
    for i in 0..3u8 {
        assert_eq!(
            o.offer(1, Bytes::from(vec![i; 10]), None, t0),
            Admission::Queued
        );
        assert!(o.poll(t0, 1024).is_some());
    }
    assert_eq!(o.unacked(), 3);
    // No ack in time: all three are queued again; a new message comes behind them.
    let rto = t0 + Duration::from_secs(1);
    assert!(o.retransmit_due(rto));
    o.retransmit(rto);
    assert_eq!(
        o.offer(1, Bytes::from_static(b"next"), None, rto),
        Admission::Queued
    );
    // The peer had them after all.
    assert_eq!(o.on_ack(3, &[], rto), Ok(false));
    let t = o.poll(rto, 1024).expect("the new message goes now");
    assert_eq!(&t.payload[..], b"next");
    assert!(o.is_empty());
}

/// A reliable message that completes after a later-numbered one (its last fragment held back
/// behind a more urgent channel's message) has its own retransmission timeout: the timer that
/// ran for the other one, which the peer has acknowledged selectively since, does not judge
/// it a moment after it went. (Found by the `session` target with a byte-rate limit holding
/// fragments back and `max_retries` 0: the pair failed with `Unacknowledged` two
/// milliseconds after the message's last fragment went, the peer alive and acking.)
#[test]
fn a_message_completed_late_gets_a_whole_retransmission_timeout() {
    let t0 = Instant::now();
    let reliable = |priority| ChannelConfig {
        reliable: true,
        priority,
        ..ChannelConfig::default()
    };
    let dialer = Config {
        qos: Arc::new(QosConfig {
            channels: [(1u16, reliable(0)), (2, reliable(255))]
                .into_iter()
                .collect(),
            max_retries: 0,
            ..QosConfig::default()
        }),
        ..Config::default()
    };
    let listener = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    // Sends A on channel 1 (seq 1, two fragments) and takes its first fragment; then B on the
    // urgent channel 2 (seq 2, two fragments), which goes whole before A's second fragment.
    // The listener acks B selectively at once. Returns the pair and A's last fragment.
    let start = || {
        let (mut d, mut l) = established(dialer.clone(), listener.clone(), t0);
        d.send_message(1, Bytes::from(vec![1; 2000]), None, None, t0)
            .unwrap();
        let a1 = d.poll_transmit_at(t0).expect("A's first fragment");
        d.send_message(2, Bytes::from(vec![2; 1500]), None, None, t0)
            .unwrap();
        let b1 = d.poll_transmit_at(t0).expect("B's first fragment");
        let b2 = d.poll_transmit_at(t0).expect("B's last fragment");
        for t in [&a1, &b1, &b2] {
            let h = Header::decode(&t.header).unwrap();
            l.handle_frame(h, t.payload.clone(), t0).unwrap();
        }
        let heard = t0 + ACK_DELAY;
        l.handle_timeout(heard).unwrap();
        pump_frames(&mut l, &mut d, heard).expect("the selective ack");
        assert_eq!(d.outbox().unacked(), 1, "B acked selectively");
        (d, l)
    };
    let (mut d, mut l) = start();
    let rto = d.outbox().rto();
    // A's last fragment goes just before B's timeout would have fired.
    let sent = t0 + rto - ms(1);
    let a2 = d.poll_transmit_at(sent).expect("A's last fragment");
    assert_eq!(Header::decode(&a2.header).unwrap().seq, 1);
    handle_due(&mut d, t0 + rto);
    assert_eq!(
        d.state(),
        State::Established,
        "failed {:?} after A's last fragment went: {:?}",
        ms(1),
        d.poll_event()
    );
    assert_eq!(
        d.poll_timeout(),
        Some(sent + rto),
        "A's timeout counts from its send"
    );
    // The peer gets A and acks both: nothing left to time out.
    let h = Header::decode(&a2.header).unwrap();
    l.handle_frame(h, a2.payload.clone(), sent).unwrap();
    l.handle_timeout(sent + ACK_DELAY).unwrap();
    pump_frames(&mut l, &mut d, sent + ACK_DELAY).unwrap();
    assert_eq!(d.outbox().unacked(), 0);
    assert_eq!(d.state(), State::Established);

    // A peer that goes silent is still caught, a whole timeout after A went.
    let (mut d, _l) = start();
    d.poll_transmit_at(sent).expect("A's last fragment");
    handle_due(&mut d, t0 + rto);
    assert_eq!(d.state(), State::Established);
    assert_eq!(
        d.handle_timeout(sent + rto),
        Err(Error::Unacknowledged {
            messages: 2,
            retries: 1
        })
    );
}

/// A peer that does not speak RELIABLE: a reliable message sent the direct way is refused as
/// the queued way refuses it (`NotAgreed`), and a run of reliable messages is not offered;
/// plain messages still go. (Found by the `session` target: the direct ways framed it with
/// `RELIABLE`, which such a peer takes for a protocol error.)
#[test]
fn the_direct_ways_refuse_reliable_messages_when_reliable_was_not_agreed() {
    let t0 = Instant::now();
    let no_reliable = Config {
        capabilities: duct_proto::wire::control::caps::TTL,
        ..Config::default()
    };
    let (mut d, mut l) = established(Config::default(), no_reliable, t0);
    let payload = Bytes::from_static(b"inventory");
    assert!(matches!(
        d.send_direct(1, payload.clone(), None, Some(true), t0),
        Err(Error::NotAgreed(_))
    ));
    assert!(d.direct_run(1, None, Some(true), t0).is_none());
    assert!(d.poll_transmit_at(t0).is_none(), "nothing framed");
    // Plain messages go, either way.
    let run = d.direct_run(1, None, Some(false), t0).expect("a plain run");
    assert!(!run.reliable());
    match d.send_direct(1, payload.clone(), None, Some(false), t0) {
        Ok(Direct::Frame(t)) => {
            let h = Header::decode(&t.header).unwrap();
            l.handle_frame(h, t.payload, t0).expect("a plain frame");
        }
        Ok(Direct::Offered(Admission::Queued)) => {
            pump_frames(&mut d, &mut l, t0).expect("a plain frame")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.poll_message().map(|m| m.payload), Some(payload));
}
