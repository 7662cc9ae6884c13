//! Two sessions over in-memory byte links ([`common::Pair`]): handshake, delivery in order
//! per channel, close, ping/pong and send-side limits, each over many seeds. Every assertion
//! names its seed; `Pair::new(seed, ..)` replays a failure exactly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct_proto::wire::control::{close_code, Close, MAX_REASON_LEN};
use duct_proto::wire::FrameKind;
use duct_proto::{Category, Config, Error, Event, Role, Session, State};

use common::{established, frames, pattern, pump_frames, small_frames, Pair};

const SEEDS: u64 = 100;

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

#[test]
fn handshake_agrees_on_session_id_and_takes_the_peers_limits() {
    for seed in 0..SEEDS {
        let dialer = Config {
            max_frame_payload: 2048,
            max_message_size: 1 << 20,
            heartbeat_interval: ms(500),
            instance_id: 0xabcd,
            capabilities: u64::MAX,
            ..Config::default()
        };
        let listener = Config {
            max_frame_payload: 4096,
            max_message_size: 2 << 20,
            heartbeat_interval: ms(200),
            session_id: 99,
            ..Config::default()
        };
        let p = Pair::connected(seed, dialer, listener);
        let (d, l) = (&p.dialer, &p.listener);
        assert_eq!(d.session.session_id(), 99, "seed {seed}");
        assert_eq!(l.session.session_id(), 99, "seed {seed}");
        assert_eq!(
            d.events,
            vec![Event::Connected { session_id: 99 }],
            "seed {seed}"
        );
        assert_eq!(
            l.events,
            vec![Event::Connected { session_id: 99 }],
            "seed {seed}"
        );

        // Each side sends within the other's receive limits.
        let dn = d.session.negotiated().unwrap();
        assert_eq!(
            (dn.send_frame_max, dn.send_message_max),
            (4096, 2 << 20),
            "seed {seed}"
        );
        let ln = l.session.negotiated().unwrap();
        assert_eq!(
            (ln.send_frame_max, ln.send_message_max),
            (2048, 1 << 20),
            "seed {seed}"
        );
        // Each side receives within its own.
        assert_eq!(d.session.max_input_payload(), 2048, "seed {seed}");
        assert_eq!(l.session.max_input_payload(), 4096, "seed {seed}");

        for n in [dn, ln] {
            assert_eq!(
                n.heartbeat_interval,
                ms(200),
                "seed {seed}: the smaller interval"
            );
            assert_eq!(n.instance_id, 0xabcd, "seed {seed}");
            assert_eq!(n.peer_version, (1, 3), "seed {seed}");
            use duct_proto::wire::control::caps;
            assert_eq!(
                n.capabilities,
                caps::TTL | caps::RELIABLE | caps::ACK_REQUEST,
                "seed {seed}: TTL, RELIABLE and ACK_REQUEST are offered by default, RESUME \
                 only on request"
            );
        }
        // Once idle, the only deadline is the heartbeat: a PING one agreed interval after
        // the last input.
        for side in [d, l] {
            let due = side.session.poll_timeout().expect("heartbeat deadline");
            assert!(
                due > p.now && due <= p.now + Duration::from_millis(200),
                "seed {seed}: next deadline {:?} after now",
                due - p.now
            );
        }
    }
}

#[test]
fn heartbeat_is_the_smaller_non_zero_interval() {
    let now = Instant::now();
    let cases = [
        (None, None, None),
        (ms(500), None, ms(500)),
        (None, ms(200), ms(200)),
        (ms(500), ms(200), ms(200)),
        (ms(100), ms(300), ms(100)),
    ];
    for (ours, theirs, expected) in cases {
        let dialer = Config {
            heartbeat_interval: ours,
            ..Config::default()
        };
        let listener = Config {
            heartbeat_interval: theirs,
            ..Config::default()
        };
        let (d, l) = established(dialer, listener, now);
        for s in [&d, &l] {
            let got = s.negotiated().unwrap().heartbeat_interval;
            assert_eq!(
                got,
                expected,
                "{ours:?} vs {theirs:?} at the {:?}",
                s.role()
            );
        }
    }
}

