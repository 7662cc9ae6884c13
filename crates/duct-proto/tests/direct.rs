//! `Session::send_direct` (a message framed at once when nothing waits before it) frames
//! exactly what `send_message` followed by `poll_transmit` would, and takes the queued way
//! whenever scheduling could matter; `Session::take_input_timers` says when input may have
//! brought a deadline nearer.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct_proto::qos::{Admission, Backpressure, ChannelConfig, QosConfig, Rate};
use duct_proto::wire::{flags, FrameKind, Header};
use duct_proto::{Config, Direct, Session};

use common::{established, frames, pump_frames};

fn with_qos(qos: QosConfig) -> Config {
    Config {
        qos: Arc::new(qos),
        ..Config::default()
    }
}

/// QoS with `channel` reliable.
fn reliable_on(channel: u16) -> QosConfig {
    let reliable = ChannelConfig {
        reliable: true,
        ..ChannelConfig::default()
    };
    QosConfig {
        channels: [(channel, reliable)].into_iter().collect(),
        ..QosConfig::default()
    }
}

fn direct_frame(d: Direct) -> duct_proto::Transmit {
    match d {
        Direct::Frame(t) => t,
        Direct::Offered(a) => panic!("expected a direct frame, got {a:?}"),
    }
}

fn offered(d: Direct) -> Admission {
    match d {
        Direct::Frame(t) => panic!("expected the queued way, got a frame {:?}", t.header),
        Direct::Offered(a) => a,
    }
}

#[test]
fn a_direct_frame_is_the_frame_the_queued_way_makes() {
    let now = Instant::now();
    let (mut a, _) = established(Config::default(), Config::default(), now);
    let (mut b, _) = established(Config::default(), Config::default(), now);
    for (channel, len) in [(0u16, 0usize), (1, 64), (7, 1000), (65535, 3)] {
        let payload = Bytes::from(vec![channel as u8; len]);
        let t = direct_frame(
            a.send_direct(channel, payload.clone(), None, None, now)
                .unwrap(),
        );
        assert_eq!(
            b.send_message(channel, payload, None, None, now).unwrap(),
            Admission::Queued
        );
        let q = b.poll_transmit().expect("the queued frame");
        assert_eq!(t.header, q.header, "channel {channel}, {len} bytes");
        assert_eq!(t.payload, q.payload);
        assert_eq!(t.deadline, None);
        assert!(a.outbox().is_empty() && a.poll_transmit().is_none());
    }
}

#[test]
fn the_direct_frame_carries_an_owed_ack() {
    let now = Instant::now();
    let qos = reliable_on(2);
    let (mut d, mut l) = established(with_qos(qos.clone()), with_qos(qos), now);
    // A reliable message from the dialer: the listener owes an ack.
    d.send_message(2, Bytes::from_static(b"trade"), None, None, now)
        .unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(
        l.take_input_timers(),
        "a reliable frame brings an ack deadline"
    );
    let t = direct_frame(
        l.send_direct(1, Bytes::from_static(b"pos"), None, None, now)
            .unwrap(),
    );
    let h = Header::decode(&t.header).unwrap();
    assert!(h.has(duct_proto::wire::flags::ACK_PRESENT), "{h:?}");
    assert_eq!(h.ack, 1);
}

