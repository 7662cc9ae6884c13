//! Quality of service, in virtual time (every `Instant` is `t0` plus an offset the test picks;
//! nothing sleeps): backpressure policies at the send high-water marks, time to live at the
//! sender and the receiver, strict priority, deficit round robin by weight, rate limits, the
//! receive high-water marks, and moving an outbox to a new connection.
//!
//! Most tests drive [`Outbox`] directly; those about what travels on the wire drive two
//! [`Session`]s.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::qos::{
    Admission, Backpressure, ChannelConfig, Counts, DropReason, Outbox, QosConfig, Rate, QUANTUM,
};
use duct_proto::wire::control::{self, caps};
use duct_proto::wire::{flags, FrameKind, Header, HEADER_LEN};
use duct_proto::{Config, Session, Transmit};

use common::{established, feed, pattern, pump_frames, wire};

/// A frame limit no test message reaches (no fragmentation).
const BIG_FRAME: usize = 64 * 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A QoS configuration with `channels` set and every other channel at the defaults.
fn qos(channels: impl IntoIterator<Item = (u16, ChannelConfig)>) -> Arc<QosConfig> {
    Arc::new(QosConfig {
        channels: channels.into_iter().collect(),
        ..QosConfig::default()
    })
}

/// A channel under `policy` whose send queue holds `hwm` messages.
fn bounded(policy: Backpressure, hwm: usize) -> ChannelConfig {
    ChannelConfig {
        snd_hwm_msgs: hwm,
        backpressure: policy,
        ..ChannelConfig::default()
    }
}

/// A message that says which one it is: `i` in its first 4 bytes, then filler up to `len`.
fn numbered(i: u32, len: usize) -> Bytes {
    let mut v = vec![0xA5; len.max(4)];
    v[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

/// The number [`numbered`] put in `payload`.
fn number(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"))
}

fn header(t: &Transmit) -> Header {
    let h = Header::decode(&t.header).expect("the outbox writes valid headers");
    assert_eq!(h.kind, FrameKind::Data);
    assert_eq!(h.payload_len as usize, t.payload.len(), "{h:?}");
    h
}

/// Every frame `o` gives at `now`.
fn drain(o: &mut Outbox, now: Instant, frame_max: usize) -> Vec<(Header, Bytes)> {
    std::iter::from_fn(|| o.poll(now, frame_max))
        .map(|t| (header(&t), t.payload))
        .collect()
}

/// The whole messages in `frames`, per channel, checking the fragmentation flags (a first
/// fragment announces the total length in `aux`; continuations follow on their channel).
fn reassemble(frames: &[(Header, Bytes)]) -> BTreeMap<u16, Vec<Bytes>> {
    let mut done: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
    let mut open: BTreeMap<u16, (usize, BytesMut)> = BTreeMap::new();
    for (h, p) in frames {
        let more = h.has(flags::MORE_FRAGMENTS);
        if h.has(flags::CONTINUATION) {
            assert!(!h.has(flags::TTL_PRESENT), "TTL only on the first frame");
            let (total, buf) = open
                .get_mut(&h.channel)
                .unwrap_or_else(|| panic!("a continuation without a start: {h:?}"));
            buf.extend_from_slice(p);
            if !more {
                let (total, buf) = (*total, open.remove(&h.channel).unwrap().1);
                assert_eq!(buf.len(), total, "channel {}", h.channel);
                done.entry(h.channel).or_default().push(buf.freeze());
            }
        } else {
            assert!(
                !open.contains_key(&h.channel),
                "a new message before the last finished: {h:?}"
            );
            if more {
                assert!(h.aux as usize > p.len(), "{h:?}");
                open.insert(h.channel, (h.aux as usize, BytesMut::from(&p[..])));
            } else {
                assert_eq!(h.aux, 0, "{h:?}");
                done.entry(h.channel).or_default().push(p.clone());
            }
        }
    }
    assert!(open.is_empty(), "unfinished messages on {:?}", open.keys());
    done
}

/// The numbers of the messages in `frames` (single frames only).
fn numbers(frames: &[(Header, Bytes)]) -> Vec<u32> {
    frames.iter().map(|(_, p)| number(p)).collect()
}

fn outbox_counts(o: &mut Outbox) -> BTreeMap<u16, Counts> {
    let mut m: BTreeMap<u16, Counts> = BTreeMap::new();
    o.take_counts(&mut |c, n| m.entry(c).or_default().add(&n));
    m
}

fn session_counts(s: &mut Session) -> BTreeMap<u16, Counts> {
    let mut m: BTreeMap<u16, Counts> = BTreeMap::new();
    s.take_counts(&mut |c, n| m.entry(c).or_default().add(&n));
    m
}

/// Checks that frames sent at `times` (in order, from `t0`) stay inside a token bucket's
/// envelope: at most `burst + rate * elapsed` by any instant.
fn assert_within_envelope(times: &[Instant], t0: Instant, rate: f64, burst: usize) {
    for (i, t) in times.iter().enumerate() {
        let allowed = burst as f64 + rate * (*t - t0).as_secs_f64() + 1e-6;
        assert!(
            (i + 1) as f64 <= allowed,
            "frame {i} at {:?}: only {allowed} allowed by then",
            *t - t0
        );
    }
}

// 1. Backpressure policies at the high-water mark.

#[test]
fn drop_old_keeps_the_newest_in_order_and_counts_the_rest() {
    let t0 = Instant::now();
    let by_bytes = ChannelConfig {
        snd_hwm_bytes: 250,
        backpressure: Backpressure::DropOld,
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(
        qos([(1, bounded(Backpressure::DropOld, 4)), (2, by_bytes)]),
        t0,
    );
    for i in 0..10 {
        assert_eq!(o.offer(1, numbered(i, 100), None, t0), Admission::Queued);
        assert!(o.queued(1).0 <= 4);
        assert_eq!(o.offer(2, numbered(i, 100), None, t0), Admission::Queued);
        assert!(o.queued(2).1 <= 250);
    }
    assert_eq!(o.queued(1), (4, 400));
    assert_eq!(o.queued(2), (2, 200));
    assert_eq!((o.len(), o.bytes()), (6, 600));
    let frames = drain(&mut o, t0, BIG_FRAME);
    let on = |c: u16| -> Vec<(Header, Bytes)> {
        frames
            .iter()
            .filter(|(h, _)| h.channel == c)
            .cloned()
            .collect()
    };
    assert_eq!(numbers(&on(1)), [6, 7, 8, 9], "the newest, in order");
    assert_eq!(numbers(&on(2)), [8, 9]);
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].dropped, 6);
    assert_eq!(counts[&2].dropped, 8);
    assert_eq!(on(1).len() as u64 + counts[&1].dropped, 10);
    assert_eq!(on(2).len() as u64 + counts[&2].dropped, 10);
    assert_eq!(
        counts[&1].expired + counts[&1].rate_limited + counts[&1].lost,
        0
    );
    assert!(o.is_empty() && o.bytes() == 0);
}

#[test]
fn drop_old_never_drops_a_message_under_way() {
    let t0 = Instant::now();
    let mut o = Outbox::new(qos([(1, bounded(Backpressure::DropOld, 2))]), t0);
    let big = pattern(3000, 1);
    assert_eq!(o.offer(1, big.clone(), None, t0), Admission::Queued);
    let first = o.poll(t0, 1024).expect("first fragment");
    assert!(header(&first).has(flags::MORE_FRAGMENTS));
    for i in 0..5 {
        assert_eq!(o.offer(1, numbered(i, 10), None, t0), Admission::Queued);
        assert_eq!(o.queued(1).0, 2, "the message under way and the newest");
    }
    let mut frames = vec![(header(&first), first.payload)];
    frames.extend(drain(&mut o, t0, 1024));
    let msgs = reassemble(&frames);
    assert_eq!(msgs[&1].len(), 2);
    assert_eq!(msgs[&1][0], big, "the message under way completed");
    assert_eq!(number(&msgs[&1][1]), 4, "the newest");
    assert_eq!(outbox_counts(&mut o)[&1].dropped, 4);
}

#[test]
fn drop_new_keeps_a_contiguous_prefix_and_counts_the_rest() {
    let t0 = Instant::now();
    let mut o = Outbox::new(qos([(1, bounded(Backpressure::DropNew, 4))]), t0);
    for i in 0..10 {
        let want = if i < 4 {
            Admission::Queued
        } else {
            Admission::Dropped(DropReason::QueueFull)
        };
        assert_eq!(o.offer(1, numbered(i, 100), None, t0), want, "message {i}");
    }
    let frames = drain(&mut o, t0, BIG_FRAME);
    assert_eq!(numbers(&frames), [0, 1, 2, 3]);
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].dropped, 6);
    assert_eq!(frames.len() as u64 + counts[&1].dropped, 10);
    // Room again once the queue drained.
    assert!(o.has_room(1, 100));
    assert_eq!(o.offer(1, numbered(10, 100), None, t0), Admission::Queued);
}