/// Out-of-range frame limits are clamped to 1024..=16 MiB before they are announced; a
/// session id of 0 is never handed out.
#[test]
fn announced_limits_are_clamped_and_session_id_is_never_zero() {
    let now = Instant::now();
    for (configured, announced) in [(0, 1024), (100, 1024), (1024, 1024), (u32::MAX, 16 << 20)] {
        let listener = Config {
            max_frame_payload: configured,
            session_id: 0,
            ..Config::default()
        };
        let (d, l) = established(Config::default(), listener, now);
        assert_eq!(
            d.negotiated().unwrap().send_frame_max,
            announced,
            "{configured}"
        );
        assert_eq!(l.max_input_payload(), announced, "{configured}");
        assert_eq!(d.session_id(), 1);
    }
}

/// Random workloads in both directions, random read sizes, random interleaving of sends and
/// reads: every message arrives once, intact, in order per channel.
#[test]
fn messages_arrive_intact_and_in_order_per_channel_across_seeds() {
    for seed in 0..SEEDS * 2 {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let frame_max = |s: u64| 1024 * fastrand::Rng::with_seed(s).u32(1..=4);
        let dialer = Config {
            max_frame_payload: frame_max(seed),
            ..Config::default()
        };
        let listener = Config {
            max_frame_payload: frame_max(!seed),
            ..Config::default()
        };
        let mut p = Pair::connected(seed, dialer, listener);
        let mut sent_by_dialer: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
        let mut sent_by_listener: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
        for i in 0..rng.usize(1..60) {
            let channel = rng.u16(0..5);
            let size = match rng.u8(0..10) {
                0 => 0,
                1..=6 => rng.usize(1..200),
                _ => rng.usize(200..10_000),
            };
            let payload = pattern(size, (seed << 16) | i as u64);
            let (side, log) = if rng.bool() {
                (&mut p.dialer, &mut sent_by_dialer)
            } else {
                (&mut p.listener, &mut sent_by_listener)
            };
            side.session.send(channel, payload.clone(), p.now).unwrap();
            log.entry(channel).or_default().push(payload);
            for _ in 0..rng.usize(0..4) {
                p.step();
            }
        }
        p.run();
        p.assert_no_errors();
        let received = |inbox: &[duct_proto::Delivered]| {
            let mut m: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
            for d in inbox {
                m.entry(d.channel).or_default().push(d.payload.clone());
            }
            m
        };
        assert!(
            received(&p.listener.inbox) == sent_by_dialer,
            "seed {seed}: dialer → listener"
        );
        assert!(
            received(&p.dialer.inbox) == sent_by_listener,
            "seed {seed}: listener → dialer"
        );
        assert_eq!(p.listener.session.reassembly_bytes(), 0, "seed {seed}");
    }
}