#[test]
fn whatever_needs_scheduling_takes_the_queued_way() {
    let now = Instant::now();
    let paced = ChannelConfig {
        msgs_rate: Rate::new(1000.0, 10),
        backpressure: Backpressure::DropNew,
        ..ChannelConfig::default()
    };
    let with_ttl = ChannelConfig {
        ttl: Some(Duration::from_millis(50)),
        ..ChannelConfig::default()
    };
    let reliable_ttl = ChannelConfig {
        reliable: true,
        ttl: Some(Duration::from_millis(50)),
        ..ChannelConfig::default()
    };
    let qos = QosConfig {
        channels: [(1u16, paced), (2, with_ttl), (3, reliable_ttl)]
            .into_iter()
            .collect(),
        ..QosConfig::default()
    };
    let (mut s, _) = established(with_qos(qos.clone()), with_qos(qos), now);
    let p = || Bytes::from_static(b"x");
    // A rate-limited channel, a channel TTL (reliable or not), a TTL asked for per message
    // (with reliability or not): queued, and framed by poll_transmit in order.
    for (channel, ttl, rel) in [
        (1u16, None, None),
        (2, None, None),
        (3, None, None),
        (0, Some(Duration::from_millis(5)), None),
        (0, Some(Duration::from_millis(5)), Some(true)),
    ] {
        let a = offered(s.send_direct(channel, p(), ttl, rel, now).unwrap());
        assert_eq!(a, Admission::Queued, "channel {channel}");
        assert_eq!(frames(&mut s).len(), 1, "channel {channel}");
    }
    // Something queued already: the next message queues behind it, on any channel.
    s.send_message(0, p(), Some(Duration::from_millis(5)), None, now)
        .unwrap();
    assert_eq!(
        offered(s.send_direct(9, p(), None, None, now).unwrap()),
        Admission::Queued
    );
    let order: Vec<u16> = frames(&mut s).iter().map(|(h, _)| h.channel).collect();
    assert_eq!(order, vec![0, 9]);
    // A control frame waiting (a PING) goes first: the message queues.
    s.ping(7).unwrap();
    assert_eq!(
        offered(s.send_direct(4, p(), None, None, now).unwrap()),
        Admission::Queued
    );
    let kinds: Vec<_> = frames(&mut s).iter().map(|(h, _)| h.kind).collect();
    assert_eq!(kinds.len(), 2);
    assert_eq!(kinds[1], duct_proto::wire::FrameKind::Data);
}

#[test]
fn a_reliable_message_inside_its_windows_goes_direct_as_the_queued_way_frames_it() {
    let now = Instant::now();
    let reliable = ChannelConfig {
        reliable: true,
        inflight_msgs: 2,
        ..ChannelConfig::default()
    };
    let qos = QosConfig {
        channels: [(3u16, reliable)].into_iter().collect(),
        ..QosConfig::default()
    };
    let (mut a, _) = established(with_qos(qos.clone()), with_qos(qos.clone()), now);
    let (mut b, _) = established(with_qos(qos.clone()), with_qos(qos), now);
    let p = |i: u8| Bytes::from(vec![i; 10]);
    for i in 0..2u8 {
        let t = direct_frame(a.send_direct(3, p(i), None, None, now).unwrap());
        assert_eq!(
            b.send_message(3, p(i), None, None, now).unwrap(),
            Admission::Queued
        );
        let q = b.poll_transmit().expect("the queued frame");
        assert_eq!(t.header, q.header, "message {i}");
        let h = Header::decode(&t.header).unwrap();
        assert!(h.has(duct_proto::wire::flags::RELIABLE), "{h:?}");
        assert_eq!(h.seq, u32::from(i) + 1);
        assert_eq!(t.payload, q.payload);
        // Recorded as sent (kept until acknowledged), as the queued way records it.
        assert_eq!(a.outbox().unacked(), usize::from(i) + 1);
        assert_eq!(a.outbox().inflight(), b.outbox().inflight());
        assert_eq!(a.outbox().next_seq(), b.outbox().next_seq());
        assert!(a.outbox().is_empty() && a.poll_transmit().is_none());
    }
    // The channel's window is full: the next one waits in the queue, held until an ack.
    assert_eq!(
        offered(a.send_direct(3, p(2), None, None, now).unwrap()),
        Admission::Queued
    );
    assert!(a.poll_transmit().is_none());
    // Something queued: a message asking for reliability on another channel queues too.
    assert_eq!(
        offered(a.send_direct(0, p(3), None, Some(true), now).unwrap()),
        Admission::Queued
    );
}