#[test]
fn fail_fast_refuses_and_gives_the_payload_back() {
    let t0 = Instant::now();
    let mut o = Outbox::new(qos([(1, bounded(Backpressure::FailFast, 4))]), t0);
    let mut refused = 0u64;
    for i in 0..10 {
        let payload = numbered(i, 100);
        match o.offer(1, payload.clone(), None, t0) {
            Admission::Queued => assert!(i < 4, "message {i} queued over the mark"),
            Admission::Refused(back, DropReason::QueueFull) => {
                assert!(i >= 4, "message {i} refused below the mark");
                assert_eq!(back, payload);
                assert_eq!(
                    back.as_ptr(),
                    payload.as_ptr(),
                    "the same buffer, not a copy"
                );
                refused += 1;
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    let frames = drain(&mut o, t0, BIG_FRAME);
    assert_eq!(numbers(&frames), [0, 1, 2, 3]);
    assert_eq!(frames.len() as u64 + refused, 10);
    assert!(
        outbox_counts(&mut o).is_empty(),
        "refusals are the sender's to count"
    );
}

#[test]
fn block_says_wait_until_there_is_room() {
    let t0 = Instant::now();
    let mut o = Outbox::new(qos([(1, bounded(Backpressure::Block, 4))]), t0);
    let mut waited = 0u64;
    for i in 0..10 {
        let payload = numbered(i, 100);
        match o.offer(1, payload.clone(), None, t0) {
            Admission::Queued => assert!(i < 4),
            Admission::Wait(back) => {
                assert!(i >= 4);
                assert_eq!(back.as_ptr(), payload.as_ptr());
                assert_eq!(back, payload);
                waited += 1;
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(!o.has_room(1, 1));
    // One frame out: room for exactly one.
    let t = o.poll(t0, BIG_FRAME).unwrap();
    assert_eq!(number(&t.payload), 0);
    assert!(o.has_room(1, 100));
    assert_eq!(o.offer(1, numbered(4, 100), None, t0), Admission::Queued);
    assert!(matches!(
        o.offer(1, numbered(5, 100), None, t0),
        Admission::Wait(_)
    ));
    let frames = drain(&mut o, t0, BIG_FRAME);
    assert_eq!(numbers(&frames), [1, 2, 3, 4]);
    assert_eq!(1 + frames.len() as u64 + waited, 11);
    assert!(outbox_counts(&mut o).is_empty());
}

/// The policies through two sessions: what the receiver gets plus what the sender counts is
/// what was offered.
#[test]
fn session_policies_account_for_every_message() {
    let t0 = Instant::now();
    let dialer = Config {
        qos: qos([
            (1, bounded(Backpressure::DropOld, 3)),
            (2, bounded(Backpressure::DropNew, 3)),
            (3, bounded(Backpressure::FailFast, 3)),
            (4, bounded(Backpressure::Block, 3)),
        ]),
        ..Config::default()
    };
    let (mut d, mut l) = established(dialer, Config::default(), t0);
    let mut given_back: BTreeMap<u16, u64> = BTreeMap::new();
    for c in 1..=4u16 {
        for i in 0..8 {
            match d.send(c, numbered(i, 50), t0).unwrap() {
                Admission::Queued | Admission::Dropped(_) => {}
                Admission::Refused(_, _) | Admission::Wait(_) => {
                    *given_back.entry(c).or_default() += 1
                }
            }
        }
    }
    pump_frames(&mut d, &mut l, t0).unwrap();
    let mut got: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    while let Some(m) = l.poll_message() {
        got.entry(m.channel).or_default().push(number(&m.payload));
    }
    assert_eq!(got[&1], [5, 6, 7]);
    assert_eq!(got[&2], [0, 1, 2]);
    assert_eq!(got[&3], [0, 1, 2]);
    assert_eq!(got[&4], [0, 1, 2]);
    let counts = session_counts(&mut d);
    for c in 1..=4u16 {
        let dropped = counts.get(&c).map_or(0, |n| n.dropped);
        let back = given_back.get(&c).copied().unwrap_or(0);
        assert_eq!(got[&c].len() as u64 + dropped + back, 8, "channel {c}");
    }
    assert_eq!(counts[&1].dropped, 5);
    assert_eq!(counts[&2].dropped, 5);
    assert!(!counts.contains_key(&3) && !counts.contains_key(&4));
    assert!(session_counts(&mut l).is_empty());
}

// 2. An empty queue takes one message above the byte mark.

#[test]
fn an_empty_queue_takes_one_message_above_the_byte_mark() {
    let t0 = Instant::now();
    let policies = [
        Backpressure::Block,
        Backpressure::DropNew,
        Backpressure::DropOld,
        Backpressure::FailFast,
    ];
    for (c, policy) in (1u16..).zip(policies) {
        let cfg = ChannelConfig {
            snd_hwm_bytes: 100,
            backpressure: policy,
            ..ChannelConfig::default()
        };
        let mut o = Outbox::new(qos([(c, cfg)]), t0);
        assert!(o.has_room(c, 1000));
        assert_eq!(
            o.offer(c, numbered(0, 1000), None, t0),
            Admission::Queued,
            "{policy:?}"
        );
        assert_eq!(o.queued(c), (1, 1000));
        assert!(!o.has_room(c, 1), "{policy:?}: over the mark now");
        let next = o.offer(c, numbered(1, 10), None, t0);
        let expected_first = match policy {
            Backpressure::Block => {
                assert!(matches!(next, Admission::Wait(_)), "{next:?}");
                0
            }
            Backpressure::DropNew => {
                assert_eq!(next, Admission::Dropped(DropReason::QueueFull));
                0
            }
            Backpressure::FailFast => {
                assert!(
                    matches!(next, Admission::Refused(_, DropReason::QueueFull)),
                    "{next:?}"
                );
                0
            }
            Backpressure::DropOld => {
                // The big one goes to make room for the newest.
                assert_eq!(next, Admission::Queued);
                1
            }
        };
        let frames = drain(&mut o, t0, BIG_FRAME);
        assert_eq!(numbers(&frames), [expected_first], "{policy:?}");
        // Empty again: another oversized message is taken.
        assert_eq!(
            o.offer(c, numbered(2, 5000), None, t0),
            Admission::Queued,
            "{policy:?}"
        );
    }
}

// 3. Time to live at the sender.

#[test]
fn messages_past_their_deadline_at_the_head_are_never_framed() {
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        ttl: Some(ms(10)),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, cfg)]), t0);
    for i in 0..3 {
        o.offer(1, numbered(i, 10), None, t0);
    }
    o.offer(1, numbered(3, 10), None, t0 + ms(5));
    // Just before the deadline: still sent, with the time left (rounded up) in the header.
    let t = o.poll(t0 + ms(10) - us(1), BIG_FRAME).unwrap();
    assert_eq!(number(&t.payload), 0);
    let h = header(&t);
    assert!(h.has(flags::TTL_PRESENT));
    assert_eq!(h.ttl_ms, 1);
    // At the deadline: 1 and 2 go without a frame; 3 (sent 5 ms later) still has 5 ms.
    let frames = drain(&mut o, t0 + ms(10), BIG_FRAME);
    assert_eq!(numbers(&frames), [3]);
    assert_eq!(frames[0].0.ttl_ms, 5);
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].expired, 2);
    assert_eq!(1 + frames.len() as u64 + counts[&1].expired, 4);
    assert!(o.is_empty() && o.bytes() == 0);
}