/// A close reaches the peer after every message sent before it, with its code and reason;
/// sends after the close fail; the closing side still receives what the peer sent meanwhile.
#[test]
fn close_follows_all_earlier_messages_and_carries_code_and_reason() {
    for seed in 0..SEEDS {
        let mut p = Pair::connected(seed, Config::default(), small_frames());
        let mut sent = Vec::new();
        for i in 0..20u64 {
            let payload = pattern((i as usize * 397) % 3000, (seed << 8) | i);
            p.dialer
                .session
                .send((i % 3) as u16, payload.clone(), p.now)
                .unwrap();
            sent.push(((i % 3) as u16, payload));
        }
        // Part of it is on its way when the dialer closes.
        for _ in 0..p.rng().usize(0..5) {
            p.step();
        }
        p.dialer
            .session
            .close(5001, "shutting down: ünïcödé", p.now);
        assert_eq!(p.dialer.session.state(), State::Closing, "seed {seed}");
        let after = p.dialer.session.send(0, Bytes::from_static(b"late"), p.now);
        assert_eq!(after, Err(Error::Closed), "seed {seed}");
        p.dialer.session.close(1, "twice", p.now); // does nothing
                                                   // The listener, not yet aware, sends too: the closing dialer still receives it.
        p.listener
            .session
            .send(9, Bytes::from_static(b"reply"), p.now)
            .unwrap();
        p.run();
        p.assert_no_errors();

        let got: Vec<_> = p
            .listener
            .inbox
            .iter()
            .map(|m| (m.channel, m.payload.clone()))
            .collect();
        // Channels are scheduled independently: order holds per channel.
        let by_channel = |v: &[(u16, Bytes)]| {
            let mut m: std::collections::BTreeMap<u16, Vec<Bytes>> = Default::default();
            for (c, b) in v {
                m.entry(*c).or_default().push(b.clone());
            }
            m
        };
        assert!(
            by_channel(&got) == by_channel(&sent),
            "seed {seed}: every message before the close arrives, in order per channel"
        );
        let close = Close {
            code: 5001,
            reason: "shutting down: ünïcödé".into(),
        };
        assert_eq!(
            p.listener.events.last(),
            Some(&Event::PeerClosed(close)),
            "seed {seed}"
        );
        assert_eq!(p.listener.session.state(), State::Closed, "seed {seed}");
        let after = p.listener.session.send(0, Bytes::from_static(b"x"), p.now);
        assert_eq!(after, Err(Error::Closed), "seed {seed}");
        assert_eq!(p.dialer.inbox.len(), 1, "seed {seed}");
        assert_eq!(p.dialer.inbox[0].payload, &b"reply"[..], "seed {seed}");
    }
}

/// Exactly one CLOSE is written, last, and nothing follows it: not a second close, not a
/// PONG to a PING that arrives while closing, not a PING.
#[test]
fn nothing_is_sent_after_close() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    d.send(1, Bytes::from_static(b"last words"), now).unwrap();
    d.close(close_code::GOING_AWAY, "bye", now);
    d.close(close_code::NORMAL, "again", now);
    let fs = frames(&mut d);
    let kinds: Vec<_> = fs.iter().map(|(h, _)| h.kind).collect();
    assert_eq!(kinds, [FrameKind::Data, FrameKind::Close]);
    assert_eq!(
        Close::decode(&fs[1].1).unwrap(),
        Close {
            code: 3,
            reason: "bye".into()
        }
    );

    l.ping(7).unwrap();
    pump_frames(&mut l, &mut d, now).unwrap();
    assert!(frames(&mut d).is_empty(), "a closing side answers no PING");
    assert_eq!(d.ping(8), Err(Error::Closed));
    assert!(frames(&mut d).is_empty());
}

#[test]
fn close_reason_is_cut_to_1024_bytes_at_a_char_boundary() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let reason = "é".repeat(1000); // 2000 bytes
    l.close(6000, &reason, now);
    pump_frames(&mut l, &mut d, now).unwrap();
    match d.poll_event() {
        Some(Event::PeerClosed(Close {
            code: 6000,
            reason: got,
        })) => {
            assert_eq!(got.len(), MAX_REASON_LEN);
            assert!(reason.starts_with(&got));
        }
        other => panic!("expected PeerClosed, got {other:?}"),
    }
}