#[test]
fn a_reliable_run_numbers_and_records_as_send_direct_does_until_a_window_is_full() {
    let now = Instant::now();
    let reliable = ChannelConfig {
        reliable: true,
        inflight_msgs: 3,
        ..ChannelConfig::default()
    };
    let small = |qos: QosConfig| Config {
        max_message_size: 100,
        ..with_qos(qos)
    };
    let qos = QosConfig {
        channels: [(3u16, reliable)].into_iter().collect(),
        ..QosConfig::default()
    };
    let (mut a, _) = established(small(qos.clone()), small(qos.clone()), now);
    let (mut b, _) = established(small(qos.clone()), small(qos), now);
    let p = |i: u8, len: usize| Bytes::from(vec![i; len]);
    let run = a.direct_run(3, None, None, now).expect("a reliable run");
    assert!(run.reliable());
    assert_eq!(a.direct_reliable(&run, 101), None, "over the message limit");
    for (i, len) in [(0u8, 10usize), (1, 0), (2, 100)] {
        let t = direct_frame(b.send_direct(3, p(i, len), None, None, now).unwrap());
        let (header, seq) = a.direct_reliable(&run, len).expect("room in the window");
        assert_eq!(header, t.header, "message {i}");
        let h = Header::decode(&header).unwrap();
        assert_eq!(h.seq, u32::from(i) + 1);
        // The first fills half the window of 3 and asks for an ack; no other asks until an
        // ack came.
        assert_eq!(h.has(flags::ACK_REQUEST), i == 0, "message {i}");
        a.record_direct(seq, 3, p(i, len), now);
        // Counted and recorded as sent, as send_direct records it.
        assert_eq!(a.outbox().unacked(), b.outbox().unacked());
        assert_eq!(a.outbox().inflight(), b.outbox().inflight());
        assert_eq!(a.outbox().next_seq(), b.outbox().next_seq());
        assert!(a.outbox().is_empty() && a.poll_transmit().is_none());
    }
    // The channel's window is full: nothing numbered; send_direct queues the message.
    assert_eq!(a.direct_reliable(&run, 10), None);
    assert_eq!(a.outbox().next_seq(), b.outbox().next_seq());
    assert_eq!(
        offered(a.send_direct(3, p(3, 10), None, None, now).unwrap()),
        Admission::Queued
    );
    // A plain run frames nothing reliable.
    let plain = a.direct_run(0, None, None, now);
    assert!(plain.is_none(), "a message is queued: no run at all");
    let (mut c, _) = established(Config::default(), Config::default(), now);
    let mut plain = c.direct_run(0, None, None, now).unwrap();
    assert_eq!(c.direct_reliable(&plain, 10), None);
    // (Nor does the per-run way, however often it is asked.)
    for _ in 0..3 {
        assert_eq!(c.number_next(&mut plain, 10), None);
    }
    // (Nor a `ReliableRun` made of it.)
    let mut rel = c.reliable_run(&mut plain, now);
    assert_eq!(rel.number(b"0123456789"), None);
    drop(rel);
    assert_eq!(c.outbox().next_seq(), 1);
    assert_eq!(c.outbox().inflight(), (0, 0));
}

#[test]
fn direct_sends_keep_the_limits_and_the_state_checks() {
    let now = Instant::now();
    let small = Config {
        max_message_size: 100,
        ..Config::default()
    };
    let (mut s, _) = established(small, Config::default(), now);
    let e = s
        .send_direct(1, Bytes::from(vec![0; 101]), None, None, now)
        .unwrap_err();
    assert!(
        matches!(
            e,
            duct_proto::Error::MessageTooLarge {
                size: 101,
                max: 100
            }
        ),
        "{e:?}"
    );
    // Before the handshake: not connected, as send_message says.
    let mut fresh = Session::new(Config::default(), duct_proto::Role::Dialer, now);
    assert!(fresh
        .send_direct(1, Bytes::from_static(b"x"), None, None, now)
        .is_err());
    // After a local close: closed.
    s.close(1000, "bye", now);
    assert!(s
        .send_direct(1, Bytes::from_static(b"x"), None, None, now)
        .is_err());
}