#[test]
fn expire_drops_anywhere_and_next_wake_follows_the_earliest_deadline() {
    let t0 = Instant::now();
    let ttl = |d| ChannelConfig {
        ttl: Some(d),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, ttl(ms(10))), (2, ttl(ms(20)))]), t0);
    assert_eq!(o.next_wake(), None);
    for i in 0..2 {
        for c in 1..=3 {
            o.offer(c, numbered(i, 10), None, t0);
        }
    }
    assert_eq!(o.next_wake(), Some(t0 + ms(10)));
    o.expire(t0 + ms(10) - us(1));
    assert_eq!(o.len(), 6, "nothing is due yet");
    o.expire(t0 + ms(10));
    assert_eq!((o.len(), o.bytes()), (4, 40));
    assert_eq!(o.queued(1), (0, 0));
    assert_eq!(o.next_wake(), Some(t0 + ms(20)));
    o.expire(t0 + ms(20));
    assert_eq!((o.len(), o.bytes()), (2, 20));
    assert_eq!(o.next_wake(), None, "only messages without TTL are left");
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].expired, 2);
    assert_eq!(counts[&2].expired, 2);
    assert!(!counts.contains_key(&3));
    let frames = drain(&mut o, t0 + ms(20), BIG_FRAME);
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|(h, _)| h.channel == 3));
    // Channels emptied by `expire` are served again.
    o.offer(1, numbered(7, 10), None, t0 + ms(30));
    o.offer(2, numbered(8, 10), None, t0 + ms(30));
    let frames = drain(&mut o, t0 + ms(30), BIG_FRAME);
    let mut got = numbers(&frames);
    got.sort_unstable();
    assert_eq!(got, [7, 8]);
    assert!(o.is_empty());
}

#[test]
fn a_per_message_ttl_overrides_the_channels() {
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        ttl: Some(ms(100)),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, cfg)]), t0);
    o.offer(1, numbered(0, 10), None, t0); // the channel's: 100 ms
    o.offer(1, numbered(1, 10), Some(ms(5)), t0); // shorter
    o.offer(1, numbered(2, 10), Some(ms(500)), t0); // longer
    o.offer(2, numbered(3, 10), Some(ms(5)), t0); // on a channel without TTL
    o.offer(2, numbered(4, 10), None, t0); // no TTL at all
    assert_eq!(o.next_wake(), Some(t0 + ms(5)));
    o.expire(t0 + ms(5));
    assert_eq!(o.len(), 3);
    assert_eq!(o.next_wake(), Some(t0 + ms(100)));
    let frames = drain(&mut o, t0 + ms(200), BIG_FRAME);
    let mut got: Vec<(u16, u32, Option<u32>)> = frames
        .iter()
        .map(|(h, p)| {
            let ttl = h.has(flags::TTL_PRESENT).then_some(h.ttl_ms);
            (h.channel, number(p), ttl)
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(1, 2, Some(300)), (2, 4, None)]);
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].expired, 2);
    assert_eq!(counts[&2].expired, 1);
}

#[test]
fn a_message_under_way_is_not_dropped_by_ttl() {
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        ttl: Some(ms(10)),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, cfg)]), t0);
    let big = pattern(3000, 3);
    o.offer(1, big.clone(), None, t0);
    o.offer(1, numbered(1, 10), None, t0);
    let first = o.poll(t0, 1024).unwrap();
    let h = header(&first);
    assert!(h.has(flags::TTL_PRESENT) && h.has(flags::MORE_FRAGMENTS));
    assert_eq!((h.ttl_ms, h.aux), (10, 3000));
    // Long past the deadline: the rest of the big message still goes; the one behind it
    // (not begun) does not.
    let late = t0 + ms(50);
    o.expire(late);
    assert_eq!(o.len(), 1);
    let mut frames = vec![(h, first.payload)];
    frames.extend(drain(&mut o, late, 1024));
    assert_eq!(frames.len(), 3);
    assert_eq!(reassemble(&frames)[&1], [big]);
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].expired, 1);
    assert!(o.is_empty());
}