#[test]
fn close_before_the_handshake_sends_nothing() {
    let now = Instant::now();
    let mut l = Session::new(Config::default(), Role::Listener, now);
    l.close(0, "never mind", now);
    assert_eq!(l.state(), State::Closed);
    assert!(frames(&mut l).is_empty());
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn ping_is_answered_with_pong_carrying_the_token() {
    for seed in 0..SEEDS {
        let mut p = Pair::connected(seed, Config::default(), Config::default());
        let token = p.rng().u64(..);
        p.dialer.session.ping(token).unwrap();
        p.listener.session.ping(!token).unwrap();
        p.run();
        p.assert_no_errors();
        assert_eq!(
            p.dialer.events.last(),
            Some(&Event::Pong { token }),
            "seed {seed}"
        );
        assert_eq!(
            p.listener.events.last(),
            Some(&Event::Pong { token: !token }),
            "seed {seed}"
        );
    }
    let now = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    assert_eq!(d.ping(1), Err(Error::NotConnected));
}

/// A message above the smaller of the two max_message_size limits fails at send, with the
/// sizes, and leaves the session usable.
#[test]
fn message_above_either_limit_fails_at_send() {
    // `max_message_size` bounds both directions: a send fails above the smaller of the
    // sender's own limit and the limit the peer announced in the handshake.
    for seed in 0..SEEDS / 4 {
        let listener = Config {
            max_message_size: 10_000,
            ..small_frames()
        };
        let dialer = Config {
            max_message_size: 5_000,
            ..Config::default()
        };
        let mut p = Pair::connected(seed, dialer, listener);
        let too_large = |size: u64| Error::MessageTooLarge { size, max: 5_000 };
        // The dialer's own limit is the smaller one.
        for size in [10_001usize, 5_001] {
            let e = p
                .dialer
                .session
                .send(1, pattern(size, seed), p.now)
                .unwrap_err();
            assert_eq!(e, too_large(size as u64), "seed {seed}");
            assert_eq!(e.category(), Category::MessageTooLarge);
        }
        // For the listener, the peer's (announced) limit is the smaller one.
        let e = p
            .listener
            .session
            .send(1, pattern(5_001, seed), p.now)
            .unwrap_err();
        assert_eq!(e, too_large(5_001), "seed {seed}");
        assert_eq!(
            p.dialer.session.outbox().len(),
            0,
            "seed {seed}: nothing queued"
        );

        p.dialer
            .session
            .send(1, pattern(5_000, seed), p.now)
            .unwrap();
        p.listener
            .session
            .send(1, pattern(5_000, seed), p.now)
            .unwrap();
        p.run();
        p.assert_no_errors();
        assert_eq!(
            p.listener.inbox[0].payload,
            pattern(5_000, seed),
            "seed {seed}"
        );
        assert_eq!(
            p.dialer.inbox[0].payload,
            pattern(5_000, seed),
            "seed {seed}"
        );
    }
}

#[test]
fn send_before_the_handshake_or_after_the_transport_is_lost_fails() {
    let now = Instant::now();
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let e = d.send(1, Bytes::from_static(b"x"), now).unwrap_err();
    assert_eq!(e, Error::NotConnected);
    assert_eq!(e.category(), Category::Closed);

    // The transport breaks while a fragmented message is half in.
    let (mut d, mut l) = established(small_frames(), Config::default(), now);
    l.send(1, pattern(5000, 1), now).unwrap();
    let (h, p) = frames(&mut l).remove(0);
    d.handle_frame(h, p, now).unwrap();
    assert_eq!(d.reassembly_bytes(), 1024);
    d.transport_lost(now);
    assert_eq!(d.state(), State::Closed);
    assert_eq!(d.reassembly_bytes(), 0);
    assert_eq!(d.poll_timeout(), None);
    assert_eq!(d.send(1, Bytes::from_static(b"x"), now), Err(Error::Closed));
}

/// Channel ids span the whole u16 range, and empty messages are messages.
#[test]
fn any_channel_and_empty_messages_are_delivered() {
    for seed in 0..SEEDS / 4 {
        let mut p = Pair::connected(seed, Config::default(), Config::default());
        for channel in [0, 1, 255, 256, 65534, 65535] {
            p.dialer.session.send(channel, Bytes::new(), p.now).unwrap();
            p.dialer
                .session
                .send(channel, Bytes::from(channel.to_be_bytes().to_vec()), p.now)
                .unwrap();
        }
        p.run();
        p.assert_no_errors();
        let got: Vec<_> = p
            .listener
            .inbox
            .iter()
            .map(|m| (m.channel, m.payload.len()))
            .collect();
        let expected: Vec<_> = [0, 1, 255, 256, 65534, 65535]
            .iter()
            .flat_map(|&c| [(c, 0), (c, 2)])
            .collect();
        assert_eq!(got, expected, "seed {seed}");
    }
}