#[test]
fn only_plain_data_leaves_the_timers_alone() {
    let now = Instant::now();
    let small = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    let (mut d, mut l) = established(small.clone(), small, now);
    l.take_input_timers();
    // Plain data, by frames and by bytes: no deadline nearer.
    d.send(1, Bytes::from_static(b"pos"), now).unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(!l.take_input_timers());
    d.send(1, Bytes::from_static(b"pos"), now).unwrap();
    let mut buf = bytes::BytesMut::new();
    for (h, p) in frames(&mut d) {
        buf.extend_from_slice(&h.encode());
        buf.extend_from_slice(&p);
    }
    l.handle_input(&mut buf, now).unwrap();
    assert!(!l.take_input_timers());
    // A fragment starts a reassembly deadline.
    d.send(1, Bytes::from(vec![1; 3000]), now).unwrap();
    let mut f = frames(&mut d).into_iter();
    let (h, p) = f.next().unwrap();
    l.handle_frame(h, p, now).unwrap();
    assert!(l.take_input_timers(), "a fragment");
    for (h, p) in f {
        l.handle_frame(h, p, now).unwrap();
    }
    // A message with a TTL has an expiry.
    d.send_message(
        1,
        Bytes::from_static(b"t"),
        Some(Duration::from_millis(9)),
        None,
        now,
    )
    .unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(l.take_input_timers(), "a TTL");
    // Control frames (a PING) may too.
    d.ping(1).unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(l.take_input_timers(), "a PING");
    // Bad input does.
    let bad = Header::data(1, 5);
    assert!(l
        .handle_frame(bad, Bytes::from_static(b"abc"), now)
        .is_err());
    assert!(l.take_input_timers(), "an error");
}

#[test]
fn a_direct_run_frames_what_send_direct_frames_and_only_when_it_would() {
    let now = Instant::now();
    let small = Config {
        max_message_size: 100,
        ..Config::default()
    };
    let (mut a, _) = established(small.clone(), Config::default(), now);
    let (mut b, _) = established(small, Config::default(), now);
    let run = a.direct_run(7, None, None, now).expect("plain channel");
    assert_eq!(run.channel(), 7);
    for len in [0usize, 1, 64, 100] {
        let t = direct_frame(
            b.send_direct(7, Bytes::from(vec![1; len]), None, None, now)
                .unwrap(),
        );
        assert_eq!(run.header(len), Some(t.header), "{len} bytes");
    }
    assert_eq!(
        run.header(101),
        None,
        "over the message limit: send_direct says"
    );

    // Wherever send_direct takes the queued way (or must carry an ack), no run.
    let reliable = ChannelConfig {
        reliable: true,
        ..ChannelConfig::default()
    };
    let with_ttl = ChannelConfig {
        ttl: Some(Duration::from_millis(50)),
        ..ChannelConfig::default()
    };
    let qos = QosConfig {
        channels: [(2u16, reliable), (3, with_ttl)].into_iter().collect(),
        ..QosConfig::default()
    };
    let (mut d, mut l) = established(with_qos(qos.clone()), with_qos(qos), now);
    // A reliable channel (or message) runs, but its messages are numbered one by one
    // (`direct_reliable`), never framed from the template alone.
    let run = l.direct_run(2, None, None, now).expect("reliable channel");
    assert!(run.reliable() && run.header(5).is_none());
    assert!(l.direct_run(1, None, Some(true), now).unwrap().reliable());
    assert!(!l.direct_run(1, None, None, now).unwrap().reliable());
    assert!(l.direct_run(3, None, None, now).is_none(), "channel TTL");
    assert!(l
        .direct_run(1, Some(Duration::from_millis(5)), None, now)
        .is_none());
    assert!(l
        .direct_run(2, Some(Duration::from_millis(5)), None, now)
        .is_none());
    d.send_message(2, Bytes::from_static(b"trade"), None, None, now)
        .unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(l.direct_run(1, None, None, now).is_none(), "an ack is owed");
    let t = direct_frame(
        l.send_direct(1, Bytes::from_static(b"pos"), None, None, now)
            .unwrap(),
    );
    assert!(Header::decode(&t.header)
        .unwrap()
        .has(duct_proto::wire::flags::ACK_PRESENT));
    assert!(
        l.direct_run(1, None, None, now).is_some(),
        "the ack went out"
    );
    l.send_message(3, Bytes::from_static(b"x"), None, None, now)
        .unwrap();
    assert!(
        l.direct_run(1, None, None, now).is_none(),
        "a message queued"
    );
    frames(&mut l);
    l.ping(1).unwrap();
    assert!(
        l.direct_run(1, None, None, now).is_none(),
        "a control frame"
    );
    frames(&mut l);
    assert!(l.direct_run(1, None, None, now).is_some());
    l.close(1000, "bye", now);
    assert!(l.direct_run(1, None, None, now).is_none(), "closed");
}