/// A message under way past its deadline is no work for `expire`, yet `next_wake` keeps
/// returning that deadline (in the past): a driver that reschedules its timer on
/// `poll_timeout` wakes again at once, forever, until the message is out. That happens when
/// its transport cannot take more just now, or (no transport involved) when the rest of the
/// message waits for a rate limit: then the past TTL deadline hides the rate wake-up.
#[test]
fn a_message_under_way_past_its_deadline_asks_for_no_wake_in_the_past() {
    let t0 = Instant::now();
    let late = t0 + ms(50);
    let cfg = ChannelConfig {
        ttl: Some(ms(10)),
        ..ChannelConfig::default()
    };
    let mut failures = Vec::new();

    // The outbox alone: the driver cannot write, so it does not poll.
    let mut o = Outbox::new(qos([(1, cfg.clone())]), t0);
    o.offer(1, pattern(3000, 4), None, t0);
    assert!(o.poll(t0, 1024).is_some());
    o.expire(late);
    if o.next_wake().is_some_and(|w| w <= late) {
        failures.push(format!(
            "outbox, transport full: next_wake {:?} (now 50ms)",
            o.next_wake().map(|w| w - t0)
        ));
    }

    // The rest of the message waits for a byte rate (1 KiB/s): the wake-up is due in about
    // a second, not in the past.
    let paced = ChannelConfig {
        bytes_rate: Rate::new(1024.0, 1024),
        ..cfg.clone()
    };
    let mut o = Outbox::new(qos([(1, paced)]), t0);
    o.offer(1, pattern(3000, 4), None, t0);
    assert!(o.poll(t0, 1024).is_some());
    assert!(o.poll(late, 1024).is_none(), "waits for tokens");
    o.expire(late);
    if o.next_wake().is_some_and(|w| w <= late) {
        failures.push(format!(
            "outbox, rate-limited: next_wake {:?} (now 50ms, tokens due near 1s)",
            o.next_wake().map(|w| w - t0)
        ));
    }

    // Through a session: the driver's timer loop.
    let dialer = Config {
        qos: qos([(1, cfg)]),
        ..Config::default()
    };
    let listener = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    let (mut d, _l) = established(dialer, listener, t0);
    d.send(1, pattern(3000, 5), t0).unwrap();
    assert!(d.poll_transmit_at(t0).is_some());
    d.handle_timeout(late).unwrap();
    if d.poll_timeout().is_some_and(|w| w <= late) {
        failures.push(format!(
            "session: poll_timeout {:?} right after handle_timeout(50ms)",
            d.poll_timeout().map(|w| w - t0)
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// 4. Time to live on the wire and at the receiver.

#[test]
fn ttl_travels_in_the_first_frame_and_expires_at_the_receiver() {
    let t0 = Instant::now();
    let dialer = Config {
        qos: qos([(
            1,
            ChannelConfig {
                ttl: Some(ms(500)),
                ..ChannelConfig::default()
            },
        )]),
        ..Config::default()
    };
    let listener = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    let (mut d, mut l) = established(dialer, listener, t0);
    let big = pattern(3000, 6);
    d.send(1, Bytes::from_static(b"channel ttl"), t0).unwrap();
    d.send_with(1, big.clone(), Some(ms(200)), t0).unwrap();
    d.send(2, Bytes::from_static(b"no ttl"), t0).unwrap();

    // Framed 99.5 ms later: 400.5 and 100.5 ms left, rounded up.
    let t1 = t0 + us(99_500);
    let frames: Vec<(Header, Bytes)> = std::iter::from_fn(|| d.poll_transmit_at(t1))
        .map(|t| (header(&t), t.payload))
        .collect();
    assert_eq!(frames.len(), 5);
    let on = |c: u16| -> Vec<&Header> {
        frames
            .iter()
            .filter(|(h, _)| h.channel == c)
            .map(|(h, _)| h)
            .collect()
    };
    let ch1 = on(1);
    assert_eq!(ch1.len(), 4);
    assert!(ch1[0].has(flags::TTL_PRESENT));
    assert_eq!(ch1[0].ttl_ms, 401);
    assert!(ch1[1].has(flags::TTL_PRESENT) && ch1[1].has(flags::MORE_FRAGMENTS));
    assert_eq!((ch1[1].ttl_ms, ch1[1].aux), (101, 3000));
    for h in &ch1[2..] {
        assert!(
            h.has(flags::CONTINUATION) && !h.has(flags::TTL_PRESENT),
            "{h:?}"
        );
        assert_eq!(h.ttl_ms, 0);
    }
    let ch2 = on(2);
    assert!(!ch2[0].has(flags::TTL_PRESENT));
    assert_eq!(ch2[0].ttl_ms, 0);
    assert_eq!(reassemble(&frames)[&1][1], big);

    // The receiver counts the time left from the frame's arrival.
    let t2 = t0 + ms(100);
    for (h, p) in frames {
        l.handle_frame(h, p, t2).unwrap();
    }
    assert_eq!(l.message_len(), 3);
    assert_eq!(l.poll_timeout(), Some(t2 + ms(101)));
    // Nobody polls: the big one runs out and is purged by the timer.
    l.handle_timeout(t2 + ms(101) - us(1)).unwrap();
    assert_eq!(l.message_len(), 3);
    l.handle_timeout(t2 + ms(101)).unwrap();
    assert_eq!(l.message_len(), 2);
    assert_eq!(session_counts(&mut l)[&1].expired, 1);
    assert_eq!(l.poll_timeout(), Some(t2 + ms(401)));
    // The application comes late: the small one is gone too, the one without TTL is not.
    let m = l.poll_message_at(t2 + ms(401)).unwrap();
    assert_eq!((m.channel, &m.payload[..]), (2, &b"no ttl"[..]));
    assert!(l.poll_message_at(t2 + ms(401)).is_none());
    assert_eq!(session_counts(&mut l)[&1].expired, 1);
    assert_eq!(l.message_bytes(), 0);
    assert!(session_counts(&mut d).is_empty(), "the sender lost nothing");

    // Through the stream path, taken in time: delivered.
    let t3 = t0 + ms(1000);
    d.send(1, Bytes::from_static(b"in time"), t3).unwrap();
    d.advance(t3);
    let bytes = wire(&mut d);
    let (r, rest) = feed(&mut l, &bytes, t3);
    r.unwrap();
    assert!(rest.is_empty());
    let m = l.poll_message_at(t3 + ms(500) - us(1)).unwrap();
    assert_eq!(&m.payload[..], b"in time");
    assert!(session_counts(&mut l).is_empty());
}

/// A first frame that waits for the transport is restamped as it goes out: the time left
/// shrinks, down to 0 (the receiver then drops the message on arrival, counted).
#[test]
fn a_restamped_frame_carries_the_time_left_and_zero_once_expired() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), t0);
    d.send_with(1, Bytes::from_static(b"late"), Some(ms(100)), t0)
        .unwrap();
    let mut t = d.poll_transmit_at(t0).unwrap();
    assert_eq!(header(&t).ttl_ms, 100);
    t.restamp(t0 + ms(40));
    assert_eq!(header(&t).ttl_ms, 60);
    t.restamp(t0 + ms(150));
    assert_eq!(header(&t).ttl_ms, 0);
    let t1 = t0 + ms(150);
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&t.header);
    bytes.extend_from_slice(&t.payload);
    l.handle_input(&mut bytes, t1).unwrap();
    assert!(l.poll_message_at(t1).is_none(), "expired on arrival");
    assert_eq!(l.message_len(), 0, "never queued");
    assert_eq!(session_counts(&mut l)[&1].expired, 1);
    // A frame without a deadline is left alone.
    d.send(2, Bytes::from_static(b"x"), t0).unwrap();
    let mut t = d.poll_transmit_at(t0).unwrap();
    let before = t.header;
    t.restamp(t0 + ms(1000));
    assert_eq!(t.header, before);
}

/// Input that waited unread in the transport (the driver stopped reading and sampled it) is
/// charged with the wait since the sample that first saw it: a frame seen at the first
/// sample has aged more than one that arrived by the second.
#[test]
fn input_that_waited_unread_is_charged_with_the_wait() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), t0);
    let frame = |d: &mut Session, body: &'static [u8]| {
        d.send_with(1, Bytes::from_static(body), Some(ms(100)), t0)
            .unwrap();
        let t = d.poll_transmit_at(t0).unwrap();
        let mut b = BytesMut::new();
        b.extend_from_slice(&t.header);
        b.extend_from_slice(&t.payload);
        b
    };
    let a = frame(&mut d, b"aaaa");
    let b = frame(&mut d, b"bbbb");
    let c = frame(&mut d, b"cccc");
    // At t0 only `a` waited; by t0 + 60 ms `b` too; `c` came later.
    l.age_input(a.len(), t0);
    l.age_input(a.len() + b.len(), t0 + ms(60));
    let mut input = BytesMut::new();
    for f in [&a, &b, &c] {
        input.extend_from_slice(f);
    }
    // Read at t0 + 120 ms: `a` waited 120 ms (expired), `b` at least 60 ms (40 left), `c`
    // nothing known (100 left).
    let t1 = t0 + ms(120);
    l.handle_input(&mut input, t1).unwrap();
    assert_eq!(session_counts(&mut l)[&1].expired, 1, "a expired unread");
    let got: Vec<Bytes> = std::iter::from_fn(|| l.poll_message_at(t1))
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        got,
        vec![Bytes::from_static(b"bbbb"), Bytes::from_static(b"cccc")]
    );
    // Had the application come at t0 + 170 ms, `b` would have been gone, `c` not.
    let (mut d, mut l) = established(Config::default(), Config::default(), t0);
    let (b, c) = (frame(&mut d, b"bbbb"), frame(&mut d, b"cccc"));
    l.age_input(b.len(), t0 + ms(60));
    let mut input = BytesMut::new();
    input.extend_from_slice(&b);
    input.extend_from_slice(&c);
    l.handle_input(&mut input, t1).unwrap();
    let t2 = t0 + ms(170);
    let got: Vec<Bytes> = std::iter::from_fn(|| l.poll_message_at(t2))
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, vec![Bytes::from_static(b"cccc")]);
    assert_eq!(session_counts(&mut l)[&1].expired, 1);
}