/// A realtime message longer than a frame, whose first fragments a driver writes itself from
/// a `DirectRun` (`write_part_header`) and whose rest it hands to `send_started`: the
/// frames are byte for byte those the outbox makes of the same message sent the queued way,
/// and the peer gets it whole; a message queued on its channel meanwhile comes after it.
/// On a new connection the rest starts again from the first byte, as any message under way.
#[test]
fn a_message_fragmented_by_the_driver_and_finished_by_the_session_is_the_queued_ways() {
    let now = Instant::now();
    let (mut a, mut peer) = established(Config::default(), Config::default(), now);
    let (mut b, _) = established(Config::default(), Config::default(), now);
    let payload = Bytes::from(
        (0..300_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let total = payload.len();
    let run = a.direct_run(4, None, None, now).expect("a direct run");
    assert!(run.fragments(total) && !run.fits(total));
    assert!(
        !run.fragments(run.frame_max()),
        "one frame is not fragments"
    );
    // A message that fits: its one frame's header.
    let mut whole = [0; duct_proto::wire::HEADER_LEN];
    let mut part = [1; duct_proto::wire::HEADER_LEN];
    run.write_header(1000, 0, &mut whole);
    run.write_part_header(1000, 0, 1000, &mut part);
    assert_eq!(whole, part);
    let step = run.frame_max();
    // The queued way's frames of the same message.
    b.send_message(4, payload.clone(), None, None, now).unwrap();
    let queued = frames(&mut b);
    assert_eq!(queued.len(), total.div_ceil(step));
    // The first two fragments from the run; the rest from the session.
    for (k, (qh, qp)) in queued.iter().take(2).enumerate() {
        let mut h = [0; duct_proto::wire::HEADER_LEN];
        run.write_part_header(total, k * step, step, &mut h);
        assert_eq!(h, qh.encode(), "fragment {k}");
        assert_eq!(&payload[k * step..(k + 1) * step], &qp[..]);
        peer.handle_raw_frame(&h, payload.slice(k * step..(k + 1) * step), now)
            .unwrap();
    }
    assert!(peer.poll_message().is_none(), "not whole yet");
    // Queued on the channel after the message began: it goes after it.
    a.send_message(4, Bytes::from_static(b"next"), None, None, now)
        .unwrap();
    a.send_started(4, payload.clone(), 2 * step, now);
    let rest = frames(&mut a);
    assert_eq!(rest.len(), queued.len() - 2 + 1);
    for (k, ((h, p), (qh, qp))) in rest.iter().zip(&queued[2..]).enumerate() {
        assert_eq!((h, p), (qh, qp), "fragment {}", k + 2);
    }
    assert_eq!(rest.last().unwrap().1, &b"next"[..]);
    for (h, p) in rest {
        peer.handle_frame(h, p, now).unwrap();
    }
    let m = peer.poll_message().expect("the large message");
    assert_eq!((m.channel, &m.payload), (4, &payload));
    assert_eq!(peer.poll_message().unwrap().payload, &b"next"[..]);
    // Begun again on a new connection: the outbox rewinds it to its first byte.
    a.send_started(4, payload.clone(), step, now);
    let rewound = a.outbox_mut().rewind();
    assert_eq!(rewound, vec![4]);
    let again = frames(&mut a);
    assert_eq!(again.len(), queued.len());
    for ((h, p), (qh, qp)) in again.iter().zip(&queued) {
        assert_eq!((h, p), (qh, qp));
    }
}

/// A reliable run frames nothing itself in fragments: a long reliable message is numbered
/// and kept whole by the session.
#[test]
fn a_reliable_run_leaves_fragments_to_the_session() {
    let now = Instant::now();
    let qos = reliable_on(2);
    let (mut a, _) = established(with_qos(qos.clone()), with_qos(qos), now);
    let run = a.direct_run(2, None, None, now).expect("a direct run");
    assert!(run.reliable() && !run.fragments(200_000));
}

/// A message under way from a `DirectRun` (`send_started`) is never dropped by its channel's
/// policy or high-water mark: on a `DropOld` channel of one message, newer messages drop
/// each other, and the started one goes out whole, first.
#[test]
fn a_started_message_outlives_drop_old() {
    let now = Instant::now();
    let drop_old = ChannelConfig {
        snd_hwm_msgs: 1,
        backpressure: Backpressure::DropOld,
        ..ChannelConfig::default()
    };
    let qos = QosConfig {
        channels: [(6u16, drop_old)].into_iter().collect(),
        ..QosConfig::default()
    };
    let (mut a, mut peer) = established(with_qos(qos.clone()), with_qos(qos), now);
    let payload = Bytes::from(vec![9u8; 150_000]);
    let run = a.direct_run(6, None, None, now).expect("a direct run");
    let step = run.frame_max();
    let mut h = [0; duct_proto::wire::HEADER_LEN];
    run.write_part_header(payload.len(), 0, step, &mut h);
    peer.handle_raw_frame(&h, payload.slice(..step), now)
        .unwrap();
    a.send_started(6, payload.clone(), step, now);
    for k in 0..3u8 {
        let admitted = a
            .send_message(6, Bytes::from(vec![k; 10]), None, None, now)
            .unwrap();
        assert!(
            matches!(admitted, Admission::Queued),
            "newest wins: {admitted:?}"
        );
    }
    pump_frames(&mut a, &mut peer, now).unwrap();
    let m = peer.poll_message().expect("the started message");
    assert_eq!(m.payload, payload);
    let newest = peer.poll_message().expect("the newest");
    assert_eq!(newest.payload, &[2u8; 10][..]);
    assert!(peer.poll_message().is_none(), "the older ones were dropped");
}

/// `Session::poll_plain_run` (the driver's way to drain a backlog of plain messages) takes
/// the frames `poll_transmit` would give, and none while something else must go first: an
/// owed ack (which rides on the next data frame) or a control frame. A closing session's
/// backlog still drains by runs; its CLOSE comes after, from `poll_transmit`.
#[test]
fn a_plain_run_takes_what_poll_transmit_would() {
    let now = Instant::now();
    let qos = reliable_on(2);
    let (mut d, mut l) = established(with_qos(qos.clone()), with_qos(qos), now);
    let take_all = |s: &mut Session| {
        let mut got = Vec::new();
        let n = s.poll_plain_run(now, |h, p| {
            got.push((Header::decode(h).unwrap(), p.to_vec()));
            true
        });
        assert_eq!(n, got.len());
        got
    };
    for i in 0..5u8 {
        l.send_message(
            1,
            Bytes::from(vec![i; 10 + usize::from(i)]),
            None,
            None,
            now,
        )
        .unwrap();
    }
    // A reliable message from the dialer: the listener owes an ack.
    d.send_message(2, Bytes::from_static(b"trade"), None, None, now)
        .unwrap();
    pump_frames(&mut d, &mut l, now).unwrap();
    assert!(take_all(&mut l).is_empty(), "an ack is owed");
    let t = l.poll_transmit_at(now).expect("the first message");
    let h = Header::decode(&t.header).unwrap();
    assert!(h.has(flags::ACK_PRESENT) && h.ack == 1, "{h:?}");
    assert_eq!(&t.payload[..], &[0; 10]);
    let got = take_all(&mut l);
    assert_eq!(got.len(), 4);
    for (i, (h, p)) in got.into_iter().enumerate() {
        let i = i as u8 + 1;
        assert_eq!(h, Header::data(1, 10 + u32::from(i)), "message {i}");
        assert_eq!(p, vec![i; 10 + usize::from(i)]);
    }
    assert!(l.poll_transmit_at(now).is_none() && take_all(&mut l).is_empty());

    // A control frame first (a ping), then the backlog; closing, the backlog, then CLOSE.
    l.send_message(1, Bytes::from_static(b"a"), None, None, now)
        .unwrap();
    l.ping(7).unwrap();
    assert!(take_all(&mut l).is_empty(), "a control frame waits");
    let ping = l.poll_transmit_at(now).unwrap();
    assert_eq!(Header::decode(&ping.header).unwrap().kind, FrameKind::Ping);
    l.send_message(1, Bytes::from_static(b"b"), None, None, now)
        .unwrap();
    l.close(0, "done", now);
    let got = take_all(&mut l);
    assert_eq!(
        got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        [b"a".to_vec(), b"b".to_vec()]
    );
    let close = l.poll_transmit_at(now).expect("the CLOSE");
    assert_eq!(
        Header::decode(&close.header).unwrap().kind,
        FrameKind::Close
    );
}