/// Without the TTL capability agreed (a 1.0 peer), frames carry no TTL and a received
/// `TTL_PRESENT` is ignored.
#[test]
fn without_the_ttl_capability_no_ttl_goes_on_the_wire() {
    let t0 = Instant::now();
    let old = Config {
        capabilities: 0,
        ..Config::default()
    };
    let (mut d, mut l) = established(old, Config::default(), t0);
    d.send_with(1, Bytes::from_static(b"x"), Some(ms(5)), t0)
        .unwrap();
    let t = d.poll_transmit_at(t0).unwrap();
    let h = header(&t);
    assert!(!h.has(flags::TTL_PRESENT));
    assert_eq!(h.ttl_ms, 0);
    // The sender still drops it once expired.
    d.send_with(1, Bytes::from_static(b"y"), Some(ms(5)), t0)
        .unwrap();
    assert!(d.poll_transmit_at(t0 + ms(5)).is_none());
    assert_eq!(session_counts(&mut d)[&1].expired, 1);
    // A TTL_PRESENT frame from such a peer is delivered whatever its ttl_ms.
    let mut h = Header::data(1, 1);
    h.flags |= flags::TTL_PRESENT;
    h.ttl_ms = 1;
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&h.encode());
    bytes.extend_from_slice(b"z");
    l.handle_input(&mut bytes, t0).unwrap();
    assert_eq!(&l.poll_message_at(t0 + ms(50)).unwrap().payload[..], b"z");
}

// 5. Strict priority.

#[test]
fn a_higher_priority_channel_overtakes_bulk_between_two_frames() {
    let t0 = Instant::now();
    let prio = |p| ChannelConfig {
        priority: p,
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, prio(10)), (2, prio(200))]), t0);
    let bulk: Vec<Bytes> = (0..5).map(|i| pattern(10_000, 100 + i)).collect();
    for b in &bulk {
        o.offer(1, b.clone(), None, t0);
    }
    let mut frames = Vec::new();
    for _ in 0..3 {
        let t = o.poll(t0, 1024).unwrap();
        frames.push((header(&t), t.payload));
    }
    assert!(frames.iter().all(|(h, _)| h.channel == 1));
    for i in 0..10 {
        o.offer(2, numbered(i, 20), None, t0);
    }
    // The next ten frames are the ten small messages, in order.
    for i in 0..10 {
        let t = o.poll(t0, 1024).unwrap();
        let h = header(&t);
        assert_eq!((h.channel, number(&t.payload)), (2, i), "poll {i}");
        frames.push((h, t.payload));
    }
    // Then bulk goes on where it was.
    let rest = drain(&mut o, t0, 1024);
    assert!(rest.iter().all(|(h, _)| h.channel == 1));
    assert!(rest[0].0.has(flags::CONTINUATION));
    frames.extend(rest);
    assert_eq!(reassemble(&frames)[&1], bulk);

    // Queued before any bulk frame went: all ten go first.
    for b in &bulk {
        o.offer(1, b.clone(), None, t0);
    }
    for i in 0..10 {
        o.offer(2, numbered(i, 20), None, t0);
    }
    let frames = drain(&mut o, t0, 1024);
    assert!(frames[..10].iter().all(|(h, _)| h.channel == 2));
    assert!(frames[10..].iter().all(|(h, _)| h.channel == 1));
}

// 6. Deficit round robin by weight.

/// Two channels of one priority, weights 1 and 3, both backlogged with frames of one size:
/// the byte shares are 1:3 within 1 percentage point (25 % ± 1 %), and neither channel waits
/// longer than one round (3 quanta of the other).
#[test]
fn weights_share_the_link_inside_a_class() {
    let t0 = Instant::now();
    // (Room for all of it queued: about 5 MiB per channel.)
    let weighted = |w| ChannelConfig {
        weight: w,
        snd_hwm_msgs: 10_000,
        snd_hwm_bytes: 64 << 20,
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, weighted(1)), (2, weighted(3))]), t0);
    let frame_max = 1024;
    // Equal frames: 1024-byte messages, then 10 KiB ones cut at 1024 bytes.
    for i in 0..2000 {
        o.offer(1, numbered(i, frame_max), None, t0);
        o.offer(2, numbered(i, frame_max), None, t0);
    }
    for i in 0..300 {
        o.offer(1, pattern(10_240, i), None, t0);
        o.offer(2, pattern(10_240, i), None, t0);
    }
    let mut wire_bytes = [0usize; 3];
    let mut run = (0u16, 0usize);
    let mut longest = [0usize; 3];
    for _ in 0..6000 {
        let t = o.poll(t0, frame_max).expect("both backlogged");
        let c = header(&t).channel;
        wire_bytes[c as usize] += t.wire_len();
        run = if run.0 == c { (c, run.1 + 1) } else { (c, 1) };
        longest[c as usize] = longest[c as usize].max(run.1);
    }
    assert!(o.queued(1).0 > 0 && o.queued(2).0 > 0, "still backlogged");
    let share = wire_bytes[2] as f64 / (wire_bytes[1] + wire_bytes[2]) as f64;
    assert!(
        (share - 0.75).abs() <= 0.01,
        "weight 3 got {share:.4} of the bytes ({wire_bytes:?})"
    );
    // A round: a quantum per unit of weight, one frame of carried deficit at most.
    let quantum_frames = (QUANTUM + HEADER_LEN) / (frame_max + HEADER_LEN);
    assert!(
        longest[2] <= 3 * quantum_frames + 2,
        "runs {longest:?}, {quantum_frames} frames a quantum"
    );
    assert!(longest[1] <= quantum_frames + 2, "runs {longest:?}");
}

// 7. Rate limits in virtual time.

#[test]
fn a_block_channel_is_paced_by_its_rate() {
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        msgs_rate: Rate::new(1000.0, 50),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(qos([(1, cfg)]), t0);
    for i in 0..300 {
        assert_eq!(o.offer(1, numbered(i, 16), None, t0), Admission::Queued);
    }
    let mut now = t0;
    let mut times = Vec::new();
    let mut got = Vec::new();
    for wakes in 0.. {
        while let Some(t) = o.poll(now, BIG_FRAME) {
            times.push(now);
            got.push(number(&t.payload));
        }
        if o.is_empty() {
            break;
        }
        assert!(wakes < 1000, "too many wake-ups");
        let wake = o.next_wake().expect("waiting for tokens");
        assert!(wake > now, "a wake-up in the past");
        now = wake;
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    assert_eq!(times.iter().filter(|t| **t == t0).count(), 50, "the burst");
    let took = now - t0;
    assert!(took >= ms(250) && took < ms(252), "took {took:?}");
    assert_within_envelope(&times, t0, 1000.0, 50);
    assert!(outbox_counts(&mut o).is_empty(), "Block paces, never drops");
}

/// The pipe's message rate paces every channel together, through a session driven by its own
/// `poll_timeout` / `handle_timeout`.
#[test]
fn the_pipe_rate_paces_all_channels() {
    let t0 = Instant::now();
    let dialer = Config {
        qos: Arc::new(QosConfig {
            pipe_msgs_rate: Rate::new(1000.0, 10),
            ..QosConfig::default()
        }),
        ..Config::default()
    };
    let (mut d, mut l) = established(dialer, Config::default(), t0);
    for i in 0..40 {
        for c in 1..=3 {
            assert_eq!(d.send(c, numbered(i, 8), t0).unwrap(), Admission::Queued);
        }
    }
    let mut now = t0;
    let mut times = Vec::new();
    for wakes in 0.. {
        while let Some(t) = d.poll_transmit_at(now) {
            times.push(now);
            let h = header(&t);
            l.handle_frame(h, t.payload, now).unwrap();
        }
        if d.outbox().is_empty() {
            break;
        }
        assert!(wakes < 1000, "too many wake-ups");
        let wake = d.poll_timeout().expect("waiting for the pipe's tokens");
        assert!(wake > now);
        now = wake;
        d.handle_timeout(now).unwrap();
    }
    assert_eq!(times.len(), 120);
    let took = now - t0;
    assert!(took >= ms(110) && took < ms(112), "took {took:?}");
    assert_within_envelope(&times, t0, 1000.0, 10);
    let mut per_channel: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    while let Some(m) = l.poll_message() {
        per_channel
            .entry(m.channel)
            .or_default()
            .push(number(&m.payload));
    }
    for c in 1..=3 {
        assert_eq!(per_channel[&c], (0..40).collect::<Vec<_>>(), "channel {c}");
    }
}

#[test]
fn drop_and_fail_fast_channels_over_their_rate_drop_at_the_door() {
    let t0 = Instant::now();
    let limited = |policy, rate| ChannelConfig {
        backpressure: policy,
        msgs_rate: rate,
        ..ChannelConfig::default()
    };
    let bytes_limited = ChannelConfig {
        backpressure: Backpressure::DropNew,
        bytes_rate: Rate::new(1000.0, 1000),
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(
        qos([
            (1, limited(Backpressure::DropNew, Rate::new(100.0, 5))),
            (2, limited(Backpressure::FailFast, Rate::new(100.0, 1))),
            (3, limited(Backpressure::DropOld, Rate::new(100.0, 1))),
            (4, bytes_limited),
        ]),
        t0,
    );
    // DropNew at 100/s, burst 5: 5 of 20 pass at once, 5 more 50 ms later.
    let mut offered = 0u64;
    for (at, n) in [(t0, 20), (t0 + ms(50), 10)] {
        for i in 0..n {
            let want = if i < 5 {
                Admission::Queued
            } else {
                Admission::Dropped(DropReason::RateLimit)
            };
            assert_eq!(o.offer(1, numbered(i, 10), None, at), want, "message {i}");
            offered += 1;
        }
    }
    // FailFast: refused, payload back, not counted.
    assert_eq!(o.offer(2, numbered(0, 10), None, t0), Admission::Queued);
    let p = numbered(1, 10);
    assert_eq!(
        o.offer(2, p.clone(), None, t0),
        Admission::Refused(p, DropReason::RateLimit)
    );
    // DropOld over its rate drops the new one (the queue is not full: nothing old goes).
    assert_eq!(o.offer(3, numbered(0, 10), None, t0), Admission::Queued);
    assert_eq!(
        o.offer(3, numbered(1, 10), None, t0),
        Admission::Dropped(DropReason::RateLimit)
    );
    // A byte rate: 600 of 1000 bytes taken, 600 more do not fit, 400 do.
    assert_eq!(o.offer(4, numbered(0, 600), None, t0), Admission::Queued);
    assert_eq!(
        o.offer(4, numbered(1, 600), None, t0),
        Admission::Dropped(DropReason::RateLimit)
    );
    assert_eq!(o.offer(4, numbered(2, 400), None, t0), Admission::Queued);

    // What was let in is not paced again: it all goes now.
    let frames = drain(&mut o, t0 + ms(50), BIG_FRAME);
    let count = |c: u16| frames.iter().filter(|(h, _)| h.channel == c).count() as u64;
    assert_eq!((count(1), count(2), count(3), count(4)), (10, 1, 1, 2));
    assert!(o.is_empty());
    let counts = outbox_counts(&mut o);
    assert_eq!(counts[&1].rate_limited, 20);
    assert_eq!(counts[&1].dropped, 0);
    assert_eq!(count(1) + counts[&1].rate_limited, offered);
    assert!(!counts.contains_key(&2));
    assert_eq!(counts[&3].rate_limited, 1);
    assert_eq!(counts[&3].dropped, 0);
    assert_eq!(counts[&4].rate_limited, 1);
}

/// A channel waiting for tokens does not hold back others: of a lower priority class, or of
/// its own.
#[test]
fn a_rate_blocked_channel_does_not_block_others() {
    let t0 = Instant::now();
    let slow = |p| ChannelConfig {
        priority: p,
        msgs_rate: Rate::new(10.0, 1),
        ..ChannelConfig::default()
    };
    let free = |p| ChannelConfig {
        priority: p,
        ..ChannelConfig::default()
    };
    let mut o = Outbox::new(
        qos([(1, slow(200)), (2, free(1)), (3, slow(50)), (4, free(50))]),
        t0,
    );
    for i in 0..3 {
        o.offer(1, numbered(i, 10), None, t0);
    }
    for i in 0..5 {
        o.offer(2, numbered(i, 10), None, t0);
        o.offer(3, numbered(i, 10), None, t0);
        o.offer(4, numbered(i, 10), None, t0);
    }
    let frames = drain(&mut o, t0, BIG_FRAME);
    let seq: Vec<(u16, u32)> = frames.iter().map(|(h, p)| (h.channel, number(p))).collect();
    // Priority 200 first (one token), then class 50 (3 has one token, 4 is free), then 1.
    assert_eq!(seq[0], (1, 0));
    let mid = seq[1..7].to_vec();
    assert!(mid.contains(&(3, 0)), "{seq:?}");
    assert_eq!(
        mid.iter().filter(|(c, _)| *c == 4).count(),
        5,
        "channel 4 not held back by 3: {seq:?}"
    );
    assert_eq!(
        seq[7..].to_vec(),
        (0..5).map(|i| (2, i)).collect::<Vec<_>>(),
        "channel 2 not held back by 1 or 3"
    );
    assert_eq!(o.len(), 2 + 4);
    // The limited ones wait for their next token: 100 ms.
    let wake = o.next_wake().expect("a rate wake-up");
    assert!(
        wake > t0 + ms(100) - us(10) && wake <= t0 + ms(101),
        "{:?}",
        wake - t0
    );
    assert!(o.poll(wake - ms(2), BIG_FRAME).is_none());
    let frames = drain(&mut o, wake, BIG_FRAME);
    let seq: Vec<(u16, u32)> = frames.iter().map(|(h, p)| (h.channel, number(p))).collect();
    assert_eq!(seq, [(1, 1), (3, 1)]);
}

// 8. Receive high-water mark.

#[test]
fn recv_full_at_the_mark_and_recv_low_below_half() {
    let t0 = Instant::now();
    let rcv = |msgs, bytes| ChannelConfig {
        rcv_hwm_msgs: msgs,
        rcv_hwm_bytes: bytes,
        ..ChannelConfig::default()
    };
    let listener = Config {
        qos: qos([
            (1, rcv(4, 1 << 20)),
            (3, rcv(1000, 1000)),
            (4, rcv(2, 1 << 20)),
        ]),
        ..Config::default()
    };
    let dialer = Config {
        qos: qos([(
            4,
            ChannelConfig {
                ttl: Some(ms(100)),
                ..ChannelConfig::default()
            },
        )]),
        ..Config::default()
    };
    let (mut d, mut l) = established(dialer, listener, t0);
    let send = |d: &mut Session, l: &mut Session, c: u16, len: usize| {
        d.send(c, pattern(len, 0), t0).unwrap();
        pump_frames(d, l, t0).unwrap();
    };
    // A message on a channel with the default marks changes nothing.
    send(&mut d, &mut l, 2, 10);
    assert!(!l.recv_full() && l.recv_low());
    for i in 0..4 {
        assert!(!l.recv_full(), "after {i}");
        send(&mut d, &mut l, 1, 10);
    }
    assert!(l.recv_full());
    assert!(!l.recv_low());
    assert_eq!(l.poll_message().unwrap().channel, 2);
    assert!(l.recv_full(), "channel 1 still holds 4");
    assert_eq!(l.poll_message().unwrap().channel, 1);
    assert!(!l.recv_full(), "3 of 4");
    assert!(!l.recv_low(), "3 is above half of 4");
    assert_eq!(l.poll_message().unwrap().channel, 1);
    assert!(l.recv_low(), "2 is half of 4");
    while l.poll_message().is_some() {}

    // By bytes: one message of 1000 bytes fills channel 3.
    send(&mut d, &mut l, 3, 999);
    assert!(!l.recv_full() && !l.recv_low());
    send(&mut d, &mut l, 3, 1);
    assert!(l.recv_full());
    l.poll_message().unwrap();
    assert!(!l.recv_full() && l.recv_low(), "1 byte of 1000");
    l.poll_message().unwrap();

    // Messages that expire while queued make room too.
    send(&mut d, &mut l, 4, 10);
    send(&mut d, &mut l, 4, 10);
    assert!(l.recv_full());
    l.handle_timeout(t0 + ms(100)).unwrap();
    assert!(!l.recv_full() && l.recv_low());
    assert_eq!(l.message_len(), 0);
    assert_eq!(session_counts(&mut l)[&4].expired, 2);
}

// 9. Moving the outbox to a new connection.

#[test]
fn rewind_restarts_a_message_under_way_and_requeued_messages_go_in_front() {
    let t0 = Instant::now();
    let mut o = Outbox::new(qos([]), t0);
    let big = pattern(3000, 9);
    let after = numbered(100, 10);
    o.offer(1, big.clone(), None, t0);
    o.offer(1, after.clone(), None, t0);
    let first = o.poll(t0, 1024).unwrap();
    assert_eq!(header(&first).aux, 3000);
    assert_eq!(o.rewind(), vec![1]);
    assert!(o.rewind().is_empty(), "nothing under way any more");
    // The connection broke: these were framed but never written.
    let (r1, r2, r3) = (numbered(1, 10), numbered(2, 2500), numbered(3, 10));
    o.requeue_front(vec![(1, r1.clone()), (2, r2.clone()), (1, r3.clone())], t0);
    assert_eq!(o.len(), 5);
    assert_eq!(o.queued(1), (4, 3000 + 10 + 10 + 10));
    assert_eq!(o.queued(2), (1, 2500));
    let frames = drain(&mut o, t0, 1024);
    let big_frames: Vec<&(Header, Bytes)> = frames
        .iter()
        .filter(|(h, p)| h.channel == 1 && (p.len() > 10 || h.has(flags::CONTINUATION)))
        .collect();
    assert_eq!(big_frames.len(), 3);
    let (h, p) = big_frames[0];
    assert!(!h.has(flags::CONTINUATION) && h.has(flags::MORE_FRAGMENTS));
    assert_eq!(h.aux, 3000);
    assert_eq!(p, &big.slice(..1024), "from byte 0");
    let msgs = reassemble(&frames);
    assert_eq!(msgs[&1], [r1, r3, big, after]);
    assert_eq!(msgs[&2], [r2]);
    assert!(o.is_empty() && o.bytes() == 0);
    assert!(outbox_counts(&mut o).is_empty());
}

/// The same through sessions: the outbox of a broken session, with a message under way,
/// moves to a new session, whose peer receives every message whole and in order.
#[test]
fn a_moved_outbox_sends_its_message_under_way_again_whole() {
    let t0 = Instant::now();
    let small = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    let (mut d1, mut l1) = established(Config::default(), small.clone(), t0);
    let big = pattern(5000, 11);
    d1.send(1, numbered(0, 10), t0).unwrap();
    d1.send(1, big.clone(), t0).unwrap();
    d1.send(1, numbered(2, 10), t0).unwrap();
    // The first message and two fragments of the big one are written; then the link dies.
    for _ in 0..3 {
        let t = d1.poll_transmit_at(t0).unwrap();
        let h = header(&t);
        l1.handle_frame(h, t.payload, t0).unwrap();
    }
    assert_eq!(number(&l1.poll_message().unwrap().payload), 0);
    d1.transport_lost(t0);
    let outbox = d1.take_outbox();
    assert_eq!(outbox.len(), 2);

    let (mut d2, mut l2) = established(Config::default(), small, t0);
    assert_eq!(d2.set_outbox(outbox), vec![1]);
    pump_frames(&mut d2, &mut l2, t0).unwrap();
    let got: Vec<Bytes> = std::iter::from_fn(|| l2.poll_message())
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, [big, numbered(2, 10)]);
    assert_eq!(l2.reassembly_bytes(), 0);
}

/// A channel's own window holds back its reliable messages beyond it (until acks come) and
/// not those of other channels; the pipe's window bounds them all.
#[test]
fn reliable_windows_per_channel_and_per_pipe() {
    let t0 = Instant::now();
    let small = ChannelConfig {
        reliable: true,
        inflight_msgs: 2,
        ..ChannelConfig::default()
    };
    let free = ChannelConfig {
        reliable: true,
        ..ChannelConfig::default()
    };
    let mut cfg = (*qos([(1, small), (2, free)])).clone();
    cfg.inflight_msgs = 5;
    let mut o = Outbox::new(Arc::new(cfg), t0);
    for i in 0..4 {
        assert_eq!(o.offer(1, numbered(i, 10), None, t0), Admission::Queued);
        assert_eq!(
            o.offer(2, numbered(100 + i, 10), None, t0),
            Admission::Queued
        );
    }
    let sent = drain(&mut o, t0, 1024);
    let on = |c: u16| sent.iter().filter(|(h, _)| h.channel == c).count();
    assert_eq!(on(1), 2, "channel 1 stops at its window of 2");
    assert_eq!(on(2), 3, "channel 2 stops at the pipe's window of 5");
    assert_eq!(o.inflight().0, 5);
    // Acks for the first two numbers (whatever their channels) open both windows again.
    let first_two: Vec<u16> = sent.iter().take(2).map(|(h, _)| h.channel).collect();
    o.on_ack(2, &[], t0).unwrap();
    let more = drain(&mut o, t0, 1024);
    assert_eq!(
        more.len(),
        2,
        "two numbers acknowledged, two more go ({first_two:?})"
    );
    assert_eq!(o.inflight().0, 5);
    assert!(sent
        .iter()
        .chain(&more)
        .all(|(h, _)| h.has(flags::RELIABLE)));
}

/// Taking messages in one call gives what one-by-one polling gives: order, the expired ones
/// dropped and counted, and the receive marks kept in step.
#[test]
fn poll_messages_matches_one_by_one_polling() {
    let t0 = Instant::now();
    let marks = ChannelConfig {
        rcv_hwm_msgs: 4,
        ..ChannelConfig::default()
    };
    let listener = Config {
        qos: qos([(1, marks.clone()), (2, marks)]),
        ..Config::default()
    };
    let (mut d, mut l) = established(Config::default(), listener, t0);
    for i in 0..4u32 {
        d.send_with(
            1,
            numbered(i, 8),
            Some(ms(if i == 1 { 10 } else { 1000 })),
            t0,
        )
        .unwrap();
        d.send(2, numbered(100 + i, 8), t0).unwrap();
    }
    let bytes = wire(&mut d);
    let (r, _) = feed(&mut l, &bytes, t0);
    r.unwrap();
    assert!(l.recv_full(), "both channels at their mark of 4");
    let later = t0 + ms(20);
    let mut got = Vec::new();
    let n = l.poll_messages_at(later, 5, &mut |m| got.push((m.channel, number(&m.payload))));
    assert_eq!(n, 5);
    // Channel 1 is empty (one expired on the way), channel 2 holds 2 of its mark of 4.
    assert!(!l.recv_full() && l.recv_low());
    assert_eq!(l.message_len(), 2);
    let n = l.poll_messages_at(later, 100, &mut |m| {
        got.push((m.channel, number(&m.payload)))
    });
    assert_eq!(n, 2, "8 messages, one expired");
    assert!(l.recv_low());
    let on = |c: u16| -> Vec<u32> {
        got.iter()
            .filter(|(ch, _)| *ch == c)
            .map(|(_, i)| *i)
            .collect()
    };
    assert_eq!(on(1), vec![0, 2, 3]);
    assert_eq!(on(2), vec![100, 101, 102, 103]);
    assert_eq!(session_counts(&mut l)[&1].expired, 1);
    assert_eq!(l.message_len(), 0);
    assert_eq!(l.message_bytes(), 0);
}

/// Stream input handed over in one piece (whole frames of many channels in a row) or a few
/// bytes at a time leaves the receiver in the same state: the same messages in the same
/// order, the same receive marks and queue sizes, the same acks and PONGs to send.
#[test]
fn stream_input_in_one_piece_or_in_small_pieces_gives_the_same() {
    let t0 = Instant::now();
    let rel_ttl = caps::RELIABLE | caps::TTL;
    let listener = Config {
        max_frame_payload: 1024,
        capabilities: rel_ttl,
        qos: qos([
            (
                1,
                ChannelConfig {
                    rcv_hwm_msgs: 3,
                    ..ChannelConfig::default()
                },
            ),
            (
                2,
                ChannelConfig {
                    priority: 200,
                    ..ChannelConfig::default()
                },
            ),
            (
                4,
                ChannelConfig {
                    priority: 250,
                    ..ChannelConfig::default()
                },
            ),
        ]),
        ..Config::default()
    };
    let dialer = Config {
        capabilities: rel_ttl,
        qos: qos([(
            3,
            ChannelConfig {
                reliable: true,
                ..ChannelConfig::default()
            },
        )]),
        ..Config::default()
    };
    let (mut d, whole) = established(dialer.clone(), listener.clone(), t0);
    let (_, pieces) = established(dialer, listener, t0);
    // Two reliable messages as the dialer frames them.
    d.send(3, numbered(30, 8), t0).unwrap();
    d.send(3, numbered(31, 8), t0).unwrap();
    let rel: Vec<BytesMut> = common::frames(&mut d)
        .into_iter()
        .map(|(h, p)| common::raw_frame(h, &p))
        .collect();
    assert_eq!(rel.len(), 2);
    let plain = |c: u16, i: u32| common::frame(Header::data(c, 0), &numbered(i, 8));
    let with = |c: u16, flags: u8, aux: u32, payload: &[u8]| {
        common::frame(common::data_header(c, flags, aux), payload)
    };
    let mut ttl = common::data_header(4, flags::TTL_PRESENT, 0);
    ttl.ttl_ms = 500;
    let mut acked = common::data_header(1, flags::ACK_PRESENT, 0);
    acked.ack = 0;
    let frames: Vec<BytesMut> = vec![
        plain(1, 0),
        plain(1, 1),
        // Queued the general way (TTL), in a new priority class made in the middle of a
        // run of plain messages on channel 1, which goes on after it.
        common::frame(ttl, &numbered(40, 8)),
        plain(1, 2),
        rel[0].clone(),
        rel[1].clone(),
        rel[0].clone(), // a duplicate, dropped
        plain(2, 20),
        common::control_frame(FrameKind::Ping, &control::encode_ping(9)),
        with(5, flags::MORE_FRAGMENTS, 2000, &pattern(1000, 1)),
        plain(1, 3),
        with(5, flags::CONTINUATION, 0, &pattern(1000, 2)),
        common::frame(Header::data(1, 0), &[]),
        plain(1, 4),
        common::frame(acked, &numbered(5, 8)),
        plain(2, 21),
        plain(1, 6),
    ];
    let mut bytes = BytesMut::new();
    for f in &frames {
        bytes.extend_from_slice(f);
    }
    // And the start of one more frame.
    bytes.extend_from_slice(&frames[0][..HEADER_LEN + 3]);

    let state = |l: &mut Session| {
        let mut queues: Vec<_> = l.recv_queues().collect();
        queues.sort();
        (
            l.recv_full(),
            l.recv_low(),
            l.message_len(),
            l.message_bytes(),
            queues,
        )
    };
    let drain = |l: &mut Session| {
        let out: Vec<_> = std::iter::from_fn(|| l.poll_transmit())
            .map(|t| (t.header, t.payload))
            .collect();
        let msgs: Vec<_> = std::iter::from_fn(|| l.poll_message())
            .map(|m| (m.channel, m.payload))
            .collect();
        let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
        (msgs, out, format!("{events:?}"))
    };

    let mut whole = whole;
    let mut buf = BytesMut::from(&bytes[..]);
    whole.handle_input(&mut buf, t0).unwrap();
    assert_eq!(buf.len(), HEADER_LEN + 3, "the partial frame stays");
    let whole_state = state(&mut whole);
    assert!(whole_state.0, "channel 1 is at its mark");
    let whole_out = drain(&mut whole);
    let channels: Vec<u16> = whole_out.0.iter().map(|(c, _)| *c).collect();
    assert_eq!(channels, [4, 2, 2, 1, 1, 1, 3, 3, 1, 5, 1, 1, 1, 1]);
    assert_eq!(whole_out.0[9].1.len(), 2000);

    let mut pieces = pieces;
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(7) {
        buf.extend_from_slice(chunk);
        pieces.handle_input(&mut buf, t0).unwrap();
    }
    assert_eq!(buf.len(), HEADER_LEN + 3);
    assert_eq!(state(&mut pieces), whole_state);
    assert_eq!(drain(&mut pieces), whole_out);
}

/// A send involves time exactly when a time to live (the message's or the channel's),
/// reliability (the message's or the channel's) or a rate limit (the channel's or the pipe's)
/// applies: only then must the driver read the clock for it.
#[test]
fn a_send_uses_time_only_with_a_ttl_reliability_or_a_rate_limit() {
    let t0 = Instant::now();
    let rate = Rate::new(1000.0, 10);
    let config = qos([
        (1, ChannelConfig::default()),
        (
            2,
            ChannelConfig {
                ttl: Some(ms(50)),
                ..ChannelConfig::default()
            },
        ),
        (
            3,
            ChannelConfig {
                reliable: true,
                ..ChannelConfig::default()
            },
        ),
        (
            4,
            ChannelConfig {
                msgs_rate: rate,
                ..ChannelConfig::default()
            },
        ),
        (
            5,
            ChannelConfig {
                bytes_rate: rate,
                ..ChannelConfig::default()
            },
        ),
    ]);
    let o = Outbox::new(Arc::clone(&config), t0);
    // Plain channels, the default one included: no time.
    assert!(!o.send_uses_time(0, None, None));
    assert!(!o.send_uses_time(1, None, None));
    assert!(!o.send_uses_time(1, None, Some(false)));
    // The message's own TTL or reliability.
    assert!(o.send_uses_time(1, Some(ms(5)), None));
    assert!(o.send_uses_time(1, None, Some(true)));
    // The channel's TTL, reliability (unless the message opts out) and rate limits.
    assert!(o.send_uses_time(2, None, None));
    assert!(o.send_uses_time(3, None, None));
    assert!(!o.send_uses_time(3, None, Some(false)));
    assert!(o.send_uses_time(4, None, None));
    assert!(o.send_uses_time(5, None, None));
    // A rate limit of the whole pipe: every send.
    for pipe_limit in [
        QosConfig {
            pipe_msgs_rate: rate,
            ..QosConfig::default()
        },
        QosConfig {
            pipe_bytes_rate: rate,
            ..QosConfig::default()
        },
    ] {
        let o = Outbox::new(Arc::new(pipe_limit), t0);
        assert!(o.send_uses_time(0, None, None));
    }
    // The session says the same as its outbox.
    let (a, _b) = established(
        Config {
            qos: Arc::clone(&config),
            ..Config::default()
        },
        Config::default(),
        t0,
    );
    assert!(!a.send_uses_time(1, None, None));
    assert!(a.send_uses_time(2, None, None));
}
